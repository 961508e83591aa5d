//! `HopeFlowRealtime`: one Durable Object per user, composed of parts that
//! own their state: the socket index ([`sockets`]), the publishes in flight
//! ([`publishes`]), the user's history ([`history`]), the tables in storage
//! ([`storage`]) and the one alarm ([`alarm`]). Its event handlers are short
//! sequences of calls to them; the rules are the domain's.

mod alarm;
mod history;
mod outbox;
mod publishes;
mod sockets;
mod storage;
mod webhooks;

use std::rc::Rc;

use wasm_bindgen::JsValue;
use worker::worker_sys::{DurableObjectState, WebSocketRequestResponsePair};
use worker::{js_sys, web_sys, Env, Method, Response, State, WebSocket, WebSocketPair};

use self::alarm::{Alarm, Duties};
use self::history::UserHistory;
use self::publishes::{Context, PublishLog, Publishes, Sent};
use self::sockets::{Charge, Sockets};
use self::webhooks::Webhooks;
use crate::domain::acks::{json_len, Tracking};
use crate::domain::auth::PROTOCOL;
use crate::domain::config::DEFAULT_MAX_FRAME_BYTES;
use crate::domain::error::ApiError;
use crate::domain::filter::{any_matches, Filter};
use crate::domain::history::Retention;
use crate::domain::idempotency::DeliverOptions;
use crate::domain::limits::{SocketCap, Verdict};
use crate::domain::logs::{ClosedBy, Event, Level};
use crate::domain::operator::{disconnected_text, DisconnectRequest, SocketsView};
use crate::domain::protocol::{ClientFrame, CloseCode, Envelope, ErrorCode, ServerFrame};
use crate::domain::session::{
    Lifetime, SocketAttachment, TokenDuty, PROTOCOL_HEADER, TOKEN_EXP_HEADER, USER_ID_HEADER,
};
use crate::runtime::js::socket::{store_attachment, IncomingFrame};
use crate::runtime::js::storage::another_handle;
use crate::runtime::settings::{settings, Settings};
use crate::runtime::telemetry;
use crate::runtime::telemetry::Telemetry;
use crate::runtime::{http, ids};

pub struct HopeFlowRealtime {
    state: State,
    /// The same state, raw: for the storage the `worker` crate does not wrap.
    raw_state: DurableObjectState,
    /// The isolate's settings (shared with the worker, see
    /// `runtime::settings`); `Err` when one is invalid (the worker then
    /// refuses requests before they get here, and `deliver` refuses too).
    settings: Result<Rc<Settings>, ApiError>,
    sockets: Sockets,
    publishes: Publishes,
    history: UserHistory,
    webhooks: Webhooks,
    /// The one alarm, shared with the parts that have timed duties.
    alarm: Rc<Alarm>,
}

impl HopeFlowRealtime {
    pub fn new(raw_state: DurableObjectState, env: Env) -> Self {
        let state = State::from(another_handle(&raw_state));
        // Plain pings are answered by the runtime without waking the object.
        match WebSocketRequestResponsePair::new("ping", "pong") {
            Ok(pair) => state.set_websocket_auto_response(&pair),
            Err(err) => telemetry::error("object.auto_response", &format_args!("{err:?}")),
        }
        let settings = settings(&env);
        let config = settings.as_ref().ok().map(|s| &s.config);
        let lifetime = config.map_or(Lifetime::default(), |c| c.lifetime());
        let retention = config.map(|c| c.history);
        let ttl_secs = config.map_or(crate::domain::config::DEFAULT_IDEMPOTENCY_TTL_SECS, |c| {
            c.idempotency_ttl_secs
        });
        let webhook = config.and_then(|c| c.webhook.clone());
        let duties = Duties {
            lifetime,
            retention: retention.unwrap_or_default(),
            webhook: webhook.clone(),
        };
        let alarm = Rc::new(Alarm::new(&raw_state, duties));
        let webhooks = Webhooks::new(&raw_state, webhook, Rc::clone(&alarm));
        webhooks.started(|| state.get_websockets().len(), js_sys::Date::now());
        HopeFlowRealtime {
            sockets: Sockets::new(State::from(another_handle(&raw_state))),
            publishes: Publishes::new(&raw_state, ttl_secs, Rc::clone(&alarm), webhooks.clone()),
            history: UserHistory::new(&raw_state, retention, Rc::clone(&alarm)),
            webhooks,
            alarm,
            state,
            raw_state,
            settings,
        }
    }

