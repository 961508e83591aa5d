//! The routes off the hot path: the operator API (`/users/{userId}/sockets`,
//! `/users/{userId}/disconnect`), `/publish/batch`, publishes with
//! `Idempotency-Key` or `?detail=true`.
//!
//! These await with `async` Rust (the wasm-bindgen futures executor): the
//! hand-made continuations of `publish`/`js::promise` pay off only on the
//! plain publish path, and these read better as straight-line code.

use futures::future::join_all;
use serde_json::Value;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::{future_to_promise, JsFuture};
use worker::{js_sys, web_sys, Env, Method};

use super::request::{
    authenticate, body_within, namespace, object_failure, publish_checks, publish_options,
    user_stub,
};
use crate::domain::error::ApiError;
use crate::domain::idempotency::{
    batch_fingerprint, publish_fingerprint, DeliverOptions, IdempotencyKey, Receipt,
    REPLAYED_HEADER,
};
use crate::domain::operator::{batch_entry, DisconnectRequest, UserRoute};
use crate::domain::protocol::{BatchRequest, PublishRequest};
use crate::runtime::http::{self, Incoming, Reply};
use crate::runtime::ids;
use crate::runtime::js::env::read_body;
use crate::runtime::js::promise::split_answer;
use crate::runtime::js::response::json_200;
use crate::runtime::js::{ExecutionContext, Namespace, Thenable};
use crate::runtime::settings::{settings, Settings};
use crate::runtime::telemetry;

/// A route of `/users/{userId}/...`.
#[inline(never)]
pub fn user(
    req: Incoming,
    env: &Env,
    user_id: String,
    route: UserRoute,
    method: Method,
) -> Result<Reply, ApiError> {
    let allow = match route {
        UserRoute::Sockets => "GET, HEAD, OPTIONS",
        UserRoute::Disconnect => "POST, OPTIONS",
    };
    match (&route, method) {
        (_, Method::Options) => return Ok(http::preflight(allow)?.into()),
        (UserRoute::Sockets, Method::Get | Method::Head)
        | (UserRoute::Disconnect, Method::Post) => {}
        _ => return Err(ApiError::MethodNotAllowed { allow }),
    }
    let settings = settings(env)?;
    require_operator(&req, &settings)?;
    let stub = user_stub(env, &user_id)?;
    match route {
        UserRoute::Sockets => {
            let answer = stub.sockets(&user_id).map_err(object_failure)?;
            Ok(later(async move { json_answer(&answer).await }))
        }
        UserRoute::Disconnect => {
            let body = read_body(req.raw()).map_err(|_| ApiError::Internal)?;
            let limit = settings.config.max_publish_bytes;
            Ok(later(async move {
                let body = body_bytes(&body, limit).await?;
                let request =
                    DisconnectRequest::parse(&body).map_err(ApiError::InvalidDisconnect)?;
                let answer = stub
                    .disconnect(&request.to_text())
                    .map_err(object_failure)?;
                json_answer(&answer).await
            }))
        }
    }
}

/// Operator routes need `OPERATOR_SCOPE` in the token's scope, always.
fn require_operator(req: &Incoming, settings: &Settings) -> Result<(), ApiError> {
    let claims = authenticate(req, settings)?;
    if claims.has_scope(&settings.config.operator_scope) {
        Ok(())
    } else {
        Err(ApiError::NotOperator)
    }
}

/// A publish's body on its way, and what handing it over needs.
struct PendingBody {
    namespace: Namespace,
    body: Thenable,
    limit: usize,
}

impl PendingBody {
    fn of(req: &Incoming, env: &Env) -> Result<PendingBody, ApiError> {
        Ok(PendingBody {
            limit: settings(env)?.config.max_publish_bytes,
            namespace: namespace(env)?,
            body: read_body(req.raw()).map_err(|_| ApiError::Internal)?,
        })
    }

    /// The body, within the limit.
    async fn read(self) -> Result<(Namespace, Vec<u8>), ApiError> {
        let body = body_bytes(&self.body, self.limit).await?;
        Ok((self.namespace, body))
    }
}

