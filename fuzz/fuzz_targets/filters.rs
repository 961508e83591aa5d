//! Any JSON as a `filters` array and any envelope: parsing and matching never
//! panic, and the 50-entry cap holds.
#![no_main]
use hopeflow_realtime::filter::{Filter, MAX_FILTERS_PER_MESSAGE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let entries = match &value {
        Value::Array(entries) => entries.clone(),
        other => vec![other.clone()],
    };
    let parsed = Filter::parse_all(&entries);
    assert!(parsed.valid.len() + parsed.invalid.len() <= MAX_FILTERS_PER_MESSAGE);
    for filter in &parsed.valid {
        let _ = filter.matches("message", &value);
        if let Some(first) = entries.first() {
            let _ = filter.matches("message", first);
        }
    }
});
