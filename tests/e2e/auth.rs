//! Authentication of upgrades and publishes: header and query tokens, and each
//! way a token is refused.

use std::sync::Arc;

use serde_json::json;

use crate::support::{publish_as, refused_upgrade, sign, unique_user, Client};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        upgrade_without_token_is_401,
        upgrade_with_bad_tokens_is_401,
        upgrade_with_expired_token_is_401_token_expired,
        upgrade_with_header_token,
        upgrade_with_query_token,
        header_token_wins_over_query_token,
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
