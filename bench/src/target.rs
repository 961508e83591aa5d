//! The three servers under test and what a client does with each: connect
//! (and subscribe), answer every delivery, publish.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devserver::{DevServer, Launch};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Longest any single step may take before the scenario counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

const SECRET: &str = "bench-secret-not-for-production-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Impl {
    Hopeflow,
    /// hopeflow with `HISTORY_SIZE=0`: what history costs a publish.
    HopeflowHistoryOff,
    /// hopeflow with `WORKER_LOG_LEVEL=error`: what its `info` log lines
    /// (a `publish` line per publish) cost.
    HopeflowLogError,
    /// The reference keeps the same history (same tables, one insert per
    /// publish), on by default as in hopeflow.
    ReferenceJs,
    /// hopeflow with webhooks on, sent to the bench's own receiver: what
    /// they add to a publish (the cost scenario only).
    HopeflowWebhooks,
    /// The reference with `HISTORY_SIZE=0`, paired with hopeflow's.
    ReferenceJsHistoryOff,
    Floor,
}

impl Impl {
    /// The three servers compared on every figure.
    pub const ALL: [Impl; 3] = [Impl::Hopeflow, Impl::ReferenceJs, Impl::Floor];
    /// Every server of a round, in the order they run.
    pub const RUN_ORDER: [Impl; 7] = [
        Impl::Hopeflow,
        Impl::HopeflowLogError,
        Impl::HopeflowHistoryOff,
        Impl::ReferenceJs,
        Impl::ReferenceJsHistoryOff,
        Impl::Floor,
        Impl::HopeflowWebhooks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Hopeflow => "hopeflow",
            Impl::HopeflowHistoryOff => "hopeflow-history-off",
            Impl::HopeflowLogError => "hopeflow-log-error",
            Impl::ReferenceJs => "reference-js",
            Impl::ReferenceJsHistoryOff => "reference-js-history-off",
            Impl::Floor => "floor",
            Impl::HopeflowWebhooks => "hopeflow-webhooks",
        }
    }

    /// The scenarios this server runs; `None`: all of them.
    pub fn scenarios(self) -> Option<&'static [&'static str]> {
        match self {
            Impl::HopeflowHistoryOff => Some(&["rt", "tp", "nobody", "start", "cost"]),
            Impl::HopeflowWebhooks => Some(&["cost"]),
            // And the redeploy storm, as the original service (no resume).
            Impl::ReferenceJsHistoryOff => {
                Some(&["rt", "tp", "nobody", "start", "cost", "redeploy"])
            }
            Impl::HopeflowLogError => Some(&["rt", "tp", "nobody"]),
            _ => None,
        }
    }

    /// Settings beyond the secret. Hopeflow's socket cap
    /// (`MAX_SOCKETS_PER_USER`, default 1000) is raised to the platform's
    /// 32,768, since the fan-out, connect storm, idle sockets and one user
    /// at the cap open more than 1,000 sockets for one user.
    fn vars(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Impl::Hopeflow => &[("MAX_SOCKETS_PER_USER", "32768")],
            Impl::HopeflowHistoryOff => &[("HISTORY_SIZE", "0"), ("MAX_SOCKETS_PER_USER", "32768")],
            Impl::ReferenceJsHistoryOff => &[("HISTORY_SIZE", "0")],
            Impl::HopeflowLogError => &[
                ("WORKER_LOG_LEVEL", "error"),
                ("MAX_SOCKETS_PER_USER", "32768"),
            ],
            Impl::HopeflowWebhooks => crate::scale::webhook_vars(),
            _ => &[],
        }
    }

    /// The wrangler config this implementation is served from.
    pub fn config(self, root: &Path) -> PathBuf {
        match self {
            Impl::Hopeflow
            | Impl::HopeflowHistoryOff
            | Impl::HopeflowLogError
            | Impl::HopeflowWebhooks => root.join("build/wrangler.toml"),
            Impl::ReferenceJs | Impl::ReferenceJsHistoryOff => {
                root.join("bench/servers/reference-js/wrangler.toml")
            }
            Impl::Floor => root.join("bench/servers/floor/wrangler.toml"),
        }
    }

    /// The floor speaks no protocol: no token, no subscribe, no ack ids.
    fn speaks_protocol(self) -> bool {
        self != Impl::Floor
    }

    /// Whether it records history (the protocol servers as deployed).
    pub fn keeps_history(self) -> bool {
        self.speaks_protocol() && !self.vars().contains(&("HISTORY_SIZE", "0"))
    }

    /// Who runs the redeploy storm: hopeflow as deployed, and the
    /// reference without history, whose clients cannot resume (the
    /// original service): its lost count is what resume removes.
    pub fn redeploy_storm(self) -> bool {
        matches!(self, Impl::Hopeflow | Impl::ReferenceJsHistoryOff)
    }

    /// Whether `/publish` takes an `Idempotency-Key` (the reference does
    /// not), so a publish whose answer was lost can be sent again safely.
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Impl::Hopeflow
                | Impl::HopeflowLogError
                | Impl::HopeflowHistoryOff
                | Impl::HopeflowWebhooks
        )
    }
}

