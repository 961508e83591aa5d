// The floor for the benchmarks: a worker that forwards to a Durable Object,
// which sends one fixed frame to each socket and answers once every socket
// replied (anything) or 5 s passed. No auth, no parsing, no filters.
import { DurableObject } from "cloudflare:workers";

const FRAME = '{"envelopeId":"floor","type":"t","payload":null}';

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response('{"ok":true}');
    const user = url.searchParams.get("user") ?? "floor";
    const stub = env.HOPEFLOW_REALTIME.getByName(user);
    if (url.pathname === "/publish") {
      const body = await request.text();
      const target = JSON.parse(body).userId ?? user;
      return env.HOPEFLOW_REALTIME.getByName(target).fetch("https://do/deliver", { method: "POST" });
    }
    return stub.fetch(request);
  },
};

export class Floor extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    // Publishes in arrival order; replies carry no id, so each reply counts
    // towards the oldest publish still waiting.
    this.waiting = [];
  }

  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/deliver") {
      const sockets = this.ctx.getWebSockets();
      for (const ws of sockets) ws.send(FRAME);
      if (sockets.length === 0) return new Response('{"clientCount":0,"results":[]}');
      await new Promise((resolve) => {
        // The timer is cleared once answered: left running, one per
        // publish, they hit the runtime's limit of 10,000 active timeouts
        // under the throughput scenario's load.
        const timer = setTimeout(() => {
          this.waiting = this.waiting.filter((e) => e !== entry);
          resolve();
        }, 5000);
        const entry = {
          left: sockets.length,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        this.waiting.push(entry);
      });
      return new Response(`{"clientCount":${sockets.length},"results":[]}`);
    }
    const pair = new WebSocketPair();
    this.ctx.acceptWebSocket(pair[1]);
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  webSocketMessage() {
    const oldest = this.waiting[0];
    if (oldest && --oldest.left === 0) {
      this.waiting.shift();
      oldest.resolve();
    }
  }

  webSocketClose(ws, code, reason) {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {}
  }
}
