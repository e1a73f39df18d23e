//! The outbox (catalog table `notifications`): what is owed to whom, written idempotently —
//! one row per cause and recipient, so writing it again changes nothing — and taken by
//! delivery workers under a lease, so two instances never send the same one at once and one
//! that died lets its rows go when the lease runs out.

use chrono::{DateTime, Utc};
use custos_projections::{Cursor, Page};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// The recipient that stands for an organisation's active administrators, split into one
/// notification per administrator when it is first delivered.
pub(crate) const ADMINISTRATORS: &str = "administrators";

/// A notification to write.
#[derive(Debug, Clone)]
pub(crate) struct NewNotification<'a> {
    pub tenant_id: Uuid,
    pub kind: &'a str,
    /// Why it exists; with the recipient, what makes writing it twice write it once.
    pub cause: String,
    /// [`ADMINISTRATORS`], `user:<id>` or `record:<id>`.
    pub recipient: String,
    /// The facts the message is written from; never a value about a person.
    pub payload: Value,
    /// Only where the recipient cannot be looked up when it is sent (a purge notice).
    pub address: Option<&'a str>,
    /// Held back until [`release_purge_notices`] lets it go.
    pub held: bool,
}

/// A notification as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Notification {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: String,
    pub channel: String,
    pub cause: String,
    pub recipient: String,
    pub payload: Json<Value>,
    pub address: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, kind, channel, cause, recipient, payload, address, status, \
     attempts, next_attempt_at, last_error, created_at, sent_at";

/// Writes `notification` unless one with its cause and recipient exists; whether it did.
pub(crate) async fn enqueue<'e>(
    db: impl PgExecutor<'e>,
    notification: &NewNotification<'_>,
) -> sqlx::Result<bool> {
    let written = sqlx::query(
        "INSERT INTO notifications (id, tenant_id, kind, channel, cause, recipient, payload,
                                    address, next_attempt_at)
         VALUES ($1, $2, $3, 'email', $4, $5, $6, $7,
                 CASE WHEN $8 THEN '9999-12-31T00:00:00Z'::timestamptz ELSE now() END)
         ON CONFLICT (tenant_id, cause, recipient) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(notification.tenant_id)
    .bind(notification.kind)
    .bind(&notification.cause)
    .bind(&notification.recipient)
    .bind(Json(&notification.payload))
    .bind(notification.address)
    .bind(notification.held)
    .execute(db)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// Takes up to `limit` due notifications for `lease` under the token `claim` (counting the
/// attempt) — only audiences to split unless `sending`.
pub(crate) async fn claim(
    db: &PgPool,
    claim: Uuid,
    limit: i64,
    lease: std::time::Duration,
    sending: bool,
) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as(&format!(
        "UPDATE notifications
         SET claimed_until = now() + $2, claim = $4, attempts = attempts + 1
         WHERE id IN (
             SELECT id FROM notifications
             WHERE status = 'pending' AND next_attempt_at <= now()
               AND (claimed_until IS NULL OR claimed_until <= now())
               AND ($3 OR recipient = '{ADMINISTRATORS}')
             ORDER BY next_attempt_at, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(limit)
    .bind(chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5)))
    .bind(sending)
    .bind(claim)
    .fetch_all(db)
    .await
}

/// It left: sent, its address (if it had one) forgotten. Recorded only by the worker still
/// holding it under `claim` (one whose lease ran out changes nothing).
pub(crate) async fn sent<'e>(db: impl PgExecutor<'e>, id: Uuid, claim: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notifications SET status = 'sent', sent_at = now(), address = NULL,
                claimed_until = NULL, claim = NULL, last_error = NULL
         WHERE id = $1 AND status = 'pending' AND claim = $2",
    )
    .bind(id)
    .bind(claim)
    .execute(db)
    .await?;
    Ok(())
}

/// It could not be sent: tried again at `retry_at`, or (`None`) given up — a dead letter.
pub(crate) async fn failed<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    claim: Uuid,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notifications
         SET status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,
             next_attempt_at = coalesce($3, next_attempt_at),
             address = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE address END,
             claimed_until = NULL, claim = NULL, last_error = $2
         WHERE id = $1 AND status = 'pending' AND claim = $4",
    )
    .bind(id)
    .bind(error.chars().take(500).collect::<String>())
    .bind(retry_at)
    .bind(claim)
    .execute(db)
    .await?;
    Ok(())
}

