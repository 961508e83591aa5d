//! Structured logs: one JSON object per line, which is what `console.log`
//! of a JSON string prints and what Workers Logs indexes by field. The
//! events, their levels and fields, how user ids appear (`LOG_USER_IDS`)
//! and the folding of lines a stranger can cause are rules, kept here; the
//! runtime only hands the lines to `console.log` (`runtime::logs`).
//!
//! Never in a line: a token, a secret, a payload, an ack result or a
//! filter value. No event below has a field that could carry one.

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::digest::hex;

/// `WORKER_LOG_LEVEL`: which lines are written. Ordered: a level includes
/// every level before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub const DEFAULT: Level = Level::Info;

    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// `LOG_USER_IDS`: how a user id appears in lines and data points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserIdMode {
    /// As it is.
    #[default]
    Plain,
    /// HMAC-SHA256 keyed with `LOG_HASH_KEY`, its first 16 hex digits: the
    /// lines of one user can be joined without the id appearing.
    Hash,
    /// Left out.
    Omit,
}

impl UserIdMode {
    pub fn parse(text: &str) -> Option<UserIdMode> {
        match text.to_ascii_lowercase().as_str() {
            "plain" => Some(UserIdMode::Plain),
            "hash" => Some(UserIdMode::Hash),
            "omit" => Some(UserIdMode::Omit),
            _ => None,
        }
    }
}

/// The logging settings (`WORKER_LOG_LEVEL`, `LOG_USER_IDS`,
/// `LOG_HASH_KEY`, `METRICS_LOG`), as `config` parsed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: Level,
    pub user_ids: UserIdMode,
    /// `LOG_HASH_KEY`; `config` requires it with `LOG_USER_IDS=hash`.
    pub hash_key: Option<String>,
    /// `METRICS_LOG`: also log every Analytics Engine data point.
    pub metrics_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: Level::DEFAULT,
            user_ids: UserIdMode::Plain,
            hash_key: None,
            metrics_log: false,
        }
    }
}

/// Who ended a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client's close frame.
    Client,
    /// This server: an operator's disconnect, an expired token, a policy
    /// close, a frame too large.
    Server,
    /// The runtime: the connection broke without a close frame (1006) or
    /// with an error.
    Runtime,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Server => "server",
            ClosedBy::Runtime => "runtime",
        }
    }

    /// A close event's code: 1006 means no close frame came.
    pub fn of_close_event(code: u16) -> ClosedBy {
        if code == 1006 {
            ClosedBy::Runtime
        } else {
            ClosedBy::Client
        }
    }
}

/// What a `publish` line says of one answered publish (plain, keyed or one
/// user of a batch).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishFacts<'a> {
    pub user_id: &'a str,
    pub envelope_id: &'a str,
    pub envelope_type: &'a str,
    pub client_count: usize,
    pub acked: usize,
    /// Unknown (absent) on a replay of a stored answer.
    pub timed_out: Option<usize>,
    pub closed: Option<usize>,
    /// From the worker receiving the request to the answer.
    pub ms: u64,
    /// The payload's JSON length.
    pub bytes: usize,
    pub keyed: bool,
    pub replayed: bool,
    /// `/publish/batch`: how many users it named.
    pub batch: Option<usize>,
}

/// One event worth a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    Publish(PublishFacts<'a>),
    SocketOpen {
        user_id: &'a str,
        socket_id: &'a str,
        /// The user's sockets now, this one included.
        sockets: usize,
    },
    SocketClose {
        user_id: &'a str,
        socket_id: &'a str,
        code: u16,
        by: ClosedBy,
        duration_ms: u64,
    },
    /// A request or upgrade refused for its token, origin or scope.
    AuthRefused {
        route: &'a str,
        status: u16,
        code: &'a str,
        /// Refusals folded into this line, itself included.
        count: u64,
    },
    /// A frame answered with an error frame or a policy close.
    FrameRejected {
        user_id: &'a str,
        socket_id: &'a str,
        code: &'a str,
        count: u64,
    },
    /// `debug`: a frame received.
    Frame {
        user_id: &'a str,
        socket_id: &'a str,
        frame_type: &'a str,
        bytes: usize,
    },
    TokenRefreshed {
        user_id: &'a str,
        socket_id: &'a str,
        expires_at: Option<u64>,
    },
    /// A socket closed with 4002 at its token's end.
    TokenExpired {
        user_id: &'a str,
        socket_id: &'a str,
    },
    /// One webhook request's end.
    WebhookDelivery {
        events: usize,
        /// The receiver's status; absent when no answer came.
        status: Option<u16>,
        ok: bool,
        attempt: u32,
        ms: u64,
    },
    /// Webhook events given up on.
    WebhookDropped {
        events: usize,
        reason: &'a str,
    },
    /// An object woke with sockets (after hibernation or a restart) and
    /// rebuilt its socket index from their attachments.
    ObjectWoke {
        sockets: usize,
    },
    /// What used to be free text: a runtime failure.
    Error {
        at: &'a str,
        message: &'a str,
    },
}

