//! The scenarios. Each one runs against one fresh [`Target`] and adds its
//! figures to a [`Round`]; a failed check ends the scenario with an error
//! instead of a number.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{ms, percentile};
use crate::target::Target;

/// How big each scenario is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub round_trip_warmup: u64,
    pub round_trip_publishes: u64,
    pub throughput_sockets: usize,
    pub throughput_publishers: usize,
    pub throughput_secs: u64,
    pub fanout_sockets: usize,
    pub fanout_publishes: u64,
    pub many_users: usize,
    pub many_users_publishers: usize,
    pub many_users_secs: u64,
    pub nobody_warmup: u64,
    pub nobody_publishes: u64,
    pub storm_sockets: usize,
    pub idle_sockets: usize,
    pub idle_fanout_publishes: u64,
    /// Handshakes in flight at once when opening many sockets.
    pub parallel_connects: usize,
    /// `--smoke`: also the opt-in scenarios, tiny.
    pub smoke: bool,
    /// One user at the cap (`--scenarios cap`, not in the default run):
    /// its sockets (`BENCH_CAP_SOCKETS`), publishes to all of them, and the
    /// idle seconds before the publish that wakes the object.
    pub cap_sockets: usize,
    pub cap_publishes: u64,
    pub cap_idle_secs: u64,
    /// Wide batches: rounds of a 100-user batch and of 100 concurrent
    /// singles; the broadcast's users and batches in flight
    /// (`BENCH_BROADCAST_USERS`, `BENCH_BROADCAST_CONCURRENCY`).
    pub wide_rounds: u64,
    pub broadcast_users: usize,
    pub broadcast_concurrency: usize,
    /// Sequential publishes to 2 acking sockets whose cost is counted.
    pub cost_publishes: u64,
    /// The redeploy storm: users × sockets each (`BENCH_REDEPLOY_USERS`,
    /// `BENCH_REDEPLOY_SOCKETS`), publishes per second over all users
    /// (`BENCH_REDEPLOY_RATE`), seconds of publishing before the restart
    /// and after every socket is back; 0 users skips it.
    pub redeploy_users: usize,
    pub redeploy_sockets_per_user: usize,
    pub redeploy_rate: u64,
    pub redeploy_lead_secs: u64,
    pub redeploy_tail_secs: u64,
    /// The clients' reconnect backoff (initial, max) in ms, when not the
    /// client's default (`BENCH_STORM_BACKOFF_MS=initial,max`).
    pub redeploy_backoff_ms: Option<(u64, u64)>,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            round_trip_warmup: 20,
            round_trip_publishes: 1_000,
            throughput_sockets: 4,
            throughput_publishers: 16,
            throughput_secs: 5,
            fanout_sockets: 1_000,
            fanout_publishes: 5,
            many_users: 1_000,
            many_users_publishers: 16,
            many_users_secs: 5,
            nobody_warmup: 20,
            nobody_publishes: 1_000,
            storm_sockets: 2_000,
            idle_sockets: 10_000,
            idle_fanout_publishes: 2,
            parallel_connects: 128,
            smoke: false,
            cap_sockets: 19_000,
            cap_publishes: 3,
            cap_idle_secs: 25,
            wide_rounds: 50,
            broadcast_users: 1_000,
            broadcast_concurrency: 4,
            cost_publishes: 1_000,
            redeploy_users: 500,
            redeploy_sockets_per_user: 2,
            redeploy_rate: 100,
            redeploy_lead_secs: 3,
            redeploy_tail_secs: 2,
            redeploy_backoff_ms: None,
        }
    }

    /// Just enough to run every code path (`make test`).
    pub fn smoke() -> Sizes {
        Sizes {
            round_trip_warmup: 1,
            round_trip_publishes: 5,
            throughput_sockets: 2,
            throughput_publishers: 2,
            throughput_secs: 1,
            fanout_sockets: 10,
            fanout_publishes: 2,
            many_users: 4,
            many_users_publishers: 2,
            many_users_secs: 1,
            nobody_warmup: 1,
            nobody_publishes: 5,
            storm_sockets: 20,
            idle_sockets: 50,
            idle_fanout_publishes: 1,
            parallel_connects: 8,
            smoke: true,
            cap_sockets: 40,
            cap_publishes: 2,
            cap_idle_secs: 1,
            wide_rounds: 2,
            broadcast_users: 300,
            broadcast_concurrency: 2,
            cost_publishes: 5,
            redeploy_users: 5,
            redeploy_sockets_per_user: 2,
            redeploy_rate: 20,
            redeploy_lead_secs: 1,
            redeploy_tail_secs: 1,
            redeploy_backoff_ms: None,
        }
    }

    /// How long every socket may take to come back after the restart.
    pub fn redeploy_timeout(&self) -> Duration {
        Duration::from_secs(120)
    }
}

