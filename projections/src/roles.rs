//! The `roles` read model: roles, their grants, and each user's effective permissions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, Grant, Grants, Permission, Role, RoleEvent};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects Role events into `roles` and `role_grants`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RolesProjection;

async fn grant(conn: &mut PgConnection, role: Uuid, grant: &Grant) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO role_grants (role_id, datasheet, permission) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(role)
        .bind(grant.datasheet.as_str())
        .bind(grant.permission.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Projection for RolesProjection {
    fn name(&self) -> &'static str {
        "roles"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Role as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("roles"), crate::Table::new("role_grants")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Role(role_event) = &event.event else {
            return Ok(());
        };
        let id = event.aggregate_id;
        match role_event {
            RoleEvent::RoleCreated { name, grants } => {
                let inserted = sqlx::query(
                    "INSERT INTO roles (id, version, name, name_normalized, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(event.sequence)
                .bind(name.as_str())
                .bind(name.normalized())
                .bind(event.recorded_at)
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() == 1 {
                    for g in grants {
                        grant(conn, id, g).await?;
                    }
                }
                return Ok(());
            }
            RoleEvent::RoleRenamed { name } => {
                sqlx::query("UPDATE roles SET name = $3, name_normalized = $4 WHERE id = $1 AND version < $2")
                    .bind(id)
                    .bind(event.sequence)
                    .bind(name.as_str())
                    .bind(name.normalized())
                    .execute(&mut *conn)
                    .await?;
            }
            RoleEvent::PermissionGranted { grant: g } => grant(conn, id, g).await?,
            RoleEvent::PermissionRevoked { grant: g } => {
                sqlx::query("DELETE FROM role_grants WHERE role_id = $1 AND datasheet = $2 AND permission = $3")
                    .bind(id)
                    .bind(g.datasheet.as_str())
                    .bind(g.permission.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            RoleEvent::RoleDeleted => {
                sqlx::query("UPDATE roles SET deleted = true WHERE id = $1 AND version < $2")
                    .bind(id)
                    .bind(event.sequence)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM role_grants WHERE role_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        sqlx::query(
            "UPDATE roles SET version = $2, updated_at = $3 WHERE id = $1 AND version < $2",
        )
        .bind(id)
        .bind(event.sequence)
        .bind(event.recorded_at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM role_grants")
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM roles").execute(conn).await?;
        Ok(())
    }
}

/// A role as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RoleRow {
    pub id: Uuid,
    pub version: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every role that is not deleted, by name.
pub async fn roles<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<Vec<RoleRow>> {
    sqlx::query_as("SELECT id, version, name, created_at, updated_at FROM roles WHERE NOT deleted ORDER BY name_normalized")
        .fetch_all(db)
        .await
}

/// The role with this id, unless deleted.
pub async fn role<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<RoleRow>> {
    sqlx::query_as(
        "SELECT id, version, name, created_at, updated_at FROM roles WHERE id = $1 AND NOT deleted",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Which of `ids` are roles that exist and are not deleted, in one query.
pub async fn existing<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT id FROM roles WHERE id = ANY($1) AND NOT deleted")
        .bind(ids)
        .fetch_all(db)
        .await
}

/// The role, if any and not deleted, with this normalised name.
pub async fn id_by_name<'e>(
    db: impl PgExecutor<'e>,
    name_normalized: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM roles WHERE name_normalized = $1 AND NOT deleted")
        .bind(name_normalized)
        .fetch_optional(db)
        .await
}

fn to_grants(rows: Vec<(String, String)>) -> Grants {
    rows.into_iter()
        .filter_map(|(d, p)| Some(Grant::new(Datasheet::parse(&d)?, Permission::parse(&p)?)))
        .collect()
}

/// A role's grants.
pub async fn grants_of_role<'e>(db: impl PgExecutor<'e>, role_id: Uuid) -> sqlx::Result<Grants> {
    let rows = sqlx::query_as("SELECT datasheet, permission FROM role_grants WHERE role_id = $1")
        .bind(role_id)
        .fetch_all(db)
        .await?;
    Ok(to_grants(rows))
}

/// The union of the grants of the roles `role_ids` (deleted roles grant nothing).
pub async fn grants_of_roles<'e>(
    db: impl PgExecutor<'e>,
    role_ids: &[Uuid],
) -> sqlx::Result<Grants> {
    let rows = sqlx::query_as(
        "SELECT DISTINCT g.datasheet, g.permission FROM role_grants g JOIN roles r ON r.id = g.role_id
         WHERE g.role_id = ANY($1) AND NOT r.deleted",
    )
    .bind(role_ids)
    .fetch_all(db)
    .await?;
    Ok(to_grants(rows))
}