    /// The object's HTTP routes; none of them waits.
    pub fn fetch(&self, req: web_sys::Request) -> web_sys::Response {
        let url = req.url();
        let result = match (crate::domain::query::path(&url), Method::from(req.method())) {
            ("/connect", Method::Get) => self.accept_socket(&req),
            _ => Err(ApiError::NotFound),
        };
        match result.or_else(|err| http::error(&err)) {
            Ok(response) => response.into(),
            Err(err) => {
                telemetry::error("object.fetch", &err);
                web_sys::Response::error()
            }
        }
    }

    pub fn websocket_close(&self, ws: &WebSocket, code: usize, reason: String) {
        let received = u16::try_from(code).unwrap_or(1006);
        self.forget(ws, received, ClosedBy::of_close_event(received));
        // Complete the closing handshake.
        let _ = ws.close(Some(CloseCode::echo(code)), Some(reason));
    }

    pub fn websocket_error(&self, ws: &WebSocket, error: worker::Error) {
        telemetry::error("socket.error", &error);
        self.forget(ws, 1006, ClosedBy::Runtime);
    }

    /// Acks are the hot frames; the others' handlers are `#[inline(never)]`
    /// so that V8 does not recompile them with it (bench/README.md, row 22).
    pub fn websocket_message(&self, ws: &WebSocket, message: IncomingFrame) {
        let Some(socket_id) = self.sockets.id_of(ws) else {
            return;
        };
        if message.len() > self.max_frame_bytes() {
            self.frame_rejected(
                &socket_id,
                CloseCode::MessageTooBig.name(),
                js_sys::Date::now(),
            );
            self.close_socket(ws, CloseCode::MessageTooBig);
            return;
        }
        // The static `Date.now()`: `worker::Date::now()` allocates a Date.
        let now_ms = js_sys::Date::now();
        let bytes = message.len();
        let frame = match message {
            IncomingFrame::Text(text) => ClientFrame::parse(&text)
                .map_err(|err| ServerFrame::error(err.code(), err.to_string())),
            IncomingFrame::Binary { .. } => Err(ServerFrame::error(
                ErrorCode::BinaryNotSupported,
                "binary frames are not supported; send JSON text frames",
            )),
        };
        if self.telemetry().is_some_and(|t| t.enabled(Level::Debug)) {
            self.frame_received(&socket_id, &frame, bytes);
        }
        match frame {
            Ok(frame) => self.client_frame(ws, &socket_id, frame, now_ms),
            Err(refusal) => self.reject(ws, &socket_id, refusal, now_ms),
        }
    }

    /// Every frame but a counted ack is paid for from the rate limit.
    fn client_frame(&self, ws: &WebSocket, socket_id: &str, frame: ClientFrame, now_ms: f64) {
        match frame {
            ClientFrame::Ack {
                envelope_id,
                result,
            } => {
                let ignored = self.publishes.ack(&envelope_id, socket_id, result, now_ms);
                if let Some(result) = ignored {
                    // Ignored acks are silent, but they still cost rate.
                    if self.charge(ws, socket_id, now_ms) {
                        self.late_ack(&envelope_id, socket_id, result, now_ms);
                    }
                }
            }
            frame if !self.charge(ws, socket_id, now_ms) => drop(frame),
            ClientFrame::Ping => send_text(ws, "pong"),
            ClientFrame::Subscribe { filters } => {
                self.change_filters(ws, socket_id, &filters, true)
            }
            ClientFrame::Unsubscribe { filters } => {
                self.change_filters(ws, socket_id, &filters, false)
            }
            ClientFrame::Resume { since, epoch } => self.resume(ws, socket_id, since, &epoch),
            ClientFrame::Refresh { token } => self.refresh(ws, socket_id, token.as_deref(), now_ms),
        }
    }

