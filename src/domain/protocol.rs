//! Wire formats: WebSocket frames in both directions, the delivered envelope,
//! the `/publish` request body and the publish response.
//!
//! Parsing never panics: every input yields a value or a typed error whose
//! [`ErrorCode`] is what the client sees.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::filter::InvalidFilter;

/// The `Content-Type` of every JSON answer.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The CORS header every answer carries: any origin may read it (browsers
/// of any site publish and read with a token, never with cookies).
pub const ALLOW_ORIGIN: (&str, &str) = ("Access-Control-Allow-Origin", "*");

/// Envelope type used when a publish does not name one.
pub const DEFAULT_ENVELOPE_TYPE: &str = "message";

/// Stable error codes sent to clients, in WebSocket error frames and in HTTP
/// error bodies. One closed table so clients can switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A text frame that is not valid JSON.
    InvalidJson,
    /// Valid JSON, but not an object, no string `type`, or fields of the wrong shape.
    InvalidFrame,
    /// A frame whose `type` the server does not know.
    UnknownType,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// One or more entries of a `filters` array were rejected.
    InvalidFilter,
    /// A subscribe / unsubscribe carried more than 50 filters; the rest were ignored.
    TooManyFilters,
    /// The socket would exceed its filter cap or its stored-state size limit.
    SubscriptionLimit,
    /// The socket sent messages faster than its rate limit.
    RateLimited,
    /// `resume` while the server keeps no history (`HISTORY_SIZE=0`).
    HistoryDisabled,
    /// A `refresh` whose token was refused; the socket keeps its old expiry.
    RefreshRejected,
    /// A code this version does not know (read by clients of a newer
    /// server); never sent.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidFrame,
        ErrorCode::UnknownType,
        ErrorCode::BinaryNotSupported,
        ErrorCode::InvalidFilter,
        ErrorCode::TooManyFilters,
        ErrorCode::SubscriptionLimit,
        ErrorCode::RateLimited,
        ErrorCode::HistoryDisabled,
        ErrorCode::RefreshRejected,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        self.entry().0
    }

    /// What caused it.
    pub fn description(self) -> &'static str {
        self.entry().1
    }

    /// Whether it counts towards closing the socket with 1008: frames a
    /// correct client never sends. Rejected filters do not count; they are
    /// answered and otherwise harmless.
    pub fn is_violation(self) -> bool {
        self.entry().2
    }

    fn entry(self) -> (&'static str, &'static str, bool) {
        match self {
            ErrorCode::InvalidJson => ("invalid_json", "a text frame that is not JSON", true),
            ErrorCode::InvalidFrame => (
                "invalid_frame",
                "JSON that is not an object, lacks a string type, or has fields of the wrong shape",
                true,
            ),
            ErrorCode::UnknownType => (
                "unknown_type",
                "a type other than subscribe, unsubscribe, ack, resume, refresh",
                true,
            ),
            ErrorCode::BinaryNotSupported => ("binary_not_supported", "a binary frame", true),
            ErrorCode::InvalidFilter => (
                "invalid_filter",
                "filters entries that are not objects of strings or exceed the size caps; the others applied",
                false,
            ),
            ErrorCode::TooManyFilters => (
                "too_many_filters",
                "more than 50 entries in one message; the rest were ignored",
                false,
            ),
            ErrorCode::SubscriptionLimit => (
                "subscription_limit",
                "the socket would hold more than 64 filters or over ~2 KB of them; nothing applied",
                false,
            ),
            ErrorCode::RateLimited => (
                "rate_limited",
                "more than the socket's message rate; the message was dropped",
                true,
            ),
            ErrorCode::HistoryDisabled => (
                "history_disabled",
                "resume while the server keeps no history (HISTORY_SIZE=0)",
                false,
            ),
            ErrorCode::RefreshRejected => (
                "refresh_rejected",
                "a refresh whose token is missing or invalid, or another user's; the socket keeps its old expiry",
                false,
            ),
            ErrorCode::Unknown => ("unknown", "a code this version does not know", false),
        }
    }
}

/// Close codes the server sends, with their reason and whether a client
/// should reconnect. (The server otherwise only echoes a client's close.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// Too many protocol violations or sustained flooding.
    PolicyViolation,
    /// A frame larger than `MAX_FRAME_BYTES`.
    MessageTooBig,
    /// The socket's stored state could not be read after a restart.
    Reconnect,
    /// An operator disconnected the socket and asked it to come back with
    /// a fresh token (`POST /users/{id}/disconnect` with `"reconnect": true`).
    Reauthenticate,
    /// An operator disconnected the socket for good (the default of
    /// `POST /users/{id}/disconnect`).
    Disconnected,
    /// The socket's token expired (`exp` plus the leeway) and was not
    /// refreshed; reconnect with a fresh token.
    TokenExpired,
}

