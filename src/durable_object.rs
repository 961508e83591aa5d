//! `HopeFlowRealtime`: one Durable Object per user, a thin adapter between the
//! runtime's hibernatable WebSockets and the pure modules.
//!
//! Durable state lives in each socket's attachment ([`SocketAttachment`]); the
//! in-memory socket index is a cache rebuilt from the attachments the first
//! time it is needed after the object (re)starts, e.g. after hibernation. The
//! ack book only holds publishes in flight, and a publish in flight keeps the
//! object awake, so it never needs to survive hibernation.

use std::cell::RefCell;
use std::collections::HashMap;

use futures::channel::oneshot;
use futures::future::select;
use worker::worker_sys::WebSocketRequestResponsePair;
use worker::{
    console_error, console_log, console_warn, durable_object, js_sys, DurableObject, Env, Method,
    Request, Response, Result, State, WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use crate::acks::{AckBook, AckOutcome, AckTimeout, InvalidAckTimeout};
use crate::error::ApiError;
use crate::filter::{add_filters, any_matches, remove_filters, Filter};
use crate::http;
use crate::protocol::{ClientFrame, Envelope, ErrorCode, PublishOutcome, ServerFrame};
use crate::session::SocketAttachment;
use crate::USER_ID_HEADER;

/// Close code asking a client to reconnect: its stored socket state could not be
/// read (e.g. written by an older layout).
const CLOSE_RECONNECT: u16 = 1012;

/// A live socket and its decoded attachment.
struct Socket {
    ws: WebSocket,
    attachment: SocketAttachment,
}

#[durable_object]
pub struct HopeFlowRealtime {
    state: State,
    /// How long a publish waits for acks; `Err` when `ACK_TIMEOUT_MS` is invalid.
    ack_timeout: std::result::Result<AckTimeout, InvalidAckTimeout>,
    /// Socket id → socket; `None` until first built after (re)start.
    sockets: RefCell<Option<HashMap<String, Socket>>>,
    /// Publishes waiting for acks, each with the sender that wakes its `/deliver`.
    acks: RefCell<AckBook<oneshot::Sender<()>>>,
}

impl DurableObject for HopeFlowRealtime {
    fn new(state: State, env: Env) -> Self {
        // Plain pings are answered by the runtime without waking the object.
        match WebSocketRequestResponsePair::new("ping", "pong") {
            Ok(pair) => state.set_websocket_auto_response(&pair),
            Err(err) => console_warn!("could not register the ping auto-response: {err:?}"),
        }
        let setting = env.var("ACK_TIMEOUT_MS").ok().map(|v| v.to_string());
        let ack_timeout = AckTimeout::parse(setting.as_deref());
        if let Err(why) = &ack_timeout {
            console_error!("{why}");
        }
        HopeFlowRealtime {
            state,
            ack_timeout,
            sockets: RefCell::new(None),
            acks: RefCell::new(AckBook::default()),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let result = match (req.path().as_str(), req.method()) {
            ("/connect", Method::Get) => self.accept_socket(&req),
            ("/deliver", Method::Post) => self.deliver(req).await,
            _ => Err(ApiError::NotFound),
        };
        result.or_else(|err| http::error(&err))
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let text = match message {
            WebSocketIncomingMessage::String(text) => text,
            WebSocketIncomingMessage::Binary(_) => {
                send_frame(
                    &ws,
                    &ServerFrame::error(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported; send JSON text frames",
                    ),
                );
                return Ok(());
            }
        };
        let frame = match ClientFrame::parse(&text) {
            Ok(frame) => frame,
            Err(err) => {
                send_frame(&ws, &ServerFrame::error(err.code(), err.to_string()));
                return Ok(());
            }
        };
        match frame {
            ClientFrame::Ping => send_text(&ws, "pong"),
            ClientFrame::Subscribe { filters } => self.change_filters(&ws, &filters, true),
            ClientFrame::Unsubscribe { filters } => self.change_filters(&ws, &filters, false),
            ClientFrame::Ack {
                envelope_id,
                result,
            } => {
                let Some(socket_id) = self.socket_id(&ws) else {
                    return Ok(());
                };
                let outcome = self.acks.borrow_mut().ack(&envelope_id, &socket_id, result);
                if let AckOutcome::Completed(waiter) = outcome {
                    // The publish may have timed out meanwhile; nothing to wake then.
                    let _ = waiter.send(());
                }
            }
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        self.forget(&ws);
        // Complete the closing handshake; 1005/1006 are reserved and cannot be sent.
        let code = match u16::try_from(code) {
            Ok(c) if c != 1005 && c != 1006 => c,
            _ => 1000,
        };
        let _ = ws.close(Some(code), Some(reason));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        console_warn!("websocket error: {error}");
        self.forget(&ws);
        Ok(())
    }
}

impl HopeFlowRealtime {
    /// `GET /connect`: accept a hibernatable socket for the user in `X-User-ID`.
    fn accept_socket(&self, req: &Request) -> std::result::Result<Response, ApiError> {
        let encoded = req.headers().get(USER_ID_HEADER)?.unwrap_or_default();
        let user_id: String = js_sys::decode_uri_component(&encoded)
            .map(String::from)
            .map_err(|_| ApiError::Internal)?;
        if user_id.is_empty() {
            return Err(ApiError::Internal);
        }
        let pair = WebSocketPair::new()?;
        let socket_id = uuid::Uuid::new_v4().simple().to_string();
        self.state
            .accept_websocket_with_tags(&pair.server, &[socket_id.as_str()]);
        let attachment = SocketAttachment::new(socket_id.clone(), user_id);
        pair.server.serialize_attachment(&attachment)?;
        self.with_sockets(|sockets| {
            sockets.insert(
                socket_id,
                Socket {
                    ws: pair.server.clone(),
                    attachment,
                },
            );
        });
        Ok(Response::from_websocket(pair.client)?)
    }

    /// `POST /deliver`: send the envelope to every matching socket and wait for
    /// their acks, a close, or the timeout, whichever comes first.
    async fn deliver(&self, mut req: Request) -> std::result::Result<Response, ApiError> {
        let timeout = self
            .ack_timeout
            .as_ref()
            .map_err(|_| ApiError::Misconfigured)?;
        let envelope: Envelope = req.json().await?;
        let text = serde_json::to_string(&envelope).map_err(|_| ApiError::Internal)?;

        let delivered: Vec<String> = self.with_sockets(|sockets| {
            sockets
                .iter()
                .filter(|(_, s)| {
                    any_matches(
                        &s.attachment.filters,
                        &envelope.envelope_type,
                        &envelope.payload,
                    )
                })
                // A socket that cannot be sent to (closing) is not counted.
                .filter(|(_, s)| s.ws.send_with_str(&text).is_ok())
                .map(|(id, _)| id.clone())
                .collect()
        });
        let client_count = delivered.len();
        if client_count == 0 {
            return Ok(http::json(
                200,
                &PublishOutcome {
                    client_count,
                    results: Vec::new(),
                },
            )?);
        }

        let (done_tx, done_rx) = oneshot::channel();
        self.acks
            .borrow_mut()
            .begin(envelope.envelope_id.clone(), delivered, done_tx)
            .map_err(|_| ApiError::Internal)?;
        let pending = PendingPublish {
            book: &self.acks,
            envelope_id: &envelope.envelope_id,
        };
        let deadline = worker::Delay::from(timeout.duration());
        futures::pin_mut!(deadline);
        // Woken by the last ack or close, or by the deadline: either way, answer.
        let _ = select(done_rx, deadline).await;
        Ok(http::json(
            200,
            &PublishOutcome {
                client_count,
                results: pending.finish(),
            },
        )?)
    }

    /// Applies a subscribe (`add`) or unsubscribe to the socket's filters and
    /// confirms it; rejected entries are reported first.
    fn change_filters(&self, ws: &WebSocket, entries: &[serde_json::Value], add: bool) {
        let parsed = Filter::parse_all(entries);
        if !parsed.invalid.is_empty() {
            send_frame(ws, &ServerFrame::invalid_filters(&parsed.invalid));
        }
        if parsed.ignored > 0 {
            send_frame(ws, &ServerFrame::too_many_filters(parsed.ignored));
        }
        let Some(socket_id) = self.socket_id(ws) else {
            return;
        };
        let reply = self.with_sockets(|sockets| {
            let socket = sockets.get_mut(&socket_id)?;
            let mut filters = socket.attachment.filters.clone();
            let changed = if add {
                add_filters(&mut filters, parsed.valid)
            } else {
                remove_filters(&mut filters, &parsed.valid)
            };
            let total = filters.len();
            let next = match socket.attachment.with_filters(filters) {
                Ok(next) => next,
                Err(too_large) => {
                    return Some(ServerFrame::error(
                        ErrorCode::SubscriptionLimit,
                        format!(
                            "subscription refused: the socket's filters would take {} bytes, over the {} byte limit; unsubscribe some first",
                            too_large.bytes,
                            crate::session::MAX_ATTACHMENT_JSON_BYTES
                        ),
                    ))
                }
            };
            if let Err(err) = socket.ws.serialize_attachment(&next) {
                console_error!("storing socket filters failed: {err}");
                return Some(ServerFrame::error(
                    ErrorCode::SubscriptionLimit,
                    "subscription refused: the filters could not be stored",
                ));
            }
            socket.attachment = next;
            Some(if add {
                ServerFrame::Subscribed {
                    added: changed,
                    total,
                }
            } else {
                ServerFrame::Unsubscribed {
                    removed: changed,
                    total,
                }
            })
        });
        if let Some(frame) = reply {
            send_frame(ws, &frame);
        }
    }

    /// The socket's id, from the tag it was accepted with.
    fn socket_id(&self, ws: &WebSocket) -> Option<String> {
        self.state.get_tags(ws).into_iter().next()
    }

    /// Drops a closed socket from the index and stops waiting for its acks.
    fn forget(&self, ws: &WebSocket) {
        let Some(socket_id) = self.socket_id(ws) else {
            return;
        };
        self.with_sockets(|sockets| sockets.remove(&socket_id));
        let completed = self.acks.borrow_mut().socket_gone(&socket_id);
        for waiter in completed {
            let _ = waiter.send(());
        }
    }

    /// Runs `f` on the socket index, rebuilding it from attachments first if
    /// the object has just started.
    fn with_sockets<T>(&self, f: impl FnOnce(&mut HashMap<String, Socket>) -> T) -> T {
        let mut guard = self.sockets.borrow_mut();
        let sockets = guard.get_or_insert_with(|| self.load_sockets());
        f(sockets)
    }

    fn load_sockets(&self) -> HashMap<String, Socket> {
        let mut sockets = HashMap::new();
        for ws in self.state.get_websockets() {
            match ws.deserialize_attachment::<SocketAttachment>() {
                Ok(Some(attachment)) if attachment.is_current() => {
                    sockets.insert(attachment.id.clone(), Socket { ws, attachment });
                }
                other => {
                    if let Err(err) = other {
                        console_error!("unreadable socket attachment: {err}");
                    }
                    let _ = ws.close(Some(CLOSE_RECONNECT), Some("state lost; please reconnect"));
                }
            }
        }
        console_log!("socket index rebuilt from {} attachment(s)", sockets.len());
        sockets
    }
}

/// A publish registered in the ack book. Dropping it (also when the request is
/// cancelled mid-wait) removes it, so nothing stays pending after `/deliver`.
struct PendingPublish<'a> {
    book: &'a RefCell<AckBook<oneshot::Sender<()>>>,
    envelope_id: &'a str,
}

impl PendingPublish<'_> {
    /// Ends the publish and returns the results that arrived.
    fn finish(self) -> Vec<serde_json::Value> {
        self.book.borrow_mut().finish(self.envelope_id)
    }
}

impl Drop for PendingPublish<'_> {
    fn drop(&mut self) {
        // A no-op after `finish`; the cleanup when the wait was abandoned.
        self.book.borrow_mut().finish(self.envelope_id);
    }
}

fn send_frame(ws: &WebSocket, frame: &ServerFrame) {
    send_text(ws, &frame.to_text());
}

/// Sending fails only when the socket is already closing; the close event
/// cleans up, so the error is dropped here.
fn send_text(ws: &WebSocket, text: &str) {
    let _ = ws.send_with_str(text);
}
