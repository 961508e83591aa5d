// Serves one worker the way `wrangler dev` does (wrangler's own startWorker,
// the API behind `wrangler dev`), but without the DevTools inspector, which
// the CLI always attaches: it streams an event per request to wrangler's node
// process, which then competes with the runtime for the CPU.
//
// Usage: node serve.mjs <wrangler.toml> <port> <env file> <persist dir> <log level>
import { unstable_startWorker } from "wrangler";

const [config, port, envFile, persist, logLevel] = process.argv.slice(2);
const worker = await unstable_startWorker({
  config,
  envFiles: [envFile],
  dev: {
    server: { hostname: "127.0.0.1", port: Number(port) },
    inspector: false,
    persist,
    logLevel,
    watch: false,
    liveReload: false,
  },
});
await worker.ready;
console.log(`ready on 127.0.0.1:${port}`);
// Until the process group is stopped.
process.on("SIGTERM", async () => {
  await worker.dispose();
  process.exit(0);
});
