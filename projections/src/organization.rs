//! The `organization_settings` read model: the organisation's current settings.

use async_trait::async_trait;
use custos_domain::{Organization, OrganizationEvent};
use sqlx::{PgConnection, PgExecutor};

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects Organization events into the one row of `organization_settings`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrganizationProjection;

#[async_trait]
impl Projection for OrganizationProjection {
    fn name(&self) -> &'static str {
        "organization"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Organization as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        &[crate::Table {
            name: "organization_settings",
            incidental: &[],
            kept_on_reset: true,
            read_indexes: &[],
        }]
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Organization(organization_event) = &event.event else {
            return Ok(());
        };
        let required = match organization_event {
            OrganizationEvent::TwoFactorRequired => true,
            OrganizationEvent::TwoFactorMadeOptional => false,
        };
        sqlx::query(
            "UPDATE organization_settings SET version = $1, two_factor_required = $2, updated_at = $3
             WHERE version < $1",
        )
        .bind(event.sequence)
        .bind(required)
        .bind(event.recorded_at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE organization_settings SET version = 0, two_factor_required = false, updated_at = NULL",
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Whether the organisation requires every user to log in with a second factor.
pub async fn two_factor_required<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT two_factor_required FROM organization_settings")
        .fetch_one(db)
        .await
}
