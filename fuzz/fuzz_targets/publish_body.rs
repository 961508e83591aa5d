//! Any bytes as a `/publish` body: parse never panics, and what it accepts
//! has a non-blank target user.
#![no_main]
use hopeflow_realtime::protocol::PublishRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = PublishRequest::parse(data) {
        assert!(!request.user_id.trim().is_empty());
        let _ = request.into_envelope("id".into());
    }
});
