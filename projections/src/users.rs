//! The `users` read model: who can log in to the tenant, and the names shown as actors.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{User, UserEvent};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects User events into `users`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsersProjection;

#[async_trait]
impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        "users"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<User as cqrs_es::Aggregate>::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::User(user_event) = &event.event else {
            return Ok(());
        };
        match user_event {
            UserEvent::UserRegistered {
                email,
                name,
                password_hash,
                administrator,
            } => {
                sqlx::query(
                    "INSERT INTO users (id, version, email, email_normalized, name, is_admin,
                                        password_hash, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(email.as_str())
                .bind(email.normalized())
                .bind(name.as_str())
                .bind(administrator)
                .bind(password_hash)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            UserEvent::LoginSucceeded { .. }
            | UserEvent::LoginFailed { .. }
            | UserEvent::LoggedOut { .. } => {
                sqlx::query("UPDATE users SET version = $2 WHERE id = $1 AND version < $2")
                    .bind(event.aggregate_id)
                    .bind(event.sequence)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM users").execute(conn).await?;
        Ok(())
    }
}

/// A user as the API shows it. Never carries the password hash.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub version: i64,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What login needs to check a password.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub active: bool,
}

const USER_COLUMNS: &str = "id, version, email, name, is_admin, active, created_at, updated_at";

/// The user with this id.
pub async fn user<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The users with these ids (missing ids are left out).
pub async fn users<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Login data for a normalised (lower-cased) email.
pub async fn credentials<'e>(
    db: impl PgExecutor<'e>,
    email_normalized: &str,
) -> sqlx::Result<Option<Credentials>> {
    sqlx::query_as("SELECT id, password_hash, active FROM users WHERE email_normalized = $1")
        .bind(email_normalized)
        .fetch_optional(db)
        .await
}
