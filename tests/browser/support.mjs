// What the browser tests share: the prebuilt worker (`make build`) under
// wrangler's dev runtime (devserver/serve.mjs), HS256 tokens as the server
// verifies them, and Debian's Chromium through playwright-core. Every wait is
// on an event and time-boxed.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CONFIG = join(ROOT, "build/wrangler.toml");
/** The longest any one step may take. */
export const WAIT_MS = 30_000;

/** A timer for races and polls that does not keep the process alive. */
export const delay = (ms) => sleep(ms, undefined, { ref: false });

const base64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** An HS256 token as the server verifies it; `claims` are added to `userId` and `exp`. */
export function mint(userId, key, claims = {}) {
  const unsigned = `${base64url({ alg: "HS256", typ: "JWT" })}.${base64url({
    userId,
    exp: Math.floor(Date.now() / 1000) + 3600,
    ...claims,
  })}`;
  return `${unsigned}.${hs256(unsigned, key)}`;
}

/** The base64url HMAC-SHA256 of `text`: a JWT's signature. */
export const hs256 = (text, key) => createHmac("sha256", key).update(text).digest("base64url");

export async function freePort() {
  // Below the kernel's ephemeral range, so no socket the runtime opens with
  // bind(0) can take the port between this check and wrangler binding it
  // (devserver::free_port says more).
  const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").split(/\s+/)[0]) || 32768;
  const span = 12000;
  for (let tries = 0; tries < 200; tries++) {
    const port = low - span + Math.floor(Math.random() * span);
    const server = createTcpServer();
    const bound = await new Promise((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (bound) {
      await new Promise((resolve) => server.close(resolve));
      return port;
    }
  }
  throw new Error("no free port below the ephemeral range");
}

/**
 * The prebuilt worker with a fresh random JWT_SECRET and `vars`, its own
 * state and log in a temporary directory. `start(port)` may follow `stop()`
 * (a restart on the same port); `dispose()` stops it and removes the files.
 */
export class Worker {
  #dir = mkdtempSync(join(tmpdir(), "hopeflow-browser-"));
  #logFile = join(this.#dir, "wrangler.log");
  #envFile = join(this.#dir, "server.env");
  /** The running server: { child, exited() }. */
  #running;
  port;

  constructor(vars = {}) {
    assert.ok(existsSync(CONFIG), "build/wrangler.toml is missing: run `make build` first");
    this.secret = randomBytes(32).toString("hex");
    const lines = Object.entries({ JWT_SECRET: this.secret, ...vars }).map(([name, value]) => `${name}=${value}\n`);
    writeFileSync(this.#envFile, lines.join(""));
  }

  /** A token of this server's secret. */
  mint(userId, claims) {
    return mint(userId, this.secret, claims);
  }

  url(path = "/") {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  log() {
    return existsSync(this.#logFile) ? readFileSync(this.#logFile, "utf8") : "";
  }

  /** Starts on `port` (own process group: stopping it stops workerd too) and waits for /health. */
  async start(port) {
    this.port = port;
    const log = openSync(this.#logFile, "a");
    const child = spawn(
      process.execPath,
      [join(ROOT, "devserver/serve.mjs"), CONFIG, String(port), this.#envFile, join(this.#dir, "state"), "log"],
      {
        cwd: ROOT,
        detached: true,
        stdio: ["ignore", log, log],
        env: {
          ...process.env,
          WRANGLER_SEND_METRICS: "false",
          WRANGLER_SEND_ERROR_REPORTS: "false",
          CLOUDFLARE_CF_FETCH_ENABLED: "false",
        },
      },
    );
    let exited = null;
    child.on("exit", (code, signal) => (exited = code ?? signal));
    this.#running = { child, exited: () => exited };
    const deadline = Date.now() + 2 * WAIT_MS;
    while (Date.now() < deadline) {
      if (exited !== null) throw new Error(`the worker exited (${exited}):\n${this.log()}`);
      try {
        const response = await fetch(this.url("/health"));
        if (response.status == 200) return;
      } catch {
        // Not listening yet.
      }
      await sleep(50); // the poll's interval
    }
    throw new Error(`the worker did not answer /health in time:\n${this.log()}`);
  }

  /** Stops the whole process group and waits until its node process is gone. */
  async stop() {
    if (!this.#running) return;
    const { child, exited } = this.#running;
    this.#running = undefined;
    const signal = (name) => {
      try {
        process.kill(-child.pid, name);
      } catch {
        // The group is already gone.
      }
    };
    if (exited() === null) {
      const gone = new Promise((resolve) => child.once("exit", resolve));
      signal("SIGTERM");
      await Promise.race([gone, delay(10_000)]);
    }
    // workerd may outlive wrangler's node process.
    signal("SIGKILL");
  }

  async dispose() {
    await this.stop();
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

/** Headless Debian Chromium, without the calls home it would make. */
export function launchChromium() {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: \`make test\` installs Debian's chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    timeout: WAIT_MS,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      // Without these Chromium keeps calling out to a network this machine does not have.
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Records a page's console errors, uncaught errors and CSP violations into `log`. */
export function recordProblems(page, log) {
  page.on("console", (message) => {
    if (message.type() == "error") log.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => log.push(`pageerror: ${error.message}`));
}
