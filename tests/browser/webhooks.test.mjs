// Webhooks (issue 22) from a receiver's side, against the prebuilt worker
// (`make build`) whose WEBHOOK_URL is a node:http receiver on 127.0.0.1:
// - the JavaScript verification snippet of docs/webhooks.md, taken from the
//   document itself (so the documented code is what is tested), accepts a
//   request the worker really signed, and refuses it tampered with, checked
//   301 s later, under another secret, or with a malformed header; it also
//   accepts the document's example request;
// - the debug console's sockets panel shows the user's webhook outbox
//   (pending, dropped, last error, next attempt) while the receiver fails,
//   and after it recovers; hidden when the view has none. The page is
//   src/console.html as it is in this tree (served in place of the built
//   one, under the worker's own headers and CSP): console.test.mjs checks
//   that the build serves the same file. Screenshot of the panel:
//   target/console-webhooks.png.
// Every wait is on an event or a time-boxed poll.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { join } from "node:path";
import { ROOT, WAIT_MS, Worker, delay, freePort, launchChromium, recordProblems } from "./support.mjs";

/** WEBHOOK_SECRET of the test's worker: 32 characters or more. */
const SECRET = `webhooks-test-${randomBytes(16).toString("hex")}`;
const DOC = readFileSync(join(ROOT, "docs/webhooks.md"), "utf8");
/** The console's sockets panel while the receiver fails. */
const SCREENSHOT = join(ROOT, "target/console-webhooks.png");

/** The fenced blocks of `language` in docs/webhooks.md. */
const blocks = (language) => [...DOC.matchAll(new RegExp("^```" + language + "\\n([\\s\\S]*?)^```$", "gm"))].map((m) => m[1]);

/** verifyHopeFlowWebhook, from the one ```js block of the document that defines it. */
async function documentedVerify() {
  const defining = blocks("js").filter((code) => code.includes("async function verifyHopeFlowWebhook("));
  assert.equal(defining.length, 1, "docs/webhooks.md has one ```js block defining verifyHopeFlowWebhook");
  const module = `${defining[0]}\nexport { verifyHopeFlowWebhook };\n`;
  const { verifyHopeFlowWebhook } = await import(`data:text/javascript,${encodeURIComponent(module)}`);
  return verifyHopeFlowWebhook;
}

/** The requests the worker sends, answered 500 for the users in `failing`, else 200. */
class Receiver {
  requests = [];
  failing = new Set();
  #server = createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const fails = [...this.failing].some((user) => body.includes(`"userId":${JSON.stringify(user)}`));
      const status = fails ? 500 : 200;
      this.requests.push({
        method: request.method,
        contentType: request.headers["content-type"],
        header: request.headers["hopeflow-signature"],
        body,
        status,
      });
      response.writeHead(status, { "content-type": "text/plain" }).end(fails ? "failing on purpose" : "ok");
    });
  });

  async start() {
    await new Promise((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${this.#server.address().port}/hooks`;
  }

  /** The first request (oldest first) that `matches`, waited for. */
  async next(matches, what) {
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      const found = this.requests.find(matches);
      if (found) return found;
      await delay(20);
    }
    throw new Error(`no webhook request ${what} in time; got ${JSON.stringify(this.requests, null, 1)}\n${worker.log().slice(-4000)}`);
  }

  stop() {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(resolve));
  }
}

const forUser = (userId) => (request) => request.body.includes(`"userId":${JSON.stringify(userId)}`);

const receiver = new Receiver();
let worker;

before(async () => {
  const url = await receiver.start();
  worker = new Worker({ WEBHOOK_URL: url, WEBHOOK_SECRET: SECRET, CONSOLE_ENABLED: "true" });
  await worker.start(await freePort());
});

after(async () => {
  await worker?.dispose();
  await receiver.stop();
});

/** A WebSocket of `userId` to the worker: the upgrade alone (enough for presence); destroy() closes it. */
function openSocket(userId) {
  return new Promise((resolve, reject) => {
    const request = httpRequest(worker.url(`/?token=${worker.mint(userId)}`), {
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": randomBytes(16).toString("base64"),
      },
      timeout: WAIT_MS,
    });
    request.once("upgrade", (_response, socket) => {
      socket.on("error", () => {}); // destroyed by the test
      resolve(socket);
    });
    request.once("response", (response) => reject(new Error(`no upgrade: ${response.statusCode}`)));
    request.once("timeout", () => request.destroy(new Error("no upgrade in time")));
    request.once("error", reject);
    request.end();
  });
}

