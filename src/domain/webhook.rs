//! Webhooks: what a backend is told about a user (presence, late acks),
//! how each request is signed and checked, and when it is retried or its
//! events dropped. The object keeps the events in an outbox in its storage
//! (the SQL here) and its alarm delivers them, one request at a time.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::domain::digest::hex;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "HopeFlow-Signature";
/// How far a signature's time may be from the receiver's clock.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Most events one request carries.
pub const MAX_BATCH: usize = 100;
/// A request not answered within this is a failure, retried.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: f64 = 1_000.0;
pub const MAX_BACKOFF_MS: f64 = 300_000.0;
/// `WEBHOOK_SECRET` is at least this long.
pub const MIN_SECRET_LEN: usize = 32;

/// What happened, with what each kind says besides the common fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    /// The user's open sockets went from 0 to 1.
    #[serde(rename = "user.online")]
    UserOnline { sockets: usize },
    /// The user's sockets reached 0 and stayed 0 for the offline delay.
    #[serde(rename = "user.offline")]
    UserOffline {
        /// Unix ms of the last close.
        #[serde(rename = "lastSeenAt")]
        last_seen_at: u64,
    },
    /// A socket acked an envelope after its publish was answered.
    #[serde(rename = "ack.late")]
    AckLate {
        #[serde(rename = "envelopeId")]
        envelope_id: String,
        #[serde(rename = "socketId")]
        socket_id: String,
        result: Value,
        /// Ms from delivery to the ack.
        #[serde(rename = "ackMs")]
        ack_ms: u64,
    },
}

/// The kinds, by their `type`, for `WEBHOOK_EVENTS`.
pub const EVENT_TYPES: [&str; 3] = ["user.online", "user.offline", "ack.late"];

impl EventKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::UserOnline { .. } => EVENT_TYPES[0],
            EventKind::UserOffline { .. } => EVENT_TYPES[1],
            EventKind::AckLate { .. } => EVENT_TYPES[2],
        }
    }
}

/// One event as a receiver gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique, the same on every retry.
    pub id: String,
    #[serde(rename = "userId")]
    pub user_id: String,
    /// The user's event counter: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// When it happened, unix ms.
    pub at: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn to_text(&self) -> String {
        // Strings, numbers and a JSON value: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A request's body from the stored texts of its events, oldest first.
pub fn body(event_texts: &[String]) -> String {
    format!("{{\"events\":[{}]}}", event_texts.join(","))
}

/// The request body as a receiver parses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub events: Vec<Event>,
}

/// Which events are sent (`WEBHOOK_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet {
    pub online: bool,
    pub offline: bool,
    pub ack_late: bool,
}

impl EventSet {
    pub const ALL: EventSet = EventSet {
        online: true,
        offline: true,
        ack_late: true,
    };

    /// A comma-separated list of event types; `None` names an unknown one.
    pub fn parse(list: &str) -> Option<EventSet> {
        let mut set = EventSet {
            online: false,
            offline: false,
            ack_late: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "user.online" => set.online = true,
                "user.offline" => set.offline = true,
                "ack.late" => set.ack_late = true,
                _ => return None,
            }
        }
        Some(set)
    }

    pub fn sends(&self, kind: &EventKind) -> bool {
        match kind {
            EventKind::UserOnline { .. } => self.online,
            EventKind::UserOffline { .. } => self.offline,
            EventKind::AckLate { .. } => self.ack_late,
        }
    }
}

/// The `HopeFlow-Signature` value for `body` sent at `t` (unix seconds).
pub fn signature_header(secret: &[u8], t: u64, body: &str) -> String {
    format!("t={t},v1={}", hex(&mac(secret, t, body)))
}

