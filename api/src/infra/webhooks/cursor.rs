//! Each webhook's place in the event log (`webhook_cursors`): taken under a lease by one worker
//! at a time, moved past each event dealt with, and given back with the failures of the
//! delivery being retried. No transaction stays open while an endpoint is waited for.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::feed;
use crate::infra::event_store::log::Position;

/// A webhook's cursor, held by the worker that took it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub webhook_id: Uuid,
    pub claim: Uuid,
    pub position: Position,
    /// The last change of the organisation's subscription dealt with.
    pub lifecycle_sequence: i64,
    /// Failed deliveries in a row of the event after `position`.
    pub failures: i32,
}

/// Starts the cursor of `webhook_id`, unless it has one: at its registration in the log, and
/// at `lifecycle_sequence` on the organisation's subscription.
pub(crate) async fn start(
    pool: &PgPool,
    webhook_id: Uuid,
    lifecycle_sequence: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_cursors (webhook_id, transaction_id, global_position, lifecycle_sequence)
         SELECT $1, transaction_id, global_position, $2 FROM events
         WHERE aggregate_type = 'webhook' AND aggregate_id = $1::text AND sequence = 1
           AND NOT EXISTS (SELECT FROM webhook_cursors WHERE webhook_id = $1)
         ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(webhook_id)
    .bind(lifecycle_sequence)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes the cursor of `webhook_id` when it is due, nobody holds it and the log has changes
/// after it or the subscription's stream is beyond `lifecycle_sequence` (so an idle webhook
/// costs one read a round, no write), starting one at the webhook's registration (and at the
/// subscription's sequence now) if it has none. `None`: nothing to do, or held elsewhere.
pub(crate) async fn take(
    pool: &PgPool,
    webhook_id: Uuid,
    lease: Duration,
    lifecycle_sequence: i64,
) -> sqlx::Result<Option<Held>> {
    start(pool, webhook_id, lifecycle_sequence).await?;
    // A cursor written by an import starts on the subscription where it is now.
    sqlx::query(
        "UPDATE webhook_cursors SET lifecycle_sequence = $2
         WHERE webhook_id = $1 AND lifecycle_sequence IS NULL",
    )
    .bind(webhook_id)
    .bind(lifecycle_sequence)
    .execute(pool)
    .await?;
    let claim = Uuid::now_v7();
    let row = sqlx::query(
        "UPDATE webhook_cursors c
         SET claim = $2, claimed_until = now() + make_interval(secs => $3)
         WHERE webhook_id = $1 AND next_attempt_at <= now()
           AND (claimed_until IS NULL OR claimed_until < now())
           AND (c.lifecycle_sequence < $5 OR EXISTS (
               SELECT FROM unnest($4::text[]) AS t(aggregate_type)
               CROSS JOIN LATERAL (
                   SELECT FROM events e
                   WHERE e.aggregate_type = t.aggregate_type
                     AND (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)
                   LIMIT 1) AS pending))
         RETURNING transaction_id::text::bigint AS transaction_id, global_position, failures,
                   lifecycle_sequence",
    )
    .bind(webhook_id)
    .bind(claim)
    .bind(lease.as_secs_f64())
    .bind(&feed::TYPES[..])
    .bind(lifecycle_sequence)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(Held {
            webhook_id,
            claim,
            position: Position::from_row(&row)?,
            lifecycle_sequence: row
                .try_get::<Option<i64>, _>("lifecycle_sequence")?
                .unwrap_or(lifecycle_sequence),
            failures: row.try_get("failures")?,
        })
    })
    .transpose()
}

/// Where a held cursor goes; the lease is renewed either way.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Move {
    /// Nowhere: the lease only.
    Stay,
    /// Past this position in the log (the delivery of what is after it starts afresh).
    Past(Position),
    /// Past this change of the organisation's subscription.
    PastSubscription(i64),
}

/// Moves the held cursor and renews its lease; false when the lease was lost to another
/// worker.
pub(crate) async fn advance(
    pool: &PgPool,
    held: &Held,
    to: Move,
    lease: Duration,
) -> sqlx::Result<bool> {
    let (position, sequence) = match to {
        Move::Stay => (None, None),
        Move::Past(position) => (Some(position), None),
        Move::PastSubscription(sequence) => (None, Some(sequence)),
    };
    let moved = sqlx::query(
        "UPDATE webhook_cursors
         SET transaction_id = COALESCE($3::text::xid8, transaction_id),
             global_position = COALESCE($4, global_position),
             lifecycle_sequence = COALESCE($5, lifecycle_sequence),
             failures = CASE WHEN $3 IS NULL AND $5 IS NULL THEN failures ELSE 0 END,
             claimed_until = now() + make_interval(secs => $6)
         WHERE webhook_id = $1 AND claim = $2",
    )
    .bind(held.webhook_id)
    .bind(held.claim)
    .bind(position.map(|p| p.transaction_id.to_string()))
    .bind(position.map(|p| p.global_position))
    .bind(sequence)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Gives the cursor back: due again at `next_attempt_at`, with `failures` failed deliveries
/// of the next event.
pub(crate) async fn release(
    pool: &PgPool,
    held: &Held,
    failures: i32,
    next_attempt_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_cursors
         SET failures = $3, next_attempt_at = $4, claim = NULL, claimed_until = NULL
         WHERE webhook_id = $1 AND claim = $2",
    )
    .bind(held.webhook_id)
    .bind(held.claim)
    .bind(failures)
    .bind(next_attempt_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes the cursors and the attempt logs of webhooks that were removed.
pub(crate) async fn forget_removed(pool: &PgPool) -> sqlx::Result<()> {
    for table in ["webhook_cursors", "webhook_attempts"] {
        sqlx::query(&format!(
            "DELETE FROM {table} t USING webhooks w
             WHERE w.id = t.webhook_id AND w.removed_at IS NOT NULL"
        ))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// One delivery attempt, for the webhook's log.
pub(crate) struct Attempt<'a> {
    pub webhook_id: Uuid,
    pub message_id: &'a str,
    pub topic: &'a str,
    pub global_position: i64,
    pub attempt: i32,
    pub status_code: Option<u16>,
    pub error: Option<&'a str>,
    pub duration: Duration,
}

/// Logs one attempt, and drops what is older than 30 days from the webhook's log.
pub(crate) async fn log_attempt(pool: &PgPool, attempt: Attempt<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_attempts (id, webhook_id, message_id, topic, global_position,
             attempt, attempted_at, status_code, error, duration_ms, succeeded)
         VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8, $9, $8 IS NULL)",
    )
    .bind(Uuid::now_v7())
    .bind(attempt.webhook_id)
    .bind(attempt.message_id)
    .bind(attempt.topic)
    .bind(attempt.global_position)
    .bind(attempt.attempt)
    .bind(attempt.status_code.map(i32::from))
    .bind(attempt.error)
    .bind(i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops attempts older than 30 days: by id, which (UUIDv7) begins with its time, so the
/// primary key finds them.
pub(crate) async fn prune_attempts(pool: &PgPool) -> sqlx::Result<()> {
    let cutoff = (Utc::now() - chrono::Duration::days(30)).timestamp_millis();
    let mut bound = [0u8; 16];
    bound[..6].copy_from_slice(&cutoff.to_be_bytes()[2..]);
    sqlx::query("DELETE FROM webhook_attempts WHERE id < $1")
        .bind(Uuid::from_bytes(bound))
        .execute(pool)
        .await?;
    Ok(())
}
