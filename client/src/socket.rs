//! A HopeFlow socket over tokio-tungstenite: confirmed subscriptions, a
//! stream of typed events, acks, pings, and automatic reconnection with
//! jittered exponential backoff that re-subscribes the current filters,
//! optionally with a fresh token from a [`TokenProvider`] each time, and
//! resumes from the user's history what the drop made it miss.
//!
//! One background task owns the connection; [`Client`] talks to it through
//! channels, so every method takes `&self` and the client can be shared.
//!
//! # Resume
//!
//! With history on (the server's default), every envelope carries the
//! user's `seq` and every `subscribed` confirmation the `seq` and `epoch`
//! it took effect at. The client keeps a [`Position`]: the epoch, and the
//! highest `seq` it delivered (or its first subscription started after).
//! It delivers an envelope with a `seq` only once, and only above that
//! position, so the events come in `seq` order without duplicates.
//!
//! After every reconnect it re-subscribes its filters and sends
//! `resume {since: position.seq, epoch}`; envelopes that come before the
//! server's `resumed` answer are held back, then delivered together with
//! the replayed ones, sorted by `seq`, each once. A resume the server
//! could not serve whole (history trimmed or expired past `since`, or a new
//! epoch: the history was reset) is reported as [`Event::Gap`] before the
//! envelopes that follow it; the client goes on from the `resumed` answer's
//! position. Without history (no `seq` anywhere) nothing of this happens:
//! envelopes are delivered as they come, and nothing is resumed.
//!
//! # Token lifetime
//!
//! A socket lives no longer than its token: the server sends
//! `token_expiring` shortly before the token's `exp` ([`Event::TokenExpiring`])
//! and closes the socket with 4002 at `exp` plus its leeway. With a
//! [`TokenProvider`] the client answers the notice by asking the provider
//! and sending `refresh`: the same socket goes on ([`Event::Refreshed`]), or
//! the refresh fails ([`Event::RefreshRejected`]) and, after the 4002, the
//! client reconnects with a token from the provider. Without a provider (a
//! fixed token) the 4002 ends the client with [`Event::TokenExpired`], and a
//! reconnect the server refuses for its token (401, 403) ends it with
//! [`Event::Rejected`]. Any other refusal, such as 429 `too_many_sockets`
//! (the user has `MAX_SOCKETS_PER_USER` sockets open until one closes), is
//! one failed attempt: the client goes on reconnecting with backoff.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use hopeflow_realtime::filter::{Filter, MAX_FILTERS_PER_MESSAGE};
use hopeflow_realtime::protocol::{ClientFrame, ServerFrame, ServerMessage};
pub use hopeflow_realtime::protocol::{CloseCode, Envelope, ErrorCode};

use crate::api::ApiError;
use crate::publisher::CONNECT_TIMEOUT;
use crate::tls::{self, TlsError, Trust};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the token goes when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer` (server clients).
    Header,
    /// `?token=` (for clients that cannot set headers; a URL's query may
    /// end up in access logs, docs/SECURITY.md "Tokens in URLs").
    Query,
}

/// What a [`TokenProvider`] returns: a token, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where a [`Client`] gets a fresh token before each reconnect attempt
/// (tokens expire; an operator's disconnect with close code 4000 asks for a
/// new one) and when the server says the socket's token expires soon (it is
/// sent as a `refresh`, and the socket goes on): an async function,
/// typically a call to your auth service. Before a reconnect, a failure or
/// a wait longer than [`ClientOptions::connect_timeout`] counts as a failed
/// attempt: the client backs off and asks again; for a refresh it is an
/// [`Event::RefreshRejected`].
///
/// ```
/// use hopeflow_client::{token, ClientOptions};
///
/// let options = ClientOptions::new("ws://127.0.0.1:8787", "")
///     .with_token_provider(|| async {
///         // e.g. a request to your backend; here, minted locally.
///         Ok::<_, String>(token::mint("dev-secret", "alice", None, Default::default()))
///     });
/// assert!(options.token_provider.is_some());
/// ```
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    pub fn new<F, Fut>(fetch: F) -> TokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || -> TokenFuture { Box::pin(fetch()) }))
    }

    /// Asks for a token.
    pub async fn token(&self) -> Result<String, String> {
        (self.0)().await
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider")
    }
}

/// Sees every frame the server sends, as it arrives (see
/// [`ClientOptions::with_frame_observer`]).
#[derive(Clone)]
pub struct FrameObserver(Arc<dyn Fn(ServerFrameText<'_>) + Send + Sync>);

/// A frame from the server, as [`FrameObserver`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrameText<'a> {
    /// A text frame, exactly as received.
    Text(&'a str),
    /// A close frame that carries a status code: the code and reason.
    Close(u16, &'a str),
}

impl fmt::Debug for FrameObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameObserver")
    }
}

/// How a [`Client`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://` or `wss://` URL of the service root.
    pub url: String,
    /// The token of the first connection (and of every one, without a
    /// `token_provider`). Left empty with a provider, the first connection
    /// asks the provider too.
    pub token: String,
    /// Asked for a fresh token before every reconnect attempt (the token it
    /// returns replaces `token`) and to refresh the socket's token when the
    /// server says it expires soon. Without one, the socket ends when
    /// `token` expires ([`Event::TokenExpired`]).
    pub token_provider: Option<TokenProvider>,
    pub token_placement: TokenPlacement,
    /// Reconnect after the connection drops (on by default).
    pub reconnect: bool,
    /// First reconnect delay; doubled each failed attempt, with jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 2 s). It is also how late a client
    /// can come back after the service does: after a 6 s restart of 1,000
    /// sockets, the last came back 5.9 s after the runtime with 10 s, 4.9 s
    /// with 5 s and 1.9 s with 2 s (bench/README.md, "Redeploy storm").
    pub backoff_max: Duration,
    /// The CAs `wss://` certificates are checked against (always checked).
    pub trust: Trust,
    /// How long one connection attempt (TCP, TLS, upgrade) may take.
    pub connect_timeout: Duration,
    /// Sees every server frame before the client handles it.
    pub frame_observer: Option<FrameObserver>,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            token: token.into(),
            token_provider: None,
            token_placement: TokenPlacement::Header,
            reconnect: true,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            trust: Trust::public_roots(),
            connect_timeout: CONNECT_TIMEOUT,
            frame_observer: None,
        }
    }

    /// Also trusts the CA certificate(s) in the PEM file at `path` (a
    /// private CA).
    pub fn with_ca_cert(mut self, path: impl AsRef<Path>) -> Result<ClientOptions, TlsError> {
        self.trust = self.trust.add_ca_file(path)?;
        Ok(self)
    }

    /// Sets [`ClientOptions::token_provider`] to the async function `fetch`.
    pub fn with_token_provider<F, Fut>(mut self, fetch: F) -> ClientOptions
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_provider = Some(TokenProvider::new(fetch));
        self
    }

    /// Calls `observe` with every frame the server sends (text and close),
    /// before the client handles it: for logging the wire, or checking it
    /// against `docs/asyncapi.yaml` (the e2e tests do). It runs on the
    /// client's task, so it should be quick.
    pub fn with_frame_observer(
        mut self,
        observe: impl Fn(ServerFrameText<'_>) + Send + Sync + 'static,
    ) -> ClientOptions {
        self.frame_observer = Some(FrameObserver(Arc::new(observe)));
        self
    }
}

