// The debug console (issue 11, src/console.html) in headless Debian Chromium
// on a phone-sized viewport, served by the prebuilt worker (`make build`)
// with CONSOLE_ENABLED=true: mint a dev token in the page, connect,
// subscribe, publish to its own user and see the delivery and its ack in the
// answer, list the socket in the sockets panel, disconnect it; a token minted
// in the page is refreshed on the open socket, a pasted one shows its expiry
// and ends with the server's 4002. Screenshots go
// to target/console.png (after the publishes) and target/console-end.png.
// That /console is 404 without CONSOLE_ENABLED is checked in browser.test.mjs.
// Every wait is on an event and time-boxed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, WAIT_MS, Worker, freePort, hs256, launchChromium, mint, recordProblems } from "./support.mjs";

const SCREENSHOT = join(ROOT, "target/console.png");
const SCREENSHOT_END = join(ROOT, "target/console-end.png");
/** An iPhone 12-14's CSS viewport. */
const PHONE = { width: 390, height: 844 };

let worker;
let browser;
/** Console errors, page errors and CSP violations of the page. */
const problems = [];

before(async () => {
  // A short ack timeout: the publish the page does not ack answers within 1 s.
  // Token lifetime made short to test: no leeway, the notice 2 s before exp.
  worker = new Worker({
    CONSOLE_ENABLED: "true",
    ACK_TIMEOUT_MS: "1000",
    JWT_LEEWAY_SECS: "0",
    TOKEN_REFRESH_NOTICE_SECS: "2",
  });
  [browser] = await Promise.all([launchChromium(), freePort().then((port) => worker.start(port))]);
});

after(async () => {
  await browser?.close().catch(() => {});
  await worker?.dispose();
});

/** Waits for `selector`, or fails with what the page and the worker said. */
async function waitFor(page, selector, what, state = "visible") {
  try {
    return await page.waitForSelector(selector, { timeout: WAIT_MS, state });
  } catch (error) {
    throw new Error(`${what}: ${error.message}\n${await pageState(page)}`);
  }
}

async function until(page, condition, arg, what) {
  try {
    await page.waitForFunction(condition, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (error) {
    throw new Error(`${what}: ${error.message}\n${await pageState(page)}`);
  }
}

async function pageState(page) {
  const text = await page
    .evaluate(() =>
      ["state", "events", "connect-error", "subscribe-result", "publish-error", "publish-status", "sockets-error", "sockets-status"]
        .map((id) => `#${id}: ${document.getElementById(id)?.textContent}`)
        .join("\n"),
    )
    .catch(() => "unreadable");
  return `${text}\n${problems.join("\n")}\n${worker.log().slice(-4000)}`;
}

/** The whole page, from the top (a sticky header is drawn where the page is scrolled to). */
async function screenshot(page, path) {
  mkdirSync(join(ROOT, "target"), { recursive: true });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path, fullPage: true });
}

const text = (page, selector) => page.locator(selector).first().innerText();
const expOf = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url")).exp;

test("the console and its module are served with a strict CSP", async () => {
  const response = await fetch(worker.url("/console"));
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/html/);
  assert.match(response.headers.get("content-security-policy"), /default-src 'self'/);
  assert.equal(
    await response.text(),
    readFileSync(join(ROOT, "src/console.html"), "utf8"),
    "the worker serves another src/console.html than the one here: rebuild (`make build`; when make says it is up to date, `make -W src/operator_routes.rs build`)",
  );
  const module = await fetch(worker.url("/console/hopeflow.js"));
  assert.equal(module.status, 200);
  assert.match(module.headers.get("content-type"), /^text\/javascript/);
  assert.equal(await module.text(), readFileSync(join(ROOT, "clients/js/hopeflow.js"), "utf8"));
});

