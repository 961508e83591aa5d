//! The webhook outbox in the object's storage (`domain::webhook`'s SQL):
//! events by `seq`, the counters and presence kept beside them, and the
//! deliveries an ack may still come late for.

use std::collections::HashMap;

use worker::js_sys;
use worker::worker_sys::DurableObjectState;

use crate::domain::config::WebhookConfig;
use crate::domain::logs::Event;
use crate::domain::webhook::{self, backoff_ms, Presence, MAX_BATCH};
use crate::runtime::js::storage::{Bind, Sql, SqlRow};
use crate::runtime::settings;
use crate::runtime::telemetry;

/// The outbox's tables and the state kept beside them.
pub struct Outbox {
    sql: Sql,
    pub seq: u64,
    pub dropped: u64,
    attempt: u32,
    pub next_attempt_at: Option<f64>,
    pub last_error: Option<String>,
    pub presence: Presence,
    pub user_id: Option<String>,
}

/// One request: the events' body and the last `seq` it carries.
pub struct Batch {
    pub body: String,
    pub last_seq: u64,
    /// How many events it carries.
    pub events: usize,
    /// Which try this is (1: the first).
    pub attempt: u32,
}

impl Outbox {
    pub fn open(state: &DurableObjectState) -> Result<Outbox, String> {
        let sql = Sql::of(state).ok_or("no storage")?;
        for statement in [
            webhook::CREATE_OUTBOX,
            webhook::CREATE_STATE,
            webhook::CREATE_LATE,
        ] {
            sql.exec(statement, &[])?;
        }
        let stored: HashMap<String, String> = sql
            .exec(webhook::READ_STATE, &[])?
            .iter()
            .filter_map(|row| Some((row.text("k")?, row.text("v")?)))
            .collect();
        // Whole numbers only: parsing or printing an f64 links kilobytes
        // of float code into the wasm for these few values.
        let number = |key: &str| stored.get(key).and_then(|v| v.parse::<u64>().ok());
        Ok(Outbox {
            seq: number("seq").unwrap_or(0),
            dropped: number("dropped").unwrap_or(0),
            attempt: number("attempt").unwrap_or(0) as u32,
            next_attempt_at: number("next_attempt_at").map(|at| at as f64),
            last_error: stored.get("last_error").filter(|e| !e.is_empty()).cloned(),
            presence: stored
                .get("presence")
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_default(),
            user_id: stored.get("user_id").cloned(),
            sql,
        })
    }

    pub fn exec(&self, what: &str, statement: &str, binds: &[Bind]) -> Vec<SqlRow> {
        self.sql.exec(statement, binds).unwrap_or_else(|err| {
            telemetry::error(what, &err);
            Vec::new()
        })
    }

    pub fn save(&self, key: &str, value: &str) {
        self.exec(
            "saving the webhook state",
            webhook::WRITE_STATE,
            &[Bind::Text(key), Bind::Text(value)],
        );
    }

    /// Applies `change` to the presence, and stores it only if it changed.
    pub fn change_presence<T>(&mut self, change: impl FnOnce(&mut Presence) -> T) -> T {
        let before = self.presence.clone();
        let outcome = change(&mut self.presence);
        if self.presence != before {
            self.save_presence();
        }
        outcome
    }

    /// Names the object's user in the state (its events carry it).
    pub fn remember_user(&mut self, user_id: &str) {
        if self.user_id.as_deref() != Some(user_id) {
            self.user_id = Some(user_id.to_owned());
            self.save("user_id", user_id);
        }
    }

    fn save_presence(&self) {
        let text = serde_json::to_string(&self.presence).unwrap_or_default();
        self.save("presence", &text);
    }

    pub fn pending(&self) -> u64 {
        self.exec("counting webhook events", webhook::PENDING, &[])
            .first()
            .and_then(|row| row.number("n"))
            .unwrap_or(0.0) as u64
    }

