//! The publishes in flight: the ack book, their deadlines and the one
//! runtime timer that ends them, the keyed publishes and the repeats that
//! wait for them, and the table of keyed answers. A publish in flight keeps
//! the object awake, so none of it needs to survive hibernation but the
//! keyed answers, which are kept in storage until they expire. Every
//! borrow of it stays inside these methods.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use wasm_bindgen::JsValue;
use worker::js_sys;
use worker::worker_sys::DurableObjectState;

use super::alarm::Alarm;
use super::storage::KeyStore;
use super::webhooks::Webhooks;
use crate::domain::acks::{AckBook, AckOutcome, DeadlineQueue, Settled, Tracking};
use crate::domain::error::ApiError;
use crate::domain::idempotency::{self, KeyBook, KeyedRequest, Receipt};
use crate::domain::logs::PublishFacts;
use crate::domain::protocol::PublishOutcome;
use crate::runtime::js::promise::{deliver_answer, pending_answer, Settle, Timer};
use crate::runtime::js::storage::another_handle;
use crate::runtime::settings::shared as shared_settings;
use crate::runtime::telemetry;

/// A publish waiting for acks: what its answer needs once it is settled.
struct Waiter {
    envelope_id: String,
    client_count: usize,
    /// Its `Idempotency-Key`, whose answer is kept and shared with repeats.
    keyed: Option<KeyedRequest>,
    settle: Settle,
    context: Context,
}

/// A repeat of a keyed publish in flight, answered with the first's answer.
struct Repeat {
    settle: Settle,
    context: Context,
}

/// What a publish's answer and its `publish` line need besides the acks.
pub struct Context {
    /// When the worker received the request (its clock).
    pub received_ms: f64,
    /// `?detail=true`.
    pub detail: bool,
    /// `None` when neither a line nor a data point is wanted.
    pub log: Option<PublishLog>,
}

/// The `publish` line's facts that the worker and the envelope give.
pub struct PublishLog {
    pub user_id: String,
    pub envelope_type: String,
    /// The payload's JSON length.
    pub bytes: usize,
    pub keyed: bool,
    /// `/publish/batch`: how many users it named.
    pub batch: Option<usize>,
}

/// The counts a `publish` line reports; a replay of a stored answer knows
/// only the first two.
struct Counts {
    client_count: usize,
    acked: usize,
    timed_out: Option<usize>,
    closed: Option<usize>,
}

/// What is shared with the timer.
struct InFlight {
    book: AckBook<Waiter>,
    deadlines: DeadlineQueue,
    /// Keyed publishes in flight and the repeats waiting for them.
    keys: KeyBook<Repeat>,
    /// Where keyed answers are kept; opened by the first keyed publish.
    store: Option<KeyStore>,
    state: DurableObjectState,
    ttl_secs: u64,
    /// Wakes the object to delete keyed answers past their TTL.
    alarm: Rc<Alarm>,
    /// Told of the deliveries a publish's deadline passed without.
    webhooks: Webhooks,
}

type Shared = Rc<RefCell<InFlight>>;

pub struct Publishes {
    shared: Shared,
    /// Ends publishes whose ack timeout passed.
    timer: Timer,
}

/// A publish just sent: what its tracking needs.
pub struct Sent {
    pub envelope_id: String,
    pub context: Context,
    /// The sockets it went to.
    pub delivered: Vec<String>,
    pub keyed: Option<KeyedRequest>,
    pub tracking: Tracking,
    pub deadline_ms: f64,
}

impl Publishes {
    pub fn new(
        state: &DurableObjectState,
        ttl_secs: u64,
        alarm: Rc<Alarm>,
        webhooks: Webhooks,
    ) -> Publishes {
        let shared: Shared = Rc::new(RefCell::new(InFlight {
            book: AckBook::default(),
            deadlines: DeadlineQueue::default(),
            keys: KeyBook::default(),
            store: None,
            state: another_handle(state),
            ttl_secs,
            alarm,
            webhooks,
        }));
        let fired = Rc::clone(&shared);
        let timer = Timer::new(move || expire_due(&fired));
        Publishes { shared, timer }
    }

