//! Runs a worker under `wrangler dev` for tests and benchmarks.
//!
//! One [`DevServer`] is one `wrangler dev` process in its own process group
//! (wrangler starts workerd as a child), with its own temp dir for the env
//! file, the persisted state and the log. Dropping it stops the whole group,
//! also when the caller panics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to start one server.
pub struct Launch<'a> {
    /// The repository root (holds `node_modules/.bin/wrangler`).
    pub root: &'a Path,
    /// The wrangler config to serve.
    pub config: &'a Path,
    /// Vars and secrets, written to an env file.
    pub vars: &'a [(&'a str, &'a str)],
    /// Names the temp dir, for finding logs.
    pub name: &'a str,
    pub port: u16,
    /// wrangler's `--log-level`.
    pub log_level: &'a str,
    /// Attach the DevTools inspector, as `wrangler dev` always does. Without
    /// it the server runs through `serve.mjs` (wrangler's `startWorker`, the
    /// API behind `wrangler dev`): the inspector streams an event per request
    /// to wrangler's node process, which then takes CPU from the runtime.
    pub inspector: bool,
    /// Serve `https://` and `wss://` with this key and certificate (PEM),
    /// as `wrangler dev --local-protocol https` does; needs `inspector`
    /// (the `wrangler dev` CLI). Probe readiness with [`DevServer::wait_until`].
    pub https: Option<Https<'a>>,
    /// Keep the persisted state (Durable Object storage) here instead of
    /// in the server's temp dir, so a server started again with the same
    /// dir finds it; the caller removes it.
    pub state: Option<&'a Path>,
}

/// A server key and certificate, PEM files.
#[derive(Clone, Copy)]
pub struct Https<'a> {
    pub key: &'a Path,
    pub cert: &'a Path,
}

/// A running `wrangler dev`.
pub struct DevServer {
    child: Child,
    dir: PathBuf,
    port: u16,
    inspector_port: Option<u16>,
    started: Instant,
}

impl DevServer {
    /// Starts the server; call [`DevServer::wait_ready`] before using it.
    pub fn spawn(launch: &Launch) -> std::io::Result<DevServer> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hopeflow-dev-{}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst),
            launch.name
        ));
        std::fs::create_dir_all(&dir)?;
        let env_file = dir.join("server.env");
        let lines: String = launch
            .vars
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(&env_file, lines)?;
        let log = std::fs::File::create(dir.join("wrangler.log"))?;
        let inspector_port = free_port();
        let state = launch
            .state
            .map_or_else(|| dir.join("state"), Path::to_path_buf);
        let started = Instant::now();
        let mut command = if launch.inspector {
            let mut command = Command::new(launch.root.join("node_modules/.bin/wrangler"));
            command
                .args(["dev", "--config"])
                .arg(launch.config)
                // wrangler resolves a relative --env-file against the
                // config's directory, so it must be absolute.
                .arg("--env-file")
                .arg(&env_file)
                .arg("--persist-to")
                .arg(&state)
                .args(["--ip", "127.0.0.1", "--port", &launch.port.to_string()])
                .args(["--inspector-port", &inspector_port.to_string()])
                .arg("--show-interactive-dev-session=false")
                .args(["--log-level", launch.log_level]);
            if let Some(https) = launch.https {
                command
                    .args(["--local-protocol", "https", "--https-key-path"])
                    .arg(https.key)
                    .arg("--https-cert-path")
                    .arg(https.cert);
            }
            command
        } else {
            if launch.https.is_some() {
                return Err(std::io::Error::other(
                    "https needs the wrangler dev CLI: set inspector",
                ));
            }
            let mut command = Command::new("node");
            command
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("serve.mjs"))
                .arg(launch.config)
                .arg(launch.port.to_string())
                .arg(&env_file)
                .arg(&state)
                .arg(launch.log_level);
            command
        };
        let child = command
            .current_dir(launch.root)
            .env("WRANGLER_SEND_METRICS", "false")
            .env("WRANGLER_SEND_ERROR_REPORTS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group, so stopping the group also stops workerd.
            .process_group(0)
            .spawn()?;
        Ok(DevServer {
            child,
            dir,
            port: launch.port,
            inspector_port: launch.inspector.then_some(inspector_port),
            started,
        })
    }

    /// Waits until `GET /health` answers 200 and returns the time since the
    /// spawn; fails fast with the log if wrangler exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        self.wait_until(timeout, health_ok)
    }

    /// Waits until `probe(port)` is true (e.g. a `GET /health` over TLS)
    /// and returns the time since the spawn; fails fast if wrangler exits.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut(u16) -> bool,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("wrangler dev exited ({status}):\n{}", self.log()));
            }
            if probe(self.port) {
                return Ok(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "wrangler dev did not become ready:\n{}",
            self.log()
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Chrome DevTools protocol port of the worker (for profiling).
    pub fn inspector_port(&self) -> Option<u16> {
        self.inspector_port
    }

    /// Everything wrangler and the worker printed so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("wrangler.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let group = self.child.id();
        signal_group(group, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // workerd may outlive wrangler: make sure nothing of the group is left.
        signal_group(group, "KILL");
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends a signal to a process group with bash's builtin `kill`: procps'
/// /usr/bin/kill on these machines mis-parses `kill -TERM -<pgid>` and
/// signals far more than the group.
fn signal_group(group: u32, signal: &str) {
    let _ = Command::new("bash")
        .args(["-c", "kill -s \"$1\" -- \"-$2\" 2>/dev/null", "kill"])
        .args([signal, &group.to_string()])
        .status();
}

/// `getconf CLK_TCK`: the unit of the CPU times in /proc (100 on Linux).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A port nothing listens on right now, below the kernel's ephemeral range
/// (`ip_local_port_range`). A port the kernel handed out for `bind(0)` and
/// we released could be handed out again, to one of the runtime's own
/// sockets, before wrangler binds it ("Address already in use" when six
/// servers start at once); a port below the range is never handed out.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // 12,000 ports under the range, walked from a start that differs per
    // process, so concurrent test processes rarely meet.
    let span = 12_000usize
        .min(usize::from(low).saturating_sub(2_000))
        .max(1);
    let base = usize::from(low) - span;
    let start = (std::process::id() as usize).wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::SeqCst)) % span;
        let port = (base + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// How long [`health_ok`] waits for the answer; a caller of
/// [`health_ok_over`] sets it on its own socket.
pub const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A blocking `GET /health` on 127.0.0.1:`port`, so start-up needs no async
/// runtime.
pub fn health_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(HEALTH_READ_TIMEOUT));
    health_ok_over(&mut stream, "127.0.0.1")
}

