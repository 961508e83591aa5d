//! Pure helpers of the `hopeflow` tool: parsing `--filter` and `--claim`
//! arguments and finding the secret.

use std::path::Path;

use serde_json::{Map, Value};

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
