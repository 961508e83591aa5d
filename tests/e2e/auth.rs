//! Authentication of upgrades and publishes: header, query and protocol
//! (`Sec-WebSocket-Protocol: hopeflow, hopeflow.token.<jwt>`) tokens, and
//! each way a token is refused.

use std::sync::Arc;

use serde_json::json;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{
    publish_as, refused_upgrade, refused_upgrade_offering, send, sign, unique_user, Client,
};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        upgrade_without_token_is_401,
        upgrade_with_bad_tokens_is_401,
        upgrade_with_expired_token_is_401_token_expired,
        upgrade_with_header_token,
        upgrade_with_query_token,
        header_token_wins_over_query_token,
        upgrade_with_protocol_token,
        protocol_token_refusals,
        protocol_token_beside_other_tokens,
        preflight_of_the_probe,
        publish_without_token_is_401,
        publish_with_bad_tokens_is_401,
        publish_with_query_token,
        token_without_exp_is_accepted,
    ]
}

use hopeflow_client::token::now_secs as now;

/// Tokens the server must refuse as `invalid_token`.
fn bad_tokens(ctx: &Ctx) -> Vec<String> {
    let secret = ctx.server.secret.clone().expect("secret");
    vec![
        "garbage".into(),
        sign("wrong-secret", &json!({"userId": "u"})),
        ctx.server.token_with(json!({"sub": "u"})),
        ctx.server.token_with(json!({"userId": ""})),
        ctx.server.token_with(json!({"userId": 7})),
        sign(&secret, &json!({"userId": "u", "exp": "never"})),
    ]
}

async fn upgrade_without_token_is_401(ctx: Arc<Ctx>) {
    let r = refused_upgrade(&ctx.server, "", None).await;
    r.assert_error(401, "missing_token");
}

async fn upgrade_with_bad_tokens_is_401(ctx: Arc<Ctx>) {
    for token in bad_tokens(&ctx) {
        let r = refused_upgrade(&ctx.server, "", Some(&token)).await;
        r.assert_error(401, "invalid_token");
        let r = refused_upgrade(&ctx.server, &format!("?token={token}"), None).await;
        r.assert_error(401, "invalid_token");
    }
}

async fn upgrade_with_expired_token_is_401_token_expired(ctx: Arc<Ctx>) {
    let token = ctx
        .server
        .token_with(json!({"userId": unique_user("old"), "exp": now() - 3600}));
    let r = refused_upgrade(&ctx.server, "", Some(&token)).await;
    r.assert_error(401, "token_expired");
}

async fn upgrade_with_header_token(ctx: Arc<Ctx>) {
    let user = unique_user("hdr");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{}])).await;
    let (outcome, _) = tokio::join!(
        crate::support::publish(&ctx.server, &user, "t", json!(1)),
        socket.ack_next(json!("h")),
    );
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["h"]}));
}

async fn upgrade_with_query_token(ctx: Arc<Ctx>) {
    let user = unique_user("query");
    let mut socket = Client::connect_query(&ctx.server, &ctx.server.token(&user)).await;
    socket.subscribe(json!([{}])).await;
    let (outcome, _) = tokio::join!(
        crate::support::publish(&ctx.server, &user, "t", json!(1)),
        socket.ack_next(json!("q")),
    );
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["q"]}));
}

async fn header_token_wins_over_query_token(ctx: Arc<Ctx>) {
    let good = ctx.server.token(&unique_user("both"));
    let r = refused_upgrade(&ctx.server, &format!("?token={good}"), Some("garbage")).await;
    r.assert_error(401, "invalid_token");
    let r = publish_as_query(&ctx, &format!("?token={good}"), Some("garbage")).await;
    r.assert_error(401, "invalid_token");
    let r = publish_as_query(&ctx, "?token=garbage", Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The protocols a browser's client offers with `token`.
fn offer(token: &str) -> String {
    format!("hopeflow, hopeflow.token.{token}")
}

/// A handshake offering `protocols` (plus a Bearer header and a query when
/// given) that the server accepts: tungstenite, like a browser, fails one
/// whose 101 names no offered protocol. The 101's protocol, and the socket.
async fn accepted_offering(
    ctx: &Ctx,
    protocols: &str,
    query: &str,
    bearer: Option<&str>,
) -> (Option<String>, Client, String) {
    let url = format!("{}{query}", ctx.server.ws());
    let mut request = url.into_client_request().expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).expect("header"),
    );
    if let Some(token) = bearer {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        headers.insert("Authorization", value);
    }
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connect");
    let answered = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let all = format!("{:?}", response.headers());
    (answered, Client::from_ws(ws), all)
}

/// A browser's way: the token as an offered protocol, not in the URL. The
/// 101 names `hopeflow` and never the token; the socket delivers. (No
/// server log has a token: `tokens_never_logged` in main.rs.)
async fn upgrade_with_protocol_token(ctx: Arc<Ctx>) {
    let user = unique_user("proto");
    let token = ctx.server.token(&user);
    let (answered, mut socket, headers) = accepted_offering(&ctx, &offer(&token), "", None).await;
    assert_eq!(answered.as_deref(), Some("hopeflow"));
    assert!(!headers.contains(&token), "{headers}");
    socket.subscribe(json!([{}])).await;
    let (outcome, _) = tokio::join!(
        crate::support::publish(&ctx.server, &user, "t", json!(1)),
        socket.ack_next(json!("p")),
    );
    assert_eq!(outcome, json!({"clientCount": 1, "results": ["p"]}));
    // Offered in another order, with a protocol the server does not know.
    let (answered, mut socket, _) = accepted_offering(
        &ctx,
        &format!("chat, hopeflow.token.{token},hopeflow"),
        "",
        None,
    )
    .await;
    assert_eq!(answered.as_deref(), Some("hopeflow"));
    socket.ping().await;
    // `hopeflow` with the token elsewhere is answered too.
    let (answered, mut socket, _) =
        accepted_offering(&ctx, "hopeflow", &format!("?token={token}"), None).await;
    assert_eq!(answered.as_deref(), Some("hopeflow"));
    socket.ping().await;
}

