//! The operator API's rules: its routes (`/users/{userId}/sockets`,
//! `/users/{userId}/disconnect`, user ids percent-encoded), the disconnect
//! body, and the shape of a user's sockets.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::filter::Filter;
use crate::domain::protocol::CloseCode;

/// An operator route of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRoute {
    /// `GET /users/{userId}/sockets`
    Sockets,
    /// `POST /users/{userId}/disconnect`
    Disconnect,
}

/// `/users/...` that is not a known route, or whose user id does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUserPath {
    NotFound,
    /// Not valid percent-encoding of UTF-8, or empty.
    InvalidUserId,
}

impl fmt::Display for BadUserPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadUserPath::InvalidUserId => "the user id in the path is not percent-encoded UTF-8",
            BadUserPath::NotFound => "no such user route",
        })
    }
}

impl std::error::Error for BadUserPath {}

/// The user and route of a `/users/{userId}/{route}` path; `None` when the
/// path is not under `/users/`.
pub fn user_route(path: &str) -> Option<Result<(String, UserRoute), BadUserPath>> {
    let rest = path.strip_prefix("/users/")?;
    let Some((encoded, route)) = rest.rsplit_once('/') else {
        return Some(Err(BadUserPath::NotFound));
    };
    let route = match route {
        "sockets" => UserRoute::Sockets,
        "disconnect" => UserRoute::Disconnect,
        _ => return Some(Err(BadUserPath::NotFound)),
    };
    // An encoded user id holds no `/`; a raw one would be another path.
    if encoded.contains('/') {
        return Some(Err(BadUserPath::NotFound));
    }
    Some(match percent_decode(encoded) {
        Some(user) if !user.trim().is_empty() => Ok((user, route)),
        _ => Err(BadUserPath::InvalidUserId),
    })
}

/// The route a path names, as log lines show it: never a user id (the
/// operator routes' `{userId}` is a placeholder) and never a query.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/publish" => "/publish",
        "/publish/batch" => "/publish/batch",
        "/console" | "/console/hopeflow.js" => "/console",
        _ => match user_route(path) {
            Some(Ok((_, UserRoute::Sockets))) => "/users/{userId}/sockets",
            Some(Ok((_, UserRoute::Disconnect))) => "/users/{userId}/disconnect",
            _ => "other",
        },
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not
/// UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Longest close reason: a close frame's reason is at most 123 bytes.
pub const MAX_REASON_BYTES: usize = 123;

/// `POST /users/{userId}/disconnect`'s optional body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// Only this socket; every socket of the user when absent.
    #[serde(rename = "socketId", default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    /// Close with 4000 (come back with a fresh token) instead of 4001.
    #[serde(default)]
    pub reconnect: bool,
    /// The close frame's reason instead of the code's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a disconnect body was refused (400 `invalid_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDisconnect(pub String);

impl fmt::Display for InvalidDisconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidDisconnect {}

impl DisconnectRequest {
    /// The close code it asks for: 4000 (come back with a fresh token) or
    /// 4001 (stay away).
    pub fn close_code(&self) -> CloseCode {
        if self.reconnect {
            CloseCode::Reauthenticate
        } else {
            CloseCode::Disconnected
        }
    }

