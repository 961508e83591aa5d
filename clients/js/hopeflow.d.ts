// Types of hopeflow.js, the HopeFlow Realtime client for browsers and Node 20+.

/** A delivery; the handler's (resolved) value is sent back as the ack result. */
export interface Envelope<Payload = unknown> {
  envelopeId: string;
  type: string;
  payload: Payload;
  /** The user's history position (history on: always; each seq is delivered once, in order). */
  seq?: number;
  /** Sent again by a resume after a reconnect (same envelopeId and seq as first sent). */
  recovered?: boolean;
  [field: string]: unknown;
}

/**
 * Exact-match filter: `type` is compared with the envelope's type, every
 * other key with the same key of its payload (string equality). `{}` matches
 * everything.
 */
export type Filter = Record<string, string>;

/**
 * "connecting" until the first socket is open; "open" once the socket is
 * open and (after a reconnect) every confirmed filter is subscribed again;
 * "reconnecting" after a drop, while it waits and retries; "closed" for good.
 */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/**
 * Why the state changed (second argument of the onState listener, for
 * "reconnecting" and "closed"):
 * - the socket closed: `code` and `reason` of its close event (1006 for a
 *   dropped connection; 1000 and "closed by the client" after close();
 *   1008, 1009 and 4001 end the client; 4002, "token expired", ends it
 *   with the `token` option and is followed by a reconnect with getToken), or
 *   `reason` "no pong in time" when the ping went unanswered;
 * - the handshake was refused: `status` 401 or 403 with the server's
 *   `error` ("missing_token", "invalid_token", "token_expired",
 *   "origin_not_allowed") and `message`;
 * - getToken failed: `cause` is what it threw.
 */
export interface StateDetail {
  code?: number;
  reason?: string;
  status?: number;
  error?: string;
  message?: string;
  cause?: unknown;
}

/**
 * The server's confirmation of a subscribe: filters added, filters on the
 * socket now; with history on, the user's `seq` and `epoch` when it took
 * effect (everything after `seq` reaches this client).
 */
export interface Subscribed {
  added: number;
  total: number;
  seq?: number;
  epoch?: string;
}

/** Where deliveries stand in the user's history: the highest `seq` delivered (or the one the first subscription started after), of history `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

/**
 * A resume after a reconnect could not give back everything the drop may
 * have made this client miss: envelopes matching its filters with a seq
 * after `since` (of `previousEpoch`) and up to `seq` (of `epoch`) may be
 * missing; resync from your backend. `replayed` of them were recovered and
 * are delivered after this call. `epoch` differs from `previousEpoch` when
 * the user's history was reset; otherwise it no longer reached back to
 * `since + 1`. Delivery goes on from `seq` of `epoch`.
 */
export interface Gap {
  since: number;
  seq: number;
  epoch: string;
  previousEpoch: string;
  replayed: number;
}

/**
 * A step of a token refresh (first argument of the onRefresh listener):
 * - "expiring": the server says the socket's token expires at `expiresAt`;
 *   the client asks getToken for a new one and sends it in a `refresh`
 *   (with the `token` option it sends nothing: the server closes the socket
 *   with 4002 at `expiresAt` plus its leeway, and the client ends "closed");
 * - "refreshed": the server took the new token; the same socket now lives
 *   until `expiresAt` (null: the new token has no `exp`);
 * - "rejected": no new token took effect, `error` says why: "refresh_rejected"
 *   (the server refused it), "token_failed" (getToken threw) or
 *   "token_unchanged" (getToken gave the socket's token again). The socket
 *   keeps `expiresAt`; at its 4002 the client reconnects with getToken.
 */
export type RefreshStatus = "expiring" | "refreshed" | "rejected";

/** Second argument of the onRefresh listener. */
export interface RefreshDetail {
  /** When the socket's token expires (unix seconds); null when it has no `exp`. */
  expiresAt: number | null;
  /** With "rejected": why (also reported through onError). */
  error?: HopeFlowError;
}

/** The server's confirmation of an unsubscribe: filters removed, filters left. */
export interface Unsubscribed {
  removed: number;
  total: number;
}

/**
 * What subscribe / unsubscribe reject with, and what onError listeners get.
 * `code` is the server's error code ("invalid_filter", "too_many_filters",
 * "subscription_limit", "rate_limited", ...) or one of the client's:
 * "closed" (the client is closed), "handler_failed" (the onEnvelope handler
 * threw; `cause` and `envelope` say which), "token_failed" (getToken threw),
 * "token_unchanged" (getToken gave a refresh the socket's own token).
 */
export interface HopeFlowError extends Error {
  code: string;
  /**
   * After "invalid_filter" or "too_many_filters" the valid filters among the
   * first 50 did apply: this is the server's confirmation of them.
   */
  result?: Subscribed | Unsubscribed;
  envelope?: Envelope;
  cause?: unknown;
}

