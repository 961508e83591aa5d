//! HTTP routes: status codes, error bodies, CORS, preflight, publish validation.

use std::sync::Arc;

use reqwest::Method;
use serde_json::json;

use crate::support::{publish, publish_as, refused_upgrade, send, sign, unique_user, Client};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        health_needs_no_auth,
        unknown_path_is_404,
        wrong_method_is_405,
        plain_get_root_is_426,
        unknown_methods_are_405_not_get,
        console_methods_are_405_on_or_off,
        plain_get_root_checks_the_handshake_first,
        preflight_allows_post_with_auth_headers,
        publish_success_carries_cors,
        publish_without_json_content_type_is_415,
        publish_accepts_content_type_parameters,
        publish_bad_bodies_are_400,
        publish_type_defaults_to_message_and_payload_to_null,
        publish_over_one_mib_is_413,
        missing_secret_is_500_for_publish_and_upgrade,
    ]
}

/// `POST /publish` with a backend token, a raw body and an optional content type.
async fn post_publish(
    ctx: &Ctx,
    content_type: Option<&str>,
    body: String,
) -> crate::support::Reply {
    let mut request = ctx
        .server
        .request(Method::POST, "/publish")
        .bearer_auth(ctx.server.token("backend"))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    send(request).await
}

async fn health_needs_no_auth(ctx: Arc<Ctx>) {
    let r = send(ctx.server.request(Method::GET, "/health")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"ok": true}));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

async fn unknown_path_is_404(ctx: Arc<Ctx>) {
    for path in ["/nope", "/connect", "/deliver", "/publish/x"] {
        let r = send(ctx.server.request(Method::GET, path)).await;
        r.assert_error(404, "not_found");
    }
}

async fn wrong_method_is_405(ctx: Arc<Ctx>) {
    let token = ctx.server.token("backend");
    let r = send(
        ctx.server
            .request(Method::GET, "/publish")
            .bearer_auth(&token),
    )
    .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = send(ctx.server.request(Method::POST, "/")).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    let r = send(ctx.server.request(Method::DELETE, "/health")).await;
    r.assert_error(405, "method_not_allowed");
}

