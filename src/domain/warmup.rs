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
    let mut ok = 0;
    for round in 0..rounds {
        // A new token's full check (the first request of each backend
        // token), then the cached one a repeated token gets.
        if verifier.verify(black_box(TOKEN), 0).is_err()
            || verifier
                .verify_cached(black_box(TOKEN), 0, &mut seen)
                .is_err()
        {
            continue;
        }
        let Ok(request) = PublishRequest::parse(black_box(BODY)) else {
            continue;
        };
        let envelope = request.into_envelope(format!("warm-up-{round}"));
        let Some(text) = envelope.to_text() else {
            continue;
        };
        let Some(parsed) = Envelope::parse(&text) else {
            continue;
        };
        if !any_matches(&filters, &parsed.envelope_type, &parsed.payload) {
            continue;
        }
        let mut book = AckBook::default();
        if book
            .begin(
                parsed.envelope_id.clone(),
                vec!["s".to_owned()],
                (),
                Tracking::default(),
            )
            .is_err()
        {
            continue;
        }
        let Ok(ClientFrame::Ack {
            envelope_id,
            result,
        }) = ClientFrame::parse(black_box(ACK))
        else {
            continue;
        };
        // The sample ack names envelope "e"; count it against this one.
        let _ = envelope_id;
        if book.ack(&parsed.envelope_id, "s", result, 1.0) != AckOutcome::Completed(()) {
            continue;
        }
        let settled = book.finish(&parsed.envelope_id);
        let outcome = PublishOutcome {
            client_count: 1,
            results: settled.results,
            deliveries: settled.deliveries,
            truncated: settled.truncated,
        };
        if outcome.to_text().is_none() {
            continue;
        }
        if !matches!(
            ClientFrame::parse(black_box(SUBSCRIBE)),
            Ok(ClientFrame::Subscribe { .. })
        ) {
            continue;
        }
        let confirmation = ServerFrame::Subscribed {
            added: 1,
            total: 1,
            seq: None,
            epoch: None,
        };
        black_box(confirmation.to_text());
        ok += 1;
    }
    ok
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