test(
  "on a phone-sized screen: mint, connect, subscribe, publish to itself, see the delivery and its ack, list and disconnect the socket",
  { timeout: 8 * WAIT_MS },
  async () => {
    const userId = `console-${randomUUID()}`;
    const other = `console-other-${randomUUID()}`;
    const ackResult = { seen: true, by: "console-test" };
    const context = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    const page = await context.newPage();
    recordProblems(page, problems);
    await page.exposeFunction("reportViolation", (what) => problems.push(`csp: ${what}`));
    await page.addInitScript(() =>
      document.addEventListener("securitypolicyviolation", (event) =>
        window.reportViolation(`${event.violatedDirective} ${event.blockedURI}`),
      ),
    );
    // The URLs of the console's sockets: its token is an offered protocol.
    const socketUrls = [];
    page.on("websocket", (socket) => socketUrls.push(socket.url()));
    try {
      await page.goto(worker.url("/console"), { timeout: WAIT_MS });
      await waitFor(page, "body[data-ready=true]", "the page's module did not run", "attached");
      assert.equal(await page.getAttribute("#state", "data-state"), "idle");

      // Dev-only minting, marked as such, with the test server's secret.
      await page.click("#mint-panel summary");
      assert.match(await text(page, "#mint-panel"), /development only — never paste a production secret/i);
      await page.fill("#mint-secret", worker.secret);
      await page.fill("#mint-user", userId);
      await page.fill("#mint-scope", "publish operator");
      await page.click("#mint");
      await until(page, () => document.getElementById("token").value.split(".").length == 3, null, "no token was minted");
      const token = await page.inputValue("#token");
      const [header, claims, signature] = token.split(".");
      assert.equal(signature, hs256(`${header}.${claims}`, worker.secret), "WebCrypto's signature differs from Node's");
      assert.deepEqual(JSON.parse(Buffer.from(header, "base64url")), { alg: "HS256", typ: "JWT" });
      const decoded = JSON.parse(Buffer.from(claims, "base64url"));
      assert.equal(decoded.userId, userId);
      assert.equal(decoded.scope, "publish operator");
      assert.ok(decoded.exp > decoded.iat, JSON.stringify(decoded));

      // Connect: the state is visible in the sticky header.
      await page.click("#connect");
      await waitFor(page, "#state[data-state=open]", "the console did not connect");
      assert.match(await text(page, "#who"), new RegExp(userId));
      assert.deepEqual(socketUrls, [worker.url("/").replace(/^http/, "ws")], "the socket's URL has a token");
      assert.equal(await page.inputValue("#pub-users"), userId);
      assert.equal(await page.inputValue("#sockets-user"), userId);

      await page.fill("#filter", '{"type":"note"}');
      await page.click("#subscribe");
      await waitFor(page, '#filters [data-testid=filter]:has-text(\'{"type":"note"}\')', "the filter was not confirmed");
      assert.match(await text(page, "#subscribe-result"), /^subscribed: \{"added":1,"total":1[,}]/);

      // A payload that is not JSON is refused in the page, before any request.
      await page.fill("#pub-payload", "{not json");
      await page.click("#publish");
      await waitFor(page, "#publish-error:has-text('not valid JSON')", "a bad payload was not refused");
      assert.equal(await page.isHidden("#publish-answer"), true, "something was published");

      // Publish to itself with detail: the answer carries the ack the page sent.
      await page.fill("#ack-result", JSON.stringify(ackResult));
      await page.fill("#pub-type", "note");
      await page.fill("#pub-payload", '{"text":"hello","n":1}');
      assert.equal(await page.isChecked("#pub-detail"), true, "detail is on by default");
      await page.click("#publish");
      await waitFor(page, "#publish-answer[data-status]", "no answer to the publish");
      const answer = JSON.parse(await page.textContent("#publish-answer"));
      assert.equal(answer.clientCount, 1, JSON.stringify(answer));
      assert.deepEqual(answer.results, [ackResult]);
      assert.equal(answer.deliveries.length, 1);
      assert.equal(answer.deliveries[0].status, "acked");
      assert.deepEqual(answer.deliveries[0].result, ackResult);
      assert.match(await text(page, "#publish-status"), /^200 in \d+ ms — 1 socket reached/);
      // The server's own account of it: the publish log line's fields.
      assert.equal(answer.acked, 1, JSON.stringify(answer));
      assert.match(
        await text(page, "#server-says"),
        new RegExp(`^server says: acked 1, timed out 0, closed 0, ${answer.ms} ms from request to answer$`),
      );
      assert.equal(await text(page, "#publish-detail [data-testid=delivery-detail] .status"), "acked");
      assert.equal(await text(page, "#publish-detail [data-testid=delivery-detail] .id"), answer.deliveries[0].socketId);

      await waitFor(page, "#deliveries [data-testid=delivery]", "the delivery is not listed");
      const first = page.locator("#deliveries [data-testid=delivery]").first();
      assert.equal(await first.locator(".delivery-type").innerText(), "note");
      assert.match(await first.locator(".delivery-id").innerText(), /^[0-9a-f-]{36}$/);
      assert.deepEqual(JSON.parse(await first.locator(".delivery-payload").innerText()), { text: "hello", n: 1 });
      assert.match(await first.locator(".delivery-ack").innerText(), /ack sent: \{"seen":true,"by":"console-test"\}/);

      // Several users: one envelope through /publish/batch, newest delivery first.
      await page.fill("#pub-users", `${userId}, ${other}`);
      await page.fill("#pub-payload", '{"text":"batch","n":2}');
      await page.click("#publish");
      await until(page, () => document.getElementById("publish-answer").textContent.includes('"users"'), null, "no batch answer");
      const batch = JSON.parse(await page.textContent("#publish-answer"));
      assert.deepEqual(
        batch.users.map(({ userId, clientCount, results }) => ({ userId, clientCount, results })),
        [
          { userId, clientCount: 1, results: [ackResult] },
          { userId: other, clientCount: 0, results: [] },
        ],
      );
      assert.match(await text(page, "#publish-detail tbody"), new RegExp(`${other}\\s+no socket with a matching filter`));
      await until(page, () => document.querySelectorAll("#deliveries [data-testid=delivery]").length == 2, null, "the batch delivery is not listed");
      const newest = page.locator("#deliveries [data-testid=delivery]").first();
      assert.equal(await newest.getAttribute("data-envelope-id"), batch.envelopeId);
      assert.equal(JSON.parse(await newest.locator(".delivery-payload").innerText()).n, 2);

      // Acks off: the delivery is listed as not acked, the publisher's answer
      // comes at the ack timeout without a result.
      await page.uncheck("#ack-enabled");
      await page.fill("#pub-users", userId);
      await page.fill("#pub-payload", '{"text":"unacked","n":3}');
      await page.click("#publish");
      await until(page, () => document.getElementById("publish-answer").textContent.includes('"timed_out"'), null, "no answer to the unacked publish");
      const unacked = JSON.parse(await page.textContent("#publish-answer"));
      assert.equal(unacked.clientCount, 1);
      assert.deepEqual(unacked.results, []);
      assert.equal(await text(page, "#publish-detail [data-testid=delivery-detail] .status"), "timed_out");
      assert.match(await text(page, "#server-says"), /^server says: acked 0, timed out 1, closed 0, \d+ ms/);
      assert.match(await page.locator("#deliveries [data-testid=delivery] .delivery-ack").first().innerText(), /not acked: acks are off/);
      await page.check("#ack-enabled");

      // The phone layout: nothing wider than the screen.
      const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert.ok(widths[0] <= widths[1], `the page scrolls sideways on a phone: ${widths}`);

      // The sockets panel (operator scope): this page's socket and its filter.
      await page.click("#sockets-refresh");
      await waitFor(page, "#sockets-list [data-testid=socket]", "the sockets panel lists nothing");
      const sockets = page.locator("#sockets-list [data-testid=socket]");
      assert.equal(await sockets.count(), 1);
      assert.equal(await sockets.first().getAttribute("data-socket-id"), answer.deliveries[0].socketId);
      assert.equal(await sockets.first().locator(".socket-filters").innerText(), '{"type":"note"}');
      assert.match(await sockets.first().locator(".age").innerText(), /^\d+ s$/);
      // Scrolled down to it, the state is still on screen (sticky header).
      const badge = await page.locator("#state").boundingBox();
      assert.ok(badge && badge.y >= 0 && badge.y + badge.height <= PHONE.height, `the state scrolled away: ${JSON.stringify(badge)}`);
      await screenshot(page, SCREENSHOT);

      // Disconnect (4001): the client stops and the state says so.
      await sockets.first().locator("[data-testid=disconnect-socket]").click();
      await waitFor(page, "#state[data-state=closed]", "the state does not show the disconnect");
      assert.equal(await page.getAttribute("#state", "data-code"), "4001");
      assert.match(await text(page, "#state"), /^closed \(4001/);
      await waitFor(page, "#sockets-status:has-text('closed 1 socket')", "the panel does not show the disconnect");

      // Only the user id is kept; the secret and the token never are.
      const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }));
      assert.deepEqual(JSON.parse(stored), { "hopeflow-console.userId": userId });
      assert.deepEqual(problems, []);
      await screenshot(page, SCREENSHOT_END);
    } finally {
      await context.close();
    }
  },
);

