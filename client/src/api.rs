//! The HTTP API as this client reads it: the answers of `/publish`,
//! `/publish/batch`, `/users/{id}/sockets` and `/users/{id}/disconnect`,
//! idempotency keys, publish options and path encoding. Pure: no I/O.
//!
//! The answers are the client's own types, not the server crate's: they
//! accept what a newer or older server may add or leave out (unknown fields
//! are ignored, unknown delivery statuses kept), so a 200 is never lost to a
//! parse error, and they carry what only the response headers say
//! (`replayed`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use hopeflow_realtime::idempotency;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The server's JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable code, e.g. `invalid_body`.
    pub error: String,
    /// Human text.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

impl std::error::Error for ApiError {}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The answer to `POST /publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishOutcome {
    /// How many sockets were sent the envelope.
    #[serde(rename = "clientCount")]
    pub client_count: usize,
    /// The ack results that arrived, in arrival order.
    pub results: Vec<Value>,
    /// What became of each socket; only asked for with
    /// [`PublishOptions::with_detail`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Vec<Delivery>>,
    /// Some results were replaced by `null`: together they were over the
    /// server's `MAX_RESULTS_BYTES`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// The server answered a repeated `Idempotency-Key` with the first
    /// publish's answer (`Idempotent-Replayed: true`): nothing was delivered
    /// this time. Not part of the JSON body.
    #[serde(skip)]
    pub replayed: bool,
}

/// What became of one socket a publish was sent to (`?detail=true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(rename = "socketId")]
    pub socket_id: String,
    pub status: DeliveryStatus,
    /// The ack's result (`Some(Value::Null)` for an ack without one, or one
    /// cut by `truncated`); `None` when the socket did not ack.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub result: Option<Value>,
    /// Milliseconds from sending to the ack; acked only.
    #[serde(
        rename = "ackMs",
        default,
        deserialize_with = "millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub ack_ms: Option<u64>,
}

/// A present field is `Some`, even when it is `null` (serde's `Option`
/// would make `null` a `None`, and an ack's `null` result is a result).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Milliseconds as any JSON number: a server computing them from
/// JavaScript's `Date.now()` may send `12.0`.
fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let number = Option::<f64>::deserialize(deserializer)?;
    Ok(number.map(|ms| ms.max(0.0).round() as u64))
}

/// [`Delivery::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum DeliveryStatus {
    /// The socket acked; its result is in [`Delivery::result`].
    Acked,
    /// The socket closed before it acked.
    Closed,
    /// No ack within the server's `ACK_TIMEOUT_MS`.
    TimedOut,
    /// A status this version does not know, kept as sent.
    Other(String),
}

impl DeliveryStatus {
    pub fn as_str(&self) -> &str {
        match self {
            DeliveryStatus::Acked => "acked",
            DeliveryStatus::Closed => "closed",
            DeliveryStatus::TimedOut => "timed_out",
            DeliveryStatus::Other(other) => other,
        }
    }
}

impl From<String> for DeliveryStatus {
    fn from(text: String) -> DeliveryStatus {
        match text.as_str() {
            "acked" => DeliveryStatus::Acked,
            "closed" => DeliveryStatus::Closed,
            "timed_out" => DeliveryStatus::TimedOut,
            _ => DeliveryStatus::Other(text),
        }
    }
}

impl From<DeliveryStatus> for String {
    fn from(status: DeliveryStatus) -> String {
        match status {
            DeliveryStatus::Other(other) => other,
            known => known.as_str().to_owned(),
        }
    }
}

/// The answer to `POST /publish/batch`: one envelope, each user's outcome
/// in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// The one envelope every user's sockets were sent.
    #[serde(rename = "envelopeId")]
    pub envelope_id: String,
    pub users: Vec<UserOutcome>,
    /// Some results were cut (also said per user, in
    /// [`PublishOutcome::truncated`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// As [`PublishOutcome::replayed`]. Not part of the JSON body.
    #[serde(skip)]
    pub replayed: bool,
}