    /// `GET /connect`: accept a hibernatable socket for the user in
    /// `X-User-ID`, whose token expires at `X-Token-Exp` (if it does);
    /// 429 `too_many_sockets` when the user has `MAX_SOCKETS_PER_USER`.
    #[inline(never)]
    fn accept_socket(&self, req: &web_sys::Request) -> Result<Response, ApiError> {
        let header = |name| req.headers().get(name).map_err(|_| ApiError::Internal);
        let encoded = header(USER_ID_HEADER)?.unwrap_or_default();
        let user_id: String = js_sys::decode_uri_component(&encoded)
            .map(String::from)
            .map_err(|_| ApiError::Internal)?;
        if user_id.is_empty() {
            return Err(ApiError::Internal);
        }
        let expires_at = match header(TOKEN_EXP_HEADER)? {
            Some(exp) => Some(exp.parse::<u64>().map_err(|_| ApiError::Internal)?),
            None => None,
        };
        // Counted from the index (rebuilt from the attachments after a
        // wake-up), before anything is accepted or announced.
        let cap = self
            .settings
            .as_ref()
            .map_or(SocketCap::default(), |s| s.config.max_sockets_per_user);
        cap.admit(self.sockets.count())
            .map_err(ApiError::TooManySockets)?;
        let pair = WebSocketPair::new().map_err(http::failed("making a socket pair"))?;
        let now_ms = js_sys::Date::now();
        let socket_id = ids::compact_id();
        let attachment = SocketAttachment::new(socket_id, user_id, now_ms as u64, expires_at);
        self.state.accept_web_socket(&pair.server);
        store_attachment(&pair.server, &attachment.to_json()).map_err(|err| {
            telemetry::error("socket.attachment", &format_args!("{err:?}"));
            ApiError::Internal
        })?;
        // A notice already due goes right after, by the alarm.
        if let Some(at) = self.lifetime().next_ms(&attachment) {
            self.alarm.wake_by(at);
        }
        let (user_id, socket_id) = (attachment.user_id.clone(), attachment.id.clone());
        self.sockets.add(pair.server, attachment);
        let sockets = self.sockets.count();
        self.webhooks.opened(&user_id, sockets, now_ms);
        if let Some(telemetry) = self.telemetry() {
            telemetry.socket_opened(&user_id, &socket_id, sockets);
        }
        let mut response =
            Response::from_websocket(pair.client).map_err(http::failed("answering an upgrade"))?;
        // The worker leaves only `hopeflow` here, when the client offered it.
        if header(PROTOCOL_HEADER)?.as_deref() == Some(PROTOCOL) {
            response
                .headers_mut()
                .set(PROTOCOL_HEADER, PROTOCOL)
                .map_err(http::failed("naming the protocol"))?;
        }
        Ok(response)
    }

    /// `deliver` (RPC from the worker): sends the envelope to every matching
    /// socket; returns a Promise of the answer's JSON text, resolved by the
    /// last ack or close, or by the deadline, whichever comes first.
    /// `options` (JSON text of `DeliverOptions`, absent on a plain publish)
    /// asks for per-socket detail and names an `Idempotency-Key`; a keyed
    /// publish answers a `Receipt`. A refusal rejects with its error code,
    /// which the worker answers with that code's status.
    /// `user_id` and `received_ms` (when the worker received the request)
    /// are for the `publish` log line and the answer's `ms`.
    pub fn deliver(
        &self,
        envelope_text: JsValue,
        options: JsValue,
        user_id: JsValue,
        received_ms: JsValue,
    ) -> JsValue {
        match self.try_deliver(envelope_text, options, user_id, received_ms) {
            Ok(answer) => answer,
            Err(err) => js_sys::Promise::reject(&JsValue::from_str(err.code())).into(),
        }
    }

    fn try_deliver(
        &self,
        envelope_text: JsValue,
        options: JsValue,
        user_id: JsValue,
        received_ms: JsValue,
    ) -> Result<JsValue, ApiError> {
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
        let context = publish_context(settings, &envelope, &options, user_id, received_ms, now_ms);
        let context = match &options.key {
            Some(keyed) => match self.publishes.replay_or_wait(keyed, context, now_ms) {
                Ok(answer) => return Ok(answer),
                Err(context) => context,
            },
            None => context,
        };
        // Kept before it is sent, also when no socket is there to get it.
        let envelope_text = self.history.record(&text, now_ms)?.unwrap_or(envelope_text);
        let lifetime = settings.config.lifetime();
        let (delivered, expired) =
            self.sockets
                .deliver(&envelope, &envelope_text, lifetime, now_ms);
        for ws in &expired {
            self.close_socket(ws, CloseCode::TokenExpired);
        }
        if delivered.is_empty() && options.key.is_none() {
            // Nobody to wait for: the answer itself, no Promise to settle.
            return context.answer_nobody(&envelope.envelope_id, now_ms);
        }
        let sent = Sent {
            envelope_id: envelope.envelope_id,
            context,
            delivered,
            keyed: options.key,
            tracking: Tracking {
                detail: options.detail,
                max_results_bytes: settings.config.max_results_bytes,
                sent_ms: now_ms,
            },
            deadline_ms: now_ms + settings.config.ack_timeout().as_millis() as f64,
        };
        self.publishes.track(sent, now_ms)
    }

