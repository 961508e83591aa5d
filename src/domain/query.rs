//! The path and query parameters of a serialized URL, without a URL parser:
//! the worker needs one or two parameters per request, and the `url` crate's
//! parser (with IDNA host handling) was the largest remaining piece of the
//! wasm that this service did not otherwise need (bench/README.md).

/// The path of an absolute URL as the runtime serializes it (`/` at least),
/// without query or fragment; still percent-encoded, like `URL.pathname`.
pub fn path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let Some(start) = rest.find('/') else {
        return "/";
    };
    let path = &rest[start..];
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// The first value of parameter `name` in `url`'s query, decoded as
/// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; a
/// malformed escape stays as written, and invalid UTF-8 becomes U+FFFD), as
/// the WHATWG URL standard's `URLSearchParams` does.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| decode(key) == name)
        .map(|(_, value)| decode(value))
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: Option<&u8>) -> Option<u8> {
    match byte? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path("https://h.example:8787/publish?token=x"), "/publish");
        assert_eq!(path("http://127.0.0.1:8787/"), "/");
        assert_eq!(path("http://127.0.0.1:8787"), "/");
        assert_eq!(path("https://h/a%20b#frag"), "/a%20b");
        assert_eq!(path("https://h/internal/stats?userId=u"), "/internal/stats");
    }

    #[test]
    fn finds_the_first_value() {
        let url = "https://h/?a=1&token=abc.def&token=second";
        assert_eq!(query_param(url, "token").as_deref(), Some("abc.def"));
        assert_eq!(query_param(url, "a").as_deref(), Some("1"));
        assert_eq!(query_param(url, "missing"), None);
        assert_eq!(query_param("https://h/path", "token"), None);
    }

    #[test]
    fn decodes_like_url_search_params() {
        let url = "https://h/?userId=al%20ice+b&x=%E2%9C%93&bad=%zz%4&empty&k%3D=v#frag";
        assert_eq!(query_param(url, "userId").as_deref(), Some("al ice b"));
        assert_eq!(query_param(url, "x").as_deref(), Some("✓"));
        assert_eq!(query_param(url, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(url, "empty").as_deref(), Some(""));
        assert_eq!(query_param(url, "k=").as_deref(), Some("v"));
        assert_eq!(
            query_param("https://h/?a=%FF", "a").as_deref(),
            Some("\u{FFFD}")
        );
    }

    #[test]
    fn ignores_the_fragment() {
        assert_eq!(query_param("https://h/?a=1#b=2", "b"), None);
        assert_eq!(query_param("https://h/?a=1#x", "a").as_deref(), Some("1"));
    }
}
