//! The user's webhooks (`domain::webhook`): presence kept in storage,
//! events written to an outbox in the same turn as the change that caused
//! them, and delivered by the alarm one request at a time, retried with
//! backoff, dropped past their bounds. Off (and free) without `WEBHOOK_URL`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::Value;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::future_to_promise;
use worker::js_sys;
use worker::worker_sys::DurableObjectState;

use super::alarm::Alarm;
use super::outbox::{Batch, Outbox};
use crate::domain::config::WebhookConfig;
use crate::domain::logs;
use crate::domain::operator::WebhookView;
use crate::domain::webhook::{
    self, signature_header, Event, EventKind, REQUEST_TIMEOUT_MS, SIGNATURE_HEADER,
};
use crate::runtime::ids;
use crate::runtime::js::fetch::{post_json, Posted};
use crate::runtime::js::storage::{another_handle, Bind};
use crate::runtime::settings;
use crate::runtime::telemetry;

/// The object's webhooks; every method is a no-op when they are off.
#[derive(Clone)]
pub struct Webhooks(Option<Rc<Hooks>>);

struct Hooks {
    config: WebhookConfig,
    state: DurableObjectState,
    alarm: Rc<Alarm>,
    /// The tables and their state, read by the first use.
    outbox: RefCell<Option<Outbox>>,
    /// A request is on its way: the next waits for it.
    sending: Cell<bool>,
}

impl Webhooks {
    pub fn new(
        state: &DurableObjectState,
        config: Option<WebhookConfig>,
        alarm: Rc<Alarm>,
    ) -> Self {
        Webhooks(config.map(|config| {
            Rc::new(Hooks {
                config,
                state: another_handle(state),
                alarm,
                outbox: RefCell::new(None),
                sending: Cell::new(false),
            })
        }))
    }

    /// The object started with `sockets()` open (asked only when webhooks
    /// are on). A user stored online with
    /// none lost them without close events (a deploy, a restart): the last
    /// one counts as closed now, and `user.offline` follows after the
    /// delay unless a socket connects first.
    #[inline(never)]
    pub fn started(&self, sockets: impl FnOnce() -> usize, now_ms: f64) {
        if self.0.is_some() {
            // What `Presence::check` does: a close with what is open now.
            self.closed(sockets(), now_ms);
        }
    }

    /// A socket of `user_id` opened; `sockets` are open now.
    #[inline(never)]
    pub fn opened(&self, user_id: &str, sockets: usize, now_ms: f64) {
        let Some(hooks) = &self.0 else { return };
        hooks.with(|outbox| {
            outbox.remember_user(user_id);
            // A connect while online writes nothing.
            let event = outbox.change_presence(|p| p.opened(sockets));
            if let Some(kind) = event {
                hooks.record(outbox, kind, now_ms);
            }
        });
    }

    /// A socket closed; `sockets` are left.
    #[inline(never)]
    pub fn closed(&self, sockets: usize, now_ms: f64) {
        let Some(hooks) = &self.0 else { return };
        let due = hooks.with(|outbox| {
            let delay = hooks.config.offline_delay_secs;
            outbox.change_presence(|p| p.closed(sockets, now_ms, delay));
            outbox.presence.offline_at
        });
        if let Some(at) = due.flatten() {
            hooks.alarm.wake_by(at);
        }
    }

    /// Whether deliveries whose publish timed out are kept for `ack.late`.
    #[inline(never)]
    pub fn tracks_late_acks(&self) -> bool {
        self.0.as_ref().is_some_and(|h| h.config.tracks_late_acks())
    }

    /// A publish was answered at its timeout without these sockets' acks:
    /// kept for the late-ack window (in storage, so hibernation keeps them).
    #[inline(never)]
    pub fn unacked(&self, envelope_id: &str, sockets: &[String], sent_ms: f64) {
        let Some(hooks) = self.0.as_ref().filter(|h| h.config.tracks_late_acks()) else {
            return;
        };
        let until = sent_ms + hooks.config.late_ack_window_secs as f64 * 1000.0;
        hooks.with(|outbox| {
            for socket_id in sockets {
                let binds = [
                    Bind::Text(envelope_id),
                    Bind::Text(socket_id),
                    Bind::Number(sent_ms.floor()),
                    Bind::Number(until.floor()),
                ];
                outbox.exec(
                    "recording a late-ack candidate",
                    webhook::INSERT_LATE,
                    &binds,
                );
            }
        });
        hooks.alarm.wake_by(until);
    }

    /// An ack the publishes did not wait for: `ack.late` when it is for a
    /// delivery whose publish timed out, within the window, once.
    #[inline(never)]
    pub fn late_ack(
        &self,
        envelope_id: &str,
        socket_id: &str,
        user_id: &str,
        result: Value,
        now_ms: f64,
    ) {
        let Some(hooks) = self.0.as_ref().filter(|h| h.config.tracks_late_acks()) else {
            return;
        };
        hooks.with(|outbox| {
            let Some(sent_at) = outbox.take_late(envelope_id, socket_id, now_ms) else {
                return;
            };
            outbox.remember_user(user_id);
            let kind = EventKind::AckLate {
                envelope_id: envelope_id.to_owned(),
                socket_id: socket_id.to_owned(),
                result,
                ack_ms: (now_ms - sent_at).max(0.0) as u64,
            };
            hooks.record(outbox, kind, now_ms);
        });
    }

