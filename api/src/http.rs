//! HTTP: the router and what every handler shares. `POST /graphql` (with our own request
//! parsing, so malformed requests get a GraphQL error and 400), GraphiQL, subscriptions over
//! WebSocket, one-time downloads, health and readiness, Prometheus metrics; request ids,
//! spans, counts and body limits.

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use axum::Router;

mod downloads;
mod graphql;
mod health;
mod metrics;
mod request;
mod state;
mod ws;

pub(crate) use state::AppState;

/// The largest request body accepted (413 beyond).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// The service's routes, with a request id, span and count around each request.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql::graphiql).post(graphql::graphql))
        .route("/graphql/ws", get(ws::graphql_ws))
        .route("/exports/{token}", get(downloads::download))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request::request_span,
        ))
        .with_state(state)
}
