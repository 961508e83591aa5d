//! Receiving webhooks (docs/webhooks.md): checking a request's
//! `HopeFlow-Signature` and reading its events.
//!
//! The rule is the server crate's own
//! ([`hopeflow_realtime::webhook::verify`]), the one its tests hold the
//! signing side to: HMAC-SHA256 of `"<t>.<body>"` under `WEBHOOK_SECRET`,
//! compared in constant time, then `t` within a tolerance of now, then the
//! body. The events and the error are the server's types too.
//!
//! ```
//! use std::time::SystemTime;
//! use hopeflow_client::webhook::{self, EventKind, VerifyError};
//!
//! let secret = "0123456789abcdef0123456789abcdef"; // WEBHOOK_SECRET
//! let body = r#"{"events":[{"id":"e1","userId":"alice","seq":1,"at":1700000000000,"type":"user.online","sockets":1}]}"#;
//! // What the worker sends; a receiver takes it from the request.
//! let now = webhook::unix_secs(SystemTime::now());
//! let header = webhook::signature_header(secret.as_bytes(), now, body);
//!
//! let events = webhook::verify(secret, &header, body, SystemTime::now()).expect("valid");
//! assert_eq!(events[0].kind, EventKind::UserOnline { sockets: 1 });
//! assert_eq!(
//!     webhook::verify(secret, &header, &body.replace("alice", "mallory"), SystemTime::now()),
//!     Err(VerifyError::BadSignature)
//! );
//! ```
//!
//! [`receiver`] is the small local HTTP receiver behind
//! `hopeflow webhooks listen`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use hopeflow_realtime::webhook::{
    signature_header, Event, EventKind, VerifyError, DEFAULT_TOLERANCE_SECS, MIN_SECRET_LEN,
    SIGNATURE_HEADER,
};

pub mod receiver;

/// The tolerance [`verify`] uses: 5 minutes
/// ([`DEFAULT_TOLERANCE_SECS`]) either side of the receiver's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(DEFAULT_TOLERANCE_SECS);

/// Checks a webhook request and returns its events, oldest first.
///
/// * `secret`: `WEBHOOK_SECRET` (a `&str`, `String` or bytes).
/// * `signature_header`: the value of the `HopeFlow-Signature` header
///   ([`SIGNATURE_HEADER`]), `t=<unix seconds>,v1=<hex>`.
/// * `body`: the request body exactly as received, before any JSON
///   parsing (the signature covers its bytes).
/// * `now`: the receiver's clock, normally `SystemTime::now()`; pass
///   another time to check a stored request or in tests.
///
/// The signature's `t` may be at most 5 minutes from `now`
/// ([`DEFAULT_TOLERANCE`]); [`verify_with_tolerance`] takes another.
///
/// Errors: [`VerifyError::MalformedHeader`] (no `t=` or `v1=`, or not a
/// number / hex), [`VerifyError::BadSignature`] (wrong secret, or the body
/// or `t` changed), [`VerifyError::OutsideTolerance`] (a replay of an old
/// request, or a clock far off), [`VerifyError::MalformedBody`] (signed,
/// but not `{"events":[...]}` of events this client knows).
pub fn verify(
    secret: impl AsRef<[u8]>,
    signature_header: &str,
    body: &str,
    now: SystemTime,
) -> Result<Vec<Event>, VerifyError> {
    verify_with_tolerance(secret, signature_header, body, now, DEFAULT_TOLERANCE)
}

/// [`verify`] with another tolerance between the signature's time and
/// `now` (whole seconds count; anything below a second is dropped).
pub fn verify_with_tolerance(
    secret: impl AsRef<[u8]>,
    signature_header: &str,
    body: &str,
    now: SystemTime,
    tolerance: Duration,
) -> Result<Vec<Event>, VerifyError> {
    hopeflow_realtime::webhook::verify(
        secret.as_ref(),
        signature_header,
        body,
        unix_secs(now),
        tolerance.as_secs(),
    )
}