impl CloseCode {
    pub const ALL: [CloseCode; 6] = [
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::Reconnect,
        CloseCode::Reauthenticate,
        CloseCode::Disconnected,
        CloseCode::TokenExpired,
    ];

    pub fn code(self) -> u16 {
        self.entry().0
    }

    /// The close code of ours with this number, if any.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|close| close.code() == code)
    }

    /// Its name in log lines (`frame.rejected`'s `code` for the two
    /// closes a frame can cause).
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::PolicyViolation => "policy_violation",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::Reconnect => "reconnect",
            CloseCode::Reauthenticate => "reauthenticate",
            CloseCode::Disconnected => "disconnected",
            CloseCode::TokenExpired => "token_expired",
        }
    }

    /// Sent as the close frame's reason.
    pub fn reason(self) -> &'static str {
        self.entry().1
    }

    /// Whether a client should reconnect (with backoff) after this close.
    pub fn reconnect(self) -> bool {
        self.entry().2
    }

    /// The code that completes the closing handshake a client began with
    /// `code`: the same, but 1005 and 1006 (reserved, never sent) and codes
    /// out of range become 1000.
    pub fn echo(code: usize) -> u16 {
        match u16::try_from(code) {
            Ok(code) if code != 1005 && code != 1006 && (1000..=4999).contains(&code) => code,
            _ => 1000,
        }
    }

    fn entry(self) -> (u16, &'static str, bool) {
        match self {
            CloseCode::PolicyViolation => {
                (1008, "too many invalid or rate-limited messages", false)
            }
            CloseCode::MessageTooBig => (1009, "frame larger than the server accepts", false),
            CloseCode::Reconnect => (1012, "socket state lost; please reconnect", true),
            CloseCode::Reauthenticate => (
                4000,
                "disconnected by an operator; reconnect with a fresh token",
                true,
            ),
            CloseCode::Disconnected => (4001, "disconnected by an operator", false),
            CloseCode::TokenExpired => (4002, "token expired", true),
        }
    }
}

/// A frame sent by a client, after the `ping` text shortcut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// Text `ping` in any letter case; answered with `pong`.
    #[serde(skip)]
    Ping,
    /// Add filters to this socket.
    Subscribe { filters: Vec<Value> },
    /// Remove filters equal to these from this socket.
    Unsubscribe { filters: Vec<Value> },
    /// Acknowledge a delivered envelope; `result` is returned to the publisher.
    Ack {
        #[serde(rename = "envelopeId")]
        envelope_id: String,
        #[serde(default)]
        result: Value,
    },
    /// Replay the retained envelopes after `since` (a `seq`) of history
    /// `epoch` that match this socket's filters.
    Resume { since: u64, epoch: String },
    /// Extend the socket's life with a new token of the same user. A
    /// missing or non-string `token` is parsed as `None`: it is answered
    /// `refresh_rejected`, not `invalid_frame`.
    Refresh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

/// Why a client frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    InvalidJson,
    NotAnObject,
    MissingType,
    UnknownType(String),
    InvalidFields(String),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::InvalidJson => ErrorCode::InvalidJson,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::NotAnObject | FrameError::MissingType | FrameError::InvalidFields(_) => {
                ErrorCode::InvalidFrame
            }
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::InvalidJson => f.write_str("frame is not valid JSON"),
            FrameError::NotAnObject => f.write_str("frame must be a JSON object"),
            FrameError::MissingType => f.write_str("frame must have a string \"type\""),
            FrameError::UnknownType(t) => write!(
                f,
                "unknown frame type {t:?}; expected subscribe, unsubscribe, ack, resume or refresh"
            ),
            FrameError::InvalidFields(detail) => write!(f, "malformed frame: {detail}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// An ack frame's fields, borrowed where they can be.
#[derive(Deserialize)]
struct AckWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "envelopeId")]
    envelope_id: String,
    #[serde(default)]
    result: Value,
}