    /// Drops events past the age and the size cap, counting them.
    pub fn bound(&mut self, config: &WebhookConfig, now_ms: f64) {
        let before = self.pending();
        let cutoff = Bind::Number(webhook::drop_bounds(now_ms, config.max_age_secs).floor());
        self.exec(
            "dropping old webhook events",
            webhook::DROP_OLDER,
            &[cutoff],
        );
        let cap = Bind::Number(config.max_pending as f64);
        self.exec(
            "dropping webhook events past the cap",
            webhook::DROP_PAST_CAP,
            &[cap],
        );
        let dropped = before.saturating_sub(self.pending());
        if dropped > 0 {
            settings::log(&Event::WebhookDropped {
                events: dropped as usize,
                reason: "past their age or the outbox's cap",
            });
            self.dropped += dropped;
            self.save("dropped", &self.dropped.to_string());
        }
    }

    /// The oldest events, up to a request's worth.
    pub fn batch(&self) -> Option<Batch> {
        let rows = self.exec(
            "reading webhook events",
            webhook::NEXT_BATCH,
            &[Bind::Number(MAX_BATCH as f64)],
        );
        let last_seq = rows.last()?.number("seq")? as u64;
        let texts: Vec<String> = rows.iter().filter_map(|row| row.text("event")).collect();
        Some(Batch {
            body: webhook::body(&texts),
            last_seq,
            events: texts.len(),
            attempt: self.attempt.saturating_add(1),
        })
    }

    /// A 2xx answer: what it carried is deleted; the next goes at once.
    pub fn delivered(&mut self, last_seq: u64) {
        self.exec(
            "deleting delivered webhook events",
            webhook::DELETE_UP_TO,
            &[Bind::Number(last_seq as f64)],
        );
        self.attempt = 0;
        self.next_attempt_at = None;
        self.last_error = None;
        self.save("attempt", "0");
        self.save("next_attempt_at", "");
        self.save("last_error", "");
    }

    /// Anything else: the same events again after the backoff.
    pub fn failed(&mut self, why: String, now_ms: f64) {
        self.attempt = self.attempt.saturating_add(1);
        let jitter = 0.5 + js_sys::Math::random() * 0.5;
        let at = (now_ms + backoff_ms(self.attempt, jitter)).ceil();
        self.next_attempt_at = Some(at);
        self.save("attempt", &self.attempt.to_string());
        self.save("next_attempt_at", &(at as u64).to_string());
        self.save("last_error", &why);
        self.last_error = Some(why);
    }

    /// A late-ack candidate, taken (once) if still in its window.
    pub fn take_late(&self, envelope_id: &str, socket_id: &str, now_ms: f64) -> Option<f64> {
        let binds = [
            Bind::Text(envelope_id),
            Bind::Text(socket_id),
            Bind::Number(now_ms.floor()),
        ];
        let sent_at = self
            .exec("looking up a late ack", webhook::FIND_LATE, &binds)
            .first()
            .and_then(|row| row.number("sent_at"))?;
        self.exec("taking a late ack", webhook::DELETE_LATE, &binds[..2]);
        Some(sent_at)
    }

    /// When the alarm must wake: the next request (at once, or at its
    /// retry), presence, the next late-ack candidate to expire.
    pub fn next_ms(&self, config: &WebhookConfig, now_ms: f64, sending: bool) -> Option<f64> {
        // A request on its way schedules what follows when it ends; should
        // it never end (the object gone meanwhile), the alarm comes back
        // after its timeout and sends it again.
        let send = (self.pending() > 0).then(|| match sending {
            true => now_ms + webhook::REQUEST_TIMEOUT_MS as f64 + 1_000.0,
            false => self.next_attempt_at.unwrap_or(now_ms),
        });
        let presence = self.presence.next_ms(now_ms, config.presence_check_secs);
        let late = self
            .exec("reading late-ack expiries", webhook::NEXT_LATE_EXPIRY, &[])
            .first()
            .and_then(|row| row.number("next"));
        [send, presence, late]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
    }
}

/// When the alarm must wake for the webhooks, from storage alone (what an
/// earlier instance may have set the alarm for).
pub fn next_stored(state: &DurableObjectState, config: &WebhookConfig, now_ms: f64) -> Option<f64> {
    Outbox::open(state).ok()?.next_ms(config, now_ms, false)
}
