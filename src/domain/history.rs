//! Per-user history, so a reconnecting client misses nothing: every publish
//! gets the user's next `seq` and is kept (the last `HISTORY_SIZE`, none
//! older than `HISTORY_TTL_SECS`) in the object's SQLite storage; a client
//! `resume`s from the last `seq` it saw. An `epoch`, made when a user's
//! history starts, tells a continued history from a new one.
//!
//! The rules live here: settings, how an envelope's text gains its `seq`,
//! when a resume is complete, and the SQL. The object runs them.

/// `HISTORY_SIZE` and `HISTORY_TTL_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Envelopes kept; 0 turns history off.
    pub size: u64,
    pub ttl_secs: u64,
}

impl Retention {
    /// The oldest `seq` within the size bound when the last is `seq`.
    pub fn oldest_kept(&self, seq: u64) -> u64 {
        (seq + 1).saturating_sub(self.size).max(1)
    }

    pub const DEFAULT_SIZE: u64 = 100;
    pub const MAX_SIZE: u64 = 10_000;
    pub const DEFAULT_TTL_SECS: u64 = 300;
    pub const MAX_TTL_SECS: u64 = 86_400;

    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// Envelopes stored before this time (ms) are past the TTL.
    pub fn cutoff_ms(&self, now_ms: f64) -> f64 {
        now_ms - (self.ttl_secs * 1000) as f64
    }

    /// When an envelope stored at `stored_ms` is past the TTL: the time for
    /// the alarm that deletes it. With history off, at once.
    pub fn expires_at(&self, stored_ms: f64) -> f64 {
        if self.enabled() {
            stored_ms + (self.ttl_secs * 1000) as f64 + 1.0
        } else {
            stored_ms
        }
    }

    /// When the object's cleanup alarm runs for something `due_ms`: then,
    /// but at least a tenth of the TTL (1 s to 60 s) after `now_ms`, so a
    /// steady stream of publishes wakes the object once per that gap, not
    /// once per envelope. Deletion at rest lags expiry by at most the gap;
    /// reads never return an expired envelope meanwhile.
    pub fn cleanup_at(&self, due_ms: f64, now_ms: f64) -> f64 {
        let gap_ms = (self.ttl_secs * 100).clamp(1_000, 60_000) as f64;
        due_ms.max(now_ms + gap_ms)
    }

    /// The binds of [`PURGE`] (rows to keep by size, cutoff time). With
    /// history off (turned off after envelopes were stored), everything
    /// goes: only the newest row's `seq` stays, without its envelope, so
    /// turning history on again continues the sequence.
    pub fn purge_bounds(&self, now_ms: f64) -> (u64, f64) {
        if self.enabled() {
            (self.size, self.cutoff_ms(now_ms))
        } else {
            (1, now_ms + 1.0)
        }
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            size: Retention::DEFAULT_SIZE,
            ttl_secs: Retention::DEFAULT_TTL_SECS,
        }
    }
}

/// Where a user's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last `seq` given out; 0 before the first publish.
    pub seq: u64,
    pub epoch: String,
}

/// An envelope's text with `"seq": n` added. The worker's envelope text is
/// our own serialization, a JSON object: the field goes before its `}`.
pub fn with_seq(envelope_text: &str, seq: u64) -> String {
    append_field(envelope_text, &format!("\"seq\":{seq}"))
}

/// A stored envelope's text as a resume sends it again.
pub fn recovered(stored_text: &str) -> String {
    append_field(stored_text, "\"recovered\":true")
}

fn append_field(object_text: &str, field: &str) -> String {
    let body = object_text.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let mut out = String::with_capacity(body.len() + field.len() + 2);
    out.push_str(body);
    // `{}` has no field to follow.
    if !body.trim_end().ends_with('{') {
        out.push(',');
    }
    out.push_str(field);
    out.push('}');
    out
}

/// Whether a resume from `since` of `epoch` reads the history at all: the
/// same history, and a position it has reached. Otherwise nothing is
/// replayed and the resume is incomplete.
pub fn replays(current: &Position, since: u64, epoch: &str) -> bool {
    epoch == current.epoch && since <= current.seq
}

/// Whether a resume from `since` of `epoch` can be served whole: the same
/// history, a position it has reached, and nothing after `since` trimmed
/// or expired (`oldest`: the oldest `seq` still retained and unexpired).
pub fn resume_complete(current: &Position, since: u64, epoch: &str, oldest: Option<u64>) -> bool {
    if epoch != current.epoch || since > current.seq {
        return false;
    }
    since == current.seq || oldest.is_some_and(|oldest| oldest <= since + 1)
}

/// Envelopes, by `seq`, with the time they were stored (ms).
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    envelope TEXT NOT NULL,
    at INTEGER NOT NULL
)";
/// The `epoch`. (The last `seq` given out is the newest row's, which
/// `PURGE` never drops, so it is never reused.)
pub const CREATE_META: &str = "CREATE TABLE IF NOT EXISTS history_meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
)";
/// Binds: the epoch key.
pub const READ_META: &str = "SELECT v FROM history_meta WHERE k = ?";
pub const LAST_SEQ: &str = "SELECT MAX(seq) AS seq FROM history";
/// Binds: key, value.
pub const WRITE_META: &str = "INSERT OR REPLACE INTO history_meta (k, v) VALUES (?, ?)";
/// Binds: seq, envelope text, now.
pub const INSERT: &str = "INSERT INTO history (seq, envelope, at) VALUES (?, ?, ?)";
/// Binds: the rows to keep by size, the cutoff time ([`Retention::purge_bounds`]).
/// Deletes every row past either bound but the newest: that one keeps the
/// last `seq`, so none is given out twice; [`BLANK_EXPIRED`] empties it.
pub const PURGE: &str = "DELETE FROM history WHERE seq < (SELECT MAX(seq) FROM history) \
     AND (seq <= (SELECT MAX(seq) FROM history) - ? OR at < ?)";
