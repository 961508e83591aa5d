// Compiled by `make contract` (tsc --noEmit) against hopeflow.d.ts: the
// README's example and the rest of the declared API type-check, so the
// declarations cannot drift from the documented use. Never run.
import {
  HopeFlowClient,
  backoffDelay,
  connectUrl,
  socketProtocols,
  type ConnectionState,
  type Envelope,
  type Gap,
  type HopeFlowError,
  type Position,
  type RefreshDetail,
  type RefreshStatus,
  type Subscribed,
  type Unsubscribed,
} from "../../hopeflow.js";

export async function readmeExample(): Promise<void> {
  const client = new HopeFlowClient("wss://realtime.example.com", {
    token: "<jwt>",
  });
  client.onEnvelope(async (envelope) => {
    const id: string = envelope.envelopeId;
    const type: string = envelope.type;
    const seq: number | undefined = envelope.seq;
    void [id, type, seq, envelope.payload];
    return { seen: true };
  });
  client.onState((state: ConnectionState, detail) => {
    void [state, detail?.code, detail?.status];
  });
  client.onRefresh((status, { expiresAt, error }) => void [status, expiresAt, error?.code]);
  const { added, total }: Subscribed = await client.subscribe([{ type: "chat_message" }]);
  const removed: Unsubscribed = await client.unsubscribe([{ type: "chat_message" }]);
  void [added, total, removed.removed];
  client.close();
}

export function everyOption(): HopeFlowClient {
  const client = new HopeFlowClient("ws://127.0.0.1:8787", {
    getToken: async () => "<jwt>",
    backoffInitial: 500,
    backoffMax: 30_000,
    pingInterval: 25_000,
    pingTimeout: 10_000,
  });
  const stop = client.onEnvelope<{ n: number }>((envelope: Envelope<{ n: number }>) => envelope.payload.n);
  client.onGap((gap: Gap) => void [gap.since, gap.seq, gap.epoch, gap.previousEpoch, gap.replayed]);
  client.onError((error: HopeFlowError) => void [error.code, error.result, error.envelope]);
  client.onRefresh((status: RefreshStatus, detail: RefreshDetail) => {
    const expiresAt: number | null = detail.expiresAt;
    const why: string | undefined = detail.error?.code;
    void [status == "expiring" || status == "refreshed" || status == "rejected", expiresAt, why];
  });
  const position: Position | null = client.position;
  void [stop(), position?.seq, client.state];
  const delay: number = backoffDelay(1, 500, 30_000, 0.5);
  const url: string = connectUrl("wss://x.example", "t");
  const protocols: string[] = socketProtocols("t");
  const inUrl = new HopeFlowClient("wss://x.example", { token: "t", tokenInUrl: true });
  void [delay, url, protocols, inUrl];
  return client;
}
