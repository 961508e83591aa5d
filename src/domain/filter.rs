//! Subscription filters: parsing from client JSON and matching against envelopes.
//!
//! A filter is a JSON object whose values are all strings. The key `type` is
//! compared with the envelope's `type`; every other key with the same key of the
//! envelope's `payload`, by exact string equality (a payload number `1` does not
//! match the filter string `"1"`). `{}` matches everything.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many entries of one subscribe / unsubscribe message are processed; the
/// rest are ignored and reported back to the client.
pub const MAX_FILTERS_PER_MESSAGE: usize = 50;
/// Filters one socket may hold in total.
pub const MAX_FILTERS_PER_SOCKET: usize = 64;
/// Keys one filter may have.
pub const MAX_FILTER_KEYS: usize = 16;
/// Longest filter key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Longest filter value, in bytes.
pub const MAX_VALUE_BYTES: usize = 512;

/// One exact-match subscription filter.
///
/// A `BTreeMap` gives a canonical key order, so two filters written with their
/// keys in different orders compare (and unsubscribe) as equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Filter(BTreeMap<String, String>);

/// Why one entry of a `filters` array was not a valid filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidFilter {
    /// The entry is not a JSON object.
    NotAnObject,
    /// The entry is an object but at least one value is not a string.
    NonStringValue,
    /// More than [`MAX_FILTER_KEYS`] keys.
    TooManyKeys,
    /// A key longer than [`MAX_KEY_BYTES`] or a value longer than [`MAX_VALUE_BYTES`].
    TooLong,
}

impl fmt::Display for InvalidFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidFilter::NotAnObject => "filter must be a JSON object",
            InvalidFilter::NonStringValue => "every filter value must be a string",
            InvalidFilter::TooManyKeys => "a filter may have at most 16 keys",
            InvalidFilter::TooLong => {
                "filter keys may be at most 128 bytes and values at most 512 bytes"
            }
        })
    }
}

impl std::error::Error for InvalidFilter {}

/// The outcome of parsing a client's `filters` array.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParsedFilters {
    /// Valid filters, in the order they were sent.
    pub valid: Vec<Filter>,
    /// Index in the client's array and reason, for each rejected entry.
    pub invalid: Vec<(usize, InvalidFilter)>,
    /// Entries beyond [`MAX_FILTERS_PER_MESSAGE`], which were not looked at.
    pub ignored: usize,
}

impl Filter {
    /// Parses one entry of a client's `filters` array.
    pub fn parse(value: &Value) -> Result<Filter, InvalidFilter> {
        let object = value.as_object().ok_or(InvalidFilter::NotAnObject)?;
        if object.len() > MAX_FILTER_KEYS {
            return Err(InvalidFilter::TooManyKeys);
        }
        object
            .iter()
            .map(|(key, value)| match value {
                Value::String(s) if key.len() > MAX_KEY_BYTES || s.len() > MAX_VALUE_BYTES => {
                    Err(InvalidFilter::TooLong)
                }
                Value::String(s) => Ok((key.clone(), s.clone())),
                _ => Err(InvalidFilter::NonStringValue),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Filter)
    }

    /// Parses the first [`MAX_FILTERS_PER_MESSAGE`] entries of a `filters` array.
    pub fn parse_all(entries: &[Value]) -> ParsedFilters {
        let mut parsed = ParsedFilters {
            ignored: entries.len().saturating_sub(MAX_FILTERS_PER_MESSAGE),
            ..ParsedFilters::default()
        };
        for (index, entry) in entries.iter().take(MAX_FILTERS_PER_MESSAGE).enumerate() {
            match Filter::parse(entry) {
                Ok(filter) => parsed.valid.push(filter),
                Err(reason) => parsed.invalid.push((index, reason)),
            }
        }
        parsed
    }

    /// Whether an envelope of `envelope_type` carrying `payload` matches.
    pub fn matches(&self, envelope_type: &str, payload: &Value) -> bool {
        self.0.iter().all(|(key, expected)| {
            let actual = if key == "type" {
                Some(envelope_type)
            } else {
                payload.get(key).and_then(Value::as_str)
            };
            actual == Some(expected.as_str())
        })
    }
}

/// Whether any filter of a socket matches the envelope.
#[inline(never)]
pub fn any_matches(filters: &[Filter], envelope_type: &str, payload: &Value) -> bool {
    filters.iter().any(|f| f.matches(envelope_type, payload))
}

/// The socket would hold more than [`MAX_FILTERS_PER_SOCKET`] filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFilters;

impl fmt::Display for TooManyFilters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a socket may hold at most {MAX_FILTERS_PER_SOCKET} filters"
        )
    }
}

impl std::error::Error for TooManyFilters {}

/// Adds `new` filters to `current`, skipping ones already present, all or
/// nothing. Returns how many were actually added.
pub fn add_filters(current: &mut Vec<Filter>, new: Vec<Filter>) -> Result<usize, TooManyFilters> {
    let mut next = current.clone();
    for filter in new {
        if !next.contains(&filter) {
            next.push(filter);
        }
    }
    if next.len() > MAX_FILTERS_PER_SOCKET {
        return Err(TooManyFilters);
    }
    let added = next.len() - current.len();
    *current = next;
    Ok(added)
}