/// How a server is run and reached.
#[derive(Clone, Copy)]
pub struct Serve {
    /// Clients go through wrangler's dev proxy instead of to the runtime's
    /// own port; see [`DevServer::runtime_port`] for why that is not the
    /// default.
    pub via_proxy: bool,
    /// Attach the DevTools inspector (needed for `--profile`); see
    /// [`devserver::Launch::inspector`] for why it is off otherwise.
    pub inspector: bool,
}

/// Where a server keeps its Durable Object storage: `BENCH_STATE_DIR`, else
/// /dev/shm (tmpfs) when there is one. On this machine's ext4 disk every
/// storage commit is an fsync, which the runtime's CPU figure counts (as
/// kernel time) and which the output gate waits for; that is the VM's
/// disk, not what a deployed object's storage costs or what Cloudflare bills
/// as CPU. bench/README.md, "History: on disk and on tmpfs", measures both.
struct StateDir(PathBuf);

impl StateDir {
    fn new(name: &str) -> Result<StateDir, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let dir = state_base().join(format!(
            "hopeflow-bench-state-{}-{}-{name}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(StateDir(dir))
    }
}

/// The directory the servers' state dirs are made in.
pub fn state_base() -> PathBuf {
    match std::env::var_os("BENCH_STATE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One running server of one implementation.
pub struct Target {
    pub which: Impl,
    /// `None` only between the stop and the start of [`Target::restart`].
    process: Option<DevServer>,
    /// How it was started, for [`Target::restart`].
    root: PathBuf,
    serve: Serve,
    /// Declared after `process`, so it is removed once the server stopped.
    _state: StateDir,
    http: reqwest::Client,
    publisher_token: String,
    /// Where clients connect: the runtime's own port, or wrangler's proxy.
    port: u16,
    /// Time from spawning `wrangler dev` to the first 200 from `/health`.
    pub ready_after: Duration,
}

impl Target {
    /// Starts a fresh server (fresh state dir) and waits until it is ready.
    pub fn start(which: Impl, root: &Path, serve: Serve) -> Result<Target, String> {
        let state = StateDir::new(which.name())?;
        let (process, port, ready_after) = launch(which, root, serve, &state.0)?;
        let http = reqwest::Client::builder()
            .timeout(STEP_TIMEOUT)
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Target {
            which,
            process: Some(process),
            root: root.to_path_buf(),
            serve,
            _state: state,
            http,
            publisher_token: token("bench-backend"),
            port,
            ready_after,
        })
    }

    /// Stops the server and starts it again on the same storage, as a
    /// deploy does to every socket: returns when the new one answers
    /// `/health`. Blocks (call it from `block_in_place`).
    pub fn restart(&mut self) -> Result<(), String> {
        drop(self.process.take());
        let (process, port, _) = launch(self.which, &self.root, self.serve, &self._state.0)?;
        self.process = Some(process);
        self.port = port;
        Ok(())
    }

    /// Where the server keeps its Durable Object storage.
    pub fn state_dir(&self) -> &Path {
        &self._state.0
    }

    /// Where clients connect now (changes with [`Target::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn process(&self) -> Option<&DevServer> {
        self.process.as_ref()
    }

    pub fn inspector_port(&self) -> Option<u16> {
        self.process()?.inspector_port()
    }

    /// CPU seconds the runtime has used so far (0 when unknown, which the
    /// figures then show as 0).
    pub fn cpu_secs(&self) -> f64 {
        self.process()
            .and_then(DevServer::runtime_cpu_secs)
            .unwrap_or(0.0)
    }

    /// The part of [`Target::cpu_secs`] used by the runtime's helper
    /// threads (V8's background compiling and garbage collection).
    pub fn helper_cpu_secs(&self) -> f64 {
        self.process()
            .and_then(DevServer::runtime_helper_cpu_secs)
            .unwrap_or(0.0)
    }

    pub fn rss(&self) -> Option<u64> {
        self.process()?.runtime_rss()
    }

    pub fn log(&self) -> String {
        self.process().map(DevServer::log).unwrap_or_default()
    }

    pub fn socket_url(&self, user: &str) -> String {
        let port = self.port;
        if self.which.speaks_protocol() {
            format!("ws://127.0.0.1:{port}/?token={}", token(user))
        } else {
            format!("ws://127.0.0.1:{port}/?user={user}")
        }
    }

    /// `GET /health`, checked for a 200.
    pub async fn health(&self) -> Result<(), String> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}/health", self.port))
            .send()
            .await
            .map_err(|e| format!("health: {e}"))?;
        match response.status().as_u16() {
            200 => Ok(()),
            status => Err(format!("health answered {status}")),
        }
    }

    /// Publishes once to `user` and checks the answer: `expected` sockets
    /// matched, and (where the protocol has them) as many ack results.
    /// Returns the time to the full answer.
    pub async fn publish(&self, user: &str, n: u64, expected: usize) -> Result<Duration, String> {
        let body = serde_json::json!({ "userId": user, "type": "bench", "payload": { "n": n } });
        let started = Instant::now();
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/publish", self.port))
            .bearer_auth(&self.publisher_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("publish body: {e}"))?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            // Error pages (wrangler's are HTML) would bury the report.
            let text: String = text.chars().take(300).collect();
            return Err(format!("publish answered {status}: {text}"));
        }
        let answer: Value =
            serde_json::from_str(&text).map_err(|e| format!("publish answer {text:?}: {e}"))?;
        let count = answer["clientCount"].as_u64().unwrap_or(u64::MAX);
        let results = answer["results"].as_array().map_or(0, Vec::len);
        // The floor answers no results, so its replies are only implied by
        // the answer; with no socket to wait for, no result is due from anyone.
        let acked = if self.which.speaks_protocol() || expected == 0 {
            results
        } else {
            expected
        };
        if count != expected as u64 || acked != expected {
            return Err(format!(
                "publish to {expected} sockets answered clientCount {count} with {results} results"
            ));
        }
        Ok(elapsed)
    }

    /// Checks that `user`'s history holds what was published: a new
    /// socket's `subscribed` reports a `seq` of at least `published`, and a
    /// `resume` from three before it replays those three envelopes, in
    /// order, marked `recovered`, and says it is complete. So a server
    /// compared "with history" is shown to have recorded every publish.
    pub async fn check_history(&self, user: &str, published: u64) -> Result<(), String> {
        const BACK: u64 = 3;
        let (mut ws, _) = tokio_tungstenite::connect_async(self.socket_url(user))
            .await
            .map_err(|e| format!("history check connect: {e}"))?;
        ws.send(Message::text(r#"{"type":"subscribe","filters":[{}]}"#))
            .await
            .map_err(|e| format!("history check send: {e}"))?;
        let confirmation = read_json(&mut ws).await?;
        let (Some(seq), Some(epoch)) = (
            confirmation["seq"].as_u64(),
            confirmation["epoch"].as_str().map(str::to_owned),
        ) else {
            return Err(format!("subscribed without seq and epoch: {confirmation}"));
        };
        if seq < published.max(BACK) {
            return Err(format!("history at seq {seq} after {published} publishes"));
        }
        let resume = serde_json::json!({ "type": "resume", "since": seq - BACK, "epoch": epoch });
        ws.send(Message::text(resume.to_string()))
            .await
            .map_err(|e| format!("history check send: {e}"))?;
        let mut replayed = Vec::new();
        let end = loop {
            let frame = read_json(&mut ws).await?;
            if frame["type"] == "resumed" {
                break frame;
            }
            if frame["recovered"] != true {
                return Err(format!("resume sent a frame not marked recovered: {frame}"));
            }
            replayed.push(frame["seq"].as_u64().unwrap_or(0));
        };
        let _ = ws.close(None).await;
        let expected: Vec<u64> = (seq - BACK + 1..=seq).collect();
        if replayed != expected || end["complete"] != true {
            return Err(format!(
                "resume from {} replayed seq {replayed:?}, ended with {end}",
                seq - BACK
            ));
        }
        Ok(())
    }

    /// Opens `count` sockets for `user` (at most `parallel` handshakes at a
    /// time), each subscribed to everything and acking every delivery.
    /// Returns the group and each socket's connect+subscribe time; on a
    /// failure, the group holds the sockets opened so far and the error.
    pub async fn open(&self, user: &str, count: usize, parallel: usize) -> Opened {
        self.open_urls(vec![self.socket_url(user); count], parallel)
            .await
    }

    /// Opens one socket for each of `users`, otherwise as [`Target::open`].
    pub async fn open_users(&self, users: &[String], parallel: usize) -> Opened {
        let urls = users.iter().map(|user| self.socket_url(user)).collect();
        self.open_urls(urls, parallel).await
    }

    async fn open_urls(&self, urls: Vec<String>, parallel: usize) -> Opened {
        let count = urls.len();
        let stop = watch::channel(false).0;
        let acks = Arc::new(AtomicU64::new(0));
        let protocol = self.which.speaks_protocol();
        let mut pending = futures::stream::iter(urls.into_iter().map(|url| {
            let acks = acks.clone();
            let stop = stop.subscribe();
            async move {
                let started = Instant::now();
                let task = tokio::time::timeout(STEP_TIMEOUT, connect(&url, protocol, acks, stop))
                    .await
                    .map_err(|_| "connect timed out".to_string())??;
                Ok::<_, String>((task, started.elapsed()))
            }
        }))
        .buffer_unordered(parallel.max(1));
        let mut tasks = Vec::with_capacity(count);
        let mut connect_times = Vec::with_capacity(count);
        let mut error = None;
        while let Some(result) = pending.next().await {
            match result {
                Ok((task, took)) => {
                    tasks.push(task);
                    connect_times.push(took);
                }
                Err(why) => {
                    error.get_or_insert(why);
                }
            }
        }
        drop(pending);
        Opened {
            sockets: Sockets { tasks, stop, acks },
            connect_times,
            error,
        }
    }
}

/// Starts `which` on the storage in `state`; returns the server, the port
/// clients use and the time from spawn to ready.
fn launch(
    which: Impl,
    root: &Path,
    serve: Serve,
    state: &Path,
) -> Result<(DevServer, u16, Duration), String> {
    let config = which.config(root);
    if !config.exists() {
        return Err(format!("{} is missing: run `make build`", config.display()));
    }
    let mut vars = vec![("JWT_SECRET", SECRET)];
    vars.extend_from_slice(which.vars());
    let mut process = DevServer::spawn(&Launch {
        root,
        config: &config,
        vars: &vars,
        name: which.name(),
        port: devserver::free_port(),
        // The same for all three, and quiet: the bench measures the
        // service, not wrangler's terminal output.
        log_level: "warn",
        inspector: serve.inspector,
        https: None,
        state: Some(state),
    })
    .map_err(|e| format!("spawn wrangler dev: {e}"))?;
    let ready_after = process.wait_ready(Duration::from_secs(120))?;
    let port = if serve.via_proxy {
        process.port()
    } else {
        process
            .runtime_port()
            .ok_or("found no port where the runtime answers /health")?
    };
    Ok((process, port, ready_after))
}

/// The outcome of [`Target::open`].
pub struct Opened {
    pub sockets: Sockets,
    pub connect_times: Vec<Duration>,
    /// The first failure, if any socket could not be opened.
    pub error: Option<String>,
}

/// Open sockets that ack everything they receive.
pub struct Sockets {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Replies sent so far by all sockets of the group.
    pub acks: Arc<AtomicU64>,
}

impl Sockets {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Closes every socket with a close handshake, so the server's cleanup
    /// happens now and not during the next measurement.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(STEP_TIMEOUT, task).await;
        }
    }
}

