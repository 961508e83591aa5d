//! The worker's bindings and request bodies.

use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, web_sys, Env};

use super::bindings::{Namespace, Thenable};

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
