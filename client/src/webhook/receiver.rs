//! A small webhook receiver for trying webhooks locally
//! (`hopeflow webhooks listen`): HTTP/1.1 on a TCP listener, one request
//! per connection (`Connection: close`), a body of `Content-Length` bytes.
//! Each request is checked with [`verify`](super::verify_with_tolerance)
//! and answered 200 when valid, 401 when its signature or time is not,
//! 400 when it is signed but malformed (and 405, 411, 413 or 431 for what
//! is not a webhook request at all). What is not 2xx the worker retries.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, ToSocketAddrs};

use super::{verify_with_tolerance, Event, VerifyError, DEFAULT_TOLERANCE, SIGNATURE_HEADER};

/// The longest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest body read: 100 events whose ack results are as large as the
/// largest frame the worker takes (`MAX_FRAME_BYTES`, at most 1 MiB) fit.
pub const MAX_BODY_BYTES: usize = 128 * 1024 * 1024;
/// How long a client may take to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Verified, answered 200: its events, oldest first.
    Events(Vec<Event>),
    /// Answered with `status` (not 2xx), for the reason given.
    Refused { status: u16, why: String },
}

impl Received {
    /// The HTTP status it was answered with.
    pub fn status(&self) -> u16 {
        match self {
            Received::Events(_) => 200,
            Received::Refused { status, .. } => *status,
        }
    }

    fn refused(status: u16, why: impl Into<String>) -> Received {
        Received::Refused {
            status,
            why: why.into(),
        }
    }
}

/// A request as read off the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The `HopeFlow-Signature` header, when there is one.
    pub signature: Option<String>,
    pub body: String,
}

/// A listening receiver; [`Receiver::run`] serves it.
pub struct Receiver {
    listener: TcpListener,
    secret: Arc<[u8]>,
    tolerance: Duration,
}