/// `time` as whole unix seconds, as `t=` counts them (0 before 1970).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "a-webhook-secret-of-32-characters";
    const T: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A body of the three kinds, as the worker writes it.
    fn body() -> String {
        let events = [
            json!({"id": "a", "userId": "alice", "seq": 1, "at": 1, "type": "user.online", "sockets": 2}),
            json!({"id": "b", "userId": "alice", "seq": 2, "at": 2, "type": "user.offline", "lastSeenAt": 2}),
            json!({"id": "c", "userId": "alice", "seq": 3, "at": 3, "type": "ack.late",
                   "envelopeId": "e", "socketId": "s", "result": {"ok": true}, "ackMs": 6100}),
        ];
        json!({ "events": events }).to_string()
    }

    #[test]
    fn a_signed_request_gives_its_events_in_order() {
        let body = body();
        let header = signature_header(SECRET.as_bytes(), T, &body);
        let events = verify(SECRET, &header, &body, at(T + 10)).expect("valid");
        let kinds: Vec<_> = events.iter().map(|e| e.kind.type_name()).collect();
        assert_eq!(kinds, ["user.online", "user.offline", "ack.late"]);
        assert_eq!(events[0].kind, EventKind::UserOnline { sockets: 2 });
        assert_eq!(
            events[2].kind,
            EventKind::AckLate {
                envelope_id: "e".into(),
                socket_id: "s".into(),
                result: json!({"ok": true}),
                ack_ms: 6100
            }
        );
        // The secret as bytes or as a String: the same.
        assert_eq!(
            verify(SECRET.as_bytes(), &header, &body, at(T)),
            Ok(events.clone())
        );
        assert_eq!(
            verify(String::from(SECRET), &header, &body, at(T)),
            Ok(events)
        );
    }

    #[test]
    fn a_tampered_body_or_another_secret_is_a_bad_signature() {
        let body = body();
        let header = signature_header(SECRET.as_bytes(), T, &body);
        let tampered = body.replace("\"sockets\":2", "\"sockets\":3");
        assert_ne!(tampered, body);
        assert_eq!(
            verify(SECRET, &header, &tampered, at(T)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify("another-secret-of-32-characters!", &header, &body, at(T)),
            Err(VerifyError::BadSignature)
        );
        // The time is signed too: moving it breaks the signature.
        let moved = header.replace(&format!("t={T}"), &format!("t={}", T + 1));
        assert_eq!(
            verify(SECRET, &moved, &body, at(T)),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn the_time_must_be_within_five_minutes_unless_told_otherwise() {
        let body = body();
        let header = signature_header(SECRET.as_bytes(), T, &body);
        assert!(verify(SECRET, &header, &body, at(T + 300)).is_ok());
        assert!(verify(SECRET, &header, &body, at(T - 300)).is_ok());
        assert_eq!(
            verify(SECRET, &header, &body, at(T + 301)),
            Err(VerifyError::OutsideTolerance { t: T, now: T + 301 })
        );
        assert_eq!(
            verify(SECRET, &header, &body, at(T - 301)),
            Err(VerifyError::OutsideTolerance { t: T, now: T - 301 })
        );
        let minute = Duration::from_secs(60);
        assert!(verify_with_tolerance(SECRET, &header, &body, at(T + 60), minute).is_ok());
        assert_eq!(
            verify_with_tolerance(SECRET, &header, &body, at(T + 61), minute),
            Err(VerifyError::OutsideTolerance { t: T, now: T + 61 })
        );
        let hour = Duration::from_secs(3600);
        assert!(verify_with_tolerance(SECRET, &header, &body, at(T + 3600), hour).is_ok());
        // Sub-second parts of `now` do not count.
        let later = at(T + 300) + Duration::from_millis(999);
        assert!(verify(SECRET, &header, &body, later).is_ok());
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn malformed_headers_and_bodies_are_told_apart() {
        let body = body();
        let good = signature_header(SECRET.as_bytes(), T, &body);
        let v1 = good.split_once(",v1=").map(|(_, hex)| hex).expect("v1");
        for bad in [
            "".to_owned(),
            format!("v1={v1}"),
            format!("t={T}"),
            format!("t=soon,v1={v1}"),
            format!("t={T},v1=xyz"),
            format!("t={T},v1={}", &v1[1..]),
        ] {
            assert_eq!(
                verify(SECRET, &bad, &body, at(T)),
                Err(VerifyError::MalformedHeader),
                "{bad}"
            );
        }
        // Signed, but not events: only a correctly signed body is parsed.
        for not_events in [
            "[]",
            "{\"events\":{}}",
            "{\"events\":[{\"type\":\"user.online\"}]}",
        ] {
            let header = signature_header(SECRET.as_bytes(), T, not_events);
            assert!(
                matches!(
                    verify(SECRET, &header, not_events, at(T)),
                    Err(VerifyError::MalformedBody(_))
                ),
                "{not_events}"
            );
        }
        // Every error is a std Error with a message that says why.
        let errors: [Box<dyn std::error::Error>; 3] = [
            Box::new(VerifyError::MalformedHeader),
            Box::new(VerifyError::BadSignature),
            Box::new(VerifyError::OutsideTolerance { t: 1, now: 302 }),
        ];
        for error in errors {
            assert!(!error.to_string().is_empty());
        }
    }
}
