//! `POST /publish`, the hot path: checked before the body, the body read
//! and validated, the envelope handed to the user's object over RPC. No
//! Rust future: the runtime's Promises chained with continuations made
//! once per isolate (`js::promise`).

use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, Env};

use super::operator;
use super::request::{
    body_within, namespace, object_failure, publish_checks, publish_options, OBJECT_FAILED,
};
use crate::domain::error::ApiError;
use crate::domain::protocol::PublishRequest;
use crate::runtime::http::{self, Incoming, Reply};
use crate::runtime::ids;
use crate::runtime::js::env as js_env;
use crate::runtime::js::promise::{split_answer, Continuation};
use crate::runtime::js::response::json_200;
use crate::runtime::js::Namespace;
use crate::runtime::settings::{settings, shared};
use crate::runtime::telemetry;

thread_local! {
    /// The continuations of the publish, made once per isolate.
    static PUBLISH_BODY: Continuation = Continuation::new3(publish_body);
    static BODY_UNREADABLE: Continuation = Continuation::new(body_unreadable);
    static PUBLISHED: Continuation = Continuation::new2(published);
}

/// `POST /publish`: validate, stamp an envelope id, and let the target user's
/// Durable Object deliver it and collect acks. Everything that can be
/// checked before the body is, then the body is read (`publish_body`).
pub(super) fn publish(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    // The `publish` line's time runs from here.
    let received_ms = js_sys::Date::now();
    let settings = settings(env)?;
    publish_checks(&req, &settings)?;
    // A key or `?detail=true` takes the slower path of options; a plain
    // publish pays one header lookup and no URL parse for them.
    let (key, detail) = publish_options(&req)?;
    if key.is_some() || detail {
        return operator::publish_with_options(req, env, key, detail, received_ms);
    }
    let namespace = namespace(env)?;
    let body = js_env::read_body(req.raw()).map_err(|_| ApiError::Internal)?;
    // What the line needs besides the body: when, and the invocation's ctx.
    let request = js_sys::Array::of2(&JsValue::from_f64(received_ms), &req.ctx());
    let answer = PUBLISH_BODY.with(|on_body| {
        BODY_UNREADABLE.with(|on_err| body.then_with2(on_body, &namespace, &request, on_err))
    });
    Ok(Reply::Later(answer))
}

/// The publish body has arrived: the answer, or a Promise of it.
fn publish_body(namespace: JsValue, request: JsValue, body: JsValue) -> JsValue {
    let request: js_sys::Array = request.unchecked_into();
    let received_ms = request.get(0).as_f64().unwrap_or_else(js_sys::Date::now);
    let ctx = request.get(1);
    match hand_over(namespace.unchecked_into(), received_ms, &ctx, &body) {
        Ok(answer) => answer,
        Err(err) => http::error_js(&err),
    }
}

fn body_unreadable(err: JsValue) -> JsValue {
    telemetry::error("publish.body", &format_args!("{err:?}"));
    http::error_js(&ApiError::Internal)
}

/// The object's answer, `{clientCount, results}` as JSON text, and the
/// publish's log line, written with the isolate's others.
fn published(ctx: JsValue, answer: JsValue) -> JsValue {
    let (answer, line) = split_answer(answer);
    if let Some(line) = line {
        telemetry::write_publish_line(line, ctx.unchecked_ref());
    }
    json_200(&answer).into()
}

/// Validates the body and hands the envelope to the user's object (its
/// `deliver`, over RPC).
fn hand_over(
    namespace: Namespace,
    received_ms: f64,
    ctx: &JsValue,
    body: &JsValue,
) -> std::result::Result<JsValue, ApiError> {
    // Built by `publish`, which comes first.
    let settings = shared().ok_or(ApiError::Internal)?;
    let body = body_within(body, settings.config.max_publish_bytes)?;
    let mut request = PublishRequest::parse(&body).map_err(ApiError::InvalidBody)?;
    let stub = namespace
        .get_by_name(&request.user_id)
        .map_err(object_failure)?;
    // Taken, not copied: the envelope needs only the type and payload.
    let user_id = std::mem::take(&mut request.user_id);
    let envelope = request.into_envelope(ids::envelope_id());
    let envelope_json = envelope.to_text().ok_or(ApiError::Internal)?;
    let answer = stub
        .deliver(
            &JsValue::from_str(&envelope_json),
            &JsValue::UNDEFINED,
            &user_id,
            received_ms,
        )
        .map_err(object_failure)?;
    Ok(PUBLISHED.with(|on_ok| OBJECT_FAILED.with(|on_err| answer.then_with(on_ok, ctx, on_err))))
}
