// The client's state machine against a fake socket, with mocked timers:
// nothing here waits on the wall clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HopeFlowClient, backoffDelay, connectUrl, socketProtocols } from "../hopeflow.js";

/** Lets every pending promise chain run (setImmediate is not mocked). */
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A socket the test drives by hand; the shape of the browser's, as far as the client uses it. */
function fakeSocketClass() {
  const sockets = [];
  class FakeSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = undefined;
      sockets.push(this);
    }
    send(text) {
      this.sent.push(text);
    }
    close(code) {
      this.closedWith ??= code;
    }
    // Test side.
    /** The token it was opened with: its offered protocol's, else its URL's. */
    get token() {
      const offered = this.protocols?.find((p) => p.startsWith("hopeflow.token."));
      return offered ? offered.slice("hopeflow.token.".length) : new URL(this.url).searchParams.get("token");
    }
    open() {
      this.onopen?.({});
    }
    receive(message) {
      this.onmessage?.({ data: typeof message == "string" ? message : JSON.stringify(message) });
    }
    drop(code = 1006, reason = "") {
      this.onclose?.({ code, reason });
    }
    /** JSON frames sent, pings left out. */
    frames() {
      return this.sent.filter((text) => text != "ping").map((text) => JSON.parse(text));
    }
  }
  return { FakeSocket, sockets };
}

const answer = (status, body = {}) => async () => ({ status, json: async () => body });

/**
 * A client on a fake socket, timers mocked. Options override the defaults;
 * `fetch` defaults to the server saying the token is fine (426).
 */
async function setup(t, options = {}) {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { FakeSocket, sockets } = fakeSocketClass();
  const client = new HopeFlowClient("ws://realtime.test", {
    token: "tok",
    WebSocket: FakeSocket,
    fetch: answer(426, { error: "upgrade_required" }),
    ...options,
  });
  const states = [];
  const details = [];
  const errors = [];
  client.onState((state, detail) => {
    states.push(state);
    details.push(detail);
  });
  client.onError((error) => errors.push(error));
  await flush();
  const socket = () => sockets.at(-1);
  /** Runs the backoff timer and whatever it starts. */
  const elapse = async (ms) => {
    t.mock.timers.tick(ms);
    await flush();
  };
  /** Opens the newest socket and confirms its re-subscriptions. */
  const reopen = async () => {
    const s = socket();
    s.open();
    for (const frame of s.frames()) {
      if (frame.type == "subscribe") s.receive({ type: "subscribed", added: frame.filters.length, total: 0 });
    }
    await flush();
    return s;
  };
  t.after(() => client.close());
  return { client, sockets, socket, states, details, errors, elapse, reopen };
}

/** Whether a promise has settled, without waiting for it. */
async function settled(promise) {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await flush();
  return done;
}

test("connectUrl adds the root path and a URL-encoded ?token=", () => {
  assert.equal(connectUrl("wss://realtime.example.com", "a.b.c"), "wss://realtime.example.com/?token=a.b.c");
  assert.equal(connectUrl("ws://h:8787/", "t"), "ws://h:8787/?token=t");
  assert.equal(connectUrl("ws://h?x=1", "t"), "ws://h/?x=1&token=t");
  assert.equal(connectUrl("wss://h/sub/path?x=1", "t"), "wss://h/sub/path?x=1&token=t");
  const odd = "a b+c/d=e&f?g#h%é";
  assert.equal(connectUrl("ws://h", odd), `ws://h/?token=${encodeURIComponent(odd)}`);
  assert.equal(new URL(connectUrl("ws://h", odd)).searchParams.get("token"), odd);
});

test("by default the token is an offered protocol, not in the URL", async (t) => {
  const { socket } = await setup(t, { token: "a.b.c" });
  assert.equal(socket().url, "ws://realtime.test/");
  assert.deepEqual(socket().protocols, ["hopeflow", "hopeflow.token.a.b.c"]);
  assert.deepEqual(socketProtocols("t"), ["hopeflow", "hopeflow.token.t"]);
});

test("tokenInUrl: the token goes in ?token=, the socket offers no protocol", async (t) => {
  const { socket } = await setup(t, { token: "x y/z", tokenInUrl: true });
  assert.equal(socket().url, "ws://realtime.test/?token=x%20y%2Fz");
  assert.equal(socket().protocols, undefined);
});

test("constructor refuses a missing WebSocket, a non-ws URL and a missing token", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  delete globalThis.WebSocket;
  try {
    assert.throws(() => new HopeFlowClient("ws://h", { token: "t" }), /options\.WebSocket/);
  } finally {
    if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
  }
  const { FakeSocket } = fakeSocketClass();
  assert.throws(() => new HopeFlowClient("http://h", { token: "t", WebSocket: FakeSocket }), TypeError);
  assert.throws(() => new HopeFlowClient("ws://h", { WebSocket: FakeSocket }), /token/);
});

