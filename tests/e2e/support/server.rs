//! The servers under test: the prebuilt worker under `wrangler dev` on a
//! free port (in its own process group, stopped as a group), and one that
//! can be restarted with its storage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use devserver::{free_port, DevServer, Https, Launch};
use serde_json::{json, Value};

use super::tls::{tls_health_ok, TestCa};
use super::{http, sign, unique_user};

/// A running `wrangler dev` serving the prebuilt worker.
pub struct Server {
    /// Names it in the log audit's findings.
    name: String,
    process: DevServer,
    pub port: u16,
    /// The `JWT_SECRET` the server was started with, if any.
    pub secret: Option<String>,
    /// Serving `https://` and `wss://` with a certificate of this CA.
    pub tls: Option<PathBuf>,
}

impl Server {
    /// Starts a server with `vars` as its environment (vars and secrets,
    /// e.g. `JWT_SECRET`); call [`Server::wait_ready`] before using it.
    pub fn spawn(name: &str, vars: &[(&str, &str)]) -> Server {
        Server::spawn_on(name, vars, free_port())
    }

    /// [`Server::spawn`] on a given port (to restart a server in place).
    pub fn spawn_on(name: &str, vars: &[(&str, &str)], port: u16) -> Server {
        Server::launch(name, vars, port, None, None)
    }

    /// [`Server::spawn_on`] keeping its Durable Object storage in `state`,
    /// so a server started again with it finds what the last one stored.
    pub fn spawn_persistent(name: &str, vars: &[(&str, &str)], port: u16, state: &Path) -> Server {
        Server::launch(name, vars, port, None, Some(state))
    }

    /// [`Server::spawn`] over TLS with `ca`'s server certificate (for
    /// `localhost`); call [`Server::wait_ready`] before using it.
    pub fn spawn_tls(name: &str, vars: &[(&str, &str)], ca: &TestCa) -> Server {
        Server::launch(name, vars, free_port(), Some(ca), None)
    }

    fn launch(
        name: &str,
        vars: &[(&str, &str)],
        port: u16,
        ca: Option<&TestCa>,
        state: Option<&Path>,
    ) -> Server {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = root.join("build/wrangler.toml");
        assert!(
            config.exists() && root.join("build/worker/shim.mjs").exists(),
            "the worker is not built: run the tests with `make test`"
        );
        // "log" keeps the worker's console output, which main.rs checks for
        // leaked tokens; E2E_LOG_LEVEL overrides it.
        let log_level = std::env::var("E2E_LOG_LEVEL").unwrap_or_else(|_| "log".into());
        let process = DevServer::spawn(&Launch {
            root,
            config: &config,
            vars,
            name,
            port,
            log_level: &log_level,
            inspector: true,
            https: ca.map(|ca| Https {
                key: &ca.server_key,
                cert: &ca.server_cert,
            }),
            state,
        })
        .expect("spawn wrangler dev");
        Server {
            name: name.to_owned(),
            process,
            port,
            tls: ca.map(|ca| ca.ca_cert.clone()),
            secret: vars
                .iter()
                .find(|(k, _)| *k == "JWT_SECRET")
                .map(|(_, v)| v.to_string()),
        }
    }

    /// Waits for `/health` to answer 200; fails fast if wrangler exits.
    pub fn wait_ready(mut self) -> Server {
        let timeout = Duration::from_secs(90);
        let ready = match &self.tls {
            None => self.process.wait_ready(timeout),
            Some(ca) => {
                let trust = hopeflow_client::Trust::with_ca_file(ca).expect("test CA");
                self.process
                    .wait_until(timeout, |port| tls_health_ok(port, &trust))
            }
        };
        if let Err(why) = ready {
            panic!("{why}");
        }
        self
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn base_ws(&self) -> String {
        match self.tls {
            None => format!("ws://127.0.0.1:{}", self.port),
            Some(_) => format!("wss://localhost:{}", self.port),
        }
    }

    pub fn http(&self) -> String {
        match self.tls {
            None => format!("http://127.0.0.1:{}", self.port),
            Some(_) => format!("https://localhost:{}", self.port),
        }
    }

    pub fn ws(&self) -> String {
        format!("{}/", self.base_ws())
    }

    /// A request to `path` on this server.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http().request(method, format!("{}{path}", self.http()))
    }