impl ClientFrame {
    /// Parses one text frame.
    #[inline(never)]
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        if text.eq_ignore_ascii_case("ping") {
            return Ok(ClientFrame::Ping);
        }
        // Acks are the hot frames (one per socket of every publish): read
        // straight into their fields, with no map of the frame built. Any
        // other frame, and an ack this cannot read (a duplicate key, an
        // escaped `type`), takes the general path, which decides as before.
        // (Only an object: a derived struct would also read an array.)
        let is_object = text.trim_start().starts_with('{');
        if let Some(ack) = is_object
            .then(|| serde_json::from_str::<AckWire>(text).ok())
            .flatten()
        {
            if ack.kind == "ack" {
                return Ok(ClientFrame::Ack {
                    envelope_id: ack.envelope_id,
                    result: ack.result,
                });
            }
        }
        ClientFrame::parse_general(text)
    }

    /// Any frame but `ping`, through a parsed `Value`.
    #[inline(never)]
    pub(crate) fn parse_general(text: &str) -> Result<ClientFrame, FrameError> {
        let mut value: Value = serde_json::from_str(text).map_err(|_| FrameError::InvalidJson)?;
        let object = value.as_object_mut().ok_or(FrameError::NotAnObject)?;
        match object.get("type").and_then(Value::as_str) {
            None => return Err(FrameError::MissingType),
            Some("refresh") => {
                let token = match object.remove("token") {
                    Some(Value::String(token)) => Some(token),
                    _ => None,
                };
                return Ok(ClientFrame::Refresh { token });
            }
            Some("subscribe" | "unsubscribe" | "ack" | "resume") => {}
            Some(other) => return Err(FrameError::UnknownType(truncate(other, 64))),
        }
        ClientFrame::deserialize(value).map_err(|e| FrameError::InvalidFields(e.to_string()))
    }
}

impl ClientFrame {
    /// Its `type`, as the `debug` log line names it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Ping => "ping",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Ack { .. } => "ack",
            ClientFrame::Resume { .. } => "resume",
            ClientFrame::Refresh { .. } => "refresh",
        }
    }

    /// The frame as sent on the wire (`ping` is plain text).
    pub fn to_text(&self) -> String {
        match self {
            ClientFrame::Ping => "ping".to_owned(),
            // Serializing these plain enums cannot fail.
            frame => serde_json::to_string(frame).unwrap_or_default(),
        }
    }
}

/// Everything a server may send on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The answer to `ping`.
    Pong,
    /// A delivery, to be acked.
    Envelope(Envelope),
    /// A confirmation or an error frame.
    Frame(ServerFrame),
}

impl ServerMessage {
    /// Reads one text frame from the server; `None` if it is none of ours.
    pub fn parse(text: &str) -> Option<ServerMessage> {
        if text == "pong" {
            return Some(ServerMessage::Pong);
        }
        let value: Value = serde_json::from_str(text).ok()?;
        if value.get("envelopeId").is_some() {
            return serde_json::from_value(value)
                .ok()
                .map(ServerMessage::Envelope);
        }
        serde_json::from_value(value).ok().map(ServerMessage::Frame)
    }
}

/// Keeps echoed client text short in error messages.
fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// A frame sent by the server that is not a delivery. These never carry an
/// `envelopeId`, so a client can tell them from envelopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// Confirms a subscribe: `added` new filters, `total` on the socket now;
    /// with history on, the user's `seq` and `epoch` when it took effect.
    Subscribed {
        added: usize,
        total: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Ends the replay of a `resume`: `replayed` envelopes after `since` up
    /// to `seq`; `complete` is false when history did not reach back that
    /// far or `epoch` (the current one) is another than the client's.
    Resumed {
        since: u64,
        seq: u64,
        replayed: usize,
        complete: bool,
        epoch: String,
    },
    /// Confirms an unsubscribe: `removed` filters, `total` left on the socket.
    Unsubscribed { removed: usize, total: usize },
    /// Something the client sent was rejected; the socket stays usable.
    Error { code: ErrorCode, message: String },
    /// The socket's token expires at `expires_at` (unix seconds): send a
    /// `refresh`, or the socket closes with 4002 at that time plus the
    /// server's leeway. Sent once per token.
    #[serde(rename = "token_expiring")]
    TokenExpiring {
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
    /// Confirms a `refresh`: the socket now lives until `expires_at` (unix
    /// seconds; `None` when the new token has no `exp`).
    Refreshed {
        #[serde(rename = "expiresAt")]
        expires_at: Option<u64>,
    },
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            code,
            message: message.into(),
        }
    }

    /// The confirmation of a subscribe (`add`) or unsubscribe that changed
    /// `changed` filters and left `total`; a subscribe's `seq` and `epoch`
    /// are filled in by the history, when it is on.
    pub fn filters_changed(add: bool, changed: usize, total: usize) -> ServerFrame {
        if add {
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
        }
    }

    /// A message over the socket's rate limit was dropped.
    pub fn rate_limited() -> ServerFrame {
        ServerFrame::error(
            ErrorCode::RateLimited,
            // Whole numbers: formatting an f64 would link 14 KB of float
            // printing into the wasm for this one message.
            format!(
                "more than {} messages per second (bursts of {}); message dropped",
                crate::domain::limits::MESSAGES_PER_SEC as u32,
                crate::domain::limits::MESSAGE_BURST as u32
            ),
        )
    }

    /// `resume` on a server that keeps no history.
    pub fn history_disabled() -> ServerFrame {
        ServerFrame::error(
            ErrorCode::HistoryDisabled,
            "resume needs history, and this server keeps none (HISTORY_SIZE=0)",
        )
    }

    /// The end of a resume whose history could not be read: nothing was
    /// replayed, so the client resyncs.
    pub fn resume_failed(since: u64, epoch: &str) -> ServerFrame {
        ServerFrame::Resumed {
            since,
            seq: since,
            replayed: 0,
            complete: false,
            epoch: epoch.to_owned(),
        }
    }

    /// The error frame reporting rejected entries of a `filters` array.
    pub fn invalid_filters(invalid: &[(usize, InvalidFilter)]) -> ServerFrame {
        let details: Vec<String> = invalid
            .iter()
            .map(|(index, reason)| format!("filters[{index}]: {reason}"))
            .collect();
        ServerFrame::error(
            ErrorCode::InvalidFilter,
            format!("skipped invalid filters: {}", details.join("; ")),
        )
    }

    /// The error frame reporting entries past the per-message cap.
    pub fn too_many_filters(ignored: usize) -> ServerFrame {
        ServerFrame::error(
            ErrorCode::TooManyFilters,
            format!(
                "only the first {} filters of a message are processed; {ignored} ignored",
                crate::domain::filter::MAX_FILTERS_PER_MESSAGE
            ),
        )
    }

    pub fn to_text(&self) -> String {
        // Serializing these plain enums cannot fail; fall back to a fixed frame anyway.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":""}"#.into())
    }
}

