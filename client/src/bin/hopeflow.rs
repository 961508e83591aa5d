//! `hopeflow`: mint and check tokens, watch a user's deliveries, publish by
//! hand, list or disconnect a user's sockets, and receive webhooks locally.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::{Map, Value};

use hopeflow_client::cli::{
    batch_failures, describe_close, describe_code, describe_gap, describe_refresh,
    describe_token_expiry, describe_webhook_receiver, find_secret, format_time, http_url,
    listen_reconnects, listen_url, listen_user, parse_filter, token_claims, token_expired,
    webhook_secret, CLI_USER, URL_VAR,
};
use hopeflow_client::socket::token_expiry;
use hopeflow_client::webhook::receiver::{Received, Receiver};
use hopeflow_client::{
    token, Client, ClientOptions, Event, IdempotencyKey, PublishError, PublishOptions, Publisher,
    Trust,
};

const EXAMPLES: &str = "\
Examples (after `make dev`, which serves on 127.0.0.1:8787 with .dev.vars):
  hopeflow token --user alice --ttl 1h
  hopeflow token --operator --ttl 1h
  hopeflow check-token eyJhbGciOi...
  hopeflow listen --user alice --filter type=chat_message,questId=q1
  hopeflow publish --user alice --type chat_message --payload '{\"questId\":\"q1\"}'
  hopeflow publish --user alice --user bob --payload '{\"news\":1}' --idempotency-key news-1
  hopeflow publish --user alice --payload '{}' --detail
  hopeflow sockets --user alice
  hopeflow disconnect --user alice --reconnect --reason 'token rotated'
  hopeflow webhooks listen --port 9000
  hopeflow listen --url wss://realtime.example.com --token \"$TOKEN\" --ca-cert ca.pem
  HOPEFLOW_URL=https://realtime.example.com hopeflow listen --token \"$TOKEN\"

