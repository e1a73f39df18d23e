//! The GraphQL API: the schema, what each request carries, and the helpers every resolver
//! uses to find its principal. One module per area.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, MergedObject, Schema, SchemaBuilder};
use custos_projections::api_tokens::{self, ApiTokenRow};
use custos_projections::page::MAX_PAGE;
use custos_projections::users::{self, UserRow};
use custos_projections::{Cursor, Page};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::service::{RequestOrigin, Services};

pub mod admin;
pub mod audit;
pub mod custom_fields;
pub mod exports;
pub mod history;
pub mod identity;
pub mod imports;
pub mod limits;
pub mod privacy;
pub mod record_query;
pub mod records;
pub mod reports;
pub mod security;

/// The root query type.
#[derive(MergedObject, Default)]
pub struct Query(
    identity::IdentityQuery,
    admin::AdminQuery,
    records::RecordsQuery,
    history::HistoryQuery,
    security::SecurityQuery,
    custom_fields::CustomFieldsQuery,
    reports::ReportsQuery,
    privacy::PrivacyQuery,
    audit::AuditQuery,
);

/// The root mutation type.
#[derive(MergedObject, Default)]
pub struct Mutation(
    identity::IdentityMutation,
    admin::AdminMutation,
    records::RecordsMutation,
    security::SecurityMutation,
    custom_fields::CustomFieldsMutation,
    exports::ExportsMutation,
    imports::ImportsMutation,
    privacy::PrivacyMutation,
    audit::AuditMutation,
);

pub type CustosSchema = Schema<Query, Mutation, audit::AuditSubscription>;

/// Query limits: deep or expensive documents are refused before they run.
pub const MAX_DEPTH: usize = 12;
pub const MAX_COMPLEXITY: usize = 2_000;

fn builder() -> SchemaBuilder<Query, Mutation, audit::AuditSubscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        audit::AuditSubscription,
    )
    .extension(limits::AliasLimit)
    .extension(crate::authz::Authorization)
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .limit_recursive_depth(32)
}

/// Builds the schema; `services` is shared by every request. Introspection can be switched
/// off for production.
pub fn build_schema(services: Arc<Services>, introspection: bool) -> CustosSchema {
    let builder = builder().data(services);
    if introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The schema in SDL, as committed in `docs/schema.graphql`.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// What the HTTP layer attaches to each GraphQL request.
pub struct RequestContext {
    pub origin: RequestOrigin,
    /// Set when the request carried a valid bearer token.
    pub principal: Option<Principal>,
}

pub(crate) fn services<'a>(ctx: &Context<'a>) -> Result<&'a Arc<Services>, ApiError> {
    ctx.data::<Arc<Services>>()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("schema built without services")))
}

pub(crate) fn request<'a>(ctx: &Context<'a>) -> Result<&'a RequestContext, ApiError> {
    ctx.data::<RequestContext>()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("request without context")))
}

/// The principal of an authenticated request, or `UNAUTHENTICATED`.
pub(crate) fn principal<'a>(ctx: &Context<'a>) -> Result<&'a Principal, ApiError> {
    request(ctx)?
        .principal
        .as_ref()
        .ok_or(ApiError::Unauthenticated)
}

/// The extra field every connection has.
#[derive(async_graphql::SimpleObject)]
pub struct ConnectionTotal {
    /// How many items match, over all pages.
    pub(crate) total_count: i64,
}

