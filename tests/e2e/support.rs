//! The one shared test helper: starts the prebuilt worker under `wrangler dev`
//! on a free port (in its own process group, stopped as a group), mints
//! tokens, connects sockets and publishes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use devserver::{free_port, DevServer, Https, Launch};

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest any single wait in a test may take before it counts as a hang.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running `wrangler dev` serving the prebuilt worker.
pub struct Server {
    process: DevServer,
    pub port: u16,
    /// The `JWT_SECRET` the server was started with, if any.
    pub secret: Option<String>,
    /// Serving `https://` and `wss://` with a certificate of this CA.
    pub tls: Option<PathBuf>,
}

impl Server {
    /// Starts a server with `vars` as its environment (vars and secrets,
    /// e.g. `JWT_SECRET`); call [`Server::wait_ready`] before using it.
    pub fn spawn(name: &str, vars: &[(&str, &str)]) -> Server {
        Server::spawn_on(name, vars, free_port())
    }

    /// [`Server::spawn`] on a given port (to restart a server in place).
    pub fn spawn_on(name: &str, vars: &[(&str, &str)], port: u16) -> Server {
        Server::launch(name, vars, port, None, None)
    }

    /// [`Server::spawn_on`] keeping its Durable Object storage in `state`,
    /// so a server started again with it finds what the last one stored.
    pub fn spawn_persistent(name: &str, vars: &[(&str, &str)], port: u16, state: &Path) -> Server {
        Server::launch(name, vars, port, None, Some(state))
    }

    /// [`Server::spawn`] over TLS with `ca`'s server certificate (for
    /// `localhost`); call [`Server::wait_ready`] before using it.
    pub fn spawn_tls(name: &str, vars: &[(&str, &str)], ca: &TestCa) -> Server {
        Server::launch(name, vars, free_port(), Some(ca), None)
    }

    fn launch(
        name: &str,
        vars: &[(&str, &str)],
        port: u16,
        ca: Option<&TestCa>,
        state: Option<&Path>,
    ) -> Server {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = root.join("build/wrangler.toml");
        assert!(
            config.exists() && root.join("build/worker/shim.mjs").exists(),
            "the worker is not built: run the tests with `make test`"
        );
        // "log" keeps the worker's console output, which main.rs checks for
        // leaked tokens; E2E_LOG_LEVEL overrides it.
        let log_level = std::env::var("E2E_LOG_LEVEL").unwrap_or_else(|_| "log".into());
        let process = DevServer::spawn(&Launch {
            root,
            config: &config,
            vars,
            name,
            port,
            log_level: &log_level,
            inspector: true,
            https: ca.map(|ca| Https {
                key: &ca.server_key,
                cert: &ca.server_cert,
            }),
            state,
        })
        .expect("spawn wrangler dev");
        Server {
            process,
            port,
            tls: ca.map(|ca| ca.ca_cert.clone()),
            secret: vars
                .iter()
                .find(|(k, _)| *k == "JWT_SECRET")
                .map(|(_, v)| v.to_string()),
        }
    }

    /// Waits for `/health` to answer 200; fails fast if wrangler exits.
    pub fn wait_ready(mut self) -> Server {
        let timeout = Duration::from_secs(90);
        let ready = match &self.tls {
            None => self.process.wait_ready(timeout),
            Some(ca) => {
                let trust = hopeflow_client::Trust::with_ca_file(ca).expect("test CA");
                self.process
                    .wait_until(timeout, |port| tls_health_ok(port, &trust))
            }
        };
        if let Err(why) = ready {
            panic!("{why}");
        }
        self
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn base_ws(&self) -> String {
        match self.tls {
            None => format!("ws://127.0.0.1:{}", self.port),
            Some(_) => format!("wss://localhost:{}", self.port),
        }
    }

    pub fn http(&self) -> String {
        match self.tls {
            None => format!("http://127.0.0.1:{}", self.port),
            Some(_) => format!("https://localhost:{}", self.port),
        }
    }

    pub fn ws(&self) -> String {
        format!("{}/", self.base_ws())
    }

    /// A request to `path` on this server.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http().request(method, format!("{}{path}", self.http()))
    }

    /// A token for `user_id` signed with the server's secret.
    pub fn token(&self, user_id: &str) -> String {
        let secret = self.secret.as_deref().expect("server has a secret");
        hopeflow_client::token::mint(secret, user_id, None, Default::default())
    }