/// Connects one socket, subscribes (protocol servers) and spawns the task
/// that answers deliveries until `stop` turns true.
async fn connect(
    url: &str,
    protocol: bool,
    acks: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    // Nagle off, as browsers and the other clients have it: small ack
    // frames must not wait for the previous segment's TCP ack.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|e| format!("websocket connect: {e}"))?;
    if protocol {
        ws.send(Message::text(r#"{"type":"subscribe","filters":[{}]}"#))
            .await
            .map_err(|e| format!("send subscribe: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"subscribed""#) => break,
                Some(Ok(Message::Text(text))) => {
                    return Err(format!("unexpected frame before confirmation: {text}"))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("socket error before confirmation: {e}")),
                None => return Err("socket closed before confirmation".into()),
            }
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                next = ws.next() => match next {
                    Some(Ok(Message::Text(text))) => {
                        let Some(reply) = reply_to(&text, protocol) else { continue };
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                },
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                    return;
                }
            }
        }
    }))
}

/// The next text frame as JSON, within [`STEP_TIMEOUT`].
async fn read_json<S>(ws: &mut S) -> Result<Value, String>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "history check: no frame".to_string())?;
        match next {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .map_err(|e| format!("history check frame {text}: {e}"))
            }
            Some(Ok(_)) => continue,
            _ => return Err("history check: socket ended".into()),
        }
    }
}

/// The reply to a delivery: an ack naming its envelope, or (for the floor)
/// any frame at all. `None` for frames that are not deliveries.
fn reply_to(text: &str, protocol: bool) -> Option<String> {
    if !protocol {
        return Some("a".into());
    }
    let frame: Value = serde_json::from_str(text).ok()?;
    let id = frame.get("envelopeId")?.as_str()?;
    Some(format!(
        r#"{{"type":"ack","envelopeId":{},"result":{{"ok":true}}}}"#,
        Value::from(id)
    ))
}

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    hopeflow_client::token::mint(
        SECRET,
        user,
        Some(Duration::from_secs(3600)),
        Default::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_name_the_envelope_and_ignore_other_frames() {
        let envelope = r#"{"envelopeId":"e-1","type":"bench","payload":{"n":1}}"#;
        let reply = reply_to(envelope, true).expect("an ack");
        let ack: Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["envelopeId"], "e-1");
        assert_eq!(
            reply_to(r#"{"type":"subscribed","added":1,"total":1}"#, true),
            None
        );
        assert_eq!(reply_to("pong", true), None);
        assert_eq!(reply_to("anything", false).as_deref(), Some("a"));
    }
}
