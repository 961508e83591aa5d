//! HTTP: requests with reqwest, their answers read into a [`Reply`] after
//! checking them against docs/openapi.yaml, and the publish helpers.

use std::time::Duration;

use serde_json::{json, Value};

use super::{contract, Server};

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

/// [`refused_upgrade`] offering `protocols` in `Sec-WebSocket-Protocol`.
pub async fn refused_upgrade_offering(
    server: &Server,
    protocols: &str,
    query: &str,
    bearer: Option<&str>,
) -> Reply {
    let mut request = http()
        .get(format!("{}/{query}", server.http()))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Protocol", protocols);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    send(request).await
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