    /// A socket's ack; an ignored one gives its result back (it still
    /// costs rate, and may be a late ack).
    pub fn ack(
        &self,
        envelope_id: &str,
        socket_id: &str,
        result: Value,
        now_ms: f64,
    ) -> Option<Value> {
        // A statement of its own: the borrow ends before the answer.
        let outcome = self
            .shared
            .borrow_mut()
            .book
            .ack(envelope_id, socket_id, result, now_ms);
        match outcome {
            // The publish may have timed out meanwhile; nothing to wake.
            AckOutcome::Completed(waiter) => complete(&self.shared, waiter),
            AckOutcome::Counted => {}
            AckOutcome::Ignored(result) => return Some(result),
        }
        None
    }

    /// A socket closed: publishes stop waiting for it.
    pub fn socket_gone(&self, socket_id: &str) {
        let completed = self.shared.borrow_mut().book.socket_gone(socket_id);
        for waiter in completed {
            complete(&self.shared, waiter);
        }
    }

    /// A resuming socket was sent the envelope of a publish still in
    /// flight: its ack counts too.
    pub fn join(&self, envelope_id: &str, socket_id: &str, connected_ms: f64) {
        let mut shared = self.shared.borrow_mut();
        if let Some(waiter) = shared.book.join(envelope_id, socket_id, connected_ms) {
            waiter.client_count += 1;
        }
    }

    /// How many publishes wait for acks.
    pub fn waiting(&self) -> usize {
        self.shared.borrow().book.len()
    }

    /// A keyed publish seen before: the stored answer, a conflict, or a
    /// Promise of the answer of the same publish still in flight. `None`:
    /// a new key, to deliver.
    #[inline(never)]
    pub fn replay_or_wait(
        &self,
        keyed: &KeyedRequest,
        context: Context,
        now_ms: f64,
    ) -> Result<JsValue, Context> {
        let mut shared = self.shared.borrow_mut();
        let stored = shared
            .store()
            .and_then(|store| store.find(&keyed.key, now_ms));
        let first = shared.keys.in_flight(&keyed.key);
        match idempotency::decide(stored, first, &keyed.fingerprint) {
            idempotency::Decision::Deliver => Err(context),
            idempotency::Decision::Replay {
                envelope_id,
                answer,
            } => {
                let answer: Value = serde_json::from_str(&answer).unwrap_or_default();
                let line = context.report(&envelope_id, &Counts::stored(&answer), true, now_ms);
                Ok(deliver_answer(&receipt(true, &envelope_id, answer), line))
            }
            idempotency::Decision::Conflict => {
                Ok(JsValue::from_str(&Receipt::conflict().to_text()))
            }
            idempotency::Decision::Wait => {
                let (answer, settle) = pending_answer();
                // `in_flight` said the key is there.
                let _ = shared.keys.wait(&keyed.key, Repeat { settle, context });
                Ok(answer)
            }
        }
    }

    /// Tracks a publish just sent until its acks or its deadline: a
    /// Promise of its answer (settled at once when it reached nobody).
    pub fn track(&self, sent: Sent, now_ms: f64) -> Result<JsValue, ApiError> {
        let (answer, settle) = pending_answer();
        let waiter = Waiter {
            envelope_id: sent.envelope_id.clone(),
            client_count: sent.delivered.len(),
            keyed: sent.keyed,
            settle,
            context: sent.context,
        };
        if let Some(keyed) = &waiter.keyed {
            let mut shared = self.shared.borrow_mut();
            shared.keys.start(
                keyed.key.clone(),
                keyed.fingerprint.clone(),
                sent.envelope_id.clone(),
            );
            if !sent.delivered.is_empty() {
                provisional(
                    &mut shared,
                    keyed,
                    &sent.envelope_id,
                    sent.delivered.len(),
                    now_ms,
                );
            }
        }
        // A keyed publish that reached nobody still stores its answer.
        if sent.delivered.is_empty() {
            waiter.answer(&self.shared, Settled::nobody(sent.tracking.detail));
            return Ok(answer);
        }
        let mut shared = self.shared.borrow_mut();
        shared
            .book
            .begin(
                sent.envelope_id.clone(),
                sent.delivered,
                waiter,
                sent.tracking,
            )
            .map_err(|_| ApiError::Internal)?;
        let timer = shared
            .deadlines
            .push(sent.envelope_id, sent.deadline_ms, now_ms);
        drop(shared);
        if let Some(delay_ms) = timer {
            self.timer.set(delay_ms);
        }
        Ok(answer)
    }
}

