//! The contract: docs/openapi.yaml and docs/asyncapi.yaml, loaded once and
//! checked against every HTTP answer [`super::http::reply`] reads (the
//! response of its route, method and status: headers and body) and every
//! frame a [`super::Client`] receives (text frames against `ServerFrame`,
//! the server's close frames against `CloseFrame`). A mismatch fails the
//! test that read it, naming the schema and showing what arrived. Beside
//! them docs/webhooks.schema.json, which every webhook body the tests'
//! receivers get must match (tests/e2e/webhooks.rs).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::{Draft, Validator};
use serde_json::{json, Value};

/// One document, as JSON, with the validators compiled from it so far.
struct Document {
    name: &'static str,
    root: Value,
    draft: Draft,
    compiled: Mutex<HashMap<String, Arc<Validator>>>,
}

impl Document {
    fn load(name: &'static str, draft: Draft) -> Document {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let root = serde_norway::from_str(&text)
            .unwrap_or_else(|err| panic!("docs/{name} does not parse: {err}"));
        Document {
            name,
            root,
            draft,
            compiled: Mutex::default(),
        }
    }

    /// The value at `pointer`, following `$ref`s to it: its own pointer
    /// and the value.
    fn at(&self, pointer: &str) -> Option<(String, &Value)> {
        let mut pointer = pointer.to_owned();
        for _ in 0..8 {
            let value = self.root.pointer(&pointer)?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(target) if target.starts_with('#') => pointer = target[1..].to_owned(),
                _ => return Some((pointer, value)),
            }
        }
        None
    }

    /// The schema at `pointer`, compiled once; its `$ref`s resolve in
    /// the whole document (which is the root it is compiled from).
    fn validator(&self, pointer: &str) -> Arc<Validator> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        compiled
            .entry(pointer.to_owned())
            .or_insert_with(|| {
                let mut root = self.root.clone();
                // The empty pointer is the whole document, compiled as is.
                if !pointer.is_empty() {
                    root["$ref"] = Value::from(format!("#{}", uri_fragment(pointer)));
                }
                let validator = jsonschema::options()
                    .with_draft(self.draft)
                    .should_validate_formats(true)
                    .build(&root)
                    .unwrap_or_else(|err| {
                        panic!("docs/{}#{pointer} does not compile: {err}", self.name)
                    });
                Arc::new(validator)
            })
            .clone()
    }

    /// Why `instance` does not match the schema at `pointer` (empty when it does).
    fn problems(&self, pointer: &str, instance: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(instance)
            .map(|err| format!("{err} (at {:?})", err.instance_path().as_str()))
            .collect()
    }

    /// Panics unless `instance` matches the schema at `pointer`.
    fn require(&self, pointer: &str, instance: &Value, what: &str) {
        let problems = self.problems(pointer, instance);
        assert!(
            problems.is_empty(),
            "{what} does not match docs/{}#{pointer}:\n  {}\n{what}: {instance}",
            self.name,
            problems.join("\n  ")
        );
    }
}

struct Contract {
    openapi: Document,
    asyncapi: Document,
    webhooks: Document,
}

fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| Contract {
        // OpenAPI 3.1's schemas are JSON Schema 2020-12; AsyncAPI 3.0's
        // default format is a superset of draft-07.
        openapi: Document::load("openapi.yaml", Draft::Draft202012),
        asyncapi: Document::load("asyncapi.yaml", Draft::Draft7),
        // A JSON Schema document of its own (JSON is YAML: it loads alike).
        webhooks: Document::load(WEBHOOKS_SCHEMA, Draft::Draft202012),
    })
}