    /// A token for `user_id` signed with the server's secret.
    pub fn token(&self, user_id: &str) -> String {
        let secret = self.secret.as_deref().expect("server has a secret");
        hopeflow_client::token::mint(secret, user_id, None, Default::default())
    }

    /// A token carrying the default operator scope.
    pub fn operator_token(&self) -> String {
        self.token_with(json!({"userId": "ops", "scope": "operator"}))
    }

    /// `method` on `/users/{user}/{route}`, the path the Rust client
    /// builds (`hopeflow_client::api::user_path`: the user id
    /// percent-encoded; one URLs cannot carry fails the test).
    pub fn user_route(
        &self,
        method: reqwest::Method,
        user: &str,
        route: &str,
    ) -> reqwest::RequestBuilder {
        let path = hopeflow_client::api::user_path(user, route)
            .unwrap_or_else(|why| panic!("no path for user {user:?}: {why}"));
        self.request(method, &path)
    }

    /// A token with arbitrary claims signed with the server's secret.
    pub fn token_with(&self, claims: Value) -> String {
        let secret = self.secret.as_deref().expect("server has a secret");
        sign(secret, &claims)
    }
}

/// Every server's output is audited as it stops (`support::logs`): no
/// token, secret, payload, result or filter value, no panic.
impl Drop for Server {
    fn drop(&mut self) {
        super::logs::audit(&self.name, &self.log());
    }
}

/// A server that can be stopped and started again on the same port with
/// the same Durable Object storage (removed on drop), as a restart of the
/// runtime keeps it.
pub struct Restartable {
    name: &'static str,
    secret: String,
    /// Settings besides `JWT_SECRET`.
    vars: Vec<(String, String)>,
    port: u16,
    state: PathBuf,
}

impl Restartable {
    pub fn new(name: &'static str, secret: String) -> Restartable {
        Restartable {
            name,
            secret,
            vars: Vec::new(),
            port: free_port(),
            state: std::env::temp_dir().join(format!("hopeflow-{}", unique_user(name))),
        }
    }

    /// This server with `vars` set too.
    pub fn with_vars(mut self, vars: &[(&'static str, &'static str)]) -> Restartable {
        self.vars
            .extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }

    /// This server with `name` set to `value` too (a value made at run
    /// time, e.g. the URL of a receiver the test runs).
    pub fn with_var(mut self, name: &str, value: impl Into<String>) -> Restartable {
        self.vars.push((name.to_owned(), value.into()));
        self
    }

    /// Starts it (again) and waits until it is ready.
    pub async fn start(&self) -> Server {
        let (name, secret, port, state) = (
            self.name,
            self.secret.clone(),
            self.port,
            self.state.clone(),
        );
        let extra = self.vars.clone();
        // Starting and stopping block; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut vars = vec![("JWT_SECRET", secret.as_str())];
            vars.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            Server::spawn_persistent(name, &vars, port, &state).wait_ready()
        })
        .await
        .expect("start")
    }

    pub async fn stop(server: Server) {
        tokio::task::spawn_blocking(move || drop(server))
            .await
            .expect("stop");
    }

    /// Stops `server` (started by this) as a crash would: its whole
    /// process group frozen, then killed, so the runtime runs nothing more,
    /// not even the close events of its sockets (which a stop delivers:
    /// wrangler's proxy goes first and the runtime sees its sockets close).
    pub async fn crash(&self, server: Server) {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let group = process_group_of(&state.to_string_lossy())
                .expect("the server's processes (by their --persist-to)");
            for signal in ["STOP", "KILL"] {
                let status = std::process::Command::new("bash")
                    .args(["-c", "kill -s \"$1\" -- \"-$2\"", "kill"])
                    .args([signal, &group.to_string()])
                    .status()
                    .expect("bash");
                assert!(status.success(), "kill -s {signal} -{group}");
            }
            // Stops what is left (nothing) and removes its files.
            drop(server);
        })
        .await
        .expect("crash");
    }
}

/// The process group of the process whose command line names `needle`.
fn process_group_of(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains(needle) {
                return None;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid pgrp ...`: split after the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(2)?.parse().ok()
        })
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