/// What happens on the socket, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A delivery; ack it with [`Client::ack`].
    Envelope(Envelope),
    /// An error frame not tied to a request of ours (e.g. `rate_limited`
    /// while no subscribe or unsubscribe waits).
    ServerError { code: ErrorCode, message: String },
    /// The connection dropped (close code if the server sent one; see
    /// [`CloseCode::from_code`] for ours). The client reconnects unless the
    /// code says not to ([`reconnect_after`]: 1008, 1009, and 4001, an
    /// operator's disconnect), in which case no event follows and
    /// [`Client::next_event`] returns `None`. After 4000 (an operator's
    /// disconnect asking for a fresh token) and 4002 (the token expired) it
    /// reconnects with a token from the [`TokenProvider`]; without one, 4002
    /// ends the client with [`Event::TokenExpired`].
    Disconnected { code: Option<u16>, reason: String },
    /// Connected again after `attempt` tries; filters were re-subscribed
    /// and, with history on, a resume was asked for: the envelopes it
    /// recovers follow (with `recovered: true`), merged by `seq` with those
    /// that arrived meanwhile.
    Reconnected { attempt: u32 },
    /// After a reconnect, the history could not give back everything the
    /// drop may have made this client miss: envelopes matching its filters
    /// with a `seq` above `since` (of `previous_epoch`) and up to `seq` (of
    /// `epoch`) may be missing. Resync from your backend. `replayed` of
    /// them were recovered anyway and follow this event; delivery goes on
    /// from `seq` of `epoch`.
    ///
    /// `epoch` differs from `previous_epoch` when the user's history was
    /// reset (nothing of the old one can be recovered); otherwise the
    /// history no longer reached back to `since + 1` (it keeps the last
    /// `HISTORY_SIZE` envelopes for `HISTORY_TTL_SECS`).
    Gap {
        since: u64,
        seq: u64,
        epoch: String,
        previous_epoch: String,
        replayed: usize,
    },
    /// The server's notice that the socket's token expires at `expires_at`
    /// (unix seconds): at that time plus the server's leeway it closes the
    /// socket with 4002 unless a `refresh` extends it. With a
    /// [`TokenProvider`] the client has already asked it for a token and
    /// sends the refresh ([`Event::Refreshed`] or [`Event::RefreshRejected`]
    /// follows); without one this is the warning that the socket will end.
    TokenExpiring { expires_at: u64 },
    /// The server accepted a refresh: the same socket (id, filters,
    /// position) now lives until `expires_at` (unix seconds; `None`: the new
    /// token has no `exp`).
    Refreshed { expires_at: Option<u64> },
    /// A refresh failed: the server answered `refresh_rejected` (`message`
    /// is its message), or the [`TokenProvider`] gave no token (`message`
    /// says why). The socket keeps its old expiry; when it closes with 4002
    /// the client reconnects with a token from the provider.
    RefreshRejected { message: String },
    /// The server closed the socket with 4002 (its token expired) and the
    /// client has no [`TokenProvider`] to get another (or
    /// [`ClientOptions::reconnect`] is off): follows the
    /// [`Event::Disconnected`], and the client ends ([`Client::next_event`]
    /// returns `None`). `expires_at` is the token's `exp` as the server last
    /// announced it (or as read from the token), if known.
    TokenExpired { expires_at: Option<u64> },
    /// A reconnect was refused for its token (HTTP 401 or 403, `error` is a
    /// [`ClientError::Rejected`] with the server's reason) and the client
    /// has no [`TokenProvider`] to ask for another: retrying the same token
    /// cannot succeed, so the client ends ([`Client::next_event`] returns
    /// `None`). With a provider it keeps trying with fresh tokens. Other
    /// refusals (429 `too_many_sockets`, 5xx) never end the client: it
    /// keeps trying with backoff.
    Rejected { error: ClientError },
}

/// Where a client's deliveries stand in its user's history: `seq` is the
/// highest delivered (or the one its first subscription started after),
/// of history `epoch`. See [`Client::position`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

/// A subscribe / unsubscribe the server confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmation {
    /// Filters added (subscribe) or removed (unsubscribe).
    pub changed: usize,
    /// Filters on the socket now.
    pub total: usize,
    /// Warnings sent before the confirmation (`invalid_filter`,
    /// `too_many_filters`): some entries were skipped.
    pub warnings: Vec<(ErrorCode, String)>,
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientError {
    /// The upgrade was refused with this HTTP status and the server's JSON
    /// error body (`{"error": code, "message": ...}`; see
    /// [`ClientError::api_error`]). The handshake rarely reads the body, so
    /// the client asks again with a plain `GET` (which the server answers
    /// with the same checks) for the reason; empty if that did not say.
    Rejected { status: u16, body: String },
    /// Could not connect at all.
    Connect(String),
    /// The [`TokenProvider`] gave no token for the first connection.
    Token(String),
    /// The server refused the request (`subscription_limit`, or
    /// `rate_limited`: it dropped the frame).
    Refused { code: ErrorCode, message: String },
    /// The connection dropped before the answer came.
    Disconnected,
    /// The client was closed, or gave up reconnecting.
    Closed,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Rejected { status, body } => match refusal_reason(body) {
                Some(error) => write!(f, "upgrade refused ({status}): {error}"),
                // The one 429 of an upgrade; its body is rarely read, and a
                // plain GET (which opens no socket) cannot say.
                None if *status == 429 => write!(
                    f,
                    "upgrade refused (429): too_many_sockets: the user has as many sockets \
                     open as the server allows (MAX_SOCKETS_PER_USER); one must close first"
                ),
                None if body.trim().is_empty() => write!(f, "upgrade refused ({status})"),
                None => write!(f, "upgrade refused ({status}): {}", body.trim()),
            },
            ClientError::Connect(why) => write!(f, "cannot connect: {why}"),
            ClientError::Token(why) => write!(f, "cannot get a token: {why}"),
            ClientError::Refused { code, message } => write!(f, "{}: {message}", code.as_str()),
            ClientError::Disconnected => f.write_str("connection lost before the answer"),
            ClientError::Closed => f.write_str("client is closed"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The server's error (`invalid_token: invalid token: ...`) of a
    /// [`ClientError::Rejected`] whose body carried one.
    pub fn api_error(&self) -> Option<ApiError> {
        match self {
            ClientError::Rejected { body, .. } => refusal_reason(body),
            _ => None,
        }
    }
}

/// The JSON error in a refused upgrade's body; also when the handshake read
/// it with its chunked framing around it.
fn refusal_reason(body: &str) -> Option<ApiError> {
    if let Ok(error) = serde_json::from_str(body.trim()) {
        return Some(error);
    }
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(body.get(start..=end)?).ok()
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

enum Command {
    Filters {
        filters: Vec<Value>,
        subscribe: bool,
        reply: Reply<Confirmation>,
    },
    Ack {
        envelope_id: String,
        result: Value,
    },
    Ping {
        reply: Reply<()>,
    },
    Close,
}

/// A connected HopeFlow socket.
///
/// ```no_run
/// # async fn demo() -> Result<(), hopeflow_client::ClientError> {
/// use hopeflow_client::{token, Client, ClientOptions, Event};
/// use serde_json::json;
///
/// let token = token::mint("dev-secret", "alice", None, Default::default());
/// let mut client = Client::connect(ClientOptions::new("ws://127.0.0.1:8787", token)).await?;
/// client.subscribe(vec![json!({"type": "chat_message"})]).await?;
/// while let Some(event) = client.next_event().await {
///     if let Event::Envelope(envelope) = event {
///         client.ack(&envelope.envelope_id, json!({"seen": true})).await?;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    position: SharedPosition,
}

type SharedPosition = Arc<std::sync::Mutex<Option<Position>>>;

impl Client {
    /// Connects; fails if the first connection is refused.
    pub async fn connect(mut options: ClientOptions) -> Result<Client, ClientError> {
        if options.token.is_empty() {
            if let Some(provider) = &options.token_provider {
                options.token = fetch_token(provider, options.connect_timeout)
                    .await
                    .map_err(ClientError::Token)?;
            }
        }
        let ws = open(&options).await?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let position = SharedPosition::default();
        let expires_at = token_expiry(&options.token);
        tokio::spawn(
            Connection {
                options,
                commands: command_rx,
                events: event_tx,
                filters: Vec::new(),
                pending: VecDeque::new(),
                pings: VecDeque::new(),
                position: None,
                shared_position: position.clone(),
                held: None,
                expires_at,
                refreshing: None,
                sent_refresh: None,
            }
            .run(ws),
        );
        Ok(Client {
            commands,
            events,
            position,
        })
    }

    /// Where the deliveries stand in the user's history: the highest `seq`
    /// handed to the event queue (events not yet taken with
    /// [`Client::next_event`] included), or the one the first subscription
    /// started after. `None` without history, or before a subscription is
    /// confirmed. A reconnect resumes from it.
    pub fn position(&self) -> Option<Position> {
        self.position.lock().ok().and_then(|p| p.clone())
    }

    /// Adds filters; resolves when the server confirms them.
    pub async fn subscribe(&self, filters: Vec<Value>) -> Result<Confirmation, ClientError> {
        self.change_filters(filters, true).await
    }

    /// Removes filters; resolves when the server confirms.
    pub async fn unsubscribe(&self, filters: Vec<Value>) -> Result<Confirmation, ClientError> {
        self.change_filters(filters, false).await
    }

    async fn change_filters(
        &self,
        filters: Vec<Value>,
        subscribe: bool,
    ) -> Result<Confirmation, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Filters {
            filters,
            subscribe,
            reply,
        })?;
        answer.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Acks a delivery with `result` (returned to the publisher).
    pub async fn ack(&self, envelope_id: &str, result: Value) -> Result<(), ClientError> {
        self.send(Command::Ack {
            envelope_id: envelope_id.to_owned(),
            result,
        })
    }

    /// Sends `ping` and waits for `pong`.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ping { reply })?;
        answer.await.unwrap_or(Err(ClientError::Closed))
    }

    /// The next event; `None` once the client is closed for good.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next delivery, skipping other events.
    pub async fn next_envelope(&mut self) -> Option<Envelope> {
        loop {
            if let Event::Envelope(envelope) = self.next_event().await? {
                return Some(envelope);
            }
        }
    }

    /// Closes the socket and stops reconnecting.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands.send(command).map_err(|_| ClientError::Closed)
    }
}

