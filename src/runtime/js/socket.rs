//! The object's hibernatable sockets: sending a JS string as it is, the
//! attachment kept across hibernation, the socket as a map key.

use wasm_bindgen::{JsCast, JsValue};
use worker::web_sys;

use super::bindings::RawWebSocket;
use crate::domain::session::SocketAttachment;

/// A frame as the runtime delivered it.
pub enum IncomingFrame {
    Text(String),
    Binary { len: usize },
}

impl IncomingFrame {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            IncomingFrame::Text(text) => text.len(),
            IncomingFrame::Binary { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends a JS string; fails when the socket is closing.
pub fn send_value(ws: &worker::WebSocket, frame: &JsValue) -> Result<(), JsValue> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<RawWebSocket>().send(frame)
}

/// Stores the socket's attachment, as its JSON text
/// (`SocketAttachment::to_json`).
pub fn store_attachment(ws: &worker::WebSocket, json: &str) -> Result<(), JsValue> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<RawWebSocket>()
        .serialize_attachment(&JsValue::from_str(json))
}

/// The socket's attachment (its JSON text); `None` when it has none.
/// (Attachments stored as objects by earlier builds cannot reach this
/// build: a deploy disconnects every socket of the class.)
pub fn load_attachment(ws: &worker::WebSocket) -> Result<Option<SocketAttachment>, String> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    let stored = raw
        .unchecked_ref::<RawWebSocket>()
        .deserialize_attachment()
        .map_err(|err| format!("{err:?}"))?;
    match stored.as_string() {
        Some(text) => SocketAttachment::from_json(&text)
            .map(Some)
            .map_err(|err| err.to_string()),
        None if stored.is_null() || stored.is_undefined() => Ok(None),
        None => Err("the attachment is not JSON text".into()),
    }
}

/// The socket's JS object, as a map key.
pub fn js_key(ws: &worker::WebSocket) -> &JsValue {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.as_ref()
}
