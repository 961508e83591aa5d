// clients/js/hopeflow.js in a real browser: Debian's Chromium (headless,
// driven by playwright-core) loads page.html from its own origin, connects to
// the prebuilt worker (`make build`) under wrangler's dev runtime, subscribes
// and acks; the worker is stopped and started again on the same port and the
// same page, not reloaded, acks the next publish. Every wait is on an event
// and time-boxed. The worker, tokens and Chromium come from support.mjs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT, WAIT_MS, Worker, delay, freePort, launchChromium, mint, recordProblems } from "./support.mjs";

let worker; // the worker, restarted on the same port by the first test
let workerPort;
let pages; // the page server
let browser;
/** Console errors and page errors of every page, for failure messages. */
const pageLog = [];

async function publish(userId, n) {
  const response = await fetch(`http://127.0.0.1:${workerPort}/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${worker.mint("backend")}`, "content-type": "application/json" },
    body: JSON.stringify({ userId, type: "chat_message", payload: { n } }),
  });
  const body = await response.text();
  assert.equal(response.status, 200, body);
  return JSON.parse(body);
}

/** Opens page.html from the page server with these query parameters. */
async function openPage(query) {
  const page = await browser.newPage();
  recordProblems(page, pageLog);
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
      `${what}: ${error.message}\npage: ${JSON.stringify(state)}\n${pageLog.join("\n")}\n${worker.log().slice(-4000)}`,
    );
  }
}

const readLog = (page) => page.evaluate(() => window.hopeflow);

before(async () => {
  worker = new Worker();
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
  [browser] = await Promise.all([launchChromium(), worker.start(workerPort)]);
});

after(async () => {
  await browser?.close().catch(() => {});
  await worker?.dispose();
  await new Promise((resolve) => (pages ? pages.close(resolve) : resolve()));
});

test("a page of another origin subscribes, acks, and survives a server restart", { timeout: 6 * WAIT_MS }, async () => {
  const userId = `browser-${randomUUID()}`;
  const page = await openPage({ token: worker.mint(userId), subscribe: "1" });
  await until(page, () => window.hopeflow.subscribed, "the subscription was not confirmed");
  const first = await readLog(page);
  const { added, total, seq, epoch } = first.subscribed;
  assert.deepEqual({ added, total }, { added: 1, total: 1 });
  // History is on: the confirmation carries the user's position.
  assert.equal(seq, 0);
  assert.equal(typeof epoch, "string");
  assert.deepEqual(first.states, ["connecting", "open"]);
  assert.equal(first.sockets.length, 1);
  // The token is an offered protocol, not in the URL; the 101 named "hopeflow".
  const token = new URL(page.url()).searchParams.get("token");
  assert.equal(first.sockets[0].url, `ws://127.0.0.1:${workerPort}/`);
  assert.deepEqual(first.sockets[0].protocols, ["hopeflow", `hopeflow.token.${token}`]);
  assert.equal(first.sockets[0].protocol, "hopeflow");
  assert.ok(!worker.log().includes(token), "the server logged the token");

  assert.deepEqual(await publish(userId, 1), {
    clientCount: 1,
    results: [{ seen: true, n: 1, pageId: first.pageId }],
  });

  await worker.stop();
  await until(page, () => window.hopeflow.states.includes("reconnecting"), "the page did not see the server go");
  await worker.start(workerPort);
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

test("tokenInUrl: the token goes in ?token= and the socket works as before", { timeout: 2 * WAIT_MS }, async () => {
  const userId = `browser-${randomUUID()}`;
  const token = worker.mint(userId);
  const page = await openPage({ token, subscribe: "1", tokenInUrl: "1" });
  await until(page, () => window.hopeflow.subscribed, "the subscription was not confirmed");
  const [socket] = (await readLog(page)).sockets;
  assert.equal(new URL(socket.url).searchParams.get("token"), token);
  assert.equal(socket.protocols, null);
  assert.equal(socket.protocol, "");
  assert.deepEqual((await publish(userId, 1)).clientCount, 1);
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
      TOKEN: worker.mint(userId),
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
    const confirmation = JSON.parse(line.slice("subscribed ".length));
    assert.deepEqual({ added: confirmation.added, total: confirmation.total }, { added: 1, total: 1 });
    assert.deepEqual(await publish(userId, 3), { clientCount: 1, results: [{ node: true, n: 3 }] });
    child.stdin.end();
    const code = await Promise.race([exited, delay(WAIT_MS).then(() => "still running after close()")]);
    assert.equal(code, 0);
    assert.deepEqual(lines, ["state connecting", "state open", line, "state closed"]);
  } finally {
    child.kill("SIGKILL");
  }
});

test("the debug console is not served unless CONSOLE_ENABLED=true", async () => {
  // This server's env file has JWT_SECRET only: /console is a plain 404.
  for (const [method, path] of [["GET", "/console"], ["GET", "/console/hopeflow.js"]]) {
    const response = await fetch(worker.url(path), { method });
    assert.equal(response.status, 404, `${method} ${path}`);
    assert.equal((await response.json()).error, "not_found", `${method} ${path}`);
  }
  // The route exists either way: a method it does not declare is 405
  // (issue 21: the contract's rule for every route, /console included).
  const response = await fetch(worker.url("/console"), { method: "POST" });
  assert.equal(response.status, 405, "POST /console");
  assert.equal(response.headers.get("allow"), "GET, HEAD");
  assert.equal((await response.json()).error, "method_not_allowed");
});
