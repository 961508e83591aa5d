//! The worker's HTTP edge: routing, authentication, and handing upgrades and
//! publishes to the user's Durable Object.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use wasm_bindgen::{JsCast, JsValue};
use worker::{console_error, js_sys, web_sys, Env, Method, Result};

use crate::auth::{
    bearer_token, extract_token, AuthError, Claims, RefreshRefusal, TokenVerifier, VerifiedTokens,
};
use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::glue::{self, Continuation, Namespace, ObjectStub};
use crate::http::{self, Incoming, Reply};
use crate::idempotency::{IdempotencyKey, HEADER as IDEMPOTENCY_HEADER};
use crate::operator::{self, BadUserPath};
use crate::operator_routes;
use crate::protocol::{is_json_content_type, PublishRequest};

/// The Durable Object namespace binding (see wrangler.toml).
const BINDING: &str = "HOPEFLOW_REALTIME";
/// Header carrying the authenticated user to the Durable Object, URI-encoded
/// because header values must be Latin-1 and user ids need not be.
pub const USER_ID_HEADER: &str = "X-User-ID";
/// Header carrying the token's `exp` (unix seconds) to the Durable Object;
/// absent for a token without one. Like [`USER_ID_HEADER`], never the
/// client's own.
pub const TOKEN_EXP_HEADER: &str = "X-Token-Exp";
/// A URL of the Durable Object's internal routes; the host is never resolved.
macro_rules! internal_url {
    ($path:literal) => {
        concat!("https://hopeflow.internal", $path)
    };
}

/// Answers one request: a `Response`, or a Promise of one; every error
/// becomes its JSON error response.
pub fn handle(req: Incoming, env: &Env) -> JsValue {
    match route(req, env) {
        Ok(reply) => reply.into_js(),
        Err(err) => http::error_js(&err),
    }
}

/// Every route but `/publish` is `#[inline(never)]`, here and in
/// `operator_routes`: V8 recompiles a hot function with all that was
/// inlined into it, cold routes included (bench/README.md, row 22).
fn route(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let method = req.method();
    match (req.path(), method) {
        ("/health", Method::Get | Method::Head) => health(),
        ("/health", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/publish", Method::Post) => publish(req, env),
        ("/publish/batch", Method::Post) => operator_routes::batch(req, env),
        ("/publish" | "/publish/batch", Method::Options) => {
            Ok(http::preflight("POST, OPTIONS")?.into())
        }
        ("/publish" | "/publish/batch", _) => Err(ApiError::MethodNotAllowed {
            allow: "POST, OPTIONS",
        }),
        ("/", Method::Get) if is_websocket_upgrade(&req)? => connect(req, env),
        ("/", Method::Get) => handshake_checks(&req, env).and(Err(ApiError::UpgradeRequired)),
        ("/", _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        ("/console" | "/console/hopeflow.js", Method::Get | Method::Head) => {
            operator_routes::console(&req, env)
        }
        ("/console" | "/console/hopeflow.js", _) if settings(env)?.config.console_enabled => {
            Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" })
        }
        (_, method) => user_route(req, env, method),
    }
}

#[inline(never)]
fn health() -> std::result::Result<Reply, ApiError> {
    Ok(http::json(200, &serde_json::json!({ "ok": true }))?.into())
}

/// `/users/{userId}/…`, or 404.
#[inline(never)]
fn user_route(req: Incoming, env: &Env, method: Method) -> std::result::Result<Reply, ApiError> {
    match operator::user_route(req.path()) {
        Some(Ok((user_id, route))) => operator_routes::user(req, env, user_id, route, method),
        Some(Err(BadUserPath::InvalidUserId)) => Err(ApiError::InvalidUserPath),
        Some(Err(BadUserPath::NotFound)) | None => Err(ApiError::NotFound),
    }
}

/// The settings from the environment (vars and secrets alike are strings),
/// read straight off the `env` object: `Env::var` formats each value
/// through `Display`, which was a sixth of the first publish's busy time
/// in the profile (bench/README.md, "Cold start").
fn read_config(env: &Env) -> std::result::Result<Config, ConfigError> {
    Config::load(|name| {
        js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name))
            .ok()
            .and_then(|value| value.as_string())
    })
}

/// The settings and the token verifier built from them.
pub struct Settings {
    pub config: Config,
    verifier: TokenVerifier,
    /// Tokens `verifier` has already checked the signature of.
    seen: RefCell<VerifiedTokens>,
}

thread_local! {
    /// Built by an isolate's first request and then kept: an isolate's vars
    /// and secrets never change (a deploy or a `wrangler dev` reload starts a
    /// new isolate). Reading a dozen vars through `env` and building the
    /// verifier on every request showed up in the profile (bench/README.md).
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
}

