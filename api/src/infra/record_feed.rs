//! Live record changes for subscribers (`recordChanged`): one reader per open organisation,
//! however many subscribe, woken by the records projection's progress.
//!
//! The records projection's checkpoint is announced by the database each time it moves
//! (migration 0027: `records` on the cache channel, heard by `TenantCaches`, on every instance
//! whichever instance's projector moved it) while some reader holds a lease in
//! `record_feed_readers`, and this instance's own commands announce it directly once their
//! read models are applied. On each announcement the reader reads the record events between
//! where it stopped and the checkpoint — ids, versions and event types, never a value — and
//! sends them to every subscriber at once. A change is therefore sent only once the read model
//! shows it: a subscriber that reads the record gets the state the change made (or a later
//! one). The reader also looks every 5 s without an announcement (one missed while its lease
//! was being taken), and every second while announcements are not heard.
//!
//! A scheduled change taking effect on its day has no event: the projector writes it to
//! `scheduled_effects` (migration 0031) in the transaction that takes it ([`took_effect`]),
//! which announces `records` the same way, and the reader reads those past the last it saw
//! after the events.
//!
//! The reader starts with the first subscriber and stops when the last one is gone, dropping
//! its lease (a lease of a reader that died lapses after [`LEASE`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use custos_domain::Datasheet;
use sqlx::{PgPool, Row};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::infra::caches::Hearing;
use crate::infra::event_store::log::Position;

/// Batches a subscriber may fall behind by before it is told it missed changes.
const CAPACITY: usize = 1024;
/// The most changes read at once.
const BATCH: i64 = 500;
/// How often the reader looks without an announcement: while it hears them, for a batch that
/// committed unannounced while the lease was being taken (and to find out that its last
/// subscriber left); while it does not, for what was announced unheard.
const IDLE: Duration = Duration::from_secs(5);
const DEAF: Duration = Duration::from_secs(1);
/// How long a reader's lease lasts unrenewed (it renews it every [`IDLE`]).
const LEASE: Duration = Duration::from_secs(30);
/// Held by the transaction that takes a day's scheduled changes, so that their rows in
/// `scheduled_effects` commit in the order of their positions.
const EFFECTS_LOCK: i64 = 0x6375_7374_6f73_0008;
/// How long a row of `scheduled_effects` is kept (readers read it within seconds).
const EFFECTS_KEPT: &str = "1 day";

/// How a record changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Created,
    Updated,
    Archived,
    Restored,
    Hired,
    Restricted,
    RestrictionLifted,
    Erased,
    /// A change scheduled for a later day was cancelled before its day.
    ScheduledChangeCancelled,
    /// A change scheduled for a later day took effect on its day (no event: see the module).
    ScheduledChangeTookEffect,
}

impl ChangeKind {
    fn of(event_type: &str) -> Option<Self> {
        Some(match event_type {
            "RecordCreated" => ChangeKind::Created,
            "RecordUpdated" => ChangeKind::Updated,
            "RecordArchived" => ChangeKind::Archived,
            "RecordRestored" => ChangeKind::Restored,
            "ApplicantHired" => ChangeKind::Hired,
            "RecordRestricted" => ChangeKind::Restricted,
            "RestrictionLifted" => ChangeKind::RestrictionLifted,
            "RecordErased" => ChangeKind::Erased,
            "ScheduledChangeCancelled" => ChangeKind::ScheduledChangeCancelled,
            _ => return None,
        })
    }
}

/// One change of one record, as much as a subscriber is told without reading the record.
#[derive(Debug, Clone)]
pub(crate) struct RecordChange {
    pub(crate) id: Uuid,
    pub(crate) datasheet: Datasheet,
    pub(crate) kind: ChangeKind,
    /// The record's version after the change; for a scheduled change that took effect, the
    /// version it was recorded at.
    pub(crate) version: i64,
    /// When the change was recorded; for a scheduled change that took effect, when it did.
    pub(crate) at: DateTime<Utc>,
}

/// What every subscriber receives: the changes of one read, in commit order.
pub(crate) type Batch = Arc<[RecordChange]>;

/// One organisation's record changes, read once for all of its subscribers.
pub(crate) struct RecordFeed {
    pool: PgPool,
    progress: watch::Receiver<u64>,
    hearing: Arc<Hearing>,
    /// The running reader's channel (it holds the only sender); `None` when no reader runs.
    reader: Arc<Mutex<Option<broadcast::WeakSender<Batch>>>>,
}

impl RecordFeed {
    /// The feed of the organisation whose database `pool` reaches; `progress` moves with the
    /// records projection (`TenantCaches::record_progress`).
    pub(crate) fn new(pool: PgPool, progress: watch::Receiver<u64>, hearing: Arc<Hearing>) -> Self {
        Self {
            pool,
            progress,
            hearing,
            reader: Arc::new(Mutex::new(None)),
        }
    }

