//! The redeploy storm (issue 24, section 2): many users' sockets, each
//! with a filter, held by the Rust [`Client`] (reconnect and resume), a
//! steady stream of publishes through the [`Publisher`]; then the runtime
//! is stopped and started again on the same storage (what a deploy does to
//! every socket) while the publishes go on. Measures how long until every
//! socket is back and resumed, and checks that the application lost
//! nothing and got nothing twice.
//!
//! The clients connect through a [`Relay`] on a fixed port, since the
//! restarted runtime listens on a new one; while the runtime is down the
//! relay refuses connections, as an unreachable service does.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hopeflow_client::{
    Client, ClientOptions, Event, IdempotencyKey, PublishError, PublishOptions, Publisher,
    ServerFrameText, TokenPlacement,
};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::relay::Relay;
use crate::scenarios::{Round, Sizes};
use crate::stats::{ms, percentile};
use crate::target::{token, Target};

/// The type every socket's filter matches; [`NOISE`] matches none.
const KIND: &str = "storm";
/// One publish in four: no socket may receive it (filters survive the
/// reconnect, and a resume replays only what they match).
const NOISE: &str = "storm-noise";

/// What one socket saw, shared with its frame observer.
#[derive(Default)]
struct Log {
    /// The `n` of every envelope handed to the application.
    received: Mutex<Vec<u64>>,
    /// The `n`, `seq` and `recovered` of each one, to say what a double was.
    seqs: Mutex<Vec<(u64, Option<u64>, bool)>>,
    /// Since the drop: the first `subscribed` after it (back).
    back_ms: Mutex<Option<f64>>,
    /// Since the drop: the `resumed` answer, and its `complete`.
    resumed: Mutex<Option<(f64, bool)>>,
    gaps: AtomicU64,
    noise: AtomicU64,
    disconnects: AtomicU64,
    /// Connection attempts of the reconnects (1 each when the first works).
    attempts: AtomicU64,
}

