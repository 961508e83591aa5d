//! `wss://` and `https://` against `wrangler dev --local-protocol https`
//! with a CA made for this run: the library and the CLI trust it when told
//! (`--ca-cert`, `HOPEFLOW_CA_CERT`, `with_ca_cert`) and otherwise fail
//! with a one-line cause; refused connections and timeouts are named too.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hopeflow_client::{
    token, Client, ClientError, ClientOptions, PublishError, Publisher, TlsError, Trust,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::hopeflow;
use crate::support::contract;
use crate::support::{unique_user, Server, WAIT};
use crate::{tests, Ctx, Test};

pub fn tests() -> Vec<Test> {
    tests![
        tls_library_round_trip,
        tls_cli_round_trip,
        tls_untrusted_certificate_is_named,
        tls_name_mismatch_is_named,
        refused_and_timed_out_connections_are_named,
    ]
}

fn secret(server: &Server) -> String {
    server.secret.clone().expect("secret")
}

fn ca(server: &Server) -> &std::path::Path {
    server.tls.as_deref().expect("a TLS server")
}

fn user_token(server: &Server, user: &str) -> String {
    token::mint(&secret(server), user, None, Map::new())
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

async fn tls_library_round_trip(ctx: Arc<Ctx>) {
    let server = &ctx.tls;
    let user = unique_user("tls-lib");
    let options = contract::checked(ClientOptions::new(
        server.base_ws(),
        user_token(server, &user),
    ))
    .with_ca_cert(ca(server))
    .expect("CA file");
    let mut client = within(Client::connect(options)).await.expect("connect");
    let confirmation = within(client.subscribe(vec![json!({"type": "secure"})]))
        .await
        .expect("subscribe");
    assert_eq!(confirmation.total, 1);
    let publisher = Publisher::new(&server.http(), user_token(server, "backend"))
        .with_ca_cert(ca(server))
        .expect("CA file");
    let publish = publisher.publish(&user, Some("secure"), json!({"n": 1}));
    let receive = async {
        let envelope = client.next_envelope().await.expect("an envelope");
        assert_eq!(envelope.payload, json!({"n": 1}));
        client
            .ack(&envelope.envelope_id, json!({"over": "tls"}))
            .await
            .expect("ack");
    };
    let (outcome, ()) = within(async { tokio::join!(publish, receive) }).await;
    let outcome = outcome.expect("publish over https");
    assert_eq!(outcome.client_count, 1);
    assert_eq!(outcome.results, vec![json!({"over": "tls"})]);
    client.close();
}

/// `listen` with `--ca-cert`, `publish` with `HOPEFLOW_CA_CERT`.
async fn tls_cli_round_trip(ctx: Arc<Ctx>) {
    let server = &ctx.tls;
    let user = unique_user("tls-cli");
    let secret = secret(server);
    let mut listen = hopeflow()
        .args(["listen", "--url", &server.base_ws(), "--user", &user])
        .args(["--secret", &secret, "--ack-result", r#"{"cli":"tls"}"#])
        .arg("--ca-cert")
        .arg(ca(server))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn listen");
    let mut stderr = BufReader::new(listen.stderr.take().expect("stderr")).lines();
    let mut stdout = BufReader::new(listen.stdout.take().expect("stdout")).lines();
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
        .args(["publish", "--url", &server.http(), "--user", &user])
        .args(["--secret", &secret, "--payload", r#"{"text":"hi"}"#])
        .env("HOPEFLOW_CA_CERT", ca(server))
        .output();
    let (published, line) = tokio::join!(within(publish), within(stdout.next_line()));
    let published = published.expect("run publish");
    assert!(published.status.success(), "{published:?}");
    let response: Value = serde_json::from_slice(&published.stdout).expect("json");
    assert_eq!(
        response,
        json!({"clientCount": 1, "results": [{"cli": "tls"}]})
    );
    let envelope: Value =
        serde_json::from_str(&line.expect("stdout").expect("a line")).expect("json line");
    assert_eq!(envelope["payload"]["text"], "hi");
    // The operator commands over TLS: the listening socket is there, and
    // disconnecting it for good ends `listen`.
    let operator = |command: &str| {
        let mut cmd = hopeflow();
        cmd.args([command, "--url", &server.http(), "--user", &user])
            .args(["--secret", &secret])
            .arg("--ca-cert")
            .arg(ca(server));
        cmd
    };
    let sockets = within(operator("sockets").output())
        .await
        .expect("run sockets");
    assert!(sockets.status.success(), "{sockets:?}");
    let sockets: Value = serde_json::from_slice(&sockets.stdout).expect("json");
    assert_eq!(sockets["count"], 1, "{sockets}");
    let closed = within(operator("disconnect").output())
        .await
        .expect("run disconnect");
    assert!(closed.status.success(), "{closed:?}");
    let closed: Value = serde_json::from_slice(&closed.stdout).expect("json");
    assert_eq!(closed, json!({"closed": 1}));
    let status = within(listen.wait()).await.expect("listen ends");
    assert!(status.code().is_some(), "{status:?}");
}

/// Asserts a one-line message that says the certificate is not trusted and
/// how to trust it.
fn assert_untrusted(message: &str) {
    assert!(!message.trim().contains('\n'), "not one line: {message}");
    assert!(message.contains("not trusted"), "{message}");
    assert!(message.contains("--ca-cert"), "{message}");
}

async fn tls_untrusted_certificate_is_named(ctx: Arc<Ctx>) {
    let server = &ctx.tls;
    let user = unique_user("tls-untrusted");
    // The library, public roots only.
    let options = ClientOptions::new(server.base_ws(), user_token(server, &user));
    match within(Client::connect(options)).await {
        Err(ClientError::Connect(why)) => assert_untrusted(&why),
        other => panic!("expected an untrusted certificate, got {:?}", other.err()),
    }
    let publisher = Publisher::new(&server.http(), user_token(server, "backend"));
    match within(publisher.publish(&user, None, json!({}))).await {
        Err(PublishError::Transport(why)) => assert_untrusted(&why),
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
    // The CLI, both commands, exit non-zero with the cause on stderr.
    for args in [
        vec!["listen", "--url", &server.base_ws(), "--no-reconnect"],
        vec!["publish", "--url", &server.http(), "--payload", "{}"],
    ] {
        let output = within(
            hopeflow()
                .args(&args)
                .args(["--user", &user, "--secret", &secret(server)])
                .output(),
        )
        .await
        .expect("run hopeflow");
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert_untrusted(&stderr);
    }
    // Trusting some other CA does not make this one trusted.
    let other = crate::support::TestCa::generate("other");
    let options = ClientOptions::new(server.base_ws(), user_token(server, &user))
        .with_ca_cert(&other.ca_cert)
        .expect("CA file");
    match within(Client::connect(options)).await {
        Err(ClientError::Connect(why)) => assert_untrusted(&why),
        other => panic!("expected an untrusted certificate, got {:?}", other.err()),
    }
    // A CA file that is not a certificate is refused before connecting.
    let bad = ClientOptions::new(server.base_ws(), "t").with_ca_cert(&other.server_key);
    assert!(
        matches!(bad, Err(TlsError::NoCertificate { .. })),
        "{:?}",
        bad.err()
    );
}

async fn tls_name_mismatch_is_named(ctx: Arc<Ctx>) {
    let server = &ctx.tls;
    // The certificate names localhost only.
    let url = format!("wss://127.0.0.1:{}", server.port);
    let options = ClientOptions::new(url, user_token(server, &unique_user("tls-name")))
        .with_ca_cert(ca(server))
        .expect("CA file");
    match within(Client::connect(options)).await {
        Err(ClientError::Connect(why)) => {
            assert!(why.contains("not valid for this host name"), "{why}")
        }
        other => panic!("expected a name mismatch, got {:?}", other.err()),
    }
    let publisher = Publisher::new(
        &format!("https://127.0.0.1:{}", server.port),
        user_token(server, "backend"),
    )
    .with_trust(Trust::with_ca_file(ca(server)).expect("CA file"));
    match within(publisher.publish("anyone", None, json!({}))).await {
        Err(PublishError::Transport(why)) => {
            assert!(why.contains("not valid for this host name"), "{why}")
        }
        other => panic!("expected a name mismatch, got {other:?}"),
    }
}

async fn refused_and_timed_out_connections_are_named(_ctx: Arc<Ctx>) {
    // Refused: a port nothing listens on.
    let closed = devserver::free_port();
    let options = ClientOptions::new(format!("wss://localhost:{closed}"), "t");
    match within(Client::connect(options)).await {
        Err(ClientError::Connect(why)) => assert!(why.starts_with("connection refused"), "{why}"),
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    let publisher = Publisher::new(&format!("https://localhost:{closed}"), "t");
    match within(publisher.publish("anyone", None, json!({}))).await {
        Err(PublishError::Transport(why)) => {
            assert!(why.starts_with("connection refused"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let output = within(
        hopeflow()
            .args(["publish", "--url", &format!("https://localhost:{closed}")])
            .args(["--user", "anyone", "--token", "t", "--payload", "{}"])
            .output(),
    )
    .await
    .expect("run hopeflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connection refused"), "{stderr}");

    // Timed out: a listener that accepts and never answers the handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut options = ClientOptions::new(format!("wss://localhost:{port}"), "t");
    options.connect_timeout = Duration::from_millis(300);
    match within(Client::connect(options)).await {
        Err(ClientError::Connect(why)) => assert!(why.starts_with("timed out"), "{why}"),
        other => panic!("expected a timeout, got {:?}", other.err()),
    }
    let publisher = Publisher::new(&format!("https://localhost:{port}"), "t")
        .with_timeouts(Duration::from_millis(300), Duration::from_millis(600));
    match within(publisher.publish("anyone", None, json!({}))).await {
        Err(PublishError::Transport(why)) => assert!(why.starts_with("timed out"), "{why}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    held.abort();
}
