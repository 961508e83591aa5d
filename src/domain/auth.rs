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

/// Tokens longer than this are rejected before any parsing or crypto.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The verified identity carried by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Whose sockets this token may open (the Durable Object is named after it).
    pub user_id: String,
    /// The space-separated `scope` claim, if the token has a string one.
    pub scope: Option<String>,
    /// `exp` in whole unix seconds (a fraction is dropped, so the socket
    /// never outlives the token); `None` for a token that never expires.
    pub expires_at: Option<u64>,
}

impl Claims {
    /// Whether the `scope` claim lists `wanted`.
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|scope| scope.split_ascii_whitespace().any(|s| s == wanted))
    }
}

/// What a valid token must look like beyond its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            leeway_secs: 30,
            require_exp: false,
            audience: None,
            issuer: None,
        }
    }
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
                "a token is required: send \"Authorization: Bearer <jwt>\", offer the WebSocket \
                 protocols \"hopeflow, hopeflow.token.<jwt>\", or send ?token=<jwt>",
            ),
            AuthError::InvalidToken(why) => write!(f, "invalid token: {why}"),
            AuthError::Expired => f.write_str("token has expired"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Why a `refresh` frame's token was refused; the socket keeps its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshRefusal {
    /// No `token`, not a string, or empty.
    MissingToken,
    /// The token fails the upgrade's checks.
    Token(AuthError),
    /// A valid token of another user.
    OtherUser,
}

impl RefreshRefusal {
    /// The reason, short, as the error frame's message names it.
    pub fn reason(&self) -> &'static str {
        match self {
            RefreshRefusal::MissingToken => "missing token",
            RefreshRefusal::OtherUser => "other user",
            RefreshRefusal::Token(AuthError::Expired) => "expired",
            RefreshRefusal::Token(AuthError::MissingToken) => "missing token",
            RefreshRefusal::Token(AuthError::InvalidToken(SIGNATURE_MISMATCH)) => "bad signature",
            RefreshRefusal::Token(AuthError::InvalidToken(_)) => "invalid token",
        }
    }
}

impl fmt::Display for RefreshRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = match self {
            RefreshRefusal::MissingToken => {
                "send {\"type\":\"refresh\",\"token\":\"<jwt>\"}".to_owned()
            }
            RefreshRefusal::OtherUser => "the token's userId is not this socket's user".to_owned(),
            RefreshRefusal::Token(err) => err.to_string(),
        };
        write!(
            f,
            "refresh rejected: {} ({detail}); the socket keeps its current expiry",
            self.reason()
        )
    }
}

impl std::error::Error for RefreshRefusal {
    /// The token's own refusal, which the message also names.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RefreshRefusal::Token(err) => Some(err),
            _ => None,
        }
    }
}

/// What [`describe`] says of a signature that does not match.
const SIGNATURE_MISMATCH: &str = "signature does not match";

/// Picks the token of a request: a Bearer `Authorization` header wins over the
/// `token` query parameter, so the choice is deterministic when both are sent.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<&'a str> {
    bearer_token(authorization)
        .or(query)
        .filter(|token| !token.is_empty())
}

/// The subprotocol every socket speaks: the 101 names it when the client
/// offered it, so a browser that offered protocols accepts the handshake.
pub const PROTOCOL: &str = "hopeflow";

/// An offered protocol `hopeflow.token.<jwt>` carries a token: browsers
/// cannot set headers on a WebSocket, and a `?token=` URL ends up in
/// access logs (docs/SECURITY.md). A JWT's base64url segments and dots are
/// all characters an HTTP token (so a protocol name) may have. Never
/// answered: the 101 names [`PROTOCOL`].
pub const TOKEN_PROTOCOL_PREFIX: &str = "hopeflow.token.";

/// What a handshake's `Sec-WebSocket-Protocol` offers this service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolOffer<'a> {
    /// The token of the one `hopeflow.token.<jwt>` offered (never empty).
    pub token: Option<&'a str>,
    /// Whether [`PROTOCOL`] is offered: the 101 answers it then.
    pub speaks: bool,
}

