//! `Idempotency-Key` on `/publish` and `/publish/batch`: what a valid key is,
//! what makes two publishes the same, what a user's object keeps (in its
//! SQLite storage) and answers, and the book of keyed publishes in flight
//! that makes a repeat wait for the first one's answer.
//!
//! Keys are per user: each user's object keeps its own table, so the same
//! key sent for alice and for bob names two publishes.

use std::collections::HashMap;
use std::fmt;

use crate::domain::digest::sha256_hex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The request header.
pub const HEADER: &str = "Idempotency-Key";
/// The response header of a replayed answer (`true`).
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
pub const MAX_KEY_LEN: usize = 255;

/// A key as the client sent it: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// The header is present but not a valid key (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidKey;

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{HEADER} must be 1 to {MAX_KEY_LEN} visible ASCII characters (no spaces)"
        )
    }
}

impl std::error::Error for InvalidKey {}

impl IdempotencyKey {
    pub fn parse(header: &str) -> Result<IdempotencyKey, InvalidKey> {
        let valid = (1..=MAX_KEY_LEN).contains(&header.len())
            && header.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(IdempotencyKey(header.to_owned()))
        } else {
            Err(InvalidKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of a request whose body has `fingerprint`.
    pub fn with_fingerprint(self, fingerprint: String) -> KeyedRequest {
        KeyedRequest {
            key: self.0,
            fingerprint,
        }
    }
}

/// What makes two publishes "the same body": a SHA-256 of the request's
/// canonical JSON (`serde_json` keeps object keys sorted), so whitespace
/// and key order do not matter but every value does.
pub fn fingerprint(request: &Value) -> String {
    sha256_hex(request.to_string().as_bytes())
}

/// The fingerprint of a `/publish` body.
pub fn publish_fingerprint(user_id: &str, envelope_type: &str, payload: &Value) -> String {
    fingerprint(&serde_json::json!({
        "route": "publish",
        "userId": user_id,
        "type": envelope_type,
        "payload": payload,
    }))
}

/// The fingerprint of a `/publish/batch` body.
pub fn batch_fingerprint(user_ids: &[String], envelope_type: &str, payload: &Value) -> String {
    fingerprint(&serde_json::json!({
        "route": "batch",
        "userIds": user_ids,
        "type": envelope_type,
        "payload": payload,
    }))
}

/// What the worker asks of the object besides the envelope (`deliver`'s
/// second argument, as JSON text; absent on a plain publish).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverOptions {
    /// The key and the request's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyedRequest>,
    /// `?detail=true`.
    #[serde(default)]
    pub detail: bool,
    /// `/publish/batch`: how many users it named (for the `publish` line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRequest {
    pub key: String,
    pub fingerprint: String,
}

impl DeliverOptions {
    pub fn to_text(&self) -> String {
        // Strings and a bool: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    #[inline(never)]
    pub fn parse(text: &str) -> Option<DeliverOptions> {
        serde_json::from_str(text).ok()
    }
}

/// The object's answer to a keyed publish (JSON text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Receipt {
    Answer {
        /// The answer is the first publish's, and nothing was delivered.
        replayed: bool,
        #[serde(rename = "envelopeId")]
        envelope_id: String,
        /// The `/publish` answer.
        answer: Value,
    },
    /// The key was used with another body (409).
    Conflict { conflict: bool },
}

impl Receipt {
    pub fn conflict() -> Receipt {
        Receipt::Conflict { conflict: true }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Option<Receipt> {
        serde_json::from_str(text).ok()
    }
}

/// A finished keyed publish as stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Stored {
    pub fingerprint: String,
    pub envelope_id: String,
    /// The `/publish` answer's JSON text.
    pub answer: String,
}

/// What to do with a keyed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// New key: deliver, then store the answer.
    Deliver,
    /// Answered before: answer the same, deliver nothing.
    Replay { envelope_id: String, answer: String },
    /// The first is still waiting for acks: wait for its answer.
    Wait,
    /// Same key, another body.
    Conflict,
}

/// Decides from what is in flight and what is stored (unexpired). A
/// publish in flight has stored a provisional answer already (what it
/// sent, no acks: the answer if the object restarts before its acks), so
/// a repeat waits for the first while it is there.
pub fn decide(stored: Option<Stored>, in_flight: Option<&str>, fingerprint: &str) -> Decision {
    match (in_flight, stored) {
        (Some(first), _) if first == fingerprint => Decision::Wait,
        (Some(_), _) => Decision::Conflict,
        (None, Some(stored)) if stored.fingerprint == fingerprint => Decision::Replay {
            envelope_id: stored.envelope_id,
            answer: stored.answer,
        },
        (None, Some(_)) => Decision::Conflict,
        (None, None) => Decision::Deliver,
    }
}

/// When a key stored at `now_ms` expires.
pub fn expires_at(now_ms: f64, ttl_secs: u64) -> i64 {
    now_ms as i64 + (ttl_secs as i64) * 1000
}

/// The object's table of answered keys; rows past `expires_at` (ms) are
/// never read and are deleted by the object's alarm.
/// The table's name, for [`crate::storage`]'s check that it exists.
pub const TABLE: &str = "idempotency";
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    envelope_id TEXT NOT NULL,
    answer TEXT NOT NULL,
    expires_at INTEGER NOT NULL
)";
pub const CREATE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at)";
/// Binds: key, now.
pub const SELECT: &str = "SELECT fingerprint, envelope_id, answer FROM idempotency \
     WHERE key = ? AND expires_at > ?";
/// Binds: key, fingerprint, envelope id, answer, expires at.
pub const INSERT: &str = "INSERT OR REPLACE INTO idempotency \
     (key, fingerprint, envelope_id, answer, expires_at) VALUES (?, ?, ?, ?, ?)";
