//! `MAX_SOCKETS_PER_USER`: an upgrade past it is 429 `too_many_sockets`
//! (JSON, CORS, `Retry-After`) and nothing is accepted; other users are
//! not affected; a close makes room; the count survives hibernation; an
//! out-of-range value is a configuration error.
//!
//! Each test runs its own server with a cap of [`CAP`], so its log (the
//! sign of hibernation) is its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hopeflow_client::{Client as LibClient, ClientError, ClientOptions};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{
    refused_upgrade, sockets_of, unique_user, wait_for_line, Client, Server, WAIT,
};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        socket_cap_refuses_past_it_and_admits_after_a_close,
        socket_cap_holds_after_hibernation,
        socket_cap_out_of_range_is_a_configuration_error,
    ]
}

/// The servers' `MAX_SOCKETS_PER_USER`.
const CAP: usize = 2;

/// A server with `vars` besides its `JWT_SECRET`.
async fn start(name: &'static str, vars: &'static [(&'static str, &'static str)]) -> Server {
    tokio::task::spawn_blocking(move || {
        let secret = format!("e2e-{}", uuid::Uuid::new_v4());
        let mut all = vec![("JWT_SECRET", secret.as_str())];
        all.extend_from_slice(vars);
        Server::spawn(name, &all).wait_ready()
    })
    .await
    .expect("start")
}

async fn stop(server: Server) {
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
}

async fn capped(name: &'static str) -> Server {
    start(name, &[("MAX_SOCKETS_PER_USER", "2")]).await
}

/// An upgrade of `user`'s is refused past the cap: 429 with the JSON error,
/// CORS and `Retry-After`, seen by a plain HTTP request (which reads the
/// body) and by a real WebSocket handshake.
async fn assert_refused(server: &Server, user: &str) {
    let token = server.token(user);
    let r = refused_upgrade(server, "", Some(&token)).await;
    r.assert_error(429, "too_many_sockets");
    assert_eq!(r.header("retry-after"), Some("10"));
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{CAP} open sockets")),
        "{message}"
    );
    let mut request = server.ws().into_client_request().expect("request");
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            let cors = response.headers().get("access-control-allow-origin");
            assert_eq!(cors.and_then(|v| v.to_str().ok()), Some("*"));
        }
        Err(other) => panic!("expected a 429, got {other}"),
        Ok(_) => panic!("expected a 429, got a socket past the cap"),
    }
}

/// Waits until the operator view counts `count` sockets of `user`.
async fn wait_for_count(server: &Server, user: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = sockets_of(server, user).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["count"] == count {
            return;
        }
        assert!(Instant::now() < deadline, "count stays {}", r.body["count"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn socket_cap_refuses_past_it_and_admits_after_a_close(_ctx: Arc<Ctx>) {
    let server = capped("cap").await;
    let user = unique_user("capped");
    let mut first = Client::for_user(&server, &user).await;
    first.subscribe(json!([{"type": "first"}])).await;
    let mut second = Client::for_user(&server, &user).await;
    second.ping().await;
    assert_refused(&server, &user).await;
    // Nothing was accepted: the refused ones are in no count.
    wait_for_count(&server, &user, CAP).await;
    // The Rust client's connect is refused with the status, typed.
    let options = ClientOptions::new(server.base_ws(), server.token(&user));
    match LibClient::connect(options).await {
        Err(refused @ ClientError::Rejected { status: 429, .. }) => {
            let said = refused.to_string();
            assert!(said.starts_with("upgrade refused (429)"), "{said}");
            assert!(said.contains("sockets"), "{said}");
        }
        Err(other) => panic!("expected a 429, got {other:?}"),
        Ok(_) => panic!("expected a 429, got a connection"),
    }
    // Another user's sockets are counted apart.
    let other = unique_user("uncapped");
    let mut others = Vec::new();
    for _ in 0..CAP {
        let mut socket = Client::for_user(&server, &other).await;
        socket.ping().await;
        others.push(socket);
    }
    wait_for_count(&server, &other, CAP).await;
    // One closed makes room for one, and only one.
    second.close().await;
    wait_for_count(&server, &user, CAP - 1).await;
    let mut third = Client::for_user(&server, &user).await;
    third.ping().await;
    wait_for_count(&server, &user, CAP).await;
    assert_refused(&server, &user).await;
    // The sockets that were there all along still work.
    first.ping().await;
    for socket in others {
        socket.close().await;
    }
    first.close().await;
    third.close().await;
    stop(server).await;
}

async fn socket_cap_holds_after_hibernation(_ctx: Arc<Ctx>) {
    let server = capped("cap-idle").await;
    let user = unique_user("capped-idle");
    let mut first = Client::for_user(&server, &user).await;
    first.subscribe(json!([{"type": "idle"}])).await;
    let second = Client::for_user(&server, &user).await;
    assert_refused(&server, &user).await;
    // The behaviour under test is idleness itself: wrangler dev hibernates
    // an idle object after about 10-15 s (see delivery_after_hibernation).
    tokio::time::sleep(Duration::from_secs(22)).await;
    assert_refused(&server, &user).await;
    // The refusal came from a new instance, which counted the sockets in
    // the index it rebuilt from both attachments (the first instance built
    // it at the first connect, from none, and says nothing then).
    wait_for_line(&server, "object.woke", |l| l["sockets"] == 2).await;
    // The rebuilt count goes down with a close, as before.
    second.close().await;
    wait_for_count(&server, &user, CAP - 1).await;
    let mut third = Client::for_user(&server, &user).await;
    third.ping().await;
    first.ping().await;
    assert_refused(&server, &user).await;
    first.close().await;
    third.close().await;
    stop(server).await;
}

async fn socket_cap_out_of_range_is_a_configuration_error(_ctx: Arc<Ctx>) {
    let (none, too_many) = tokio::join!(
        start("cap-zero", &[("MAX_SOCKETS_PER_USER", "0")]),
        start("cap-over", &[("MAX_SOCKETS_PER_USER", "32769")]),
    );
    for (server, value) in [(&none, "\"0\""), (&too_many, "\"32769\"")] {
        let user = unique_user("cap-misconfigured");
        let r = refused_upgrade(server, "", Some(&server.token(&user))).await;
        r.assert_error(500, "server_misconfigured");
        let named = format!(
            "MAX_SOCKETS_PER_USER must be a whole number in its documented range, got {value}"
        );
        // The reason is an `error` line naming the setting (issue 23).
        let line = wait_for_line(server, "error", |l| l["where"] == "configuration").await;
        assert_eq!(line["message"], named.as_str(), "{line}");
    }
    stop(none).await;
    stop(too_many).await;
}
