//! Black-box tests against the real Workers runtime (`wrangler dev`).
//!
//! A small runner instead of libtest: it starts the servers once, runs every
//! test concurrently against them, and stops the servers' process groups even
//! when tests fail. `cargo test --test e2e -- <substring>` runs a subset.

mod auth;
mod chaos;
mod client;
mod client_tokens;
mod delivery;
mod frames;
mod history;
mod hostile;
mod logs;
mod operator;
mod operator_client;
mod routes;
mod socket_cap;
mod support;
mod tls;
mod tokens;
mod webhooks;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Server, TestCa};

/// The servers every test can use.
pub struct Ctx {
    /// Default settings, plus the debug console (`CONSOLE_ENABLED`).
    pub server: Server,
    /// Started without `JWT_SECRET`.
    pub unconfigured: Server,
    /// Every hardening knob set; see [`STRICT`].
    pub strict: Server,
    /// A secret, but an out-of-range `ACK_TIMEOUT_MS`.
    pub misconfigured: Server,
    /// History off (`HISTORY_SIZE=0`).
    pub nohistory: Server,
    /// Token lifetime on open sockets made short to test: no leeway
    /// (`JWT_LEEWAY_SECS=0`), the notice [`TOKENS_NOTICE_SECS`] before `exp`.
    pub tokens: Server,
    /// Default settings, serving `https://` and `wss://` with a certificate
    /// of [`Ctx::ca`] for `localhost`.
    pub tls: Server,
    /// `WORKER_LOG_LEVEL=error` and `METRICS_LOG=true`.
    pub quiet: Server,
    /// `LOG_USER_IDS=hash` (key [`OBSERVED_HASH_KEY`]),
    /// `WORKER_LOG_LEVEL=debug` and `METRICS_LOG=true`.
    pub observed: Server,
    /// Made for this run; after `tls`, so the server stops before its
    /// certificate files go.
    pub ca: TestCa,
}

/// The strict server's settings (its JWT_SECRET is added at start).
pub const STRICT: &[(&str, &str)] = &[
    ("JWT_SECRET_PREVIOUS", "previous-secret"),
    ("REQUIRE_EXP", "true"),
    ("JWT_AUDIENCE", "hopeflow"),
    ("JWT_ISSUER", "auth.test"),
    ("PUBLISH_SCOPE", "publish"),
    (
        "ALLOWED_ORIGINS",
        "https://app.example, https://admin.example",
    ),
    ("MAX_FRAME_BYTES", "4096"),
    ("MAX_PUBLISH_BYTES", "4096"),
    ("OPERATOR_SCOPE", "ops-admin"),
    ("MAX_RESULTS_BYTES", "2048"),
    ("IDEMPOTENCY_TTL_SECS", "3"),
    ("HISTORY_SIZE", "3"),
    ("HISTORY_TTL_SECS", "2"),
];

/// The `observed` server's `LOG_HASH_KEY`.
pub const OBSERVED_HASH_KEY: &str = "e2e-log-hash-key-of-at-least-32-chars";

/// The `tokens` server's `TOKEN_REFRESH_NOTICE_SECS`.
pub const TOKENS_NOTICE_SECS: u64 = 2;

