//! The tables behind two-factor authentication, in a tenant database: sealed TOTP secrets,
//! hashed recovery codes, and login challenges waiting for their second factor.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A login waiting for its second factor lasts this long, and survives this many wrong codes
/// (each of which also counts toward the account's lock).
pub(crate) const CHALLENGE_LIFETIME: Duration = Duration::from_secs(5 * 60);
pub(crate) const CHALLENGE_ATTEMPTS: i32 = 5;

/// A login waiting for its second factor.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Challenge {
    pub user_id: Uuid,
    /// The password hash the first step verified.
    pub password_hash: String,
}

/// Starts (or restarts) an enrolment: the sealed secret waits for its first code.
pub(crate) async fn put_secret(pool: &PgPool, user_id: Uuid, sealed: &[u8]) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO two_factor_secrets (user_id, secret) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET secret = $2, last_step = 0, created_at = now()",
    )
    .bind(user_id)
    .bind(sealed)
    .execute(pool)
    .await?;
    Ok(())
}

/// The user's sealed secret, if any.
pub(crate) async fn sealed_secret(pool: &PgPool, user_id: Uuid) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT secret FROM two_factor_secrets WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// Accepts a code of time step `step` once: false if this or a later step was already
/// used (a replayed or older code).
pub(crate) async fn accept_step(pool: &PgPool, user_id: Uuid, step: u64) -> sqlx::Result<bool> {
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    let updated = sqlx::query(
        "UPDATE two_factor_secrets SET last_step = $2 WHERE user_id = $1 AND last_step < $2",
    )
    .bind(user_id)
    .bind(step)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Replaces the user's recovery codes.
pub(crate) async fn replace_recovery_codes(
    pool: &PgPool,
    user_id: Uuid,
    hashes: &[Vec<u8>],
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])")
        .bind(user_id)
        .bind(hashes)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Uses up a recovery code: false if it is not one of the user's unused codes.
pub(crate) async fn use_recovery_code(
    pool: &PgPool,
    user_id: Uuid,
    hash: &[u8],
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE recovery_codes SET used_at = now()
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(hash)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Removes the user's secret, recovery codes and pending login challenges.
pub(crate) async fn remove(pool: &PgPool, user_id: Uuid) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for table in ["two_factor_secrets", "recovery_codes", "login_challenges"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Stores a login challenge (and drops the user's expired ones); returns its expiry.
pub(crate) async fn create_challenge(
    pool: &PgPool,
    token_hash: &[u8],
    challenge: &Challenge,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query("DELETE FROM login_challenges WHERE user_id = $1 AND expires_at <= now()")
        .bind(challenge.user_id)
        .execute(pool)
        .await?;
    sqlx::query_scalar(
        "INSERT INTO login_challenges (token_hash, user_id, password_hash, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 second') RETURNING expires_at",
    )
    .bind(token_hash)
    .bind(challenge.user_id)
    .bind(&challenge.password_hash)
    .bind(CHALLENGE_LIFETIME.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// The live challenge with this token hash.
pub(crate) async fn challenge(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<Challenge>> {
    sqlx::query_as(
        "SELECT user_id, password_hash FROM login_challenges
         WHERE token_hash = $1 AND expires_at > now() AND attempts < $2",
    )
    .bind(token_hash)
    .bind(CHALLENGE_ATTEMPTS)
    .fetch_optional(pool)
    .await
}

/// Counts a wrong code against the challenge.
pub(crate) async fn count_wrong_code(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<()> {
    sqlx::query("UPDATE login_challenges SET attempts = attempts + 1 WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends a challenge, so its token cannot complete a second login. False if it had
/// already ended (another request completed it first).
pub(crate) async fn end_challenge(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<bool> {
    let deleted = sqlx::query("DELETE FROM login_challenges WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() == 1)
}
