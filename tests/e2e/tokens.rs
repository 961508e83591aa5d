//! A socket lives no longer than its token: the close with 4002 at
//! `exp + JWT_LEEWAY_SECS`, delivery's own expiry check, the
//! `token_expiring` notice, in-band `refresh` and its refusals, tokens
//! without `exp`, and expiry across hibernation and a restart.
//!
//! Against the `tokens` server (`JWT_LEEWAY_SECS=0`, the notice
//! [`TOKENS_NOTICE_SECS`] before `exp`), with lifetimes of a few seconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::{
    publish, sign, sockets_of, unique_user, wait_for_line, Client, Restartable, Server,
};
use crate::{Ctx, TOKENS_NOTICE_SECS};

pub fn tests() -> Vec<crate::Test> {
    crate::tests![
        closed_with_4002_at_expiry_and_not_counted_after,
        nothing_is_delivered_past_the_expiry,
        the_notice_comes_on_time_and_once,
        the_notice_comes_at_once_when_less_time_is_left,
        refresh_extends_the_same_socket,
        refused_refreshes_keep_the_old_expiry,
        a_token_without_exp_is_never_closed,
        expiry_while_hibernated_still_closes,
        expiry_after_a_restart_still_closes,
    ]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// A token of `user` for `server` that expires `secs` from now.
fn expiring(server: &Server, user: &str, secs: u64) -> (String, u64) {
    let exp = now_secs() + secs;
    (server.token_with(json!({"userId": user, "exp": exp})), exp)
}

/// The user's sockets as `(socketId, expiresAt)`.
async fn expiries(server: &Server, user: &str) -> Vec<(String, Value)> {
    let reply = sockets_of(server, user).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| {
            (
                s["socketId"].as_str().expect("id").to_owned(),
                s["expiresAt"].clone(),
            )
        })
        .collect()
}

/// Reads frames until the server closes the socket: the frames before it,
/// and the close code and reason.
async fn frames_until_close(socket: &mut Client) -> (Vec<Value>, Option<u16>, String) {
    let mut frames = Vec::new();
    loop {
        match socket.next_frame_or_close().await {
            Ok(text) if text == "pong" => {}
            Ok(text) => frames.push(serde_json::from_str(&text).expect("json frame")),
            Err((code, reason)) => return (frames, code, reason),
        }
    }
}

/// The next frame that is not a pong, as JSON.
async fn next_json(socket: &mut Client) -> Value {
    loop {
        let text = socket.next_frame().await.expect("a frame, not a close");
        if text != "pong" {
            return serde_json::from_str(&text).expect("json frame");
        }
    }
}

async fn closed_with_4002_at_expiry_and_not_counted_after(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("expiry");
    let (token, exp) = expiring(server, &user, 3);
    let mut socket = Client::connect(server, &token).await;
    socket.subscribe(json!([{}])).await;
    let ids = expiries(server, &user).await;
    assert_eq!(ids.len(), 1);
    assert_eq!(
        ids[0].1,
        json!(exp),
        "the sockets view shows the token's exp"
    );
    let (frames, code, reason) = frames_until_close(&mut socket).await;
    let closed_ms = now_ms();
    assert_eq!(code, Some(4002));
    assert_eq!(reason, "token expired");
    // Leeway 0: closed at exp, not before (the client's clock is the server's).
    assert!(
        closed_ms >= exp * 1000,
        "closed {} ms early",
        exp * 1000 - closed_ms
    );
    assert_eq!(
        frames,
        vec![json!({"type": "token_expiring", "expiresAt": exp})]
    );
    let outcome = publish(server, &user, "after", json!({})).await;
    assert_eq!(outcome, json!({"clientCount": 0, "results": []}));
    assert!(expiries(server, &user).await.is_empty());
    // The log says so too (issue 23): `token.expired`, and the close by
    // the server with 4002.
    let socket_id = &ids[0].0;
    let expired = wait_for_line(server, "token.expired", |l| l["userId"] == user.as_str()).await;
    assert_eq!(expired["socketId"], socket_id.as_str());
    let closed = wait_for_line(server, "socket.close", |l| {
        l["socketId"] == socket_id.as_str()
    })
    .await;
    assert_eq!(
        (closed["code"].as_u64(), closed["by"].as_str()),
        (Some(4002), Some("server"))
    );
}

