// The JavaScript reference implementation of the HopeFlow Realtime API, for
// the benchmarks: what a user would otherwise deploy. Written to be fast in
// its own idiom: WebCrypto HS256 with a cached key, an in-memory socket index
// rebuilt from attachments after hibernation, one JSON.stringify per publish.
// Per-user history as in hopeflow (issue 12, same settings and defaults:
// HISTORY_SIZE 100, HISTORY_TTL_SECS 300, 0 turns it off): every publish
// gets the next `seq` and is inserted into the object's SQLite before it is
// sent; `resume` replays what a socket missed.
import { DurableObject } from "cloudflare:workers";

const CORS = { "Access-Control-Allow-Origin": "*" };
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function json(status, body) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json; charset=utf-8", ...CORS },
  });
}

function error(status, code, message) {
  return json(status, { error: code, message });
}

function base64UrlDecode(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64 + "===".slice((base64.length + 3) % 4));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

let cachedKey = null;
async function hmacKey(secret) {
  if (cachedKey?.secret !== secret) {
    const key = await crypto.subtle.importKey(
      "raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    cachedKey = { secret, key };
  }
  return cachedKey.key;
}

// Returns the claims, or null when the token is not acceptable.
async function verifyToken(token, secret) {
  const parts = token.split(".");
  if (parts.length !== 3 || token.length > 8192) return null;
  let header, claims;
  try {
    header = JSON.parse(decoder.decode(base64UrlDecode(parts[0])));
    claims = JSON.parse(decoder.decode(base64UrlDecode(parts[1])));
  } catch {
    return null;
  }
  if (header?.alg !== "HS256" || typeof claims !== "object" || claims === null) return null;
  const valid = await crypto.subtle.verify(
    "HMAC", await hmacKey(secret), base64UrlDecode(parts[2]), encoder.encode(`${parts[0]}.${parts[1]}`));
  if (!valid) return null;
  const now = Date.now() / 1000;
  if (claims.exp !== undefined && (typeof claims.exp !== "number" || claims.exp < now - 30)) return null;
  if (claims.nbf !== undefined && (typeof claims.nbf !== "number" || claims.nbf > now + 30)) return null;
  if (typeof claims.userId !== "string" || claims.userId.trim() === "") return null;
  return claims;
}

function requestToken(request, url) {
  const header = request.headers.get("Authorization");
  if (header?.toLowerCase().startsWith("bearer ")) return header.slice(7).trim();
  return url.searchParams.get("token");
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return json(200, { ok: true });
    if (url.pathname === "/publish" && request.method === "OPTIONS") {
      return new Response(null, {
        status: 204,
        headers: {
          ...CORS,
          "Access-Control-Allow-Methods": "POST, OPTIONS",
          "Access-Control-Allow-Headers": "Authorization, Content-Type",
          "Access-Control-Max-Age": "86400",
        },
      });
    }
    if (url.pathname !== "/" && url.pathname !== "/publish") return error(404, "not_found", "no such route");
    if (!env.JWT_SECRET) return error(500, "server_misconfigured", "the server is not configured correctly");
    const token = requestToken(request, url);
    const claims = token ? await verifyToken(token, env.JWT_SECRET) : null;

    if (url.pathname === "/") {
      if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
        return error(426, "upgrade_required", "this endpoint only accepts WebSocket upgrades");
      }
      if (!claims) return error(401, "invalid_token", "invalid token");
      const headers = new Headers(request.headers);
      headers.set("X-User-ID", encodeURIComponent(claims.userId));
      return env.HOPEFLOW_REALTIME.getByName(claims.userId)
        .fetch("https://hopeflow.internal/connect", { headers });
    }

    if (request.method !== "POST") return error(405, "method_not_allowed", "allowed: POST, OPTIONS");
    if (!claims) return error(401, "invalid_token", "invalid token");
    const contentType = request.headers.get("Content-Type") ?? "";
    if (contentType.split(";")[0].trim().toLowerCase() !== "application/json") {
      return error(415, "unsupported_media_type", "Content-Type must be application/json");
    }
    let body;
    try {
      body = await request.json();
    } catch {
      return error(400, "invalid_body", "request body is not valid JSON");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return error(400, "invalid_body", "request body must be a JSON object");
    }
    if (typeof body.userId !== "string" || body.userId.trim() === "") {
      return error(400, "invalid_body", '"userId" must be a non-empty string');
    }
    const type = body.type ?? "message";
    if (typeof type !== "string" || type === "") {
      return error(400, "invalid_body", '"type" must be a non-empty string when present');
    }
    const envelope = { envelopeId: crypto.randomUUID(), type, payload: body.payload ?? null };
    const answer = await env.HOPEFLOW_REALTIME.getByName(body.userId).fetch(
      "https://hopeflow.internal/deliver", { method: "POST", body: JSON.stringify(envelope) });
    return new Response(answer.body, {
      status: answer.status,
      headers: { "Content-Type": "application/json; charset=utf-8", ...CORS },
    });
  },
};

