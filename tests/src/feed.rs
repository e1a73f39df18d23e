//! A client of the GraphQL subscriptions endpoint (`graphql-transport-ws` over a real
//! WebSocket), for the end-to-end suite and the binary's tests.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `graphql-transport-ws` with `token` and subscribes to the audit feed; the
/// server's answer to the init (`connection_ack`, or why not).
pub async fn subscribe(address: &str, token: &str) -> (Socket, Value) {
    open(
        address,
        Some(token),
        "subscription { auditFeed { eventType aggregateId } }",
    )
    .await
}

/// Opens `graphql-transport-ws` (with `token` in the init payload, if any) and sends
/// `document` as a subscription; the server's answer to the init.
pub async fn open(address: &str, token: Option<&str>, document: &str) -> (Socket, Value) {
    open_with(address, token, document, Value::Null).await
}

/// [`open`], the subscription with `variables` (id `1`).
pub async fn open_with(
    address: &str,
    token: Option<&str>,
    document: &str,
    variables: Value,
) -> (Socket, Value) {
    let mut request = format!("ws://{address}/graphql/ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let payload = match token {
        Some(token) => json!({ "authorization": format!("Bearer {token}") }),
        None => json!({}),
    };
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": payload }),
    )
    .await;
    let ack = next(&mut socket, std::time::Duration::from_secs(5))
        .await
        .unwrap_or(Value::Null);
    if ack["type"] == "connection_ack" {
        send(
            &mut socket,
            json!({ "id": "1", "type": "subscribe", "payload": { "query": document, "variables": variables } }),
        )
        .await;
    }
    (socket, ack)
}

pub async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message within `wait` (pings answered), or `None`.
pub async fn next(socket: &mut Socket, wait: std::time::Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).ok()?;
                if value["type"] == "ping" {
                    send(socket, json!({ "type": "pong" })).await;
                    continue;
                }
                return Some(value);
            }
            Message::Close(frame) => {
                return Some(json!({
                    "type": "closed",
                    "code": frame.as_ref().map(|f| u16::from(f.code)),
                    "reason": frame.map(|f| f.reason.to_string()),
                }))
            }
            _ => continue,
        }
    }
}
