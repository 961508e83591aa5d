//! The user's history as the object uses it: opened by its first use,
//! recording each publish, read by a `resume`. The tables and their SQL
//! are `storage`'s; the rules `domain::history`'s.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsValue;
use worker::worker_sys::DurableObjectState;

use super::alarm::Alarm;
use super::storage::{self, History, Retained};
use crate::domain::error::ApiError;
use crate::domain::history::{self, Position, Retention};
use crate::domain::operator::HistoryView;
use crate::runtime::js::storage::another_handle;
use crate::runtime::telemetry;

pub struct UserHistory {
    state: DurableObjectState,
    /// `None`: history is off (`HISTORY_SIZE=0`, or the settings are bad).
    retention: Option<Retention>,
    /// Wakes the object to delete envelopes past their TTL.
    alarm: Rc<Alarm>,
    /// `None` until its first use.
    open: RefCell<Option<History>>,
}

/// What a `resume` replays.
pub struct Replay {
    pub position: Position,
    pub rows: Vec<Retained>,
    pub complete: bool,
}

impl UserHistory {
    pub fn new(state: &DurableObjectState, retention: Option<Retention>, alarm: Rc<Alarm>) -> Self {
        UserHistory {
            state: another_handle(state),
            retention: retention.filter(Retention::enabled),
            alarm,
            open: RefCell::new(None),
        }
    }

    /// Records the envelope (when history is on): its text with `seq`. A
    /// history that cannot be written refuses the publish, so that no
    /// client sees a `seq` the history does not have.
    pub fn record(&self, envelope_text: &str, now_ms: f64) -> Result<Option<JsValue>, ApiError> {
        match self.with(|history| history.record(envelope_text, now_ms)) {
            None => Ok(None),
            Some(Ok((text, cleanup_at))) => {
                // Usually the alarm already comes by then: a comparison.
                self.alarm.wake_by(cleanup_at);
                Ok(Some(text))
            }
            Some(Err(err)) => {
                telemetry::error("history.record", &err);
                Err(ApiError::Unavailable)
            }
        }
    }

    /// Where the history stands; `None` when it is off.
    pub fn position(&self) -> Option<Position> {
        self.with(|history| history.position.clone())
    }

    /// The retained envelopes a resume from `since` of `epoch` sends;
    /// `None` when history is off.
    pub fn replay(&self, since: u64, epoch: &str, now_ms: f64) -> Option<Result<Replay, String>> {
        self.with(|history| {
            let position = history.position.clone();
            let found = if history::replays(&position, since, epoch) {
                history.since(since, now_ms)
            } else {
                Ok((Vec::new(), None))
            };
            found.map(|(rows, oldest)| Replay {
                complete: history::resume_complete(&position, since, epoch, oldest),
                position,
                rows,
            })
        })
    }

    /// The history as stored, for the sockets view, without opening it.
    pub fn view(&self) -> Option<HistoryView> {
        self.retention?;
        match storage::history_view(&self.state) {
            Ok(view) => view,
            Err(err) => {
                telemetry::error("history.view", &err);
                None
            }
        }
    }

    /// Runs `f` on the history, opening it first; `None` when it is off
    /// (or cannot be opened, which is logged; the next use tries again).
    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> Option<T> {
        let retention = self.retention?;
        let mut guard = self.open.borrow_mut();
        if guard.is_none() {
            match History::open(&self.state, retention) {
                Ok(history) => *guard = Some(history),
                Err(err) => {
                    telemetry::error("history.open", &err);
                    return None;
                }
            }
        }
        guard.as_mut().map(f)
    }
}