function parseFilter(value) {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  for (const v of Object.values(value)) if (typeof v !== "string") return null;
  return value;
}

function sameFilter(a, b) {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => b[k] === a[k]);
}

// The same tables and statements as hopeflow's src/history.rs.
const HISTORY_SQL = {
  createTable: "CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, envelope TEXT NOT NULL, at INTEGER NOT NULL)",
  createMeta: "CREATE TABLE IF NOT EXISTS history_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
  readEpoch: "SELECT v FROM history_meta WHERE k = 'epoch'",
  writeEpoch: "INSERT OR REPLACE INTO history_meta (k, v) VALUES ('epoch', ?)",
  lastSeq: "SELECT MAX(seq) AS seq FROM history",
  insert: "INSERT INTO history (seq, envelope, at) VALUES (?, ?, ?)",
  purge: "DELETE FROM history WHERE seq < (SELECT MAX(seq) FROM history) AND (seq <= (SELECT MAX(seq) FROM history) - ? OR at < ?)",
  blankExpired: "UPDATE history SET envelope = '' WHERE at < ? AND envelope != ''",
  oldestStored: "SELECT MIN(at) AS at FROM history WHERE envelope != ''",
  since: "SELECT seq, envelope FROM history WHERE seq > ? AND seq >= ? AND at >= ? AND envelope != '' ORDER BY seq",
  oldest: "SELECT MIN(seq) AS oldest FROM history WHERE seq >= ? AND at >= ? AND envelope != ''",
};

function matches(filter, envelope) {
  for (const key in filter) {
    const actual = key === "type" ? envelope.type : envelope.payload?.[key];
    if (actual !== filter[key]) return false;
  }
  return true;
}

