//! The worker's HTTP edge: routing, authentication, and handing upgrades and
//! publishes to the user's Durable Object.

use std::cell::OnceCell;
use std::rc::Rc;

use worker::{
    console_error, js_sys, Env, Headers, Method, Request, RequestInit, Response, Result, Stub,
};

use crate::auth::{bearer_token, extract_token, secrets_match, AuthError, Claims, TokenVerifier};
use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::http::{self, Incoming};
use crate::protocol::{self, is_json_content_type, PublishRequest};

/// The Durable Object namespace binding (see wrangler.toml).
const BINDING: &str = "HOPEFLOW_REALTIME";
/// Header carrying the authenticated user to the Durable Object, URI-encoded
/// because header values must be Latin-1 and user ids need not be.
pub const USER_ID_HEADER: &str = "X-User-ID";
/// Base of the Durable Object's internal routes; the host is never resolved.
const INTERNAL_ORIGIN: &str = "https://hopeflow.internal";
/// Operator-only view of one user's object; 404 unless `STATS_SECRET` is set.
const STATS_PATH: &str = "/internal/stats";
/// Header carrying `STATS_SECRET` to the stats route.
const STATS_SECRET_HEADER: &str = "X-Stats-Secret";

/// Answers one request; every error becomes its JSON error response.
pub async fn handle(req: Incoming, env: &Env) -> Result<Response> {
    match route(req, env).await {
        Ok(response) => Ok(response),
        Err(err) => http::error(&err),
    }
}

