//! Every raw crossing between the runtime's JavaScript and our Rust, but
//! the exports themselves (`runtime::entry`): the `extern` bindings to
//! runtime objects that `worker`/`web-sys` do not offer in the form the hot
//! path needs, and the small wrappers over them.
//!
//! Why by hand (bench/README.md has the profiles): an `async` export or a
//! Rust future awaiting a JS Promise runs through the wasm-bindgen futures
//! executor, which costs a Promise, closures and a microtask per wake-up and
//! was on the stack of more than half of a publish's samples. Here the
//! entry points are plain functions that return the runtime's own Promises,
//! chained with continuations made once per isolate (`then` with a function
//! bound to its per-request argument), so a publish creates no Rust closure
//! and no future.

mod bindings;
pub mod env;
pub mod fetch;
pub mod metrics;
pub mod promise;
pub mod response;
pub mod socket;
pub mod storage;

pub use bindings::{ExecutionContext, Namespace, ObjectStub, Thenable};