impl Receiver {
    /// Listens on `addr` (`("127.0.0.1", port)`; port 0 picks a free one),
    /// checking requests against `secret` (`WEBHOOK_SECRET`).
    pub async fn bind(addr: impl ToSocketAddrs, secret: impl AsRef<[u8]>) -> io::Result<Receiver> {
        Ok(Receiver {
            listener: TcpListener::bind(addr).await?,
            secret: Arc::from(secret.as_ref()),
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// Another tolerance for the signature's time (default 5 minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Receiver {
        self.tolerance = tolerance;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests until accepting fails. `on_request` sees each
    /// request's outcome before its answer is sent (so a valid request's
    /// events are handled before the worker is told they arrived).
    /// Connections closed before sending anything are not reported.
    pub async fn run<F>(self, on_request: F) -> io::Result<()>
    where
        F: Fn(&Received) + Send + Sync + 'static,
    {
        let on_request = Arc::new(on_request);
        loop {
            let (mut stream, _) = self.listener.accept().await?;
            let (secret, tolerance) = (Arc::clone(&self.secret), self.tolerance);
            let on_request = Arc::clone(&on_request);
            tokio::spawn(async move {
                let read = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await;
                let received = match read {
                    Err(_) => Received::refused(408, "the request was not sent in time"),
                    Ok(Ok(None)) => return,
                    Ok(Ok(Some(request))) => judge(&request, &secret, SystemTime::now(), tolerance),
                    Ok(Err(refused)) => refused,
                };
                on_request(&received);
                let _ = respond(&mut stream, &received).await;
            });
        }
    }
}

/// Checks a request: a POST with a valid signature, within `tolerance` of
/// `now`, of events.
pub fn judge(request: &Request, secret: &[u8], now: SystemTime, tolerance: Duration) -> Received {
    if request.method != "POST" {
        return Received::refused(
            405,
            format!(
                "{} is not a webhook request: they are POSTs",
                request.method
            ),
        );
    }
    let Some(signature) = &request.signature else {
        return Received::refused(401, format!("no {SIGNATURE_HEADER} header"));
    };
    match verify_with_tolerance(secret, signature, &request.body, now, tolerance) {
        Ok(events) => Received::Events(events),
        Err(err @ VerifyError::MalformedBody(_)) => Received::refused(400, err.to_string()),
        Err(VerifyError::BadSignature) => Received::refused(
            401,
            format!(
                "{} (is this WEBHOOK_SECRET the worker's?)",
                VerifyError::BadSignature
            ),
        ),
        Err(err) => Received::refused(401, err.to_string()),
    }
}

/// Reads one request; `Ok(None)` when the connection closed before any
/// byte, `Err` with the answer for what cannot be read.
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Option<Request>, Received> {
    let mut data = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = find(&data, b"\r\n\r\n") {
            break at;
        }
        if data.len() > MAX_HEAD_BYTES {
            return Err(Received::refused(431, "the request's head is too large"));
        }
        let n = stream.read(&mut chunk).await.map_err(read_failed)?;
        if n == 0 {
            return if data.is_empty() {
                Ok(None)
            } else {
                Err(Received::refused(400, "the connection closed mid-request"))
            };
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&data[..head_end])
        .map_err(|_| Received::refused(400, "the request's head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Received::refused(400, "not an HTTP request"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Received::refused(400, "not an HTTP/1.x request"));
    }
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
    };
    let method = method.to_owned();
    if header("transfer-encoding").is_some() {
        return Err(Received::refused(
            411,
            "a chunked body: this receiver reads Content-Length bodies",
        ));
    }
    let length = match header("content-length") {
        None if method == "POST" => return Err(Received::refused(411, "no Content-Length header")),
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| Received::refused(400, "Content-Length is not a number"))?,
    };
    if length > MAX_BODY_BYTES {
        return Err(Received::refused(413, "the body is too large"));
    }
    let signature = header(SIGNATURE_HEADER).map(str::to_owned);
    if header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(read_failed)?;
    }
    let mut body = data.split_off(head_end + 4);
    while body.len() < length {
        let n = stream.read(&mut chunk).await.map_err(read_failed)?;
        if n == 0 {
            return Err(Received::refused(
                400,
                "the connection closed before the whole body came",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let body =
        String::from_utf8(body).map_err(|_| Received::refused(400, "the body is not UTF-8"))?;
    Ok(Some(Request {
        method,
        signature,
        body,
    }))
}

fn read_failed(err: io::Error) -> Received {
    Received::refused(400, format!("reading the request: {err}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes the answer to `received` and closes the connection.
pub async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, received: &Received) -> io::Result<()> {
    let status = received.status();
    let (reason, body) = match received {
        Received::Events(events) => ("OK", format!("{} event(s)\n", events.len())),
        Received::Refused { why, .. } => (reason(status), format!("{why}\n")),
    };
    let allow = if status == 405 { "allow: POST\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\n{allow}connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{signature_header, unix_secs, EventKind};
    use serde_json::json;
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    const SECRET: &str = "a-webhook-secret-of-32-characters";

    fn body(user: &str) -> String {
        json!({"events": [
            {"id": "a", "userId": user, "seq": 1, "at": 1, "type": "user.online", "sockets": 1},
            {"id": "b", "userId": user, "seq": 2, "at": 2, "type": "user.offline", "lastSeenAt": 2},
        ]})
        .to_string()
    }

    fn now() -> u64 {
        unix_secs(SystemTime::now())
    }

    /// A receiver on the loopback, and what it reported.
    async fn start() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
        let receiver = Receiver::bind(("127.0.0.1", 0), SECRET)
            .await
            .expect("bind");
        let addr = receiver.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(receiver.run(move |received| {
            let _ = tx.send(received.clone());
        }));
        (addr, rx)
    }

    /// Sends `parts` one write each (a request split anywhere must read the
    /// same), then reads the whole answer.
    async fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        for part in parts {
            stream.write_all(part).await.expect("write");
            stream.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("an answer in time")
            .expect("read");
        answer
    }

    fn post(signature: Option<&str>, body: &str) -> Vec<u8> {
        let signature =
            signature.map_or_else(String::new, |s| format!("{SIGNATURE_HEADER}: {s}\r\n"));
        format!(
            "POST /hooks HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             {signature}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    async fn reported(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("reported in time")
            .expect("receiver running")
    }

    #[tokio::test]
    async fn a_signed_request_is_accepted_and_its_events_reported() {
        let (addr, mut rx) = start().await;
        let body = body("alice");
        let header = signature_header(SECRET.as_bytes(), now(), &body);
        let request = post(Some(&header), &body);
        // Split inside the head and inside the body.
        let (a, rest) = request.split_at(20);
        let (b, c) = rest.split_at(rest.len() - 10);
        let answer = exchange(addr, &[a, b, c]).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n2 event(s)\n"), "{answer}");
        let Received::Events(events) = reported(&mut rx).await else {
            panic!("not accepted");
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, EventKind::UserOnline { sockets: 1 });
        assert_eq!(events[1].user_id, "alice");
        // With an Expect: 100-continue, the interim answer first.
        let mut request = post(Some(&header), &body);
        let at = find(&request, b"\r\n\r\n").expect("head") + 2;
        request.splice(at..at, b"expect: 100-continue\r\n".iter().copied());
        let answer = exchange(addr, &[&request]).await;
        assert!(
            answer.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{answer}"
        );
        assert_eq!(reported(&mut rx).await.status(), 200);
    }

    #[tokio::test]
    async fn a_tampered_or_late_or_unsigned_request_is_refused_with_why() {
        let (addr, mut rx) = start().await;
        let body = body("alice");
        let header = signature_header(SECRET.as_bytes(), now(), &body);
        let tampered = body.replace("alice", "mallory");
        let answer = exchange(addr, &[&post(Some(&header), &tampered)]).await;
        assert!(
            answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("the signature does not match the body"),
            "{answer}"
        );
        assert_eq!(
            reported(&mut rx).await,
            Received::Refused {
                status: 401,
                why: "the signature does not match the body (is this WEBHOOK_SECRET the worker's?)"
                    .into()
            }
        );
        // Signed 301 s ago: a replay.
        let old = signature_header(SECRET.as_bytes(), now() - 301, &body);
        let answer = exchange(addr, &[&post(Some(&old), &body)]).await;
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        let Received::Refused { status: 401, why } = reported(&mut rx).await else {
            panic!("an old request was not refused");
        };
        assert!(why.contains("too far from now"), "{why}");
        let answer = exchange(addr, &[&post(None, &body)]).await;
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        assert_eq!(
            reported(&mut rx).await,
            Received::refused(401, "no HopeFlow-Signature header")
        );
        let answer = exchange(addr, &[&post(Some("v1=00"), &body)]).await;
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        assert!(
            matches!(reported(&mut rx).await, Received::Refused { status: 401, why } if why.starts_with("malformed HopeFlow-Signature"))
        );
    }

    #[tokio::test]
    async fn what_is_not_a_webhook_request_gets_its_status() {
        let (addr, mut rx) = start().await;
        // Signed, but not events: 400.
        let not_events = r#"{"events":[{"type":"user.online"}]}"#;
        let header = signature_header(SECRET.as_bytes(), now(), not_events);
        let answer = exchange(addr, &[&post(Some(&header), not_events)]).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            matches!(reported(&mut rx).await, Received::Refused { status: 400, why } if why.starts_with("malformed webhook body"))
        );
        let answer = exchange(addr, &[b"GET /hooks HTTP/1.1\r\nhost: x\r\n\r\n"]).await;
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{answer}"
        );
        assert!(answer.contains("allow: POST\r\n"), "{answer}");
        assert_eq!(reported(&mut rx).await.status(), 405);
        let answer = exchange(addr, &[b"POST / HTTP/1.1\r\nhost: x\r\n\r\n"]).await;
        assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
        assert_eq!(reported(&mut rx).await.status(), 411);
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(exchange(addr, &[chunked])
            .await
            .starts_with("HTTP/1.1 411 "));
        assert_eq!(reported(&mut rx).await.status(), 411);
        let huge = format!(
            "POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert!(exchange(addr, &[huge.as_bytes()])
            .await
            .starts_with("HTTP/1.1 413 "));
        assert_eq!(reported(&mut rx).await.status(), 413);
        assert!(exchange(addr, &[b"hello\r\n\r\n"])
            .await
            .starts_with("HTTP/1.1 400 "));
        assert_eq!(reported(&mut rx).await.status(), 400);
        // A body shorter than its Content-Length, then the close.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .expect("write");
        stream.shutdown().await.expect("shutdown");
        let Received::Refused { status: 400, why } = reported(&mut rx).await else {
            panic!("a short body was not refused");
        };
        assert!(why.contains("before the whole body"), "{why}");
        // A connection that sends nothing is not a request.
        drop(TcpStream::connect(addr).await.expect("connect"));
        let body = body("bob");
        let header = signature_header(SECRET.as_bytes(), now(), &body);
        exchange(addr, &[&post(Some(&header), &body)]).await;
        assert_eq!(reported(&mut rx).await.status(), 200);
    }

    #[test]
    fn judging_uses_the_tolerance_given() {
        let body = body("alice");
        let t = 1_700_000_000;
        let request = Request {
            method: "POST".into(),
            signature: Some(signature_header(SECRET.as_bytes(), t, &body)),
            body,
        };
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let minute = Duration::from_secs(60);
        assert_eq!(
            judge(&request, SECRET.as_bytes(), at(t + 60), minute).status(),
            200
        );
        assert_eq!(
            judge(&request, SECRET.as_bytes(), at(t + 61), minute).status(),
            401
        );
        assert_eq!(
            judge(&request, SECRET.as_bytes(), at(t + 61), DEFAULT_TOLERANCE).status(),
            200
        );
    }
}