impl Event<'_> {
    /// The `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Publish(_) => "publish",
            Event::SocketOpen { .. } => "socket.open",
            Event::SocketClose { .. } => "socket.close",
            Event::AuthRefused { .. } => "auth.refused",
            Event::FrameRejected { .. } => "frame.rejected",
            Event::Frame { .. } => "frame",
            Event::TokenRefreshed { .. } => "token.refreshed",
            Event::TokenExpired { .. } => "token.expired",
            Event::WebhookDelivery { .. } => "webhook.delivery",
            Event::WebhookDropped { .. } => "webhook.dropped",
            Event::ObjectWoke { .. } => "object.woke",
            Event::Error { .. } => "error",
        }
    }

    pub fn level(&self) -> Level {
        match self {
            Event::Error { .. } => Level::Error,
            Event::FrameRejected { .. } | Event::WebhookDropped { .. } => Level::Warn,
            Event::Frame { .. } => Level::Debug,
            _ => Level::Info,
        }
    }
}

/// Writes lines by the settings: which events, and how user ids appear.
pub struct Logs {
    level: Level,
    user_ids: UserIdMode,
    /// The keyed hash, its key already absorbed (`LOG_USER_IDS=hash`).
    mac: Option<Hmac<Sha256>>,
}

impl fmt::Debug for Logs {
    // The key stays out of debug output too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logs")
            .field("level", &self.level)
            .field("user_ids", &self.user_ids)
            .finish_non_exhaustive()
    }
}

impl Default for Logs {
    fn default() -> Self {
        Logs::new(&LogConfig::default())
    }
}

impl Logs {
    pub fn new(config: &LogConfig) -> Logs {
        let mac = match (config.user_ids, &config.hash_key) {
            (UserIdMode::Hash, Some(key)) => Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok(),
            _ => None,
        };
        Logs {
            level: config.level,
            user_ids: config.user_ids,
            mac,
        }
    }

    /// Whether lines of `level` are written.
    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    /// The event's line, unless its level is off.
    pub fn line(&self, event: &Event) -> Option<String> {
        self.enabled(event.level()).then(|| self.render(event))
    }

    /// How `user_id` appears: itself, its keyed hash, or not at all.
    pub fn user(&self, user_id: &str) -> Option<String> {
        match self.user_ids {
            UserIdMode::Plain => Some(user_id.to_owned()),
            UserIdMode::Omit => None,
            // Without a key (`config` refuses that) nothing is shown.
            UserIdMode::Hash => self.mac.as_ref().map(|mac| {
                let mut mac = mac.clone();
                mac.update(user_id.as_bytes());
                hex(&mac.finalize().into_bytes()[..8])
            }),
        }
    }

