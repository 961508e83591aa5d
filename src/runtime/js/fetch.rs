//! Outgoing requests (webhooks): the runtime's `fetch`, with a deadline.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::js_sys;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(url: &str, init: &JsValue) -> js_sys::Promise;

    type AbortSignal;

    /// `AbortSignal.timeout(ms)`: aborts the request after `ms`.
    #[wasm_bindgen(static_method_of = AbortSignal, js_name = timeout)]
    fn timeout(ms: f64) -> AbortSignal;
}

/// What became of a POST.
pub enum Posted {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer: a network error, or none within the deadline.
    Failed(String),
}

/// POSTs `body` (JSON text) to `url` with `headers`, giving up after
/// `timeout_ms`. The answer's body is not read.
pub async fn post_json(url: &str, body: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Posted {
    let init = js_sys::Object::new();
    let all = js_sys::Object::new();
    let set = |target: &js_sys::Object, key: &str, value: &JsValue| {
        let _ = js_sys::Reflect::set(target, &JsValue::from_str(key), value);
    };
    set(&all, "Content-Type", &JsValue::from_str("application/json"));
    for (name, value) in headers {
        set(&all, name, &JsValue::from_str(value));
    }
    set(&init, "method", &JsValue::from_str("POST"));
    // A redirect is the receiver's answer, not a delivery: followed, it
    // would turn into a GET without the body, and its 200 count as one.
    set(&init, "redirect", &JsValue::from_str("manual"));
    set(&init, "headers", &all);
    set(&init, "body", &JsValue::from_str(body));
    set(
        &init,
        "signal",
        &AbortSignal::timeout(timeout_ms as f64).into(),
    );
    match JsFuture::from(global_fetch(url, &init)).await {
        Ok(response) => {
            let status = response
                .dyn_ref::<worker::web_sys::Response>()
                .map_or(0, worker::web_sys::Response::status);
            // Cancel the unread body, so the connection is let go.
            if let Some(body) = response
                .dyn_ref::<worker::web_sys::Response>()
                .and_then(worker::web_sys::Response::body)
            {
                let _ = body.cancel();
            }
            Posted::Status(status)
        }
        Err(err) => Posted::Failed(describe(&err)),
    }
}

/// A rejection as one line: a timeout says so.
fn describe(err: &JsValue) -> String {
    let name = js_sys::Reflect::get(err, &JsValue::from_str("name"))
        .ok()
        .and_then(|n| n.as_string());
    if matches!(name.as_deref(), Some("TimeoutError" | "AbortError")) {
        return "no answer within the timeout".to_owned();
    }
    js_sys::Reflect::get(err, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| format!("{err:?}"))
}