fn mac(secret: &[u8], t: u64, body: &str) -> Vec<u8> {
    // Any key length is valid for HMAC.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Why a webhook request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// No `t=` or `v1=` in the header, or not numbers / hex.
    MalformedHeader,
    /// No `v1` signature matches the body under the secret.
    BadSignature,
    /// `t` is further than the tolerance from now.
    OutsideTolerance { t: u64, now: u64 },
    /// The body is not `{"events": [...]}` of events.
    MalformedBody(String),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::MalformedHeader => {
                write!(
                    f,
                    "malformed {SIGNATURE_HEADER} header: expected t=<secs>,v1=<hex>"
                )
            }
            VerifyError::BadSignature => f.write_str("the signature does not match the body"),
            VerifyError::OutsideTolerance { t, now } => write!(
                f,
                "the signature's time {t} is too far from now ({now}): a replay, or a clock off"
            ),
            VerifyError::MalformedBody(why) => write!(f, "malformed webhook body: {why}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks a request as a receiver must: the signature over `"<t>.<body>"`
/// with `secret`, `t` within `tolerance_secs` of `now` (unix seconds), then
/// the body. Its events, oldest first.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &str,
    now: u64,
    tolerance_secs: u64,
) -> Result<Vec<Event>, VerifyError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("t", value)) => {
                t = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| VerifyError::MalformedHeader)?,
                )
            }
            Some(("v1", value)) => {
                signatures.push(unhex(value).ok_or(VerifyError::MalformedHeader)?)
            }
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::MalformedHeader)?;
    if signatures.is_empty() {
        return Err(VerifyError::MalformedHeader);
    }
    let mut expected = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    expected.update(t.to_string().as_bytes());
    expected.update(b".");
    expected.update(body.as_bytes());
    // `verify_slice` compares in constant time.
    let valid = signatures
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok());
    if !valid {
        return Err(VerifyError::BadSignature);
    }
    if t.abs_diff(now) > tolerance_secs {
        return Err(VerifyError::OutsideTolerance { t, now });
    }
    serde_json::from_str::<Request>(body)
        .map(|request| request.events)
        .map_err(|err| VerifyError::MalformedBody(err.to_string()))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The delay before retry number `attempt` (1 for the first): 1 s doubling
/// up to 300 s, each scaled by `jitter` in 0.5..=1.0.
pub fn backoff_ms(attempt: u32, jitter: f64) -> f64 {
    let step = FIRST_BACKOFF_MS * 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
    step.min(MAX_BACKOFF_MS) * jitter.clamp(0.5, 1.0)
}

/// A user's presence as the object keeps it (in storage, so that a restart
/// that drops sockets without close events is noticed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Whether `user.online` was the last presence event.
    pub online: bool,
    /// When a pending `user.offline` is due (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_at: Option<f64>,
    /// Unix ms of the last close.
    #[serde(default)]
    pub last_seen_at: u64,
}

impl Presence {
    /// A socket opened; `sockets` are open now. `user.online` when the user
    /// was offline; a pending offline is cancelled either way.
    pub fn opened(&mut self, sockets: usize) -> Option<EventKind> {
        self.offline_at = None;
        if self.online {
            return None;
        }
        self.online = true;
        Some(EventKind::UserOnline { sockets })
    }

    /// A socket closed, `sockets` are left: the last one starts the delay.
    pub fn closed(&mut self, sockets: usize, now_ms: f64, delay_secs: u64) {
        if sockets == 0 && self.online && self.offline_at.is_none() {
            self.last_seen_at = now_ms as u64;
            self.offline_at = Some(now_ms + delay_secs as f64 * 1000.0);
        }
    }

    /// The object checks (it started, or its presence check came): stored
    /// online but no socket open means the runtime dropped them without
    /// close events; they count as closed now.
    pub fn check(&mut self, sockets: usize, now_ms: f64, delay_secs: u64) {
        self.closed(sockets, now_ms, delay_secs);
    }

    /// `user.offline` when its delay passed with no socket back.
    pub fn due(&mut self, sockets: usize, now_ms: f64) -> Option<EventKind> {
        let at = self.offline_at?;
        if now_ms < at {
            return None;
        }
        self.offline_at = None;
        if sockets > 0 {
            return None;
        }
        self.online = false;
        Some(EventKind::UserOffline {
            last_seen_at: self.last_seen_at,
        })
    }

