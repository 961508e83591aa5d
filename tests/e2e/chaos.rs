//! Chaos: ten `hopeflow_client::Client`s of one user, with different and
//! overlapping filters, each behind a TCP proxy of its own; a publisher
//! sends 1,000 envelopes at a steady rate while a chaos loop cuts a random
//! client's connection every 100–300 ms (the proxy drops both TCP streams
//! with a reset: no close frame on either side). The clients reconnect and
//! resume from the user's history; at the end each must hold exactly the
//! envelopes its filters match, each once, in `seq` order, with no gap.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hopeflow_client::{Client, ClientOptions, Event, Publisher};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinHandle};

use crate::support::contract;
use crate::support::unique_user;
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![chaos_every_client_gets_exactly_its_envelopes]
}

const PUBLISHES: u64 = 1_000;
/// 1,000 publishes in about 33 s.
const PUBLISH_EVERY: Duration = Duration::from_millis(33);
/// Publishes waiting for their answer at once, at most.
const IN_FLIGHT: usize = 100;
/// A cut every 100–300 ms.
const CUT_MIN_MS: u64 = 100;
const CUT_SPREAD_MS: u64 = 200;
/// Only connections at least this old are cut, so a reconnect's handshake
/// completes and the client's backoff stays at its first step: the test is
/// about resuming, not about backoff outrunning the history (100 envelopes,
/// about 3 s of publishes).
const CUT_AFTER: Duration = Duration::from_millis(50);
/// How long the clients may take to catch up once the publisher is done.
const CATCH_UP: Duration = Duration::from_secs(20);
const SEED: u64 = 0x00c4_a05e_ed12;

/// Envelope `n`'s type and payload: types a / b / c, payload keys `k`
/// (x / y) and `g` (0 to 4), so the filters below overlap in many ways.
fn envelope(n: u64) -> (&'static str, Value) {
    let kind = ["a", "b", "c"][(n % 3) as usize];
    let k = ["x", "y"][((n / 3) % 2) as usize];
    (kind, json!({"n": n, "k": k, "g": (n % 5).to_string()}))
}

/// Each client's filters.
fn filters() -> Vec<Vec<Value>> {
    vec![
        vec![json!({})],
        vec![json!({"type": "a"})],
        vec![json!({"type": "b"})],
        vec![json!({"type": "c"}), json!({"type": "a", "k": "x"})],
        vec![json!({"k": "x"})],
        vec![json!({"type": "b", "k": "y"})],
        vec![json!({"g": "1"}), json!({"g": "2"})],
        vec![json!({"type": "a"}), json!({"g": "3"})],
        vec![json!({"type": "c", "g": "4"}), json!({"k": "y"})],
        vec![
            json!({"type": "a"}),
            json!({"type": "b"}),
            json!({"type": "c"}),
        ],
    ]
}

/// The documented matching, written out independently of the server's:
/// `type` against the envelope's type, other keys against the payload's.
fn matches(filter: &Value, kind: &str, payload: &Value) -> bool {
    filter
        .as_object()
        .expect("filter object")
        .iter()
        .all(|(key, want)| {
            if key == "type" {
                want == kind
            } else {
                payload.get(key) == Some(want)
            }
        })
}

