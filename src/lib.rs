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
//! * [`session`]: the per-socket attachment that survives hibernation, and
//!   when its token's notice and close fall.
//! * [`schedule`]: the object's one alarm: when it wakes next, what is due.
//! * [`operator`]: the operator routes, the disconnect body, the sockets
//!   view and the batch answer's entries.
//! * [`history`]: per-user history and resume: retention, `seq` on the
//!   envelope text, when a resume is complete, the SQL.
//! * [`idempotency`]: `Idempotency-Key`: valid keys, fingerprints, the
//!   object's stored answers (SQL) and the repeats waiting for the first.
//! * [`error`]: the closed set of HTTP errors and their statuses and codes.
//! * [`config`]: every setting, parsed and bounded in one place.
//! * [`limits`]: per-socket rate limit and violation counting.
//! * [`query`]: query-parameter lookup without a URL parser.
//! * [`warmup`]: runs the publish path's pure code on sample input as the
//!   isolate starts, so V8 has compiled and optimized it before requests.
//!
//! Runtime edge (thin adapters over the pure modules; feature `runtime`, on
//! by default, so that clients can use the pure modules without `worker`):
//!
//! * [`glue`]: every raw crossing into JavaScript: the hand-made exports
//!   (the worker's `fetch`, the object's methods) that `src/shim.js`, the
//!   worker's JavaScript entry, forwards to, and the `extern` bindings.
//! * [`routes`]: routing, authentication, forwarding to the user's object.
//! * [`operator_routes`]: the routes off the hot path: the operator API,
//!   `/publish/batch`, publishes with options, the debug console.
//! * [`http`]: JSON responses, CORS, error → response.
//! * [`alarm`]: the object's one alarm, shared by the parts with timed
//!   duties, set as `schedule` decides.
//! * [`storage`]: the object's SQLite tables (keyed answers, history), run
//!   with the rules of `idempotency` and `history`.
//! * [`durable_object`]: `HopeFlowRealtime`, one Durable Object per user that
//!   holds the user's hibernatable sockets and collects acks.
#![forbid(unsafe_code)]

pub mod acks;
pub mod auth;
pub mod config;
pub mod error;
pub mod filter;
pub mod history;
pub mod hs256;
pub mod idempotency;
pub mod limits;
pub mod operator;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod query;
pub mod schedule;
pub mod session;
pub mod warmup;

#[cfg(feature = "runtime")]
pub mod alarm;
#[cfg(feature = "runtime")]
pub mod durable_object;
#[cfg(feature = "runtime")]
pub mod glue;
#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
pub mod operator_routes;
#[cfg(feature = "runtime")]
pub mod routes;
#[cfg(feature = "runtime")]
pub mod storage;