The secret comes from --secret, else $JWT_SECRET, else JWT_SECRET in ./.dev.vars
(webhooks listen: WEBHOOK_SECRET, from the same places).
Without --token, publish, sockets and disconnect mint a token for hopeflow-cli
with scope \"operator\" (what the operator routes need by default), and listen
mints one for --user that it refreshes before it expires (--ttl, default 1h).
$HOPEFLOW_URL (an http:// or https:// base) is every command's default --url;
listen connects to its ws:// or wss:// form. Without either: 127.0.0.1:8787.
Answers are printed as one JSON line on stdout (pipe to jq to indent them).
wss:// and https:// trust the public roots, plus --ca-cert (or $HOPEFLOW_CA_CERT).";

#[derive(Parser)]
#[command(name = "hopeflow", version, about = "HopeFlow Realtime tool", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 token for a user.
    #[command(
        after_help = "Examples:\n  hopeflow token --user alice --ttl 1h --claim role=tester\n  hopeflow token --operator --ttl 10m\n  hopeflow token --user ops --operator --claim scope=publish   # scope \"publish operator\""
    )]
    Token {
        /// The token's userId (default with --operator: hopeflow-cli).
        #[arg(long, required_unless_present = "operator")]
        user: Option<String>,
        /// Add "operator" to the token's scope claim (the operator routes
        /// need it: sockets, disconnect).
        #[arg(long)]
        operator: bool,
        /// Lifetime (90s, 30m, 1h, 2d); without it the token has no exp.
        #[arg(long)]
        ttl: Option<String>,
        /// Extra claim key=value (value read as JSON if it is JSON); repeatable.
        #[arg(long = "claim", value_name = "KEY=VALUE")]
        claims: Vec<String>,
        #[arg(long)]
        secret: Option<String>,
    },
    /// Verify a token as the server does and print its claims, or why it is invalid.
    #[command(after_help = "Example:\n  hopeflow check-token \"$(hopeflow token --user alice)\"")]
    CheckToken {
        token: String,
        #[arg(long)]
        secret: Option<String>,
    },
    /// Connect as a user, print each delivery as a JSON line, and ack it.
    #[command(
        after_help = "Examples:\n  hopeflow listen --user alice --filter type=chat_message --ack-result '{\"seen\":true}'\n  hopeflow listen --user alice --ttl 10m\n  hopeflow listen --url wss://realtime.example.com --token \"$TOKEN\"\n\nWithout --token it mints its token (valid for --ttl) from the secret, refreshes\nit on the open socket before it expires (one line on stderr each time), and\nmints a fresh one before every reconnect.\nWith --token the user is the token's; it says when the token expires, and the\nsocket ends then (the server closes it with 4002): listen exits non-zero. A\ntoken the server refuses, at the start or on a reconnect, ends it with the\nserver's reason.\nAfter a reconnect it resumes from the server's history: each envelope is printed\nonce, in seq order; what the history no longer held is reported on stderr\n(gap: ...). It stops when an operator disconnects it for good (close code 4001)."
    )]
    Listen {
        /// ws:// or wss:// URL of the service root [default: $HOPEFLOW_URL
        /// as ws(s)://, else ws://127.0.0.1:8787].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// The user to mint tokens for; with --token, optional (the token's
        /// userId), and refused when it names another user.
        #[arg(long, required_unless_present = "token")]
        user: Option<String>,
        /// Use this token instead of minting one. It is not refreshed: the
        /// socket ends when it expires.
        #[arg(long, conflicts_with_all = ["secret", "ttl"])]
        token: Option<String>,
        /// Mint the tokens with this secret.
        #[arg(long)]
        secret: Option<String>,
        /// Lifetime of the tokens it mints (90s, 30m, 1h, 2d); each is
        /// refreshed before it expires.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// key=value[,key=value...]; repeatable; default: everything ({}).
        #[arg(long = "filter", value_name = "K=V,...")]
        filters: Vec<String>,
        /// JSON result sent with each ack.
        #[arg(long, default_value = "{\"ok\":true}", conflicts_with = "no_ack")]
        ack_result: String,
        /// Do not ack deliveries.
        #[arg(long)]
        no_ack: bool,
        /// Exit when the connection drops instead of reconnecting.
        #[arg(long)]
        no_reconnect: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Publish an envelope to one user, or to several at once, and print the answer.
    #[command(
        after_help = "Examples:\n  hopeflow publish --user alice --payload '{\"hi\":1}'\n  echo '{\"hi\":1}' | hopeflow publish --user alice --type greeting\n  hopeflow publish --user alice --user bob --payload '{\"hi\":1}'\n  hopeflow publish --user alice --payload '{\"hi\":1}' --idempotency-key hi-1 --detail\n\nOne --user posts /publish; several post /publish/batch (1 to 100 distinct users):\nthe answer lists each user's outcome, and the exit status is 1 if any user failed.\nA repeat with the same --idempotency-key prints the first answer again and says\n\"replayed\" on stderr; nothing is delivered twice."
    )]
    Publish {
        /// The target user; repeat for a batch.
        #[arg(long = "user", value_name = "USER", required = true)]
        users: Vec<String>,
        /// Envelope type (server default: message).
        #[arg(long = "type")]
        kind: Option<String>,
        /// JSON payload; read from stdin when absent.
        #[arg(long)]
        payload: Option<String>,
        /// Sent as Idempotency-Key (1 to 255 visible ASCII characters): a
        /// repeat is answered, not delivered again.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<IdempotencyKey>,
        /// Add each socket's delivery (acked, closed, timed_out; result; ackMs).
        #[arg(long)]
        detail: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List a user's open sockets, their filters and pending publishes (operator).
    #[command(after_help = "Example:\n  hopeflow sockets --user alice | jq .")]
    Sockets {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Close a user's sockets, or one of them (operator); prints {"closed":N}.
    #[command(
        after_help = "Examples:\n  hopeflow disconnect --user alice\n  hopeflow disconnect --user alice --socket 6f1c... --reconnect --reason 'token rotated'\n\nWithout --reconnect the sockets close with 4001 and clients stay away;\nwith it, 4000: clients reconnect with a fresh token."
    )]
    Disconnect {
        #[arg(long)]
        user: String,
        /// Only this socket (a socketId from `hopeflow sockets`).
        #[arg(long, value_name = "ID")]
        socket: Option<String>,
        /// Ask the clients to reconnect with a fresh token (close code 4000).
        #[arg(long)]
        reconnect: bool,
        /// The close frame's reason.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Receive the worker's webhooks locally (docs/webhooks.md).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Receive webhooks on 127.0.0.1: verify each request, print each event as a JSON line.
    #[command(
        after_help = "Example, with `make dev` (whose worker reads .dev.vars):\n  # in .dev.vars: WEBHOOK_URL=http://127.0.0.1:9000/ and WEBHOOK_SECRET=<32+ characters>\n  hopeflow webhooks listen --port 9000\n  hopeflow listen --user alice          # another terminal: user.online, and user.offline after it stops\n\nA request whose HopeFlow-Signature is valid (the secret, the body, a time within\n5 minutes) is answered 200 and its events printed on stdout, oldest first; any\nother is answered 401 (400 when signed but not events) with the reason on\nstderr, and the worker retries it. The secret comes from --secret, else\n$WEBHOOK_SECRET, else WEBHOOK_SECRET in ./.dev.vars."
    )]
    Listen {
        /// The port on 127.0.0.1 (0: a free one, printed at the start).
        #[arg(long)]
        port: u16,
        /// The worker's WEBHOOK_SECRET (at least 32 characters).
        #[arg(long)]
        secret: Option<String>,
    },
}

