//! Sessions and API tokens as a tenant database stores them: only token hashes, with the
//! grants of the roles behind them read in the same round trip.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, Grant, Grants, Permission};
use custos_projections::api_tokens::{ApiTokenRow, TOKEN_COLUMNS};
use custos_projections::users::UserRow;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::SessionPolicy;
use crate::infra::caches::{Cache, Hearing};

/// Grants from their `datasheet/permission` text form; unknown pairs are left out.
fn parse_grants(pairs: &[String]) -> Grants {
    pairs
        .iter()
        .filter_map(|pair| {
            let (datasheet, permission) = pair.split_once('/')?;
            Some(Grant::new(
                Datasheet::parse(datasheet)?,
                Permission::parse(permission)?,
            ))
        })
        .collect()
}

/// What [`api_token`] finds for a presented API token.
pub(crate) struct PresentedApiToken {
    pub token: ApiTokenRow,
    /// The grants of the token's role (none if the role was deleted).
    pub grants: Grants,
    /// Whether a use was recorded within the last minute.
    pub recently_used: bool,
    /// Whether a refusal was recorded within the last minute.
    pub recently_refused: bool,
}

/// The API token with this hash, live or not, with its role's grants.
pub(crate) async fn api_token(
    pool: &PgPool,
    token_hash: &[u8],
) -> sqlx::Result<Option<PresentedApiToken>> {
    #[derive(sqlx::FromRow)]
    struct Found {
        grants: Vec<String>,
        recently_used: bool,
        recently_refused: bool,
        #[sqlx(flatten)]
        token: ApiTokenRow,
    }
    let found: Option<Found> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS},
                coalesce(last_used_at > now() - interval '1 minute', false) AS recently_used,
                coalesce(last_refused_at > now() - interval '1 minute', false) AS recently_refused,
                ARRAY(SELECT g.datasheet || '/' || g.permission
                      FROM role_grants g JOIN roles r ON r.id = g.role_id
                      WHERE g.role_id = t.role_id AND NOT r.deleted) AS grants
         FROM api_tokens t WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|found| PresentedApiToken {
        grants: parse_grants(&found.grants),
        recently_used: found.recently_used,
        recently_refused: found.recently_refused,
        token: found.token,
    }))
}

/// Stores a new session and returns its expiry.
pub(crate) async fn create(
    pool: &PgPool,
    session_id: Uuid,
    user_id: Uuid,
    token_hash: &[u8],
    policy: SessionPolicy,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO sessions (token_hash, id, user_id, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 second') RETURNING expires_at",
    )
    .bind(token_hash)
    .bind(session_id)
    .bind(user_id)
    .bind(policy.absolute_lifetime.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// How stale a session's last use may get before a request refreshes it: a minute, or half
/// the idle timeout if that is shorter, so an active session never idles out while the
/// refresh saves a write on most requests.
pub(crate) fn refresh_after(policy: SessionPolicy) -> std::time::Duration {
    (policy.idle_timeout / 2).min(std::time::Duration::from_secs(60))
}

/// What [`authenticate`] finds for a live session.
#[derive(Clone)]
pub(crate) struct LiveSession {
    pub session_id: Uuid,
    pub user: UserRow,
    pub grants: Grants,
    /// Whether the organisation requires a second factor.
    pub two_factor_required: bool,
    /// Its absolute expiry.
    pub expires_at: DateTime<Utc>,
}

/// How many live sessions a tenant's context keeps.
const CACHED_SESSIONS: usize = 4_096;

/// Live sessions with their users and grants, by token hash (see [`cached_for`]).
pub(crate) type SessionCache = Cache<Vec<u8>, LiveSession>;

pub(crate) fn session_cache(hearing: Arc<Hearing>) -> SessionCache {
    Cache::new(CACHED_SESSIONS, hearing)
}

/// How long a live session found by [`authenticate`] may be used from a tenant's cache: a
/// quarter of [`refresh_after`] (so that an active session's last use is still refreshed in
/// time), at most ten seconds, and never past its expiry. A session that stops being used may
/// idle out that much earlier than its idle timeout.
pub(crate) fn cached_for(live: &LiveSession, policy: SessionPolicy) -> std::time::Duration {
    let left = (live.expires_at - Utc::now()).to_std().unwrap_or_default();
    (refresh_after(policy) / 4)
        .min(std::time::Duration::from_secs(10))
        .min(left)
}

/// The live session for a token hash, with its user: not revoked, not past its absolute
/// expiry, used within the idle timeout. Refreshes its last use (see [`refresh_after`]).
pub(crate) async fn authenticate(
    pool: &PgPool,
    token_hash: &[u8],
    policy: SessionPolicy,
) -> sqlx::Result<Option<LiveSession>> {
    #[derive(sqlx::FromRow)]
    struct Live {
        session_id: Uuid,
        expires_at: DateTime<Utc>,
        stale: bool,
        /// `datasheet/permission` pairs of the user's roles, in the same round trip.
        grants: Vec<String>,
        two_factor_required: bool,
        #[sqlx(flatten)]
        user: UserRow,
    }
    let live: Option<Live> = sqlx::query_as(
        "SELECT s.id AS session_id, s.expires_at, s.last_seen_at < now() - $3 * interval '1 second' AS stale,
                u.id, u.version, u.email, u.name, u.is_admin, u.active, u.roles, u.must_change_password,
                u.two_factor, u.created_at, u.updated_at,
                ARRAY(SELECT DISTINCT g.datasheet || '/' || g.permission
                      FROM role_grants g JOIN roles r ON r.id = g.role_id
                      WHERE g.role_id = ANY(u.roles) AND NOT r.deleted) AS grants,
                (SELECT two_factor_required FROM organization_settings) AS two_factor_required
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
           AND s.last_seen_at > now() - $2 * interval '1 second'",
    )
    .bind(token_hash)
    .bind(policy.idle_timeout.as_secs_f64())
    .bind(refresh_after(policy).as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some(live) = live else {
        return Ok(None);
    };
    if live.stale {
        sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1")
            .bind(live.session_id)
            .execute(pool)
            .await?;
    }
    Ok(Some(LiveSession {
        session_id: live.session_id,
        user: live.user,
        grants: parse_grants(&live.grants),
        two_factor_required: live.two_factor_required,
        expires_at: live.expires_at,
    }))
}

/// A live session as administrators and its user see it (never the token).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The live sessions of a user, newest first.
pub(crate) async fn live(
    pool: &PgPool,
    user_id: Uuid,
    policy: SessionPolicy,
) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(
        "SELECT id, user_id, created_at, last_seen_at, expires_at FROM sessions
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
           AND last_seen_at > now() - $2 * interval '1 second'
         ORDER BY created_at DESC",
    )
    .bind(user_id)
    .bind(policy.idle_timeout.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// The session with this id, live or not.
pub(crate) async fn find(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(
        "SELECT id, user_id, created_at, last_seen_at, expires_at FROM sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Ends every session of a user, except `keep`; the tenant's cached sessions go with them
/// (other instances drop theirs on the database's announcement).
pub(crate) async fn revoke_all(
    pool: &PgPool,
    cache: &SessionCache,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = now()
         WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2)",
    )
    .bind(user_id)
    .bind(keep)
    .execute(pool)
    .await?;
    cache.clear();
    Ok(())
}

/// Ends a session, in the tenant's cache too.
pub(crate) async fn revoke(
    pool: &PgPool,
    cache: &SessionCache,
    session_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(session_id)
        .execute(pool)
        .await?;
    cache.clear();
    Ok(())
}
