//! The catch-up projector: one task per tenant and projection. Each batch locks the
//! projection's checkpoint row (so it is the single writer on any number of instances), reads
//! events after the checkpoint in commit-safe order, applies them and moves the checkpoint, all
//! in one transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_es::{Aggregate, EventEnvelope, Query};
use custos_domain::EventMetadata;
use custos_projections::{AnyEvent, ProjectedEvent, Projection};
use sqlx::{PgPool, Row};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::infra::event_store::log::{EventLog, Position, StoredEvent, HORIZON};

/// Events applied per transaction.
const BATCH: i64 = 500;
/// How often a projector looks for events written by other service instances: soon after
/// activity, backing off to `MAX_POLL` while the tenant is idle. A local commit wakes it at once.
const MIN_POLL: Duration = Duration::from_millis(500);
const MAX_POLL: Duration = Duration::from_secs(30);
/// Wait after a failed batch before trying again.
const RETRY: Duration = Duration::from_secs(2);
/// How soon a projector looks again while a request waits for it, if no commit wakes it first.
const FOLLOW: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the read models did not catch up in time")]
    Timeout,
}

/// One projection's running task.
struct Lane {
    aggregate_types: &'static [&'static str],
    wake: Arc<Notify>,
    progress: watch::Receiver<Position>,
    task: JoinHandle<()>,
}

/// The projectors of one tenant. Dropping it stops them.
pub struct Projectors {
    lanes: Vec<Lane>,
}

impl Drop for Projectors {
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.task.abort();
        }
    }
}

impl Projectors {
    /// Starts one projector task per projection.
    pub fn spawn(
        tenant_id: Uuid,
        pool: PgPool,
        log: EventLog,
        projections: Vec<Box<dyn Projection>>,
    ) -> Self {
        let lanes = projections
            .into_iter()
            .map(|projection| {
                let wake = Arc::new(Notify::new());
                let aggregate_types = projection.aggregate_types();
                let (progress_tx, progress) = watch::channel(Position::default());
                let runner = Runner {
                    tenant_id,
                    pool: pool.clone(),
                    log: log.clone(),
                    projection: Arc::from(projection),
                    progress: progress_tx,
                };
                let task = tokio::spawn(runner.run(wake.clone()));
                Lane {
                    aggregate_types,
                    wake,
                    progress,
                    task,
                }
            })
            .collect();
        Self { lanes }
    }

    fn lanes_for<'a>(&'a self, aggregate_type: &'a str) -> impl Iterator<Item = &'a Lane> + 'a {
        self.lanes
            .iter()
            .filter(move |lane| lane.aggregate_types.contains(&aggregate_type))
    }

    /// A cqrs-es query that wakes, after each commit of `aggregate_type`, the projectors that
    /// read it.
    pub fn waker(&self, aggregate_type: &str) -> Waker {
        Waker(
            self.lanes_for(aggregate_type)
                .map(|l| l.wake.clone())
                .collect(),
        )
    }

    /// Waits until every projection that reads `aggregate_type` has passed `target`.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        target: Position,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        for lane in self.lanes_for(aggregate_type) {
            lane.wake.notify_one();
        }
        let all = async {
            for lane in self.lanes_for(aggregate_type) {
                let mut progress = lane.progress.clone();
                // An error means the task ended (the tenant is closing): nothing to wait for.
                let _ = progress.wait_for(|at| *at >= target).await;
            }
        };
        tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| WaitError::Timeout)
    }
}

/// Wakes projectors; registered with each tenant's `CqrsFramework`. It carries no events:
/// projections read the store, which is the only source of truth.
pub struct Waker(Vec<Arc<Notify>>);

impl Waker {
    /// Also wakes `other` (the webhook worker, after changes it may deliver).
    pub fn and(mut self, other: Arc<Notify>) -> Self {
        self.0.push(other);
        self
    }
}

#[async_trait]
impl<A: Aggregate> Query<A> for Waker {
    async fn dispatch(&self, _aggregate_id: &str, _events: &[EventEnvelope<A>]) {
        for wake in &self.0 {
            wake.notify_one();
        }
    }
}

/// What a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Applied this many events; the checkpoint is now at the position.
    Applied(usize, Position),
    /// Another instance holds the checkpoint; it is at the position.
    Elsewhere(Position),
}

struct Runner {
    tenant_id: Uuid,
    pool: PgPool,
    log: EventLog,
    projection: Arc<dyn Projection>,
    progress: watch::Sender<Position>,
}