async fn route(req: Incoming, env: &Env) -> std::result::Result<Response, ApiError> {
    // `path()` is cut from the URL string; `url()` would parse it.
    let path = req.path();
    let method = req.method();
    match (path.as_str(), method) {
        ("/health", Method::Get | Method::Head) => {
            Ok(http::json(200, &serde_json::json!({ "ok": true }))?)
        }
        ("/health", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/publish", Method::Post) => publish(req, env).await,
        ("/publish", Method::Options) => Ok(http::preflight()?),
        ("/publish", _) => Err(ApiError::MethodNotAllowed {
            allow: "POST, OPTIONS",
        }),
        ("/", Method::Get) if is_websocket_upgrade(&req)? => connect(req, env).await,
        ("/", Method::Get) => Err(ApiError::UpgradeRequired),
        ("/", _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (STATS_PATH, Method::Get) => stats(req, env).await,
        _ => Err(ApiError::NotFound),
    }
}

/// The settings from the environment (vars and secrets alike are strings).
pub fn read_config(env: &Env) -> std::result::Result<Config, ConfigError> {
    Config::load(|name| env.var(name).ok().map(|value| value.to_string()))
}

/// The settings and the token verifier built from them.
struct Settings {
    config: Config,
    verifier: TokenVerifier,
}

thread_local! {
    /// Built by an isolate's first request and then kept: an isolate's vars
    /// and secrets never change (a deploy or a `wrangler dev` reload starts a
    /// new isolate). Reading a dozen vars through `env` and building the
    /// verifier on every request showed up in the profile (bench/README.md).
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
}

/// The settings; an invalid one refuses the request (and says why in the
/// log, on every request, since errors are not kept).
fn settings(env: &Env) -> std::result::Result<Rc<Settings>, ApiError> {
    if let Some(settings) = SETTINGS.with(|cell| cell.get().cloned()) {
        return Ok(settings);
    }
    let config = read_config(env).map_err(|err| {
        console_error!("configuration error: {err}");
        ApiError::Misconfigured
    })?;
    let verifier = TokenVerifier::new(&config.secrets, &config.auth);
    let built = Rc::new(Settings { config, verifier });
    Ok(SETTINGS.with(|cell| cell.get_or_init(|| built).clone()))
}

/// The first value of query parameter `name`.
fn query_param(req: &Incoming, name: &str) -> Option<String> {
    crate::query::query_param(&req.url(), name)
}

fn is_websocket_upgrade(req: &Incoming) -> Result<bool> {
    Ok(req
        .headers()
        .get("Upgrade")?
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")))
}

/// Verifies the request's token.
fn authenticate(req: &Incoming, verifier: &TokenVerifier) -> std::result::Result<Claims, ApiError> {
    let authorization = req.headers().get("Authorization")?;
    // Parsing the URL costs; skip it when the header decides anyway.
    let query_token = match bearer_token(authorization.as_deref()) {
        Some(_) => None,
        None => query_param(req, "token"),
    };
    let token = extract_token(authorization.as_deref(), query_token.as_deref())
        .ok_or(ApiError::Unauthorized(AuthError::MissingToken))?;
    let now_secs = (js_sys::Date::now() / 1000.0) as u64;
    verifier
        .verify(token, now_secs)
        .map_err(ApiError::Unauthorized)
}

fn user_stub(env: &Env, user_id: &str) -> std::result::Result<Stub, ApiError> {
    Ok(env.durable_object(BINDING)?.get_by_name(user_id)?)
}

/// WebSocket upgrade: hand the request to the user's Durable Object.
async fn connect(req: Incoming, env: &Env) -> std::result::Result<Response, ApiError> {
    let settings = settings(env)?;
    if !settings
        .config
        .origin_allowed(req.headers().get("Origin")?.as_deref())
    {
        return Err(ApiError::OriginNotAllowed);
    }
    let claims = authenticate(&req, &settings.verifier)?;
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        // The client must not choose the user id the object sees.
        if !name.eq_ignore_ascii_case(USER_ID_HEADER) {
            headers.set(&name, &value)?;
        }
    }
    let encoded_user: String = js_sys::encode_uri_component(&claims.user_id).into();
    headers.set(USER_ID_HEADER, &encoded_user)?;
    let forwarded = Request::new_with_init(
        &format!("{INTERNAL_ORIGIN}/connect"),
        RequestInit::new()
            .with_method(Method::Get)
            .with_headers(headers),
    )?;
    user_stub(env, &claims.user_id)?
        .fetch_with_request(forwarded)
        .await
        .map_err(|err| {
            console_error!("connect: durable object unreachable: {err}");
            ApiError::Unavailable
        })
}

/// `POST /publish`: validate, stamp an envelope id, and let the target user's
/// Durable Object deliver it and collect acks.
async fn publish(req: Incoming, env: &Env) -> std::result::Result<Response, ApiError> {
    let settings = settings(env)?;
    let config = &settings.config;
    // Any valid token may publish to any user (multi-tenant backends), unless
    // publishing is limited to tokens carrying PUBLISH_SCOPE.
    let claims = authenticate(&req, &settings.verifier)?;
    if let Some(scope) = &config.publish_scope {
        if !claims.has_scope(scope) {
            return Err(ApiError::Forbidden);
        }
    }
    let content_type = req.headers().get("Content-Type")?.unwrap_or_default();
    if !is_json_content_type(&content_type) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limit = config.max_publish_bytes;
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared_len = req
        .headers()
        .get("Content-Length")?
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared_len.is_some_and(|len| len > limit) {
        return Err(too_large);
    }
    let body = req.bytes().await?;
    if body.len() > limit {
        return Err(too_large);
    }
    let request = PublishRequest::parse(&body).map_err(ApiError::InvalidBody)?;
    let user_id = request.user_id.clone();
    let envelope = request.into_envelope(uuid::Uuid::new_v4().to_string());

    // Internal: the object reads the body as JSON without looking at headers.
    let deliver = Request::new_with_init(
        &format!("{INTERNAL_ORIGIN}/deliver"),
        RequestInit::new().with_method(Method::Post).with_body(Some(
            serde_json::to_string(&envelope)
                .map_err(|_| ApiError::Internal)?
                .into(),
        )),
    )?;
    let mut response = user_stub(env, &user_id)?
        .fetch_with_request(deliver)
        .await
        .map_err(|err| {
            console_error!("publish: durable object unreachable: {err}");
            ApiError::Unavailable
        })?;
    let status = response.status_code();
    // The outcome, already in our shape and with CORS: hand the object's
    // response on instead of reading its body into wasm and copying it.
    if status == 200 {
        return Ok(response);
    }
    let answer = response.text().await.map_err(|err| {
        console_error!("publish: reading the durable object's answer failed: {err}");
        ApiError::Unavailable
    })?;
    // An error body in our API's shape (such as `server_misconfigured`)
    // passes through; anything else is the runtime failing the object.
    let is_api_error = serde_json::from_str::<serde_json::Value>(&answer)
        .is_ok_and(|body| body.get("error").is_some_and(serde_json::Value::is_string));
    if !is_api_error {
        console_error!("publish: durable object failed with status {status}");
        return Err(ApiError::Unavailable);
    }
    Ok(http::json_text(status, answer)?)
}

/// `GET /internal/stats?userId=U` with `X-Stats-Secret`: the user's open
/// sockets and publishes waiting for acks. Hidden (404) unless `STATS_SECRET`
/// is set, and for requests without the right secret, so it reveals nothing.
async fn stats(req: Incoming, env: &Env) -> std::result::Result<Response, ApiError> {
    let settings = settings(env)?;
    let config = &settings.config;
    let given = req.headers().get(STATS_SECRET_HEADER)?.unwrap_or_default();
    let allowed = config
        .stats_secret
        .as_deref()
        .is_some_and(|secret| secrets_match(secret.as_bytes(), given.as_bytes()));
    if !allowed {
        return Err(ApiError::NotFound);
    }
    let user_id = query_param(&req, "userId")
        .filter(|id| !id.is_empty())
        .ok_or(ApiError::InvalidBody(protocol::PublishError::InvalidUserId))?;
    let mut response = user_stub(env, &user_id)?
        .fetch_with_str(&format!("{INTERNAL_ORIGIN}/stats"))
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(http::json_text(200, response.text().await?)?)
}
