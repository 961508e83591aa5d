//! The HTTP API over reqwest: `POST /publish` and `/publish/batch`, and
//! the operator routes `GET /users/{id}/sockets` and
//! `POST /users/{id}/disconnect`; typed errors, idempotency keys and an
//! opt-in retry that honours `Retry-After`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use hopeflow_realtime::idempotency;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::user_path;
pub use crate::api::{
    ApiError, BatchOutcome, Delivery, DeliveryStatus, DisconnectOutcome, IdempotencyKey,
    PublishOptions, PublishOutcome, SocketInfo, UserOutcome, UserSockets,
};
use crate::tls::{self, TlsError, Trust};

/// How long connecting (TCP and TLS) may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole publish may take by default: longer than the server's
/// longest ack wait (`ACK_TIMEOUT_MS` is at most 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a [`Publisher`] call failed (publish, batch, sockets, disconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// 400: the body was refused (or the idempotency key).
    BadRequest(ApiError),
    /// 401: no, invalid or expired token.
    Unauthorized(ApiError),
    /// 403: the token lacks the publish or operator scope.
    Forbidden(ApiError),
    /// 409: this idempotency key was used with another body
    /// (`idempotency_conflict`).
    Conflict(ApiError),
    /// 413: the body is over the server's limit.
    PayloadTooLarge(ApiError),
    /// 415: wrong content type (not produced by this client).
    UnsupportedMediaType(ApiError),
    /// 503: the user's object is unavailable; retry after the given delay.
    Unavailable {
        error: ApiError,
        retry_after: Option<Duration>,
    },
    /// Any other status, or a 200 whose body this client cannot read.
    Status { status: u16, body: String },
    /// The request did not complete: the one-line cause (connection
    /// refused, untrusted certificate, timeout...).
    Transport(String),
    /// Not sent: the arguments cannot make a request (e.g. a user id of
    /// `..`, which no URL path can carry).
    InvalidInput(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::BadRequest(e)
            | PublishError::Unauthorized(e)
            | PublishError::Forbidden(e)
            | PublishError::Conflict(e)
            | PublishError::PayloadTooLarge(e)
            | PublishError::UnsupportedMediaType(e)
            | PublishError::Unavailable { error: e, .. } => e.fmt(f),
            PublishError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            PublishError::Transport(why) => write!(f, "request failed: {why}"),
            PublishError::InvalidInput(why) => write!(f, "not sent: {why}"),
        }
    }
}

/// No `source()`: a variant with the server's [`ApiError`] displays it as
/// its own text (transparently), so a source would print it twice in an
/// error chain; [`PublishError::api_error`] hands it out. The other
/// variants carry text only.
impl std::error::Error for PublishError {}

impl PublishError {
    /// The server's error body, for the variants that carry one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            PublishError::BadRequest(e)
            | PublishError::Unauthorized(e)
            | PublishError::Forbidden(e)
            | PublishError::Conflict(e)
            | PublishError::PayloadTooLarge(e)
            | PublishError::UnsupportedMediaType(e)
            | PublishError::Unavailable { error: e, .. } => Some(e),
            PublishError::Status { .. }
            | PublishError::Transport(_)
            | PublishError::InvalidInput(_) => None,
        }
    }
}

