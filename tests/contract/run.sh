#!/usr/bin/env bash
# The contract check of `make test`: starts the prebuilt worker (build/, as
# `make build` leaves it) twice, each on a free port with a random
# JWT_SECRET: `on` with the debug console on, `off` with it off (the
# default). Then
#   1. runs schemathesis against `on` with docs/openapi.yaml, every
#      operation, every check, positive and negative data, every phase
#      (settings: tests/contract/schemathesis.toml);
#   2. runs it the same way against `off` for the console's operations
#      (tag `console`): their paths exist either way, so a method they do
#      not list must be 405 with `Allow` there too, and GET / HEAD the
#      documented 404 (a TRACE /console answered 404 on such a server,
#      which the `on` run cannot see);
#   3. runs the generated TypeScript client's publish call
#      (clients/ts/publish.ts, compiled by `make test` into target/ts/)
#      against `on`.
# Each server runs in its own process group and is always stopped.
#
# Usage: tests/contract/run.sh [extra schemathesis options, for both runs]
# CONTRACT_MAX_EXAMPLES and CONTRACT_SEED override the settings' examples
# per operation and the seed.
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

# Two ports below the kernel's ephemeral range, so no socket the runtime
# opens with bind(0) takes one first (devserver::free_port says more).
read -r PORT_ON PORT_OFF < <("$VENV/bin/python" -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < 2:
    port = random.randrange(low - 12000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    if port not in ports:
        ports.append(port)
print(*ports)
')

declare -A PIDS=()
stop() {
  local status=$?
  local name pid
  for name in "${!PIDS[@]}"; do
    # The whole group: wrangler's node process and workerd.
    kill -TERM -- "-${PIDS[$name]}" 2>/dev/null || true
  done
  for name in "${!PIDS[@]}"; do
    pid="${PIDS[$name]}"
    for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  # CONTRACT_LOG=FILE keeps the `on` worker's log (every request and
  # status); the `off` one's goes to FILE.off.
  if [[ -n "${CONTRACT_LOG:-}" ]]; then
    [[ -f "$DIR/on/wrangler.log" ]] && cp "$DIR/on/wrangler.log" "$CONTRACT_LOG"
    [[ -f "$DIR/off/wrangler.log" ]] && cp "$DIR/off/wrangler.log" "$CONTRACT_LOG.off"
  fi
  if [[ $status -ne 0 ]]; then
    for name in on off; do
      [[ -f "$DIR/$name/wrangler.log" ]] || continue
      echo "--- worker log, console $name (last 40 lines) ---" >&2
      tail -n 40 "$DIR/$name/wrangler.log" >&2
    done
  fi
  rm -rf "$DIR"
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT TERM

# start NAME PORT [VAR=VALUE...]: the worker with JWT_SECRET and the vars.
start() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$DIR/$name"
  { printf 'JWT_SECRET=%s\n' "$SECRET"; printf '%s\n' "$@"; } > "$DIR/$name/server.env"
  WRANGLER_SEND_METRICS=false WRANGLER_SEND_ERROR_REPORTS=false CLOUDFLARE_CF_FETCH_ENABLED=false \
    setsid node devserver/serve.mjs "$CONFIG" "$port" "$DIR/$name/server.env" "$DIR/$name/state" log \
    > "$DIR/$name/wrangler.log" 2>&1 < /dev/null &
  PIDS[$name]=$!
}

healthy() {
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$1/health" 2>/dev/null
}

# wait_ready NAME PORT
wait_ready() {
  for _ in $(seq 600); do
    if healthy "$2"; then return 0; fi
    kill -0 "${PIDS[$1]}" 2>/dev/null || { echo "the worker (console $1) exited" >&2; exit 1; }
    sleep 0.1
  done
  healthy "$2" || { echo "the worker (console $1) did not answer /health" >&2; exit 1; }
}

start on "$PORT_ON" CONSOLE_ENABLED=true
start off "$PORT_OFF"
wait_ready on "$PORT_ON"
wait_ready off "$PORT_OFF"

# A token that reaches every route: any user may publish, and the scope has
# the default OPERATOR_SCOPE (and `publish`, for servers with PUBLISH_SCOPE).
TOKEN="$("$VENV/bin/python" tests/contract/mint.py "$SECRET" contract-fuzzer "publish operator")"

OPTIONS=()
[[ -n "${CONTRACT_MAX_EXAMPLES:-}" ]] && OPTIONS+=(--max-examples "$CONTRACT_MAX_EXAMPLES")
# schemathesis: URL [filters...]
schemathesis() {
  local url=$1
  shift
  "$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run docs/openapi.yaml \
    --url "$url" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    --mode all \
    --phases examples,coverage,fuzzing,stateful \
    --seed "${CONTRACT_SEED:-20260427}" \
    --workers 2 \
    --no-color \
    ${OPTIONS[@]+"${OPTIONS[@]}"} \
    "$@"
}

# schemathesis 4.32's warnings but missing_test_data.
WARNINGS_BUT_MISSING_TEST_DATA=missing_auth,base_url_mismatch,missing_deserializer,unused_openapi_auth,unsupported_regex,method_not_allowed,constants_extraction,unmatched_filter,unresolvable_reference,low_valid_rate,rate_limited,dictionary_mismatch,timeout_units,validation_mismatch

# Both runs, whatever the first finds; then fail if either did.
failed=0
started=$SECONDS
echo "=== schemathesis: every operation, console on ==="
schemathesis "http://127.0.0.1:$PORT_ON" "$@" || failed=1
echo "=== schemathesis: the console's operations, console off ==="
# Without the stateful phase (no links among these operations) and without
# the missing_test_data warning (GET and HEAD answer the documented 404 on
# this server: that is what it tests); every other warning still fails it.
schemathesis "http://127.0.0.1:$PORT_OFF" --include-tag console \
  --phases examples,coverage,fuzzing \
  --warnings "$WARNINGS_BUT_MISSING_TEST_DATA" \
  "$@" || failed=1
echo "schemathesis: $((SECONDS - started)) s"
[[ $failed -eq 0 ]] || { echo "schemathesis found problems (above)" >&2; exit 1; }

HOPEFLOW_URL="http://127.0.0.1:$PORT_ON" HOPEFLOW_TOKEN="$TOKEN" node target/ts/publish.mjs
