//! The object's one alarm: when it must wake next, and what is due then.
//!
//! Every timed duty shares it: expired idempotency keys and history (their
//! next time comes from storage), and each socket's token notice and close
//! (from its attachment). The runtime keeps one alarm per object and a new
//! `setAlarm` replaces the old, so the object asks [`AlarmState::request`]
//! before setting one, and sets only what these rules return.

use crate::domain::session::{Lifetime, SocketAttachment, TokenDuty};

/// What this instance knows of the alarm the runtime holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlarmState {
    /// Just started: an earlier instance may have set one.
    Unknown,
    /// None is set.
    Unset,
    /// Set for this time (ms).
    At(f64),
}

/// What to do about the alarm when a duty falls due at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WakeRequest {
    /// The alarm already comes by then.
    Keep,
    /// Set it for this time (ms): nothing else is due sooner.
    Set(f64),
    /// Work out the earliest duty of all (see [`next_wake`]) and set that:
    /// setting only this one could replace an earlier alarm.
    Recompute,
}

impl AlarmState {
    /// A duty is due at `at_ms`.
    pub fn request(self, at_ms: f64) -> WakeRequest {
        match self {
            AlarmState::Unknown => WakeRequest::Recompute,
            AlarmState::At(set) if set <= at_ms => WakeRequest::Keep,
            AlarmState::At(_) | AlarmState::Unset => WakeRequest::Set(at_ms),
        }
    }

    /// The state once the alarm is set for `wake_at` (`None`: not set).
    pub fn after_setting(wake_at: Option<f64>) -> AlarmState {
        wake_at.map_or(AlarmState::Unset, AlarmState::At)
    }
}

/// When the object must wake next: the earliest of the storage's next
/// expiry and every socket's next token duty (due or not).
pub fn next_wake<'a>(
    lifetime: Lifetime,
    storage_ms: Option<f64>,
    sockets: impl IntoIterator<Item = &'a SocketAttachment>,
) -> Option<f64> {
    sockets
        .into_iter()
        .filter_map(|socket| lifetime.next_ms(socket))
        .chain(storage_ms)
        .min_by(f64::total_cmp)
}

/// The token duties due at `now_ms`, by socket id.
pub fn due_now<'a>(
    lifetime: Lifetime,
    sockets: impl IntoIterator<Item = &'a SocketAttachment>,
    now_ms: f64,
) -> Vec<(String, TokenDuty)> {
    sockets
        .into_iter()
        .filter_map(|socket| {
            lifetime
                .due(socket, now_ms)
                .map(|duty| (socket.id.clone(), duty))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Lifetime = Lifetime {
        leeway_secs: 0,
        notice_secs: 10,
    };

    fn socket(id: &str, exp: Option<u64>) -> SocketAttachment {
        SocketAttachment::new(id.into(), "u".into(), 0, exp)
    }

    #[test]
    fn a_request_sets_the_alarm_only_when_it_would_come_too_late() {
        assert_eq!(AlarmState::Unset.request(5.0), WakeRequest::Set(5.0));
        assert_eq!(AlarmState::At(9.0).request(5.0), WakeRequest::Set(5.0));
        assert_eq!(AlarmState::At(5.0).request(5.0), WakeRequest::Keep);
        assert_eq!(AlarmState::At(1.0).request(5.0), WakeRequest::Keep);
        // After a restart an earlier alarm may be set: never just replace it.
        assert_eq!(AlarmState::Unknown.request(5.0), WakeRequest::Recompute);
        assert_eq!(AlarmState::after_setting(None), AlarmState::Unset);
        assert_eq!(AlarmState::after_setting(Some(3.0)), AlarmState::At(3.0));
    }

    #[test]
    fn the_next_wake_is_the_earliest_duty_of_all() {
        let a = socket("a", Some(100)); // notice at 90 s
        let b = socket("b", Some(50)).notified(); // close at 50 s
        let forever = socket("c", None);
        assert_eq!(next_wake(LIFE, None, []), None);
        assert_eq!(next_wake(LIFE, None, [&forever]), None);
        assert_eq!(next_wake(LIFE, Some(7.0), [&forever]), Some(7.0));
        assert_eq!(next_wake(LIFE, None, [&a]), Some(90_000.0));
        assert_eq!(next_wake(LIFE, None, [&a, &b, &forever]), Some(50_000.0));
        assert_eq!(next_wake(LIFE, Some(60_000.0), [&a]), Some(60_000.0));
        assert_eq!(next_wake(LIFE, Some(1e12), [&a, &b]), Some(50_000.0));
    }

    #[test]
    fn what_is_due_now_per_socket() {
        let a = socket("a", Some(100));
        let b = socket("b", Some(50)).notified();
        let c = socket("c", None);
        assert!(due_now(LIFE, [&a, &b, &c], 0.0).is_empty());
        assert_eq!(
            due_now(LIFE, [&a, &b, &c], 90_000.0),
            vec![
                ("a".to_owned(), TokenDuty::Notice { expires_at: 100 }),
                ("b".to_owned(), TokenDuty::Close),
            ]
        );
        // After the duties are done, the next wake is the remaining close.
        let a = a.notified();
        assert_eq!(next_wake(LIFE, None, [&a, &c]), Some(100_000.0));
    }
}
