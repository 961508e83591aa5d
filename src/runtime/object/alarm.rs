//! The object's one alarm, shared by every part that has a timed duty (the
//! keyed answers, the history, the sockets' tokens): each asks it to wake
//! the object by some time, and it sets what [`crate::domain::schedule`] decides.

use std::cell::Cell;

use worker::worker_sys::DurableObjectState;
use worker::{js_sys, State};

use super::{outbox, storage};
use crate::domain::config::WebhookConfig;
use crate::domain::history::Retention;
use crate::domain::schedule::{self, AlarmState, WakeRequest};
use crate::domain::session::Lifetime;
use crate::runtime::js::socket::load_attachment;
use crate::runtime::js::storage::{another_handle, set_alarm};
use crate::runtime::telemetry;

pub struct Alarm {
    state: DurableObjectState,
    known: Cell<AlarmState>,
    /// The duties' rules, for [`Alarm::next_wake`].
    duties: Duties,
}

/// The settings every timed duty follows.
pub struct Duties {
    pub lifetime: Lifetime,
    pub retention: Retention,
    pub webhook: Option<WebhookConfig>,
}

impl Alarm {
    pub fn new(state: &DurableObjectState, duties: Duties) -> Alarm {
        Alarm {
            state: another_handle(state),
            known: Cell::new(AlarmState::Unknown),
            duties,
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

    /// The alarm fired: the runtime holds none until one is set again.
    pub fn fired(&self) {
        self.known.set(AlarmState::Unset);
    }

    /// Sets the alarm for `at_ms` (replacing any), or records that none is
    /// needed; the runtime clears a fired alarm itself.
    pub fn set(&self, at_ms: Option<f64>) {
        // The runtime keeps whole milliseconds: rounded up, the alarm never
        // fires before what it is for is due.
        let at_ms = at_ms.map(f64::ceil);
        if let Some(at) = at_ms {
            let set = self
                .state
                .storage()
                .and_then(|storage| set_alarm(&storage, at));
            if let Err(err) = set {
                telemetry::error("alarm.set", &format_args!("{err:?}"));
            }
        }
        self.known.set(AlarmState::after_setting(at_ms));
    }

    /// Every duty's next time, read from durable state alone (the stored
    /// tables and the sockets' attachments): what an earlier instance may
    /// have set the alarm for.
    fn next_wake(&self, now_ms: f64) -> Option<f64> {
        let storage_ms = storage::next_cleanup(&self.state, self.duties.retention, now_ms);
        let webhook_ms = self
            .duties
            .webhook
            .as_ref()
            .and_then(|config| outbox::next_stored(&self.state, config, now_ms));
        let sockets: Vec<_> = State::from(another_handle(&self.state))
            .get_websockets()
            .iter()
            .filter_map(|ws| load_attachment(ws).ok().flatten())
            .collect();
        let stored = [storage_ms, webhook_ms]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp);
        schedule::next_wake(self.duties.lifetime, stored, &sockets)
    }
}
