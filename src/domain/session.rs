//! What the Durable Object stores per socket, in the socket's serialized
//! attachment, so it survives hibernation.

use serde::{Deserialize, Serialize};

use crate::domain::filter::Filter;

/// Header carrying the authenticated user from the worker to the Durable
/// Object, URI-encoded because header values must be Latin-1 and user ids
/// need not be. The worker replaces any the client sent.
pub const USER_ID_HEADER: &str = "X-User-ID";
/// Header carrying the token's `exp` (unix seconds) to the Durable Object;
/// absent for a token without one. Like [`USER_ID_HEADER`], never the
/// client's own.
pub const TOKEN_EXP_HEADER: &str = "X-Token-Exp";
/// The handshake's offered protocols. From the worker to the Durable
/// Object it is only ever `hopeflow` (the one the 101 answers) or absent:
/// a token among them stays with the worker.
pub const PROTOCOL_HEADER: &str = "Sec-WebSocket-Protocol";

/// Bumped when the attachment layout changes; sockets with another version are
/// asked to reconnect instead of being misread.
pub const ATTACHMENT_VERSION: u8 = 1;

/// Cloudflare refuses attachments over 2,048 bytes once serialized. The JSON
/// size is a close, slightly pessimistic estimate of that; keep a margin.
/// Filters are refused past it; the token's expiry and notice flag (at most
/// [`LIFETIME_JSON_BYTES`]) ride in the margin, so a refresh never is.
pub const MAX_ATTACHMENT_JSON_BYTES: usize = 1_900;

/// The most the lifetime fields add: `,"e":18446744073709551615,"n":true`.
pub const LIFETIME_JSON_BYTES: usize = 35;

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
    /// The token's `exp` (unix seconds); `None`: the socket never expires.
    /// Absent in attachments of earlier builds, whose tokens were checked
    /// at the upgrade only.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Whether this token's `token_expiring` notice was sent.
    #[serde(rename = "n", default, skip_serializing_if = "is_false")]
    pub notified: bool,
}

fn is_false(flag: &bool) -> bool {
    !flag
}

/// The filters would make the attachment exceed [`MAX_ATTACHMENT_JSON_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachmentTooLarge {
    pub bytes: usize,
}

impl std::fmt::Display for AttachmentTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the socket's state would take {} bytes, over the {MAX_ATTACHMENT_JSON_BYTES} byte limit",
            self.bytes
        )
    }
}

impl std::error::Error for AttachmentTooLarge {}

impl SocketAttachment {
    pub fn new(
        id: String,
        user_id: String,
        connected_at: u64,
        expires_at: Option<u64>,
    ) -> SocketAttachment {
        SocketAttachment {
            v: ATTACHMENT_VERSION,
            id,
            user_id,
            filters: Vec::new(),
            connected_at,
            expires_at,
            notified: false,
        }
    }

    /// This attachment with a refreshed token's `exp`; its notice is due
    /// again. Always fits: see [`LIFETIME_JSON_BYTES`].
    pub fn with_expiry(&self, expires_at: Option<u64>) -> SocketAttachment {
        SocketAttachment {
            expires_at,
            notified: false,
            ..self.clone()
        }
    }

    /// This attachment with its notice sent.
    pub fn notified(&self) -> SocketAttachment {
        SocketAttachment {
            notified: true,
            ..self.clone()
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

/// When a socket's token duties fall: the upgrade's leeway and
/// `TOKEN_REFRESH_NOTICE_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// `JWT_LEEWAY_SECS`: the socket closes this long after `exp`.
    pub leeway_secs: u64,
    /// The notice goes this long before `exp`; 0 sends none.
    pub notice_secs: u64,
}

/// A token duty that is due on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDuty {
    /// Send `token_expiring` with this `exp`.
    Notice { expires_at: u64 },
    /// Close with 4002: `exp` plus the leeway has passed.
    Close,
}

impl Lifetime {
    pub const DEFAULT_NOTICE_SECS: u64 = 60;
    pub const MAX_NOTICE_SECS: u64 = 3_600;

    /// When the socket closes (ms), or `None` for a token without `exp`.
    pub fn close_at_ms(&self, socket: &SocketAttachment) -> Option<f64> {
        let exp = socket.expires_at?;
        Some((exp as f64 + self.leeway_secs as f64) * 1000.0)
    }

    /// Whether the socket's token has run out: no envelope may reach it.
    pub fn expired(&self, socket: &SocketAttachment, now_ms: f64) -> bool {
        self.close_at_ms(socket).is_some_and(|at| now_ms >= at)
    }

    /// When the notice is due (ms), unless it was sent or is off.
    pub fn notice_at_ms(&self, socket: &SocketAttachment) -> Option<f64> {
        let exp = socket.expires_at?;
        if socket.notified || self.notice_secs == 0 {
            return None;
        }
        Some(exp.saturating_sub(self.notice_secs) as f64 * 1000.0)
    }

    /// The socket's next duty's time (ms), due or not.
    pub fn next_ms(&self, socket: &SocketAttachment) -> Option<f64> {
        self.notice_at_ms(socket)
            .or_else(|| self.close_at_ms(socket))
    }

