//! `--profile <impl>`: a CPU profile of the worker's isolate while it runs
//! the round-trip, throughput and fan-out scenarios (or one of them), taken through the Chrome DevTools
//! protocol that `wrangler dev --inspector-port` serves. Prints where the
//! samples fell, per function (self and inclusive) and per kind of code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::scenarios::{self, Round, Sizes};
use crate::target::Target;

type Cdp =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sampling interval asked of V8, in microseconds.
const INTERVAL_US: u64 = 100;

pub async fn run(target: &Target, sizes: &Sizes, scenario: &str) -> Result<String, String> {
    let port = target
        .inspector_port()
        .ok_or("the server runs without an inspector")?;
    let mut cdp = attach(port).await?;
    call(&mut cdp, 1, "Profiler.enable", json!({})).await?;
    call(
        &mut cdp,
        2,
        "Profiler.setSamplingInterval",
        json!({ "interval": INTERVAL_US }),
    )
    .await?;
    let mut round = Round::default();
    let stopped = if scenario == "publish-fanout" {
        // Only the publishes: the sockets are opened before sampling starts.
        let user = format!("profile-fanout-{}", std::process::id());
        let opened = target
            .open(&user, sizes.fanout_sockets, sizes.parallel_connects)
            .await;
        if let Some(why) = opened.error {
            return Err(why);
        }
        call(&mut cdp, 3, "Profiler.start", json!({})).await?;
        for n in 0..20 {
            if let Err(why) = target.publish(&user, n, sizes.fanout_sockets).await {
                round.problems.push(why);
                break;
            }
        }
        let stopped = call(&mut cdp, 4, "Profiler.stop", json!({})).await?;
        opened.sockets.close().await;
        stopped
    } else {
        call(&mut cdp, 3, "Profiler.start", json!({})).await?;
        scenarios::profile_workload(target, sizes, scenario, &mut round).await;
        call(&mut cdp, 4, "Profiler.stop", json!({})).await?
    };
    if !round.problems.is_empty() {
        return Err(format!("the workload failed: {:?}", round.problems));
    }
    let mut text = summarize(&stopped["profile"])?;
    let _ = writeln!(
        text,
        "\nWorkload figures while profiling (slower than unprofiled): {:?}",
        round.metrics
    );
    Ok(text)
}

/// Connects to the first debuggable target the inspector lists.
async fn attach(port: u16) -> Result<Cdp, String> {
    let list: Value = reqwest::get(format!("http://127.0.0.1:{port}/json"))
        .await
        .map_err(|e| format!("inspector list: {e}"))?
        .json()
        .await
        .map_err(|e| format!("inspector list: {e}"))?;
    let url = list
        .as_array()
        .and_then(|targets| {
            targets
                .iter()
                .find_map(|t| t["webSocketDebuggerUrl"].as_str())
        })
        .ok_or_else(|| format!("no debuggable target in {list}"))?;
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("inspector connect {url}: {e}"))?;
    Ok(ws)
}

/// Sends one command and waits for its answer, skipping events.
async fn call(cdp: &mut Cdp, id: u64, method: &str, params: Value) -> Result<Value, String> {
    let request = json!({ "id": id, "method": method, "params": params });
    cdp.send(Message::text(request.to_string()))
        .await
        .map_err(|e| format!("{method}: {e}"))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), cdp.next())
            .await
            .map_err(|_| format!("{method}: no answer"))?;
        let Some(Ok(Message::Text(text))) = next else {
            match next {
                Some(Ok(_)) => continue,
                _ => return Err(format!("{method}: inspector socket ended")),
            }
        };
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
        if answer["id"] != id {
            continue;
        }
        if let Some(error) = answer.get("error") {
            return Err(format!("{method}: {error}"));
        }
        return Ok(answer["result"].clone());
    }
}

/// What kind of code a profile node is.
fn kind(function: &str, url: &str) -> &'static str {
    match (function, url) {
        ("(idle)", _) => "idle",
        ("(garbage collector)", _) => "garbage collector",
        ("(program)" | "(root)", _) => "runtime (native, outside JS and wasm)",
        (_, u) if u.starts_with("wasm://") => "wasm",
        // src/shim.js bundled with the glue (build/worker/shim.mjs).
        (_, u) if u.ends_with("shim.mjs") && u.contains("hopeflow") => "wasm-bindgen glue (JS)",
        (_, "") => "runtime builtins",
        _ => "JS",
    }
}