/// A validated `first` argument: 1 to [`MAX_PAGE`], 20 when omitted.
pub(crate) fn page_size(first: Option<i32>) -> Result<i64, ApiError> {
    let first = first.unwrap_or(20);
    if !(1..=MAX_PAGE as i32).contains(&first) {
        return Err(ApiError::validation(
            "first",
            format!("`first` must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(first.into())
}

/// Validated `first` / `after` arguments of a list ordered by id.
pub(crate) fn page_args(
    first: Option<i32>,
    after: Option<String>,
) -> Result<(i64, Option<Cursor>), ApiError> {
    let first = page_size(first)?;
    let after = after
        .map(|raw| {
            Cursor::decode(&raw)
                .ok_or_else(|| ApiError::validation("after", "`after` is not a valid cursor"))
        })
        .transpose()?;
    Ok((first, after))
}

/// A page of a list ordered by id, as a Relay connection of `node`s.
pub(crate) fn id_connection<T, N: async_graphql::OutputType>(
    page: Page<T>,
    after: Option<Cursor>,
    id: impl Fn(&T) -> Uuid,
    node: impl Fn(T) -> N,
) -> Connection<String, N, ConnectionTotal, EmptyFields> {
    let mut connection = Connection::with_additional_fields(
        after.is_some(),
        page.has_next_page,
        ConnectionTotal {
            total_count: page.total_count,
        },
    );
    connection.edges.extend(
        page.items
            .into_iter()
            .map(|item| Edge::new(Cursor(id(&item)).encode(), node(item))),
    );
    connection
}

/// Parses an `ID!` argument that must be a UUID.
/// A moment a client gave, within years 1 to 9999 (what the database stores; the scalar
/// accepts far more), or `VALIDATION` on `field`.
pub(crate) fn moment(
    field: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    use chrono::Datelike;
    if (1..=9999).contains(&at.year()) {
        Ok(at)
    } else {
        Err(ApiError::validation(
            field,
            format!("`{field}` must be within the years 1 to 9999"),
        ))
    }
}

pub(crate) fn parse_id(field: &str, id: &async_graphql::ID) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id.as_str())
        .map_err(|_| ApiError::validation(field, format!("`{field}` is not a valid id")))
}

/// Batches user lookups within one request (actors of many history entries or rows).
pub struct UserLoader(pub PgPool);

impl Loader<Uuid> for UserLoader {
    type Value = UserRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, UserRow>, Self::Error> {
        let rows = users::users(&self.0, keys).await.map_err(Arc::new)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Batches API token lookups within one request (actors of records and history entries).
pub struct ApiTokenLoader(pub PgPool);

impl Loader<Uuid> for ApiTokenLoader {
    type Value = ApiTokenRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, ApiTokenRow>, Self::Error> {
        let rows = api_tokens::tokens(&self.0, keys).await.map_err(Arc::new)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Per-request loaders for the principal's tenant.
pub struct Loaders {
    pub users: DataLoader<UserLoader>,
    pub api_tokens: DataLoader<ApiTokenLoader>,
    pub schemas: DataLoader<custom_fields::SchemaLoader>,
}

pub fn loaders(principal: &Principal) -> Loaders {
    let pool = &principal.tenant.pool;
    Loaders {
        users: DataLoader::new(UserLoader(pool.clone()), tokio::spawn),
        api_tokens: DataLoader::new(ApiTokenLoader(pool.clone()), tokio::spawn),
        schemas: DataLoader::new(custom_fields::SchemaLoader(pool.clone()), tokio::spawn),
    }
}

pub(crate) async fn load_api_token(
    ctx: &Context<'_>,
    id: Uuid,
) -> Result<Option<ApiTokenRow>, ApiError> {
    let loader = ctx
        .data::<DataLoader<ApiTokenLoader>>()
        .map_err(|_| ApiError::Unauthenticated)?;
    loader
        .load_one(id)
        .await
        .map_err(|err| ApiError::internal(anyhow::anyhow!("loading an API token failed: {err}")))
}

pub(crate) async fn load_user(ctx: &Context<'_>, id: Uuid) -> Result<Option<UserRow>, ApiError> {
    let loader = ctx
        .data::<DataLoader<UserLoader>>()
        .map_err(|_| ApiError::Unauthenticated)?;
    loader
        .load_one(id)
        .await
        .map_err(|err| ApiError::internal(anyhow::anyhow!("loading a user failed: {err}")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed SDL is the API contract: changing the schema without updating it fails
    /// here. `CUSTOS_UPDATE_SCHEMA=1 cargo test -p custos-api` rewrites it.
    #[test]
    fn the_committed_schema_matches_the_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema.graphql");
        let current = super::sdl();
        if std::env::var_os("CUSTOS_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &current).expect("docs/schema.graphql is writable");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/schema.graphql is out of date: run `CUSTOS_UPDATE_SCHEMA=1 cargo test -p custos-api` and commit it"
        );
    }
}
