//! Hostile input: forged and malformed tokens, the hardening knobs (strict
//! server), oversized and abusive frames, filter caps, and proof that
//! abandoned publishes leave no state behind. Each test also checks that a
//! control socket of the same user keeps working.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{
    publish, publish_as, refused_upgrade, send, sign, sockets_of, unique_user, without_position,
    Client, Server,
};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        forged_algorithms_and_shapes_are_401,
        duplicated_user_id_key_is_401,
        time_claims_are_checked_with_leeway,
        oversized_token_is_401,
        strict_requires_exp_audience_and_issuer,
        strict_accepts_the_previous_secret,
        strict_publish_needs_scope,
        strict_origin_allow_list,
        strict_publish_size_limit,
        misconfigured_ack_timeout_is_500,
        oversized_frame_closes_1009,
        strict_frame_limit_closes_1009,
        repeated_violations_close_1008,
        flooding_is_rate_limited_then_closed,
        ignored_ack_flood_is_rate_limited_then_closed,
        filter_size_caps,
        socket_filter_cap_and_attachment_limit,
        abandoned_publishes_leave_no_pending_state,
        internal_stats_route_is_gone,
    ]
}

use hopeflow_client::token::now_secs as now;

/// HMAC variants a forger might use.
#[derive(Clone, Copy)]
enum Mac {
    Sha256,
    Sha384,
    Sha512,
}

/// A token with an arbitrary header and payload, correctly signed with the
/// secret and the given HMAC (whatever the header claims).
fn raw_token(secret: &str, header: &str, payload: &str, mac: Mac) -> String {
    use hmac::{Hmac, Mac as _};
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = secret.as_bytes();
    let tag = match mac {
        Mac::Sha256 => Hmac::<sha2::Sha256>::new_from_slice(key)
            .expect("key")
            .chain_update(&message)
            .finalize()
            .into_bytes()
            .to_vec(),
        Mac::Sha384 => Hmac::<sha2::Sha384>::new_from_slice(key)
            .expect("key")
            .chain_update(&message)
            .finalize()
            .into_bytes()
            .to_vec(),
        Mac::Sha512 => Hmac::<sha2::Sha512>::new_from_slice(key)
            .expect("key")
            .chain_update(&message)
            .finalize()
            .into_bytes()
            .to_vec(),
    };
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// A socket of `user` that must keep working whatever another socket does.
async fn control(server: &Server, user: &str) -> Client {
    let mut socket = Client::for_user(server, user).await;
    socket.subscribe(json!([{"type": "control"}])).await;
    socket
}

async fn assert_control_works(server: &Server, control: &mut Client, user: &str) {
    let (outcome, _) = tokio::join!(
        publish(server, user, "control", json!({})),
        control.ack_next(json!("alive")),
    );
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["alive"]}));
}

async fn assert_refused(server: &Server, token: &str, code: &str) {
    let r = refused_upgrade(server, "", Some(token)).await;
    r.assert_error(401, code);
    let r = publish_as(server, token, json!({"userId": "u"})).await;
    r.assert_error(401, code);
}

async fn forged_algorithms_and_shapes_are_401(ctx: Arc<Ctx>) {
    let secret = ctx.server.secret.clone().expect("secret");
    let payload = r#"{"userId":"mallory"}"#;
    let good = ctx.server.token("mallory");
    let (message, _) = good.rsplit_once('.').expect("three parts");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let tokens = [
        none,
        raw_token(
            &secret,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            payload,
            Mac::Sha384,
        ),
        raw_token(
            &secret,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            payload,
            Mac::Sha512,
        ),
        // An RS256 header over an HMAC signature made with the shared secret.
        raw_token(
            &secret,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            payload,
            Mac::Sha256,
        ),
        format!("{message}."),
        message.to_owned(),
        format!("{good}.extra"),
        "....".into(),
    ];
    for token in tokens {
        assert_refused(&ctx.server, &token, "invalid_token").await;
    }
}

async fn duplicated_user_id_key_is_401(ctx: Arc<Ctx>) {
    let secret = ctx.server.secret.clone().expect("secret");
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let token = raw_token(
        &secret,
        header,
        r#"{"userId":"alice","userId":"mallory"}"#,
        Mac::Sha256,
    );
    assert_refused(&ctx.server, &token, "invalid_token").await;
    for payload in [r#"{"userId":"   "}"#, r#"{"userId":["a"]}"#, r#"[1]"#] {
        let token = raw_token(&secret, header, payload, Mac::Sha256);
        assert_refused(&ctx.server, &token, "invalid_token").await;
    }
}

