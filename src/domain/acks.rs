//! Book-keeping of publishes waiting for acks.
//!
//! Each pending publish remembers which sockets it was delivered to and has not
//! yet heard from, and the results that arrived. Only a socket the envelope was
//! delivered to may ack it, and only once; everything else is ignored without
//! keeping memory. The book is generic over the waiter `W` that is woken when a
//! publish completes (the resolver of the `deliver` Promise in the Durable
//! Object, a number in tests), so it stays free of runtime types.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::domain::protocol::{Delivery, DeliveryStatus};

/// `MAX_RESULTS_BYTES`' default: ack result bytes (JSON) kept per publish.
pub const DEFAULT_MAX_RESULTS_BYTES: usize = 4 * 1024 * 1024;

/// How long `/publish` waits for acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTimeout(Duration);

impl AckTimeout {
    pub const DEFAULT: AckTimeout = AckTimeout(Duration::from_millis(5_000));
    pub const MIN_MS: u64 = 100;
    pub const MAX_MS: u64 = 30_000;

    /// Parses the `ACK_TIMEOUT_MS` setting; absent or empty means the default.
    pub fn parse(setting: Option<&str>) -> Result<AckTimeout, InvalidAckTimeout> {
        let Some(text) = setting.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(AckTimeout::DEFAULT);
        };
        match text.parse::<u64>() {
            Ok(ms) if (Self::MIN_MS..=Self::MAX_MS).contains(&ms) => {
                Ok(AckTimeout(Duration::from_millis(ms)))
            }
            _ => Err(InvalidAckTimeout(text.to_owned())),
        }
    }

    pub fn duration(self) -> Duration {
        self.0
    }
}

/// `ACK_TIMEOUT_MS` is not a whole number of milliseconds in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAckTimeout(pub String);

impl fmt::Display for InvalidAckTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ACK_TIMEOUT_MS must be a whole number of milliseconds in {}..={}, got {:?}",
            AckTimeout::MIN_MS,
            AckTimeout::MAX_MS,
            self.0
        )
    }
}

impl std::error::Error for InvalidAckTimeout {}

/// How one publish keeps what its acks bring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracking {
    /// Keep what became of each socket (`?detail=true`).
    pub detail: bool,
    /// Serialized bytes of results kept (`MAX_RESULTS_BYTES`); results past
    /// it are kept as `null`, so one user's clients cannot fill the isolate.
    pub max_results_bytes: usize,
    /// When the envelope was sent, for `ackMs`.
    pub sent_ms: f64,
}

impl Default for Tracking {
    fn default() -> Tracking {
        Tracking {
            detail: false,
            max_results_bytes: DEFAULT_MAX_RESULTS_BYTES,
            sent_ms: 0.0,
        }
    }
}

/// One publish waiting for acks.
#[derive(Debug)]
struct Pending<W> {
    /// Sockets the envelope was delivered to that have neither acked nor closed.
    awaiting: HashSet<String>,
    /// Ack results in arrival order.
    results: Vec<Value>,
    /// Serialized bytes of `results`.
    result_bytes: usize,
    /// A result was replaced by `null` for the byte cap.
    truncated: bool,
    /// Sockets that closed before acking.
    closed: usize,
    tracking: Tracking,
    /// With `detail`: every socket sent to, in order, and its fate so far.
    detail: Option<Detail>,
    /// Woken once when `awaiting` becomes empty; `None` after that.
    waiter: Option<W>,
}

#[derive(Debug, Default)]
struct Detail {
    order: Vec<String>,
    fates: HashMap<String, Fate>,
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Index of its result, and milliseconds from sending to the ack.
    Acked {
        result: usize,
        ms: u64,
    },
    Closed,
}

/// What a finished publish brought.
#[derive(Debug, Default, PartialEq)]
pub struct Settled {
    /// Ack results in arrival order.
    pub results: Vec<Value>,
    pub truncated: bool,
    /// With `detail`: each socket sent to, in sending order.
    pub deliveries: Option<Vec<Delivery>>,
    /// Sockets still awaited at the deadline.
    pub timed_out: usize,
    /// Sockets that closed before acking.
    pub closed: usize,
}

