//! The Workers edge: translates between the runtime and [`crate::domain`],
//! deciding nothing of its own.
//!
//! * [`entry`]: the exports `src/shim.js` calls.
//! * [`routes`]: the worker: routing, authentication, handing upgrades and
//!   publishes to the user's object; the operator API, batches, the console.
//! * [`object`]: `HopeFlowRealtime`, one Durable Object per user, composed
//!   of its parts (socket index, publishes in flight, storage, alarm).
//! * [`settings`]: the isolate's settings, shared by the worker and the
//!   objects. [`http`]: the incoming request, JSON responses, CORS.
//! * [`telemetry`]: writes the structured log lines and the Analytics
//!   Engine data points.
//! * [`ids`]: the envelope and socket ids it makes.
//! * [`js`]: every raw crossing into JavaScript (bindings, Promise plumbing,
//!   SQL and the alarm, sockets, responses).

pub mod entry;
pub mod http;
pub mod ids;
pub mod js;
pub mod object;
pub mod routes;
pub mod settings;
pub mod telemetry;
