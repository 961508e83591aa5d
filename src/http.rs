//! HTTP edge: JSON responses with CORS headers, and the one place an
//! [`ApiError`] becomes a response.

use serde::Serialize;
use worker::{console_error, Headers, Response, Result};

use crate::error::ApiError;
use crate::protocol::ErrorBody;

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: &str = "86400";

/// A JSON response carrying the CORS header every response of ours has.
pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Response> {
    json_text(status, serde_json::to_string(body)?)
}

/// A response for an already serialized JSON body.
pub fn json_text(status: u16, text: String) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json; charset=utf-8")?;
    headers.set("Access-Control-Allow-Origin", "*")?;
    Ok(Response::ok(text)?
        .with_status(status)
        .with_headers(headers))
}

/// The JSON error response for `err`.
pub fn error(err: &ApiError) -> Result<Response> {
    let message = err.to_string();
    let response = json(
        err.status(),
        &ErrorBody {
            error: err.code(),
            message: &message,
        },
    )?;
    if let ApiError::MethodNotAllowed { allow } = err {
        response.headers().set("Allow", allow)?;
    }
    if let Some(secs) = err.retry_after_secs() {
        response.headers().set("Retry-After", &secs.to_string())?;
    }
    Ok(response)
}

/// `OPTIONS /publish`: the CORS preflight answer.
pub fn preflight() -> Result<Response> {
    let headers = Headers::new();
    headers.set("Access-Control-Allow-Origin", "*")?;
    headers.set("Access-Control-Allow-Methods", "POST, OPTIONS")?;
    headers.set(
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type",
    )?;
    headers.set("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_SECS)?;
    Ok(Response::empty()?.with_status(204).with_headers(headers))
}

impl From<worker::Error> for ApiError {
    fn from(err: worker::Error) -> ApiError {
        console_error!("runtime error: {err}");
        ApiError::Internal
    }
}
