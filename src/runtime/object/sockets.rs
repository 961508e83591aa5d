//! The object's socket index: socket id → the socket, its attachment and
//! its abuse limits. Durable state lives in each socket's attachment; the
//! index is a cache rebuilt from the attachments the first time it is
//! needed after the object (re)starts, e.g. after hibernation. Every borrow
//! of it stays inside these methods.

use std::cell::RefCell;
use std::collections::HashMap;

use wasm_bindgen::JsValue;
use worker::{js_sys, State, WebSocket};

use crate::domain::filter::{
    add_filters, any_matches, remove_filters, Filter, TooManyFilters, MAX_FILTERS_PER_SOCKET,
};
use crate::domain::limits::{SocketLimits, Verdict};
use crate::domain::logs::Event;
use crate::domain::operator::SocketInfo;
use crate::domain::protocol::{CloseCode, Envelope, ErrorCode, ServerFrame};
use crate::domain::schedule;
use crate::domain::session::{Lifetime, SocketAttachment, TokenDuty, MAX_ATTACHMENT_JSON_BYTES};
use crate::runtime::js::socket::{js_key, load_attachment, send_value, store_attachment};
use crate::runtime::settings;
use crate::runtime::telemetry;

/// A live socket, its decoded attachment and its abuse limits.
struct Socket {
    ws: WebSocket,
    attachment: SocketAttachment,
    limits: SocketLimits,
}

/// What [`Sockets::charge`] found.
pub enum Charge {
    Allowed,
    /// Over the rate limit.
    Limited,
    /// Past its token's end.
    Expired,
}

pub struct Sockets {
    state: State,
    /// Socket id → socket; `None` until first built after (re)start.
    index: RefCell<Option<HashMap<String, Socket>>>,
    /// Socket object → socket id, for the sockets in the index. Looking the
    /// id up in its tags (`getTags`) took about 10 % of the CPU of a fan-out's
    /// acks in the profile (bench/README.md).
    ids: js_sys::Map,
}

impl Socket {
    /// A socket entry with a full rate-limit bucket.
    fn new(ws: WebSocket, attachment: SocketAttachment) -> Socket {
        Socket {
            ws,
            attachment,
            limits: SocketLimits::new(js_sys::Date::now()),
        }
    }

    /// Replaces the attachment, stored first; `false` (and logged) when the
    /// runtime refused it, and nothing changed.
    fn store(&mut self, next: SocketAttachment) -> bool {
        if let Err(err) = store_attachment(&self.ws, &next.to_json()) {
            telemetry::error("socket.attachment", &format_args!("{err:?}"));
            return false;
        }
        self.attachment = next;
        true
    }

    /// Applies a subscribe (`add`) or unsubscribe and stores it in the
    /// attachment; returns the confirmation, or the refusal (nothing applied).
    fn change_filters(&mut self, change: Vec<Filter>, add: bool) -> ServerFrame {
        match self.try_change_filters(change, add) {
            Ok(confirmation) => confirmation,
            Err(refusal) => refusal,
        }
    }

    fn try_change_filters(
        &mut self,
        change: Vec<Filter>,
        add: bool,
    ) -> Result<ServerFrame, ServerFrame> {
        let refused = |why: String| ServerFrame::error(ErrorCode::SubscriptionLimit, why);
        let mut filters = self.attachment.filters.clone();
        let changed = if add {
            add_filters(&mut filters, change).map_err(|TooManyFilters| {
                refused(format!(
                    "subscription refused: a socket may hold at most {MAX_FILTERS_PER_SOCKET} filters; unsubscribe some first"
                ))
            })?
        } else {
            remove_filters(&mut filters, &change)
        };
        let total = filters.len();
        let (next, _) = self.attachment.with_filters(filters).map_err(|too_large| {
            refused(format!(
                "subscription refused: the socket's filters would take {} bytes, over the {MAX_ATTACHMENT_JSON_BYTES} byte limit; unsubscribe some first",
                too_large.bytes
            ))
        })?;
        if !self.store(next) {
            return Err(refused(
                "subscription refused: the filters could not be stored".into(),
            ));
        }
        Ok(ServerFrame::filters_changed(add, changed, total))
    }
}