impl BatchOutcome {
    /// The users whose publish failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &ApiError)> {
        self.users
            .iter()
            .filter_map(|user| Some((user.user_id.as_str(), user.outcome.as_ref().err()?)))
    }
}

/// One user's part of a batch: its publish outcome, or why that user's
/// object could not be reached (the others still got the envelope).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UserOutcomeBody", into = "UserOutcomeBody")]
pub struct UserOutcome {
    pub user_id: String,
    pub outcome: Result<PublishOutcome, ApiError>,
}

/// [`UserOutcome`] as it is sent: the outcome's fields, or `error`.
#[derive(Serialize, Deserialize)]
struct UserOutcomeBody {
    #[serde(rename = "userId")]
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ApiError>,
    #[serde(
        rename = "clientCount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    client_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    results: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<Delivery>>,
    #[serde(default, skip_serializing_if = "is_false")]
    truncated: bool,
}

impl TryFrom<UserOutcomeBody> for UserOutcome {
    type Error = String;

    fn try_from(body: UserOutcomeBody) -> Result<UserOutcome, String> {
        let outcome = match (body.error, body.client_count) {
            (Some(error), _) => Err(error),
            (None, Some(client_count)) => Ok(PublishOutcome {
                client_count,
                results: body.results.unwrap_or_default(),
                deliveries: body.deliveries,
                truncated: body.truncated,
                replayed: false,
            }),
            (None, None) => {
                return Err(format!(
                    "the entry of user {:?} has neither clientCount nor error",
                    body.user_id
                ))
            }
        };
        Ok(UserOutcome {
            user_id: body.user_id,
            outcome,
        })
    }
}

impl From<UserOutcome> for UserOutcomeBody {
    fn from(user: UserOutcome) -> UserOutcomeBody {
        match user.outcome {
            Ok(outcome) => UserOutcomeBody {
                user_id: user.user_id,
                error: None,
                client_count: Some(outcome.client_count),
                results: Some(outcome.results),
                deliveries: outcome.deliveries,
                truncated: outcome.truncated,
            },
            Err(error) => UserOutcomeBody {
                user_id: user.user_id,
                error: Some(error),
                client_count: None,
                results: None,
                deliveries: None,
                truncated: false,
            },
        }
    }
}

/// The answer to `GET /users/{id}/sockets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSockets {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Open sockets of the user.
    pub count: usize,
    /// Publishes to the user still waiting for acks.
    #[serde(rename = "pendingPublishes", default)]
    pub pending_publishes: usize,
    pub sockets: Vec<SocketInfo>,
    /// The user's history as stored; `None` when the server keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<StoredHistory>,
    /// The user's webhook outbox; `None` when the server sends no webhooks
    /// (no `WEBHOOK_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookState>,
}

/// `webhooks` in `GET /users/{id}/sockets` (docs/webhooks.md).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WebhookState {
    /// Events waiting to be delivered.
    #[serde(default)]
    pub pending: u64,
    /// Events dropped past `WEBHOOK_MAX_AGE_SECS` or `WEBHOOK_MAX_PENDING`.
    #[serde(default)]
    pub dropped: u64,
    /// Why the last request failed; `None` once one succeeds.
    #[serde(rename = "lastError", default)]
    pub last_error: Option<String>,
    /// When the next retry goes (unix ms); `None` when none waits.
    #[serde(rename = "nextAttemptAt", default)]
    pub next_attempt_at: Option<u64>,
}

/// `history` in `GET /users/{id}/sockets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHistory {
    /// The last `seq` given out (0 before the first publish).
    pub seq: u64,
    /// Envelopes kept at rest, including any past the retention bounds
    /// that the server has not deleted yet.
    #[serde(rename = "storedEnvelopes")]
    pub stored_envelopes: u64,
}

