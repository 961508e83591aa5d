// HopeFlow Realtime client for browsers and Node 20+: one socket per client,
// confirmed subscriptions, acks from a handler, reconnection with backoff
// that resumes from the user's history (each seq once, in order).
// No dependencies; types in hopeflow.d.ts, behaviour in README.md.

/** Per subscribe/unsubscribe frame the server reads this many filters. */
const PER_MESSAGE = 50;

/**
 * Delay before reconnect attempt `attempt` (1-based): `initial` doubled per
 * attempt, capped at `max`, times 50–100 % so clients dropped together do
 * not come back together.
 */
export const backoffDelay = (attempt, initial, max, random = Math.random()) =>
  Math.min(initial * 2 ** Math.min(attempt - 1, 40), max) * (0.5 + random / 2);

/** The service root gets its "/". */
const rooted = (url) => url.replace(/^(\w+:\/\/[^/?]+)(?=\?|$)/, "$1/");

/**
 * The socket URL with the token in `?token=` (the `tokenInUrl` option):
 * browsers cannot set headers on a WebSocket.
 */
export const connectUrl = (url, token) =>
  rooted(url) + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);

/**
 * The protocols a socket offers by default: the token rides in
 * Sec-WebSocket-Protocol, not in the URL that access logs keep; the server
 * answers "hopeflow".
 */
export const socketProtocols = (token) => ["hopeflow", "hopeflow.token." + token];

const failure = (code, message, extra) =>
  Object.assign(new Error(message), { code }, extra);

const closedError = () => failure("closed", "HopeFlowClient is closed");

// Equal filters are equal sets of pairs, whatever the key order.
const filterKey = (filter) =>
  JSON.stringify(Object.entries(filter).sort(([a], [b]) => (a < b ? -1 : 1)));

// The server applies only objects of strings (size caps aside).
const isFilter = (filter) =>
  filter &&
  typeof filter == "object" &&
  !Array.isArray(filter) &&
  Object.values(filter).every((value) => typeof value == "string");

const listen = (socket, type, listener) =>
  socket.addEventListener
    ? socket.addEventListener(type, listener)
    : (socket["on" + type] = listener);

// A throwing listener must not break the connection loop: its error is
// reported as uncaught instead (reportError in browsers; Node has none).
const notify = (listeners, ...args) => {
  for (const listener of listeners) {
    try {
      listener(...args);
    } catch (error) {
      (globalThis.reportError ??
        ((error) =>
          queueMicrotask(() => {
            throw error;
          })))(error);
    }
  }
};

export class HopeFlowClient {
  #options;
  #state = "connecting";
  #closed = false;
  /** The open socket, or null while (re)connecting. */
  #socket = null;
  /** Ends the current attempt: closes its socket, resolves its promise. */
  #end = null;
  /** Filters the server confirmed, by filterKey: re-subscribed on a new socket. */
  #filters = new Map();
  /** Requests waiting for a socket. */
  #queue = [];
  /** Requests sent, waiting for their confirmation (answered in order). */
  #pending = [];
  #handler = null;
  /** Envelopes that arrived before a handler was set, with their socket. */
  #backlog = [];
  #stateListeners = new Set();
  #errorListeners = new Set();
  #gapListeners = new Set();
  #refreshListeners = new Set();
  /** The open socket's token: the one it opened with, or the last one sent in a refresh. */
  #token;
  /** When the open socket's token expires (unix seconds), as the server last said. */
  #expiresAt = null;
  /** {epoch, seq}: the highest seq delivered, or where the first subscription started; null without history. */
  #pos = null;
  /** From a reconnect's resume to its `resumed`: envelopes held back. */
  #held = null;
  /** The ping or the backoff timer; never both at once. */
  #timer;
  #wake;