#[derive(clap::Args)]
struct TlsArgs {
    /// Also trust the CA certificate(s) in this PEM file for wss:// and
    /// https:// (a private CA); certificates are always verified.
    #[arg(long, value_name = "FILE", env = "HOPEFLOW_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn trust(&self) -> Result<Trust, String> {
        match &self.ca_cert {
            Some(path) => Trust::with_ca_file(path).map_err(|e| e.to_string()),
            None => Ok(Trust::public_roots()),
        }
    }
}

/// Where and as whom the HTTP commands talk to the server.
#[derive(clap::Args)]
struct ServerArgs {
    /// http:// or https:// URL of the service root [default:
    /// $HOPEFLOW_URL, else http://127.0.0.1:8787].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Use this token instead of minting one (for hopeflow-cli, scope operator).
    #[arg(long)]
    token: Option<String>,
    /// Mint the token with this secret.
    #[arg(long)]
    secret: Option<String>,
    /// Retry this many times when the server answers 503.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    #[command(flatten)]
    tls: TlsArgs,
}

impl ServerArgs {
    /// The server's URL for `command`, checked.
    fn base(&self, command: &str) -> Result<String, String> {
        http_url(command, self.url.as_deref(), env_url().as_deref())
    }

    fn publisher(&self, url: &str) -> Result<Publisher, String> {
        let token = match &self.token {
            Some(token) => token.clone(),
            // Operator scope: the operator routes need it, and it is
            // harmless on a publish.
            None => token::mint(
                &secret(self.secret.as_deref())?,
                CLI_USER,
                None,
                token::operator_claims(),
            ),
        };
        Ok(Publisher::new(url, token)
            .with_trust(self.tls.trust()?)
            .with_retries(self.retries))
    }
}

/// The one-line error of a failed call to `url`.
fn call_error(url: &str, error: PublishError) -> String {
    match error {
        PublishError::Transport(why) => format!("cannot reach {url}: {why}"),
        other => other.to_string(),
    }
}

