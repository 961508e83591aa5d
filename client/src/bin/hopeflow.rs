//! `hopeflow`: mint and check tokens, watch a user's deliveries, publish by hand.

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use hopeflow_client::cli::{find_secret, parse_claim, parse_filter};
use hopeflow_client::{token, Client, ClientOptions, Event, PublishError, Publisher, Trust};

const EXAMPLES: &str = "\
Examples (after `make dev`, which serves on 127.0.0.1:8787 with .dev.vars):
  hopeflow token --user alice --ttl 1h
  hopeflow check-token eyJhbGciOi...
  hopeflow listen --user alice --filter type=chat_message,questId=q1
  hopeflow publish --user alice --type chat_message --payload '{\"questId\":\"q1\"}'
  hopeflow listen --url wss://realtime.example.com --token \"$TOKEN\" --ca-cert ca.pem

The secret comes from --secret, else $JWT_SECRET, else JWT_SECRET in ./.dev.vars.
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
    #[command(after_help = "Example:\n  hopeflow token --user alice --ttl 1h --claim role=tester")]
    Token {
        /// The token's userId.
        #[arg(long)]
        user: String,
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
        after_help = "Example:\n  hopeflow listen --user alice --filter type=chat_message --ack-result '{\"seen\":true}'"
    )]
    Listen {
        #[arg(long, default_value = "ws://127.0.0.1:8787")]
        url: String,
        #[arg(long)]
        user: String,
        /// Use this token instead of minting one for --user.
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        secret: Option<String>,
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
    /// Publish an envelope to a user and print the response.
    #[command(
        after_help = "Examples:\n  hopeflow publish --user alice --payload '{\"hi\":1}'\n  echo '{\"hi\":1}' | hopeflow publish --user alice --type greeting"
    )]
    Publish {
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        url: String,
        /// The target user.
        #[arg(long)]
        user: String,
        /// Envelope type (server default: message).
        #[arg(long = "type")]
        kind: Option<String>,
        /// JSON payload; read from stdin when absent.
        #[arg(long)]
        payload: Option<String>,
        /// Use this token instead of minting one.
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        secret: Option<String>,
        /// Retry this many times when the server answers 503.
        #[arg(long, default_value_t = 0)]
        retries: u32,
        #[command(flatten)]
        tls: TlsArgs,
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

fn secret(flag: Option<&str>) -> Result<String, String> {
    let env = std::env::var("JWT_SECRET").ok();
    let dir = std::env::current_dir().unwrap_or_default();
    find_secret(flag, env.as_deref(), &dir)
        .ok_or_else(|| "no secret: pass --secret, set JWT_SECRET, or run where .dev.vars is".into())
}

/// `--token`, or one minted for `user` with the secret.
fn token_for(
    user: &str,
    given: Option<String>,
    secret_flag: Option<&str>,
) -> Result<String, String> {
    match given {
        Some(token) => Ok(token),
        None => Ok(token::mint(&secret(secret_flag)?, user, None, Map::new())),
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Token {
            user,
            ttl,
            claims,
            secret: flag,
        } => {
            let ttl = ttl.as_deref().map(token::parse_ttl).transpose()?;
            let extra = claims
                .iter()
                .map(|c| parse_claim(c))
                .collect::<Result<Map<_, _>, _>>()?;
            println!(
                "{}",
                token::mint(&secret(flag.as_deref())?, &user, ttl, extra)
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
            filters,
            ack_result,
            no_ack,
            no_reconnect,
            tls,
        } => {
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
            let mut options = ClientOptions::new(&url, token_for(&user, token, flag.as_deref())?);
            options.reconnect = !no_reconnect;
            options.trust = tls.trust()?;
            let mut client = Client::connect(options).await.map_err(|e| e.to_string())?;
            eprintln!("connected to {url} as {user}");
            let confirmation = client.subscribe(filters).await.map_err(|e| e.to_string())?;
            for (code, message) in &confirmation.warnings {
                eprintln!("warning: {}: {message}", code.as_str());
            }
            eprintln!(
                "subscribed: {} filter(s) on this socket",
                confirmation.total
            );
            listen(&mut client, (!no_ack).then_some(ack_result)).await
        }
        Command::Publish {
            url,
            user,
            kind,
            payload,
            token,
            secret: flag,
            retries,
            tls,
        } => {
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
            let token = token_for("hopeflow-cli", token, flag.as_deref())?;
            let publisher = Publisher::new(&url, token)
                .with_trust(tls.trust()?)
                .with_retries(retries);
            let outcome = publisher
                .publish(&user, kind.as_deref(), payload)
                .await
                .map_err(|e| match e {
                    PublishError::Transport(why) => format!("cannot reach {url}: {why}"),
                    other => other.to_string(),
                })?;
            println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            Ok(())
        }
    }
}

/// Prints deliveries on stdout (one JSON line each) and connection events on
/// stderr until the client closes for good.
async fn listen(client: &mut Client, ack_result: Option<Value>) -> Result<(), String> {
    while let Some(event) = client.next_event().await {
        match event {
            Event::Envelope(envelope) => {
                println!("{}", serde_json::to_string(&envelope).unwrap_or_default());
                if let Some(result) = &ack_result {
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
                eprintln!("disconnected (code {code:?}) {reason}")
            }
            Event::Reconnected { attempt } => {
                eprintln!("reconnected after {attempt} attempt(s); filters re-subscribed")
            }
        }
    }
    Err("connection closed".into())
}