    /// An empty body means every socket, code 4001.
    pub fn parse(body: &[u8]) -> Result<DisconnectRequest, InvalidDisconnect> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DisconnectRequest::default());
        }
        let refused = |why: String| {
            InvalidDisconnect(format!(
                "the body must be a JSON object with optional \"socketId\" (string), \
                 \"reconnect\" (boolean) and \"reason\" (string): {why}"
            ))
        };
        // An object only: a derived `Deserialize` would also read an array
        // positionally.
        let value: Value = serde_json::from_slice(body).map_err(|e| refused(e.to_string()))?;
        if !value.is_object() {
            return Err(refused("not an object".into()));
        }
        let request: DisconnectRequest =
            serde_json::from_value(value).map_err(|e| refused(e.to_string()))?;
        if request.socket_id.as_deref().is_some_and(str::is_empty) {
            return Err(InvalidDisconnect("\"socketId\" must not be empty".into()));
        }
        if request
            .reason
            .as_deref()
            .is_some_and(|r| r.len() > MAX_REASON_BYTES)
        {
            return Err(InvalidDisconnect(format!(
                "\"reason\" is at most {MAX_REASON_BYTES} bytes (a close frame's limit)"
            )));
        }
        Ok(request)
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One socket of `GET /users/{userId}/sockets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    #[serde(rename = "socketId")]
    pub socket_id: String,
    /// Milliseconds since the epoch.
    #[serde(rename = "connectedAt")]
    pub connected_at: u64,
    pub filters: Vec<Filter>,
    /// The socket's token `exp` (unix seconds; `null`: it never expires).
    /// The socket closes with 4002 at this time plus `JWT_LEEWAY_SECS`.
    #[serde(rename = "expiresAt", default)]
    pub expires_at: Option<u64>,
}

/// The answer of `GET /users/{userId}/sockets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketsView {
    #[serde(rename = "userId")]
    pub user_id: String,
    pub count: usize,
    #[serde(rename = "pendingPublishes")]
    pub pending_publishes: usize,
    /// Oldest first.
    pub sockets: Vec<SocketInfo>,
    /// Absent with history off, and for a user who never had a history.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub history: Option<HistoryView>,
    /// Absent without `WEBHOOK_URL`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub webhooks: Option<WebhookView>,
}

/// The user's webhook outbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookView {
    /// Events waiting to be delivered.
    pub pending: u64,
    /// Events dropped past `WEBHOOK_MAX_AGE_SECS` or `WEBHOOK_MAX_PENDING`.
    pub dropped: u64,
    /// The last failure, as text; `None` once a request succeeds.
    #[serde(rename = "lastError")]
    pub last_error: Option<String>,
    /// When the next retry goes (unix ms); `None` when none waits.
    #[serde(rename = "nextAttemptAt")]
    pub next_attempt_at: Option<u64>,
}

/// The user's history as stored: the last `seq` given out, and how many
/// envelopes are kept at rest (rows past the bounds included until the
/// object deletes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub seq: u64,
    #[serde(rename = "storedEnvelopes")]
    pub stored_envelopes: u64,
}

impl SocketsView {
    pub fn new(
        user_id: String,
        mut sockets: Vec<SocketInfo>,
        pending: usize,
        history: Option<HistoryView>,
    ) -> SocketsView {
        sockets.sort_by(|a, b| (a.connected_at, &a.socket_id).cmp(&(b.connected_at, &b.socket_id)));
        SocketsView {
            user_id,
            count: sockets.len(),
            pending_publishes: pending,
            sockets,
            history,
            webhooks: None,
        }
    }

