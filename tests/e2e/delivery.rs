//! Delivery and acks: filter matching, the publish answer, timeouts, spoofed
//! and duplicate acks, closes mid-publish, isolation, concurrency, large and
//! unicode payloads, and delivery after hibernation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{publish, publish_as, unique_user, Client};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        matching_filter_delivers_envelope,
        non_matching_filter_gets_nothing,
        payload_number_does_not_match_string_filter,
        empty_filter_matches_everything,
        unsubscribed_socket_gets_nothing,
        socket_without_filters_gets_nothing,
        ack_result_is_returned,
        ack_without_result_is_null,
        two_sockets_both_ack_fast,
        one_of_two_acking_waits_for_timeout,
        spoofed_ack_from_other_socket_is_ignored,
        duplicate_ack_counts_once,
        socket_closing_mid_publish_stops_the_wait,
        users_are_isolated,
        multi_tenant_publish,
        concurrent_publishes_do_not_mix,
        large_payload_is_delivered,
        unicode_payload_is_delivered,
        delivery_after_hibernation,
    ]
}

/// Publishes and, concurrently, acks the envelope on `socket`.
async fn publish_acked(
    ctx: &Ctx,
    socket: &mut Client,
    user: &str,
    kind: &str,
    payload: Value,
    result: Value,
) -> (Value, Value) {
    tokio::join!(
        publish(&ctx.server, user, kind, payload),
        socket.ack_next(result)
    )
}

async fn matching_filter_delivers_envelope(ctx: Arc<Ctx>) {
    let user = unique_user("match");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket
        .subscribe(json!([{"type": "chat_message", "questId": "q1", "nodeId": "n1"}]))
        .await;
    let payload = json!({"questId": "q1", "nodeId": "n1", "text": "hi"});
    let (outcome, envelope) = publish_acked(
        &ctx,
        &mut socket,
        &user,
        "chat_message",
        payload.clone(),
        json!("ok"),
    )
    .await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["ok"]}));
    assert_eq!(envelope["type"], "chat_message");
    assert_eq!(envelope["payload"], payload);
    // Exactly one frame per publish: the next frame is the pong.
    socket.ping().await;
}

async fn non_matching_filter_gets_nothing(ctx: Arc<Ctx>) {
    let user = unique_user("nomatch");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket
        .subscribe(json!([{"type": "chat_message", "questId": "q1"}]))
        .await;
    for (kind, payload) in [
        ("chat_message", json!({"questId": "q2"})),
        ("other", json!({"questId": "q1"})),
        ("chat_message", json!({})),
        ("chat_message", json!(null)),
    ] {
        let outcome = publish(&ctx.server, &user, kind, payload).await;
        assert_eq!(outcome, json!({"clientCount": 0, "results": []}));
    }
    socket.ping().await;
}

async fn payload_number_does_not_match_string_filter(ctx: Arc<Ctx>) {
    let user = unique_user("numstr");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{"n": "1"}])).await;
    let outcome = publish(&ctx.server, &user, "t", json!({"n": 1})).await;
    assert_eq!(outcome["clientCount"], 0);
    socket.ping().await;
    let (outcome, _) =
        publish_acked(&ctx, &mut socket, &user, "t", json!({"n": "1"}), json!(1)).await;
    assert_eq!(outcome["clientCount"], 1);
}

async fn empty_filter_matches_everything(ctx: Arc<Ctx>) {
    let user = unique_user("empty");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{}])).await;
    for (kind, payload) in [
        ("a", json!(null)),
        ("b", json!([1])),
        ("c", json!({"x": "y"})),
    ] {
        let (outcome, envelope) =
            publish_acked(&ctx, &mut socket, &user, kind, payload.clone(), json!(kind)).await;
        assert_eq!(outcome, json!({"clientCount": 1, "results": [kind]}));
        assert_eq!(envelope["payload"], payload);
    }
}

async fn unsubscribed_socket_gets_nothing(ctx: Arc<Ctx>) {
    let user = unique_user("unsub");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket
        .subscribe(json!([{"type": "a"}, {"type": "b"}]))
        .await;
    // Key order does not matter for equality.
    socket.unsubscribe(json!([{"type": "a"}])).await;
    let outcome = publish(&ctx.server, &user, "a", json!({})).await;
    assert_eq!(outcome["clientCount"], 0);
    let (outcome, _) = publish_acked(&ctx, &mut socket, &user, "b", json!({}), json!("b")).await;
    assert_eq!(outcome["clientCount"], 1);
}

