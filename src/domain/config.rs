//! Settings read from the environment (`wrangler.toml` vars and secrets), parsed
//! and bounded in one place. An invalid setting is a [`ConfigError`]: the
//! worker then refuses requests with `500 server_misconfigured` and logs the
//! reason, rather than running with a guess.

use std::fmt;
use std::time::Duration;

use crate::domain::acks::{AckTimeout, DEFAULT_MAX_RESULTS_BYTES};
use crate::domain::auth::AuthPolicy;
use crate::domain::history::Retention;
use crate::domain::limits::SocketCap;
use crate::domain::logs::{Level, LogConfig, UserIdMode};
use crate::domain::session::Lifetime;
use crate::domain::webhook::{EventSet, MIN_SECRET_LEN};

/// Every setting, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// HS256 keys: `JWT_SECRET` first, then `JWT_SECRET_PREVIOUS` during a rotation.
    pub secrets: Vec<String>,
    /// What a valid token must look like beyond its signature.
    pub auth: AuthPolicy,
    /// `PUBLISH_SCOPE`: when set, `/publish` needs this value in the token's `scope`.
    pub publish_scope: Option<String>,
    /// `ALLOWED_ORIGINS`: when set, browser upgrades from other origins are refused.
    pub allowed_origins: Option<Vec<String>>,
    /// `MAX_PUBLISH_BYTES`: largest `/publish` body.
    pub max_publish_bytes: usize,
    /// `MAX_FRAME_BYTES`: largest WebSocket frame a client may send.
    pub max_frame_bytes: usize,
    /// `MAX_SOCKETS_PER_USER`: sockets one user may have open at once.
    pub max_sockets_per_user: SocketCap,
    /// `ACK_TIMEOUT_MS`: how long a publish waits for acks.
    pub ack_timeout: AckTimeout,
    /// `OPERATOR_SCOPE`: the `scope` value the operator routes require.
    pub operator_scope: String,
    /// `IDEMPOTENCY_TTL_SECS`: how long a publish's `Idempotency-Key` is kept.
    pub idempotency_ttl_secs: u64,
    /// `MAX_RESULTS_BYTES`: ack result bytes kept per publish; later results
    /// become `null` and the answer says `"truncated": true`.
    pub max_results_bytes: usize,
    /// `CONSOLE_ENABLED`: serve the debug console at `/console`.
    pub console_enabled: bool,
    /// `HISTORY_SIZE` and `HISTORY_TTL_SECS`.
    pub history: Retention,
    /// `TOKEN_REFRESH_NOTICE_SECS`: how long before a socket's token
    /// expires it is told so (`token_expiring`); 0 turns the notice off.
    pub token_notice_secs: u64,
    /// `WEBHOOK_*`; `None` without `WEBHOOK_URL`: no webhooks.
    pub webhook: Option<WebhookConfig>,
    /// `WORKER_LOG_LEVEL`, `LOG_USER_IDS`, `LOG_HASH_KEY`, `METRICS_LOG`.
    pub logs: LogConfig,
}

/// Where webhooks go and what they carry (`WEBHOOK_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `WEBHOOK_URL`: an `http://` or `https://` URL.
    pub url: String,
    /// `WEBHOOK_SECRET`: the HMAC key of every request's signature.
    pub secret: String,
    /// `WEBHOOK_EVENTS`: the types sent (default all).
    pub events: EventSet,
    /// `WEBHOOK_OFFLINE_DELAY_SECS`: how long a user stays at 0 sockets
    /// before `user.offline`.
    pub offline_delay_secs: u64,
    /// `WEBHOOK_PRESENCE_CHECK_SECS`: how often the alarm checks an online
    /// user's sockets (0: never).
    pub presence_check_secs: u64,
    /// `LATE_ACK_WINDOW_SECS`: how long after delivery an ack still makes
    /// `ack.late` (0: none).
    pub late_ack_window_secs: u64,
    /// `WEBHOOK_MAX_AGE_SECS`: older events are dropped.
    pub max_age_secs: u64,
    /// `WEBHOOK_MAX_PENDING`: past it the oldest events are dropped.
    pub max_pending: u64,
}