/// What is delivered to each matching socket, and what the worker hands to the
/// Durable Object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "envelopeId")]
    pub envelope_id: String,
    #[serde(rename = "type")]
    pub envelope_type: String,
    pub payload: Value,
    /// The user's history position (history on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Sent again by a `resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

// The parse and serialize functions of the publish path are kept out of
// line (`#[inline(never)]`): the start-up warm-up (`warmup.rs`) then
// compiles and optimizes the very functions requests run, instead of
// copies inlined elsewhere (bench/README.md, "Cold start").
impl Envelope {
    /// The envelope's JSON text, as sockets receive it.
    #[inline(never)]
    pub fn to_text(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }

    #[inline(never)]
    pub fn parse(text: &str) -> Option<Envelope> {
        serde_json::from_str(text).ok()
    }
}

/// The validated body of `POST /publish`.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// The user whose sockets receive the envelope.
    pub user_id: String,
    pub envelope_type: String,
    pub payload: Value,
}

/// Why a `/publish` body was rejected (all map to 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    EmptyBody,
    InvalidJson,
    NotAnObject,
    InvalidUserId,
    InvalidType,
    /// `/publish/batch`: `userIds` is not 1 to [`MAX_BATCH_USERS`] distinct
    /// non-empty strings.
    InvalidUserIds,
}

/// Most users one `/publish/batch` may name.
pub const MAX_BATCH_USERS: usize = 100;

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::EmptyBody => "request body is empty; expected a JSON object",
            PublishError::InvalidJson => {
                "request body is not valid JSON (the parser also refuses nesting deeper than \
                 126 levels, numbers beyond 64-bit floats and lone surrogate escapes)"
            }
            PublishError::NotAnObject => "request body must be a JSON object",
            PublishError::InvalidUserId => "\"userId\" must be a non-empty string",
            PublishError::InvalidType => "\"type\" must be a non-empty string when present",
            PublishError::InvalidUserIds => {
                "\"userIds\" must be an array of 1 to 100 distinct non-empty strings"
            }
        })
    }
}

impl std::error::Error for PublishError {}

/// A `/publish` or `/publish/batch` body's JSON object.
fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, PublishError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PublishError::EmptyBody);
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| PublishError::InvalidJson)?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(PublishError::NotAnObject),
    }
}

/// `type` (default `message`) and `payload` (default `null`) of a body.
fn type_and_payload(
    object: &mut serde_json::Map<String, Value>,
) -> Result<(String, Value), PublishError> {
    let envelope_type = match object.remove("type") {
        None | Some(Value::Null) => DEFAULT_ENVELOPE_TYPE.to_owned(),
        Some(Value::String(t)) if !t.is_empty() => t,
        Some(_) => return Err(PublishError::InvalidType),
    };
    Ok((
        envelope_type,
        object.remove("payload").unwrap_or(Value::Null),
    ))
}

