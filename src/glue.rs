//! Every raw crossing between the runtime's JavaScript and our Rust: the
//! hand-made exports `src/shim.js` forwards to, and the `extern` bindings to
//! runtime objects that `worker`/`web-sys` do not offer in the form the hot
//! path needs.
//!
//! Why by hand (bench/README.md has the profiles): an `async` export or a
//! Rust future awaiting a JS Promise runs through the wasm-bindgen futures
//! executor, which costs a Promise, closures and a microtask per wake-up and
//! was on the stack of more than half of a publish's samples. Here the
//! entry points are plain functions that return the runtime's own Promises,
//! chained with continuations made once per isolate (`then` with a function
//! bound to its per-request argument), so a publish creates no Rust closure
//! and no future.

use std::cell::OnceCell;
use std::rc::{Rc, Weak};

use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, web_sys, worker_sys, Env};

use crate::durable_object::HopeFlowRealtime;
use crate::session::SocketAttachment;

/// The worker's `fetch` entry (exported as `fetch`, called by `src/shim.js`):
/// a `Response`, or a Promise of one.
#[wasm_bindgen(js_name = fetch)]
pub fn worker_fetch(request: web_sys::Request, env: Env, _ctx: JsValue) -> JsValue {
    console_error_panic_hook::set_once();
    crate::routes::handle(crate::http::Incoming::new(request), &env)
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
            let incoming = crate::http::Incoming::new(Clone::clone(request));
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
        let (_, settle) = pending_answer();
        settle.answer("{}");
    }
    crate::warmup::exercise(WARM_UP_ROUNDS) + (crossed & 1)
}

thread_local! {
    /// The debug console's page and script (JS strings), handed over by
    /// `src/shim.js` as the module loads; kept out of the wasm.
    static CONSOLE_ASSETS: OnceCell<(JsValue, JsValue)> = const { OnceCell::new() };
}

/// Called once by `src/shim.js` with the console's page and script.
#[wasm_bindgen(js_name = setConsoleAssets)]
pub fn set_console_assets(page: JsValue, client: JsValue) {
    CONSOLE_ASSETS.with(|cell| {
        let _ = cell.set((page, client));
    });
}

/// A response whose body is the console's page (`page`) or its script,
/// with `headers`; `None` before `src/shim.js` handed them over.
pub fn console_asset(page: bool, headers: &web_sys::Headers) -> Option<web_sys::Response> {
    let body = CONSOLE_ASSETS.with(|cell| {
        cell.get()
            .map(|(p, c)| if page { p.clone() } else { c.clone() })
    })?;
    let init = js_sys::Object::new();
    js_sys::Reflect::set(&init, &JsValue::from_str("headers"), headers).ok()?;
    Some(NewResponse::new(&body, &init).unchecked_into())
}

/// Calls of each hot import in [`warm_up`].
const CROSSING_WARM_UP: usize = 2_000;

/// The Durable Object's exports, wrapped by the `HopeFlowRealtime` class of
/// `src/shim.js`, which extends the runtime's `DurableObject` so that it
/// can be called over RPC.
#[wasm_bindgen(js_class = RealtimeObject)]
impl HopeFlowRealtime {
    #[wasm_bindgen(constructor)]
    pub fn construct(state: worker_sys::DurableObjectState, env: Env) -> HopeFlowRealtime {
        HopeFlowRealtime::new(state, env)
    }

    /// The object's HTTP route (`/connect`); it does not wait.
    #[wasm_bindgen(js_name = fetch)]
    pub fn on_fetch(&self, request: web_sys::Request) -> web_sys::Response {
        self.fetch(request)
    }

    /// RPC from the worker: the envelope's JSON text (and, for detail or an
    /// `Idempotency-Key`, the options' JSON text) in, a Promise of the
    /// answer's JSON text out.
    #[wasm_bindgen(js_name = deliver)]
    pub fn on_deliver(&self, envelope: JsValue, options: JsValue) -> JsValue {
        self.deliver(envelope, options)
    }

    /// RPC from the worker: the user's sockets as JSON text.
    #[wasm_bindgen(js_name = sockets)]
    pub fn on_sockets(&self, user_id: String) -> String {
        self.sockets(user_id)
    }

    /// RPC from the worker: closes sockets; `{"closed": N}` as JSON text.
    #[wasm_bindgen(js_name = disconnect)]
    pub fn on_disconnect(&self, request: String) -> String {
        self.disconnect(request)
    }

