//! The WebSocket test client: one socket, every frame it reads checked
//! against docs/asyncapi.yaml.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{contract, Server, WAIT};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected test socket.
pub struct Client {
    ws: Ws,
}

impl Client {
    /// Connects with `Authorization: Bearer <token>`.
    pub async fn connect(server: &Server, token: &str) -> Client {
        let mut request = server.ws().into_client_request().expect("request");
        request.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        Client { ws }
    }

    /// Connects with a request made by the test.
    pub async fn from_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        Client { ws }
    }

    /// A socket the test connected itself.
    pub fn from_ws(ws: Ws) -> Client {
        Client { ws }
    }

    /// Connects with a Bearer token and an `Origin` header, as a browser would.
    pub async fn connect_from_origin(server: &Server, token: &str, origin: &str) -> Client {
        let mut request = server.ws().into_client_request().expect("request");
        let headers = request.headers_mut();
        headers.insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        headers.insert("Origin", HeaderValue::from_str(origin).expect("header"));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        Client { ws }
    }

    /// Connects with `?token=<token>`.
    pub async fn connect_query(server: &Server, token: &str) -> Client {
        let url = format!("{}?token={token}", server.ws());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Client { ws }
    }

    /// Connects as a fresh token holder for `user_id`.
    pub async fn for_user(server: &Server, user_id: &str) -> Client {
        Client::connect(server, &server.token(user_id)).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send text frame");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("send binary frame");
    }

    /// The next text frame; fails on close, timeout or a non-text frame.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            match message {
                Message::Text(text) => {
                    contract::check_frame(&text);
                    return text.to_string();
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame parsed as JSON.
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("frame is not JSON: {text}"))
    }

    /// The next frame, which must be an error frame with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv_json().await;
        assert_eq!(frame["type"], "error", "expected an error frame: {frame}");
        assert_eq!(frame["code"], code, "{frame}");
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(frame.get("envelopeId").is_none());
        frame
    }

    /// Subscribes and waits for the confirmation; returns it.
    pub async fn subscribe(&mut self, filters: Value) -> Value {
        self.send_json(json!({ "type": "subscribe", "filters": filters }))
            .await;
        let frame = self.recv_json().await;
        assert_eq!(frame["type"], "subscribed", "{frame}");
        frame
    }

    pub async fn unsubscribe(&mut self, filters: Value) -> Value {
        self.send_json(json!({ "type": "unsubscribe", "filters": filters }))
            .await;
        let frame = self.recv_json().await;
        assert_eq!(frame["type"], "unsubscribed", "{frame}");
        frame
    }

    /// Sends `ping` and expects `pong` as the very next frame, which also
    /// proves nothing else was queued for this socket before it.
    pub async fn ping(&mut self) {
        self.send_text("ping").await;
        assert_eq!(self.recv_text().await, "pong");
    }

    /// The next frame, which must be a delivery.
    pub async fn recv_envelope(&mut self) -> Value {
        let frame = self.recv_json().await;
        assert!(
            frame["envelopeId"].as_str().is_some(),
            "expected an envelope: {frame}"
        );
        frame
    }

    pub async fn ack(&mut self, envelope: &Value, result: Value) {
        self.send_json(json!({
            "type": "ack",
            "envelopeId": envelope["envelopeId"],
            "result": result,
        }))
        .await;
    }

    /// Receives the next envelope and acks it with `result`.
    pub async fn ack_next(&mut self, result: Value) -> Value {
        let envelope = self.recv_envelope().await;
        self.ack(&envelope, result).await;
        envelope
    }

    /// The next text frame, or `Err(close code)` once the server closed.
    pub async fn next_frame(&mut self) -> Result<String, Option<u16>> {
        self.next_frame_or_close()
            .await
            .map_err(|(code, _reason)| code)
    }

    /// The next text frame, or `Err((close code, reason))` once the server
    /// closed.
    pub async fn next_frame_or_close(&mut self) -> Result<String, (Option<u16>, String)> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame or close");
            match next {
                Some(Ok(Message::Text(text))) => {
                    contract::check_frame(&text);
                    return Ok(text.to_string());
                }
                Some(Ok(Message::Close(frame))) => {
                    if let Some(frame) = &frame {
                        contract::check_close(u16::from(frame.code), &frame.reason);
                    }
                    return Err(frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err((None, String::new())),
            }
        }
    }

    /// Reads until the server closes the socket; returns the close code.
    /// Only error frames and pongs may come first.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await {
                Ok(text) => assert!(
                    text == "pong" || text.contains("\"type\":\"error\""),
                    "unexpected frame before close: {text}"
                ),
                Err(code) => return code,
            }
        }
    }

    /// Sends frames without waiting for answers.
    pub async fn send_many(&mut self, frames: impl IntoIterator<Item = String>) {
        for frame in frames {
            self.ws
                .feed(Message::text(frame))
                .await
                .expect("queue frame");
        }
        self.ws.flush().await.expect("flush frames");
    }

    /// Closes the socket and waits for the server's close frame (the
    /// frames still queued before it are checked, not returned).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, self.ws.next()).await {
            if let Message::Text(text) = message {
                contract::check_frame(&text);
            }
        }
    }
}

/// A `subscribed` confirmation without the history position it carries
/// (history is on by default), after checking its shape.
pub fn without_position(mut frame: Value) -> Value {
    assert!(frame["seq"].as_u64().is_some(), "no seq: {frame}");
    assert!(
        frame["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "no epoch: {frame}"
    );
    if let Some(object) = frame.as_object_mut() {
        object.remove("seq");
        object.remove("epoch");
    }
    frame
}
