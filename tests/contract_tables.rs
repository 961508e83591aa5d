//! The code tables of the worker and of its two contract documents are the
//! same: docs/openapi.yaml's HTTP error codes (each under the status the
//! worker answers it with) and close codes of the disconnect route,
//! docs/asyncapi.yaml's error frame codes (and which count as violations)
//! and close codes (reason and reconnect advice included). Also: every
//! example in the documents matches its schema, and the frames the protocol
//! module serializes match docs/asyncapi.yaml's `ServerFrame`.
//!
//! Run by `make test` (`cargo test -p hopeflow-realtime --test contract_tables`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hopeflow_realtime::auth::AuthError;
use hopeflow_realtime::error::ApiError;
use hopeflow_realtime::idempotency::InvalidKey;
use hopeflow_realtime::limits::TooManySockets;
use hopeflow_realtime::operator::InvalidDisconnect;
use hopeflow_realtime::protocol::{
    CloseCode, Envelope, ErrorCode, PublishError, PublishOutcome, ServerFrame,
};
use jsonschema::Draft;
use serde_json::{json, Value};

fn document(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read the document");
    serde_norway::from_str(&text).unwrap_or_else(|err| panic!("docs/{name}: {err}"))
}

fn openapi() -> Value {
    document("openapi.yaml")
}

fn asyncapi() -> Value {
    document("asyncapi.yaml")
}

/// Every `ApiError` the worker has, one of each variant.
fn every_api_error() -> Vec<ApiError> {
    let all = vec![
        ApiError::Unauthorized(AuthError::MissingToken),
        ApiError::Unauthorized(AuthError::InvalidToken("bad signature")),
        ApiError::Unauthorized(AuthError::Expired),
        ApiError::Forbidden,
        ApiError::NotOperator,
        ApiError::OriginNotAllowed,
        ApiError::Misconfigured,
        ApiError::NotFound,
        ApiError::MethodNotAllowed { allow: "GET" },
        ApiError::UpgradeRequired,
        ApiError::UnsupportedMediaType,
        ApiError::InvalidBody(PublishError::EmptyBody),
        ApiError::InvalidDisconnect(InvalidDisconnect("bad".into())),
        ApiError::InvalidUserPath,
        ApiError::InvalidIdempotencyKey(InvalidKey),
        ApiError::IdempotencyConflict,
        ApiError::PayloadTooLarge { limit: 1 },
        ApiError::TooManySockets(TooManySockets { max: 1 }),
        ApiError::Unavailable,
        ApiError::Internal,
    ];
    // A variant added to ApiError (or AuthError) stops this match from
    // compiling until it is added to the list above.
    for error in &all {
        match error {
            ApiError::Unauthorized(
                AuthError::MissingToken | AuthError::InvalidToken(_) | AuthError::Expired,
            )
            | ApiError::Forbidden
            | ApiError::NotOperator
            | ApiError::OriginNotAllowed
            | ApiError::Misconfigured
            | ApiError::NotFound
            | ApiError::MethodNotAllowed { .. }
            | ApiError::UpgradeRequired
            | ApiError::UnsupportedMediaType
            | ApiError::InvalidBody(_)
            | ApiError::InvalidDisconnect(_)
            | ApiError::InvalidUserPath
            | ApiError::InvalidIdempotencyKey(_)
            | ApiError::IdempotencyConflict
            | ApiError::PayloadTooLarge { .. }
            | ApiError::TooManySockets(_)
            | ApiError::Unavailable
            | ApiError::Internal => {}
        }
    }
    all
}

/// The worker's HTTP error codes and the statuses each is sent with.
fn worker_http_codes() -> BTreeMap<&'static str, BTreeSet<u16>> {
    let mut codes: BTreeMap<&'static str, BTreeSet<u16>> = BTreeMap::new();
    for error in every_api_error() {
        codes
            .entry(error.code())
            .or_default()
            .insert(error.status());
    }
    codes
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(target) => resolve(
            doc,
            doc.pointer(target.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{target} does not resolve")),
        ),
        None => value,
    }
}

