//! Promises without a Rust executor: continuations made once per isolate,
//! the settling of a publish's answer, and the object's one runtime timer.

use std::cell::OnceCell;
use std::rc::{Rc, Weak};

use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys;

use super::bindings::{set_timeout, with_resolvers, ExecutionContext, Thenable};

impl Thenable {
    /// `this.then(on_ok, on_err)`.
    pub fn then(&self, on_ok: &Continuation, on_err: &Continuation) -> JsValue {
        self.then2(on_ok.function(), on_err.function()).into()
    }

    /// `this.then(on_ok.bind(null, arg), on_err)`.
    pub fn then_with(&self, on_ok: &Continuation, arg: &JsValue, on_err: &Continuation) -> JsValue {
        self.then2(&on_ok.bind(arg), on_err.function()).into()
    }

    /// `this.then(on_ok.bind(null, a, b), on_err)`.
    pub fn then_with2(
        &self,
        on_ok: &Continuation,
        a: &JsValue,
        b: &JsValue,
        on_err: &Continuation,
    ) -> JsValue {
        self.then2(&on_ok.bind2(a, b), on_err.function()).into()
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

    /// A continuation of three: the two arguments it is bound to, then the
    /// value.
    pub fn new3(f: fn(JsValue, JsValue, JsValue) -> JsValue) -> Continuation {
        let closure = Closure::<dyn Fn(JsValue, JsValue, JsValue) -> JsValue>::new(f);
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

    /// `f.bind(null, a, b)`.
    fn bind2(&self, a: &JsValue, b: &JsValue) -> JsValue {
        self.0
            .unchecked_ref::<js_sys::Function>()
            .bind2(&JsValue::NULL, a, b)
            .into()
    }
}

/// The `deliver` Promise of a publish waiting for acks: settling it
/// answers the publish.
pub struct Settle {
    resolve: js_sys::Function,
}

impl Settle {
    /// Resolves the `deliver` Promise with `answer` and its log line (see
    /// [`deliver_answer`]).
    pub fn answer(self, answer: &str, line: Option<String>) {
        let _ = self
            .resolve
            .call1(&JsValue::NULL, &deliver_answer(answer, line));
    }
}

/// What `deliver` answers the worker: the answer's JSON text, or, when the
/// publish has a log line, `[answer, line]`. The worker writes the line in
/// the request's own invocation: written here, in the ack's event, a line
/// cost the runtime about 100 µs per publish (bench/README.md, "What
/// logging costs"), and Workers Logs would file it under the ack.
pub fn deliver_answer(answer: &str, line: Option<String>) -> JsValue {
    let answer = JsValue::from_str(answer);
    match line {
        None => answer,
        Some(line) => js_sys::Array::of2(&answer, &JsValue::from_str(&line)).into(),
    }
}

/// The worker's side of [`deliver_answer`]: the answer's JSON text, and
/// the line, if there is one (JS strings both: no copy into wasm).
pub fn split_answer(answer: JsValue) -> (JsValue, Option<JsValue>) {
    if !js_sys::Array::is_array(&answer) {
        return (answer, None);
    }
    let pair: js_sys::Array = answer.unchecked_into();
    (pair.get(0), Some(pair.get(1)))
}

/// Runs `then` once `ms` have passed, keeping the request's invocation
/// open until it has (`ctx.waitUntil`): a worker's timer dies with its
/// request otherwise. `then` is called with no argument.
pub fn after(ms: f64, then: &Continuation, ctx: &ExecutionContext) -> Result<(), JsValue> {
    let resolvers = with_resolvers();
    // `then`, then resolving the waited-for Promise.
    let done = RUN_THEN_RESOLVE.with(|f| f.bind2(then.function(), &resolvers.resolve()));
    set_timeout(&done, ms);
    ctx.wait_until(&resolvers.promise())
}

thread_local! {
    static RUN_THEN_RESOLVE: Continuation = Continuation::new2(run_then_resolve);
}

fn run_then_resolve(then: JsValue, resolve: JsValue) -> JsValue {
    let call = |f: &JsValue| {
        if let Some(f) = f.dyn_ref::<js_sys::Function>() {
            let _ = f.call0(&JsValue::NULL);
        }
    };
    call(&then);
    call(&resolve);
    JsValue::UNDEFINED
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
