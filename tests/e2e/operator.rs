//! The operator API against the real runtime: the operator scope, a user's
//! sockets, disconnecting (4001 / 4000), `/publish/batch`,
//! `Idempotency-Key` (replay, waiting for the first, conflict, hibernation,
//! a restart, expiry), `?detail=true` and the `MAX_RESULTS_BYTES` cap.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};

use crate::hostile::strict_token;
use crate::support::{
    http, publish, send, sockets_of, unique_user, Client, Reply, Restartable, Server, WAIT,
};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        operator_routes_need_the_operator_scope,
        sockets_lists_filters_and_age,
        disconnect_one_or_all_with_4001_or_4000,
        disconnect_releases_pending_publishes,
        operator_route_errors,
        batch_delivers_one_envelope_to_each_user,
        batch_validation_and_scope,
        batch_answers_within_one_ack_timeout,
        idempotent_publish_replays_and_conflicts,
        idempotent_retry_waits_for_the_first,
        idempotent_batch_replays,
        idempotent_retry_after_hibernation,
        idempotent_retry_after_a_restart,
        idempotent_retry_of_a_publish_a_restart_cut,
        idempotency_keys_expire,
        detail_says_what_became_of_each_socket,
        results_past_the_cap_are_null_and_flagged,
    ]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `POST path` with a Bearer token, JSON body and extra headers; the
/// request is built at once, so the future borrows nothing.
fn post(
    server: &Server,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> impl std::future::Future<Output = Reply> + 'static {
    let mut request = http()
        .post(format!("{}{path}", server.http()))
        .bearer_auth(token)
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    async move { send(request).await }
}

