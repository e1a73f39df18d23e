//! GraphQL subscriptions over WebSocket at `/graphql/ws`.

use axum::extract::State;
use axum::response::Response;

use super::request::ClientOrigin;
use super::state::AppState;
use crate::graphql::context::{RequestContext, SubscriptionAuth};
use crate::graphql::loaders::Loaders;

/// GraphQL subscriptions over WebSocket (`graphql-transport-ws`, or the older
/// `graphql-ws`). The connection is authenticated by its `connection_init` payload,
/// `{"authorization": "Bearer <token>"}`; without a valid token it is refused.
pub(crate) async fn graphql_ws(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    protocol: async_graphql_axum::GraphQLProtocol,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let (schema, services) = (state.schema.clone(), state.services.clone());
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            async_graphql_axum::GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let token = payload
                        .get("authorization")
                        .and_then(|v| v.as_str())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(str::trim)
                        .map(str::to_owned);
                    let principal = match &token {
                        Some(token) => {
                            services.authenticate(token, &origin).await.map_err(|err| {
                                err.report();
                                async_graphql::Error::new(
                                    "authentication is unavailable; try again",
                                )
                            })?
                        }
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
                .serve()
        })
}