export class HopeFlowRealtime extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
    this.timeoutMs = Number(env.ACK_TIMEOUT_MS ?? 5000);
    this.historySize = Number(env.HISTORY_SIZE ?? 100);
    this.historyTtlMs = Number(env.HISTORY_TTL_SECS ?? 300) * 1000;
    // {sql, epoch, seq, alarmSet}, opened by the first publish or resume.
    this.history = null;
    // ws -> {id, u, f}; rebuilt from attachments after hibernation.
    this.sockets = new Map();
    for (const ws of ctx.getWebSockets()) this.sockets.set(ws, ws.deserializeAttachment());
    // envelopeId -> {awaiting: Set<socket id>, results, resolve}
    this.pending = new Map();
  }

  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/connect") {
      const pair = new WebSocketPair();
      const state = { id: crypto.randomUUID(), u: decodeURIComponent(request.headers.get("X-User-ID") ?? ""), f: [], c: Date.now() };
      this.ctx.acceptWebSocket(pair[1]);
      pair[1].serializeAttachment(state);
      this.sockets.set(pair[1], state);
      return new Response(null, { status: 101, webSocket: pair[0] });
    }
    const envelope = await request.json();
    const now = Date.now();
    if (this.historySize > 0) this.record(envelope, now);
    const text = JSON.stringify(envelope);
    const delivered = [];
    for (const [ws, state] of this.sockets) {
      if (state.f.some((f) => matches(f, envelope))) {
        try {
          ws.send(text);
          delivered.push(state.id);
        } catch {}
      }
    }
    if (delivered.length === 0) return Response.json({ clientCount: 0, results: [] });
    const results = [];
    const pending = { awaiting: new Set(delivered), count: delivered.length, results, resolve: null, sentAt: now };
    // The timer is cleared by the last ack: workerd allows 10,000 active
    // timeouts, which 2,000 publishes/s with a 5 s timeout each reach.
    let timer;
    await new Promise((resolve) => {
      pending.resolve = resolve;
      this.pending.set(envelope.envelopeId, pending);
      timer = setTimeout(resolve, this.timeoutMs);
    });
    clearTimeout(timer);
    this.pending.delete(envelope.envelopeId);
    return Response.json({ clientCount: pending.count, results });
  }

  openHistory() {
    if (this.history) return this.history;
    const sql = this.ctx.storage.sql;
    sql.exec(HISTORY_SQL.createTable);
    sql.exec(HISTORY_SQL.createMeta);
    let epoch = sql.exec(HISTORY_SQL.readEpoch).toArray()[0]?.v;
    if (!epoch) {
      epoch = crypto.randomUUID().replaceAll("-", "");
      sql.exec(HISTORY_SQL.writeEpoch, epoch);
    }
    const seq = sql.exec(HISTORY_SQL.lastSeq).one().seq ?? 0;
    this.history = { sql, epoch, seq, alarmSet: false };
    return this.history;
  }

  // Gives the envelope the next seq and stores it before it is sent.
  record(envelope, now) {
    const history = this.openHistory();
    const seq = history.seq + 1;
    envelope.seq = seq;
    history.sql.exec(HISTORY_SQL.insert, seq, JSON.stringify(envelope), now);
    history.seq = seq;
    if (!history.alarmSet) {
      // Deletes envelopes at their expiry (alarm below).
      this.ctx.storage.setAlarm(now + this.historyTtlMs + 1);
      history.alarmSet = true;
    }
    if (seq % 16 === 0) this.purge(now);
  }

  purge(now) {
    const sql = this.history.sql;
    const cutoff = now - this.historyTtlMs;
    sql.exec(HISTORY_SQL.purge, this.historySize, cutoff);
    sql.exec(HISTORY_SQL.blankExpired, cutoff);
  }

  alarm() {
    if (this.historySize <= 0) return;
    const history = this.openHistory();
    const now = Date.now();
    this.purge(now);
    const at = history.sql.exec(HISTORY_SQL.oldestStored).one().at;
    if (at === null) {
      history.alarmSet = false;
      return;
    }
    const gap = Math.min(Math.max(this.historyTtlMs / 10, 1000), 60000);
    this.ctx.storage.setAlarm(Math.max(at + this.historyTtlMs + 1, now + gap));
  }

  resume(ws, state, since, epoch) {
    if (this.historySize <= 0) {
      ws.send(JSON.stringify({ type: "error", code: "history_disabled", message: "this server keeps no history" }));
      return;
    }
    const history = this.openHistory();
    const now = Date.now();
    const oldestKept = Math.max(1, history.seq + 1 - this.historySize);
    const cutoff = now - this.historyTtlMs;
    let rows = [];
    let oldest = null;
    if (epoch === history.epoch && since <= history.seq) {
      rows = history.sql.exec(HISTORY_SQL.since, since, oldestKept, cutoff).toArray();
      oldest = history.sql.exec(HISTORY_SQL.oldest, oldestKept, cutoff).one().oldest;
    }
    let replayed = 0;
    for (const row of rows) {
      const envelope = JSON.parse(row.envelope);
      if (!state.f.some((f) => matches(f, envelope))) continue;
      envelope.recovered = true;
      ws.send(JSON.stringify(envelope));
      replayed++;
      // A socket that connected after the envelope went out joins its publish.
      const pending = this.pending.get(envelope.envelopeId);
      if (pending && state.c > pending.sentAt && !pending.awaiting.has(state.id)) {
        pending.awaiting.add(state.id);
        pending.count++;
      }
    }
    const complete = epoch === history.epoch && since <= history.seq &&
      (since === history.seq || (oldest !== null && oldest <= since + 1));
    ws.send(JSON.stringify({ type: "resumed", since, seq: history.seq, replayed, complete, epoch: history.epoch }));
  }

  webSocketMessage(ws, message) {
    if (typeof message !== "string") {
      ws.send(JSON.stringify({ type: "error", code: "binary_not_supported", message: "send JSON text frames" }));
      return;
    }
    if (message.toLowerCase() === "ping") {
      ws.send("pong");
      return;
    }
    let frame;
    try {
      frame = JSON.parse(message);
    } catch {
      ws.send(JSON.stringify({ type: "error", code: "invalid_json", message: "frame is not valid JSON" }));
      return;
    }
    const state = this.sockets.get(ws);
    if (!state) return;
    if (frame?.type === "ack" && typeof frame.envelopeId === "string") {
      const pending = this.pending.get(frame.envelopeId);
      if (pending?.awaiting.delete(state.id)) {
        pending.results.push(frame.result ?? null);
        if (pending.awaiting.size === 0) pending.resolve();
      }
      return;
    }
    if ((frame?.type === "subscribe" || frame?.type === "unsubscribe") && Array.isArray(frame.filters)) {
      const valid = frame.filters.slice(0, 50).map(parseFilter).filter(Boolean);
      const before = state.f.length;
      if (frame.type === "subscribe") {
        for (const f of valid) if (!state.f.some((g) => sameFilter(f, g))) state.f.push(f);
      } else {
        state.f = state.f.filter((g) => !valid.some((f) => sameFilter(f, g)));
      }
      ws.serializeAttachment(state);
      const changed = Math.abs(state.f.length - before);
      let confirmation;
      if (frame.type === "subscribe") {
        confirmation = { type: "subscribed", added: changed, total: state.f.length };
        if (this.historySize > 0) {
          const history = this.openHistory();
          confirmation.seq = history.seq;
          confirmation.epoch = history.epoch;
        }
      } else {
        confirmation = { type: "unsubscribed", removed: changed, total: state.f.length };
      }
      ws.send(JSON.stringify(confirmation));
      return;
    }
    if (frame?.type === "resume" && Number.isSafeInteger(frame.since) && frame.since >= 0 &&
        typeof frame.epoch === "string") {
      this.resume(ws, state, frame.since, frame.epoch);
      return;
    }
    ws.send(JSON.stringify({ type: "error", code: "invalid_frame", message: "unknown or malformed frame" }));
  }

  webSocketClose(ws, code, reason) {
    const state = this.sockets.get(ws);
    this.sockets.delete(ws);
    if (state) {
      for (const pending of this.pending.values()) {
        if (pending.awaiting.delete(state.id) && pending.awaiting.size === 0) pending.resolve();
      }
    }
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {}
  }

  webSocketError(ws) {
    this.webSocketClose(ws, 1011, "error");
  }
}