    /// When the object must wake for presence: a pending offline, or the
    /// next presence check while online (`check_secs` 0: none).
    pub fn next_ms(&self, now_ms: f64, check_secs: u64) -> Option<f64> {
        let check = (self.online && check_secs > 0).then_some(now_ms + check_secs as f64 * 1000.0);
        match (self.offline_at, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the outbox's bounds drop before a send: events older than
/// `max_age_secs`, then the oldest past `max_pending`.
pub fn drop_bounds(now_ms: f64, max_age_secs: u64) -> f64 {
    now_ms - max_age_secs as f64 * 1000.0
}

/// The outbox: events by their `seq`, with the time they happened.
pub const CREATE_OUTBOX: &str = "CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    event TEXT NOT NULL
)";
/// The webhook's counters and state: `seq`, `dropped`, `attempt`,
/// `next_attempt_at`, `last_error`, `presence`.
pub const CREATE_STATE: &str =
    "CREATE TABLE IF NOT EXISTS webhook_state (k TEXT PRIMARY KEY, v TEXT NOT NULL)";
pub const READ_STATE: &str = "SELECT k, v FROM webhook_state";
pub const WRITE_STATE: &str = "INSERT OR REPLACE INTO webhook_state (k, v) VALUES (?, ?)";
pub const INSERT_EVENT: &str = "INSERT INTO webhook_outbox (seq, at, event) VALUES (?, ?, ?)";
/// The oldest events, for one request.
pub const NEXT_BATCH: &str = "SELECT seq, event FROM webhook_outbox ORDER BY seq LIMIT ?";
/// Deletes what a 2xx answer carried.
pub const DELETE_UP_TO: &str = "DELETE FROM webhook_outbox WHERE seq <= ?";
pub const PENDING: &str = "SELECT COUNT(*) AS n FROM webhook_outbox";
/// Drops events older than a cutoff; `changes()` counts them.
pub const DROP_OLDER: &str = "DELETE FROM webhook_outbox WHERE at < ?";
/// Drops the oldest past a cap.
pub const DROP_PAST_CAP: &str = "DELETE FROM webhook_outbox WHERE seq NOT IN (SELECT seq FROM webhook_outbox ORDER BY seq DESC LIMIT ?)";

/// Deliveries whose publish was answered without their ack, kept for the
/// late-ack window.
pub const CREATE_LATE: &str = "CREATE TABLE IF NOT EXISTS webhook_late (
    envelope_id TEXT NOT NULL,
    socket_id TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, socket_id)
)";
pub const INSERT_LATE: &str =
    "INSERT OR REPLACE INTO webhook_late (envelope_id, socket_id, sent_at, until) VALUES (?, ?, ?, ?)";
/// Takes a late delivery (once): its `sent_at`, if still in the window.
pub const FIND_LATE: &str =
    "SELECT sent_at FROM webhook_late WHERE envelope_id = ? AND socket_id = ? AND until >= ?";