test("states: connecting, open, reconnecting, open, closed", async (t) => {
  const { client, socket, states, details, elapse, reopen } = await setup(t);
  assert.deepEqual(states, ["connecting"]);
  assert.equal(client.state, "connecting");
  await reopen();
  assert.deepEqual(states, ["connecting", "open"]);
  socket().drop(1006, "gone");
  await flush();
  assert.deepEqual(states.at(-1), "reconnecting");
  assert.deepEqual(details.at(-1), { code: 1006, reason: "gone" });
  await elapse(500);
  await reopen();
  assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(details.at(-1), { code: 1000, reason: "closed by the client" });
  assert.equal(socket().closedWith, 1000);
});

test("a first connection that fails goes from connecting to reconnecting", async (t) => {
  const { socket, states, elapse, reopen, sockets } = await setup(t);
  socket().drop(1006);
  await flush();
  assert.deepEqual(states, ["connecting", "reconnecting"]);
  await elapse(500);
  assert.equal(sockets.length, 2);
  await reopen();
  assert.deepEqual(states, ["connecting", "reconnecting", "open"]);
});

test("subscribe resolves on the server's confirmation, with its counts", async (t) => {
  const { client, socket, reopen } = await setup(t);
  await reopen();
  const subscribed = client.subscribe([{ type: "chat_message" }]);
  assert.deepEqual(socket().frames(), [{ type: "subscribe", filters: [{ type: "chat_message" }] }]);
  assert.equal(await settled(subscribed), false);
  socket().receive({ type: "subscribed", added: 1, total: 1 });
  assert.deepEqual(await subscribed, { added: 1, total: 1 });
  const unsubscribed = client.unsubscribe([{ type: "chat_message" }]);
  socket().receive({ type: "unsubscribed", removed: 1, total: 0 });
  assert.deepEqual(await unsubscribed, { removed: 1, total: 0 });
});

test("subscribe and unsubscribe reject with the server's error code", async (t) => {
  const { client, socket, reopen, errors } = await setup(t);
  await reopen();
  // Refused whole: no confirmation follows, the next one is the next request's.
  const limited = client.subscribe([{ type: "a" }]);
  const next = client.subscribe([{ type: "b" }]);
  socket().receive({ type: "error", code: "subscription_limit", message: "too many" });
  socket().receive({ type: "subscribed", added: 1, total: 1 });
  await assert.rejects(limited, { code: "subscription_limit", message: "too many" });
  assert.deepEqual(await next, { added: 1, total: 1 });

  // A warning, then the confirmation of the valid part: rejects, says what applied.
  const partly = client.subscribe([{ type: 1 }, { type: "c" }]);
  socket().receive({ type: "error", code: "invalid_filter", message: "skipped invalid filters: filters[0]" });
  assert.equal(await settled(partly), false);
  socket().receive({ type: "subscribed", added: 1, total: 2 });
  await assert.rejects(partly, { code: "invalid_filter", result: { added: 1, total: 2 } });

  const unsubscribe = client.unsubscribe(Array.from({ length: 51 }, () => ({})));
  socket().receive({ type: "error", code: "too_many_filters", message: "1 ignored" });
  socket().receive({ type: "unsubscribed", removed: 0, total: 2 });
  await assert.rejects(unsubscribe, { code: "too_many_filters" });

  const dropped = client.subscribe([{ type: "d" }]);
  socket().receive({ type: "error", code: "rate_limited", message: "slow down" });
  await assert.rejects(dropped, { code: "rate_limited" });

  // Not tied to a request: reported through onError.
  socket().receive({ type: "error", code: "invalid_json", message: "?" });
  assert.deepEqual(
    errors.map((e) => e.code),
    ["invalid_json"],
  );
  await assert.rejects(client.subscribe("nope"), TypeError);
});

test("subscribe before the first open and while reconnecting waits for the socket", async (t) => {
  const { client, socket, sockets, elapse } = await setup(t);
  const early = client.subscribe([{ type: "a" }]);
  assert.deepEqual(socket().sent, []);
  socket().open();
  assert.deepEqual(socket().frames(), [{ type: "subscribe", filters: [{ type: "a" }] }]);
  socket().receive({ type: "subscribed", added: 1, total: 1 });
  assert.deepEqual(await early, { added: 1, total: 1 });

  socket().drop(1006);
  await flush();
  const late = client.subscribe([{ type: "b" }]);
  const gone = client.unsubscribe([{ type: "a" }]);
  assert.equal(await settled(late), false);
  await elapse(500);
  assert.equal(sockets.length, 2);
  socket().open();
  // Confirmed filters first, then the requests that waited, in order.
  assert.deepEqual(socket().frames(), [
    { type: "subscribe", filters: [{ type: "a" }] },
    { type: "subscribe", filters: [{ type: "b" }] },
    { type: "unsubscribe", filters: [{ type: "a" }] },
  ]);
  socket().receive({ type: "subscribed", added: 1, total: 1 });
  socket().receive({ type: "subscribed", added: 1, total: 2 });
  socket().receive({ type: "unsubscribed", removed: 1, total: 1 });
  assert.deepEqual(await late, { added: 1, total: 2 });
  assert.deepEqual(await gone, { removed: 1, total: 1 });
});

