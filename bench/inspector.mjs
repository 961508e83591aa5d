// What the DevTools inspector costs a worker, measured against one server in
// phases that differ only in which DevTools protocol domains are enabled.
// See "The inspector under make dev" in bench/README.md for the findings.
//
// Usage: node bench/inspector.mjs <impl> <server> [phases] [options]
//   impl     hopeflow | reference-js: sequential publish round trips with one
//              acking socket (as the bench's "round trip")
//            spin: a tiny worker written to a temp dir, whose /wasm runs a
//              call-heavy wasm loop and /js the same kind of loop in JS;
//              shows how fast each kind of code runs in each phase
//   server   off  devserver/serve.mjs without the inspector (`make dev`)
//            cli  the `wrangler dev` CLI (`make debug`): wrangler's inspector
//                 proxy attaches to the runtime with Runtime + Network enabled
//            raw  serve.mjs with the runtime's inspector open but nothing of
//                 wrangler's attached to it: this script is the only session
//   phases   comma-separated; each phase is the set of domains this script's
//            session has enabled while it measures, joined by "+", or "none"
//            (the default). With `raw` the session is on the runtime's own
//            inspector; with `cli` it is a DevTools client on wrangler's
//            inspector port, as Chrome DevTools would be.
//            e.g. none,Debugger,none  or  none,Runtime+Network,Debugger
//   --publishes N   measured requests per phase (default 1000; spin 30 per path)
//   --warmup N      requests before each phase's measurement (300; spin 10)
//   --via-proxy     through wrangler's dev proxy instead of the runtime's port
//   --config PATH   serve this wrangler.toml as <impl> (e.g. an older build)
//   --pin           the runtime alone on CPU 0; wrangler's other processes and
//                   this script on CPU 1 (taskset): no CPU contention between
//                   the runtime and the rest
//
// Prints one line per phase: round-trip p50/p90/p99 and the CPU time per
// publish of the runtime (the workerd that runs the worker), of wrangler's dev
// proxy (the other workerd) and of wrangler's node process(es), from /proc;
// the protocol events per publish this script's session received, by method;
// and how much the resident memory of wrangler's dev proxy grew.
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const SECRET = "bench-secret-not-for-production-0123456789";
const CONFIGS = {
  hopeflow: "build/wrangler.toml",
  "reference-js": "bench/servers/reference-js/wrangler.toml",
  spin: null,
};

const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const at = argv.indexOf(name);
  if (at < 0) return fallback;
  return argv.splice(at, 2)[1];
};
const configOverride = option("--config");
const publishesArg = option("--publishes");
const warmupArg = option("--warmup");
const viaProxy = argv.includes("--via-proxy");
const pin = argv.includes("--pin");
const [impl, server, phaseList = "none"] = argv.filter((a) => !a.startsWith("--"));
if (!(impl in CONFIGS) || !["off", "cli", "raw"].includes(server)) {
  console.error(
    "usage: node bench/inspector.mjs hopeflow|reference-js|spin off|cli|raw [phases]" +
      " [--publishes N] [--warmup N] [--via-proxy] [--config PATH] [--pin]",
  );
  process.exit(2);
}
const spin = impl === "spin";
const publishes = Number(publishesArg ?? (spin ? 30 : 1000));
const warmup = Number(warmupArg ?? (spin ? 10 : 300));
const phases = phaseList.split(",").map((p) => (p === "none" ? [] : p.split("+")));
if (server === "off" && phases.some((p) => p.length > 0)) {
  console.error("`off` has no inspector: its phases can only be none");
  process.exit(2);
}

// ---- the server -------------------------------------------------------------