/// A JSON pointer as a URI fragment (`{userId}` -> `%7BuserId%7D`).
fn uri_fragment(pointer: &str) -> String {
    pointer
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b'@' | b'!' | b'$' | b'&' => {
                (b as char).to_string()
            }
            b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A JSON pointer's escaping of one key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

const SERVER_FRAME: &str = "/components/schemas/ServerFrame";
const CLOSE_FRAME: &str = "/components/schemas/CloseFrame";

/// A text frame the server sent must be one of docs/asyncapi.yaml's
/// server frames: `pong`, or JSON matching `ServerFrame`.
pub fn check_frame(text: &str) {
    let doc = &contract().asyncapi;
    let frame = if text == "pong" {
        Value::from(text)
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(value) if !value.is_string() => value,
            _ => panic!(
                "the server sent a text frame that is neither `pong` nor a JSON frame \
                 (docs/asyncapi.yaml#{SERVER_FRAME}): {text}"
            ),
        }
    };
    let problems = doc.problems(SERVER_FRAME, &frame);
    if problems.is_empty() {
        return;
    }
    // `oneOf` alone says only that nothing matched: name the frame it
    // looks like and why it is not that.
    let specific = if frame.get("envelopeId").is_some() {
        Some("Envelope")
    } else {
        match frame.get("type").and_then(Value::as_str) {
            Some("subscribed") => Some("SubscribedFrame"),
            Some("unsubscribed") => Some("UnsubscribedFrame"),
            Some("resumed") => Some("ResumedFrame"),
            Some("error") => Some("ErrorFrame"),
            _ => None,
        }
    };
    if let Some(name) = specific {
        doc.require(
            &format!("/components/schemas/{name}"),
            &frame,
            "a server frame",
        );
    }
    panic!(
        "a server frame does not match docs/asyncapi.yaml#{SERVER_FRAME}:\n  {}\nframe: {text}",
        problems.join("\n  ")
    );
}

/// Frames the Rust client's observer saw that failed their check.
static CLIENT_VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Options of the Rust client (`hopeflow_client`) that check every frame
/// it receives against docs/asyncapi.yaml. The observer runs on the
/// client's task, where a panic would only end the client, so a
/// mismatch is recorded and fails the run (main.rs) naming the frame.
pub fn checked(options: hopeflow_client::ClientOptions) -> hopeflow_client::ClientOptions {
    options.with_frame_observer(|frame| {
        let checked = std::panic::catch_unwind(|| match frame {
            hopeflow_client::ServerFrameText::Text(text) => check_frame(text),
            hopeflow_client::ServerFrameText::Close(code, reason) => check_close(code, reason),
        });
        if let Err(panic) = checked {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| format!("{frame:?}"));
            if let Ok(mut all) = CLIENT_VIOLATIONS.lock() {
                all.push(why);
            }
        }
    })
}

pub fn client_frame_violations() -> Vec<String> {
    CLIENT_VIOLATIONS
        .lock()
        .map(|all| all.clone())
        .unwrap_or_default()
}

/// A close frame the server sent must carry one of docs/asyncapi.yaml's
/// close codes.
pub fn check_close(code: u16, reason: &str) {
    contract().asyncapi.require(
        CLOSE_FRAME,
        &json!({ "code": code, "reason": reason }),
        "a close frame from the server",
    );
}

/// The JSON Schema of a webhook request's body, in docs/.
pub const WEBHOOKS_SCHEMA: &str = "webhooks.schema.json";

/// docs/webhooks.schema.json as JSON.
pub fn webhooks_schema() -> &'static Value {
    &contract().webhooks.root
}

/// Why `body` (a webhook request's body as sent) does not match
/// docs/webhooks.schema.json; empty when it does.
pub fn webhook_body_problems(body: &str) -> Vec<String> {
    match serde_json::from_str::<Value>(body) {
        Ok(instance) => contract().webhooks.problems("", &instance),
        Err(err) => vec![format!("the body is not JSON: {err}")],
    }
}

/// Why `instance` does not match `schema` (a JSON Schema 2020-12 document,
/// checked against its meta-schema first, compiled as the documents are):
/// to show the checks above fail a wrong schema as well as a wrong body.
pub fn problems_against(schema: &Value, instance: &Value) -> Result<Vec<String>, String> {
    let validator = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|err| err.to_string())?;
    Ok(validator
        .iter_errors(instance)
        .map(|err| format!("{err} (at {:?})", err.instance_path().as_str()))
        .collect())
}