test("after a reconnect every confirmed filter is subscribed again before 'open'", async (t) => {
  const { client, socket, states, elapse } = await setup(t);
  socket().open();
  const many = Array.from({ length: 60 }, (_, i) => ({ type: "t", n: String(i) }));
  const a = client.subscribe(many.slice(0, 40));
  const b = client.subscribe(many.slice(40));
  const c = client.subscribe([{ type: "removed" }]);
  socket().receive({ type: "subscribed", added: 40, total: 40 });
  socket().receive({ type: "subscribed", added: 20, total: 60 });
  socket().receive({ type: "subscribed", added: 1, total: 61 });
  await Promise.all([a, b, c]);
  // Equal whatever the key order.
  const d = client.unsubscribe([{ type: "removed" }, { n: "0", type: "t" }]);
  socket().receive({ type: "unsubscribed", removed: 2, total: 59 });
  await d;
  // In flight when the socket drops: sent again on the next socket.
  const inFlight = client.subscribe([{ type: "new" }]);
  socket().drop(1012, "socket state lost");
  await flush();
  await elapse(500);
  socket().open();
  await flush();
  assert.equal(states.at(-1), "reconnecting", "not open before the filters are back");
  const frames = socket().frames();
  assert.deepEqual(
    frames.map((f) => f.filters.length),
    [50, 9, 1],
  );
  assert.deepEqual(frames.slice(0, 2).flatMap((f) => f.filters), many.slice(1));
  assert.deepEqual(frames[2], { type: "subscribe", filters: [{ type: "new" }] });
  socket().receive({ type: "subscribed", added: 50, total: 50 });
  await flush();
  assert.equal(states.at(-1), "reconnecting");
  socket().receive({ type: "subscribed", added: 9, total: 59 });
  await flush();
  assert.equal(states.at(-1), "open");
  socket().receive({ type: "subscribed", added: 1, total: 60 });
  assert.deepEqual(await inFlight, { added: 1, total: 60 });
});

test("filters that partly applied are re-subscribed as the server kept them", async (t) => {
  const { client, socket, elapse } = await setup(t);
  socket().open();
  const partly = client.subscribe([{ type: "ok" }, { type: 5 }, "x"]);
  socket().receive({ type: "error", code: "invalid_filter", message: "" });
  socket().receive({ type: "subscribed", added: 1, total: 1 });
  await assert.rejects(partly, { code: "invalid_filter" });
  socket().drop();
  await flush();
  await elapse(500);
  socket().open();
  assert.deepEqual(socket().frames(), [{ type: "subscribe", filters: [{ type: "ok" }] }]);
});

test("getToken is called before every connect, and its token is used", async (t) => {
  let calls = 0;
  const { socket, sockets, elapse, reopen } = await setup(t, {
    token: undefined,
    getToken: async () => `token-${++calls}`,
  });
  assert.equal(socket().token, "token-1");
  await reopen();
  socket().drop();
  await flush();
  await elapse(500);
  assert.equal(socket().token, "token-2");
  socket().drop(); // before open: the probe says the token is fine
  await flush();
  await elapse(1000);
  assert.equal(socket().token, "token-3");
  assert.equal(calls, sockets.length);
});

test("after 4000 (an operator asks for a fresh token) it reconnects with getToken's next token", async (t) => {
  let calls = 0;
  const { client, socket, sockets, elapse, reopen } = await setup(t, {
    token: undefined,
    getToken: async () => `token-${++calls}`,
  });
  await reopen();
  socket().drop(4000, "disconnected by an operator; reconnect with a fresh token");
  await flush();
  assert.equal(client.state, "reconnecting");
  await elapse(500);
  assert.equal(sockets.length, 2);
  assert.equal(socket().token, "token-2");
});

test("a failing getToken is retried with backoff and reported", async (t) => {
  let calls = 0;
  const { sockets, states, errors, elapse } = await setup(t, {
    token: undefined,
    getToken: async () => {
      if (++calls == 1) throw new Error("auth server down");
      return "fresh";
    },
  });
  assert.equal(sockets.length, 0);
  assert.equal(states.at(-1), "reconnecting");
  assert.equal(errors[0].code, "token_failed");
  await elapse(500);
  assert.equal(sockets.at(-1).token, "fresh");
});

for (const code of [1008, 1009, 4001]) {
  test(`no reconnect after close code ${code}`, async (t) => {
    const { client, socket, sockets, details, reopen } = await setup(t);
    await reopen();
    const pending = client.subscribe([{ type: "a" }]).catch((error) => error);
    socket().drop(code, "fix the client");
    await flush();
    assert.equal(client.state, "closed");
    assert.deepEqual(details.at(-1), { code, reason: "fix the client" });
    assert.equal((await pending).code, "closed");
    t.mock.timers.tick(10 * 60 * 1000);
    await flush();
    assert.equal(sockets.length, 1);
  });
}