impl Runner {
    async fn run(self, wake: Arc<Notify>) {
        let mut poll = MIN_POLL;
        loop {
            match run_batch(&self.pool, &self.log, self.projection.as_ref(), BATCH).await {
                Ok(batch) => {
                    let (full, applied) = match batch {
                        Batch::Applied(count, at) => {
                            self.progress.send_replace(at);
                            (count as i64 == BATCH, count > 0)
                        }
                        Batch::Elsewhere(at) => {
                            self.progress.send_replace(at);
                            (false, false)
                        }
                    };
                    if full {
                        continue;
                    }
                    if applied {
                        poll = MIN_POLL;
                    }
                    // A receiver beyond the `Projectors` handle's own means a request is waiting:
                    // an event it needs may be held back by another open transaction, or be
                    // applied by another instance, so look again soon.
                    if self.progress.receiver_count() > 1 {
                        let _ = tokio::time::timeout(FOLLOW, wake.notified()).await;
                    } else {
                        poll = idle(&wake, poll).await;
                    }
                }
                Err(err) => {
                    tracing::error!(
                        tenant.id = %self.tenant_id,
                        projection = self.projection.name(),
                        error = %crate::error::redacted(&err),
                        "projection batch failed; retrying"
                    );
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// Waits for a wake-up or the poll interval; returns the next interval (reset by a wake-up,
/// doubled up to `MAX_POLL` by a quiet one).
async fn idle(wake: &Notify, poll: Duration) -> Duration {
    match tokio::time::timeout(poll, wake.notified()).await {
        Ok(()) => MIN_POLL,
        Err(_) => (poll * 2).min(MAX_POLL),
    }
}

/// One projector transaction: lock the checkpoint, apply what is below the horizon, move the
/// checkpoint, commit.
pub async fn run_batch(
    pool: &PgPool,
    log: &EventLog,
    projection: &dyn Projection,
    limit: i64,
) -> anyhow::Result<Batch> {
    let mut tx = pool.begin().await?;
    // The horizon comes from this statement's snapshot, taken before the row lock gives this
    // transaction an id of its own.
    let locked = sqlx::query(&format!(
        "SELECT {HORIZON} AS horizon,
                transaction_id::text::bigint AS transaction_id, global_position
         FROM projection_checkpoints WHERE projection = $1 FOR UPDATE SKIP LOCKED",
    ))
    .bind(projection.name())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = locked else {
        tx.rollback().await?;
        return Ok(Batch::Elsewhere(checkpoint(pool, projection.name()).await?));
    };
    let horizon: i64 = row.try_get("horizon")?;
    let start = Position::from_row(&row)?;
    let events = log
        .after(&mut tx, projection.aggregate_types(), start, horizon, limit)
        .await?;
    let mut at = start;
    for stored in &events {
        if let Some(event) = projected(stored)? {
            projection.apply(&mut tx, &event).await?;
        }
        at = stored.position;
    }
    // A batch that was not cut by the limit has seen every event of its types below the
    // horizon, so the checkpoint may pass all of them, whatever their type.
    if (events.len() as i64) < limit {
        at = at.max(Position::below(horizon));
    }
    if at != start {
        sqlx::query(
            "UPDATE projection_checkpoints
             SET transaction_id = $2::text::xid8, global_position = $3, updated_at = now()
             WHERE projection = $1",
        )
        .bind(projection.name())
        .bind(at.transaction_id.to_string())
        .bind(at.global_position)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Batch::Applied(events.len(), at))
}

/// Brings every projection in `projections` up to the end of the log, all at once, and returns
/// when each has applied everything below the horizon (a read model rebuilt after an import).
pub(crate) async fn catch_up(
    pool: &PgPool,
    log: &EventLog,
    projections: &[Box<dyn Projection>],
) -> anyhow::Result<()> {
    const LIMIT: i64 = 5_000;
    let lanes = projections.iter().map(|projection| async move {
        loop {
            match run_batch(pool, log, projection.as_ref(), LIMIT).await? {
                Batch::Applied(n, _) if (n as i64) < LIMIT => return Ok::<_, anyhow::Error>(()),
                Batch::Applied(..) => {}
                Batch::Elsewhere(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    futures::future::try_join_all(lanes).await?;
    Ok(())
}

/// Where a projection's checkpoint stands, read without locking it.
pub async fn checkpoint(pool: &PgPool, projection: &str) -> anyhow::Result<Position> {
    let row = sqlx::query(
        "SELECT transaction_id::text::bigint AS transaction_id, global_position
         FROM projection_checkpoints WHERE projection = $1",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?;
    Ok(Position::from_row(&row)?)
}

/// Empties a projection and moves its checkpoint back to the start, in one transaction; its
/// projector then rebuilds it from the first event.
pub async fn reset(pool: &PgPool, projection: &dyn Projection) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    projection.reset(&mut tx).await?;
    sqlx::query(
        "UPDATE projection_checkpoints SET transaction_id = '0', global_position = 0, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection.name())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Decodes a stored event for projections; `None` for aggregate types no projection reads.
pub(crate) fn projected(stored: &StoredEvent) -> anyhow::Result<Option<ProjectedEvent>> {
    let event = &stored.event;
    let Some(decoded) = AnyEvent::decode(&event.aggregate_type, event.payload.clone())? else {
        return Ok(None);
    };
    let metadata = EventMetadata::from_map(&stored.metadata()).ok_or_else(|| {
        anyhow::anyhow!(
            "event {} has no actor metadata",
            stored.position.global_position
        )
    })?;
    Ok(Some(ProjectedEvent {
        global_position: stored.position.global_position,
        aggregate_id: event.aggregate_id.parse()?,
        sequence: i64::try_from(event.sequence)?,
        recorded_at: stored.recorded_at,
        metadata,
        event: decoded,
    }))
}
