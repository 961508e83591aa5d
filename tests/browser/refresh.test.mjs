// Token lifetime (issue 20) with clients/js/hopeflow.js against the prebuilt
// worker (`make build`), in headless Chromium and in a Node process: a worker
// with no leeway (JWT_LEEWAY_SECS=0) that notices 2 s before `exp`, tokens
// that live a few seconds. A client with getToken refreshes its socket on
// `token_expiring` and that same socket (same id in the sockets view) still
// delivers after the first token's exp; beside it, on the same user (so the
// same alarm closes both, were the refresh not taken), a client with a fixed
// token of the same exp is closed with 4002 and ends in "closed". Every wait
// is on an event and time-boxed; the only time waited out is the tokens' life.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT, WAIT_MS, Worker, delay, freePort, launchChromium, recordProblems } from "./support.mjs";

/** How long the first tokens live: time to connect and subscribe both clients, then the notice (2 s). */
const LIFETIME_SECS = 8;

let worker;
let pages; // page.html, hopeflow.js, and /token?user=U for getToken
let browser;
/** What /token answers, by user. */
const tokenSources = new Map();
/** Console errors and page errors of every page, stray output of the Node clients. */
const problems = [];

before(async () => {
  worker = new Worker({ JWT_LEEWAY_SECS: "0", TOKEN_REFRESH_NOTICE_SECS: "2" });
  pages = createServer(async (request, response) => {
    const url = new URL(request.url, "http://x");
    const source = url.pathname == "/token" && tokenSources.get(url.searchParams.get("user"));
    if (source) {
      return response.writeHead(200, { "content-type": "text/plain" }).end(await source());
    }
    const file = {
      "/": [join(ROOT, "tests/browser/page.html"), "text/html"],
      "/hopeflow.js": [join(ROOT, "clients/js/hopeflow.js"), "text/javascript"],
    }[url.pathname];
    if (!file) return response.writeHead(404).end();
    response.writeHead(200, { "content-type": `${file[1]}; charset=utf-8` }).end(readFileSync(file[0]));
  });
  await new Promise((resolve) => pages.listen(0, "127.0.0.1", resolve));
  [browser] = await Promise.all([launchChromium(), freePort().then((port) => worker.start(port))]);
});

after(async () => {
  await browser?.close().catch(() => {});
  await worker?.dispose();
  pages?.closeAllConnections();
  await new Promise((resolve) => (pages ? pages.close(resolve) : resolve()));
});

/** One client's events (page.html's or NODE_CLIENT's reports), and waits on them. */
class Recorder {
  states = [];
  details = [];
  /** [status, expiresAt, error code or null] */
  refreshes = [];
  errors = [];
  sockets = 0;
  subscribed = null;
  envelopes = [];
  #waiters = new Set();

  constructor(name) {
    this.name = name;
  }

  record(event) {
    if (event.kind == "state") {
      this.states.push(event.state);
      this.details.push(event.detail);
    } else if (event.kind == "refresh") {
      this.refreshes.push([event.status, event.expiresAt, event.error]);
    } else if (event.kind == "error") {
      this.errors.push(event.code);
    } else if (event.kind == "socket") {
      this.sockets += 1;
    } else if (event.kind == "subscribed") {
      this.subscribed = event.confirmation;
    } else if (event.kind == "envelope") {
      this.envelopes.push(event.envelope);
    } else {
      problems.push(`${this.name}: ${JSON.stringify(event)}`);
    }
    for (const check of this.#waiters) check();
  }

  /** Resolves once `condition(this)` holds; fails after WAIT_MS with everything seen. */
  until(condition, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition(this)) return;
        this.#waiters.delete(check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        const { name, states, details, refreshes, errors, sockets } = this;
        reject(
          new Error(
            `${name}: ${what}\n${JSON.stringify({ states, details, refreshes, errors, sockets })}\n` +
              `${problems.join("\n")}\n${worker.log().slice(-4000)}`,
          ),
        );
      }, WAIT_MS);
      this.#waiters.add(check);
      check();
    });
  }
}

