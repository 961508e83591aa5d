//! Workers Analytics Engine data points: one per answered publish and per
//! socket open and close. Their layout (which index, blob and double holds
//! what) is fixed here and documented as a table in docs/observing.md; the
//! dashboard queries there read it. The runtime only writes them
//! (`writeDataPoint`, not awaited) or, with `METRICS_LOG=true`, logs them.

use crate::domain::digest::sha256_hex;
use crate::domain::logs::{push_json_str, ClosedBy, Line, PublishFacts};

/// The index's size limit (bytes).
pub const MAX_INDEX_BYTES: usize = 96;

/// One data point, as `writeDataPoint` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    /// One index: the user (the sampling key).
    pub indexes: Vec<String>,
    pub blobs: Vec<String>,
    pub doubles: Vec<f64>,
}

/// The user as points carry it: as `LOG_USER_IDS` shows it (`None`:
/// omitted, an empty string), and within the index's 96 bytes (a longer
/// one becomes `#` and its SHA-256's first 16 hex digits).
pub fn user_key(shown: Option<&str>) -> String {
    match shown {
        None => String::new(),
        Some(id) if id.len() <= MAX_INDEX_BYTES => id.to_owned(),
        Some(id) => format!("#{}", &sha256_hex(id.as_bytes())[..16]),
    }
}

/// blob1 `publish`, blob2 user, blob3 type; double1 clientCount, double2
/// acked, double3 timedOut, double4 closed, double5 ms, double6 bytes,
/// double7 batch (0: not a batch), double8 keyed, double9 replayed (0/1).
/// A replay's unknown counts are 0.
pub fn publish(user: String, facts: &PublishFacts) -> DataPoint {
    DataPoint {
        indexes: vec![user.clone()],
        blobs: vec!["publish".into(), user, facts.envelope_type.to_owned()],
        doubles: vec![
            facts.client_count as f64,
            facts.acked as f64,
            facts.timed_out.unwrap_or(0) as f64,
            facts.closed.unwrap_or(0) as f64,
            facts.ms as f64,
            facts.bytes as f64,
            facts.batch.unwrap_or(0) as f64,
            f64::from(u8::from(facts.keyed)),
            f64::from(u8::from(facts.replayed)),
        ],
    }
}

/// blob1 `socket.open`, blob2 user, blob3 empty; double1 the user's
/// sockets now.
pub fn socket_open(user: String, sockets: usize) -> DataPoint {
    DataPoint {
        indexes: vec![user.clone()],
        blobs: vec!["socket.open".into(), user, String::new()],
        doubles: vec![sockets as f64],
    }
}

/// blob1 `socket.close`, blob2 user, blob3 who closed it (`client`,
/// `server`, `runtime`); double1 the close code, double2 the socket's
/// lifetime in ms.
pub fn socket_close(user: String, code: u16, by: ClosedBy, duration_ms: u64) -> DataPoint {
    DataPoint {
        indexes: vec![user.clone()],
        blobs: vec!["socket.close".into(), user, by.as_str().into()],
        doubles: vec![f64::from(code), duration_ms as f64],
    }
}

impl DataPoint {
    /// `METRICS_LOG=true`'s line:
    /// `{"event":"metrics","indexes":[...],"blobs":[...],"doubles":[...]}`.
    pub fn log_line(&self) -> String {
        Line::new("metrics")
            .raw("indexes", &strings(&self.indexes))
            .raw("blobs", &strings(&self.blobs))
            .raw("doubles", &numbers(&self.doubles))
            .finish()
    }
}

fn strings(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, item);
    }
    out.push(']');
    out
}

/// Every double is a whole number (counts, codes, milliseconds, bytes):
/// written as an integer, which keeps `f64`'s `Display` (about 15 KB of
/// wasm) out of the binary.
fn numbers(items: &[f64]) -> String {
    let shown: Vec<String> = items.iter().map(|n| (*n as i64).to_string()).collect();
    format!("[{}]", shown.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn facts() -> PublishFacts<'static> {
        PublishFacts {
            user_id: "alice",
            envelope_id: "e1",
            envelope_type: "chat",
            client_count: 2,
            acked: 1,
            timed_out: Some(1),
            closed: Some(0),
            ms: 5003,
            bytes: 11,
            keyed: true,
            replayed: false,
            batch: Some(4),
        }
    }

    #[test]
    fn a_publish_point_follows_the_documented_layout() {
        let point = publish("alice".into(), &facts());
        assert_eq!(point.indexes, ["alice"]);
        assert_eq!(point.blobs, ["publish", "alice", "chat"]);
        assert_eq!(
            point.doubles,
            [2.0, 1.0, 1.0, 0.0, 5003.0, 11.0, 4.0, 1.0, 0.0]
        );
    }

    #[test]
    fn a_replay_counts_unknowns_as_zero() {
        let replay = PublishFacts {
            timed_out: None,
            closed: None,
            replayed: true,
            batch: None,
            ..facts()
        };
        let point = publish("alice".into(), &replay);
        assert_eq!(point.doubles[2..4], [0.0, 0.0]);
        assert_eq!(point.doubles[6..], [0.0, 1.0, 1.0]);
    }

    #[test]
    fn socket_points_follow_the_documented_layout() {
        let open = socket_open("u".into(), 3);
        assert_eq!(open.blobs, ["socket.open", "u", ""]);
        assert_eq!(open.doubles, [3.0]);
        let close = socket_close("u".into(), 4002, ClosedBy::Server, 1500);
        assert_eq!(close.indexes, ["u"]);
        assert_eq!(close.blobs, ["socket.close", "u", "server"]);
        assert_eq!(close.doubles, [4002.0, 1500.0]);
    }

    #[test]
    fn the_user_key_fits_the_index() {
        assert_eq!(user_key(Some("alice")), "alice");
        assert_eq!(user_key(None), "");
        let long = "x".repeat(97);
        let key = user_key(Some(&long));
        assert!(key.starts_with('#') && key.len() == 17, "{key}");
        assert_eq!(user_key(Some(&long)), key, "stable");
        assert_eq!(user_key(Some(&"y".repeat(96))).len(), 96);
    }

    #[test]
    fn the_log_line_is_the_point_as_json() {
        let point = socket_close("u\"1".into(), 1000, ClosedBy::Client, 7);
        let line: Value = serde_json::from_str(&point.log_line()).unwrap();
        assert_eq!(
            line,
            json!({"event": "metrics", "indexes": ["u\"1"],
                   "blobs": ["socket.close", "u\"1", "client"], "doubles": [1000, 7]})
        );
    }
}