async fn time_claims_are_checked_with_leeway(ctx: Arc<Ctx>) {
    let user = unique_user("leeway");
    let token = |claims: Value| ctx.server.token_with(claims);
    // Within the default 30 s leeway: accepted, and told at once that its
    // token expires (less than TOKEN_REFRESH_NOTICE_SECS is left).
    let exp = now() - 5;
    let mut socket =
        Client::connect(&ctx.server, &token(json!({"userId": user, "exp": exp}))).await;
    assert_eq!(
        socket.recv_json().await,
        json!({"type": "token_expiring", "expiresAt": exp})
    );
    socket.ping().await;
    assert_refused(
        &ctx.server,
        &token(json!({"userId": user, "exp": now() - 120})),
        "token_expired",
    )
    .await;
    for claims in [
        json!({"userId": user, "nbf": now() + 600}),
        json!({"userId": user, "nbf": "0"}),
        json!({"userId": user, "exp": "9999999999"}),
        json!({"userId": user, "exp": null}),
    ] {
        assert_refused(&ctx.server, &token(claims), "invalid_token").await;
    }
}

async fn oversized_token_is_401(ctx: Arc<Ctx>) {
    let user = unique_user("big-token");
    let token = ctx
        .server
        .token_with(json!({"userId": user, "pad": "x".repeat(9 * 1024)}));
    assert!(token.len() > 8 * 1024);
    let r = refused_upgrade(&ctx.server, &format!("?token={token}"), None).await;
    r.assert_error(401, "invalid_token");
    let r = publish_as(&ctx.server, &token, json!({"userId": user})).await;
    r.assert_error(401, "invalid_token");
}

/// A token the strict server accepts, with `changes` applied (`null` removes).
pub fn strict_token(ctx: &Ctx, user: &str, changes: Value) -> String {
    let mut claims = json!({
        "userId": user,
        "exp": now() + 600,
        "aud": "hopeflow",
        "iss": "auth.test",
        "scope": "read publish",
    });
    for (key, value) in changes.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    ctx.strict.token_with(claims)
}

async fn strict_requires_exp_audience_and_issuer(ctx: Arc<Ctx>) {
    let user = unique_user("strict");
    let mut socket = Client::connect(&ctx.strict, &strict_token(&ctx, &user, json!({}))).await;
    socket.ping().await;
    for changes in [
        json!({"exp": null}),
        json!({"aud": null}),
        json!({"aud": "other"}),
        json!({"aud": ["other", "x"]}),
        json!({"iss": null}),
        json!({"iss": "evil.test"}),
    ] {
        let token = strict_token(&ctx, &user, changes.clone());
        let r = refused_upgrade(&ctx.strict, "", Some(&token)).await;
        assert_eq!(r.status, 401, "{changes}: {}", r.body);
        r.assert_error(401, "invalid_token");
    }
    let listed = strict_token(&ctx, &user, json!({"aud": ["other", "hopeflow"]}));
    Client::connect(&ctx.strict, &listed).await.ping().await;
}

async fn strict_accepts_the_previous_secret(ctx: Arc<Ctx>) {
    let user = unique_user("rotation");
    let claims = json!({"userId": user, "exp": now() + 600, "aud": "hopeflow", "iss": "auth.test"});
    Client::connect(&ctx.strict, &sign("previous-secret", &claims))
        .await
        .ping()
        .await;
    let r = refused_upgrade(&ctx.strict, "", Some(&sign("retired-secret", &claims))).await;
    r.assert_error(401, "invalid_token");
}

