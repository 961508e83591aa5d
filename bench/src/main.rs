//! `hopeflow-bench`: runs the same scenarios against hopeflow, the
//! JavaScript reference and the runtime's floor, each served by its own fresh
//! `wrangler dev`, interleaved round by round, and writes `latest.json`,
//! `latest.md` and `round-trip.svg`.
//!
//! Usage: `hopeflow-bench [--rounds N] [--smoke] [--out DIR] [--profile IMPL]`
//! (`make bench` runs it with the defaults; `--smoke` runs tiny sizes and
//! fails on any problem, for `make test`; `--profile hopeflow` writes a CPU
//! profile summary of that server under load instead of comparing;
//! `--via-proxy` sends the load through wrangler's dev proxy instead of to
//! the runtime's own port; `--quick` skips the connect storm and the 10,000
//! idle sockets, for trying a change).

mod profile;
mod relay;
mod report;
mod scale;
mod scenarios;
mod stats;
mod storm;
mod target;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::{json, Value};

use report::Run;
use scenarios::{Round, Sizes};
use target::{Impl, Serve, Target};

struct Args {
    rounds: usize,
    smoke: bool,
    out: PathBuf,
    profile: Option<Impl>,
    via_proxy: bool,
    quick: bool,
    /// `--profile-scenario`: rt, tp, fanout, publish-fanout, health or all.
    profile_scenario: String,
    /// `--only IMPL` (repeatable): compare only these servers.
    only: Vec<Impl>,
}

fn parse_args(root: &Path) -> Result<Args, String> {
    let mut args = Args {
        rounds: 3,
        smoke: false,
        out: root.join("bench/results"),
        profile: None,
        via_proxy: false,
        quick: false,
        profile_scenario: "all".into(),
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--rounds needs a positive number")?;
            }
            "--smoke" => args.smoke = true,
            "--via-proxy" => args.via_proxy = true,
            "--quick" => args.quick = true,
            "--profile-scenario" => {
                args.profile_scenario = it.next().ok_or("--profile-scenario needs rt, tp, fanout or all")?;
            }
            "--only" => {
                let name = it.next().unwrap_or_default();
                let which = Impl::RUN_ORDER.into_iter().find(|i| i.name() == name);
                args.only.push(which.ok_or(
                    "--only needs hopeflow, hopeflow-log-error, hopeflow-history-off, reference-js, reference-js-history-off, floor or hopeflow-webhooks",
                )?);
            }
            "--scenarios" => {
                let list = it.next().ok_or("--scenarios needs a comma-separated list")?;
                let _ = scenarios::ONLY.set(list.split(',').map(str::to_owned).collect());
            }
            "--out" => args.out = it.next().ok_or("--out needs a directory")?.into(),
            "--profile" => {
                let name = it.next().unwrap_or_default();
                let which = Impl::RUN_ORDER.into_iter().find(|i| i.name() == name);
                args.profile = Some(which.ok_or(
                    "--profile needs hopeflow, hopeflow-log-error, hopeflow-history-off, reference-js, reference-js-history-off or floor",
                )?);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: hopeflow-bench [--rounds N] [--smoke] [--out DIR] [--profile IMPL] [--via-proxy] [--quick] [--profile-scenario rt|tp|fanout|publish-fanout|health|all] [--only IMPL]... [--scenarios start,rt,tp,fanout,nobody,many,storm,idle,redeploy,cost,cap,wide]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.smoke {
        args.rounds = 1;
    }
    Ok(args)
}

/// A size overridden from the environment, for experiments.
fn env_size(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|n| n.parse().ok())
}