/// The `error` codes a documented error response names (`allOf: [Error,
/// {properties: {error: {enum | const}}}]`).
fn response_codes(doc: &Value, response: &Value) -> Option<BTreeSet<String>> {
    let schema = resolve(doc, response)
        .pointer("/content/application~1json/schema")
        .map(|s| resolve(doc, s))?;
    let parts = schema.get("allOf")?.as_array()?;
    let is_error = parts
        .iter()
        .any(|p| p["$ref"] == "#/components/schemas/Error");
    if !is_error {
        return None;
    }
    let error = parts.iter().find_map(|p| p.pointer("/properties/error"))?;
    Some(match (error.get("enum"), error.get("const")) {
        (Some(list), _) => strings(list),
        (None, Some(one)) => BTreeSet::from([one.as_str().expect("a code").to_owned()]),
        _ => panic!("an error response without its codes: {response}"),
    })
}

#[test]
fn http_error_codes_are_the_workers() {
    let doc = openapi();
    let documented = strings(&doc["components"]["schemas"]["HttpErrorCode"]["enum"]);
    let worker: BTreeSet<String> = worker_http_codes().keys().map(|c| c.to_string()).collect();
    assert_eq!(
        documented, worker,
        "docs/openapi.yaml's HttpErrorCode is not src/domain/error.rs's set of codes"
    );
}

#[test]
fn each_documented_error_code_is_under_the_status_the_worker_sends() {
    let doc = openapi();
    let worker = worker_http_codes();
    let mut seen: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut responses: Vec<(u16, &Value, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Some(listed) = operation.get("responses").and_then(Value::as_object) else {
                continue;
            };
            for (status, response) in listed {
                let status: u16 = status.parse().expect("a numeric status");
                responses.push((status, response, format!("{method} {path} {status}")));
            }
        }
    }
    // The answer to a method a path does not have, and to an unknown path.
    for (name, status) in [("MethodNotAllowed", 405), ("NotFound", 404)] {
        responses.push((
            status,
            &doc["components"]["responses"][name],
            format!("components/responses/{name}"),
        ));
    }
    for (status, response, label) in responses {
        let Some(codes) = response_codes(&doc, response) else {
            assert!(
                status < 400 || resolve(&doc, response).get("content").is_none(),
                "{label}: an error status whose body is not an Error"
            );
            continue;
        };
        for code in codes {
            let statuses = worker
                .get(code.as_str())
                .unwrap_or_else(|| panic!("{label}: {code} is no code of the worker"));
            assert!(
                statuses.contains(&status),
                "{label}: the worker sends {code} with {statuses:?}, not {status}"
            );
            seen.entry(code).or_default().insert(status);
        }
    }
    for (code, statuses) in &worker {
        assert!(
            seen.contains_key(*code),
            "{code} ({statuses:?}) is in no response of docs/openapi.yaml"
        );
    }
}

#[test]
fn error_frame_codes_are_the_workers() {
    let doc = asyncapi();
    let table = &doc["components"]["schemas"]["ErrorCode"];
    let documented = strings(&table["enum"]);
    let worker: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        documented, worker,
        "docs/asyncapi.yaml's ErrorCode is not ErrorCode::ALL"
    );
    let violations: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .filter(|c| c.is_violation())
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        strings(&table["x-violation"]["codes"]),
        violations,
        "docs/asyncapi.yaml's x-violation codes are not those ErrorCode::is_violation counts"
    );
}

#[test]
fn close_codes_are_the_workers() {
    let doc = asyncapi();
    let documented: BTreeMap<u64, (String, bool)> = doc["components"]["schemas"]["CloseCode"]
        ["oneOf"]
        .as_array()
        .expect("CloseCode.oneOf")
        .iter()
        .map(|entry| {
            (
                entry["const"].as_u64().expect("a code"),
                (
                    entry["x-reason"].as_str().expect("x-reason").to_owned(),
                    entry["x-reconnect"].as_bool().expect("x-reconnect"),
                ),
            )
        })
        .collect();
    let worker: BTreeMap<u64, (String, bool)> = CloseCode::ALL
        .iter()
        .map(|c| (u64::from(c.code()), (c.reason().to_owned(), c.reconnect())))
        .collect();
    assert_eq!(
        documented, worker,
        "docs/asyncapi.yaml's CloseCode (code, x-reason, x-reconnect) is not CloseCode::ALL"
    );
    // docs/openapi.yaml names the codes the disconnect route closes with.
    let disconnect: BTreeSet<u64> = openapi()["components"]["schemas"]["DisconnectCloseCode"]
        ["enum"]
        .as_array()
        .expect("DisconnectCloseCode.enum")
        .iter()
        .map(|c| c.as_u64().expect("a code"))
        .collect();
    assert_eq!(
        disconnect,
        BTreeSet::from([
            u64::from(CloseCode::Reauthenticate.code()),
            u64::from(CloseCode::Disconnected.code())
        ])
    );
}