async fn strict_publish_needs_scope(ctx: Arc<Ctx>) {
    let user = unique_user("scope");
    let body = json!({"userId": user, "payload": 1});
    for changes in [
        json!({"scope": null}),
        json!({"scope": "read"}),
        json!({"scope": ["publish"]}),
    ] {
        let token = strict_token(&ctx, "backend", changes);
        publish_as(&ctx.strict, &token, body.clone())
            .await
            .assert_error(403, "forbidden");
    }
    let token = strict_token(&ctx, "backend", json!({}));
    let r = publish_as(&ctx.strict, &token, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn strict_origin_allow_list(ctx: Arc<Ctx>) {
    let user = unique_user("origin");
    let token = strict_token(&ctx, &user, json!({}));
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
    ] {
        let r = send(
            ctx.strict
                .request(Method::GET, "/")
                .bearer_auth(&token)
                .header("Origin", origin)
                .header("Upgrade", "websocket")
                .header("Connection", "Upgrade")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        )
        .await;
        r.assert_error(403, "origin_not_allowed");
    }
    Client::connect_from_origin(&ctx.strict, &token, "https://admin.example")
        .await
        .ping()
        .await;
    // Without Origin (a server client) the list does not apply.
    Client::connect(&ctx.strict, &token).await.ping().await;
    // The default server has no list.
    let token = ctx.server.token(&user);
    Client::connect_from_origin(&ctx.server, &token, "https://evil.example")
        .await
        .ping()
        .await;
}

async fn strict_publish_size_limit(ctx: Arc<Ctx>) {
    let token = strict_token(&ctx, "backend", json!({}));
    let user = unique_user("size");
    let r = publish_as(
        &ctx.strict,
        &token,
        json!({"userId": user, "payload": "x".repeat(5000)}),
    )
    .await;
    r.assert_error(413, "payload_too_large");
    let r = publish_as(
        &ctx.strict,
        &token,
        json!({"userId": user, "payload": "x".repeat(3000)}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn misconfigured_ack_timeout_is_500(ctx: Arc<Ctx>) {
    let server = &ctx.misconfigured;
    let token = server.token("backend");
    let r = publish_as(server, &token, json!({"userId": "u", "payload": 1})).await;
    r.assert_error(500, "server_misconfigured");
    let r = refused_upgrade(server, "", Some(&token)).await;
    r.assert_error(500, "server_misconfigured");
    assert!(
        !r.body.to_string().contains("ACK_TIMEOUT_MS"),
        "no internals: {}",
        r.body
    );
    // Health stays green: the process is up, only the settings are wrong.
    assert_eq!(
        send(server.request(Method::GET, "/health")).await.status,
        200
    );
}

async fn oversized_frame_closes_1009(ctx: Arc<Ctx>) {
    let user = unique_user("bigframe");
    let mut control = control(&ctx.server, &user).await;
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{}])).await;
    let frame = json!({"type": "subscribe", "filters": [{"pad": "x".repeat(64 * 1024)}]});
    socket.send_text(&frame.to_string()).await;
    assert_eq!(socket.expect_close().await, Some(1009));
    assert_control_works(&ctx.server, &mut control, &user).await;
    // The closed socket is no longer counted.
    let outcome = publish(&ctx.server, &user, "other", json!({})).await;
    assert_eq!(outcome["clientCount"], 0);
}

async fn strict_frame_limit_closes_1009(ctx: Arc<Ctx>) {
    let user = unique_user("strictframe");
    let token = strict_token(&ctx, &user, json!({}));
    let mut socket = Client::connect(&ctx.strict, &token).await;
    socket.send_text(&"x".repeat(4097)).await;
    assert_eq!(socket.expect_close().await, Some(1009));
    // Just under the limit is answered normally.
    let mut socket = Client::connect(&ctx.strict, &token).await;
    socket.send_text(&"x".repeat(4000)).await;
    socket.expect_error("invalid_json").await;
}

async fn repeated_violations_close_1008(ctx: Arc<Ctx>) {
    let user = unique_user("violations");
    let mut control = control(&ctx.server, &user).await;
    let mut socket = Client::for_user(&ctx.server, &user).await;
    for _ in 0..20 {
        socket.send_text("{not json").await;
        socket.expect_error("invalid_json").await;
    }
    socket.send_json(json!({"type": "nope"})).await;
    assert_eq!(socket.expect_close().await, Some(1008));
    assert_control_works(&ctx.server, &mut control, &user).await;
}

/// Reads a flooded socket until the server closes it: the pongs, the
/// `rate_limited` error frames (nothing else may come) and the close code.
async fn read_until_close(socket: &mut Client) -> (usize, usize, Option<u16>) {
    let (mut pongs, mut limited) = (0, 0);
    loop {
        match socket.next_frame().await {
            Ok(text) if text == "pong" => pongs += 1,
            Ok(text) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                limited += 1;
            }
            Err(code) => return (pongs, limited, code),
        }
    }
}

async fn flooding_is_rate_limited_then_closed(ctx: Arc<Ctx>) {
    let user = unique_user("flood");
    let mut control = control(&ctx.server, &user).await;
    let mut socket = Client::for_user(&ctx.server, &user).await;
    // `PING` (not the exact auto-response text) reaches the object each time.
    socket
        .send_many((0..1000).map(|_| "PING".to_string()))
        .await;
    let (pongs, limited, code) = read_until_close(&mut socket).await;
    assert!(pongs >= 100, "the burst is served: {pongs}");
    assert_eq!(limited, 21, "20 warnings, and the 21st violation closes");
    assert_eq!(code, Some(1008));
    assert_control_works(&ctx.server, &mut control, &user).await;
}

async fn ignored_ack_flood_is_rate_limited_then_closed(ctx: Arc<Ctx>) {
    let user = unique_user("ackflood");
    let mut control = control(&ctx.server, &user).await;
    let mut socket = Client::for_user(&ctx.server, &user).await;
    // Acks for nothing are ignored silently, until they exceed the rate.
    let ack = json!({"type": "ack", "envelopeId": "no-such-envelope", "result": 1}).to_string();
    socket.send_many((0..1000).map(|_| ack.clone())).await;
    let (pongs, limited, code) = read_until_close(&mut socket).await;
    assert_eq!(
        pongs, 0,
        "ignored acks are answered by nothing but rate_limited"
    );
    assert_eq!(limited, 21, "20 warnings, and the 21st violation closes");
    assert_eq!(code, Some(1008));
    // The object survived the close (no panic took the instance down).
    assert_control_works(&ctx.server, &mut control, &user).await;
}

