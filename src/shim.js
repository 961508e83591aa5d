// The worker's JavaScript entry: instantiates the wasm and forwards the
// runtime's entry points to the Rust exports of src/runtime/entry.rs. No logic lives
// here. worker-build bundles it (CUSTOM_SHIM, see the Makefile) into
// build/worker/shim.mjs; the $NAMES are its placeholders.
//
// Why not worker-build's own entry: it exports the Durable Object as a Proxy
// that is not a `DurableObject`, so the object cannot be called over RPC
// (`deliver` below), and it makes a new Proxy per method call.
import * as imports from "./index_bg.js";
import wasmModule from "./index.wasm";
import { DurableObject } from "cloudflare:workers";
// The debug console's page and the browser client, as strings (made by
// devserver/console-assets.mjs; the Makefile fills in the path).
import { consolePage, consoleClient } from "@CONSOLE_ASSETS@";
$SNIPPET_JS_IMPORTS

const instance = new WebAssembly.Instance(wasmModule, {
  "./index_bg.js": imports,
  $SNIPPET_WASM_IMPORTS
});
imports.__wbg_set_wasm(instance.exports);
instance.exports.__wbindgen_start?.();
// Compiles and optimizes the publish path now, not on the first requests:
// its pure code (src/domain/warmup.rs) and its crossings into JavaScript
// (runtime::entry::warm_up). The global scope may not build a response or set a timer.
imports.warmUp();
// Handed over once, so they need not be compiled into the wasm.
imports.setConsoleAssets(consolePage, consoleClient);

export default {
  fetch(request, env, ctx) {
    return imports.fetch(request, env, ctx);
  },
};

export class HopeFlowRealtime extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.core = new imports.RealtimeObject(ctx, env);
  }

  fetch(request) {
    try {
      return this.core.fetch(request);
    } catch (error) {
      this.recover(error);
    }
  }

  // RPC from the worker: the envelope's JSON text (and options' JSON text
  // for detail, an idempotency key or a batch), the user and when the worker
  // received the request in, a Promise of the publish answer's JSON text out.
  deliver(envelope, options, userId, receivedMs) {
    try {
      return this.core.deliver(envelope, options, userId, receivedMs);
    } catch (error) {
      this.recover(error);
    }
  }

  // RPC from the worker (operator routes): JSON text out.
  sockets(userId) {
    try {
      return this.core.sockets(userId);
    } catch (error) {
      this.recover(error);
    }
  }

  disconnect(request) {
    try {
      return this.core.disconnect(request);
    } catch (error) {
      this.recover(error);
    }
  }

  // Every timed duty: expiries, token notices and closes, webhooks.
  alarm() {
    try {
      this.core.alarm();
    } catch (error) {
      this.recover(error);
    }
  }

  webSocketMessage(ws, message) {
    try {
      this.core.webSocketMessage(ws, message);
    } catch (error) {
      this.recover(error);
    }
  }

  webSocketClose(ws, code, reason, wasClean) {
    try {
      this.core.webSocketClose(ws, code, reason, wasClean);
    } catch (error) {
      this.recover(error);
    }
  }

  webSocketError(ws, error) {
    try {
      this.core.webSocketError(ws, error);
    } catch (thrown) {
      this.recover(thrown);
    }
  }

  // A Rust panic traps the wasm (WebAssembly.RuntimeError) and may leave
  // this object's state half-changed: start a fresh one, which rebuilds its
  // socket index from the sockets' attachments, as after hibernation. The
  // error is thrown on either way.
  recover(error) {
    if (error instanceof WebAssembly.RuntimeError) {
      console.error("wasm trapped; the object's state is rebuilt", error);
      this.core = new imports.RealtimeObject(this.ctx, this.env);
    }
    throw error;
  }
}
