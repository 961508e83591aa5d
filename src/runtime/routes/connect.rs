//! `GET /` with `Upgrade: websocket`: the handshake's checks, then the
//! user's object takes the socket.

use worker::{js_sys, web_sys, Env};

use super::request::{authenticate_handshake, object_failure, user_stub, OBJECT_FAILED};
use crate::domain::auth::{protocol_offer, Claims, PROTOCOL};
use crate::domain::error::ApiError;
use crate::domain::session::{PROTOCOL_HEADER, TOKEN_EXP_HEADER, USER_ID_HEADER};
use crate::runtime::http::{Incoming, Reply};
use crate::runtime::settings::settings;

/// A URL of the Durable Object's internal routes; the host is never resolved.
macro_rules! internal_url {
    ($path:literal) => {
        concat!("https://hopeflow.internal", $path)
    };
}

pub(super) fn is_websocket_upgrade(req: &Incoming) -> std::result::Result<bool, ApiError> {
    Ok(req
        .header("Upgrade")?
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")))
}

/// A handshake that passed its checks.
pub(super) struct Accepted {
    pub claims: Claims,
    /// The client offered [`PROTOCOL`]: the 101 must name it.
    pub speaks: bool,
}

/// What a handshake checks before it reaches the object: the origin, then
/// the token. A plain `GET /` runs them too and answers 426 only when they
/// pass, because a browser cannot read why a WebSocket handshake failed:
/// its client asks this way whether a refusal was the token's fault.
#[inline(never)]
pub(super) fn handshake_checks(
    req: &Incoming,
    env: &Env,
) -> std::result::Result<Accepted, ApiError> {
    let settings = settings(env)?;
    if !settings
        .config
        .origin_allowed(req.header("Origin")?.as_deref())
    {
        return Err(ApiError::OriginNotAllowed);
    }
    let offered = req.header(PROTOCOL_HEADER)?;
    let offer = protocol_offer(offered.as_deref()).map_err(ApiError::Unauthorized)?;
    Ok(Accepted {
        claims: authenticate_handshake(req, &settings, offer.token)?,
        speaks: offer.speaks,
    })
}

/// WebSocket upgrade: hand the request to the user's Durable Object; its
/// answer (the 101 with the client socket) is passed on as it is.
#[inline(never)]
pub(super) fn connect(req: Incoming, env: &Env) -> std::result::Result<Reply, ApiError> {
    let Accepted { claims, speaks } = handshake_checks(&req, env)?;
    // A copy of the client's headers, in one call; the client must not
    // choose the user id the object sees, so ours replaces any it sent.
    let headers =
        web_sys::Headers::new_with_headers(&req.raw().headers()).map_err(|_| ApiError::Internal)?;
    // The object needs no token (and the platform may log what it gets):
    // the protocols shrink to the one it answers.
    headers
        .delete("Authorization")
        .map_err(|_| ApiError::Internal)?;
    let protocol = match speaks {
        true => headers.set(PROTOCOL_HEADER, PROTOCOL),
        false => headers.delete(PROTOCOL_HEADER),
    };
    protocol.map_err(|_| ApiError::Internal)?;
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
        .map_err(object_failure)?;
    Ok(Reply::Later(
        OBJECT_FAILED.with(|on_err| answer.or_else(on_err)),
    ))
}