/// Panics unless `instance` matches the schema at `pointer` of `doc`.
fn assert_matches(doc: &Value, draft: Draft, pointer: &str, instance: &Value, what: &str) {
    let mut root = doc.clone();
    let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
    root["$ref"] = Value::from(format!("#{fragment}"));
    let validator = jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|err| panic!("#{pointer} does not compile: {err}"));
    let problems: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        problems.is_empty(),
        "{what} does not match #{pointer}: {problems:?}\n{instance}"
    );
}

/// JSON pointer escaping of one key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[test]
fn openapi_examples_match_their_schemas() {
    let doc = openapi();
    let mut checked = 0;
    // Every media type object with a schema and examples, wherever it is.
    fn walk(value: &Value, pointer: String, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if map.contains_key("schema") && map.contains_key("examples") {
                    found.push(pointer.clone());
                }
                for (key, child) in map {
                    walk(child, format!("{pointer}/{}", escape(key)), found);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{pointer}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    let mut media = Vec::new();
    walk(&doc, String::new(), &mut media);
    for pointer in media {
        let examples = doc
            .pointer(&format!("{pointer}/examples"))
            .expect("examples");
        for (name, example) in examples.as_object().expect("named examples") {
            assert_matches(
                &doc,
                Draft::Draft202012,
                &format!("{pointer}/schema"),
                &example["value"],
                &format!("example {name} of {pointer}"),
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} examples found");
}

#[test]
fn asyncapi_examples_match_their_schemas() {
    let doc = asyncapi();
    let mut checked = 0;
    for (name, message) in doc["components"]["messages"].as_object().expect("messages") {
        let schema = message["payload"]["$ref"]
            .as_str()
            .expect("a payload $ref")
            .trim_start_matches('#');
        for example in message["examples"].as_array().into_iter().flatten() {
            assert_matches(
                &doc,
                Draft::Draft7,
                schema,
                &example["payload"],
                &format!("an example of {name}"),
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} examples found");
}

/// What the protocol module sends, serialized by the worker's own code.
#[test]
fn the_workers_frames_match_server_frame() {
    let doc = asyncapi();
    let server_frame = "/components/schemas/ServerFrame";
    let mut frames: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|code| ServerFrame::error(*code, code.description()).to_text())
        .collect();
    frames.extend([
        ServerFrame::Subscribed {
            added: 1,
            total: 2,
            seq: None,
            epoch: None,
        }
        .to_text(),
        ServerFrame::Subscribed {
            added: 0,
            total: 64,
            seq: Some(0),
            epoch: Some("e1".into()),
        }
        .to_text(),
        ServerFrame::Unsubscribed {
            removed: 1,
            total: 0,
        }
        .to_text(),
        ServerFrame::Resumed {
            since: 3,
            seq: 9,
            replayed: 6,
            complete: true,
            epoch: "e1".into(),
        }
        .to_text(),
        ServerFrame::too_many_filters(3).to_text(),
    ]);
    let mut envelope = Envelope {
        envelope_id: "5b0c3a9e-2f7d-4c1a-9b8e-1d2c3b4a5f60".into(),
        envelope_type: "chat".into(),
        payload: json!({"text": "hi", "n": [1, null]}),
        seq: None,
        recovered: false,
    };
    frames.push(envelope.to_text().expect("envelope"));
    envelope.seq = Some(7);
    envelope.recovered = true;
    frames.push(envelope.to_text().expect("envelope"));
    for text in &frames {
        let frame: Value = serde_json::from_str(text).expect("JSON");
        assert_matches(&doc, Draft::Draft7, server_frame, &frame, "a frame");
    }
    assert_matches(&doc, Draft::Draft7, server_frame, &json!("pong"), "pong");
    // A /publish answer as the worker serializes it.
    let outcome = PublishOutcome {
        client_count: 1,
        results: vec![json!({"ok": true})],
        deliveries: None,
        truncated: true,
        acked: Some(1),
        timed_out: Some(0),
        closed: Some(0),
        ms: Some(12),
    };
    let answer: Value = serde_json::from_str(&outcome.to_text().expect("text")).expect("JSON");
    assert_matches(
        &openapi(),
        Draft::Draft202012,
        "/components/schemas/PublishResult",
        &answer,
        "a publish answer",
    );
}