/// One open socket of a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// What `disconnect` and `Delivery::socket_id` name it by.
    #[serde(rename = "socketId")]
    pub socket_id: String,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "connectedAt", deserialize_with = "epoch_millis")]
    pub connected_at: u64,
    /// The socket's filters (objects of strings).
    #[serde(default)]
    pub filters: Vec<Value>,
    /// When the server closes the socket because its token expires (the
    /// token's `exp`, unix seconds; a refresh moves it); `None` when the
    /// token has no `exp` (or the server is older and does not say).
    #[serde(rename = "expiresAt", default)]
    pub expires_at: Option<u64>,
}

fn epoch_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    millis(deserializer).map(Option::unwrap_or_default)
}

/// The answer to `POST /users/{id}/disconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectOutcome {
    /// Sockets closed.
    pub closed: usize,
}

/// An `Idempotency-Key`: a key the server accepts (1 to 255 visible ASCII
/// characters, `!` to `~`), by the server's own rule
/// ([`hopeflow_realtime::idempotency::IdempotencyKey::parse`]), so the
/// client refuses exactly the keys the server would answer with a 400.
/// Checked before sending because a key with other characters could not
/// even be sent as a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(idempotency::IdempotencyKey);

/// Why a text is not an [`IdempotencyKey`]: the server's rule refused it,
/// and this says which part of the text it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidIdempotencyKey {
    Empty,
    /// Longer than [`IdempotencyKey::MAX_LEN`] characters.
    TooLong(usize),
    /// A character the server refuses (anything outside `!`..=`~`, spaces
    /// and controls included).
    Character {
        index: usize,
        character: char,
    },
}

impl InvalidIdempotencyKey {
    /// What in `key`, which the server's rule refused, it refused: nothing
    /// (empty), a character it refuses on its own (the first one), or else
    /// the length. No character set or length is restated here: a
    /// character is refused when the server refuses it as a key of its own.
    fn of(key: &str) -> InvalidIdempotencyKey {
        if key.is_empty() {
            return InvalidIdempotencyKey::Empty;
        }
        let refused =
            |c: char| idempotency::IdempotencyKey::parse(c.encode_utf8(&mut [0; 4])).is_err();
        match key.chars().enumerate().find(|&(_, c)| refused(c)) {
            Some((index, character)) => InvalidIdempotencyKey::Character { index, character },
            // Every character is one the server takes: ASCII, so bytes are
            // characters.
            None => InvalidIdempotencyKey::TooLong(key.len()),
        }
    }
}

impl fmt::Display for InvalidIdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an idempotency key is 1 to {} visible ASCII characters: ",
            IdempotencyKey::MAX_LEN
        )?;
        match self {
            InvalidIdempotencyKey::Empty => f.write_str("this one is empty"),
            InvalidIdempotencyKey::TooLong(len) => write!(f, "this one has {len}"),
            InvalidIdempotencyKey::Character { index, character } => {
                write!(f, "character {index} is {character:?}")
            }
        }
    }
}

impl std::error::Error for InvalidIdempotencyKey {}

impl IdempotencyKey {
    /// The server's longest key ([`idempotency::MAX_KEY_LEN`]).
    pub const MAX_LEN: usize = idempotency::MAX_KEY_LEN;

    /// `key` if the server's rule accepts it.
    pub fn new(key: impl Into<String>) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        let key = key.into();
        idempotency::IdempotencyKey::parse(&key)
            .map(IdempotencyKey)
            .map_err(|_| InvalidIdempotencyKey::of(&key))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A key the server's rule already accepted.
impl From<idempotency::IdempotencyKey> for IdempotencyKey {
    fn from(key: idempotency::IdempotencyKey) -> IdempotencyKey {
        IdempotencyKey(key)
    }
}

impl From<IdempotencyKey> for idempotency::IdempotencyKey {
    fn from(key: IdempotencyKey) -> idempotency::IdempotencyKey {
        key.0
    }
}

// By hand: the server's key type is not `Hash`. Equal keys have equal text.
impl Hash for IdempotencyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidIdempotencyKey;

