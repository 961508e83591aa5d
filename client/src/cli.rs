//! Pure helpers of the `hopeflow` tool: parsing `--filter` and `--claim`
//! arguments, checking `--url` and `HOPEFLOW_URL`, finding the secrets and
//! the user of `listen`, and wording outcomes (close codes, expiries).

use std::path::Path;

use serde_json::{Map, Value};

use crate::api::BatchOutcome;
use crate::socket::{reconnect_after, CloseCode};
use crate::token;
use crate::webhook::MIN_SECRET_LEN;

/// The user id of the tokens the tool mints for itself (publish and the
/// operator commands, and `token --operator` without `--user`).
pub const CLI_USER: &str = "hopeflow-cli";

/// The server of every command without `--url` or `HOPEFLOW_URL`: `make dev`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// The environment variable with the default `--url` of every command: an
/// `http://` or `https://` base (`listen` derives `ws://` or `wss://`).
pub const URL_VAR: &str = "HOPEFLOW_URL";

/// Routes a `--url` must not name: it is the service root.
const ROUTES: [&str; 5] = [
    "/publish/batch",
    "/publish",
    "/health",
    "/console",
    "/users",
];

/// Splits `url` into its scheme and the rest (`host[:port][/path]`).
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let plain = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    plain.then_some((scheme, rest))
}

/// `host[:port]` and the path (without query) of the part after the scheme.
fn host_and_path(rest: &str) -> (&str, &str) {
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    }
}

/// The route `path` ends with (or the operator routes under), if any.
fn named_route(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    ROUTES
        .into_iter()
        .find(|route| path.ends_with(route) || (*route == "/users" && path.contains("/users/")))
}

/// Where a URL came from, for the messages about it.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `--url` of this command.
    Flag(&'a str),
    /// `HOPEFLOW_URL`.
    Env,
}

/// Checks a URL against the schemes it must have (`ws`, or `http`): one
/// line naming the form expected when it is wrong.
fn checked_url(url: &str, source: Source<'_>, websocket: bool) -> Result<String, String> {
    let url = url.trim();
    let (wanted, secure) = if websocket {
        ("ws://", "wss://")
    } else {
        ("http://", "https://")
    };
    let (named, expects) = match source {
        Source::Flag(command) => (
            format!("--url {url}"),
            if websocket {
                format!("{command} expects ws:// or wss:// (the WebSocket endpoint)")
            } else {
                format!("{command} expects http:// or https://")
            },
        ),
        Source::Env => (
            format!("{URL_VAR}={url}"),
            "it must be an http:// or https:// base (listen derives ws:// or wss:// from it)"
                .to_owned(),
        ),
    };
    let (scheme, rest) = split_scheme(url).unwrap_or(("", url));
    let (host, path) = host_and_path(rest);
    let route = named_route(path);
    // The service root, as it should have been written.
    let root = |scheme: &str| match route {
        Some(_) => format!("{scheme}{host}"),
        None => format!("{scheme}{host}{path}"),
    };
    if scheme.is_empty() {
        return Err(format!(
            "{named} has no scheme: {expects}, e.g. {} (or {} over TLS)",
            root(wanted),
            root(secure)
        ));
    }
    let scheme = scheme.to_ascii_lowercase();
    let ours = if websocket {
        ["ws", "wss"]
    } else {
        ["http", "https"]
    };
    if !ours.contains(&scheme.as_str()) {
        let fixed = if matches!(scheme.as_str(), "https" | "wss") {
            secure
        } else {
            wanted
        };
        return Err(format!(
            "{named} has the wrong scheme: {expects}, e.g. {}",
            root(fixed)
        ));
    }
    if let Some(route) = route {
        return Err(format!(
            "{named} names the {route} route: --url is the service root, e.g. {}",
            root(&format!("{scheme}://"))
        ));
    }
    Ok(url.to_owned())
}

/// The server `listen` connects to: `--url` (`ws://` or `wss://`), else
/// `HOPEFLOW_URL` (an `http(s)://` base, turned into `ws(s)://`; a
/// `ws(s)://` one is taken as it is), else `ws://127.0.0.1:8787`.
pub fn listen_url(flag: Option<&str>, env: Option<&str>) -> Result<String, String> {
    if let Some(url) = flag {
        return checked_url(url, Source::Flag("listen"), true);
    }
    let Some(base) = env.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(ws_of(DEFAULT_URL));
    };
    let websocket = split_scheme(base).is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("ws") || scheme.eq_ignore_ascii_case("wss")
    });
    let base = checked_url(base, Source::Env, websocket)?;
    Ok(ws_of(&base))
}