    /// `resume`: sends the retained envelopes after `since` that match the
    /// socket's filters, as first sent plus `"recovered": true`, then
    /// `resumed`. All in this one event, so nothing published meanwhile
    /// comes before or between them. A socket resuming an envelope whose
    /// publish still waits for acks joins it: its ack reaches the publisher,
    /// counted in `clientCount`.
    #[inline(never)]
    fn resume(&self, ws: &WebSocket, socket_id: &str, since: u64, epoch: &str) {
        let replay = match self.history.replay(since, epoch, js_sys::Date::now()) {
            None => return send_frame(ws, &ServerFrame::history_disabled()),
            Some(Err(err)) => {
                telemetry::error("history.resume", &err);
                return send_frame(ws, &ServerFrame::resume_failed(since, epoch));
            }
            Some(Ok(replay)) => replay,
        };
        let Some(socket) = self.sockets.attachment(socket_id) else {
            return;
        };
        let mut replayed = 0;
        for row in replay.rows {
            let Some(envelope) = Envelope::parse(&row.envelope) else {
                continue;
            };
            if !any_matches(&socket.filters, &envelope.envelope_type, &envelope.payload) {
                continue;
            }
            if ws
                .send_with_str(crate::domain::history::recovered(&row.envelope))
                .is_err()
            {
                return;
            }
            replayed += 1;
            self.publishes
                .join(&envelope.envelope_id, socket_id, socket.connected_at as f64);
        }
        let resumed = ServerFrame::Resumed {
            since,
            seq: replay.position.seq,
            replayed,
            complete: replay.complete,
            epoch: replay.position.epoch,
        };
        send_frame(ws, &resumed);
    }

    /// `sockets` (RPC from the worker): the user's sockets, oldest first,
    /// and the publishes waiting for acks, as JSON text.
    pub fn sockets(&self, user_id: String) -> String {
        let view = SocketsView::new(
            user_id,
            self.sockets.infos(),
            self.publishes.waiting(),
            self.history.view(),
        );
        view.with_webhooks(self.webhooks.view()).to_text()
    }

    /// `disconnect` (RPC from the worker, `DisconnectRequest` as JSON text):
    /// closes the named socket or all of them with 4001, or 4000 when asked
    /// to come back; publishes stop waiting for them at once. Answers
    /// `{"closed": N}`. A request that does not parse closes nothing: the
    /// worker only sends ones it parsed (`operator` tests the round trip).
    pub fn disconnect(&self, request: String) -> JsValue {
        let request = match DisconnectRequest::parse(request.as_bytes()) {
            Ok(request) => request,
            Err(err) => {
                telemetry::error(
                    "operator.disconnect",
                    &format_args!("a request the worker sent did not parse: {err}"),
                );
                let code = JsValue::from_str(ApiError::Internal.code());
                return js_sys::Promise::reject(&code).into();
            }
        };
        let close = request.close_code();
        let reason = request.reason.as_deref().unwrap_or(close.reason());
        let chosen = self.sockets.chosen(request.socket_id.as_deref());
        for ws in &chosen {
            let _ = ws.close(Some(close.code()), Some(reason));
            self.forget(ws, close.code(), ClosedBy::Server);
        }
        JsValue::from_str(&disconnected_text(chosen.len()))
    }

