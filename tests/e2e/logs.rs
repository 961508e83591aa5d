//! Structured logs and metrics, read from the servers' own output: the
//! `publish` line and its counts (a timed-out and a closed socket among
//! them), `socket.open`/`socket.close` with their codes, `auth.refused`
//! (folded), `frame.rejected`, `WORKER_LOG_LEVEL=error`,
//! `LOG_USER_IDS=hash`, `METRICS_LOG=true`'s data points and the `debug`
//! frame lines. `main` greps every server's log for tokens, secrets and
//! the markers registered with `never_logged`.

use std::sync::Arc;
use std::time::Instant;

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{
    http, lines_of, log_lines, never_logged, send, unique_user, wait_for_line, Client, Server,
};
use crate::{tests, Ctx, Test, OBSERVED_HASH_KEY};

pub fn tests() -> Vec<Test> {
    tests![
        a_publish_gives_one_line_with_its_counts,
        opens_and_closes_with_their_codes,
        a_refused_token_gives_a_folded_auth_refused,
        bad_frames_give_frame_rejected,
        level_error_silences_the_info_lines,
        hashed_user_ids_never_show_the_id,
        metrics_log_gives_the_data_points,
        debug_logs_each_frame,
        batches_and_replays_say_so,
    ]
}

/// A payload, an ack result and a filter value, each carrying a marker
/// that no log may hold.
fn secrets(test: &str) -> (Value, Value, String) {
    let marker = |what: &str| format!("{what}-{}", unique_user(test));
    let payload = marker("payload-secret");
    let result = marker("result-secret");
    let filter = marker("filter-secret");
    for text in [&payload, &result, &filter] {
        never_logged(text.clone());
    }
    (
        json!({ "secret": payload }),
        json!({ "secret": result }),
        filter,
    )
}

/// A socket of `user` subscribed to type `t` and the marker filter value.
async fn subscribed(server: &Server, user: &str, filter: &str) -> Client {
    let mut socket = Client::for_user(server, user).await;
    socket
        .subscribe(json!([{"type": "t"}, {"type": "t", "tag": filter}]))
        .await;
    socket
}

/// Publishes `payload` of type `t` to `user` in a task of its own (the
/// answer waits for acks the test sends meanwhile).
fn publish_later(
    server: &Server,
    path: &str,
    user: &str,
    payload: &Value,
) -> tokio::task::JoinHandle<crate::support::Reply> {
    let request = http()
        .post(format!("{}{path}", server.http()))
        .bearer_auth(server.token("backend"))
        .json(&json!({ "userId": user, "type": "t", "payload": payload }));
    tokio::spawn(send(request))
}

