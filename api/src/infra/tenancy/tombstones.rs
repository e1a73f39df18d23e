//! What is left of a purged organisation in the catalog: a tombstone (who it was, when it
//! lived, who purged it and why, the last signed tree head of its history) in place of its
//! row, whose slug is free again. Its subscription stream stays beside it.

use chrono::{DateTime, Utc};
use custos_domain::FinalTreeHead;
use sqlx::types::Json;
use uuid::Uuid;

use super::catalog::Tenancy;
use super::tenant::TenantRow;

/// A purged organisation, as the catalog keeps it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Tombstone {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub region: String,
    pub created_at: DateTime<Utc>,
    pub purged_at: DateTime<Utc>,
    pub purged_by: String,
    pub reason: String,
    pub final_tree_head: Option<Json<FinalTreeHead>>,
}

const TOMBSTONE_COLUMNS: &str =
    "id, slug, name, region, created_at, purged_at, purged_by, reason, final_tree_head";

impl Tenancy {
    /// Replaces the catalog row of the purged organisation `row` (its database already
    /// dropped) with its tombstone, in one transaction. Idempotent.
    pub(crate) async fn bury(
        &self,
        row: &TenantRow,
        purged_at: DateTime<Utc>,
        purged_by: &str,
        reason: &str,
        final_tree_head: Option<&FinalTreeHead>,
    ) -> sqlx::Result<()> {
        let mut tx = self.catalog().begin().await?;
        sqlx::query(
            "INSERT INTO tombstones (id, slug, name, region, created_at, purged_at, purged_by,
                                     reason, final_tree_head)
             SELECT id, slug, name, region, created_at, $2, $3, $4, $5 FROM tenants
             WHERE id = $1 AND status = 'purged'
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(row.id)
        .bind(purged_at)
        .bind(purged_by)
        .bind(reason)
        .bind(final_tree_head.map(Json))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM tenants WHERE id = $1 AND status = 'purged'")
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        crate::infra::notifications::outbox::release_purge_notices(&mut tx, row.id).await?;
        tx.commit().await
    }

    /// Every purged organisation, most recent first.
    pub(crate) async fn tombstones(&self) -> sqlx::Result<Vec<Tombstone>> {
        sqlx::query_as(&format!(
            "SELECT {TOMBSTONE_COLUMNS} FROM tombstones ORDER BY purged_at DESC"
        ))
        .fetch_all(self.catalog())
        .await
    }

    /// The tombstone of the organisation `id`, if it was purged.
    pub(crate) async fn tombstone(&self, id: Uuid) -> sqlx::Result<Option<Tombstone>> {
        sqlx::query_as(&format!(
            "SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.catalog())
        .await
    }

    /// Organisations due for their purge at `now` (an ended trial's grace period or an ended
    /// subscription's migration window is over), and purges cut short.
    pub(crate) async fn due_for_purge(&self, now: DateTime<Utc>) -> sqlx::Result<Vec<Uuid>> {
        sqlx::query_scalar(
            "SELECT t.id FROM tenants t
             WHERE t.move IS NULL
               AND (t.status = 'purged'
                    OR (t.status IN ('expired', 'migration') AND t.kept_until <= $1)
                    -- a purge whose event a crash kept out of the row
                    OR t.lifecycle_sequence < (SELECT max(e.sequence) FROM subscription_events e
                                               WHERE e.aggregate_type = 'subscription'
                                                 AND e.aggregate_id = t.id::text
                                                 AND e.event_type = 'Purged'))
             ORDER BY t.created_at",
        )
        .bind(now)
        .fetch_all(self.catalog())
        .await
    }

    /// Whether the organisation `id` is being moved.
    pub(crate) async fn is_moving(&self, id: Uuid) -> sqlx::Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1 AND move IS NOT NULL)",
        )
        .bind(id)
        .fetch_one(self.catalog())
        .await
    }

    /// The purged organisation that last had `slug`, if any.
    pub(crate) async fn tombstone_by_slug(&self, slug: &str) -> sqlx::Result<Option<Tombstone>> {
        sqlx::query_as(&format!(
            "SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE slug = $1
             ORDER BY purged_at DESC LIMIT 1"
        ))
        .bind(slug)
        .fetch_optional(self.catalog())
        .await
    }
}
