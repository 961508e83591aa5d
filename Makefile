# The two commands of the README: `make dev` and `make test`. Both install what
# is missing (and only that), so they are fast on a machine that has everything.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PORT ?= 8787
# `make debug`: where DevTools connects (wrangler's default).
INSPECTOR_PORT ?= 9229
# wrangler's levels: none, error, warn, info, log, debug. `log` (wrangler dev's
# default) is info plus the worker's console.log; `info` hides console.log.
LOG_LEVEL ?= log
WORKER_BUILD_VERSION := 0.8.7
# worker-build and the wasm-bindgen library must agree: take the CLI version
# from Cargo.lock (Cargo.toml pins the library with `=`).
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)

CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
export PATH := $(CARGO_BIN):$(CURDIR)/node_modules/.bin:$(PATH)
# worker-build downloads these from the internet unless told where they are.
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export WASM_OPT_BIN := $(CURDIR)/node_modules/.bin/wasm-opt
export ESBUILD_BIN := $(CURDIR)/node_modules/.bin/esbuild
export WRANGLER_SEND_METRICS := false
export WRANGLER_SEND_ERROR_REPORTS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false

SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock
WORKER := build/worker/shim.mjs
# wrangler.toml without [build]: starts the prebuilt worker in about a second.
RUN_CONFIG := build/wrangler.toml

# Fuzzing (nightly, cargo-fuzz): each target runs FUZZ_SECS seconds.
FUZZ_SECS ?= 300
FUZZ_TARGETS := client_frame filters publish_body token

.PHONY: help dev debug build test contract contract-client bench fuzz install-cli tools rust-tools node-tools contract-tools clean

help:
	@echo "make dev    install what is missing, build, serve on 127.0.0.1:$(PORT)"
	@echo "make debug  as make dev, through \`wrangler dev\` with the DevTools inspector on 127.0.0.1:$(INSPECTOR_PORT)"
	@echo "make test   fmt, clippy, unit tests, integration tests against wrangler dev"
	@echo "make build  release build into build/ (what wrangler deploy uploads)"
	@echo "make contract  docs/openapi.yaml and docs/asyncapi.yaml against the code, schemathesis against the worker"
	@echo "make contract-client  regenerate clients/ts/openapi.d.ts from docs/openapi.yaml"
	@echo "make bench  hopeflow vs a JS reference vs the runtime floor (BENCH_ROUNDS, default 3)"
	@echo "make fuzz   run every cargo-fuzz target for FUZZ_SECS (default 300) seconds"
	@echo "make install-cli  install the hopeflow tool into ~/.cargo/bin"

tools: rust-tools node-tools

rust-tools:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown \
	  || rustup target add wasm32-unknown-unknown
	@worker-build --version 2>/dev/null | grep -qF "$(WORKER_BUILD_VERSION)" \
	  || cargo install worker-build --version $(WORKER_BUILD_VERSION) --locked
	@# No --locked: the CLI's lockfile pins a webpki-roots the registry no longer has.
	@"$(WASM_BINDGEN_BIN)" --version 2>/dev/null | grep -qF "$(WASM_BINDGEN_VERSION)" \
	  || cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

node-tools: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

build: $(WORKER) $(RUN_CONFIG)

# src/shim.js is the worker's JavaScript entry (it makes the Durable Object
# callable over RPC); worker-build bundles it with the wasm-bindgen glue.
# The entry imports the console's assets by absolute path (worker-build
# bundles it from a staging dir of its own): build/shim.js is src/shim.js
# with that path filled in.
CONSOLE_ASSETS := build/console-assets.mjs

$(CONSOLE_ASSETS): src/console.html clients/js/hopeflow.js devserver/console-assets.mjs
	@mkdir -p build
	node devserver/console-assets.mjs $@ src/console.html clients/js/hopeflow.js

build/shim.js: src/shim.js
	@mkdir -p build
	sed 's|@CONSOLE_ASSETS@|$(CURDIR)/$(CONSOLE_ASSETS)|' src/shim.js > $@

$(WORKER): $(SOURCES) build/shim.js $(CONSOLE_ASSETS) | tools
	CUSTOM_SHIM=$(CURDIR)/build/shim.js worker-build --release
	@touch $@

$(RUN_CONFIG): wrangler.toml
	@mkdir -p build
	@awk '/^\[build\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' wrangler.toml \
	  | sed 's|^main = "build/|main = "|' > $@

.dev.vars:
	cp .dev.vars.example .dev.vars

