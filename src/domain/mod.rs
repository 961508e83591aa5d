//! The rules, pure: no runtime crate is named here (`tests/layout.rs`), so
//! every module is unit tested natively and usable without `worker`.
//!
//! * [`auth`]: picks the token of a request and verifies HS256 JWTs; time is
//!   passed in. [`hs256`]: the HMAC-SHA256-only crypto provider it runs on.
//! * [`filter`]: subscription filters, parsing and matching.
//! * [`protocol`]: client and server WebSocket frames, the delivered envelope,
//!   the `/publish` body and response, error and close codes.
//! * [`acks`]: publishes waiting for acks: who may ack what, completion, the
//!   ack timeout setting.
//! * [`session`]: the per-socket attachment that survives hibernation, its
//!   token's notice and close times, what the worker tells the object.
//! * [`schedule`]: the object's one alarm: when it wakes next, what is due.
//! * [`operator`]: the operator routes, the disconnect body, the sockets
//!   view and the batch answer's entries.
//! * [`history`]: per-user history and resume: retention, `seq` on the
//!   envelope text, the resume plan, the SQL.
//! * [`idempotency`]: `Idempotency-Key`: valid keys, fingerprints, the
//!   object's stored answers (SQL) and the repeats waiting for the first.
//! * [`digest`]: hex and SHA-256 hex, spelled once.
//! * [`error`]: the closed set of HTTP errors, their statuses and codes.
//! * [`config`]: every setting, parsed and bounded in one place.
//! * [`limits`]: the per-user socket cap; per-socket rate limit and
//!   violation counting.
//! * [`logs`]: structured log lines: events, levels, user ids as shown,
//!   folding. [`metrics`]: the Analytics Engine data points' layout.
//! * [`query`]: query-parameter lookup without a URL parser.
//! * [`webhook`]: webhooks: events, signatures, presence, retries and the
//!   outbox's SQL.
//! * [`warmup`]: runs the publish path's pure code on sample input as the
//!   isolate starts, so V8 has compiled and optimized it before requests.

pub mod acks;
pub mod auth;
pub mod config;
pub mod digest;
pub mod error;
pub mod filter;
pub mod history;
pub mod hs256;
pub mod idempotency;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod operator;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod query;
pub mod schedule;
pub mod session;
pub mod warmup;
pub mod webhook;