    #[wasm_bindgen(js_name = alarm)]
    pub fn on_alarm(&self) {
        self.alarm()
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
        self.websocket_message(&ws.into(), message);
    }

    #[wasm_bindgen(js_name = webSocketClose)]
    pub fn on_websocket_close(
        &self,
        ws: web_sys::WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) {
        self.websocket_close(&ws.into(), code, reason);
    }

    #[wasm_bindgen(js_name = webSocketError)]
    pub fn on_websocket_error(&self, ws: web_sys::WebSocket, error: JsValue) {
        self.websocket_error(&ws.into(), worker::Error::from(error));
    }
}

/// A frame as the runtime delivered it.
pub enum IncomingFrame {
    Text(String),
    Binary { len: usize },
}

#[wasm_bindgen]
extern "C" {
    /// The runtime's WebSocket, for `send` with a JS value that is already
    /// a string (web-sys only offers `send(&str)`, which converts each time).
    #[wasm_bindgen(js_name = WebSocket)]
    pub type RawWebSocket;

    #[wasm_bindgen(method, catch, js_name = send)]
    pub fn send(this: &RawWebSocket, data: &JsValue) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = serializeAttachment)]
    fn serialize_attachment(this: &RawWebSocket, value: &JsValue) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = deserializeAttachment)]
    fn deserialize_attachment(this: &RawWebSocket) -> Result<JsValue, JsValue>;

    /// A Durable Object namespace binding, as the runtime gives it.
    pub type Namespace;

    #[wasm_bindgen(method, catch, js_name = getByName)]
    pub fn get_by_name(this: &Namespace, name: &str) -> Result<ObjectStub, JsValue>;

    /// A stub of one object.
    pub type ObjectStub;

    /// `request` is a `Request` or a URL string.
    #[wasm_bindgen(method, catch)]
    pub fn fetch(this: &ObjectStub, request: &JsValue) -> Result<Thenable, JsValue>;

    /// The object's `deliver` RPC method (see `src/shim.js`).
    #[wasm_bindgen(method, catch)]
    pub fn deliver(this: &ObjectStub, envelope: &JsValue) -> Result<Thenable, JsValue>;

    /// `deliver` with its options (detail, idempotency key) as JSON text.
    #[wasm_bindgen(method, catch, js_name = deliver)]
    pub fn deliver_with(
        this: &ObjectStub,
        envelope: &JsValue,
        options: &str,
    ) -> Result<Thenable, JsValue>;

    /// The object's `sockets` RPC method.
    #[wasm_bindgen(method, catch)]
    pub fn sockets(this: &ObjectStub, user_id: &str) -> Result<Thenable, JsValue>;

    /// The object's `disconnect` RPC method.
    #[wasm_bindgen(method, catch)]
    pub fn disconnect(this: &ObjectStub, request: &str) -> Result<Thenable, JsValue>;

    /// `ctx.storage.sql`.
    type RawSql;

    #[wasm_bindgen(method, catch, variadic)]
    fn exec(this: &RawSql, query: &str, binds: &js_sys::Array) -> Result<RawCursor, JsValue>;

    type RawCursor;

    #[wasm_bindgen(method, js_name = toArray)]
    fn to_array(this: &RawCursor) -> js_sys::Array;

    /// A Promise, or the runtime's RPC promise (a thenable, not a `Promise`).
    pub type Thenable;

    #[wasm_bindgen(method, js_name = then)]
    fn then2(this: &Thenable, on_ok: &JsValue, on_err: &JsValue) -> Thenable;

    /// `Promise.withResolvers()`: a Promise and its `resolve`, without a
    /// Rust executor closure.
    type Resolvers;

    #[wasm_bindgen(js_namespace = Promise, js_name = withResolvers)]
    fn with_resolvers() -> Resolvers;

    #[wasm_bindgen(method, getter)]
    fn promise(this: &Resolvers) -> JsValue;

    #[wasm_bindgen(method, getter)]
    fn resolve(this: &Resolvers) -> js_sys::Function;

    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &JsValue, ms: f64) -> JsValue;

    /// `new Response(body, init)` with a body that is already a JS string.
    #[wasm_bindgen(js_name = Response)]
    type NewResponse;

    #[wasm_bindgen(constructor, js_class = Response)]
    fn new(body: &JsValue, init: &JsValue) -> NewResponse;
}