/// Reads a `Sec-WebSocket-Protocol` value (its offers, comma-separated).
/// Protocols this service does not know are left for no one (the 101
/// names none of them). Refused: two token protocols (which one would be
/// meant?), and a token without [`PROTOCOL`] (the 101 could only name the
/// token, and must never echo it).
pub fn protocol_offer(header: Option<&str>) -> Result<ProtocolOffer<'_>, AuthError> {
    let mut offer = ProtocolOffer::default();
    for protocol in header.unwrap_or_default().split(',').map(str::trim) {
        if protocol == PROTOCOL {
            offer.speaks = true;
        } else if let Some(token) = protocol.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
            if offer.token.is_some() {
                return Err(AuthError::InvalidToken(
                    "more than one hopeflow.token.<jwt> protocol was offered",
                ));
            }
            offer.token = Some(token).filter(|token| !token.is_empty());
        }
    }
    if offer.token.is_some() && !offer.speaks {
        return Err(AuthError::InvalidToken(
            "offer the protocol \"hopeflow\" along with \"hopeflow.token.<jwt>\"",
        ));
    }
    Ok(offer)
}

/// The token of a handshake: [`extract_token`]'s (the header's, else the
/// query's, as before), or the one of the offered protocols. Two places
/// that carry different tokens are refused rather than one silently
/// chosen; the same token twice is fine.
pub fn handshake_token<'a>(
    authorization: Option<&'a str>,
    protocol: Option<&'a str>,
    query: Option<&'a str>,
) -> Result<&'a str, AuthError> {
    match (extract_token(authorization, query), protocol) {
        (Some(token), Some(other)) if token != other => Err(AuthError::InvalidToken(
            "two different tokens were sent (Authorization, the hopeflow.token protocol, \
             ?token=); send one",
        )),
        (token, other) => token.or(other).ok_or(AuthError::MissingToken),
    }
}

/// The token of a Bearer `Authorization` header. When this is
/// `Some`, the query parameter is never consulted (see [`extract_token`]).
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn secrets_match(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Verifies tokens signed with the shared secret(s).
pub struct TokenVerifier {
    /// The current secret first; a previous one is tried only when the
    /// signature does not match the current one (key rotation).
    keys: Vec<DecodingKey>,
    validation: Validation,
    policy: AuthPolicy,
}

impl TokenVerifier {
    /// A verifier for `secrets`; callers refuse to build one without a secret.
    pub fn new(secrets: &[String], policy: &AuthPolicy) -> TokenVerifier {
        crate::domain::hs256::install();
        let mut validation = Validation::new(Algorithm::HS256);
        // Claims are checked in `check_claims`, with the caller's clock and
        // strict types (jsonwebtoken skips claims it cannot parse).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        TokenVerifier {
            keys: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            validation,
            policy: policy.clone(),
        }
    }

    /// Verifies `token` at time `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let raw = self.decode(token)?;
        self.accept(raw, now)
    }

    /// [`TokenVerifier::verify`], remembering tokens whose signature held:
    /// a backend sends the same token with every publish, and decoding and
    /// checking the signature was about 6 % of a publish's CPU in the profile
    /// (bench/README.md). Time and the other claims are checked on every use.
    /// `seen` must only ever be used with this verifier. Out of line, so the
    /// start-up warm-up optimizes this very function (see `warmup`).
    #[inline(never)]
    pub fn verify_cached(
        &self,
        token: &str,
        now: u64,
        seen: &mut VerifiedTokens,
    ) -> Result<Claims, AuthError> {
        if let Some(raw) = seen.entries.get(token) {
            return self.accept(raw.clone(), now);
        }
        let raw = self.decode(token)?;
        if seen.entries.len() >= VerifiedTokens::CAPACITY {
            // Bounded memory without bookkeeping: start over.
            seen.entries.clear();
        }
        seen.entries.insert(token.to_owned(), raw.clone());
        self.accept(raw, now)
    }

    /// The checks after the signature: time, audience, issuer, `userId`.
    fn accept(&self, raw: RawClaims, now: u64) -> Result<Claims, AuthError> {
        let expires_at = check_time(&raw, &self.policy, now)?;
        check_audience_and_issuer(&raw, &self.policy)?;
        let user_id = match raw.user_id {
            Some(Value::String(id)) if !id.trim().is_empty() => id,
            _ => {
                return Err(AuthError::InvalidToken(
                    "payload must carry a non-empty string userId",
                ))
            }
        };
        let scope = match raw.scope {
            Some(Value::String(scope)) => Some(scope),
            _ => None,
        };
        Ok(Claims {
            user_id,
            scope,
            expires_at,
        })
    }

    /// A `refresh` frame's token for the socket of `user_id`: verified
    /// exactly as at the upgrade, and it must name the same user. The new
    /// token's `exp`.
    pub fn verify_refresh(
        &self,
        token: Option<&str>,
        user_id: &str,
        now: u64,
    ) -> Result<Option<u64>, RefreshRefusal> {
        let token = token
            .filter(|token| !token.is_empty())
            .ok_or(RefreshRefusal::MissingToken)?;
        let claims = self.verify(token, now).map_err(RefreshRefusal::Token)?;
        if claims.user_id != user_id {
            return Err(RefreshRefusal::OtherUser);
        }
        Ok(claims.expires_at)
    }

    /// The claims of a token whose signature holds; too long a token is
    /// refused before any parsing or crypto.
    fn decode(&self, token: &str) -> Result<RawClaims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken("token is too long"));
        }
        let mut outcome = Err(ErrorKind::InvalidSignature);
        for key in &self.keys {
            outcome = jsonwebtoken::decode::<RawClaims>(token, key, &self.validation)
                .map(|data| data.claims)
                .map_err(|e| e.into_kind());
            if !matches!(outcome, Err(ErrorKind::InvalidSignature)) {
                break;
            }
        }
        outcome.map_err(|kind| AuthError::InvalidToken(describe(&kind)))
    }
}

