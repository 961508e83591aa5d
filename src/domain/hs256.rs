//! An HS256-only crypto provider for jsonwebtoken.
//!
//! With its `rust_crypto` feature, jsonwebtoken links RSA, ECDSA and Ed25519
//! verifiers into the worker because `decode` dispatches on the token header
//! at run time, though only HS256 is ever accepted. This provider knows
//! HMAC-SHA256 alone (crates `hmac` + `sha2`); jsonwebtoken keeps doing the
//! parsing and validation. Any other algorithm is an error, as it already was.

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{new_error, ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::Sha256;

/// The provider; [`install`] makes it jsonwebtoken's default.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWKs are never used here.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Installs [`PROVIDER`] (idempotent). Call before any jsonwebtoken use:
/// without a provider jsonwebtoken panics.
pub fn install() {
    // Err only means it is already installed.
    let _ = PROVIDER.install_default();
}

struct HmacSha256(Hmac<Sha256>);

impl HmacSha256 {
    fn new(algorithm: &Algorithm, family: AlgorithmFamily, key: &[u8]) -> Result<Self> {
        if *algorithm != Algorithm::HS256 {
            return Err(new_error(ErrorKind::InvalidAlgorithm));
        }
        if family != AlgorithmFamily::Hmac {
            return Err(new_error(ErrorKind::InvalidKeyFormat));
        }
        Hmac::<Sha256>::new_from_slice(key)
            .map(HmacSha256)
            .map_err(|_| new_error(ErrorKind::InvalidKeyFormat))
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(HmacSha256::new(
        algorithm,
        key.family(),
        key.as_bytes(),
    )?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(HmacSha256::new(
        algorithm,
        key.family(),
        key.try_get_as_bytes()?,
    )?))
}

impl Signer<Vec<u8>> for HmacSha256 {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl JwtSigner for HmacSha256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl Verifier<Vec<u8>> for HmacSha256 {
    fn verify(&self, message: &[u8], tag: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        // Constant-time comparison.
        mac.verify_slice(tag).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for HmacSha256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, encode, Header, Validation};
    use serde_json::{json, Value};

    #[test]
    fn signs_and_verifies_hs256_only() {
        install();
        let key = EncodingKey::from_secret(b"k");
        let token = encode(&Header::new(Algorithm::HS256), &json!({"a": 1}), &key).expect("sign");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        let data =
            decode::<Value>(&token, &DecodingKey::from_secret(b"k"), &validation).expect("verify");
        assert_eq!(data.claims, json!({"a": 1}));
        assert!(decode::<Value>(&token, &DecodingKey::from_secret(b"x"), &validation).is_err());
        assert!(encode(&Header::new(Algorithm::HS512), &json!({}), &key).is_err());
        assert!(encode(&Header::new(Algorithm::RS256), &json!({}), &key).is_err());
    }

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = HmacSha256::new(&Algorithm::HS256, AlgorithmFamily::Hmac, b"Jefe").expect("key");
        let tag = mac.try_sign(b"what do ya want for nothing?").expect("sign");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(mac.verify(b"what do ya want for nothing?", &tag).is_ok());
        assert!(mac.verify(b"what do ya want for nothing!", &tag).is_err());
    }
}
