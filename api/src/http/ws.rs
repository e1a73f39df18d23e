//! GraphQL subscriptions over WebSocket at `/graphql/ws`.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::request::ClientOrigin;
use super::state::AppState;
use crate::graphql::context::{RequestContext, SubscriptionAuth};
use crate::graphql::loaders::Loaders;
use crate::telemetry::metrics::Tracked;

/// GraphQL subscriptions over WebSocket (`graphql-transport-ws`, or the older
/// `graphql-ws`). The connection is authenticated by its `connection_init` payload,
/// `{"authorization": "Bearer <token>"}`; without a valid token it is refused. When the
/// service stops, it is closed with 1001 (going away).
pub(crate) async fn graphql_ws(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    protocol: async_graphql_axum::GraphQLProtocol,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let (schema, services) = (state.schema.clone(), state.services.clone());
    let closing = services.closing.clone();
    let connections = services.metrics.websocket_connections.clone();
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            let open = Tracked::new(&connections);
            let (client, from_client) = socket.split();
            let (to_client, queue) = futures::channel::mpsc::channel(16);
            let graphql = async_graphql_axum::GraphQLWebSocket::new_with_pair(
                to_client,
                from_client,
                schema,
                protocol,
            )
            .on_connection_init(move |payload| async move {
                if !services.database.is_up() {
                    return Err(async_graphql::Error::new(
                        "the database is unavailable; try again shortly",
                    ));
                }
                let token = payload
                    .get("authorization")
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .map(str::to_owned);
                let principal = match &token {
                    Some(token) => services.authenticate(token, &origin).await.map_err(|err| {
                        err.report();
                        async_graphql::Error::new("authentication is unavailable; try again")
                    })?,
                    None => None,
                };
                let (Some(principal), Some(token)) = (principal, token) else {
                    return Err(async_graphql::Error::new(
                        "authentication required: give {\"authorization\": \"Bearer <token>\"}",
                    ));
                };
                let mut data = async_graphql::Data::default();
                Loaders::new(&principal).attach(&mut data);
                data.insert(SubscriptionAuth {
                    token,
                    origin: origin.clone(),
                });
                data.insert(RequestContext {
                    origin,
                    principal: Some(principal),
                });
                Ok(data)
            })
            .serve();
            async move {
                Outgoing { queue, client }.run(graphql, closing).await;
                drop(open);
            }
        })
}

/// What the GraphQL side sends (into a queue), on its way to the client.
struct Outgoing {
    queue: futures::channel::mpsc::Receiver<Message>,
    client: futures::stream::SplitSink<WebSocket, Message>,
}

/// The longest a message may take to reach the client (one that stops reading is let go).
const SEND: std::time::Duration = std::time::Duration::from_secs(10);

impl Outgoing {
    /// Runs the GraphQL side and forwards what it sends until it ends (everything it queued is
    /// sent first) or the service stops: then what is queued already is sent and the client
    /// is told 1001 (going away).
    async fn run(
        mut self,
        graphql: impl std::future::Future<Output = ()>,
        closing: CancellationToken,
    ) {
        let mut graphql = std::pin::pin!(graphql);
        let mut graphql_ended = false;
        loop {
            tokio::select! {
                () = &mut graphql, if !graphql_ended => graphql_ended = true,
                message = self.queue.next() => match message {
                    Some(message) => {
                        if !self.send(message).await {
                            return;
                        }
                    }
                    // The GraphQL side ended and everything it queued was sent.
                    None => {
                        let _ = tokio::time::timeout(SEND, self.client.close()).await;
                        return;
                    }
                },
                () = closing.cancelled() => break,
            }
        }
        self.queue.close();
        while let Ok(message) = self.queue.try_recv() {
            if !self.send(message).await {
                return;
            }
        }
        let going_away = Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::AWAY,
            reason: "the service is stopping".into(),
        }));
        if self.send(going_away).await {
            let _ = tokio::time::timeout(SEND, self.client.close()).await;
        }
    }

    /// Sends one message; `false` when the client is gone or does not take it in time.
    async fn send(&mut self, message: Message) -> bool {
        matches!(
            tokio::time::timeout(SEND, self.client.send(message)).await,
            Ok(Ok(()))
        )
    }
}
