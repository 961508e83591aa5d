#!/usr/bin/env bash
# The contract check of `make test`: starts the prebuilt worker (build/, as
# `make build` leaves it) on a free port with a random JWT_SECRET and the
# debug console on, then
#   1. runs schemathesis against it with docs/openapi.yaml, every check on,
#      positive and negative data (settings: tests/contract/schemathesis.toml);
#   2. runs the generated TypeScript client's publish call
#      (clients/ts/publish.ts, compiled by `make test` into target/ts/)
#      against it.
# The server runs in its own process group and is always stopped.
#
# Usage: tests/contract/run.sh [extra schemathesis options]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/target/venv}"
CONFIG="$ROOT/build/wrangler.toml"
[[ -f "$CONFIG" && -f "$ROOT/build/worker/shim.mjs" ]] || {
  echo "the worker is not built: run \`make build\` first" >&2
  exit 1
}
[[ -f "$ROOT/target/ts/publish.mjs" ]] || {
  echo "the TypeScript client example is not compiled: run \`tsc -p clients/ts\` (make test does)" >&2
  exit 1
}
[[ -x "$VENV/bin/schemathesis" ]] || {
  echo "schemathesis is missing from $VENV: \`make test\` installs it" >&2
  exit 1
}

DIR="$(mktemp -d "${TMPDIR:-/tmp}/hopeflow-contract.XXXXXX")"
SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Below the kernel's ephemeral range, so no socket the runtime opens with
# bind(0) takes it first (devserver::free_port says more).
PORT="$("$VENV/bin/python" -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    port = random.randrange(low - 12000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
')"
BASE="http://127.0.0.1:$PORT"
printf 'JWT_SECRET=%s\nCONSOLE_ENABLED=true\n' "$SECRET" > "$DIR/server.env"

SERVER_PID=""
stop() {
  local status=$?
  if [[ -n "$SERVER_PID" ]]; then
    # The whole group: wrangler's node process and workerd.
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  # CONTRACT_LOG=FILE keeps the worker's log (every request and status).
  if [[ -n "${CONTRACT_LOG:-}" && -f "$DIR/wrangler.log" ]]; then
    cp "$DIR/wrangler.log" "$CONTRACT_LOG"
  fi
  if [[ $status -ne 0 && -f "$DIR/wrangler.log" ]]; then
    echo "--- worker log (last 40 lines) ---" >&2
    tail -n 40 "$DIR/wrangler.log" >&2
  fi
  rm -rf "$DIR"
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT TERM

WRANGLER_SEND_METRICS=false WRANGLER_SEND_ERROR_REPORTS=false CLOUDFLARE_CF_FETCH_ENABLED=false \
  setsid node devserver/serve.mjs "$CONFIG" "$PORT" "$DIR/server.env" "$DIR/state" log \
  > "$DIR/wrangler.log" 2>&1 < /dev/null &
SERVER_PID=$!

healthy() {
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$BASE/health" 2>/dev/null
}
for _ in $(seq 600); do
  if healthy; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "the worker exited" >&2; exit 1; }
  sleep 0.1
done
healthy || { echo "the worker did not answer /health" >&2; exit 1; }

# A token that reaches every route: any user may publish, and the scope has
# the default OPERATOR_SCOPE (and `publish`, for servers with PUBLISH_SCOPE).
TOKEN="$("$VENV/bin/python" tests/contract/mint.py "$SECRET" contract-fuzzer "publish operator")"

started=$SECONDS
"$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run docs/openapi.yaml \
  --url "$BASE" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --mode all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${CONTRACT_MAX_EXAMPLES:-150}" \
  --seed "${CONTRACT_SEED:-20260427}" \
  --workers 2 \
  --no-color \
  "$@"
echo "schemathesis: $((SECONDS - started)) s"

HOPEFLOW_URL="$BASE" HOPEFLOW_TOKEN="$TOKEN" node target/ts/publish.mjs