/// Everything measured on one server in one round.
#[derive(Default)]
pub struct Round {
    pub metrics: BTreeMap<&'static str, f64>,
    /// Every measured round-trip latency in run order, in ms (for the chart).
    pub round_trips_ms: Vec<f64>,
    /// Failed checks and limits hit, with the scenario that hit them.
    pub problems: Vec<String>,
    /// The redeploy storm's sockets over time (for `redeploy.svg`).
    pub redeploy: Vec<Timeline>,
}

/// When each socket of a redeploy storm was back and resumed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timeline {
    pub which: &'static str,
    /// ms from the drop to each socket's first `subscribed` after it, sorted.
    pub back_ms: Vec<f64>,
    /// ms from the drop to each socket's `resumed` with `complete`, sorted.
    pub resumed_ms: Vec<f64>,
    /// ms from the drop until the restarted runtime answered `/health`.
    pub ready_ms: f64,
    pub sockets: usize,
}

impl Round {
    pub fn set(&mut self, key: &'static str, value: f64) {
        self.metrics.insert(key, value);
    }

    fn note(&mut self, scenario: &str, outcome: Result<(), String>) {
        if let Err(why) = outcome {
            self.problems.push(format!("{scenario}: {why}"));
        }
    }
}

/// `--scenarios a,b`: only these (start, rt, tp, fanout, nobody, many,
/// storm, idle), for trying a change; unset runs all.
pub static ONLY: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn wanted(name: &str) -> bool {
    ONLY.get().is_none_or(|only| only.iter().any(|n| n == name))
}

/// Named in `--scenarios` (for the scenarios the default run leaves out).
fn asked_for(name: &str) -> bool {
    ONLY.get()
        .is_some_and(|only| only.iter().any(|n| n == name))
}

/// Runs every scenario (or those of `subset`), in a fixed order, each with
/// its own user.
pub async fn run_all(
    target: &mut Target,
    sizes: &Sizes,
    subset: Option<&[&str]>,
    round: &mut Round,
) {
    let wanted = |name: &str| wanted(name) && subset.is_none_or(|s| s.contains(&name));
    round.set("ready_ms", ms(target.ready_after));
    if wanted("start") {
        let outcome = first_request(target, sizes, round).await;
        round.note("first request", outcome);
    }
    if wanted("rt") {
        let outcome = round_trip(target, sizes, round).await;
        round.note("round trip", outcome);
    }
    if wanted("tp") {
        let outcome = throughput(target, sizes, round).await;
        round.note("throughput", outcome);
    }
    if wanted("fanout") {
        let outcome = fan_out(target, sizes, round).await;
        round.note("fan-out", outcome);
    }
    if wanted("nobody") {
        let outcome = nobody_listening(target, sizes, round).await;
        round.note("nobody listening", outcome);
    }
    if wanted("cost") && target.which != crate::target::Impl::Floor {
        let outcome = crate::scale::cost(target, sizes, round).await;
        round.note("cost per publish", outcome);
    }
    // After the one-user scenarios, so the objects it leaves behind do not
    // share the runtime with them.
    if wanted("many") {
        let outcome = many_users(target, sizes, round).await;
        round.note("many users", outcome);
    }
    // `--quick` sets these two to 0 to skip them.
    if sizes.storm_sockets > 0 && wanted("storm") {
        let outcome = connect_storm(target, sizes, round).await;
        round.note("connect storm", outcome);
    }
    // Last: it leaves the runtime with the most to clean up.
    if sizes.idle_sockets > 0 && wanted("idle") {
        let outcome = idle_sockets(target, sizes, round).await;
        round.note("idle sockets (memory, big fan-out)", outcome);
    }
    // Opt-in (minutes, and the sockets this machine allows), but in the smoke.
    let protocol = target.which != crate::target::Impl::Floor;
    if (asked_for("cap") || sizes.smoke) && wanted("cap") && protocol {
        let outcome = crate::scale::one_user_at_cap(target, sizes, round).await;
        round.note("one user at the cap", outcome);
    }
    // Only hopeflow has `/publish/batch`.
    if wanted("wide") && target.which == crate::target::Impl::Hopeflow {
        let outcome = crate::scale::wide(target, sizes, round).await;
        round.note("wide batches", outcome);
    }
    // After everything else: it restarts the runtime.
    if sizes.redeploy_users > 0 && wanted("redeploy") && target.which.redeploy_storm() {
        let outcome = crate::storm::redeploy(target, sizes, round).await;
        round.note("redeploy storm", outcome);
    }
}

