//! Issue 24, sections 3 to 5: what one publish costs (counted), one user
//! at the platform's socket cap, and wide batches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

use crate::scenarios::{Round, Sizes};
use crate::stats::{ms, percentile};
use crate::target::Target;

/// Requests and events the bench's webhook receiver got so far.
pub static WEBHOOK_REQUESTS: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOK_EVENTS: AtomicU64 = AtomicU64::new(0);

/// The settings of `hopeflow-webhooks`: hopeflow's, with every webhook
/// event sent to a receiver the bench runs (started on first use, on the
/// bench's tokio runtime), which answers 200 and counts.
pub fn webhook_vars() -> &'static [(&'static str, &'static str)] {
    static VARS: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    VARS.get_or_init(|| {
        let port = devserver::free_port();
        tokio::spawn(receive_webhooks(port));
        let url: &'static str = Box::leak(format!("http://127.0.0.1:{port}/").into_boxed_str());
        vec![
            ("MAX_SOCKETS_PER_USER", "32768"),
            ("WEBHOOK_URL", url),
            ("WEBHOOK_SECRET", "bench-webhook-secret-0123456789abcdef"),
        ]
    })
}

/// Answers every request with 200, counting requests and their events.
async fn receive_webhooks(port: u16) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
        eprintln!("webhook receiver: cannot bind {port}");
        return;
    };
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            loop {
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    match stream.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                }
                let mut body = vec![0; length];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
                let events = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["events"].as_array().map(Vec::len))
                    .unwrap_or(0);
                WEBHOOK_REQUESTS.fetch_add(1, Ordering::Relaxed);
                WEBHOOK_EVENTS.fetch_add(events as u64, Ordering::Relaxed);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if stream.get_mut().write_all(answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

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
    let hooks_before = (
        WEBHOOK_REQUESTS.load(Ordering::Relaxed),
        WEBHOOK_EVENTS.load(Ordering::Relaxed),
    );
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
    let hooks = (
        WEBHOOK_REQUESTS.load(Ordering::Relaxed) - hooks_before.0,
        WEBHOOK_EVENTS.load(Ordering::Relaxed) - hooks_before.1,
    );
    opened.sockets.close().await;
    let per = |v: f64| v / requests.max(1) as f64;
    round.set("cost_worker_requests_per_publish", per(requests as f64));
    round.set("cost_ws_in_per_publish", per(acks as f64));
    if target.which == crate::target::Impl::HopeflowWebhooks {
        round.set("cost_webhook_requests_per_publish", per(hooks.0 as f64));
        round.set("cost_webhook_events_per_publish", per(hooks.1 as f64));
        // The receiver works: the user's `user.online` came before.
        let seen = WEBHOOK_EVENTS.load(Ordering::Relaxed);
        round.set("cost_webhook_events_seen", seen as f64);
        if seen == 0 {
            return Err("the webhook receiver got no event at all".into());
        }
    }
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

/// A socket of the one user at the cap that records when each delivery
/// arrived (and acks it), opened before the others: the first in the
/// object's index.
struct Probe {
    arrivals: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Probe {
    async fn open(url: &str) -> Result<Probe, String> {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|e| format!("probe connect: {e}"))?;
        ws.send(Message::text(r#"{"type":"subscribe","filters":[{}]}"#))
            .await
            .map_err(|e| format!("probe subscribe: {e}"))?;
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = ws.next() => match next {
                        Some(Ok(Message::Text(text))) => {
                            let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                            let Some(id) = frame["envelopeId"].as_str() else { continue };
                            let _ = tx.send(Instant::now());
                            let ack = serde_json::json!({"type": "ack", "envelopeId": id, "result": {"ok": true}});
                            if ws.send(Message::text(ack.to_string())).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    _ = stopped.changed() => {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            }
        });
        Ok(Probe { arrivals, stop })
    }

    /// How long after `sent` the next delivery reached the probe.
    async fn next_after(&mut self, sent: Instant) -> Result<f64, String> {
        let arrived = tokio::time::timeout(crate::target::STEP_TIMEOUT, self.arrivals.recv())
            .await
            .map_err(|_| "the probe socket got no delivery".to_string())?
            .ok_or("the probe socket closed")?;
        Ok(ms(arrived.saturating_duration_since(sent)))
    }
}

/// One user with `cap_sockets` sockets (issue 24, section 3): the time to
/// connect them all, the runtime's memory per socket, the fan-out to all
/// of them, and, after the object was left idle long enough to hibernate,
/// the time from the publish that wakes it to the first delivery (the
/// socket index rebuilt from every socket's attachment), against the same
/// publish warm.
pub async fn one_user_at_cap(
    target: &Target,
    sizes: &Sizes,
    round: &mut Round,
) -> Result<(), String> {
    let user = crate::scenarios::user("cap");
    let total = sizes.cap_sockets.max(2);
    let rss_before = target.rss().ok_or("no workerd process found")?;
    let started = Instant::now();
    let mut probe = Probe::open(&target.socket_url(&user)).await?;
    let opened = target.open(&user, total - 1, sizes.parallel_connects).await;
    let connect_ms = ms(started.elapsed());
    let reached = opened.sockets.len() + 1;
    round.set("cap_sockets_reached", reached as f64);
    if let Some(why) = opened.error {
        opened.sockets.close().await;
        let _ = probe.stop.send(true);
        return Err(format!("opened {reached} of {total}: {why}"));
    }
    let rss_after = target.rss().ok_or("no workerd process found")?;
    let outcome = async {
        let mut warm = Vec::new();
        let mut first = Vec::new();
        let cpu_before = target.cpu_secs();
        for n in 0..sizes.cap_publishes {
            let sent = Instant::now();
            warm.push(ms(target.publish(&user, n, total).await?));
            first.push(probe.next_after(sent).await?);
        }
        let warm_cpu = (target.cpu_secs() - cpu_before) / sizes.cap_publishes.max(1) as f64;
        // Silent long enough for wrangler dev to hibernate the object
        // (about 10-15 s of idleness, tests/e2e/delivery.rs).
        tokio::time::sleep(std::time::Duration::from_secs(sizes.cap_idle_secs)).await;
        let cpu_before = target.cpu_secs();
        let sent = Instant::now();
        let woken = ms(target.publish(&user, 1_000, total).await?);
        let woken_first = probe.next_after(sent).await?;
        let woken_cpu = target.cpu_secs() - cpu_before;
        warm.sort_by(f64::total_cmp);
        first.sort_by(f64::total_cmp);
        Ok::<_, String>((warm, first, warm_cpu, woken, woken_first, woken_cpu))
    }
    .await;
    opened.sockets.close().await;
    let _ = probe.stop.send(true);
    let (warm, first, warm_cpu, woken, woken_first, woken_cpu) = outcome?;
    round.set("cap_connect_ms", connect_ms);
    round.set(
        "cap_bytes_per_socket",
        rss_after.saturating_sub(rss_before) as f64 / reached as f64,
    );
    round.set("cap_rss_mib", rss_after as f64 / 1_048_576.0);
    round.set("cap_fanout_p50_ms", percentile(&warm, 50.0));
    round.set("cap_first_delivery_p50_ms", percentile(&first, 50.0));
    round.set("cap_fanout_cpu_ms", warm_cpu * 1e3);
    round.set("cap_woken_fanout_ms", woken);
    round.set("cap_woken_first_delivery_ms", woken_first);
    round.set("cap_woken_cpu_ms", woken_cpu * 1e3);
    Ok(())
}

/// Wide batches (issue 24, section 4): `/publish/batch` to 100 users with
/// 2 acking sockets each, against 100 single publishes sent at once; then
/// a broadcast to `broadcast_users` users (no sockets) as batches of 100,
/// `broadcast_concurrency` at a time.
pub async fn wide(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    use hopeflow_client::{PublishOptions, Publisher};
    let users: Vec<String> = (0..100).map(|_| crate::scenarios::user("wide")).collect();
    let twice: Vec<String> = users.iter().chain(&users).cloned().collect();
    let opened = target.open_users(&twice, sizes.parallel_connects).await;
    if let Some(why) = opened.error {
        opened.sockets.close().await;
        return Err(why);
    }
    let publisher = Publisher::new(
        &format!("http://127.0.0.1:{}", target.port()),
        crate::target::token("bench-backend"),
    );
    let outcome = async {
        let batch = |n: u64| {
            let publisher = &publisher;
            let users = &users;
            async move {
                let started = Instant::now();
                let answer = publisher
                    .publish_batch(
                        users,
                        Some("bench"),
                        serde_json::json!({ "n": n }),
                        PublishOptions::new(),
                    )
                    .await
                    .map_err(|e| format!("batch: {e}"))?;
                let took = ms(started.elapsed());
                for user in &answer.users {
                    match &user.outcome {
                        Ok(o) if o.client_count == 2 && o.results.len() == 2 => {}
                        other => return Err(format!("batch user {}: {other:?}", user.user_id)),
                    }
                }
                Ok::<f64, String>(took)
            }
        };
        batch(0).await?;
        let cpu_before = target.cpu_secs();
        let mut batches = Vec::new();
        for n in 0..sizes.wide_rounds {
            batches.push(batch(n).await?);
        }
        let batch_cpu = target.cpu_secs() - cpu_before;
        let cpu_before = target.cpu_secs();
        let mut singles = Vec::new();
        for n in 0..sizes.wide_rounds {
            let started = Instant::now();
            let all = users.iter().map(|user| target.publish(user, n, 2));
            futures::future::try_join_all(all).await?;
            singles.push(ms(started.elapsed()));
        }
        let single_cpu = target.cpu_secs() - cpu_before;
        Ok::<_, String>((batches, batch_cpu, singles, single_cpu))
    }
    .await;
    opened.sockets.close().await;
    let (mut batches, batch_cpu, mut singles, single_cpu) = outcome?;
    let per_user = |cpu: f64| cpu * 1e6 / (sizes.wide_rounds.max(1) * 100) as f64;
    batches.sort_by(f64::total_cmp);
    singles.sort_by(f64::total_cmp);
    round.set("wide_batch_p50_ms", percentile(&batches, 50.0));
    round.set("wide_batch_p99_ms", percentile(&batches, 99.0));
    round.set("wide_batch_cpu_us_per_user", per_user(batch_cpu));
    round.set("wide_singles_p50_ms", percentile(&singles, 50.0));
    round.set("wide_singles_p99_ms", percentile(&singles, 99.0));
    round.set("wide_singles_cpu_us_per_user", per_user(single_cpu));
    broadcast(target, &publisher, sizes, round).await
}

/// `broadcast_users` users in batches of 100, `broadcast_concurrency` in
/// flight: the total time, and the runtime CPU per user.
async fn broadcast(
    target: &Target,
    publisher: &hopeflow_client::Publisher,
    sizes: &Sizes,
    round: &mut Round,
) -> Result<(), String> {
    use futures::StreamExt;
    let run = crate::scenarios::user("broadcast");
    let batches = sizes.broadcast_users.div_ceil(100);
    let cpu_before = target.cpu_secs();
    let started = Instant::now();
    let mut sending = futures::stream::iter((0..batches).map(|b| {
        let ids: Vec<String> = (b * 100..((b + 1) * 100).min(sizes.broadcast_users))
            .map(|u| format!("{run}-{u}"))
            .collect();
        async move {
            let answer = publisher
                .publish_batch(
                    &ids,
                    Some("bench"),
                    serde_json::json!({}),
                    hopeflow_client::PublishOptions::new(),
                )
                .await
                .map_err(|e| format!("broadcast batch {b}: {e}"))?;
            if let Some((user, error)) = answer.failures().next() {
                return Err(format!("broadcast to {user}: {error}"));
            }
            if answer.users.len() != ids.len() {
                return Err("broadcast answered fewer users".to_string());
            }
            Ok(())
        }
    }))
    .buffer_unordered(sizes.broadcast_concurrency.max(1));
    while let Some(sent) = sending.next().await {
        sent?;
    }
    round.set("broadcast_total_ms", ms(started.elapsed()));
    round.set(
        "broadcast_cpu_us_per_user",
        (target.cpu_secs() - cpu_before) * 1e6 / sizes.broadcast_users.max(1) as f64,
    );
    Ok(())
}