    /// The alarm: deletes expired idempotency keys and history past its
    /// bounds, sends the token notices and closes the sockets that are due
    /// (`schedule`), does the webhooks' duties (a request due now goes
    /// out), then sets itself for the next duty.
    pub fn alarm(&self) {
        self.alarm.fired();
        let now_ms = js_sys::Date::now();
        let lifetime = self.lifetime();
        let retention = self
            .settings
            .as_ref()
            .map_or(Retention::default(), |s| s.config.history);
        let storage_ms = storage::cleanup(&self.raw_state, retention, now_ms);
        for (socket_id, duty) in self.sockets.due_now(lifetime, now_ms) {
            self.token_duty(&socket_id, duty);
        }
        self.webhooks.on_alarm(self.sockets.count(), now_ms);
        let stored = [storage_ms, self.webhooks.next_ms(now_ms)];
        let stored = stored.into_iter().flatten().min_by(f64::total_cmp);
        self.alarm.set(self.sockets.next_wake(lifetime, stored));
    }

    /// An ack the publishes did not wait for, from a socket of its user:
    /// maybe `ack.late`.
    #[inline(never)]
    fn late_ack(&self, envelope_id: &str, socket_id: &str, result: serde_json::Value, now_ms: f64) {
        if !self.webhooks.tracks_late_acks() {
            return;
        }
        if let Some(socket) = self.sockets.attachment(socket_id) {
            self.webhooks
                .late_ack(envelope_id, socket_id, &socket.user_id, result, now_ms);
        }
    }

    /// Sends a socket its `token_expiring` notice (once: the attachment
    /// records it), or closes it with 4002.
    fn token_duty(&self, socket_id: &str, duty: TokenDuty) {
        let Some(ws) = self.sockets.ws(socket_id) else {
            return;
        };
        match duty {
            TokenDuty::Notice { expires_at } => {
                self.sockets.update(socket_id, SocketAttachment::notified);
                send_frame(&ws, &ServerFrame::TokenExpiring { expires_at });
            }
            TokenDuty::Close => self.close_socket(&ws, CloseCode::TokenExpired),
        }
    }

    /// `refresh`: a new token of the socket's user extends its life; the
    /// socket id and filters stay. A refused one leaves the old expiry.
    #[inline(never)]
    fn refresh(&self, ws: &WebSocket, socket_id: &str, token: Option<&str>, now_ms: f64) {
        let (Ok(settings), Some(socket)) =
            (self.settings.as_ref(), self.sockets.attachment(socket_id))
        else {
            return;
        };
        let now_secs = (now_ms / 1000.0) as u64;
        let expires_at = match settings.verify_refresh(token, &socket.user_id, now_secs) {
            Ok(expires_at) => expires_at,
            Err(refusal) => {
                let frame = ServerFrame::error(ErrorCode::RefreshRejected, refusal.to_string());
                return send_frame(ws, &frame);
            }
        };
        let stored = self
            .sockets
            .update(socket_id, |a| a.with_expiry(expires_at));
        if stored != Some(true) {
            let frame = ServerFrame::error(
                ErrorCode::RefreshRejected,
                "refresh rejected: the new expiry could not be stored; the socket keeps its current expiry",
            );
            return send_frame(ws, &frame);
        }
        send_frame(ws, &ServerFrame::Refreshed { expires_at });
        if let Some(telemetry) = self.telemetry() {
            telemetry.log(&Event::TokenRefreshed {
                user_id: &socket.user_id,
                socket_id,
                expires_at,
            });
        }
        // A notice already due goes right after the answer.
        self.tend_token(socket_id, now_ms);
    }

    /// Does the socket's token duty that is due, and has the alarm wake the
    /// object for its next one.
    fn tend_token(&self, socket_id: &str, now_ms: f64) {
        let lifetime = self.lifetime();
        let due = self
            .sockets
            .attachment(socket_id)
            .and_then(|socket| lifetime.due(&socket, now_ms));
        if let Some(duty) = due {
            self.token_duty(socket_id, duty);
        }
        let next = self
            .sockets
            .attachment(socket_id)
            .and_then(|socket| lifetime.next_ms(&socket));
        if let Some(at) = next {
            self.alarm.wake_by(at);
        }
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
        let Some(mut frame) = self.sockets.change_filters(socket_id, parsed.valid, add) else {
            return;
        };
        // Everything up to this seq happened before the subscription took
        // effect; everything after it is delivered live.
        if let ServerFrame::Subscribed { seq, epoch, .. } = &mut frame {
            if let Some(position) = self.history.position() {
                *seq = Some(position.seq);
                *epoch = Some(position.epoch);
            }
        }
        send_frame(ws, &frame);
    }

