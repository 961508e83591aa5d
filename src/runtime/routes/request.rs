//! What the worker's routes share: the token check, the publish checks
//! before a body, the user's object, and an unreachable object as 503.

use wasm_bindgen::JsValue;
use worker::{js_sys, Env};

use crate::domain::auth::{bearer_token, extract_token, handshake_token, AuthError, Claims};
use crate::domain::error::ApiError;
use crate::domain::idempotency::{IdempotencyKey, HEADER as IDEMPOTENCY_HEADER};
use crate::domain::protocol::is_json_content_type;
use crate::runtime::http::{self, Incoming};
use crate::runtime::js::env as js_env;
use crate::runtime::js::promise::Continuation;
use crate::runtime::js::{Namespace, ObjectStub};
use crate::runtime::settings::Settings;
use crate::runtime::telemetry;

/// The Durable Object namespace binding (see wrangler.toml).
const BINDING: &str = "HOPEFLOW_REALTIME";

/// The first value of query parameter `name`.
pub(crate) fn query_param(req: &Incoming, name: &str) -> Option<String> {
    crate::domain::query::query_param(req.url(), name)
}

/// Verifies the request's token (`Authorization: Bearer`, else `?token=`).
pub(crate) fn authenticate(
    req: &Incoming,
    settings: &Settings,
) -> std::result::Result<Claims, ApiError> {
    let authorization = req.header("Authorization")?;
    let query_token = query_token(req, authorization.as_deref());
    let token = extract_token(authorization.as_deref(), query_token.as_deref())
        .ok_or(ApiError::Unauthorized(AuthError::MissingToken))?;
    verify(token, settings)
}

/// Verifies a handshake's token, which may also come as an offered
/// protocol (`protocol`, read by `protocol_offer`): see `handshake_token`.
pub(crate) fn authenticate_handshake(
    req: &Incoming,
    settings: &Settings,
    protocol: Option<&str>,
) -> std::result::Result<Claims, ApiError> {
    let authorization = req.header("Authorization")?;
    let query_token = query_token(req, authorization.as_deref());
    let token = handshake_token(authorization.as_deref(), protocol, query_token.as_deref())
        .map_err(ApiError::Unauthorized)?;
    verify(token, settings)
}

/// `?token=`, unless a Bearer header decides anyway: parsing the URL costs.
fn query_token(req: &Incoming, authorization: Option<&str>) -> Option<String> {
    match bearer_token(authorization) {
        Some(_) => None,
        None => query_param(req, "token"),
    }
}

fn verify(token: &str, settings: &Settings) -> std::result::Result<Claims, ApiError> {
    let now_secs = (js_sys::Date::now() / 1000.0) as u64;
    settings
        .verify(token, now_secs)
        .map_err(ApiError::Unauthorized)
}

/// The objects' namespace binding.
pub(crate) fn namespace(env: &Env) -> std::result::Result<Namespace, ApiError> {
    js_env::namespace(env, BINDING).ok_or_else(|| {
        telemetry::error(
            "configuration",
            &format_args!("the {BINDING} binding is missing"),
        );
        ApiError::Misconfigured
    })
}

/// The stub of `user_id`'s object.
pub(crate) fn user_stub(env: &Env, user_id: &str) -> std::result::Result<ObjectStub, ApiError> {
    namespace(env)?.get_by_name(user_id).map_err(|err| {
        telemetry::error("object.stub", &format_args!("{err:?}"));
        ApiError::Unavailable
    })
}

thread_local! {
    /// Answers a failed call to an object, made once per isolate.
    pub(super) static OBJECT_FAILED: Continuation = Continuation::new(object_failed);
}

/// A failed call to an object, answered (the continuation form of
/// [`object_failure`]).
fn object_failed(err: JsValue) -> JsValue {
    http::error_js(&object_failure(err))
}

/// A failed call to an object. The object's own refusal (it rejects with
/// its error code) reaches the client as that code and its status; only a
/// failure to reach the object is logged and answered 503 `unavailable`.
pub(crate) fn object_failure(err: JsValue) -> ApiError {
    let code = err.as_string().or_else(|| {
        js_sys::Reflect::get(&err, &JsValue::from_str("message"))
            .ok()
            .and_then(|message| message.as_string())
    });
    if let Some(refusal) = code.as_deref().and_then(ApiError::from_object_code) {
        return refusal;
    }
    telemetry::error("object.call", &format_args!("unreachable: {err:?}"));
    ApiError::Unavailable
}

/// A request body that arrived (an `ArrayBuffer`), within `limit` bytes.
pub(crate) fn body_within(buffer: &JsValue, limit: usize) -> Result<Vec<u8>, ApiError> {
    let bytes = js_sys::Uint8Array::new(buffer);
    if bytes.byte_length() as usize > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(bytes.to_vec())
}

/// The checks of `/publish` and `/publish/batch` before the body: the
/// publish scope, JSON, and a declared length within the limit.
pub(crate) fn publish_checks(
    req: &Incoming,
    settings: &Settings,
) -> std::result::Result<(), ApiError> {
    // Any valid token may publish to any user (multi-tenant backends), unless
    // publishing is limited to tokens carrying PUBLISH_SCOPE.
    let claims = authenticate(req, settings)?;
    if let Some(scope) = &settings.config.publish_scope {
        if !claims.has_scope(scope) {
            return Err(ApiError::Forbidden);
        }
    }
    let content_type = req.header("Content-Type")?.unwrap_or_default();
    if !is_json_content_type(&content_type) {
        return Err(ApiError::UnsupportedMediaType);
    }
    check_declared_length(req, settings.config.max_publish_bytes)
}

/// A publish's `Idempotency-Key` (validated) and `?detail=true`.
pub(crate) fn publish_options(
    req: &Incoming,
) -> std::result::Result<(Option<IdempotencyKey>, bool), ApiError> {
    let key = req
        .header(IDEMPOTENCY_HEADER)?
        // HTTP excludes a value's surrounding whitespace.
        .map(|k| IdempotencyKey::parse(k.trim()))
        .transpose()
        .map_err(ApiError::InvalidIdempotencyKey)?;
    let detail = req.url().contains('?') && query_param(req, "detail").as_deref() == Some("true");
    Ok((key, detail))
}

fn check_declared_length(req: &Incoming, limit: usize) -> std::result::Result<(), ApiError> {
    let declared_len = req
        .header("Content-Length")?
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared_len.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}