    fn render(&self, event: &Event) -> String {
        let line = Line::new(event.name());
        match event {
            Event::Publish(p) => self
                .user_field(line, p.user_id)
                .str("envelopeId", p.envelope_id)
                .str("type", p.envelope_type)
                .num("clientCount", p.client_count as u64)
                .num("acked", p.acked as u64)
                .opt_num("timedOut", p.timed_out.map(|n| n as u64))
                .opt_num("closed", p.closed.map(|n| n as u64))
                .num("ms", p.ms)
                .num("bytes", p.bytes as u64)
                .flag("keyed", p.keyed)
                .flag("replayed", p.replayed)
                .opt_num("batch", p.batch.map(|n| n as u64)),
            Event::SocketOpen {
                user_id,
                socket_id,
                sockets,
            } => self
                .user_field(line, user_id)
                .str("socketId", socket_id)
                .num("sockets", *sockets as u64),
            Event::SocketClose {
                user_id,
                socket_id,
                code,
                by,
                duration_ms,
            } => self
                .user_field(line, user_id)
                .str("socketId", socket_id)
                .num("code", u64::from(*code))
                .str("by", by.as_str())
                .num("durationMs", *duration_ms),
            Event::AuthRefused {
                route,
                status,
                code,
                count,
            } => line
                .str("route", route)
                .num("status", u64::from(*status))
                .str("code", code)
                .num("count", *count),
            Event::FrameRejected {
                user_id,
                socket_id,
                code,
                count,
            } => self
                .user_field(line, user_id)
                .str("socketId", socket_id)
                .str("code", code)
                .num("count", *count),
            Event::Frame {
                user_id,
                socket_id,
                frame_type,
                bytes,
            } => self
                .user_field(line, user_id)
                .str("socketId", socket_id)
                .str("type", frame_type)
                .num("bytes", *bytes as u64),
            Event::TokenRefreshed {
                user_id,
                socket_id,
                expires_at,
            } => self
                .user_field(line, user_id)
                .str("socketId", socket_id)
                .opt_num("expiresAt", *expires_at),
            Event::TokenExpired { user_id, socket_id } => {
                self.user_field(line, user_id).str("socketId", socket_id)
            }
            Event::WebhookDelivery {
                events,
                status,
                ok,
                attempt,
                ms,
            } => line
                .num("events", *events as u64)
                .opt_num("status", status.map(u64::from))
                .flag("ok", *ok)
                .num("attempt", u64::from(*attempt))
                .num("ms", *ms),
            Event::WebhookDropped { events, reason } => {
                line.num("events", *events as u64).str("reason", reason)
            }
            Event::ObjectWoke { sockets } => line.num("sockets", *sockets as u64),
            Event::Error { at, message } => line.str("where", at).str("message", message),
        }
        .finish()
    }

    fn user_field(&self, line: Line, user_id: &str) -> Line {
        match self.user(user_id) {
            Some(shown) => line.str("userId", &shown),
            None => line,
        }
    }
}

/// One JSON object, written field by field: cheaper than building a
/// `serde_json::Value` per line, and the field names are fixed.
pub struct Line(String);

impl Line {
    pub fn new(event: &str) -> Line {
        let mut text = String::with_capacity(160);
        text.push_str("{\"event\":");
        push_json_str(&mut text, event);
        Line(text)
    }

