//! JIT warm-up: runs the pure code of a publish's hot path on sample input,
//! so that the runtime compiles and optimizes it when the isolate starts,
//! not during the first requests it serves.
//!
//! V8 compiles a wasm function with its baseline compiler (Liftoff) when it
//! is first called and recompiles it optimized once it has run enough
//! (dynamic tiering). Until then a publish runs slower code: a publish round
//! trip cost 1.38× the JavaScript reference's runtime CPU over the first
//! 1,000 publishes after start, and 1.02× after 3,000 warm-up publishes
//! (bench/README.md, "Warm-up"). `src/shim.js` calls [`exercise`] (through
//! `runtime::entry::warm_up`) once, as the module is instantiated.

use std::hint::black_box;

use serde_json::json;

use crate::domain::acks::{AckBook, AckOutcome, Tracking};
use crate::domain::auth::{AuthPolicy, TokenVerifier, VerifiedTokens};
use crate::domain::filter::{any_matches, Filter};
use crate::domain::protocol::{ClientFrame, Envelope, PublishOutcome, PublishRequest, ServerFrame};

/// A token for `{"userId":"warm-up"}` signed with the secret `warm-up`;
/// only ever checked by the warm-up's own verifier.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiJ3YXJtLXVwIn0.en5zh2shvyg_UgNay0PlUDMBCoECgRtxdrmvnmnfhgg";
const SECRET: &str = "warm-up";
const BODY: &[u8] =
    br#"{"userId":"warm-up","type":"chat_message","payload":{"room":"r1","text":"hello"}}"#;
const ACK: &str = r#"{"type":"ack","envelopeId":"e","result":{"seen":true}}"#;
const SUBSCRIBE: &str = r#"{"type":"subscribe","filters":[{"type":"chat_message","room":"r1"}]}"#;

/// Runs the hot path `rounds` times; returns how many rounds every step
/// succeeded in (so nothing is optimized away, and tests can check it).
pub fn exercise(rounds: usize) -> usize {
    let verifier = TokenVerifier::new(&[SECRET.to_owned()], &AuthPolicy::default());
    let mut seen = VerifiedTokens::default();
    let filters: Vec<Filter> = [json!({"type": "chat_message", "room": "r1"})]
        .iter()
        .filter_map(|value| Filter::parse(value).ok())
        .collect();
    (0..rounds)
        .filter(|round| {
            publish_round(&verifier, &mut seen, &filters, *round)
                .and_then(|envelope| ack_round(&envelope))
                .is_some()
        })
        .count()
}

/// A publish's side: its token, body, envelope and the filters it meets.
fn publish_round(
    verifier: &TokenVerifier,
    seen: &mut VerifiedTokens,
    filters: &[Filter],
    round: usize,
) -> Option<Envelope> {
    // A new token's full check (the first request of each backend
    // token), then the cached one a repeated token gets.
    verifier.verify(black_box(TOKEN), 0).ok()?;
    verifier.verify_cached(black_box(TOKEN), 0, seen).ok()?;
    let request = PublishRequest::parse(black_box(BODY)).ok()?;
    let envelope = request.into_envelope(format!("warm-up-{round}"));
    let parsed = Envelope::parse(&envelope.to_text()?)?;
    any_matches(filters, &parsed.envelope_type, &parsed.payload).then_some(parsed)
}

/// A socket's side: its ack, the publish's answer, a subscribe.
fn ack_round(parsed: &Envelope) -> Option<()> {
    let mut book = AckBook::default();
    let sockets = vec!["s".to_owned()];
    book.begin(parsed.envelope_id.clone(), sockets, (), Tracking::default())
        .ok()?;
    let Ok(ClientFrame::Ack { result, .. }) = ClientFrame::parse(black_box(ACK)) else {
        return None;
    };
    // The sample ack names envelope "e"; it is counted against this one.
    if book.ack(&parsed.envelope_id, "s", result, 1.0) != AckOutcome::Completed(()) {
        return None;
    }
    let settled = book.finish(&parsed.envelope_id);
    let outcome = PublishOutcome {
        client_count: 1,
        results: settled.results,
        deliveries: settled.deliveries,
        truncated: settled.truncated,
        acked: None,
        timed_out: None,
        closed: None,
        ms: None,
    };
    outcome.to_text()?;
    let Ok(ClientFrame::Subscribe { .. }) = ClientFrame::parse(black_box(SUBSCRIBE)) else {
        return None;
    };
    black_box(ServerFrame::filters_changed(true, 1, 1).to_text());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_takes_the_whole_hot_path() {
        // A sample that stops parsing (say, a changed frame shape) would
        // silently warm less; this fails instead.
        assert_eq!(exercise(3), 3);
    }
}