/// Methods the runtime passes through but no route knows (WebDAV's,
/// QUERY): 405 with `Allow` on known paths, 404 elsewhere, JSON with CORS.
/// (Methods the runtime's HTTP parser does not know, say FOO, it refuses
/// itself before any worker runs.)
async fn unknown_methods_are_405_not_get(ctx: Arc<Ctx>) {
    let token = ctx.server.token(&unique_user("method"));
    for name in ["QUERY", "PROPFIND", "MKCOL", "LOCK"] {
        let method = Method::from_bytes(name.as_bytes()).expect("method");
        let r = send(ctx.server.request(method.clone(), "/health")).await;
        r.assert_error(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{name}");
        // `/` with `Upgrade: websocket` is not tried here: wrangler's dev
        // proxy turns every upgrade into a GET before the worker sees it
        // (and fails with its own plain-text 500 when the worker accepts
        // one whose client sent another method). Deployed, the worker sees
        // the method and answers 405 as below (`http::Incoming::method`).
        let r = send(ctx.server.request(method.clone(), "/").bearer_auth(&token)).await;
        r.assert_error(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, OPTIONS"), "{name}");
        let r = send(
            ctx.server
                .request(method.clone(), "/publish")
                .bearer_auth(&token),
        )
        .await;
        r.assert_error(405, "method_not_allowed");
        let r = send(ctx.server.request(method, "/nope")).await;
        r.assert_error(404, "not_found");
    }
}

/// The console's paths exist whether it is on (the main server) or off
/// (`nohistory`, without `CONSOLE_ENABLED`): a method they do not list is
/// 405 with `Allow: GET, HEAD` either way; off, GET and HEAD are 404.
async fn console_methods_are_405_on_or_off(ctx: Arc<Ctx>) {
    for (server, on) in [(&ctx.server, true), (&ctx.nohistory, false)] {
        for path in ["/console", "/console/hopeflow.js"] {
            for name in ["TRACE", "PUT", "DELETE", "PATCH", "POST", "OPTIONS"] {
                let method = Method::from_bytes(name.as_bytes()).expect("method");
                let r = send(server.request(method, path)).await;
                r.assert_error(405, "method_not_allowed");
                assert_eq!(
                    r.header("allow"),
                    Some("GET, HEAD"),
                    "{name} {path} (on: {on})"
                );
            }
            if !on {
                let r = send(server.request(Method::GET, path)).await;
                r.assert_error(404, "not_found");
                let r = send(server.request(Method::HEAD, path)).await;
                assert_eq!(r.status, 404, "HEAD {path}");
            }
        }
    }
}

async fn plain_get_root_is_426(ctx: Arc<Ctx>) {
    let token = ctx.server.token(&unique_user("plain"));
    let r = send(ctx.server.request(Method::GET, "/").bearer_auth(&token)).await;
    r.assert_error(426, "upgrade_required");
    let r = send(ctx.server.request(Method::GET, &format!("/?token={token}"))).await;
    r.assert_error(426, "upgrade_required");
}

/// A plain GET runs the handshake's checks first, so a browser (which
/// cannot read a refused handshake's status) can ask why it was refused.
async fn plain_get_root_checks_the_handshake_first(ctx: Arc<Ctx>) {
    let r = send(ctx.server.request(Method::GET, "/")).await;
    r.assert_error(401, "missing_token");
    let r = send(ctx.server.request(Method::GET, "/?token=not-a-jwt")).await;
    r.assert_error(401, "invalid_token");
    let token = crate::hostile::strict_token(&ctx, &unique_user("plain"), json!({}));
    let r = send(
        ctx.strict
            .request(Method::GET, &format!("/?token={token}"))
            .header("Origin", "https://evil.example"),
    )
    .await;
    r.assert_error(403, "origin_not_allowed");
}

async fn preflight_allows_post_with_auth_headers(ctx: Arc<Ctx>) {
    let r = send(
        ctx.server
            .request(Method::OPTIONS, "/publish")
            .header("Origin", "https://dashboard.example")
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(r
        .header("access-control-max-age")
        .is_some_and(|v| v.parse::<u32>().is_ok_and(|secs| secs > 0)));
}

async fn publish_success_carries_cors(ctx: Arc<Ctx>) {
    // `publish` asserts the 200 and the CORS header.
    let body = publish(&ctx.server, &unique_user("nobody"), "chat", json!({})).await;
    assert_eq!(body, json!({"clientCount": 0, "results": []}));
}

async fn publish_without_json_content_type_is_415(ctx: Arc<Ctx>) {
    let body = json!({"userId": unique_user("ct"), "payload": 1}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = post_publish(&ctx, content_type, body.clone()).await;
        r.assert_error(415, "unsupported_media_type");
    }
}

async fn publish_accepts_content_type_parameters(ctx: Arc<Ctx>) {
    let body = json!({"userId": unique_user("ct")}).to_string();
    let r = post_publish(&ctx, Some("application/json; charset=utf-8"), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["clientCount"], 0);
}

async fn publish_bad_bodies_are_400(ctx: Arc<Ctx>) {
    let bodies = [
        "",
        "{",
        "not json",
        "[]",
        "[{\"userId\":\"u\"}]",
        "\"u\"",
        "{}",
        "{\"userId\":\"\"}",
        "{\"userId\":42}",
        "{\"userId\":\"u\",\"type\":7}",
        "{\"userId\":\"u\",\"type\":{}}",
    ];
    for body in bodies {
        let r = post_publish(&ctx, Some("application/json"), body.into()).await;
        assert_eq!(r.status, 400, "body {body:?} -> {}", r.body);
        r.assert_error(400, "invalid_body");
    }
}

async fn publish_type_defaults_to_message_and_payload_to_null(ctx: Arc<Ctx>) {
    let user = unique_user("defaults");
    let mut socket = Client::for_user(&ctx.server, &user).await;
    socket.subscribe(json!([{"type": "message"}])).await;
    let token = ctx.server.token("backend");
    let (publish, envelope) = tokio::join!(
        publish_as(&ctx.server, &token, json!({"userId": user})),
        socket.ack_next(json!("seen")),
    );
    assert_eq!(publish.status, 200);
    assert_eq!(publish.body, json!({"clientCount": 1, "results": ["seen"]}));
    assert_eq!(envelope["type"], "message");
    assert_eq!(envelope["payload"], json!(null));
    let id = envelope["envelopeId"].as_str().expect("id");
    assert!(
        uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4),
        "{id}"
    );
    // The three fields of the spec, and the user's history position.
    assert!(
        envelope["seq"].as_u64().is_some_and(|seq| seq >= 1),
        "{envelope}"
    );
    let keys: Vec<&String> = envelope.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 4, "{envelope}");
}

async fn publish_over_one_mib_is_413(ctx: Arc<Ctx>) {
    let big = "x".repeat(1024 * 1024 + 1);
    let body = json!({"userId": unique_user("big"), "payload": big}).to_string();
    let r = post_publish(&ctx, Some("application/json"), body).await;
    r.assert_error(413, "payload_too_large");
}

async fn missing_secret_is_500_for_publish_and_upgrade(ctx: Arc<Ctx>) {
    // Any token, even one that would be valid for some secret, is refused.
    let token = sign("some-secret", &json!({"userId": "u"}));
    let server = &ctx.unconfigured;
    let r = publish_as(server, &token, json!({"userId": "u", "payload": 1})).await;
    r.assert_error(500, "server_misconfigured");
    let r = refused_upgrade(server, "", Some(&token)).await;
    r.assert_error(500, "server_misconfigured");
    let r = refused_upgrade(server, "", None).await;
    r.assert_error(500, "server_misconfigured");
}