/// `HOPEFLOW_URL`, when set.
fn env_url() -> Option<String> {
    std::env::var(URL_VAR).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Prints a verified request's events on stdout, one JSON line each and
/// together; a refused request's reason on stderr.
fn print_received(received: &Received) {
    match received {
        Received::Events(events) => {
            let mut out = std::io::stdout().lock();
            for event in events {
                let _ = writeln!(out, "{}", event.to_text());
            }
            let _ = out.flush();
        }
        Received::Refused { status, why } => eprintln!("refused a request ({status}): {why}"),
    }
}

fn secret(flag: Option<&str>) -> Result<String, String> {
    let env = std::env::var("JWT_SECRET").ok();
    let dir = std::env::current_dir().unwrap_or_default();
    find_secret(flag, env.as_deref(), &dir)
        .ok_or_else(|| "no secret: pass --secret, set JWT_SECRET, or run where .dev.vars is".into())
}

/// Prints an answer as one JSON line.
fn print(answer: &impl Serialize) {
    println!("{}", serde_json::to_string(answer).unwrap_or_default());
}

const REPLAYED: &str =
    "replayed: the server answered with the first publish under this idempotency key; nothing was delivered again";

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Token {
            user,
            operator,
            ttl,
            claims,
            secret: flag,
        } => {
            let ttl = ttl.as_deref().map(token::parse_ttl).transpose()?;
            let extra = token_claims(&claims, operator)?;
            let user = user.as_deref().unwrap_or(CLI_USER);
            println!(
                "{}",
                token::mint(&secret(flag.as_deref())?, user, ttl, extra)
            );
            Ok(())
        }
        Command::CheckToken {
            token,
            secret: flag,
        } => {
            let token = token.trim();
            let claims =
                token::verify(&secret(flag.as_deref())?, token).map_err(|e| e.to_string())?;
            let payload = token::payload(token).unwrap_or(Value::Null);
            let pretty = serde_json::to_string_pretty(&payload).unwrap_or_default();
            println!("valid token for userId {:?}\n{pretty}", claims.user_id);
            Ok(())
        }
        Command::Listen {
            url,
            user,
            token,
            secret: flag,
            ttl,
            filters,
            ack_result,
            no_ack,
            no_reconnect,
            tls,
        } => {
            let url = listen_url(url.as_deref(), env_url().as_deref())?;
            let user = listen_user(user.as_deref(), token.as_deref())?;
            let ack_result: Value = serde_json::from_str(&ack_result)
                .map_err(|e| format!("--ack-result is not JSON: {e}"))?;
            let filters = if filters.is_empty() {
                vec![Value::Object(Map::new())]
            } else {
                filters
                    .iter()
                    .map(|f| parse_filter(f))
                    .collect::<Result<_, _>>()?
            };
            let refreshes = token.is_none();
            let mut options = match (token, &user) {
                (Some(token), _) => {
                    let token = token.trim().to_owned();
                    eprintln!(
                        "{}",
                        describe_token_expiry(token_expiry(&token), token::now_secs())
                    );
                    ClientOptions::new(&url, token)
                }
                (None, Some(user)) => {
                    let ttl = token::parse_ttl(&ttl).map_err(|e| format!("--ttl: {e}"))?;
                    if ttl.is_zero() {
                        return Err("--ttl must be at least 1s".into());
                    }
                    // With an exp, so the server asks for a refresh before
                    // it; minted again for each refresh and before every
                    // reconnect (after an operator's 4000 or a 4002 the
                    // server wants a fresh token).
                    let secret = secret(flag.as_deref())?;
                    let first = token::mint(&secret, user, Some(ttl), Map::new());
                    let owner = user.clone();
                    ClientOptions::new(&url, first).with_token_provider(move || {
                        let token = token::mint(&secret, &owner, Some(ttl), Map::new());
                        async move { Ok(token) }
                    })
                }
                (None, None) => return Err("listen needs --user or --token".into()),
            };
            options.reconnect = !no_reconnect;
            options.trust = tls.trust()?;
            let mut client = Client::connect(options).await.map_err(|e| e.to_string())?;
            match &user {
                Some(user) => eprintln!("connected to {url} as {user}"),
                None => eprintln!("connected to {url}"),
            }
            let confirmation = client.subscribe(filters).await.map_err(|e| e.to_string())?;
            for (code, message) in &confirmation.warnings {
                eprintln!("warning: {}: {message}", code.as_str());
            }
            eprintln!(
                "subscribed: {} filter(s) on this socket",
                confirmation.total
            );
            let how = Listening {
                ack_result: (!no_ack).then_some(ack_result),
                reconnect: !no_reconnect,
                refreshes,
            };
            listen(&mut client, &how).await
        }
        Command::Publish {
            users,
            kind,
            payload,
            idempotency_key,
            detail,
            server,
        } => {
            let url = server.base("publish")?;
            let payload = match payload {
                Some(text) => text,
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| format!("cannot read the payload from stdin: {e}"))?;
                    text
                }
            };
            let payload: Value = serde_json::from_str(&payload)
                .map_err(|e| format!("the payload is not JSON: {e}"))?;
            let publisher = server.publisher(&url)?;
            let options = PublishOptions {
                idempotency_key,
                detail,
            };
            match users.as_slice() {
                [user] => {
                    let outcome = publisher
                        .publish_with(user, kind.as_deref(), payload, options)
                        .await
                        .map_err(|e| call_error(&url, e))?;
                    print(&outcome);
                    if outcome.replayed {
                        eprintln!("{REPLAYED}");
                    }
                    Ok(())
                }
                _ => {
                    let batch = publisher
                        .publish_batch(&users, kind.as_deref(), payload, options)
                        .await
                        .map_err(|e| call_error(&url, e))?;
                    print(&batch);
                    if batch.replayed {
                        eprintln!("{REPLAYED}");
                    }
                    batch_failures(&batch).map_or(Ok(()), Err)
                }
            }
        }
        Command::Sockets { user, server } => {
            let url = server.base("sockets")?;
            let sockets = server
                .publisher(&url)?
                .sockets(&user)
                .await
                .map_err(|e| call_error(&url, e))?;
            print(&sockets);
            Ok(())
        }
        Command::Disconnect {
            user,
            socket,
            reconnect,
            reason,
            server,
        } => {
            let url = server.base("disconnect")?;
            let outcome = server
                .publisher(&url)?
                .disconnect(&user, socket.as_deref(), reconnect, reason.as_deref())
                .await
                .map_err(|e| call_error(&url, e))?;
            print(&outcome);
            Ok(())
        }
        Command::Webhooks {
            command: WebhooksCommand::Listen { port, secret: flag },
        } => {
            let env = std::env::var("WEBHOOK_SECRET").ok();
            let dir = std::env::current_dir().unwrap_or_default();
            let secret = webhook_secret(flag.as_deref(), env.as_deref(), &dir)?;
            let receiver = Receiver::bind(("127.0.0.1", port), &secret)
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
            let port = receiver.local_addr().map_err(|e| e.to_string())?.port();
            eprintln!("{}", describe_webhook_receiver(port));
            receiver
                .run(print_received)
                .await
                .map_err(|e| format!("cannot accept connections: {e}"))
        }
    }
}