/// [`health_ok`] over a connection the caller opened (a TLS stream, say),
/// with `host` as the `Host` header: sends `GET /health` and reads until
/// the server closes; true when it answered 200.
pub fn health_ok_over(stream: &mut (impl Read + Write), host: &str) -> bool {
    let request = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

/// utime + stime of a `/proc/.../stat` file, in clock ticks.
fn cpu_ticks(path: impl AsRef<Path>) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the comm: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(
        [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum(),
    )
}

/// The `workerd` processes of `group` other than wrangler's dev proxy (the
/// one listening on `proxy_port`): the runtime that runs the worker itself.
fn runtime_pids(group: u32, proxy_port: u16) -> Vec<u32> {
    let proxy_entry = format!("entry=127.0.0.1:{proxy_port}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so
            // split after the last ')'.
            let (head, rest) = stat.rsplit_once(')')?;
            let pgrp: u32 = rest.split_whitespace().nth(2)?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            (head.contains("(workerd") && pgrp == group && !cmdline.contains(&proxy_entry))
                .then_some(pid)
        })
        .collect()
}

impl DevServer {
    /// Resident memory (bytes) of the runtime running the worker, without
    /// wrangler's dev proxy (which Cloudflare does not have and which costs
    /// more per socket than the runtime itself).
    pub fn runtime_rss(&self) -> Option<u64> {
        let pids = runtime_pids(self.child.id(), self.port);
        let mut total = None;
        for pid in pids {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let resident_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            *total.get_or_insert(0) += resident_kib * 1024;
        }
        total
    }

    /// CPU time (user + system, seconds) the runtime running the worker has
    /// used so far; less disturbed by other tenants of a shared machine than
    /// wall-clock time.
    pub fn runtime_cpu_secs(&self) -> Option<f64> {
        let ticks_per_sec = clock_ticks_per_sec();
        let mut total = None;
        for pid in runtime_pids(self.child.id(), self.port) {
            let Some(ticks) = cpu_ticks(format!("/proc/{pid}/stat")) else {
                continue;
            };
            *total.get_or_insert(0.0) += ticks as f64 / ticks_per_sec;
        }
        total
    }

    /// The CPU seconds (user + system) of the runtime's threads other than
    /// its main one, where the isolate runs: V8's helper threads, which
    /// compile optimized code and collect garbage in the background. With
    /// [`DevServer::runtime_cpu_secs`] it splits what a publish costs.
    pub fn runtime_helper_cpu_secs(&self) -> Option<f64> {
        let ticks_per_sec = clock_ticks_per_sec();
        let mut total = None;
        for pid in runtime_pids(self.child.id(), self.port) {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                if task.file_name().to_str() == Some(pid.to_string().as_str()) {
                    continue;
                }
                if let Some(ticks) = cpu_ticks(task.path().join("stat")) {
                    *total.get_or_insert(0.0) += ticks as f64 / ticks_per_sec;
                }
            }
        }
        total
    }

    /// The port where the runtime itself serves the worker, behind wrangler's
    /// dev proxy: found among the runtime's listening sockets as the one
    /// whose `/health` answers 200. Connecting there skips the proxy, which
    /// holds 6 file descriptors per WebSocket (measured: 6,034 with 1,000
    /// sockets open) and so runs out of them long before the runtime does.
    pub fn runtime_port(&self) -> Option<u16> {
        let mut ports = Vec::new();
        for pid in runtime_pids(self.child.id(), self.port) {
            let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| {
                    let target = std::fs::read_link(fd.path()).ok()?;
                    let target = target.to_str()?;
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect();
            let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
            for line in table.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is HEX_IP:HEX_PORT, st 0A is LISTEN.
                let (Some(local), Some(&"0A"), Some(inode)) =
                    (fields.get(1), fields.get(3), fields.get(9))
                else {
                    continue;
                };
                if !inodes.iter().any(|i| i == inode) {
                    continue;
                }
                if let Some(port) = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
        ports.into_iter().find(|&port| health_ok(port))
    }
}
