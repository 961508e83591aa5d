//! Turns the rounds into `latest.json`, `latest.md` and `round-trip.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::scenarios::Round;
use crate::stats::median;
use crate::target::Impl;

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
    /// Context, not a score (e.g. absolute memory).
    Neither,
}

struct Metric {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
}

const fn metric(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        better,
    }
}

/// Every figure, in the order of the summary table.
const METRICS: &[Metric] = &[
    metric("rt_p50_ms", "round trip p50", "ms", Better::Lower),
    metric("rt_p90_ms", "round trip p90", "ms", Better::Lower),
    metric("rt_p99_ms", "round trip p99", "ms", Better::Lower),
    metric("rt_max_ms", "round trip max", "ms", Better::Lower),
    metric(
        "rt_cpu_us",
        "round trip: runtime CPU per publish",
        "µs",
        Better::Lower,
    ),
    metric(
        "rt_helper_cpu_us",
        "round trip: of which helper threads (V8 compiling, GC)",
        "µs",
        Better::Lower,
    ),
    metric(
        "tp_publishes_per_s",
        "throughput: publishes",
        "/s",
        Better::Higher,
    ),
    metric("tp_acks_per_s", "throughput: acks", "/s", Better::Higher),
    metric(
        "tp_cpu_us",
        "throughput: runtime CPU per publish",
        "µs",
        Better::Lower,
    ),
    metric(
        "tp_helper_cpu_us",
        "throughput: of which helper threads (V8 compiling, GC)",
        "µs",
        Better::Lower,
    ),
    metric(
        "fanout_p50_ms",
        "fan-out: all acks in, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "fanout_max_ms",
        "fan-out: all acks in, max",
        "ms",
        Better::Lower,
    ),
    metric(
        "fanout_cpu_ms",
        "fan-out: runtime CPU per publish",
        "ms",
        Better::Lower,
    ),
    metric(
        "nobody_p50_ms",
        "nobody listening: publish p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "nobody_p90_ms",
        "nobody listening: publish p90",
        "ms",
        Better::Lower,
    ),
    metric(
        "nobody_p99_ms",
        "nobody listening: publish p99",
        "ms",
        Better::Lower,
    ),
    metric(
        "nobody_cpu_us",
        "nobody listening: runtime CPU per publish",
        "µs",
        Better::Lower,
    ),
    metric(
        "users_publishes_per_s",
        "many users, 1 socket each: publishes",
        "/s",
        Better::Higher,
    ),
    metric(
        "users_cpu_us",
        "many users: runtime CPU per publish",
        "µs",
        Better::Lower,
    ),
    metric(
        "storm_total_ms",
        "connect storm: all subscribed",
        "ms",
        Better::Lower,
    ),
    metric(
        "storm_connect_p50_ms",
        "connect storm: one socket p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "storm_connect_p99_ms",
        "connect storm: one socket p99",
        "ms",
        Better::Lower,
    ),
    metric(
        "idle_sockets_reached",
        "idle sockets opened",
        "",
        Better::Higher,
    ),
    metric(
        "idle_bytes_per_socket",
        "memory per idle socket",
        "B",
        Better::Lower,
    ),
    metric(
        "idle_rss_before_mib",
        "runtime RSS before idle sockets",
        "MiB",
        Better::Neither,
    ),
    metric(
        "idle_rss_after_mib",
        "runtime RSS with idle sockets",
        "MiB",
        Better::Neither,
    ),
    metric(
        "idle_fanout_p50_ms",
        "fan-out to all idle sockets, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "cost_worker_requests_per_publish",
        "cost: worker requests per publish (counted)",
        "",
        Better::Neither,
    ),
    metric(
        "cost_ws_in_per_publish",
        "cost: incoming WebSocket messages per publish (acks counted)",
        "",
        Better::Neither,
    ),
    metric(
        "cost_webhook_requests_per_publish",
        "cost: webhook requests per publish (received)",
        "",
        Better::Lower,
    ),
    metric(
        "cost_webhook_events_per_publish",
        "cost: webhook events per publish (received)",
        "",
        Better::Lower,
    ),
    metric(
        "cost_webhook_events_seen",
        "cost: webhook events the receiver got in all (user.online...)",
        "",
        Better::Neither,
    ),
    metric(
        "cost_rows_written_per_publish",
        "cost: SQLite rows written per publish (from the storage file)",
        "",
        Better::Lower,
    ),
    metric(
        "cost_cpu_ms_per_publish",
        "cost: runtime CPU per publish (this machine)",
        "ms",
        Better::Lower,
    ),
    metric(
        "cost_awake_ms_per_publish",
        "cost: object busy per publish (request to answer, mean)",
        "ms",
        Better::Lower,
    ),
    metric(
        "cost_publish_p50_ms",
        "cost: publish to 2 acking sockets, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_sockets_reached",
        "one user at the cap: sockets",
        "",
        Better::Higher,
    ),
    metric(
        "cap_connect_ms",
        "one user at the cap: time to connect them all",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_bytes_per_socket",
        "one user at the cap: runtime memory per socket",
        "B",
        Better::Lower,
    ),
    metric(
        "cap_rss_mib",
        "one user at the cap: runtime RSS",
        "MiB",
        Better::Neither,
    ),
    metric(
        "cap_fanout_p50_ms",
        "one user at the cap: fan-out to all, every ack in, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_first_delivery_p50_ms",
        "one user at the cap: publish to the first socket's delivery, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_fanout_cpu_ms",
        "one user at the cap: runtime CPU per fan-out",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_woken_first_delivery_ms",
        "one user at the cap: after hibernation, publish to the first delivery",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_woken_fanout_ms",
        "one user at the cap: after hibernation, fan-out to all",
        "ms",
        Better::Lower,
    ),
    metric(
        "cap_woken_cpu_ms",
        "one user at the cap: after hibernation, runtime CPU of that publish",
        "ms",
        Better::Lower,
    ),
    metric(
        "wide_batch_p50_ms",
        "wide: /publish/batch to 100 users × 2 acking sockets, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "wide_batch_p99_ms",
        "wide: that batch, p99",
        "ms",
        Better::Lower,
    ),
    metric(
        "wide_batch_cpu_us_per_user",
        "wide: that batch, runtime CPU per user",
        "µs",
        Better::Lower,
    ),
    metric(
        "wide_singles_p50_ms",
        "wide: 100 single publishes at once, all answered, p50",
        "ms",
        Better::Lower,
    ),
    metric(
        "wide_singles_p99_ms",
        "wide: 100 singles at once, p99",
        "ms",
        Better::Lower,
    ),
    metric(
        "wide_singles_cpu_us_per_user",
        "wide: 100 singles at once, runtime CPU per user",
        "µs",
        Better::Lower,
    ),
    metric(
        "broadcast_total_ms",
        "broadcast to many users (no sockets; 1,000 by default) as batches of 100: total",
        "ms",
        Better::Lower,
    ),
    metric(
        "broadcast_cpu_us_per_user",
        "broadcast: runtime CPU per user",
        "µs",
        Better::Lower,
    ),
    metric(
        "redeploy_sockets",
        "redeploy storm: sockets",
        "",
        Better::Neither,
    ),
    metric(
        "redeploy_ready_ms",
        "redeploy storm: drop to the restarted runtime's /health 200",
        "ms",
        Better::Neither,
    ),
    metric(
        "redeploy_back_p50_ms",
        "redeploy storm: 50 % of sockets back (drop to subscribed)",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_back_p99_ms",
        "redeploy storm: 99 % back",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_back_p100_ms",
        "redeploy storm: 100 % back",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_resumed_p50_ms",
        "redeploy storm: 50 % resumed complete",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_resumed_p99_ms",
        "redeploy storm: 99 % resumed complete",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_resumed_p100_ms",
        "redeploy storm: 100 % resumed complete",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_publishes",
        "redeploy storm: publishes answered 200 (matching the filters)",
        "",
        Better::Neither,
    ),
    metric(
        "redeploy_lost",
        "redeploy storm: envelopes lost (a socket never got one answered 200)",
        "",
        Better::Lower,
    ),
    metric(
        "redeploy_doubled",
        "redeploy storm: envelopes delivered twice",
        "",
        Better::Lower,
    ),
    metric(
        "redeploy_failed_publishes",
        "redeploy storm: publishes failed for good",
        "",
        Better::Lower,
    ),
    metric(
        "redeploy_retried_publishes",
        "redeploy storm: publish requests sent again (same idempotency key)",
        "",
        Better::Neither,
    ),
    metric(
        "redeploy_attempts_per_socket",
        "redeploy storm: connection attempts per socket",
        "",
        Better::Lower,
    ),
    metric(
        "redeploy_storm_cpu_ms",
        "redeploy storm: runtime CPU, ready to 100 % back",
        "ms",
        Better::Lower,
    ),
    metric(
        "redeploy_boot_cpu_ms",
        "redeploy storm: runtime CPU, start to ready",
        "ms",
        Better::Neither,
    ),
    metric(
        "ready_ms",
        "start: spawn to first /health 200",
        "ms",
        Better::Lower,
    ),
    metric(
        "first_publish_ms",
        "first publish after start",
        "ms",
        Better::Lower,
    ),
    metric(
        "second_object_publish_ms",
        "then a publish to a second new user",
        "ms",
        Better::Lower,
    ),
    metric(
        "first_object_again_ms",
        "then the first user again",
        "ms",
        Better::Lower,
    ),
];