test("no reconnect after close(); pending and later calls reject with 'closed'", async (t) => {
  const { client, socket, sockets, states, reopen } = await setup(t);
  await reopen();
  const inFlight = client.subscribe([{ type: "a" }]);
  client.close();
  await assert.rejects(inFlight, { code: "closed" });
  await assert.rejects(client.subscribe([{ type: "b" }]), { code: "closed" });
  assert.equal(socket().closedWith, 1000);
  socket().drop(1000); // the close event comes later and changes nothing
  t.mock.timers.tick(10 * 60 * 1000);
  await flush();
  assert.equal(sockets.length, 1);
  assert.deepEqual(states, ["connecting", "open", "closed"]);
});

test("close() while waiting to reconnect stops the loop", async (t) => {
  const { client, socket, sockets } = await setup(t);
  socket().drop();
  await flush();
  const queued = client.subscribe([{ type: "a" }]);
  client.close();
  await assert.rejects(queued, { code: "closed" });
  t.mock.timers.tick(10 * 60 * 1000);
  await flush();
  assert.equal(sockets.length, 1);
});

test("a 401 stops only when getToken gives the same token again", async (t) => {
  const probed = [];
  const refused = async (url, init) => {
    probed.push([url, init]);
    return { status: 401, json: async () => ({ error: "token_expired", message: "expired" }) };
  };

  await t.test("same token: closed, with the reason", async (t) => {
    const { client, sockets, socket, details } = await setup(t, { token: "old", fetch: refused });
    socket().drop(1006);
    await flush();
    assert.equal(client.state, "closed");
    assert.deepEqual(details.at(-1), { status: 401, error: "token_expired", message: "expired" });
    // The probe's token is a header too, not in the URL.
    assert.deepEqual(probed.splice(0), [["http://realtime.test/", { headers: { authorization: "Bearer old" } }]]);
    t.mock.timers.tick(10 * 60 * 1000);
    await flush();
    assert.equal(sockets.length, 1);
  });

  await t.test("tokenInUrl: the probe sends ?token=", async (t) => {
    const { client, socket } = await setup(t, { token: "old", fetch: refused, tokenInUrl: true });
    socket().drop(1006);
    await flush();
    assert.equal(client.state, "closed");
    assert.deepEqual(probed.splice(0), [["http://realtime.test/?token=old", undefined]]);
  });

  await t.test("a new token: reconnects with it", async (t) => {
    const tokens = ["old", "new"];
    let calls = 0;
    const { client, sockets, socket, details, elapse, reopen } = await setup(t, {
      token: undefined,
      getToken: () => tokens[calls++],
      fetch: refused,
    });
    socket().drop(1006);
    await flush();
    assert.equal(client.state, "reconnecting");
    assert.equal(details.at(-1).status, 401);
    await elapse(500);
    assert.equal(socket().token, "new");
    assert.equal(calls, sockets.length);
    await reopen();
    assert.equal(client.state, "open");
  });
});

test("a 403 (origin refused) stops at once", async (t) => {
  let tokenCalls = 0;
  const { client, socket, details } = await setup(t, {
    token: undefined,
    getToken: () => (tokenCalls++, "t"),
    fetch: answer(403, { error: "origin_not_allowed", message: "no" }),
  });
  socket().drop(1006);
  await flush();
  assert.equal(client.state, "closed");
  assert.equal(details.at(-1).error, "origin_not_allowed");
  assert.equal(tokenCalls, 1);
});

test("a failed probe (no fetch, network error, 426, 5xx) keeps retrying", async (t) => {
  for (const [name, fetch] of [
    ["no fetch", null],
    [
      "network error",
      async () => {
        throw new TypeError("fetch failed");
      },
    ],
    ["426", answer(426)],
    ["429", answer(429, { error: "too_many_sockets", message: "m" })],
    ["503", answer(503)],
  ]) {
    await t.test(name, async (t) => {
      if (!fetch) {
        const saved = globalThis.fetch;
        globalThis.fetch = undefined;
        t.after(() => (globalThis.fetch = saved));
      }
      const { sockets, socket, states, elapse } = await setup(t, { fetch: fetch ?? undefined });
      socket().drop(1006);
      await flush();
      assert.equal(states.at(-1), "reconnecting");
      await elapse(500);
      assert.equal(sockets.length, 2);
    });
  }
});

test("past the user's socket cap (429, the probe says the token is fine) a fixed token keeps reconnecting with backoff", async (t) => {
  // The server refuses the upgrade with 429 too_many_sockets; the browser
  // sees 1006 before open, and the plain GET, which opens no socket, is 426.
  const { client, sockets, socket, states, elapse, reopen } = await setup(t, { token: "fixed" });
  for (const step of [500, 1000, 2000, 4000]) {
    socket().drop(1006);
    await flush();
    assert.equal(client.state, "reconnecting");
    const before = sockets.length;
    await elapse(step / 2 - 1);
    assert.equal(sockets.length, before, `no attempt before half of ${step} ms`);
    await elapse(step / 2 + 1);
    assert.equal(sockets.length, before + 1, `an attempt within ${step} ms`);
  }
  // A socket of the user closed: the next upgrade is accepted.
  await reopen();
  assert.equal(client.state, "open");
  // Every attempt offered the same token, outside the URL.
  assert.ok(sockets.every((s) => s.url == "ws://realtime.test/"));
  assert.ok(sockets.every((s) => s.protocols?.includes("hopeflow.token.fixed")));
  assert.ok(!states.includes("closed"));
});