/// The settings, shared by the worker and the objects of the isolate; an
/// invalid one refuses the request (and says why in the log, on every
/// request, since errors are not kept).
pub fn settings(env: &Env) -> std::result::Result<Rc<Settings>, ApiError> {
    match SETTINGS.with(|cell| cell.get().cloned()) {
        Some(settings) => Ok(settings),
        None => build_settings(env),
    }
}

impl Settings {
    /// A `refresh` frame's token for a socket of `user_id` (see
    /// [`TokenVerifier::verify_refresh`]); the new token's `exp`.
    pub fn verify_refresh(
        &self,
        token: Option<&str>,
        user_id: &str,
        now_secs: u64,
    ) -> std::result::Result<Option<u64>, RefreshRefusal> {
        self.verifier.verify_refresh(token, user_id, now_secs)
    }
}

/// The isolate's first request builds the settings. Out of line: inlined
/// into [`settings`], which every request calls, it made V8 recompile this
/// cold code with the hot path's optimizing tier (bench/README.md, row 22).
#[cold]
#[inline(never)]
fn build_settings(env: &Env) -> std::result::Result<Rc<Settings>, ApiError> {
    let config = read_config(env).map_err(|err| {
        console_error!("configuration error: {err}");
        ApiError::Misconfigured
    })?;
    let verifier = TokenVerifier::new(&config.secrets, &config.auth);
    let built = Rc::new(Settings {
        config,
        verifier,
        seen: RefCell::new(VerifiedTokens::default()),
    });
    Ok(SETTINGS.with(|cell| cell.get_or_init(|| built).clone()))
}

/// The first value of query parameter `name`.
pub(crate) fn query_param(req: &Incoming, name: &str) -> Option<String> {
    crate::query::query_param(req.url(), name)
}