pub type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub type Test = (&'static str, fn(Arc<Ctx>) -> TestFuture);

/// Lists `module::function` async tests as (name, constructor) pairs.
#[macro_export]
macro_rules! tests {
    ($($path:path),* $(,)?) => {
        vec![$((
            stringify!($path),
            (|ctx| -> $crate::TestFuture { Box::pin($path(ctx)) }) as fn(std::sync::Arc<$crate::Ctx>) -> $crate::TestFuture,
        )),*]
    };
}

/// Runs no more than this many tests at once against the 2-core machine.
const PARALLEL: usize = 8;
/// A test taking longer than this has hung.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut all: Vec<Test> = Vec::new();
    // The longest first (about 35 s), so it runs beside the others.
    all.extend(chaos::tests());
    all.extend(routes::tests());
    all.extend(auth::tests());
    all.extend(frames::tests());
    all.extend(delivery::tests());
    all.extend(history::tests());
    all.extend(hostile::tests());
    all.extend(operator::tests());
    all.extend(operator_client::tests());
    all.extend(client::tests());
    all.extend(client_tokens::tests());
    all.extend(tls::tests());
    all.extend(tokens::tests());
    all.extend(webhooks::tests());
    all.extend(logs::tests());
    // Last: each starts its own servers, which must not starve the chaos
    // test's reconnects of CPU (its history covers about 3 s).
    all.extend(socket_cap::tests());
    let selected: Vec<Test> = all
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        println!("no e2e tests match {filters:?}");
        return;
    }

    let secret = format!("e2e-{}", uuid::Uuid::new_v4());
    let started = Instant::now();
    let mut strict_vars = vec![("JWT_SECRET", secret.as_str())];
    strict_vars.extend_from_slice(STRICT);
    let ca = TestCa::generate("e2e");
    // Start all nine at once; each takes a few seconds to be ready.
    let server = Server::spawn(
        "main",
        &[("JWT_SECRET", &secret), ("CONSOLE_ENABLED", "true")],
    );
    let unconfigured = Server::spawn("unconfigured", &[]);
    let strict = Server::spawn("strict", &strict_vars);
    let misconfigured = Server::spawn(
        "misconfigured",
        &[("JWT_SECRET", &secret), ("ACK_TIMEOUT_MS", "5")],
    );
    let tls = Server::spawn_tls("tls", &[("JWT_SECRET", &secret)], &ca);
    let nohistory = Server::spawn(
        "nohistory",
        &[("JWT_SECRET", &secret), ("HISTORY_SIZE", "0")],
    );
    let notice = TOKENS_NOTICE_SECS.to_string();
    let tokens = Server::spawn(
        "tokens",
        &[
            ("JWT_SECRET", &secret),
            ("JWT_LEEWAY_SECS", "0"),
            ("TOKEN_REFRESH_NOTICE_SECS", &notice),
        ],
    );
    let quiet = Server::spawn(
        "quiet",
        &[
            ("JWT_SECRET", &secret),
            ("WORKER_LOG_LEVEL", "error"),
            ("METRICS_LOG", "true"),
        ],
    );
    let observed = Server::spawn(
        "observed",
        &[
            ("JWT_SECRET", &secret),
            ("LOG_USER_IDS", "hash"),
            ("LOG_HASH_KEY", OBSERVED_HASH_KEY),
            ("WORKER_LOG_LEVEL", "debug"),
            ("METRICS_LOG", "true"),
        ],
    );
    let ctx = Arc::new(Ctx {
        server: server.wait_ready(),
        unconfigured: unconfigured.wait_ready(),
        strict: strict.wait_ready(),
        misconfigured: misconfigured.wait_ready(),
        tls: tls.wait_ready(),
        nohistory: nohistory.wait_ready(),
        tokens: tokens.wait_ready(),
        quiet: quiet.wait_ready(),
        observed: observed.wait_ready(),
        ca,
    });
    println!(
        "servers ready in {:.1}s; running {} tests",
        started.elapsed().as_secs_f64(),
        selected.len()
    );

    let mut failures = run(selected, ctx.clone());

    // Every server's output is audited as it stops (`support::logs`):
    // the ones tests started themselves already are; these at the end.
    support::never_logged(secret.clone());
    support::never_logged(OBSERVED_HASH_KEY);

    // Frames the Rust client received (its frame observer) that do not
    // match docs/asyncapi.yaml; the support client's fail their test.
    for violation in support::contract::client_frame_violations() {
        println!("FAIL client_frames_match_asyncapi: {violation}");
        failures.push("client_frames_match_asyncapi");
    }

    let ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| panic!("tests still hold the servers"));
    if !failures.is_empty() || std::env::var_os("E2E_SHOW_LOG").is_some() {
        eprintln!("--- wrangler log (main) ---\n{}", ctx.server.log());
        // The others' ends: a server that died shows why there.
        for (name, server) in [
            ("strict", &ctx.strict),
            ("tls", &ctx.tls),
            ("nohistory", &ctx.nohistory),
            ("tokens", &ctx.tokens),
        ] {
            let log = server.log();
            let tail = log
                .char_indices()
                .rev()
                .nth(6000)
                .map_or(log.as_str(), |(at, _)| &log[at..]);
            eprintln!("--- wrangler log ({name}), its end ---\n{tail}");
        }
    }
    // Dropping the servers stops their process groups, and audits their logs.
    drop(ctx);
    for finding in support::audit_findings() {
        println!("FAIL {finding}");
        failures.push("server_logs_audited");
    }

    if failures.is_empty() {
        println!("e2e: all passed");
    } else {
        eprintln!("e2e: {} failed:", failures.len());
        for name in &failures {
            eprintln!("  {name}");
        }
        std::process::exit(1);
    }
}

/// Runs the tests, returning the names of those that failed.
fn run(tests: Vec<Test>, ctx: Arc<Ctx>) -> Vec<&'static str> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut handles = Vec::new();
        for (name, test) in tests {
            let ctx = ctx.clone();
            let permits = permits.clone();
            handles.push((
                name,
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("semaphore");
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(TEST_TIMEOUT, test(ctx)).await;
                    (outcome.is_ok(), started.elapsed())
                }),
            ));
        }
        let mut failures = Vec::new();
        for (name, handle) in handles {
            match handle.await {
                Ok((true, took)) => println!("ok   {name} ({:.1}s)", took.as_secs_f64()),
                Ok((false, _)) => {
                    println!("FAIL {name}: timed out after {TEST_TIMEOUT:?}");
                    failures.push(name);
                }
                Err(_) => {
                    println!("FAIL {name}: panicked (see above)");
                    failures.push(name);
                }
            }
        }
        failures
    })
}
