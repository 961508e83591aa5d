//! Any text as a token (and as an Authorization header): verification never
//! panics and never accepts a token it was not given a valid signature for.
#![no_main]
use hopeflow_realtime::auth::{extract_token, AuthPolicy, TokenVerifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = TokenVerifier::new(&["fuzz-secret".to_string()], &AuthPolicy::default());
    // A random input forging a valid HMAC-SHA256 would be a finding.
    assert!(verifier.verify(text, 1_700_000_000).is_err());
    if let Some(token) = extract_token(Some(text), Some(text)) {
        let _ = verifier.verify(token, 1_700_000_000);
    }
});