impl Settled {
    /// What a publish sent to no socket brings: no results, and with
    /// `detail` an empty list of deliveries.
    pub fn nobody(detail: bool) -> Settled {
        Settled {
            deliveries: detail.then(Vec::new),
            ..Settled::default()
        }
    }
}

/// What an ack did.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome<W> {
    /// Unknown or finished envelope, a socket it was not delivered to, or a
    /// repeat: the result, given back (a late ack may still be reported).
    Ignored(Value),
    /// Counted; other sockets are still awaited.
    Counted,
    /// Counted, and it was the last one: wake this waiter.
    Completed(W),
}

/// The envelope id is already pending; ids must be unique per publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateEnvelope;

impl fmt::Display for DuplicateEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a publish with this envelope id is already waiting for acks")
    }
}

impl std::error::Error for DuplicateEnvelope {}

/// All publishes in flight for one Durable Object.
#[derive(Debug)]
pub struct AckBook<W> {
    pending: HashMap<String, Pending<W>>,
}

impl<W> Default for AckBook<W> {
    fn default() -> Self {
        AckBook {
            pending: HashMap::new(),
        }
    }
}

impl<W> AckBook<W> {
    /// Starts waiting for acks of `envelope_id` from `sockets`.
    pub fn begin(
        &mut self,
        envelope_id: String,
        sockets: Vec<String>,
        waiter: W,
        tracking: Tracking,
    ) -> Result<(), DuplicateEnvelope> {
        if self.pending.contains_key(&envelope_id) {
            return Err(DuplicateEnvelope);
        }
        let detail = tracking.detail.then(|| Detail {
            order: sockets.clone(),
            fates: HashMap::new(),
        });
        self.pending.insert(
            envelope_id,
            Pending {
                awaiting: sockets.into_iter().collect(),
                results: Vec::new(),
                result_bytes: 0,
                truncated: false,
                closed: 0,
                tracking,
                detail,
                waiter: Some(waiter),
            },
        );
        Ok(())
    }

    /// Records an ack from `socket` for `envelope_id`, arrived at `now_ms`.
    pub fn ack(
        &mut self,
        envelope_id: &str,
        socket: &str,
        result: Value,
        now_ms: f64,
    ) -> AckOutcome<W> {
        let Some(pending) = self.pending.get_mut(envelope_id) else {
            return AckOutcome::Ignored(result);
        };
        if !pending.awaiting.remove(socket) {
            return AckOutcome::Ignored(result);
        }
        // Once past the cap, every further result is null, so the answer
        // says plainly which results are missing.
        let bytes = if pending.truncated {
            usize::MAX
        } else {
            json_len(&result)
        };
        let fits = bytes <= pending.tracking.max_results_bytes - pending.result_bytes;
        let result = if fits {
            pending.result_bytes += bytes;
            result
        } else {
            pending.truncated = true;
            Value::Null
        };
        if let Some(detail) = &mut pending.detail {
            let ms = (now_ms - pending.tracking.sent_ms).max(0.0) as u64;
            let fate = Fate::Acked {
                result: pending.results.len(),
                ms,
            };
            detail.fates.insert(socket.to_owned(), fate);
        }
        pending.results.push(result);
        match pending.wake_if_done() {
            Some(waiter) => AckOutcome::Completed(waiter),
            None => AckOutcome::Counted,
        }
    }

    /// A socket that was sent the envelope again (a resume) is awaited too,
    /// if the publish still waits and the socket connected after it was
    /// sent (`connected_ms`; one that was there then had its chance live,
    /// and may have acked already); returns its waiter, whose count of
    /// sockets grows by one.
    pub fn join(&mut self, envelope_id: &str, socket: &str, connected_ms: f64) -> Option<&mut W> {
        let pending = self.pending.get_mut(envelope_id)?;
        pending.waiter.as_ref()?;
        if connected_ms <= pending.tracking.sent_ms {
            return None;
        }
        if !pending.awaiting.insert(socket.to_owned()) {
            return None;
        }
        if let Some(detail) = &mut pending.detail {
            detail.order.push(socket.to_owned());
        }
        pending.waiter.as_mut()
    }

