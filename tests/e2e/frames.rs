//! WebSocket frames: ping/pong, subscription confirmations, error frames for
//! bad input, and the socket staying usable afterwards.

use std::sync::Arc;

use serde_json::json;

use crate::support::{publish, unique_user, without_position, Client};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        ping_exact_is_answered,
        ping_upper_case_is_answered,
        ping_mixed_case_is_answered,
        subscribe_and_unsubscribe_are_confirmed,
        invalid_json_gets_error_frame,
        unknown_type_gets_error_frame,
        malformed_frames_get_error_frame,
        binary_frame_gets_error_frame,
        invalid_filters_are_reported_and_valid_ones_apply,
        only_first_fifty_filters_apply,
    ]
}

async fn ping_exact_is_answered(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("ping")).await;
    socket.send_text("ping").await;
    assert_eq!(socket.recv_text().await, "pong");
}

async fn ping_upper_case_is_answered(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("ping")).await;
    socket.send_text("PING").await;
    assert_eq!(socket.recv_text().await, "pong");
}

async fn ping_mixed_case_is_answered(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("ping")).await;
    socket.subscribe(json!([{}])).await;
    socket.send_text("PiNg").await;
    assert_eq!(socket.recv_text().await, "pong");
}

async fn subscribe_and_unsubscribe_are_confirmed(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("confirm")).await;
    let frame = socket
        .subscribe(json!([{"type": "a"}, {"type": "b"}]))
        .await;
    assert_eq!(
        without_position(frame),
        json!({"type": "subscribed", "added": 2, "total": 2})
    );
    // Subscribing an equal filter again adds nothing.
    let frame = socket.subscribe(json!([{"type": "a"}])).await;
    assert_eq!(
        without_position(frame),
        json!({"type": "subscribed", "added": 0, "total": 2})
    );
    let frame = socket
        .unsubscribe(json!([{"type": "a"}, {"type": "zzz"}]))
        .await;
    assert_eq!(
        frame,
        json!({"type": "unsubscribed", "removed": 1, "total": 1})
    );
}

async fn invalid_json_gets_error_frame(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("badjson")).await;
    for text in ["{", "hello", "{\"type\":\"subscribe\",}"] {
        socket.send_text(text).await;
        socket.expect_error("invalid_json").await;
    }
    socket.ping().await;
}

async fn unknown_type_gets_error_frame(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("unknown")).await;
    socket
        .send_json(json!({"type": "publish", "payload": 1}))
        .await;
    socket.expect_error("unknown_type").await;
    socket.ping().await;
}

async fn malformed_frames_get_error_frame(ctx: Arc<Ctx>) {
    let mut socket = Client::for_user(&ctx.server, &unique_user("malformed")).await;
    let frames = [
        json!([1, 2]),
        json!("subscribe"),
        json!({}),
        json!({"type": 3}),
        json!({"type": "subscribe"}),
        json!({"type": "subscribe", "filters": {"type": "a"}}),
        json!({"type": "ack"}),
        json!({"type": "ack", "envelopeId": 5}),
    ];
    for frame in frames {
        socket.send_json(frame).await;
        socket.expect_error("invalid_frame").await;
    }
    // Still usable.
    let frame = socket.subscribe(json!([{"type": "after"}])).await;
    assert_eq!(frame["total"], 1);
}

async fn binary_frame_gets_error_frame(ctx: Arc<Ctx>) {
    let user = unique_user("binary");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket
        .send_binary(b"{\"type\":\"subscribe\",\"filters\":[{}]}".to_vec())
        .await;
    socket.expect_error("binary_not_supported").await;
    socket.ping().await;
    // The binary subscribe was not applied.
    let outcome = publish(&ctx.server, &user, "t", json!({})).await;
    assert_eq!(outcome["clientCount"], 0);
}

async fn invalid_filters_are_reported_and_valid_ones_apply(ctx: Arc<Ctx>) {
    let user = unique_user("invalid-filter");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket
        .send_json(json!({
            "type": "subscribe",
            "filters": [{"type": "ok"}, 5, {"n": 1}, "x", {"a": "b", "c": null}],
        }))
        .await;
    let error = socket.expect_error("invalid_filter").await;
    let message = error["message"].as_str().unwrap_or_default();
    for index in ["filters[1]", "filters[2]", "filters[3]", "filters[4]"] {
        assert!(message.contains(index), "{message}");
    }
    assert!(!message.contains("filters[0]"), "{message}");
    let confirmed = socket.recv_json().await;
    assert_eq!(
        without_position(confirmed),
        json!({"type": "subscribed", "added": 1, "total": 1})
    );
    let (outcome, _) = tokio::join!(
        publish(&ctx.server, &user, "ok", json!({})),
        socket.ack_next(json!(1)),
    );
    assert_eq!(outcome["clientCount"], 1);
}

async fn only_first_fifty_filters_apply(ctx: Arc<Ctx>) {
    let user = unique_user("cap");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    let filters: Vec<_> = (0..60).map(|i| json!({"type": format!("t{i}")})).collect();
    socket
        .send_json(json!({"type": "subscribe", "filters": filters}))
        .await;
    let error = socket.expect_error("too_many_filters").await;
    assert!(
        error["message"].as_str().unwrap_or_default().contains("10"),
        "{error}"
    );
    let confirmed = socket.recv_json().await;
    assert_eq!(
        without_position(confirmed),
        json!({"type": "subscribed", "added": 50, "total": 50})
    );

    let outcome = publish(&ctx.server, &user, "t50", json!({})).await;
    assert_eq!(outcome["clientCount"], 0, "filter 51 must be ignored");
    let (outcome, _) = tokio::join!(
        publish(&ctx.server, &user, "t49", json!({})),
        socket.ack_next(json!("49")),
    );
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["49"]}));

    // Unsubscribe applies the same cap: 60 entries remove only the first 50.
    let filters: Vec<_> = (0..60).map(|i| json!({"type": format!("t{i}")})).collect();
    socket
        .send_json(json!({"type": "unsubscribe", "filters": filters}))
        .await;
    socket.expect_error("too_many_filters").await;
    let confirmed = socket.recv_json().await;
    assert_eq!(
        confirmed,
        json!({"type": "unsubscribed", "removed": 50, "total": 0})
    );
}