impl WebhookConfig {
    /// Whether deliveries past their publish's answer are kept for `ack.late`.
    pub fn tracks_late_acks(&self) -> bool {
        self.events.ack_late && self.late_ack_window_secs > 0
    }
}

pub const DEFAULT_LEEWAY_SECS: u64 = 30;
pub const DEFAULT_MAX_PUBLISH_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
pub const DEFAULT_OPERATOR_SCOPE: &str = "operator";
pub const DEFAULT_IDEMPOTENCY_TTL_SECS: u64 = 600;

/// The lifetime rules of a server with default settings.
impl Default for Lifetime {
    fn default() -> Lifetime {
        Lifetime {
            leeway_secs: DEFAULT_LEEWAY_SECS,
            notice_secs: Lifetime::DEFAULT_NOTICE_SECS,
        }
    }
}

/// A setting that is missing or not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    MissingSecret,
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MissingSecret => f.write_str(
                "JWT_SECRET is not set: every request that needs a token is refused \
                 (set it in .dev.vars locally, `wrangler secret put JWT_SECRET` in production)",
            ),
            ConfigError::Invalid {
                name,
                value,
                expected,
            } => write!(f, "{name} must be {expected}, got {value:?}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads every setting through `get` (the environment, or a map in tests).
    pub fn load(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // Empty values count as unset, so a blank line in .dev.vars is harmless.
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut secrets = vec![get("JWT_SECRET").ok_or(ConfigError::MissingSecret)?];
        secrets.extend(get("JWT_SECRET_PREVIOUS"));
        Ok(Config {
            secrets,
            auth: auth_policy(&get)?,
            publish_scope: get("PUBLISH_SCOPE"),
            allowed_origins: get("ALLOWED_ORIGINS").map(|list| origins(&list)),
            max_publish_bytes: number(
                &get,
                "MAX_PUBLISH_BYTES",
                DEFAULT_MAX_PUBLISH_BYTES as u64,
                1024..=100 * 1024 * 1024,
            )? as usize,
            max_frame_bytes: number(
                &get,
                "MAX_FRAME_BYTES",
                DEFAULT_MAX_FRAME_BYTES as u64,
                1024..=1024 * 1024,
            )? as usize,
            max_sockets_per_user: SocketCap(number(
                &get,
                "MAX_SOCKETS_PER_USER",
                SocketCap::DEFAULT,
                1..=SocketCap::PLATFORM_MAX,
            )? as usize),
            ack_timeout: ack_timeout(&get)?,
            operator_scope: get("OPERATOR_SCOPE").unwrap_or_else(|| DEFAULT_OPERATOR_SCOPE.into()),
            idempotency_ttl_secs: number(
                &get,
                "IDEMPOTENCY_TTL_SECS",
                DEFAULT_IDEMPOTENCY_TTL_SECS,
                1..=7 * 24 * 3600,
            )?,
            max_results_bytes: number(
                &get,
                "MAX_RESULTS_BYTES",
                DEFAULT_MAX_RESULTS_BYTES as u64,
                1024..=64 * 1024 * 1024,
            )? as usize,
            console_enabled: flag(&get, "CONSOLE_ENABLED")?,
            history: retention(&get)?,
            token_notice_secs: number(
                &get,
                "TOKEN_REFRESH_NOTICE_SECS",
                Lifetime::DEFAULT_NOTICE_SECS,
                0..=Lifetime::MAX_NOTICE_SECS,
            )?,
            webhook: webhook(&get)?,
            logs: logs(&get)?,
        })
    }

    /// When sockets get their token notice and close.
    pub fn lifetime(&self) -> Lifetime {
        Lifetime {
            leeway_secs: self.auth.leeway_secs,
            notice_secs: self.token_notice_secs,
        }
    }

    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout.duration()
    }

    /// Whether a browser upgrade from `origin` may proceed. Requests without an
    /// `Origin` header come from non-browser clients and are not restricted.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.allowed_origins, origin) {
            (None, _) | (_, None) => true,
            (Some(allowed), Some(origin)) => {
                let origin = origin.trim_end_matches('/');
                allowed.iter().any(|a| a == origin)
            }
        }
    }
}