async fn filter_size_caps(ctx: Arc<Ctx>) {
    let user = unique_user("filtercaps");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    let many_keys: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    socket
        .send_json(json!({"type": "subscribe", "filters": [
            Value::Object(many_keys),
            {"k".repeat(129): "v"},
            {"k": "v".repeat(513)},
            {"type": "fine"},
        ]}))
        .await;
    let error = socket.expect_error("invalid_filter").await;
    let message = error["message"].as_str().unwrap_or_default();
    for index in ["filters[0]", "filters[1]", "filters[2]"] {
        assert!(message.contains(index), "{message}");
    }
    let confirmed = socket.recv_json().await;
    assert_eq!(
        without_position(confirmed),
        json!({"type": "subscribed", "added": 1, "total": 1})
    );
}

async fn socket_filter_cap_and_attachment_limit(ctx: Arc<Ctx>) {
    let user = unique_user("socketcap");
    let mut control = control(&ctx.server, &user).await;
    let mut socket = Client::for_user(&ctx.server, &user).await;
    let filters = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .map(|i| json!({"type": format!("t{i}")}))
            .collect()
    };
    socket.subscribe(json!(filters(0, 50))).await;
    // 50 + 20 > 64: refused whole.
    socket
        .send_json(json!({"type": "subscribe", "filters": filters(50, 70)}))
        .await;
    socket.expect_error("subscription_limit").await;
    let outcome = publish(&ctx.server, &user, "t60", json!({})).await;
    assert_eq!(outcome["clientCount"], 0);
    // Filters that fit the count but not the stored state are refused too.
    let mut fresh = Client::for_user(&ctx.server, &user).await;
    let big: Vec<Value> = (0..5)
        .map(|i| json!({"k": format!("{i}{}", "v".repeat(500))}))
        .collect();
    fresh
        .send_json(json!({"type": "subscribe", "filters": big}))
        .await;
    fresh.expect_error("subscription_limit").await;
    let frame = fresh.subscribe(json!([{"type": "small"}])).await;
    assert_eq!(frame["total"], 1);
    assert_control_works(&ctx.server, &mut control, &user).await;
}

async fn abandoned_publishes_leave_no_pending_state(ctx: Arc<Ctx>) {
    let user = unique_user("pending");
    let mut silent = Client::for_user(&ctx.server, &user).await;
    let mut intruder = Client::for_user(&ctx.server, &user).await;
    silent.subscribe(json!([{"type": "t"}])).await;
    const N: usize = 10;
    let publishes = futures::future::join_all(
        (0..N).map(|n| publish(&ctx.server, &user, "t", json!({"n": n}))),
    );
    let meanwhile = async {
        let mut envelopes = Vec::new();
        for _ in 0..N {
            envelopes.push(silent.recv_envelope().await);
        }
        // All ten are waiting now: the count is real.
        let r = sockets_of(&ctx.server, &user).await;
        assert_eq!(r.body["pendingPublishes"], N, "{}", r.body);
        assert_eq!(r.body["count"], 2, "{}", r.body);
        // Acks from a socket they were not delivered to, and unknown ids.
        for envelope in &envelopes {
            intruder.ack(envelope, json!("spoofed")).await;
        }
        intruder
            .send_json(json!({"type": "ack", "envelopeId": "no-such-id", "result": 1}))
            .await;
        intruder.ping().await;
        envelopes
    };
    let (outcomes, envelopes) = tokio::join!(publishes, meanwhile);
    for outcome in outcomes {
        assert_eq!(outcome, json!({"clientCount": 1, "results": []}));
    }
    // Late acks after the timeout, twice each.
    for envelope in envelopes.iter().chain(&envelopes) {
        silent.ack(envelope, json!("late")).await;
    }
    silent.ping().await;
    let r = sockets_of(&ctx.server, &user).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["count"], 2, "{}", r.body);
    assert_eq!(r.body["pendingPublishes"], 0, "{}", r.body);
}

/// The stats route and `STATS_SECRET` gave way to the operator API.
async fn internal_stats_route_is_gone(ctx: Arc<Ctx>) {
    let path = "/internal/stats?userId=u";
    send(ctx.server.request(Method::GET, path))
        .await
        .assert_error(404, "not_found");
    let r = send(
        ctx.server
            .request(Method::GET, path)
            .header("X-Stats-Secret", "guess")
            .bearer_auth(ctx.server.operator_token()),
    )
    .await;
    r.assert_error(404, "not_found");
}