    /// The alarm's webhook duties, with `sockets` open: presence (a check
    /// for sockets dropped without close events, a due `user.offline`),
    /// expired late-ack candidates, then the next request if one is due.
    /// The request is not awaited: the runtime runs one alarm at a time,
    /// and a receiver that is slow to answer must not hold back the next
    /// (a token's close, an offline). Its end schedules what follows.
    #[inline(never)]
    pub fn on_alarm(&self, sockets: usize, now_ms: f64) {
        let Some(hooks) = self.0.as_ref() else { return };
        let batch = hooks.with(|outbox| {
            let delay = hooks.config.offline_delay_secs;
            let event = outbox.change_presence(|p| {
                p.check(sockets, now_ms, delay);
                p.due(sockets, now_ms)
            });
            if let Some(kind) = event {
                hooks.record(outbox, kind, now_ms);
            }
            outbox.exec(
                "expiring late-ack candidates",
                webhook::EXPIRE_LATE,
                &[Bind::Number(now_ms.floor())],
            );
            hooks.due_batch(outbox, now_ms)
        });
        if let Some(Some(batch)) = batch {
            Hooks::send(Rc::clone(hooks), batch);
        }
    }

    /// When the alarm must wake for webhooks, given what it knows now.
    #[inline(never)]
    pub fn next_ms(&self, now_ms: f64) -> Option<f64> {
        let hooks = self.0.as_ref()?;
        let sending = hooks.sending.get();
        hooks
            .with(|outbox| outbox.next_ms(&hooks.config, now_ms, sending))
            .flatten()
    }

    /// The sockets view's `webhooks`; `None` when they are off.
    #[inline(never)]
    pub fn view(&self) -> Option<WebhookView> {
        let hooks = self.0.as_ref()?;
        hooks.with(|outbox| WebhookView {
            pending: outbox.pending(),
            dropped: outbox.dropped,
            last_error: outbox.last_error.clone(),
            next_attempt_at: outbox.next_attempt_at.map(|at| at as u64),
        })
    }
}

impl Hooks {
    /// Runs `f` on the outbox, opening it first; `None` (logged) when the
    /// storage cannot be read.
    fn with<T>(&self, f: impl FnOnce(&mut Outbox) -> T) -> Option<T> {
        let mut guard = self.outbox.borrow_mut();
        if guard.is_none() {
            match Outbox::open(&self.state) {
                Ok(outbox) => *guard = Some(outbox),
                Err(err) => {
                    telemetry::error("webhook.outbox", &err);
                    return None;
                }
            }
        }
        guard.as_mut().map(f)
    }

    /// Writes an event to the outbox, in this turn, and has the alarm send
    /// it (at once, unless a retry is waiting: then at the retry).
    fn record(&self, outbox: &mut Outbox, kind: EventKind, now_ms: f64) {
        if !self.config.events.sends(&kind) {
            return;
        }
        let Some(user_id) = outbox.user_id.clone() else {
            telemetry::error(
                "webhook.record",
                &"an event with no user to name was not recorded",
            );
            return;
        };
        outbox.seq += 1;
        let event = Event {
            id: ids::envelope_id(),
            user_id,
            seq: outbox.seq,
            at: now_ms as u64,
            kind,
        };
        let binds = [
            Bind::Number(event.seq as f64),
            Bind::Number(now_ms.floor()),
            Bind::Text(&event.to_text()),
        ];
        outbox.exec("recording a webhook event", webhook::INSERT_EVENT, &binds);
        outbox.save("seq", &outbox.seq.to_string());
        // Not while a request is on its way: what it carries may not be
        // counted as dropped (the next request bounds the outbox first).
        if !self.sending.get() {
            outbox.bound(&self.config, now_ms);
        }
        self.alarm.wake_by(outbox.next_attempt_at.unwrap_or(now_ms));
    }

    /// The next request, if one is due and none is on its way.
    fn due_batch(&self, outbox: &mut Outbox, now_ms: f64) -> Option<Batch> {
        if self.sending.get() || outbox.next_attempt_at.is_some_and(|at| at > now_ms) {
            return None;
        }
        outbox.bound(&self.config, now_ms);
        let batch = outbox.batch()?;
        self.sending.set(true);
        Some(batch)
    }

    /// Sends one request; its end records the outcome and wakes the alarm
    /// for what follows.
    fn send(hooks: Rc<Hooks>, batch: Batch) {
        let _ = future_to_promise(async move {
            let t = (js_sys::Date::now() / 1000.0) as u64;
            let signature = signature_header(hooks.config.secret.as_bytes(), t, &batch.body);
            let headers = [(SIGNATURE_HEADER, signature.as_str())];
            let sent_ms = js_sys::Date::now();
            let posted =
                post_json(&hooks.config.url, &batch.body, &headers, REQUEST_TIMEOUT_MS).await;
            hooks.sending.set(false);
            let now_ms = js_sys::Date::now();
            let status = match &posted {
                Posted::Status(status) => Some(*status),
                Posted::Failed(_) => None,
            };
            settings::log(&logs::Event::WebhookDelivery {
                events: batch.events,
                status,
                ok: status.is_some_and(|s| (200..300).contains(&s)),
                attempt: batch.attempt,
                ms: (now_ms - sent_ms).max(0.0) as u64,
            });
            let next = hooks.with(|outbox| {
                match posted {
                    Posted::Status(status) if (200..300).contains(&status) => {
                        outbox.delivered(batch.last_seq)
                    }
                    Posted::Status(status) => outbox.failed(format!("HTTP {status}"), now_ms),
                    Posted::Failed(why) => outbox.failed(why, now_ms),
                }
                outbox.next_ms(&hooks.config, now_ms, false)
            });
            if let Some(at) = next.flatten() {
                hooks.alarm.wake_by(at);
            }
            Ok(JsValue::UNDEFINED)
        });
    }
}