/// `JWT_LEEWAY_SECS`, `REQUIRE_EXP`, `JWT_AUDIENCE`, `JWT_ISSUER`.
fn auth_policy(get: &impl Fn(&str) -> Option<String>) -> Result<AuthPolicy, ConfigError> {
    Ok(AuthPolicy {
        leeway_secs: number(get, "JWT_LEEWAY_SECS", DEFAULT_LEEWAY_SECS, 0..=3600)?,
        require_exp: flag(get, "REQUIRE_EXP")?,
        audience: get("JWT_AUDIENCE"),
        issuer: get("JWT_ISSUER"),
    })
}

/// `ALLOWED_ORIGINS`: comma-separated, a trailing `/` ignored.
fn origins(list: &str) -> Vec<String> {
    list.split(',')
        .map(|origin| origin.trim().trim_end_matches('/').to_owned())
        .filter(|origin| !origin.is_empty())
        .collect()
}

fn ack_timeout(get: &impl Fn(&str) -> Option<String>) -> Result<AckTimeout, ConfigError> {
    AckTimeout::parse(get("ACK_TIMEOUT_MS").as_deref()).map_err(|e| ConfigError::Invalid {
        name: "ACK_TIMEOUT_MS",
        value: e.0,
        expected: "a whole number of milliseconds in 100..=30000",
    })
}

/// The logging settings. `LOG_USER_IDS=hash` needs a `LOG_HASH_KEY` of at
/// least 32 characters: a short key's hashes could be reversed by trying
/// likely ids.
fn logs(get: &impl Fn(&str) -> Option<String>) -> Result<LogConfig, ConfigError> {
    let invalid = |name, value: String, expected| ConfigError::Invalid {
        name,
        value,
        expected,
    };
    let level = match get("WORKER_LOG_LEVEL") {
        None => Level::DEFAULT,
        Some(text) => Level::parse(&text)
            .ok_or_else(|| invalid("WORKER_LOG_LEVEL", text, "one of error, warn, info, debug"))?,
    };
    let user_ids = match get("LOG_USER_IDS") {
        None => UserIdMode::default(),
        Some(text) => UserIdMode::parse(&text)
            .ok_or_else(|| invalid("LOG_USER_IDS", text, "one of plain, hash, omit"))?,
    };
    let hash_key = get("LOG_HASH_KEY");
    let key_len = hash_key.as_deref().map_or(0, |k| k.chars().count());
    if user_ids == UserIdMode::Hash && key_len < LOG_HASH_KEY_MIN_LEN {
        // The key itself is never logged.
        return Err(invalid(
            "LOG_HASH_KEY",
            "(hidden)".into(),
            "set, at least 32 characters, when LOG_USER_IDS=hash",
        ));
    }
    Ok(LogConfig {
        level,
        user_ids,
        hash_key,
        metrics_log: flag(get, "METRICS_LOG")?,
    })
}

/// The shortest `LOG_HASH_KEY`.
pub const LOG_HASH_KEY_MIN_LEN: usize = 32;