test("ping on an interval; a missing pong ends the socket and reconnects", async (t) => {
  const { client, socket, sockets, states, details, elapse, reopen } = await setup(t, {
    pingInterval: 1000,
    pingTimeout: 300,
  });
  const first = await reopen();
  await elapse(999);
  assert.deepEqual(first.sent, []);
  await elapse(1);
  assert.deepEqual(first.sent, ["ping"]);
  first.receive("pong");
  await elapse(1000);
  assert.deepEqual(first.sent, ["ping", "ping"]);
  await elapse(299);
  assert.equal(states.at(-1), "open");
  await elapse(1);
  assert.equal(states.at(-1), "reconnecting");
  assert.equal(details.at(-1).reason, "no pong in time");
  assert.equal(first.closedWith, 1000);
  await elapse(500);
  assert.equal(sockets.length, 2);
  await reopen();
  // The old socket's late events change nothing.
  first.receive("pong");
  first.drop(1006);
  await flush();
  assert.equal(states.at(-1), "open");
  assert.equal(socket(), sockets[1]);
  client.subscribe([{ type: "a" }]).catch(() => {});
  assert.deepEqual(sockets[1].frames(), [{ type: "subscribe", filters: [{ type: "a" }] }]);
  await elapse(1000);
  assert.deepEqual(sockets[1].sent.at(-1), "ping");
});

test("the handler's value or resolved value is the ack result", async (t) => {
  const { client, socket, reopen } = await setup(t);
  await reopen();
  client.onEnvelope((envelope) =>
    envelope.payload.async ? Promise.resolve({ seen: envelope.envelopeId }) : envelope.payload.n,
  );
  socket().receive({ envelopeId: "e1", type: "chat_message", payload: { n: 7 } });
  socket().receive({ envelopeId: "e2", type: "chat_message", payload: { async: true } });
  await flush();
  assert.deepEqual(socket().frames(), [
    { type: "ack", envelopeId: "e1", result: 7 },
    { type: "ack", envelopeId: "e2", result: { seen: "e2" } },
  ]);
  client.onEnvelope(() => {});
  socket().receive({ envelopeId: "e3", type: "x", payload: null });
  await flush();
  // undefined is sent as no result, which the server records as null.
  assert.deepEqual(socket().frames()[2], { type: "ack", envelopeId: "e3" });
});

test("a handler that throws or rejects acks nothing and is reported", async (t) => {
  const { client, socket, errors, reopen } = await setup(t);
  await reopen();
  client.onEnvelope((envelope) => {
    if (envelope.payload == "sync") throw new Error("boom");
    if (envelope.payload == "bigint") return 1n;
    return Promise.reject(new Error("later"));
  });
  socket().receive({ envelopeId: "e1", type: "m", payload: "sync" });
  socket().receive({ envelopeId: "e2", type: "m", payload: "async" });
  socket().receive({ envelopeId: "e3", type: "m", payload: "bigint" });
  await flush();
  assert.deepEqual(socket().sent, []);
  assert.deepEqual(
    errors.map((e) => [e.code, e.envelope.envelopeId, e.cause.constructor.name]).sort(),
    [
      ["handler_failed", "e1", "Error"],
      ["handler_failed", "e2", "Error"],
      ["handler_failed", "e3", "TypeError"], // a result JSON cannot carry
    ],
  );
});

test("envelopes that arrive before a handler wait for it; acks go only to their socket", async (t) => {
  const { client, socket, elapse, reopen } = await setup(t);
  const first = await reopen();
  first.receive({ envelopeId: "early", type: "m", payload: 1 });
  let release;
  const seen = [];
  client.onEnvelope((envelope) => {
    seen.push(envelope.envelopeId);
    return new Promise((resolve) => (release = resolve));
  });
  assert.deepEqual(seen, ["early"]);
  release("done");
  await flush();
  assert.deepEqual(first.frames(), [{ type: "ack", envelopeId: "early", result: "done" }]);

  first.receive({ envelopeId: "slow", type: "m", payload: 2 });
  first.drop();
  await flush();
  await elapse(500);
  const second = await reopen();
  release("too late");
  await flush();
  assert.equal(first.frames().length, 1);
  assert.deepEqual(second.frames(), []);
  assert.equal(socket(), second);
});

