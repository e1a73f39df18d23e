//! The `api_tokens` read model: integration tokens, their role, expiry and revocation, and
//! the hash a presented token is looked up by.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{ApiToken, ApiTokenEvent};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, Page, ProjectedEvent, Projection};

/// Projects ApiToken events into `api_tokens`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiTokensProjection;

#[async_trait]
impl Projection for ApiTokensProjection {
    fn name(&self) -> &'static str {
        "api_tokens"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<ApiToken as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("api_tokens")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::ApiToken(token_event) = &event.event else {
            return Ok(());
        };
        match token_event {
            ApiTokenEvent::ApiTokenCreated {
                name,
                role,
                expires_at,
                token_hash,
            } => {
                // A malformed hash cannot match any presented token; it is kept as empty.
                let hash = hex::decode(token_hash).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO api_tokens (id, version, name, role_id, token_hash, expires_at, created_by, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(name)
                .bind(role)
                .bind(hash)
                .bind(expires_at)
                .bind(event.metadata.actor.id())
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            ApiTokenEvent::ApiTokenRevoked => {
                sqlx::query(
                    "UPDATE api_tokens SET version = $2, revoked_at = $3 WHERE id = $1 AND version < $2",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            ApiTokenEvent::ApiTokenUsed { .. } => {
                sqlx::query(
                    "UPDATE api_tokens SET version = $2, last_used_at = $3 WHERE id = $1 AND version < $2",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            ApiTokenEvent::ApiTokenRefused { .. } => {
                sqlx::query(
                    "UPDATE api_tokens SET version = $2, last_refused_at = $3 WHERE id = $1 AND version < $2",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM api_tokens").execute(conn).await?;
        Ok(())
    }
}

/// An API token as administrators see it (never its secret or hash).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApiTokenRow {
    pub id: Uuid,
    pub version: i64,
    pub name: String,
    pub role_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The columns of [`ApiTokenRow`].
pub const TOKEN_COLUMNS: &str =
    "id, version, name, role_id, expires_at, revoked_at, created_by, created_at, last_used_at";

/// The token with this id.
pub async fn token<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<ApiTokenRow>> {
    sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The tokens with these ids (missing ids are left out).
pub async fn tokens<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> sqlx::Result<Vec<ApiTokenRow>> {
    sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A page of tokens in creation order (ids are UUIDv7); revoked and expired ones only when
/// asked.
pub async fn tokens_page(
    db: &mut PgConnection,
    first: i64,
    after: Option<crate::Cursor>,
    include_inactive: bool,
) -> sqlx::Result<Page<ApiTokenRow>> {
    const ACTIVE: &str = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())";
    let first = first.clamp(1, crate::page::MAX_PAGE);
    let mut items: Vec<ApiTokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens
         WHERE ($1 OR ({ACTIVE})) AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
    ))
    .bind(include_inactive)
    .bind(after.map(|c| c.0))
    .bind(first + 1)
    .fetch_all(&mut *db)
    .await?;
    let has_next_page = items.len() as i64 > first;
    items.truncate(first as usize);
    let total_count = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM api_tokens WHERE $1 OR ({ACTIVE})"
    ))
    .bind(include_inactive)
    .fetch_one(&mut *db)
    .await?;
    Ok(Page {
        items,
        has_next_page,
        total_count,
    })
}

/// How many tokens that are neither revoked nor expired act with this role.
pub async fn live_with_role<'e>(db: impl PgExecutor<'e>, role_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens
         WHERE role_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(role_id)
    .fetch_one(db)
    .await
}