/// The figures of the history on ÷ off comparison (the scenarios the
/// history-off server runs).
const HISTORY_METRICS: &[&str] = &[
    "rt_p50_ms",
    "rt_p90_ms",
    "rt_p99_ms",
    "rt_cpu_us",
    "rt_helper_cpu_us",
    "tp_publishes_per_s",
    "tp_cpu_us",
    "tp_helper_cpu_us",
    "nobody_p50_ms",
    "nobody_cpu_us",
    "first_publish_ms",
];

/// All rounds of all implementations, in run order.
pub struct Run {
    pub rounds: Vec<(Impl, Round)>,
}

impl Run {
    fn of(&self, which: Impl) -> impl Iterator<Item = &Round> {
        self.rounds
            .iter()
            .filter(move |(w, _)| *w == which)
            .map(|(_, r)| r)
    }

    /// The median across rounds of every figure, per implementation.
    fn medians(&self) -> BTreeMap<Impl, BTreeMap<&'static str, f64>> {
        Impl::RUN_ORDER
            .iter()
            .map(|&which| {
                let figures = METRICS
                    .iter()
                    .filter_map(|m| {
                        let values: Vec<f64> = self
                            .of(which)
                            .filter_map(|r| r.metrics.get(m.key).copied())
                            .collect();
                        median(&values).map(|v| (m.key, v))
                    })
                    .collect();
                (which, figures)
            })
            .collect()
    }

    /// The median over rounds of hopeflow ÷ `other` within the same round.
    /// Servers of one round run minutes apart, under the same conditions of
    /// this shared machine, so this cancels more of the drift between rounds
    /// than the ratio of the medians does.
    fn paired_ratio(&self, other: Impl, key: &str) -> Option<f64> {
        self.paired_ratio_of(Impl::Hopeflow, other, key)
    }

    /// `ours ÷ other` paired by round for each of `keys` that both have,
    /// into `ratios` as "ours/other paired by round".
    fn insert_paired(
        &self,
        ratios: &mut Map<String, Value>,
        ours: Impl,
        other: Impl,
        keys: impl Iterator<Item = &'static str>,
    ) {
        let paired: BTreeMap<&str, f64> = keys
            .filter_map(|key| self.paired_ratio_of(ours, other, key).map(|r| (key, r)))
            .collect();
        ratios.insert(
            format!("{}/{} paired by round", ours.name(), other.name()),
            json!(paired),
        );
    }

    /// [`Run::paired_ratio`] of any two servers: `ours` ÷ `other`.
    fn paired_ratio_of(&self, ours: Impl, other: Impl, key: &str) -> Option<f64> {
        let ours = self.of(ours).map(|r| r.metrics.get(key).copied());
        let theirs = self.of(other).map(|r| r.metrics.get(key).copied());
        let ratios: Vec<f64> = ours.zip(theirs).filter_map(|(a, b)| ratio(a, b)).collect();
        median(&ratios)
    }

    pub fn problems(&self) -> Vec<String> {
        self.rounds
            .iter()
            .enumerate()
            .flat_map(|(i, (which, round))| {
                round.problems.iter().map(move |p| {
                    format!(
                        "round {} {}: {p}",
                        i / Impl::RUN_ORDER.len() + 1,
                        which.name()
                    )
                })
            })
            .collect()
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn json(run: &Run, header: Value) -> Value {
    let medians = run.medians();
    let mut results = Map::new();
    for which in Impl::RUN_ORDER {
        let rounds: Vec<Value> = run.of(which).map(|r| json!(r.metrics)).collect();
        let round_trips: Vec<f64> = run
            .of(which)
            .flat_map(|r| r.round_trips_ms.clone())
            .collect();
        let timelines: Vec<Value> = run
            .of(which)
            .flat_map(|r| r.redeploy.iter().map(|t| json!(t)))
            .collect();
        results.insert(
            which.name().into(),
            json!({
                "median": medians[&which],
                "rounds": rounds,
                "round_trip_samples_ms": round_trips,
                "redeploy_timelines": timelines,
            }),
        );
    }
    let mut ratios = Map::new();
    for other in [Impl::ReferenceJs, Impl::Floor] {
        let figures: BTreeMap<&str, f64> = METRICS
            .iter()
            .filter_map(|m| {
                let r = ratio(
                    medians[&Impl::Hopeflow].get(m.key).copied(),
                    medians[&other].get(m.key).copied(),
                );
                r.map(|r| (m.key, r))
            })
            .collect();
        ratios.insert(format!("hopeflow/{}", other.name()), json!(figures));
        let all = METRICS.iter().map(|m| m.key);
        run.insert_paired(&mut ratios, Impl::Hopeflow, other, all);
    }
    let history = HISTORY_METRICS.iter().copied();
    run.insert_paired(
        &mut ratios,
        Impl::Hopeflow,
        Impl::HopeflowHistoryOff,
        history.clone(),
    );
    run.insert_paired(
        &mut ratios,
        Impl::HopeflowHistoryOff,
        Impl::ReferenceJsHistoryOff,
        history.clone(),
    );
    run.insert_paired(&mut ratios, Impl::Hopeflow, Impl::HopeflowLogError, history);
    let mut out = header;
    out["results"] = Value::Object(results);
    out["ratios"] = Value::Object(ratios);
    out["problems"] = json!(run.problems());
    out
}

fn number(value: f64, unit: &str) -> String {
    let digits = if value.abs() >= 100.0 {
        0
    } else if value.abs() >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    if unit.is_empty() {
        text
    } else {
        format!("{text} {unit}")
    }
}

/// A figure, or `–` when the server has none.
fn number_cell(value: Option<f64>, unit: &str) -> String {
    value.map_or("–".to_string(), |v| number(v, unit))
}

/// A ratio, marked when it is worse for hopeflow.
fn ratio_cell(r: Option<f64>, better: Better) -> String {
    match r {
        None => "–".into(),
        Some(r) => {
            let worse = match better {
                Better::Lower => r > 1.0,
                Better::Higher => r < 1.0,
                Better::Neither => false,
            };
            format!("{r:.2}{}", if worse { " ▲" } else { "" })
        }
    }
}

pub fn markdown(run: &Run, header: &Value) -> String {
    let medians = run.medians();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    let _ = writeln!(
        md,
        "Command: `{}` · started {} · {} rounds, servers interleaved {}\n",
        header["command"].as_str().unwrap_or("?"),
        header["started"].as_str().unwrap_or("?"),
        header["rounds"],
        Impl::RUN_ORDER.map(Impl::name).join(" → "),
    );
    let _ = writeln!(
        md,
        "Machine: {}\n",
        header["machine"]["summary"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        md,
        "Servers: {}. Clients connect {}. Durable Object storage under `{}` (`BENCH_STATE_DIR`).\n",
        header["server"].as_str().unwrap_or("?"),
        header["route"].as_str().unwrap_or("?"),
        header["state"].as_str().unwrap_or("the system temp dir")
    );
    let _ = writeln!(md, "Sizes: `{}`\n", header["sizes"]);
    let _ = writeln!(
        md,
        "Medians across rounds. Ratios are hopeflow ÷ the other: of the medians, and \"paired\", the median of the ratios within each round (rounds drift on a shared machine; the paired ratio cancels more of that). ▲ marks a ratio where hopeflow is worse.\n"
    );
    let _ = writeln!(
        md,
        "| figure | hopeflow | reference-js | floor | ÷ reference-js | ÷ floor | ÷ reference-js, paired | ÷ floor, paired |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in METRICS {
        let cell = |which: Impl| number_cell(medians[&which].get(m.key).copied(), m.unit);
        let h = medians[&Impl::Hopeflow].get(m.key).copied();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.label,
            cell(Impl::Hopeflow),
            cell(Impl::ReferenceJs),
            cell(Impl::Floor),
            ratio_cell(
                ratio(h, medians[&Impl::ReferenceJs].get(m.key).copied()),
                m.better
            ),
            ratio_cell(
                ratio(h, medians[&Impl::Floor].get(m.key).copied()),
                m.better
            ),
            ratio_cell(run.paired_ratio(Impl::ReferenceJs, m.key), m.better),
            ratio_cell(run.paired_ratio(Impl::Floor, m.key), m.better),
        );
    }
    let _ = writeln!(md, "\n## History off on both\n");
    let _ = writeln!(
        md,
        "Both servers with `HISTORY_SIZE=0` (no storage write per publish), in the same rounds.\n"
    );
    let _ = writeln!(
        md,
        "| figure | hopeflow-history-off | reference-js-history-off | ÷ | ÷, paired |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for m in METRICS.iter().filter(|m| HISTORY_METRICS.contains(&m.key)) {
        let ours = medians[&Impl::HopeflowHistoryOff].get(m.key).copied();
        let theirs = medians[&Impl::ReferenceJsHistoryOff].get(m.key).copied();
        let cell = |v: Option<f64>| number_cell(v, m.unit);
        let paired =
            run.paired_ratio_of(Impl::HopeflowHistoryOff, Impl::ReferenceJsHistoryOff, m.key);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            m.label,
            cell(ours),
            cell(theirs),
            ratio_cell(ratio(ours, theirs), m.better),
            ratio_cell(paired, m.better),
        );
    }
    let _ = writeln!(md, "\n## What history costs\n");
    let _ = writeln!(
        md,
        "Each server as deployed (history on, `HISTORY_SIZE=100`: a storage write per publish) against itself with `HISTORY_SIZE=0`, in the same rounds.\n"
    );
    let _ = writeln!(
        md,
        "| figure | hopeflow on | hopeflow off | on ÷ off, paired | reference-js on | reference-js off | on ÷ off, paired |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for m in METRICS.iter().filter(|m| HISTORY_METRICS.contains(&m.key)) {
        let cell = |which: Impl| number_cell(medians[&which].get(m.key).copied(), m.unit);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.label,
            cell(Impl::Hopeflow),
            cell(Impl::HopeflowHistoryOff),
            ratio_cell(run.paired_ratio(Impl::HopeflowHistoryOff, m.key), m.better),
            cell(Impl::ReferenceJs),
            cell(Impl::ReferenceJsHistoryOff),
            ratio_cell(
                run.paired_ratio_of(Impl::ReferenceJs, Impl::ReferenceJsHistoryOff, m.key),
                Better::Neither
            ),
        );
    }
    let _ = writeln!(md, "\n## What logging costs\n");
    let _ = writeln!(
        md,
        "hopeflow as deployed (`WORKER_LOG_LEVEL=info`: a `publish` line per publish) against itself with `WORKER_LOG_LEVEL=error`, in the same rounds. The budget (issue 23): at most 5 % more runtime CPU per publish.\n"
    );
    let _ = writeln!(md, "| figure | info | error | info ÷ error, paired |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for m in METRICS.iter().filter(|m| HISTORY_METRICS.contains(&m.key)) {
        let cell = |which: Impl| number_cell(medians[&which].get(m.key).copied(), m.unit);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            m.label,
            cell(Impl::Hopeflow),
            cell(Impl::HopeflowLogError),
            ratio_cell(run.paired_ratio(Impl::HopeflowLogError, m.key), m.better),
        );
    }
    let _ = writeln!(md, "\n## Bundle\n");
    let _ = writeln!(md, "| file | raw | gzip -9 |");
    let _ = writeln!(md, "|---|---:|---:|");
    if let Some(files) = header["bundle"].as_array() {
        for f in files {
            let _ = writeln!(
                md,
                "| {} | {} B | {} B |",
                f["file"].as_str().unwrap_or("?"),
                f["raw"],
                f["gzip"]
            );
        }
    }
    let problems = run.problems();
    let _ = writeln!(md, "\n## Problems and limits hit\n");
    if problems.is_empty() {
        let _ = writeln!(md, "None: every check of every scenario passed.");
    }
    for p in problems {
        let _ = writeln!(md, "- {p}");
    }
    let _ = writeln!(md, "\nRound-trip latency distribution: `round-trip.svg`.");
    if run.rounds.iter().any(|(_, r)| !r.redeploy.is_empty()) {
        let _ = writeln!(
            md,
            "Redeploy storm, sockets back and resumed over time: `redeploy.svg`. \
             Its figures for reference-js-history-off (no history: its clients cannot resume) \
             are in `latest.json`; the table above has hopeflow's."
        );
    }
    md
}

