//! HopeFlow Realtime: per-user WebSocket fan-out on Cloudflare Workers.
//!
//! Two layers, one folder each (docs/architecture.md draws them):
//!
//! * [`domain`]: every rule, pure (never names `worker`, `wasm_bindgen`,
//!   `js_sys` or `web_sys`), unit tested natively with `cargo test`. Its
//!   modules are re-exported here under their old paths
//!   (`hopeflow_realtime::protocol`, ...), which the client, the fuzz
//!   targets and the contract tests use.
//! * `runtime` (feature `runtime`, on by default): the Workers edge, which
//!   only translates between the runtime and the domain. Dependencies run
//!   one way: `entry` (the exports `src/shim.js` calls) → `routes` (the
//!   worker) and `object` (the Durable Object) → their helpers (`settings`,
//!   `http`) → `js` (every raw crossing into JavaScript) → `domain`.
//!
//! `tests/layout.rs` keeps these rules.
#![forbid(unsafe_code)]

pub mod domain;

pub use domain::{
    acks, auth, config, error, filter, history, hs256, idempotency, limits, operator, protocol,
    query, schedule, session, warmup, webhook,
};

#[cfg(feature = "runtime")]
pub mod runtime;