/// `POST /publish` with an `Idempotency-Key` or `?detail=true` (the
/// caller has run the checks before the body).
#[inline(never)]
pub fn publish_with_options(
    req: Incoming,
    env: &Env,
    key: Option<IdempotencyKey>,
    detail: bool,
    received_ms: f64,
) -> Result<Reply, ApiError> {
    let pending = PendingBody::of(&req, env)?;
    let ctx = req.ctx();
    Ok(later(async move {
        let (namespace, body) = pending.read().await?;
        let request = PublishRequest::parse(&body).map_err(ApiError::InvalidBody)?;
        let keyed = key.map(|key| {
            key.with_fingerprint(publish_fingerprint(
                &request.user_id,
                &request.envelope_type,
                &request.payload,
            ))
        });
        let user_id = request.user_id.clone();
        let envelope = request.into_envelope(ids::envelope_id());
        let envelope_text = envelope.to_text().ok_or(ApiError::Internal)?;
        let options = DeliverOptions {
            key: keyed,
            detail,
            batch: None,
        };
        let to = Recipient {
            user_id: &user_id,
            received_ms,
            ctx: &ctx,
        };
        let answer = deliver_to(&namespace, to, &envelope_text, &options).await?;
        match answer {
            // Through `respond`, so every answer of this path exposes
            // `Idempotent-Replayed` the same way.
            Delivered::Plain(text) => {
                let answer = serde_json::from_str(&text).map_err(|_| ApiError::Internal)?;
                respond(200, &answer, false)
            }
            Delivered::Keyed {
                replayed, answer, ..
            } => respond(200, &answer, replayed),
        }
    }))
}

/// `POST /publish/batch`: one envelope to up to 100 users, all at once.
#[inline(never)]
pub fn batch(req: Incoming, env: &Env) -> Result<Reply, ApiError> {
    let received_ms = js_sys::Date::now();
    let settings = settings(env)?;
    publish_checks(&req, &settings)?;
    let (key, detail) = publish_options(&req)?;
    let pending = PendingBody::of(&req, env)?;
    let ctx = req.ctx();
    Ok(later(async move {
        let (namespace, body) = pending.read().await?;
        let request = BatchRequest::parse(&body).map_err(ApiError::InvalidBody)?;
        let keyed = key.map(|key| {
            key.with_fingerprint(batch_fingerprint(
                &request.user_ids,
                &request.envelope_type,
                &request.payload,
            ))
        });
        let envelope_id = ids::envelope_id();
        let envelope_text = request
            .envelope(envelope_id.clone())
            .to_text()
            .ok_or(ApiError::Internal)?;
        let options = DeliverOptions {
            key: keyed,
            detail,
            batch: Some(request.user_ids.len()),
        };
        // Every user at once (at most MAX_BATCH_USERS), so the answer comes
        // within one ack timeout however many users there are.
        let answers = join_all(request.user_ids.iter().map(|user_id| {
            let to = Recipient {
                user_id,
                received_ms,
                ctx: &ctx,
            };
            deliver_to(&namespace, to, &envelope_text, &options)
        }))
        .await;
        batch_answer(&request.user_ids, answers, envelope_id)
    }))
}

/// The batch's answer from each user's, in the order given. Another body
/// under the key for every user is the batch's conflict; a retry that
/// every user had answered before is a replay, and keeps the envelope id
/// the sockets were sent the first time.
fn batch_answer(
    user_ids: &[String],
    answers: Vec<Result<Delivered, ApiError>>,
    envelope_id: String,
) -> Result<web_sys::Response, ApiError> {
    let conflicts = answers
        .iter()
        .filter(|a| matches!(a, Err(ApiError::IdempotencyConflict)))
        .count();
    if conflicts == answers.len() {
        return Err(ApiError::IdempotencyConflict);
    }
    let mut replays = Vec::new();
    let users: Vec<Value> = user_ids
        .iter()
        .zip(answers)
        .map(|(user, answer)| match answer {
            Ok(Delivered::Plain(text)) => {
                batch_entry(user, serde_json::from_str(&text).map_err(|_| internal()))
            }
            Ok(Delivered::Keyed {
                replayed,
                envelope_id,
                answer,
            }) => {
                replays.push((replayed, envelope_id));
                batch_entry(user, Ok(answer))
            }
            Err(err) => batch_entry(user, Err((err.code(), err.to_string()))),
        })
        .collect();
    let replayed = !replays.is_empty()
        && replays.len() == users.len()
        && replays.iter().all(|(replayed, _)| *replayed);
    let envelope_id = match replays.first() {
        Some((_, first)) if replayed => first.clone(),
        _ => envelope_id,
    };
    let answer = serde_json::json!({ "envelopeId": envelope_id, "users": users });
    respond(200, &answer, replayed)
}

