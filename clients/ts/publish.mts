// One publish through a client generated from docs/openapi.yaml (README,
// "Contract"): openapi-typescript turned the document into ./openapi.d.ts,
// and openapi-fetch makes calls checked against it at compile time: the
// path, the query and header parameters, the body, and the answer's type per
// status. `make test` compiles this file (`tsc -p clients/ts`) and runs it
// against a real worker (tests/contract/run.sh).
import createClient from "openapi-fetch";
import type { components, paths } from "./openapi.js";

type PublishResult = components["schemas"]["PublishResult"];

export async function publishOrderShipped(
  baseUrl: string,
  token: string,
  userId: string,
  idempotencyKey: string,
): Promise<{ answer: PublishResult; replayed: boolean }> {
  const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
  const { data, error, response } = await client.POST("/publish", {
    params: { query: { detail: "true" }, header: { "Idempotency-Key": idempotencyKey } },
    body: { userId, type: "order", payload: { id: 1234 } },
  });
  if (error) {
    // `error.error` is one of the documented codes of that status.
    throw new Error(`publish failed: ${response.status} ${error.error}: ${error.message}`);
  }
  return { answer: data, replayed: response.headers.get("Idempotent-Replayed") === "true" };
}

// Run as a script (tests/contract/run.sh): publish twice with one key to a
// user nobody listens to; the second answer is the first one, replayed.
declare const process: { env: Record<string, string | undefined> }; // Node's, without @types/node
const { HOPEFLOW_URL: url, HOPEFLOW_TOKEN: token } = process.env;
if (url && token) {
  const user = `ts-client-${Date.now()}`;
  const key = `order-1234-${Date.now()}`;
  const first = await publishOrderShipped(url, token, user, key);
  const again = await publishOrderShipped(url, token, user, key);
  const nobody = ({ clientCount, results, deliveries }: PublishResult) =>
    clientCount === 0 && results.length === 0 && deliveries?.length === 0;
  if (!nobody(first.answer) || first.replayed) {
    throw new Error(`unexpected first answer: ${JSON.stringify(first)}`);
  }
  if (!nobody(again.answer) || !again.replayed) {
    throw new Error(`unexpected replay: ${JSON.stringify(again)}`);
  }
  const client = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${token}` } });
  const refused = await client.POST("/publish", { body: { userId: " " } });
  if (refused.response.status !== 400 || refused.error?.error !== "invalid_body") {
    throw new Error(`a blank userId was not refused: ${refused.response.status}`);
  }
  console.log("generated TypeScript client: publish, replay and a refusal as documented");
}