/// `http://h` → `ws://h`, `https://h` → `wss://h`.
fn ws_of(base: &str) -> String {
    match split_scheme(base) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("wss://{rest}"),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => format!("ws://{rest}"),
        _ => base.to_owned(),
    }
}

/// The server of the HTTP commands (`publish`, `sockets`, `disconnect`):
/// `--url`, else `HOPEFLOW_URL`, else `http://127.0.0.1:8787`; `http://`
/// or `https://`, the service root.
pub fn http_url(command: &str, flag: Option<&str>, env: Option<&str>) -> Result<String, String> {
    match (flag, env.map(str::trim).filter(|v| !v.is_empty())) {
        (Some(url), _) => checked_url(url, Source::Flag(command), false),
        (None, Some(base)) => checked_url(base, Source::Env, false),
        (None, None) => Ok(DEFAULT_URL.to_owned()),
    }
}

/// The user `listen` connects as, for its messages (and its minted
/// tokens). With `--token` it is the token's `userId`: `--user` may be
/// left out, and must name the same user when given (the server goes by
/// the token). Without `--token`, `--user` is needed. `None`: a token
/// whose payload does not say (the server will refuse it and say why).
pub fn listen_user(user: Option<&str>, token: Option<&str>) -> Result<Option<String>, String> {
    let Some(token) = token else {
        return match user {
            Some(user) => Ok(Some(user.to_owned())),
            None => Err("listen needs --user (to mint a token for) or --token".into()),
        };
    };
    let owner = token::payload(token.trim())
        .and_then(|claims| claims.get("userId")?.as_str().map(str::to_owned));
    match (user, owner) {
        (Some(user), Some(owner)) if user != owner => Err(format!(
            "--user {user} does not match the token's userId {owner:?}: the server connects \
             the token's user; drop --user, or pass a token of {user}"
        )),
        (_, Some(owner)) => Ok(Some(owner)),
        (user, None) => Ok(user.map(str::to_owned)),
    }
}

/// Whether `listen` reconnects after the server closed with `code`: as
/// the client does ([`reconnect_after`]), except after 4002 (token
/// expired) when it cannot mint a fresh token (`refreshes` false).
pub fn listen_reconnects(code: Option<u16>, reconnect: bool, refreshes: bool) -> bool {
    reconnect
        && reconnect_after(code)
        && (refreshes || code != Some(CloseCode::TokenExpired.code()))
}

/// A short meaning of a close code: the server's own (its reason, made
/// shorter where the reason is advice), and the common standard ones.
fn close_meaning(code: u16) -> Option<&'static str> {
    if let Some(close) = CloseCode::from_code(code) {
        return Some(match close {
            CloseCode::Reconnect => "socket state lost",
            CloseCode::Reauthenticate => "operator asked to reconnect",
            other => other.reason(),
        });
    }
    Some(match code {
        1000 => "normal closure",
        1001 => "going away",
        1006 => "closed abnormally",
        1011 => "server error",
        _ => return None,
    })
}

/// A close code and its reason, for people: `4000 (operator asked to
/// reconnect)`, `4001 (disconnected by an operator): maintenance`. The
/// reason is left out when it only repeats the code's meaning (the
/// server's own reason for its codes); `None` is a connection lost without
/// a close frame.
pub fn describe_code(code: Option<u16>, reason: &str) -> String {
    let reason = reason.trim();
    let Some(code) = code else {
        return if reason.is_empty() {
            "connection lost (no close frame)".into()
        } else {
            format!("connection lost (no close frame): {reason}")
        };
    };
    let meaning = close_meaning(code);
    let standard = CloseCode::from_code(code).map(CloseCode::reason);
    let repeats = reason.is_empty()
        || standard.is_some_and(|s| s.eq_ignore_ascii_case(reason))
        || meaning.is_some_and(|m| m.eq_ignore_ascii_case(reason));
    let described = match meaning {
        Some(meaning) => format!("{code} ({meaning})"),
        None => code.to_string(),
    };
    if repeats {
        described
    } else {
        format!("{described}: {reason}")
    }
}