/// How `LOG_USER_IDS=hash` shows `user` on the `observed` server.
fn hashed(user: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(OBSERVED_HASH_KEY.as_bytes()).expect("key");
    mac.update(user.as_bytes());
    mac.finalize().into_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Three sockets: one acks, one closes before acking, one stays silent
/// until the ack timeout. One `publish` line, with those counts; the
/// `?detail=true` answer carries the same.
async fn a_publish_gives_one_line_with_its_counts(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("log-publish");
    let (payload, result, filter) = secrets("log-publish");
    let mut acking = subscribed(server, &user, &filter).await;
    let mut closing = subscribed(server, &user, &filter).await;
    let mut silent = subscribed(server, &user, &filter).await;
    let started = Instant::now();
    let answer = publish_later(server, "/publish?detail=true", &user, &payload);
    acking.ack_next(result).await;
    closing.recv_envelope().await;
    closing.close().await;
    silent.recv_envelope().await;
    let answer = answer.await.expect("publish task");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.body;
    let waited = started.elapsed().as_millis() as u64;

    let line = wait_for_line(server, "publish", |l| l["userId"] == user.as_str()).await;
    assert_eq!(line["clientCount"], 3, "{line}");
    assert_eq!(line["acked"], 1, "{line}");
    assert_eq!(line["timedOut"], 1, "{line}");
    assert_eq!(line["closed"], 1, "{line}");
    assert_eq!(line["type"], "t");
    assert_eq!(line["keyed"], false);
    assert_eq!(line["replayed"], false);
    assert!(line.get("batch").is_none(), "not a batch: {line}");
    assert_eq!(line["bytes"], payload.to_string().len(), "{line}");
    let ms = line["ms"].as_u64().expect("ms");
    // It waited for the 5 s ack timeout, and not longer than the client did.
    assert!(
        (4900..=waited + 50).contains(&ms),
        "ms {ms}, waited {waited}"
    );
    assert!(line["envelopeId"].is_string());
    // The answer says the same as the line.
    for field in ["acked", "timedOut", "closed", "ms"] {
        assert_eq!(answer[field], line[field], "{field}: {answer} vs {line}");
    }
    assert_eq!(
        lines_of(server, "publish", |l| l["userId"] == user.as_str()).len(),
        1,
        "one line per publish"
    );
    drop(silent);
}

/// Opens count the user's sockets; a client's close, the server's close
/// (an operator's disconnect) and their codes.
async fn opens_and_closes_with_their_codes(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("log-sockets");
    let first = Client::for_user(server, &user).await;
    let mut second = Client::for_user(server, &user).await;
    second.ping().await;
    let opened = |n: u64| {
        let user = user.clone();
        move |l: &Value| l["userId"] == user.as_str() && l["sockets"] == n
    };
    let first_open = wait_for_line(server, "socket.open", opened(1)).await;
    let second_open = wait_for_line(server, "socket.open", opened(2)).await;
    assert_ne!(first_open["socketId"], second_open["socketId"]);

    first.close().await;
    let closed = wait_for_line(server, "socket.close", |l| {
        l["socketId"] == first_open["socketId"]
    })
    .await;
    // The test client's close frame has no code: received as 1005.
    assert_eq!(closed["code"], 1005, "{closed}");
    assert_eq!(closed["by"], "client", "{closed}");
    assert_eq!(closed["userId"], user.as_str());
    assert!(closed["durationMs"].as_u64().is_some(), "{closed}");

    let reply = send(
        server
            .user_route(Method::POST, &user, "disconnect")
            .bearer_auth(server.operator_token()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(second.expect_close().await, Some(4001));
    let closed = wait_for_line(server, "socket.close", |l| {
        l["socketId"] == second_open["socketId"]
    })
    .await;
    assert_eq!(closed["code"], 4001, "{closed}");
    assert_eq!(closed["by"], "server", "{closed}");
    // One line per socket's end, though the client answered the close.
    let ends = lines_of(server, "socket.close", |l| l["userId"] == user.as_str());
    assert_eq!(ends.len(), 2, "{ends:#?}");
}

/// A bad token on `/publish` and on an upgrade: `auth.refused` with the
/// route, status and code answered. A burst of them is folded: at most one
/// line per second per code, whose counts add up to no more than were sent.
async fn a_refused_token_gives_a_folded_auth_refused(ctx: Arc<Ctx>) {
    let server = &ctx.observed;
    let started = Instant::now();
    let burst = 40;
    for _ in 0..burst {
        let reply = send(
            http()
                .post(format!("{}/publish", server.http()))
                .bearer_auth("not-a-token")
                .json(&json!({"userId": "x", "type": "t", "payload": {}})),
        )
        .await;
        reply.assert_error(401, "invalid_token");
    }
    let reply = send(
        server
            .request(Method::GET, "/")
            .header("Upgrade", "websocket"),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let missing = wait_for_line(server, "auth.refused", |l| l["code"] == "missing_token").await;
    assert_eq!(missing["route"], "/");
    assert_eq!(missing["status"], 401);
    let elapsed_secs = started.elapsed().as_secs();

    let line = wait_for_line(server, "auth.refused", |l| l["code"] == "invalid_token").await;
    assert_eq!(line["route"], "/publish");
    assert_eq!(line["status"], 401);
    let lines = lines_of(server, "auth.refused", |l| l["code"] == "invalid_token");
    let counted: u64 = lines.iter().map(|l| l["count"].as_u64().unwrap_or(0)).sum();
    assert!(
        lines.len() as u64 <= elapsed_secs + 1,
        "{} lines in {elapsed_secs} s: not folded",
        lines.len()
    );
    assert!(
        (1..=burst).contains(&counted),
        "counts {counted} of {burst}"
    );
    // The refused value never reaches the log.
    assert!(!server.log().contains("not-a-token"));
}

/// An invalid frame: its error frame, and a `frame.rejected` line naming
/// the socket and the code (at `warn`, on by default).
async fn bad_frames_give_frame_rejected(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let user = unique_user("log-frames");
    let mut socket = Client::for_user(server, &user).await;
    socket.send_text("{not json").await;
    socket.expect_error("invalid_json").await;
    let line = wait_for_line(server, "frame.rejected", |l| {
        l["userId"] == user.as_str() && l["code"] == "invalid_json"
    })
    .await;
    assert!(line["socketId"].is_string(), "{line}");
    assert!(line["count"].as_u64().is_some_and(|n| n >= 1), "{line}");
}

/// `WORKER_LOG_LEVEL=error`: a publish, a socket and a refused token write
/// no info line. The data point `METRICS_LOG` writes whatever the level is
/// the sign that the publish was answered and its line would be out.
async fn level_error_silences_the_info_lines(ctx: Arc<Ctx>) {
    let server = &ctx.quiet;
    let user = unique_user("log-quiet");
    let mut socket = Client::for_user(server, &user).await;
    socket.subscribe(json!([{"type": "t"}])).await;
    let publish = publish_later(server, "/publish", &user, &json!({}));
    socket.ack_next(json!(null)).await;
    assert_eq!(publish.await.expect("publish").status, 200);
    send(
        http()
            .post(format!("{}/publish", server.http()))
            .bearer_auth("bad"),
    )
    .await
    .assert_error(401, "invalid_token");
    socket.close().await;
    wait_for_line(server, "metrics", |l| {
        l["blobs"][0] == "socket.close" && l["blobs"][1] == user.as_str()
    })
    .await;
    let info: Vec<Value> = log_lines(server)
        .into_iter()
        .filter(|l| l["event"] != "metrics" && l["event"] != "error")
        .collect();
    assert!(info.is_empty(), "lines below error: {info:#?}");
}

/// `LOG_USER_IDS=hash`: lines and data points carry the keyed hash
/// (HMAC-SHA256 with `LOG_HASH_KEY`, 16 hex digits), never the id.
async fn hashed_user_ids_never_show_the_id(ctx: Arc<Ctx>) {
    let server = &ctx.observed;
    let user = unique_user("log-hashed-user");
    let hashed = hashed(&user);
    let hashed = hashed.as_str();
    let mut socket = Client::for_user(server, &user).await;
    socket.subscribe(json!([{"type": "t"}])).await;
    let answer = publish_later(server, "/publish", &user, &json!({}));
    socket.ack_next(json!(null)).await;
    assert_eq!(answer.await.expect("publish").status, 200);
    let line = wait_for_line(server, "publish", |l| l["userId"] == hashed).await;
    assert_eq!(line["acked"], 1);
    wait_for_line(server, "socket.open", |l| l["userId"] == hashed).await;
    wait_for_line(server, "metrics", |l| l["indexes"][0] == hashed).await;
    assert!(
        !server.log().contains(&user),
        "the user id appears in the hashed server's log"
    );
}

/// `METRICS_LOG=true`: one data point per answered publish and per socket
/// open and close, in the documented layout (docs/observing.md).
async fn metrics_log_gives_the_data_points(ctx: Arc<Ctx>) {
    let server = &ctx.quiet;
    let user = unique_user("log-metrics");
    let (payload, _, _) = secrets("log-metrics");
    let mut socket = Client::for_user(server, &user).await;
    socket.subscribe(json!([{"type": "t"}])).await;
    let opened = wait_for_line(server, "metrics", |l| {
        l["blobs"][0] == "socket.open" && l["blobs"][1] == user.as_str()
    })
    .await;
    assert_eq!(opened["indexes"], json!([user]));
    assert_eq!(opened["doubles"], json!([1]));
    let answer = publish_later(server, "/publish", &user, &payload);
    socket.ack_next(json!("done")).await;
    assert_eq!(answer.await.expect("publish").status, 200);
    let point = wait_for_line(server, "metrics", |l| {
        l["blobs"][0] == "publish" && l["blobs"][1] == user.as_str()
    })
    .await;
    assert_eq!(point["blobs"], json!(["publish", user, "t"]));
    let doubles: Vec<f64> = point["doubles"]
        .as_array()
        .expect("doubles")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(doubles.len(), 9, "{point}");
    // clientCount, acked, timedOut, closed; bytes; batch, keyed, replayed.
    assert_eq!(doubles[..4], [1.0, 1.0, 0.0, 0.0], "{point}");
    assert_eq!(doubles[5], payload.to_string().len() as f64, "{point}");
    assert_eq!(doubles[6..], [0.0, 0.0, 0.0], "{point}");
    socket.close().await;
    let closed = wait_for_line(server, "metrics", |l| {
        l["blobs"][0] == "socket.close" && l["blobs"][1] == user.as_str()
    })
    .await;
    assert_eq!(closed["blobs"][2], "client");
    assert_eq!(closed["doubles"][0], 1005);
}

/// `debug`: one line per frame received, with its type and size.
async fn debug_logs_each_frame(ctx: Arc<Ctx>) {
    let server = &ctx.observed;
    let user = unique_user("log-debug");
    let (_, _, filter) = secrets("log-debug");
    let mut socket = Client::for_user(server, &user).await;
    let subscribe = json!({"type": "subscribe", "filters": [{"type": "t", "tag": filter}]});
    socket.send_json(subscribe.clone()).await;
    socket.recv_json().await;
    let hashed = hashed(&user);
    let line = wait_for_line(server, "frame", |l| l["userId"] == hashed.as_str()).await;
    assert_eq!(line["type"], "subscribe", "{line}");
    assert_eq!(line["bytes"], subscribe.to_string().len(), "{line}");
}

/// A batch's lines name its size, one per user; a repeated
/// `Idempotency-Key` gets a `replayed` line of its own.
async fn batches_and_replays_say_so(ctx: Arc<Ctx>) {
    let server = &ctx.server;
    let users = [unique_user("log-batch"), unique_user("log-batch")];
    let token = server.token("backend");
    let reply = send(
        http()
            .post(format!("{}/publish/batch", server.http()))
            .bearer_auth(&token)
            .json(&json!({"userIds": users, "type": "t", "payload": {}})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for user in &users {
        let line = wait_for_line(server, "publish", |l| l["userId"] == user.as_str()).await;
        assert_eq!(line["batch"], 2, "{line}");
        assert_eq!(line["clientCount"], 0, "{line}");
    }

    let user = unique_user("log-keyed");
    let key = unique_user("key");
    for _ in 0..2 {
        let reply = send(
            http()
                .post(format!("{}/publish", server.http()))
                .bearer_auth(&token)
                .header("Idempotency-Key", &key)
                .json(&json!({"userId": user, "type": "t", "payload": {}})),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let first = wait_for_line(server, "publish", |l| {
        l["userId"] == user.as_str() && l["replayed"] == false
    })
    .await;
    assert_eq!(first["keyed"], true, "{first}");
    let replay = wait_for_line(server, "publish", |l| {
        l["userId"] == user.as_str() && l["replayed"] == true
    })
    .await;
    assert_eq!(replay["envelopeId"], first["envelopeId"], "{replay}");
    assert_eq!(replay["keyed"], true);
}
