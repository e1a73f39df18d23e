//! HTTP: the router and what every handler shares. `POST /graphql` (with our own request
//! parsing, so malformed requests get a GraphQL error and 400), GraphiQL, subscriptions over
//! WebSocket, one-time downloads, health and readiness, Prometheus metrics; request ids,
//! spans, counts and body limits.

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

mod downloads;
mod graphiql;
mod graphql;
mod health;
mod metrics;
mod request;
mod sockets;
mod state;
mod ws;

pub(crate) use state::AppState;

/// Cross-origin calls from the configured origins' browser apps: bearer tokens in a header (no
/// cookies, so no credentials mode), the headers a GraphQL client sends, the request id back.
fn cors(origins: Vec<HeaderValue>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("custos-after"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// The largest request body accepted (413 beyond).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// The service's routes, with a request id, span and count around each request.
pub(crate) fn router(state: AppState) -> Router {
    let cors = (!state.cors_origins.is_empty()).then(|| cors(state.cors_origins.clone()));
    Router::new()
        .route("/graphql", get(graphiql::page).post(graphql::graphql))
        .route("/graphiql/{name}", get(graphiql::asset))
        .route("/graphql/ws", get(ws::graphql_ws))
        .route("/exports/{token}", get(downloads::download))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower::util::option_layer(cors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request::request_span,
        ))
        .with_state(state)
}