/** The user's sockets view, as an operator reads it. */
async function socketsView(userId) {
  const response = await fetch(worker.url(`/users/${encodeURIComponent(userId)}/sockets`), {
    headers: { authorization: `Bearer ${worker.mint("webhooks-test-operator", { scope: "operator" })}` },
  });
  assert.equal(response.status, 200);
  return response.json();
}

async function untilView(userId, accept, what) {
  const deadline = Date.now() + WAIT_MS;
  let view;
  while (Date.now() < deadline) {
    view = await socketsView(userId);
    if (accept(view.webhooks)) return view;
    await delay(100);
  }
  throw new Error(`${what}: the sockets view stayed ${JSON.stringify(view)}`);
}

test("the documented snippet accepts a request the worker signed, and refuses it tampered with, late, or under another secret", async () => {
  const verify = await documentedVerify();
  const userId = `hooks-${randomUUID()}`;
  const socket = await openSocket(userId);
  try {
    const request = await receiver.next(forUser(userId), `for ${userId}`);
    assert.equal(request.method, "POST");
    assert.equal(request.contentType, "application/json");
    const t = Number(/(?:^|,)\s*t=(\d+)/.exec(request.header)?.[1]);
    assert.ok(Math.abs(t - Date.now() / 1000) < 60, `t=${t} is the worker's clock: ${request.header}`);

    // Valid: with the receiver's clock, and at the edge of the tolerance.
    const events = await verify(SECRET, request.header, request.body);
    assert.equal(events.length, 1, request.body);
    const [online] = events;
    assert.equal(online.type, "user.online");
    assert.equal(online.userId, userId);
    assert.equal(online.seq, 1);
    assert.equal(online.sockets, 1);
    assert.match(online.id, /^[0-9a-f-]{36}$/);
    assert.ok(Math.abs(online.at - Date.now()) < 60_000, `at ${online.at}`);
    assert.deepEqual(await verify(SECRET, request.header, request.body, t + 300), events);
    assert.deepEqual(await verify(SECRET, request.header, request.body, t - 300), events);

    // Tampered with: one character of the body.
    const tampered = request.body.replace('"sockets":1', '"sockets":2');
    assert.notEqual(tampered, request.body);
    await assert.rejects(verify(SECRET, request.header, tampered, t), /the signature does not match the body/);
    // Replayed later: the time is signed, so it cannot be moved either.
    await assert.rejects(verify(SECRET, request.header, request.body, t + 301), /more than 300 s from now/);
    await assert.rejects(verify(SECRET, request.header.replace(`t=${t}`, `t=${t + 301}`), request.body, t + 301), /the signature does not match/);
    // Another secret, and headers that are not signatures.
    await assert.rejects(verify(`${SECRET}-other`, request.header, request.body, t), /the signature does not match/);
    for (const header of [undefined, "", `t=${t}`, "v1=00", `t=soon,${request.header.split(",")[1]}`, `t=${t},v1=xyz`]) {
      await assert.rejects(verify(SECRET, header, request.body, t), /malformed HopeFlow-Signature header/, String(header));
    }
    // Signed, but not events.
    const notEvents = '{"events":{}}';
    const signed = `t=${t},v1=${createHmac("sha256", SECRET).update(`${t}.${notEvents}`).digest("hex")}`;
    await assert.rejects(verify(SECRET, signed, notEvents, t), /malformed webhook body/);
  } finally {
    socket.destroy();
  }
});