    /// A token carrying the default operator scope.
    pub fn operator_token(&self) -> String {
        self.token_with(json!({"userId": "ops", "scope": "operator"}))
    }

    /// `method` on `/users/{user}/{route}` (the user id percent-encoded).
    pub fn user_route(
        &self,
        method: reqwest::Method,
        user: &str,
        route: &str,
    ) -> reqwest::RequestBuilder {
        self.request(method, &format!("/users/{}/{route}", encode_path(user)))
    }

    /// A token with arbitrary claims signed with the server's secret.
    pub fn token_with(&self, claims: Value) -> String {
        let secret = self.secret.as_deref().expect("server has a secret");
        sign(secret, &claims)
    }
}

/// A private CA and a server certificate it signed for `localhost` (only:
/// `127.0.0.1` is a name mismatch), as PEM files in a temp dir.
pub struct TestCa {
    dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_cert: PathBuf,
}

impl TestCa {
    pub fn generate(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!(
            "hopeflow-ca-{}-{name}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("CA dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "HopeFlow e2e test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let ca = TestCa {
            ca_cert: dir.join("ca.pem"),
            server_key: dir.join("server-key.pem"),
            server_cert: dir.join("server.pem"),
            dir,
        };
        std::fs::write(&ca.ca_cert, ca_cert.pem()).expect("write CA");
        std::fs::write(&ca.server_key, server_key.serialize_pem()).expect("write key");
        std::fs::write(&ca.server_cert, server_cert.pem()).expect("write certificate");
        ca
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking `GET /health` over TLS to localhost:`port`, trusting `trust`.
fn tls_health_ok(port: u16, trust: &hopeflow_client::Trust) -> bool {
    let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let Ok(connection) = rustls::ClientConnection::new(trust.client_config(), name) else {
        return false;
    };
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let request = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

/// Signs `claims` with HS256.
pub fn sign(secret: &str, claims: &Value) -> String {
    hopeflow_realtime::hs256::install();
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// Percent-encodes a path segment (everything but unreserved characters).
pub fn encode_path(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// A server that can be stopped and started again on the same port with
/// the same Durable Object storage (removed on drop), as a restart of the
/// runtime keeps it.
pub struct Restartable {
    name: &'static str,
    secret: String,
    /// Settings besides `JWT_SECRET`.
    vars: Vec<(&'static str, &'static str)>,
    port: u16,
    state: PathBuf,
}

impl Restartable {
    pub fn new(name: &'static str, secret: String) -> Restartable {
        Restartable {
            name,
            secret,
            vars: Vec::new(),
            port: free_port(),
            state: std::env::temp_dir().join(format!("hopeflow-{}", unique_user(name))),
        }
    }

    /// This server with `vars` set too.
    pub fn with_vars(mut self, vars: &[(&'static str, &'static str)]) -> Restartable {
        self.vars.extend_from_slice(vars);
        self
    }

    /// Starts it (again) and waits until it is ready.
    pub async fn start(&self) -> Server {
        let (name, secret, port, state) = (
            self.name,
            self.secret.clone(),
            self.port,
            self.state.clone(),
        );
        let extra = self.vars.clone();
        // Starting and stopping block; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut vars = vec![("JWT_SECRET", secret.as_str())];
            vars.extend(extra);
            Server::spawn_persistent(name, &vars, port, &state).wait_ready()
        })
        .await
        .expect("start")
    }

    pub async fn stop(server: Server) {
        tokio::task::spawn_blocking(move || drop(server))
            .await
            .expect("stop");
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A user's sockets, as an operator sees them.
pub async fn sockets_of(server: &Server, user: &str) -> Reply {
    send(
        server
            .user_route(reqwest::Method::GET, user, "sockets")
            .bearer_auth(server.operator_token()),
    )
    .await
}

/// A user id no other test uses.
pub fn unique_user(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

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

/// The answer to an HTTP request: status, headers and JSON body (if any).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error reply of the documented shape, with CORS.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["error"], code, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.body
        );
        assert_eq!(self.header("access-control-allow-origin"), Some("*"));
        assert!(self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")));
    }
}

/// Sends `request` and reads the reply (checked against docs/openapi.yaml).
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let (client, request) = request.build_split();
    let request = request.expect("http request");
    let method = request.method().clone();
    reply(
        &method,
        client.execute(request).await.expect("http request"),
    )
    .await
}

/// Reads the answer to a `method` request, after checking it is the
/// response docs/openapi.yaml documents for its path, method and status.
pub async fn reply(method: &reqwest::Method, response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let path = response.url().path().to_owned();
    let text = response.text().await.expect("response body");
    contract::check_http(method.as_str(), &path, status, &headers, &text);
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// `POST /publish` with a Bearer token and a JSON body.
pub async fn publish_as(server: &Server, token: &str, body: Value) -> Reply {
    send(
        http()
            .post(format!("{}/publish", server.http()))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

/// Publishes `payload` of `kind` to `user_id` and expects a 200.
pub async fn publish(server: &Server, user_id: &str, kind: &str, payload: Value) -> Value {
    let token = server.token("backend");
    let reply = publish_as(
        server,
        &token,
        json!({ "userId": user_id, "type": kind, "payload": payload }),
    )
    .await;
    assert_eq!(reply.status, 200, "publish failed: {}", reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    reply.body
}

/// A WebSocket upgrade request sent over plain HTTP, to see how the server
/// refuses it (`query` is appended to `/`, `bearer` sent as a header).
pub async fn refused_upgrade(server: &Server, query: &str, bearer: Option<&str>) -> Reply {
    let mut request = http()
        .get(format!("{}/{query}", server.http()))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    send(request).await
}

/// The contract: docs/openapi.yaml and docs/asyncapi.yaml, loaded once and
/// checked against every HTTP answer [`reply`] reads (the response of its
/// route, method and status: headers and body) and every frame a
/// [`Client`] receives (text frames against `ServerFrame`, the server's
/// close frames against `CloseFrame`). A mismatch fails the test that read
/// it, naming the schema and showing what arrived.
pub mod contract {
    use std::collections::{BTreeSet, HashMap};
    use std::path::Path;
    use std::sync::{Arc, Mutex, OnceLock};

    use jsonschema::{Draft, Validator};
    use serde_json::{json, Value};

    /// One document, as JSON, with the validators compiled from it so far.
    struct Document {
        name: &'static str,
        root: Value,
        draft: Draft,
        compiled: Mutex<HashMap<String, Arc<Validator>>>,
    }

    impl Document {
        fn load(name: &'static str, draft: Draft) -> Document {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs")
                .join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            let root = serde_norway::from_str(&text)
                .unwrap_or_else(|err| panic!("docs/{name} does not parse: {err}"));
            Document {
                name,
                root,
                draft,
                compiled: Mutex::default(),
            }
        }

        /// The value at `pointer`, following `$ref`s to it: its own pointer
        /// and the value.
        fn at(&self, pointer: &str) -> Option<(String, &Value)> {
            let mut pointer = pointer.to_owned();
            for _ in 0..8 {
                let value = self.root.pointer(&pointer)?;
                match value.get("$ref").and_then(Value::as_str) {
                    Some(target) if target.starts_with('#') => pointer = target[1..].to_owned(),
                    _ => return Some((pointer, value)),
                }
            }
            None
        }

        /// The schema at `pointer`, compiled once; its `$ref`s resolve in
        /// the whole document (which is the root it is compiled from).
        fn validator(&self, pointer: &str) -> Arc<Validator> {
            let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            compiled
                .entry(pointer.to_owned())
                .or_insert_with(|| {
                    let mut root = self.root.clone();
                    root["$ref"] = Value::from(format!("#{}", uri_fragment(pointer)));
                    let validator = jsonschema::options()
                        .with_draft(self.draft)
                        .should_validate_formats(true)
                        .build(&root)
                        .unwrap_or_else(|err| {
                            panic!("docs/{}#{pointer} does not compile: {err}", self.name)
                        });
                    Arc::new(validator)
                })
                .clone()
        }

        /// Why `instance` does not match the schema at `pointer` (empty when it does).
        fn problems(&self, pointer: &str, instance: &Value) -> Vec<String> {
            self.validator(pointer)
                .iter_errors(instance)
                .map(|err| format!("{err} (at {:?})", err.instance_path().as_str()))
                .collect()
        }

        /// Panics unless `instance` matches the schema at `pointer`.
        fn require(&self, pointer: &str, instance: &Value, what: &str) {
            let problems = self.problems(pointer, instance);
            assert!(
                problems.is_empty(),
                "{what} does not match docs/{}#{pointer}:\n  {}\n{what}: {instance}",
                self.name,
                problems.join("\n  ")
            );
        }
    }

    struct Contract {
        openapi: Document,
        asyncapi: Document,
    }

    fn contract() -> &'static Contract {
        static CONTRACT: OnceLock<Contract> = OnceLock::new();
        CONTRACT.get_or_init(|| Contract {
            // OpenAPI 3.1's schemas are JSON Schema 2020-12; AsyncAPI 3.0's
            // default format is a superset of draft-07.
            openapi: Document::load("openapi.yaml", Draft::Draft202012),
            asyncapi: Document::load("asyncapi.yaml", Draft::Draft7),
        })
    }

    /// A JSON pointer as a URI fragment (`{userId}` -> `%7BuserId%7D`).
    fn uri_fragment(pointer: &str) -> String {
        pointer
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b'@' | b'!' | b'$' | b'&' => {
                    (b as char).to_string()
                }
                b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// A JSON pointer's escaping of one key.
    fn escape(key: &str) -> String {
        key.replace('~', "~0").replace('/', "~1")
    }

    const SERVER_FRAME: &str = "/components/schemas/ServerFrame";
    const CLOSE_FRAME: &str = "/components/schemas/CloseFrame";

    /// A text frame the server sent must be one of docs/asyncapi.yaml's
    /// server frames: `pong`, or JSON matching `ServerFrame`.
    pub fn check_frame(text: &str) {
        let doc = &contract().asyncapi;
        let frame = if text == "pong" {
            Value::from(text)
        } else {
            match serde_json::from_str::<Value>(text) {
                Ok(value) if !value.is_string() => value,
                _ => panic!(
                    "the server sent a text frame that is neither `pong` nor a JSON frame \
                     (docs/asyncapi.yaml#{SERVER_FRAME}): {text}"
                ),
            }
        };
        let problems = doc.problems(SERVER_FRAME, &frame);
        if problems.is_empty() {
            return;
        }
        // `oneOf` alone says only that nothing matched: name the frame it
        // looks like and why it is not that.
        let specific = if frame.get("envelopeId").is_some() {
            Some("Envelope")
        } else {
            match frame.get("type").and_then(Value::as_str) {
                Some("subscribed") => Some("SubscribedFrame"),
                Some("unsubscribed") => Some("UnsubscribedFrame"),
                Some("resumed") => Some("ResumedFrame"),
                Some("error") => Some("ErrorFrame"),
                _ => None,
            }
        };
        if let Some(name) = specific {
            doc.require(
                &format!("/components/schemas/{name}"),
                &frame,
                "a server frame",
            );
        }
        panic!(
            "a server frame does not match docs/asyncapi.yaml#{SERVER_FRAME}:\n  {}\nframe: {text}",
            problems.join("\n  ")
        );
    }

    /// Frames the Rust client's observer saw that failed their check.
    static CLIENT_VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Options of the Rust client (`hopeflow_client`) that check every frame
    /// it receives against docs/asyncapi.yaml. The observer runs on the
    /// client's task, where a panic would only end the client, so a
    /// mismatch is recorded and fails the run (main.rs) naming the frame.
    pub fn checked(options: hopeflow_client::ClientOptions) -> hopeflow_client::ClientOptions {
        options.with_frame_observer(|frame| {
            let checked = std::panic::catch_unwind(|| match frame {
                hopeflow_client::ServerFrameText::Text(text) => check_frame(text),
                hopeflow_client::ServerFrameText::Close(code, reason) => check_close(code, reason),
            });
            if let Err(panic) = checked {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| format!("{frame:?}"));
                if let Ok(mut all) = CLIENT_VIOLATIONS.lock() {
                    all.push(why);
                }
            }
        })
    }

    pub fn client_frame_violations() -> Vec<String> {
        CLIENT_VIOLATIONS
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
    }

    /// A close frame the server sent must carry one of docs/asyncapi.yaml's
    /// close codes.
    pub fn check_close(code: u16, reason: &str) {
        contract().asyncapi.require(
            CLOSE_FRAME,
            &json!({ "code": code, "reason": reason }),
            "a close frame from the server",
        );
    }

    /// The documented path (template) `path` is an instance of.
    fn path_template<'d>(doc: &'d Document, path: &str) -> Option<&'d str> {
        let segments: Vec<&str> = path.split('/').collect();
        doc.root["paths"].as_object()?.keys().find_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            let matches = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment);
            matches.then_some(template.as_str())
        })
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// An HTTP answer must be the documented response of its path, method
    /// and status, in docs/openapi.yaml: its documented headers (present
    /// when required, valid when present) and its body. A path the document
    /// does not list must answer `NotFound`; a method its path does not list,
    /// `MethodNotAllowed` with `Allow` naming exactly the path's methods.
    pub fn check_http(
        method: &str,
        path: &str,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &str,
    ) {
        let doc = &contract().openapi;
        let label = format!("{method} {path} -> {status}");
        let Some(template) = path_template(doc, path) else {
            assert_eq!(
                status, 404,
                "{label}: docs/openapi.yaml lists no such path, so only 404 not_found; body: {body}"
            );
            return check_response(
                doc,
                &label,
                method,
                "/components/responses/NotFound",
                headers,
                body,
            );
        };
        let item = format!("/paths/{}", escape(template));
        let operation = format!("{item}/{}", method.to_ascii_lowercase());
        if doc.root.pointer(&operation).is_none() {
            assert_eq!(
                status, 405,
                "{label}: docs/openapi.yaml lists no {method} on {template}, so only 405; body: {body}"
            );
            let listed: BTreeSet<String> = doc.root["paths"][template]
                .as_object()
                .into_iter()
                .flat_map(|item| item.keys())
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(|key| key.to_ascii_uppercase())
                .collect();
            let allow: BTreeSet<String> = headers
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
            assert_eq!(
                allow, listed,
                "{label}: Allow is not the methods docs/openapi.yaml lists for {template}"
            );
            return check_response(
                doc,
                &label,
                method,
                "/components/responses/MethodNotAllowed",
                headers,
                body,
            );
        }
        let responses = format!("{operation}/responses");
        let response = [
            status.to_string(),
            format!("{}XX", status / 100),
            "default".to_owned(),
        ]
        .into_iter()
        .map(|key| format!("{responses}/{key}"))
        .find(|pointer| doc.root.pointer(pointer).is_some())
        .unwrap_or_else(|| {
            panic!(
                "{label}: docs/openapi.yaml does not list status {status} for {method} {template} \
                 (#{responses}); body: {body}"
            )
        });
        check_response(doc, &label, method, &response, headers, body);
    }

    fn check_response(
        doc: &Document,
        label: &str,
        method: &str,
        pointer: &str,
        headers: &reqwest::header::HeaderMap,
        body: &str,
    ) {
        let (pointer, response) = doc
            .at(pointer)
            .unwrap_or_else(|| panic!("docs/openapi.yaml#{pointer} is missing"));
        for name in response["headers"]
            .as_object()
            .into_iter()
            .flat_map(|h| h.keys())
        {
            let (header_pointer, header) = doc
                .at(&format!("{pointer}/headers/{}", escape(name)))
                .unwrap_or_else(|| {
                    panic!("docs/openapi.yaml#{pointer}: header {name} does not resolve")
                });
            let Some(value) = headers.get(name.as_str()) else {
                assert!(
                    header["required"] != true,
                    "{label}: the header {name} (docs/openapi.yaml#{header_pointer}) is missing"
                );
                continue;
            };
            let value = value.to_str().unwrap_or_default();
            let schema = format!("{header_pointer}/schema");
            // Header values are text; an integer header is read as one.
            let instance = match doc.at(&schema).map(|(_, s)| s["type"] == "integer") {
                Some(true) => value
                    .parse::<i64>()
                    .map_or_else(|_| Value::from(value), Value::from),
                _ => Value::from(value),
            };
            doc.require(&schema, &instance, &format!("{label}: header {name}"));
        }
        if method == "HEAD" {
            assert!(
                body.is_empty(),
                "{label}: a HEAD answer with a body: {body}"
            );
            return;
        }
        let Some(content) = response["content"].as_object() else {
            assert!(
                body.is_empty(),
                "{label}: docs/openapi.yaml#{pointer} documents no body, got: {body}"
            );
            return;
        };
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        assert!(
            content.contains_key(&media_type),
            "{label}: Content-Type {content_type:?} is not one docs/openapi.yaml#{pointer} documents"
        );
        if media_type == "application/json" {
            let instance: Value = serde_json::from_str(body)
                .unwrap_or_else(|_| panic!("{label}: the body is not JSON: {body}"));
            doc.require(
                &format!("{pointer}/content/application~1json/schema"),
                &instance,
                &format!("{label}: the body"),
            );
        }
    }
}