test(
  "a pasted token connects; unsubscribe; an operator's disconnect with reconnect (4000) brings the console back, subscribed again",
  { timeout: 6 * WAIT_MS },
  async () => {
    const userId = `console-paste-${randomUUID()}`;
    const context = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    const page = await context.newPage();
    const seen = [];
    recordProblems(page, seen);
    try {
      await page.goto(worker.url("/console"), { timeout: WAIT_MS });
      await waitFor(page, "body[data-ready=true]", "the page's module did not run", "attached");
      // A token made elsewhere (here: by the test), pasted.
      await page.fill("#token", mint(userId, worker.secret, { scope: "publish operator" }));
      await page.click("#connect");
      await waitFor(page, "#state[data-state=open]", "the pasted token did not connect");
      assert.match(await text(page, "#who"), new RegExp(`as ${userId} \\[publish operator\\]`));

      for (const filter of ['{"type":"note"}', '{"type":"other"}']) {
        await page.fill("#filter", filter);
        await page.click("#subscribe");
        await waitFor(page, `#filters [data-testid=filter]:has-text('${filter}')`, `${filter} was not confirmed`);
      }
      await page.fill("#filter", '{"type":"other"}');
      await page.click("#unsubscribe");
      await until(page, () => document.getElementById("subscribe-result").textContent.startsWith("unsubscribed:"), null, "no unsubscribe answer");
      assert.match(await text(page, "#subscribe-result"), /^unsubscribed: \{"removed":1,"total":1\}/);
      assert.deepEqual(await page.locator("#filters [data-testid=filter] code").allInnerTexts(), ['{"type":"note"}']);

      await page.click("#sockets-refresh");
      await waitFor(page, "#sockets-list [data-testid=socket]", "the sockets panel lists nothing");
      const before = await page.locator("#sockets-list [data-testid=socket]").first().getAttribute("data-socket-id");
      await page.check("#sockets-reconnect");
      await page.fill("#sockets-reason", "token revoked");
      await page.locator("#sockets-list [data-testid=socket] [data-testid=disconnect-socket]").first().click();
      await until(
        page,
        () => document.getElementById("events").textContent.includes("reconnecting (4000: token revoked)"),
        null,
        "the 4000 close is not shown",
      );
      await waitFor(page, "#state[data-state=open]", "the console did not come back after 4000");
      // Back with a new socket, and its filter subscribed again.
      await page.click("#sockets-refresh");
      await until(
        page,
        (old) => {
          const socket = document.querySelector("#sockets-list [data-testid=socket]");
          return socket && socket.dataset.socketId != old && socket.querySelector(".socket-filters").textContent == '{"type":"note"}';
        },
        before,
        "the new socket is not listed with its filter",
      );
      assert.equal(await page.locator("#sockets-list [data-testid=socket]").count(), 1);
      assert.deepEqual(seen, []);
    } finally {
      await context.close();
    }
  },
);

