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

use crate::event_store::{EventLog, Position, StoredEvent};

/// Events applied per transaction.
const BATCH: i64 = 500;
/// How often an idle projector looks for events written by other service instances.
const POLL: Duration = Duration::from_millis(500);
/// Wait after a failed batch before trying again.
const RETRY: Duration = Duration::from_secs(2);
/// How often a projector whose checkpoint another instance holds re-reads it.
const FOLLOW: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the read models did not catch up in time")]
    Timeout,
}

/// One projection's running task.
struct Lane {
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
                    wake,
                    progress,
                    task,
                }
            })
            .collect();
        Self { lanes }
    }

    /// Asks every projector to look for new events now.
    pub fn wake(&self) {
        for lane in &self.lanes {
            lane.wake.notify_one();
        }
    }

    /// A cqrs-es query that wakes the projectors after each commit.
    pub fn waker(&self) -> Waker {
        Waker(self.lanes.iter().map(|l| l.wake.clone()).collect())
    }

    /// Waits until every projection has applied the event at `target`.
    pub async fn wait_for(&self, target: Position, timeout: Duration) -> Result<(), WaitError> {
        self.wake();
        let all = async {
            for lane in &self.lanes {
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
        loop {
            match run_batch(&self.pool, &self.log, self.projection.as_ref(), BATCH).await {
                Ok(Batch::Applied(count, at)) => {
                    self.progress.send_replace(at);
                    if count as i64 == BATCH {
                        continue;
                    }
                    let _ = tokio::time::timeout(POLL, wake.notified()).await;
                }
                Ok(Batch::Elsewhere(at)) => {
                    self.progress.send_replace(at);
                    tokio::time::sleep(FOLLOW).await;
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

/// One projector transaction: lock the checkpoint, apply what is below the horizon, move the
/// checkpoint, commit.
pub async fn run_batch(
    pool: &PgPool,
    log: &EventLog,
    projection: &dyn Projection,
    limit: i64,
) -> anyhow::Result<Batch> {
    let mut tx = pool.begin().await?;
    let horizon = EventLog::horizon(&mut tx).await?;
    let locked = sqlx::query(
        "SELECT transaction_id::text::bigint AS transaction_id, global_position
         FROM projection_checkpoints WHERE projection = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(projection.name())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = locked else {
        tx.rollback().await?;
        return Ok(Batch::Elsewhere(checkpoint(pool, projection.name()).await?));
    };
    let mut at = Position {
        transaction_id: row.try_get("transaction_id")?,
        global_position: row.try_get("global_position")?,
    };
    let events = log.after(&mut tx, at, horizon, limit).await?;
    for stored in &events {
        if let Some(event) = projected(stored)? {
            projection.apply(&mut tx, &event).await?;
        }
        at = stored.position;
    }
    if !events.is_empty() {
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

/// Where a projection's checkpoint stands, read without locking it.
pub async fn checkpoint(pool: &PgPool, projection: &str) -> anyhow::Result<Position> {
    let row = sqlx::query(
        "SELECT transaction_id::text::bigint AS transaction_id, global_position
         FROM projection_checkpoints WHERE projection = $1",
    )
    .bind(projection)
    .fetch_one(pool)
    .await?;
    Ok(Position {
        transaction_id: row.try_get("transaction_id")?,
        global_position: row.try_get("global_position")?,
    })
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
fn projected(stored: &StoredEvent) -> anyhow::Result<Option<ProjectedEvent>> {
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