/// The events as a `Stream`, for use with `StreamExt` combinators.
impl futures::Stream for Client {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// The delay before reconnect attempt `attempt` (1-based): exponential,
/// capped, with jitter in [50%, 100%] of it so clients do not reconnect in step.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exponential = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exponential.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Whether a client should reconnect after the server closed with `code`
/// (`None`: the connection dropped without a close frame). Not after 1008
/// and 1009 (the client must change) nor 4001 (an operator said so). After
/// 4000 and 4002 (token expired) only with a fresh token: a [`Client`]
/// without a [`TokenProvider`] ends after 4002.
///
/// The server's codes answer as its table says ([`CloseCode::reconnect`]);
/// any other code is a dropped connection.
pub fn reconnect_after(code: Option<u16>) -> bool {
    code.and_then(CloseCode::from_code)
        .is_none_or(CloseCode::reconnect)
}

/// What the provider's token for a refresh resolves to; pending while none
/// is on its way.
async fn provided(refreshing: &mut Option<TokenFuture>) -> Result<String, String> {
    match refreshing {
        Some(token) => token.await,
        None => std::future::pending().await,
    }
}

/// The `exp` claim of `token` (unix seconds), read without checking it.
pub fn token_expiry(token: &str) -> Option<u64> {
    let exp = crate::token::payload(token)?.get("exp")?.as_f64()?;
    (exp.is_finite() && exp >= 0.0).then_some(exp as u64)
}

/// Asks `provider` for a token, giving up after `limit`.
async fn fetch_token(provider: &TokenProvider, limit: Duration) -> Result<String, String> {
    match tokio::time::timeout(limit, provider.token()).await {
        Ok(Ok(token)) if token.is_empty() => {
            Err("the token provider returned an empty token".into())
        }
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "the token provider gave no answer within {} s",
            limit.as_secs_f64()
        )),
    }
}

/// A cheap jitter source: the sub-second clock.
fn jitter() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| f64::from(d.subsec_nanos() % 1_000_000) / 1_000_000.0)
        .unwrap_or(0.5)
}

/// The URL to connect to: the service root gets its `/` (a request line
/// without a path is malformed), and the token its `?token=` when asked.
pub fn connect_url(url: &str, token: &str, placement: TokenPlacement) -> String {
    let mut url = url.to_owned();
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    if !url[after_scheme..].contains('/') {
        match url.find('?') {
            Some(query) => url.insert(query, '/'),
            None => url.push('/'),
        }
    }
    if placement == TokenPlacement::Query {
        let separator = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{separator}token={token}");
    }
    url
}

async fn open(options: &ClientOptions) -> Result<Ws, ClientError> {
    let url = connect_url(&options.url, &options.token, options.token_placement);
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    if options.token_placement == TokenPlacement::Header {
        let value = HeaderValue::from_str(&format!("Bearer {}", options.token))
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        request.headers_mut().insert("Authorization", value);
    }
    let connector = Connector::Rustls(options.trust.client_config());
    // Nagle off: frames are small and latency is the point.
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
    let Ok(connected) = tokio::time::timeout(options.connect_timeout, connecting).await else {
        return Err(ClientError::Connect(format!(
            "timed out after {} s",
            options.connect_timeout.as_secs_f64()
        )));
    };
    match connected {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let mut body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if refusal_reason(&body).is_none() {
                if let Some(reason) = ask_why(options, status).await {
                    body = reason;
                }
            }
            Err(ClientError::Rejected { status, body })
        }
        Err(e) => Err(ClientError::Connect(tls::describe(&e))),
    }
}

/// Why the upgrade was refused with `status`: the handshake stops at the
/// response's head, so the JSON body with the reason is usually not read.
/// The server runs the same checks (origin, token) on a plain `GET /` and
/// answers them with the same error, so this asks that way; the answer
/// counts only if it has the same status and an error body.
async fn ask_why(options: &ClientOptions, status: u16) -> Option<String> {
    let url = connect_url(&options.url, &options.token, options.token_placement);
    let url = if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        format!("http://{}", url.strip_prefix("ws://")?)
    };
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*options.trust.client_config()).clone())
        .timeout(options.connect_timeout)
        .build()
        .ok()?;
    let mut request = http.get(url);
    if options.token_placement == TokenPlacement::Header {
        request = request.bearer_auth(&options.token);
    }
    let response = request.send().await.ok()?;
    if response.status().as_u16() != status {
        return None;
    }
    let body = response.text().await.ok()?;
    refusal_reason(&body).is_some().then_some(body)
}

/// A subscribe / unsubscribe waiting for its confirmation. Confirmations come
/// in request order, so a queue matches them up.
struct Pending {
    /// Valid filters of the request, applied to `filters` when confirmed.
    filters: Vec<Filter>,
    subscribe: bool,
    warnings: Vec<(ErrorCode, String)>,
    /// `None` for re-subscriptions after a reconnect.
    reply: Option<Reply<Confirmation>>,
}

/// The background task that owns the socket.
struct Connection {
    options: ClientOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    /// Filters the server confirmed, re-subscribed after a reconnect.
    filters: Vec<Filter>,
    pending: VecDeque<Pending>,
    pings: VecDeque<Reply<()>>,
    /// Where the deliveries stand; `None` until a confirmation carries a
    /// `seq` and an `epoch` (never without history).
    position: Option<Position>,
    /// [`Client::position`]'s copy.
    shared_position: SharedPosition,
    /// From a reconnect's `resume` to the `resumed` answer: envelopes held
    /// back, to be merged with the replay.
    held: Option<Vec<Envelope>>,
    /// When the socket's token expires (unix seconds), as last known: read
    /// from the token, then as the server announces it.
    expires_at: Option<u64>,
    /// The provider's token for a refresh, on its way.
    refreshing: Option<TokenFuture>,
    /// The token of the refresh sent, until the server answers.
    sent_refresh: Option<String>,
}

impl Connection {
    async fn run(mut self, mut ws: Ws) {
        loop {
            let (code, reason) = match self.serve(&mut ws).await {
                Some(close) => close,
                None => return, // closed by the user
            };
            self.fail_pending();
            // Never delivered: the next resume asks for them again.
            self.held = None;
            // The next connection's token replaces what was on its way.
            self.refreshing = None;
            self.sent_refresh = None;
            let _ = self.events.send(Event::Disconnected {
                code,
                reason: reason.clone(),
            });
            let expired = code == Some(CloseCode::TokenExpired.code());
            // Reconnecting with the token that expired would be refused.
            let fixed_token = self.options.token_provider.is_none();
            if !self.options.reconnect || !reconnect_after(code) || (expired && fixed_token) {
                if expired {
                    let _ = self.events.send(Event::TokenExpired {
                        expires_at: self.expires_at,
                    });
                }
                return;
            }
            match self.reconnect().await {
                Some(next) => ws = next,
                None => return,
            }
        }
    }