/// The documented path (template) `path` is an instance of.
fn path_template<'d>(doc: &'d Document, path: &str) -> Option<&'d str> {
    let segments: Vec<&str> = path.split('/').collect();
    doc.root["paths"].as_object()?.keys().find_map(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        let matches = parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(part, segment)| part.starts_with('{') || part == segment);
        matches.then_some(template.as_str())
    })
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// An HTTP answer must be the documented response of its path, method
/// and status, in docs/openapi.yaml: its documented headers (present
/// when required, valid when present) and its body. A path the document
/// does not list must answer `NotFound`; a method its path does not list,
/// `MethodNotAllowed` with `Allow` naming exactly the path's methods.
pub fn check_http(
    method: &str,
    path: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) {
    let doc = &contract().openapi;
    let label = format!("{method} {path} -> {status}");
    let Some(template) = path_template(doc, path) else {
        assert_eq!(
            status, 404,
            "{label}: docs/openapi.yaml lists no such path, so only 404 not_found; body: {body}"
        );
        return check_response(
            doc,
            &label,
            method,
            "/components/responses/NotFound",
            headers,
            body,
        );
    };
    let item = format!("/paths/{}", escape(template));
    let operation = format!("{item}/{}", method.to_ascii_lowercase());
    if doc.root.pointer(&operation).is_none() {
        assert_eq!(
            status, 405,
            "{label}: docs/openapi.yaml lists no {method} on {template}, so only 405; body: {body}"
        );
        let listed: BTreeSet<String> = doc.root["paths"][template]
            .as_object()
            .into_iter()
            .flat_map(|item| item.keys())
            .filter(|key| METHODS.contains(&key.as_str()))
            .map(|key| key.to_ascii_uppercase())
            .collect();
        let allow: BTreeSet<String> = headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(
            allow, listed,
            "{label}: Allow is not the methods docs/openapi.yaml lists for {template}"
        );
        return check_response(
            doc,
            &label,
            method,
            "/components/responses/MethodNotAllowed",
            headers,
            body,
        );
    }
    let responses = format!("{operation}/responses");
    let response = [
        status.to_string(),
        format!("{}XX", status / 100),
        "default".to_owned(),
    ]
    .into_iter()
    .map(|key| format!("{responses}/{key}"))
    .find(|pointer| doc.root.pointer(pointer).is_some())
    .unwrap_or_else(|| {
        panic!(
            "{label}: docs/openapi.yaml does not list status {status} for {method} {template} \
             (#{responses}); body: {body}"
        )
    });
    check_response(doc, &label, method, &response, headers, body);
}

fn check_response(
    doc: &Document,
    label: &str,
    method: &str,
    pointer: &str,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) {
    let (pointer, response) = doc
        .at(pointer)
        .unwrap_or_else(|| panic!("docs/openapi.yaml#{pointer} is missing"));
    for name in response["headers"]
        .as_object()
        .into_iter()
        .flat_map(|h| h.keys())
    {
        let (header_pointer, header) = doc
            .at(&format!("{pointer}/headers/{}", escape(name)))
            .unwrap_or_else(|| {
                panic!("docs/openapi.yaml#{pointer}: header {name} does not resolve")
            });
        let Some(value) = headers.get(name.as_str()) else {
            assert!(
                header["required"] != true,
                "{label}: the header {name} (docs/openapi.yaml#{header_pointer}) is missing"
            );
            continue;
        };
        let value = value.to_str().unwrap_or_default();
        let schema = format!("{header_pointer}/schema");
        // Header values are text; an integer header is read as one.
        let instance = match doc.at(&schema).map(|(_, s)| s["type"] == "integer") {
            Some(true) => value
                .parse::<i64>()
                .map_or_else(|_| Value::from(value), Value::from),
            _ => Value::from(value),
        };
        doc.require(&schema, &instance, &format!("{label}: header {name}"));
    }
    if method == "HEAD" {
        assert!(
            body.is_empty(),
            "{label}: a HEAD answer with a body: {body}"
        );
        return;
    }
    let Some(content) = response["content"].as_object() else {
        assert!(
            body.is_empty(),
            "{label}: docs/openapi.yaml#{pointer} documents no body, got: {body}"
        );
        return;
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    assert!(
        content.contains_key(&media_type),
        "{label}: Content-Type {content_type:?} is not one docs/openapi.yaml#{pointer} documents"
    );
    if media_type == "application/json" {
        let instance: Value = serde_json::from_str(body)
            .unwrap_or_else(|_| panic!("{label}: the body is not JSON: {body}"));
        doc.require(
            &format!("{pointer}/content/application~1json/schema"),
            &instance,
            &format!("{label}: the body"),
        );
    }
}