const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const dir = mkdtempSync(join(tmpdir(), "hopeflow-inspector-"));
const envFile = join(dir, "env");
writeFileSync(envFile, `JWT_SECRET=${SECRET}\n`);
let config = configOverride ?? (spin ? null : join(root, CONFIGS[impl]));
if (spin) config = await writeSpinWorker(join(dir, "spin"));
const port = await freePort();
const inspectorPort = await freePort();
const env = {
  ...process.env,
  WRANGLER_SEND_METRICS: "false",
  WRANGLER_SEND_ERROR_REPORTS: "false",
  CLOUDFLARE_CF_FETCH_ENABLED: "false",
};
let command;
if (server === "cli") {
  command = [
    join(root, "node_modules/.bin/wrangler"),
    ["dev", "--config", config, "--env-file", envFile, "--persist-to", join(dir, "state"),
      "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspectorPort),
      "--show-interactive-dev-session=false", "--log-level", "warn"],
  ];
} else {
  const serve = [join(root, "devserver/serve.mjs"), config, String(port), envFile, join(dir, "state"), "warn"];
  if (server === "raw") {
    serve.push("--inspector-port", String(inspectorPort));
    // wrangler then opens the runtime's inspector but attaches nothing to it
    // (it leaves the runtime to a VS Code debugger): the runtime's inspector
    // has no session until this script connects.
    env.VSCODE_INSPECTOR_OPTIONS = "{}";
  }
  command = ["node", serve];
}
const child = spawn(command[0], command[1], { cwd: root, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
let log = "";
child.stdout.on("data", (d) => (log += d));
child.stderr.on("data", (d) => (log += d));
process.on("exit", () => {
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {}
  rmSync(dir, { recursive: true, force: true });
});
process.on("SIGINT", () => process.exit(130));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const get = (p, path) =>
  new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const req = http.get({ host: "127.0.0.1", port: p, path, timeout: 60_000 }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () =>
        resolve({ status: res.statusCode, body, ms: Number(process.hrtime.bigint() - started) / 1e6 }),
      );
    });
    req.on("error", () => resolve({ status: 0, body: "" }));
    req.on("timeout", () => req.destroy());
  });

/** Processes of the server's process group, with their CPU seconds so far. */
function group() {
  const out = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      const comm = stat.slice(stat.indexOf("(") + 1, close);
      // After the comm: state, ppid, pgrp, ...; utime and stime are 12th and 13th.
      const fields = stat.slice(close + 2).split(" ");
      if (Number(fields[2]) !== child.pid) continue;
      const cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8").replaceAll("\0", " ");
      out.push({ pid: Number(name), comm, cmdline, cpu: (Number(fields[11]) + Number(fields[12])) / 100 });
    } catch {}
  }
  return out;
}
const role = (p) =>
  p.comm.startsWith("workerd")
    ? p.cmdline.includes(`entry=127.0.0.1:${port}`)
      ? "proxy"
      : "runtime"
    : p.comm.startsWith("node")
      ? "node"
      : "other";
function cpu() {
  const sums = { runtime: 0, proxy: 0, node: 0, other: 0 };
  for (const p of group()) sums[role(p)] += p.cpu;
  return sums;
}
/** Resident memory (KiB) of wrangler's dev proxy. */
function proxyRss() {
  const p = group().find((q) => role(q) === "proxy");
  const m = p && /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p.pid}/status`, "utf8"));
  return m ? Number(m[1]) : 0;
}
/** TCP ports a process listens on. */
function listening(pid) {
  const inodes = new Set();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {}
  }
  const ports = [];
  for (const line of readFileSync(`/proc/${pid}/net/tcp`, "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[3] === "0A" && inodes.has(f[9])) ports.push(parseInt(f[1].split(":")[1], 16));
  }
  return ports;
}

const deadline = Date.now() + 120_000;
while ((await get(port, "/health")).status !== 200) {
  if (child.exitCode !== null || Date.now() > deadline) {
    console.error(`server did not start:\n${log}`);
    process.exit(1);
  }
  await sleep(50);
}
const runtime = group().find((p) => role(p) === "runtime");
let target = port;
let runtimeInspector;
for (const p of listening(runtime.pid)) {
  if (!viaProxy && (await get(p, "/health")).status === 200) target = p;
  const list = await get(p, "/json");
  if (list.status === 200 && list.body.includes("core:user:")) {
    runtimeInspector = JSON.parse(list.body).find((t) => t.id.startsWith("core:user:")).webSocketDebuggerUrl;
  }
}
if (pin) {
  for (const p of group()) execFileSync("taskset", ["-a", "-p", role(p) === "runtime" ? "1" : "2", String(p.pid)]);
  execFileSync("taskset", ["-a", "-p", "2", String(process.pid)]);
}

// ---- the inspector session ----------------------------------------------------

let session;
let stopping = false;
let events = 0;
/** Per event method: [count, bytes], for the current phase. */
let byMethod = new Map();
let nextId = 1;
const pending = new Map();
async function connect() {
  let url = runtimeInspector;
  if (server === "cli") url = JSON.parse((await get(inspectorPort, "/json")).body)[0].webSocketDebuggerUrl;
  session = new WebSocket(url, { maxPayload: 1 << 30 });
  await new Promise((resolve, reject) => {
    session.once("open", resolve);
    session.once("error", reject);
  });
  session.on("message", (data) => {
    const msg = JSON.parse(data);
    if (msg.id !== undefined && pending.has(msg.id)) {
      pending.get(msg.id)(msg);
      pending.delete(msg.id);
    } else if (msg.method) {
      events++;
      const [count, bytes] = byMethod.get(msg.method) ?? [0, 0];
      byMethod.set(msg.method, [count + 1, bytes + data.length]);
    }
  });
  session.on("close", (code, reason) => {
    if (!stopping) console.error(`inspector session closed: ${code} ${reason}`);
  });
}
function send(method, params = {}) {
  const id = nextId++;
  session.send(JSON.stringify({ id, method, params }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${method}: no answer`)), 60_000);
    pending.set(id, (msg) => {
      clearTimeout(timer);
      msg.error ? reject(new Error(`${method}: ${JSON.stringify(msg.error)}`)) : resolve(msg.result);
    });
  });
}
let enabled = [];
async function enable(domains) {
  if (domains.length > 0 && !session) await connect();
  for (const d of enabled.filter((d) => !domains.includes(d))) await send(`${d}.disable`);
  for (const d of domains.filter((d) => !enabled.includes(d))) await send(`${d}.enable`);
  enabled = domains;
}