    fn from_str(text: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        IdempotencyKey::new(text)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to publish: [`crate::Publisher::publish_with`] and
/// [`crate::Publisher::publish_batch`].
///
/// ```
/// use hopeflow_client::{IdempotencyKey, PublishOptions};
/// let key = IdempotencyKey::new("order-1234-shipped").expect("a valid key");
/// let options = PublishOptions::new().with_idempotency_key(key).with_detail(true);
/// assert!(options.detail);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Sent as `Idempotency-Key`: a repeat of the same publish with the same
    /// key is answered with the first answer instead of delivering again
    /// (safe retries); the same key with another body is refused
    /// ([`crate::PublishError::Conflict`]).
    pub idempotency_key: Option<IdempotencyKey>,
    /// Asks for [`PublishOutcome::deliveries`] (`?detail=true`).
    pub detail: bool,
}

impl PublishOptions {
    pub fn new() -> PublishOptions {
        PublishOptions::default()
    }

    pub fn with_idempotency_key(mut self, key: IdempotencyKey) -> PublishOptions {
        self.idempotency_key = Some(key);
        self
    }

    pub fn with_detail(mut self, detail: bool) -> PublishOptions {
        self.detail = detail;
        self
    }
}

/// Percent-encodes `text` as one URL path segment: everything but the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`), as UTF-8 bytes.
pub fn path_segment(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    encoded
}

/// The path `/users/{user_id}/{action}`, or why `user_id` cannot be in one:
/// empty, or `.` / `..`, which URL parsers resolve away (encoded or not).
pub fn user_path(user_id: &str, action: &str) -> Result<String, String> {
    if user_id.is_empty() {
        return Err("the user id is empty".into());
    }
    if user_id == "." || user_id == ".." {
        return Err(format!(
            "the user id {user_id:?} cannot be sent in a URL path"
        ));
    }
    Ok(format!("/users/{}/{action}", path_segment(user_id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("alice"), "alice");
        assert_eq!(path_segment("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(path_segment("a b/c?d#e%f"), "a%20b%2Fc%3Fd%23e%25f");
        assert_eq!(path_segment("é"), "%C3%A9");
        assert_eq!(path_segment("user:1+2@x"), "user%3A1%2B2%40x");
        assert_eq!(path_segment(""), "");
        assert_eq!(
            user_path("a/b", "sockets"),
            Ok("/users/a%2Fb/sockets".into())
        );
        for bad in ["", ".", ".."] {
            assert!(user_path(bad, "sockets").is_err(), "{bad:?}");
        }
        assert_eq!(
            user_path("...", "disconnect"),
            Ok("/users/.../disconnect".into())
        );
    }

    /// The server's route parser reads back the user id the client encoded
    /// (the encoding is the client's; the decoding, the server's).
    #[test]
    fn user_paths_decode_on_the_server() {
        use hopeflow_realtime::operator::{user_route, BadUserPath, UserRoute};
        for user in [
            "alice",
            "...",
            "a/b",
            "a b/../c",
            "%41",
            "é ü 日本",
            "user:1+2@x?y#z",
            " padded ",
            "\u{1f600}",
        ] {
            for (action, route) in [
                ("sockets", UserRoute::Sockets),
                ("disconnect", UserRoute::Disconnect),
            ] {
                let path = user_path(user, action).expect("a path");
                assert_eq!(
                    user_route(&path),
                    Some(Ok((user.to_owned(), route))),
                    "{path}"
                );
            }
        }
        // Sent, and refused by the server: it takes no blank user id.
        let blank = user_path(" ", "sockets").expect("a path");
        assert_eq!(user_route(&blank), Some(Err(BadUserPath::InvalidUserId)));
    }

    /// reqwest's URL parser keeps an encoded segment as it is (it must not
    /// decode `%2F` into a path separator), but resolves `.` and `..`.
    #[test]
    fn url_parser_keeps_encoded_segments() {
        let url = |path: &str| {
            reqwest::Url::parse(&format!("http://h{path}"))
                .map(|u| u.path().to_owned())
                .unwrap_or_default()
        };
        let path = user_path("a b/../c", "sockets").unwrap_or_default();
        assert_eq!(url(&path), "/users/a%20b%2F..%2Fc/sockets");
        assert_eq!(url("/users/%2E%2E/sockets"), "/sockets");
    }

    #[test]
    fn publish_outcomes_parse_with_and_without_detail() {
        let plain: PublishOutcome =
            serde_json::from_str(r#"{"clientCount":1,"results":[{"ok":true}]}"#).expect("plain");
        assert_eq!(plain.client_count, 1);
        assert_eq!((plain.deliveries.as_ref(), plain.truncated), (None, false));
        // Serialized as the server sent it: no empty extras.
        assert_eq!(
            serde_json::to_value(&plain).expect("json"),
            json!({"clientCount": 1, "results": [{"ok": true}]})
        );

        let text = r#"{"clientCount":3,"results":[null,null],"truncated":true,"deliveries":[
            {"socketId":"s1","status":"acked","result":null,"ackMs":12},
            {"socketId":"s2","status":"acked","result":{"n":1},"ackMs":3.0},
            {"socketId":"s3","status":"timed_out"},
            {"socketId":"s4","status":"closed"},
            {"socketId":"s5","status":"lost_in_space","extra":1}],"future":true}"#;
        let detailed: PublishOutcome = serde_json::from_str(text).expect("detailed");
        assert!(detailed.truncated);
        let deliveries = detailed.deliveries.clone().expect("deliveries");
        assert_eq!(
            deliveries[0],
            Delivery {
                socket_id: "s1".into(),
                status: DeliveryStatus::Acked,
                result: Some(Value::Null),
                ack_ms: Some(12),
            }
        );
        assert_eq!(deliveries[1].ack_ms, Some(3));
        assert_eq!(deliveries[1].result, Some(json!({"n": 1})));
        assert_eq!(deliveries[2].status, DeliveryStatus::TimedOut);
        assert_eq!(
            (deliveries[2].result.as_ref(), deliveries[2].ack_ms),
            (None, None)
        );
        assert_eq!(deliveries[3].status, DeliveryStatus::Closed);
        assert_eq!(
            deliveries[4].status,
            DeliveryStatus::Other("lost_in_space".into())
        );
        // Round trip: an acked `null` stays a present `null`; statuses as sent.
        let again = serde_json::to_value(&detailed).expect("json");
        assert_eq!(again["deliveries"][0]["result"], Value::Null);
        assert!(again["deliveries"][0]
            .as_object()
            .is_some_and(|d| d.contains_key("result")));
        assert!(again["deliveries"][2]
            .as_object()
            .is_some_and(|d| !d.contains_key("result") && !d.contains_key("ackMs")));
        assert_eq!(again["deliveries"][4]["status"], "lost_in_space");
        assert_eq!(again["truncated"], true);
        assert!(again.get("future").is_none());
    }

    #[test]
    fn batch_outcomes_split_results_from_errors() {
        let text = r#"{"envelopeId":"e1","users":[
            {"userId":"a","clientCount":1,"results":[{"ok":true}]},
            {"userId":"b","error":{"error":"unavailable","message":"try later"}},
            {"userId":"c","clientCount":0,"results":[],"truncated":true}]}"#;
        let batch: BatchOutcome = serde_json::from_str(text).expect("batch");
        assert_eq!(batch.envelope_id, "e1");
        assert_eq!(batch.users.len(), 3);
        assert_eq!(batch.users[0].user_id, "a");
        assert_eq!(
            batch.users[0].outcome.as_ref().map(|o| o.client_count),
            Ok(1)
        );
        let unavailable = ApiError {
            error: "unavailable".into(),
            message: "try later".into(),
        };
        assert_eq!(batch.users[1].outcome, Err(unavailable.clone()));
        assert_eq!(
            batch.users[2].outcome.as_ref().map(|o| o.truncated),
            Ok(true)
        );
        assert_eq!(
            batch.failures().collect::<Vec<_>>(),
            vec![("b", &unavailable)]
        );
        let again = serde_json::to_value(&batch).expect("json");
        let expected: Value = serde_json::from_str(text).expect("json");
        assert_eq!(again, expected);
        // An entry with neither is refused rather than read as 0 sockets.
        assert!(serde_json::from_str::<BatchOutcome>(
            r#"{"envelopeId":"e","users":[{"userId":"a"}]}"#
        )
        .is_err());
    }

    #[test]
    fn sockets_and_disconnect_answers_parse() {
        let text = r#"{"userId":"alice","count":2,"pendingPublishes":1,"sockets":[
            {"socketId":"s1","connectedAt":1700000000000,"filters":[{"type":"chat"}],"expiresAt":1700003600},
            {"socketId":"s2","connectedAt":1700000000001.0,"filters":[],"expiresAt":null}]}"#;
        let sockets: UserSockets = serde_json::from_str(text).expect("sockets");
        assert_eq!((sockets.count, sockets.pending_publishes), (2, 1));
        assert_eq!(sockets.sockets[0].expires_at, Some(1_700_003_600));
        assert_eq!(sockets.sockets[1].expires_at, None);
        // A server that does not say yet.
        let older: SocketInfo =
            serde_json::from_str(r#"{"socketId":"s","connectedAt":1}"#).expect("socket");
        assert_eq!(older.expires_at, None);
        assert_eq!(sockets.sockets[0].filters, vec![json!({"type": "chat"})]);
        assert_eq!(sockets.sockets[1].connected_at, 1_700_000_000_001);
        assert_eq!(sockets.history, None);
        let with_history: UserSockets = serde_json::from_str(
            r#"{"userId":"a","count":0,"pendingPublishes":0,"sockets":[],
                "history":{"seq":9,"storedEnvelopes":4}}"#,
        )
        .expect("sockets with history");
        assert_eq!(
            with_history.history,
            Some(StoredHistory {
                seq: 9,
                stored_envelopes: 4
            })
        );
        assert_eq!(sockets.webhooks, None);
        assert_eq!(with_history.webhooks, None);
        // The webhook outbox, as the server's view writes it, and back.
        let outbox = hopeflow_realtime::operator::WebhookView {
            pending: 2,
            dropped: 1,
            last_error: Some("HTTP 500".into()),
            next_attempt_at: Some(1_700_000_001_000),
        };
        let text = format!(
            r#"{{"userId":"a","count":0,"pendingPublishes":0,"sockets":[],"webhooks":{}}}"#,
            serde_json::to_string(&outbox).expect("json")
        );
        let with_hooks: UserSockets = serde_json::from_str(&text).expect("sockets with webhooks");
        assert_eq!(
            with_hooks.webhooks,
            Some(WebhookState {
                pending: 2,
                dropped: 1,
                last_error: Some("HTTP 500".into()),
                next_attempt_at: Some(1_700_000_001_000)
            })
        );
        assert_eq!(
            serde_json::to_value(&with_hooks).expect("json")["webhooks"],
            serde_json::to_value(&outbox).expect("json")
        );
        assert!(serde_json::to_value(&sockets)
            .expect("json")
            .get("webhooks")
            .is_none());
        assert_eq!(
            serde_json::to_value(&sockets).expect("json")["sockets"][1]["connectedAt"],
            json!(1_700_000_000_001u64)
        );
        let closed: DisconnectOutcome = serde_json::from_str(r#"{"closed":2}"#).expect("closed");
        assert_eq!(closed, DisconnectOutcome { closed: 2 });
        assert_eq!(
            serde_json::to_string(&closed).expect("json"),
            r#"{"closed":2}"#
        );
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        for good in [
            "k",
            "order-1234",
            "~!#$%&'()*+,-./:;<=>?@[]^_`{|}",
            &"x".repeat(255),
        ] {
            assert_eq!(
                IdempotencyKey::new(good).map(|k| k.as_str().to_owned()),
                Ok(good.to_owned())
            );
        }
        assert_eq!(IdempotencyKey::new(""), Err(InvalidIdempotencyKey::Empty));
        assert_eq!(
            IdempotencyKey::new("x".repeat(256)),
            Err(InvalidIdempotencyKey::TooLong(256))
        );
        assert_eq!(
            "a b".parse::<IdempotencyKey>(),
            Err(InvalidIdempotencyKey::Character {
                index: 1,
                character: ' '
            })
        );
        for bad in ["a\nb", "tab\t", "é", "\u{7f}"] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::new("")
            .err()
            .is_some_and(|e| e.to_string().contains("1 to 255")));
    }

    /// The keys the server's rule refuses, and only those, are refused:
    /// it is the same rule. Each refusal names a real fault of the key.
    #[test]
    fn idempotency_keys_follow_the_servers_rule() {
        let mut keys: Vec<String> = (0u32..0x300)
            .chain([0x2028, 0xfeff, 0x1f600])
            .filter_map(char::from_u32)
            .flat_map(|c| [c.to_string(), format!("key{c}"), format!("{c}key")])
            .collect();
        for len in [0, 1, 2, 254, 255, 256, 1000] {
            keys.push("k".repeat(len));
            keys.push(format!("{} ", "k".repeat(len)));
            keys.push(format!("{}é", "k".repeat(len)));
        }
        for key in &keys {
            let server = idempotency::IdempotencyKey::parse(key);
            match IdempotencyKey::new(key.as_str()) {
                Ok(client) => {
                    assert_eq!(server.as_ref().map(|k| k.as_str()), Ok(client.as_str()));
                    assert_eq!(
                        idempotency::IdempotencyKey::from(client),
                        server.clone().expect("server key")
                    );
                }
                Err(why) => {
                    assert!(
                        server.is_err(),
                        "{key:?}: the server takes it, the client says {why}"
                    );
                    match why {
                        InvalidIdempotencyKey::Empty => assert!(key.is_empty()),
                        InvalidIdempotencyKey::TooLong(len) => {
                            assert_eq!(len, key.len());
                            assert!(len > IdempotencyKey::MAX_LEN, "{key:?}");
                        }
                        InvalidIdempotencyKey::Character { index, character } => {
                            assert_eq!(key.chars().nth(index), Some(character));
                            assert!(
                                idempotency::IdempotencyKey::parse(&character.to_string()).is_err()
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(IdempotencyKey::MAX_LEN, idempotency::MAX_KEY_LEN);
        let server = idempotency::IdempotencyKey::parse("order-1").expect("key");
        assert_eq!(IdempotencyKey::from(server).as_str(), "order-1");
    }

    #[test]
    fn equal_keys_hash_alike() {
        let keys: std::collections::HashSet<IdempotencyKey> = ["a", "b", "a"]
            .into_iter()
            .map(|k| IdempotencyKey::new(k).expect("key"))
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"a".parse().expect("key")));
    }

    #[test]
    fn errors_are_std_errors() {
        let api = ApiError {
            error: "invalid_body".into(),
            message: "not JSON".into(),
        };
        let errors: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(api.clone()),
            Box::new(InvalidIdempotencyKey::Empty),
        ];
        assert_eq!(errors[0].to_string(), "invalid_body: not JSON");
        assert!(errors[1].to_string().contains("1 to 255"));
        assert!(errors.iter().all(|e| e.source().is_none()));
        // `?` into a boxed error.
        let key = || -> Result<IdempotencyKey, Box<dyn std::error::Error>> {
            Ok(IdempotencyKey::new("a b")?)
        };
        assert!(key().is_err_and(|e| e.to_string().contains("character 1 is ' '")));
    }

    #[test]
    fn options_build() {
        let key = IdempotencyKey::new("k").expect("key");
        let options = PublishOptions::new()
            .with_idempotency_key(key.clone())
            .with_detail(true);
        assert_eq!(
            options,
            PublishOptions {
                idempotency_key: Some(key),
                detail: true
            }
        );
        assert_eq!(PublishOptions::default(), PublishOptions::new());
    }
}
