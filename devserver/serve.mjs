// Serves one worker the way `wrangler dev` does (wrangler's own startWorker,
// the API behind `wrangler dev`), but by default without the DevTools
// inspector, which the CLI always attaches and cannot be told not to. With the
// inspector attached, wrangler relays every inspector event of the runtime
// (4 Network events per subrequest, e.g. a Durable Object `fetch`) through its
// dev proxy and its node process and buffers them in the proxy, unread, until
// DevTools connects: CPU taken from the runtime on every request and memory
// that only grows. Measured in bench/README.md, "The inspector under make dev".
//
// Usage: node serve.mjs <wrangler.toml> <port> <env file> <persist dir> <log level>
//          [--watch] [--inspector-port N]
//   --watch             reload when the worker's files change (`make dev`)
//   --inspector-port N  attach the inspector as `wrangler dev` does, on N
// The bench and the tests (devserver/src/lib.rs) pass the five positional
// arguments only.
import { unstable_startWorker } from "wrangler";

const args = process.argv.slice(2);
const [config, port, envFile, persist, logLevel] = args;
const flag = (name) => args.includes(name);
const value = (name) => {
  const at = args.indexOf(name);
  return at < 0 ? undefined : args[at + 1];
};
const inspectorPort = value("--inspector-port");

const worker = await unstable_startWorker({
  config,
  envFiles: [envFile],
  dev: {
    server: { hostname: "127.0.0.1", port: Number(port) },
    inspector:
      inspectorPort === undefined
        ? false
        : { hostname: "127.0.0.1", port: Number(inspectorPort) },
    persist,
    logLevel,
    watch: flag("--watch"),
    liveReload: false,
  },
});
await worker.ready;
// wrangler prints its own "Ready on" line from log level info on.
if (["none", "error", "warn"].includes(logLevel)) {
  console.log(`ready on http://127.0.0.1:${port}`);
}
if (inspectorPort !== undefined) {
  console.log(`inspector on 127.0.0.1:${inspectorPort}`);
}
// Until the process group is stopped (SIGTERM) or Ctrl-C (SIGINT).
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await worker.dispose();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
