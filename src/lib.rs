//! HopeFlow Realtime: per-user WebSocket fan-out on Cloudflare Workers.
//!
//! # Layout
//!
//! Pure modules (no `worker` import, unit tested natively with `cargo test`):
//!
//! * [`auth`]: picks the token of a request and verifies HS256 JWTs; time is
//!   passed in.
//! * [`hs256`]: the HMAC-SHA256-only crypto provider jsonwebtoken runs on.
//! * [`filter`]: subscription filters, parsing and matching.
//! * [`protocol`]: client and server WebSocket frames, the delivered envelope,
//!   the `/publish` body and response, error codes.
//! * [`acks`]: publishes waiting for acks: who may ack what, completion, the
//!   ack timeout setting.
//! * [`session`]: the per-socket attachment that survives hibernation.
//! * [`error`]: the closed set of HTTP errors and their statuses and codes.
//! * [`config`]: every setting, parsed and bounded in one place.
//! * [`limits`]: per-socket rate limit and violation counting.
//! * [`query`]: query-parameter lookup without a URL parser.
//!
//! Runtime edge (thin adapters over the pure modules; feature `runtime`, on
//! by default, so that clients can use the pure modules without `worker`):
//!
//! * this file: the `#[event(fetch)]` entry.
//! * [`routes`]: routing, authentication, forwarding to the user's object.
//! * [`http`]: JSON responses, CORS, error → response.
//! * [`durable_object`]: `HopeFlowRealtime`, one Durable Object per user that
//!   holds the user's hibernatable sockets and collects acks.
#![forbid(unsafe_code)]

pub mod acks;
pub mod auth;
pub mod config;
pub mod error;
pub mod filter;
pub mod hs256;
pub mod limits;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod query;
pub mod session;

#[cfg(feature = "runtime")]
pub mod durable_object;
#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
pub mod routes;

/// The worker's entry: everything happens in [`routes::handle`].
#[cfg(feature = "runtime")]
#[worker::event(fetch)]
async fn fetch(
    req: worker::web_sys::Request,
    env: worker::Env,
    _ctx: worker::Context,
) -> worker::Result<worker::web_sys::Response> {
    console_error_panic_hook::set_once();
    routes::handle(http::Incoming::new(req), &env).await
}