/// Why `listen` stopped, from the last close the server sent.
pub fn describe_close(code: Option<u16>, reason: &str) -> String {
    format!("connection closed: {}", describe_code(code, reason))
}

/// Unix seconds as an RFC 3339 time in UTC: `2026-12-07T01:36:33Z`.
pub fn format_time(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A duration for people: `45s`, `59m 58s`, `1h 0m`, `2d 3h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// What `listen --token` says of its token at the start: when it expires
/// (the socket ends then: a fixed token is not refreshed).
pub fn describe_token_expiry(exp: Option<u64>, now: u64) -> String {
    match exp {
        None => "the token has no exp: the server does not close the socket for its age".into(),
        Some(exp) if exp > now => format!(
            "the token expires at {} (in {}); listen cannot refresh it: the socket ends then",
            format_time(exp),
            human_duration(exp - now)
        ),
        Some(exp) => format!(
            "the token expired at {} ({} ago); only the server's leeway still accepts it",
            format_time(exp),
            human_duration(now - exp)
        ),
    }
}

/// The error of `listen --token` whose token expired (close code 4002).
pub fn token_expired(expires_at: Option<u64>) -> String {
    let at = expires_at.map_or_else(String::new, |exp| format!(" at {}", format_time(exp)));
    format!("token expired{at}; pass --secret (or JWT_SECRET) to let listen refresh it")
}

/// The stderr line of `listen` for each refresh the server accepted.
pub fn describe_refresh(expires_at: Option<u64>, now: u64) -> String {
    match expires_at {
        Some(exp) => format!(
            "token refreshed: the socket now lives until {} (in {})",
            format_time(exp),
            human_duration(exp.saturating_sub(now))
        ),
        None => "token refreshed: the new token has no exp".into(),
    }
}

/// Parses `--filter type=chat_message,questId=q1` into a filter object.
/// An empty string is the match-everything filter `{}`.
pub fn parse_filter(text: &str) -> Result<Value, String> {
    let mut filter = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("filter entry {pair:?} must look like key=value"))?;
        if key.is_empty() {
            return Err(format!("filter entry {pair:?} has an empty key"));
        }
        filter.insert(key.to_owned(), Value::from(value));
    }
    Ok(Value::Object(filter))
}

/// Parses `--claim k=v`: `v` is read as JSON when it is JSON (numbers,
/// booleans, arrays...), otherwise as a string.
pub fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("claim {text:?} must look like key=value"))?;
    if key.is_empty() {
        return Err(format!("claim {text:?} has an empty key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((key.to_owned(), value))
}

/// The extra claims of `hopeflow token`: each `--claim k=v`, then, with
/// `--operator`, the operator scope added to `scope` (so `--claim
/// scope=publish --operator` gives `"publish operator"`).
pub fn token_claims(claims: &[String], operator: bool) -> Result<Map<String, Value>, String> {
    let mut extra = claims
        .iter()
        .map(|c| parse_claim(c))
        .collect::<Result<Map<_, _>, _>>()?;
    if operator {
        token::add_scope(&mut extra, token::OPERATOR_SCOPE)?;
    }
    Ok(extra)
}

/// The error line of a batch where some users failed, or `None` when all
/// were reached: `1 of 2 users failed: b (unavailable: ...)`.
pub fn batch_failures(batch: &BatchOutcome) -> Option<String> {
    let failed: Vec<String> = batch
        .failures()
        .map(|(user, error)| format!("{user} ({error})"))
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} of {} users failed: {}",
            failed.len(),
            batch.users.len(),
            failed.join(", ")
        )
    })
}

/// The stderr line of `listen` for an [`Event::Gap`](crate::Event::Gap):
/// what may be missing, and that the application must resync.
pub fn describe_gap(
    since: u64,
    seq: u64,
    epoch: &str,
    previous_epoch: &str,
    replayed: usize,
) -> String {
    let missing = if epoch != previous_epoch {
        let new = if seq > 0 {
            format!(", and up to seq {seq} of the new one,")
        } else {
            String::new()
        };
        format!(
            "the history was reset (epoch {previous_epoch} is now {epoch}); \
             envelopes after seq {since} of the old one{new} may be missing"
        )
    } else {
        format!(
            "history did not reach back to seq {} (epoch {epoch}); \
             envelopes up to seq {seq} may be missing ({replayed} recovered)",
            since + 1
        )
    };
    format!("gap: {missing}; resync from your backend")
}