/// Binds: now.
pub const DELETE_EXPIRED: &str = "DELETE FROM idempotency WHERE expires_at <= ?";
pub const NEXT_EXPIRY: &str = "SELECT MIN(expires_at) AS next FROM idempotency";

/// Keyed publishes in flight in one object, and the repeats waiting for
/// their answers. Generic over the waiter, like `acks::AckBook`.
#[derive(Debug)]
pub struct KeyBook<W> {
    in_flight: HashMap<String, InFlight<W>>,
}

#[derive(Debug)]
struct InFlight<W> {
    fingerprint: String,
    envelope_id: String,
    repeats: Vec<W>,
}

impl<W> Default for KeyBook<W> {
    fn default() -> Self {
        KeyBook {
            in_flight: HashMap::new(),
        }
    }
}

impl<W> KeyBook<W> {
    /// The fingerprint of the publish in flight under `key`, if any.
    pub fn in_flight(&self, key: &str) -> Option<&str> {
        self.in_flight.get(key).map(|f| f.fingerprint.as_str())
    }

    /// A keyed publish starts delivering.
    pub fn start(&mut self, key: String, fingerprint: String, envelope_id: String) {
        self.in_flight.insert(
            key,
            InFlight {
                fingerprint,
                envelope_id,
                repeats: Vec::new(),
            },
        );
    }

    /// A repeat waits for the answer of the publish in flight under `key`;
    /// hands the waiter back when there is none.
    pub fn wait(&mut self, key: &str, repeat: W) -> Result<(), W> {
        match self.in_flight.get_mut(key) {
            Some(first) => {
                first.repeats.push(repeat);
                Ok(())
            }
            None => Err(repeat),
        }
    }

    /// The publish under `key` is answered: its envelope id and the repeats
    /// to answer the same.
    pub fn finish(&mut self, key: &str) -> Option<(String, Vec<W>)> {
        self.in_flight
            .remove(key)
            .map(|first| (first.envelope_id, first.repeats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        for good in ["a", "order-42:retry", &"k".repeat(255), "~!@#$%^&*()"] {
            assert!(IdempotencyKey::parse(good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a b", "tab\there", "é", &"k".repeat(256), "nl\n"] {
            assert_eq!(IdempotencyKey::parse(bad), Err(InvalidKey), "{bad:?}");
        }
        assert!(InvalidKey.to_string().contains(HEADER));
    }

    #[test]
    fn fingerprints_ignore_key_order_not_values() {
        let a = publish_fingerprint("u", "t", &json!({"a": 1, "b": [1, 2]}));
        let b = publish_fingerprint(
            "u",
            "t",
            &serde_json::from_str(r#"{"b":[1,2],"a":1}"#).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            publish_fingerprint("u", "t", &json!({"a": 2, "b": [1, 2]}))
        );
        assert_ne!(
            a,
            publish_fingerprint("v", "t", &json!({"a": 1, "b": [1, 2]}))
        );
        let users = vec!["u".to_string()];
        assert_ne!(
            a,
            batch_fingerprint(&users, "t", &json!({"a": 1, "b": [1, 2]}))
        );
    }

    #[test]
    fn decisions() {
        let stored = |fp: &str| Stored {
            fingerprint: fp.into(),
            envelope_id: "e1".into(),
            answer: "{}".into(),
        };
        assert_eq!(decide(None, None, "f"), Decision::Deliver);
        assert_eq!(
            decide(Some(stored("f")), None, "f"),
            Decision::Replay {
                envelope_id: "e1".into(),
                answer: "{}".into()
            }
        );
        assert_eq!(decide(Some(stored("g")), None, "f"), Decision::Conflict);
        assert_eq!(decide(None, Some("f"), "f"), Decision::Wait);
        assert_eq!(decide(None, Some("g"), "f"), Decision::Conflict);
        // The first's provisional answer is stored while it is in flight.
        assert_eq!(decide(Some(stored("f")), Some("f"), "f"), Decision::Wait);
        assert_eq!(
            decide(Some(stored("f")), Some("f"), "g"),
            Decision::Conflict
        );
        assert_eq!(expires_at(1_000.0, 600), 601_000);
    }

    #[test]
    fn repeats_wait_for_the_first() {
        let mut book = KeyBook::default();
        assert_eq!(book.wait("k", 1), Err(1));
        book.start("k".into(), "f".into(), "e1".into());
        assert_eq!(book.in_flight("k"), Some("f"));
        assert_eq!(book.wait("k", 2), Ok(()));
        assert_eq!(book.wait("k", 3), Ok(()));
        assert_eq!(book.finish("k"), Some(("e1".to_string(), vec![2, 3])));
        assert_eq!(book.in_flight("k"), None);
        assert_eq!(book.finish("k"), None);
    }

    #[test]
    fn wire_forms_round_trip() {
        let options = DeliverOptions {
            key: Some(KeyedRequest {
                key: "k".into(),
                fingerprint: "f".into(),
            }),
            detail: true,
            batch: Some(3),
        };
        assert_eq!(DeliverOptions::parse(&options.to_text()), Some(options));
        assert_eq!(
            DeliverOptions::parse(r#"{"detail":false}"#),
            Some(DeliverOptions::default())
        );
        let receipt = Receipt::Answer {
            replayed: true,
            envelope_id: "e".into(),
            answer: json!({"clientCount": 0, "results": []}),
        };
        assert_eq!(Receipt::parse(&receipt.to_text()), Some(receipt));
        assert_eq!(
            Receipt::parse(&Receipt::conflict().to_text()),
            Some(Receipt::conflict())
        );
    }
}