test("backoff grows, is capped and jittered between 50 and 100 %", async (t) => {
  assert.equal(backoffDelay(1, 500, 30000, 1), 500);
  assert.equal(backoffDelay(1, 500, 30000, 0), 250);
  assert.equal(backoffDelay(4, 500, 30000, 1), 4000);
  assert.equal(backoffDelay(7, 500, 30000, 1), 30000);
  assert.equal(backoffDelay(1000, 500, 30000, 0), 15000);
  for (let attempt = 1; attempt < 50; attempt++) {
    const delay = backoffDelay(attempt, 500, 30000);
    const full = Math.min(500 * 2 ** (attempt - 1), 30000);
    assert.ok(delay >= full / 2 && delay <= full, `${attempt}: ${delay}`);
  }

  // The client waits at least half and at most all of each step, up to the cap.
  const { sockets, socket, elapse } = await setup(t, { backoffInitial: 100, backoffMax: 1000 });
  for (let attempt = 1; attempt <= 8; attempt++) {
    const full = Math.min(100 * 2 ** (attempt - 1), 1000);
    socket().drop(1006);
    await flush();
    await elapse(full / 2 - 1);
    assert.equal(sockets.length, attempt, `attempt ${attempt} came before half its delay`);
    await elapse(full / 2 + 1);
    assert.equal(sockets.length, attempt + 1, `attempt ${attempt} came after its full delay`);
  }
});

test("a state listener that throws does not stop the client", async (t) => {
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (error) => reported.push(error.message);
  t.after(() => (globalThis.reportError = saved));
  const { client, states, reopen } = await setup(t);
  const remove = client.onState(() => {
    throw new Error("listener bug");
  });
  await reopen();
  remove();
  assert.equal(client.state, "open");
  assert.deepEqual(states, ["connecting", "open"]);
  assert.deepEqual(reported, ["listener bug"]);
});

// Resume (history on: envelopes carry seq, confirmations seq and epoch).

const envelope = (seq, recovered) => ({
  envelopeId: `e${seq}`,
  type: "t",
  payload: { n: seq },
  seq,
  ...(recovered && { recovered: true }),
});
const resumed = (since, seq, replayed, complete, epoch) => ({ type: "resumed", since, seq, replayed, complete, epoch });

/**
 * A client subscribed to {type: "t"} at `seq` of `epoch` (no seq: history
 * off), recording what its handler sees ([seq, recovered]) and its gaps.
 */
async function resuming(t, seq, epoch = "E1") {
  const env = await setup(t);
  const seen = [];
  const gaps = [];
  env.client.onEnvelope((e) => {
    seen.push(e.seq == null ? e.envelopeId : [e.seq, !!e.recovered]);
    return e.seq;
  });
  env.client.onGap((gap) => gaps.push(gap));
  env.socket().open();
  const subscribed = env.client.subscribe([{ type: "t" }]);
  env.socket().receive({ type: "subscribed", added: 1, total: 1, ...(seq != null && { seq, epoch }) });
  assert.deepEqual(await subscribed, { added: 1, total: 1, ...(seq != null && { seq, epoch }) });
  /** Drops the socket; the next one opens and gets its re-subscription's frame. */
  const reconnect = async () => {
    env.socket().drop(1006);
    await flush();
    await env.elapse(500);
    const next = env.socket();
    next.open();
    return next;
  };
  return { ...env, seen, gaps, reconnect };
}

const resubscribe = { type: "subscribe", filters: [{ type: "t" }] };
const acked = (socket) => socket.frames().filter((f) => f.type == "ack").map((f) => f.envelopeId);

test("after a reconnect it resumes from the last delivered seq, and merges held envelopes with the replay", async (t) => {
  const { client, socket, seen, gaps, reconnect } = await resuming(t, 4);
  assert.deepEqual(client.position, { epoch: "E1", seq: 4 });
  for (const seq of [5, 6, 5]) socket().receive(envelope(seq));
  await flush();
  assert.deepEqual(seen, [[5, false], [6, false]]);
  assert.deepEqual(client.position, { epoch: "E1", seq: 6 });

  const second = await reconnect();
  // Re-subscribed first, so the replay matches the filters.
  assert.deepEqual(second.frames(), [resubscribe, { type: "resume", since: 6, epoch: "E1" }]);
  second.receive({ type: "subscribed", added: 1, total: 1, seq: 8, epoch: "E1" });
  // Published before the resume was served: held back until `resumed`.
  second.receive(envelope(8));
  await flush();
  assert.equal(seen.length, 2);
  second.receive(envelope(7, true));
  second.receive(envelope(8, true));
  second.receive(resumed(6, 8, 2, true, "E1"));
  second.receive(envelope(9));
  second.receive(envelope(9));
  await flush();
  // In seq order, each once (of two copies, the first that came), acked on this socket.
  assert.deepEqual(seen.slice(2), [[7, true], [8, false], [9, false]]);
  assert.deepEqual(acked(second), ["e7", "e8", "e9"]);
  assert.deepEqual(client.position, { epoch: "E1", seq: 9 });
  assert.deepEqual(gaps, []);

  // A later confirmation moves the position to where it took effect.
  const more = client.subscribe([{ type: "u" }]);
  second.receive({ type: "subscribed", added: 1, total: 2, seq: 12, epoch: "E1" });
  await more;
  assert.deepEqual(client.position, { epoch: "E1", seq: 12 });
});