/// splitmix64: seeded, so every run cuts in the same pattern.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// A TCP proxy to the server for one client. [`Proxy::cut`] aborts its
/// connections: both streams are dropped with `SO_LINGER` 0, so the client
/// and the server see a reset, never a close frame.
struct Proxy {
    port: u16,
    connections: Arc<Mutex<Vec<(Instant, AbortHandle)>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let live = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    for stream in [&inbound, &outbound] {
                        let _ = stream.set_nodelay(true);
                        let _ = stream.set_zero_linger();
                    }
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                let mut live = live.lock().expect("lock");
                live.retain(|(_, relay): &(Instant, AbortHandle)| !relay.is_finished());
                live.push((Instant::now(), relay.abort_handle()));
            }
        })
        .abort_handle();
        Proxy {
            port,
            connections,
            accept,
        }
    }

    /// Whether a connection has been up for `CUT_AFTER`.
    fn cuttable(&self) -> bool {
        let live = self.connections.lock().expect("lock");
        live.iter()
            .any(|(since, relay)| !relay.is_finished() && since.elapsed() >= CUT_AFTER)
    }

    /// Aborts every connection of this proxy.
    fn cut(&self) {
        for (_, relay) in self.connections.lock().expect("lock").drain(..) {
            relay.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// What one client saw.
#[derive(Default)]
struct Log {
    /// (seq, n, recovered) of each envelope, in the order delivered.
    envelopes: Vec<(u64, u64, bool)>,
    reconnects: usize,
    gaps: Vec<Event>,
    errors: Vec<Event>,
}

/// Takes the client's events, acks every envelope (so publishes answer
/// without waiting for the ack timeout), and logs them.
fn follow(mut client: Client, log: Arc<Mutex<Log>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            match event {
                Event::Envelope(envelope) => {
                    let _ = client.ack(&envelope.envelope_id, Value::Null).await;
                    let seq = envelope
                        .seq
                        .expect("history is on: every envelope has a seq");
                    let n = envelope.payload["n"].as_u64().expect("payload n");
                    let mut log = log.lock().expect("lock");
                    log.envelopes.push((seq, n, envelope.recovered));
                }
                Event::Reconnected { .. } => log.lock().expect("lock").reconnects += 1,
                Event::Disconnected { .. }
                | Event::TokenExpiring { .. }
                | Event::Refreshed { .. } => {}
                gap @ Event::Gap { .. } => log.lock().expect("lock").gaps.push(gap),
                error @ (Event::ServerError { .. }
                | Event::RefreshRejected { .. }
                | Event::TokenExpired { .. }
                | Event::Rejected { .. }) => log.lock().expect("lock").errors.push(error),
            }
        }
    })
}