// ---- spin: wasm vs JS compute -----------------------------------------------------

async function writeSpinWorker(to) {
  const { default: binaryen } = await import("binaryen");
  // Four chains of calls to a small function per iteration, plus a load and
  // a store: optimized code inlines the calls, baseline debug code does not.
  const module = binaryen.parseText(`(module
    (memory 1)
    (func $mix (param $a i32) (param $b i32) (result i32)
      (i32.add (i32.mul (local.get $a) (i32.const 1103515245))
               (i32.xor (local.get $b) (i32.shr_u (local.get $a) (i32.const 7)))))
    (func (export "spin") (param $n i32) (result i32)
      (local $i i32) (local $a i32) (local $b i32) (local $c i32) (local $d i32)
      (local.set $a (i32.const 1)) (local.set $b (i32.const 2))
      (local.set $c (i32.const 3)) (local.set $d (i32.const 4))
      (block $done
        (loop $top
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $a (call $mix (local.get $a) (local.get $i)))
          (local.set $b (call $mix (local.get $b)
            (i32.load (i32.and (i32.shl (local.get $i) (i32.const 2)) (i32.const 4092)))))
          (i32.store (i32.and (i32.shl (local.get $b) (i32.const 2)) (i32.const 4092)) (local.get $c))
          (local.set $c (call $mix (local.get $c) (local.get $a)))
          (local.set $d (call $mix (local.get $d) (local.get $b)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $top)))
      (i32.xor (i32.xor (local.get $a) (local.get $b)) (i32.xor (local.get $c) (local.get $d)))))`);
  if (!module.validate()) throw new Error("spin.wasm does not validate");
  execFileSync("mkdir", ["-p", to]);
  writeFileSync(join(to, "spin.wasm"), module.emitBinary());
  writeFileSync(
    join(to, "index.js"),
    `import spinModule from "./spin.wasm";
const { spin } = new WebAssembly.Instance(spinModule).exports;
const memory = new Int32Array(1024);
function mix(a, b) {
  return (Math.imul(a, 1103515245) + (b ^ (a >>> 7))) | 0;
}
function spinJs(n) {
  let a = 1, b = 2, c = 3, d = 4;
  for (let i = 0; i < n; i++) {
    a = mix(a, i);
    b = mix(b, memory[i & 1023]);
    memory[b & 1023] = c;
    c = mix(c, a);
    d = mix(d, b);
  }
  return a ^ b ^ c ^ d;
}
export default {
  fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response("ok");
    const n = Number(url.searchParams.get("n") ?? 5000000);
    return new Response(String(url.pathname === "/js" ? spinJs(n) : spin(n)));
  },
};
`,
  );
  writeFileSync(join(to, "wrangler.toml"), `name = "spin"\nmain = "index.js"\ncompatibility_date = "2025-09-01"\n`);
  return join(to, "wrangler.toml");
}