/// Tokens whose signature a [`TokenVerifier`] has checked, with their
/// decoded claims; at most [`VerifiedTokens::CAPACITY`] of them (at most
/// 2 MiB with 8 KiB tokens).
#[derive(Default)]
pub struct VerifiedTokens {
    entries: std::collections::HashMap<String, RawClaims>,
}

impl VerifiedTokens {
    pub const CAPACITY: usize = 256;

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The claims this service reads, from a payload that must be a JSON object.
/// A repeated key of these is refused, so a duplicated `userId` cannot
/// smuggle a second identity past another parser.
#[derive(Default, Clone)]
struct RawClaims {
    user_id: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    scope: Option<Value>,
}

impl<'de> Deserialize<'de> for RawClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Hand-written so only an object is accepted: the derived impl would
        // also read a JSON array positionally.
        struct ClaimsVisitor;

        impl<'de> serde::de::Visitor<'de> for ClaimsVisitor {
            type Value = RawClaims;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawClaims, A::Error> {
                let mut claims = RawClaims::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "userId" => &mut claims.user_id,
                        "exp" => &mut claims.exp,
                        "nbf" => &mut claims.nbf,
                        "iss" => &mut claims.iss,
                        "aud" => &mut claims.aud,
                        "scope" => &mut claims.scope,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::custom(format!("duplicate claim {key:?}")));
                    }
                    // An explicit `null` stays `Some(Null)`: rejected as a wrong
                    // type rather than read as absent.
                    *slot = Some(map.next_value::<Value>()?);
                }
                Ok(claims)
            }
        }

        deserializer.deserialize_map(ClaimsVisitor)
    }
}

/// The time claims at `now`; the whole seconds of `exp` when it has one.
fn check_time(raw: &RawClaims, policy: &AuthPolicy, now: u64) -> Result<Option<u64>, AuthError> {
    let now = now as f64;
    let leeway = policy.leeway_secs as f64;
    if policy.require_exp && raw.exp.is_none() {
        return Err(AuthError::InvalidToken("exp is required"));
    }
    let mut expires_at = None;
    if let Some(exp) = &raw.exp {
        let exp = exp
            .as_f64()
            .ok_or(AuthError::InvalidToken("exp must be a number"))?;
        if exp < now - leeway {
            return Err(AuthError::Expired);
        }
        // `as` saturates: an `exp` past u64 is "never" in practice.
        expires_at = Some(exp.floor() as u64);
    }
    if let Some(nbf) = &raw.nbf {
        let nbf = nbf
            .as_f64()
            .ok_or(AuthError::InvalidToken("nbf must be a number"))?;
        if nbf > now + leeway {
            return Err(AuthError::InvalidToken("token is not valid yet (nbf)"));
        }
    }
    Ok(expires_at)
}

