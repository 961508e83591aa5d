//! The Rust client and the `hopeflow` CLI against the operator API (issue
//! 11): listing and disconnecting a user's sockets, close codes 4001 / 4000
//! as the Rust `Client` lives them, batch publishes, idempotency keys and
//! per-socket detail, through the library and through the CLI as a process.

use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hopeflow_client::{
    token, Client, ClientOptions, DeliveryStatus, Envelope, Event, IdempotencyKey, PublishError,
    PublishOptions, Publisher, SocketInfo,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::hopeflow;
use crate::support::contract;
use crate::support::{unique_user, Server, WAIT};
use crate::{tests, Ctx, Test};

/// Named `operator_client_*`, so `cargo test --test e2e -- operator_client`
/// runs them (the runner filters by name).
pub fn tests() -> Vec<Test> {
    tests![
        operator_client_library_sockets_need_an_operator_token,
        operator_client_disconnect_for_good_ends_the_client,
        operator_client_disconnect_with_reconnect_fetches_a_fresh_token,
        operator_client_library_batch_reaches_every_user_in_order,
        operator_client_library_idempotency_replays_and_conflicts,
        operator_client_library_detail_reports_each_socket,
        operator_client_cli_sockets_disconnect_and_operator_token,
        operator_client_cli_batch_publish_to_two_users,
        operator_client_cli_idempotency_key_replays,
        operator_client_cli_detail_lists_deliveries,
        operator_client_cli_listen_follows_operator_disconnects,
    ]
}

fn secret(server: &Server) -> String {
    server.secret.clone().expect("secret")
}

/// A publisher whose token has the operator scope.
fn operator(server: &Server) -> Publisher {
    Publisher::new(
        &server.http(),
        token::mint(&secret(server), "ops", None, token::operator_claims()),
    )
}

fn options(server: &Server, user: &str) -> ClientOptions {
    let mut options = contract::checked(ClientOptions::new(
        server.base_ws(),
        token::mint(&secret(server), user, None, Map::new()),
    ));
    options.backoff_initial = Duration::from_millis(50);
    options.backoff_max = Duration::from_millis(500);
    options
}

/// A client of `user` whose `filters` the server has confirmed.
async fn subscribed(server: &Server, user: &str, filters: Value) -> Client {
    let client = Client::connect(options(server, user))
        .await
        .expect("connect");
    let filters = filters.as_array().cloned().expect("an array of filters");
    client.subscribe(filters).await.expect("subscribe");
    client
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

/// A client that acks every delivery with `result` and hands the envelopes
/// to the test; dropped, it closes the client.
struct Acker {
    envelopes: mpsc::UnboundedReceiver<Envelope>,
    task: JoinHandle<()>,
}

impl Acker {
    fn new(mut client: Client, result: Value) -> Acker {
        let (sender, envelopes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(envelope) = client.next_envelope().await {
                let _ = client.ack(&envelope.envelope_id, result.clone()).await;
                if sender.send(envelope).is_err() {
                    break;
                }
            }
        });
        Acker { envelopes, task }
    }

    async fn next(&mut self) -> Envelope {
        within(self.envelopes.recv()).await.expect("an envelope")
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The socket whose filters are exactly `filters`.
fn socket_with<'a>(sockets: &'a [SocketInfo], filters: &Value) -> &'a SocketInfo {
    sockets
        .iter()
        .find(|s| Value::from(s.filters.clone()) == *filters)
        .unwrap_or_else(|| panic!("no socket with filters {filters}: {sockets:?}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Polls the user's socket count until it is `count` (closes are processed
/// by the server asynchronously).
async fn until_sockets(server: &Server, user: &str, count: usize) {
    let operator = operator(server);
    within(async {
        loop {
            let sockets = operator.sockets(user).await.expect("sockets");
            if sockets.count == count && sockets.sockets.len() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

async fn cli(args: &[&str]) -> Output {
    within(hopeflow().args(args).output())
        .await
        .expect("run hopeflow")
}

/// A successful run's stdout as JSON.
fn answer(output: &Output) -> Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("stdout is not JSON: {output:?}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn operator_client_library_sockets_need_an_operator_token(ctx: Arc<Ctx>) {
    // Characters a path must carry encoded: space, slash, ?, #, %, non-ASCII.
    let user = format!("{} a/b?c#d%e é", unique_user("opsock"));
    let before = now_ms();
    let _chat = subscribed(&ctx.server, &user, json!([{"type": "chat"}])).await;
    let _all = subscribed(&ctx.server, &user, json!([{}])).await;
    let sockets = operator(&ctx.server).sockets(&user).await.expect("sockets");
    assert_eq!(sockets.user_id, user);
    assert_eq!((sockets.count, sockets.pending_publishes), (2, 0));
    assert_eq!(sockets.sockets.len(), 2);
    let chat = socket_with(&sockets.sockets, &json!([{"type": "chat"}]));
    let all = socket_with(&sockets.sockets, &json!([{}]));
    assert!(!chat.socket_id.is_empty() && chat.socket_id != all.socket_id);
    for socket in [chat, all] {
        // Same machine, same clock; a minute of slack for slow starts.
        assert!(
            socket.connected_at + 60_000 >= before && socket.connected_at <= now_ms() + 60_000,
            "connectedAt {} not near {before}",
            socket.connected_at
        );
    }

    let nobody = operator(&ctx.server)
        .sockets(&unique_user("opnobody"))
        .await
        .expect("sockets of nobody");
    assert_eq!((nobody.count, nobody.sockets.len()), (0, 0));

    // A valid token without the operator scope is refused.
    let plain = Publisher::new(&ctx.server.http(), ctx.server.token("backend"));
    match plain.sockets(&user).await {
        Err(PublishError::Forbidden(e)) => assert_eq!(e.error, "forbidden"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    match plain.disconnect(&user, None, false, None).await {
        Err(PublishError::Forbidden(e)) => assert_eq!(e.error, "forbidden"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // Nothing was closed by the refused call.
    assert_eq!(
        operator(&ctx.server)
            .sockets(&user)
            .await
            .expect("sockets")
            .count,
        2
    );
}

async fn operator_client_disconnect_for_good_ends_the_client(ctx: Arc<Ctx>) {
    let user = unique_user("opgone");
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let secret = secret(&ctx.server);
    let minted_for = user.clone();
    let options = options(&ctx.server, &user).with_token_provider(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let token = token::mint(&secret, &minted_for, None, Map::new());
        async move { Ok(token) }
    });
    let mut client = Client::connect(options).await.expect("connect");
    client.subscribe(vec![json!({})]).await.expect("subscribe");

    let outcome = operator(&ctx.server)
        .disconnect(&user, None, false, Some("account closed"))
        .await
        .expect("disconnect");
    assert_eq!(outcome.closed, 1);
    match within(client.next_event()).await {
        Some(Event::Disconnected { code, reason }) => {
            assert_eq!(code, Some(4001));
            assert!(reason.contains("account closed"), "{reason:?}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // No reconnect: the client ends, and never asked for a token.
    assert_eq!(within(client.next_event()).await, None);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    until_sockets(&ctx.server, &user, 0).await;
}

async fn operator_client_disconnect_with_reconnect_fetches_a_fresh_token(ctx: Arc<Ctx>) {
    let user = unique_user("oprotate");
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let secret = secret(&ctx.server);
    let minted_for = user.clone();
    let options = options(&ctx.server, &user).with_token_provider(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        // A claim only the fresh tokens carry.
        let mut claims = Map::new();
        claims.insert("generation".into(), json!(n + 1));
        let token = token::mint(&secret, &minted_for, None, claims);
        async move { Ok(token) }
    });
    let mut rotated = Client::connect(options).await.expect("connect");
    rotated
        .subscribe(vec![json!({"type": "rotated"})])
        .await
        .expect("subscribe");
    let bystander = subscribed(&ctx.server, &user, json!([{"type": "other"}])).await;

    let operator = operator(&ctx.server);
    let before = operator.sockets(&user).await.expect("sockets");
    let old = socket_with(&before.sockets, &json!([{"type": "rotated"}]))
        .socket_id
        .clone();
    let outcome = operator
        .disconnect(&user, Some(&old), true, Some("token rotated"))
        .await
        .expect("disconnect");
    assert_eq!(outcome.closed, 1);

    match within(rotated.next_event()).await {
        Some(Event::Disconnected { code, .. }) => assert_eq!(code, Some(4000)),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match within(rotated.next_event()).await {
        Some(Event::Reconnected { attempt }) => assert!(attempt >= 1),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the provider was not asked"
    );
    // The other socket of the user was left alone.
    within(bystander.ping())
        .await
        .expect("the bystander is still connected");
    // The pong comes after the re-subscription's confirmation.
    within(rotated.ping()).await.expect("pong");

    // The old socket goes once the server has processed its close.
    until_sockets(&ctx.server, &user, 2).await;
    let after = operator.sockets(&user).await.expect("sockets");
    let new = socket_with(&after.sockets, &json!([{"type": "rotated"}]));
    assert_ne!(new.socket_id, old);

    let publish = operator.publish(&user, Some("rotated"), json!({"k": 1}));
    let receive = async {
        let envelope = within(rotated.next_envelope()).await.expect("envelope");
        rotated
            .ack(&envelope.envelope_id, json!("back"))
            .await
            .expect("ack");
    };
    let (outcome, ()) = tokio::join!(publish, receive);
    let outcome = outcome.expect("publish");
    assert_eq!(outcome.client_count, 1);
    assert_eq!(outcome.results, vec![json!("back")]);
}

async fn operator_client_library_batch_reaches_every_user_in_order(ctx: Arc<Ctx>) {
    let (a, b, nobody) = (
        unique_user("opbatch-a"),
        unique_user("opbatch-b"),
        unique_user("opbatch-none"),
    );
    let mut acker_a = Acker::new(
        subscribed(&ctx.server, &a, json!([{}])).await,
        json!({"by": "a"}),
    );
    let mut acker_b = Acker::new(
        subscribed(&ctx.server, &b, json!([{}])).await,
        json!({"by": "b"}),
    );
    let batch = operator(&ctx.server)
        .publish_batch(
            [&b, &nobody, &a],
            Some("news"),
            json!({"n": 1}),
            PublishOptions::new(),
        )
        .await
        .expect("batch");
    assert!(!batch.replayed);
    let order: Vec<&str> = batch.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(order, [b.as_str(), nobody.as_str(), a.as_str()]);
    let outcome = |i: usize| batch.users[i].outcome.clone().expect("reached");
    assert_eq!(
        (outcome(0).client_count, outcome(0).results),
        (1, vec![json!({"by": "b"})])
    );
    assert_eq!(outcome(1).client_count, 0);
    assert_eq!(
        (outcome(2).client_count, outcome(2).results),
        (1, vec![json!({"by": "a"})])
    );
    assert_eq!(batch.failures().count(), 0);
    // One envelope for everyone.
    for envelope in [acker_a.next().await, acker_b.next().await] {
        assert_eq!(envelope.envelope_id, batch.envelope_id);
        assert_eq!(envelope.envelope_type, "news");
        assert_eq!(envelope.payload, json!({"n": 1}));
    }
}

async fn operator_client_library_idempotency_replays_and_conflicts(ctx: Arc<Ctx>) {
    let user = unique_user("opidem");
    let mut acker = Acker::new(
        subscribed(&ctx.server, &user, json!([{}])).await,
        json!("ok"),
    );
    let publisher = operator(&ctx.server);
    let key = IdempotencyKey::new(unique_user("key")).expect("key");
    let keyed = PublishOptions::new().with_idempotency_key(key.clone());

    let first = publisher
        .publish_with(&user, Some("t"), json!({"v": 1}), keyed.clone())
        .await
        .expect("first");
    assert!(!first.replayed);
    assert_eq!(
        (first.client_count, first.results.clone()),
        (1, vec![json!("ok")])
    );
    assert_eq!(acker.next().await.payload, json!({"v": 1}));

    let again = publisher
        .publish_with(&user, Some("t"), json!({"v": 1}), keyed.clone())
        .await
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(
        (again.client_count, again.results),
        (first.client_count, first.results)
    );
    // Not delivered again: the next envelope the socket gets is a later one.
    publisher
        .publish(&user, Some("t"), json!({"v": "marker"}))
        .await
        .expect("marker");
    assert_eq!(acker.next().await.payload, json!({"v": "marker"}));

    match publisher
        .publish_with(&user, Some("t"), json!({"v": 2}), keyed)
        .await
    {
        Err(PublishError::Conflict(e)) => assert_eq!(e.error, "idempotency_conflict"),
        other => panic!("expected Conflict, got {other:?}"),
    }

    // A batch replays the same way, envelope id included.
    let other = unique_user("opidem-other");
    let batch_key = PublishOptions::new()
        .with_idempotency_key(IdempotencyKey::new(unique_user("bk")).expect("key"));
    let first = publisher
        .publish_batch([&user, &other], None, json!(3), batch_key.clone())
        .await
        .expect("batch");
    assert!(!first.replayed);
    assert_eq!(acker.next().await.envelope_id, first.envelope_id);
    let again = publisher
        .publish_batch([&user, &other], None, json!(3), batch_key)
        .await
        .expect("batch replay");
    assert!(again.replayed);
    assert_eq!(again.envelope_id, first.envelope_id);
    assert_eq!(again.users, first.users);
}

async fn operator_client_library_detail_reports_each_socket(ctx: Arc<Ctx>) {
    let user = unique_user("opdetail");
    let mut acker = Acker::new(
        subscribed(&ctx.server, &user, json!([{"type": "a"}])).await,
        json!({"seen": true}),
    );
    // A second socket that closes instead of acking.
    let mut closer = subscribed(&ctx.server, &user, json!([{}])).await;
    let publisher = operator(&ctx.server);
    let sockets = publisher.sockets(&user).await.expect("sockets");
    let acking_id = socket_with(&sockets.sockets, &json!([{"type": "a"}]))
        .socket_id
        .clone();
    let closing_id = socket_with(&sockets.sockets, &json!([{}]))
        .socket_id
        .clone();

    let publish = publisher.publish_with(
        &user,
        Some("a"),
        json!(null),
        PublishOptions::new().with_detail(true),
    );
    let close = async {
        within(closer.next_envelope()).await.expect("envelope");
        closer.close();
    };
    let (outcome, ()) = tokio::join!(publish, close);
    let outcome = outcome.expect("publish");
    acker.next().await;
    assert_eq!(outcome.client_count, 2);
    assert_eq!(outcome.results, vec![json!({"seen": true})]);
    let deliveries = outcome.deliveries.expect("deliveries with detail");
    assert_eq!(deliveries.len(), 2);
    let acked = deliveries
        .iter()
        .find(|d| d.socket_id == acking_id)
        .expect("the acking socket's delivery");
    assert_eq!(acked.status, DeliveryStatus::Acked);
    assert_eq!(acked.result, Some(json!({"seen": true})));
    assert!(acked.ack_ms.is_some_and(|ms| ms < WAIT.as_millis() as u64));
    let closed = deliveries
        .iter()
        .find(|d| d.socket_id == closing_id)
        .expect("the closing socket's delivery");
    assert_eq!(closed.status, DeliveryStatus::Closed);
    assert_eq!(closed.result, None);

    // Without detail, no deliveries.
    let plain = publisher
        .publish(&user, Some("a"), json!(null))
        .await
        .expect("publish");
    acker.next().await;
    assert_eq!(plain.deliveries, None);
}

async fn operator_client_cli_sockets_disconnect_and_operator_token(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let url = ctx.server.http();
    let minted = cli(&["token", "--operator", "--ttl", "10m", "--secret", &secret]).await;
    assert!(minted.status.success(), "{minted:?}");
    let operator_token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    let claims = token::payload(&operator_token).expect("payload");
    assert_eq!(claims["scope"], "operator");
    assert_eq!(claims["userId"], "hopeflow-cli");

    let user = unique_user("opcli");
    let mut client = subscribed(&ctx.server, &user, json!([{"type": "x"}])).await;

    // With the minted token, and with one the command mints from --secret.
    let listed = answer(
        &cli(&[
            "sockets",
            "--user",
            &user,
            "--url",
            &url,
            "--token",
            &operator_token,
        ])
        .await,
    );
    assert_eq!(listed["userId"], user.as_str());
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["sockets"][0]["filters"], json!([{"type": "x"}]));
    assert!(listed["sockets"][0]["socketId"].is_string());
    assert!(listed["sockets"][0]["connectedAt"].is_u64());
    let minted_here = answer(
        &cli(&[
            "sockets", "--user", &user, "--url", &url, "--secret", &secret,
        ])
        .await,
    );
    assert_eq!(minted_here["count"], 1);

    // A token without the scope: the server's refusal, in one line.
    let plain = ctx.server.token("someone");
    let refused = cli(&["sockets", "--user", &user, "--url", &url, "--token", &plain]).await;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("forbidden"), "{refused:?}");

    let closed = cli(&[
        "disconnect",
        "--user",
        &user,
        "--url",
        &url,
        "--secret",
        &secret,
        "--reason",
        "bye",
    ])
    .await;
    assert!(closed.status.success(), "{closed:?}");
    assert_eq!(
        String::from_utf8_lossy(&closed.stdout).trim(),
        r#"{"closed":1}"#
    );
    match within(client.next_event()).await {
        Some(Event::Disconnected { code, reason }) => {
            assert_eq!(code, Some(4001));
            assert!(reason.contains("bye"), "{reason:?}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(within(client.next_event()).await, None);
    until_sockets(&ctx.server, &user, 0).await;
    let none_left = answer(
        &cli(&[
            "disconnect",
            "--user",
            &user,
            "--url",
            &url,
            "--secret",
            &secret,
        ])
        .await,
    );
    assert_eq!(none_left, json!({"closed": 0}));
}

async fn operator_client_cli_batch_publish_to_two_users(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let (a, b) = (unique_user("opclibatch-a"), unique_user("opclibatch-b"));
    let mut acker_a = Acker::new(
        subscribed(&ctx.server, &a, json!([{"type": "news"}])).await,
        json!("a"),
    );
    let mut acker_b = Acker::new(
        subscribed(&ctx.server, &b, json!([{"type": "news"}])).await,
        json!("b"),
    );
    let output = cli(&[
        "publish",
        "--url",
        &ctx.server.http(),
        "--secret",
        &secret,
        "--user",
        &a,
        "--user",
        &b,
        "--type",
        "news",
        "--payload",
        r#"{"headline":"hi"}"#,
    ])
    .await;
    let batch = answer(&output);
    let envelope_id = batch["envelopeId"].as_str().expect("envelopeId").to_owned();
    assert_eq!(
        batch["users"],
        json!([
            {"userId": a, "clientCount": 1, "results": ["a"]},
            {"userId": b, "clientCount": 1, "results": ["b"]},
        ])
    );
    for envelope in [acker_a.next().await, acker_b.next().await] {
        assert_eq!(envelope.envelope_id, envelope_id);
        assert_eq!(envelope.payload, json!({"headline": "hi"}));
    }
    // One --user is a plain publish: its answer has no envelopeId or users.
    let single = answer(
        &cli(&[
            "publish",
            "--url",
            &ctx.server.http(),
            "--secret",
            &secret,
            "--user",
            &a,
            "--type",
            "news",
            "--payload",
            "1",
        ])
        .await,
    );
    assert_eq!(single, json!({"clientCount": 1, "results": ["a"]}));
    acker_a.next().await;
}

async fn operator_client_cli_idempotency_key_replays(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let url = ctx.server.http();
    let user = unique_user("opcliidem");
    let mut acker = Acker::new(
        subscribed(&ctx.server, &user, json!([{}])).await,
        json!({"n": 1}),
    );
    let key = unique_user("cli-key");
    let publish = |payload: &'static str| {
        let (url, secret, user, key) = (url.clone(), secret.clone(), user.clone(), key.clone());
        async move {
            cli(&[
                "publish",
                "--url",
                &url,
                "--secret",
                &secret,
                "--user",
                &user,
                "--idempotency-key",
                &key,
                "--payload",
                payload,
            ])
            .await
        }
    };
    let first = publish(r#"{"v":1}"#).await;
    assert_eq!(
        answer(&first),
        json!({"clientCount": 1, "results": [{"n": 1}]})
    );
    assert!(!stderr(&first).contains("replayed"), "{first:?}");
    acker.next().await;

    let again = publish(r#"{"v":1}"#).await;
    assert_eq!(answer(&again), answer(&first));
    assert!(stderr(&again).contains("replayed"), "{again:?}");
    // Not delivered twice: the next envelope is the marker.
    let marker = answer(
        &cli(&[
            "publish",
            "--url",
            &url,
            "--secret",
            &secret,
            "--user",
            &user,
            "--payload",
            "\"marker\"",
        ])
        .await,
    );
    assert_eq!(marker["clientCount"], 1);
    assert_eq!(acker.next().await.payload, json!("marker"));

    let conflict = publish(r#"{"v":2}"#).await;
    assert!(!conflict.status.success());
    assert!(
        stderr(&conflict).contains("idempotency_conflict"),
        "{conflict:?}"
    );

    // A malformed key never leaves the tool.
    let malformed = cli(&[
        "publish",
        "--url",
        &url,
        "--secret",
        &secret,
        "--user",
        &user,
        "--idempotency-key",
        "has space",
        "--payload",
        "1",
    ])
    .await;
    assert!(!malformed.status.success());
    assert!(
        stderr(&malformed).contains("visible ASCII"),
        "{malformed:?}"
    );
}

async fn operator_client_cli_detail_lists_deliveries(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let url = ctx.server.http();
    let user = unique_user("opclidetail");
    let mut acker = Acker::new(
        subscribed(&ctx.server, &user, json!([{}])).await,
        json!({"seen": true}),
    );
    let listed = answer(
        &cli(&[
            "sockets", "--user", &user, "--url", &url, "--secret", &secret,
        ])
        .await,
    );
    let socket_id = listed["sockets"][0]["socketId"].clone();
    let detailed = answer(
        &cli(&[
            "publish",
            "--url",
            &url,
            "--secret",
            &secret,
            "--user",
            &user,
            "--detail",
            "--payload",
            "{}",
        ])
        .await,
    );
    acker.next().await;
    assert_eq!(detailed["clientCount"], 1);
    assert_eq!(detailed["results"], json!([{"seen": true}]));
    let deliveries = detailed["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["socketId"], socket_id);
    assert_eq!(deliveries[0]["status"], "acked");
    assert_eq!(deliveries[0]["result"], json!({"seen": true}));
    assert!(deliveries[0]["ackMs"].is_u64(), "{detailed}");
}

async fn operator_client_cli_listen_follows_operator_disconnects(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let user = unique_user("opclilisten");
    let mut listen = hopeflow()
        .args(["listen", "--url", &ctx.server.base_ws(), "--user", &user])
        .args(["--secret", &secret])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn listen");
    let mut stderr = BufReader::new(listen.stderr.take().expect("stderr")).lines();
    let mut wait_for = async |prefix: &str| loop {
        let line = within(stderr.next_line())
            .await
            .expect("read stderr")
            .unwrap_or_else(|| panic!("listen exited before {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    };
    wait_for("subscribed").await;

    // 4000: it comes back (with a token it minted again) and re-subscribes.
    let rotated = operator(&ctx.server)
        .disconnect(&user, None, true, None)
        .await
        .expect("disconnect");
    assert_eq!(rotated.closed, 1);
    assert!(wait_for("disconnected").await.contains("4000"));
    wait_for("reconnected").await;
    until_sockets(&ctx.server, &user, 1).await;

    // 4001: it stops, saying why, with a failure status.
    operator(&ctx.server)
        .disconnect(&user, None, false, Some("maintenance"))
        .await
        .expect("disconnect");
    let line = wait_for("error:").await;
    assert!(
        line.contains("disconnected by an operator") && line.contains("maintenance"),
        "{line}"
    );
    let status = within(listen.wait()).await.expect("listen status");
    assert!(!status.success());
}