/** page.html in Chromium, its events reported to `recorder`. */
async function inChromium(recorder, { user, token, type }) {
  const page = await browser.newPage();
  recordProblems(page, problems);
  await page.exposeFunction("reportEvent", (event) => recorder.record(event));
  const url = new URL(`http://127.0.0.1:${pages.address().port}/`);
  url.search = new URLSearchParams({
    server: `ws://127.0.0.1:${worker.port}`,
    subscribe: "1",
    type,
    ...(user ? { tokenUrl: `/token?user=${encodeURIComponent(user)}` } : { token }),
  });
  await page.goto(url.href, { timeout: WAIT_MS });
  return { close: () => page.close() };
}

// The module as it is, in a Node process (global WebSocket, behind a flag
// before Node 22): every event as a JSON line on stdout.
const NODE_CLIENT = `
  const { HopeFlowClient } = await import(process.env.MODULE);
  const report = (event) => console.log(JSON.stringify(event));
  const { TOKEN, TOKEN_URL } = process.env;
  class CountingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      report({ kind: "socket", url });
    }
  }
  const client = new HopeFlowClient(process.env.SERVER, {
    ...(TOKEN_URL ? { getToken: async () => (await fetch(TOKEN_URL)).text() } : { token: TOKEN }),
    WebSocket: CountingWebSocket,
  });
  client.onState((state, detail) => report({ kind: "state", state, detail: detail ?? null }));
  client.onError((error) => report({ kind: "error", code: error.code }));
  client.onRefresh((status, { expiresAt, error }) =>
    report({ kind: "refresh", status, expiresAt, error: error?.code ?? null }),
  );
  client.onEnvelope((envelope) => {
    report({ kind: "envelope", envelope });
    return { node: true, n: envelope.payload.n };
  });
  client.subscribe([{ type: process.env.TYPE }]).then(
    (confirmation) => report({ kind: "subscribed", confirmation }),
    (error) => report({ kind: "subscribe_failed", code: error.code }),
  );
  process.stdin.resume().on("end", () => client.close());
`;

