//! What every handler shares: the schema, the use cases, and whether GraphiQL is served.

use std::sync::Arc;

use crate::graphql::CustosSchema;
use crate::service::Services;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) schema: CustosSchema,
    pub(crate) services: Arc<Services>,
    pub(crate) graphiql: bool,
}