impl PublishRequest {
    /// Parses and validates a `/publish` body.
    #[inline(never)]
    pub fn parse(body: &[u8]) -> Result<PublishRequest, PublishError> {
        let mut object = body_object(body)?;
        let user_id = match object.remove("userId") {
            Some(Value::String(id)) if !id.trim().is_empty() => id,
            _ => return Err(PublishError::InvalidUserId),
        };
        let (envelope_type, payload) = type_and_payload(&mut object)?;
        Ok(PublishRequest {
            user_id,
            envelope_type,
            payload,
        })
    }

    /// Turns the request into the envelope delivered to sockets.
    pub fn into_envelope(self, envelope_id: String) -> Envelope {
        Envelope {
            envelope_id,
            envelope_type: self.envelope_type,
            payload: self.payload,
            seq: None,
            recovered: false,
        }
    }
}

/// Whether `method` is one the routes can name (`worker::Method`'s set);
/// anything else (PROPFIND, QUERY, ...) must not be read as GET, which is
/// what `worker::Method::from` does with it.
pub fn known_http_method(method: &str) -> bool {
    const KNOWN: [&str; 10] = [
        "HEAD", "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "REPORT",
    ];
    KNOWN.iter().any(|known| known.eq_ignore_ascii_case(method))
}

/// Whether a `Content-Type` header names JSON; parameters such as
/// `; charset=utf-8` are allowed.
pub fn is_json_content_type(header: &str) -> bool {
    let media_type = header.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// A `/publish/batch` body: one envelope for several users.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// Distinct, non-empty, in request order.
    pub user_ids: Vec<String>,
    pub envelope_type: String,
    pub payload: Value,
}

impl BatchRequest {
    pub fn parse(body: &[u8]) -> Result<BatchRequest, PublishError> {
        let mut object = body_object(body)?;
        let Some(Value::Array(ids)) = object.remove("userIds") else {
            return Err(PublishError::InvalidUserIds);
        };
        if ids.is_empty() || ids.len() > MAX_BATCH_USERS {
            return Err(PublishError::InvalidUserIds);
        }
        let mut user_ids: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            match id {
                Value::String(id) if !id.trim().is_empty() && !user_ids.contains(&id) => {
                    user_ids.push(id)
                }
                _ => return Err(PublishError::InvalidUserIds),
            }
        }
        let (envelope_type, payload) = type_and_payload(&mut object)?;
        Ok(BatchRequest {
            user_ids,
            envelope_type,
            payload,
        })
    }

    /// The one envelope every user of the batch is sent.
    pub fn envelope(&self, envelope_id: String) -> Envelope {
        Envelope {
            envelope_id,
            envelope_type: self.envelope_type.clone(),
            payload: self.payload.clone(),
            seq: None,
            recovered: false,
        }
    }
}

/// The answer to `/publish`: how many sockets were sent the envelope and the
/// ack results that arrived, in arrival order; with `?detail=true`, what
/// became of each socket; `truncated` when `MAX_RESULTS_BYTES` cut results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishOutcome {
    #[serde(rename = "clientCount")]
    pub client_count: usize,
    pub results: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Vec<Delivery>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// With `?detail=true`, what the `publish` log line says: the acks,
    /// the sockets that timed out or closed first, and the milliseconds
    /// from the worker receiving the request to this answer. Fields of
    /// their own, not a flattened struct: serde's `flatten` serializes
    /// through a map, and this is every publish's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<usize>,
    #[serde(rename = "timedOut", default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
}

/// What became of one socket a publish was sent to (`?detail=true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(rename = "socketId")]
    pub socket_id: String,
    pub status: DeliveryStatus,
    /// The ack's result (`null` past `MAX_RESULTS_BYTES`); acked only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Milliseconds from sending to the ack; acked only.
    #[serde(rename = "ackMs", default, skip_serializing_if = "Option::is_none")]
    pub ack_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Acked,
    /// The socket closed before it acked.
    Closed,
    /// No ack within `ACK_TIMEOUT_MS`.
    TimedOut,
}

impl PublishOutcome {
    /// The answer of a publish sent to `client_count` sockets, before any
    /// ack: what a keyed publish stores as it is sent.
    pub fn unacked(client_count: usize) -> PublishOutcome {
        PublishOutcome {
            client_count,
            results: Vec::new(),
            deliveries: None,
            truncated: false,
            acked: None,
            timed_out: None,
            closed: None,
            ms: None,
        }
    }

