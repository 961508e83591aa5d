//! `HopeFlowRealtime`: one Durable Object per user, a thin adapter between the
//! runtime's hibernatable WebSockets and the pure modules.
//!
//! Durable state lives in each socket's attachment ([`SocketAttachment`]); the
//! in-memory socket index is a cache rebuilt from the attachments the first
//! time it is needed after the object (re)starts, e.g. after hibernation. The
//! ack book only holds publishes in flight, and a publish in flight keeps the
//! object awake, so it never needs to survive hibernation. The answers of
//! keyed publishes (`Idempotency-Key`) must, and are kept in the object's
//! SQLite storage until they expire (`idempotency`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::worker_sys::{DurableObjectState, WebSocketRequestResponsePair};
use worker::{
    console_error, console_log, console_warn, js_sys, web_sys, Env, Method, Response, State,
    WebSocket, WebSocketPair,
};

use crate::acks::{AckBook, AckOutcome, DeadlineQueue, Settled, Tracking};
use crate::alarm::{another_handle, Alarm};
use crate::config::DEFAULT_MAX_FRAME_BYTES;
use crate::error::ApiError;
use crate::filter::{
    add_filters, any_matches, remove_filters, Filter, TooManyFilters, MAX_FILTERS_PER_SOCKET,
};
use crate::glue::{
    js_key, load_attachment, pending_answer, send_value, store_attachment, IncomingFrame, Settle,
    Timer,
};
use crate::history::{self, Retention};
use crate::http;
use crate::idempotency::{self, DeliverOptions, KeyBook, KeyedRequest, Receipt};
use crate::limits::{SocketLimits, Verdict};
use crate::operator::{disconnected_text, DisconnectRequest, SocketInfo, SocketsView};
use crate::protocol::{ClientFrame, CloseCode, Envelope, ErrorCode, PublishOutcome, ServerFrame};
use crate::routes::{settings, Settings, TOKEN_EXP_HEADER, USER_ID_HEADER};
use crate::schedule;
use crate::session::{Lifetime, SocketAttachment, TokenDuty, MAX_ATTACHMENT_JSON_BYTES};
use crate::storage::{self, History, KeyStore};

/// A live socket, its decoded attachment and its abuse limits.
struct Socket {
    ws: WebSocket,
    attachment: SocketAttachment,
    limits: SocketLimits,
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
            console_error!("storing a socket attachment failed: {err:?}");
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
    ) -> std::result::Result<ServerFrame, ServerFrame> {
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
        let (next, json) = self.attachment.with_filters(filters).map_err(|too_large| {
            refused(format!(
                "subscription refused: the socket's filters would take {} bytes, over the {MAX_ATTACHMENT_JSON_BYTES} byte limit; unsubscribe some first",
                too_large.bytes
            ))
        })?;
        store_attachment(&self.ws, &json).map_err(|err| {
            console_error!("storing socket filters failed: {err:?}");
            refused("subscription refused: the filters could not be stored".into())
        })?;
        self.attachment = next;
        Ok(if add {
            ServerFrame::Subscribed {
                added: changed,
                total,
                seq: None,
                epoch: None,
            }
        } else {
            ServerFrame::Unsubscribed {
                removed: changed,
                total,
            }
        })
    }
}

/// A publish waiting for acks: what its answer needs once it is settled.
struct Waiter {
    envelope_id: String,
    client_count: usize,
    /// Its `Idempotency-Key`, whose answer is kept and shared with repeats.
    keyed: Option<KeyedRequest>,
    settle: Settle,
}

/// Publishes in flight and their deadlines; shared with the object's timer.
#[derive(Default)]
struct InFlight {
    book: AckBook<Waiter>,
    deadlines: DeadlineQueue,
    /// Keyed publishes in flight and the repeats waiting for them.
    keys: KeyBook<Settle>,
    /// Where keyed answers are kept; opened by the first keyed publish.
    store: Option<KeyStore>,
}

type Book = Rc<RefCell<InFlight>>;

impl Waiter {
    /// Answers the publish with what arrived; a keyed one also stores its
    /// answer and answers the repeats that waited for it.
    fn answer(self, book: &Book, settled: Settled) {
        let outcome = outcome(self.client_count, settled);
        let Some(text) = outcome.to_text() else {
            console_error!("serializing a publish outcome failed");
            return;
        };
        match self.keyed {
            None => self.settle.answer(&text),
            Some(keyed) => {
                Waiter::answer_keyed(book, keyed, &self.envelope_id, self.settle, &outcome, &text)
            }
        }
    }

