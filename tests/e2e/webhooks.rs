//! Webhooks against `wrangler dev`, each test with a worker of its own
//! whose `WEBHOOK_URL` is a receiver the test runs on the loopback: the
//! presence events, their order and `seq`, retries, drops, `ack.late`, the
//! signature, and no request at all without `WEBHOOK_URL`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopeflow_realtime::webhook::{self, Event, EventKind, SIGNATURE_HEADER};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::{publish, sockets_of, unique_user, Client, Server};
use crate::Ctx;

pub fn tests() -> Vec<crate::Test> {
    crate::tests![
        webhooks_online_then_offline_after_the_delay,
        webhooks_a_quick_return_sends_nothing,
        webhooks_failed_requests_are_retried_in_order,
        webhooks_ack_late_with_the_result,
        webhooks_off_without_a_url,
    ]
}

/// A 32-character secret for the tests' workers.
const SECRET: &str = "webhook-secret-for-tests-0123456";

/// What the receiver answers each request, in order; past the list, 200.
#[derive(Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// Reads the request and never answers.
    Silence,
}

/// One request as received: the signature header and the body.
pub struct Received {
    pub signature: String,
    pub body: String,
}

impl Received {
    /// Its events, checked as a receiver must (signature, time, shape).
    pub fn events(&self) -> Vec<Event> {
        let now = now_ms() / 1000;
        webhook::verify(SECRET.as_bytes(), &self.signature, &self.body, now, 300)
            .unwrap_or_else(|err| panic!("a request the worker signed did not verify: {err}"))
    }
}

/// A receiver on 127.0.0.1: its URL, and every request it got.
pub struct Receiver {
    pub url: String,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub async fn start(answers: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, requests) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (tx, answers) = (tx.clone(), answers.clone());
                tokio::spawn(async move {
                    let Some(received) = read_request(&mut stream).await else {
                        return;
                    };
                    let answer = answers.lock().expect("answers").next();
                    let _ = tx.send(received);
                    match answer.unwrap_or(Answer::Status(200)) {
                        Answer::Status(status) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                        }
                        Answer::Silence => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hooks"),
            requests,
        }
    }

    /// The next request, within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Received {
        tokio::time::timeout(wait, self.requests.recv())
            .await
            .expect("no webhook request in time")
            .expect("receiver ended")
    }

    /// Whether a request comes within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.requests.recv())
            .await
            .is_err()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length")?.parse().ok()?;
        if data.len() < end + 4 + length {
            continue;
        }
        let body = String::from_utf8(data[end + 4..end + 4 + length].to_vec()).ok()?;
        return Some(Received {
            signature: header(SIGNATURE_HEADER).unwrap_or_default(),
            body,
        });
    }
}

/// A worker of its own whose webhooks go to `receiver`, with `vars`
/// besides (started off the async workers: starting blocks).
pub async fn start_worker(
    name: &'static str,
    receiver: &Receiver,
    vars: &'static [(&'static str, &'static str)],
) -> Server {
    let url = receiver.url.clone();
    tokio::task::spawn_blocking(move || {
        let secret = format!("e2e-{}", uuid::Uuid::new_v4());
        let mut all = vec![
            ("JWT_SECRET", secret.as_str()),
            ("WEBHOOK_URL", url.as_str()),
            ("WEBHOOK_SECRET", SECRET),
        ];
        all.extend_from_slice(vars);
        Server::spawn(name, &all).wait_ready()
    })
    .await
    .expect("start")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const WAIT: Duration = Duration::from_secs(15);

async fn webhooks_online_then_offline_after_the_delay(_ctx: Arc<Ctx>) {
    let mut receiver = Receiver::start(vec![]).await;
    let server = start_worker(
        "hooks-presence",
        &receiver,
        &[("WEBHOOK_OFFLINE_DELAY_SECS", "1")],
    )
    .await;
    let user = unique_user("presence");
    let socket = Client::for_user(&server, &user).await;
    let online = receiver.next(WAIT).await.events();
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].kind, EventKind::UserOnline { sockets: 1 });
    assert_eq!(
        (online[0].seq, online[0].user_id.as_str()),
        (1, user.as_str())
    );
    let closed_ms = now_ms();
    socket.close().await;
    let offline = receiver.next(WAIT).await.events();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].seq, 2);
    let EventKind::UserOffline { last_seen_at } = offline[0].kind else {
        panic!("expected user.offline: {:?}", offline[0]);
    };
    assert!(
        last_seen_at.abs_diff(closed_ms) < 2_000,
        "{last_seen_at} vs {closed_ms}"
    );
    assert!(
        offline[0].at >= last_seen_at + 1_000,
        "offline before its delay"
    );
    let view = sockets_of(&server, &user).await;
    assert_eq!(
        view.body["webhooks"],
        json!({"pending": 0, "dropped": 0, "lastError": null, "nextAttemptAt": null})
    );
    crate::support::Restartable::stop(server).await;
}