/// What the publisher did.
#[derive(Default)]
struct Published {
    /// Per user: the `n` of every publish of [`KIND`] answered 200.
    delivered_to: Mutex<BTreeMap<usize, Vec<u64>>>,
    /// `n` of publishes that failed for good (not known delivered).
    failed: Mutex<Vec<u64>>,
    /// Requests sent again after a connection error (same key).
    retried: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// The backoff the clients use: the client's defaults unless
/// `BENCH_STORM_BACKOFF_MS=initial,max` says otherwise.
fn backoff(sizes: &Sizes) -> Option<(Duration, Duration)> {
    let (initial, max) = sizes.redeploy_backoff_ms?;
    Some((Duration::from_millis(initial), Duration::from_millis(max)))
}

pub async fn redeploy(target: &mut Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let relay = Relay::start(target.port())?;
    let run = format!("{}-{}", std::process::id(), crate::scenarios::unique());
    let users: Vec<String> = (0..sizes.redeploy_users)
        .map(|u| format!("bench-redeploy-{run}-{u}"))
        .collect();
    let dropped_at: Arc<OnceLock<Instant>> = Arc::default();
    let stop = watch::channel(false).0;
    let logs = match open_all(&relay, &users, sizes, &dropped_at, &stop).await {
        Ok(logs) => logs,
        Err(why) => {
            let _ = stop.send(true);
            return Err(why);
        }
    };
    let publisher = Publisher::new(
        &format!("http://127.0.0.1:{}", relay.port),
        token("bench-backend"),
    )
    .with_retries(5)
    .with_timeouts(Duration::from_secs(5), Duration::from_secs(30));
    let published = Arc::new(Published::default());
    let publishing = Arc::new(AtomicBool::new(true));
    let stream = tokio::spawn(publish_stream(
        publisher,
        users.clone(),
        sizes.redeploy_rate,
        target.which.idempotent(),
        run,
        published.clone(),
        publishing.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(sizes.redeploy_lead_secs)).await;

    // The deploy: the relay refuses from now on, the runtime stops (every
    // socket drops) and starts again on its storage.
    relay.point_to(0)?;
    let dropped = Instant::now();
    let _ = dropped_at.set(dropped);
    tokio::task::block_in_place(|| target.restart())?;
    relay.point_to(target.port())?;
    let ready_ms = ms(dropped.elapsed());
    let cpu_at_ready = target.cpu_secs();
    let resumes = target.which.keeps_history();
    let back = |(_, log): &(usize, Arc<Log>)| log.is_back(resumes);
    wait_until(sizes.redeploy_timeout(), || logs.iter().all(back)).await;
    let cpu_storm = target.cpu_secs() - cpu_at_ready;
    tokio::time::sleep(Duration::from_secs(sizes.redeploy_tail_secs)).await;
    publishing.store(false, Ordering::Relaxed);
    let _ = stream.await;

    // Until every socket has every publish it should have, or 30 s.
    let expected = published
        .delivered_to
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let complete = |(u, log): &(usize, Arc<Log>)| log.has_all(expected.get(u));
    wait_until(Duration::from_secs(30), || logs.iter().all(complete)).await;
    let _ = stop.send(true);

    let figures = Figures::of(&logs, &expected, &published, resumes);
    round.redeploy.push(crate::scenarios::Timeline {
        which: target.which.name(),
        back_ms: figures.back.clone(),
        resumed_ms: figures.resumed.clone(),
        ready_ms,
        sockets: logs.len(),
    });
    let errors = published
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    figures.check(logs.len(), resumes, &errors)?;
    figures.record(round, ready_ms, resumes);
    round.set(
        "redeploy_retried_publishes",
        published.retried.load(Ordering::Relaxed) as f64,
    );
    round.set("redeploy_storm_cpu_ms", cpu_storm * 1e3);
    round.set("redeploy_boot_cpu_ms", cpu_at_ready * 1e3);
    Ok(())
}

/// Opens every socket of every user (each subscribed before the first
/// publish), through the relay.
async fn open_all(
    relay: &Relay,
    users: &[String],
    sizes: &Sizes,
    dropped_at: &Arc<OnceLock<Instant>>,
    stop: &watch::Sender<bool>,
) -> Result<Vec<(usize, Arc<Log>)>, String> {
    let url = format!("ws://127.0.0.1:{}", relay.port);
    let sockets = users
        .iter()
        .enumerate()
        .flat_map(|(u, user)| (0..sizes.redeploy_sockets_per_user).map(move |_| (u, user)));
    let mut opening = futures::stream::iter(sockets.map(|(u, user)| {
        let (options, log) = options(&url, user, sizes, dropped_at.clone());
        let stop = stop.subscribe();
        async move { open(options, log, stop).await.map(|log| (u, log)) }
    }))
    .buffer_unordered(sizes.parallel_connects.max(1));
    let mut logs = Vec::new();
    while let Some(opened) = opening.next().await {
        let log = opened.map_err(|why| format!("opening {} sockets: {why}", logs.len() + 1))?;
        logs.push(log);
    }
    Ok(logs)
}

/// Polls `done` until it holds or `limit` passed.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Log {
    /// Back after the drop: resumed (with history), or subscribed again.
    fn is_back(&self, resumes: bool) -> bool {
        if resumes {
            self.resumed.lock().is_ok_and(|r| r.is_some())
        } else {
            self.back_ms.lock().is_ok_and(|b| b.is_some())
        }
    }

    /// Whether it received every publish in `want`.
    fn has_all(&self, want: Option<&Vec<u64>>) -> bool {
        let got: HashSet<u64> = self
            .received
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        want.is_none_or(|want| want.iter().all(|n| got.contains(n)))
    }
}

/// The client options of one socket of `user`, and its log.
fn options(
    url: &str,
    user: &str,
    sizes: &Sizes,
    dropped_at: Arc<OnceLock<Instant>>,
) -> (ClientOptions, Arc<Log>) {
    let log = Arc::new(Log::default());
    let seen = log.clone();
    let mut options = ClientOptions::new(url, token(user)).with_frame_observer(move |frame| {
        let (ServerFrameText::Text(text), Some(dropped)) = (frame, dropped_at.get()) else {
            return;
        };
        // Only the two frames that matter here are parsed.
        if !(text.contains(r#""subscribed""#) || text.contains(r#""resumed""#)) {
            return;
        }
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let since = ms(dropped.elapsed());
        match frame["type"].as_str() {
            Some("subscribed") => {
                if let Ok(mut back) = seen.back_ms.lock() {
                    back.get_or_insert(since);
                }
            }
            Some("resumed") => {
                if let Ok(mut resumed) = seen.resumed.lock() {
                    resumed.get_or_insert((since, frame["complete"] == true));
                }
            }
            _ => {}
        }
    });
    options.token_placement = TokenPlacement::Query;
    if let Some((initial, max)) = backoff(sizes) {
        options.backoff_initial = initial;
        options.backoff_max = max;
    }
    (options, log)
}

/// Connects, subscribes to [`KIND`] and spawns the task that acks every
/// delivery and records what happens, until `stop`.
async fn open(
    options: ClientOptions,
    log: Arc<Log>,
    mut stop: watch::Receiver<bool>,
) -> Result<Arc<Log>, String> {
    let connect = async {
        let client = Client::connect(options).await.map_err(|e| e.to_string())?;
        client
            .subscribe(vec![json!({ "type": KIND })])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Client, String>(client)
    };
    let mut client = tokio::time::timeout(crate::target::STEP_TIMEOUT, connect)
        .await
        .map_err(|_| "connect timed out".to_string())??;
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = client.next_event() => match event {
                    Some(Event::Envelope(envelope)) => {
                        if envelope.envelope_type != KIND {
                            seen.noise.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(n) = envelope.payload["n"].as_u64() {
                            if let Ok(mut received) = seen.received.lock() {
                                received.push(n);
                            }
                            if let Ok(mut seqs) = seen.seqs.lock() {
                                seqs.push((n, envelope.seq, envelope.recovered));
                            }
                        }
                        let _ = client.ack(&envelope.envelope_id, json!({ "ok": true })).await;
                    }
                    Some(Event::Disconnected { .. }) => {
                        seen.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Event::Reconnected { attempt }) => {
                        seen.attempts.fetch_add(u64::from(attempt), Ordering::Relaxed);
                    }
                    Some(Event::Gap { .. }) => {
                        seen.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = stop.changed() => {
                    client.close();
                    return;
                }
            }
        }
    });
    Ok(log)
}

/// Publishes at `rate` per second, round-robin over `users`, until
/// `publishing` turns false; each publish is its own task (at most 64 in
/// flight). One in four is of type [`NOISE`].
async fn publish_stream(
    publisher: Publisher,
    users: Vec<String>,
    rate: u64,
    idempotent: bool,
    run: String,
    published: Arc<Published>,
    publishing: Arc<AtomicBool>,
) {
    let limit = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while publishing.load(Ordering::Relaxed) {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let u = n as usize % users.len();
        let (publisher, user, published) = (publisher.clone(), users[u].clone(), published.clone());
        let key = idempotent
            .then(|| IdempotencyKey::new(format!("storm-{run}-{n}")).ok())
            .flatten();
        let this = n;
        tasks.push(tokio::spawn(async move {
            let kind = if this % 4 == 3 { NOISE } else { KIND };
            let outcome = publish_one(&publisher, &user, kind, this, key, &published).await;
            match outcome {
                Ok(()) if kind == KIND => {
                    if let Ok(mut to) = published.delivered_to.lock() {
                        to.entry(u).or_default().push(this);
                    }
                }
                Ok(()) => {}
                Err(why) => {
                    if let Ok(mut failed) = published.failed.lock() {
                        failed.push(this);
                    }
                    if let Ok(mut errors) = published.errors.lock() {
                        errors.push(why);
                    }
                }
            }
            drop(permit);
        }));
        n += 1;
    }
    futures::future::join_all(tasks).await;
}

/// One publish; with an idempotency key, a connection error (the runtime
/// stopped under the request, its answer lost, or it is not up yet) is
/// sent again with the same key, 250 ms apart for up to a minute: the
/// server answers a repeat without delivering it twice. Without one (the
/// reference), it fails: sending it again could deliver it twice.
async fn publish_one(
    publisher: &Publisher,
    user: &str,
    kind: &str,
    n: u64,
    key: Option<IdempotencyKey>,
    published: &Published,
) -> Result<(), String> {
    let mut options = PublishOptions::new();
    if let Some(key) = key.clone() {
        options = options.with_idempotency_key(key);
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match publisher
            .publish_with(user, Some(kind), json!({ "n": n }), options.clone())
            .await
        {
            Ok(_) => return Ok(()),
            Err(PublishError::Transport(_)) if key.is_some() && Instant::now() < give_up => {
                published.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(format!("publish {n} to {user}: {e}")),
        }
    }
}

struct Figures {
    back: Vec<f64>,
    resumed: Vec<f64>,
    incomplete: usize,
    not_back: usize,
    lost: usize,
    doubled: usize,
    publishes: usize,
    failed: usize,
    gaps: u64,
    noise: u64,
    attempts: u64,
    never_dropped: usize,
    /// What each double was.
    doubles: Vec<String>,
}

impl Figures {
    fn of(
        logs: &[(usize, Arc<Log>)],
        expected: &BTreeMap<usize, Vec<u64>>,
        published: &Published,
        resumes: bool,
    ) -> Figures {
        let mut f = Figures {
            back: Vec::new(),
            resumed: Vec::new(),
            incomplete: 0,
            not_back: 0,
            lost: 0,
            doubled: 0,
            publishes: expected.values().map(Vec::len).sum(),
            failed: published.failed.lock().map_or(0, |f| f.len()),
            gaps: 0,
            noise: 0,
            attempts: 0,
            never_dropped: 0,
            doubles: Vec::new(),
        };
        for (u, log) in logs {
            match *log.back_ms.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(back) => f.back.push(back),
                None => f.not_back += 1,
            }
            match *log.resumed.lock().unwrap_or_else(|e| e.into_inner()) {
                Some((at, true)) => f.resumed.push(at),
                _ if resumes => f.incomplete += 1,
                _ => {}
            }
            let received = log.received.lock().map(|r| r.clone()).unwrap_or_default();
            let distinct: HashSet<u64> = received.iter().copied().collect();
            f.doubled += received.len() - distinct.len();
            if received.len() > distinct.len() {
                let seqs = log.seqs.lock().map(|s| s.clone()).unwrap_or_default();
                let mut seen = HashSet::new();
                for (n, _, _) in &seqs {
                    if !seen.insert(*n) {
                        let copies: Vec<_> = seqs.iter().filter(|(m, _, _)| m == n).collect();
                        f.doubles
                            .push(format!("n {n}: (n, seq, recovered) {copies:?}"));
                    }
                }
            }
            f.lost += expected.get(u).map_or(0, |want| {
                want.iter().filter(|n| !distinct.contains(n)).count()
            });
            f.gaps += log.gaps.load(Ordering::Relaxed);
            f.noise += log.noise.load(Ordering::Relaxed);
            f.attempts += log.attempts.load(Ordering::Relaxed);
            if log.disconnects.load(Ordering::Relaxed) == 0 {
                f.never_dropped += 1;
            }
        }
        f.back.sort_by(f64::total_cmp);
        f.resumed.sort_by(f64::total_cmp);
        f
    }

    fn record(&self, round: &mut Round, ready_ms: f64, resumes: bool) {
        round.set("redeploy_sockets", (self.back.len() + self.not_back) as f64);
        round.set("redeploy_ready_ms", ready_ms);
        round.set("redeploy_back_p50_ms", percentile(&self.back, 50.0));
        round.set("redeploy_back_p99_ms", percentile(&self.back, 99.0));
        round.set("redeploy_back_p100_ms", percentile(&self.back, 100.0));
        if resumes {
            round.set("redeploy_resumed_p50_ms", percentile(&self.resumed, 50.0));
            round.set("redeploy_resumed_p99_ms", percentile(&self.resumed, 99.0));
            round.set("redeploy_resumed_p100_ms", percentile(&self.resumed, 100.0));
        }
        round.set("redeploy_lost", self.lost as f64);
        round.set("redeploy_doubled", self.doubled as f64);
        round.set("redeploy_publishes", self.publishes as f64);
        round.set("redeploy_failed_publishes", self.failed as f64);
        round.set(
            "redeploy_attempts_per_socket",
            self.attempts as f64 / (self.back.len() + self.not_back).max(1) as f64,
        );
    }

    /// The checks that fail the run. Without history (the reference as
    /// the original service) envelopes sent while a socket was away are
    /// lost by design: that count is the figure, not a failure.
    fn check(&self, sockets: usize, resumes: bool, errors: &[String]) -> Result<(), String> {
        let mut wrong = Vec::new();
        if self.never_dropped > 0 {
            wrong.push(format!("{} sockets never saw the drop", self.never_dropped));
        }
        if self.not_back > 0 {
            wrong.push(format!("{} of {sockets} sockets not back", self.not_back));
        }
        if resumes && self.incomplete > 0 {
            wrong.push(format!("{} sockets not resumed complete", self.incomplete));
        }
        if resumes && (self.lost > 0 || self.gaps > 0) {
            wrong.push(format!("{} envelopes lost, {} gaps", self.lost, self.gaps));
        }
        if self.doubled > 0 {
            wrong.push(format!(
                "{} envelopes delivered twice: {:?}",
                self.doubled,
                self.doubles.iter().take(3).collect::<Vec<_>>()
            ));
        }
        if self.noise > 0 {
            wrong.push(format!("{} envelopes outside the filters", self.noise));
        }
        if resumes && self.failed > 0 {
            wrong.push(format!(
                "{} publishes failed: {:?}",
                self.failed,
                errors.iter().take(3).collect::<Vec<_>>()
            ));
        }
        if wrong.is_empty() {
            return Ok(());
        }
        Err(wrong.join("; "))
    }
}
