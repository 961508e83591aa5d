//! The Rust client library and the `hopeflow` CLI against the real runtime:
//! library round trips and typed errors, the CLI as real processes (listen +
//! publish + ack, token, check-token), and reconnection after a restart.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hopeflow_client::{
    token, Client, ClientError, ClientOptions, ErrorCode, Event, PublishError, Publisher,
    TokenPlacement,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::contract;
use crate::support::{unique_user, Server, WAIT};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        library_round_trip,
        library_query_token_and_ping,
        library_reports_warnings_and_refusals,
        library_connect_refused_is_typed,
        publisher_errors_are_typed,
        cli_listen_publish_and_ack,
        cli_token_and_check_token,
        reconnects_and_resubscribes_after_server_restart,
    ]
}

fn secret(server: &Server) -> String {
    server.secret.clone().expect("secret")
}

fn options(server: &Server, user: &str) -> ClientOptions {
    contract::checked(ClientOptions::new(
        server.base_ws(),
        token::mint(&secret(server), user, None, Map::new()),
    ))
}

fn publisher(server: &Server) -> Publisher {
    Publisher::new(
        &server.http(),
        token::mint(&secret(server), "backend", None, Map::new()),
    )
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

async fn library_round_trip(ctx: Arc<Ctx>) {
    let user = unique_user("lib");
    let mut client = Client::connect(options(&ctx.server, &user))
        .await
        .expect("connect");
    let confirmation = client
        .subscribe(vec![json!({"type": "chat"})])
        .await
        .expect("subscribe");
    assert_eq!((confirmation.changed, confirmation.total), (1, 1));
    assert!(confirmation.warnings.is_empty());
    let backend = publisher(&ctx.server);
    let publish = backend.publish(&user, Some("chat"), json!({"n": 1}));
    let receive = async {
        let envelope = within(client.next_envelope()).await.expect("envelope");
        client
            .ack(&envelope.envelope_id, json!({"got": envelope.payload["n"]}))
            .await
            .expect("ack");
        envelope
    };
    let (outcome, envelope) = tokio::join!(publish, receive);
    let outcome = outcome.expect("publish");
    assert_eq!(outcome.client_count, 1);
    assert_eq!(outcome.results, vec![json!({"got": 1})]);
    assert_eq!(envelope.envelope_type, "chat");
    let confirmation = client
        .unsubscribe(vec![json!({"type": "chat"})])
        .await
        .expect("unsubscribe");
    assert_eq!((confirmation.changed, confirmation.total), (1, 0));
    let outcome = publisher(&ctx.server)
        .publish(&user, Some("chat"), json!({}))
        .await
        .expect("publish");
    assert_eq!(outcome.client_count, 0);
}

async fn library_query_token_and_ping(ctx: Arc<Ctx>) {
    let mut options = options(&ctx.server, &unique_user("libquery"));
    options.token_placement = TokenPlacement::Query;
    let client = Client::connect(options).await.expect("connect");
    within(client.ping()).await.expect("pong");
}

async fn library_reports_warnings_and_refusals(ctx: Arc<Ctx>) {
    let client = Client::connect(options(&ctx.server, &unique_user("libwarn")))
        .await
        .expect("connect");
    let confirmation = client
        .subscribe(vec![json!({"type": "ok"}), json!(5)])
        .await
        .expect("subscribe");
    assert_eq!(confirmation.total, 1);
    assert_eq!(confirmation.warnings.len(), 1);
    assert_eq!(confirmation.warnings[0].0, ErrorCode::InvalidFilter);
    let many: Vec<Value> = (0..50).map(|i| json!({"type": format!("t{i}")})).collect();
    client.subscribe(many).await.expect("50 fit");
    let more: Vec<Value> = (50..70).map(|i| json!({"type": format!("t{i}")})).collect();
    match client.subscribe(more).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::SubscriptionLimit),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The client still works after a refusal.
    within(client.ping()).await.expect("pong");
}

