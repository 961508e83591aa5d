// clients/js/hopeflow.js in a real browser: Debian's Chromium (headless,
// driven by playwright-core) loads page.html from its own origin, connects to
// the prebuilt worker (`make build`) under wrangler's dev runtime, subscribes
// and acks; the worker is stopped and started again on the same port and the
// same page, not reloaded, acks the next publish. Every wait is on an event
// and time-boxed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createTcpServer } from "node:net";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CONFIG = join(ROOT, "build/wrangler.toml");
/** The longest any one step may take. */
const WAIT_MS = 30_000;

const secret = randomBytes(32).toString("hex");
const dir = mkdtempSync(join(tmpdir(), "hopeflow-browser-"));
const envFile = join(dir, "server.env");
const logFile = join(dir, "wrangler.log");
writeFileSync(envFile, `JWT_SECRET=${secret}\n`);

let worker; // the running worker: { child, port }
let workerPort;
let pages; // the page server
let browser;
/** Console errors and page errors of every page, for failure messages. */
const pageLog = [];

/** A timer for races and polls that does not keep the process alive. */
const delay = (ms) => sleep(ms, undefined, { ref: false });

const base64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** An HS256 token as the server verifies it. */
function mint(userId, key = secret) {
  const unsigned = `${base64url({ alg: "HS256", typ: "JWT" })}.${base64url({
    userId,
    exp: Math.floor(Date.now() / 1000) + 3600,
  })}`;
  return `${unsigned}.${createHmac("sha256", key).update(unsigned).digest("base64url")}`;
}

async function freePort() {
  const server = createTcpServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const workerLog = () => (existsSync(logFile) ? readFileSync(logFile, "utf8") : "");

/** Starts the worker on `port` (own process group: stopping it stops workerd too) and waits for /health. */
async function startWorker(port) {
  const log = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [join(ROOT, "devserver/serve.mjs"), CONFIG, String(port), envFile, join(dir, "state"), "log"],
    {
      cwd: ROOT,
      detached: true,
      stdio: ["ignore", log, log],
      env: {
        ...process.env,
        WRANGLER_SEND_METRICS: "false",
        WRANGLER_SEND_ERROR_REPORTS: "false",
        CLOUDFLARE_CF_FETCH_ENABLED: "false",
      },
    },
  );
  let exited = null;
  child.on("exit", (code, signal) => (exited = code ?? signal));
  worker = { child, port, exited: () => exited };
  const deadline = Date.now() + 2 * WAIT_MS;
  while (Date.now() < deadline) {
    if (exited !== null) throw new Error(`the worker exited (${exited}):\n${workerLog()}`);
    try {
      const response = await fetch(`http://127.0.0.1:${port}/health`);
      if (response.status == 200) return;
    } catch {
      // Not listening yet.
    }
    await sleep(50); // the poll's interval
  }
  throw new Error(`the worker did not answer /health in time:\n${workerLog()}`);
}

/** Stops the worker's whole process group and waits until its node process is gone. */
async function stopWorker() {
  if (!worker) return;
  const { child, exited } = worker;
  worker = undefined;
  const signal = (name) => {
    try {
      process.kill(-child.pid, name);
    } catch {
      // The group is already gone.
    }
  };
  if (exited() === null) {
    const gone = new Promise((resolve) => child.once("exit", resolve));
    signal("SIGTERM");
    await Promise.race([gone, delay(10_000)]);
  }
  // workerd may outlive wrangler's node process.
  signal("SIGKILL");
}

async function publish(userId, n) {
  const response = await fetch(`http://127.0.0.1:${workerPort}/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${mint("backend")}`, "content-type": "application/json" },
    body: JSON.stringify({ userId, type: "chat_message", payload: { n } }),
  });
  const body = await response.text();
  assert.equal(response.status, 200, body);
  return JSON.parse(body);
}