async fn webhooks_a_quick_return_sends_nothing(_ctx: Arc<Ctx>) {
    let mut receiver = Receiver::start(vec![]).await;
    let server = start_worker(
        "hooks-return",
        &receiver,
        &[("WEBHOOK_OFFLINE_DELAY_SECS", "3")],
    )
    .await;
    let user = unique_user("return");
    let first = Client::for_user(&server, &user).await;
    assert_eq!(
        receiver.next(WAIT).await.events()[0].kind,
        EventKind::UserOnline { sockets: 1 }
    );
    first.close().await;
    // Back within the delay: no offline, no second online.
    let mut second = Client::for_user(&server, &user).await;
    second.ping().await;
    assert!(
        receiver.quiet_for(Duration::from_secs(5)).await,
        "an event for a quick return"
    );
    second.close().await;
    let offline = receiver.next(WAIT).await.events();
    assert_eq!(offline[0].seq, 2);
    assert!(matches!(offline[0].kind, EventKind::UserOffline { .. }));
    crate::support::Restartable::stop(server).await;
}

async fn webhooks_failed_requests_are_retried_in_order(_ctx: Arc<Ctx>) {
    let answers = vec![Answer::Status(500), Answer::Status(500), Answer::Silence];
    let mut receiver = Receiver::start(answers).await;
    let server = start_worker(
        "hooks-retry",
        &receiver,
        &[("WEBHOOK_OFFLINE_DELAY_SECS", "0")],
    )
    .await;
    let user = unique_user("retry");
    let socket = Client::for_user(&server, &user).await;
    let first = receiver.next(WAIT).await.events();
    socket.close().await;
    let view = sockets_of(&server, &user).await;
    assert!(view.body["webhooks"]["lastError"]
        .as_str()
        .is_some_and(|e| e.contains("500")));
    // 500, 500, no answer (10 s), then 200: the same ids, in order, and
    // the offline joins the batch behind the online.
    let mut ids_seen = vec![first.iter().map(|e| e.id.clone()).collect::<Vec<_>>()];
    let delivered = loop {
        let events = receiver.next(Duration::from_secs(40)).await.events();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        ids_seen.push(ids);
        if ids_seen.len() == 4 {
            break events;
        }
    };
    for ids in &ids_seen {
        assert_eq!(
            ids[0], first[0].id,
            "every retry starts with the first event"
        );
    }
    let seqs: Vec<u64> = delivered.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(matches!(delivered[1].kind, EventKind::UserOffline { .. }));
    crate::support::Restartable::stop(server).await;
}

async fn webhooks_ack_late_with_the_result(_ctx: Arc<Ctx>) {
    let mut receiver = Receiver::start(vec![]).await;
    let server = start_worker(
        "hooks-late",
        &receiver,
        &[("ACK_TIMEOUT_MS", "300"), ("WEBHOOK_EVENTS", "ack.late")],
    )
    .await;
    let user = unique_user("late");
    let mut socket = Client::for_user(&server, &user).await;
    socket.subscribe(json!([{}])).await;
    let outcome = publish(&server, &user, "slow", json!({"n": 1})).await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": []}));
    // In time for nothing now: the publish was answered.
    let envelope = socket.recv_envelope().await;
    socket.ack(&envelope, json!({"late": true})).await;
    let events = receiver.next(WAIT).await.events();
    assert_eq!(events.len(), 1);
    let EventKind::AckLate {
        envelope_id,
        result,
        ack_ms,
        ..
    } = &events[0].kind
    else {
        panic!("expected ack.late: {:?}", events[0]);
    };
    assert_eq!(envelope_id, envelope["envelopeId"].as_str().expect("id"));
    assert_eq!(result, &json!({"late": true}));
    assert!(*ack_ms >= 300, "{ack_ms}");
    // Once per envelope and socket; and an ack in time makes none.
    socket.ack(&envelope, json!("again")).await;
    let in_time = {
        let server_url = server.http();
        let token = server.token("backend");
        let user = user.clone();
        tokio::spawn(async move {
            crate::support::send(
                crate::support::http()
                    .post(format!("{server_url}/publish"))
                    .bearer_auth(token)
                    .json(&json!({"userId": user, "type": "fast", "payload": 2})),
            )
            .await
        })
    };
    let fast = socket.recv_envelope().await;
    socket.ack(&fast, json!("quick")).await;
    assert_eq!(
        in_time.await.expect("publish").body["results"],
        json!(["quick"])
    );
    assert!(
        receiver.quiet_for(Duration::from_secs(3)).await,
        "an event for an ack in time or a repeat"
    );
    socket.close().await;
    crate::support::Restartable::stop(server).await;
}

async fn webhooks_off_without_a_url(ctx: Arc<Ctx>) {
    // The main server has no WEBHOOK_URL: its sockets view has no webhooks
    // and nothing is ever requested (its receiver would be this test's; it
    // has none, so the view is what shows it).
    let user = unique_user("no-hooks");
    let socket = Client::for_user(&ctx.server, &user).await;
    let view = sockets_of(&ctx.server, &user).await;
    assert_eq!(view.status, 200);
    assert!(view.body.get("webhooks").is_none(), "{}", view.body);
    socket.close().await;
}
