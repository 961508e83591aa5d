//! `POST /publish` over reqwest, with typed errors and an opt-in retry that
//! honours `Retry-After`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

pub use hopeflow_realtime::protocol::PublishOutcome;

use crate::tls::{self, TlsError, Trust};

/// How long connecting (TCP and TLS) may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole publish may take by default: longer than the server's
/// longest ack wait (`ACK_TIMEOUT_MS` is at most 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    /// Stable code, e.g. `invalid_body`.
    pub error: String,
    /// Human text.
    pub message: String,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// 400: the body was refused.
    BadRequest(ApiError),
    /// 401: no, invalid or expired token.
    Unauthorized(ApiError),
    /// 403: the token lacks the publish scope.
    Forbidden(ApiError),
    /// 413: the body is over the server's limit.
    PayloadTooLarge(ApiError),
    /// 415: wrong content type (not produced by this client).
    UnsupportedMediaType(ApiError),
    /// 503: the user's object is unavailable; retry after the given delay.
    Unavailable {
        error: ApiError,
        retry_after: Option<Duration>,
    },
    /// Any other status.
    Status { status: u16, body: String },
    /// The request did not complete: the one-line cause (connection
    /// refused, untrusted certificate, timeout...).
    Transport(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::BadRequest(e)
            | PublishError::Unauthorized(e)
            | PublishError::Forbidden(e)
            | PublishError::PayloadTooLarge(e)
            | PublishError::UnsupportedMediaType(e)
            | PublishError::Unavailable { error: e, .. } => write!(f, "{}: {}", e.error, e.message),
            PublishError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            PublishError::Transport(why) => write!(f, "request failed: {why}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Publishes envelopes to users.
///
/// ```no_run
/// # async fn demo() -> Result<(), hopeflow_client::PublishError> {
/// use hopeflow_client::{token, Publisher};
/// let publisher = Publisher::new("http://127.0.0.1:8787", token::mint("secret", "backend", None, Default::default()));
/// let outcome = publisher.publish("alice", Some("chat"), serde_json::json!({"text": "hi"})).await?;
/// println!("{} sockets, results {:?}", outcome.client_count, outcome.results);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    /// Why the HTTP client could not be built, reported by `publish`.
    http: Result<reqwest::Client, String>,
    url: String,
    token: String,
    /// Extra attempts after a 503 (0: none).
    retries: u32,
    trust: Trust,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Publisher {
    /// A publisher for the server at `base_url` (`https://realtime.example.com`,
    /// or `http://127.0.0.1:8787` for `make dev`), trusting the public roots.
    pub fn new(base_url: &str, token: impl Into<String>) -> Publisher {
        Publisher {
            http: Err(String::new()),
            url: format!("{}/publish", base_url.trim_end_matches('/')),
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
        let mut body = json!({ "userId": user_id, "payload": payload });
        if let Some(kind) = kind {
            body["type"] = Value::from(kind);
        }
        let mut attempt = 0;
        loop {
            match self.publish_once(&body).await {
                Err(PublishError::Unavailable { retry_after, .. }) if attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
                }
                outcome => return outcome,
            }
        }
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

    async fn publish_once(&self, body: &Value) -> Result<PublishOutcome, PublishError> {
        let http = self
            .http
            .as_ref()
            .map_err(|why| PublishError::Transport(why.clone()))?;
        let response = http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| self.transport(&e))?;
        if status == 200 {
            return serde_json::from_str(&text)
                .map_err(|_| PublishError::Status { status, body: text });
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

/// Maps an error status and body to a [`PublishError`].
pub fn classify(status: u16, body: String, retry_after: Option<Duration>) -> PublishError {
    let Ok(error) = serde_json::from_str::<ApiError>(&body) else {
        return PublishError::Status { status, body };
    };
    match status {
        400 => PublishError::BadRequest(error),
        401 => PublishError::Unauthorized(error),
        403 => PublishError::Forbidden(error),
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
}
