//! `hopeflow webhooks listen` as a process, over real loopback sockets: a
//! request signed as the worker signs it is answered 200 and its events
//! come out on stdout, one JSON line each; a tampered one, an old one and
//! one signed with another secret are answered 401 with the reason on
//! stderr, and print nothing on stdout.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use hopeflow_client::webhook::{signature_header, unix_secs, SIGNATURE_HEADER};
use serde_json::{json, Value};

const SECRET: &str = "a-webhook-secret-of-32-characters";
const WAIT: Duration = Duration::from_secs(20);

/// The running tool; killed (it runs until stopped) when dropped.
struct Listening {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    url: String,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each line of `stream`, as it comes.
fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts the tool on a free port with the secret in `WEBHOOK_SECRET`,
/// in a directory without a `.dev.vars`.
fn start() -> Listening {
    let dir = std::env::temp_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hopeflow"))
        .args(["webhooks", "listen", "--port", "0"])
        .env("WEBHOOK_SECRET", SECRET)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hopeflow");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let mut listening = Listening {
        child,
        stdout,
        stderr,
        url: String::new(),
    };
    let first = listening
        .stderr
        .recv_timeout(WAIT)
        .expect("the tool says where it listens");
    let port: u16 = first
        .split_once("http://127.0.0.1:")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    listening.url = format!("http://127.0.0.1:{port}/hooks");
    listening
}

fn body(user: &str) -> String {
    json!({"events": [
        {"id": "ev-1", "userId": user, "seq": 1, "at": 1_700_000_000_000u64,
         "type": "user.online", "sockets": 1},
        {"id": "ev-2", "userId": user, "seq": 2, "at": 1_700_000_000_001u64,
         "type": "ack.late", "envelopeId": "env", "socketId": "sock",
         "result": {"seen": true}, "ackMs": 6100},
    ]})
    .to_string()
}

async fn post(url: &str, signature: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_owned())
        .send()
        .await
        .expect("the receiver answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn prints_the_events_of_signed_requests_and_refuses_the_others() {
    let tool = start();
    let now = unix_secs(SystemTime::now());
    let body = body("alice");

    let signed = signature_header(SECRET.as_bytes(), now, &body);
    assert_eq!(post(&tool.url, &signed, &body).await.0, 200);
    let printed: Vec<Value> = (0..2)
        .map(|_| {
            let line = tool.stdout.recv_timeout(WAIT).expect("an event line");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
        })
        .collect();
    let sent: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(printed, sent["events"].as_array().expect("events").clone());

    let refusals = [
        (
            body.replace("alice", "mallory"),
            signed.clone(),
            "the signature does not match the body",
        ),
        (
            body.clone(),
            signature_header(SECRET.as_bytes(), now - 301, &body),
            "too far from now",
        ),
        (
            body.clone(),
            signature_header(b"another-secret-of-32-characters!", now, &body),
            "the signature does not match the body",
        ),
    ];
    for (sent, signature, why) in refusals {
        let (status, text) = post(&tool.url, &signature, &sent).await;
        assert_eq!(status, 401, "{text}");
        let line = tool.stderr.recv_timeout(WAIT).expect("a refusal line");
        assert!(
            line.starts_with("refused a request (401): ") && line.contains(why),
            "{line}"
        );
    }
    // Nothing of the refused requests was printed as an event.
    assert!(tool
        .stdout
        .recv_timeout(Duration::from_millis(300))
        .is_err());
}

#[test]
fn a_short_or_missing_secret_is_refused_at_the_start() {
    let dir = std::env::temp_dir();
    let run = |secret: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hopeflow"));
        command
            .args(["webhooks", "listen", "--port", "0"])
            .env_remove("WEBHOOK_SECRET")
            .current_dir(&dir);
        if let Some(secret) = secret {
            command.args(["--secret", secret]);
        }
        command.output().expect("run hopeflow")
    };
    let short = run(Some("too-short"));
    assert!(!short.status.success());
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("at least 32"), "{stderr}");
    if !dir.join(".dev.vars").exists() {
        let missing = run(None);
        assert!(!missing.status.success());
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(stderr.contains("no webhook secret"), "{stderr}");
    }
}
