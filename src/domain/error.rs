//! The closed set of HTTP errors and their one mapping to status, code and message.
//!
//! Messages are written for clients; internal causes are logged at the edge and
//! never end up here.

use std::fmt;

use crate::domain::auth::AuthError;
use crate::domain::idempotency::InvalidKey;
use crate::domain::limits::TooManySockets;
use crate::domain::operator::InvalidDisconnect;
use crate::domain::protocol::PublishError;

/// `Retry-After` of a `too_many_sockets` refusal.
pub const TOO_MANY_SOCKETS_RETRY_SECS: u32 = 10;

/// Everything an HTTP request can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Unauthorized(AuthError),
    /// A valid token without the `PUBLISH_SCOPE` scope tried to publish.
    Forbidden,
    /// A valid token without the `OPERATOR_SCOPE` scope asked an operator
    /// route.
    NotOperator,
    /// A browser upgrade from an origin outside `ALLOWED_ORIGINS`.
    OriginNotAllowed,
    /// `JWT_SECRET` (or another required setting) is missing or invalid.
    Misconfigured,
    NotFound,
    /// The path exists; `allow` lists the methods it answers.
    MethodNotAllowed {
        allow: &'static str,
    },
    /// `GET /` without a WebSocket upgrade.
    UpgradeRequired,
    UnsupportedMediaType,
    InvalidBody(PublishError),
    InvalidDisconnect(InvalidDisconnect),
    /// `/users/{userId}/...` whose user id is not percent-encoded UTF-8.
    InvalidUserPath,
    InvalidIdempotencyKey(InvalidKey),
    /// The `Idempotency-Key` was used with another body.
    IdempotencyConflict,
    PayloadTooLarge {
        limit: usize,
    },
    /// An upgrade past `MAX_SOCKETS_PER_USER`; refused before the socket
    /// is accepted.
    TooManySockets(TooManySockets),
    /// The user's Durable Object could not be reached or failed.
    Unavailable,
    /// A runtime call failed unexpectedly; details are only logged.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden | ApiError::NotOperator | ApiError::OriginNotAllowed => 403,
            ApiError::Misconfigured | ApiError::Internal => 500,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::UpgradeRequired => 426,
            ApiError::UnsupportedMediaType => 415,
            ApiError::InvalidBody(_)
            | ApiError::InvalidDisconnect(_)
            | ApiError::InvalidUserPath
            | ApiError::InvalidIdempotencyKey(_) => 400,
            ApiError::IdempotencyConflict => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::TooManySockets(_) => 429,
            ApiError::Unavailable => 503,
        }
    }

    /// A refusal for the request's token, origin or scope: what the
    /// `auth.refused` line reports.
    pub fn is_auth_refusal(&self) -> bool {
        matches!(
            self,
            ApiError::Unauthorized(_)
                | ApiError::Forbidden
                | ApiError::NotOperator
                | ApiError::OriginNotAllowed
        )
    }

    /// The stable `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(auth) => auth.code(),
            ApiError::Forbidden | ApiError::NotOperator => "forbidden",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::Misconfigured => "server_misconfigured",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::InvalidBody(_) | ApiError::InvalidDisconnect(_) => "invalid_body",
            ApiError::InvalidUserPath => "invalid_user_id",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooManySockets(_) => "too_many_sockets",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal_error",
        }
    }

    /// The error a Durable Object refused a call with (it rejects with the
    /// code); `None` for a code no object sends, which the worker treats
    /// as a failure to reach the object.
    pub fn from_object_code(code: &str) -> Option<ApiError> {
        [
            ApiError::Misconfigured,
            ApiError::Internal,
            ApiError::Unavailable,
        ]
        .into_iter()
        .find(|err| err.code() == code)
    }

    /// Seconds a client should wait before retrying, when retrying makes sense.
    /// Past the socket cap the wait is a guess (the object cannot know when
    /// one of the user's sockets closes): long enough that a client in a
    /// reconnect loop that honours it stops hammering the user's object.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            ApiError::Unavailable => Some(1),
            ApiError::TooManySockets(_) => Some(TOO_MANY_SOCKETS_RETRY_SECS),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unauthorized(auth) => auth.fmt(f),
            ApiError::Forbidden => f.write_str("the token's scope does not allow publishing"),
            ApiError::NotOperator => f.write_str(
                "operator routes need a token whose scope includes the operator scope (OPERATOR_SCOPE)",
            ),
            ApiError::OriginNotAllowed => f.write_str("this Origin may not open sockets here"),
            ApiError::Misconfigured => f.write_str("the server is not configured correctly"),
            ApiError::NotFound => f.write_str("no such route"),
            ApiError::MethodNotAllowed { allow } => {
                write!(f, "method not allowed here; allowed: {allow}")
            }
            ApiError::UpgradeRequired => {
                f.write_str("this endpoint only accepts WebSocket upgrades")
            }
            ApiError::UnsupportedMediaType => f.write_str("Content-Type must be application/json"),
            ApiError::InvalidBody(why) => why.fmt(f),
            ApiError::InvalidDisconnect(why) => why.fmt(f),
            ApiError::InvalidUserPath => f.write_str(
                "the user id in the path must be non-empty, percent-encoded UTF-8",
            ),
            ApiError::InvalidIdempotencyKey(why) => why.fmt(f),
            ApiError::IdempotencyConflict => f.write_str(
                "this Idempotency-Key was used with a different body; use a new key for a new publish",
            ),
            ApiError::PayloadTooLarge { limit } => {
                write!(f, "request body is larger than {limit} bytes")
            }
            ApiError::TooManySockets(why) => why.fmt(f),
            ApiError::Unavailable => {
                f.write_str("the user's delivery object is unavailable; retry shortly")
            }
            ApiError::Internal => f.write_str("internal error"),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_error_is_a_std_error() {
        use crate::domain::{
            acks, auth, config, filter, idempotency, limits, operator, protocol, session,
        };
        fn boxed<E: std::error::Error + Send + Sync + 'static>(
            err: E,
        ) -> Box<dyn std::error::Error + Send + Sync> {
            Box::new(err)
        }
        let all = [
            boxed(ApiError::Internal),
            boxed(auth::AuthError::Expired),
            boxed(auth::RefreshRefusal::OtherUser),
            boxed(config::ConfigError::MissingSecret),
            boxed(acks::InvalidAckTimeout("5".into())),
            boxed(acks::DuplicateEnvelope),
            boxed(filter::TooManyFilters),
            boxed(filter::InvalidFilter::NotAnObject),
            boxed(idempotency::InvalidKey),
            boxed(limits::TooManySockets { max: 2 }),
            boxed(operator::InvalidDisconnect("x".into())),
            boxed(operator::BadUserPath::InvalidUserId),
            boxed(protocol::FrameError::InvalidJson),
            boxed(protocol::PublishError::NotAnObject),
            boxed(session::AttachmentTooLarge { bytes: 3_000 }),
        ];
        for err in all {
            assert!(!err.to_string().is_empty());
        }
        // A refused refresh's cause is the token's own error.
        let refusal = auth::RefreshRefusal::Token(auth::AuthError::Expired);
        let source = std::error::Error::source(&refusal).map(ToString::to_string);
        assert_eq!(source, Some(auth::AuthError::Expired.to_string()));
    }

    #[test]
    fn an_objects_refusal_keeps_its_code_and_status() {
        let refused = |code| ApiError::from_object_code(code).map(|e| (e.status(), e.code()));
        assert_eq!(
            refused("server_misconfigured"),
            Some((500, "server_misconfigured"))
        );
        assert_eq!(refused("internal_error"), Some((500, "internal_error")));
        assert_eq!(refused("unavailable"), Some((503, "unavailable")));
        // Anything else is not the object's answer: a transport failure.
        assert_eq!(refused("Error: Network connection lost."), None);
        assert_eq!(refused("not_found"), None);
    }

    #[test]
    fn statuses_and_codes() {
        let cases = [
            (
                ApiError::Unauthorized(AuthError::MissingToken),
                401,
                "missing_token",
            ),
            (
                ApiError::Unauthorized(AuthError::Expired),
                401,
                "token_expired",
            ),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::NotOperator, 403, "forbidden"),
            (ApiError::InvalidUserPath, 400, "invalid_user_id"),
            (
                ApiError::InvalidIdempotencyKey(InvalidKey),
                400,
                "invalid_idempotency_key",
            ),
            (ApiError::IdempotencyConflict, 409, "idempotency_conflict"),
            (ApiError::OriginNotAllowed, 403, "origin_not_allowed"),
            (ApiError::Misconfigured, 500, "server_misconfigured"),
            (ApiError::NotFound, 404, "not_found"),
            (
                ApiError::MethodNotAllowed { allow: "GET" },
                405,
                "method_not_allowed",
            ),
            (ApiError::UpgradeRequired, 426, "upgrade_required"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::InvalidBody(PublishError::EmptyBody),
                400,
                "invalid_body",
            ),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::TooManySockets(TooManySockets { max: 2 }),
                429,
                "too_many_sockets",
            ),
            (ApiError::Unavailable, 503, "unavailable"),
            (ApiError::Internal, 500, "internal_error"),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
            assert!(!error.to_string().is_empty());
        }
        assert_eq!(ApiError::Unavailable.retry_after_secs(), Some(1));
        assert_eq!(ApiError::NotFound.retry_after_secs(), None);
        let capped = ApiError::TooManySockets(TooManySockets { max: 2 });
        assert_eq!(capped.retry_after_secs(), Some(TOO_MANY_SOCKETS_RETRY_SECS));
    }
}