async fn disconnect(server: &Server, user: &str, body: Option<Value>) -> Reply {
    let mut request = server
        .user_route(Method::POST, user, "disconnect")
        .bearer_auth(server.operator_token());
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

async fn operator_routes_need_the_operator_scope(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("scope");
    for route in ["sockets", "disconnect"] {
        let method = if route == "sockets" {
            Method::GET
        } else {
            Method::POST
        };
        let r = send(server.user_route(method.clone(), &user, route)).await;
        r.assert_error(401, "missing_token");
        for token in [
            server.token(&user),
            server.token_with(json!({"userId": "x", "scope": "publish read"})),
            server.token_with(json!({"userId": "x", "scope": "operators"})),
        ] {
            let r = send(
                server
                    .user_route(method.clone(), &user, route)
                    .bearer_auth(&token),
            )
            .await;
            r.assert_error(403, "forbidden");
        }
        let r = send(
            server
                .user_route(method.clone(), &user, route)
                .bearer_auth(server.token_with(json!({"userId": "x", "scope": "read operator"}))),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // OPERATOR_SCOPE names another scope on the strict server.
    let operator = strict_token(&ctx, "ops", json!({"scope": "operator"}));
    let r = send(
        ctx.strict
            .user_route(Method::GET, &user, "sockets")
            .bearer_auth(&operator),
    )
    .await;
    r.assert_error(403, "forbidden");
    let admin = strict_token(&ctx, "ops", json!({"scope": "ops-admin"}));
    let r = send(
        ctx.strict
            .user_route(Method::GET, &user, "sockets")
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn sockets_lists_filters_and_age(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    // Any string is a user id: slashes, spaces and non-ASCII are encoded.
    let user = unique_user("a/b é?#");
    let before = now_ms();
    let mut first = Client::for_user(server, &user).await;
    first
        .subscribe(json!([{"type": "chat", "room": "r1"}, {"type": "ping"}]))
        .await;
    let mut second = Client::for_user(server, &user).await;
    second.ping().await;
    let after = now_ms();
    let r = sockets_of(server, &user).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.body["userId"], user.as_str());
    assert_eq!(r.body["count"], 2);
    assert_eq!(r.body["pendingPublishes"], 0);
    let sockets = r.body["sockets"].as_array().expect("sockets");
    assert_eq!(sockets.len(), 2);
    for socket in sockets {
        assert!(socket["socketId"].as_str().is_some_and(|id| !id.is_empty()));
        let at = socket["connectedAt"].as_u64().expect("connectedAt");
        assert!(
            (before.saturating_sub(1000)..=after + 1000).contains(&at),
            "{at}"
        );
    }
    // Oldest first: the subscribed socket connected first.
    assert_eq!(
        sockets[0]["filters"],
        json!([{"type": "chat", "room": "r1"}, {"type": "ping"}])
    );
    assert_eq!(sockets[1]["filters"], json!([]));
    // A user who never connected.
    let nobody = unique_user("nobody");
    let r = sockets_of(server, &nobody).await;
    assert_eq!(
        r.body,
        json!({"userId": nobody, "count": 0, "pendingPublishes": 0, "sockets": []})
    );
}

async fn disconnect_one_or_all_with_4001_or_4000(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("disconnect");
    let mut a = Client::for_user(server, &user).await;
    a.ping().await;
    let mut b = Client::for_user(server, &user).await;
    b.ping().await;
    let r = sockets_of(server, &user).await;
    let first_id = r.body["sockets"][0]["socketId"]
        .as_str()
        .expect("id")
        .to_owned();
    // One socket, by id: 4001, do not reconnect.
    let r = disconnect(server, &user, Some(json!({ "socketId": first_id }))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"closed": 1}));
    assert_eq!(a.expect_close().await, Some(4001));
    b.ping().await;
    // An id that is not there closes nothing.
    let r = disconnect(server, &user, Some(json!({"socketId": "nope"}))).await;
    assert_eq!(r.body, json!({"closed": 0}));
    // Everything, asking to come back with a fresh token: 4000.
    let mut c = Client::for_user(server, &user).await;
    c.ping().await;
    let r = disconnect(
        server,
        &user,
        Some(json!({"reconnect": true, "reason": "token rotated"})),
    )
    .await;
    assert_eq!(r.body, json!({"closed": 2}));
    assert_eq!(b.expect_close().await, Some(4000));
    assert_eq!(c.expect_close().await, Some(4000));
    let r = sockets_of(server, &user).await;
    assert_eq!(r.body["count"], 0, "{}", r.body);
    // No body at all: every socket, 4001.
    let mut d = Client::for_user(server, &user).await;
    d.ping().await;
    let r = disconnect(server, &user, None).await;
    assert_eq!(r.body, json!({"closed": 1}));
    assert_eq!(d.expect_close().await, Some(4001));
}

async fn disconnect_releases_pending_publishes(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("release");
    let mut silent = Client::for_user(server, &user).await;
    silent.subscribe(json!([{}])).await;
    let publishing = post(
        server,
        "/publish?detail=true",
        &server.token("backend"),
        &[],
        json!({"userId": user, "type": "t", "payload": 1}),
    );
    let meanwhile = async {
        silent.recv_envelope().await;
        let r = sockets_of(server, &user).await;
        assert_eq!(r.body["pendingPublishes"], 1, "{}", r.body);
        let r = disconnect(server, &user, None).await;
        assert_eq!(r.body, json!({"closed": 1}));
    };
    let (answer, ()) = tokio::join!(publishing, meanwhile);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["clientCount"], 1);
    assert_eq!(answer.body["results"], json!([]));
    // Closed, not timed out: the publish stopped waiting at the close.
    assert_eq!(answer.body["deliveries"][0]["status"], "closed");
    let r = sockets_of(server, &user).await;
    assert_eq!(r.body["pendingPublishes"], 0, "{}", r.body);
}

async fn operator_route_errors(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("errors");
    let token = server.operator_token();
    for body in [
        json!([]),
        json!({"reconnect": "yes"}),
        json!({"socketId": ""}),
        json!({"unknown": 1}),
        json!({"reason": "x".repeat(124)}),
    ] {
        let r = send(
            server
                .user_route(Method::POST, &user, "disconnect")
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        r.assert_error(400, "invalid_body");
    }
    let r = send(
        server
            .user_route(Method::GET, &user, "disconnect")
            .bearer_auth(&token),
    )
    .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = send(
        server
            .user_route(Method::DELETE, &user, "sockets")
            .bearer_auth(&token),
    )
    .await;
    r.assert_error(405, "method_not_allowed");
    for path in [
        "/users/%ZZ/sockets",
        "/users/%C3/sockets",
        "/users//sockets",
    ] {
        let r = send(server.request(Method::GET, path).bearer_auth(&token)).await;
        r.assert_error(400, "invalid_user_id");
    }
    for path in ["/users/a/other", "/users/a", "/users/a/b/sockets"] {
        let r = send(server.request(Method::GET, path).bearer_auth(&token)).await;
        r.assert_error(404, "not_found");
    }
    // Browsers preflight the operator routes and keyed publishes.
    for path in ["/users/a/sockets", "/publish/batch", "/publish"] {
        let r = send(server.request(Method::OPTIONS, path)).await;
        assert_eq!(r.status, 204, "{path}");
        let allowed = r.header("access-control-allow-headers").unwrap_or_default();
        assert!(allowed.contains("Idempotency-Key"), "{allowed}");
    }
}

async fn batch_delivers_one_envelope_to_each_user(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let busy = unique_user("batch-busy");
    let idle = unique_user("batch-idle");
    let mut one = Client::for_user(server, &busy).await;
    one.subscribe(json!([{"type": "news"}])).await;
    let mut two = Client::for_user(server, &busy).await;
    two.subscribe(json!([{}])).await;
    let publishing = post(
        server,
        "/publish/batch",
        &server.token("backend"),
        &[],
        json!({"userIds": [busy, idle], "type": "news", "payload": {"n": 1}}),
    );
    let acking = async {
        let a = one.ack_next(json!("one")).await;
        let b = two.ack_next(json!("two")).await;
        (a, b)
    };
    let (r, (a, b)) = tokio::join!(publishing, acking);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let envelope_id = r.body["envelopeId"].as_str().expect("envelopeId");
    assert_eq!(a["envelopeId"], envelope_id);
    assert_eq!(b["envelopeId"], envelope_id);
    assert_eq!(a["payload"], json!({"n": 1}));
    let users = r.body["users"].as_array().expect("users");
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["userId"], busy.as_str());
    assert_eq!(users[0]["clientCount"], 2);
    let mut results: Vec<String> = users[0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_owned())
        .collect();
    results.sort();
    assert_eq!(results, ["one", "two"]);
    assert_eq!(
        users[1],
        json!({"userId": idle, "clientCount": 0, "results": []})
    );
}

async fn batch_validation_and_scope(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let token = server.token("backend");
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    for body in [
        json!({"userIds": [], "payload": 1}),
        json!({"userIds": many, "payload": 1}),
        json!({"userIds": ["a", "a"], "payload": 1}),
        json!({"userIds": ["a", ""], "payload": 1}),
        json!({"userIds": ["a", 5], "payload": 1}),
        json!({"userIds": "a", "payload": 1}),
        json!({"userId": "a", "payload": 1}),
        json!({"userIds": ["a"], "type": 5}),
        json!([1]),
    ] {
        let r = post(server, "/publish/batch", &token, &[], body.clone()).await;
        r.assert_error(400, "invalid_body");
    }
    let hundred: Vec<String> = (0..100).map(|_| unique_user("hundred")).collect();
    let r = post(
        server,
        "/publish/batch",
        &token,
        &[],
        json!({"userIds": hundred}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["users"].as_array().map(Vec::len), Some(100));
    assert_eq!(r.body["users"][99]["clientCount"], 0);
    let r = send(server.request(Method::GET, "/publish/batch")).await;
    r.assert_error(405, "method_not_allowed");
    let r = send(
        server
            .request(Method::POST, "/publish/batch")
            .bearer_auth(&token)
            .body("{}"),
    )
    .await;
    r.assert_error(415, "unsupported_media_type");
    let r = post(
        server,
        "/publish/batch",
        "bad",
        &[],
        json!({"userIds": ["a"]}),
    )
    .await;
    r.assert_error(401, "invalid_token");
    // PUBLISH_SCOPE applies as it does to /publish.
    let reader = strict_token(&ctx, "b", json!({"scope": "read"}));
    let r = post(
        &ctx.strict,
        "/publish/batch",
        &reader,
        &[],
        json!({"userIds": ["a"]}),
    )
    .await;
    r.assert_error(403, "forbidden");
    let publisher = strict_token(&ctx, "b", json!({}));
    let r = post(
        &ctx.strict,
        "/publish/batch",
        &publisher,
        &[],
        json!({"userIds": ["a"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Users are delivered at once: ten users that never ack answer within one
/// ack timeout (5 s here), not ten (the bound is loose, not a benchmark).
async fn batch_answers_within_one_ack_timeout(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let users: Vec<String> = (0..10).map(|_| unique_user("silent-batch")).collect();
    let mut sockets = Vec::new();
    for user in &users {
        let mut socket = Client::for_user(server, user).await;
        socket.subscribe(json!([{}])).await;
        sockets.push(socket);
    }
    let started = Instant::now();
    let r = post(
        server,
        "/publish/batch",
        &server.token("backend"),
        &[],
        json!({"userIds": users}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    for entry in r.body["users"].as_array().expect("users") {
        assert_eq!(entry["clientCount"], 1, "{entry}");
        assert_eq!(entry["results"], json!([]));
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

async fn idempotent_publish_replays_and_conflicts(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("idem");
    let token = server.token("backend");
    let mut socket = Client::for_user(server, &user).await;
    socket.subscribe(json!([{}])).await;
    let key = format!("order-{}", unique_user("k"));
    let body = json!({"userId": user, "type": "order", "payload": {"id": 7}});
    let first = post(
        server,
        "/publish",
        &token,
        &[("Idempotency-Key", &key)],
        body.clone(),
    );
    let (first, envelope) = tokio::join!(first, socket.ack_next(json!("got it")));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body, json!({"clientCount": 1, "results": ["got it"]}));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(envelope["payload"], json!({"id": 7}));
    // The same key and body (keys reordered): the same answer, nothing sent.
    let reordered = json!({"payload": {"id": 7}, "type": "order", "userId": user});
    let again = post(
        server,
        "/publish",
        &token,
        &[("Idempotency-Key", &key)],
        reordered,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert!(again
        .header("access-control-expose-headers")
        .is_some_and(|h| h.contains("Idempotent-Replayed")));
    socket.ping().await;
    // The same key with another body.
    let changed = json!({"userId": user, "type": "order", "payload": {"id": 8}});
    let r = post(
        server,
        "/publish",
        &token,
        &[("Idempotency-Key", &key)],
        changed,
    )
    .await;
    r.assert_error(409, "idempotency_conflict");
    // Keys are per user: the same key for another user is a new publish.
    let other = unique_user("idem-other");
    let r = post(
        server,
        "/publish",
        &token,
        &[("Idempotency-Key", &key)],
        json!({"userId": other, "type": "order", "payload": {"id": 7}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("idempotent-replayed"), None);
    // Malformed keys.
    for bad in ["", "has space", &"k".repeat(256), "tab\tkey"] {
        let r = send(
            server
                .request(Method::POST, "/publish")
                .bearer_auth(&token)
                .header("Idempotency-Key", bad)
                .json(&body),
        )
        .await;
        r.assert_error(400, "invalid_idempotency_key");
    }
    socket.ping().await;
}

async fn idempotent_retry_waits_for_the_first(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("idem-wait");
    let token = server.token("backend");
    let mut socket = Client::for_user(server, &user).await;
    socket.subscribe(json!([{}])).await;
    let key = unique_user("key");
    let body = json!({"userId": user, "payload": "once"});
    let headers = [("Idempotency-Key", key.as_str())];
    let first = post(server, "/publish", &token, &headers, body.clone());
    let retry_and_ack = async {
        let envelope = socket.recv_envelope().await;
        // The first is in flight (its envelope arrived, no ack yet).
        let retry = post(server, "/publish", &token, &headers, body.clone());
        let ack_after_retry_waits = async {
            // Wait until the retry reached the object: it counts no new
            // publish, so poll the pending count staying at one.
            let r = sockets_of(server, &user).await;
            assert_eq!(r.body["pendingPublishes"], 1, "{}", r.body);
            socket.ack(&envelope, json!("acked once")).await;
        };
        let (retry, ()) = tokio::join!(retry, ack_after_retry_waits);
        retry
    };
    let (first, retry) = tokio::join!(first, retry_and_ack);
    assert_eq!(
        first.body,
        json!({"clientCount": 1, "results": ["acked once"]})
    );
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.body, first.body);
    // Either the retry waited for the first (replayed) or, had it arrived
    // after the answer was stored, replayed it from storage: never delivered.
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    socket.ping().await;
}

async fn idempotent_batch_replays(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let users = [unique_user("idem-b1"), unique_user("idem-b2")];
    let token = server.token("backend");
    let mut socket = Client::for_user(server, &users[0]).await;
    socket.subscribe(json!([{}])).await;
    let key = unique_user("batch-key");
    let headers = [("Idempotency-Key", key.as_str())];
    let body = json!({"userIds": users, "type": "t", "payload": 1});
    let first = post(server, "/publish/batch", &token, &headers, body.clone());
    let (first, envelope) = tokio::join!(first, socket.ack_next(json!("b")));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["envelopeId"], envelope["envelopeId"]);
    let again = post(server, "/publish/batch", &token, &headers, body).await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    socket.ping().await;
    let changed = json!({"userIds": users, "type": "t", "payload": 2});
    let r = post(server, "/publish/batch", &token, &headers, changed).await;
    r.assert_error(409, "idempotency_conflict");
}

async fn idempotent_retry_after_hibernation(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("idem-sleep");
    let token = server.token("backend");
    let mut socket = Client::for_user(server, &user).await;
    socket.subscribe(json!([{}])).await;
    let key = unique_user("sleep-key");
    let headers = [("Idempotency-Key", key.as_str())];
    let body = json!({"userId": user, "payload": "before"});
    let first = post(server, "/publish", &token, &headers, body.clone());
    let (first, _) = tokio::join!(first, socket.ack_next(json!("first")));
    assert_eq!(first.body, json!({"clientCount": 1, "results": ["first"]}));
    // The behaviour under test is idleness itself: wrangler dev hibernates
    // an idle object after about 10-15 s (tests/e2e/delivery.rs does too),
    // which drops everything the object held in memory.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let again = post(server, "/publish", &token, &headers, body).await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    socket.ping().await;
}

async fn idempotent_retry_after_a_restart(ctx: Arc<Ctx>) {
    // The runtime stops and starts again with its storage (a deploy, an
    // eviction): the key is still there, the retry delivers nothing.
    let runtime = Restartable::new("idem-restart", ctx.server.secret.clone().expect("secret"));
    let server = runtime.start().await;
    let user = unique_user("idem-restart");
    let token = server.token("backend");
    let key = unique_user("restart-key");
    let headers = [("Idempotency-Key", key.as_str())];
    let body = json!({"userId": user, "payload": "before"});
    let mut socket = Client::for_user(&server, &user).await;
    socket.subscribe(json!([{}])).await;
    let first = post(&server, "/publish", &token, &headers, body.clone());
    let (first, _) = tokio::join!(first, socket.ack_next(json!("first")));
    assert_eq!(first.body, json!({"clientCount": 1, "results": ["first"]}));
    drop(socket);
    Restartable::stop(server).await;

    let server = runtime.start().await;
    let mut socket = Client::for_user(&server, &user).await;
    socket.subscribe(json!([{}])).await;
    let again = post(&server, "/publish", &token, &headers, body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let changed = json!({"userId": user, "payload": "after"});
    let conflict = post(&server, "/publish", &token, &headers, changed).await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    // Nothing was delivered again: the next frame is the ping's answer.
    socket.ping().await;
    Restartable::stop(server).await;
}

async fn idempotent_retry_of_a_publish_a_restart_cut(ctx: Arc<Ctx>) {
    // A deploy stops the runtime while a keyed publish waits for its acks:
    // the socket has the envelope, the publisher no answer. Its retry
    // after the restart must not deliver the envelope a second time (the
    // redeploy storm of bench/README.md found it did).
    let runtime = Restartable::new("idem-cut", ctx.server.secret.clone().expect("secret"));
    let server = runtime.start().await;
    let user = unique_user("idem-cut");
    let token = server.token("backend");
    let key = unique_user("cut-key");
    let headers = [("Idempotency-Key", key.as_str())];
    let body = json!({"userId": user, "payload": "once"});
    let mut socket = Client::for_user(&server, &user).await;
    socket.subscribe(json!([{}])).await;
    // Waits for an ack that never comes; its connection breaks in the crash.
    let first = http()
        .post(format!("{}/publish", server.http()))
        .bearer_auth(&token)
        .header("Idempotency-Key", key.as_str())
        .json(&body)
        .send();
    let first = tokio::spawn(first);
    // Delivered, so written: the output gate let the frame out.
    let envelope = socket.recv_envelope().await;
    assert_eq!(envelope["seq"], 1, "{envelope}");
    runtime.crash(server).await;
    first.abort();

    let server = runtime.start().await;
    let mut socket = Client::for_user(&server, &user).await;
    let confirmation = socket.subscribe(json!([{}])).await;
    assert_eq!(confirmation["seq"], 1, "{confirmation}");
    let again = post(&server, "/publish", &token, &headers, body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // What the first had done when it was cut: sent to 1 socket, no ack.
    assert_eq!(again.body, json!({"clientCount": 1, "results": []}));
    // Nothing was delivered again: the next frame is the ping's answer.
    socket.ping().await;
    Restartable::stop(server).await;
}

async fn idempotency_keys_expire(ctx: Arc<Ctx>) {
    // The strict server keeps keys 3 s (IDEMPOTENCY_TTL_SECS).
    let user = unique_user("idem-expire");
    let token = strict_token(&ctx, "backend", json!({}));
    let key = unique_user("expire-key");
    let headers = [("Idempotency-Key", key.as_str())];
    let body = json!({"userId": user, "payload": 1});
    let first = post(&ctx.strict, "/publish", &token, &headers, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = post(&ctx.strict, "/publish", &token, &headers, body.clone()).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // Until it expires, the key replays; after, the same publish is new.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = post(&ctx.strict, "/publish", &token, &headers, body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.header("idempotent-replayed").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the key never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn detail_says_what_became_of_each_socket(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("detail");
    let mut acking = Client::for_user(server, &user).await;
    acking.subscribe(json!([{}])).await;
    let mut closing = Client::for_user(server, &user).await;
    closing.subscribe(json!([{}])).await;
    let mut silent = Client::for_user(server, &user).await;
    silent.subscribe(json!([{}])).await;
    let publishing = post(
        server,
        "/publish?detail=true",
        &server.token("backend"),
        &[],
        json!({"userId": user, "payload": "d"}),
    );
    let reacting = async {
        acking.ack_next(json!({"ok": 1})).await;
        closing.recv_envelope().await;
        closing.close().await;
        silent.recv_envelope().await;
    };
    let (r, ()) = tokio::join!(publishing, reacting);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["clientCount"], 3);
    assert_eq!(r.body["results"], json!([{"ok": 1}]));
    let deliveries = r.body["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 3);
    let ids = sockets_of(server, &user).await;
    let mut by_status: Vec<(String, Value)> = deliveries
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap_or_default().to_owned(),
                d.clone(),
            )
        })
        .collect();
    by_status.sort_by(|a, b| a.0.cmp(&b.0));
    let statuses: Vec<&str> = by_status.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["acked", "closed", "timed_out"]);
    let acked = &by_status[0].1;
    assert_eq!(acked["result"], json!({"ok": 1}));
    assert!(acked["ackMs"].as_u64().is_some(), "{acked}");
    for (_, d) in &by_status[1..] {
        assert!(d.get("result").is_none() && d.get("ackMs").is_none(), "{d}");
    }
    // The sockets still open are the acked and the silent one.
    let open: Vec<&Value> = ids.body["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| &s["socketId"])
        .collect();
    assert!(open.contains(&&acked["socketId"]));
    assert!(open.contains(&&by_status[2].1["socketId"]));
    // Without detail the answer is the plain shape.
    let plain = publish(server, &unique_user("plain"), "t", json!(1)).await;
    assert_eq!(plain, json!({"clientCount": 0, "results": []}));
    let r = post(
        server,
        "/publish?detail=true",
        &server.token("backend"),
        &[],
        json!({"userId": unique_user("none"), "payload": 1}),
    )
    .await;
    // Detail also carries the `publish` log line's counts and time (issue 23).
    let mut body = r.body;
    assert!(body["ms"].as_u64().is_some(), "{body}");
    body.as_object_mut().map(|fields| fields.remove("ms"));
    assert_eq!(
        body,
        json!({"clientCount": 0, "results": [], "deliveries": [],
               "acked": 0, "timedOut": 0, "closed": 0})
    );
}

async fn results_past_the_cap_are_null_and_flagged(ctx: Arc<Ctx>) {
    // The strict server keeps 2,048 bytes of results (MAX_RESULTS_BYTES).
    let user = unique_user("cap");
    let token = strict_token(&ctx, &user, json!({}));
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut socket = Client::connect(&ctx.strict, &token).await;
        socket.subscribe(json!([{}])).await;
        sockets.push(socket);
    }
    let backend = strict_token(&ctx, "backend", json!({}));
    // 1,000 bytes of JSON each: two fit in 2,048, the third does not.
    let big = "x".repeat(998);
    let publishing = post(
        &ctx.strict,
        "/publish",
        &backend,
        &[],
        json!({"userId": user, "payload": 1}),
    );
    let acking = async {
        let mut envelopes = Vec::new();
        for socket in sockets.iter_mut() {
            envelopes.push(socket.recv_envelope().await);
        }
        // One at a time, each confirmed processed (the pong comes after it).
        for (socket, envelope) in sockets.iter_mut().zip(&envelopes) {
            socket.ack(envelope, json!(big)).await;
            socket.ping().await;
        }
    };
    let (r, ()) = tokio::join!(publishing, acking);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["clientCount"], 3);
    assert_eq!(r.body["results"], json!([big, big, null]));
    assert_eq!(r.body["truncated"], true);
    // Under the cap the answer has no `truncated` at all.
    let publishing = post(
        &ctx.strict,
        "/publish",
        &backend,
        &[],
        json!({"userId": user, "payload": 2}),
    );
    let acking = async {
        for socket in sockets.iter_mut() {
            socket.ack_next(json!("small")).await;
        }
    };
    let (r, ()) = tokio::join!(publishing, acking);
    assert_eq!(
        r.body,
        json!({"clientCount": 3, "results": ["small", "small", "small"]})
    );
}