    /// A keyed publish's answer: stored, and given to the repeats that
    /// waited for it. Out of line, so that V8's optimizing tier does not
    /// compile it with every plain publish's answer (bench/README.md, row 22).
    #[inline(never)]
    fn answer_keyed(
        book: &Book,
        keyed: KeyedRequest,
        envelope_id: &str,
        settle: Settle,
        outcome: &PublishOutcome,
        text: &str,
    ) {
        let repeats = {
            let mut in_flight = book.borrow_mut();
            if let Some(store) = &in_flight.store {
                store.save(&keyed, envelope_id, text, js_sys::Date::now());
            }
            in_flight
                .keys
                .finish(&keyed.key)
                .map(|(_, repeats)| repeats)
                .unwrap_or_default()
        };
        let answer = serde_json::to_value(outcome).unwrap_or_default();
        settle.answer(&receipt(false, envelope_id, answer.clone()));
        for repeat in repeats {
            repeat.answer(&receipt(true, envelope_id, answer.clone()));
        }
    }
}

/// The answer of a publish sent to `client_count` sockets.
fn outcome(client_count: usize, settled: Settled) -> PublishOutcome {
    PublishOutcome {
        client_count,
        results: settled.results,
        deliveries: settled.deliveries,
        truncated: settled.truncated,
    }
}

/// The `worker` crate's view of the raw state (a second handle to it).
fn state_of(raw: &DurableObjectState) -> State {
    State::from(another_handle(raw))
}

fn receipt(replayed: bool, envelope_id: &str, answer: serde_json::Value) -> String {
    Receipt::Answer {
        replayed,
        envelope_id: envelope_id.to_owned(),
        answer,
    }
    .to_text()
}

/// Ends a publish whose last awaited socket acked or closed.
fn complete(book: &Book, waiter: Waiter) {
    // The results are taken before answering: no borrow is held into JS.
    let settled = book.borrow_mut().book.finish(&waiter.envelope_id);
    waiter.answer(book, settled);
}

/// The Durable Object (exported to JavaScript as `RealtimeObject`, which
/// `src/shim.js` wraps; its exports are in `glue`).
#[wasm_bindgen(js_name = RealtimeObject)]
pub struct HopeFlowRealtime {
    state: State,
    /// The same state, raw: for the storage the `worker` crate does not wrap.
    raw_state: DurableObjectState,
    /// The isolate's settings (shared with the worker, see
    /// `routes::settings`); `Err` when one is invalid (the worker then
    /// refuses requests before they get here, and `deliver` refuses too).
    settings: std::result::Result<Rc<Settings>, ApiError>,
    /// Socket id → socket; `None` until first built after (re)start.
    sockets: RefCell<Option<HashMap<String, Socket>>>,
    /// Publishes waiting for acks; shared with `timer`.
    acks: Book,
    /// Ends publishes whose ack timeout passed.
    timer: Timer,
    /// The user's history, opened by its first use; `None` until then.
    history: RefCell<Option<History>>,
    /// Socket object → socket id, for the sockets in the index. Looking the
    /// id up in its tags (`getTags`) took about 10 % of the CPU of a fan-out's
    /// acks in the profile (bench/README.md).
    ids: js_sys::Map,
    /// The one alarm, shared with the key store and the history.
    alarm: Rc<Alarm>,
}

impl HopeFlowRealtime {
    pub fn new(raw_state: DurableObjectState, env: Env) -> Self {
        let state = state_of(&raw_state);
        // Plain pings are answered by the runtime without waking the object.
        match WebSocketRequestResponsePair::new("ping", "pong") {
            Ok(pair) => state.set_websocket_auto_response(&pair),
            Err(err) => console_warn!("could not register the ping auto-response: {err:?}"),
        }
        let settings = settings(&env);
        let (lifetime, retention) = match &settings {
            Ok(s) => (s.config.lifetime(), s.config.history),
            Err(_) => (Lifetime::default(), Retention::default()),
        };
        let alarm = Rc::new(Alarm::new(&raw_state, lifetime, retention));
        let acks: Book = Rc::default();
        let book = Rc::clone(&acks);
        let timer = Timer::new(move || {
            let (due, next) = book.borrow_mut().deadlines.fire(js_sys::Date::now());
            for envelope_id in due {
                // None when the publish completed before its deadline.
                let expired = book.borrow_mut().book.expire(&envelope_id);
                if let Some((waiter, settled)) = expired {
                    waiter.answer(&book, settled);
                }
            }
            next
        });
        HopeFlowRealtime {
            state,
            raw_state,
            settings,
            sockets: RefCell::new(None),
            acks,
            timer,
            history: RefCell::new(None),
            ids: js_sys::Map::new(),
            alarm,
        }
    }