fn is_websocket_upgrade(req: &Incoming) -> Result<bool> {
    Ok(req
        .headers()
        .get("Upgrade")?
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")))
}

/// Verifies the request's token.
pub(crate) fn authenticate(
    req: &Incoming,
    settings: &Settings,
) -> std::result::Result<Claims, ApiError> {
    let authorization = req.headers().get("Authorization")?;
    // Parsing the URL costs; skip it when the header decides anyway.
    let query_token = match bearer_token(authorization.as_deref()) {
        Some(_) => None,
        None => query_param(req, "token"),
    };
    let token = extract_token(authorization.as_deref(), query_token.as_deref())
        .ok_or(ApiError::Unauthorized(AuthError::MissingToken))?;
    let now_secs = (js_sys::Date::now() / 1000.0) as u64;
    settings
        .verifier
        .verify_cached(token, now_secs, &mut settings.seen.borrow_mut())
        .map_err(ApiError::Unauthorized)
}

/// The objects' namespace binding.
pub(crate) fn namespace(env: &Env) -> std::result::Result<Namespace, ApiError> {
    glue::namespace(env, BINDING).ok_or_else(|| {
        console_error!("the {BINDING} binding is missing");
        ApiError::Misconfigured
    })
}

/// The stub of `user_id`'s object.
pub(crate) fn user_stub(env: &Env, user_id: &str) -> std::result::Result<ObjectStub, ApiError> {
    namespace(env)?.get_by_name(user_id).map_err(|err| {
        console_error!("durable object stub: {err:?}");
        ApiError::Unavailable
    })
}

/// A failed call to an object becomes 503 `unavailable` (the continuation
/// form of [`unavailable_err`]).
fn unavailable(err: JsValue) -> JsValue {
    http::error_js(&unavailable_err(err))
}

thread_local! {
    /// The continuations of the routes that wait for the runtime, made once
    /// per isolate (see `glue`).
    static UNAVAILABLE: Continuation = Continuation::new(unavailable);
    static PUBLISH_BODY: Continuation = Continuation::new2(publish_body);
    static BODY_UNREADABLE: Continuation = Continuation::new(body_unreadable);
    static PUBLISHED: Continuation = Continuation::new(published);
}

/// What a handshake checks before it reaches the object: the origin, then
/// the token. A plain `GET /` runs them too and answers 426 only when they
/// pass, because a browser cannot read why a WebSocket handshake failed:
/// its client asks this way whether a refusal was the token's fault.
#[inline(never)]
fn handshake_checks(req: &Incoming, env: &Env) -> std::result::Result<Claims, ApiError> {
    let settings = settings(env)?;
    if !settings
        .config
        .origin_allowed(req.headers().get("Origin")?.as_deref())
    {
        return Err(ApiError::OriginNotAllowed);
    }
    authenticate(req, &settings)
}

/// WebSocket upgrade: hand the request to the user's Durable Object; its
/// answer (the 101 with the client socket) is passed on as it is.
#[inline(never)]
fn connect(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let claims = handshake_checks(&req, env)?;
    // A copy of the client's headers, in one call; the client must not
    // choose the user id the object sees, so ours replaces any it sent.
    let headers =
        web_sys::Headers::new_with_headers(&req.raw().headers()).map_err(|_| ApiError::Internal)?;
    let encoded_user: String = js_sys::encode_uri_component(&claims.user_id).into();
    headers
        .set(USER_ID_HEADER, &encoded_user)
        .map_err(|_| ApiError::Internal)?;
    let expiry = match claims.expires_at {
        Some(exp) => headers.set(TOKEN_EXP_HEADER, &exp.to_string()),
        None => headers.delete(TOKEN_EXP_HEADER),
    };
    expiry.map_err(|_| ApiError::Internal)?;
    let init = web_sys::RequestInit::new();
    init.set_headers(&headers);
    let forwarded = web_sys::Request::new_with_str_and_init(internal_url!("/connect"), &init)
        .map_err(|_| ApiError::Internal)?;
    let answer = user_stub(env, &claims.user_id)?
        .fetch(&forwarded)
        .map_err(unavailable_err)?;
    Ok(Reply::Later(
        UNAVAILABLE.with(|on_err| answer.or_else(on_err)),
    ))
}

/// A failed call to an object: logged, and 503 `unavailable` to the client.
pub(crate) fn unavailable_err(err: JsValue) -> ApiError {
    console_error!("durable object unreachable: {err:?}");
    ApiError::Unavailable
}

/// `POST /publish`: validate, stamp an envelope id, and let the target user's
/// Durable Object deliver it and collect acks. Everything that can be
/// checked before the body is, then the body is read (`publish_body`).
fn publish(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let settings = settings(env)?;
    publish_checks(&req, &settings)?;
    // A key or `?detail=true` takes the slower path of options; a plain
    // publish pays one header lookup and no URL parse for them.
    let (key, detail) = publish_options(&req)?;
    if key.is_some() || detail {
        return operator_routes::publish_with_options(req, env, key, detail);
    }
    let namespace = namespace(env)?;
    let body = glue::read_body(req.raw()).map_err(|_| ApiError::Internal)?;
    let answer = PUBLISH_BODY
        .with(|on_body| BODY_UNREADABLE.with(|on_err| body.then_with(on_body, &namespace, on_err)));
    Ok(Reply::Later(answer))
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
    let content_type = req.headers().get("Content-Type")?.unwrap_or_default();
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
        .headers()
        .get(IDEMPOTENCY_HEADER)?
        // HTTP excludes a value's surrounding whitespace.
        .map(|k| IdempotencyKey::parse(k.trim()))
        .transpose()
        .map_err(ApiError::InvalidIdempotencyKey)?;
    let detail = req.url().contains('?') && query_param(req, "detail").as_deref() == Some("true");
    Ok((key, detail))
}

fn check_declared_length(req: &Incoming, limit: usize) -> std::result::Result<(), ApiError> {
    let declared_len = req
        .headers()
        .get("Content-Length")?
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared_len.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

/// The publish body has arrived: the answer, or a Promise of it.
fn publish_body(namespace: JsValue, body: JsValue) -> JsValue {
    match deliver(namespace.unchecked_into(), &body) {
        Ok(answer) => answer,
        Err(err) => http::error_js(&err),
    }
}

fn body_unreadable(err: JsValue) -> JsValue {
    console_error!("publish: reading the body failed: {err:?}");
    http::error_js(&ApiError::Internal)
}

/// The object's answer, `{clientCount, results}` as JSON text.
fn published(answer: JsValue) -> JsValue {
    glue::json_200(&answer).into()
}

/// Validates the body and hands the envelope to the user's object
/// (`deliver`, over RPC).
fn deliver(namespace: Namespace, body: &JsValue) -> std::result::Result<JsValue, ApiError> {
    // Built by `publish`, which comes first.
    let settings = SETTINGS
        .with(|cell| cell.get().cloned())
        .ok_or(ApiError::Internal)?;
    let limit = settings.config.max_publish_bytes;
    let body = js_sys::Uint8Array::new(body);
    if body.byte_length() as usize > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let request = PublishRequest::parse(&body.to_vec()).map_err(ApiError::InvalidBody)?;
    let stub = namespace
        .get_by_name(&request.user_id)
        .map_err(unavailable_err)?;
    let envelope = request.into_envelope(uuid::Uuid::new_v4().to_string());
    let envelope_json = envelope.to_text().ok_or(ApiError::Internal)?;
    let answer = stub
        .deliver(&JsValue::from_str(&envelope_json))
        .map_err(unavailable_err)?;
    Ok(PUBLISHED.with(|on_ok| UNAVAILABLE.with(|on_err| answer.then(on_ok, on_err))))
}
