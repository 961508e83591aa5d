//! Property tests for the parsers that face clients: whatever arrives, each
//! yields a value or a typed error, never a panic, and what they accept keeps
//! the invariants the rest of the code relies on.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::domain::auth::{extract_token, protocol_offer, AuthPolicy, TokenVerifier};
use crate::domain::filter::{Filter, MAX_FILTERS_PER_MESSAGE};
use crate::domain::operator::DisconnectRequest;
use crate::domain::protocol::{ClientFrame, PublishRequest};

/// Arbitrary JSON, a few levels deep, biased towards the keys the parsers read.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_string()),
        Just("filters".to_string()),
        Just("envelopeId".to_string()),
        Just("result".to_string()),
        Just("userId".to_string()),
        Just("payload".to_string()),
        Just("exp".to_string()),
        "[a-z]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("subscribe".to_string()),
            Just("unsubscribe".to_string()),
            Just("ack".to_string()),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn client_frames_from_any_text(text in ".{0,200}") {
        let _ = ClientFrame::parse(&text);
    }

    #[test]
    fn client_frames_from_any_json(value in json_value()) {
        match ClientFrame::parse(&value.to_string()) {
            Ok(ClientFrame::Ping) => prop_assert!(false, "JSON is never a ping"),
            Ok(ClientFrame::Subscribe { .. }) => prop_assert_eq!(&value["type"], "subscribe"),
            Ok(ClientFrame::Unsubscribe { .. }) => prop_assert_eq!(&value["type"], "unsubscribe"),
            Ok(ClientFrame::Ack { envelope_id, .. }) => {
                prop_assert_eq!(&value["type"], "ack");
                prop_assert_eq!(value["envelopeId"].as_str(), Some(envelope_id.as_str()));
            }
            Ok(ClientFrame::Resume { since, epoch }) => {
                prop_assert_eq!(&value["type"], "resume");
                prop_assert_eq!(value["since"].as_u64(), Some(since));
                prop_assert_eq!(value["epoch"].as_str(), Some(epoch.as_str()));
            }
            Ok(ClientFrame::Refresh { token }) => {
                prop_assert_eq!(&value["type"], "refresh");
                prop_assert_eq!(value["token"].as_str(), token.as_deref());
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    /// What the worker sends the object is a request it parsed, written out
    /// again: it always parses back to itself, so the object's `disconnect`
    /// never gets a body it cannot read (and, reading it, closes only what
    /// was asked for).
    #[test]
    fn disconnect_requests_round_trip(socket in proptest::option::of(".{0,40}"),
                                      reconnect in any::<bool>(),
                                      reason in proptest::option::of(".{0,130}"),
                                      noise in json_value()) {
        let body = json!({"socketId": socket, "reconnect": reconnect, "reason": reason});
        for text in [body.to_string(), noise.to_string()] {
            if let Ok(request) = DisconnectRequest::parse(text.as_bytes()) {
                prop_assert_eq!(DisconnectRequest::parse(request.to_text().as_bytes()), Ok(request));
            }
        }
    }

    /// The ack fast path decides every frame as the general path does.
    #[test]
    fn ack_fast_path_agrees(value in json_value(), result in json_value(),
                            id in ".{0,12}", extra in json_value()) {
        let ack = json!({"type": "ack", "envelopeId": id, "result": result, "x": extra});
        for text in [value.to_string(), ack.to_string()] {
            prop_assert_eq!(ClientFrame::parse(&text), ClientFrame::parse_general(&text));
        }
    }

    #[test]
    fn filters_parse_and_match_anything(entries in prop::collection::vec(json_value(), 0..70),
                                        kind in ".{0,8}", payload in json_value()) {
        let parsed = Filter::parse_all(&entries);
        prop_assert_eq!(
            parsed.valid.len() + parsed.invalid.len() + parsed.ignored,
            entries.len()
        );
        prop_assert!(parsed.valid.len() + parsed.invalid.len() <= MAX_FILTERS_PER_MESSAGE);
        for filter in &parsed.valid {
            let _ = filter.matches(&kind, &payload);
        }
        prop_assert!(Filter::default().matches(&kind, &payload));
    }

    #[test]
    fn a_filter_made_from_a_payload_matches_it(kind in "[a-z]{1,8}",
                                               fields in prop::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..6)) {
        let payload: Map<String, Value> = fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut filter = payload.clone();
        filter.insert("type".into(), json!(kind));
        let filter = Filter::parse(&Value::Object(filter)).expect("strings only");
        prop_assert!(filter.matches(&kind, &Value::Object(payload.clone())));
        let other_kind = format!("{}x", kind);
        prop_assert!(!filter.matches(&other_kind, &Value::Object(payload)));
    }

    #[test]
    fn publish_bodies_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(request) = PublishRequest::parse(&bytes) {
            prop_assert!(!request.user_id.trim().is_empty());
        }
    }

    #[test]
    fn publish_bodies_from_any_json(value in json_value()) {
        if let Ok(request) = PublishRequest::parse(value.to_string().as_bytes()) {
            prop_assert_eq!(value["userId"].as_str(), Some(request.user_id.as_str()));
            prop_assert!(!request.envelope_type.is_empty());
        }
    }

    #[test]
    fn tokens_from_any_text(token in ".{0,300}", header in proptest::option::of(".{0,40}")) {
        let verifier = TokenVerifier::new(&["secret".to_string()], &AuthPolicy::default());
        let _ = verifier.verify(&token, 1_700_000_000);
        let _ = extract_token(header.as_deref(), Some(&token));
    }

    /// Any offered protocols: never a panic; a token found is one offered
    /// whole, beside `hopeflow`, and never empty.
    #[test]
    fn protocol_offers_from_any_text(header in "(hopeflow|hopeflow\\.token\\.|[ ,a-z.]){0,60}") {
        if let Ok(offer) = protocol_offer(Some(&header)) {
            if let Some(token) = offer.token {
                prop_assert!(offer.speaks && !token.is_empty());
                let offered = header.split(',').map(str::trim).any(|p| p == format!("hopeflow.token.{token}"));
                prop_assert!(offered, "{}", header);
            }
        }
    }

}

proptest! {
    // Signing makes each case slower; fewer cases keep `cargo test` quick.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn signed_tokens_with_any_claims(claims in json_value()) {
        crate::domain::hs256::install();
        let Ok(token) = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")) else {
            return Ok(());
        };
        let verifier = TokenVerifier::new(&["secret".to_string()], &AuthPolicy::default());
        if let Ok(verified) = verifier.verify(&token, 1_700_000_000) {
            prop_assert_eq!(claims["userId"].as_str(), Some(verified.user_id.as_str()));
            prop_assert!(!verified.user_id.trim().is_empty());
        }
    }
}