test("an incomplete resume is reported to onGap, and delivery goes on from its answer", async (t) => {
  const { client, socket, seen, gaps, reconnect } = await resuming(t, 0);
  socket().receive(envelope(1));
  socket().receive(envelope(2));

  // Trimmed: of 3 to 5 only 5 is left.
  const second = await reconnect();
  assert.deepEqual(second.frames().at(-1), { type: "resume", since: 2, epoch: "E1" });
  second.receive(envelope(5, true));
  second.receive(resumed(2, 5, 1, false, "E1"));
  second.receive(envelope(6));
  await flush();
  assert.deepEqual(gaps, [{ since: 2, seq: 5, epoch: "E1", previousEpoch: "E1", replayed: 1 }]);
  assert.deepEqual(seen, [[1, false], [2, false], [5, true], [6, false]]);

  // A new history (epoch E2): nothing replayed, its envelopes count from its start.
  const third = await reconnect();
  assert.deepEqual(third.frames().at(-1), { type: "resume", since: 6, epoch: "E1" });
  third.receive(envelope(1));
  third.receive(resumed(6, 1, 0, false, "E2"));
  third.receive(envelope(2));
  await flush();
  assert.deepEqual(gaps[1], { since: 6, seq: 1, epoch: "E2", previousEpoch: "E1", replayed: 0 });
  assert.deepEqual(seen.slice(4), [[1, false], [2, false]]);
  assert.deepEqual(client.position, { epoch: "E2", seq: 2 });
  const fourth = await reconnect();
  assert.deepEqual(fourth.frames().at(-1), { type: "resume", since: 2, epoch: "E2" });
});

test("a drop while resuming asks again from the same seq; held envelopes were never delivered", async (t) => {
  const { seen, reconnect } = await resuming(t, 3);
  const second = await reconnect();
  second.receive(envelope(4));
  await flush();
  assert.deepEqual(seen, []);
  const third = await reconnect();
  assert.deepEqual(third.frames(), [resubscribe, { type: "resume", since: 3, epoch: "E1" }]);
  third.receive(envelope(4, true));
  third.receive(resumed(3, 4, 1, true, "E1"));
  await flush();
  assert.deepEqual(seen, [[4, true]]);
  assert.deepEqual(acked(third), ["e4"]);
});

test("without history (no seq) nothing is resumed and envelopes are delivered as they come", async (t) => {
  const { client, socket, seen, gaps, reconnect } = await resuming(t, null);
  assert.equal(client.position, null);
  const plain = { envelopeId: "p", type: "t", payload: null };
  socket().receive(plain);
  socket().receive(plain);
  const second = await reconnect();
  assert.deepEqual(second.frames(), [resubscribe]);
  second.receive({ type: "subscribed", added: 1, total: 1 });
  second.receive(plain);
  await flush();
  assert.deepEqual(seen, ["p", "p", "p"]);
  assert.deepEqual(gaps, []);
});

test("history_disabled in answer to a resume: reported, held envelopes delivered, no more resumes", async (t) => {
  const { client, seen, errors, reconnect } = await resuming(t, 3);
  const second = await reconnect();
  second.receive(envelope(4));
  second.receive({ type: "error", code: "history_disabled", message: "no history" });
  await flush();
  assert.deepEqual(
    errors.map((e) => e.code),
    ["history_disabled"],
  );
  assert.deepEqual(seen, [[4, false]]);
  assert.equal(client.position, null);
  const third = await reconnect();
  assert.deepEqual(third.frames(), [resubscribe]);
});

// Token lifetime (issue 20): token_expiring → getToken → refresh; 4002.

/** A client whose getToken gives token-1, token-2, ...; records onRefresh calls. */
async function refreshing(t, options = {}) {
  let calls = 0;
  const env = await setup(t, { token: undefined, getToken: async () => `token-${++calls}`, ...options });
  const refreshes = [];
  env.client.onRefresh((status, detail) => refreshes.push([status, detail]));
  await env.reopen();
  return { ...env, refreshes, calls: () => calls };
}

const refreshFrames = (socket) => socket.frames().filter((f) => f.type == "refresh");

test("token_expiring: getToken's next token is sent as a refresh; refreshed is reported, same socket", async (t) => {
  const { client, socket, sockets, refreshes, errors, calls } = await refreshing(t);
  assert.equal(socket().token, "token-1");
  socket().receive({ type: "token_expiring", expiresAt: 1000 });
  await flush();
  assert.equal(calls(), 2);
  assert.deepEqual(refreshFrames(socket()), [{ type: "refresh", token: "token-2" }]);
  assert.deepEqual(refreshes, [["expiring", { expiresAt: 1000 }]]);
  socket().receive({ type: "refreshed", expiresAt: 2000 });
  await flush();
  assert.deepEqual(refreshes.at(-1), ["refreshed", { expiresAt: 2000 }]);
  // The next notice is of the new token: another refresh on the same socket.
  socket().receive({ type: "token_expiring", expiresAt: 2000 });
  await flush();
  assert.deepEqual(refreshFrames(socket()).at(-1), { type: "refresh", token: "token-3" });
  socket().receive({ type: "refreshed", expiresAt: null });
  await flush();
  assert.deepEqual(refreshes.at(-1), ["refreshed", { expiresAt: null }]);
  assert.equal(sockets.length, 1);
  assert.equal(client.state, "open");
  assert.deepEqual(errors, []);
});