fn main() -> ExitCode {
    // The redeploy storm's relay runs as a process of its own (relay.rs).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--relay") {
        return relay::main(
            argv.get(2).map_or("", String::as_str),
            argv.get(3).map_or("", String::as_str),
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf();
    let args = match parse_args(&root) {
        Ok(args) => args,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    if args.quick {
        sizes.storm_sockets = 0;
        sizes.idle_sockets = 0;
    }
    if let Some(n) = env_size("BENCH_RT_WARMUP") {
        sizes.round_trip_warmup = n as u64;
    }
    // For a profile of a larger fan-out (`--profile-scenario publish-fanout`).
    if let Some(n) = env_size("BENCH_FANOUT_SOCKETS") {
        sizes.fanout_sockets = n;
    }
    // To see how the throughput's figures move with concurrency and fan-out.
    if let Some(n) = env_size("BENCH_TP_PUBLISHERS") {
        sizes.throughput_publishers = n;
    }
    if let Some(n) = env_size("BENCH_TP_SOCKETS") {
        sizes.throughput_sockets = n;
    }
    if let Some(n) = env_size("BENCH_TP_SECS") {
        sizes.throughput_secs = n as u64;
    }
    if let Some(n) = env_size("BENCH_CAP_SOCKETS") {
        sizes.cap_sockets = n;
    }
    if let Some(n) = env_size("BENCH_BROADCAST_USERS") {
        sizes.broadcast_users = n;
    }
    if let Some(n) = env_size("BENCH_BROADCAST_CONCURRENCY") {
        sizes.broadcast_concurrency = n;
    }
    if let Some(n) = env_size("BENCH_REDEPLOY_USERS") {
        sizes.redeploy_users = n;
    }
    if let Some(n) = env_size("BENCH_REDEPLOY_SOCKETS") {
        sizes.redeploy_sockets_per_user = n;
    }
    if let Some(n) = env_size("BENCH_REDEPLOY_RATE") {
        sizes.redeploy_rate = n as u64;
    }
    if let Ok(pair) = std::env::var("BENCH_STORM_BACKOFF_MS") {
        let parsed = pair
            .split_once(',')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        sizes.redeploy_backoff_ms = parsed;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _inside = runtime.enter();

    if let Some(which) = args.profile {
        return profile(which, &root, &sizes, &args, &runtime);
    }

    let header = json!({
        "command": command_line(),
        "started": shell("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "rounds": args.rounds,
        "route": if args.via_proxy {
            "through wrangler's dev proxy"
        } else {
            "to the runtime's own port (wrangler's dev proxy skipped)"
        },
        "server": "wrangler's startWorker (the API behind `wrangler dev`) without the DevTools inspector: devserver/serve.mjs",
        "state": target::state_base().display().to_string(),
        "order": Impl::RUN_ORDER.map(Impl::name),
        "machine": machine(&root),
        "sizes": sizes,
        "bundle": bundle(&root),
    });

    let mut run = Run { rounds: Vec::new() };
    for round_no in 1..=args.rounds {
        for which in Impl::RUN_ORDER {
            if !args.only.is_empty() && !args.only.contains(&which) {
                continue;
            }
            eprintln!("round {round_no}/{}: {}", args.rounds, which.name());
            let mut round = Round::default();
            let serve = Serve {
                via_proxy: args.via_proxy,
                inspector: false,
            };
            match Target::start(which, &root, serve) {
                Ok(mut target) => {
                    runtime.block_on(scenarios::run_all(
                        &mut target,
                        &sizes,
                        which.scenarios(),
                        &mut round,
                    ));
                    if !round.problems.is_empty() {
                        let log = target.log();
                        let tail = &log[log.len().saturating_sub(2_000)..];
                        eprintln!("  problems: {:?}\n  log tail:\n{tail}", round.problems);
                    }
                }
                Err(why) => round.problems.push(format!("start: {why}")),
            }
            run.rounds.push((which, round));
            // The stopped server's sockets and processes take a while to
            // wind down; the next server should not share the CPU with that.
            wait_for_quiet_cpu();
        }
    }

    let results = report::json(&run, header);
    let markdown = report::markdown(&run, &results);
    let written = std::fs::create_dir_all(&args.out)
        .and_then(|()| {
            std::fs::write(
                args.out.join("latest.json"),
                serde_json::to_string_pretty(&results).unwrap_or_default() + "\n",
            )
        })
        .and_then(|()| std::fs::write(args.out.join("latest.md"), &markdown))
        .and_then(|()| std::fs::write(args.out.join("round-trip.svg"), report::svg(&run)))
        .and_then(|()| match report::redeploy_svg(&run) {
            Some(svg) => std::fs::write(args.out.join("redeploy.svg"), svg),
            None => Ok(()),
        });
    if let Err(e) = written {
        eprintln!("writing {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    println!("{markdown}");
    println!("written to {}", args.out.display());
    let problems = run.problems();
    if args.smoke && !problems.is_empty() {
        eprintln!("bench smoke failed: {problems:#?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn profile(
    which: Impl,
    root: &Path,
    sizes: &Sizes,
    args: &Args,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let out = args.out.as_path();
    let serve = Serve {
        via_proxy: args.via_proxy,
        inspector: true,
    };
    let summary = Target::start(which, root, serve)
        .and_then(|target| runtime.block_on(profile::run(&target, sizes, &args.profile_scenario)));
    let summary = match summary {
        Ok(summary) => summary,
        Err(why) => {
            eprintln!("profile of {}: {why}", which.name());
            return ExitCode::FAILURE;
        }
    };
    let file = out.join(format!(
        "profile-{}-{}.md",
        which.name(),
        args.profile_scenario
    ));
    let text = format!(
        "# CPU profile: {} under scenario(s) {}\n\nCommand: `{}`\n\n{summary}",
        which.name(),
        args.profile_scenario,
        command_line()
    );
    if let Err(e) = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&file, &text)) {
        eprintln!("writing {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    println!("{text}\nwritten to {}", file.display());
    ExitCode::SUCCESS
}

/// Waits (up to 30 s) until the machine's CPUs are at most 25 % busy over
/// half a second, from /proc/stat.
fn wait_for_quiet_cpu() {
    fn busy_and_total() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        // idle and iowait.
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some((total - idle, total))
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some((busy0, total0)) = busy_and_total() else {
            return;
        };
        std::thread::sleep(std::time::Duration::from_millis(500));
        let Some((busy1, total1)) = busy_and_total() else {
            return;
        };
        let share = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
        if share <= 0.25 {
            return;
        }
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match std::env::var("BENCH_COMMAND") {
        Ok(outer) => format!("{outer} (hopeflow-bench {})", args.join(" ")),
        Err(_) => format!("hopeflow-bench {}", args.join(" ")),
    }
    .trim_end()
    .to_string()
}

/// A command's trimmed stdout, or "?" when it cannot run.
fn shell(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn machine(root: &Path) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1_048_576.0);
    let kernel = shell("uname", &["-sr"]);
    let rustc = shell("rustc", &["--version"]);
    let node = shell("node", &["--version"]);
    let wrangler = std::fs::read_to_string(root.join("node_modules/wrangler/package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "kernel": kernel,
        "rustc": rustc,
        "node": node,
        "wrangler": wrangler,
        "summary": format!(
            "{cpu}, {cores} cores, {mem_gib:.1} GiB, {kernel}; {rustc}; node {node}; wrangler {wrangler}; \
             load generator on the same machine"
        ),
    })
}

/// Raw and gzip -9 sizes of what each implementation deploys.
fn bundle(root: &Path) -> Value {
    let files = [
        "build/worker/index.wasm",
        "build/worker/shim.mjs",
        "bench/servers/reference-js/src/index.js",
        "bench/servers/floor/src/index.js",
    ];
    files
        .iter()
        .filter_map(|file| {
            let path = root.join(file);
            let raw = std::fs::metadata(&path).ok()?.len();
            let gzip = Command::new("gzip")
                .args(["-9", "-c"])
                .arg(&path)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| o.stdout.len());
            Some(json!({ "file": file, "raw": raw, "gzip": gzip }))
        })
        .collect()
}