  constructor(url, options = {}) {
    const WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!WebSocket) {
      throw new TypeError(
        "HopeFlowClient: no global WebSocket here; pass options.WebSocket",
      );
    }
    if (!/^wss?:\/\//i.test(url)) {
      throw new TypeError("HopeFlowClient: url must start with ws:// or wss://");
    }
    const { token, getToken = () => token } = options;
    if (token == null && !options.getToken) {
      throw new TypeError("HopeFlowClient: options.token or options.getToken is required");
    }
    this.#options = {
      backoffInitial: 500,
      backoffMax: 30000,
      pingInterval: 25000,
      pingTimeout: 10000,
      ...options,
      url,
      WebSocket,
      getToken,
      // A fixed token cannot be refreshed: 4002 (expired) ends the client.
      fixed: !options.getToken,
      fetch: options.fetch ?? globalThis.fetch,
    };
    this.#run();
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  onEnvelope(handler) {
    this.#handler = handler;
    for (const [socket, envelope] of this.#backlog.splice(0)) {
      this.#deliver(socket, envelope);
    }
    return () => {
      if (this.#handler == handler) this.#handler = null;
    };
  }

  onState(listener) {
    this.#stateListeners.add(listener);
    return () => this.#stateListeners.delete(listener);
  }

  onError(listener) {
    this.#errorListeners.add(listener);
    return () => this.#errorListeners.delete(listener);
  }

  onGap(listener) {
    this.#gapListeners.add(listener);
    return () => this.#gapListeners.delete(listener);
  }

  onRefresh(listener) {
    this.#refreshListeners.add(listener);
    return () => this.#refreshListeners.delete(listener);
  }

  /** {epoch, seq} of the last delivery (see #pos), or null. */
  get position() {
    return this.#pos && { ...this.#pos };
  }

  subscribe(filters) {
    return this.#request("subscribe", filters);
  }

  unsubscribe(filters) {
    return this.#request("unsubscribe", filters);
  }

  close() {
    if (this.#closed) return;
    this.#end?.({});
    this.#wake?.();
    this.#stop({ code: 1000, reason: "closed by the client" });
  }

  #request(type, filters) {
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(closedError());
      if (!Array.isArray(filters)) {
        throw new TypeError(`HopeFlowClient.${type}: filters must be an array`);
      }
      const request = {
        type,
        filters,
        done: (error, result) => (error ? reject(error) : resolve(result)),
      };
      // While reconnecting it waits for the next socket instead of failing.
      this.#socket ? this.#send(request) : this.#queue.push(request);
    });
  }

  #send(request) {
    request.error = null;
    this.#pending.push(request);
    this.#socket.send(JSON.stringify({ type: request.type, filters: request.filters }));
  }

  #set(state, detail) {
    if (state == this.#state) return;
    this.#state = state;
    notify(this.#stateListeners, state, detail);
  }

  #stop(detail) {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#set("closed", detail);
    // The socket is gone by now: every request still unanswered is queued.
    for (const request of this.#queue.splice(0)) request.done(closedError());
  }

  async #run() {
    // Listeners registered right after the constructor still see "connecting".
    await null;
    if (this.#closed) return;
    notify(this.#stateListeners, "connecting");
    const options = this.#options;
    let attempt = 0;
    let token;
    while (!this.#closed) {
      let detail = {};
      try {
        token ??= await options.getToken();
        if (this.#closed) return;
        const end = await this.#connect(token);
        if (this.#closed) return;
        detail = { code: end.code, reason: end.reason };
        // 1008 / 1009: retrying would repeat what the server refused; 4001:
        // an operator disconnected this user for good; 4002: the token
        // expired, and a fixed one cannot be replaced.
        if ([1008, 1009, 4001].includes(end.code) || (end.code == 4002 && options.fixed)) {
          return this.#stop(detail);
        }
        if (end.opened) {
          attempt = 0;
          token = undefined;
        } else {
          // A browser cannot see why a handshake failed; a plain GET with
          // the same token runs the same checks and says.
          const refusal = await this.#probe(token);
          if (this.#closed) return;
          if (refusal?.status == 403) return this.#stop(refusal);
          if (refusal?.status == 401) {
            detail = refusal;
            const next = await options.getToken();
            if (this.#closed) return;
            if (next === token) return this.#stop(refusal);
            token = next;
          } else {
            token = undefined;
          }
        }
      } catch (error) {
        // getToken failed: retried like a failed connection.
        token = undefined;
        detail = { cause: error };
        notify(this.#errorListeners, failure("token_failed", `getToken failed: ${error}`, { cause: error }));
        if (this.#closed) return;
      }
      this.#set("reconnecting", detail);
      await new Promise((wake) => {
        this.#wake = wake;
        this.#timer = setTimeout(
          wake,
          backoffDelay(++attempt, options.backoffInitial, options.backoffMax),
        );
      });
    }
  }

  /** Runs one socket; resolves with how it ended. */
  #connect(token) {
    return new Promise((resolve) => {
      const { WebSocket, url } = this.#options;
      let opened = false;
      let socket;
      const end = (detail) => {
        if (this.#end != end) return;
        // Held envelopes were never delivered: the next resume asks again.
        this.#end = this.#socket = this.#held = null;
        clearTimeout(this.#timer);
        // A new socket starts with no filters: unconfirmed requests are sent
        // again there, after the re-subscription of the confirmed ones.
        this.#queue.unshift(...this.#pending.splice(0).filter((request) => request.done));
        try {
          socket?.close(1000);
        } catch {}
        resolve({ opened, ...detail });
      };
      this.#end = end;
      try {
        socket = this.#options.tokenInUrl
          ? new WebSocket(connectUrl(url, token))
          : new WebSocket(rooted(url), socketProtocols(token));
      } catch (error) {
        return end({ reason: String(error) });
      }
      listen(socket, "open", () => {
        if (this.#end != end) return;
        opened = true;
        this.#socket = socket;
        this.#token = token;
        this.#expiresAt = null;
        this.#ping(socket);
        const confirmed = [...this.#filters.values()];
        if (!confirmed.length) this.#set("open");
        for (let i = 0; i < confirmed.length; i += PER_MESSAGE) {
          const last = i + PER_MESSAGE >= confirmed.length;
          this.#send({
            type: "subscribe",
            filters: confirmed.slice(i, i + PER_MESSAGE),
            // No `done`: these are not sent again after a drop, but rebuilt.
            resubscribed: (error) => {
              if (error) notify(this.#errorListeners, error);
              // "open" once the filters are back: publishes from now reach us.
              if (last) this.#set("open");
            },
          });
        }
        // After the filters, so the replay matches them.
        if (this.#pos) {
          this.#held = [];
          socket.send(JSON.stringify({ type: "resume", since: this.#pos.seq, epoch: this.#pos.epoch }));
        }
        for (const request of this.#queue.splice(0)) this.#send(request);
      });
      listen(socket, "message", (event) => {
        if (this.#end == end && typeof event.data == "string") {
          this.#message(socket, event.data);
        }
      });
      listen(socket, "close", (event) => end({ code: event.code, reason: event.reason }));
    });
  }

  /** Sends `ping` after pingInterval; no `pong` within pingTimeout ends the socket. */
  #ping(socket) {
    const { pingInterval, pingTimeout } = this.#options;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      socket.send("ping");
      this.#timer = setTimeout(
        () => this.#end?.({ reason: "no pong in time" }),
        pingTimeout,
      );
    }, pingInterval);
  }

  /** Whether the server refused the token (401) or the origin (403). */
  async #probe(token) {
    const { fetch, url, tokenInUrl } = this.#options;
    const http = url.replace(/^ws/i, "http");
    try {
      const response = await (tokenInUrl
        ? fetch(connectUrl(http, token))
        : fetch(rooted(http), { headers: { authorization: "Bearer " + token } }));
      if (response.status == 401 || response.status == 403) {
        return { status: response.status, ...(await response.json()) };
      }
    } catch {
      // No fetch, or it failed: a network failure, retried.
    }
  }

  #message(socket, text) {
    if (text == "pong") return this.#ping(socket);
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const held = this.#held;
    const pos = this.#pos;
    const { type, code, seq, epoch, expiresAt } = message;
    // Only deliveries carry an envelopeId; without a seq, no history order.
    if (message.envelopeId != null) {
      return held && seq != null ? held.push(message) : this.#take(socket, message);
    }
    if (type == "token_expiring") return this.#refresh(socket, expiresAt);
    if (type == "refreshed") {
      this.#expiresAt = expiresAt;
      return notify(this.#refreshListeners, "refreshed", { expiresAt });
    }
    const flush = () => {
      this.#held = null;
      // Stable: of two copies of a seq, the first that came is kept.
      for (const envelope of held.sort((a, b) => a.seq - b.seq)) this.#take(socket, envelope);
    };
    if (type == "resumed" && held) {
      const { since, complete, replayed } = message;
      if (!complete) notify(this.#gapListeners, { since, seq, epoch, previousEpoch: pos.epoch, replayed });
      // The same history, reached: go on from ours; a new one counts whole.
      this.#pos = { epoch, seq: pos.epoch == epoch && since <= seq ? pos.seq : 0 };
      flush();
      // Everything matching up to seq was replayed or held.
      this.#pos.seq = Math.max(this.#pos.seq, seq);
      return;
    }
    if (type == "subscribed" && seq != null && !held) {
      // Up to seq came before this subscription; after it, live here.
      if (pos && pos.epoch != epoch) {
        notify(this.#gapListeners, { since: pos.seq, seq, epoch, previousEpoch: pos.epoch, replayed: 0 });
      }
      this.#pos = { epoch, seq: pos?.epoch == epoch ? Math.max(pos.seq, seq) : seq };
    }
    const request = this.#pending[0];
    const finish = (error, result) => {
      this.#pending.shift();
      request.done ? request.done(error, result) : request.resubscribed(error);
    };
    if (request && (type == "subscribed" || type == "unsubscribed")) {
      // The valid entries among the first 50 took effect, warnings or not.
      for (const filter of request.filters.slice(0, PER_MESSAGE)) {
        if (!isFilter(filter)) continue;
        if (type == "subscribed") this.#filters.set(filterKey(filter), filter);
        else this.#filters.delete(filterKey(filter));
      }
      delete message.type;
      finish(request.error && Object.assign(request.error, { result: message }), message);
    } else if (type == "error") {
      const error = failure(code, message.message);
      if (request && (code == "invalid_filter" || code == "too_many_filters")) {
        // A warning about the oldest request; its confirmation follows.
        request.error ??= error;
      } else if (request && (code == "subscription_limit" || code == "rate_limited")) {
        // The oldest request was dropped whole: no confirmation follows.
        finish(error);
      } else if (code == "refresh_rejected") {
        // The socket keeps its old expiry.
        this.#rejected(error);
      } else {
        notify(this.#errorListeners, error);
        // No history (any more): no position, no resume; held ones go out.
        if (code == "history_disabled" && held) {
          this.#pos = null;
          flush();
        }
      }
    }
  }

  /** The server says the socket's token expires soon: send getToken's next one. */
  async #refresh(socket, expiresAt) {
    this.#expiresAt = expiresAt;
    notify(this.#refreshListeners, "expiring", { expiresAt });
    if (this.#options.fixed) return;
    let token, error;
    try {
      token = await this.#options.getToken();
    } catch (cause) {
      error = failure("token_failed", `getToken failed: ${cause}`, { cause });
    }
    if (socket != this.#socket) return;
    // The same token again would change nothing: at 4002, getToken is asked again.
    error ??= token === this.#token && failure("token_unchanged", "getToken returned the socket's token again");
    if (error) return this.#rejected(error);
    this.#token = token;
    socket.send(JSON.stringify({ type: "refresh", token }));
  }

  #rejected(error) {
    notify(this.#refreshListeners, "rejected", { expiresAt: this.#expiresAt, error });
    notify(this.#errorListeners, error);
  }

  /** Delivers an envelope unless its seq is not above the position. */
  #take(socket, envelope) {
    const pos = this.#pos;
    if (pos && envelope.seq != null) {
      if (envelope.seq <= pos.seq) return;
      pos.seq = envelope.seq;
    }
    this.#deliver(socket, envelope);
  }

  #deliver(socket, envelope) {
    const handler = this.#handler;
    if (!handler) return this.#backlog.push([socket, envelope]);
    (async () => {
      const ack = JSON.stringify({ type: "ack", envelopeId: envelope.envelopeId, result: await handler(envelope) });
      // An ack counts only on the socket the envelope came by.
      if (socket == this.#socket) socket.send(ack);
    })().catch((error) =>
      notify(
        this.#errorListeners,
        failure("handler_failed", `onEnvelope handler failed: ${error}`, { cause: error, envelope }),
      ),
    );
  }
}