impl Thenable {
    /// `this.then(on_ok, on_err)`.
    pub fn then(&self, on_ok: &Continuation, on_err: &Continuation) -> JsValue {
        self.then2(on_ok.function(), on_err.function()).into()
    }

    /// `this.then(on_ok.bind(null, arg), on_err)`.
    pub fn then_with(&self, on_ok: &Continuation, arg: &JsValue, on_err: &Continuation) -> JsValue {
        self.then2(&on_ok.bind(arg), on_err.function()).into()
    }

    /// `this.then(undefined, on_err)`: a failure becomes an answer.
    pub fn or_else(&self, on_err: &Continuation) -> JsValue {
        self.then2(&JsValue::UNDEFINED, on_err.function()).into()
    }
}

/// A Rust function the runtime calls when a Promise settles. Made once per
/// isolate (a `thread_local`), never per request.
pub struct Continuation(JsValue);

impl Continuation {
    /// A continuation of one argument: the settled value.
    pub fn new(f: fn(JsValue) -> JsValue) -> Continuation {
        let closure = Closure::<dyn Fn(JsValue) -> JsValue>::new(f);
        Continuation(closure.into_js_value())
    }

    /// A continuation of two: the argument it is bound to, then the value.
    pub fn new2(f: fn(JsValue, JsValue) -> JsValue) -> Continuation {
        let closure = Closure::<dyn Fn(JsValue, JsValue) -> JsValue>::new(f);
        Continuation(closure.into_js_value())
    }

    fn function(&self) -> &JsValue {
        &self.0
    }

    /// `f.bind(null, arg)`: a native bound function, no Rust closure.
    fn bind(&self, arg: &JsValue) -> JsValue {
        self.0
            .unchecked_ref::<js_sys::Function>()
            .bind1(&JsValue::NULL, arg)
            .into()
    }
}

/// The object's SQLite storage (`ctx.storage.sql`), read without the
/// `worker` crate's serde bridge: its per-row-type deserializers were most
/// of the 17 KB (gzip) history added to the wasm.
pub struct Sql(RawSql);

/// A value bound to a `?` of a statement.
#[derive(Clone)]
pub enum Bind<'a> {
    Text(&'a str),
    /// Text already in a JS string, bound without another copy.
    JsText(&'a JsValue),
    Number(f64),
}

impl Sql {
    pub fn of(state: &worker_sys::DurableObjectState) -> Option<Sql> {
        let storage = state.storage().ok()?;
        let sql: JsValue = storage.sql().into();
        Some(Sql(sql.unchecked_into()))
    }

    /// Runs one statement; its rows, each an object of its columns.
    pub fn exec(&self, query: &str, binds: &[Bind]) -> Result<Vec<SqlRow>, String> {
        let args = js_sys::Array::new();
        for bind in binds {
            args.push(&match bind {
                Bind::Text(text) => JsValue::from_str(text),
                Bind::JsText(text) => (*text).clone(),
                Bind::Number(number) => JsValue::from_f64(*number),
            });
        }
        let cursor = self
            .0
            .exec(query, &args)
            .map_err(|err| format!("{err:?}"))?;
        Ok(cursor.to_array().iter().map(SqlRow).collect())
    }
}

/// One row of a query.
pub struct SqlRow(JsValue);

impl SqlRow {
    pub fn text(&self, column: &str) -> Option<String> {
        self.column(column).as_string()
    }

    pub fn number(&self, column: &str) -> Option<f64> {
        self.column(column).as_f64()
    }

    fn column(&self, column: &str) -> JsValue {
        js_sys::Reflect::get(&self.0, &JsValue::from_str(column)).unwrap_or(JsValue::UNDEFINED)
    }
}

/// Sets the object's alarm for `at_ms` (replacing any). The runtime keeps
/// the write ordered with the object's output, so it is not awaited.
pub fn set_alarm(storage: &worker_sys::DurableObjectStorage, at_ms: f64) {
    let at = js_sys::Date::new(&JsValue::from_f64(at_ms));
    if let Err(err) = storage.set_alarm(at, js_sys::Object::new()) {
        worker::console_error!("setting the alarm failed: {err:?}");
    }
}

/// The namespace binding `name` of `env`.
pub fn namespace(env: &Env, name: &str) -> Option<Namespace> {
    js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name))
        .ok()
        .filter(|binding| binding.is_object())
        .map(JsCast::unchecked_into)
}