/// Publishes sent back to back across the expiry: those answered with the
/// socket counted came before it, none sent after it counts the socket or
/// reaches it, whether the alarm or delivery's own check stopped it.
async fn nothing_is_delivered_past_the_expiry(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("no-late");
    let (token, exp) = expiring(server, &user, 2);
    let mut socket = Client::connect(server, &token).await;
    // The notice (due at once) may come before the confirmation.
    socket
        .send_json(json!({"type": "subscribe", "filters": [{"type": "tick"}]}))
        .await;
    while next_json(&mut socket).await["type"] != "subscribed" {}
    let reader = tokio::spawn(async move {
        let mut envelopes = Vec::new();
        loop {
            match socket.next_frame_or_close().await {
                Ok(text) => {
                    let frame: Value = serde_json::from_str(&text).expect("json");
                    if frame.get("envelopeId").is_some() {
                        socket.ack(&frame, json!(null)).await;
                        envelopes.push(frame["payload"]["n"].as_u64().expect("n"));
                    }
                }
                Err((code, _)) => return (envelopes, code),
            }
        }
    });
    let end_ms = exp * 1000;
    let mut sent_after_end = 0;
    let mut counted = Vec::new();
    for n in 0u64.. {
        let started = now_ms();
        if started > end_ms + 1_000 {
            break;
        }
        let outcome = publish(server, &user, "tick", json!({"n": n})).await;
        if started > end_ms {
            sent_after_end += 1;
            assert_eq!(
                outcome["clientCount"], 0,
                "publish {n} sent after exp counted the socket"
            );
        }
        if outcome["clientCount"] == 1 {
            counted.push(n);
        }
    }
    let (envelopes, code) = reader.await.expect("reader");
    assert_eq!(code, Some(4002));
    assert!(sent_after_end > 0, "no publish was sent after the expiry");
    assert!(
        !counted.is_empty(),
        "no publish reached the socket before the expiry"
    );
    assert_eq!(envelopes, counted, "exactly the counted publishes arrived");
}

async fn the_notice_comes_on_time_and_once(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("notice");
    let (token, exp) = expiring(server, &user, TOKENS_NOTICE_SECS + 3);
    let mut socket = Client::connect(server, &token).await;
    socket.ping().await;
    let notice = next_json(&mut socket).await;
    let noticed_ms = now_ms();
    assert_eq!(notice, json!({"type": "token_expiring", "expiresAt": exp}));
    let due_ms = (exp - TOKENS_NOTICE_SECS) * 1000;
    assert!(
        noticed_ms >= due_ms,
        "notice {} ms early",
        due_ms - noticed_ms
    );
    assert!(noticed_ms < exp * 1000, "notice after exp");
    // Nothing more until the close: the notice is not repeated.
    let (frames, code, _) = frames_until_close(&mut socket).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, Some(4002));
}

async fn the_notice_comes_at_once_when_less_time_is_left(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("notice-now");
    // Less than the notice period left at connect.
    let (token, exp) = expiring(server, &user, TOKENS_NOTICE_SECS);
    let connected_ms = now_ms();
    let mut socket = Client::connect(server, &token).await;
    let notice = next_json(&mut socket).await;
    assert_eq!(notice, json!({"type": "token_expiring", "expiresAt": exp}));
    assert!(now_ms() < exp * 1000, "the notice came only at the expiry");
    assert!(now_ms() - connected_ms < TOKENS_NOTICE_SECS * 1000);
    let (frames, code, _) = frames_until_close(&mut socket).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, Some(4002));
}