fn check_audience_and_issuer(raw: &RawClaims, policy: &AuthPolicy) -> Result<(), AuthError> {
    if let Some(issuer) = &policy.issuer {
        if raw.iss.as_ref().and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(AuthError::InvalidToken("iss does not match"));
        }
    }
    if let Some(audience) = &policy.audience {
        let listed = match &raw.aud {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !listed {
            return Err(AuthError::InvalidToken("aud does not match"));
        }
    }
    Ok(())
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => SIGNATURE_MISMATCH,
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
        crate::domain::hs256::install();
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    fn verify(token: &str) -> Result<Claims, AuthError> {
        verify_with(token, &AuthPolicy::default())
    }

    fn verify_with(token: &str, policy: &AuthPolicy) -> Result<Claims, AuthError> {
        let secrets = [String::from_utf8(SECRET.to_vec()).expect("utf8")];
        TokenVerifier::new(&secrets, policy).verify(token, NOW)
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
        let ok = |expires_at| {
            Ok(Claims {
                user_id: "alice".into(),
                scope: None,
                expires_at,
            })
        };
        assert_eq!(verify(&token(json!({"userId": "alice"}))), ok(None));
        assert_eq!(
            verify(&token(
                json!({"userId": "alice", "exp": NOW + 60, "role": "x"})
            )),
            ok(Some(NOW + 60))
        );
        // Within the leeway.
        assert_eq!(
            verify(&token(json!({"userId": "alice", "exp": NOW - 10}))),
            ok(Some(NOW - 10))
        );
        // A fraction of a second is dropped: the socket never outlives it.
        assert_eq!(
            verify(&token(json!({"userId": "alice", "exp": NOW as f64 + 9.75}))),
            ok(Some(NOW + 9))
        );
    }

    #[test]
    fn refresh_tokens_are_checked_as_at_the_upgrade_and_for_the_same_user() {
        let secrets = [String::from_utf8(SECRET.to_vec()).expect("utf8")];
        let policy = AuthPolicy {
            leeway_secs: 0,
            ..AuthPolicy::default()
        };
        let verifier = TokenVerifier::new(&secrets, &policy);
        let refresh = |token: Option<&str>| verifier.verify_refresh(token, "alice", NOW);
        let fresh = token(json!({"userId": "alice", "exp": NOW + 600}));
        assert_eq!(refresh(Some(&fresh)), Ok(Some(NOW + 600)));
        assert_eq!(refresh(Some(&token(json!({"userId": "alice"})))), Ok(None));
        let refused = |token: Option<&str>| refresh(token).map(|_| ()).unwrap_err();
        assert_eq!(refused(None).reason(), "missing token");
        assert_eq!(refused(Some("")).reason(), "missing token");
        let bob = token(json!({"userId": "bob", "exp": NOW + 600}));
        assert_eq!(refused(Some(&bob)).reason(), "other user");
        let old = token(json!({"userId": "alice", "exp": NOW - 1}));
        assert_eq!(refused(Some(&old)).reason(), "expired");
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"userId": "alice", "exp": NOW + 600}),
            &EncodingKey::from_secret(b"another-secret"),
        )
        .expect("encode");
        assert_eq!(refused(Some(&forged)).reason(), "bad signature");
        assert_eq!(refused(Some("not.a.jwt")).reason(), "invalid token");
        // The message names the reason and what stays true.
        let message = refused(Some(&bob)).to_string();
        assert!(
            message.starts_with("refresh rejected: other user"),
            "{message}"
        );
        assert!(message.contains("keeps its current expiry"), "{message}");
        let message = refused(Some(&old)).to_string();
        assert!(message.contains("token has expired"), "{message}");
    }

    #[test]
    fn cached_tokens_are_still_checked_for_time_and_never_for_other_tokens() {
        let secrets = [String::from_utf8(SECRET.to_vec()).expect("utf8")];
        let verifier = TokenVerifier::new(&secrets, &AuthPolicy::default());
        let mut seen = VerifiedTokens::default();
        let good = token(json!({"userId": "alice", "exp": NOW + 60}));
        for _ in 0..2 {
            let claims = verifier.verify_cached(&good, NOW, &mut seen);
            assert_eq!(claims.map(|c| c.user_id), Ok("alice".to_string()));
        }
        assert_eq!(seen.len(), 1);
        // The remembered signature does not outlive the expiry.
        assert_eq!(
            verifier.verify_cached(&good, NOW + 3600, &mut seen),
            Err(AuthError::Expired)
        );
        // A token that failed is not remembered, and fails again.
        let forged = format!("{}x", &good[..good.len() - 1]);
        for _ in 0..2 {
            assert!(verifier.verify_cached(&forged, NOW, &mut seen).is_err());
        }
        assert_eq!(seen.len(), 1);
        // Bounded: past the capacity it starts over.
        for n in 0..VerifiedTokens::CAPACITY {
            let other = token(json!({"userId": format!("u{n}")}));
            assert!(verifier.verify_cached(&other, NOW, &mut seen).is_ok());
        }
        assert!(seen.len() <= VerifiedTokens::CAPACITY);
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
    fn rejects_payloads_that_are_not_objects() {
        // Found by proptest: a derived Deserialize read arrays positionally.
        for claims in [json!(["alice", NOW + 60]), json!("alice"), json!(5)] {
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
        // Correctly signed with HMAC-SHA512 and the right secret.
        let hs512 = {
            use hmac::{Hmac, Mac};
            let message = format!(
                "{}.{}",
                base64_url::encode(br#"{"alg":"HS512","typ":"JWT"}"#),
                base64_url::encode(br#"{"userId":"a"}"#)
            );
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(SECRET).expect("key");
            mac.update(message.as_bytes());
            let tag = mac.finalize().into_bytes();
            format!("{message}.{}", base64_url::encode(&tag))
        };
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
        crate::domain::hs256::install();
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
    fn policy_knobs() {
        let strict = AuthPolicy {
            leeway_secs: 0,
            require_exp: true,
            audience: Some("hopeflow".into()),
            issuer: Some("auth.example".into()),
        };
        let good =
            json!({"userId": "a", "exp": NOW + 60, "aud": "hopeflow", "iss": "auth.example"});
        assert!(verify_with(&token(good.clone()), &strict).is_ok());
        let mut listed = good.clone();
        listed["aud"] = json!(["other", "hopeflow"]);
        assert!(verify_with(&token(listed), &strict).is_ok());
        for (key, value) in [
            ("exp", Value::Null),
            ("aud", json!("other")),
            ("aud", json!(["other"])),
            ("aud", json!(5)),
            ("iss", json!("evil.example")),
            ("iss", json!(1)),
        ] {
            let mut claims = good.clone();
            claims[key] = value;
            if claims[key].is_null() {
                claims.as_object_mut().expect("object").remove(key);
            }
            assert!(
                verify_with(&token(claims.clone()), &strict).is_err(),
                "{claims}"
            );
        }
        let mut missing = good.clone();
        missing.as_object_mut().expect("object").remove("iss");
        assert!(verify_with(&token(missing), &strict).is_err());
        // No leeway: one second past `exp` is expired.
        let late = json!({"userId": "a", "exp": NOW - 1, "aud": "hopeflow", "iss": "auth.example"});
        assert_eq!(verify_with(&token(late), &strict), Err(AuthError::Expired));
        // Without an audience policy, tokens with any `aud` are accepted.
        assert!(verify(&token(json!({"userId": "a", "aud": "x"}))).is_ok());
    }

    #[test]
    fn previous_secret_is_accepted_during_rotation() {
        crate::domain::hs256::install();
        let secrets = ["new".to_string(), "old".to_string()];
        let verifier = TokenVerifier::new(&secrets, &AuthPolicy::default());
        for secret in ["new", "old"] {
            let token = encode(
                &Header::new(Algorithm::HS256),
                &json!({"userId": "a"}),
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("encode");
            assert!(verifier.verify(&token, NOW).is_ok(), "{secret}");
        }
        let stranger = encode(
            &Header::new(Algorithm::HS256),
            &json!({"userId": "a"}),
            &EncodingKey::from_secret(b"other"),
        )
        .expect("encode");
        assert!(verifier.verify(&stranger, NOW).is_err());
    }

    #[test]
    fn scope_claim() {
        let claims = verify(&token(json!({"userId": "a", "scope": "read publish"}))).expect("ok");
        assert!(claims.has_scope("publish"));
        assert!(!claims.has_scope("pub"));
        let claims = verify(&token(json!({"userId": "a", "scope": ["publish"]}))).expect("ok");
        assert!(!claims.has_scope("publish"));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_match(b"abc", b"abc"));
        assert!(!secrets_match(b"abc", b"abd"));
        assert!(!secrets_match(b"abc", b"ab"));
        assert!(!secrets_match(b"abc", b""));
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
        assert_eq!(bearer_token(Some("BEARER x")), Some("x"));
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Basic abc")), None);
    }

    #[test]
    fn protocol_offer_finds_the_token() {
        let offer = |header| protocol_offer(Some(header));
        assert_eq!(protocol_offer(None), Ok(ProtocolOffer::default()));
        assert_eq!(offer(""), Ok(ProtocolOffer::default()));
        assert_eq!(
            offer("hopeflow, hopeflow.token.a.b.c"),
            Ok(ProtocolOffer {
                token: Some("a.b.c"),
                speaks: true
            })
        );
        // Any order, no spaces, unknown protocols beside.
        assert_eq!(
            offer("chat,hopeflow.token.t,hopeflow"),
            Ok(ProtocolOffer {
                token: Some("t"),
                speaks: true
            })
        );
        assert_eq!(
            offer("hopeflow"),
            Ok(ProtocolOffer {
                token: None,
                speaks: true
            })
        );
        assert_eq!(offer("chat, v2"), Ok(ProtocolOffer::default()));
        // An empty token is none (like an empty ?token=).
        assert_eq!(
            offer("hopeflow, hopeflow.token."),
            Ok(ProtocolOffer {
                token: None,
                speaks: true
            })
        );
        // Protocol names are case-sensitive: these are not ours.
        assert_eq!(
            offer("HopeFlow, HOPEFLOW.TOKEN.t"),
            Ok(ProtocolOffer::default())
        );
        for refused in [
            "hopeflow.token.t",
            "chat, hopeflow.token.t",
            "hopeflow, hopeflow.token.a, hopeflow.token.b",
            "hopeflow, hopeflow.token.a, hopeflow.token.a",
        ] {
            assert!(
                matches!(offer(refused), Err(AuthError::InvalidToken(_))),
                "{refused}"
            );
        }
    }

    #[test]
    fn handshake_token_refuses_two_different_tokens() {
        let pick = handshake_token;
        // One place each, as before.
        assert_eq!(pick(Some("Bearer h"), None, None), Ok("h"));
        assert_eq!(pick(None, None, Some("q")), Ok("q"));
        assert_eq!(pick(None, Some("p"), None), Ok("p"));
        // The header still wins over the query, different or not.
        assert_eq!(pick(Some("Bearer h"), None, Some("q")), Ok("h"));
        // The same token in two places is one token.
        assert_eq!(pick(Some("Bearer t"), Some("t"), None), Ok("t"));
        assert_eq!(pick(None, Some("t"), Some("t")), Ok("t"));
        for (header, query) in [(Some("Bearer h"), None), (None, Some("q"))] {
            assert!(matches!(
                pick(header, Some("p"), query),
                Err(AuthError::InvalidToken(_))
            ));
        }
        assert_eq!(pick(None, None, None), Err(AuthError::MissingToken));
        assert_eq!(
            pick(Some("Basic x"), None, Some("")),
            Err(AuthError::MissingToken)
        );
    }

    #[test]
    fn a_jwt_is_a_valid_protocol_name() {
        // RFC 6455 4.1: each protocol is an RFC 2616 token (tchar, no
        // separators); browsers throw a SyntaxError on anything else.
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        let jwt = token(json!({"userId": "ü \"x\"/?", "exp": NOW + 60, "scope": "a b"}));
        let protocol = format!("{TOKEN_PROTOCOL_PREFIX}{jwt}");
        assert!(protocol.chars().all(tchar), "{protocol}");
        assert_eq!(
            protocol_offer(Some(&format!("{PROTOCOL}, {protocol}"))).map(|o| o.token),
            Ok(Some(jwt.as_str()))
        );
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
