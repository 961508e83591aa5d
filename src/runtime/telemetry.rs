//! Writes what `domain::logs` and `domain::metrics` make: lines to
//! `console.log` (Workers Logs, `wrangler tail`, `make dev`'s output) and
//! data points to Analytics Engine. Nothing here decides what a line holds.

use std::cell::{Cell, RefCell};
use std::fmt::Display;

use wasm_bindgen::JsValue;
use worker::{js_sys, web_sys, Env};

use crate::domain::logs::{
    batch_step, BatchStep, ClosedBy, Event, Fold, Level, LogConfig, Logs, PublishFacts,
    BATCH_WAIT_MS,
};
use crate::domain::metrics::{self, DataPoint};
use crate::runtime::js::metrics::Dataset;
use crate::runtime::js::promise::{after, Continuation};
use crate::runtime::js::ExecutionContext;

/// The optional Analytics Engine binding (wrangler.toml).
pub const METRICS_BINDING: &str = "HOPEFLOW_METRICS";

/// The isolate's lines and points, as the settings chose them.
pub struct Telemetry {
    logs: Logs,
    /// `None` without the binding: a point then costs nothing.
    dataset: Option<Dataset>,
    metrics_log: bool,
}

thread_local! {
    /// The isolate's folds of lines a stranger can cause.
    static FOLD: RefCell<Fold> = RefCell::new(Fold::default());
    /// `publish` lines waiting to be written together (JS strings).
    static BATCH: js_sys::Array = js_sys::Array::new();
    static WRITE_BATCH: Continuation = Continuation::new(|_| {
        write_batch();
        JsValue::UNDEFINED
    });
    /// A write of the batch is scheduled.
    static SCHEDULED: Cell<bool> = const { Cell::new(false) };
}

/// A `publish` line (made by the user's object, `deliver_answer`), written
/// with the isolate's other publish lines: when [`BATCH_LINES`] wait, or
/// [`BATCH_WAIT_MS`] after the first, by a timer `ctx` waits for. Within
/// an invocation a line costs a few µs; the invocation's first line about
/// 100 (see `domain::logs::batch_step`).
///
/// [`BATCH_LINES`]: crate::domain::logs::BATCH_LINES
pub fn write_publish_line(line: JsValue, ctx: &ExecutionContext) {
    let buffered = BATCH.with(|batch| batch.push(&line)) as usize;
    match batch_step(buffered) {
        BatchStep::WriteNow => write_batch(),
        BatchStep::WriteLater if !SCHEDULED.with(Cell::get) => {
            let scheduled = WRITE_BATCH.with(|write| after(BATCH_WAIT_MS, write, ctx));
            match scheduled {
                Ok(()) => SCHEDULED.with(|s| s.set(true)),
                // No timer: nothing may wait, so nothing does.
                Err(_) => write_batch(),
            }
        }
        BatchStep::WriteLater | BatchStep::Wait => {}
    }
}

/// Writes the waiting `publish` lines, one `console.log` each.
fn write_batch() {
    SCHEDULED.with(|s| s.set(false));
    let lines = BATCH.with(|batch| {
        let lines = batch.slice(0, batch.length());
        batch.set_length(0);
        lines
    });
    for line in lines.iter() {
        web_sys::console::log_1(&line);
    }
}

impl Telemetry {
    pub fn new(config: &LogConfig, env: &Env) -> Telemetry {
        Telemetry {
            logs: Logs::new(config),
            dataset: Dataset::from_env(env, METRICS_BINDING),
            metrics_log: config.metrics_log,
        }
    }

    pub fn enabled(&self, level: Level) -> bool {
        self.logs.enabled(level)
    }

    /// Writes the event's line, if its level is on.
    pub fn log(&self, event: &Event) {
        if let Some(line) = self.logs.line(event) {
            write_line(&line);
        }
    }

    /// An event a stranger can cause, at `level`: `Some(count)` when its
    /// line goes out now (at most one per second per event and code in
    /// this isolate, standing for `count` of them); `None` when its level
    /// is off or it is folded, and the caller builds nothing.
    pub fn admit(&self, name: &'static str, code: &str, level: Level, now_ms: f64) -> Option<u64> {
        if !self.enabled(level) {
            return None;
        }
        FOLD.with(|fold| fold.borrow_mut().admit(name, code, now_ms))
    }

    /// An answered publish: writes its data point; its line, for the
    /// worker to write in the request's own invocation
    /// (`js::promise::deliver_answer`).
    pub fn published(&self, facts: &PublishFacts) -> Option<String> {
        self.point(facts.user_id, |user| metrics::publish(user, facts));
        self.logs.line(&Event::Publish(facts.clone()))
    }

    pub fn socket_opened(&self, user_id: &str, socket_id: &str, sockets: usize) {
        self.log(&Event::SocketOpen {
            user_id,
            socket_id,
            sockets,
        });
        self.point(user_id, |user| metrics::socket_open(user, sockets));
    }

    pub fn socket_closed(
        &self,
        user_id: &str,
        socket_id: &str,
        code: u16,
        by: ClosedBy,
        duration_ms: u64,
    ) {
        self.log(&Event::SocketClose {
            user_id,
            socket_id,
            code,
            by,
            duration_ms,
        });
        self.point(user_id, |user| {
            metrics::socket_close(user, code, by, duration_ms)
        });
    }

    /// Whether a publish's facts are wanted at all (a line or a point).
    pub fn wants_publishes(&self) -> bool {
        self.enabled(Level::Info) || self.dataset.is_some() || self.metrics_log
    }

    fn point(&self, user_id: &str, make: impl FnOnce(String) -> DataPoint) {
        if self.dataset.is_none() && !self.metrics_log {
            return;
        }
        let point = make(metrics::user_key(self.logs.user(user_id).as_deref()));
        if let Some(dataset) = &self.dataset {
            if let Err(err) = dataset.write(&point) {
                error("metrics.write", &format_args!("{err:?}"));
            }
        }
        if self.metrics_log {
            write_line(&point.log_line());
        }
    }
}

/// A runtime failure: an `error` line, whatever the settings (there may be
/// none: the settings' own failure is one).
pub fn error(at: &str, message: &dyn Display) {
    let message = message.to_string();
    if let Some(line) = Logs::default().line(&Event::Error {
        at,
        message: &message,
    }) {
        write_line(&line);
    }
}

fn write_line(line: &str) {
    web_sys::console::log_1(&JsValue::from_str(line));
}