    /// The object's HTTP routes; none of them waits.
    pub fn fetch(&self, req: web_sys::Request) -> web_sys::Response {
        let url = req.url();
        let result = match (crate::query::path(&url), Method::from(req.method())) {
            ("/connect", Method::Get) => self.accept_socket(&req),
            _ => Err(ApiError::NotFound),
        };
        match result.or_else(|err| http::error(&err)) {
            Ok(response) => response.into(),
            Err(err) => {
                console_error!("building a response failed: {err}");
                web_sys::Response::error()
            }
        }
    }

    pub fn websocket_close(&self, ws: &WebSocket, code: usize, reason: String) {
        self.forget(ws);
        // Complete the closing handshake; 1005/1006 are reserved and cannot be sent.
        let code = match u16::try_from(code) {
            Ok(c) if c != 1005 && c != 1006 => c,
            _ => 1000,
        };
        let _ = ws.close(Some(code), Some(reason));
    }

    pub fn websocket_error(&self, ws: &WebSocket, error: worker::Error) {
        console_warn!("websocket error: {error}");
        self.forget(ws);
    }
}

impl HopeFlowRealtime {
    /// Acks are the hot frames; the others' handlers are `#[inline(never)]`
    /// so that V8 does not recompile them with it (bench/README.md, row 22).
    pub fn websocket_message(&self, ws: &WebSocket, message: IncomingFrame) {
        let Some(socket_id) = self.socket_id(ws) else {
            return;
        };
        let size = match &message {
            IncomingFrame::Text(text) => text.len(),
            IncomingFrame::Binary { len } => *len,
        };
        if size > self.max_frame_bytes() {
            self.close_socket(ws, CloseCode::MessageTooBig);
            return;
        }
        // The static `Date.now()`: `worker::Date::now()` allocates a Date.
        let now_ms = js_sys::Date::now();
        let text = match message {
            IncomingFrame::Text(text) => text,
            IncomingFrame::Binary { .. } => {
                let frame = ServerFrame::error(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not supported; send JSON text frames",
                );
                self.reject(ws, &socket_id, frame, now_ms);
                return;
            }
        };
        let frame = match ClientFrame::parse(&text) {
            Ok(frame) => frame,
            Err(err) => {
                let frame = ServerFrame::error(err.code(), err.to_string());
                self.reject(ws, &socket_id, frame, now_ms);
                return;
            }
        };
        // Every frame but a counted ack is paid for from the rate limit.
        match frame {
            ClientFrame::Ack {
                envelope_id,
                result,
            } => {
                // A statement of its own: the book's borrow must end before
                // `charge`, which may close the socket and touch the book.
                let outcome =
                    self.acks
                        .borrow_mut()
                        .book
                        .ack(&envelope_id, &socket_id, result, now_ms);
                match outcome {
                    // The publish may have timed out meanwhile; nothing to wake.
                    AckOutcome::Completed(waiter) => complete(&self.acks, waiter),
                    AckOutcome::Counted => {}
                    // Ignored acks are silent, but they still cost rate.
                    AckOutcome::Ignored => drop(self.charge(ws, &socket_id, now_ms)),
                }
            }
            ClientFrame::Ping if self.charge(ws, &socket_id, now_ms) => send_text(ws, "pong"),
            ClientFrame::Subscribe { filters } if self.charge(ws, &socket_id, now_ms) => {
                self.change_filters(ws, &socket_id, &filters, true)
            }
            ClientFrame::Unsubscribe { filters } if self.charge(ws, &socket_id, now_ms) => {
                self.change_filters(ws, &socket_id, &filters, false)
            }
            ClientFrame::Resume { since, epoch } if self.charge(ws, &socket_id, now_ms) => {
                self.resume(ws, &socket_id, since, &epoch)
            }
            ClientFrame::Refresh { token } if self.charge(ws, &socket_id, now_ms) => {
                self.refresh(ws, &socket_id, token.as_deref(), now_ms)
            }
            // Rate limited: `charge` has answered.
            _ => {}
        }
    }