/// The secret: `--secret`, else `JWT_SECRET`, else `JWT_SECRET` in
/// `.dev.vars` of `dir`.
pub fn find_secret(flag: Option<&str>, env: Option<&str>, dir: &Path) -> Option<String> {
    find_setting("JWT_SECRET", flag, env, dir)
}

/// A setting the tool shares with the worker: its flag, else `env` (the
/// variable `name`), else `name` in `.dev.vars` of `dir` (what `make dev`
/// gives the worker). `WEBHOOK_SECRET` for `webhooks listen`.
pub fn find_setting(
    name: &str,
    flag: Option<&str>,
    env: Option<&str>,
    dir: &Path,
) -> Option<String> {
    let nonempty = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    flag.and_then(nonempty)
        .or_else(|| env.and_then(nonempty))
        .or_else(|| {
            let vars = std::fs::read_to_string(dir.join(".dev.vars")).ok()?;
            dev_var(&vars, name)
        })
}

/// The secret of `webhooks listen`: `--secret`, else `WEBHOOK_SECRET`,
/// else `WEBHOOK_SECRET` in `.dev.vars` of `dir`; at least as long as the
/// worker requires (a shorter one cannot be the worker's).
pub fn webhook_secret(flag: Option<&str>, env: Option<&str>, dir: &Path) -> Result<String, String> {
    let secret = find_setting("WEBHOOK_SECRET", flag, env, dir).ok_or(
        "no webhook secret: pass --secret, set WEBHOOK_SECRET, or run where .dev.vars has it",
    )?;
    if secret.chars().count() < MIN_SECRET_LEN {
        return Err(format!(
            "the webhook secret has {} characters: the worker's WEBHOOK_SECRET has at least {MIN_SECRET_LEN}",
            secret.chars().count()
        ));
    }
    Ok(secret)
}

/// What `webhooks listen` says when it starts.
pub fn describe_webhook_receiver(port: u16) -> String {
    format!(
        "receiving webhooks on http://127.0.0.1:{port}/ (the worker's WEBHOOK_URL, with this \
         WEBHOOK_SECRET): each event is printed as a JSON line, each refused request on stderr"
    )
}

