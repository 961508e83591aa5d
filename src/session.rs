//! What the Durable Object stores per socket, in the socket's serialized
//! attachment, so it survives hibernation.

use serde::{Deserialize, Serialize};

use crate::filter::Filter;

/// Bumped when the attachment layout changes; sockets with another version are
/// asked to reconnect instead of being misread.
pub const ATTACHMENT_VERSION: u8 = 1;

/// Cloudflare refuses attachments over 2,048 bytes once serialized. The JSON
/// size is a close, slightly pessimistic estimate of that; keep a margin.
pub const MAX_ATTACHMENT_JSON_BYTES: usize = 1_900;

/// A socket's stored state. Short field names keep the attachment small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketAttachment {
    /// Layout version, see [`ATTACHMENT_VERSION`].
    pub v: u8,
    /// Socket id: identifies the socket in the ack book (also its tag).
    pub id: String,
    /// The authenticated user the socket belongs to.
    #[serde(rename = "u")]
    pub user_id: String,
    /// Subscription filters, in subscribe order.
    #[serde(rename = "f")]
    pub filters: Vec<Filter>,
    /// When the socket was accepted (ms since the epoch). Absent in
    /// attachments of earlier builds, read as 0: no reason to drop those
    /// sockets.
    #[serde(rename = "t", default)]
    pub connected_at: u64,
}

/// The filters would make the attachment exceed [`MAX_ATTACHMENT_JSON_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachmentTooLarge {
    pub bytes: usize,
}

impl SocketAttachment {
    pub fn new(id: String, user_id: String, connected_at: u64) -> SocketAttachment {
        SocketAttachment {
            v: ATTACHMENT_VERSION,
            id,
            user_id,
            filters: Vec::new(),
            connected_at,
        }
    }

    /// This attachment with `filters`, and its stored form (the JSON text
    /// its size is checked on), if it still fits the runtime's limit.
    pub fn with_filters(
        &self,
        filters: Vec<Filter>,
    ) -> Result<(SocketAttachment, String), AttachmentTooLarge> {
        let next = SocketAttachment {
            filters,
            ..self.clone()
        };
        let json = next.to_json();
        if json.len() > MAX_ATTACHMENT_JSON_BYTES {
            return Err(AttachmentTooLarge { bytes: json.len() });
        }
        Ok((next, json))
    }

    pub fn is_current(&self) -> bool {
        self.v == ATTACHMENT_VERSION
    }

    /// The stored form: JSON text, which the runtime keeps as one string
    /// (cheaper to store and read than an object built field by field).
    pub fn to_json(&self) -> String {
        // Strings and a version number: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<SocketAttachment, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_is_compact() {
        let filter: Filter = serde_json::from_value(json!({"type": "chat"})).expect("filter");
        let (a, text) = SocketAttachment::new("s1".into(), "alice".into(), 1_700_000_000_000)
            .with_filters(vec![filter])
            .expect("fits");
        assert_eq!(a.to_json(), text);
        assert_eq!(
            text,
            r#"{"v":1,"id":"s1","u":"alice","f":[{"type":"chat"}],"t":1700000000000}"#
        );
        let back = SocketAttachment::from_json(&text).expect("json");
        assert_eq!(back, a);
        assert!(back.is_current());
        // An attachment stored before `t` existed still reads.
        let old = SocketAttachment::from_json(r#"{"v":1,"id":"s1","u":"alice","f":[]}"#)
            .expect("old attachment");
        assert_eq!(old.connected_at, 0);
    }

    #[test]
    fn refuses_filters_past_the_limit() {
        let big: Filter =
            serde_json::from_value(json!({"k": "x".repeat(MAX_ATTACHMENT_JSON_BYTES)}))
                .expect("filter");
        let a = SocketAttachment::new("s1".into(), "alice".into(), 0);
        assert!(a.with_filters(vec![big]).is_err());
        let fifty: Vec<Filter> = (0..50)
            .map(|i| serde_json::from_value(json!({"type": format!("t{i}")})).expect("filter"))
            .collect();
        assert!(a.with_filters(fifty).is_ok());
    }
}