async function inNode(recorder, { user, token, type }) {
  const flags = Number(process.versions.node.split(".")[0]) < 22 ? ["--experimental-websocket"] : [];
  const child = spawn(process.execPath, [...flags, "--no-warnings", "--input-type=module", "-e", NODE_CLIENT], {
    env: {
      ...process.env,
      MODULE: pathToFileURL(join(ROOT, "clients/js/hopeflow.js")).href,
      SERVER: `ws://127.0.0.1:${worker.port}`,
      TYPE: type,
      ...(user
        ? { TOKEN_URL: `http://127.0.0.1:${pages.address().port}/token?user=${encodeURIComponent(user)}` }
        : { TOKEN: token }),
    },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  createInterface({ input: child.stdout }).on("line", (line) => {
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      return problems.push(`${recorder.name}: ${line}`);
    }
    recorder.record(event);
  });
  return {
    close: async () => {
      child.stdin.end();
      await Promise.race([exited, delay(WAIT_MS)]);
      child.kill("SIGKILL");
    },
  };
}

async function operator(method, path, body) {
  const response = await fetch(worker.url(path), {
    method,
    headers: {
      authorization: `Bearer ${worker.mint("refresh-test-operator", { scope: "operator" })}`,
      ...(body && { "content-type": "application/json" }),
    },
    body: body && JSON.stringify(body),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `${method} ${path}: ${text}`);
  return JSON.parse(text);
}

const socketsOf = (userId) => operator("GET", `/users/${encodeURIComponent(userId)}/sockets`);
const publish = (userId, n) =>
  operator("POST", "/publish?detail=true", { userId, type: "chat_message", payload: { n } });

/** The socket of the sockets view subscribed to `type`. */
const socketOf = (view, type) => view.sockets.find((socket) => socket.filters.some((filter) => filter.type == type));

/**
 * The scenario, with clients started by `start` (inChromium or inNode): one
 * with getToken (served by /token: the first token, then, once the test has
 * read the socket's first expiry, a token of an hour), one with a fixed token
 * of the same exp, both on one user.
 */
async function refreshOutlivesTheFirstToken(start) {
  const userId = `refresh-${randomUUID()}`;
  const exp1 = Math.floor(Date.now() / 1000) + LIFETIME_SECS;
  let exp2;
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  let served = 0;
  tokenSources.set(userId, async () => {
    if (++served == 1) return worker.mint(userId, { exp: exp1 });
    await gate;
    exp2 = Math.floor(Date.now() / 1000) + 3600;
    return worker.mint(userId, { exp: exp2 });
  });
  const refreshing = new Recorder("the getToken client");
  const fixed = new Recorder("the fixed-token client");
  const clients = [];
  try {
    clients.push(await start(refreshing, { user: userId, type: "chat_message" }));
    clients.push(await start(fixed, { token: worker.mint(userId, { exp: exp1 }), type: "control" }));
    await refreshing.until((r) => r.subscribed, "not subscribed");
    await fixed.until((r) => r.subscribed, "not subscribed");

    // The sockets view gives each socket its token's exp.
    const before = await socketsOf(userId);
    assert.equal(before.count, 2, JSON.stringify(before));
    const { socketId } = socketOf(before, "chat_message");
    assert.equal(socketOf(before, "chat_message").expiresAt, exp1);
    assert.equal(socketOf(before, "control").expiresAt, exp1);

    // token_expiring, NOTICE_SECS before exp: getToken is called (the gate
    // holds its answer until now) and its token sent as a refresh.
    await refreshing.until((r) => r.refreshes.length, "no token_expiring reported");
    assert.deepEqual(refreshing.refreshes, [["expiring", exp1, null]]);
    assert.ok(Date.now() / 1000 < exp1, "the notice came after exp");
    release();
    await refreshing.until((r) => r.refreshes.length > 1, "the refresh was not answered");
    assert.deepEqual(refreshing.refreshes, [
      ["expiring", exp1, null],
      ["refreshed", exp2, null],
    ]);

    // At exp1 (no leeway) the object's alarm closes the fixed token's socket:
    // 4002, and the client stops.
    await fixed.until((r) => r.states.includes("closed"), "the fixed token's client did not end");
    assert.ok(Date.now() / 1000 >= exp1, "closed before exp");
    assert.deepEqual(fixed.states, ["connecting", "open", "closed"]);
    assert.deepEqual(fixed.details.at(-1), { code: 4002, reason: "token expired" });
    assert.deepEqual(fixed.refreshes, [["expiring", exp1, null]]);
    assert.equal(fixed.sockets, 1, "the fixed token's client connected again");
    assert.deepEqual(fixed.errors, []);

    // The refreshed socket, past the first token's end: the same one, with
    // the new exp, and it still delivers.
    const after = await socketsOf(userId);
    assert.deepEqual(
      after.sockets.map((socket) => [socket.socketId, socket.expiresAt]),
      [[socketId, exp2]],
    );
    const answer = await publish(userId, 1);
    assert.equal(answer.clientCount, 1, JSON.stringify(answer));
    assert.equal(answer.deliveries[0].socketId, socketId);
    assert.equal(answer.deliveries[0].status, "acked");
    assert.equal(answer.results[0].n, 1);
    await refreshing.until((r) => r.envelopes.length, "the envelope was not handled");
    assert.deepEqual(refreshing.states, ["connecting", "open"]);
    assert.equal(refreshing.sockets, 1, "the getToken client connected again");
    assert.equal(served, 2, "getToken: the first token and the refresh");
    assert.deepEqual(refreshing.errors, []);
  } finally {
    release();
    for (const client of clients) await client.close();
    tokenSources.delete(userId);
  }
}

test(
  "Chromium: a refresh keeps the same socket delivering past the first token's exp; a fixed token ends in 'closed' with 4002",
  { timeout: 4 * WAIT_MS },
  async () => {
    problems.length = 0;
    await refreshOutlivesTheFirstToken(inChromium);
    assert.deepEqual(problems, []);
  },
);

test(
  "Node: a refresh keeps the same socket delivering past the first token's exp; a fixed token ends in 'closed' with 4002",
  { timeout: 4 * WAIT_MS },
  async () => {
    problems.length = 0;
    await refreshOutlivesTheFirstToken(inNode);
    assert.deepEqual(problems, []);
  },
);