if (spin) {
  console.log(`spin, server ${server}${pin ? ", pinned" : ""}: ${warmup} warm-up + ${publishes} requests per path and phase`);
  console.log("phase (domains enabled by this session) | /wasm median ms | /js median ms");
  for (const domains of phases) {
    await enable(domains);
    const medians = [];
    for (const path of ["/wasm", "/js"]) {
      for (let i = 0; i < warmup; i++) await get(target, `${path}?n=5000000`);
      const times = [];
      for (let i = 0; i < publishes; i++) {
        const r = await get(target, `${path}?n=5000000`);
        if (r.status !== 200) throw new Error(`${path} answered ${r.status}`);
        times.push(r.ms);
      }
      times.sort((a, b) => a - b);
      medians.push(times[Math.floor(times.length / 2)].toFixed(1));
    }
    console.log([domains.length ? domains.join("+") : "none", ...medians].join(" | "));
  }
  stopping = true;
  session?.close();
  process.exit(0);
}

// ---- hopeflow / reference-js: publish round trips ---------------------------------

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
function token(user) {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ userId: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}
const user = "inspector-bench";
const socket = new WebSocket(`ws://127.0.0.1:${target}/?token=${token(user)}`);
await new Promise((resolve, reject) => {
  socket.once("open", resolve);
  socket.once("error", reject);
});
await new Promise((resolve, reject) => {
  socket.on("message", (data) => {
    const frame = JSON.parse(data);
    if (frame.type === "subscribed") resolve();
    else if (frame.envelopeId) {
      socket.send(JSON.stringify({ type: "ack", envelopeId: frame.envelopeId, result: { ok: true } }));
    }
  });
  socket.once("close", () => reject(new Error("socket closed before subscribing")));
  socket.send(JSON.stringify({ type: "subscribe", filters: [{}] }));
});

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const auth = `Bearer ${token("bench-backend")}`;
function publish(n) {
  const body = JSON.stringify({ userId: user, type: "bench", payload: { n } });
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1", port: target, path: "/publish", method: "POST", agent,
        headers: { authorization: auth, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        let text = "";
        res.on("data", (d) => (text += d));
        res.on("end", () => {
          const ms = Number(process.hrtime.bigint() - started) / 1e6;
          const answer = JSON.parse(text);
          if (res.statusCode !== 200 || answer.clientCount !== 1 || answer.results?.length !== 1) {
            reject(new Error(`publish answered ${res.statusCode}: ${text}`));
          } else resolve(ms);
        });
      },
    );
    req.setNoDelay(true);
    req.on("error", reject);
    req.end(body);
  });
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
let n = 0;
console.log(
  `${impl}${configOverride ? ` (${configOverride})` : ""}, server ${server}` +
    `${viaProxy ? ", via wrangler's proxy" : ""}${pin ? ", pinned" : ""}: ` +
    `${warmup} warm-up + ${publishes} publishes per phase`,
);
console.log(
  "phase (domains enabled by this session) | p50 ms | p90 ms | p99 ms | " +
    "CPU ms/publish: runtime | proxy | node | events/publish | proxy RSS",
);
for (const domains of phases) {
  await enable(domains);
  for (let i = 0; i < warmup; i++) await publish(n++);
  const before = cpu();
  const rssBefore = proxyRss();
  const eventsBefore = events;
  byMethod = new Map();
  const times = [];
  for (let i = 0; i < publishes; i++) times.push(await publish(n++));
  const after = cpu();
  const rss = proxyRss();
  times.sort((a, b) => a - b);
  const per = (k) => (((after[k] - before[k]) * 1000) / publishes).toFixed(3);
  const growth = rss - rssBefore;
  console.log(
    [
      domains.length ? domains.join("+") : "none",
      quantile(times, 0.5).toFixed(2),
      quantile(times, 0.9).toFixed(2),
      quantile(times, 0.99).toFixed(2),
      per("runtime"),
      per("proxy"),
      per("node"),
      ((events - eventsBefore) / publishes).toFixed(1),
      `${rss} KiB (${growth >= 0 ? "+" : ""}${growth})`,
    ].join(" | "),
  );
  for (const [method, [count, bytes]] of byMethod) {
    console.log(`    ${method}: ${(count / publishes).toFixed(2)}/publish, ${Math.round(bytes / count)} bytes each`);
  }
}
stopping = true;
socket.close();
session?.close();
agent.destroy();
process.exit(0);