impl InFlight {
    /// The table of keyed answers, opened by its first use (`None` when it
    /// cannot be, which is logged; the next use tries again).
    fn store(&mut self) -> Option<&KeyStore> {
        if self.store.is_none() {
            self.store = KeyStore::open(&self.state, self.ttl_secs);
        }
        self.store.as_ref()
    }
}

/// Stores a keyed publish's answer as it stands when sent (its sockets, no
/// acks yet), in the same turn as its history row and before its frames
/// leave (the output gate holds them until both are written). Should the
/// runtime stop before the acks (a deploy), a repeat after the restart
/// replays this instead of delivering the envelope a second time; the
/// sockets get the first one by resuming. The full answer replaces it.
fn provisional(
    in_flight: &mut InFlight,
    keyed: &KeyedRequest,
    envelope_id: &str,
    sent_to: usize,
    now_ms: f64,
) {
    let Some(text) = PublishOutcome::unacked(sent_to).to_text() else {
        return;
    };
    let expiry = in_flight
        .store()
        .map(|store| store.save(keyed, envelope_id, &text, now_ms));
    if let Some(at) = expiry {
        in_flight.alarm.wake_by(at);
    }
}

/// The timer fired: answers the publishes whose deadline passed; when to
/// fire next.
fn expire_due(shared: &Shared) -> Option<f64> {
    let (due, next) = shared.borrow_mut().deadlines.fire(js_sys::Date::now());
    for envelope_id in due {
        let webhooks = shared.borrow().webhooks.clone();
        if webhooks.tracks_late_acks() {
            let unacked = shared.borrow().book.unacked(&envelope_id);
            if let Some((sockets, sent_ms)) = unacked.filter(|(sockets, _)| !sockets.is_empty()) {
                webhooks.unacked(&envelope_id, &sockets, sent_ms);
            }
        }
        // None when the publish completed before its deadline.
        let expired = shared.borrow_mut().book.expire(&envelope_id);
        if let Some((waiter, settled)) = expired {
            waiter.answer(shared, settled);
        }
    }
    next
}

/// Ends a publish whose last awaited socket acked or closed.
fn complete(shared: &Shared, waiter: Waiter) {
    // The results are taken before answering: no borrow is held into JS.
    let settled = shared.borrow_mut().book.finish(&waiter.envelope_id);
    waiter.answer(shared, settled);
}

impl Waiter {
    /// Answers the publish with what arrived; a keyed one also stores its
    /// answer and answers the repeats that waited for it.
    fn answer(self, shared: &Shared, settled: Settled) {
        let now_ms = js_sys::Date::now();
        let counts = Counts::settled(self.client_count, &settled);
        let outcome = self.context.outcome(self.client_count, settled, now_ms);
        let Some(text) = outcome.to_text() else {
            telemetry::error("publish.answer", &"serializing the outcome failed");
            return;
        };
        let line = self
            .context
            .report(&self.envelope_id, &counts, false, now_ms);
        match self.keyed {
            None => self.settle.answer(&text, line),
            Some(keyed) => {
                let first = Answered {
                    envelope_id: &self.envelope_id,
                    outcome: &outcome,
                    text: &text,
                    counts: &counts,
                    now_ms,
                };
                Waiter::answer_keyed(shared, keyed, self.settle, line, first);
            }
        }
    }