async fn socket_without_filters_gets_nothing(ctx: Arc<Ctx>) {
    let user = unique_user("nofilters");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.ping().await;
    let outcome = publish(&ctx.server, &user, "message", json!({})).await;
    assert_eq!(outcome, json!({"clientCount": 0, "results": []}));
    socket.ping().await;
}

async fn ack_result_is_returned(ctx: Arc<Ctx>) {
    let user = unique_user("ackres");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{}])).await;
    let result = json!({"accepted": true, "items": [1, "two", null]});
    let (outcome, _) = publish_acked(&ctx, &mut socket, &user, "t", json!(1), result.clone()).await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": [result]}));
}

async fn ack_without_result_is_null(ctx: Arc<Ctx>) {
    let user = unique_user("acknull");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{}])).await;
    let (outcome, _) = tokio::join!(publish(&ctx.server, &user, "t", json!(1)), async {
        let envelope = socket.recv_envelope().await;
        socket
            .send_json(json!({"type": "ack", "envelopeId": envelope["envelopeId"]}))
            .await;
    });
    assert_eq!(outcome, json!({"clientCount": 1, "results": [null]}));
}

async fn two_sockets_both_ack_fast(ctx: Arc<Ctx>) {
    let user = unique_user("two");
    let mut a = Client::for_user(&ctx.server, &user).await;
    let mut b = Client::for_user(&ctx.server, &user).await;
    a.subscribe(json!([{"type": "t"}])).await;
    b.subscribe(json!([{}])).await;
    let started = Instant::now();
    let (outcome, _, _) = tokio::join!(
        publish(&ctx.server, &user, "t", json!({})),
        a.ack_next(json!("a")),
        b.ack_next(json!("b")),
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered only after {:?}: it waited for the timeout",
        started.elapsed()
    );
    assert_eq!(outcome["clientCount"], 2);
    let mut results: Vec<String> = outcome["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    results.sort();
    assert_eq!(results, ["a", "b"]);
}

async fn one_of_two_acking_waits_for_timeout(ctx: Arc<Ctx>) {
    let user = unique_user("timeout");
    let mut acker = Client::for_user(&ctx.server, &user).await;
    let mut silent = Client::for_user(&ctx.server, &user).await;
    acker.subscribe(json!([{}])).await;
    silent.subscribe(json!([{}])).await;
    let started = Instant::now();
    let (outcome, _, silent_envelope) = tokio::join!(
        publish(&ctx.server, &user, "t", json!({})),
        acker.ack_next(json!("only")),
        silent.recv_envelope(),
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4_500),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(12),
        "answered after {waited:?}"
    );
    assert_eq!(outcome, json!({"clientCount": 2, "results": ["only"]}));
    // A late ack is ignored and does not break the socket.
    silent.ack(&silent_envelope, json!("late")).await;
    silent.ping().await;
}

async fn spoofed_ack_from_other_socket_is_ignored(ctx: Arc<Ctx>) {
    let user = unique_user("spoof");
    let mut target = Client::for_user(&ctx.server, &user).await;
    let mut intruder = Client::for_user(&ctx.server, &user).await;
    target.subscribe(json!([{"type": "private"}])).await;
    intruder.subscribe(json!([{"type": "other"}])).await;
    let (outcome, _) = tokio::join!(publish(&ctx.server, &user, "private", json!({})), async {
        let envelope = target.recv_envelope().await;
        // The intruder learns the id but was not delivered the envelope.
        intruder.ack(&envelope, json!("spoofed")).await;
        intruder.ping().await;
        target.ack(&envelope, json!("real")).await;
    });
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["real"]}));
}

async fn duplicate_ack_counts_once(ctx: Arc<Ctx>) {
    let user = unique_user("dup");
    let mut a = Client::for_user(&ctx.server, &user).await;
    let mut b = Client::for_user(&ctx.server, &user).await;
    a.subscribe(json!([{}])).await;
    b.subscribe(json!([{}])).await;
    let (outcome, _) = tokio::join!(publish(&ctx.server, &user, "t", json!({})), async {
        let envelope_a = a.recv_envelope().await;
        let envelope_b = b.recv_envelope().await;
        a.ack(&envelope_a, json!("a1")).await;
        a.ack(&envelope_a, json!("a2")).await;
        a.ping().await;
        b.ack(&envelope_b, json!("b")).await;
    });
    assert_eq!(outcome, json!({"clientCount": 2, "results": ["a1", "b"]}));
}