test(
  "a token minted here is refreshed on the same socket past its exp; a pasted short token shows its expiry and ends with 4002",
  { timeout: 6 * WAIT_MS },
  async () => {
    const userId = `console-refresh-${randomUUID()}`;
    const seen = [];
    const minting = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    const pasting = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    try {
      const own = await minting.newPage();
      const pasted = await pasting.newPage();
      for (const page of [own, pasted]) {
        recordProblems(page, seen);
        await page.goto(worker.url("/console"), { timeout: WAIT_MS });
        await waitFor(page, "body[data-ready=true]", "the page's module did not run", "attached");
      }

      // Minted here, living 12 s: the console can mint its successors.
      await own.click("#mint-panel summary");
      await own.fill("#mint-secret", worker.secret);
      await own.fill("#mint-user", userId);
      await own.fill("#mint-ttl", "0.2");
      await own.click("#mint");
      await until(own, () => document.getElementById("token").value.split(".").length == 3, null, "no token was minted");
      const first = await own.inputValue("#token");
      const exp1 = expOf(first);
      await own.click("#connect");
      await waitFor(own, "#state[data-state=open]", "the minted token did not connect");
      assert.equal(await own.getAttribute("#expiry", "data-expires-at"), String(exp1));
      assert.equal(await own.getAttribute("#expiry", "data-refresh"), "minted");
      await own.fill("#filter", '{"type":"note"}');
      await own.click("#subscribe");
      await waitFor(own, "#filters [data-testid=filter]", "the filter was not confirmed");
      await own.click("#sockets-refresh");
      await waitFor(own, "#sockets-list [data-testid=socket]", "the sockets panel lists nothing");
      const socket = own.locator("#sockets-list [data-testid=socket]").first();
      const socketId = await socket.getAttribute("data-socket-id");
      assert.equal(await socket.locator(".expires").getAttribute("data-expires-at"), String(exp1));

      // Pasted in another tab: the same user and exp, so the alarm that
      // closes it would close the minted one too, were it not refreshed.
      await pasted.fill("#token", mint(userId, worker.secret, { exp: exp1, scope: "publish operator" }));
      await pasted.click("#connect");
      await waitFor(pasted, "#state[data-state=open]", "the pasted token did not connect");
      assert.equal(await pasted.getAttribute("#expiry", "data-expires-at"), String(exp1));
      assert.equal(await pasted.getAttribute("#expiry", "data-refresh"), "pasted");
      assert.match(await text(pasted, "#expiry"), /^token expires \d\d:\d\d:\d\d \(pasted: not refreshed/);

      // token_expiring, 2 s before exp1: the console mints a new token, the
      // refresh is confirmed, the header and the token field follow it.
      await until(
        own,
        (exp1) => Number(document.getElementById("expiry").dataset.expiresAt) > exp1,
        exp1,
        "the minted token was not refreshed",
      );
      const events = await text(own, "#events");
      assert.match(events, /token expiring at \d\d:\d\d:\d\d: refreshing/);
      assert.match(events, /token refreshed: the socket now expires \d\d:\d\d:\d\d/);
      const second = await own.inputValue("#token");
      assert.notEqual(second, first, "the token field still holds the first token");
      const exp2 = expOf(second);
      assert.ok(exp2 > exp1, `${exp2} > ${exp1}`);

      // The pasted one: told it expires, not refreshed, closed with 4002 at exp1.
      await waitFor(pasted, "#state[data-state=closed]", "the pasted token's socket was not closed");
      assert.ok(Date.now() / 1000 >= exp1, "closed before exp");
      assert.equal(await pasted.getAttribute("#state", "data-code"), "4002");
      assert.match(await text(pasted, "#state"), /^closed \(4002: token expired\)/);
      assert.match(await text(pasted, "#events"), /token expiring at \d\d:\d\d:\d\d: a pasted token is not refreshed/);

      // The minted one, past exp1: the same socket, open all along, delivering.
      assert.equal(await own.getAttribute("#state", "data-state"), "open");
      assert.doesNotMatch(await text(own, "#events"), /reconnecting|closed/);
      await own.click("#sockets-refresh");
      await until(
        own,
        (exp1) => {
          const expires = document.querySelector("#sockets-list [data-testid=socket] .expires");
          return expires && Number(expires.dataset.expiresAt) > exp1;
        },
        exp1,
        "the sockets panel does not show the new expiry",
      );
      assert.equal(await own.locator("#sockets-list [data-testid=socket]").count(), 1);
      assert.equal(await own.locator("#sockets-list [data-testid=socket]").first().getAttribute("data-socket-id"), socketId);
      await own.fill("#pub-type", "note");
      await own.fill("#pub-payload", '{"n":1}');
      await own.click("#publish");
      await waitFor(own, "#publish-answer[data-status]", "no answer to the publish");
      const answer = JSON.parse(await own.textContent("#publish-answer"));
      assert.equal(answer.clientCount, 1, JSON.stringify(answer));
      assert.equal(answer.deliveries[0].socketId, socketId);
      assert.equal(answer.deliveries[0].status, "acked");
      assert.deepEqual(seen, []);
    } finally {
      await minting.close();
      await pasting.close();
    }
  },
);