pub const DELETE_LATE: &str = "DELETE FROM webhook_late WHERE envelope_id = ? AND socket_id = ?";
pub const EXPIRE_LATE: &str = "DELETE FROM webhook_late WHERE until < ?";
pub const NEXT_LATE_EXPIRY: &str = "SELECT MIN(until) AS next FROM webhook_late";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            id: format!("ev{seq}"),
            user_id: "alice".into(),
            seq,
            at: 1_700_000_000_000 + seq,
            kind,
        }
    }

    #[test]
    fn events_have_their_wire_shape() {
        let online = event(1, EventKind::UserOnline { sockets: 1 });
        assert_eq!(
            serde_json::to_value(&online).expect("json"),
            json!({"id": "ev1", "userId": "alice", "seq": 1, "at": 1_700_000_000_001u64,
                   "type": "user.online", "sockets": 1})
        );
        let late = event(
            3,
            EventKind::AckLate {
                envelope_id: "e".into(),
                socket_id: "s".into(),
                result: json!({"ok": true}),
                ack_ms: 6100,
            },
        );
        let text = late.to_text();
        let value: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["type"], "ack.late");
        assert_eq!(value["envelopeId"], "e");
        assert_eq!(value["ackMs"], 6100);
        let back: Event = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, late);
        assert_eq!(
            body(&[online.to_text(), text.clone()]),
            format!("{{\"events\":[{},{}]}}", online.to_text(), text)
        );
    }

    #[test]
    fn a_signed_request_verifies_and_a_tampered_one_does_not() {
        let body = body(&[event(1, EventKind::UserOnline { sockets: 2 }).to_text()]);
        let header = signature_header(SECRET, 1_700_000_000, &body);
        assert!(header.starts_with("t=1700000000,v1="));
        let events = verify(SECRET, &header, &body, 1_700_000_100, 300).expect("valid");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::UserOnline { sockets: 2 });
        let tampered = body.replace("\"sockets\":2", "\"sockets\":3");
        assert_eq!(
            verify(SECRET, &header, &tampered, 1_700_000_100, 300),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(
                b"another secret, 32 bytes long!!!",
                &header,
                &body,
                1_700_000_100,
                300
            ),
            Err(VerifyError::BadSignature)
        );
        // The time is signed: an old request cannot be replayed later.
        assert_eq!(
            verify(SECRET, &header, &body, 1_700_000_301, 300),
            Err(VerifyError::OutsideTolerance {
                t: 1_700_000_000,
                now: 1_700_000_301
            })
        );
        let moved = header.replace("t=1700000000", "t=1700000299");
        assert_eq!(
            verify(SECRET, &moved, &body, 1_700_000_301, 300),
            Err(VerifyError::BadSignature)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "t=1,v1=abc"] {
            assert_eq!(
                verify(SECRET, bad, &body, 1, 300),
                Err(VerifyError::MalformedHeader),
                "{bad}"
            );
        }
        let not_events = "{\"events\":[1]}";
        let header = signature_header(SECRET, 5, not_events);
        assert!(matches!(
            verify(SECRET, &header, not_events, 5, 300),
            Err(VerifyError::MalformedBody(_))
        ));
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        assert_eq!(backoff_ms(1, 1.0), 1_000.0);
        assert_eq!(backoff_ms(2, 1.0), 2_000.0);
        assert_eq!(backoff_ms(9, 1.0), 256_000.0);
        assert_eq!(backoff_ms(10, 1.0), 300_000.0);
        assert_eq!(backoff_ms(u32::MAX, 1.0), 300_000.0);
        assert_eq!(backoff_ms(1, 0.5), 500.0);
        assert_eq!(backoff_ms(1, 7.0), 1_000.0);
    }

    #[test]
    fn presence_alternates_and_a_quick_return_sends_nothing() {
        let mut p = Presence::default();
        assert_eq!(p.opened(1), Some(EventKind::UserOnline { sockets: 1 }));
        assert_eq!(p.opened(2), None);
        p.closed(1, 1_000.0, 5);
        assert_eq!(p.offline_at, None);
        p.closed(0, 2_000.0, 5);
        assert_eq!(p.offline_at, Some(7_000.0));
        assert_eq!(p.due(0, 6_999.0), None);
        // Back within the delay: no offline, no second online.
        assert_eq!(p.opened(1), None);
        assert_eq!(p.due(1, 8_000.0), None);
        p.closed(0, 10_000.0, 5);
        assert_eq!(
            p.due(0, 15_000.0),
            Some(EventKind::UserOffline {
                last_seen_at: 10_000
            })
        );
        assert!(!p.online);
        assert_eq!(p.opened(1), Some(EventKind::UserOnline { sockets: 1 }));
    }

    #[test]
    fn a_restart_that_dropped_the_sockets_counts_as_their_close() {
        let mut p = Presence {
            online: true,
            offline_at: None,
            last_seen_at: 0,
        };
        assert_eq!(p.next_ms(100.0, 300), Some(300_100.0));
        assert_eq!(p.next_ms(100.0, 0), None);
        p.check(0, 500.0, 5);
        assert_eq!(p.offline_at, Some(5_500.0));
        assert_eq!(p.next_ms(600.0, 300), Some(5_500.0));
        assert_eq!(
            p.due(0, 5_500.0),
            Some(EventKind::UserOffline { last_seen_at: 500 })
        );
        assert_eq!(p.next_ms(6_000.0, 300), None);
        // With a socket open, a check changes nothing.
        let mut p = Presence {
            online: true,
            ..Presence::default()
        };
        p.check(1, 500.0, 5);
        assert_eq!(p.offline_at, None);
    }

    #[test]
    fn event_sets() {
        assert_eq!(
            EventSet::parse("user.online, ack.late"),
            Some(EventSet {
                online: true,
                offline: false,
                ack_late: true
            })
        );
        assert_eq!(EventSet::parse("user.online,nope"), None);
        assert!(EventSet::ALL.sends(&EventKind::UserOffline { last_seen_at: 0 }));
    }
}