/** Opens page.html from the page server with these query parameters. */
async function openPage(query) {
  const page = await browser.newPage();
  page.on("console", (message) => {
    if (message.type() == "error") pageLog.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => pageLog.push(`pageerror: ${error.message}`));
  const url = new URL(`http://127.0.0.1:${pages.address().port}/`);
  url.search = new URLSearchParams({ server: `ws://127.0.0.1:${workerPort}`, ...query });
  await page.goto(url.href, { timeout: WAIT_MS });
  return page;
}

/** Waits until `condition` (run in the page, on window.hopeflow) holds. */
async function until(page, condition, what) {
  try {
    await page.waitForFunction(condition, null, { timeout: WAIT_MS, polling: 50 });
  } catch (error) {
    const state = await page.evaluate(() => window.hopeflow).catch(() => "unreadable");
    throw new Error(
      `${what}: ${error.message}\npage: ${JSON.stringify(state)}\n${pageLog.join("\n")}\n${workerLog().slice(-4000)}`,
    );
  }
}

const readLog = (page) => page.evaluate(() => window.hopeflow);

before(async () => {
  assert.ok(existsSync(CONFIG), "build/wrangler.toml is missing: run `make build` first");
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: \`make test\` installs Debian's chromium`);
  pages = createServer((request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    const file = {
      "/": [join(ROOT, "tests/browser/page.html"), "text/html"],
      "/hopeflow.js": [join(ROOT, "clients/js/hopeflow.js"), "text/javascript"],
    }[path];
    if (!file) return response.writeHead(404).end();
    response.writeHead(200, { "content-type": `${file[1]}; charset=utf-8` }).end(readFileSync(file[0]));
  });
  await new Promise((resolve) => pages.listen(0, "127.0.0.1", resolve));
  workerPort = await freePort();
  [browser] = await Promise.all([
    chromium.launch({
      executablePath: CHROMIUM,
      timeout: WAIT_MS,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        // Without these Chromium keeps calling out to a network this machine does not have.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    }),
    startWorker(workerPort),
  ]);
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopWorker();
  await new Promise((resolve) => (pages ? pages.close(resolve) : resolve()));
  rmSync(dir, { recursive: true, force: true });
});

test("a page of another origin subscribes, acks, and survives a server restart", { timeout: 6 * WAIT_MS }, async () => {
  const userId = `browser-${randomUUID()}`;
  const page = await openPage({ token: mint(userId), subscribe: "1" });
  await until(page, () => window.hopeflow.subscribed, "the subscription was not confirmed");
  const first = await readLog(page);
  assert.deepEqual(first.subscribed, { added: 1, total: 1 });
  assert.deepEqual(first.states, ["connecting", "open"]);
  assert.equal(first.sockets.length, 1);
  assert.ok(new URL(first.sockets[0].url).searchParams.get("token"), "the token is in ?token=");

  assert.deepEqual(await publish(userId, 1), {
    clientCount: 1,
    results: [{ seen: true, n: 1, pageId: first.pageId }],
  });

  await stopWorker();
  await until(page, () => window.hopeflow.states.includes("reconnecting"), "the page did not see the server go");
  await startWorker(workerPort);
  // "open" comes only once the confirmed filters are subscribed again.
  await until(
    page,
    () => {
      const { states } = window.hopeflow;
      return states.lastIndexOf("open") > states.indexOf("reconnecting") && states.includes("reconnecting");
    },
    "the page did not reconnect and re-subscribe",
  );
  const again = await readLog(page);
  assert.equal(again.pageId, first.pageId, "the page was reloaded");
  const last = again.sockets.at(-1);
  assert.ok(
    last.sent.includes(JSON.stringify({ type: "subscribe", filters: [{ type: "chat_message" }] })),
    `the new socket did not re-subscribe: ${JSON.stringify(last)}`,
  );

  assert.deepEqual(await publish(userId, 2), {
    clientCount: 1,
    results: [{ seen: true, n: 2, pageId: first.pageId }],
  });
  const end = await readLog(page);
  assert.deepEqual(
    end.envelopes.map((envelope) => [envelope.type, envelope.payload.n, typeof envelope.envelopeId]),
    [
      ["chat_message", 1, "string"],
      ["chat_message", 2, "string"],
    ],
  );
  assert.deepEqual(end.errors, []);
  await page.close();
});

test("a refused token ends in 'closed' with the server's reason, without retrying", { timeout: 2 * WAIT_MS }, async () => {
  const page = await openPage({ token: mint(`browser-${randomUUID()}`, "not-the-secret"), getToken: "1" });
  await until(page, () => window.hopeflow.states.includes("closed"), "the client did not stop");
  const log = await readLog(page);
  assert.deepEqual(log.states, ["connecting", "closed"]);
  assert.equal(log.details.at(-1).status, 401);
  assert.equal(log.details.at(-1).error, "invalid_token");
  assert.equal(log.sockets.length, 1, "it tried again with the same token");
  await page.close();
});

// The module as it is, in a Node process with the global WebSocket (behind a
// flag before Node 22): connects, subscribes, acks, and close() lets it exit.
const NODE_CLIENT = `
  const { HopeFlowClient } = await import(process.env.MODULE);
  const client = new HopeFlowClient(process.env.SERVER, { getToken: async () => process.env.TOKEN });
  client.onEnvelope((envelope) => ({ node: true, n: envelope.payload.n }));
  client.onState((state) => console.log("state " + state));
  const confirmation = await client.subscribe([{ type: "chat_message" }]);
  console.log("subscribed " + JSON.stringify(confirmation));
  process.stdin.resume().on("end", () => client.close());
`;

test("the same module runs unchanged in Node", { timeout: 2 * WAIT_MS }, async () => {
  const userId = `node-${randomUUID()}`;
  const flags = Number(process.versions.node.split(".")[0]) < 22 ? ["--experimental-websocket"] : [];
  const child = spawn(process.execPath, [...flags, "--input-type=module", "-e", NODE_CLIENT], {
    env: {
      ...process.env,
      MODULE: pathToFileURL(join(ROOT, "clients/js/hopeflow.js")).href,
      SERVER: `ws://127.0.0.1:${workerPort}`,
      TOKEN: mint(userId),
    },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  try {
    const lines = [];
    const subscribed = new Promise((resolve) =>
      createInterface({ input: child.stdout }).on("line", (line) => {
        lines.push(line);
        if (line.startsWith("subscribed ")) resolve(line);
      }),
    );
    const line = await Promise.race([
      subscribed,
      exited.then((code) => Promise.reject(new Error(`the Node client exited (${code}): ${lines}`))),
      delay(WAIT_MS).then(() => Promise.reject(new Error(`no confirmation in time: ${lines}`))),
    ]);
    assert.equal(line, 'subscribed {"added":1,"total":1}');
    assert.deepEqual(await publish(userId, 3), { clientCount: 1, results: [{ node: true, n: 3 }] });
    child.stdin.end();
    const code = await Promise.race([exited, delay(WAIT_MS).then(() => "still running after close()")]);
    assert.equal(code, 0);
    assert.deepEqual(lines, ["state connecting", "state open", 'subscribed {"added":1,"total":1}', "state closed"]);
  } finally {
    child.kill("SIGKILL");
  }
});