# Without the DevTools inspector, which the `wrangler dev` CLI always attaches:
# wrangler then relays 4 events per subrequest through its dev proxy and node
# process and keeps them in memory (bench/README.md, "The inspector under make
# dev"). serve.mjs is wrangler's own startWorker (the API behind `wrangler
# dev`) with the inspector off; it reloads when `make build` rewrites build/.
dev: build .dev.vars
	node devserver/serve.mjs $(RUN_CONFIG) $(PORT) $(CURDIR)/.dev.vars \
	  $(CURDIR)/build/.wrangler/state $(LOG_LEVEL) --watch

# `wrangler dev` itself, inspector attached: for Chrome DevTools (breakpoints,
# profiles). Same port, vars and state as `make dev`. Slower: see above, and
# once DevTools is open, V8 runs the wasm as unoptimized debug code.
debug: build .dev.vars
	@echo "DevTools: https://devtools.devprod.cloudflare.dev/js_app?theme=systemPreferred&debugger=true&ws=127.0.0.1:$(INSPECTOR_PORT)/ws"
	@echo "  (or chrome://inspect, Configure..., add 127.0.0.1:$(INSPECTOR_PORT))"
	wrangler dev --config $(RUN_CONFIG) --env-file $(CURDIR)/.dev.vars \
	  --persist-to $(CURDIR)/build/.wrangler/state --log-level $(LOG_LEVEL) \
	  --ip 127.0.0.1 --port $(PORT) --inspector-ip 127.0.0.1 --inspector-port $(INSPECTOR_PORT) \
	  --show-interactive-dev-session=false

# Debian's Chromium, for the browser client's test (tests/browser), when missing.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

# schemathesis (PyPI, pinned with its dependencies) for the contract test, in
# a virtual environment of its own; made again when the pins change.
VENV := target/venv
CONTRACT_REQUIREMENTS := tests/contract/requirements.txt

$(VENV)/.installed: $(CONTRACT_REQUIREMENTS)
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-input -r $(CONTRACT_REQUIREMENTS)
	@touch $@

contract-tools: $(VENV)/.installed

# The contract (docs/protocol.md "Contract"): both documents valid OpenAPI 3.1 and
# AsyncAPI 3.0; the code tables of src/ against them; the TypeScript client generated from docs/openapi.yaml is up
# to date and compiles; then schemathesis (every check, positive and
# negative data) and that client against the worker (tests/contract/run.sh).
# The e2e suite checks every answer and frame it reads against the documents.
contract: build | node-tools contract-tools
	$(VENV)/bin/python tests/contract/check_documents.py
	cargo test -p hopeflow-realtime --test contract_tables
	@mkdir -p target/contract
	openapi-typescript docs/openapi.yaml -o target/contract/openapi.d.ts
	@diff -u clients/ts/openapi.d.ts target/contract/openapi.d.ts \
	  || { echo "clients/ts/openapi.d.ts is not what docs/openapi.yaml generates: run make contract-client"; exit 1; }
	tsc -p clients/ts
	tests/contract/run.sh

contract-client: | node-tools
	openapi-typescript docs/openapi.yaml -o clients/ts/openapi.d.ts

test: build | node-tools $(CHROMIUM) contract-tools
	python3 tests/docs/check_links.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p hopeflow-realtime --lib --target wasm32-unknown-unknown -- -D warnings
	@# The domain alone, as the client and the fuzz targets use it: no runtime crate.
	cargo build -p hopeflow-realtime --no-default-features
	cargo test --workspace --lib --bins
	cargo test -p hopeflow-realtime --test layout
	cargo test -p hopeflow-realtime --test observing_queries
	cargo test --workspace --doc
	@# The e2e suite runs the CLI as a real process.
	cargo build -p hopeflow-client --bin hopeflow
	cargo test -p hopeflow-realtime --test e2e
	$(MAKE) --no-print-directory contract
	@# The browser client: its declarations against its documented use, its
	@# state machine (fake socket) and size, then headless Chromium against the worker.
	tsc -p clients/js/test/types
	node --test clients/js/test/ tests/browser/
	@# Keeps the benchmark from rotting: tiny sizes, fails on any failed check;
	@# includes a small redeploy storm (runtime restarted on its storage: nothing
	@# lost or doubled, every socket resumed) and one user with 40 sockets.
	cargo run -p hopeflow-bench -- --smoke --out target/bench-smoke

BENCH_ROUNDS ?= 3

# Writes bench/results/latest.{json,md} and round-trip.svg.
bench: build
	BENCH_COMMAND="make bench BENCH_ROUNDS=$(BENCH_ROUNDS)" \
	  cargo run --release -p hopeflow-bench -- --rounds $(BENCH_ROUNDS) --out bench/results

# The `hopeflow` tool on your PATH (~/.cargo/bin).
install-cli:
	cargo install --path client --locked

fuzz:
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	cd fuzz && for target in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

clean:
	rm -rf build target/wasm32-unknown-unknown
