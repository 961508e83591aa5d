//! A HopeFlow socket over tokio-tungstenite: confirmed subscriptions, a
//! stream of typed events, acks, pings, and automatic reconnection with
//! jittered exponential backoff that re-subscribes the current filters.
//!
//! One background task owns the connection; [`Client`] talks to it through
//! channels, so every method takes `&self` and the client can be shared.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
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

/// How a [`Client`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://` or `wss://` URL of the service root.
    pub url: String,
    pub token: String,
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
}

/// What happens on the socket, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A delivery; ack it with [`Client::ack`].
    Envelope(Envelope),
    /// An error frame not tied to a request of ours (e.g. `rate_limited`).
    ServerError { code: ErrorCode, message: String },
    /// The connection dropped (close code if the server sent one; see
    /// [`CloseCode::from_code`] for ours).
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
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
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
            // 1008 / 1009 mean the client must change, not retry.
            let hopeless = code
                .and_then(CloseCode::from_code)
                .is_some_and(|close| !close.reconnect());
            if !self.options.reconnect || hopeless {
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
            Some(ServerMessage::Frame(ServerFrame::Subscribed { added, total })) => {
                self.confirm(added, total);
            }
            Some(ServerMessage::Frame(ServerFrame::Unsubscribed { removed, total })) => {
                self.confirm(removed, total);
            }
            Some(ServerMessage::Frame(ServerFrame::Error { code, message })) => {
                self.error(code, message);
            }
            None => {}
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