    /// Serves one connection; returns its close code and reason when it
    /// drops, or `None` when the user closed the client.
    async fn serve(&mut self, ws: &mut Ws) -> Option<(Option<u16>, String)> {
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        let _ = ws.close(None).await;
                        return None;
                    };
                    if !self.command(ws, command).await {
                        return None;
                    }
                }
                token = provided(&mut self.refreshing) => {
                    self.refreshing = None;
                    match token {
                        Ok(token) => {
                            let frame = ClientFrame::Refresh { token: Some(token.clone()) };
                            self.sent_refresh = Some(token);
                            // A failed send surfaces as the socket's close.
                            let _ = ws.send(Message::text(frame.to_text())).await;
                        }
                        Err(why) => {
                            let _ = self.events.send(Event::RefreshRejected {
                                message: format!("cannot get a token to refresh with: {why}"),
                            });
                        }
                    }
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(FrameObserver(observe)) = &self.options.frame_observer {
                            observe(ServerFrameText::Text(&text));
                        }
                        self.message(&text)
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if let (Some(FrameObserver(observe)), Some(frame)) =
                            (&self.options.frame_observer, &frame)
                        {
                            observe(ServerFrameText::Close(u16::from(frame.code), &frame.reason));
                        }
                        // Send the reply tungstenite only queued, so the
                        // server's side ends now, not after the reconnect's
                        // backoff and token fetch.
                        let reply = ws.close(None);
                        let _ = tokio::time::timeout(Duration::from_secs(1), reply).await;
                        return Some(close_info(frame));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Some((None, e.to_string())),
                    None => return Some((None, "connection closed".into())),
                }
            }
        }
    }

    /// Handles one user command; `false` when the user closed the client.
    async fn command(&mut self, ws: &mut Ws, command: Command) -> bool {
        let frame = match command {
            Command::Close => {
                let _ = ws.close(None).await;
                return false;
            }
            Command::Ack {
                envelope_id,
                result,
            } => ClientFrame::Ack {
                envelope_id,
                result,
            },
            Command::Ping { reply } => {
                self.pings.push_back(reply);
                ClientFrame::Ping
            }
            Command::Filters {
                filters,
                subscribe,
                reply,
            } => {
                self.pending.push_back(Pending {
                    filters: Filter::parse_all(&filters).valid,
                    subscribe,
                    warnings: Vec::new(),
                    reply: Some(reply),
                });
                if subscribe {
                    ClientFrame::Subscribe { filters }
                } else {
                    ClientFrame::Unsubscribe { filters }
                }
            }
        };
        // A failed send surfaces as the socket's close on the next read.
        let _ = ws.send(Message::text(frame.to_text())).await;
        true
    }

    fn message(&mut self, text: &str) {
        match ServerMessage::parse(text) {
            Some(ServerMessage::Pong) => {
                if let Some(reply) = self.pings.pop_front() {
                    let _ = reply.send(Ok(()));
                }
            }
            Some(ServerMessage::Envelope(envelope)) => match &mut self.held {
                // Without a seq it is not part of the history's order.
                Some(held) if envelope.seq.is_some() => held.push(envelope),
                _ => self.deliver(envelope),
            },
            Some(ServerMessage::Frame(ServerFrame::Subscribed {
                added,
                total,
                seq,
                epoch,
            })) => {
                self.confirm(added, total);
                if let (Some(seq), Some(epoch)) = (seq, epoch) {
                    self.subscribed_at(seq, epoch);
                }
            }
            Some(ServerMessage::Frame(ServerFrame::Unsubscribed { removed, total })) => {
                self.confirm(removed, total);
            }
            Some(ServerMessage::Frame(ServerFrame::Error { code, message })) => {
                self.error(code, message);
            }
            Some(ServerMessage::Frame(ServerFrame::Resumed {
                since,
                seq,
                replayed,
                complete,
                epoch,
            })) => self.resumed(since, seq, replayed, complete, epoch),
            Some(ServerMessage::Frame(ServerFrame::TokenExpiring { expires_at })) => {
                self.token_expiring(expires_at);
            }
            Some(ServerMessage::Frame(ServerFrame::Refreshed { expires_at })) => {
                if let Some(token) = self.sent_refresh.take() {
                    self.options.token = token;
                }
                self.expires_at = expires_at;
                let _ = self.events.send(Event::Refreshed { expires_at });
            }
            None => {}
        }
    }

    /// The server's notice: with a provider, ask it for a token to refresh
    /// with (once at a time; the answer is sent by [`Connection::serve`]).
    fn token_expiring(&mut self, expires_at: u64) {
        self.expires_at = Some(expires_at);
        let _ = self.events.send(Event::TokenExpiring { expires_at });
        if let (Some(provider), None) = (&self.options.token_provider, &self.refreshing) {
            let provider = provider.clone();
            let limit = self.options.connect_timeout;
            self.refreshing = Some(Box::pin(async move { fetch_token(&provider, limit).await }));
        }
    }

    /// Hands an envelope to the application, unless its `seq` was
    /// delivered already (or is not above the position).
    fn deliver(&mut self, envelope: Envelope) {
        if let (Some(seq), Some(position)) = (envelope.seq, &mut self.position) {
            if seq <= position.seq {
                return;
            }
            position.seq = seq;
        }
        let _ = self.events.send(Event::Envelope(envelope));
        self.publish_position();
    }

    fn publish_position(&self) {
        if let Ok(mut shared) = self.shared_position.lock() {
            shared.clone_from(&self.position);
        }
    }

    /// A confirmation's position: everything up to `seq` came before the
    /// subscription, everything after it comes live on this socket. While
    /// resuming, the replay covers it instead.
    fn subscribed_at(&mut self, seq: u64, epoch: String) {
        if self.held.is_some() {
            return;
        }
        match &mut self.position {
            Some(position) if position.epoch == epoch => position.seq = position.seq.max(seq),
            Some(position) => {
                // A new history under a live socket: what came before is lost.
                let _ = self.events.send(Event::Gap {
                    since: position.seq,
                    seq,
                    epoch: epoch.clone(),
                    previous_epoch: position.epoch.clone(),
                    replayed: 0,
                });
                self.position = Some(Position { epoch, seq });
            }
            None => self.position = Some(Position { epoch, seq }),
        }
        self.publish_position();
    }

    /// The end of a resume's replay: delivers what was held back, by `seq`.
    fn resumed(&mut self, since: u64, seq: u64, replayed: usize, complete: bool, epoch: String) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        let previous = self.position.take().unwrap_or_else(|| Position {
            epoch: epoch.clone(),
            seq: since,
        });
        // The same history, and a position it has reached: go on from ours.
        // Otherwise the new history's envelopes all count.
        let continued = previous.epoch == epoch && since <= seq;
        if !complete {
            let _ = self.events.send(Event::Gap {
                since,
                seq,
                epoch: epoch.clone(),
                previous_epoch: previous.epoch.clone(),
                replayed,
            });
        }
        self.position = Some(Position {
            epoch,
            seq: if continued { previous.seq } else { 0 },
        });
        // Stable: of two copies of one seq, the first that came is kept.
        held.sort_by_key(|envelope| envelope.seq);
        for envelope in held {
            self.deliver(envelope);
        }
        // Everything matching up to `seq` was replayed or held.
        if let Some(position) = &mut self.position {
            position.seq = position.seq.max(seq);
        }
        self.publish_position();
    }

    fn confirm(&mut self, changed: usize, total: usize) {
        let Some(pending) = self.pending.pop_front() else {
            return;
        };
        if pending.subscribe {
            for filter in pending.filters {
                if !self.filters.contains(&filter) {
                    self.filters.push(filter);
                }
            }
        } else {
            self.filters.retain(|f| !pending.filters.contains(f));
        }
        if let Some(reply) = pending.reply {
            let _ = reply.send(Ok(Confirmation {
                changed,
                total,
                warnings: pending.warnings,
            }));
        }
    }

    fn error(&mut self, code: ErrorCode, message: String) {
        match code {
            // Warnings about the front request; its confirmation follows.
            ErrorCode::InvalidFilter | ErrorCode::TooManyFilters if !self.pending.is_empty() => {
                if let Some(front) = self.pending.front_mut() {
                    front.warnings.push((code, message));
                }
            }
            // The server keeps no history (any more): no resume, no
            // position; what was held back is delivered as it came.
            ErrorCode::HistoryDisabled if self.held.is_some() => {
                self.position = None;
                self.publish_position();
                let _ = self.events.send(Event::ServerError { code, message });
                for envelope in self.held.take().unwrap_or_default() {
                    self.deliver(envelope);
                }
            }
            // The front request was refused whole: no confirmation follows.
            // The server answers frames in order and a confirmation comes
            // before anything sent later, so a refusal while requests wait
            // is the oldest one's (as the browser client reads it too). A
            // rate-limited late ack would be misread, but acks of pending
            // deliveries are never limited.
            ErrorCode::SubscriptionLimit | ErrorCode::RateLimited if !self.pending.is_empty() => {
                if let Some(Pending {
                    reply: Some(reply), ..
                }) = self.pending.pop_front()
                {
                    let _ = reply.send(Err(ClientError::Refused { code, message }));
                }
            }
            // Our refresh was refused: the socket keeps its old expiry.
            ErrorCode::RefreshRejected => {
                self.sent_refresh = None;
                let _ = self.events.send(Event::RefreshRejected { message });
            }
            _ => {
                let _ = self.events.send(Event::ServerError { code, message });
            }
        }
    }

    fn fail_pending(&mut self) {
        for pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(ClientError::Disconnected));
            }
        }
        for reply in self.pings.drain(..) {
            let _ = reply.send(Err(ClientError::Disconnected));
        }
    }

    /// Reconnects with backoff and re-subscribes; `None` if the user closed
    /// the client meanwhile.
    async fn reconnect(&mut self) -> Option<Ws> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let delay = backoff_delay(
                self.options.backoff_initial,
                self.options.backoff_max,
                attempt,
                jitter(),
            );
            // Commands that arrive while disconnected fail fast, except Close.
            let deadline = tokio::time::sleep(delay);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    command = self.commands.recv() => match command {
                        None | Some(Command::Close) => return None,
                        Some(Command::Filters { reply, .. }) => drop(reply.send(Err(ClientError::Disconnected))),
                        Some(Command::Ping { reply }) => drop(reply.send(Err(ClientError::Disconnected))),
                        Some(Command::Ack { .. }) => {}
                    }
                }
            }
            if let Some(provider) = &self.options.token_provider {
                // A failed fetch is a failed attempt; the next one backs off.
                let Ok(token) = fetch_token(provider, self.options.connect_timeout).await else {
                    continue;
                };
                self.options.token = token;
            }
            let mut ws = match open(&self.options).await {
                Ok(ws) => ws,
                // The server refuses this token, and no provider can give
                // another: trying it again cannot succeed. Any other
                // refusal (429 past the user's socket cap, 5xx) may pass
                // later: one failed attempt.
                Err(
                    error @ ClientError::Rejected {
                        status: 401 | 403, ..
                    },
                ) if self.options.token_provider.is_none() => {
                    let _ = self.events.send(Event::Rejected { error });
                    return None;
                }
                Err(_) => continue,
            };
            self.expires_at = token_expiry(&self.options.token);
            for chunk in self.filters.chunks(MAX_FILTERS_PER_MESSAGE) {
                let filters: Vec<Value> = chunk
                    .iter()
                    .filter_map(|f| serde_json::to_value(f).ok())
                    .collect();
                self.pending.push_back(Pending {
                    filters: chunk.to_vec(),
                    subscribe: true,
                    warnings: Vec::new(),
                    reply: None,
                });
                let text = ClientFrame::Subscribe { filters }.to_text();
                let _ = ws.send(Message::text(text)).await;
            }
            // After the filters, so the replay matches them; what comes
            // before its answer is held back.
            if let Some(position) = &self.position {
                let resume = ClientFrame::Resume {
                    since: position.seq,
                    epoch: position.epoch.clone(),
                };
                self.held = Some(Vec::new());
                let _ = ws.send(Message::text(resume.to_text())).await;
            }
            let _ = self.events.send(Event::Reconnected { attempt });
            return Some(ws);
        }
    }
}