    /// This view with the webhook outbox's state.
    pub fn with_webhooks(self, webhooks: Option<WebhookView>) -> SocketsView {
        SocketsView { webhooks, ..self }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The answer of `POST /users/{userId}/disconnect`.
pub fn disconnected_text(closed: usize) -> String {
    serde_json::json!({ "closed": closed }).to_string()
}

/// One user's entry in the `/publish/batch` answer: its `/publish` answer's
/// fields, or its error.
pub fn batch_entry(user_id: &str, answer: Result<Value, (&str, String)>) -> Value {
    match answer {
        Ok(Value::Object(mut fields)) => {
            let mut entry = serde_json::Map::new();
            entry.insert("userId".into(), Value::from(user_id));
            entry.append(&mut fields);
            Value::Object(entry)
        }
        Ok(_) => batch_entry(
            user_id,
            Err(("internal_error", "the user's object answered badly".into())),
        ),
        Err((code, message)) => serde_json::json!({
            "userId": user_id,
            "error": { "error": code, "message": message },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_name_no_user() {
        assert_eq!(route_label("/publish"), "/publish");
        assert_eq!(route_label("/"), "/");
        assert_eq!(
            route_label("/users/alice%40x/sockets"),
            "/users/{userId}/sockets"
        );
        assert_eq!(
            route_label("/users/bob/disconnect"),
            "/users/{userId}/disconnect"
        );
        assert_eq!(route_label("/users/bob/secret"), "other");
        assert_eq!(route_label("/wp-admin"), "other");
    }
    use serde_json::json;

    #[test]
    fn routes_decode_user_ids() {
        assert_eq!(
            user_route("/users/alice/sockets"),
            Some(Ok(("alice".into(), UserRoute::Sockets)))
        );
        assert_eq!(
            user_route("/users/a%2Fb%20%C3%A9/disconnect"),
            Some(Ok(("a/b é".into(), UserRoute::Disconnect)))
        );
        assert_eq!(user_route("/publish"), None);
        assert_eq!(
            user_route("/users/alice/other"),
            Some(Err(BadUserPath::NotFound))
        );
        assert_eq!(user_route("/users/alice"), Some(Err(BadUserPath::NotFound)));
        assert_eq!(
            user_route("/users/a/b/sockets"),
            Some(Err(BadUserPath::NotFound))
        );
        for bad in [
            "/users//sockets",
            "/users/%zz/sockets",
            "/users/%C3/sockets",
            "/users/%20/sockets",
        ] {
            assert_eq!(
                user_route(bad),
                Some(Err(BadUserPath::InvalidUserId)),
                "{bad}"
            );
        }
    }

    #[test]
    fn disconnect_bodies() {
        assert_eq!(
            DisconnectRequest::parse(b""),
            Ok(DisconnectRequest::default())
        );
        assert_eq!(
            DisconnectRequest::parse(b" \n"),
            Ok(DisconnectRequest::default())
        );
        let request =
            DisconnectRequest::parse(br#"{"socketId":"s1","reconnect":true,"reason":"bye"}"#)
                .expect("valid");
        assert_eq!(request.socket_id.as_deref(), Some("s1"));
        assert!(request.reconnect);
        assert_eq!(request.reason.as_deref(), Some("bye"));
        assert_eq!(
            DisconnectRequest::parse(request.to_text().as_bytes()),
            Ok(request)
        );
        for bad in [
            &br#"[]"#[..],
            br#"{"reconnect":"yes"}"#,
            br#"{"socketId":""}"#,
            br#"{"socketId":5}"#,
            br#"{"other":1}"#,
            b"not json",
        ] {
            assert!(
                DisconnectRequest::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(124));
        assert!(DisconnectRequest::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn sockets_view_is_oldest_first() {
        let info = |id: &str, at: u64| SocketInfo {
            socket_id: id.into(),
            connected_at: at,
            filters: Vec::new(),
            expires_at: (at == 2).then_some(1_700_000_000),
        };
        let view = SocketsView::new("u".into(), vec![info("b", 2), info("a", 1)], 3, None);
        assert_eq!(
            serde_json::from_str::<Value>(&view.to_text()).expect("json"),
            json!({"userId": "u", "count": 2, "pendingPublishes": 3, "sockets": [
                {"socketId": "a", "connectedAt": 1, "filters": [], "expiresAt": null},
                {"socketId": "b", "connectedAt": 2, "filters": [], "expiresAt": 1_700_000_000},
            ]})
        );
        let history = HistoryView {
            seq: 7,
            stored_envelopes: 3,
        };
        let view = SocketsView::new("u".into(), vec![], 0, Some(history));
        assert_eq!(
            serde_json::from_str::<Value>(&view.to_text()).expect("json")["history"],
            json!({"seq": 7, "storedEnvelopes": 3})
        );
        assert_eq!(disconnected_text(2), r#"{"closed":2}"#);
    }

    #[test]
    fn batch_entries() {
        assert_eq!(
            batch_entry("a", Ok(json!({"clientCount": 1, "results": [1]}))),
            json!({"userId": "a", "clientCount": 1, "results": [1]})
        );
        assert_eq!(
            batch_entry("b", Err(("unavailable", "down".into()))),
            json!({"userId": "b", "error": {"error": "unavailable", "message": "down"}})
        );
    }
}
