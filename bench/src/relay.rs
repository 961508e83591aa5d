//! A TCP relay on a fixed port to wherever the runtime listens now.
//!
//! The clients of the redeploy storm reconnect to one URL, but a restarted
//! runtime listens on a new port (wrangler picks it). The relay forwards
//! each new connection to the port written in a file, read at every accept;
//! while the file says 0 (the runtime is down), it closes connections at
//! once, as a refused connection. It runs as a process of its own
//! (`hopeflow-bench --relay PORT FILE`): it holds two file descriptors per
//! socket, and this machine allows 20,000 per process (`ulimit -Hn`), so
//! the bench (one per socket) and the relay each stay under it up to
//! ~9,900 sockets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The relay process, stopped when dropped.
pub struct Relay {
    child: Child,
    pub port: u16,
    file: PathBuf,
}

impl Relay {
    /// Starts a relay to `target` and waits until it accepts.
    pub fn start(target: u16) -> Result<Relay, String> {
        let port = devserver::free_port();
        let file = std::env::temp_dir().join(format!(
            "hopeflow-bench-relay-{}-{port}",
            std::process::id()
        ));
        let relay_file = RelayFile(file.clone());
        relay_file.point_to(target)?;
        let exe = std::env::current_exe().map_err(|e| format!("relay: {e}"))?;
        let child = Command::new(exe)
            .arg("--relay")
            .arg(port.to_string())
            .arg(&file)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("relay: {e}"))?;
        let relay = Relay { child, port, file };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("relay did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(relay)
    }

    /// Sends new connections to `port` (0: refuse them).
    pub fn point_to(&self, port: u16) -> Result<(), String> {
        RelayFile(self.file.clone()).point_to(port)
    }
}

struct RelayFile(PathBuf);

impl RelayFile {
    /// Written to a temp file and renamed, so a reader sees all of it.
    fn point_to(&self, port: u16) -> Result<(), String> {
        let temp = self.0.with_extension("new");
        std::fs::write(&temp, port.to_string())
            .and_then(|()| std::fs::rename(&temp, &self.0))
            .map_err(|e| format!("relay file {}: {e}", self.0.display()))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn target(file: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(file).ok()?;
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// The relay process's main (`--relay PORT FILE`).
pub fn main(port: &str, file: &str) -> ExitCode {
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("--relay needs a port");
        return ExitCode::FAILURE;
    };
    let file = PathBuf::from(file);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("relay: bind {port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            let mut inbound = match listener.accept().await {
                Ok((inbound, _)) => inbound,
                Err(e) => {
                    // Out of file descriptors, say: the client sees a
                    // refused connection and retries.
                    eprintln!("relay: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(upstream) = target(&file) else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}
