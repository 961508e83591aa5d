// The size clients/js/README.md states is the module's size: measured here
// with the command the README gives, so neither can drift from the other.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const run = (command) => Number(execSync(command, { cwd: root, encoding: "utf8" }).trim());
const minify = "node_modules/.bin/esbuild --minify --log-level=error clients/js/hopeflow.js";

test("minified + gzip size is under 4 KB and the one the README states", () => {
  const gzipped = run(`${minify} | gzip -9 | wc -c`);
  const minified = run(`${minify} | wc -c`);
  console.log(`hopeflow.js: ${gzipped} B minified + gzip, ${minified} B minified`);
  assert.ok(gzipped < 4096, `${gzipped} B`);
  const readme = readFileSync(`${root}clients/js/README.md`, "utf8");
  const grouped = (n) => n.toLocaleString("en-US");
  assert.ok(
    readme.includes(`**Size: ${grouped(gzipped)} bytes minified + gzip** (${grouped(minified)} minified)`),
    `clients/js/README.md should state ${grouped(gzipped)} and ${grouped(minified)}`,
  );
});