    fn key(&mut self, name: &str) {
        self.0.push_str(",\"");
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    pub fn str(mut self, name: &str, value: &str) -> Line {
        self.key(name);
        push_json_str(&mut self.0, value);
        self
    }

    pub fn num(mut self, name: &str, value: u64) -> Line {
        self.key(name);
        self.0.push_str(&value.to_string());
        self
    }

    pub fn opt_num(self, name: &str, value: Option<u64>) -> Line {
        match value {
            Some(value) => self.num(name, value),
            None => self,
        }
    }

    pub fn flag(mut self, name: &str, value: bool) -> Line {
        self.key(name);
        self.0.push_str(if value { "true" } else { "false" });
        self
    }

    /// `name` with raw JSON text already made (an array).
    pub fn raw(mut self, name: &str, json: &str) -> Line {
        self.key(name);
        self.0.push_str(json);
        self
    }

    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Appends `value` as a JSON string.
pub fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `publish` lines are written in batches. In this runtime the first
/// `console.log` of an invocation cost 100–140 µs and each further one
/// 2–4 µs (bench/README.md, "What logging costs"): a line of its own per
/// publish was 8–15 % of a publish's runtime CPU. A batch is written once
/// it holds [`BATCH_LINES`] lines, or [`BATCH_WAIT_MS`] after its first.
pub const BATCH_LINES: usize = 64;
pub const BATCH_WAIT_MS: f64 = 1000.0;

/// What to do after a line joined the batch, which now holds `buffered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStep {
    /// Full: write it now.
    WriteNow,
    /// The first line: write the batch [`BATCH_WAIT_MS`] from now.
    WriteLater,
    /// A write is already due.
    Wait,
}

pub fn batch_step(buffered: usize) -> BatchStep {
    if buffered >= BATCH_LINES {
        BatchStep::WriteNow
    } else if buffered == 1 {
        BatchStep::WriteLater
    } else {
        BatchStep::Wait
    }
}

/// Folds lines a stranger can cause: at most one line per second per event
/// and code (per isolate: each isolate keeps its own), the line carrying
/// how many occurrences it stands for. A flood of bad tokens must not
/// become a flood of billed log lines.
#[derive(Debug, Default)]
pub struct Fold {
    windows: HashMap<(&'static str, String), Window>,
}

#[derive(Debug)]
struct Window {
    /// When the last line went out.
    emitted_ms: f64,
    /// Occurrences since then, not written.
    folded: u64,
}

/// The length of a fold's window.
pub const FOLD_WINDOW_MS: f64 = 1000.0;

impl Fold {
    /// An occurrence of `event` with `code` at `now_ms`: `Some(count)` when
    /// a line goes out now, standing for `count` occurrences (this one and
    /// the ones folded since the last line); `None` when it is folded.
    pub fn admit(&mut self, event: &'static str, code: &str, now_ms: f64) -> Option<u64> {
        match self.windows.get_mut(&(event, code.to_owned())) {
            Some(window) if now_ms - window.emitted_ms < FOLD_WINDOW_MS => {
                window.folded += 1;
                None
            }
            Some(window) => {
                let count = window.folded + 1;
                *window = Window {
                    emitted_ms: now_ms,
                    folded: 0,
                };
                Some(count)
            }
            None => {
                let window = Window {
                    emitted_ms: now_ms,
                    folded: 0,
                };
                self.windows.insert((event, code.to_owned()), window);
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn logs(level: Level, user_ids: UserIdMode) -> Logs {
        Logs::new(&LogConfig {
            level,
            user_ids,
            hash_key: Some("k".repeat(32)),
            metrics_log: false,
        })
    }

    fn parsed(line: &str) -> Value {
        serde_json::from_str(line).expect("a line is one JSON object")
    }

    fn publish_facts() -> PublishFacts<'static> {
        PublishFacts {
            user_id: "alice",
            envelope_id: "e1",
            envelope_type: "chat\n\"x\"",
            client_count: 3,
            acked: 1,
            timed_out: Some(1),
            closed: Some(1),
            ms: 5012,
            bytes: 17,
            keyed: false,
            replayed: false,
            batch: None,
        }
    }

    #[test]
    fn a_publish_line_has_every_field() {
        let line = logs(Level::Info, UserIdMode::Plain)
            .line(&Event::Publish(publish_facts()))
            .unwrap();
        assert_eq!(
            parsed(&line),
            json!({"event": "publish", "userId": "alice", "envelopeId": "e1",
                   "type": "chat\n\"x\"", "clientCount": 3, "acked": 1, "timedOut": 1,
                   "closed": 1, "ms": 5012, "bytes": 17, "keyed": false, "replayed": false})
        );
        assert!(!line.contains('\n'), "one line: {line}");
    }

    #[test]
    fn a_batch_line_names_its_size_and_a_replay_has_no_unknown_counts() {
        let facts = PublishFacts {
            batch: Some(7),
            timed_out: None,
            closed: None,
            replayed: true,
            keyed: true,
            ..publish_facts()
        };
        let line = parsed(&Logs::default().line(&Event::Publish(facts)).unwrap());
        assert_eq!(line["batch"], 7);
        assert_eq!(line["replayed"], true);
        assert!(line.get("timedOut").is_none() && line.get("closed").is_none());
    }

    #[test]
    fn levels_choose_the_lines() {
        let error = Event::Error {
            at: "x",
            message: "y",
        };
        let rejected = Event::FrameRejected {
            user_id: "u",
            socket_id: "s",
            code: "invalid_json",
            count: 1,
        };
        let frame = Event::Frame {
            user_id: "u",
            socket_id: "s",
            frame_type: "ack",
            bytes: 40,
        };
        let open = Event::SocketOpen {
            user_id: "u",
            socket_id: "s",
            sockets: 1,
        };
        let shown = |level| {
            let logs = logs(level, UserIdMode::Plain);
            [&error, &rejected, &open, &frame].map(|e| logs.line(e).is_some())
        };
        assert_eq!(shown(Level::Error), [true, false, false, false]);
        assert_eq!(shown(Level::Warn), [true, true, false, false]);
        assert_eq!(shown(Level::Info), [true, true, true, false]);
        assert_eq!(shown(Level::Debug), [true, true, true, true]);
    }

    #[test]
    fn user_ids_plain_hashed_or_omitted() {
        let open = Event::SocketOpen {
            user_id: "alice@example.com",
            socket_id: "s1",
            sockets: 2,
        };
        let plain = parsed(&logs(Level::Info, UserIdMode::Plain).line(&open).unwrap());
        assert_eq!(plain["userId"], "alice@example.com");

        let hashed = logs(Level::Info, UserIdMode::Hash).line(&open).unwrap();
        assert!(!hashed.contains("alice"), "{hashed}");
        let shown = parsed(&hashed)["userId"].as_str().unwrap().to_owned();
        assert_eq!(shown.len(), 16);
        assert!(shown.chars().all(|c| c.is_ascii_hexdigit()));
        // Keyed: the same id, the same hash; another key, another hash.
        let again = logs(Level::Info, UserIdMode::Hash).user("alice@example.com");
        assert_eq!(again.as_deref(), Some(shown.as_str()));
        let other_key = Logs::new(&LogConfig {
            user_ids: UserIdMode::Hash,
            hash_key: Some("z".repeat(32)),
            ..LogConfig::default()
        });
        assert_ne!(other_key.user("alice@example.com").unwrap(), shown);

        let omitted = parsed(&logs(Level::Info, UserIdMode::Omit).line(&open).unwrap());
        assert!(omitted.get("userId").is_none());
        assert_eq!(omitted["socketId"], "s1");
    }

    #[test]
    fn the_hash_is_hmac_sha256_truncated() {
        let logs = logs(Level::Info, UserIdMode::Hash);
        let mut mac = Hmac::<Sha256>::new_from_slice("k".repeat(32).as_bytes()).unwrap();
        mac.update(b"bob");
        let full: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(logs.user("bob").unwrap(), full[..16]);
    }

    #[test]
    fn every_event_renders_as_one_object_with_its_name() {
        let events = [
            Event::SocketClose {
                user_id: "u",
                socket_id: "s",
                code: 4002,
                by: ClosedBy::Server,
                duration_ms: 12,
            },
            Event::AuthRefused {
                route: "/publish",
                status: 401,
                code: "invalid_token",
                count: 3,
            },
            Event::TokenRefreshed {
                user_id: "u",
                socket_id: "s",
                expires_at: Some(9),
            },
            Event::TokenExpired {
                user_id: "u",
                socket_id: "s",
            },
            Event::WebhookDelivery {
                events: 2,
                status: Some(500),
                ok: false,
                attempt: 3,
                ms: 40,
            },
            Event::WebhookDropped {
                events: 1,
                reason: "gave up",
            },
            Event::ObjectWoke { sockets: 4 },
            Event::Error {
                at: "history.record",
                message: "disk \u{1} full",
            },
        ];
        for event in &events {
            let line = Logs::default().line(event).unwrap();
            assert_eq!(parsed(&line)["event"], event.name(), "{line}");
        }
        let close = parsed(&Logs::default().line(&events[0]).unwrap());
        assert_eq!(close["by"], "server");
        assert_eq!(close["code"], 4002);
        assert_eq!(close["durationMs"], 12);
    }

    #[test]
    fn closes_without_a_close_frame_are_the_runtimes() {
        assert_eq!(ClosedBy::of_close_event(1006), ClosedBy::Runtime);
        assert_eq!(ClosedBy::of_close_event(1000), ClosedBy::Client);
        assert_eq!(ClosedBy::of_close_event(4999), ClosedBy::Client);
    }

    #[test]
    fn settings_parse_case_blind() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("verbose"), None);
        assert_eq!(UserIdMode::parse("Hash"), Some(UserIdMode::Hash));
        assert_eq!(UserIdMode::parse("md5"), None);
    }

