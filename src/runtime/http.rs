//! HTTP edge: the incoming request, JSON responses with CORS headers, and the
//! one place an [`ApiError`] becomes a response.

use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};
use worker::{web_sys, Headers, Method, Response, Result};

use crate::domain::error::ApiError;
use crate::domain::protocol::{known_http_method, ErrorBody, ALLOW_ORIGIN, JSON_CONTENT_TYPE};
use crate::runtime::js::ExecutionContext;
use crate::runtime::telemetry;

/// The worker's incoming request, read straight from the runtime's object.
/// `worker::Request` reads `request.cf` as it is built, which the runtime
/// answers by building a fresh object each time: 16 % of the CPU of a bare
/// `/health` in the profile (bench/README.md). Nothing here needs `cf`.
pub struct Incoming {
    inner: web_sys::Request,
    /// Read once: each `url()` of the runtime's request copies the string
    /// out of JS again.
    url: String,
    /// Fetched once: each `headers()` of the runtime's request is a call
    /// into JS, and a publish reads four of them.
    headers: Headers,
    /// The invocation's `ctx`, for work that outlives the response.
    ctx: JsValue,
}

impl Incoming {
    pub fn new(inner: web_sys::Request, ctx: JsValue) -> Incoming {
        let url = inner.url();
        let headers = Headers(inner.headers());
        Incoming {
            inner,
            url,
            headers,
            ctx,
        }
    }

    /// The invocation's `ctx` (`waitUntil`).
    pub fn ctx(&self) -> ExecutionContext {
        self.ctx.clone().unchecked_into()
    }

    /// The method. `worker::Method` reads every method it does not name
    /// (PROPFIND, QUERY, ...) as GET, which served them as GETs; they are
    /// `Report` here, which no route answers, so they get 405 on a known
    /// path and 404 elsewhere.
    pub fn method(&self) -> Method {
        let method = self.inner.method();
        if known_http_method(&method) {
            Method::from(method)
        } else {
            Method::Report
        }
    }

    /// The serialized URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's path, still percent-encoded.
    pub fn path(&self) -> &str {
        crate::domain::query::path(&self.url)
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> std::result::Result<Option<String>, ApiError> {
        self.headers
            .get(name)
            .map_err(failed("reading a request header"))
    }

    /// The runtime's request.
    pub fn raw(&self) -> &web_sys::Request {
        &self.inner
    }
}

/// An answer: built here, or a Promise of one (the runtime awaits it; no
/// Rust future does).
pub enum Reply {
    Built(Response),
    Later(JsValue),
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Built(response)
    }
}

impl Reply {
    pub fn into_js(self) -> JsValue {
        match self {
            Reply::Built(response) => web_sys::Response::from(response).into(),
            Reply::Later(promise) => promise,
        }
    }
}

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: &str = "86400";

/// A runtime call that failed, for `map_err`: logged with what it was
/// for, here at the one place that knows; 500 to the client.
pub fn failed(what: &'static str) -> impl Fn(worker::Error) -> ApiError {
    move |err| {
        telemetry::error(what, &err);
        ApiError::Internal
    }
}

/// A JSON response carrying the CORS header every response of ours has.
pub fn json<T: Serialize>(status: u16, body: &T) -> std::result::Result<Response, ApiError> {
    let text = serde_json::to_string(body).map_err(|err| {
        telemetry::error("http.json", &err);
        ApiError::Internal
    })?;
    json_text(status, text).map_err(failed("building a JSON response"))
}

/// A response for an already serialized JSON body.
fn json_text(status: u16, text: String) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", JSON_CONTENT_TYPE)?;
    headers.set(ALLOW_ORIGIN.0, ALLOW_ORIGIN.1)?;
    Ok(Response::ok(text)?
        .with_status(status)
        .with_headers(headers))
}

/// The JSON error response for `err`, as the runtime's object.
#[cold]
#[inline(never)]
pub fn error_js(err: &ApiError) -> JsValue {
    match error(err) {
        Ok(response) => web_sys::Response::from(response).into(),
        // Only a broken runtime fails to build a response.
        Err(why) => {
            telemetry::error("http.error", &why);
            JsValue::UNDEFINED
        }
    }
}

/// The JSON error response for `err`.
#[cold]
#[inline(never)]
pub fn error(err: &ApiError) -> Result<Response> {
    let message = err.to_string();
    let body = ErrorBody {
        error: err.code(),
        message: &message,
    };
    let text = serde_json::to_string(&body)?;
    let response = json_text(err.status(), text)?;
    if let ApiError::MethodNotAllowed { allow } = err {
        response.headers().set("Allow", allow)?;
    }
    // RFC 9110: a 426 names the protocol to upgrade to.
    if let ApiError::UpgradeRequired = err {
        response.headers().set("Upgrade", "websocket")?;
    }
    if let Some(secs) = err.retry_after_secs() {
        response.headers().set("Retry-After", &secs.to_string())?;
    }
    Ok(response)
}

/// `OPTIONS`: the CORS preflight answer for a route answering `allow`.
#[inline(never)]
pub fn preflight(allow: &str) -> std::result::Result<Response, ApiError> {
    preflight_response(allow).map_err(failed("building a preflight answer"))
}

fn preflight_response(allow: &str) -> Result<Response> {
    let headers = Headers::new();
    headers.set(ALLOW_ORIGIN.0, ALLOW_ORIGIN.1)?;
    headers.set("Access-Control-Allow-Methods", allow)?;
    headers.set(
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type, Idempotency-Key",
    )?;
    headers.set("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_SECS)?;
    Ok(Response::empty()?.with_status(204).with_headers(headers))
}