/// Binds: the cutoff time. After [`PURGE`] only the newest row can be past
/// it: its payload is dropped, its `seq` kept (an empty row is never read).
pub const BLANK_EXPIRED: &str = "UPDATE history SET envelope = '' WHERE at < ? AND envelope != ''";
/// When the oldest row still holding an envelope was stored: the next one
/// to expire, for the object's alarm.
pub const OLDEST_STORED: &str = "SELECT MIN(at) AS at FROM history WHERE envelope != ''";
/// The last `seq` given out and the envelopes kept (for the operator).
pub const STORED: &str = "SELECT COALESCE(MAX(seq), 0) AS seq, \
     COALESCE(SUM(envelope != ''), 0) AS stored FROM history";
/// The table's name, for [`crate::storage`]'s check that it exists.
pub const TABLE: &str = "history";
/// Binds: since, the oldest seq within `HISTORY_SIZE`, cutoff time. (Rows
/// past the size are trimmed only every [`TRIM_EVERY`] publishes, so reads
/// apply the bound themselves.)
pub const SINCE: &str = "SELECT seq, envelope FROM history \
     WHERE seq > ? AND seq >= ? AND at >= ? AND envelope != '' ORDER BY seq";
/// Binds: the oldest seq within `HISTORY_SIZE`, cutoff time.
pub const OLDEST: &str = "SELECT MIN(seq) AS oldest FROM history \
     WHERE seq >= ? AND at >= ? AND envelope != ''";

/// Publishes between two trims: a delete per publish was a second storage
/// statement on every publish; reads bound the size themselves.
pub const TRIM_EVERY: u64 = 16;

/// Whether recording `seq` also trims.
pub fn trims_at(seq: u64) -> bool {
    seq.is_multiple_of(TRIM_EVERY)
}

/// The meta key of the epoch.
pub const EPOCH_KEY: &str = "epoch";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_and_recovered_are_appended() {
        let text = r#"{"envelopeId":"e","type":"t","payload":{"a":1}}"#;
        let with = with_seq(text, 42);
        assert_eq!(
            with,
            r#"{"envelopeId":"e","type":"t","payload":{"a":1},"seq":42}"#
        );
        assert_eq!(
            recovered(&with),
            r#"{"envelopeId":"e","type":"t","payload":{"a":1},"seq":42,"recovered":true}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&recovered(&with)).expect("json");
        assert_eq!(parsed["seq"], 42);
        assert_eq!(with_seq("{}", 1), r#"{"seq":1}"#);
    }

    #[test]
    fn completeness() {
        let at = |seq: u64| Position {
            seq,
            epoch: "E".into(),
        };
        // Nothing missed.
        assert!(resume_complete(&at(5), 5, "E", None));
        // Missed 4 and 5, both retained.
        assert!(resume_complete(&at(5), 3, "E", Some(1)));
        assert!(resume_complete(&at(5), 3, "E", Some(4)));
        // 4 was trimmed or expired.
        assert!(!resume_complete(&at(5), 3, "E", Some(5)));
        assert!(!resume_complete(&at(5), 3, "E", None));
        // Another history, or a position it never reached.
        assert!(!resume_complete(&at(5), 5, "F", Some(1)));
        assert!(!resume_complete(&at(5), 6, "E", Some(1)));
        assert!(resume_complete(&at(0), 0, "E", None));
        // What is read at all: the same history, up to where it is.
        assert!(replays(&at(5), 3, "E") && replays(&at(5), 5, "E"));
        assert!(!replays(&at(5), 6, "E") && !replays(&at(5), 3, "F"));
    }

    #[test]
    fn retention() {
        let r = Retention::default();
        assert!(r.enabled());
        assert_eq!(r.cutoff_ms(400_000.0), 100_000.0);
        assert!(!Retention { size: 0, ..r }.enabled());
        let three = Retention { size: 3, ..r };
        assert_eq!(three.oldest_kept(5), 3);
        assert_eq!(three.oldest_kept(2), 1);
        assert!(trims_at(16) && trims_at(32) && !trims_at(17));
    }

    #[test]
    fn purge_bounds_and_expiry() {
        let r = Retention {
            size: 3,
            ttl_secs: 2,
        };
        assert_eq!(r.purge_bounds(10_000.0), (3, 8_000.0));
        // Due just after the TTL, so the alarm finds the row past the cutoff.
        assert!(r.expires_at(1_000.0) > 3_000.0);
        assert!(r.cutoff_ms(r.expires_at(1_000.0)) > 1_000.0);
        // At most one cleanup per tenth of the TTL, from 1 s to 60 s.
        assert_eq!(r.cleanup_at(5_000.0, 1_000.0), 5_000.0);
        assert_eq!(r.cleanup_at(1_500.0, 1_000.0), 2_000.0);
        let default = Retention::default();
        assert_eq!(default.cleanup_at(1_000.0, 1_000.0), 31_000.0);
        let day = Retention {
            ttl_secs: 86_400,
            ..default
        };
        assert_eq!(day.cleanup_at(0.0, 0.0), 60_000.0);
        let off = Retention { size: 0, ..r };
        assert_eq!(off.purge_bounds(10_000.0), (1, 10_001.0));
        assert_eq!(off.expires_at(1_000.0), 1_000.0);
    }
}