/// Publishes envelopes to users, and (with an operator token) lists and
/// disconnects their sockets.
///
/// ```no_run
/// # async fn demo() -> Result<(), hopeflow_client::PublishError> {
/// use hopeflow_client::{token, IdempotencyKey, PublishOptions, Publisher};
/// use serde_json::json;
///
/// let publisher = Publisher::new("http://127.0.0.1:8787", token::mint("secret", "backend", None, Default::default()));
/// let outcome = publisher.publish("alice", Some("chat"), json!({"text": "hi"})).await?;
/// println!("{} sockets, results {:?}", outcome.client_count, outcome.results);
///
/// // Safe to repeat: a second call with the key is answered, not delivered.
/// let key = IdempotencyKey::new("order-1234-shipped").expect("a valid key");
/// let options = PublishOptions::new().with_idempotency_key(key).with_detail(true);
/// let outcome = publisher.publish_with("alice", Some("order"), json!({"id": 1234}), options.clone()).await?;
/// for delivery in outcome.deliveries.unwrap_or_default() {
///     println!("{}: {} after {:?} ms", delivery.socket_id, delivery.status.as_str(), delivery.ack_ms);
/// }
/// let batch = publisher.publish_batch(["alice", "bob"], Some("news"), json!({}), PublishOptions::new()).await?;
/// for (user, error) in batch.failures() {
///     eprintln!("{user}: {error}");
/// }
///
/// // Operator routes: the token's `scope` must hold the operator scope.
/// let operator = Publisher::new("http://127.0.0.1:8787", token::mint("secret", "ops", None, token::operator_claims()));
/// let sockets = operator.sockets("alice").await?;
/// println!("alice has {} sockets", sockets.count);
/// operator.disconnect("alice", None, true, Some("token rotated")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    /// Why the HTTP client could not be built, reported by every call.
    http: Result<reqwest::Client, String>,
    /// The service root, without a trailing `/`.
    base: String,
    token: String,
    /// Extra attempts after a 503 (0: none).
    retries: u32,
    trust: Trust,
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// A 200 answer: its body, and whether it is an idempotent replay.
struct Answer {
    text: String,
    replayed: bool,
}

impl Publisher {
    /// A publisher for the server at `base_url` (`https://realtime.example.com`,
    /// or `http://127.0.0.1:8787` for `make dev`), trusting the public roots.
    pub fn new(base_url: &str, token: impl Into<String>) -> Publisher {
        Publisher {
            http: Err(String::new()),
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.into(),
            retries: 0,
            trust: Trust::public_roots(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
        .rebuilt()
    }

    /// Also trusts the CA certificate(s) in the PEM file at `path` (a
    /// private CA); certificates are always verified.
    pub fn with_ca_cert(self, path: impl AsRef<Path>) -> Result<Publisher, TlsError> {
        let trust = self.trust.clone().add_ca_file(path)?;
        Ok(self.with_trust(trust))
    }

    /// Trusts exactly `trust` (e.g. [`Trust::from_env`]).
    pub fn with_trust(mut self, trust: Trust) -> Publisher {
        self.trust = trust;
        self.rebuilt()
    }

    /// Limits connecting (TCP and TLS) and the whole request.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Publisher {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self.rebuilt()
    }

    /// Retries a 503 up to `retries` times, waiting `Retry-After` (or 1 s).
    /// A 503 means the user's object was not reached, so nothing was
    /// delivered; every call retries it.
    pub fn with_retries(mut self, retries: u32) -> Publisher {
        self.retries = retries;
        self
    }

    /// Publishes `payload` of `kind` (default `message`) to `user_id`'s sockets
    /// and returns how many were sent it and their ack results.
    pub async fn publish(
        &self,
        user_id: &str,
        kind: Option<&str>,
        payload: Value,
    ) -> Result<PublishOutcome, PublishError> {
        self.publish_with(user_id, kind, payload, PublishOptions::default())
            .await
    }

    /// [`Publisher::publish`] with an idempotency key and / or per-socket
    /// detail ([`PublishOptions`]).
    pub async fn publish_with(
        &self,
        user_id: &str,
        kind: Option<&str>,
        payload: Value,
        options: PublishOptions,
    ) -> Result<PublishOutcome, PublishError> {
        let body = json!({ "userId": user_id, "payload": payload });
        let answer = self.post_publish("/publish", body, kind, &options).await?;
        let mut outcome: PublishOutcome = parse(answer.text)?;
        outcome.replayed = answer.replayed;
        Ok(outcome)
    }

    /// Publishes one envelope to several users (`POST /publish/batch`; the
    /// server takes 1 to 100 distinct ids) and returns each user's outcome
    /// in the order given. A user whose object could not be reached has an
    /// `Err` in its [`UserOutcome`]; the call itself still succeeds.
    pub async fn publish_batch<I>(
        &self,
        user_ids: I,
        kind: Option<&str>,
        payload: Value,
        options: PublishOptions,
    ) -> Result<BatchOutcome, PublishError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let user_ids: Vec<Value> = user_ids
            .into_iter()
            .map(|id| Value::from(id.as_ref()))
            .collect();
        let body = json!({ "userIds": user_ids, "payload": payload });
        let answer = self
            .post_publish("/publish/batch", body, kind, &options)
            .await?;
        let mut outcome: BatchOutcome = parse(answer.text)?;
        outcome.replayed = answer.replayed;
        Ok(outcome)
    }