async fn refresh_extends_the_same_socket(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("refresh");
    let (token, exp) = expiring(server, &user, TOKENS_NOTICE_SECS + 1);
    let mut socket = Client::connect(server, &token).await;
    socket.subscribe(json!([{"type": "still"}])).await;
    let before = expiries(server, &user).await;
    let notice = next_json(&mut socket).await;
    assert_eq!(notice["type"], "token_expiring");
    let (fresh, new_exp) = expiring(server, &user, 60);
    socket
        .send_json(json!({"type": "refresh", "token": fresh}))
        .await;
    let answer = next_json(&mut socket).await;
    assert_eq!(answer, json!({"type": "refreshed", "expiresAt": new_exp}));
    let after = expiries(server, &user).await;
    assert_eq!(after, vec![(before[0].0.clone(), json!(new_exp))]);
    let refreshed =
        wait_for_line(server, "token.refreshed", |l| l["userId"] == user.as_str()).await;
    assert_eq!(refreshed["expiresAt"], json!(new_exp));
    assert_eq!(refreshed["socketId"], before[0].0.as_str());
    // Past the first token's end (leeway 0), the same socket still gets
    // envelopes, with its filters.
    let wait_ms = (exp * 1000 + 500).saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    let published = {
        let (ctx, user) = (ctx.clone(), user.clone());
        tokio::spawn(async move { publish(&ctx.tokens, &user, "still", json!({"k": 1})).await })
    };
    let envelope = socket.recv_envelope().await;
    assert_eq!(envelope["payload"], json!({"k": 1}));
    socket.ack(&envelope, json!("here")).await;
    let outcome = published.await.expect("publish");
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["here"]}));
    assert_eq!(expiries(server, &user).await[0].0, before[0].0);
    // A refresh to a token without exp: the socket never expires.
    let forever = server.token_with(json!({"userId": user}));
    socket
        .send_json(json!({"type": "refresh", "token": forever}))
        .await;
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "refreshed", "expiresAt": null})
    );
    assert_eq!(expiries(server, &user).await[0].1, Value::Null);
    socket.close().await;
}

async fn refused_refreshes_keep_the_old_expiry(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("refused");
    let (token, exp) = expiring(server, &user, TOKENS_NOTICE_SECS + 4);
    let mut socket = Client::connect(server, &token).await;
    socket.ping().await;
    let secret = server.secret.clone().expect("secret");
    let later = now_secs() + 600;
    let other_user = server.token_with(json!({"userId": format!("{user}-other"), "exp": later}));
    let bad_signature = sign(
        &format!("{secret}-not"),
        &json!({"userId": user, "exp": later}),
    );
    let expired = server.token_with(json!({"userId": user, "exp": now_secs() - 5}));
    let refusals = [
        (
            json!({"type": "refresh", "token": other_user}),
            "other user",
        ),
        (
            json!({"type": "refresh", "token": bad_signature}),
            "bad signature",
        ),
        (json!({"type": "refresh", "token": expired}), "expired"),
        (json!({"type": "refresh"}), "missing token"),
        (json!({"type": "refresh", "token": 42}), "missing token"),
    ];
    for (frame, reason) in refusals {
        socket.send_json(frame.clone()).await;
        let error = socket.expect_error("refresh_rejected").await;
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(reason), "{frame}: {message}");
        assert_eq!(expiries(server, &user).await[0].1, json!(exp), "{frame}");
    }
    // The old expiry is still in force: notice, then 4002 at exp.
    let (frames, code, _) = frames_until_close(&mut socket).await;
    assert_eq!(
        frames,
        vec![json!({"type": "token_expiring", "expiresAt": exp})]
    );
    assert_eq!(code, Some(4002));
    assert!(now_ms() >= exp * 1000);
}