async fn chaos_every_client_gets_exactly_its_envelopes(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("chaos");
    let filters = filters();
    let expected: Vec<BTreeSet<u64>> = filters
        .iter()
        .map(|client| {
            (0..PUBLISHES)
                .filter(|&n| {
                    let (kind, payload) = envelope(n);
                    client.iter().any(|f| matches(f, kind, &payload))
                })
                .collect()
        })
        .collect();

    let mut proxies = Vec::new();
    let mut logs = Vec::new();
    let mut followers = Vec::new();
    for client_filters in &filters {
        let proxy = Proxy::start(server.port).await;
        let mut options = contract::checked(ClientOptions::new(
            format!("ws://127.0.0.1:{}", proxy.port),
            server.token(&user),
        ));
        options.backoff_initial = Duration::from_millis(100);
        options.backoff_max = Duration::from_secs(1);
        let client = Client::connect(options).await.expect("connect");
        client
            .subscribe(client_filters.clone())
            .await
            .expect("subscribe");
        assert!(client.position().is_some(), "history is on: a position");
        let log = Arc::new(Mutex::new(Log::default()));
        followers.push(follow(client, log.clone()));
        logs.push(log);
        proxies.push(proxy);
    }

    let started = Instant::now();
    let publishing = AtomicBool::new(true);
    let publisher = Publisher::new(&server.http(), server.token("chaos-backend"));
    let publish_all = async {
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut ticks = tokio::time::interval(PUBLISH_EVERY);
        let mut answers = Vec::new();
        for n in 0..PUBLISHES {
            ticks.tick().await;
            let permit = permits.clone().acquire_owned().await.expect("permit");
            let (publisher, user) = (publisher.clone(), user.clone());
            answers.push(tokio::spawn(async move {
                let sent = Instant::now();
                let (kind, payload) = envelope(n);
                let outcome = publisher.publish(&user, Some(kind), payload).await;
                drop(permit);
                (n, outcome, sent.elapsed())
            }));
        }
        let mut slowest = Duration::ZERO;
        for answer in answers {
            let (n, outcome, took) = answer.await.expect("publish task");
            if let Err(e) = outcome {
                panic!("publish {n} failed: {e}");
            }
            slowest = slowest.max(took);
        }
        publishing.store(false, Ordering::SeqCst);
        slowest
    };
    let chaos = async {
        let mut rng = Rng(SEED);
        let mut cuts = vec![0usize; proxies.len()];
        while publishing.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(
                CUT_MIN_MS + rng.below(CUT_SPREAD_MS + 1),
            ))
            .await;
            let up: Vec<usize> = (0..proxies.len())
                .filter(|&i| proxies[i].cuttable())
                .collect();
            if up.is_empty() {
                continue;
            }
            let victim = up[rng.below(up.len() as u64) as usize];
            proxies[victim].cut();
            cuts[victim] += 1;
        }
        cuts
    };
    let (slowest, cuts) = tokio::join!(publish_all, chaos);
    let published = started.elapsed();

    // Every client catches up: the last cut's reconnect resumes.
    let caught_up = Instant::now();
    loop {
        let done = logs.iter().zip(&expected).all(|(log, expected)| {
            let log = log.lock().expect("lock");
            log.envelopes.len() >= expected.len() || !log.gaps.is_empty()
        });
        if done {
            break;
        }
        if caught_up.elapsed() > CATCH_UP {
            break; // the assertions below say who is missing what
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catch_up = caught_up.elapsed();
    // Anything late (a duplicate, say) would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for follower in &followers {
        follower.abort();
    }

    let mut report = format!(
        "chaos: {PUBLISHES} publishes in {:.1} s (slowest answer {} ms), {} cuts, caught up {:.1} s later",
        published.as_secs_f64(),
        slowest.as_millis(),
        cuts.iter().sum::<usize>(),
        catch_up.as_secs_f64()
    );
    let mut seq_of: HashMap<u64, u64> = HashMap::new();
    let mut failures = Vec::new();
    let mut recovered_total = 0;
    for (i, (log, expected)) in logs.iter().zip(&expected).enumerate() {
        let log = log.lock().expect("lock");
        let recovered = log.envelopes.iter().filter(|e| e.2).count();
        recovered_total += recovered;
        report.push_str(&format!(
            "\n  client {i}: {} envelopes ({recovered} recovered), {} cuts, {} reconnects, {} gaps  {}",
            log.envelopes.len(),
            cuts[i],
            log.reconnects,
            log.gaps.len(),
            Value::from(filters[i].clone())
        ));
        if !log.gaps.is_empty() || !log.errors.is_empty() {
            failures.push(format!(
                "client {i}: gaps {:?}, errors {:?}",
                log.gaps, log.errors
            ));
        }
        if let Some(w) = log.envelopes.windows(2).find(|w| w[0].0 >= w[1].0) {
            failures.push(format!(
                "client {i}: seq {} came after seq {} (not in seq order, or twice)",
                w[1].0, w[0].0
            ));
        }
        let got: Vec<u64> = log.envelopes.iter().map(|e| e.1).collect();
        let distinct: BTreeSet<u64> = got.iter().copied().collect();
        if distinct.len() != got.len() {
            failures.push(format!("client {i}: some envelope came twice"));
        }
        let missing: Vec<_> = expected.difference(&distinct).collect();
        let extra: Vec<_> = distinct.difference(expected).collect();
        if !missing.is_empty() || !extra.is_empty() {
            failures.push(format!(
                "client {i}: missing {} {missing:?}, unexpected {} {extra:?}",
                missing.len(),
                extra.len()
            ));
        }
        // One seq per envelope, the same for every client.
        for &(seq, n, _) in &log.envelopes {
            if *seq_of.entry(n).or_insert(seq) != seq {
                failures.push(format!(
                    "client {i}: envelope {n} has seq {seq}, another client saw {}",
                    seq_of[&n]
                ));
            }
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let distinct_seqs: BTreeSet<u64> = seq_of.values().copied().collect();
    assert_eq!(
        distinct_seqs.len(),
        seq_of.len(),
        "two envelopes share a seq"
    );
    assert_eq!(seq_of.len() as u64, PUBLISHES, "client 0 gets everything");
    // The chaos did happen, and resuming did recover envelopes.
    assert!(
        cuts.iter().all(|&c| c > 0),
        "every client was cut: {cuts:?}"
    );
    assert!(recovered_total > 0, "nothing was ever recovered");
}