/// Self and inclusive sample counts per function, and self per kind.
fn summarize(profile: &Value) -> Result<String, String> {
    let nodes = profile["nodes"].as_array().ok_or("profile without nodes")?;
    let samples = profile["samples"]
        .as_array()
        .ok_or("profile without samples")?;
    let mut name_of: HashMap<u64, String> = HashMap::new();
    let mut kind_of: HashMap<u64, &'static str> = HashMap::new();
    let mut parent: HashMap<u64, u64> = HashMap::new();
    for node in nodes {
        let id = node["id"].as_u64().ok_or("node without id")?;
        let frame = &node["callFrame"];
        let function = frame["functionName"].as_str().unwrap_or("");
        let url = frame["url"].as_str().unwrap_or("");
        let file = url.rsplit('/').next().unwrap_or(url);
        let function = if function.is_empty() {
            "(anonymous)"
        } else {
            function
        };
        // JS positions tell anonymous glue functions apart; a wasm
        // function's name is already unique.
        let line = frame["lineNumber"].as_i64().unwrap_or(-1);
        let name = if url.starts_with("wasm://") || url.is_empty() {
            format!("{function} [{file}]")
        } else {
            format!("{function} [{file}:{}]", line + 1)
        };
        name_of.insert(id, name);
        kind_of.insert(id, kind(function, url));
        for child in node["children"].as_array().into_iter().flatten() {
            if let Some(child) = child.as_u64() {
                parent.insert(child, id);
            }
        }
    }
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut self_count: HashMap<&str, u64> = HashMap::new();
    let mut inclusive: HashMap<&str, u64> = HashMap::new();
    let mut busy = 0u64;
    for sample in samples.iter().filter_map(Value::as_u64) {
        let k = kind_of.get(&sample).copied().unwrap_or("?");
        *by_kind.entry(k).or_default() += 1;
        if k == "idle" {
            continue;
        }
        busy += 1;
        if let Some(name) = name_of.get(&sample) {
            *self_count.entry(name).or_default() += 1;
        }
        let mut seen = HashSet::new();
        let mut at = Some(sample);
        while let Some(id) = at {
            if let Some(name) = name_of.get(&id) {
                if seen.insert(name.as_str()) {
                    *inclusive.entry(name).or_default() += 1;
                }
            }
            at = parent.get(&id).copied();
        }
    }
    let total = samples.len() as f64;
    let busy_f = busy.max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} samples at {INTERVAL_US} µs; {busy} not idle.\n",
        samples.len()
    );
    let _ = writeln!(
        out,
        "| kind of code | % of all samples | % of busy samples |\n|---|---:|---:|"
    );
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (k, n) in kinds {
        let busy_share = if k == "idle" {
            "–".to_string()
        } else {
            format!("{:.1}", n as f64 / busy_f * 100.0)
        };
        let _ = writeln!(
            out,
            "| {k} | {:.1} | {busy_share} |",
            n as f64 / total * 100.0
        );
    }
    for (title, counts) in [("self", &self_count), ("inclusive", &inclusive)] {
        let mut top: Vec<_> = counts.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(
            out,
            "\n| top functions by {title} time | % of busy |\n|---|---:|"
        );
        for (name, n) in top.into_iter().take(60) {
            let _ = writeln!(
                out,
                "| `{}` | {:.1} |",
                name.replace('|', "\\|"),
                *n as f64 / busy_f * 100.0
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_self_and_inclusive_samples() {
        let profile = json!({
            "nodes": [
                { "id": 1, "callFrame": { "functionName": "(root)", "url": "" }, "children": [2, 4] },
                { "id": 2, "callFrame": { "functionName": "deliver", "url": "wasm://wasm/abc" }, "children": [3] },
                { "id": 3, "callFrame": { "functionName": "send", "url": "" } },
                { "id": 4, "callFrame": { "functionName": "(idle)", "url": "" } }
            ],
            "samples": [3, 3, 2, 4],
        });
        let text = summarize(&profile).expect("summary");
        assert!(text.contains("4 samples at 100 µs; 3 not idle."), "{text}");
        assert!(text.contains("| wasm | 25.0 | 33.3 |"), "{text}");
        assert!(
            text.contains("| runtime builtins | 50.0 | 66.7 |"),
            "{text}"
        );
        // `deliver` ran itself once and was on the stack of all three.
        assert!(text.contains("| `deliver [abc]` | 33.3 |"), "{text}");
        assert!(text.contains("| `deliver [abc]` | 100.0 |"), "{text}");
    }
}
