//! The worker's HTTP edge: routing, and the routes' modules (the handshake,
//! the publish hot path, the operator API and the routes off the hot path,
//! the console), which share `request`.

mod connect;
mod console;
mod operator;
mod publish;
mod request;

use wasm_bindgen::JsValue;
use worker::{Env, Method};

use crate::domain::error::ApiError;
use crate::domain::logs::{Event, Level};
use crate::domain::operator::{self as operator_paths, BadUserPath};
use crate::runtime::http::{self, Incoming, Reply};

/// Answers one request: a `Response`, or a Promise of one; every error
/// becomes its JSON error response.
pub fn handle(req: Incoming, env: &Env) -> JsValue {
    let label = operator_paths::route_label(req.path());
    match route(req, env) {
        Ok(reply) => reply.into_js(),
        Err(err) => {
            if err.is_auth_refusal() {
                auth_refused(label, &err);
            }
            http::error_js(&err)
        }
    }
}

/// An `auth.refused` line, folded: at most one per second per code in
/// this isolate (a flood of bad tokens is not a flood of lines).
#[cold]
#[inline(never)]
fn auth_refused(route: &'static str, err: &ApiError) {
    let Some(settings) = crate::runtime::settings::shared() else {
        return;
    };
    let (status, code) = (err.status(), err.code());
    let now_ms = worker::js_sys::Date::now();
    let telemetry = &settings.telemetry;
    if let Some(count) = telemetry.admit("auth.refused", code, Level::Info, now_ms) {
        telemetry.log(&Event::AuthRefused {
            route,
            status,
            code,
            count,
        });
    }
}

/// Every route but `/publish` is `#[inline(never)]`, here and in
/// the other route modules: V8 recompiles a hot function with all that was
/// inlined into it, cold routes included (bench/README.md, row 22).
fn route(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let method = req.method();
    match (req.path(), method) {
        ("/health", Method::Get | Method::Head) => health(),
        ("/health", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/publish", Method::Post) => publish::publish(req, env),
        ("/publish/batch", Method::Post) => operator::batch(req, env),
        ("/publish" | "/publish/batch", Method::Options) => {
            Ok(http::preflight("POST, OPTIONS")?.into())
        }
        ("/publish" | "/publish/batch", _) => Err(ApiError::MethodNotAllowed {
            allow: "POST, OPTIONS",
        }),
        ("/", Method::Get) if connect::is_websocket_upgrade(&req)? => connect::connect(req, env),
        ("/", Method::Get) => {
            connect::handshake_checks(&req, env).and(Err(ApiError::UpgradeRequired))
        }
        // A browser's client asks `GET /` with its token in a header, which
        // a page of another origin must ask for first.
        ("/", Method::Options) => Ok(http::preflight("GET, OPTIONS")?.into()),
        ("/", _) => Err(ApiError::MethodNotAllowed {
            allow: "GET, OPTIONS",
        }),
        ("/console" | "/console/hopeflow.js", Method::Get | Method::Head) => {
            console::console(&req, env)
        }
        // Enabled or not: the route exists, so another method is 405.
        ("/console" | "/console/hopeflow.js", _) => {
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
    match operator_paths::user_route(req.path()) {
        Some(Ok((user_id, route))) => operator::user(req, env, user_id, route, method),
        Some(Err(BadUserPath::InvalidUserId)) => Err(ApiError::InvalidUserPath),
        Some(Err(BadUserPath::NotFound)) | None => Err(ApiError::NotFound),
    }
}