fn close_info(frame: Option<CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(frame) => (Some(u16::from(frame.code)), frame.reason.to_string()),
        None => (None, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn connect_urls_have_a_path() {
        use TokenPlacement::{Header, Query};
        assert_eq!(connect_url("ws://h:1", "t", Header), "ws://h:1/");
        assert_eq!(connect_url("ws://h:1/", "t", Query), "ws://h:1/?token=t");
        assert_eq!(connect_url("ws://h:1", "t", Query), "ws://h:1/?token=t");
        assert_eq!(
            connect_url("wss://h/x?a=1", "t", Query),
            "wss://h/x?a=1&token=t"
        );
        assert_eq!(connect_url("ws://h?a=1", "t", Header), "ws://h/?a=1");
    }

    #[test]
    fn client_errors_are_std_errors() {
        let errors: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(ClientError::Rejected {
                status: 401,
                body: r#"{"error":"invalid_token","message":"expired"}"#.into(),
            }),
            Box::new(ClientError::Connect("connection refused".into())),
            Box::new(ClientError::Token("no token".into())),
            Box::new(ClientError::Refused {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
            }),
            Box::new(ClientError::Disconnected),
            Box::new(ClientError::Closed),
        ];
        assert_eq!(
            errors[0].to_string(),
            "upgrade refused (401): invalid_token: expired"
        );
        assert!(errors.iter().all(|e| e.source().is_none()));
        let connect = || -> Result<(), Box<dyn std::error::Error>> { Err(ClientError::Closed)? };
        assert!(connect().is_err_and(|e| e.to_string() == "client is closed"));
    }

    #[test]
    fn close_codes_say_whether_to_reconnect() {
        // The server's own codes.
        assert!(!reconnect_after(Some(1008)));
        assert!(!reconnect_after(Some(1009)));
        assert!(reconnect_after(Some(1012)));
        // An operator's disconnect: for good, or with a fresh token.
        assert!(!reconnect_after(Some(4001)));
        assert!(reconnect_after(Some(4000)));
        // Anything else (a restart, a proxy, no close frame at all) is a
        // dropped connection: come back.
        assert!(reconnect_after(Some(1001)));
        assert!(reconnect_after(Some(1006)));
        assert!(reconnect_after(Some(4999)));
        assert!(reconnect_after(None));
        // Every code of the server's table, as the table says.
        for close in CloseCode::ALL {
            assert_eq!(
                reconnect_after(Some(close.code())),
                close.reconnect(),
                "{close:?}"
            );
        }
    }

    #[tokio::test]
    async fn token_providers_answer_fail_and_time_out() {
        let limit = Duration::from_millis(200);
        let counter = Arc::new(AtomicUsize::new(0));
        let seen = counter.clone();
        let provider = TokenProvider::new(move || {
            let n = seen.fetch_add(1, SeqCst);
            async move { Ok(format!("token-{n}")) }
        });
        assert_eq!(fetch_token(&provider, limit).await, Ok("token-0".into()));
        assert_eq!(fetch_token(&provider, limit).await, Ok("token-1".into()));
        let failing = TokenProvider::new(|| async { Err("auth service down".to_owned()) });
        assert_eq!(
            fetch_token(&failing, limit).await,
            Err("auth service down".into())
        );
        let empty = TokenProvider::new(|| async { Ok(String::new()) });
        assert!(fetch_token(&empty, limit).await.is_err());
        let hanging = TokenProvider::new(std::future::pending);
        assert!(fetch_token(&hanging, limit)
            .await
            .is_err_and(|why| why.contains("no answer")));
        assert_eq!(format!("{provider:?}"), "TokenProvider");
    }

    /// Without a token, the first connection asks the provider; its failure
    /// is typed (and nothing is dialled).
    #[tokio::test]
    async fn first_connection_asks_the_provider_for_a_missing_token() {
        let options = ClientOptions::new("ws://127.0.0.1:9", "")
            .with_token_provider(|| async { Err("no session".to_owned()) });
        match Client::connect(options).await {
            Err(ClientError::Token(why)) => assert_eq!(why, "no session"),
            Err(other) => panic!("expected Token, got {other:?}"),
            Ok(_) => panic!("expected Token, got a connection"),
        }
    }

    /// What the fake server saw of one connection.
    #[derive(Debug)]
    struct Seen {
        authorization: Option<String>,
        frames: Vec<String>,
    }

    /// A fake server for the close codes of an operator's disconnect: every
    /// connection has its subscribes confirmed and pings answered; the first
    /// is closed with `close` after its first confirmation. Counts the
    /// connections accepted, and reports each once it ends.
    async fn fake_server(close: u16) -> (String, Arc<AtomicUsize>, mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("address"));
        let (report, seen) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                // Each on its own task: a client may reconnect before its
                // old connection is gone.
                tokio::spawn(serve_one(tcp, first.then_some(close), report.clone()));
                first = false;
            }
        });
        (url, accepted, seen)
    }

    async fn serve_one(tcp: TcpStream, close: Option<u16>, report: mpsc::UnboundedSender<Seen>) {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Code;

        let mut authorization = None;
        // The error type is tungstenite's, whatever its size.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            authorization = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(response)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
            return;
        };
        let mut frames = Vec::new();
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            frames.push(text.to_string());
            if text.as_str() == "ping" {
                let _ = ws.send(Message::text("pong")).await;
                continue;
            }
            // Literal JSON: the fake must not follow the server crate's types.
            let confirmed = r#"{"type":"subscribed","added":1,"total":1}"#;
            let _ = ws.send(Message::text(confirmed)).await;
            if let Some(code) = close {
                let frame = CloseFrame {
                    code: Code::from(code),
                    reason: "by an operator".into(),
                };
                let _ = ws.close(Some(frame)).await;
                break;
            }
        }
        let _ = report.send(Seen {
            authorization,
            frames,
        });
    }

    /// Options whose provider hands out `fresh-1`, `fresh-2`... and counts.
    fn counting_options(url: &str) -> (ClientOptions, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let mut options = ClientOptions::new(url, "first").with_token_provider(move || {
            let n = counter.fetch_add(1, SeqCst) + 1;
            async move { Ok(format!("fresh-{n}")) }
        });
        options.backoff_initial = Duration::from_millis(10);
        (options, asked)
    }

    async fn within<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .expect("timed out")
    }

    #[tokio::test]
    async fn close_4001_ends_the_client_without_asking_for_a_token() {
        let (url, accepted, mut seen) = fake_server(4001).await;
        let (options, asked) = counting_options(&url);
        let mut client = Client::connect(options).await.expect("connect");
        client.subscribe(vec![json!({})]).await.expect("subscribe");
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Disconnected {
                code: Some(4001),
                reason: "by an operator".into()
            })
        );
        assert_eq!(within(client.next_event()).await, None);
        assert_eq!(asked.load(SeqCst), 0);
        let first = within(seen.recv()).await.expect("the connection");
        assert_eq!(first.authorization.as_deref(), Some("Bearer first"));
        // No second connection was attempted (backoff would be 10 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn close_4000_reconnects_with_a_fresh_token_and_resubscribes() {
        let (url, accepted, mut seen) = fake_server(4000).await;
        let (options, asked) = counting_options(&url);
        let mut client = Client::connect(options).await.expect("connect");
        client
            .subscribe(vec![json!({"type": "chat"})])
            .await
            .expect("subscribe");
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected {
                code: Some(4000),
                ..
            })
        ));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Reconnected { attempt: 1 })
        );
        // The pong follows the re-subscription's confirmation.
        within(client.ping()).await.expect("pong");
        assert_eq!((asked.load(SeqCst), accepted.load(SeqCst)), (1, 2));
        client.close();
        let first = within(seen.recv()).await.expect("first connection");
        assert_eq!(first.authorization.as_deref(), Some("Bearer first"));
        let second = within(seen.recv()).await.expect("second connection");
        assert_eq!(second.authorization.as_deref(), Some("Bearer fresh-1"));
        let resubscribe: Value = serde_json::from_str(&second.frames[0]).expect("json");
        assert_eq!(
            resubscribe,
            json!({"type": "subscribe", "filters": [{"type": "chat"}]})
        );
    }

    /// One connection of [`scripted_server`]: the frames the client sent
    /// (`ping` is answered and left out), and a way to answer.
    struct Scripted {
        frames: mpsc::UnboundedReceiver<String>,
        out: mpsc::UnboundedSender<Out>,
    }

    impl Scripted {
        async fn frame(&mut self) -> Value {
            let text = within(self.frames.recv()).await.expect("a frame");
            serde_json::from_str(&text).expect("JSON frame")
        }

        fn send(&self, frame: Value) {
            self.out
                .send(Out::Text(frame.to_string()))
                .expect("connection");
        }

        /// Ends the TCP connection without a close frame.
        fn drop_connection(&self) {
            let _ = self.out.send(Out::Drop);
        }

        /// Closes the connection with a close frame.
        fn close(&self, code: u16, reason: &str) {
            let _ = self.out.send(Out::Close(code, reason.to_owned()));
        }

        /// Frames sent so far (after a ping barrier: all of them).
        fn sent_so_far(&mut self) -> Vec<Value> {
            let mut frames = Vec::new();
            while let Ok(text) = self.frames.try_recv() {
                frames.push(serde_json::from_str(&text).expect("JSON frame"));
            }
            frames
        }
    }

    /// What a [`Scripted`] connection sends next.
    enum Out {
        Text(String),
        Close(u16, String),
        /// Ends the TCP connection without a close frame.
        Drop,
    }

    /// A fake server whose every connection the test drives by hand.
    async fn scripted_server() -> (String, mpsc::UnboundedReceiver<Scripted>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("address"));
        let (report, connections) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let (frames_tx, frames) = mpsc::unbounded_channel();
                let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
                let _ = report.send(Scripted { frames, out });
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            message = ws.next() => match message {
                                Some(Ok(Message::Text(text))) if text.as_str() == "ping" => {
                                    let _ = ws.send(Message::text("pong")).await;
                                }
                                Some(Ok(Message::Text(text))) => {
                                    let _ = frames_tx.send(text.to_string());
                                }
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => break,
                            },
                            out = out_rx.recv() => match out {
                                Some(Out::Text(text)) => {
                                    let _ = ws.send(Message::text(text)).await;
                                }
                                // Dropping the stream closes the TCP
                                // connection, with no close frame.
                                Some(Out::Close(code, reason)) => {
                                    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Code;
                                    let frame = CloseFrame { code: Code::from(code), reason: reason.into() };
                                    let _ = ws.close(Some(frame)).await;
                                    // Until the client's reply or its end.
                                    while let Some(Ok(_)) = ws.next().await {}
                                    break;
                                }
                                Some(Out::Drop) | None => break,
                            },
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    fn envelope(seq: u64) -> Value {
        json!({"envelopeId": format!("e{seq}"), "type": "t", "payload": {"n": seq}, "seq": seq})
    }

    fn recovered(seq: u64) -> Value {
        let mut frame = envelope(seq);
        frame["recovered"] = json!(true);
        frame
    }

    fn subscribed(seq: Option<u64>, epoch: &str) -> Value {
        match seq {
            Some(seq) => {
                json!({"type": "subscribed", "added": 1, "total": 1, "seq": seq, "epoch": epoch})
            }
            None => json!({"type": "subscribed", "added": 1, "total": 1}),
        }
    }

    fn resumed(since: u64, seq: u64, replayed: usize, complete: bool, epoch: &str) -> Value {
        json!({"type": "resumed", "since": since, "seq": seq, "replayed": replayed,
               "complete": complete, "epoch": epoch})
    }

    /// A client of `url` (fast reconnects), subscribed to `{"type":"t"}` on
    /// `connection`, which confirms with `confirmation`.
    async fn subscribed_client(
        url: &str,
        connection: &mut Option<Scripted>,
        connections: &mut mpsc::UnboundedReceiver<Scripted>,
        confirmation: Value,
    ) -> Client {
        let mut options = ClientOptions::new(url, "t");
        options.backoff_initial = Duration::from_millis(10);
        let client = Client::connect(options).await.expect("connect");
        let mut first = within(connections.recv()).await.expect("a connection");
        let answer = async {
            assert_eq!(
                first.frame().await,
                json!({"type": "subscribe", "filters": [{"type": "t"}]})
            );
            first.send(confirmation);
        };
        let (confirmed, ()) = tokio::join!(client.subscribe(vec![json!({"type": "t"})]), answer);
        confirmed.expect("subscribe");
        *connection = Some(first);
        client
    }

    /// Drops `connection`; returns the next one, after the client's
    /// `Disconnected` and `Reconnected`, with the re-subscription read.
    async fn reconnect(
        client: &mut Client,
        connection: &Scripted,
        connections: &mut mpsc::UnboundedReceiver<Scripted>,
    ) -> Scripted {
        connection.drop_connection();
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected { code: None, .. })
        ));
        let mut next = within(connections.recv()).await.expect("a connection");
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Reconnected { attempt: 1 })
        );
        assert_eq!(
            next.frame().await,
            json!({"type": "subscribe", "filters": [{"type": "t"}]})
        );
        next
    }

    /// Every event so far: a ping's pong follows whatever was sent before it.
    async fn events_so_far(client: &mut Client) -> Vec<Event> {
        within(client.ping()).await.expect("pong");
        let mut events = Vec::new();
        while let Ok(event) = client.events.try_recv() {
            events.push(event);
        }
        events
    }

    /// The seqs (and whether recovered) of envelope events; panics on others.
    fn seqs(events: &[Event]) -> Vec<(u64, bool)> {
        events
            .iter()
            .map(|event| match event {
                Event::Envelope(envelope) => (envelope.seq.expect("seq"), envelope.recovered),
                other => panic!("expected an envelope, got {other:?}"),
            })
            .collect()
    }

    fn at(epoch: &str, seq: u64) -> Option<Position> {
        Some(Position {
            epoch: epoch.into(),
            seq,
        })
    }

    #[tokio::test]
    async fn resumes_after_a_reconnect_and_merges_held_envelopes_with_the_replay() {
        let (url, mut connections) = scripted_server().await;
        let mut first = None;
        let mut client = subscribed_client(
            &url,
            &mut first,
            &mut connections,
            subscribed(Some(4), "E1"),
        )
        .await;
        let first = first.expect("first connection");
        assert_eq!(client.position(), at("E1", 4));
        for seq in [5, 6, 5] {
            first.send(envelope(seq));
        }
        assert_eq!(
            seqs(&events_so_far(&mut client).await),
            [(5, false), (6, false)]
        );
        assert_eq!(client.position(), at("E1", 6));

        let mut second = reconnect(&mut client, &first, &mut connections).await;
        // After the re-subscription: resume from the last delivered seq.
        assert_eq!(
            second.frame().await,
            json!({"type": "resume", "since": 6, "epoch": "E1"})
        );
        // Published before the resume was served: held back until `resumed`.
        second.send(subscribed(Some(8), "E1"));
        second.send(envelope(8));
        assert_eq!(events_so_far(&mut client).await, []);
        for seq in [7, 8] {
            second.send(recovered(seq));
        }
        second.send(resumed(6, 8, 2, true, "E1"));
        second.send(envelope(9));
        second.send(envelope(9));
        // In seq order, each once (of two copies, the first that came).
        assert_eq!(
            seqs(&events_so_far(&mut client).await),
            [(7, true), (8, false), (9, false)]
        );
        assert_eq!(client.position(), at("E1", 9));
        // A later confirmation moves the position to where it took effect.
        let answer = async {
            second.frame().await;
            second.send(subscribed(Some(12), "E1"));
        };
        let (confirmed, ()) = tokio::join!(client.subscribe(vec![json!({"type": "u"})]), answer);
        confirmed.expect("subscribe");
        assert_eq!(client.position(), at("E1", 12));
    }

    #[tokio::test]
    async fn an_incomplete_resume_is_a_gap_and_delivery_goes_on_from_its_answer() {
        let (url, mut connections) = scripted_server().await;
        let mut first = None;
        let mut client = subscribed_client(
            &url,
            &mut first,
            &mut connections,
            subscribed(Some(0), "E1"),
        )
        .await;
        let first = first.expect("first connection");
        first.send(envelope(1));
        first.send(envelope(2));
        assert_eq!(
            seqs(&events_so_far(&mut client).await),
            [(1, false), (2, false)]
        );

        // History trimmed: only 5 is left of 3 to 5.
        let mut second = reconnect(&mut client, &first, &mut connections).await;
        assert_eq!(
            second.frame().await,
            json!({"type": "resume", "since": 2, "epoch": "E1"})
        );
        second.send(recovered(5));
        second.send(resumed(2, 5, 1, false, "E1"));
        second.send(envelope(6));
        let events = events_so_far(&mut client).await;
        assert_eq!(
            events[0],
            Event::Gap {
                since: 2,
                seq: 5,
                epoch: "E1".into(),
                previous_epoch: "E1".into(),
                replayed: 1
            }
        );
        assert_eq!(seqs(&events[1..]), [(5, true), (6, false)]);

        // A new history (epoch E2): its envelopes count from its start.
        let mut third = reconnect(&mut client, &second, &mut connections).await;
        assert_eq!(
            third.frame().await,
            json!({"type": "resume", "since": 6, "epoch": "E1"})
        );
        third.send(envelope(1));
        third.send(resumed(6, 1, 0, false, "E2"));
        third.send(envelope(2));
        let events = events_so_far(&mut client).await;
        assert_eq!(
            events[0],
            Event::Gap {
                since: 6,
                seq: 1,
                epoch: "E2".into(),
                previous_epoch: "E1".into(),
                replayed: 0
            }
        );
        assert_eq!(seqs(&events[1..]), [(1, false), (2, false)]);
        assert_eq!(client.position(), at("E2", 2));
        let mut fourth = reconnect(&mut client, &third, &mut connections).await;
        assert_eq!(
            fourth.frame().await,
            json!({"type": "resume", "since": 2, "epoch": "E2"})
        );
    }

    #[tokio::test]
    async fn a_drop_while_resuming_resumes_again_from_the_same_position() {
        let (url, mut connections) = scripted_server().await;
        let mut first = None;
        let mut client = subscribed_client(
            &url,
            &mut first,
            &mut connections,
            subscribed(Some(3), "E1"),
        )
        .await;
        let first = first.expect("first connection");
        let mut second = reconnect(&mut client, &first, &mut connections).await;
        assert_eq!(
            second.frame().await,
            json!({"type": "resume", "since": 3, "epoch": "E1"})
        );
        second.send(envelope(4));
        assert_eq!(events_so_far(&mut client).await, []);
        // Held, never delivered: asked for again.
        let mut third = reconnect(&mut client, &second, &mut connections).await;
        assert_eq!(
            third.frame().await,
            json!({"type": "resume", "since": 3, "epoch": "E1"})
        );
        third.send(recovered(4));
        third.send(resumed(3, 4, 1, true, "E1"));
        assert_eq!(seqs(&events_so_far(&mut client).await), [(4, true)]);
    }

    #[tokio::test]
    async fn without_history_nothing_is_resumed_and_envelopes_pass_as_they_come() {
        let (url, mut connections) = scripted_server().await;
        let mut first = None;
        let mut client =
            subscribed_client(&url, &mut first, &mut connections, subscribed(None, "")).await;
        let first = first.expect("first connection");
        assert_eq!(client.position(), None);
        let plain = json!({"envelopeId": "p", "type": "t", "payload": null});
        first.send(plain.clone());
        first.send(plain.clone());
        let events = events_so_far(&mut client).await;
        assert_eq!(events.len(), 2);
        assert!(events
            .iter()
            .all(|e| matches!(e, Event::Envelope(envelope) if envelope.envelope_id == "p" && envelope.seq.is_none())));
        let mut second = reconnect(&mut client, &first, &mut connections).await;
        second.send(subscribed(None, ""));
        second.send(plain);
        assert_eq!(events_so_far(&mut client).await.len(), 1);
        assert_eq!(second.sent_so_far(), Vec::<Value>::new(), "no resume");
    }

    #[tokio::test]
    async fn history_disabled_delivers_what_was_held_and_stops_resuming() {
        let (url, mut connections) = scripted_server().await;
        let mut first = None;
        let mut client = subscribed_client(
            &url,
            &mut first,
            &mut connections,
            subscribed(Some(3), "E1"),
        )
        .await;
        let first = first.expect("first connection");
        let mut second = reconnect(&mut client, &first, &mut connections).await;
        assert_eq!(
            second.frame().await,
            json!({"type": "resume", "since": 3, "epoch": "E1"})
        );
        second.send(envelope(4));
        second.send(json!({"type": "error", "code": "history_disabled", "message": "no history"}));
        let events = events_so_far(&mut client).await;
        assert_eq!(
            events[0],
            Event::ServerError {
                code: ErrorCode::HistoryDisabled,
                message: "no history".into()
            }
        );
        assert_eq!(seqs(&events[1..]), [(4, false)]);
        assert_eq!(client.position(), None);
        let mut third = reconnect(&mut client, &second, &mut connections).await;
        within(client.ping()).await.expect("pong");
        assert_eq!(third.sent_so_far(), Vec::<Value>::new(), "no resume");
    }

    #[tokio::test]
    async fn a_rate_limited_subscribe_is_refused_and_the_next_gets_its_own_confirmation() {
        let (url, mut connections) = scripted_server().await;
        let mut first = None;
        let client =
            subscribed_client(&url, &mut first, &mut connections, subscribed(None, "")).await;
        let mut server = first.expect("first connection");
        // A subscribe the server rate-limits is dropped: an error frame, no
        // confirmation. It used to wait for one until the socket closed.
        let refused = client.subscribe(vec![json!({"type": "a"})]);
        let answer = async {
            assert_eq!(server.frame().await["type"], "subscribe");
            server.send(json!({"type": "error", "code": "rate_limited", "message": "slow down"}));
        };
        let (refused, ()) = tokio::join!(within(refused), answer);
        match refused {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::RateLimited),
            other => panic!("expected rate_limited, got {other:?}"),
        }
        // The next request gets its own confirmation, not a stale one.
        let next = client.subscribe(vec![json!({"type": "b"})]);
        let answer = async {
            assert_eq!(
                server.frame().await,
                json!({"type": "subscribe", "filters": [{"type": "b"}]})
            );
            server.send(json!({"type": "subscribed", "added": 1, "total": 2}));
        };
        let (next, ()) = tokio::join!(within(next), answer);
        let next = next.expect("confirmed");
        assert_eq!((next.changed, next.total), (1, 2));
    }

    fn token_expiring(expires_at: u64) -> Value {
        json!({"type": "token_expiring", "expiresAt": expires_at})
    }

    #[tokio::test]
    async fn token_expiring_is_answered_with_a_refresh_from_the_provider() {
        let (url, mut connections) = scripted_server().await;
        let (options, asked) = counting_options(&url);
        let mut client = Client::connect(options).await.expect("connect");
        let mut server = within(connections.recv()).await.expect("a connection");

        server.send(token_expiring(100));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::TokenExpiring { expires_at: 100 })
        );
        assert_eq!(
            server.frame().await,
            json!({"type": "refresh", "token": "fresh-1"})
        );
        server.send(json!({"type": "refreshed", "expiresAt": 200}));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Refreshed {
                expires_at: Some(200)
            })
        );

        // The next token's notice: refreshed again, and refused this time.
        server.send(token_expiring(200));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::TokenExpiring { expires_at: 200 })
        );
        assert_eq!(
            server.frame().await,
            json!({"type": "refresh", "token": "fresh-2"})
        );
        let refused = "refresh rejected: token has expired";
        server.send(json!({"type": "error", "code": "refresh_rejected", "message": refused}));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::RefreshRejected {
                message: refused.into()
            })
        );
        assert_eq!(asked.load(SeqCst), 2);

        // Then 4002: back with a token from the provider, the filters and
        // the position as after any drop.
        server.close(4002, "token expired");
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Disconnected {
                code: Some(4002),
                reason: "token expired".into()
            })
        );
        let _next = within(connections.recv()).await.expect("a new connection");
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Reconnected { attempt: 1 })
        );
        assert_eq!(asked.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_provider_without_a_token_is_a_failed_refresh() {
        let (url, mut connections) = scripted_server().await;
        let options = ClientOptions::new(&url, "first")
            .with_token_provider(|| async { Err("auth service down".to_owned()) });
        let mut client = Client::connect(options).await.expect("connect");
        let mut server = within(connections.recv()).await.expect("a connection");
        server.send(token_expiring(100));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::TokenExpiring { expires_at: 100 })
        );
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::RefreshRejected {
                message: "cannot get a token to refresh with: auth service down".into()
            })
        );
        within(client.ping()).await.expect("pong");
        assert_eq!(server.sent_so_far(), Vec::<Value>::new(), "no refresh");
    }

    #[tokio::test]
    async fn close_4002_reconnects_with_a_fresh_token_from_the_provider() {
        let (url, accepted, mut seen) = fake_server(4002).await;
        let (options, asked) = counting_options(&url);
        let mut client = Client::connect(options).await.expect("connect");
        client.subscribe(vec![json!({})]).await.expect("subscribe");
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected {
                code: Some(4002),
                ..
            })
        ));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Reconnected { attempt: 1 })
        );
        within(client.ping()).await.expect("pong");
        assert_eq!((asked.load(SeqCst), accepted.load(SeqCst)), (1, 2));
        client.close();
        let first = within(seen.recv()).await.expect("first connection");
        assert_eq!(first.authorization.as_deref(), Some("Bearer first"));
        let second = within(seen.recv()).await.expect("second connection");
        assert_eq!(second.authorization.as_deref(), Some("Bearer fresh-1"));
    }

    #[tokio::test]
    async fn without_a_provider_4002_ends_the_client_with_token_expired() {
        let (url, mut connections) = scripted_server().await;
        // Its exp is what the event says when the server sent no notice.
        let token = crate::token::mint("s", "a", Some(Duration::from_secs(60)), Map::new());
        let exp = token_expiry(&token).expect("an exp");
        let mut options = ClientOptions::new(&url, token);
        options.backoff_initial = Duration::from_millis(10);
        let mut client = Client::connect(options.clone()).await.expect("connect");
        let server = within(connections.recv()).await.expect("a connection");
        server.close(4002, "token expired");
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Disconnected {
                code: Some(4002),
                reason: "token expired".into()
            })
        );
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::TokenExpired {
                expires_at: Some(exp)
            })
        );
        assert_eq!(within(client.next_event()).await, None);

        // With the notice: announced, not refreshed; the server's time wins.
        let mut client = Client::connect(options).await.expect("connect");
        let mut server = within(connections.recv()).await.expect("a connection");
        server.send(token_expiring(1234));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::TokenExpiring { expires_at: 1234 })
        );
        within(client.ping()).await.expect("pong");
        assert_eq!(server.sent_so_far(), Vec::<Value>::new(), "no refresh");
        server.close(4002, "token expired");
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected {
                code: Some(4002),
                ..
            })
        ));
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::TokenExpired {
                expires_at: Some(1234)
            })
        );
        assert_eq!(within(client.next_event()).await, None);
        // No reconnect was tried (backoff would be 10 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(connections.try_recv().is_err());
    }

    const INVALID_TOKEN: &str =
        r#"{"error":"invalid_token","message":"invalid token: signature does not match"}"#;

    /// A fake server that accepts its first connection as a WebSocket (when
    /// `first_accepted`) and drops it, then refuses every upgrade with 401
    /// as the runtime does: the head first, the JSON body a moment later,
    /// so the handshake does not read it. A plain `GET` is answered
    /// `probe_status` with the same body at once. Counts the connections.
    async fn refusing_server(
        first_accepted: bool,
        probe_status: u16,
    ) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                if count.fetch_add(1, SeqCst) == 0 && first_accepted {
                    // Accepted, then dropped without a close frame.
                    let _ = tokio_tungstenite::accept_async(tcp).await;
                    continue;
                }
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let upgrade = String::from_utf8_lossy(&head)
                        .to_ascii_lowercase()
                        .contains("upgrade: websocket");
                    let status = if upgrade { 401 } else { probe_status };
                    let response = format!(
                        "HTTP/1.1 {status} No\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        INVALID_TOKEN.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                    let _ = tcp.flush().await;
                    if upgrade {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = tcp.write_all(INVALID_TOKEN.as_bytes()).await;
                    let _ = tcp.flush().await;
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_refused_upgrade_says_why() {
        let (url, _) = refusing_server(false, 401).await;
        let refused = match Client::connect(ClientOptions::new(&url, "bad")).await {
            Err(refused) => refused,
            Ok(_) => panic!("expected a refusal"),
        };
        assert!(
            matches!(&refused, ClientError::Rejected { status: 401, body } if body == INVALID_TOKEN),
            "{refused:?}"
        );
        assert_eq!(
            refused.to_string(),
            "upgrade refused (401): invalid_token: invalid token: signature does not match"
        );
        assert_eq!(
            refused.api_error().map(|e| e.error),
            Some("invalid_token".into())
        );
        // A plain GET answered otherwise (the token is not why): no reason
        // is made up, and nothing dangles after the status.
        let (url, _) = refusing_server(false, 426).await;
        match Client::connect(ClientOptions::new(&url, "bad")).await {
            Err(refused) => assert_eq!(refused.to_string(), "upgrade refused (401)"),
            Ok(_) => panic!("expected a refusal"),
        }
        // A body read with the head, even in its chunked framing.
        let chunked = ClientError::Rejected {
            status: 403,
            body: format!("4d\r\n{INVALID_TOKEN}\r\n0\r\n\r\n"),
        };
        assert!(chunked
            .to_string()
            .ends_with("invalid token: signature does not match"));
    }

    #[tokio::test]
    async fn a_fixed_token_refused_on_reconnect_ends_the_client() {
        let (url, accepted) = refusing_server(true, 401).await;
        let mut options = ClientOptions::new(&url, "fixed");
        options.backoff_initial = Duration::from_millis(10);
        let mut client = Client::connect(options).await.expect("connect");
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected { code: None, .. })
        ));
        match within(client.next_event()).await {
            Some(Event::Rejected { error }) => assert_eq!(
                error.to_string(),
                "upgrade refused (401): invalid_token: invalid token: signature does not match"
            ),
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(within(client.next_event()).await, None);
        // The first, then one refused upgrade and the GET that asked why.
        assert_eq!(accepted.load(SeqCst), 3, "one refused attempt, no more");

        // With a provider, a refusal is one failed attempt among others.
        let (url, accepted) = refusing_server(true, 401).await;
        let (options, asked) = counting_options(&url);
        let mut client = Client::connect(options).await.expect("connect");
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected { code: None, .. })
        ));
        within(async {
            while accepted.load(SeqCst) < 7 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(asked.load(SeqCst) >= 3);
        assert!(client.events.try_recv().is_err(), "still trying, no event");
    }

    const TOO_MANY_SOCKETS: &str =
        r#"{"error":"too_many_sockets","message":"this user already has 2 open sockets"}"#;

    /// A fake server whose user is at the socket cap for a while: its first
    /// upgrade is accepted and dropped, the next `refusals` are refused
    /// with 429 as the runtime does (the head first, the JSON body a moment
    /// later), the ones after are accepted and served. A plain `GET` is
    /// answered 426, as the server answers a token that is fine. Counts
    /// the upgrades.
    async fn capped_server(refusals: usize) -> (String, Arc<AtomicUsize>) {
        use tokio::io::AsyncWriteExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("address"));
        let upgrades = Arc::new(AtomicUsize::new(0));
        let count = upgrades.clone();
        let (report, _) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                // Peeked, not read: an accepted upgrade's handshake reads it.
                let mut buf = [0u8; 4096];
                let head = loop {
                    match tcp.peek(&mut buf).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") => {
                            break Some(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase())
                        }
                        Ok(_) => tokio::task::yield_now().await,
                    }
                };
                let Some(head) = head else { continue };
                let (status, body) = if !head.contains("upgrade: websocket") {
                    (426, r#"{"error":"upgrade_required","message":"m"}"#)
                } else {
                    match count.fetch_add(1, SeqCst) {
                        0 => {
                            // Accepted, then dropped without a close frame.
                            let _ = tokio_tungstenite::accept_async(tcp).await;
                            continue;
                        }
                        n if n <= refusals => (429, TOO_MANY_SOCKETS),
                        _ => {
                            tokio::spawn(serve_one(tcp, None, report.clone()));
                            continue;
                        }
                    }
                };
                tokio::spawn(async move {
                    let response = format!(
                        "HTTP/1.1 {status} No\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                    let _ = tcp.flush().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tcp.write_all(body.as_bytes()).await;
                    let _ = tcp.flush().await;
                });
            }
        });
        (url, upgrades)
    }

    #[tokio::test]
    async fn a_fixed_token_past_the_socket_cap_keeps_reconnecting() {
        let (url, upgrades) = capped_server(3).await;
        let mut options = ClientOptions::new(&url, "fixed");
        options.backoff_initial = Duration::from_millis(10);
        let mut client = Client::connect(options).await.expect("connect");
        assert!(matches!(
            within(client.next_event()).await,
            Some(Event::Disconnected { code: None, .. })
        ));
        // Unlike a 401, each 429 is one failed attempt: no Rejected, and
        // the fourth attempt gets a socket.
        assert_eq!(
            within(client.next_event()).await,
            Some(Event::Reconnected { attempt: 4 })
        );
        assert_eq!(upgrades.load(SeqCst), 5, "the first, 3 refused, the last");
        within(client.ping()).await.expect("the new socket answers");
        // The refusal says why, whether or not its body was read.
        let read = ClientError::Rejected {
            status: 429,
            body: TOO_MANY_SOCKETS.into(),
        };
        assert_eq!(
            read.to_string(),
            "upgrade refused (429): too_many_sockets: this user already has 2 open sockets"
        );
        let unread = ClientError::Rejected {
            status: 429,
            body: String::new(),
        };
        assert!(unread
            .to_string()
            .starts_with("upgrade refused (429): too_many_sockets: "));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert_eq!(
            backoff_delay(initial, max, 1, 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff_delay(initial, max, 1, 0.0),
            Duration::from_millis(50)
        );
        assert_eq!(
            backoff_delay(initial, max, 4, 1.0),
            Duration::from_millis(800)
        );
        assert_eq!(backoff_delay(initial, max, 30, 1.0), max);
        assert_eq!(backoff_delay(initial, max, 30, 0.0), max / 2);
        for attempt in 1..40 {
            let d = backoff_delay(initial, max, attempt, jitter());
            assert!(d <= max && d >= initial / 2, "{attempt}: {d:?}");
        }
    }
}