    /// Stops waiting for a socket that closed; returns the waiters of publishes
    /// that are complete because of it.
    pub fn socket_gone(&mut self, socket: &str) -> Vec<W> {
        self.pending
            .values_mut()
            .filter_map(|pending| {
                if pending.awaiting.remove(socket) {
                    pending.closed += 1;
                    if let Some(detail) = &mut pending.detail {
                        detail.fates.insert(socket.to_owned(), Fate::Closed);
                    }
                    pending.wake_if_done()
                } else {
                    None
                }
            })
            .collect()
    }

    /// Ends a publish (completed or timed out) and returns what it brought.
    /// Later acks for it are ignored.
    pub fn finish(&mut self, envelope_id: &str) -> Settled {
        self.pending
            .remove(envelope_id)
            .map(Pending::settle)
            .unwrap_or_default()
    }

    /// Ends a publish whose deadline passed: its waiter (unless an ack or a
    /// close already woke it) and what arrived.
    pub fn expire(&mut self, envelope_id: &str) -> Option<(W, Settled)> {
        let mut pending = self.pending.remove(envelope_id)?;
        let waiter = pending.waiter.take()?;
        Some((waiter, pending.settle()))
    }

    /// The sockets a publish still waits for, and when it was sent: at
    /// its deadline, the deliveries whose ack may come late.
    pub fn unacked(&self, envelope_id: &str) -> Option<(Vec<String>, f64)> {
        let pending = self.pending.get(envelope_id)?;
        let mut sockets: Vec<String> = pending.awaiting.iter().cloned().collect();
        sockets.sort();
        Some((sockets, pending.tracking.sent_ms))
    }

    /// Publishes currently waiting for acks.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl<W> Pending<W> {
    /// What the publish brought; sockets still awaited timed out.
    fn settle(self) -> Settled {
        let deliveries = self.detail.map(|detail| {
            detail
                .order
                .into_iter()
                .map(|socket_id| {
                    let (status, result, ack_ms) = match detail.fates.get(&socket_id) {
                        Some(Fate::Acked { result, ms }) => (
                            DeliveryStatus::Acked,
                            Some(self.results.get(*result).cloned().unwrap_or(Value::Null)),
                            Some(*ms),
                        ),
                        Some(Fate::Closed) => (DeliveryStatus::Closed, None, None),
                        None => (DeliveryStatus::TimedOut, None, None),
                    };
                    Delivery {
                        socket_id,
                        status,
                        result,
                        ack_ms,
                    }
                })
                .collect()
        });
        Settled {
            results: self.results,
            truncated: self.truncated,
            deliveries,
            timed_out: self.awaiting.len(),
            closed: self.closed,
        }
    }

    fn wake_if_done(&mut self) -> Option<W> {
        if self.awaiting.is_empty() {
            self.waiter.take()
        } else {
            None
        }
    }
}

/// The ack deadlines of publishes in flight, in the order they began. Every
/// publish of an object waits the same timeout, so deadlines only grow, and
/// one runtime timer, set for the earliest, serves them all: a timer per
/// publish (set, then cleared by the last ack) was 4 % of the isolate's busy
/// time under load (bench/README.md).
#[derive(Debug, Default)]
pub struct DeadlineQueue {
    queue: VecDeque<(f64, String)>,
    /// A timer is set for the front of the queue.
    armed: bool,
}

impl DeadlineQueue {
    /// Adds the deadline of `envelope_id`; returns the delay to set a timer
    /// for when none is set.
    pub fn push(&mut self, envelope_id: String, deadline_ms: f64, now_ms: f64) -> Option<f64> {
        self.queue.push_back((deadline_ms, envelope_id));
        if self.armed {
            return None;
        }
        self.armed = true;
        Some(delay(deadline_ms, now_ms))
    }