async fn library_connect_refused_is_typed(ctx: Arc<Ctx>) {
    let bad = ClientOptions::new(ctx.server.base_ws(), "not-a-token");
    match Client::connect(bad).await {
        // The status is typed; the body carries the server's code and message.
        Err(ClientError::Rejected { status, .. }) => assert_eq!(status, 401),
        Err(other) => panic!("expected Rejected, got {other:?}"),
        Ok(_) => panic!("expected Rejected, got a connection"),
    }
}

async fn publisher_errors_are_typed(ctx: Arc<Ctx>) {
    let user = unique_user("puberr");
    let bad = Publisher::new(&ctx.server.http(), "not-a-token");
    match bad.publish(&user, None, json!(1)).await {
        Err(PublishError::Unauthorized(e)) => assert_eq!(e.error, "invalid_token"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    match publisher(&ctx.server).publish(" ", None, json!(1)).await {
        Err(PublishError::BadRequest(e)) => assert_eq!(e.error, "invalid_body"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    // The strict server wants the publish scope and caps bodies at 4 KiB.
    let unscoped = token::mint(
        &secret(&ctx.strict),
        "backend",
        Some(Duration::from_secs(600)),
        json!({"aud": "hopeflow", "iss": "auth.test"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    match Publisher::new(&ctx.strict.http(), unscoped)
        .publish(&user, None, json!(1))
        .await
    {
        Err(PublishError::Forbidden(e)) => assert_eq!(e.error, "forbidden"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    let scoped = token::mint(
        &secret(&ctx.strict),
        "backend",
        Some(Duration::from_secs(600)),
        json!({"aud": "hopeflow", "iss": "auth.test", "scope": "publish"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    match Publisher::new(&ctx.strict.http(), scoped)
        .publish(&user, None, json!("x".repeat(5000)))
        .await
    {
        Err(PublishError::PayloadTooLarge(e)) => assert_eq!(e.error, "payload_too_large"),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // Nothing listens on this port: a transport error, not a panic.
    match Publisher::new("http://127.0.0.1:9", "t")
        .publish(&user, None, json!(1))
        .await
    {
        Err(PublishError::Transport(_)) => {}
        other => panic!("expected Transport, got {other:?}"),
    }
}

/// The `hopeflow` binary built by `make test`, in an environment without
/// the settings it reads (`JWT_SECRET`, `HOPEFLOW_CA_CERT`).
pub fn hopeflow() -> Command {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let binary = target.join("debug/hopeflow");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `make test`",
        binary.display()
    );
    let mut command = Command::new(binary);
    command
        .env_remove("JWT_SECRET")
        .env_remove("HOPEFLOW_CA_CERT")
        .kill_on_drop(true);
    command
}

async fn cli_listen_publish_and_ack(ctx: Arc<Ctx>) {
    let user = unique_user("cli");
    let secret = secret(&ctx.server);
    let mut listen = hopeflow()
        .args(["listen", "--url", &ctx.server.base_ws(), "--user", &user])
        .args([
            "--secret",
            &secret,
            "--filter",
            "type=chat_message,questId=q1",
        ])
        .args(["--ack-result", r#"{"seen":true}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn listen");
    let mut stderr = BufReader::new(listen.stderr.take().expect("stderr")).lines();
    let mut stdout = BufReader::new(listen.stdout.take().expect("stdout")).lines();
    // Wait for the subscription to be confirmed before publishing.
    loop {
        let line = within(stderr.next_line())
            .await
            .expect("read stderr")
            .expect("listen exited early");
        if line.starts_with("subscribed") {
            break;
        }
    }
    let publish = hopeflow()
        .args(["publish", "--url", &ctx.server.http(), "--user", &user])
        .args(["--type", "chat_message", "--secret", &secret])
        .args(["--payload", r#"{"questId":"q1","text":"hi"}"#])
        .output();
    let (published, line) = tokio::join!(within(publish), within(stdout.next_line()));
    let published = published.expect("run publish");
    assert!(published.status.success(), "{published:?}");
    let response: Value = serde_json::from_slice(&published.stdout).expect("json");
    assert_eq!(
        response,
        json!({"clientCount": 1, "results": [{"seen": true}]})
    );
    let envelope: Value =
        serde_json::from_str(&line.expect("stdout").expect("a line")).expect("json line");
    assert_eq!(envelope["type"], "chat_message");
    assert_eq!(envelope["payload"]["text"], "hi");
    // A publish error exits non-zero with the server's message.
    let failed = within(
        hopeflow()
            .args(["publish", "--url", &ctx.server.http(), "--user", &user])
            .args(["--token", "bad", "--payload", "1"])
            .output(),
    )
    .await
    .expect("run publish");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("invalid_token"), "{stderr}");
}

async fn cli_token_and_check_token(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let minted = within(
        hopeflow()
            .args([
                "token",
                "--user",
                "alice",
                "--ttl",
                "1h",
                "--claim",
                "role=tester",
            ])
            .env("JWT_SECRET", &secret)
            .output(),
    )
    .await
    .expect("run token");
    assert!(minted.status.success(), "{minted:?}");
    let minted = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    let claims = token::verify(&secret, &minted).expect("valid token");
    assert_eq!(claims.user_id, "alice");
    assert_eq!(token::payload(&minted).expect("payload")["role"], "tester");
    // The server accepts the CLI's token.
    Client::connect(contract::checked(ClientOptions::new(
        ctx.server.base_ws(),
        minted.clone(),
    )))
    .await
    .expect("connect with the CLI's token");

    let check = |token: String| {
        let secret = secret.clone();
        async move {
            within(
                hopeflow()
                    .args(["check-token", &token, "--secret", &secret])
                    .output(),
            )
            .await
            .expect("run check-token")
        }
    };
    let valid = check(minted).await;
    assert!(valid.status.success(), "{valid:?}");
    assert!(String::from_utf8_lossy(&valid.stdout).contains("\"alice\""));
    let expired = ctx
        .server
        .token_with(json!({"userId": "a", "exp": token::now_secs() - 3600}));
    let out = check(expired).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );
    let out = check(crate::support::sign("other", &json!({"userId": "a"}))).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature"),
        "{out:?}"
    );
    let out = check(ctx.server.token_with(json!({"sub": "a"}))).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("userId"),
        "{out:?}"
    );
}

async fn reconnects_and_resubscribes_after_server_restart(ctx: Arc<Ctx>) {
    let secret = secret(&ctx.server);
    let start = move |port: Option<u16>| {
        let secret = secret.clone();
        // Starting and stopping block; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let vars = [("JWT_SECRET", secret.as_str())];
            match port {
                Some(port) => Server::spawn_on("restart", &vars, port).wait_ready(),
                None => Server::spawn("restart", &vars).wait_ready(),
            }
        })
    };
    let server = start(None).await.expect("start");
    let port = server.port;
    let user = unique_user("reconnect");
    let mut options = options(&server, &user);
    options.backoff_initial = Duration::from_millis(100);
    options.backoff_max = Duration::from_millis(500);
    let mut client = Client::connect(options).await.expect("connect");
    client
        .subscribe(vec![json!({"type": "after-restart"})])
        .await
        .expect("subscribe");

    // Stop the server (its process group) and start a fresh one on the same port.
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
    match within(client.next_event()).await {
        Some(Event::Disconnected { .. }) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let server = start(Some(port)).await.expect("restart");
    loop {
        match tokio::time::timeout(Duration::from_secs(60), client.next_event())
            .await
            .expect("no reconnect within 60 s")
        {
            Some(Event::Reconnected { attempt }) => {
                assert!(attempt >= 1);
                break;
            }
            Some(Event::Disconnected { .. }) => continue,
            other => panic!("expected Reconnected, got {other:?}"),
        }
    }
    // The pong comes after the re-subscription's confirmation.
    within(client.ping()).await.expect("pong");
    let backend = publisher(&server);
    let publish = backend.publish(&user, Some("after-restart"), json!({"k": 1}));
    let receive = async {
        let envelope = within(client.next_envelope()).await.expect("envelope");
        client
            .ack(&envelope.envelope_id, json!("back"))
            .await
            .expect("ack");
    };
    let (outcome, ()) = tokio::join!(publish, receive);
    let outcome = outcome.expect("publish");
    assert_eq!(outcome.client_count, 1);
    assert_eq!(outcome.results, vec![json!("back")]);
    client.close();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
}
