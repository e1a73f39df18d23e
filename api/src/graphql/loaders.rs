//! Per-request batching of lookups that many entries of one answer share: the users and API
//! tokens behind actors, each datasheet's custom fields, and the records' pending changes.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::Context;
use custos_domain::{CustomSchema, Datasheet};
use custos_projections::api_tokens::{self, ApiTokenRow};
use custos_projections::records::{self, PendingChange};
use custos_projections::users::{self, UserRow};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;

/// Batches user lookups within one request (actors of many history entries or rows).
pub(crate) struct UserLoader(PgPool);

impl Loader<Uuid> for UserLoader {
    type Value = UserRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, UserRow>, Self::Error> {
        let rows = users::users(&self.0, keys).await.map_err(Arc::new)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Batches API token lookups within one request (actors of records and history entries).
pub(crate) struct ApiTokenLoader(PgPool);

impl Loader<Uuid> for ApiTokenLoader {
    type Value = ApiTokenRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, ApiTokenRow>, Self::Error> {
        let rows = api_tokens::tokens(&self.0, keys).await.map_err(Arc::new)?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Batches schema lookups within one request (every record of a page needs its datasheet's).
pub(crate) struct SchemaLoader(PgPool);

impl Loader<Datasheet> for SchemaLoader {
    type Value = CustomSchema;
    type Error = Arc<sqlx::Error>;

    async fn load(
        &self,
        keys: &[Datasheet],
    ) -> Result<HashMap<Datasheet, CustomSchema>, Self::Error> {
        let mut schemas = HashMap::new();
        for datasheet in keys {
            let schema = custos_projections::custom_fields::schema(&self.0, *datasheet)
                .await
                .map_err(Arc::new)?;
            schemas.insert(*datasheet, schema);
        }
        Ok(schemas)
    }
}

/// Batches the pending changes of the records of one answer (a page of records asking for
/// `pendingChanges` costs one statement, not one per record).
pub(crate) struct PendingChangesLoader(PgPool);

impl Loader<Uuid> for PendingChangesLoader {
    type Value = Vec<PendingChange>;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Vec<PendingChange>>, Self::Error> {
        let rows = records::pending_changes(&self.0, keys)
            .await
            .map_err(Arc::new)?;
        let mut pending: HashMap<Uuid, Vec<PendingChange>> = HashMap::new();
        for row in rows {
            pending.entry(row.record_id).or_default().push(row);
        }
        Ok(pending)
    }
}

/// The loaders of one request, for the principal's tenant.
pub(crate) struct Loaders {
    users: DataLoader<UserLoader>,
    api_tokens: DataLoader<ApiTokenLoader>,
    schemas: DataLoader<SchemaLoader>,
    pending_changes: DataLoader<PendingChangesLoader>,
}

impl Loaders {
    pub(crate) fn new(principal: &Principal) -> Self {
        let pool = &principal.tenant.pool;
        Self {
            users: DataLoader::new(UserLoader(pool.clone()), tokio::spawn),
            api_tokens: DataLoader::new(ApiTokenLoader(pool.clone()), tokio::spawn),
            schemas: DataLoader::new(SchemaLoader(pool.clone()), tokio::spawn),
            pending_changes: DataLoader::new(PendingChangesLoader(pool.clone()), tokio::spawn),
        }
    }

    /// Adds them to a request's data.
    pub(crate) fn attach(self, data: &mut async_graphql::Data) {
        data.insert(self.users);
        data.insert(self.api_tokens);
        data.insert(self.schemas);
        data.insert(self.pending_changes);
    }
}

/// The user `id` of the request's tenant, through the request's loader.
pub(crate) async fn load_user(ctx: &Context<'_>, id: Uuid) -> Result<Option<UserRow>, ApiError> {
    let loader = ctx
        .data::<DataLoader<UserLoader>>()
        .map_err(|_| ApiError::Unauthenticated)?;
    loader
        .load_one(id)
        .await
        .map_err(|err| ApiError::internal(anyhow::anyhow!("loading a user failed: {err}")))
}

/// The API token `id` of the request's tenant, through the request's loader.
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

/// A datasheet's custom fields, through the request's loader.
pub(crate) async fn load_schema(
    ctx: &Context<'_>,
    datasheet: Datasheet,
) -> Result<CustomSchema, ApiError> {
    let loader = ctx
        .data::<DataLoader<SchemaLoader>>()
        .map_err(|_| ApiError::Unauthenticated)?;
    Ok(loader
        .load_one(datasheet)
        .await
        .map_err(|err| ApiError::internal(anyhow::anyhow!("loading custom fields failed: {err}")))?
        .unwrap_or_default())
}

/// Record `id`'s pending changes (see [`PendingChangesLoader`]), through the request's loader.
pub(crate) async fn load_pending_changes(
    ctx: &Context<'_>,
    id: Uuid,
) -> Result<Vec<PendingChange>, ApiError> {
    let loader = ctx
        .data::<DataLoader<PendingChangesLoader>>()
        .map_err(|_| ApiError::Unauthenticated)?;
    Ok(loader
        .load_one(id)
        .await
        .map_err(|err| {
            ApiError::internal(anyhow::anyhow!("loading pending changes failed: {err}"))
        })?
        .unwrap_or_default())
}
