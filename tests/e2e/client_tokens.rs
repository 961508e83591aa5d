//! A socket lives no longer than its token (issue 20), as the Rust `Client`
//! and the `hopeflow` CLI live it against the real runtime: the `tokens`
//! server (no leeway, the notice [`TOKENS_NOTICE_SECS`] before `exp`) and
//! tokens that expire a few seconds ahead. With a token provider the same
//! socket goes on past the first token's `exp`; a fixed token ends with
//! 4002. The CLI's token handling as a user meets it: the user from
//! `--token`, refusals with the server's reason, and scheme mistakes.
//!
//! Named `client_tokens_*`: `cargo test --test e2e -- client_tokens`.

use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hopeflow_client::cli::format_time;
use hopeflow_client::socket::token_expiry;
use hopeflow_client::{token, Client, ClientOptions, Event, Publisher};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::client::hopeflow;
use crate::support::{contract, sockets_of, unique_user, Server, WAIT};
use crate::{tests, Ctx, Test, TOKENS_NOTICE_SECS};

pub fn tests() -> Vec<Test> {
    tests![
        client_tokens_library_refreshes_the_same_socket,
        client_tokens_library_fixed_token_ends_with_token_expired,
        client_tokens_library_reconnects_after_4002_with_the_provider,
        client_tokens_cli_listen_refreshes_its_own_tokens,
        client_tokens_cli_listen_fixed_token_exits_when_it_expires,
        client_tokens_cli_refusals_say_why,
        client_tokens_cli_fixed_token_refused_on_reconnect_exits,
        client_tokens_cli_scheme_mistakes_name_the_fix,
    ]
}

/// How long the tests' tokens live: past the notice, so the server sends
/// it some time after the connection, and short enough to wait out.
const TTL_SECS: u64 = TOKENS_NOTICE_SECS + 2;

fn secret(server: &Server) -> String {
    server.secret.clone().expect("secret")
}