/// The webhook settings, when `WEBHOOK_URL` is set.
fn webhook(get: &impl Fn(&str) -> Option<String>) -> Result<Option<WebhookConfig>, ConfigError> {
    let Some(url) = get("WEBHOOK_URL") else {
        return Ok(None);
    };
    let invalid = |name, value: &str, expected| ConfigError::Invalid {
        name,
        value: value.to_owned(),
        expected,
    };
    if !is_http_url(&url) {
        return Err(invalid(
            "WEBHOOK_URL",
            &url,
            "an http:// or https:// URL with a host",
        ));
    }
    let secret = get("WEBHOOK_SECRET").unwrap_or_default();
    if secret.chars().count() < MIN_SECRET_LEN {
        // The secret itself is never logged.
        return Err(invalid(
            "WEBHOOK_SECRET",
            "(hidden)",
            "set, at least 32 characters",
        ));
    }
    let events = match get("WEBHOOK_EVENTS") {
        None => EventSet::ALL,
        Some(list) => EventSet::parse(&list).ok_or_else(|| {
            invalid(
                "WEBHOOK_EVENTS",
                &list,
                "a comma-separated list of user.online, user.offline, ack.late",
            )
        })?,
    };
    Ok(Some(WebhookConfig {
        url,
        secret,
        events,
        offline_delay_secs: number(get, "WEBHOOK_OFFLINE_DELAY_SECS", 5, 0..=300)?,
        presence_check_secs: number(get, "WEBHOOK_PRESENCE_CHECK_SECS", 300, 0..=86_400)?,
        late_ack_window_secs: number(get, "LATE_ACK_WINDOW_SECS", 60, 0..=3_600)?,
        max_age_secs: number(get, "WEBHOOK_MAX_AGE_SECS", 86_400, 60..=604_800)?,
        max_pending: number(get, "WEBHOOK_MAX_PENDING", 1_000, 1..=100_000)?,
    }))
}

/// `http://` or `https://`, a host, no whitespace.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.starts_with(':') && !url.chars().any(char::is_whitespace)
    })
}

/// `HISTORY_SIZE` and `HISTORY_TTL_SECS`.
fn retention(get: &impl Fn(&str) -> Option<String>) -> Result<Retention, ConfigError> {
    Ok(Retention {
        size: number(
            get,
            "HISTORY_SIZE",
            Retention::DEFAULT_SIZE,
            0..=Retention::MAX_SIZE,
        )?,
        ttl_secs: number(
            get,
            "HISTORY_TTL_SECS",
            Retention::DEFAULT_TTL_SECS,
            1..=Retention::MAX_TTL_SECS,
        )?,
    })
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(value) = get(name) else {
        return Ok(default);
    };
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            name,
            value,
            expected: "a whole number in its documented range",
        }),
    }
}