/// `arrayBuffer()` of a request, as a thenable.
pub fn read_body(request: &web_sys::Request) -> Result<Thenable, JsValue> {
    request.array_buffer().map(JsCast::unchecked_into)
}

/// Sends a JS string; fails when the socket is closing.
pub fn send_value(ws: &worker::WebSocket, frame: &JsValue) -> Result<(), JsValue> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<RawWebSocket>().send(frame)
}

/// Stores the socket's attachment, as its JSON text
/// (`SocketAttachment::to_json`).
pub fn store_attachment(ws: &worker::WebSocket, json: &str) -> Result<(), JsValue> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<RawWebSocket>()
        .serialize_attachment(&JsValue::from_str(json))
}

/// The socket's attachment (its JSON text); `None` when it has none.
/// (Attachments stored as objects by earlier builds cannot reach this
/// build: a deploy disconnects every socket of the class.)
pub fn load_attachment(ws: &worker::WebSocket) -> Result<Option<SocketAttachment>, String> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    let stored = raw
        .unchecked_ref::<RawWebSocket>()
        .deserialize_attachment()
        .map_err(|err| format!("{err:?}"))?;
    match stored.as_string() {
        Some(text) => SocketAttachment::from_json(&text)
            .map(Some)
            .map_err(|err| err.to_string()),
        None if stored.is_null() || stored.is_undefined() => Ok(None),
        None => Err("the attachment is not JSON text".into()),
    }
}

/// The socket's JS object, as a map key.
pub fn js_key(ws: &worker::WebSocket) -> &JsValue {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.as_ref()
}

thread_local! {
    /// The init of every 200 JSON answer, made once: `new Response` copies it.
    static JSON_200: JsValue = {
        let headers = js_sys::Object::new();
        let set = |target: &js_sys::Object, key: &str, value: &JsValue| {
            let _ = js_sys::Reflect::set(target, &JsValue::from_str(key), value);
        };
        set(&headers, "Content-Type", &JsValue::from_str(crate::http::JSON_CONTENT_TYPE));
        set(&headers, "Access-Control-Allow-Origin", &JsValue::from_str("*"));
        let init = js_sys::Object::new();
        set(&init, "status", &JsValue::from_f64(200.0));
        set(&init, "headers", &headers);
        init.into()
    };
}

/// A 200 JSON response whose body is already a JS string.
pub fn json_200(body: &JsValue) -> web_sys::Response {
    JSON_200.with(|init| NewResponse::new(body, init).unchecked_into())
}

/// The `deliver` Promise of a publish waiting for acks: settling it
/// answers the publish.
pub struct Settle {
    resolve: js_sys::Function,
}

impl Settle {
    /// Resolves the `deliver` Promise with `answer`.
    pub fn answer(self, answer: &str) {
        let _ = self
            .resolve
            .call1(&JsValue::NULL, &JsValue::from_str(answer));
    }
}

/// A Promise for a publish's answer, and what settles it.
pub fn pending_answer() -> (JsValue, Settle) {
    let resolvers = with_resolvers();
    let settle = Settle {
        resolve: resolvers.resolve(),
    };
    (resolvers.promise(), settle)
}

/// One runtime timer of an object, set again and again (see
/// `acks::DeadlineQueue`).
pub struct Timer {
    handler: Rc<OnceCell<JsValue>>,
}

impl Timer {
    /// `on_fire` returns the delay to set the timer again for, if any.
    pub fn new(on_fire: impl Fn() -> Option<f64> + 'static) -> Timer {
        let handler = Rc::new(OnceCell::new());
        // Weak: the timer owns its handler; a strong reference back would
        // keep both alive after the object is gone.
        let again: Weak<OnceCell<JsValue>> = Rc::downgrade(&handler);
        let closure = Closure::<dyn Fn()>::new(move || {
            let Some(delay_ms) = on_fire() else {
                return;
            };
            if let Some(handler) = again.upgrade() {
                if let Some(function) = handler.get() {
                    set_timeout(function, delay_ms);
                }
            }
        });
        let _ = handler.set(closure.into_js_value());
        Timer { handler }
    }

    pub fn set(&self, delay_ms: f64) {
        if let Some(function) = self.handler.get() {
            set_timeout(function, delay_ms);
        }
    }
}