/// There is nobody to send it to (`why`): it is not sent, now or later.
pub(crate) async fn cancel<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    claim: Uuid,
    why: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notifications SET status = 'cancelled', address = NULL, claimed_until = NULL,
                claim = NULL, last_error = $2
         WHERE id = $1 AND status = 'pending' AND claim = $3",
    )
    .bind(id)
    .bind(why)
    .bind(claim)
    .execute(db)
    .await?;
    Ok(())
}

/// Splits the audience `audience` (held under `claim`) into one notification per user of
/// `users`, at once.
pub(crate) async fn expand(
    db: &PgPool,
    audience: &Notification,
    claim: Uuid,
    users: &[Uuid],
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for user in users {
        let one = NewNotification {
            tenant_id: audience.tenant_id,
            kind: &audience.kind,
            cause: audience.cause.clone(),
            recipient: format!("user:{user}"),
            payload: audience.payload.0.clone(),
            address: None,
            held: false,
        };
        enqueue(&mut *tx, &one).await?;
    }
    sqlx::query(
        "UPDATE notifications SET status = 'expanded', claimed_until = NULL, claim = NULL,
                last_error = NULL
         WHERE id = $1 AND status = 'pending' AND claim = $2",
    )
    .bind(audience.id)
    .bind(claim)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Notes on every pending email that no mail server is configured (once).
pub(crate) async fn note_no_mail_server(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE notifications SET last_error = 'no mail server is configured (CUSTOS_SMTP_URL)'
         WHERE status = 'pending' AND last_error IS NULL AND recipient <> '{ADMINISTRATORS}'
           AND next_attempt_at <= now()"
    ))
    .execute(db)
    .await?;
    Ok(())
}

/// At the purge's end (in its transaction): the organisation's purge notices go out, and
/// everything else it was owed is forgotten with it.
pub(crate) async fn release_purge_notices<'c>(
    tx: &mut sqlx::Transaction<'c, sqlx::Postgres>,
    tenant_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM notifications WHERE tenant_id = $1 AND kind <> 'purged'")
        .bind(tenant_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE notifications SET next_attempt_at = now()
         WHERE tenant_id = $1 AND kind = 'purged' AND status = 'pending'
           AND next_attempt_at >= '9999-01-01T00:00:00Z'",
    )
    .bind(tenant_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The purge notices of `tenant_id` still held back: dropped when its purge does not go
/// ahead (they hold addresses), or before a purge writes them anew.
pub(crate) async fn drop_held_purge_notices<'e>(
    db: impl PgExecutor<'e>,
    tenant_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM notifications
         WHERE tenant_id = $1 AND kind = 'purged' AND next_attempt_at >= '9999-01-01T00:00:00Z'",
    )
    .bind(tenant_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Which of an organisation's notifications to list.
#[derive(Debug, Clone, Default)]
pub(crate) struct NotificationFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Only those caused by this (`incident:<id>`, …).
    pub cause: Option<String>,
}

/// The condition picking an organisation's notifications by a filter ($1 to $4): those to a person (not
/// the notices for its administrators before they are split into one per administrator).
fn matching() -> String {
    format!(
        "tenant_id = $1 AND recipient <> '{ADMINISTRATORS}'
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR cause = $4)"
    )
}

/// A page of the organisation's notifications matching `filter`, newest first — by id, which
/// (UUIDv7) orders them by when they were written — after the cursor's.
pub(crate) async fn page(
    db: &PgPool,
    tenant_id: Uuid,
    filter: &NotificationFilter,
    after: Option<Cursor>,
    first: i64,
) -> sqlx::Result<Page<Notification>> {
    let matching = matching();
    let items: Vec<Notification> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE {matching} AND ($5::uuid IS NULL OR id < $5)
         ORDER BY id DESC
         LIMIT $6"
    ))
    .bind(tenant_id)
    .bind(filter.status.as_deref())
    .bind(filter.kind.as_deref())
    .bind(filter.cause.as_deref())
    .bind(after.map(|c| c.0))
    .bind(first + 1)
    .fetch_all(db)
    .await?;
    let total_count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM notifications WHERE {matching}"
    ))
    .bind(tenant_id)
    .bind(filter.status.as_deref())
    .bind(filter.kind.as_deref())
    .bind(filter.cause.as_deref())
    .fetch_one(db)
    .await?;
    Ok(Page::cut(items, first, total_count))
}
