//! The debug console (`/console` and the browser client it imports), off
//! unless `CONSOLE_ENABLED`.

use worker::{web_sys, Env, Response};

use crate::domain::error::ApiError;
use crate::runtime::http::{Incoming, Reply};
use crate::runtime::js::response::console_asset;
use crate::runtime::settings::settings;
use crate::runtime::telemetry;

/// `GET /console` and the module it imports; 404 unless enabled. Their
/// text comes from the JavaScript entry (`js::response::console_asset`), not from
/// the wasm.
#[inline(never)]
pub(super) fn console(req: &Incoming, env: &Env) -> Result<Reply, ApiError> {
    if !settings(env)?.config.console_enabled {
        return Err(ApiError::NotFound);
    }
    let page = req.path() == "/console";
    let headers = web_sys::Headers::new().map_err(|_| ApiError::Internal)?;
    let content_type = if page {
        "text/html; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    };
    let set = |name: &str, value: &str| headers.set(name, value).map_err(|_| ApiError::Internal);
    set("Content-Type", content_type)?;
    // Everything the page uses is served from here: nothing else may load.
    set(
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; \
         script-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    )?;
    set("X-Content-Type-Options", "nosniff")?;
    set("Cache-Control", "no-store")?;
    let response = console_asset(page, &headers).ok_or_else(|| {
        telemetry::error("console.assets", &"not handed over by the entry");
        ApiError::Internal
    })?;
    Ok(Response::from(response).into())
}