    /// The user's open sockets, their filters and the publishes waiting
    /// for their acks. Needs an operator token.
    pub async fn sockets(&self, user_id: &str) -> Result<UserSockets, PublishError> {
        let path = user_path(user_id, "sockets").map_err(PublishError::InvalidInput)?;
        parse(self.call(Method::GET, &path, None, None).await?.text)
    }

    /// Closes the user's sockets, or only `socket_id`. With `reconnect`
    /// they close with 4000 and clients come back with a fresh token;
    /// otherwise with 4001 and clients stay away. `reason` is the close
    /// frame's reason. Needs an operator token.
    pub async fn disconnect(
        &self,
        user_id: &str,
        socket_id: Option<&str>,
        reconnect: bool,
        reason: Option<&str>,
    ) -> Result<DisconnectOutcome, PublishError> {
        let path = user_path(user_id, "disconnect").map_err(PublishError::InvalidInput)?;
        let mut body = json!({ "reconnect": reconnect });
        if let Some(socket_id) = socket_id {
            body["socketId"] = Value::from(socket_id);
        }
        if let Some(reason) = reason {
            body["reason"] = Value::from(reason);
        }
        parse(
            self.call(Method::POST, &path, Some(&body), None)
                .await?
                .text,
        )
    }

    fn rebuilt(mut self) -> Publisher {
        self.http = reqwest::Client::builder()
            .use_preconfigured_tls((*self.trust.client_config()).clone())
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", tls::describe(&e)));
        self
    }

    /// `POST route` with a publish body (its `type` added when given), the
    /// options' `Idempotency-Key` and `?detail=true`.
    async fn post_publish(
        &self,
        route: &str,
        mut body: Value,
        kind: Option<&str>,
        options: &PublishOptions,
    ) -> Result<Answer, PublishError> {
        if let Some(kind) = kind {
            body["type"] = Value::from(kind);
        }
        let path = publish_path(route, options.detail);
        self.call(
            Method::POST,
            &path,
            Some(&body),
            options.idempotency_key.as_ref(),
        )
        .await
    }