/// Refusals of a protocol token are the header's: 401 JSON with CORS.
async fn protocol_token_refusals(ctx: Arc<Ctx>) {
    for token in bad_tokens(&ctx) {
        let r = refused_upgrade_offering(&ctx.server, &offer(&token), "", None).await;
        r.assert_error(401, "invalid_token");
    }
    let expired = ctx
        .server
        .token_with(json!({"userId": unique_user("old"), "exp": now() - 3600}));
    let r = refused_upgrade_offering(&ctx.server, &offer(&expired), "", None).await;
    r.assert_error(401, "token_expired");
    let good = ctx.server.token(&unique_user("offer"));
    for protocols in [
        // The 101 could only name the token: refused, never echoed.
        format!("hopeflow.token.{good}"),
        format!("hopeflow, hopeflow.token.{good}, hopeflow.token.{good}"),
    ] {
        let r = refused_upgrade_offering(&ctx.server, &protocols, "", None).await;
        r.assert_error(401, "invalid_token");
        assert!(!r.body.to_string().contains(&good), "{}", r.body);
    }
    let r = refused_upgrade_offering(&ctx.server, "hopeflow, hopeflow.token.", "", None).await;
    r.assert_error(401, "missing_token");
}

/// Two different tokens (protocol and header, protocol and query) are
/// refused rather than one chosen; the same token twice is one token.
async fn protocol_token_beside_other_tokens(ctx: Arc<Ctx>) {
    let user = unique_user("twice");
    let good = ctx.server.token(&user);
    let other = ctx.server.token(&unique_user("other"));
    let query = format!("?token={other}");
    for (query, bearer) in [("", Some(other.as_str())), (query.as_str(), None)] {
        let r = refused_upgrade_offering(&ctx.server, &offer(&good), query, bearer).await;
        r.assert_error(401, "invalid_token");
        assert!(r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("two different tokens")));
    }
    let (answered, mut socket, _) =
        accepted_offering(&ctx, &offer(&good), &format!("?token={good}"), Some(&good)).await;
    assert_eq!(answered.as_deref(), Some("hopeflow"));
    socket.ping().await;
    // Header and query alone keep their old rule: the header wins.
    let r = refused_upgrade(&ctx.server, &format!("?token={good}"), Some("garbage")).await;
    r.assert_error(401, "invalid_token");
}

/// The browser client asks `GET /` with its token in `Authorization`; from
/// another origin the browser preflights that first.
async fn preflight_of_the_probe(ctx: Arc<Ctx>) {
    let r = send(
        ctx.server
            .request(reqwest::Method::OPTIONS, "/")
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization"),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, OPTIONS")
    );
    let allowed = r.header("access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.to_ascii_lowercase().contains("authorization"),
        "{allowed}"
    );
    let token = ctx.server.token(&unique_user("probe"));
    let r = send(
        ctx.server
            .request(reqwest::Method::GET, "/")
            .bearer_auth(&token),
    )
    .await;
    r.assert_error(426, "upgrade_required");
}

async fn publish_as_query(ctx: &Ctx, query: &str, bearer: Option<&str>) -> crate::support::Reply {
    let mut request = ctx
        .server
        .request(reqwest::Method::POST, &format!("/publish{query}"))
        .json(&json!({"userId": unique_user("pq"), "payload": 1}));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    crate::support::send(request).await
}

async fn publish_without_token_is_401(ctx: Arc<Ctx>) {
    let r = publish_as_query(&ctx, "", None).await;
    r.assert_error(401, "missing_token");
    let r = publish_as_query(&ctx, "?token=", None).await;
    r.assert_error(401, "missing_token");
}

async fn publish_with_bad_tokens_is_401(ctx: Arc<Ctx>) {
    for token in bad_tokens(&ctx) {
        let r = publish_as(&ctx.server, &token, json!({"userId": "u"})).await;
        r.assert_error(401, "invalid_token");
    }
    let expired = ctx
        .server
        .token_with(json!({"userId": "backend", "exp": now() - 3600}));
    let r = publish_as(&ctx.server, &expired, json!({"userId": "u"})).await;
    r.assert_error(401, "token_expired");
}

async fn publish_with_query_token(ctx: Arc<Ctx>) {
    let token = ctx.server.token("backend");
    let r = publish_as_query(&ctx, &format!("?token={token}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"clientCount": 0, "results": []}));
}

async fn token_without_exp_is_accepted(ctx: Arc<Ctx>) {
    let user = unique_user("noexp");
    let fresh = ctx
        .server
        .token_with(json!({"userId": user, "exp": now() + 3600, "role": "any"}));
    let mut socket = Client::connect(&ctx.server, &fresh).await;
    socket.ping().await;
    // `Client::for_user` mints tokens without `exp`.
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.ping().await;
}