/// Reads `NAME=value` (optionally quoted) from a `.dev.vars` text.
pub fn dev_var(text: &str, name: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters() {
        assert_eq!(
            parse_filter("type=chat_message,questId=q1"),
            Ok(json!({"type": "chat_message", "questId": "q1"}))
        );
        assert_eq!(parse_filter(""), Ok(json!({})));
        assert_eq!(parse_filter("n=1"), Ok(json!({"n": "1"})));
        assert_eq!(parse_filter("k=a=b"), Ok(json!({"k": "a=b"})));
        assert!(parse_filter("type").is_err());
        assert!(parse_filter("=x").is_err());
    }

    #[test]
    fn claims() {
        assert_eq!(
            parse_claim("role=admin"),
            Ok(("role".into(), json!("admin")))
        );
        assert_eq!(parse_claim("n=5"), Ok(("n".into(), json!(5))));
        assert_eq!(parse_claim("s=[\"a\"]"), Ok(("s".into(), json!(["a"]))));
        assert_eq!(
            parse_claim("scope=read publish"),
            Ok(("scope".into(), json!("read publish")))
        );
        assert!(parse_claim("nothing").is_err());
    }

    #[test]
    fn operator_tokens_add_their_scope() {
        assert_eq!(token_claims(&[], false), Ok(Map::new()));
        assert_eq!(
            token_claims(&[], true).map(Value::Object),
            Ok(json!({"scope": "operator"}))
        );
        assert_eq!(
            token_claims(&["scope=publish".into(), "role=ops".into()], true).map(Value::Object),
            Ok(json!({"scope": "publish operator", "role": "ops"}))
        );
        assert_eq!(
            token_claims(&["scope=operator".into()], true).map(Value::Object),
            Ok(json!({"scope": "operator"}))
        );
        assert_eq!(
            token_claims(&["scope=publish".into()], false).map(Value::Object),
            Ok(json!({"scope": "publish"}))
        );
        assert!(token_claims(&["scope=[1]".into()], true).is_err());
        assert!(token_claims(&["nothing".into()], false).is_err());
    }

    #[test]
    fn batch_failures_are_summed_up() {
        let batch: BatchOutcome = serde_json::from_value(json!({
            "envelopeId": "e",
            "users": [
                {"userId": "a", "clientCount": 1, "results": [null]},
                {"userId": "b", "error": {"error": "unavailable", "message": "retry"}},
            ]
        }))
        .expect("batch");
        assert_eq!(
            batch_failures(&batch).as_deref(),
            Some("1 of 2 users failed: b (unavailable: retry)")
        );
        let fine: BatchOutcome = serde_json::from_value(json!({
            "envelopeId": "e",
            "users": [{"userId": "a", "clientCount": 0, "results": []}]
        }))
        .expect("batch");
        assert_eq!(batch_failures(&fine), None);
    }

    #[test]
    fn closes_are_worded_once_without_debug_output() {
        // The server's own reason only repeats the code's meaning.
        assert_eq!(
            describe_code(
                Some(4000),
                "disconnected by an operator; reconnect with a fresh token"
            ),
            "4000 (operator asked to reconnect)"
        );
        assert_eq!(
            describe_code(Some(4000), "token rotated"),
            "4000 (operator asked to reconnect): token rotated"
        );
        assert_eq!(
            describe_code(Some(4001), "disconnected by an operator"),
            "4001 (disconnected by an operator)"
        );
        assert_eq!(
            describe_close(Some(4001), "maintenance"),
            "connection closed: 4001 (disconnected by an operator): maintenance"
        );
        assert_eq!(
            describe_code(Some(4002), "token expired"),
            "4002 (token expired)"
        );
        assert_eq!(
            describe_code(Some(1008), "too many invalid or rate-limited messages"),
            "1008 (too many invalid or rate-limited messages)"
        );
        assert_eq!(describe_code(Some(1000), ""), "1000 (normal closure)");
        assert_eq!(describe_code(Some(4999), "custom"), "4999: custom");
        assert_eq!(describe_code(Some(4999), ""), "4999");
        assert_eq!(
            describe_code(None, "connection closed"),
            "connection lost (no close frame): connection closed"
        );
        assert_eq!(describe_code(None, ""), "connection lost (no close frame)");
        for code in [
            None,
            Some(1000),
            Some(4000),
            Some(4001),
            Some(4002),
            Some(4999),
        ] {
            let line = describe_close(code, "why");
            assert!(!line.contains("Some(") && !line.contains("None"), "{line}");
        }
        // Every code of the server's table has a meaning, and its own
        // reason is not repeated after it.
        for close in CloseCode::ALL {
            let line = describe_code(Some(close.code()), close.reason());
            assert!(close_meaning(close.code()).is_some(), "{close:?}");
            assert!(line.ends_with(')') && !line.contains("):"), "{line}");
        }
        assert_eq!(
            describe_code(Some(1012), "socket state lost; please reconnect"),
            "1012 (socket state lost)"
        );
    }

    #[test]
    fn listen_reconnects_unless_it_cannot_refresh_an_expired_token() {
        assert!(listen_reconnects(Some(4000), true, false));
        assert!(listen_reconnects(Some(4002), true, true));
        assert!(!listen_reconnects(Some(4002), true, false));
        assert!(!listen_reconnects(Some(4001), true, true));
        assert!(!listen_reconnects(None, false, true));
        assert!(listen_reconnects(None, true, false));
    }

    #[test]
    fn listen_urls_are_websocket_ones() {
        assert_eq!(listen_url(None, None), Ok("ws://127.0.0.1:8787".into()));
        assert_eq!(
            listen_url(Some("wss://h.example/"), None),
            Ok("wss://h.example/".into())
        );
        // The flag wins over the environment.
        assert_eq!(
            listen_url(Some("ws://a:1"), Some("https://b")),
            Ok("ws://a:1".into())
        );
        let http = listen_url(Some("http://127.0.0.1:8787"), None).unwrap_err();
        assert_eq!(
            http,
            "--url http://127.0.0.1:8787 has the wrong scheme: listen expects ws:// or wss:// \
             (the WebSocket endpoint), e.g. ws://127.0.0.1:8787"
        );
        let https = listen_url(Some("https://h.example"), None).unwrap_err();
        assert!(https.ends_with("e.g. wss://h.example"), "{https}");
        let bare = listen_url(Some("127.0.0.1:8787"), None).unwrap_err();
        assert_eq!(
            bare,
            "--url 127.0.0.1:8787 has no scheme: listen expects ws:// or wss:// (the WebSocket \
             endpoint), e.g. ws://127.0.0.1:8787 (or wss://127.0.0.1:8787 over TLS)"
        );
        let route = listen_url(Some("ws://h:1/publish"), None).unwrap_err();
        assert_eq!(
            route,
            "--url ws://h:1/publish names the /publish route: --url is the service root, e.g. ws://h:1"
        );
        for url in [&http, &https, &bare, &route] {
            assert!(!url.contains('\n'), "one line: {url}");
        }
    }

    #[test]
    fn listen_derives_its_url_from_hopeflow_url() {
        assert_eq!(
            listen_url(None, Some("https://realtime.example.com")),
            Ok("wss://realtime.example.com".into())
        );
        assert_eq!(
            listen_url(None, Some("http://127.0.0.1:9000/")),
            Ok("ws://127.0.0.1:9000/".into())
        );
        assert_eq!(listen_url(None, Some("ws://h:1")), Ok("ws://h:1".into()));
        assert_eq!(
            listen_url(None, Some(" ")),
            Ok("ws://127.0.0.1:8787".into())
        );
        let bare = listen_url(None, Some("h.example")).unwrap_err();
        assert!(
            bare.starts_with(
                "HOPEFLOW_URL=h.example has no scheme: it must be an http:// or https:// base"
            ),
            "{bare}"
        );
        let route = listen_url(None, Some("https://h.example/publish")).unwrap_err();
        assert!(route.ends_with("e.g. https://h.example"), "{route}");
    }

    #[test]
    fn http_urls_are_http_ones() {
        assert_eq!(
            http_url("publish", None, None),
            Ok("http://127.0.0.1:8787".into())
        );
        assert_eq!(
            http_url("publish", None, Some("https://h.example")),
            Ok("https://h.example".into())
        );
        assert_eq!(
            http_url("sockets", Some("http://a:1"), Some("https://b")),
            Ok("http://a:1".into())
        );
        assert_eq!(
            http_url("publish", Some("ws://127.0.0.1:8787"), None),
            Err(
                "--url ws://127.0.0.1:8787 has the wrong scheme: publish expects http:// or \
                 https://, e.g. http://127.0.0.1:8787"
                    .into()
            )
        );
        assert!(http_url("publish", Some("wss://h"), None)
            .is_err_and(|e| e.ends_with("e.g. https://h")));
        assert_eq!(
            http_url("publish", Some("http://127.0.0.1:8787/publish"), None),
            Err(
                "--url http://127.0.0.1:8787/publish names the /publish route: --url is the \
                 service root, e.g. http://127.0.0.1:8787"
                    .into()
            )
        );
        assert!(http_url("publish", Some("https://h/publish/batch/"), None)
            .is_err_and(|e| e.contains("the /publish/batch route")));
        assert!(
            http_url("sockets", Some("https://h/users/alice/sockets"), None)
                .is_err_and(|e| e.contains("the /users route"))
        );
        assert_eq!(
            http_url("publish", Some("localhost:8787"), None),
            Err(
                "--url localhost:8787 has no scheme: publish expects http:// or https://, \
                 e.g. http://localhost:8787 (or https://localhost:8787 over TLS)"
                    .into()
            )
        );
        assert!(http_url("publish", None, Some("ws://h"))
            .is_err_and(|e| e.starts_with("HOPEFLOW_URL=ws://h has the wrong scheme")));
        // A path of a deployment's own is kept.
        assert_eq!(
            http_url("publish", Some("https://h/realtime"), None),
            Ok("https://h/realtime".into())
        );
    }

    #[test]
    fn listen_users_come_from_the_token() {
        let bob = token::mint("s", "bob", None, Map::new());
        assert_eq!(listen_user(None, Some(&bob)), Ok(Some("bob".into())));
        assert_eq!(listen_user(Some("bob"), Some(&bob)), Ok(Some("bob".into())));
        assert_eq!(
            listen_user(Some("carol"), Some(&bob)),
            Err(
                "--user carol does not match the token's userId \"bob\": the server connects \
                 the token's user; drop --user, or pass a token of carol"
                    .into()
            )
        );
        // A token whose payload cannot be read: the server will say why.
        assert_eq!(listen_user(None, Some("not-a-token")), Ok(None));
        assert_eq!(
            listen_user(Some("a"), Some("not-a-token")),
            Ok(Some("a".into()))
        );
        assert_eq!(listen_user(Some("a"), None), Ok(Some("a".into())));
        assert!(listen_user(None, None).is_err());
    }

    #[test]
    fn times_and_expiries_are_worded() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3599), "59m 59s");
        assert_eq!(human_duration(3600), "1h 0m");
        assert_eq!(human_duration(90_000), "1d 1h");
        assert_eq!(
            token_expired(Some(1_700_000_000)),
            "token expired at 2023-11-14T22:13:20Z; pass --secret (or JWT_SECRET) to let listen refresh it"
        );
        assert_eq!(
            token_expired(None),
            "token expired; pass --secret (or JWT_SECRET) to let listen refresh it"
        );
        assert_eq!(
            describe_token_expiry(Some(1_700_003_600), 1_700_000_000),
            "the token expires at 2023-11-14T23:13:20Z (in 1h 0m); listen cannot refresh it: \
             the socket ends then"
        );
        assert!(describe_token_expiry(Some(1_699_999_990), 1_700_000_000).contains("(10s ago)"));
        assert!(describe_token_expiry(None, 0).contains("no exp"));
        assert_eq!(
            describe_refresh(Some(1_700_000_004), 1_700_000_000),
            "token refreshed: the socket now lives until 2023-11-14T22:13:24Z (in 4s)"
        );
    }

    #[test]
    fn gaps_are_worded() {
        assert_eq!(
            describe_gap(41, 57, "E", "E", 3),
            "gap: history did not reach back to seq 42 (epoch E); envelopes up to seq 57 \
             may be missing (3 recovered); resync from your backend"
        );
        assert_eq!(
            describe_gap(41, 2, "new", "old", 0),
            "gap: the history was reset (epoch old is now new); envelopes after seq 41 \
             of the old one, and up to seq 2 of the new one, may be missing; resync from your backend"
        );
        assert_eq!(
            describe_gap(41, 0, "new", "old", 0),
            "gap: the history was reset (epoch old is now new); envelopes after seq 41 \
             of the old one may be missing; resync from your backend"
        );
    }

    #[test]
    fn webhook_secrets_are_as_long_as_the_workers() {
        let dir = std::env::temp_dir().join(format!("hopeflow-cli-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let long = "x".repeat(MIN_SECRET_LEN);
        assert_eq!(webhook_secret(Some(&long), None, &dir), Ok(long.clone()));
        assert_eq!(webhook_secret(None, Some(&long), &dir), Ok(long.clone()));
        assert_eq!(
            webhook_secret(Some("short"), None, &dir),
            Err(
                "the webhook secret has 5 characters: the worker's WEBHOOK_SECRET has at least 32"
                    .into()
            )
        );
        assert!(webhook_secret(None, None, &dir).is_err_and(|e| e.starts_with("no webhook secret")));
        std::fs::write(dir.join(".dev.vars"), format!("WEBHOOK_SECRET={long}\n")).expect("write");
        assert_eq!(webhook_secret(None, None, &dir), Ok(long));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(describe_webhook_receiver(9000).contains("http://127.0.0.1:9000/"));
    }

    #[test]
    fn secret_precedence() {
        let dir = std::env::temp_dir().join(format!("hopeflow-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join(".dev.vars"),
            "# c\nOTHER=1\nJWT_SECRET=\"from-file\"\n",
        )
        .expect("write");
        assert_eq!(
            find_secret(Some("flag"), Some("env"), &dir),
            Some("flag".into())
        );
        assert_eq!(find_secret(None, Some("env"), &dir), Some("env".into()));
        assert_eq!(find_secret(Some(" "), None, &dir), Some("from-file".into()));
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).expect("dir");
        assert_eq!(find_secret(None, None, &empty), None);
        // The webhook secret, from the same places under its own name.
        std::fs::write(
            dir.join(".dev.vars"),
            "JWT_SECRET=jwt\nWEBHOOK_SECRET='hook-secret'\n",
        )
        .expect("write");
        assert_eq!(
            find_setting("WEBHOOK_SECRET", None, None, &dir),
            Some("hook-secret".into())
        );
        assert_eq!(
            find_setting("WEBHOOK_SECRET", Some("flag"), Some("env"), &dir),
            Some("flag".into())
        );
        assert_eq!(
            find_setting("WEBHOOK_SECRET", None, Some("env"), &dir),
            Some("env".into())
        );
        assert_eq!(find_setting("WEBHOOK_SECRET", None, None, &empty), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