    fn lifetime(&self) -> Lifetime {
        self.settings
            .as_ref()
            .map_or(Lifetime::default(), |s| s.config.lifetime())
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
        match self.sockets.charge(socket_id, self.lifetime(), now_ms) {
            Charge::Allowed => return true,
            Charge::Limited => self.reject(ws, socket_id, ServerFrame::rate_limited(), now_ms),
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
        self.frame_rejected(socket_id, code.as_str(), now_ms);
        if code.is_violation() && self.sockets.violation(socket_id, now_ms) == Verdict::Close {
            self.frame_rejected(socket_id, CloseCode::PolicyViolation.name(), now_ms);
            self.close_socket(ws, CloseCode::PolicyViolation);
        }
    }

    /// Closes a socket from the server side and forgets it at once, so no
    /// publish waits for it.
    fn close_socket(&self, ws: &WebSocket, close: CloseCode) {
        let _ = ws.close(Some(close.code()), Some(close.reason()));
        let gone = self.forget(ws, close.code(), ClosedBy::Server);
        if let (Some(socket), Some(telemetry)) = (gone, self.telemetry()) {
            if close == CloseCode::TokenExpired {
                telemetry.log(&Event::TokenExpired {
                    user_id: &socket.user_id,
                    socket_id: &socket.id,
                });
            }
        }
    }

    /// Drops a closed socket from the index, stops waiting for its acks
    /// and logs its end (once: a socket the server closed is gone when the
    /// client's close comes). Out of line: every way a socket ends calls it.
    #[inline(never)]
    fn forget(&self, ws: &WebSocket, code: u16, by: ClosedBy) -> Option<SocketAttachment> {
        let socket = self.sockets.remove(ws)?;
        self.publishes.socket_gone(&socket.id);
        let now_ms = js_sys::Date::now();
        self.webhooks.closed(self.sockets.count(), now_ms);
        if let Some(telemetry) = self.telemetry() {
            let duration_ms = (now_ms as u64).saturating_sub(socket.connected_at);
            telemetry.socket_closed(&socket.user_id, &socket.id, code, by, duration_ms);
        }
        Some(socket)
    }

    fn telemetry(&self) -> Option<&Telemetry> {
        self.settings.as_ref().ok().map(|s| &s.telemetry)
    }

    /// A frame answered with an error frame or a close: a `frame.rejected`
    /// line, folded (at most one per second per code in this isolate). The
    /// fold decides first: a flood's folded frames cost no lookup.
    #[inline(never)]
    fn frame_rejected(&self, socket_id: &str, code: &str, now_ms: f64) {
        let Some(telemetry) = self.telemetry() else {
            return;
        };
        let Some(count) = telemetry.admit("frame.rejected", code, Level::Warn, now_ms) else {
            return;
        };
        if let Some(user_id) = self.sockets.user_of(socket_id) {
            telemetry.log(&Event::FrameRejected {
                user_id: &user_id,
                socket_id,
                code,
                count,
            });
        }
    }

    /// `debug`: one line per frame received, its type and size.
    #[inline(never)]
    fn frame_received(
        &self,
        socket_id: &str,
        frame: &Result<ClientFrame, ServerFrame>,
        bytes: usize,
    ) {
        let (Some(telemetry), Some(user_id)) = (self.telemetry(), self.sockets.user_of(socket_id))
        else {
            return;
        };
        let frame_type = match frame {
            Ok(frame) => frame.kind(),
            Err(_) => "invalid",
        };
        telemetry.log(&Event::Frame {
            user_id: &user_id,
            socket_id,
            frame_type,
            bytes,
        });
    }
}

/// What a publish's answer and line need: when the worker received it,
/// and the line's facts when a line or a data point is wanted.
fn publish_context(
    settings: &Settings,
    envelope: &Envelope,
    options: &DeliverOptions,
    user_id: JsValue,
    received_ms: JsValue,
    now_ms: f64,
) -> Context {
    let log = settings.telemetry.wants_publishes().then(|| PublishLog {
        user_id: user_id.as_string().unwrap_or_default(),
        envelope_type: envelope.envelope_type.clone(),
        bytes: json_len(&envelope.payload),
        keyed: options.key.is_some(),
        batch: options.batch,
    });
    Context {
        // Never after now: the worker's clock may run ahead of this one.
        received_ms: received_ms.as_f64().map_or(now_ms, |t| t.min(now_ms)),
        detail: options.detail,
        log,
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
