//! Issue 24, sections 3 to 5: what one publish costs (counted), one user
//! at the platform's socket cap, and wide batches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::scenarios::{Round, Sizes};
use crate::stats::{ms, percentile};
use crate::target::Target;

/// The Durable Objects' SQLite files under a server's state dir.
fn sqlite_files(state: &Path) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "sqlite") {
                out.insert(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(state, &mut out);
    out
}

/// Reads an object's SQLite file (the runtime keeps it open in WAL mode;
/// SQLite allows a second reader): the rows of every table, and the
/// highest `seq` of `history` (every `seq` is one `INSERT`).
const READ_ROWS: &str = r#"
import json, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'")]
rows = {t: db.execute('SELECT COUNT(*) FROM "%s"' % t).fetchone()[0] for t in tables}
seq = db.execute("SELECT MAX(seq) FROM history").fetchone()[0] if "history" in tables else None
print(json.dumps({"rows": rows, "seq": seq or 0}))
"#;

/// Rows per table and the last history `seq` of one object's storage.
fn storage_rows(file: &Path) -> Result<Value, String> {
    let out = Command::new("python3")
        .args(["-c", READ_ROWS])
        .arg(file)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "reading {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("storage rows: {e}"))
}

/// What one publish to a user with 2 acking sockets costs, counted: the
/// HTTP requests the bench sent, the WebSocket messages its sockets sent
/// (acks: what the object receives), the runtime's CPU, the time the
/// object spent on it (publish to answer, every ack in), and the SQLite
/// rows written, from the object's storage file: `INSERT`s are the rise
/// of the last `seq`, deletes the `INSERT`s minus the rise in rows.
pub async fn cost(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = crate::scenarios::user("cost");
    let before: BTreeSet<PathBuf> = sqlite_files(target.state_dir());
    let opened = target.open(&user, 2, 2).await;
    if let Some(why) = opened.error {
        opened.sockets.close().await;
        return Err(why);
    }
    // Warm-up, and to create the object's tables before the first count.
    for n in 0..sizes.round_trip_warmup.max(1) {
        target.publish(&user, n, 2).await?;
    }
    let files: Vec<PathBuf> = sqlite_files(target.state_dir())
        .difference(&before)
        .cloned()
        .collect();
    let storage_before = match files.as_slice() {
        [file] => Some(storage_rows(file)?),
        [] => None,
        other => {
            return Err(format!(
                "expected one new object file, found {}",
                other.len()
            ))
        }
    };
    if target.which.keeps_history() && storage_before.is_none() {
        return Err("found no storage file of the object".into());
    }
    let acks_before = opened.sockets.acks();
    let requests = sizes.cost_publishes;
    let cpu_before = target.cpu_secs();
    let started = Instant::now();
    let mut busy = Vec::with_capacity(requests as usize);
    for n in 0..requests {
        busy.push(ms(target.publish(&user, n, 2).await?));
    }
    let elapsed = started.elapsed();
    let cpu = target.cpu_secs() - cpu_before;
    let acks = opened.sockets.acks() - acks_before;
    opened.sockets.close().await;
    let per = |v: f64| v / requests.max(1) as f64;
    round.set("cost_worker_requests_per_publish", per(requests as f64));
    round.set("cost_ws_in_per_publish", per(acks as f64));
    round.set("cost_cpu_ms_per_publish", per(cpu * 1e3));
    round.set("cost_awake_ms_per_publish", per(busy.iter().sum::<f64>()));
    round.set("cost_wall_ms_per_publish", per(ms(elapsed)));
    busy.sort_by(f64::total_cmp);
    round.set("cost_publish_p50_ms", percentile(&busy, 50.0));
    let rows_written = match (&files[..], storage_before) {
        ([file], Some(before)) => rows_written(&before, &storage_rows(file)?)?,
        _ => 0,
    };
    round.set("cost_rows_written_per_publish", per(rows_written as f64));
    Ok(())
}

/// Rows written between two reads of one object's storage: the history's
/// `INSERT`s (the rise of its last `seq`, which is never reused) plus its
/// deletes (those `INSERT`s minus the rise in its rows), plus the change in
/// rows of any other table (a lower bound: an `UPDATE` leaves no trace).
fn rows_written(before: &Value, after: &Value) -> Result<i64, String> {
    let rows = |v: &Value, table: &str| v["rows"][table].as_i64().unwrap_or(0);
    let inserted = after["seq"].as_i64().unwrap_or(0) - before["seq"].as_i64().unwrap_or(0);
    let deleted = inserted - (rows(after, "history") - rows(before, "history"));
    if inserted < 0 || deleted < 0 {
        return Err(format!("storage went back: {before} then {after}"));
    }
    let tables = after["rows"]
        .as_object()
        .map(|t| t.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let others: i64 = tables
        .iter()
        .filter(|t| *t != "history")
        .map(|t| (rows(after, t) - rows(before, t)).abs())
        .sum();
    Ok(inserted + deleted + others)
}