    /// One request, retried after a 503 as configured; a 200's body, or the
    /// error the status means.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, PublishError> {
        let mut attempt = 0;
        loop {
            match self.call_once(method.clone(), path, body, key).await {
                Err(PublishError::Unavailable { retry_after, .. }) if attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
                }
                answer => return answer,
            }
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, PublishError> {
        let http = self
            .http
            .as_ref()
            .map_err(|why| PublishError::Transport(why.clone()))?;
        let mut request = http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.header(idempotency::HEADER, key.as_str());
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        let retry_after = header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let replayed =
            header(idempotency::REPLAYED_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let text = response.text().await.map_err(|e| self.transport(&e))?;
        if status == 200 {
            return Ok(Answer { text, replayed });
        }
        Err(classify(status, text, retry_after))
    }

    /// The one-line cause of a failed request.
    fn transport(&self, err: &reqwest::Error) -> PublishError {
        // reqwest's own timeout error says only "operation timed out".
        let why = if err.is_timeout() {
            let limit = if err.is_connect() {
                self.connect_timeout
            } else {
                self.request_timeout
            };
            format!("timed out after {} s", limit.as_secs_f64())
        } else {
            tls::describe(err)
        };
        PublishError::Transport(why)
    }
}

/// `/publish` or `/publish/batch`, with `?detail=true` when asked.
fn publish_path(path: &str, detail: bool) -> String {
    if detail {
        format!("{path}?detail=true")
    } else {
        path.to_owned()
    }
}

/// A 200's body as `T`; one this client cannot read is reported whole.
fn parse<T: DeserializeOwned>(text: String) -> Result<T, PublishError> {
    serde_json::from_str(&text).map_err(|_| PublishError::Status {
        status: 200,
        body: text,
    })
}

/// Maps an error status and body to a [`PublishError`].
pub fn classify(status: u16, body: String, retry_after: Option<Duration>) -> PublishError {
    let Ok(error) = serde_json::from_str::<ApiError>(&body) else {
        return PublishError::Status { status, body };
    };
    match status {
        400 => PublishError::BadRequest(error),
        401 => PublishError::Unauthorized(error),
        403 => PublishError::Forbidden(error),
        409 => PublishError::Conflict(error),
        413 => PublishError::PayloadTooLarge(error),
        415 => PublishError::UnsupportedMediaType(error),
        503 => PublishError::Unavailable { error, retry_after },
        _ => PublishError::Status { status, body },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants() {
        let body = r#"{"error":"x","message":"m"}"#.to_string();
        let e = || ApiError {
            error: "x".into(),
            message: "m".into(),
        };
        assert_eq!(
            classify(400, body.clone(), None),
            PublishError::BadRequest(e())
        );
        assert_eq!(
            classify(401, body.clone(), None),
            PublishError::Unauthorized(e())
        );
        assert_eq!(
            classify(403, body.clone(), None),
            PublishError::Forbidden(e())
        );
        assert_eq!(
            classify(409, body.clone(), None),
            PublishError::Conflict(e())
        );
        assert_eq!(
            classify(413, body.clone(), None),
            PublishError::PayloadTooLarge(e())
        );
        assert_eq!(
            classify(415, body.clone(), None),
            PublishError::UnsupportedMediaType(e())
        );
        assert_eq!(
            classify(503, body.clone(), Some(Duration::from_secs(2))),
            PublishError::Unavailable {
                error: e(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            classify(500, body, None),
            PublishError::Status { status: 500, .. }
        ));
        assert!(matches!(
            classify(502, "<html>".into(), None),
            PublishError::Status { status: 502, .. }
        ));
        assert_eq!(
            classify(401, r#"{"error":"x","message":"m"}"#.into(), None).to_string(),
            "x: m"
        );
    }

    #[test]
    fn idempotency_errors_are_typed() {
        let conflict = r#"{"error":"idempotency_conflict","message":"key used with another body"}"#;
        match classify(409, conflict.into(), None) {
            PublishError::Conflict(e) => assert_eq!(e.error, "idempotency_conflict"),
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(
            classify(409, conflict.into(), None).to_string(),
            "idempotency_conflict: key used with another body"
        );
        let malformed = r#"{"error":"invalid_idempotency_key","message":"m"}"#;
        assert!(matches!(
            classify(400, malformed.into(), None),
            PublishError::BadRequest(e) if e.error == "invalid_idempotency_key"
        ));
        // A 409 without our error body stays a plain status.
        assert!(matches!(
            classify(409, "conflict".into(), None),
            PublishError::Status { status: 409, .. }
        ));
    }

    #[test]
    fn publish_errors_are_std_errors() {
        let conflict = classify(409, r#"{"error":"c","message":"m"}"#.into(), None);
        assert_eq!(conflict.api_error().map(|e| e.error.as_str()), Some("c"));
        let errors: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(conflict),
            Box::new(PublishError::Transport("connection refused".into())),
            Box::new(PublishError::InvalidInput("the user id is empty".into())),
            Box::new(classify(502, "<html>".into(), None)),
        ];
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "c: m",
                "request failed: connection refused",
                "not sent: the user id is empty",
                "HTTP 502: <html>"
            ]
        );
        // The server's error is the text itself, not a source shown again.
        assert!(errors.iter().all(|e| e.source().is_none()));
        for text_only in [
            PublishError::Transport(String::new()),
            PublishError::Status {
                status: 500,
                body: String::new(),
            },
        ] {
            assert_eq!(text_only.api_error(), None);
        }
    }

    /// A publish waits for acks up to the server's longest `ACK_TIMEOUT_MS`;
    /// the default request timeout outlasts it.
    #[test]
    fn request_timeout_outlasts_the_longest_ack_wait() {
        let longest = Duration::from_millis(hopeflow_realtime::acks::AckTimeout::MAX_MS);
        assert!(REQUEST_TIMEOUT > longest);
        assert!(REQUEST_TIMEOUT > CONNECT_TIMEOUT);
    }

    #[test]
    fn paths_and_unreadable_answers() {
        assert_eq!(publish_path("/publish", false), "/publish");
        assert_eq!(publish_path("/publish", true), "/publish?detail=true");
        assert_eq!(
            publish_path("/publish/batch", true),
            "/publish/batch?detail=true"
        );
        assert_eq!(
            parse::<DisconnectOutcome>(r#"{"closed":1}"#.into()),
            Ok(DisconnectOutcome { closed: 1 })
        );
        assert_eq!(
            parse::<DisconnectOutcome>("<html>".into()),
            Err(PublishError::Status {
                status: 200,
                body: "<html>".into()
            })
        );
        assert_eq!(
            PublishError::InvalidInput("the user id is empty".into()).to_string(),
            "not sent: the user id is empty"
        );
    }

    /// One request as the fake server read it: the head in lowercase (header
    /// names vary in case), and the body.
    #[derive(Debug)]
    struct Seen {
        head: String,
        body: Value,
    }

    /// A fake HTTP server answering each connection with the next of
    /// `answers` (status, extra header lines, body) and reporting the request.
    async fn fake_http(
        answers: Vec<(u16, &'static str, &'static str)>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (report, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (status, headers, body) in answers {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, length) = loop {
                    let Ok(n @ 1..) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    buf.drain(..end + 4);
                    break (head, length);
                };
                while buf.len() < length {
                    let Ok(n @ 1..) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    buf.extend_from_slice(&chunk[..n]);
                }
                let request_body = serde_json::from_slice(&buf).unwrap_or(Value::Null);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = report.send(Seen {
                    head,
                    body: request_body,
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn requests_carry_paths_keys_and_bodies() {
        let (url, mut seen) = fake_http(vec![
            (
                200,
                "Idempotent-Replayed: true\r\n",
                r#"{"clientCount":1,"results":[1],"deliveries":[{"socketId":"s","status":"acked","result":1,"ackMs":2}]}"#,
            ),
            (
                200,
                "",
                r#"{"envelopeId":"e","users":[{"userId":"a","clientCount":0,"results":[]},{"userId":"b","clientCount":0,"results":[]}]}"#,
            ),
            (
                200,
                "",
                r#"{"userId":"a/b é","count":0,"pendingPublishes":0,"sockets":[]}"#,
            ),
            (200, "", r#"{"closed":1}"#),
            (
                409,
                "",
                r#"{"error":"idempotency_conflict","message":"other body"}"#,
            ),
        ])
        .await;
        let publisher = Publisher::new(&format!("{url}/"), "tok");
        let key = IdempotencyKey::new("key-1").expect("key");
        let options = PublishOptions::new()
            .with_idempotency_key(key.clone())
            .with_detail(true);
        let outcome = publisher
            .publish_with("a b", Some("t"), json!({"x": 1}), options.clone())
            .await
            .expect("publish");
        assert!(outcome.replayed);
        assert_eq!(
            outcome.deliveries.map(|d| d[0].status.clone()),
            Some(DeliveryStatus::Acked)
        );
        let request = seen.recv().await.expect("a request");
        assert!(
            request
                .head
                .starts_with("post /publish?detail=true http/1.1"),
            "{}",
            request.head
        );
        assert!(request.head.contains("\r\nidempotency-key: key-1"));
        assert!(request.head.contains("\r\nauthorization: bearer tok"));
        assert_eq!(
            request.body,
            json!({"userId": "a b", "type": "t", "payload": {"x": 1}})
        );

        let batch = publisher
            .publish_batch(
                vec!["a".to_owned(), "b".to_owned()],
                None,
                json!(null),
                PublishOptions::new(),
            )
            .await
            .expect("batch");
        assert!(!batch.replayed);
        assert_eq!(batch.users.len(), 2);
        let request = seen.recv().await.expect("a request");
        assert!(request.head.starts_with("post /publish/batch http/1.1"));
        assert!(!request.head.contains("idempotency-key"));
        assert_eq!(
            request.body,
            json!({"userIds": ["a", "b"], "payload": null})
        );

        let sockets = publisher.sockets("a/b é").await.expect("sockets");
        assert_eq!(sockets.user_id, "a/b é");
        let request = seen.recv().await.expect("a request");
        assert!(
            request
                .head
                .starts_with("get /users/a%2fb%20%c3%a9/sockets http/1.1"),
            "{}",
            request.head
        );

        let closed = publisher
            .disconnect("u", Some("s1"), true, Some("rotated"))
            .await
            .expect("disconnect");
        assert_eq!(closed.closed, 1);
        let request = seen.recv().await.expect("a request");
        assert!(request
            .head
            .starts_with("post /users/u/disconnect http/1.1"));
        assert_eq!(
            request.body,
            json!({"socketId": "s1", "reconnect": true, "reason": "rotated"})
        );

        match publisher
            .publish_with("a b", Some("t"), json!({"x": 2}), options)
            .await
        {
            Err(PublishError::Conflict(e)) => assert_eq!(e.error, "idempotency_conflict"),
            other => panic!("expected Conflict, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_call_retries_a_503() {
        let unavailable = r#"{"error":"unavailable","message":"m"}"#;
        let (url, _seen) = fake_http(vec![
            (503, "Retry-After: 0\r\n", unavailable),
            (
                200,
                "",
                r#"{"userId":"u","count":0,"pendingPublishes":0,"sockets":[]}"#,
            ),
            (503, "Retry-After: 0\r\n", unavailable),
        ])
        .await;
        let publisher = Publisher::new(&url, "t").with_retries(1);
        assert_eq!(publisher.sockets("u").await.map(|s| s.count), Ok(0));
        let publisher = publisher.with_retries(0);
        assert!(matches!(
            publisher.disconnect("u", None, false, None).await,
            Err(PublishError::Unavailable { retry_after: Some(d), .. }) if d.is_zero()
        ));
    }

    /// Operator calls with a user id no path can carry fail before sending
    /// (nothing listens on port 9: a sent request would be a transport error).
    #[tokio::test]
    async fn unsendable_user_ids_are_refused_locally() {
        let publisher = Publisher::new("http://127.0.0.1:9", "t");
        for user in ["", ".", ".."] {
            assert!(matches!(
                publisher.sockets(user).await,
                Err(PublishError::InvalidInput(_))
            ));
            assert!(matches!(
                publisher.disconnect(user, None, false, None).await,
                Err(PublishError::InvalidInput(_))
            ));
        }
    }
}