    /// The changes committed from now on, starting the reader if none runs (and waiting until
    /// it knows where it starts, so that nothing committed after this call is missed); `None`
    /// if the reader could not start. The receiver ends (`Closed`) if the reader stops (the
    /// organisation's context closed), and says `Lagged` if its subscriber fell more than
    /// [`CAPACITY`] batches behind.
    pub(crate) async fn subscribe(&self) -> Option<broadcast::Receiver<Batch>> {
        let (receiver, started) = {
            let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(sender) = reader.as_ref().and_then(broadcast::WeakSender::upgrade) {
                // A reader that is still starting reads its position after this.
                return Some(sender.subscribe());
            }
            let (sender, receiver) = broadcast::channel(CAPACITY);
            *reader = Some(sender.downgrade());
            let mut progress = self.progress.clone();
            progress.mark_unchanged();
            let (ready, started) = tokio::sync::oneshot::channel();
            tokio::spawn(read(
                self.pool.clone(),
                progress,
                self.hearing.clone(),
                self.reader.clone(),
                sender,
                ready,
            ));
            (receiver, started)
        };
        started.await.unwrap_or(false).then_some(receiver)
    }
}

/// The reader: from the records projection's position now, every change it reaches, to
/// `sender`'s subscribers, until none is left or the database is closed.
async fn read(
    pool: PgPool,
    mut progress: watch::Receiver<u64>,
    hearing: Arc<Hearing>,
    slot: Arc<Mutex<Option<broadcast::WeakSender<Batch>>>>,
    sender: broadcast::Sender<Batch>,
    ready: tokio::sync::oneshot::Sender<bool>,
) {
    let stop = |slot: &Mutex<Option<broadcast::WeakSender<Batch>>>| {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    };
    let lease = Lease {
        reader: Uuid::new_v4(),
        pool: pool.clone(),
    };
    // The lease first, then the position: a batch committed after this position announces
    // itself (or the next look finds it).
    let started = async {
        lease.renew().await?;
        Ok::<_, sqlx::Error>((projected(&pool).await?, last_effect(&pool).await?))
    };
    let mut position = match started.await {
        Ok(positions) => positions,
        Err(err) => {
            tracing::warn!(error = %crate::error::redacted(&err.into()), "the record feed could not start");
            stop(&slot);
            let _ = ready.send(false);
            lease.drop_now().await;
            return;
        }
    };
    let _ = ready.send(true);
    let mut renewed = tokio::time::Instant::now();
    loop {
        let wait = if hearing.hears() { IDLE } else { DEAF };
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    // The organisation's context is gone.
                    stop(&slot);
                    lease.drop_now().await;
                    return;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
        // Under the lock a new subscriber takes: it either finds this reader still running or
        // starts its own.
        let left = {
            let mut reader = slot.lock().unwrap_or_else(|e| e.into_inner());
            let left = sender.receiver_count() == 0;
            if left {
                *reader = None;
            }
            left
        };
        if left {
            lease.drop_now().await;
            return;
        }
        if renewed.elapsed() >= IDLE {
            match lease.renew().await {
                Ok(()) => renewed = tokio::time::Instant::now(),
                Err(err) => {
                    tracing::warn!(error = %crate::error::redacted(&err.into()), "the record feed could not renew its lease; trying again")
                }
            }
        }
        loop {
            let read = async {
                let (mut changes, last) = after(&pool, position.0, BATCH).await?;
                let (effects, last_effect) = effects_after(&pool, position.1, BATCH).await?;
                changes.extend(effects);
                Ok::<_, sqlx::Error>((changes, last, last_effect))
            };
            match read.await {
                Ok((changes, last, last_effect)) => {
                    if last.is_none() && last_effect.is_none() {
                        break;
                    }
                    position = (
                        last.unwrap_or(position.0),
                        last_effect.unwrap_or(position.1),
                    );
                    if !changes.is_empty() {
                        let _ = sender.send(changes.into());
                    }
                }
                Err(sqlx::Error::PoolClosed) => {
                    stop(&slot);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %crate::error::redacted(&err.into()), "the record feed could not read; trying again");
                    break;
                }
            }
        }
    }
}

