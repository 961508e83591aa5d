//! Pure helpers of the `hopeflow` tool: parsing `--filter` and `--claim`
//! arguments, finding the secret, and wording outcomes.

use std::path::Path;

use serde_json::{Map, Value};

use crate::api::BatchOutcome;
use crate::token;

/// The user id of the tokens the tool mints for itself (publish and the
/// operator commands, and `token --operator` without `--user`).
pub const CLI_USER: &str = "hopeflow-cli";

/// Parses `--filter type=chat_message,questId=q1` into a filter object.
/// An empty string is the match-everything filter `{}`.
pub fn parse_filter(text: &str) -> Result<Value, String> {
    let mut filter = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("filter entry {pair:?} must look like key=value"))?;
        if key.is_empty() {
            return Err(format!("filter entry {pair:?} has an empty key"));
        }
        filter.insert(key.to_owned(), Value::from(value));
    }
    Ok(Value::Object(filter))
}

/// Parses `--claim k=v`: `v` is read as JSON when it is JSON (numbers,
/// booleans, arrays...), otherwise as a string.
pub fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("claim {text:?} must look like key=value"))?;
    if key.is_empty() {
        return Err(format!("claim {text:?} has an empty key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((key.to_owned(), value))
}

/// The extra claims of `hopeflow token`: each `--claim k=v`, then, with
/// `--operator`, the operator scope added to `scope` (so `--claim
/// scope=publish --operator` gives `"publish operator"`).
pub fn token_claims(claims: &[String], operator: bool) -> Result<Map<String, Value>, String> {
    let mut extra = claims
        .iter()
        .map(|c| parse_claim(c))
        .collect::<Result<Map<_, _>, _>>()?;
    if operator {
        token::add_scope(&mut extra, token::OPERATOR_SCOPE)?;
    }
    Ok(extra)
}

/// The error line of a batch where some users failed, or `None` when all
/// were reached: `1 of 2 users failed: b (unavailable: ...)`.
pub fn batch_failures(batch: &BatchOutcome) -> Option<String> {
    let failed: Vec<String> = batch
        .failures()
        .map(|(user, error)| format!("{user} ({error})"))
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} of {} users failed: {}",
            failed.len(),
            batch.users.len(),
            failed.join(", ")
        )
    })
}

/// Why `listen` stopped, from the last close the server sent.
pub fn describe_close(code: Option<u16>, reason: &str) -> String {
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match code {
        Some(4001) => format!("disconnected by an operator (close code 4001){reason}"),
        Some(code) => format!("connection closed (close code {code}){reason}"),
        None => format!("connection closed{reason}"),
    }
}

/// The stderr line of `listen` for an [`Event::Gap`](crate::Event::Gap):
/// what may be missing, and that the application must resync.
pub fn describe_gap(
    since: u64,
    seq: u64,
    epoch: &str,
    previous_epoch: &str,
    replayed: usize,
) -> String {
    let missing = if epoch != previous_epoch {
        let new = if seq > 0 {
            format!(", and up to seq {seq} of the new one,")
        } else {
            String::new()
        };
        format!(
            "the history was reset (epoch {previous_epoch} is now {epoch}); \
             envelopes after seq {since} of the old one{new} may be missing"
        )
    } else {
        format!(
            "history did not reach back to seq {} (epoch {epoch}); \
             envelopes up to seq {seq} may be missing ({replayed} recovered)",
            since + 1
        )
    };
    format!("gap: {missing}; resync from your backend")
}

/// The secret: `--secret`, else `JWT_SECRET`, else `JWT_SECRET` in
/// `.dev.vars` of `dir`.
pub fn find_secret(flag: Option<&str>, env: Option<&str>, dir: &Path) -> Option<String> {
    let nonempty = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    flag.and_then(nonempty)
        .or_else(|| env.and_then(nonempty))
        .or_else(|| {
            let vars = std::fs::read_to_string(dir.join(".dev.vars")).ok()?;
            dev_var(&vars, "JWT_SECRET")
        })
}