test("the document's example request verifies with the document's example secret", async () => {
  const verify = await documentedVerify();
  const example = blocks("http").find((block) => block.includes("HopeFlow-Signature:"));
  assert.ok(example, "docs/webhooks.md has an ```http example request");
  const header = /^HopeFlow-Signature: (.*)$/m.exec(example)[1];
  const body = example.trimEnd().split("\n").at(-1);
  const secret = /`WEBHOOK_SECRET` =\s*`([^`]+)`/.exec(DOC)?.[1];
  assert.ok(secret?.length >= 32, "the example secret is named, and long enough");
  const t = Number(/t=(\d+)/.exec(header)[1]);
  const [event] = await verify(secret, header, body, t);
  assert.equal(event.type, "user.online");
  await assert.rejects(verify(secret, header, body), /more than 300 s from now/, "an old example is refused today");
});

test("the console's sockets panel shows the user's webhook outbox", { timeout: 6 * WAIT_MS }, async () => {
  const userId = `hooks-console-${randomUUID()}`;
  receiver.failing.add(userId);
  const browser = await launchChromium();
  const problems = [];
  let socket;
  try {
    const page = await browser.newPage();
    recordProblems(page, problems);
    const sourcePage = readFileSync(join(ROOT, "src/console.html"), "utf8");
    await page.route(worker.url("/console"), async (route) => {
      const response = await route.fetch();
      const headers = { ...response.headers() };
      delete headers["content-length"];
      await route.fulfill({ response, headers, body: sourcePage });
    });
    await page.goto(worker.url("/console"), { timeout: WAIT_MS });
    await page.waitForSelector("body[data-ready=true]", { timeout: WAIT_MS, state: "attached" });
    assert.equal(await page.isHidden("#sockets-webhooks"), true, "hidden before any view");

    // A socket of the user makes them online; the receiver answers 500. (Not
    // the page's own socket: Chromium refuses a WebSocket to 127.0.0.1 from
    // a page the test fulfilled, as if from a public address; connecting
    // from the console is console.test.mjs's.)
    socket = await openSocket(userId);
    await page.fill("#token", worker.mint("webhooks-test-operator", { scope: "operator" }));
    await page.fill("#sockets-user", userId);
    await receiver.next((r) => forUser(userId)(r) && r.status == 500, `failing for ${userId}`);
    await untilView(userId, (hooks) => hooks?.lastError == "HTTP 500", "no failure recorded");

    /** Clicks Refresh; the view the page got. */
    const refresh = async () => {
      const path = `/users/${encodeURIComponent(userId)}/sockets`;
      await page.evaluate(() => (document.getElementById("sockets-status").textContent = ""));
      const [response] = await Promise.all([
        page.waitForResponse((r) => new URL(r.url()).pathname == path, { timeout: WAIT_MS }),
        page.click("#sockets-refresh"),
      ]);
      const view = await response.json();
      await page.waitForFunction((v) => document.getElementById("sockets-status").textContent.startsWith(`${v}:`), userId, { timeout: WAIT_MS });
      return view;
    };
    const shown = () =>
      page.evaluate(() => ({
        hidden: document.getElementById("sockets-webhooks").hidden,
        pending: document.getElementById("webhooks-pending").textContent,
        dropped: document.getElementById("webhooks-dropped").textContent,
        lastError: document.getElementById("webhooks-last-error").textContent,
        failing: document.getElementById("webhooks-last-error").classList.contains("failing"),
        next: document.getElementById("webhooks-next-attempt").textContent,
        nextAt: document.getElementById("webhooks-next-attempt").dataset.at,
      }));

    const failing = await refresh();
    assert.equal(failing.webhooks.lastError, "HTTP 500", JSON.stringify(failing));
    assert.ok(failing.webhooks.pending >= 1 && failing.webhooks.nextAttemptAt > 0, JSON.stringify(failing));
    const during = await shown();
    assert.deepEqual(
      { ...during, next: undefined },
      {
        hidden: false,
        pending: String(failing.webhooks.pending),
        dropped: "0",
        lastError: "HTTP 500",
        failing: true,
        next: undefined,
        nextAt: String(failing.webhooks.nextAttemptAt),
      },
    );
    assert.match(during.next, /^\d\d:\d\d:\d\d$/);
    assert.ok(await page.isVisible("#sockets-webhooks"));
    mkdirSync(join(ROOT, "target"), { recursive: true });
    await page.locator("#sockets-panel").screenshot({ path: SCREENSHOT });

    // The receiver recovers: the retry delivers, the error clears.
    receiver.failing.delete(userId);
    await receiver.next((r) => forUser(userId)(r) && r.status == 200, `succeeding for ${userId}`);
    await untilView(userId, (hooks) => hooks?.lastError === null && hooks.pending == 0, "the retry did not clear the outbox");
    const recovered = await refresh();
    assert.deepEqual(recovered.webhooks, { pending: 0, dropped: 0, lastError: null, nextAttemptAt: null });
    assert.deepEqual(await shown(), { hidden: false, pending: "0", dropped: "0", lastError: "none", failing: false, next: "none", nextAt: "" });

    // A view without webhooks (a server without WEBHOOK_URL): hidden.
    await page.route(`**/users/*/sockets`, async (route) => {
      const response = await route.fetch();
      const { webhooks: _, ...rest } = await response.json();
      const headers = { ...response.headers() };
      delete headers["content-length"];
      await route.fulfill({ response, headers, json: rest });
    });
    const without = await refresh();
    assert.equal(without.webhooks, undefined);
    assert.equal(await page.isHidden("#sockets-webhooks"), true);
    assert.deepEqual(problems, []);
  } finally {
    socket?.destroy();
    receiver.failing.delete(userId);
    await browser.close().catch(() => {});
  }
});