    /// `GET /connect`: accept a hibernatable socket for the user in `X-User-ID`.
    #[inline(never)]
    fn accept_socket(&self, req: &web_sys::Request) -> std::result::Result<Response, ApiError> {
        let encoded = req
            .headers()
            .get(USER_ID_HEADER)
            .map_err(|_| ApiError::Internal)?
            .unwrap_or_default();
        let user_id: String = js_sys::decode_uri_component(&encoded)
            .map(String::from)
            .map_err(|_| ApiError::Internal)?;
        if user_id.is_empty() {
            return Err(ApiError::Internal);
        }
        let expires_at = match req.headers().get(TOKEN_EXP_HEADER) {
            Ok(Some(exp)) => Some(exp.parse::<u64>().map_err(|_| ApiError::Internal)?),
            Ok(None) => None,
            Err(_) => return Err(ApiError::Internal),
        };
        let pair = WebSocketPair::new()?;
        let socket_id = uuid::Uuid::new_v4().simple().to_string();
        self.state.accept_web_socket(&pair.server);
        let now_ms = js_sys::Date::now();
        let attachment =
            SocketAttachment::new(socket_id.clone(), user_id, now_ms as u64, expires_at);
        // A notice already due goes right after, by the alarm.
        if let Some(at) = self.lifetime().next_ms(&attachment) {
            self.alarm.wake_by(at);
        }
        store_attachment(&pair.server, &attachment.to_json()).map_err(|err| {
            console_error!("storing a socket attachment failed: {err:?}");
            ApiError::Internal
        })?;
        self.with_sockets(|sockets| {
            self.ids
                .set(js_key(&pair.server), &JsValue::from_str(&socket_id));
            sockets.insert(socket_id, Socket::new(pair.server.clone(), attachment));
        });
        Ok(Response::from_websocket(pair.client)?)
    }

    /// `deliver` (RPC from the worker): sends the envelope to every matching
    /// socket; returns a Promise of the answer's JSON text, resolved by the
    /// last ack or close, or by the deadline, whichever comes first.
    /// `options` (JSON text of `DeliverOptions`, absent on a plain publish)
    /// asks for per-socket detail and names an `Idempotency-Key`; a keyed
    /// publish answers a `Receipt`.
    pub fn deliver(&self, envelope_text: JsValue, options: JsValue) -> JsValue {
        match self.try_deliver(envelope_text, options) {
            Ok(answer) => answer,
            Err(err) => js_sys::Promise::reject(&JsValue::from_str(err.code())).into(),
        }
    }

