// node bench/servers/logcost/run.mjs [requests] [wrangler log level]: starts
// this worker the way the bench starts its servers (devserver/serve.mjs, no
// inspector, log level `warn` unless given: `log` is `make dev`'s), then
// for each case sends the requests one after another to the runtime's own
// port and prints the runtime process's CPU per request (/proc, user +
// system, 10 ms ticks). Two passes, so the noise shows.
import { spawn, execSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, readdirSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "../../..");
const requests = Number(process.argv[2] ?? 2000);
const logLevel = process.argv[3] ?? "warn";
const dir = mkdtempSync(join(tmpdir(), "logcost-"));
writeFileSync(join(dir, "vars"), "");
const port = 20000 + Math.floor(Math.random() * 20000);
const server = spawn("node", [join(root, "devserver/serve.mjs"), join(here, "wrangler.toml"), String(port), join(dir, "vars"), join(dir, "state"), logLevel], { detached: true, stdio: "ignore" });
const stop = () => { try { process.kill(-server.pid, "SIGTERM"); } catch {} };
process.on("exit", stop);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let i = 0; ; i++) {
  try { if ((await fetch(`http://127.0.0.1:${port}/?n=0`)).ok) break; } catch {}
  if (i > 120) throw new Error("the worker did not start");
  await sleep(500);
}
// The runtime: the workerd of this server that is not the dev proxy.
const pids = execSync(`pgrep -g ${server.pid} workerd`).toString().trim().split("\n");
const runtime = pids.map(Number).find((pid) => !readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(`127.0.0.1:${port}`));
const listening = execSync(`ss -ltnp`).toString().split("\n").find((l) => l.includes(`pid=${runtime},`));
const runtimePort = listening.match(/127\.0\.0\.1:(\d+)/)[1];
const cpuMs = () => {
  const fields = readFileSync(`/proc/${runtime}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
};
async function measure(query) {
  const url = `http://127.0.0.1:${runtimePort}/?${query}`;
  for (let i = 0; i < 200; i++) await (await fetch(url)).text();
  const before = cpuMs();
  for (let i = 0; i < requests; i++) await (await fetch(url)).text();
  return ((cpuMs() - before) * 1000) / requests;
}
const cases = ["n=0", "n=1", "n=10", "n=0&k=do", "n=1&k=do", "n=1&k=later"];
for (const pass of [1, 2]) {
  for (const query of cases) {
    console.log(`pass ${pass}  ${query.padEnd(12)} ${(await measure(query)).toFixed(0)} µs of runtime CPU per request`);
  }
}
stop();
process.exit(0);