export interface HopeFlowOptions {
  /** The JWT, offered as the protocol `hopeflow.token.<jwt>` (see tokenInUrl). Give this or getToken. */
  token?: string;
  /**
   * Called before every connect and reconnect (its token is offered as a
   * protocol, see tokenInUrl), and when the server says the socket's token
   * is expiring (its token is sent in a `refresh`, see onRefresh).
   */
  getToken?: () => string | Promise<string>;
  /**
   * `true`: the token goes in `?token=` of the socket URL (and of the probe
   * of a failed handshake), as before the protocol token. Default `false`:
   * the socket offers `["hopeflow", "hopeflow.token.<jwt>"]` and the probe
   * sends `Authorization: Bearer`, so the token is in no URL.
   */
  tokenInUrl?: boolean;
  /** The WebSocket class; default `globalThis.WebSocket` (Node 20: pass one, e.g. the `ws` package's). */
  WebSocket?: new (url: string, protocols?: string[]) => { send(data: string): void; close(code?: number): void };
  /** Used to ask why a handshake failed; default `globalThis.fetch`. Without one, failures are retried. */
  fetch?: (
    url: string,
    init?: { headers: Record<string, string> },
  ) => Promise<{ status: number; json(): Promise<any> }>;
  /** First reconnect delay in ms, doubled per failed attempt (default 500). */
  backoffInitial?: number;
  /** Longest reconnect delay in ms (default 30000). Each delay is 50–100 % of its step. */
  backoffMax?: number;
  /** ms between a `pong` (or the open) and the next `ping` (default 25000). */
  pingInterval?: number;
  /** ms to wait for `pong` before the socket counts as dead and is replaced (default 10000). */
  pingTimeout?: number;
}

export class HopeFlowClient {
  /** Starts connecting at once. Throws a TypeError without a WebSocket, a ws:// or wss:// URL, or a token. */
  constructor(url: string, options: HopeFlowOptions);

  readonly state: ConnectionState;

  /** A copy of the current position; null without history or before a subscription is confirmed. A reconnect resumes from it. */
  readonly position: Position | null;

  /**
   * Sets the handler (replacing any earlier one). Its value, or resolved
   * value, is sent as the ack result; a handler that throws or rejects acks
   * nothing (onError gets "handler_failed"). Envelopes that arrive while no
   * handler is set wait for one. With history on, each `seq` is passed once
   * and in order, across reconnects (what a reconnect's resume recovers
   * included). Returns a function that removes it.
   */
  onEnvelope<Payload = unknown>(handler: (envelope: Envelope<Payload>) => unknown): () => void;

  /**
   * Calls `listener` on every state change. One added right after the
   * constructor also sees "connecting". Returns a function that removes it.
   */
  onState(listener: (state: ConnectionState, detail?: StateDetail) => void): () => void;

  /**
   * Errors not tied to a call: server error frames about nothing pending,
   * "handler_failed", "token_failed", a re-subscription the server refused,
   * "history_disabled" (the server answered a resume without keeping
   * history: the client stops resuming), and a refresh that did not take
   * ("refresh_rejected", "token_failed", "token_unchanged": see onRefresh).
   */
  onError(listener: (error: HopeFlowError) => void): () => void;

  /**
   * Calls `listener` when a resume after a reconnect was incomplete (see
   * Gap), before the envelopes it did recover. Returns a function that
   * removes it.
   */
  onGap(listener: (gap: Gap) => void): () => void;

  /**
   * Calls `listener(status, detail)` at each step of a token refresh (see
   * RefreshStatus): "expiring", then "refreshed" or "rejected". Returns a
   * function that removes it.
   */
  onRefresh(listener: (status: RefreshStatus, detail: RefreshDetail) => void): () => void;

  /**
   * Adds filters; resolves with the server's confirmation. While
   * (re)connecting it waits for the socket. Rejects with a HopeFlowError.
   */
  subscribe(filters: Filter[]): Promise<Subscribed>;

  /** Removes equal filters; as subscribe. */
  unsubscribe(filters: Filter[]): Promise<Unsubscribed>;

  /** Closes the socket (code 1000) for good; pending calls reject with code "closed". */
  close(): void;
}

/** Delay before reconnect attempt `attempt` (1-based): min(initial·2^(attempt−1), max) × (0.5 + random/2). */
export function backoffDelay(attempt: number, initial: number, max: number, random?: number): number;

/** The socket URL with `tokenInUrl`: `url` with a "/" path when it has none and `token=<URL-encoded token>` in its query. */
export function connectUrl(url: string, token: string): string;

/** The protocols a socket offers by default: `["hopeflow", "hopeflow.token." + token]`. */
export function socketProtocols(token: string): string[];