async fn a_token_without_exp_is_never_closed(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("no-exp");
    // A client's own X-Token-Exp header is not the token's.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws())
            .expect("request");
    let forever = server.token_with(json!({"userId": user}));
    let headers = request.headers_mut();
    headers.insert(
        "Authorization",
        format!("Bearer {forever}").parse().expect("header"),
    );
    headers.insert("X-Token-Exp", "1".parse().expect("header"));
    let mut lasting = Client::from_request(request).await;
    lasting.subscribe(json!([{}])).await;
    assert_eq!(expiries(server, &user).await[0].1, Value::Null);
    // Another socket of the user expires: the object's alarm has run and
    // closed only that one.
    let (token, _) = expiring(server, &user, 1);
    let mut brief = Client::connect(server, &token).await;
    let (_, code, _) = frames_until_close(&mut brief).await;
    assert_eq!(code, Some(4002));
    let published = {
        let (ctx, user) = (ctx.clone(), user.clone());
        tokio::spawn(async move { publish(&ctx.tokens, &user, "t", json!({})).await })
    };
    let envelope = lasting.recv_envelope().await;
    lasting.ack(&envelope, json!(true)).await;
    let outcome = published.await.expect("publish");
    assert_eq!(outcome, json!({"clientCount": 1, "results": [true]}));
    lasting.ping().await;
    lasting.close().await;
}

async fn expiry_while_hibernated_still_closes(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("expiry-hibernated");
    // wrangler dev hibernates an idle object after about 10-15 s: the
    // notice and the close come long after, woken by the alarm alone.
    let (token, exp) = expiring(server, &user, 24);
    let mut socket = Client::connect(server, &token).await;
    socket.subscribe(json!([{}])).await;
    // The behaviour under test is idleness itself: stay silent past the
    // hibernation, until shortly before the notice.
    let notice_ms = (exp - TOKENS_NOTICE_SECS) * 1000;
    let idle_ms = notice_ms.saturating_sub(now_ms() + 2_000);
    tokio::time::sleep(Duration::from_millis(idle_ms)).await;
    let (frames, code, reason) = frames_until_close(&mut socket).await;
    assert_eq!(
        frames,
        vec![json!({"type": "token_expiring", "expiresAt": exp})]
    );
    assert_eq!((code, reason.as_str()), (Some(4002), "token expired"));
    assert!(now_ms() >= exp * 1000);
    let outcome = publish(server, &user, "after", json!({})).await;
    assert_eq!(outcome["clientCount"], 0);
}

/// The runtime restarts with its storage while the user's token is still
/// valid: the client comes back with the same token, and the object (a new
/// instance, its alarm from before the restart still stored) closes it at
/// the same `exp`.
async fn expiry_after_a_restart_still_closes(ctx: Arc<Ctx>) {
    let secret = ctx.tokens.secret.clone().expect("secret");
    let runtime = Restartable::new("tokens-restart", secret)
        .with_vars(&[("JWT_LEEWAY_SECS", "0"), ("TOKEN_REFRESH_NOTICE_SECS", "0")]);
    let server = runtime.start().await;
    let user = unique_user("expiry-restart");
    let (token, exp) = expiring(&server, &user, 12);
    let mut socket = Client::connect(&server, &token).await;
    socket.subscribe(json!([{}])).await;
    Restartable::stop(server).await;
    assert_eq!(socket.next_frame().await.err().map(|_| ()), Some(()));
    let server = runtime.start().await;
    assert!(
        now_secs() < exp,
        "the restart took longer than the token lives"
    );
    let mut again = Client::connect(&server, &token).await;
    again.subscribe(json!([{}])).await;
    assert_eq!(expiries(&server, &user).await[0].1, json!(exp));
    let (frames, code, _) = frames_until_close(&mut again).await;
    // TOKEN_REFRESH_NOTICE_SECS=0: no notice at all.
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(code, Some(4002));
    assert!(now_ms() >= exp * 1000);
    Restartable::stop(server).await;
}
