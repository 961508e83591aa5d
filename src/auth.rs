//! Token extraction and HS256 JWT verification.
//!
//! jsonwebtoken checks the header (algorithm pinned to HS256) and the signature;
//! the time claims are checked here against a `now` the caller passes in, so
//! the checks are testable and a wrongly typed `exp`/`nbf` is rejected rather
//! than skipped.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Tokens longer than this are rejected before any parsing or crypto.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The verified identity carried by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Whose sockets this token may open (the Durable Object is named after it).
    pub user_id: String,
}

/// Why a request was not authenticated. Every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Neither an `Authorization: Bearer` header nor a `?token=` parameter.
    MissingToken,
    /// Bad encoding, algorithm, signature, claim type, or no usable `userId`.
    InvalidToken(&'static str),
    /// `exp` is in the past (beyond the leeway).
    Expired,
}

impl AuthError {
    /// The stable error code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Expired => "token_expired",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::MissingToken => f.write_str(
                "a token is required: send \"Authorization: Bearer <jwt>\" or ?token=<jwt>",
            ),
            AuthError::InvalidToken(why) => write!(f, "invalid token: {why}"),
            AuthError::Expired => f.write_str("token has expired"),
        }
    }
}

/// Picks the token of a request: a Bearer `Authorization` header wins over the
/// `token` query parameter, so the choice is deterministic when both are sent.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<&'a str> {
    let from_header = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    from_header.or(query).filter(|token| !token.is_empty())
}

/// Verifies tokens signed with the shared secret.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// A verifier for `secret`; callers refuse to build one from an empty secret.
    pub fn new(secret: &[u8]) -> TokenVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        // Time claims are checked in `check_time` with the caller's clock; no
        // claim is mandatory (a token without `exp` is accepted).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        TokenVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies `token` at time `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken("token is too long"));
        }
        let raw = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::InvalidToken(describe(e.kind())))?
            .claims;
        check_time(&raw, now)?;
        match raw.user_id {
            Some(Value::String(id)) if !id.trim().is_empty() => Ok(Claims { user_id: id }),
            _ => Err(AuthError::InvalidToken(
                "payload must carry a non-empty string userId",
            )),
        }
    }
}

/// The claims this service reads. Deriving `Deserialize` on a struct rejects a
/// token whose payload repeats one of these keys, so a duplicated `userId`
/// cannot smuggle a second identity.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(rename = "userId", default, deserialize_with = "present")]
    user_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
}

/// Keeps an explicit `null` as `Some(Value::Null)` so it is rejected as a wrong
/// type instead of read as absent.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

fn check_time(raw: &RawClaims, now: u64) -> Result<(), AuthError> {
    let now = now as f64;
    let leeway = LEEWAY_SECS as f64;
    if let Some(exp) = &raw.exp {
        let exp = exp
            .as_f64()
            .ok_or(AuthError::InvalidToken("exp must be a number"))?;
        if exp < now - leeway {
            return Err(AuthError::Expired);
        }
    }
    if let Some(nbf) = &raw.nbf {
        let nbf = nbf
            .as_f64()
            .ok_or(AuthError::InvalidToken("nbf must be a number"))?;
        if nbf > now + leeway {
            return Err(AuthError::InvalidToken("token is not valid yet (nbf)"));
        }
    }
    Ok(())
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => "signature does not match",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm must be HS256",
        ErrorKind::Json(_) => "payload is not a JSON object of the expected shape",
        _ => "token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_700_000_000;

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    fn verify(token: &str) -> Result<Claims, AuthError> {
        TokenVerifier::new(SECRET).verify(token, NOW)
    }

    fn assert_invalid(claims: Value) {
        let outcome = verify(&token(claims.clone()));
        assert!(
            matches!(outcome, Err(AuthError::InvalidToken(_))),
            "{claims}: {outcome:?}"
        );
    }

    #[test]
    fn accepts_user_id_with_and_without_exp() {
        let ok = Ok(Claims {
            user_id: "alice".into(),
        });
        assert_eq!(verify(&token(json!({"userId": "alice"}))), ok);
        assert_eq!(
            verify(&token(
                json!({"userId": "alice", "exp": NOW + 60, "role": "x"})
            )),
            ok
        );
        // Within the leeway.
        assert_eq!(
            verify(&token(json!({"userId": "alice", "exp": NOW - 10}))),
            ok
        );
    }

    #[test]
    fn expired_is_distinct() {
        assert_eq!(
            verify(&token(json!({"userId": "a", "exp": NOW - 3600}))),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn rejects_bad_user_ids() {
        for claims in [
            json!({}),
            json!({"userId": ""}),
            json!({"userId": "   "}),
            json!({"userId": 5}),
            json!({"userId": null}),
            json!({"sub": "alice"}),
        ] {
            assert_invalid(claims);
        }
    }

    #[test]
    fn rejects_wrongly_typed_time_claims_and_future_nbf() {
        for claims in [
            json!({"userId": "a", "exp": "9999999999"}),
            json!({"userId": "a", "exp": null}),
            json!({"userId": "a", "nbf": "0"}),
            json!({"userId": "a", "nbf": NOW + 3600}),
        ] {
            assert_invalid(claims);
        }
    }

    #[test]
    fn rejects_wrong_secret_algorithm_and_garbage() {
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"userId": "a"}),
            &EncodingKey::from_secret(b"other"),
        )
        .expect("encode");
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"userId": "a"}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        let good = token(json!({"userId": "a"}));
        let (message, _signature) = good.rsplit_once('.').expect("three parts");
        let unsigned = format!("{message}.");
        let two_parts = message.to_owned();
        let alg_none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            good.split('.').nth(1).expect("payload")
        );
        for bad in [
            other,
            hs512,
            unsigned,
            two_parts,
            alg_none,
            "x.y.z".into(),
            String::new(),
        ] {
            assert!(
                matches!(verify(&bad), Err(AuthError::InvalidToken(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn rejects_duplicated_user_id_key() {
        use base64_url as b64;
        let header = b64::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64::encode(br#"{"userId":"alice","userId":"mallory"}"#);
        let message = format!("{header}.{payload}");
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .expect("sign");
        assert!(matches!(
            verify(&format!("{message}.{signature}")),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn header_wins_over_query() {
        assert_eq!(extract_token(Some("Bearer h"), Some("q")), Some("h"));
        assert_eq!(extract_token(Some("bearer  h "), None), Some("h"));
        assert_eq!(extract_token(None, Some("q")), Some("q"));
        assert_eq!(extract_token(Some("Basic abc"), Some("q")), Some("q"));
        assert_eq!(extract_token(Some("Bearer"), None), None);
        assert_eq!(extract_token(None, Some("")), None);
        assert_eq!(extract_token(None, None), None);
    }

    /// Minimal base64url (no padding) so the test can build a raw token.
    mod base64_url {
        pub fn encode(bytes: &[u8]) -> String {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