fn flag(get: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match get(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            name,
            value: other.to_owned(),
            expected: "true or false",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let config = load(&[("JWT_SECRET", "s")]).expect("valid");
        assert_eq!(config.secrets, vec!["s".to_string()]);
        assert_eq!(config.auth.leeway_secs, 30);
        assert!(!config.auth.require_exp);
        assert_eq!(config.auth.audience, None);
        assert_eq!(config.publish_scope, None);
        assert_eq!(config.max_publish_bytes, 1024 * 1024);
        assert_eq!(config.max_frame_bytes, 64 * 1024);
        assert_eq!(config.max_sockets_per_user, SocketCap(1000));
        assert_eq!(config.ack_timeout(), Duration::from_secs(5));
        assert!(config.origin_allowed(Some("https://anything.example")));
        assert_eq!(config.operator_scope, "operator");
        assert_eq!(config.idempotency_ttl_secs, 600);
        assert_eq!(config.max_results_bytes, 4 * 1024 * 1024);
        assert!(!config.console_enabled);
        assert_eq!(config.history, Retention::default());
        assert_eq!(
            config.lifetime(),
            Lifetime {
                leeway_secs: 30,
                notice_secs: 60
            }
        );
        assert_eq!(config.lifetime(), Lifetime::default());
        assert_eq!(config.logs, LogConfig::default());
    }

    #[test]
    fn log_settings() {
        let key = "k".repeat(32);
        let config = load(&[
            ("JWT_SECRET", "s"),
            ("WORKER_LOG_LEVEL", "debug"),
            ("LOG_USER_IDS", "hash"),
            ("LOG_HASH_KEY", &key),
            ("METRICS_LOG", "true"),
        ])
        .expect("valid");
        assert_eq!(config.logs.level, Level::Debug);
        assert_eq!(config.logs.user_ids, UserIdMode::Hash);
        assert!(config.logs.metrics_log);
        let invalid = |pairs: &[(&str, &str)]| match load(pairs) {
            Err(ConfigError::Invalid { name, value, .. }) => (name, value),
            other => panic!("{other:?}"),
        };
        let with = |extra: (&'static str, &'static str)| [("JWT_SECRET", "s"), extra];
        assert_eq!(
            invalid(&with(("WORKER_LOG_LEVEL", "loud"))).0,
            "WORKER_LOG_LEVEL"
        );
        assert_eq!(invalid(&with(("LOG_USER_IDS", "md5"))).0, "LOG_USER_IDS");
        // Hashing needs a long enough key, which is never echoed.
        let short = invalid(&[
            ("JWT_SECRET", "s"),
            ("LOG_USER_IDS", "hash"),
            ("LOG_HASH_KEY", "short-key"),
        ]);
        assert_eq!(short, ("LOG_HASH_KEY", "(hidden)".to_owned()));
        assert_eq!(invalid(&with(("LOG_USER_IDS", "hash"))).0, "LOG_HASH_KEY");
    }

    #[test]
    fn missing_or_blank_secret() {
        assert_eq!(load(&[]), Err(ConfigError::MissingSecret));
        assert_eq!(
            load(&[("JWT_SECRET", "  ")]),
            Err(ConfigError::MissingSecret)
        );
    }

    #[test]
    fn every_knob() {
        let config = load(&[
            ("JWT_SECRET", "new"),
            ("JWT_SECRET_PREVIOUS", "old"),
            ("JWT_LEEWAY_SECS", "0"),
            ("REQUIRE_EXP", "true"),
            ("JWT_AUDIENCE", "hopeflow"),
            ("JWT_ISSUER", "auth.example"),
            ("PUBLISH_SCOPE", "publish"),
            ("ALLOWED_ORIGINS", "https://a.example, https://b.example/"),
            ("MAX_PUBLISH_BYTES", "2048"),
            ("MAX_FRAME_BYTES", "4096"),
            ("MAX_SOCKETS_PER_USER", "1"),
            ("ACK_TIMEOUT_MS", "250"),
            ("OPERATOR_SCOPE", "ops"),
            ("IDEMPOTENCY_TTL_SECS", "60"),
            ("MAX_RESULTS_BYTES", "2048"),
            ("CONSOLE_ENABLED", "true"),
            ("HISTORY_SIZE", "0"),
            ("HISTORY_TTL_SECS", "60"),
            ("TOKEN_REFRESH_NOTICE_SECS", "0"),
        ])
        .expect("valid");
        assert_eq!(config.secrets, vec!["new".to_string(), "old".to_string()]);
        assert_eq!(config.auth.leeway_secs, 0);
        assert!(config.auth.require_exp);
        assert_eq!(config.auth.audience.as_deref(), Some("hopeflow"));
        assert_eq!(config.auth.issuer.as_deref(), Some("auth.example"));
        assert_eq!(config.publish_scope.as_deref(), Some("publish"));
        assert!(config.origin_allowed(Some("https://b.example")));
        assert!(config.origin_allowed(Some("https://a.example/")));
        assert!(!config.origin_allowed(Some("https://evil.example")));
        assert!(!config.origin_allowed(Some("null")));
        assert!(config.origin_allowed(None));
        assert_eq!(config.max_publish_bytes, 2048);
        assert_eq!(config.max_frame_bytes, 4096);
        assert_eq!(config.max_sockets_per_user, SocketCap(1));
        assert_eq!(config.ack_timeout(), Duration::from_millis(250));
        assert_eq!(config.operator_scope, "ops");
        assert_eq!(config.idempotency_ttl_secs, 60);
        assert_eq!(config.max_results_bytes, 2048);
        assert!(config.console_enabled);
        assert!(!config.history.enabled());
        assert_eq!(config.history.ttl_secs, 60);
        assert_eq!(config.lifetime().notice_secs, 0);
        assert_eq!(config.lifetime().leeway_secs, 0);
        let most = load(&[("JWT_SECRET", "s"), ("TOKEN_REFRESH_NOTICE_SECS", "3600")]);
        assert_eq!(most.map(|c| c.token_notice_secs), Ok(3600));
        // The platform's cap on hibernatable sockets per object.
        let most = load(&[("JWT_SECRET", "s"), ("MAX_SOCKETS_PER_USER", "32768")]);
        assert_eq!(most.map(|c| c.max_sockets_per_user), Ok(SocketCap(32_768)));
    }

    #[test]
    fn webhooks_are_off_without_a_url_and_checked_with_one() {
        let secret = "s".repeat(32);
        assert_eq!(load(&[("JWT_SECRET", "s")]).map(|c| c.webhook), Ok(None));
        let on = load(&[
            ("JWT_SECRET", "s"),
            ("WEBHOOK_URL", "https://hooks.example/hopeflow"),
            ("WEBHOOK_SECRET", &secret),
        ])
        .expect("valid")
        .webhook
        .expect("on");
        assert_eq!(on.url, "https://hooks.example/hopeflow");
        assert_eq!(on.events, EventSet::ALL);
        assert_eq!(
            (
                on.offline_delay_secs,
                on.presence_check_secs,
                on.late_ack_window_secs
            ),
            (5, 300, 60)
        );
        assert_eq!((on.max_age_secs, on.max_pending), (86_400, 1_000));
        assert!(on.tracks_late_acks());
        for (url, secret) in [
            ("ftp://x", secret.as_str()),
            ("https://", secret.as_str()),
            ("http://:80/x", secret.as_str()),
            ("hooks.example", secret.as_str()),
            ("https://a b", secret.as_str()),
            ("http://127.0.0.1:9/h", "too short"),
            ("http://127.0.0.1:9/h", ""),
        ] {
            let err = load(&[
                ("JWT_SECRET", "s"),
                ("WEBHOOK_URL", url),
                ("WEBHOOK_SECRET", secret),
            ]);
            let err = err.expect_err(url).to_string();
            assert!(err.contains("WEBHOOK_"), "{err}");
            assert!(
                !err.contains("too short"),
                "the secret is never shown: {err}"
            );
        }
        let only_online = load(&[
            ("JWT_SECRET", "s"),
            ("WEBHOOK_URL", "http://127.0.0.1:9/h"),
            ("WEBHOOK_SECRET", &secret),
            ("WEBHOOK_EVENTS", "user.online"),
            ("LATE_ACK_WINDOW_SECS", "0"),
        ])
        .expect("valid")
        .webhook
        .expect("on");
        assert!(!only_online.events.offline && !only_online.tracks_late_acks());
        for (name, value) in [
            ("WEBHOOK_EVENTS", "user.gone"),
            ("WEBHOOK_OFFLINE_DELAY_SECS", "301"),
            ("WEBHOOK_MAX_AGE_SECS", "59"),
            ("WEBHOOK_MAX_PENDING", "0"),
            ("LATE_ACK_WINDOW_SECS", "3601"),
        ] {
            let loaded = load(&[
                ("JWT_SECRET", "s"),
                ("WEBHOOK_URL", "http://127.0.0.1:9/h"),
                ("WEBHOOK_SECRET", &secret),
                (name, value),
            ]);
            assert!(loaded.expect_err(name).to_string().contains(name));
        }
    }

    #[test]
    fn invalid_values_name_the_setting() {
        for (name, value) in [
            ("ACK_TIMEOUT_MS", "5"),
            ("ACK_TIMEOUT_MS", "abc"),
            ("JWT_LEEWAY_SECS", "-1"),
            ("REQUIRE_EXP", "maybe"),
            ("MAX_FRAME_BYTES", "10"),
            ("MAX_PUBLISH_BYTES", "huge"),
            ("IDEMPOTENCY_TTL_SECS", "0"),
            ("MAX_RESULTS_BYTES", "1"),
            ("CONSOLE_ENABLED", "sometimes"),
            ("HISTORY_SIZE", "10001"),
            ("HISTORY_TTL_SECS", "0"),
            ("TOKEN_REFRESH_NOTICE_SECS", "3601"),
            ("TOKEN_REFRESH_NOTICE_SECS", "soon"),
            ("MAX_SOCKETS_PER_USER", "0"),
            ("MAX_SOCKETS_PER_USER", "32769"),
            ("MAX_SOCKETS_PER_USER", "-1"),
            ("MAX_SOCKETS_PER_USER", "many"),
        ] {
            let err = load(&[("JWT_SECRET", "s"), (name, value)]).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