impl Sockets {
    pub fn new(state: State) -> Sockets {
        Sockets {
            state,
            index: RefCell::new(None),
            ids: js_sys::Map::new(),
        }
    }

    /// The socket's id, from the id map; after a wake-up the index (which
    /// fills the map from the attachments) is built first. Sockets are
    /// accepted without tags: the map made the tag lookup (`getTags`, about
    /// 10 % of a fan-out's ack CPU) unneeded.
    pub fn id_of(&self, ws: &WebSocket) -> Option<String> {
        self.with(|_| ());
        self.ids.get(js_key(ws)).as_string()
    }

    /// Adds a socket just accepted, with its stored attachment.
    pub fn add(&self, ws: WebSocket, attachment: SocketAttachment) {
        self.with(|sockets| {
            self.ids
                .set(js_key(&ws), &JsValue::from_str(&attachment.id));
            sockets.insert(attachment.id.clone(), Socket::new(ws, attachment));
        });
    }

    /// How many sockets are open.
    pub fn count(&self) -> usize {
        self.with(|sockets| sockets.len())
    }

    /// Drops a closed socket; its attachment, if it was in the index.
    pub fn remove(&self, ws: &WebSocket) -> Option<SocketAttachment> {
        let socket_id = self.id_of(ws)?;
        let socket = self.with(|sockets| sockets.remove(&socket_id));
        self.ids.delete(js_key(ws));
        socket.map(|socket| socket.attachment)
    }

    /// Sends the envelope's text to every socket whose filters match it:
    /// the ids it went to, and the sockets past their token's end (whether
    /// or not the alarm has run), which got nothing.
    pub fn deliver(
        &self,
        envelope: &Envelope,
        text: &JsValue,
        lifetime: Lifetime,
        now_ms: f64,
    ) -> (Vec<String>, Vec<WebSocket>) {
        let mut expired = Vec::new();
        let delivered = self.with(|sockets| {
            sockets
                .iter()
                .filter(|(_, s)| {
                    any_matches(
                        &s.attachment.filters,
                        &envelope.envelope_type,
                        &envelope.payload,
                    )
                })
                .filter(|(_, s)| {
                    let live = !lifetime.expired(&s.attachment, now_ms);
                    if !live {
                        expired.push(s.ws.clone());
                    }
                    live
                })
                // A socket that cannot be sent to (closing) is not counted.
                .filter(|(_, s)| send_value(&s.ws, text).is_ok())
                .map(|(id, _)| id.clone())
                .collect()
        });
        (delivered, expired)
    }

    /// Takes one message from the socket's rate limit, unless its token
    /// has run out.
    pub fn charge(&self, socket_id: &str, lifetime: Lifetime, now_ms: f64) -> Charge {
        self.with(|sockets| match sockets.get_mut(socket_id) {
            None => Charge::Allowed,
            Some(s) if lifetime.expired(&s.attachment, now_ms) => Charge::Expired,
            Some(s) => match s.limits.take_message(now_ms) {
                true => Charge::Allowed,
                false => Charge::Limited,
            },
        })
    }

    /// Counts a violation of the socket's.
    pub fn violation(&self, socket_id: &str, now_ms: f64) -> Verdict {
        self.with(|sockets| {
            sockets
                .get_mut(socket_id)
                .map_or(Verdict::Warn, |s| s.limits.violation(now_ms))
        })
    }

    /// Applies a subscribe (`add`) or unsubscribe: the confirmation or the
    /// refusal; `None` for a socket no longer here.
    pub fn change_filters(
        &self,
        socket_id: &str,
        change: Vec<Filter>,
        add: bool,
    ) -> Option<ServerFrame> {
        self.with(|sockets| {
            sockets
                .get_mut(socket_id)
                .map(|socket| socket.change_filters(change, add))
        })
    }

