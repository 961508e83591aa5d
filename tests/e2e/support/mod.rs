//! The shared test helpers, one module per concern; the tests use them
//! through the re-exports here (`crate::support::{...}`).
//!
//! - [`server`]: the prebuilt worker under `wrangler dev` on a free port
//!   (in its own process group, stopped as a group), restartable with its
//!   storage;
//! - [`tls`]: a CA and server certificate per run, the TLS readiness probe;
//! - [`clients`]: the WebSocket test client;
//! - [`http`]: reqwest requests, [`Reply`], the publish helpers;
//! - [`logs`]: the servers' structured log lines, and the strings no log
//!   may hold;
//! - [`contract`]: every answer and frame checked against docs/openapi.yaml
//!   and docs/asyncapi.yaml, every webhook body against
//!   docs/webhooks.schema.json.
//!
//! Tokens are minted with the client's `token::mint` and user paths encoded
//! with its `api::user_path`, the server probed with `devserver::health_ok`:
//! no copies of them here.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

mod clients;
pub mod contract;
mod http;
mod logs;
mod server;
mod tls;

pub use clients::{without_position, Client};
pub use http::{
    http, publish, publish_as, refused_upgrade, refused_upgrade_offering, send, sockets_of, Reply,
};
pub use logs::{audit_findings, lines_of, log_lines, never_logged, wait_for_line};
pub use server::{Restartable, Server};
pub use tls::TestCa;

/// Longest any single wait in a test may take before it counts as a hang.
pub const WAIT: Duration = Duration::from_secs(15);

/// Signs `claims` with HS256, whatever they are: the tests' malformed tokens
/// too (no `userId`, a text `exp`), which `hopeflow_client::token::mint`,
/// made for valid ones, cannot express.
pub fn sign(secret: &str, claims: &Value) -> String {
    hopeflow_realtime::hs256::install();
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// A user id no other test uses.
pub fn unique_user(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