    fn try_deliver(
        &self,
        envelope_text: JsValue,
        options: JsValue,
    ) -> std::result::Result<JsValue, ApiError> {
        let settings = self.settings.as_ref().map_err(Clone::clone)?;
        let options = match options.as_string() {
            Some(text) => DeliverOptions::parse(&text).ok_or(ApiError::Internal)?,
            None => DeliverOptions::default(),
        };
        // The worker sent the canonical envelope text: parse it for matching
        // and send that same JS string to every socket, rather than
        // serializing it again or decoding it out of wasm memory per socket.
        let text = envelope_text.as_string().ok_or(ApiError::Internal)?;
        let envelope = Envelope::parse(&text).ok_or(ApiError::Internal)?;
        let now_ms = js_sys::Date::now();
        if let Some(keyed) = &options.key {
            if let Some(answer) = self.replay_or_wait(keyed, now_ms) {
                return Ok(answer);
            }
        }
        // Kept before it is sent, also when no socket is there to get it.
        let envelope_text = match self.record(&text, now_ms)? {
            Some(with_seq) => with_seq,
            None => envelope_text,
        };
        let lifetime = settings.config.lifetime();
        let mut expired = Vec::new();
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
                // Past its token's end, whether or not the alarm has run.
                .filter(|(_, s)| {
                    let live = !lifetime.expired(&s.attachment, now_ms);
                    if !live {
                        expired.push(s.ws.clone());
                    }
                    live
                })
                // A socket that cannot be sent to (closing) is not counted.
                .filter(|(_, s)| send_value(&s.ws, &envelope_text).is_ok())
                .map(|(id, _)| id.clone())
                .collect()
        });
        for ws in &expired {
            self.close_socket(ws, CloseCode::TokenExpired);
        }
        if delivered.is_empty() && options.key.is_none() {
            // Nobody to wait for: the answer itself, no Promise to settle.
            let settled = Settled::nobody(options.detail);
            let text = outcome(0, settled).to_text().ok_or(ApiError::Internal)?;
            return Ok(JsValue::from_str(&text));
        }
        let (answer, settle) = pending_answer();
        let waiter = Waiter {
            envelope_id: envelope.envelope_id.clone(),
            client_count: delivered.len(),
            keyed: options.key,
            settle,
        };
        if let Some(keyed) = &waiter.keyed {
            self.acks.borrow_mut().keys.start(
                keyed.key.clone(),
                keyed.fingerprint.clone(),
                envelope.envelope_id.clone(),
            );
        }
        // A keyed publish that reached nobody still stores its answer.
        if delivered.is_empty() {
            waiter.answer(&self.acks, Settled::nobody(options.detail));
            return Ok(answer);
        }
        let tracking = Tracking {
            detail: options.detail,
            max_results_bytes: settings.config.max_results_bytes,
            sent_ms: now_ms,
        };
        let mut in_flight = self.acks.borrow_mut();
        in_flight
            .book
            .begin(envelope.envelope_id.clone(), delivered, waiter, tracking)
            .map_err(|_| ApiError::Internal)?;
        let deadline_ms = now_ms + settings.config.ack_timeout().as_millis() as f64;
        let timer = in_flight
            .deadlines
            .push(envelope.envelope_id, deadline_ms, now_ms);
        drop(in_flight);
        if let Some(delay_ms) = timer {
            self.timer.set(delay_ms);
        }
        Ok(answer)
    }

    /// Records the envelope in the user's history (when it is on); its text
    /// with `seq`. A history that cannot be written refuses the publish, so
    /// that no client sees a `seq` the history does not have.
    fn record(
        &self,
        envelope_text: &str,
        now_ms: f64,
    ) -> std::result::Result<Option<JsValue>, ApiError> {
        let recorded = self.with_history(|history| history.record(envelope_text, now_ms));
        match recorded {
            None => Ok(None),
            Some(Ok(text)) => Ok(Some(text)),
            Some(Err(err)) => {
                console_error!("recording history: {err}");
                Err(ApiError::Unavailable)
            }
        }
    }

    /// Runs `f` on the user's history, opening it first; `None` when history
    /// is off (or cannot be opened, which is logged).
    fn with_history<T>(&self, f: impl FnOnce(&mut History) -> T) -> Option<T> {
        let retention = self.settings.as_ref().ok()?.config.history;
        if !retention.enabled() {
            return None;
        }
        let mut guard = self.history.borrow_mut();
        if guard.is_none() {
            match History::open(&self.raw_state, retention, Rc::clone(&self.alarm)) {
                Ok(history) => *guard = Some(history),
                Err(err) => {
                    console_error!("opening history: {err}");
                    return None;
                }
            }
        }
        guard.as_mut().map(f)
    }

    /// `resume`: sends the retained envelopes after `since` that match the
    /// socket's filters, as first sent plus `"recovered": true`, then
    /// `resumed`. All in this one event, so nothing published meanwhile
    /// comes before or between them. A socket resuming an envelope whose
    /// publish still waits for acks joins it: its ack reaches the publisher,
    /// counted in `clientCount`.
    #[inline(never)]
    fn resume(&self, ws: &WebSocket, socket_id: &str, since: u64, epoch: &str) {
        let now_ms = js_sys::Date::now();
        let plan = self.with_history(|history| {
            let position = history.position.clone();
            let same = position.epoch == epoch && since <= position.seq;
            let found = if same {
                history.since(since, now_ms)
            } else {
                Ok((Vec::new(), None))
            };
            found.map(|(rows, oldest)| {
                let complete = history::resume_complete(&position, since, epoch, oldest);
                (position, rows, complete)
            })
        });
        let (position, rows, complete) = match plan {
            None => {
                let frame = ServerFrame::error(
                    ErrorCode::HistoryDisabled,
                    "resume needs history, and this server keeps none (HISTORY_SIZE=0)",
                );
                send_frame(ws, &frame);
                return;
            }
            Some(Err(err)) => {
                console_error!("reading history: {err}");
                // Nothing could be replayed: say so, the client resyncs.
                let frame = ServerFrame::Resumed {
                    since,
                    seq: since,
                    replayed: 0,
                    complete: false,
                    epoch: epoch.to_owned(),
                };
                send_frame(ws, &frame);
                return;
            }
            Some(Ok(plan)) => plan,
        };
        let (filters, connected_ms) = self.with_sockets(|sockets| {
            sockets
                .get(socket_id)
                .map(|s| {
                    (
                        s.attachment.filters.clone(),
                        s.attachment.connected_at as f64,
                    )
                })
                .unwrap_or_default()
        });
        let mut replayed = 0;
        for row in rows {
            let Some(envelope) = Envelope::parse(&row.envelope) else {
                continue;
            };
            if !any_matches(&filters, &envelope.envelope_type, &envelope.payload) {
                continue;
            }
            if ws.send_with_str(history::recovered(&row.envelope)).is_err() {
                return;
            }
            replayed += 1;
            if let Some(waiter) =
                self.acks
                    .borrow_mut()
                    .book
                    .join(&envelope.envelope_id, socket_id, connected_ms)
            {
                waiter.client_count += 1;
            }
        }
        send_frame(
            ws,
            &ServerFrame::Resumed {
                since,
                seq: position.seq,
                replayed,
                complete,
                epoch: position.epoch,
            },
        );
    }

    /// A keyed publish seen before: the stored answer, a conflict, or a
    /// Promise of the answer of the same publish still in flight. `None`:
    /// a new key, to deliver.
    #[inline(never)]
    fn replay_or_wait(&self, keyed: &KeyedRequest, now_ms: f64) -> Option<JsValue> {
        let mut in_flight = self.acks.borrow_mut();
        let stored = self
            .key_store(&mut in_flight)
            .and_then(|store| store.find(&keyed.key, now_ms));
        let first = in_flight.keys.in_flight(&keyed.key);
        match idempotency::decide(stored, first, &keyed.fingerprint) {
            idempotency::Decision::Deliver => None,
            idempotency::Decision::Replay {
                envelope_id,
                answer,
            } => {
                let answer = serde_json::from_str(&answer).unwrap_or_default();
                Some(JsValue::from_str(&receipt(true, &envelope_id, answer)))
            }
            idempotency::Decision::Conflict => {
                Some(JsValue::from_str(&Receipt::conflict().to_text()))
            }
            idempotency::Decision::Wait => {
                let (answer, settle) = pending_answer();
                // `in_flight` said the key is there.
                let _ = in_flight.keys.wait(&keyed.key, settle);
                Some(answer)
            }
        }
    }

    /// `sockets` (RPC from the worker): the user's sockets, oldest first,
    /// and the publishes waiting for acks, as JSON text.
    pub fn sockets(&self, user_id: String) -> String {
        let sockets = self.with_sockets(|sockets| {
            sockets
                .iter()
                .map(|(id, socket)| SocketInfo {
                    socket_id: id.clone(),
                    connected_at: socket.attachment.connected_at,
                    filters: socket.attachment.filters.clone(),
                    expires_at: socket.attachment.expires_at,
                })
                .collect()
        });
        let pending = self.acks.borrow().book.len();
        let history_on = self
            .settings
            .as_ref()
            .is_ok_and(|s| s.config.history.enabled());
        let history = history_on
            .then(|| match crate::storage::history_view(&self.raw_state) {
                Ok(view) => view,
                Err(err) => {
                    console_error!("reading history for the sockets view: {err}");
                    None
                }
            })
            .flatten();
        SocketsView::new(user_id, sockets, pending, history).to_text()
    }

    /// `disconnect` (RPC from the worker, `DisconnectRequest` as JSON text):
    /// closes the named socket or all of them with 4001, or 4000 when asked
    /// to come back; publishes stop waiting for them at once. Answers
    /// `{"closed": N}`.
    pub fn disconnect(&self, request: String) -> String {
        let request = DisconnectRequest::parse(request.as_bytes()).unwrap_or_default();
        let close = if request.reconnect {
            CloseCode::Reauthenticate
        } else {
            CloseCode::Disconnected
        };
        let reason = request.reason.as_deref().unwrap_or(close.reason());
        let chosen: Vec<WebSocket> = self.with_sockets(|sockets| {
            sockets
                .iter()
                .filter(|(id, _)| request.socket_id.as_ref().is_none_or(|only| only == *id))
                .map(|(_, socket)| socket.ws.clone())
                .collect()
        });
        for ws in &chosen {
            let _ = ws.close(Some(close.code()), Some(reason));
            self.forget(ws);
        }
        disconnected_text(chosen.len())
    }

    /// The alarm: deletes expired idempotency keys and history past its
    /// bounds, sends the token notices and closes the sockets that are due
    /// (`schedule`), then sets itself for the next duty.
    pub fn alarm(&self) {
        let now_ms = js_sys::Date::now();
        let lifetime = self.lifetime();
        let retention = self
            .settings
            .as_ref()
            .map_or(Retention::default(), |s| s.config.history);
        let storage_ms = storage::cleanup(&self.raw_state, retention, now_ms);
        let due = self.with_sockets(|sockets| {
            schedule::due_now(lifetime, sockets.values().map(|s| &s.attachment), now_ms)
        });
        for (socket_id, duty) in due {
            self.token_duty(&socket_id, duty);
        }
        let next = self.with_sockets(|sockets| {
            schedule::next_wake(
                lifetime,
                storage_ms,
                sockets.values().map(|s| &s.attachment),
            )
        });
        self.alarm.set(next);
    }

    /// Sends a socket its `token_expiring` notice (once: the attachment
    /// records it), or closes it with 4002.
    fn token_duty(&self, socket_id: &str, duty: TokenDuty) {
        let ws = self.with_sockets(|sockets| {
            let socket = sockets.get_mut(socket_id)?;
            if let TokenDuty::Notice { .. } = duty {
                socket.store(socket.attachment.notified());
            }
            Some(socket.ws.clone())
        });
        let Some(ws) = ws else {
            return;
        };
        match duty {
            TokenDuty::Notice { expires_at } => {
                send_frame(&ws, &ServerFrame::TokenExpiring { expires_at })
            }
            TokenDuty::Close => self.close_socket(&ws, CloseCode::TokenExpired),
        }
    }

    /// `refresh`: a new token of the socket's user extends its life; the
    /// socket id and filters stay. A refused one leaves the old expiry.
    #[inline(never)]
    fn refresh(&self, ws: &WebSocket, socket_id: &str, token: Option<&str>, now_ms: f64) {
        let Ok(settings) = self.settings.as_ref() else {
            return;
        };
        let Some(user_id) = self.with_sockets(|sockets| {
            sockets
                .get(socket_id)
                .map(|socket| socket.attachment.user_id.clone())
        }) else {
            return;
        };
        let now_secs = (now_ms / 1000.0) as u64;
        let expires_at = match settings.verify_refresh(token, &user_id, now_secs) {
            Ok(expires_at) => expires_at,
            Err(refusal) => {
                let frame = ServerFrame::error(ErrorCode::RefreshRejected, refusal.to_string());
                send_frame(ws, &frame);
                return;
            }
        };
        let stored = self.with_sockets(|sockets| {
            let socket = sockets.get_mut(socket_id)?;
            Some(socket.store(socket.attachment.with_expiry(expires_at)))
        });
        match stored {
            None => return,
            Some(false) => {
                let frame = ServerFrame::error(
                    ErrorCode::RefreshRejected,
                    "refresh rejected: the new expiry could not be stored; the socket keeps its current expiry",
                );
                send_frame(ws, &frame);
                return;
            }
            Some(true) => send_frame(ws, &ServerFrame::Refreshed { expires_at }),
        }
        // A notice already due goes right after the answer.
        self.tend_token(socket_id, now_ms);
    }

    /// Does the socket's token duty that is due, and has the alarm wake the
    /// object for its next one.
    fn tend_token(&self, socket_id: &str, now_ms: f64) {
        let lifetime = self.lifetime();
        let attachment = |sockets: &mut HashMap<String, Socket>| {
            sockets.get(socket_id).map(|s| s.attachment.clone())
        };
        let Some(before) = self.with_sockets(attachment) else {
            return;
        };
        if let Some(duty) = lifetime.due(&before, now_ms) {
            self.token_duty(socket_id, duty);
        }
        let next = self
            .with_sockets(attachment)
            .and_then(|after| lifetime.next_ms(&after));
        if let Some(at) = next {
            self.alarm.wake_by(at);
        }
    }

    fn lifetime(&self) -> Lifetime {
        self.settings
            .as_ref()
            .map_or(Lifetime::default(), |s| s.config.lifetime())
    }

    /// The table of keyed answers, opened by its first use (`None` when it
    /// cannot be, which is logged; the next use tries again).
    fn key_store<'a>(&self, in_flight: &'a mut InFlight) -> Option<&'a KeyStore> {
        if in_flight.store.is_none() {
            let ttl_secs = self
                .settings
                .as_ref()
                .map_or(crate::config::DEFAULT_IDEMPOTENCY_TTL_SECS, |s| {
                    s.config.idempotency_ttl_secs
                });
            in_flight.store = KeyStore::open(&self.raw_state, ttl_secs, Rc::clone(&self.alarm));
        }
        in_flight.store.as_ref()
    }

    /// Applies a subscribe (`add`) or unsubscribe to the socket's filters and
    /// confirms it; rejected entries are reported first.
    #[inline(never)]
    fn change_filters(
        &self,
        ws: &WebSocket,
        socket_id: &str,
        entries: &[serde_json::Value],
        add: bool,
    ) {
        let parsed = Filter::parse_all(entries);
        if !parsed.invalid.is_empty() {
            send_frame(ws, &ServerFrame::invalid_filters(&parsed.invalid));
        }
        if parsed.ignored > 0 {
            send_frame(ws, &ServerFrame::too_many_filters(parsed.ignored));
        }
        let reply = self.with_sockets(|sockets| {
            sockets
                .get_mut(socket_id)
                .map(|socket| socket.change_filters(parsed.valid, add))
        });
        let Some(mut frame) = reply else {
            return;
        };
        // Everything up to this seq happened before the subscription took
        // effect; everything after it is delivered live.
        if let ServerFrame::Subscribed { seq, epoch, .. } = &mut frame {
            if let Some(position) = self.with_history(|history| history.position.clone()) {
                *seq = Some(position.seq);
                *epoch = Some(position.epoch);
            }
        }
        send_frame(ws, &frame);
    }

    fn max_frame_bytes(&self) -> usize {
        self.settings
            .as_ref()
            .map_or(DEFAULT_MAX_FRAME_BYTES, |s| s.config.max_frame_bytes)
    }

    /// Takes one message from the socket's rate limit. When it is exhausted,
    /// answers `rate_limited` (a violation) and returns `false`; a socket
    /// past its token's end is closed with 4002 instead.
    fn charge(&self, ws: &WebSocket, socket_id: &str, now_ms: f64) -> bool {
        let lifetime = self.lifetime();
        let charge = self.with_sockets(|sockets| match sockets.get_mut(socket_id) {
            None => Charge::Allowed,
            Some(s) if lifetime.expired(&s.attachment, now_ms) => Charge::Expired,
            Some(s) => match s.limits.take_message(now_ms) {
                true => Charge::Allowed,
                false => Charge::Limited,
            },
        });
        match charge {
            Charge::Allowed => return true,
            Charge::Limited => self.reject(ws, socket_id, rate_limited(), now_ms),
            Charge::Expired => self.close_socket(ws, CloseCode::TokenExpired),
        }
        false
    }

    /// Answers a bad message with an error frame, and closes the socket with
    /// 1008 when violations pile up.
    #[inline(never)]
    fn reject(&self, ws: &WebSocket, socket_id: &str, frame: ServerFrame, now_ms: f64) {
        send_frame(ws, &frame);
        let ServerFrame::Error { code, .. } = frame else {
            return;
        };
        if !code.is_violation() {
            return;
        }
        let verdict = self.with_sockets(|sockets| {
            sockets
                .get_mut(socket_id)
                .map_or(Verdict::Warn, |s| s.limits.violation(now_ms))
        });
        if verdict == Verdict::Close {
            self.close_socket(ws, CloseCode::PolicyViolation);
        }
    }

    /// Closes a socket from the server side and forgets it at once, so no
    /// publish waits for it.
    fn close_socket(&self, ws: &WebSocket, close: CloseCode) {
        let _ = ws.close(Some(close.code()), Some(close.reason()));
        self.forget(ws);
    }

    /// The socket's id, from the id map; after a wake-up the index (which
    /// fills the map from the attachments) is built first. Sockets are
    /// accepted without tags: the map made the tag lookup (`getTags`, about
    /// 10 % of a fan-out's ack CPU) unneeded.
    fn socket_id(&self, ws: &WebSocket) -> Option<String> {
        self.with_sockets(|_| ());
        self.ids.get(js_key(ws)).as_string()
    }

    /// Drops a closed socket from the index and stops waiting for its acks.
    fn forget(&self, ws: &WebSocket) {
        let Some(socket_id) = self.socket_id(ws) else {
            return;
        };
        self.with_sockets(|sockets| sockets.remove(&socket_id));
        self.ids.delete(js_key(ws));
        let completed = self.acks.borrow_mut().book.socket_gone(&socket_id);
        for waiter in completed {
            complete(&self.acks, waiter);
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
            match load_attachment(&ws) {
                Ok(Some(attachment)) if attachment.is_current() => {
                    self.ids
                        .set(js_key(&ws), &JsValue::from_str(&attachment.id));
                    sockets.insert(attachment.id.clone(), Socket::new(ws, attachment));
                }
                other => {
                    if let Err(err) = other {
                        console_error!("unreadable socket attachment: {err}");
                    }
                    let close = CloseCode::Reconnect;
                    let _ = ws.close(Some(close.code()), Some(close.reason()));
                }
            }
        }
        // Only after a wake-up: a new object has none, and a log line per
        // new object was a measurable part of creating one.
        if !sockets.is_empty() {
            console_log!("socket index rebuilt from {} attachment(s)", sockets.len());
        }
        sockets
    }
}

/// What [`HopeFlowRealtime::charge`] found.
enum Charge {
    Allowed,
    /// Over the rate limit: answered `rate_limited`.
    Limited,
    /// Past its token's end: closed with 4002.
    Expired,
}

fn rate_limited() -> ServerFrame {
    ServerFrame::error(
        ErrorCode::RateLimited,
        // Whole numbers: formatting an f64 would link 14 KB of float
        // printing into the wasm for this one message.
        format!(
            "more than {} messages per second (bursts of {}); message dropped",
            crate::limits::MESSAGES_PER_SEC as u32,
            crate::limits::MESSAGE_BURST as u32
        ),
    )
}

fn send_frame(ws: &WebSocket, frame: &ServerFrame) {
    send_text(ws, &frame.to_text());
}

/// Sending fails only when the socket is already closing; the close event
/// cleans up, so the error is dropped here.
fn send_text(ws: &WebSocket, text: &str) {
    let _ = ws.send_with_str(text);
}
