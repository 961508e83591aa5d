//! The object's one alarm, shared by every part that has a timed duty (the
//! keyed answers, the history, the sockets' tokens): each asks it to wake
//! the object by some time, and it sets what [`crate::domain::schedule`] decides.

use std::cell::Cell;

use worker::worker_sys::DurableObjectState;
use worker::{console_error, js_sys, State};

use super::storage;
use crate::domain::history::Retention;
use crate::domain::schedule::{self, AlarmState, WakeRequest};
use crate::domain::session::Lifetime;
use crate::runtime::js::socket::load_attachment;
use crate::runtime::js::storage::{another_handle, set_alarm};

pub struct Alarm {
    state: DurableObjectState,
    known: Cell<AlarmState>,
    lifetime: Lifetime,
    retention: Retention,
}

impl Alarm {
    pub fn new(state: &DurableObjectState, lifetime: Lifetime, retention: Retention) -> Alarm {
        Alarm {
            state: another_handle(state),
            known: Cell::new(AlarmState::Unknown),
            lifetime,
            retention,
        }
    }

    /// Makes sure the object wakes by `at_ms`.
    pub fn wake_by(&self, at_ms: f64) {
        match self.known.get().request(at_ms) {
            WakeRequest::Keep => {}
            WakeRequest::Set(at) => self.set(Some(at)),
            WakeRequest::Recompute => {
                let now_ms = js_sys::Date::now();
                let next = self.next_wake(now_ms).map_or(at_ms, |next| next.min(at_ms));
                self.set(Some(next));
            }
        }
    }

    /// Sets the alarm for `at_ms` (replacing any), or records that none is
    /// needed; the runtime clears a fired alarm itself.
    pub fn set(&self, at_ms: Option<f64>) {
        if let Some(at) = at_ms {
            match self.state.storage() {
                Ok(storage) => set_alarm(&storage, at),
                Err(err) => console_error!("no storage for the alarm: {err:?}"),
            }
        }
        self.known.set(AlarmState::after_setting(at_ms));
    }

    /// Every duty's next time, read from durable state alone (the stored
    /// tables and the sockets' attachments): what an earlier instance may
    /// have set the alarm for.
    fn next_wake(&self, now_ms: f64) -> Option<f64> {
        let storage_ms = storage::next_cleanup(&self.state, self.retention, now_ms);
        let sockets: Vec<_> = State::from(another_handle(&self.state))
            .get_websockets()
            .iter()
            .filter_map(|ws| load_attachment(ws).ok().flatten())
            .collect();
        schedule::next_wake(self.lifetime, storage_ms, &sockets)
    }
}