/// Every chart's size and margins: width, height, left, right, top, bottom.
const CHART: [f64; 6] = [760.0, 440.0, 70.0, 20.0, 40.0, 50.0];

/// A chart's start: the SVG element, its background, the title and a grid
/// of five steps on each axis, x labelled in `unit` (x ÷ its scale), y in
/// percent; `px` and `py` place a value.
fn chart_frame(
    title: &str,
    x_max: f64,
    (unit, scale): (&str, f64),
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
) -> String {
    let [w, h, left, right, top, bottom] = CHART;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    for i in 0..=5 {
        let x = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4:.1} {unit}</text>",
            px(x),
            top,
            h - bottom,
            h - bottom + 18.0,
            x / scale
        );
        let y = f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{1:.1}\" x2=\"{2}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{3}\" y=\"{4:.1}\" text-anchor=\"end\">{5:.0} %</text>",
            left,
            py(y),
            w - right,
            left - 6.0,
            py(y) + 4.0,
            y * 100.0
        );
    }
    out
}

/// Cumulative distribution of round-trip latency, one line per server.
pub fn svg(run: &Run) -> String {
    let [w, h, left, right, top, bottom] = CHART;
    let series: Vec<(Impl, Vec<f64>)> = Impl::ALL
        .iter()
        .map(|&which| {
            let mut all: Vec<f64> = run
                .of(which)
                .flat_map(|r| r.round_trips_ms.clone())
                .collect();
            all.sort_by(f64::total_cmp);
            (which, all)
        })
        .collect();
    // Up to the largest p99, so one outlier does not flatten the curves.
    let x_max = series
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(_, s)| crate::stats::percentile(s, 99.0))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let px = |x: f64| left + (x.min(x_max) / x_max) * (w - left - right);
    let py = |y: f64| top + (1.0 - y) * (h - top - bottom);
    let colors = ["#d9480f", "#1971c2", "#5c940d"];
    let mut out = chart_frame(
        "Round-trip latency, cumulative (all rounds)",
        x_max,
        ("ms", 1.0),
        &px,
        &py,
    );
    for (i, (which, samples)) in series.iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let n = samples.len() as f64;
        let points: Vec<String> = samples
            .iter()
            .enumerate()
            .map(|(k, x)| format!("{:.1},{:.1}", px(*x), py((k + 1) as f64 / n)))
            .collect();
        let color = colors[i % colors.len()];
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="{color}" stroke-width="3"/><text x="{3}" y="{4:.1}">{5} (p50 {6:.2} ms)</text>"#,
            w - right - 230.0,
            ly,
            w - right - 205.0,
            w - right - 198.0,
            ly + 4.0,
            which.name(),
            crate::stats::percentile(samples, 50.0)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (ms), x axis cut at 1.1 × the largest p99</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    let _ = writeln!(out, "</svg>");
    out
}