async fn socket_closing_mid_publish_stops_the_wait(ctx: Arc<Ctx>) {
    let user = unique_user("closing");
    let mut stays = Client::for_user(&ctx.server, &user).await;
    let mut leaves = Client::for_user(&ctx.server, &user).await;
    stays.subscribe(json!([{}])).await;
    leaves.subscribe(json!([{}])).await;
    let started = Instant::now();
    let (outcome, _) = tokio::join!(publish(&ctx.server, &user, "t", json!({})), async {
        stays.ack_next(json!("stayed")).await;
        leaves.recv_envelope().await;
        leaves.close().await;
    });
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?} for a closed socket",
        started.elapsed()
    );
    assert_eq!(outcome, json!({"clientCount": 2, "results": ["stayed"]}));
}

async fn users_are_isolated(ctx: Arc<Ctx>) {
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let mut a = Client::for_user(&ctx.server, &alice).await;
    let mut b = Client::for_user(&ctx.server, &bob).await;
    a.subscribe(json!([{}])).await;
    b.subscribe(json!([{}])).await;
    let (outcome, _) =
        publish_acked(&ctx, &mut a, &alice, "t", json!("for alice"), json!("a")).await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["a"]}));
    b.ping().await;
}

async fn multi_tenant_publish(ctx: Arc<Ctx>) {
    let target = unique_user("tenant-target");
    let mut socket = Client::for_user(&ctx.server, &target).await;
    socket.subscribe(json!([{}])).await;
    // A token of a different user publishes to `target`.
    let other = ctx.server.token(&unique_user("tenant-backend"));
    let (reply, _) = tokio::join!(
        publish_as(
            &ctx.server,
            &other,
            json!({"userId": target, "type": "t", "payload": 1})
        ),
        socket.ack_next(json!("got it")),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!({"clientCount": 1, "results": ["got it"]}));
}

async fn concurrent_publishes_do_not_mix(ctx: Arc<Ctx>) {
    let user = unique_user("concurrent");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{}])).await;
    const N: usize = 8;
    let publishes = futures::future::join_all(
        (0..N).map(|n| publish(&ctx.server, &user, "t", json!({ "n": n }))),
    );
    let acks = async {
        // Ack in reverse arrival order so results cannot line up by accident.
        let mut envelopes = Vec::new();
        for _ in 0..N {
            envelopes.push(socket.recv_envelope().await);
        }
        for envelope in envelopes.iter().rev() {
            let n = envelope["payload"]["n"].clone();
            socket.ack(envelope, json!({ "echo": n })).await;
        }
    };
    let (outcomes, ()) = tokio::join!(publishes, acks);
    for (n, outcome) in outcomes.into_iter().enumerate() {
        assert_eq!(
            outcome,
            json!({"clientCount": 1, "results": [{"echo": n}]}),
            "publish {n}"
        );
    }
}

async fn large_payload_is_delivered(ctx: Arc<Ctx>) {
    let user = unique_user("large");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{"type": "blob"}])).await;
    let blob: String = (0..256 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let payload = json!({"blob": blob});
    let (outcome, envelope) = publish_acked(
        &ctx,
        &mut socket,
        &user,
        "blob",
        payload.clone(),
        json!("big"),
    )
    .await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["big"]}));
    assert_eq!(envelope["payload"], payload);
}

async fn unicode_payload_is_delivered(ctx: Arc<Ctx>) {
    let user = unique_user("unicode");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket
        .subscribe(json!([{"type": "ünï", "lang": "日本語"}]))
        .await;
    let payload = json!({"lang": "日本語", "text": "こんにちは 🌍 «ça va» \u{0000} \u{FFFF}"});
    let (outcome, envelope) =
        publish_acked(&ctx, &mut socket, &user, "ünï", payload.clone(), json!("✓")).await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["✓"]}));
    assert_eq!(envelope["payload"], payload);
    assert_eq!(envelope["type"], "ünï");
}

async fn delivery_after_hibernation(ctx: Arc<Ctx>) {
    let user = unique_user("hibernate");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{"type": "wake"}])).await;
    // The behaviour under test is idleness itself: wrangler dev hibernates an
    // idle object after about 10-15 s, so stay silent well past that.
    tokio::time::sleep(Duration::from_secs(22)).await;
    // Answered by the auto-response even while hibernated.
    socket.send_text("ping").await;
    assert_eq!(socket.recv_text().await, "pong");
    let (outcome, envelope) = publish_acked(
        &ctx,
        &mut socket,
        &user,
        "wake",
        json!({"k": "v"}),
        json!("awake"),
    )
    .await;
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["awake"]}));
    assert_eq!(envelope["payload"], json!({"k": "v"}));
    let outcome = publish(&ctx.server, &user, "other", json!({})).await;
    assert_eq!(outcome["clientCount"], 0, "filters survived exactly");
}