fn internal() -> (&'static str, String) {
    (ApiError::Internal.code(), ApiError::Internal.to_string())
}

/// What a user's object answered a publish.
enum Delivered {
    /// The `/publish` answer's JSON text.
    Plain(String),
    /// A keyed publish's answer.
    Keyed {
        replayed: bool,
        envelope_id: String,
        answer: Value,
    },
}

/// Whose object gets a publish, when the worker received it, and the
/// invocation's ctx (its line is written with the isolate's others).
#[derive(Clone, Copy)]
struct Recipient<'a> {
    user_id: &'a str,
    received_ms: f64,
    ctx: &'a ExecutionContext,
}

/// Hands the envelope to the recipient's object and waits for its answer.
async fn deliver_to(
    namespace: &Namespace,
    to: Recipient<'_>,
    envelope_text: &str,
    options: &DeliverOptions,
) -> Result<Delivered, ApiError> {
    let stub = namespace.get_by_name(to.user_id).map_err(object_failure)?;
    let answer = stub
        .deliver(
            &JsValue::from_str(envelope_text),
            &JsValue::from_str(&options.to_text()),
            to.user_id,
            to.received_ms,
        )
        .map_err(object_failure)?;
    let (text, line) = split_answer(settle(&answer).await?);
    if let Some(line) = line {
        telemetry::write_publish_line(line, to.ctx);
    }
    let text = text.as_string().ok_or(ApiError::Internal)?;
    if options.key.is_none() {
        return Ok(Delivered::Plain(text));
    }
    match Receipt::parse(&text) {
        Some(Receipt::Answer {
            replayed,
            envelope_id,
            answer,
        }) => Ok(Delivered::Keyed {
            replayed,
            envelope_id,
            answer,
        }),
        Some(Receipt::Conflict { .. }) => Err(ApiError::IdempotencyConflict),
        None => {
            telemetry::error(
                "publish.receipt",
                &"a keyed publish's receipt did not parse",
            );
            Err(ApiError::Internal)
        }
    }
}

/// Awaits a runtime Promise (or RPC thenable); a rejection is an object
/// that could not be reached.
async fn settle(thenable: &Thenable) -> Result<JsValue, ApiError> {
    JsFuture::from(promise_of(thenable))
        .await
        .map_err(object_failure)
}

/// `Promise.resolve(thenable)`: RPC answers are thenables, not Promises.
fn promise_of(thenable: &Thenable) -> js_sys::Promise {
    let value: &JsValue = thenable.as_ref();
    js_sys::Promise::resolve(value)
}

/// An object's JSON text answer as a 200.
async fn json_answer(answer: &Thenable) -> Result<web_sys::Response, ApiError> {
    let text = settle(answer).await?;
    Ok(json_200(&text))
}

/// The request body, within `limit` bytes.
async fn body_bytes(body: &Thenable, limit: usize) -> Result<Vec<u8>, ApiError> {
    let buffer = JsFuture::from(promise_of(body)).await.map_err(|err| {
        telemetry::error("request.body", &format_args!("{err:?}"));
        ApiError::Internal
    })?;
    body_within(&buffer, limit)
}

/// A JSON answer; a replay says so in `Idempotent-Replayed`.
fn respond(status: u16, body: &Value, replayed: bool) -> Result<web_sys::Response, ApiError> {
    let response = http::json(status, body)?;
    let headers = response.headers();
    let set = |name, value| {
        headers
            .set(name, value)
            .map_err(http::failed("marking a replayed answer"))
    };
    set("Access-Control-Expose-Headers", REPLAYED_HEADER)?;
    if replayed {
        set(REPLAYED_HEADER, "true")?;
    }
    Ok(response.into())
}

/// A Promise of the response `work` makes; an error becomes its JSON error.
fn later(
    work: impl std::future::Future<Output = Result<web_sys::Response, ApiError>> + 'static,
) -> Reply {
    let promise = future_to_promise(async move {
        Ok(match work.await {
            Ok(response) => response.into(),
            Err(err) => http::error_js(&err),
        })
    });
    Reply::Later(promise.into())
}
