//! Any bytes as a client's text frame: parse never panics.
#![no_main]
use hopeflow_realtime::protocol::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(err) = ClientFrame::parse(text) {
            let _ = err.code().as_str();
        }
    }
});
