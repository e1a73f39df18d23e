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
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("users")] }
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
                roles,
                must_change_password,
            } => {
                let roles: Vec<Uuid> = roles.iter().copied().collect();
                sqlx::query(
                    "INSERT INTO users (id, version, email, email_normalized, name, is_admin,
                                        password_hash, roles, must_change_password, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(email.as_str())
                .bind(email.normalized())
                .bind(name.as_str())
                .bind(administrator)
                .bind(password_hash)
                .bind(roles)
                .bind(must_change_password)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
                return Ok(());
            }
            UserEvent::UserRenamed { name } => {
                update(conn, event, "name = $3", name.as_str().to_owned()).await?;
            }
            UserEvent::EmailChanged { email } => {
                // Normalised in Rust, as at registration (SQL `lower` depends on the collation).
                sqlx::query(
                    "UPDATE users SET version = $2, updated_at = $4, email = $3, email_normalized = $5
                     WHERE id = $1 AND version < $2",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(email.as_str())
                .bind(event.recorded_at)
                .bind(email.normalized())
                .execute(conn)
                .await?;
            }
            UserEvent::RolesAssigned { roles } => {
                let roles: Vec<Uuid> = roles.iter().copied().collect();
                update(conn, event, "roles = $3", roles).await?;
            }
            UserEvent::AdministratorGranted | UserEvent::AdministratorRevoked => {
                let admin = matches!(user_event, UserEvent::AdministratorGranted);
                update(conn, event, "is_admin = $3", admin).await?;
            }
            UserEvent::UserDeactivated | UserEvent::UserReactivated => {
                let active = matches!(user_event, UserEvent::UserReactivated);
                update(conn, event, "active = $3", active).await?;
            }
            UserEvent::PasswordReset { password_hash } => {
                update(
                    conn,
                    event,
                    "password_hash = $3, must_change_password = true",
                    password_hash.clone(),
                )
                .await?;
            }
            UserEvent::PasswordChanged { password_hash } => {
                update(
                    conn,
                    event,
                    "password_hash = $3, must_change_password = false",
                    password_hash.clone(),
                )
                .await?;
            }
            UserEvent::LoginLocked { until } => {
                update(conn, event, "locked_until = $3", *until).await?;
            }
            UserEvent::LoginUnlocked => {
                update(conn, event, "locked_until = $3", None::<DateTime<Utc>>).await?;
            }
            UserEvent::TwoFactorEnabled
            | UserEvent::TwoFactorDisabled
            | UserEvent::TwoFactorReset => {
                let enrolled = matches!(user_event, UserEvent::TwoFactorEnabled);
                update(conn, event, "two_factor = $3", enrolled).await?;
            }
            // Nothing of the person remains; the row keeps the id that history refers to.
            UserEvent::UserErased => {
                sqlx::query(
                    "UPDATE users SET version = $2, updated_at = $3, email = '', name = '',
                            email_normalized = 'erased:' || id::text, password_hash = '',
                            is_admin = false, active = false, roles = '{}', two_factor = false,
                            locked_until = NULL, must_change_password = false
                     WHERE id = $1 AND version < $2",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            UserEvent::LoginSucceeded { .. }
            | UserEvent::LoginFailed { .. }
            | UserEvent::LoggedOut { .. }
            | UserEvent::RecoveryCodesRegenerated
            | UserEvent::Redacted => {
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

/// Sets `assignment` (which uses `$3` for `value`) on the event's user, with its version and
/// time, unless the row already has this event.
async fn update<T>(
    conn: &mut PgConnection,
    event: &ProjectedEvent,
    assignment: &str,
    value: T,
) -> sqlx::Result<()>
where
    T: 'static + Send + for<'a> sqlx::Encode<'a, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let sql = format!("UPDATE users SET version = $2, updated_at = $4, {assignment} WHERE id = $1 AND version < $2");
    sqlx::query(&sql)
        .bind(event.aggregate_id)
        .bind(event.sequence)
        .bind(value)
        .bind(event.recorded_at)
        .execute(conn)
        .await?;
    Ok(())
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
    pub roles: Vec<Uuid>,
    pub must_change_password: bool,
    /// Whether the user logs in with a second factor.
    pub two_factor: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What login needs to check a password.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub active: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub two_factor: bool,
}

/// The columns of [`UserRow`], for queries that select users.
pub const USER_COLUMNS: &str =
    "id, version, email, name, is_admin, active, roles, must_change_password, two_factor, created_at, updated_at";

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
    sqlx::query_as(
        "SELECT id, password_hash, active, locked_until, two_factor FROM users WHERE email_normalized = $1",
    )
    .bind(email_normalized)
    .fetch_optional(db)
    .await
}

/// A page of users in creation order (ids are UUIDv7), deactivated ones only when asked.
pub async fn users_page(
    db: &mut PgConnection,
    first: i64,
    after: Option<crate::Cursor>,
    include_deactivated: bool,
) -> sqlx::Result<crate::Page<UserRow>> {
    let first = first.clamp(1, crate::page::MAX_PAGE);
    let mut items: Vec<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE ($1 OR active) AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
    ))
    .bind(include_deactivated)
    .bind(after.map(|c| c.0))
    .bind(first + 1)
    .fetch_all(&mut *db)
    .await?;
    let has_next_page = items.len() as i64 > first;
    items.truncate(first as usize);
    let total_count = sqlx::query_scalar("SELECT count(*) FROM users WHERE $1 OR active")
        .bind(include_deactivated)
        .fetch_one(&mut *db)
        .await?;
    Ok(crate::Page {
        items,
        has_next_page,
        total_count,
    })
}

/// How many active administrators the tenant has.
pub async fn active_administrators<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE is_admin AND active")
        .fetch_one(db)
        .await
}

/// The user, if any, with this normalised email.
pub async fn id_by_email<'e>(
    db: impl PgExecutor<'e>,
    email_normalized: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM users WHERE email_normalized = $1")
        .bind(email_normalized)
        .fetch_optional(db)
        .await
}

/// Users holding a role.
pub async fn holders_of<'e>(db: impl PgExecutor<'e>, role_id: Uuid) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE roles @> ARRAY[$1]::uuid[] ORDER BY id"
    ))
    .bind(role_id)
    .fetch_all(db)
    .await
}

/// The tenant's active administrators, in the order they were created.
pub async fn administrators<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE is_admin AND active ORDER BY created_at, id"
    ))
    .fetch_all(db)
    .await
}