/// What `--profile` samples: one scenario (`rt`, `tp`, `fanout`, or
/// `health`: the bare request path) or, for any other name, the round trip,
/// throughput and fan-out in turn.
pub async fn profile_workload(target: &Target, sizes: &Sizes, which: &str, round: &mut Round) {
    if which == "health" {
        for _ in 0..sizes.round_trip_publishes * 3 {
            if let Err(why) = target.health().await {
                round.problems.push(why);
                return;
            }
        }
        return;
    }
    if which == "first" {
        let outcome = first_request(target, sizes, round).await;
        round.note("first request", outcome);
        return;
    }
    let all = !["rt", "tp", "fanout"].contains(&which);
    if all || which == "rt" {
        let outcome = round_trip(target, sizes, round).await;
        round.note("round trip", outcome);
    }
    if all || which == "tp" {
        let outcome = throughput(target, sizes, round).await;
        round.note("throughput", outcome);
    }
    if all || which == "fanout" {
        let outcome = fan_out(target, sizes, round).await;
        round.note("fan-out", outcome);
    }
}

/// A number not handed out before in this process.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn user(scenario: &str) -> String {
    format!("bench-{scenario}-{}-{}", std::process::id(), unique())
}

/// The first publish after start-up: creates the first Durable Object and,
/// for hopeflow, runs the first token check through the wasm module.
/// The first publish after start, then one to a second new user and one
/// to the first again: what the first costs beyond creating an object
/// (code run for the first time) and what creating an object costs.
async fn first_request(target: &Target, _: &Sizes, round: &mut Round) -> Result<(), String> {
    let first = user("first");
    let took = target.publish(&first, 0, 0).await?;
    round.set("first_publish_ms", ms(took));
    let took = target.publish(&user("second"), 0, 0).await?;
    round.set("second_object_publish_ms", ms(took));
    let took = target.publish(&first, 1, 0).await?;
    round.set("first_object_again_ms", ms(took));
    Ok(())
}

/// One acking socket, sequential publishes: the latency of one delivery.
async fn round_trip(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = user("rt");
    let opened = target.open(&user, 1, 1).await;
    if let Some(why) = opened.error {
        return Err(why);
    }
    for n in 0..sizes.round_trip_warmup {
        target.publish(&user, n, 1).await?;
    }
    let mut samples = Vec::with_capacity(sizes.round_trip_publishes as usize);
    let cpu_before = target.cpu_secs();
    let helpers_before = target.helper_cpu_secs();
    for n in 0..sizes.round_trip_publishes {
        samples.push(ms(target.publish(&user, n, 1).await?));
    }
    let per_publish = 1e6 / sizes.round_trip_publishes as f64;
    let cpu_us = (target.cpu_secs() - cpu_before) * per_publish;
    let helpers_us = (target.helper_cpu_secs() - helpers_before) * per_publish;
    opened.sockets.close().await;
    // Outside the measured window; a server that did not record every
    // publish gets no round-trip figures.
    if target.which.keeps_history() {
        let published = sizes.round_trip_warmup + sizes.round_trip_publishes;
        target.check_history(&user, published).await?;
    }
    round.set("rt_cpu_us", cpu_us);
    round.set("rt_helper_cpu_us", helpers_us);
    // Kept in run order, so a trend over time shows in the JSON.
    round.round_trips_ms.extend(&samples);
    samples.sort_by(f64::total_cmp);
    round.set("rt_p50_ms", percentile(&samples, 50.0));
    round.set("rt_p90_ms", percentile(&samples, 90.0));
    round.set("rt_p99_ms", percentile(&samples, 99.0));
    round.set("rt_max_ms", percentile(&samples, 100.0));
    Ok(())
}

