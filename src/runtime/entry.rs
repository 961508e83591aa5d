//! The exports `src/shim.js` calls: the worker's `fetch`, the start-up
//! calls (warm-up, the console's assets), and the Durable Object's methods,
//! each forwarded to the worker's routes or to the object. Nothing else
//! lives here; the raw bindings are in `js`.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, web_sys, worker_sys, Env};

use super::http::Incoming;
use super::js::socket::IncomingFrame;
use super::js::{promise, response};
use super::object::HopeFlowRealtime;
use super::routes;

/// The worker's `fetch` entry (exported as `fetch`, called by `src/shim.js`):
/// a `Response`, or a Promise of one.
#[wasm_bindgen(js_name = fetch)]
pub fn worker_fetch(request: web_sys::Request, env: Env, ctx: JsValue) -> JsValue {
    console_error_panic_hook::set_once();
    routes::handle(Incoming::new(request, ctx), &env)
}

/// How many times [`warm_up`] runs the hot path: enough for V8 to optimize
/// it (bench/README.md, "Warm-up").
const WARM_UP_ROUNDS: usize = 2_000;

/// Called once by `src/shim.js` as the module is instantiated: compiles and
/// optimizes the publish path before the first request (see `warmup`).
#[wasm_bindgen(js_name = warmUp)]
pub fn warm_up() -> usize {
    // V8 calls an import through a generic wrapper until it has been
    // called often enough to get a specialized one: the crossings every
    // message makes are called that often here.
    let map = js_sys::Map::new();
    let key = JsValue::from_str("warm-up");
    let mut crossed = 0;
    // The request's crossings too, on a request object that is never sent
    // (the global scope may build one, not a response).
    let request: Option<web_sys::Request> =
        web_sys::Request::new_with_str("http://warm-up.invalid/publish").ok();
    let body = js_sys::ArrayBuffer::new(64);
    for _ in 0..CROSSING_WARM_UP {
        map.set(&key, &key);
        crossed += map.get(&key).as_string().map_or(0, |s| s.len());
        crossed += js_sys::Date::now() as usize & 1;
        if let Some(request) = &request {
            // `Clone::clone`: the handle, not the JS `Request.clone()`.
            let incoming = Incoming::new(Clone::clone(request), JsValue::UNDEFINED);
            crossed += incoming.path().len();
            crossed += matches!(incoming.method(), worker::Method::Post) as usize;
            let headers = incoming.headers();
            crossed += headers
                .get("Authorization")
                .ok()
                .flatten()
                .map_or(0, |h| h.len());
        }
        crossed += js_sys::Uint8Array::new(&body).to_vec().len();
        let (_, settle) = promise::pending_answer();
        // Both forms of a `deliver` answer: text, and text with its line.
        settle.answer("{}", Some(String::new()));
        crossed += promise::deliver_answer("{}", None).is_string() as usize;
    }
    crate::domain::warmup::exercise(WARM_UP_ROUNDS) + (crossed & 1)
}

/// Called once by `src/shim.js` with the console's page and script.
#[wasm_bindgen(js_name = setConsoleAssets)]
pub fn set_console_assets(page: JsValue, client: JsValue) {
    response::keep_console_assets(page, client);
}

/// Calls of each hot import in [`warm_up`].
const CROSSING_WARM_UP: usize = 2_000;

/// The Durable Object's exports, wrapped by the `HopeFlowRealtime` class of
/// `src/shim.js`, which extends the runtime's `DurableObject` so that it
/// can be called over RPC.
#[wasm_bindgen(js_name = RealtimeObject)]
pub struct RealtimeObject(HopeFlowRealtime);

#[wasm_bindgen(js_class = RealtimeObject)]
impl RealtimeObject {
    #[wasm_bindgen(constructor)]
    pub fn construct(state: worker_sys::DurableObjectState, env: Env) -> RealtimeObject {
        RealtimeObject(HopeFlowRealtime::new(state, env))
    }

    /// The object's HTTP route (`/connect`); it does not wait.
    #[wasm_bindgen(js_name = fetch)]
    pub fn on_fetch(&self, request: web_sys::Request) -> web_sys::Response {
        self.0.fetch(request)
    }

    /// RPC from the worker: the envelope's JSON text (and, for detail or an
    /// `Idempotency-Key`, the options' JSON text) in, a Promise of the
    /// answer's JSON text out.
    #[wasm_bindgen(js_name = deliver)]
    pub fn on_deliver(
        &self,
        envelope: JsValue,
        options: JsValue,
        user_id: JsValue,
        received_ms: JsValue,
    ) -> JsValue {
        self.0.deliver(envelope, options, user_id, received_ms)
    }

    /// RPC from the worker: the user's sockets as JSON text.
    #[wasm_bindgen(js_name = sockets)]
    pub fn on_sockets(&self, user_id: String) -> String {
        self.0.sockets(user_id)
    }

    /// RPC from the worker: closes sockets; `{"closed": N}` as JSON text.
    #[wasm_bindgen(js_name = disconnect)]
    pub fn on_disconnect(&self, request: String) -> JsValue {
        self.0.disconnect(request)
    }

    #[wasm_bindgen(js_name = alarm)]
    pub fn on_alarm(&self) {
        self.0.alarm()
    }

    #[wasm_bindgen(js_name = webSocketMessage)]
    pub fn on_websocket_message(&self, ws: web_sys::WebSocket, message: JsValue) {
        let message = match message.as_string() {
            Some(text) => IncomingFrame::Text(text),
            // Refused unread, so only its size is needed.
            None => IncomingFrame::Binary {
                len: message
                    .dyn_ref::<js_sys::ArrayBuffer>()
                    .map_or(0, |buffer| buffer.byte_length() as usize),
            },
        };
        self.0.websocket_message(&ws.into(), message);
    }

    #[wasm_bindgen(js_name = webSocketClose)]
    pub fn on_websocket_close(
        &self,
        ws: web_sys::WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) {
        self.0.websocket_close(&ws.into(), code, reason);
    }

    #[wasm_bindgen(js_name = webSocketError)]
    pub fn on_websocket_error(&self, ws: web_sys::WebSocket, error: JsValue) {
        self.0
            .websocket_error(&ws.into(), worker::Error::from(error));
    }
}