    /// The `/publish` answer's JSON text.
    #[inline(never)]
    pub fn to_text(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// An HTTP error body: `{"error":"<code>","message":"<human text>"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ping_in_any_case() {
        for text in ["ping", "PING", "Ping", "pInG"] {
            assert_eq!(ClientFrame::parse(text), Ok(ClientFrame::Ping));
        }
        assert_eq!(ClientFrame::parse(" ping"), Err(FrameError::InvalidJson));
    }

    #[test]
    fn subscribe_and_unsubscribe() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","filters":[{"type":"a"}]}"#),
            Ok(ClientFrame::Subscribe {
                filters: vec![json!({"type": "a"})]
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"unsubscribe","filters":[]}"#),
            Ok(ClientFrame::Unsubscribe { filters: vec![] })
        );
    }

    #[test]
    fn the_ack_fast_path_agrees_with_the_derived_parser() {
        for text in [
            r#"{"type":"ack","envelopeId":"e1","result":{"ok":true}}"#,
            r#"{"type":"ack","envelopeId":"e1"}"#,
            r#"{"type":"ack","envelopeId":"e1","result":null}"#,
            r#"{"result":[1,"x"],"extra":5,"envelopeId":"","type":"ack"}"#,
            r#"{"type":"ack","envelopeId":"a","envelopeId":"b"}"#,
            r#"{"type":"\u0061ck","envelopeId":"e1","result":2}"#,
            r#"{"type":"ack","envelopeId":"e\"1","result":"\u00e9"}"#,
            r#"{"type":"ack","envelopeId":7}"#,
            r#"{"type":"ack","type":"ping","envelopeId":"e1"}"#,
            r#"{"type":"subscribe","envelopeId":"e1","filters":[]}"#,
            r#"[{"type":"ack","envelopeId":"e1"}]"#,
            r#"["ack","e1",null]"#,
            r#" {"type":"ack","envelopeId":"e1"} "#,
        ] {
            let value: Value = serde_json::from_str(text).expect("JSON");
            let general = ClientFrame::parse_general(text);
            assert_eq!(ClientFrame::parse(text), general, "{text}");
            if value.is_object() {
                let derived = ClientFrame::deserialize(value).map_err(|e| e.to_string());
                assert_eq!(general.map_err(|_| ()), derived.map_err(|_| ()), "{text}");
            }
        }
    }

    #[test]
    fn ack_with_and_without_result() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ack","envelopeId":"e1","result":{"ok":true}}"#),
            Ok(ClientFrame::Ack {
                envelope_id: "e1".into(),
                result: json!({"ok": true})
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ack","envelopeId":"e1"}"#),
            Ok(ClientFrame::Ack {
                envelope_id: "e1".into(),
                result: Value::Null
            })
        );
    }

    #[test]
    fn rejected_frames_have_stable_codes() {
        let code = |text: &str| ClientFrame::parse(text).map_err(|e| e.code());
        assert_eq!(code("{"), Err(ErrorCode::InvalidJson));
        assert_eq!(code("hello"), Err(ErrorCode::InvalidJson));
        assert_eq!(code("[1]"), Err(ErrorCode::InvalidFrame));
        assert_eq!(code("{}"), Err(ErrorCode::InvalidFrame));
        assert_eq!(code(r#"{"type":5}"#), Err(ErrorCode::InvalidFrame));
        assert_eq!(code(r#"{"type":"nope"}"#), Err(ErrorCode::UnknownType));
        assert_eq!(
            code(r#"{"type":"subscribe"}"#),
            Err(ErrorCode::InvalidFrame)
        );
        assert_eq!(
            code(r#"{"type":"subscribe","filters":{}}"#),
            Err(ErrorCode::InvalidFrame)
        );
        assert_eq!(code(r#"{"type":"ack"}"#), Err(ErrorCode::InvalidFrame));
        assert_eq!(
            code(r#"{"type":"ack","envelopeId":7}"#),
            Err(ErrorCode::InvalidFrame)
        );
    }

    #[test]
    fn a_clients_close_is_echoed_with_a_sendable_code() {
        assert_eq!(CloseCode::echo(1000), 1000);
        assert_eq!(CloseCode::echo(4001), 4001);
        assert_eq!(CloseCode::echo(1005), 1000);
        assert_eq!(CloseCode::echo(1006), 1000);
        assert_eq!(CloseCode::echo(999), 1000);
        assert_eq!(CloseCode::echo(5000), 1000);
        assert_eq!(CloseCode::echo(usize::MAX), 1000);
    }

    #[test]
    fn the_objects_own_frames() {
        assert_eq!(
            ServerFrame::filters_changed(true, 2, 3).to_text(),
            r#"{"type":"subscribed","added":2,"total":3}"#
        );
        assert_eq!(
            ServerFrame::filters_changed(false, 1, 0).to_text(),
            r#"{"type":"unsubscribed","removed":1,"total":0}"#
        );
        assert_eq!(
            ServerFrame::rate_limited().to_text(),
            r#"{"type":"error","code":"rate_limited","message":"more than 50 messages per second (bursts of 100); message dropped"}"#
        );
        let disabled = ServerFrame::history_disabled();
        assert!(matches!(
            disabled,
            ServerFrame::Error {
                code: ErrorCode::HistoryDisabled,
                ..
            }
        ));
        assert_eq!(
            ServerFrame::resume_failed(7, "e").to_text(),
            r#"{"type":"resumed","since":7,"seq":7,"replayed":0,"complete":false,"epoch":"e"}"#
        );
    }

    #[test]
    fn refresh_frames_take_any_token_field() {
        let parse = |text: &str| ClientFrame::parse(text);
        assert_eq!(
            parse(r#"{"type":"refresh","token":"t"}"#),
            Ok(ClientFrame::Refresh {
                token: Some("t".into())
            })
        );
        // Missing or not a string: still a refresh, answered refresh_rejected.
        for text in [
            r#"{"type":"refresh"}"#,
            r#"{"type":"refresh","token":7}"#,
            r#"{"type":"refresh","token":null}"#,
            r#"{"type":"refresh","token":["t"]}"#,
        ] {
            assert_eq!(
                parse(text),
                Ok(ClientFrame::Refresh { token: None }),
                "{text}"
            );
        }
        let frame = ClientFrame::Refresh {
            token: Some("abc".into()),
        };
        assert_eq!(frame.to_text(), r#"{"type":"refresh","token":"abc"}"#);
        assert_eq!(parse(&frame.to_text()), Ok(frame));
    }

    #[test]
    fn token_lifetime_frames_have_their_wire_shape() {
        let expiring = ServerFrame::TokenExpiring { expires_at: 1_700 };
        assert_eq!(
            expiring.to_text(),
            r#"{"type":"token_expiring","expiresAt":1700}"#
        );
        let refreshed = ServerFrame::Refreshed { expires_at: None };
        assert_eq!(
            refreshed.to_text(),
            r#"{"type":"refreshed","expiresAt":null}"#
        );
        for frame in [expiring, refreshed] {
            assert_eq!(
                ServerMessage::parse(&frame.to_text()),
                Some(ServerMessage::Frame(frame))
            );
        }
        assert_eq!(CloseCode::from_code(4002), Some(CloseCode::TokenExpired));
        assert!(CloseCode::TokenExpired.reconnect());
        assert_eq!(CloseCode::TokenExpired.reason(), "token expired");
        assert!(!ErrorCode::RefreshRejected.is_violation());
    }

    #[test]
    fn server_frames_never_carry_envelope_id() {
        let frames = [
            ServerFrame::Subscribed {
                added: 1,
                total: 2,
                seq: None,
                epoch: None,
            },
            ServerFrame::Unsubscribed {
                removed: 1,
                total: 1,
            },
            ServerFrame::error(ErrorCode::InvalidJson, "x"),
        ];
        for frame in frames {
            let value: Value = serde_json::from_str(&frame.to_text()).expect("json");
            assert!(value.get("envelopeId").is_none());
            assert!(value.get("type").and_then(Value::as_str).is_some());
        }
        assert_eq!(
            ServerFrame::Subscribed {
                added: 1,
                total: 2,
                seq: None,
                epoch: None,
            }
            .to_text(),
            r#"{"type":"subscribed","added":1,"total":2}"#
        );
        assert_eq!(
            ServerFrame::error(ErrorCode::UnknownType, "m").to_text(),
            r#"{"type":"error","code":"unknown_type","message":"m"}"#
        );
    }

    #[test]
    fn error_code_strings_match_serde_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("json"),
                json!(code.as_str())
            );
            assert!(seen.insert(code.as_str()), "{code:?}");
            assert!(!code.description().is_empty());
        }
    }

    #[test]
    fn close_codes_are_unique_sendable_and_fit_a_close_frame() {
        let mut seen = std::collections::HashSet::new();
        for close in CloseCode::ALL {
            assert!(seen.insert(close.code()), "{close:?}");
            assert!((1000..=4999).contains(&close.code()));
            assert!(![1004, 1005, 1006, 1015].contains(&close.code()));
            // A close reason must fit in 123 bytes.
            assert!(close.reason().len() <= 123);
        }
        assert_eq!(CloseCode::from_code(1009), Some(CloseCode::MessageTooBig));
        assert_eq!(CloseCode::from_code(1000), None);
        assert!(CloseCode::Reconnect.reconnect());
        assert!(!CloseCode::PolicyViolation.reconnect());
    }

    #[test]
    fn client_frames_round_trip_and_server_messages_parse() {
        for frame in [
            ClientFrame::Ping,
            ClientFrame::Subscribe {
                filters: vec![json!({"type": "a"})],
            },
            ClientFrame::Unsubscribe { filters: vec![] },
            ClientFrame::Ack {
                envelope_id: "e".into(),
                result: json!({"ok": 1}),
            },
        ] {
            assert_eq!(ClientFrame::parse(&frame.to_text()), Ok(frame));
        }
        assert_eq!(ServerMessage::parse("pong"), Some(ServerMessage::Pong));
        let frame = ServerFrame::Subscribed {
            added: 1,
            total: 1,
            seq: None,
            epoch: None,
        };
        assert_eq!(
            ServerMessage::parse(&frame.to_text()),
            Some(ServerMessage::Frame(frame))
        );
        let envelope = r#"{"envelopeId":"e","type":"t","payload":null}"#;
        assert!(matches!(
            ServerMessage::parse(envelope),
            Some(ServerMessage::Envelope(e)) if e.envelope_id == "e"
        ));
        assert_eq!(
            ServerMessage::parse(r#"{"type":"error","code":"from_the_future","message":"m"}"#),
            Some(ServerMessage::Frame(ServerFrame::error(
                ErrorCode::Unknown,
                "m"
            )))
        );
        assert_eq!(ServerMessage::parse("nonsense"), None);
    }

    #[test]
    fn unknown_methods_are_not_known() {
        for known in ["GET", "get", "POST", "OPTIONS", "HEAD", "DELETE"] {
            assert!(known_http_method(known), "{known}");
        }
        for unknown in ["PROPFIND", "QUERY", "FOO", "", "GETX"] {
            assert!(!known_http_method(unknown), "{unknown}");
        }
    }

    #[test]
    fn envelope_wire_shape() {
        let mut envelope = Envelope {
            envelope_id: "id".into(),
            envelope_type: "t".into(),
            payload: json!({"a": 1}),
            seq: None,
            recovered: false,
        };
        assert_eq!(
            serde_json::to_string(&envelope).expect("json"),
            r#"{"envelopeId":"id","type":"t","payload":{"a":1}}"#
        );
        envelope.seq = Some(7);
        envelope.recovered = true;
        assert_eq!(
            serde_json::to_string(&envelope).expect("json"),
            r#"{"envelopeId":"id","type":"t","payload":{"a":1},"seq":7,"recovered":true}"#
        );
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
    }

    #[test]
    fn publish_request_defaults() {
        let req = PublishRequest::parse(br#"{"userId":"u"}"#).expect("valid");
        assert_eq!(req.envelope_type, "message");
        assert_eq!(req.payload, Value::Null);
        let req =
            PublishRequest::parse(br#"{"userId":"u","type":"chat","payload":[1]}"#).expect("valid");
        assert_eq!(req.envelope_type, "chat");
        assert_eq!(req.payload, json!([1]));
    }

    #[test]
    fn publish_request_rejections() {
        let err = |body: &[u8]| PublishRequest::parse(body).err();
        assert_eq!(err(b""), Some(PublishError::EmptyBody));
        assert_eq!(err(b"  \n"), Some(PublishError::EmptyBody));
        assert_eq!(err(b"{"), Some(PublishError::InvalidJson));
        assert_eq!(err(b"[]"), Some(PublishError::NotAnObject));
        assert_eq!(err(b"\"x\""), Some(PublishError::NotAnObject));
        assert_eq!(err(b"{}"), Some(PublishError::InvalidUserId));
        assert_eq!(err(br#"{"userId":""}"#), Some(PublishError::InvalidUserId));
        assert_eq!(
            err(br#"{"userId":"  "}"#),
            Some(PublishError::InvalidUserId)
        );
        assert_eq!(err(br#"{"userId":5}"#), Some(PublishError::InvalidUserId));
        assert_eq!(
            err(br#"{"userId":"u","type":5}"#),
            Some(PublishError::InvalidType)
        );
        assert_eq!(
            err(br#"{"userId":"u","type":""}"#),
            Some(PublishError::InvalidType)
        );
        assert_eq!(err(&[0xff, 0xfe]), Some(PublishError::InvalidJson));
    }
}