    /// A keyed publish's answer: stored, and given to the repeats that
    /// waited for it, each with its own line. Out of line, so that V8's
    /// optimizing tier does not compile it with every plain publish's
    /// answer (bench/README.md, row 22).
    #[inline(never)]
    fn answer_keyed(
        shared: &Shared,
        keyed: KeyedRequest,
        settle: Settle,
        line: Option<String>,
        first: Answered,
    ) {
        let Answered {
            envelope_id,
            outcome,
            text,
            counts,
            now_ms,
        } = first;
        let repeats = {
            let mut in_flight = shared.borrow_mut();
            let expiry = in_flight
                .store
                .as_ref()
                .map(|store| store.save(&keyed, envelope_id, text, now_ms));
            if let Some(at) = expiry {
                in_flight.alarm.wake_by(at);
            }
            in_flight
                .keys
                .finish(&keyed.key)
                .map(|(_, repeats)| repeats)
                .unwrap_or_default()
        };
        let answer = serde_json::to_value(outcome).unwrap_or_default();
        settle.answer(&receipt(false, envelope_id, answer.clone()), line);
        for repeat in repeats {
            let line = repeat.context.report(envelope_id, counts, true, now_ms);
            let text = receipt(true, envelope_id, answer.clone());
            repeat.settle.answer(&text, line);
        }
    }
}

/// A keyed publish's first answer, as its repeats get it.
struct Answered<'a> {
    envelope_id: &'a str,
    outcome: &'a PublishOutcome,
    text: &'a str,
    counts: &'a Counts,
    now_ms: f64,
}

impl Context {
    /// The answer of a publish sent to `client_count` sockets; with
    /// detail, the counts and time of its `publish` line too.
    pub fn outcome(&self, client_count: usize, settled: Settled, now_ms: f64) -> PublishOutcome {
        let summary = |n| self.detail.then_some(n);
        PublishOutcome {
            client_count,
            acked: summary(settled.results.len()),
            timed_out: summary(settled.timed_out),
            closed: summary(settled.closed),
            ms: self.detail.then(|| self.ms(now_ms)),
            results: settled.results,
            deliveries: settled.deliveries,
            truncated: settled.truncated,
        }
    }

    /// What `deliver` answers for a publish that reached nobody.
    pub fn answer_nobody(&self, envelope_id: &str, now_ms: f64) -> Result<JsValue, ApiError> {
        let settled = Settled::nobody(self.detail);
        let counts = Counts::settled(0, &settled);
        let line = self.report(envelope_id, &counts, false, now_ms);
        let text = self
            .outcome(0, settled, now_ms)
            .to_text()
            .ok_or(ApiError::Internal)?;
        Ok(deliver_answer(&text, line))
    }

    fn ms(&self, now_ms: f64) -> u64 {
        (now_ms - self.received_ms).max(0.0) as u64
    }

    /// Writes the publish's data point and makes its line (which the
    /// worker writes), when they are wanted.
    fn report(
        &self,
        envelope_id: &str,
        counts: &Counts,
        replayed: bool,
        now_ms: f64,
    ) -> Option<String> {
        let (Some(log), Some(settings)) = (&self.log, shared_settings()) else {
            return None;
        };
        settings.telemetry.published(&PublishFacts {
            user_id: &log.user_id,
            envelope_id,
            envelope_type: &log.envelope_type,
            client_count: counts.client_count,
            acked: counts.acked,
            timed_out: counts.timed_out,
            closed: counts.closed,
            ms: self.ms(now_ms),
            bytes: log.bytes,
            keyed: log.keyed,
            replayed,
            batch: log.batch,
        })
    }
}

impl Counts {
    fn settled(client_count: usize, settled: &Settled) -> Counts {
        Counts {
            client_count,
            acked: settled.results.len(),
            timed_out: Some(settled.timed_out),
            closed: Some(settled.closed),
        }
    }

    /// A stored answer's counts: the first answer's detail, when it had
    /// it; otherwise only the sockets and the acks.
    fn stored(answer: &Value) -> Counts {
        let count = |name| answer.get(name).and_then(Value::as_u64).map(|n| n as usize);
        Counts {
            client_count: count("clientCount").unwrap_or(0),
            acked: answer
                .get("results")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            timed_out: count("timedOut"),
            closed: count("closed"),
        }
    }
}

fn receipt(replayed: bool, envelope_id: &str, answer: Value) -> String {
    Receipt::Answer {
        replayed,
        envelope_id: envelope_id.to_owned(),
        answer,
    }
    .to_text()
}
