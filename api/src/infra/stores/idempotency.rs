//! What a caller's `Idempotency-Key` stood for, as a tenant database keeps it
//! (`idempotent_requests`): taken before a mutation runs, answered after it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How long answers are kept (a retry after that runs again).
pub(crate) const KEPT_HOURS: i32 = 24;

/// A key as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Taken {
    pub(crate) fingerprint: Vec<u8>,
    /// The request holding it (the server's id of that request).
    pub(crate) request_id: Uuid,
    pub(crate) after_position: i64,
    pub(crate) running_until: Option<DateTime<Utc>>,
    pub(crate) status: Option<i16>,
    pub(crate) answer: Option<Vec<u8>>,
    /// Whether its time to run is over (by the database's clock).
    pub(crate) lapsed: bool,
}

/// Takes `key` for a request of `actor` with `fingerprint`, running for at most `lease_ms`:
/// `None` when it was free (the caller runs the request), otherwise what holds it. A key older
/// than [`KEPT_HOURS`] is free again, unless a request still runs with it.
pub(crate) async fn take(
    pool: &PgPool,
    actor_id: Uuid,
    key: &str,
    fingerprint: &[u8],
    holding_id: Uuid,
    lease_ms: i64,
) -> sqlx::Result<Option<Taken>> {
    // A key let go between the insert and the read is tried again (a few times: each round
    // needs another request to take and let go of it in between).
    for _ in 0..3 {
        let taken: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO idempotent_requests AS r
                    (actor_id, key, fingerprint, request_id, after_position, running_until)
             VALUES ($1, $2, $3, $4, (SELECT coalesce(max(global_position), 0) FROM events),
                     now() + make_interval(secs => $5::double precision / 1000))
             ON CONFLICT (actor_id, key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, request_id = EXCLUDED.request_id,
                    after_position = EXCLUDED.after_position,
                    running_until = EXCLUDED.running_until,
                    status = NULL, answer = NULL, answer_dropped = false, created_at = now()
                WHERE r.created_at < now() - make_interval(hours => $6)
                  AND (r.running_until IS NULL OR r.running_until < now())
             RETURNING request_id",
        )
        .bind(actor_id)
        .bind(key)
        .bind(fingerprint)
        .bind(holding_id)
        .bind(lease_ms)
        .bind(KEPT_HOURS)
        .fetch_optional(pool)
        .await?;
        if taken.is_some() {
            return Ok(None);
        }
        if let Some(held) = held(pool, actor_id, key).await? {
            return Ok(Some(held));
        }
    }
    Err(sqlx::Error::Protocol(
        "an idempotency key was taken and let go three times while it was read".to_owned(),
    ))
}

/// What holds `key` (`None` if nothing does any more).
pub(crate) async fn held(pool: &PgPool, actor_id: Uuid, key: &str) -> sqlx::Result<Option<Taken>> {
    sqlx::query_as(
        "SELECT fingerprint, request_id, after_position, running_until, status, answer,
                coalesce(running_until < now(), false) AS lapsed
           FROM idempotent_requests WHERE actor_id = $1 AND key = $2",
    )
    .bind(actor_id)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// Takes over a key whose request ran out of time without an answer (and appended nothing):
/// `true` if this request now holds it.
pub(crate) async fn take_over(
    pool: &PgPool,
    actor_id: Uuid,
    key: &str,
    lapsed: &Taken,
    holding_id: Uuid,
    lease_ms: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE idempotent_requests
            SET request_id = $3,
                after_position = (SELECT coalesce(max(global_position), 0) FROM events),
                running_until = now() + make_interval(secs => $4::double precision / 1000),
                answer_dropped = false, created_at = now()
          WHERE actor_id = $1 AND key = $2 AND request_id = $5 AND running_until < now()",
    )
    .bind(actor_id)
    .bind(key)
    .bind(holding_id)
    .bind(lease_ms)
    .bind(lapsed.request_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Keeps `key` running for `lease_ms` more while its request `holding_id` runs: `false` if the
/// request no longer holds it.
pub(crate) async fn renew(
    pool: &PgPool,
    actor_id: Uuid,
    key: &str,
    holding_id: Uuid,
    lease_ms: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE idempotent_requests
            SET running_until = now() + make_interval(secs => $4::double precision / 1000)
          WHERE actor_id = $1 AND key = $2 AND request_id = $3 AND running_until IS NOT NULL",
    )
    .bind(actor_id)
    .bind(key)
    .bind(holding_id)
    .bind(lease_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the request `holding_id` appended any event after `after_position` (each request
/// with a key has an id of the server's own, in the metadata of its events).
pub(crate) async fn appended(
    pool: &PgPool,
    holding_id: Uuid,
    after_position: i64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events
                         WHERE global_position > $1 AND metadata->>'request_id' = $2)",
    )
    .bind(after_position)
    .bind(holding_id.to_string())
    .fetch_one(pool)
    .await
}

/// Stores the answer of the request `holding_id` holding the key (no status and no answer: it
/// was applied and its answer lost). An answer is not kept when an erasure happened while the
/// request ran (it may show the erased person).
pub(crate) async fn answer(
    pool: &PgPool,
    actor_id: Uuid,
    key: &str,
    holding_id: Uuid,
    status: Option<i16>,
    sealed: Option<&[u8]>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotent_requests
            SET running_until = NULL, status = $4,
                answer = CASE WHEN answer_dropped THEN NULL ELSE $5 END
          WHERE actor_id = $1 AND key = $2 AND request_id = $3",
    )
    .bind(actor_id)
    .bind(key)
    .bind(holding_id)
    .bind(status)
    .bind(sealed)
    .execute(pool)
    .await?;
    Ok(())
}

/// Lets the key go: the request did not run (a retry may run it).
pub(crate) async fn release(
    pool: &PgPool,
    actor_id: Uuid,
    key: &str,
    holding_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM idempotent_requests WHERE actor_id = $1 AND key = $2 AND request_id = $3",
    )
    .bind(actor_id)
    .bind(key)
    .bind(holding_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes keys older than [`KEPT_HOURS`] whose request no longer runs; how many.
pub async fn sweep(pool: &PgPool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM idempotent_requests
          WHERE created_at < now() - make_interval(hours => $1)
            AND (running_until IS NULL OR running_until < now())",
    )
    .bind(KEPT_HOURS)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
