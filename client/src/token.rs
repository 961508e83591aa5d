//! Minting and checking HS256 tokens, for tests, tools and local development.
//! Verification is the server's own code ([`hopeflow_realtime::auth`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use hopeflow_realtime::auth::TokenVerifier;
pub use hopeflow_realtime::auth::{AuthError, AuthPolicy, Claims};

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs a token for `user_id` with `secret`: `exp` is now + `ttl` when given,
/// and `extra` claims are added (they cannot replace `userId` or `exp`).
///
/// ```
/// use hopeflow_client::token::{mint, verify};
/// use serde_json::json;
///
/// let token = mint("dev-secret", "alice", None, json!({"role": "tester"}).as_object().cloned().unwrap_or_default());
/// let claims = verify("dev-secret", &token).expect("valid");
/// assert_eq!(claims.user_id, "alice");
/// ```
pub fn mint(
    secret: &str,
    user_id: &str,
    ttl: Option<Duration>,
    extra: Map<String, Value>,
) -> String {
    hopeflow_realtime::hs256::install();
    let mut claims = extra;
    claims.insert("userId".into(), Value::from(user_id));
    match ttl {
        Some(ttl) => {
            claims.insert("exp".into(), Value::from(now_secs() + ttl.as_secs()));
        }
        None => {
            claims.remove("exp");
        }
    }
    // Encoding a JSON object with an HMAC key cannot fail.
    encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// The scope the operator routes need on a server with the default
/// `OPERATOR_SCOPE`: the server's own default.
pub const OPERATOR_SCOPE: &str = hopeflow_realtime::config::DEFAULT_OPERATOR_SCOPE;

/// `{"scope": "operator"}`: extra claims for [`mint`] that make an operator
/// token (for the default `OPERATOR_SCOPE`).
pub fn operator_claims() -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("scope".into(), Value::from(OPERATOR_SCOPE));
    claims
}

/// Adds `scope` to the space-separated `scope` claim of `claims` (created
/// when absent, left alone when the server already reads `scope` in it:
/// [`Claims::has_scope`]). Fails when the claim is not a string, which the
/// server would not read as scopes.
///
/// ```
/// use hopeflow_client::token::add_scope;
/// use serde_json::{json, Map};
///
/// let mut claims = Map::new();
/// claims.insert("scope".into(), json!("publish"));
/// add_scope(&mut claims, "operator").expect("a string scope");
/// assert_eq!(claims["scope"], "publish operator");
/// ```
pub fn add_scope(claims: &mut Map<String, Value>, scope: &str) -> Result<(), String> {
    match claims.get_mut("scope") {
        None => {
            claims.insert("scope".into(), Value::from(scope));
            Ok(())
        }
        Some(Value::String(scopes)) => {
            let listed = Claims {
                user_id: String::new(),
                scope: Some(scopes.clone()),
                expires_at: None,
            }
            .has_scope(scope);
            if !listed {
                let joined = format!("{} {scope}", scopes.trim());
                *scopes = joined.trim_start().to_owned();
            }
            Ok(())
        }
        Some(other) => Err(format!(
            "the scope claim must be a space-separated string to add {scope:?} to it, not {other}"
        )),
    }
}

/// Checks a token exactly as the server does with default settings.
pub fn verify(secret: &str, token: &str) -> Result<Claims, AuthError> {
    TokenVerifier::new(&[secret.to_owned()], &AuthPolicy::default()).verify(token, now_secs())
}

/// The token's payload, decoded without checking anything (for display only).
pub fn payload(token: &str) -> Option<Value> {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .ok()
        .map(|data| data.claims)
}

/// Parses a duration like `90s`, `30m`, `1h`, `2d` (or plain seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 30m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}: use s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mint_and_verify() {
        let mut extra = Map::new();
        extra.insert("role".into(), json!("admin"));
        extra.insert("userId".into(), json!("mallory"));
        let token = mint("s", "alice", Some(Duration::from_secs(60)), extra);
        assert_eq!(verify("s", &token).map(|c| c.user_id), Ok("alice".into()));
        let claims = payload(&token).expect("payload");
        assert_eq!(claims["role"], "admin");
        assert!(claims["exp"].as_u64().is_some_and(|exp| exp > now_secs()));
        assert!(verify("other", &token).is_err());
    }

    #[test]
    fn expired_tokens_say_so() {
        let mut extra = Map::new();
        extra.insert("exp".into(), json!(now_secs() - 3600));
        // Without a ttl, an `exp` among the extra claims is dropped.
        let token = mint("s", "a", None, extra);
        assert!(payload(&token).expect("payload").get("exp").is_none());
        hopeflow_realtime::hs256::install();
        let expired = encode(
            &Header::new(Algorithm::HS256),
            &json!({"userId": "a", "exp": now_secs() - 3600}),
            &EncodingKey::from_secret(b"s"),
        )
        .expect("encode");
        assert_eq!(verify("s", &expired), Err(AuthError::Expired));
    }

    #[test]
    fn scopes_are_added_once() {
        let scope = |claims: Value| {
            let mut claims = claims.as_object().cloned().unwrap_or_default();
            add_scope(&mut claims, "operator").map(|()| claims.get("scope").cloned())
        };
        assert_eq!(scope(json!({})), Ok(Some(json!("operator"))));
        assert_eq!(
            scope(json!({"scope": "publish"})),
            Ok(Some(json!("publish operator")))
        );
        assert_eq!(
            scope(json!({"scope": "operator publish"})),
            Ok(Some(json!("operator publish")))
        );
        // "operators" is another scope, not this one.
        assert_eq!(
            scope(json!({"scope": "operators"})),
            Ok(Some(json!("operators operator")))
        );
        assert_eq!(scope(json!({"scope": " "})), Ok(Some(json!("operator"))));
        // Listed only for a separator the server splits on (ASCII
        // whitespace): after a no-break space it is added.
        assert_eq!(
            scope(json!({"scope": "publish\u{a0}operator"})),
            Ok(Some(json!("publish\u{a0}operator operator")))
        );
        assert_eq!(
            scope(json!({"scope": "publish\toperator"})),
            Ok(Some(json!("publish\toperator")))
        );
        assert!(scope(json!({"scope": ["operator"]})).is_err());
        assert_eq!(operator_claims().get("scope"), Some(&json!(OPERATOR_SCOPE)));
    }

    /// A server with default settings (only `JWT_SECRET` set) takes a token
    /// minted with [`operator_claims`] on its operator routes.
    #[test]
    fn operator_tokens_pass_a_default_servers_check() {
        let config = hopeflow_realtime::config::Config::load(|name| {
            (name == "JWT_SECRET").then(|| "s".to_owned())
        })
        .expect("config");
        let token = mint("s", "ops", None, operator_claims());
        let claims = verify("s", &token).expect("valid");
        assert!(claims.has_scope(&config.operator_scope));
        assert!(!verify("s", &mint("s", "ops", None, Map::new()))
            .expect("valid")
            .has_scope(&config.operator_scope));
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "1y", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
