//! The `extern` declarations of the runtime's objects and functions.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::js_sys;

#[wasm_bindgen]
extern "C" {
    /// The runtime's WebSocket, for `send` with a JS value that is already
    /// a string (web-sys only offers `send(&str)`, which converts each time).
    #[wasm_bindgen(js_name = WebSocket)]
    pub type RawWebSocket;

    #[wasm_bindgen(method, catch, js_name = send)]
    pub fn send(this: &RawWebSocket, data: &JsValue) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = serializeAttachment)]
    pub fn serialize_attachment(this: &RawWebSocket, value: &JsValue) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = deserializeAttachment)]
    pub fn deserialize_attachment(this: &RawWebSocket) -> Result<JsValue, JsValue>;

    /// A Durable Object namespace binding, as the runtime gives it.
    pub type Namespace;

    #[wasm_bindgen(method, catch, js_name = getByName)]
    pub fn get_by_name(this: &Namespace, name: &str) -> Result<ObjectStub, JsValue>;

    /// A stub of one object.
    pub type ObjectStub;

    /// `request` is a `Request` or a URL string.
    #[wasm_bindgen(method, catch)]
    pub fn fetch(this: &ObjectStub, request: &JsValue) -> Result<Thenable, JsValue>;

    /// The object's `deliver` RPC method (see `src/shim.js`): the
    /// envelope's JSON text, its options' JSON text (`undefined` on a plain
    /// publish), the user and when the worker received the request (for
    /// the `publish` log line).
    #[wasm_bindgen(method, catch)]
    pub fn deliver(
        this: &ObjectStub,
        envelope: &JsValue,
        options: &JsValue,
        user_id: &str,
        received_ms: f64,
    ) -> Result<Thenable, JsValue>;

    /// The object's `sockets` RPC method.
    #[wasm_bindgen(method, catch)]
    pub fn sockets(this: &ObjectStub, user_id: &str) -> Result<Thenable, JsValue>;

    /// The object's `disconnect` RPC method.
    #[wasm_bindgen(method, catch)]
    pub fn disconnect(this: &ObjectStub, request: &str) -> Result<Thenable, JsValue>;

    /// The worker's `ctx` (ExecutionContext).
    pub type ExecutionContext;

    #[wasm_bindgen(method, catch, js_name = waitUntil)]
    pub fn wait_until(this: &ExecutionContext, promise: &JsValue) -> Result<(), JsValue>;

    /// An Analytics Engine dataset binding.
    pub type RawDataset;

    #[wasm_bindgen(method, catch, js_name = writeDataPoint)]
    pub fn write_data_point(this: &RawDataset, point: &JsValue) -> Result<(), JsValue>;

    /// `ctx.storage.sql`.
    pub type RawSql;

    #[wasm_bindgen(method, catch, variadic)]
    pub fn exec(this: &RawSql, query: &str, binds: &js_sys::Array) -> Result<RawCursor, JsValue>;

    pub type RawCursor;

    #[wasm_bindgen(method, js_name = toArray)]
    pub fn to_array(this: &RawCursor) -> js_sys::Array;

    /// A Promise, or the runtime's RPC promise (a thenable, not a `Promise`).
    pub type Thenable;

    #[wasm_bindgen(method, js_name = then)]
    pub fn then2(this: &Thenable, on_ok: &JsValue, on_err: &JsValue) -> Thenable;

    /// `Promise.withResolvers()`: a Promise and its `resolve`, without a
    /// Rust executor closure.
    pub type Resolvers;

    #[wasm_bindgen(js_namespace = Promise, js_name = withResolvers)]
    pub fn with_resolvers() -> Resolvers;

    #[wasm_bindgen(method, getter)]
    pub fn promise(this: &Resolvers) -> JsValue;

    #[wasm_bindgen(method, getter)]
    pub fn resolve(this: &Resolvers) -> js_sys::Function;

    #[wasm_bindgen(js_name = setTimeout)]
    pub fn set_timeout(handler: &JsValue, ms: f64) -> JsValue;

    /// `new Response(body, init)` with a body that is already a JS string.
    #[wasm_bindgen(js_name = Response)]
    pub type NewResponse;

    #[wasm_bindgen(constructor, js_class = Response)]
    pub fn new(body: &JsValue, init: &JsValue) -> NewResponse;
}
