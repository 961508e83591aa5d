//! The servers' structured log lines, read from their own output (what
//! `wrangler dev` prints of `console.log`), and the strings no log may
//! ever hold.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::{Server, WAIT};

/// Every structured line in the server's output so far: a line that is
/// one JSON object with an `event` field.
pub fn log_lines(server: &Server) -> Vec<Value> {
    server
        .log()
        .lines()
        .filter(|line| line.starts_with("{\"event\":"))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

/// The lines of `event` for which `select` holds.
pub fn lines_of(server: &Server, event: &str, select: impl Fn(&Value) -> bool) -> Vec<Value> {
    log_lines(server)
        .into_iter()
        .filter(|line| line["event"] == event && select(line))
        .collect()
}

/// Waits until the server has written a line of `event` for which
/// `select` holds (lines reach the log a little after the request that
/// caused them); the first such line.
pub async fn wait_for_line(server: &Server, event: &str, select: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        if let Some(line) = lines_of(server, event, &select).into_iter().next() {
            return line;
        }
        assert!(
            started.elapsed() < WAIT,
            "no {event} line as expected within {WAIT:?}; the structured lines: {:#?}",
            log_lines(server)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Strings the tests sent that no log may hold: payloads, ack results,
/// filter values, secrets. `main` greps every server's log for them.
static NEVER_LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers `text` (a marker inside a payload, a result, a filter value,
/// a secret) as never to appear in any server's log.
pub fn never_logged(text: impl Into<String>) {
    if let Ok(mut list) = NEVER_LOGGED.lock() {
        list.push(text.into());
    }
}

/// The registered strings that appear in `log`.
fn leaked_in(log: &str) -> Vec<String> {
    NEVER_LOGGED
        .lock()
        .map(|list| {
            list.iter()
                .filter(|s| log.contains(s.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// What the audits of stopped servers found.
static FINDINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Audits a server's whole output as it stops: no token (all start with
/// `eyJ`, base64 of `{"`, whether sent in a header, in `?token=` or in a
/// refresh), none of the registered strings, and no panic (a panic can
/// leave an object half-updated even when the runtime keeps the instance).
pub fn audit(server: &str, log: &str) {
    let mut found = Vec::new();
    if log.contains("eyJ") {
        found.push(format!(
            "tokens_never_logged: a token appears in the {server} server's log"
        ));
    }
    let leaked = leaked_in(log);
    if !leaked.is_empty() {
        found.push(format!(
            "nothing_secret_logged: the {server} server's log holds {leaked:?}"
        ));
    }
    if log.contains("panicked at") {
        found.push(format!(
            "no_panics: the worker panicked on the {server} server"
        ));
    }
    if let Ok(mut findings) = FINDINGS.lock() {
        findings.extend(found);
    }
}

/// The audits' findings so far.
pub fn audit_findings() -> Vec<String> {
    FINDINGS.lock().map(|f| f.clone()).unwrap_or_default()
}