/// The redeploy storm of the first round of each server: the share of
/// sockets back (subscribed again) and resumed complete over the time
/// since the drop, with the moment the restarted runtime was ready.
pub fn redeploy_svg(run: &Run) -> Option<String> {
    let timelines: Vec<&crate::scenarios::Timeline> = Impl::RUN_ORDER
        .iter()
        .filter_map(|&which| run.of(which).find_map(|r| r.redeploy.first()))
        .collect();
    if timelines.is_empty() {
        return None;
    }
    let [w, h, left, right, top, bottom] = CHART;
    let x_max = timelines
        .iter()
        .flat_map(|t| t.back_ms.iter().chain(&t.resumed_ms).chain([&t.ready_ms]))
        .fold(1.0_f64, |a, b| a.max(*b))
        * 1.05;
    let px = |x: f64| left + (x.min(x_max) / x_max) * (w - left - right);
    let py = |y: f64| top + (1.0 - y) * (h - top - bottom);
    let mut out = chart_frame(
        "Redeploy storm: sockets back and resumed since the drop (first round)",
        x_max,
        ("s", 1e3),
        &px,
        &py,
    );
    let colors = ["#d9480f", "#1971c2", "#5c940d", "#862e9c", "#e67700"];
    let mut legend = 0;
    for (i, t) in timelines.iter().enumerate() {
        let color = colors[i % colors.len()];
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="{color}" stroke-dasharray="2,4"/>"#,
            px(t.ready_ms),
            top,
            h - bottom
        );
        let n = t.sockets.max(1) as f64;
        for (series, dash, label) in [
            (&t.back_ms, "", "back"),
            (&t.resumed_ms, "6,3", "resumed complete"),
        ] {
            if series.is_empty() {
                continue;
            }
            let points: Vec<String> = std::iter::once(format!("{:.1},{:.1}", px(0.0), py(0.0)))
                .chain(
                    series
                        .iter()
                        .enumerate()
                        .map(|(k, x)| format!("{:.1},{:.1}", px(*x), py((k + 1) as f64 / n))),
                )
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
                points.join(" ")
            );
            let ly = top + 20.0 + 18.0 * f64::from(legend);
            legend += 1;
            let _ = writeln!(
                out,
                r#"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="{color}" stroke-width="3" stroke-dasharray="{dash}"/><text x="{3}" y="{4:.1}">{5} {label} ({6} sockets)</text>"#,
                w - right - 330.0,
                ly,
                w - right - 305.0,
                w - right - 298.0,
                ly + 4.0,
                t.which,
                t.sockets
            );
        }
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the runtime was stopped; dotted: the restarted runtime answers /health</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    let _ = writeln!(out, "</svg>");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rt: f64) -> Round {
        let mut r = Round::default();
        r.metrics.insert("rt_p50_ms", rt);
        r.round_trips_ms = vec![rt, rt * 2.0];
        r
    }

    #[test]
    fn medians_and_ratios_per_implementation() {
        let run = Run {
            rounds: vec![
                (Impl::Hopeflow, round(2.0)),
                (Impl::ReferenceJs, round(4.0)),
                (Impl::Floor, round(1.0)),
                (Impl::Hopeflow, round(3.0)),
                (Impl::ReferenceJs, round(6.0)),
                (Impl::Floor, round(2.0)),
            ],
        };
        let out = json(&run, json!({}));
        assert_eq!(out["results"]["hopeflow"]["median"]["rt_p50_ms"], 2.5);
        assert_eq!(out["ratios"]["hopeflow/reference-js"]["rt_p50_ms"], 0.5);
        assert_eq!(out["ratios"]["hopeflow/floor"]["rt_p50_ms"], 2.5 / 1.5);
        // Within each round: 2 ÷ 1 and 3 ÷ 2.
        assert_eq!(
            out["ratios"]["hopeflow/floor paired by round"]["rt_p50_ms"],
            1.75
        );
        let md = markdown(&run, &out);
        assert!(
            md.contains(
                "| round trip p50 | 2.50 ms | 5.00 ms | 1.50 ms | 0.50 | 1.67 ▲ | 0.50 | 1.75 ▲ |"
            ),
            "{md}"
        );
        let svg = svg(&run);
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
