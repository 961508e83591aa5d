//! The worker's HTTP edge: routing, authentication, and handing upgrades and
//! publishes to the user's Durable Object.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{
    console_error, js_sys, web_sys, Env, Headers, Method, Request, RequestInit, Response, Result,
    Stub,
};

use crate::auth::{
    bearer_token, extract_token, secrets_match, AuthError, Claims, TokenVerifier, VerifiedTokens,
};
use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::http::{self, Incoming, Reply};
use crate::protocol::{self, is_json_content_type, PublishRequest};

/// The Durable Object namespace binding (see wrangler.toml).
const BINDING: &str = "HOPEFLOW_REALTIME";
/// Header carrying the authenticated user to the Durable Object, URI-encoded
/// because header values must be Latin-1 and user ids need not be.
pub const USER_ID_HEADER: &str = "X-User-ID";
/// A URL of the Durable Object's internal routes; the host is never resolved.
macro_rules! internal_url {
    ($path:literal) => {
        concat!("https://hopeflow.internal", $path)
    };
}
/// Operator-only view of one user's object; 404 unless `STATS_SECRET` is set.
const STATS_PATH: &str = "/internal/stats";
/// Header carrying `STATS_SECRET` to the stats route.
const STATS_SECRET_HEADER: &str = "X-Stats-Secret";

/// Answers one request; every error becomes its JSON error response.
pub async fn handle(req: Incoming, env: &Env) -> Result<web_sys::Response> {
    let reply = match route(req, env).await {
        Ok(reply) => reply,
        Err(err) => http::error(&err)?.into(),
    };
    Ok(reply.into_raw())
}

async fn route(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let method = req.method();
    let built = match (req.path(), method) {
        ("/health", Method::Get | Method::Head) => {
            Ok(http::json(200, &serde_json::json!({ "ok": true }))?)
        }
        ("/health", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/publish", Method::Post) => return publish(req, env).await,
        ("/publish", Method::Options) => Ok(http::preflight()?),
        ("/publish", _) => Err(ApiError::MethodNotAllowed {
            allow: "POST, OPTIONS",
        }),
        ("/", Method::Get) if is_websocket_upgrade(&req)? => connect(req, env).await,
        ("/", Method::Get) => Err(ApiError::UpgradeRequired),
        ("/", _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (STATS_PATH, Method::Get) => stats(req, env).await,
        _ => Err(ApiError::NotFound),
    };
    built.map(Reply::from)
}

/// The settings from the environment (vars and secrets alike are strings).
pub fn read_config(env: &Env) -> std::result::Result<Config, ConfigError> {
    Config::load(|name| env.var(name).ok().map(|value| value.to_string()))
}

/// The settings and the token verifier built from them.
struct Settings {
    config: Config,
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
    let built = Rc::new(Settings {
        config,
        verifier,
        seen: RefCell::new(VerifiedTokens::default()),
    });
    Ok(SETTINGS.with(|cell| cell.get_or_init(|| built).clone()))
}

/// The first value of query parameter `name`.
fn query_param(req: &Incoming, name: &str) -> Option<String> {
    crate::query::query_param(req.url(), name)
}

fn is_websocket_upgrade(req: &Incoming) -> Result<bool> {
    Ok(req
        .headers()
        .get("Upgrade")?
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")))
}

/// Verifies the request's token.
fn authenticate(req: &Incoming, settings: &Settings) -> std::result::Result<Claims, ApiError> {
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
    let claims = authenticate(&req, &settings)?;
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
        internal_url!("/connect"),
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
async fn publish(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let settings = settings(env)?;
    let config = &settings.config;
    // Any valid token may publish to any user (multi-tenant backends), unless
    // publishing is limited to tokens carrying PUBLISH_SCOPE.
    let claims = authenticate(&req, &settings)?;
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

    let envelope_json = serde_json::to_string(&envelope).map_err(|_| ApiError::Internal)?;
    let response = deliver(env, &user_id, &envelope_json).await?;
    // The outcome, already in our shape and with CORS: pass the object's
    // response on as it is, without reading it into wasm or rebuilding it.
    let status = response.status();
    if status == 200 {
        return Ok(Reply::Raw(response));
    }
    let answer = async {
        JsFuture::from(response.text()?)
            .await?
            .as_string()
            .ok_or(JsValue::NULL)
    };
    let answer = answer.await.map_err(|err| {
        console_error!("publish: reading the durable object's answer failed: {err:?}");
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
    Ok(http::json_text(status, answer)?.into())
}

/// Sends the envelope to `/deliver` on the user's object, as JS objects: the
/// `worker` crate's Request, Stub and Response wrappers cost about 8 % of a
/// publish's CPU in the profile (bench/README.md), for nothing used here.
async fn deliver(
    env: &Env,
    user_id: &str,
    envelope_json: &str,
) -> std::result::Result<web_sys::Response, ApiError> {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(envelope_json));
    let request = web_sys::Request::new_with_str_and_init(internal_url!("/deliver"), &init)
        .map_err(|_| ApiError::Internal)?;
    let namespace = env.durable_object(BINDING)?;
    let unreachable = |err: JsValue| {
        console_error!("publish: durable object unreachable: {err:?}");
        ApiError::Unavailable
    };
    let stub = namespace
        .as_ref()
        .unchecked_ref::<RawNamespace>()
        .get_by_name(user_id)
        .map_err(unreachable)?;
    let answer = JsFuture::from(stub.fetch(&request).map_err(unreachable)?)
        .await
        .map_err(unreachable)?;
    Ok(answer.unchecked_into())
}

#[wasm_bindgen]
extern "C" {
    /// A Durable Object namespace binding, as the runtime gives it.
    type RawNamespace;

    #[wasm_bindgen(method, catch, js_name = getByName)]
    fn get_by_name(this: &RawNamespace, name: &str) -> std::result::Result<RawStub, JsValue>;

    /// A stub of one object.
    type RawStub;

    #[wasm_bindgen(method, catch)]
    fn fetch(
        this: &RawStub,
        request: &web_sys::Request,
    ) -> std::result::Result<js_sys::Promise, JsValue>;
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
        .fetch_with_str(internal_url!("/stats"))
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(http::json_text(200, response.text().await?)?)
}
