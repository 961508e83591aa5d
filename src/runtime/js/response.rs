//! Responses whose body is already a JS string: the 200 JSON answer of a
//! publish, and the debug console's assets handed over by the entry.

use std::cell::OnceCell;

use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, web_sys};

use super::bindings::NewResponse;
use crate::domain::protocol::{ALLOW_ORIGIN, JSON_CONTENT_TYPE};

thread_local! {
    /// The debug console's page and script (JS strings), handed over by
    /// `src/shim.js` as the module loads; kept out of the wasm.
    static CONSOLE_ASSETS: OnceCell<(JsValue, JsValue)> = const { OnceCell::new() };
}

/// Keeps the console's page and script (`src/shim.js` hands them over once).
pub fn keep_console_assets(page: JsValue, client: JsValue) {
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

thread_local! {
    /// The init of every 200 JSON answer, made once: `new Response` copies it.
    static JSON_200: JsValue = {
        let headers = js_sys::Object::new();
        let set = |target: &js_sys::Object, key: &str, value: &JsValue| {
            let _ = js_sys::Reflect::set(target, &JsValue::from_str(key), value);
        };
        set(&headers, "Content-Type", &JsValue::from_str(JSON_CONTENT_TYPE));
        set(&headers, ALLOW_ORIGIN.0, &JsValue::from_str(ALLOW_ORIGIN.1));
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