    /// The duty due at `now_ms`, if any. A close wins over a notice not yet
    /// sent: a token past its end gets no "expiring soon".
    pub fn due(&self, socket: &SocketAttachment, now_ms: f64) -> Option<TokenDuty> {
        if self.expired(socket, now_ms) {
            return Some(TokenDuty::Close);
        }
        let expires_at = socket.expires_at?;
        self.notice_at_ms(socket)
            .filter(|at| now_ms >= *at)
            .map(|_| TokenDuty::Notice { expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_is_compact() {
        let filter: Filter = serde_json::from_value(json!({"type": "chat"})).expect("filter");
        let (a, text) = SocketAttachment::new("s1".into(), "alice".into(), 1_700_000_000_000, None)
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
        let a = SocketAttachment::new("s1".into(), "alice".into(), 0, None);
        assert!(a.with_filters(vec![big]).is_err());
        let fifty: Vec<Filter> = (0..50)
            .map(|i| serde_json::from_value(json!({"type": format!("t{i}")})).expect("filter"))
            .collect();
        assert!(a.with_filters(fifty).is_ok());
    }

    #[test]
    fn the_token_lifetime_is_stored_compactly_and_read_back() {
        let a = SocketAttachment::new("s1".into(), "alice".into(), 5, Some(1_700_000_060));
        assert_eq!(
            a.to_json(),
            r#"{"v":1,"id":"s1","u":"alice","f":[],"t":5,"e":1700000060}"#
        );
        let notified = a.notified();
        assert_eq!(
            notified.to_json(),
            r#"{"v":1,"id":"s1","u":"alice","f":[],"t":5,"e":1700000060,"n":true}"#
        );
        assert_eq!(
            SocketAttachment::from_json(&notified.to_json()).ok(),
            Some(notified.clone())
        );
        // A refresh sets the new expiry and makes the notice due again.
        let refreshed = notified.with_expiry(Some(1_700_000_600));
        assert_eq!(
            (refreshed.expires_at, refreshed.notified),
            (Some(1_700_000_600), false)
        );
        assert_eq!(refreshed.filters, notified.filters);
        assert_eq!(refreshed.id, "s1");
        // An attachment of an earlier build has no expiry.
        let old = SocketAttachment::from_json(r#"{"v":1,"id":"s1","u":"alice","f":[],"t":5}"#)
            .expect("old attachment");
        assert_eq!((old.expires_at, old.notified), (None, false));
    }

    #[test]
    fn a_full_attachment_still_fits_with_its_lifetime() {
        let mut filters = Vec::new();
        let mut base = SocketAttachment::new("s".repeat(32), "u".repeat(64), u64::MAX, None);
        for i in 0.. {
            let filter: Filter =
                serde_json::from_value(json!({"type": format!("t{i}")})).expect("filter");
            filters.push(filter);
            match base.with_filters(filters.clone()) {
                Ok((next, _)) => base = next,
                Err(_) => break,
            }
        }
        let json = base.with_expiry(Some(u64::MAX)).notified().to_json();
        assert!(base.to_json().len() <= MAX_ATTACHMENT_JSON_BYTES);
        assert!(json.len() <= base.to_json().len() + LIFETIME_JSON_BYTES);
        assert!(json.len() < 2_048 - 100, "{} bytes", json.len());
    }

    #[test]
    fn token_duties_fall_at_notice_and_at_exp_plus_leeway() {
        let life = Lifetime {
            leeway_secs: 30,
            notice_secs: 60,
        };
        let exp = 1_000_000;
        let s = SocketAttachment::new("s".into(), "u".into(), 0, Some(exp));
        let ms = |secs: u64| secs as f64 * 1000.0;
        assert_eq!(life.notice_at_ms(&s), Some(ms(exp - 60)));
        assert_eq!(life.close_at_ms(&s), Some(ms(exp + 30)));
        assert_eq!(life.next_ms(&s), Some(ms(exp - 60)));
        assert_eq!(life.due(&s, ms(exp - 61)), None);
        assert_eq!(
            life.due(&s, ms(exp - 60)),
            Some(TokenDuty::Notice { expires_at: exp })
        );
        // Once sent, the next duty is the close, at exp + leeway exactly.
        let s = s.notified();
        assert_eq!(life.next_ms(&s), Some(ms(exp + 30)));
        assert_eq!(life.due(&s, ms(exp + 29)), None);
        assert!(!life.expired(&s, ms(exp + 30) - 1.0));
        assert!(life.expired(&s, ms(exp + 30)));
        assert_eq!(life.due(&s, ms(exp + 30)), Some(TokenDuty::Close));
        // Past the end with the notice unsent: the close, not the notice.
        let unsent = SocketAttachment::new("s".into(), "u".into(), 0, Some(exp));
        assert_eq!(life.due(&unsent, ms(exp + 31)), Some(TokenDuty::Close));
        // Notice off: only the close.
        let quiet = Lifetime {
            notice_secs: 0,
            ..life
        };
        assert_eq!(quiet.next_ms(&unsent), Some(ms(exp + 30)));
        // No exp: nothing, ever.
        let forever = SocketAttachment::new("s".into(), "u".into(), 0, None);
        assert_eq!(life.next_ms(&forever), None);
        assert_eq!(life.due(&forever, f64::MAX), None);
        assert!(!life.expired(&forever, f64::MAX));
    }
}