/// Makes the transaction that takes a day's scheduled changes the only one (its rows in
/// `scheduled_effects` then commit in the order of their positions, which readers rely on).
pub(crate) async fn serialise_effects(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(EFFECTS_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes the scheduled changes that `took` effect for the readers (in the transaction that
/// took them, after [`serialise_effects`]), and drops the rows readers have long read.
pub(crate) async fn took_effect(
    conn: &mut sqlx::PgConnection,
    took: &[custos_projections::TookEffect],
) -> sqlx::Result<()> {
    if took.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = took.iter().map(|t| t.record_id).collect();
    let sequences: Vec<i64> = took.iter().map(|t| t.sequence).collect();
    let days: Vec<chrono::NaiveDate> = took.iter().map(|t| t.effective_from).collect();
    sqlx::query(&format!(
        "DELETE FROM scheduled_effects WHERE taken_at < now() - interval '{EFFECTS_KEPT}'"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO scheduled_effects (record_id, sequence, effective_from)
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::date[])",
    )
    .bind(ids)
    .bind(sequences)
    .bind(days)
    .execute(conn)
    .await?;
    Ok(())
}

/// The position of the last scheduled change that took effect (0 before any).
async fn last_effect(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM scheduled_effects")
        .fetch_one(pool)
        .await
}

/// Up to `limit` scheduled changes that took effect after position `after`, in order, and the
/// position of the last one read (`None` when there was none). A record erased since is left
/// out.
async fn effects_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> sqlx::Result<(Vec<RecordChange>, Option<i64>)> {
    let rows = sqlx::query(
        "SELECT e.position, e.record_id, e.sequence, e.taken_at, r.datasheet
           FROM scheduled_effects e
           LEFT JOIN records r ON r.id = e.record_id AND r.erased_at IS NULL
          WHERE e.position > $1
          ORDER BY e.position
          LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut last = None;
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        last = Some(row.try_get("position")?);
        let datasheet: Option<String> = row.try_get("datasheet")?;
        let Some(datasheet) = datasheet.as_deref().and_then(Datasheet::parse) else {
            continue;
        };
        changes.push(RecordChange {
            id: row.try_get("record_id")?,
            datasheet,
            kind: ChangeKind::ScheduledChangeTookEffect,
            version: row.try_get("sequence")?,
            at: row.try_get("taken_at")?,
        });
    }
    Ok((changes, last))
}

/// A reader's lease: while one is held, projector batches announce themselves.
struct Lease {
    reader: Uuid,
    pool: PgPool,
}

impl Lease {
    async fn renew(&self) -> sqlx::Result<()> {
        // Leases of readers that died (their database closed under them, or their instance
        // stopped) go with any renewal, so the trigger's look stays short.
        sqlx::query(
            "WITH lapsed AS (DELETE FROM record_feed_readers WHERE until < now())
             INSERT INTO record_feed_readers (reader, until)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (reader) DO UPDATE SET until = EXCLUDED.until",
        )
        .bind(self.reader)
        .bind(LEASE.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the lease (if the database is there: otherwise it lapses).
    async fn drop_now(&self) {
        let _ = sqlx::query("DELETE FROM record_feed_readers WHERE reader = $1")
            .bind(self.reader)
            .execute(&self.pool)
            .await;
    }
}

/// Where the records projection stands.
async fn projected(pool: &PgPool) -> sqlx::Result<Position> {
    let row = sqlx::query(
        "SELECT transaction_id::text::bigint AS transaction_id, global_position
           FROM projection_checkpoints WHERE projection = 'records'",
    )
    .fetch_one(pool)
    .await?;
    Position::from_row(&row)
}

/// Up to `limit` record events after `after` that the records projection applied, in commit
/// order, and the position of the last one read (`None` when there was none).
async fn after(
    pool: &PgPool,
    after: Position,
    limit: i64,
) -> sqlx::Result<(Vec<RecordChange>, Option<Position>)> {
    let rows = sqlx::query(
        "SELECT e.aggregate_id::uuid AS id, e.sequence, e.event_type, e.recorded_at,
                e.transaction_id::text::bigint AS transaction_id, e.global_position, r.datasheet
           FROM events e
           JOIN projection_checkpoints c ON c.projection = 'records'
           LEFT JOIN records r ON r.id = e.aggregate_id::uuid
          WHERE e.aggregate_type = 'record'
            AND (e.transaction_id, e.global_position) > ($1::text::xid8, $2)
            AND (e.transaction_id, e.global_position) <= (c.transaction_id, c.global_position)
          ORDER BY e.transaction_id, e.global_position
          LIMIT $3",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.global_position)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut last = None;
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        last = Some(Position::from_row(row)?);
        let event_type: String = row.try_get("event_type")?;
        let datasheet: Option<String> = row.try_get("datasheet")?;
        let (Some(kind), Some(datasheet)) = (
            ChangeKind::of(&event_type),
            datasheet.as_deref().and_then(Datasheet::parse),
        ) else {
            continue;
        };
        changes.push(RecordChange {
            id: row.try_get("id")?,
            datasheet,
            kind,
            version: row.try_get("sequence")?,
            at: row.try_get("recorded_at")?,
        });
    }
    Ok((changes, last))
}