/// A token of `user` expiring `secs` from now.
fn expiring(server: &Server, user: &str, secs: u64) -> String {
    token::mint(
        &secret(server),
        user,
        Some(Duration::from_secs(secs)),
        Map::new(),
    )
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

/// Sleeps until the clock is past `unix_secs` (a token's `exp`; the
/// server's leeway is 0): the one wait on time itself.
async fn past(unix_secs: u64) {
    let target = UNIX_EPOCH + Duration::from_secs(unix_secs + 1);
    if let Ok(left) = target.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

/// The user's only socket in the sockets view: its id and `expiresAt`.
async fn only_socket(server: &Server, user: &str) -> (String, Option<u64>) {
    let reply = sockets_of(server, user).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sockets = reply.body["sockets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sockets.len(), 1, "one socket: {}", reply.body);
    let id = sockets[0]["socketId"]
        .as_str()
        .expect("socketId")
        .to_owned();
    (id, sockets[0]["expiresAt"].as_u64())
}

/// Publishes one envelope of `kind` to `user` (the backend's token has no
/// exp) and returns how many sockets it reached, once they acked.
async fn publish(server: &Server, user: &str, kind: &str) -> usize {
    let backend = Publisher::new(
        &server.http(),
        token::mint(&secret(server), "backend", None, Map::new()),
    );
    backend
        .publish(user, Some(kind), json!({"n": 1}))
        .await
        .expect("publish")
        .client_count
}

/// The next event that is not about the token's lifetime; a reconnect or
/// a drop here fails the test (the socket was to live on).
async fn next_delivery(client: &mut Client) -> hopeflow_client::Envelope {
    loop {
        match within(client.next_event()).await {
            Some(Event::Envelope(envelope)) => return envelope,
            Some(Event::TokenExpiring { .. } | Event::Refreshed { .. }) => {}
            other => panic!("expected an envelope on the same socket, got {other:?}"),
        }
    }
}

/// Lines of a child's stream, read as they come.
struct Lines {
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(stream: impl AsyncRead + Unpin + Send + 'static) -> Lines {
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line starting with `prefix`; fails if the stream ends first.
    async fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = within(self.lines.recv()).await.unwrap_or_else(|| {
                panic!(
                    "the stream ended before a line starting with {prefix:?}: {:#?}",
                    self.seen
                )
            });
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Every line until the stream ends (the process exited).
    async fn rest(&mut self) -> Vec<String> {
        while let Some(line) = within(self.lines.recv()).await {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

/// `hopeflow listen` with `args`, its stdout and stderr read line by line.
fn listen(args: &[&str]) -> (Child, Lines, Lines) {
    let mut child = hopeflow()
        .arg("listen")
        .args(args)
        .env_remove("HOPEFLOW_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn listen");
    let stdout = Lines::of(child.stdout.take().expect("stdout"));
    let stderr = Lines::of(child.stderr.take().expect("stderr"));
    (child, stdout, stderr)
}

/// A command that ends by itself, run to its end.
async fn run(args: &[&str], url_var: Option<&str>) -> Output {
    let mut command = hopeflow();
    command.args(args).env_remove("HOPEFLOW_URL");
    if let Some(url) = url_var {
        command.env("HOPEFLOW_URL", url);
    }
    within(command.output()).await.expect("run hopeflow")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A failure with one `error:` line that contains `expected`.
fn fails_with(output: &Output, expected: &str) {
    let stderr = stderr(output);
    assert!(!output.status.success(), "{output:?}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

async fn client_tokens_library_refreshes_the_same_socket(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("tokrefresh");
    let first = expiring(server, &user, TTL_SECS);
    let first_exp = token_expiry(&first).expect("exp");
    let asked = Arc::new(AtomicUsize::new(0));
    let (counter, provider_secret, owner) = (asked.clone(), secret(server), user.clone());
    let options = contract::checked(ClientOptions::new(server.base_ws(), first))
        .with_token_provider(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let token = token::mint(
                &provider_secret,
                &owner,
                Some(Duration::from_secs(TTL_SECS)),
                Map::new(),
            );
            async move { Ok(token) }
        });
    let mut client = Client::connect(options).await.expect("connect");
    client
        .subscribe(vec![json!({"type": "tick"})])
        .await
        .expect("subscribe");
    let (socket, expires_at) = only_socket(server, &user).await;
    // The token's exp (or a refreshed one's, on a slow machine).
    assert!(
        expires_at.is_some_and(|exp| exp >= first_exp),
        "the view shows the token's exp: {expires_at:?}"
    );

    // The notice, the provider's token, the server's confirmation.
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::TokenExpiring {
            expires_at: first_exp
        })
    );
    let refreshed = match within(client.next_event()).await {
        Some(Event::Refreshed {
            expires_at: Some(exp),
        }) => exp,
        other => panic!("expected Refreshed, got {other:?}"),
    };
    assert!(refreshed > first_exp, "{refreshed} > {first_exp}");
    assert!(asked.load(Ordering::SeqCst) >= 1);

    // Past the first token's exp (no leeway): the same socket delivers.
    past(first_exp).await;
    let (delivered, envelope) = tokio::join!(publish(server, &user, "tick"), async {
        let envelope = next_delivery(&mut client).await;
        client
            .ack(&envelope.envelope_id, json!("still here"))
            .await
            .expect("ack");
        envelope
    });
    assert_eq!(delivered, 1);
    assert_eq!(envelope.envelope_type, "tick");
    let (still, expires_at) = only_socket(server, &user).await;
    assert_eq!(still, socket, "the same socket, refreshed in place");
    assert!(
        expires_at.is_some_and(|exp| exp > first_exp),
        "its expiry follows the new token: {expires_at:?}"
    );
    client.close();
}

async fn client_tokens_library_fixed_token_ends_with_token_expired(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("tokfixed");
    let fixed = expiring(server, &user, TTL_SECS);
    let exp = token_expiry(&fixed).expect("exp");
    let mut options = contract::checked(ClientOptions::new(server.base_ws(), fixed));
    options.backoff_initial = Duration::from_millis(50);
    let mut client = Client::connect(options).await.expect("connect");
    client.subscribe(vec![json!({})]).await.expect("subscribe");
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::TokenExpiring { expires_at: exp })
    );
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::Disconnected {
            code: Some(4002),
            reason: "token expired".into()
        })
    );
    assert!(token::now_secs() >= exp, "not before its exp");
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::TokenExpired {
            expires_at: Some(exp)
        })
    );
    assert_eq!(within(client.next_event()).await, None, "the client ended");
    // And it did not come back with the expired token.
    let reply = sockets_of(server, &user).await;
    assert_eq!(reply.body["count"], 0, "{}", reply.body);
}

async fn client_tokens_library_reconnects_after_4002_with_the_provider(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("tokreconnect");
    let first = expiring(server, &user, TTL_SECS);
    let first_exp = token_expiry(&first).expect("exp");
    let asked = Arc::new(AtomicUsize::new(0));
    let (counter, provider_secret, owner) = (asked.clone(), secret(server), user.clone());
    // The refresh gets another user's token (refused); the reconnect after
    // the 4002 a good one.
    let mut options = contract::checked(ClientOptions::new(server.base_ws(), first))
        .with_token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let whose = if n == 0 {
                "someone-else"
            } else {
                owner.as_str()
            };
            let token = token::mint(
                &provider_secret,
                whose,
                Some(Duration::from_secs(600)),
                Map::new(),
            );
            async move { Ok(token) }
        });
    options.backoff_initial = Duration::from_millis(50);
    let mut client = Client::connect(options).await.expect("connect");
    client
        .subscribe(vec![json!({"type": "back"})])
        .await
        .expect("subscribe");
    let (socket, _) = only_socket(server, &user).await;
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::TokenExpiring {
            expires_at: first_exp
        })
    );
    match within(client.next_event()).await {
        Some(Event::RefreshRejected { message }) => {
            assert!(message.starts_with("refresh rejected"), "{message}")
        }
        other => panic!("expected RefreshRejected, got {other:?}"),
    }
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::Disconnected {
            code: Some(4002),
            reason: "token expired".into()
        })
    );
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::Reconnected { attempt: 1 })
    );
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    // A new socket, with the filters, living as long as the new token.
    within(client.ping()).await.expect("pong");
    let (again, expires_at) = only_socket(server, &user).await;
    assert_ne!(again, socket);
    assert!(expires_at.is_some_and(|exp| exp > first_exp + 60));
    let (delivered, envelope) = tokio::join!(publish(server, &user, "back"), async {
        let envelope = next_delivery(&mut client).await;
        client
            .ack(&envelope.envelope_id, json!(1))
            .await
            .expect("ack");
        envelope
    });
    assert_eq!((delivered, envelope.envelope_type.as_str()), (1, "back"));
    client.close();
}