/// Reads `NAME=value` (optionally quoted) from a `.dev.vars` text.
pub fn dev_var(text: &str, name: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters() {
        assert_eq!(
            parse_filter("type=chat_message,questId=q1"),
            Ok(json!({"type": "chat_message", "questId": "q1"}))
        );
        assert_eq!(parse_filter(""), Ok(json!({})));
        assert_eq!(parse_filter("n=1"), Ok(json!({"n": "1"})));
        assert_eq!(parse_filter("k=a=b"), Ok(json!({"k": "a=b"})));
        assert!(parse_filter("type").is_err());
        assert!(parse_filter("=x").is_err());
    }

    #[test]
    fn claims() {
        assert_eq!(
            parse_claim("role=admin"),
            Ok(("role".into(), json!("admin")))
        );
        assert_eq!(parse_claim("n=5"), Ok(("n".into(), json!(5))));
        assert_eq!(parse_claim("s=[\"a\"]"), Ok(("s".into(), json!(["a"]))));
        assert_eq!(
            parse_claim("scope=read publish"),
            Ok(("scope".into(), json!("read publish")))
        );
        assert!(parse_claim("nothing").is_err());
    }

    #[test]
    fn operator_tokens_add_their_scope() {
        assert_eq!(token_claims(&[], false), Ok(Map::new()));
        assert_eq!(
            token_claims(&[], true).map(Value::Object),
            Ok(json!({"scope": "operator"}))
        );
        assert_eq!(
            token_claims(&["scope=publish".into(), "role=ops".into()], true).map(Value::Object),
            Ok(json!({"scope": "publish operator", "role": "ops"}))
        );
        assert_eq!(
            token_claims(&["scope=operator".into()], true).map(Value::Object),
            Ok(json!({"scope": "operator"}))
        );
        assert_eq!(
            token_claims(&["scope=publish".into()], false).map(Value::Object),
            Ok(json!({"scope": "publish"}))
        );
        assert!(token_claims(&["scope=[1]".into()], true).is_err());
        assert!(token_claims(&["nothing".into()], false).is_err());
    }

    #[test]
    fn batch_failures_are_summed_up() {
        let batch: BatchOutcome = serde_json::from_value(json!({
            "envelopeId": "e",
            "users": [
                {"userId": "a", "clientCount": 1, "results": [null]},
                {"userId": "b", "error": {"error": "unavailable", "message": "retry"}},
            ]
        }))
        .expect("batch");
        assert_eq!(
            batch_failures(&batch).as_deref(),
            Some("1 of 2 users failed: b (unavailable: retry)")
        );
        let fine: BatchOutcome = serde_json::from_value(json!({
            "envelopeId": "e",
            "users": [{"userId": "a", "clientCount": 0, "results": []}]
        }))
        .expect("batch");
        assert_eq!(batch_failures(&fine), None);
    }

    #[test]
    fn closes_are_worded() {
        assert_eq!(
            describe_close(Some(4001), "maintenance"),
            "disconnected by an operator (close code 4001): maintenance"
        );
        assert_eq!(
            describe_close(Some(1008), ""),
            "connection closed (close code 1008)"
        );
        assert_eq!(describe_close(None, ""), "connection closed");
    }

    #[test]
    fn gaps_are_worded() {
        assert_eq!(
            describe_gap(41, 57, "E", "E", 3),
            "gap: history did not reach back to seq 42 (epoch E); envelopes up to seq 57 \
             may be missing (3 recovered); resync from your backend"
        );
        assert_eq!(
            describe_gap(41, 2, "new", "old", 0),
            "gap: the history was reset (epoch old is now new); envelopes after seq 41 \
             of the old one, and up to seq 2 of the new one, may be missing; resync from your backend"
        );
        assert_eq!(
            describe_gap(41, 0, "new", "old", 0),
            "gap: the history was reset (epoch old is now new); envelopes after seq 41 \
             of the old one may be missing; resync from your backend"
        );
    }

    #[test]
    fn secret_precedence() {
        let dir = std::env::temp_dir().join(format!("hopeflow-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join(".dev.vars"),
            "# c\nOTHER=1\nJWT_SECRET=\"from-file\"\n",
        )
        .expect("write");
        assert_eq!(
            find_secret(Some("flag"), Some("env"), &dir),
            Some("flag".into())
        );
        assert_eq!(find_secret(None, Some("env"), &dir), Some("env".into()));
        assert_eq!(find_secret(Some(" "), None, &dir), Some("from-file".into()));
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).expect("dir");
        assert_eq!(find_secret(None, None, &empty), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
