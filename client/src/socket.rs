//! A HopeFlow socket over tokio-tungstenite: confirmed subscriptions, a
//! stream of typed events, acks, pings, and automatic reconnection with
//! jittered exponential backoff that re-subscribes the current filters,
//! optionally with a fresh token from a [`TokenProvider`] each time.
//!
//! One background task owns the connection; [`Client`] talks to it through
//! channels, so every method takes `&self` and the client can be shared.

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

use crate::publisher::CONNECT_TIMEOUT;
use crate::tls::{self, TlsError, Trust};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the token goes when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer` (server clients).
    Header,
    /// `?token=` (what browsers must use).
    Query,
}

/// What a [`TokenProvider`] returns: a token, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where a [`Client`] gets a fresh token before each reconnect attempt
/// (tokens expire; an operator's disconnect with close code 4000 asks for a
/// new one): an async function, typically a call to your auth service.
/// A failure or a wait longer than [`ClientOptions::connect_timeout`]
/// counts as a failed attempt: the client backs off and asks again.
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

/// How a [`Client`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://` or `wss://` URL of the service root.
    pub url: String,
    /// The token of the first connection (and of every one, without a
    /// `token_provider`). Left empty with a provider, the first connection
    /// asks the provider too.
    pub token: String,
    /// Asked for a fresh token before every reconnect attempt; the token it
    /// returns replaces `token`.
    pub token_provider: Option<TokenProvider>,
    pub token_placement: TokenPlacement,
    /// Reconnect after the connection drops (on by default).
    pub reconnect: bool,
    /// First reconnect delay; doubled each failed attempt, with jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// The CAs `wss://` certificates are checked against (always checked).
    pub trust: Trust,
    /// How long one connection attempt (TCP, TLS, upgrade) may take.
    pub connect_timeout: Duration,
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
            backoff_max: Duration::from_secs(10),
            trust: Trust::public_roots(),
            connect_timeout: CONNECT_TIMEOUT,
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
}

/// What happens on the socket, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A delivery; ack it with [`Client::ack`].
    Envelope(Envelope),
    /// An error frame not tied to a request of ours (e.g. `rate_limited`).
    ServerError { code: ErrorCode, message: String },
    /// The connection dropped (close code if the server sent one; see
    /// [`CloseCode::from_code`] for ours). The client reconnects unless the
    /// code says not to ([`reconnect_after`]: 1008, 1009, and 4001, an
    /// operator's disconnect), in which case no event follows and
    /// [`Client::next_event`] returns `None`. After 4000 (an operator's
    /// disconnect asking for a fresh token) it reconnects with one from the
    /// [`TokenProvider`].
    Disconnected { code: Option<u16>, reason: String },
    /// Connected again after `attempt` tries; filters were re-subscribed.
    Reconnected { attempt: u32 },
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
    /// The upgrade was refused with this HTTP status (and the body, when the
    /// handshake read one; usually empty).
    Rejected { status: u16, body: String },
    /// Could not connect at all.
    Connect(String),
    /// The [`TokenProvider`] gave no token for the first connection.
    Token(String),
    /// The server refused the request (e.g. `subscription_limit`).
    Refused { code: ErrorCode, message: String },
    /// The connection dropped before the answer came.
    Disconnected,
    /// The client was closed, or gave up reconnecting.
    Closed,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Rejected { status, body } => {
                write!(f, "upgrade refused ({status}): {body}")
            }
            ClientError::Connect(why) => write!(f, "cannot connect: {why}"),
            ClientError::Token(why) => write!(f, "cannot get a token: {why}"),
            ClientError::Refused { code, message } => write!(f, "{}: {message}", code.as_str()),
            ClientError::Disconnected => f.write_str("connection lost before the answer"),
            ClientError::Closed => f.write_str("client is closed"),
        }
    }
}

impl std::error::Error for ClientError {}

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
}

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
        tokio::spawn(
            Connection {
                options,
                commands: command_rx,
                events: event_tx,
                filters: Vec::new(),
                pending: VecDeque::new(),
                pings: VecDeque::new(),
            }
            .run(ws),
        );
        Ok(Client { commands, events })
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
/// and 1009 (the client must change) nor 4001 (an operator said so).
pub fn reconnect_after(code: Option<u16>) -> bool {
    match code {
        // An operator's disconnect (issue 11): matched by number until the
        // server crate's CloseCode lists 4000 / 4001 in every build.
        Some(4001) => false,
        Some(4000) => true,
        Some(code) => CloseCode::from_code(code).is_none_or(CloseCode::reconnect),
        None => true,
    }
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
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(ClientError::Rejected {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Err(e) => Err(ClientError::Connect(tls::describe(&e))),
    }
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
}

impl Connection {
    async fn run(mut self, mut ws: Ws) {
        loop {
            let (code, reason) = match self.serve(&mut ws).await {
                Some(close) => close,
                None => return, // closed by the user
            };
            self.fail_pending();
            let _ = self.events.send(Event::Disconnected {
                code,
                reason: reason.clone(),
            });
            if !self.options.reconnect || !reconnect_after(code) {
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
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => self.message(&text),
                    Some(Ok(Message::Close(frame))) => {
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
            Some(ServerMessage::Envelope(envelope)) => {
                let _ = self.events.send(Event::Envelope(envelope));
            }
            Some(ServerMessage::Frame(ServerFrame::Subscribed { added, total, .. })) => {
                self.confirm(added, total);
            }
            Some(ServerMessage::Frame(ServerFrame::Unsubscribed { removed, total })) => {
                self.confirm(removed, total);
            }
            Some(ServerMessage::Frame(ServerFrame::Error { code, message })) => {
                self.error(code, message);
            }
            // Resuming is not wired into this client yet.
            Some(ServerMessage::Frame(ServerFrame::Resumed { .. })) | None => {}
        }
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
            // The front request was refused whole: no confirmation follows.
            ErrorCode::SubscriptionLimit if !self.pending.is_empty() => {
                if let Some(Pending {
                    reply: Some(reply), ..
                }) = self.pending.pop_front()
                {
                    let _ = reply.send(Err(ClientError::Refused { code, message }));
                }
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
            let Ok(mut ws) = open(&self.options).await else {
                continue;
            };
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
    use serde_json::json;
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