/// How `listen` goes on.
struct Listening {
    /// Sent with each ack; `None`: no acks.
    ack_result: Option<Value>,
    /// Reconnect after a drop (not `--no-reconnect`).
    reconnect: bool,
    /// It mints its tokens, so it refreshes them (no `--token`).
    refreshes: bool,
}

/// Prints deliveries on stdout (one JSON line each) and connection events on
/// stderr until the client closes for good; then says why.
async fn listen(client: &mut Client, how: &Listening) -> Result<(), String> {
    let mut last_close = (None, String::new());
    while let Some(event) = client.next_event().await {
        match event {
            Event::Envelope(envelope) => {
                println!("{}", serde_json::to_string(&envelope).unwrap_or_default());
                if let Some(result) = &how.ack_result {
                    client
                        .ack(&envelope.envelope_id, result.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Event::ServerError { code, message } => {
                eprintln!("server error: {}: {message}", code.as_str())
            }
            Event::Disconnected { code, reason } => {
                // When it ends, the error line says why, once.
                if listen_reconnects(code, how.reconnect, how.refreshes) {
                    eprintln!("disconnected: {}; reconnecting", describe_code(code, &reason));
                }
                last_close = (code, reason);
            }
            Event::Reconnected { attempt } => {
                eprintln!("reconnected after {attempt} attempt(s); filters re-subscribed")
            }
            Event::Gap {
                since,
                seq,
                epoch,
                previous_epoch,
                replayed,
            } => eprintln!(
                "{}",
                describe_gap(since, seq, &epoch, &previous_epoch, replayed)
            ),
            // With its own tokens it is already refreshing.
            Event::TokenExpiring { expires_at } if !how.refreshes => eprintln!(
                "token expiring: the server closes this socket at {} (plus its leeway)",
                format_time(expires_at)
            ),
            Event::TokenExpiring { .. } => {}
            Event::Refreshed { expires_at } => {
                eprintln!("{}", describe_refresh(expires_at, token::now_secs()))
            }
            Event::RefreshRejected { message } => eprintln!(
                "warning: {message}; the socket closes when its token expires, then listen reconnects"
            ),
            Event::TokenExpired { expires_at } if !how.refreshes => {
                return Err(token_expired(expires_at))
            }
            // Its own token expired with --no-reconnect: the close says so.
            Event::TokenExpired { .. } => {}
            Event::Rejected { error } => {
                return Err(format!(
                    "reconnecting: {error}; the token is not accepted any more"
                ))
            }
        }
    }
    Err(describe_close(last_close.0, &last_close.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Cli::try_parse_from(std::iter::once("hopeflow").chain(args.iter().copied()))
            .map(|cli| cli.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn publish_takes_several_users_a_key_and_detail() {
        let Ok(Command::Publish {
            users,
            idempotency_key,
            detail,
            server,
            ..
        }) = parse(&[
            "publish",
            "--user",
            "a",
            "--user",
            "b",
            "--idempotency-key",
            "k-1",
            "--detail",
            "--payload",
            "1",
        ])
        else {
            panic!("publish did not parse");
        };
        assert_eq!(users, ["a", "b"]);
        assert_eq!(idempotency_key.map(|k| k.to_string()), Some("k-1".into()));
        assert!(detail);
        assert_eq!(server.url, None);
        let Ok(Command::Publish {
            users,
            idempotency_key: None,
            detail: false,
            ..
        }) = parse(&["publish", "--user", "a"])
        else {
            panic!("a plain publish did not parse");
        };
        assert_eq!(users, ["a"]);
        assert!(parse(&["publish", "--payload", "1"]).is_err());
        let bad_key = parse(&["publish", "--user", "a", "--idempotency-key", "a b"]);
        assert!(bad_key.is_err_and(|e| e.contains("visible ASCII")));
    }

    #[test]
    fn operator_commands_parse() {
        let Ok(Command::Sockets { user, server }) = parse(&[
            "sockets",
            "--user",
            "alice",
            "--url",
            "https://h",
            "--token",
            "t",
            "--ca-cert",
            "ca.pem",
        ]) else {
            panic!("sockets did not parse");
        };
        assert_eq!(
            (user.as_str(), server.url.as_deref()),
            ("alice", Some("https://h"))
        );
        assert_eq!(server.token.as_deref(), Some("t"));
        assert!(server.tls.ca_cert.is_some());
        let Ok(Command::Disconnect {
            user,
            socket,
            reconnect,
            reason,
            ..
        }) = parse(&[
            "disconnect",
            "--user",
            "alice",
            "--socket",
            "s1",
            "--reconnect",
            "--reason",
            "token rotated",
        ])
        else {
            panic!("disconnect did not parse");
        };
        assert_eq!(user, "alice");
        assert_eq!(socket.as_deref(), Some("s1"));
        assert!(reconnect);
        assert_eq!(reason.as_deref(), Some("token rotated"));
        let Ok(Command::Disconnect {
            socket: None,
            reconnect: false,
            reason: None,
            ..
        }) = parse(&["disconnect", "--user", "alice"])
        else {
            panic!("a plain disconnect did not parse");
        };
        assert!(parse(&["sockets"]).is_err());
        assert!(parse(&["disconnect"]).is_err());
    }

    #[test]
    fn listen_takes_its_user_from_the_token_or_mints_with_a_ttl() {
        let Ok(Command::Listen {
            url: None,
            user: None,
            token: Some(token),
            ..
        }) = parse(&["listen", "--token", "t"])
        else {
            panic!("listen --token without --user did not parse");
        };
        assert_eq!(token, "t");
        let Ok(Command::Listen {
            user: Some(user),
            token: None,
            ttl,
            ..
        }) = parse(&["listen", "--user", "alice"])
        else {
            panic!("listen --user did not parse");
        };
        assert_eq!((user.as_str(), ttl.as_str()), ("alice", "1h"));
        let Ok(Command::Listen { ttl, .. }) = parse(&["listen", "--user", "a", "--ttl", "5m"])
        else {
            panic!("listen --ttl did not parse");
        };
        assert_eq!(ttl, "5m");
        // Neither a user nor a token; a fixed token is never refreshed, so
        // a secret or a ttl with it would do nothing.
        assert!(parse(&["listen"]).is_err());
        assert!(parse(&["listen", "--token", "t", "--secret", "s"]).is_err());
        assert!(parse(&["listen", "--token", "t", "--ttl", "5m"]).is_err());
    }

    #[test]
    fn webhooks_listen_takes_a_port_and_maybe_a_secret() {
        let Ok(Command::Webhooks {
            command: WebhooksCommand::Listen { port, secret },
        }) = parse(&["webhooks", "listen", "--port", "9000", "--secret", "s"])
        else {
            panic!("webhooks listen did not parse");
        };
        assert_eq!((port, secret.as_deref()), (9000, Some("s")));
        let Ok(Command::Webhooks {
            command: WebhooksCommand::Listen { secret: None, .. },
        }) = parse(&["webhooks", "listen", "--port", "0"])
        else {
            panic!("webhooks listen without --secret did not parse");
        };
        assert!(parse(&["webhooks", "listen"]).is_err());
        assert!(parse(&["webhooks", "listen", "--port", "70000"]).is_err());
        assert!(parse(&["webhooks"]).is_err());
    }

    #[test]
    fn token_needs_a_user_unless_operator() {
        let Ok(Command::Token {
            user: None,
            operator: true,
            ..
        }) = parse(&["token", "--operator"])
        else {
            panic!("token --operator did not parse");
        };
        let Ok(Command::Token {
            user: Some(user),
            operator: false,
            ..
        }) = parse(&["token", "--user", "alice"])
        else {
            panic!("token --user did not parse");
        };
        assert_eq!(user, "alice");
        assert!(parse(&["token"]).is_err());
    }
}