async fn client_tokens_cli_listen_refreshes_its_own_tokens(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("tokclilisten");
    let ttl = format!("{TTL_SECS}s");
    let (_listen, mut stdout, mut stderr) = listen(&[
        "--url",
        &server.base_ws(),
        "--user",
        &user,
        "--secret",
        &secret(server),
        "--ttl",
        &ttl,
    ]);
    stderr.wait_for("subscribed").await;
    // Its first token was minted before this: it expires by `first_exp`.
    let first_exp = token::now_secs() + TTL_SECS;
    let (socket, expires_at) = only_socket(server, &user).await;
    assert!(expires_at.is_some(), "the minted token has an exp");

    // One line per refresh, each further out than the one before.
    let line = stderr.wait_for("token refreshed").await;
    assert!(
        line.starts_with("token refreshed: the socket now lives until "),
        "{line}"
    );
    past(first_exp).await;
    let (delivered, line) = tokio::join!(
        publish(server, &user, "after-exp"),
        within(stdout.lines.recv())
    );
    assert_eq!(delivered, 1);
    let envelope: Value = serde_json::from_str(&line.expect("a delivery")).expect("JSON line");
    assert_eq!(envelope["type"], "after-exp");
    let (still, _) = only_socket(server, &user).await;
    assert_eq!(still, socket, "the same socket, refreshed in place");
    let refreshes: Vec<String> = stderr
        .seen
        .iter()
        .filter(|l| l.starts_with("token refreshed"))
        .cloned()
        .collect();
    assert!(!refreshes.is_empty());
    assert!(
        !stderr
            .seen
            .iter()
            .any(|l| l.starts_with("disconnected") || l.starts_with("reconnected")),
        "{:#?}",
        stderr.seen
    );
    // The next refresh prints its own line, further out.
    let next = stderr.wait_for("token refreshed").await;
    assert!(
        refreshes.iter().all(|line| *line < next),
        "{refreshes:?} < {next}"
    );
}