    /// The timer fired at `now_ms`: the publishes now due (some may have
    /// completed meanwhile), and the delay of the next timer, if one is needed.
    pub fn fire(&mut self, now_ms: f64) -> (Vec<String>, Option<f64>) {
        let mut due = Vec::new();
        while let Some((deadline, _)) = self.queue.front() {
            if *deadline > now_ms {
                break;
            }
            if let Some((_, id)) = self.queue.pop_front() {
                due.push(id);
            }
        }
        let next = self
            .queue
            .front()
            .map(|(deadline, _)| delay(*deadline, now_ms));
        self.armed = next.is_some();
        (due, next)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The length of `value`'s JSON text, without building it.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A timer delay to `deadline_ms`: at least 1 ms, so a timer that fired a
/// little early (coarse clocks) is set again rather than spinning.
fn delay(deadline_ms: f64, now_ms: f64) -> f64 {
    (deadline_ms - now_ms).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sockets(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn settled(results: Vec<Value>) -> Settled {
        Settled {
            results,
            ..Settled::default()
        }
    }

    #[test]
    fn a_resumed_socket_joins_a_publish_in_flight() {
        let mut book = AckBook::default();
        // "b" resumed (a new socket of a client whose old one dropped).
        let sent = Tracking {
            sent_ms: 1_000.0,
            ..Tracking::default()
        };
        book.begin("f".into(), sockets(&["a"]), 2, sent)
            .expect("new");
        assert_eq!(book.join("f", "b", 1_500.0).copied(), Some(2));
        assert_eq!(book.join("f", "b", 1_500.0), None, "joins once");
        assert_eq!(book.join("nope", "b", 1_500.0), None);
        // A socket that was there when it was sent (and may have acked).
        assert_eq!(book.join("f", "c", 900.0), None);
        assert_eq!(book.ack("f", "a", json!(1), 0.0), AckOutcome::Counted);
        assert_eq!(book.ack("f", "b", json!(2), 0.0), AckOutcome::Completed(2));
        assert_eq!(book.finish("f").results, vec![json!(1), json!(2)]);
    }

    #[test]
    fn detail_says_what_became_of_each_socket() {
        let mut book = AckBook::default();
        let tracking = Tracking {
            detail: true,
            sent_ms: 1_000.0,
            ..Tracking::default()
        };
        book.begin("e".into(), sockets(&["a", "b", "c"]), 7, tracking)
            .expect("new");
        assert_eq!(book.ack("e", "b", json!("B"), 1_012.0), AckOutcome::Counted);
        assert!(book.socket_gone("c").is_empty());
        let (waiter, settled) = book.expire("e").expect("pending");
        assert_eq!(waiter, 7);
        assert_eq!(settled.results, vec![json!("B")]);
        let deliveries = settled.deliveries.expect("detail");
        let status: Vec<_> = deliveries.iter().map(|d| d.status).collect();
        assert_eq!(
            status,
            [
                DeliveryStatus::TimedOut,
                DeliveryStatus::Acked,
                DeliveryStatus::Closed
            ]
        );
        assert_eq!(deliveries[1].result, Some(json!("B")));
        assert_eq!(deliveries[1].ack_ms, Some(12));
        assert_eq!(deliveries[0].result, None);
    }

    #[test]
    fn results_past_the_byte_cap_become_null() {
        let mut book = AckBook::default();
        let tracking = Tracking {
            max_results_bytes: 10,
            ..Tracking::default()
        };
        book.begin("e".into(), sockets(&["a", "b", "c"]), (), tracking)
            .expect("new");
        // `"abcd"` is 6 bytes of JSON: the first fits, the second would not,
        // and once past the cap even a small third is dropped.
        book.ack("e", "a", json!("abcd"), 0.0);
        book.ack("e", "b", json!("abcd"), 0.0);
        book.ack("e", "c", json!(1), 0.0);
        let settled = book.finish("e");
        assert_eq!(
            settled.results,
            vec![json!("abcd"), Value::Null, Value::Null]
        );
        assert!(settled.truncated);
        assert!(settled.deliveries.is_none());
    }

    #[test]
    fn one_timer_serves_every_deadline() {
        let mut queue = DeadlineQueue::default();
        assert_eq!(queue.push("a".into(), 5_000.0, 0.0), Some(5_000.0));
        // Armed: later publishes set no timer of their own.
        assert_eq!(queue.push("b".into(), 5_010.0, 10.0), None);
        assert_eq!(queue.push("c".into(), 5_020.0, 20.0), None);
        // Fired a little early: nothing due, set again for the rest.
        assert_eq!(queue.fire(4_999.5), (vec![], Some(1.0)));
        assert_eq!(
            queue.fire(5_010.0),
            (vec!["a".into(), "b".into()], Some(10.0))
        );
        assert_eq!(queue.fire(5_020.0), (vec!["c".into()], None));
        assert!(queue.is_empty());
        // Disarmed once empty: the next publish sets a timer again.
        assert_eq!(queue.push("d".into(), 9_000.0, 4_000.0), Some(5_000.0));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn expiry_hands_back_the_waiter_and_partial_results_once() {
        let mut book = AckBook::default();
        book.begin("e".into(), sockets(&["a", "b"]), 7, Tracking::default())
            .expect("new");
        assert_eq!(book.ack("e", "a", json!(1), 0.0), AckOutcome::Counted);
        let expected = Settled {
            timed_out: 1,
            ..settled(vec![json!(1)])
        };
        assert_eq!(book.expire("e"), Some((7, expected)));
        assert!(book.is_empty());
        assert_eq!(book.expire("e"), None);
        assert_eq!(
            book.ack("e", "b", json!(2), 0.0),
            AckOutcome::Ignored(json!(2))
        );
    }

    #[test]
    fn expiry_after_completion_finds_nothing() {
        let mut book = AckBook::default();
        book.begin("e".into(), sockets(&["a"]), 7, Tracking::default())
            .expect("new");
        assert_eq!(book.ack("e", "a", json!(1), 0.0), AckOutcome::Completed(7));
        assert_eq!(book.finish("e").results, vec![json!(1)]);
        assert_eq!(book.expire("e"), None);
    }

    #[test]
    fn completes_when_every_socket_acked() {
        let mut book = AckBook::default();
        book.begin("e".into(), sockets(&["a", "b"]), 7, Tracking::default())
            .expect("new");
        assert_eq!(book.ack("e", "a", json!(1), 0.0), AckOutcome::Counted);
        assert_eq!(book.ack("e", "b", json!(2), 0.0), AckOutcome::Completed(7));
        assert_eq!(book.finish("e").results, vec![json!(1), json!(2)]);
        assert!(book.is_empty());
    }

    #[test]
    fn the_unacked_deliveries_of_a_publish_at_its_deadline() {
        let mut book = AckBook::default();
        let tracking = Tracking {
            sent_ms: 42.0,
            ..Tracking::default()
        };
        book.begin("e".into(), sockets(&["b", "a", "c"]), (), tracking)
            .expect("new");
        assert_eq!(book.ack("e", "b", json!(1), 50.0), AckOutcome::Counted);
        assert_eq!(
            book.unacked("e"),
            Some((vec!["a".to_owned(), "c".to_owned()], 42.0))
        );
        assert_eq!(book.unacked("other"), None);
    }

    #[test]
    fn ignores_unknown_spoofed_duplicate_and_late_acks() {
        let mut book = AckBook::default();
        book.begin("e".into(), sockets(&["a", "b"]), (), Tracking::default())
            .expect("new");
        assert_eq!(
            book.ack("other", "a", json!(0), 0.0),
            AckOutcome::Ignored(json!(0))
        );
        assert_eq!(
            book.ack("e", "intruder", json!(0), 0.0),
            AckOutcome::Ignored(json!(0))
        );
        assert_eq!(book.ack("e", "a", json!("first"), 0.0), AckOutcome::Counted);
        assert_eq!(
            book.ack("e", "a", json!("again"), 0.0),
            AckOutcome::Ignored(json!("again"))
        );
        assert_eq!(book.finish("e").results, vec![json!("first")]);
        assert_eq!(
            book.ack("e", "b", json!("late"), 0.0),
            AckOutcome::Ignored(json!("late"))
        );
        assert!(book.is_empty());
    }

    #[test]
    fn settled_counts_acks_timeouts_and_closes() {
        let mut book = AckBook::default();
        book.begin(
            "e".into(),
            sockets(&["a", "b", "c", "d"]),
            1,
            Tracking::default(),
        )
        .expect("new");
        assert_eq!(book.ack("e", "a", json!(1), 0.0), AckOutcome::Counted);
        assert!(book.socket_gone("b").is_empty());
        let (_, settled) = book.expire("e").expect("still waiting");
        assert_eq!(
            (settled.results.len(), settled.timed_out, settled.closed),
            (1, 2, 1)
        );
        // Completed by acks and a close: nothing timed out.
        book.begin("f".into(), sockets(&["a", "b"]), 2, Tracking::default())
            .expect("new");
        assert_eq!(book.socket_gone("a"), Vec::<i32>::new());
        assert_eq!(book.ack("f", "b", json!(2), 0.0), AckOutcome::Completed(2));
        let settled = book.finish("f");
        assert_eq!((settled.timed_out, settled.closed), (0, 1));
    }

    #[test]
    fn closed_socket_stops_being_awaited() {
        let mut book = AckBook::default();
        book.begin("e1".into(), sockets(&["a", "b"]), 1, Tracking::default())
            .expect("new");
        book.begin("e2".into(), sockets(&["b", "c"]), 2, Tracking::default())
            .expect("new");
        assert_eq!(book.ack("e1", "a", json!("a"), 0.0), AckOutcome::Counted);
        assert_eq!(book.socket_gone("b"), vec![1]);
        assert_eq!(book.finish("e1").results, vec![json!("a")]);
        assert_eq!(
            book.ack("e2", "c", Value::Null, 0.0),
            AckOutcome::Completed(2)
        );
        assert_eq!(book.finish("e2").results, vec![Value::Null]);
        assert!(book.socket_gone("b").is_empty());
    }

    #[test]
    fn concurrent_publishes_keep_results_apart() {
        let mut book = AckBook::default();
        book.begin("e1".into(), sockets(&["a"]), 1, Tracking::default())
            .expect("new");
        book.begin("e2".into(), sockets(&["a"]), 2, Tracking::default())
            .expect("new");
        assert_eq!(
            book.ack("e2", "a", json!("two"), 0.0),
            AckOutcome::Completed(2)
        );
        assert_eq!(
            book.ack("e1", "a", json!("one"), 0.0),
            AckOutcome::Completed(1)
        );
        assert_eq!(book.finish("e1").results, vec![json!("one")]);
        assert_eq!(book.finish("e2").results, vec![json!("two")]);
    }

    #[test]
    fn duplicate_envelope_is_refused_and_timeout_leaves_nothing() {
        let mut book = AckBook::default();
        book.begin("e".into(), sockets(&["a"]), (), Tracking::default())
            .expect("new");
        assert_eq!(
            book.begin("e".into(), sockets(&["b"]), (), Tracking::default()),
            Err(DuplicateEnvelope)
        );
        assert_eq!(book.len(), 1);
        assert!(book.finish("e").results.is_empty());
        assert!(book.finish("e").results.is_empty());
        assert!(book.is_empty());
    }

    #[test]
    fn ack_timeout_setting() {
        assert_eq!(AckTimeout::parse(None), Ok(AckTimeout::DEFAULT));
        assert_eq!(AckTimeout::parse(Some(" ")), Ok(AckTimeout::DEFAULT));
        assert_eq!(
            AckTimeout::parse(Some("250")).map(AckTimeout::duration),
            Ok(Duration::from_millis(250))
        );
        for bad in ["99", "30001", "-5", "1.5", "soon"] {
            assert!(AckTimeout::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