/// Removes every filter of `current` equal to one in `remove`.
/// Returns how many were removed.
pub fn remove_filters(current: &mut Vec<Filter>, remove: &[Filter]) -> usize {
    let before = current.len();
    current.retain(|f| !remove.contains(f));
    before - current.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(v: Value) -> Filter {
        Filter::parse(&v).expect("valid filter in test")
    }

    #[test]
    fn type_key_matches_envelope_type() {
        let f = filter(json!({"type": "chat"}));
        assert!(f.matches("chat", &json!({})));
        assert!(!f.matches("other", &json!({"type": "chat"})));
    }

    #[test]
    fn other_keys_match_payload_fields() {
        let f = filter(json!({"type": "chat", "questId": "q1", "nodeId": "n1"}));
        assert!(f.matches("chat", &json!({"questId": "q1", "nodeId": "n1", "x": 5})));
        assert!(!f.matches("chat", &json!({"questId": "q1"})));
        assert!(!f.matches("chat", &json!({"questId": "q2", "nodeId": "n1"})));
    }

    #[test]
    fn number_in_payload_does_not_match_string_filter() {
        let f = filter(json!({"n": "1"}));
        assert!(!f.matches("t", &json!({"n": 1})));
        assert!(f.matches("t", &json!({"n": "1"})));
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = filter(json!({}));
        assert!(f.matches("anything", &Value::Null));
        assert!(f.matches("x", &json!([1, 2])));
    }

    #[test]
    fn payload_keys_do_not_match_non_object_payloads() {
        let f = filter(json!({"k": "v"}));
        assert!(!f.matches("t", &Value::Null));
        assert!(!f.matches("t", &json!("v")));
        assert!(!f.matches("t", &json!(["v"])));
    }

    #[test]
    fn rejects_non_objects_and_non_string_values() {
        assert_eq!(Filter::parse(&json!("x")), Err(InvalidFilter::NotAnObject));
        assert_eq!(Filter::parse(&json!([])), Err(InvalidFilter::NotAnObject));
        assert_eq!(Filter::parse(&Value::Null), Err(InvalidFilter::NotAnObject));
        assert_eq!(
            Filter::parse(&json!({"a": 1})),
            Err(InvalidFilter::NonStringValue)
        );
        assert_eq!(
            Filter::parse(&json!({"a": "x", "b": null})),
            Err(InvalidFilter::NonStringValue)
        );
    }

    #[test]
    fn parse_all_caps_at_fifty_and_reports_invalid_entries() {
        let mut entries: Vec<Value> = (0..60).map(|i| json!({"type": format!("t{i}")})).collect();
        entries[3] = json!(7);
        let parsed = Filter::parse_all(&entries);
        assert_eq!(parsed.valid.len(), 49);
        assert_eq!(parsed.invalid, vec![(3, InvalidFilter::NotAnObject)]);
        assert_eq!(parsed.ignored, 10);
        assert_eq!(parsed.valid[48], filter(json!({"type": "t49"})));
    }

    #[test]
    fn key_order_does_not_matter_for_equality() {
        let a: Filter = serde_json::from_str(r#"{"a":"1","b":"2"}"#).expect("json");
        let b: Filter = serde_json::from_str(r#"{"b":"2","a":"1"}"#).expect("json");
        assert_eq!(a, b);
    }

    #[test]
    fn add_deduplicates_and_remove_drops_equal_filters() {
        let mut current = vec![filter(json!({"type": "a"}))];
        let added = add_filters(
            &mut current,
            vec![filter(json!({"type": "a"})), filter(json!({"type": "b"}))],
        );
        assert_eq!(added, Ok(1));
        assert_eq!(current.len(), 2);
        let removed = remove_filters(&mut current, &[filter(json!({"type": "a"}))]);
        assert_eq!(removed, 1);
        assert_eq!(current, vec![filter(json!({"type": "b"}))]);
        assert_eq!(remove_filters(&mut current, &[filter(json!({}))]), 0);
    }

    #[test]
    fn socket_cap_is_all_or_nothing() {
        let many = |from: usize, to: usize| -> Vec<Filter> {
            (from..to)
                .map(|i| filter(json!({"type": format!("t{i}")})))
                .collect()
        };
        let mut current = many(0, MAX_FILTERS_PER_SOCKET - 1);
        assert_eq!(
            add_filters(&mut current, many(100, 102)),
            Err(TooManyFilters)
        );
        assert_eq!(current.len(), MAX_FILTERS_PER_SOCKET - 1);
        // Duplicates do not count against the cap.
        assert_eq!(add_filters(&mut current, many(0, 10)), Ok(0));
        assert_eq!(add_filters(&mut current, many(100, 101)), Ok(1));
        assert_eq!(current.len(), MAX_FILTERS_PER_SOCKET);
    }

    #[test]
    fn key_count_and_length_caps() {
        let keys: serde_json::Map<String, Value> = (0..=MAX_FILTER_KEYS)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect();
        assert_eq!(
            Filter::parse(&Value::Object(keys)),
            Err(InvalidFilter::TooManyKeys)
        );
        let long_key = json!({ "k".repeat(MAX_KEY_BYTES + 1): "v" });
        assert_eq!(Filter::parse(&long_key), Err(InvalidFilter::TooLong));
        let long_value = json!({ "k": "v".repeat(MAX_VALUE_BYTES + 1) });
        assert_eq!(Filter::parse(&long_value), Err(InvalidFilter::TooLong));
        let at_limits = json!({ "k".repeat(MAX_KEY_BYTES): "v".repeat(MAX_VALUE_BYTES) });
        assert!(Filter::parse(&at_limits).is_ok());
    }

    #[test]
    fn any_matches_needs_one_match() {
        let filters = vec![filter(json!({"type": "a"})), filter(json!({"type": "b"}))];
        assert!(any_matches(&filters, "b", &Value::Null));
        assert!(!any_matches(&filters, "c", &Value::Null));
        assert!(!any_matches(&[], "c", &Value::Null));
    }
}