async fn client_tokens_cli_listen_fixed_token_exits_when_it_expires(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let user = unique_user("tokclifixed");
    let fixed = expiring(server, &user, TTL_SECS);
    let exp = token_expiry(&fixed).expect("exp");
    // README's own form: no --user, the token says whose it is.
    let (mut listen, _stdout, mut stderr) =
        listen(&["--url", &server.base_ws(), "--token", &fixed]);
    let said = stderr.wait_for("the token expires at").await;
    assert!(said.contains(&format_time(exp)), "{said}");
    let connected = stderr.wait_for("connected").await;
    assert!(connected.ends_with(&format!(" as {user}")), "{connected}");
    stderr.wait_for("subscribed").await;
    let status = within(listen.wait()).await.expect("listen status");
    assert!(!status.success());
    let lines = stderr.rest().await;
    let expected = format!(
        "error: token expired at {}; pass --secret (or JWT_SECRET) to let listen refresh it",
        format_time(exp)
    );
    assert_eq!(lines.last(), Some(&expected), "{lines:#?}");
    assert!(token::now_secs() >= exp, "not before its exp");
    // It said so once, and did not try to come back.
    assert!(
        !lines.iter().any(|l| l.starts_with("disconnected")),
        "{lines:#?}"
    );
}

async fn client_tokens_cli_refusals_say_why(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let url = server.base_ws();
    // A token the server refuses: its code and message, as publish says.
    let forged = crate::support::sign("not-the-secret", &json!({"userId": "mallory"}));
    let refused = run(&["listen", "--url", &url, "--token", &forged], None).await;
    fails_with(
        &refused,
        "upgrade refused (401): invalid_token: invalid token: signature does not match",
    );

    // --user that is not the token's user is refused before connecting.
    let bob = unique_user("bob");
    let bobs = expiring(server, &bob, 600);
    let mismatch = run(
        &["listen", "--url", &url, "--user", "carol", "--token", &bobs],
        None,
    )
    .await;
    fails_with(
        &mismatch,
        &format!("--user carol does not match the token's userId \"{bob}\""),
    );
    assert!(!stderr(&mismatch).contains("connected"), "{mismatch:?}");
    let reply = sockets_of(server, &bob).await;
    assert_eq!(reply.body["count"], 0, "nothing connected: {}", reply.body);
}

