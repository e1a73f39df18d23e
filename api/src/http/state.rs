//! What every handler shares: the schema, the use cases, whether GraphiQL is served, and the
//! token `/metrics` asks for.

use std::sync::Arc;

use crate::graphql::CustosSchema;
use crate::service::Services;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) schema: CustosSchema,
    pub(crate) services: Arc<Services>,
    pub(crate) graphiql: bool,
    /// The bearer token `/metrics` asks for, if one is configured.
    pub(crate) metrics_token: Option<Arc<secrecy::SecretString>>,
    /// Origins allowed to call across origins (CORS); none when empty.
    pub(crate) cors_origins: Vec<axum::http::HeaderValue>,
    /// The limits of GraphQL over WebSocket.
    pub(crate) websockets: crate::config::WebSocketLimits,
    /// The WebSocket connections open per organisation.
    pub(crate) sockets: Arc<super::sockets::Sockets>,
}