    #[test]
    fn a_fold_writes_one_line_per_second_per_event_and_code() {
        let mut fold = Fold::default();
        assert_eq!(fold.admit("auth.refused", "invalid_token", 0.0), Some(1));
        for ms in 1..100 {
            assert_eq!(fold.admit("auth.refused", "invalid_token", ms as f64), None);
        }
        // Another code and another event have windows of their own.
        assert_eq!(fold.admit("auth.refused", "token_expired", 50.0), Some(1));
        assert_eq!(fold.admit("frame.rejected", "invalid_token", 50.0), Some(1));
        assert_eq!(fold.admit("auth.refused", "invalid_token", 999.0), None);
        // The next line stands for itself and the 100 folded.
        assert_eq!(
            fold.admit("auth.refused", "invalid_token", 1000.0),
            Some(101)
        );
        assert_eq!(fold.admit("auth.refused", "invalid_token", 1500.0), None);
        assert_eq!(fold.admit("auth.refused", "invalid_token", 2100.0), Some(2));
    }

    #[test]
    fn a_batch_is_written_when_full_or_a_while_after_its_first_line() {
        assert_eq!(batch_step(1), BatchStep::WriteLater);
        assert_eq!(batch_step(2), BatchStep::Wait);
        assert_eq!(batch_step(BATCH_LINES - 1), BatchStep::Wait);
        assert_eq!(batch_step(BATCH_LINES), BatchStep::WriteNow);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\u{7}é");
        assert_eq!(
            serde_json::from_str::<String>(&out).unwrap(),
            "a\"b\\c\u{7}é"
        );
    }
}