/// Several sockets of one user, many publishers in parallel for a fixed
/// time: how much one user's object can deliver.
async fn throughput(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = user("tp");
    let sockets = sizes.throughput_sockets;
    let opened = target.open(&user, sockets, sockets).await;
    if let Some(why) = opened.error {
        return Err(why);
    }
    let done = Arc::new(AtomicBool::new(false));
    let published = AtomicU64::new(0);
    let acks_before = opened.sockets.acks();
    let cpu_before = target.cpu_secs();
    let helpers_before = target.helper_cpu_secs();
    let started = Instant::now();
    let publishers = (0..sizes.throughput_publishers).map(|p| {
        let (done, published, user) = (done.clone(), &published, &user);
        async move {
            let mut n = p as u64 * 1_000_000;
            while !done.load(Ordering::Relaxed) {
                target.publish(user, n, sockets).await?;
                published.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<(), String>(())
        }
    });
    let stopper = async {
        tokio::time::sleep(Duration::from_secs(sizes.throughput_secs)).await;
        done.store(true, Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(futures::future::join_all(publishers), stopper);
    // Publishes started before the stop finish after it; count them all
    // over the whole elapsed time.
    let elapsed = started.elapsed().as_secs_f64();
    let acks = opened.sockets.acks() - acks_before;
    let cpu = target.cpu_secs() - cpu_before;
    let helpers = target.helper_cpu_secs() - helpers_before;
    opened.sockets.close().await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    round.set(
        "tp_publishes_per_s",
        published.load(Ordering::Relaxed) as f64 / elapsed,
    );
    round.set("tp_acks_per_s", acks as f64 / elapsed);
    let published = published.load(Ordering::Relaxed).max(1) as f64;
    round.set("tp_cpu_us", cpu * 1e6 / published);
    round.set("tp_helper_cpu_us", helpers * 1e6 / published);
    Ok(())
}

/// One publish to many sockets of one user, until every ack is in.
async fn fan_out(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = user("fanout");
    let opened = target
        .open(&user, sizes.fanout_sockets, sizes.parallel_connects)
        .await;
    if let Some(why) = opened.error {
        opened.sockets.close().await;
        return Err(why);
    }
    let mut samples = Vec::new();
    let cpu_before = target.cpu_secs();
    for n in 0..sizes.fanout_publishes {
        match target.publish(&user, n, sizes.fanout_sockets).await {
            Ok(took) => samples.push(ms(took)),
            Err(why) => {
                opened.sockets.close().await;
                return Err(why);
            }
        }
    }
    opened.sockets.close().await;
    round.set(
        "fanout_cpu_ms",
        (target.cpu_secs() - cpu_before) * 1e3 / sizes.fanout_publishes.max(1) as f64,
    );
    samples.sort_by(f64::total_cmp);
    round.set("fanout_p50_ms", percentile(&samples, 50.0));
    round.set("fanout_max_ms", percentile(&samples, 100.0));
    Ok(())
}

/// Publishes to a user with no socket: the worker → object → answer path
/// alone, with no delivery or ack to wait for.
async fn nobody_listening(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = user("nobody");
    for n in 0..sizes.nobody_warmup {
        target.publish(&user, n, 0).await?;
    }
    let mut samples = Vec::with_capacity(sizes.nobody_publishes as usize);
    let cpu_before = target.cpu_secs();
    for n in 0..sizes.nobody_publishes {
        samples.push(ms(target.publish(&user, n, 0).await?));
    }
    round.set(
        "nobody_cpu_us",
        (target.cpu_secs() - cpu_before) * 1e6 / sizes.nobody_publishes.max(1) as f64,
    );
    samples.sort_by(f64::total_cmp);
    round.set("nobody_p50_ms", percentile(&samples, 50.0));
    round.set("nobody_p90_ms", percentile(&samples, 90.0));
    round.set("nobody_p99_ms", percentile(&samples, 99.0));
    Ok(())
}

/// One acking socket for each of many users, many publishers in parallel
/// for a fixed time, round-robin over the users: every publish goes through
/// a different object than the one before, as in a service with many users.
async fn many_users(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let users: Vec<String> = (0..sizes.many_users).map(|_| user("users")).collect();
    let opened = target.open_users(&users, sizes.parallel_connects).await;
    if let Some(why) = opened.error {
        opened.sockets.close().await;
        return Err(why);
    }
    let done = Arc::new(AtomicBool::new(false));
    // Shared, so concurrent publishers take different users.
    let next = AtomicU64::new(0);
    let published = AtomicU64::new(0);
    let cpu_before = target.cpu_secs();
    let started = Instant::now();
    let publishers = (0..sizes.many_users_publishers).map(|_| {
        let (done, next, published, users) = (done.clone(), &next, &published, &users);
        async move {
            while !done.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let user = &users[n as usize % users.len()];
                target
                    .publish(user, n, 1)
                    .await
                    .map_err(|why| format!("{user}: {why}"))?;
                published.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }
    });
    let stopper = async {
        tokio::time::sleep(Duration::from_secs(sizes.many_users_secs)).await;
        done.store(true, Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(futures::future::join_all(publishers), stopper);
    // As in `throughput`: every publish over the whole elapsed time.
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = target.cpu_secs() - cpu_before;
    opened.sockets.close().await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let published = published.load(Ordering::Relaxed);
    round.set("users_publishes_per_s", published as f64 / elapsed);
    round.set("users_cpu_us", cpu * 1e6 / published.max(1) as f64);
    Ok(())
}

/// Many sockets connecting and subscribing at once.
async fn connect_storm(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = user("storm");
    let started = Instant::now();
    let opened = target
        .open(&user, sizes.storm_sockets, sizes.parallel_connects)
        .await;
    let took = started.elapsed();
    let error = opened.error.clone();
    let mut times: Vec<f64> = opened.connect_times.iter().copied().map(ms).collect();
    opened.sockets.close().await;
    if let Some(why) = error {
        return Err(why);
    }
    times.sort_by(f64::total_cmp);
    round.set("storm_total_ms", ms(took));
    round.set("storm_connect_p50_ms", percentile(&times, 50.0));
    round.set("storm_connect_p99_ms", percentile(&times, 99.0));
    Ok(())
}

/// Resident memory of workerd before and after opening many idle
/// subscribed sockets, then a publish to all of them.
async fn idle_sockets(target: &Target, sizes: &Sizes, round: &mut Round) -> Result<(), String> {
    let user = user("idle");
    let before = target.rss().ok_or("no workerd process found")?;
    let opened = target
        .open(&user, sizes.idle_sockets, sizes.parallel_connects)
        .await;
    let reached = opened.sockets.len();
    round.set("idle_sockets_reached", reached as f64);
    let after = target.rss().ok_or("no workerd process found")?;
    if reached > 0 {
        round.set(
            "idle_bytes_per_socket",
            after.saturating_sub(before) as f64 / reached as f64,
        );
    }
    round.set("idle_rss_before_mib", before as f64 / 1_048_576.0);
    round.set("idle_rss_after_mib", after as f64 / 1_048_576.0);
    let mut outcome = match opened.error {
        Some(why) => Err(format!("opened {reached} of {}: {why}", sizes.idle_sockets)),
        None => Ok(()),
    };
    if reached > 0 {
        let mut samples = Vec::new();
        for n in 0..sizes.idle_fanout_publishes {
            match target.publish(&user, n, reached).await {
                Ok(took) => samples.push(ms(took)),
                Err(why) => {
                    outcome = outcome.and(Err(format!("publish to {reached} sockets: {why}")));
                    break;
                }
            }
        }
        if !samples.is_empty() {
            samples.sort_by(f64::total_cmp);
            round.set("idle_fanout_p50_ms", percentile(&samples, 50.0));
        }
    }
    opened.sockets.close().await;
    outcome
}