test("refresh_rejected is reported to onRefresh and onError; the socket and pending calls stay", async (t) => {
  const { client, socket, sockets, refreshes, errors } = await refreshing(t);
  socket().receive({ type: "token_expiring", expiresAt: 1000 });
  await flush();
  const pending = client.subscribe([{ type: "a" }]);
  socket().receive({ type: "error", code: "refresh_rejected", message: "refresh rejected: another user's token" });
  await flush();
  assert.deepEqual(
    refreshes.map(([status, detail]) => [status, detail.expiresAt, detail.error?.code, detail.error?.message]),
    [
      ["expiring", 1000, undefined, undefined],
      ["rejected", 1000, "refresh_rejected", "refresh rejected: another user's token"],
    ],
  );
  assert.deepEqual(
    errors.map((e) => e.code),
    ["refresh_rejected"],
  );
  // Not the subscription's answer: it still waits for its own.
  assert.equal(await settled(pending), false);
  socket().receive({ type: "subscribed", added: 1, total: 1 });
  assert.deepEqual(await pending, { added: 1, total: 1 });
  assert.equal(client.state, "open");
  assert.equal(sockets.length, 1);
});

test("a refresh getToken cannot make is reported as rejected, and nothing is sent", async (t) => {
  await t.test("getToken throws", async (t) => {
    let calls = 0;
    const { socket, refreshes, errors } = await refreshing(t, {
      getToken: async () => {
        if (++calls > 1) throw new Error("auth server down");
        return "first";
      },
    });
    socket().receive({ type: "token_expiring", expiresAt: 1000 });
    await flush();
    assert.deepEqual(refreshFrames(socket()), []);
    assert.deepEqual(refreshes.at(-1)[0], "rejected");
    assert.equal(refreshes.at(-1)[1].expiresAt, 1000);
    assert.equal(refreshes.at(-1)[1].error.code, "token_failed");
    assert.equal(refreshes.at(-1)[1].error.cause.message, "auth server down");
    assert.deepEqual(
      errors.map((e) => e.code),
      ["token_failed"],
    );
  });
  await t.test("getToken gives the socket's own token again", async (t) => {
    const { socket, refreshes } = await refreshing(t, { getToken: () => "same" });
    socket().receive({ type: "token_expiring", expiresAt: 1000 });
    await flush();
    assert.deepEqual(refreshFrames(socket()), []);
    assert.deepEqual(
      refreshes.map(([status, detail]) => [status, detail.error?.code]),
      [
        ["expiring", undefined],
        ["rejected", "token_unchanged"],
      ],
    );
  });
});

test("a token getToken gives after its socket dropped is not sent anywhere", async (t) => {
  let release;
  let calls = 0;
  const { socket, sockets, refreshes, elapse, reopen } = await refreshing(t, {
    getToken: () => (++calls == 2 ? new Promise((resolve) => (release = resolve)) : `token-${calls}`),
  });
  const first = socket();
  first.receive({ type: "token_expiring", expiresAt: 1000 });
  first.drop(1006);
  await flush();
  await elapse(500);
  await reopen();
  release("late");
  await flush();
  assert.equal(sockets.length, 2);
  assert.deepEqual([...refreshFrames(first), ...refreshFrames(sockets[1])], []);
  assert.deepEqual(
    refreshes.map(([status]) => status),
    ["expiring"],
  );
});

test("after 4002 (token expired) it reconnects with getToken's next token", async (t) => {
  const { client, socket, sockets, details, elapse, reopen, calls } = await refreshing(t);
  socket().drop(4002, "token expired");
  await flush();
  assert.equal(client.state, "reconnecting");
  assert.deepEqual(details.at(-1), { code: 4002, reason: "token expired" });
  await elapse(500);
  assert.equal(sockets.length, 2);
  assert.equal(calls(), 2);
  assert.equal(socket().token, "token-2");
  await reopen();
  assert.equal(client.state, "open");
});

test("with a fixed token: token_expiring is reported, no refresh is sent, and 4002 ends in 'closed'", async (t) => {
  const { client, socket, sockets, details, errors, reopen } = await setup(t, { token: "fixed" });
  const refreshes = [];
  client.onRefresh((status, detail) => refreshes.push([status, detail]));
  await reopen();
  socket().receive({ type: "token_expiring", expiresAt: 1000 });
  await flush();
  assert.deepEqual(refreshes, [["expiring", { expiresAt: 1000 }]]);
  assert.deepEqual(socket().frames(), []);
  const pending = client.subscribe([{ type: "a" }]).catch((error) => error);
  socket().drop(4002, "token expired");
  await flush();
  assert.equal(client.state, "closed");
  assert.deepEqual(details.at(-1), { code: 4002, reason: "token expired" });
  assert.equal((await pending).code, "closed");
  t.mock.timers.tick(10 * 60 * 1000);
  await flush();
  assert.equal(sockets.length, 1);
  assert.deepEqual(errors, []);
});