    /// The socket's user.
    pub fn user_of(&self, socket_id: &str) -> Option<String> {
        self.with(|sockets| sockets.get(socket_id).map(|s| s.attachment.user_id.clone()))
    }

    /// A copy of the socket's attachment.
    pub fn attachment(&self, socket_id: &str) -> Option<SocketAttachment> {
        self.with(|sockets| sockets.get(socket_id).map(|s| s.attachment.clone()))
    }

    /// Stores `change` of the socket's attachment: whether it was stored;
    /// `None` for a socket no longer here.
    pub fn update(
        &self,
        socket_id: &str,
        change: impl FnOnce(&SocketAttachment) -> SocketAttachment,
    ) -> Option<bool> {
        self.with(|sockets| {
            let socket = sockets.get_mut(socket_id)?;
            let next = change(&socket.attachment);
            Some(socket.store(next))
        })
    }

    pub fn ws(&self, socket_id: &str) -> Option<WebSocket> {
        self.with(|sockets| sockets.get(socket_id).map(|s| s.ws.clone()))
    }

    /// The sockets named (`None`: all of them).
    pub fn chosen(&self, only: Option<&str>) -> Vec<WebSocket> {
        self.with(|sockets| {
            sockets
                .iter()
                .filter(|(id, _)| only.is_none_or(|only| only == *id))
                .map(|(_, socket)| socket.ws.clone())
                .collect()
        })
    }

    /// The sockets as the operator's view shows them.
    pub fn infos(&self) -> Vec<SocketInfo> {
        self.with(|sockets| {
            sockets
                .iter()
                .map(|(id, socket)| SocketInfo {
                    socket_id: id.clone(),
                    connected_at: socket.attachment.connected_at,
                    filters: socket.attachment.filters.clone(),
                    expires_at: socket.attachment.expires_at,
                })
                .collect()
        })
    }

    /// The token duties due now (see `schedule`).
    pub fn due_now(&self, lifetime: Lifetime, now_ms: f64) -> Vec<(String, TokenDuty)> {
        self.with(|sockets| {
            schedule::due_now(lifetime, sockets.values().map(|s| &s.attachment), now_ms)
        })
    }

    /// When the object must wake next for these sockets and `storage_ms`.
    pub fn next_wake(&self, lifetime: Lifetime, storage_ms: Option<f64>) -> Option<f64> {
        self.with(|sockets| {
            schedule::next_wake(
                lifetime,
                storage_ms,
                sockets.values().map(|s| &s.attachment),
            )
        })
    }

    /// Runs `f` on the index, rebuilding it from attachments first if the
    /// object has just started.
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Socket>) -> T) -> T {
        let mut guard = self.index.borrow_mut();
        let sockets = guard.get_or_insert_with(|| self.load());
        f(sockets)
    }

    fn load(&self) -> HashMap<String, Socket> {
        let mut sockets = HashMap::new();
        for ws in self.state.get_websockets() {
            match load_attachment(&ws) {
                Ok(Some(attachment)) if attachment.is_current() => {
                    self.ids
                        .set(js_key(&ws), &JsValue::from_str(&attachment.id));
                    sockets.insert(attachment.id.clone(), Socket::new(ws, attachment));
                }
                other => {
                    if let Err(err) = other {
                        telemetry::error("socket.attachment", &format_args!("unreadable: {err}"));
                    }
                    let close = CloseCode::Reconnect;
                    let _ = ws.close(Some(close.code()), Some(close.reason()));
                }
            }
        }
        // Only after a wake-up: a new object has none, and a log line per
        // new object was a measurable part of creating one.
        if !sockets.is_empty() {
            settings::log(&Event::ObjectWoke {
                sockets: sockets.len(),
            });
        }
        sockets
    }
}