async fn client_tokens_cli_fixed_token_refused_on_reconnect_exits(_ctx: Arc<Ctx>) {
    // A server restarted with another secret (a rotation): the fixed token
    // still comes back after an operator's 4000, then is refused for good.
    let first_secret = format!("rotated-{}", unique_user("a"));
    let start = |secret: String, port: Option<u16>| {
        tokio::task::spawn_blocking(move || {
            let vars = [("JWT_SECRET", secret.as_str())];
            match port {
                Some(port) => Server::spawn_on("tokens-rotated", &vars, port).wait_ready(),
                None => Server::spawn("tokens-rotated", &vars).wait_ready(),
            }
        })
    };
    let server = start(first_secret.clone(), None).await.expect("start");
    let port = server.port;
    let user = unique_user("tokclirotate");
    let fixed = token::mint(&first_secret, &user, None, Map::new());
    let (mut listen, _stdout, mut stderr) =
        listen(&["--url", &server.base_ws(), "--token", &fixed]);
    stderr.wait_for("subscribed").await;

    let operator = Publisher::new(
        &server.http(),
        token::mint(&first_secret, "ops", None, token::operator_claims()),
    );
    operator
        .disconnect(&user, None, true, None)
        .await
        .expect("disconnect");
    let line = stderr.wait_for("disconnected").await;
    assert_eq!(
        line,
        "disconnected: 4000 (operator asked to reconnect); reconnecting"
    );
    stderr.wait_for("reconnected").await;

    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
    let rotated = start(format!("rotated-{}", unique_user("b")), Some(port))
        .await
        .expect("restart");
    let status = tokio::time::timeout(Duration::from_secs(60), listen.wait())
        .await
        .expect("listen gave up on the refused token")
        .expect("listen status");
    assert!(!status.success());
    let lines = stderr.rest().await;
    let error = lines
        .iter()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {lines:#?}"));
    assert!(
        error.contains(
            "upgrade refused (401): invalid_token: invalid token: signature does not match"
        ),
        "{error}"
    );
    for line in &lines {
        assert!(
            !line.contains("Some(") && !line.contains("None"),
            "no debug output: {line}"
        );
    }
    tokio::task::spawn_blocking(move || drop(rotated))
        .await
        .expect("stop");
}

async fn client_tokens_cli_scheme_mistakes_name_the_fix(ctx: Arc<Ctx>) {
    let server = &ctx.tokens;
    let secret = secret(server);
    let host = format!("127.0.0.1:{}", server.port);
    let http = server.http();
    let ws = server.base_ws();
    let user = unique_user("tokscheme");
    let cases: [(Vec<String>, Option<&str>, String); 5] = [
        (
            vec!["listen".into(), "--url".into(), http.clone()],
            None,
            format!("--url {http} has the wrong scheme: listen expects ws:// or wss:// (the WebSocket endpoint), e.g. {ws}"),
        ),
        (
            vec!["publish".into(), "--url".into(), ws.clone()],
            None,
            format!("--url {ws} has the wrong scheme: publish expects http:// or https://, e.g. {http}"),
        ),
        (
            vec!["listen".into(), "--url".into(), host.clone()],
            None,
            format!("--url {host} has no scheme: listen expects ws:// or wss:// (the WebSocket endpoint), e.g. {ws}"),
        ),
        (
            vec!["publish".into(), "--url".into(), format!("{http}/publish")],
            None,
            format!("--url {http}/publish names the /publish route: --url is the service root, e.g. {http}"),
        ),
        (
            vec!["sockets".into()],
            Some(ws.as_str()),
            format!("HOPEFLOW_URL={ws} has the wrong scheme: it must be an http:// or https:// base"),
        ),
    ];
    for (args, url_var, expected) in cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--user", &user, "--secret", &secret]);
        if args[0] == "publish" {
            args.extend(["--payload", "1"]);
        }
        let output = run(&args, url_var).await;
        fails_with(&output, &expected);
    }

    // HOPEFLOW_URL (http://) is every command's default --url; listen
    // connects to its ws:// form.
    let mut listening = hopeflow();
    listening
        .args(["listen", "--user", &user, "--secret", &secret])
        .env("HOPEFLOW_URL", &http)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut listening = listening.spawn().expect("spawn listen");
    let mut stdout = Lines::of(listening.stdout.take().expect("stdout"));
    let mut stderr = Lines::of(listening.stderr.take().expect("stderr"));
    let connected = stderr.wait_for("connected").await;
    assert_eq!(connected, format!("connected to {ws} as {user}"));
    stderr.wait_for("subscribed").await;
    let published = run(
        &[
            "publish",
            "--user",
            &user,
            "--secret",
            &secret,
            "--payload",
            "7",
        ],
        Some(&http),
    )
    .await;
    assert!(published.status.success(), "{published:?}");
    let answer: Value = serde_json::from_slice(&published.stdout).expect("JSON answer");
    assert_eq!(answer["clientCount"], 1, "{answer}");
    let line = within(stdout.lines.recv()).await.expect("a delivery");
    assert_eq!(
        serde_json::from_str::<Value>(&line).expect("JSON")["payload"],
        7
    );
    let _ = listening.kill().await;
}
