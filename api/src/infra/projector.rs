//! The catch-up projector: one task per tenant for all its read models. Each batch locks the
//! checkpoint rows of the projections (so it is their single writer on any number of
//! instances), reads the events after the oldest checkpoint once, in commit-safe order, opens
//! and decodes each once, hands every projection the events it reads and has not applied, and
//! moves every checkpoint, all in one transaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_es::{Aggregate, EventEnvelope, Query};
use custos_domain::EventMetadata;
use custos_projections::{AnyEvent, ProjectedEvent, Projection};
use futures::{StreamExt, TryStreamExt};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::infra::event_store::log::{EventLog, Position, StoredEvent, HORIZON};
use crate::infra::record_feed;
use crate::telemetry::metrics::Metrics;

/// The aggregate type whose readers wait for the log's newest event when a handle starts:
/// only record changes are answered before the read models show them.
const SEEDED_AS: &str = "record";
/// Events read per transaction.
const BATCH: i64 = 500;
/// How often a projector looks for events written by other service instances: soon after
/// activity, backing off to `MAX_POLL` while the tenant is idle. A local commit wakes it at once.
const MIN_POLL: Duration = Duration::from_millis(500);
const MAX_POLL: Duration = Duration::from_secs(30);
/// Wait after a failed batch before trying again.
const RETRY: Duration = Duration::from_secs(2);
/// How soon a projector looks again while a request waits for it, if no commit wakes it first.
const FOLLOW: Duration = Duration::from_millis(5);
/// How often the projector, caught up, brings its read models to the day (scheduled changes take
/// effect): a change due today shows within `DAY_GRACE`, this and one poll interval of midnight
/// (UTC).
const DAY_CHECK: Duration = Duration::from_secs(60);
/// Wait before the next try while the database cannot be reached.
const UNREACHABLE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the read models did not catch up in time")]
    Timeout,
    #[error("the event log could not be read")]
    Log(#[from] sqlx::Error),
}

/// The projectors of one tenant: one task, feeding every read model. Dropping it stops it.
pub struct Projectors {
    /// The aggregate types each projection reads, in the order of `progress`.
    reads: Vec<&'static [&'static str]>,
    wake: Arc<Notify>,
    /// Where each projection's checkpoint stands.
    progress: watch::Receiver<Vec<Position>>,
    /// The changes this instance answered without waiting for the read models that are not
    /// yet seen applied, oldest first (see [`Projectors::defer`]): what a read waits for.
    deferred: std::sync::Mutex<VecDeque<(&'static str, Position)>>,
    /// Set once the log's newest event at the first read or deferred write is among the
    /// changes waited for: one answered before the read models showed it may be in the log
    /// from before this handle (the service restarted, or closed the tenant's context while
    /// idle).
    seeded: tokio::sync::OnceCell<()>,
    log: EventLog,
    task: JoinHandle<()>,
}

impl Drop for Projectors {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Projectors {
    /// Starts the tenant's projector task.
    pub fn spawn(
        tenant_id: Uuid,
        pool: PgPool,
        log: EventLog,
        projections: Vec<Box<dyn Projection>>,
        metrics: Metrics,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let reads = projections.iter().map(|p| p.aggregate_types()).collect();
        let (progress_tx, progress) = watch::channel(vec![Position::default(); projections.len()]);
        let runner = Runner {
            tenant_id,
            pool,
            log: log.clone(),
            projections,
            progress: progress_tx,
            metrics,
        };
        let task = tokio::spawn(runner.run(wake.clone()));
        Self {
            reads,
            wake,
            progress,
            deferred: std::sync::Mutex::default(),
            seeded: tokio::sync::OnceCell::new(),
            log,
            task,
        }
    }

    /// Stops the task (a batch in progress rolls back), as dropping the handle does.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        self.reads
            .iter()
            .any(|types| types.contains(&aggregate_type))
    }

    /// A cqrs-es query that wakes the projector after each commit of `aggregate_type`, if a
    /// projection reads it.
    pub fn waker(&self, aggregate_type: &str) -> Waker {
        Waker(if self.reads(aggregate_type) {
            vec![self.wake.clone()]
        } else {
            Vec::new()
        })
    }

    /// Waits until every projection that reads `aggregate_type` has passed `target`.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        target: Position,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        if !self.reads(aggregate_type) {
            return Ok(());
        }
        self.wake.notify_one();
        let mut progress = self.progress.clone();
        let passed = |at: &Vec<Position>| self.passed_at(at, aggregate_type, target);
        // An error means the task ended (the tenant is closing): nothing to wait for.
        tokio::time::timeout(timeout, async {
            let _ = progress.wait_for(passed).await;
        })
        .await
        .map_err(|_| WaitError::Timeout)
    }
}

impl Projectors {
    /// Whether every projection that reads `aggregate_type` has passed `target`.
    pub fn passed(&self, aggregate_type: &str, target: Position) -> bool {
        self.passed_at(&self.progress.borrow(), aggregate_type, target)
    }

    /// Whether, with the checkpoints at `at`, every projection that reads `aggregate_type`
    /// has passed `target`.
    fn passed_at(&self, at: &[Position], aggregate_type: &str, target: Position) -> bool {
        self.reads
            .iter()
            .zip(at)
            .all(|(types, at)| !types.contains(&aggregate_type) || *at >= target)
    }

    /// The changes answered without waiting for the read models and not yet seen applied,
    /// oldest first (those seen applied are dropped).
    fn outstanding(&self) -> std::sync::MutexGuard<'_, VecDeque<(&'static str, Position)>> {
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((aggregate_type, at)) = deferred.front() {
            if !self.passed(aggregate_type, *at) {
                break;
            }
            deferred.pop_front();
        }
        deferred
    }

    /// Waits, before a change is answered without waiting for the read models, while `lag`
    /// such changes or more are outstanding, until fewer are: so a read never waits for more
    /// than `lag` of them. [`WaitError`] when the read models stay behind for `timeout`.
    pub async fn make_room(&self, lag: usize, timeout: Duration) -> Result<(), WaitError> {
        self.seed().await?;
        let oldest = {
            let outstanding = self.outstanding();
            match outstanding.len().checked_sub(lag) {
                Some(past) => outstanding[past],
                None => return Ok(()),
            }
        };
        self.wait_for(oldest.0, oldest.1, timeout).await
    }

    /// Counts the log's newest event as a change answered before the read models showed it,
    /// once per handle.
    async fn seed(&self) -> Result<(), WaitError> {
        self.seeded
            .get_or_try_init(|| async {
                if let Some(newest) = self.log.newest().await? {
                    self.defer(SEEDED_AS, newest);
                }
                Ok::<_, WaitError>(())
            })
            .await?;
        Ok(())
    }

    /// Notes a change of `aggregate_type` answered without waiting for the read models: it
    /// landed at `written`. Reads wait for it ([`Projectors::wait_for_deferred`]).
    pub fn defer(&self, aggregate_type: &'static str, written: Position) {
        self.outstanding().push_back((aggregate_type, written));
    }

    /// Waits until the read models of each change this instance answered without waiting
    /// for them have applied it, and those of `after` (a change another instance answered so,
    /// passed back by a client) too.
    pub async fn wait_for_deferred(
        &self,
        after: Option<(&'static str, Position)>,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        self.seed().await?;
        // The newest change of each type stands for the older ones: checkpoints only move on.
        let mut newest: Vec<(&'static str, Position)> = after.into_iter().collect();
        for (aggregate_type, at) in self.outstanding().iter() {
            match newest.iter_mut().find(|(t, _)| t == aggregate_type) {
                Some((_, newer)) => *newer = (*newer).max(*at),
                None => newest.push((aggregate_type, *at)),
            }
        }
        for (aggregate_type, at) in newest {
            if !self.passed(aggregate_type, at) {
                self.wait_for(aggregate_type, at, timeout).await?;
            }
        }
        Ok(())
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Read this many events; the checkpoints are now at the positions (one per projection,
    /// in the order given).
    Applied(usize, Vec<Position>),
    /// The same, for the projections whose checkpoints it could lock; another instance (or
    /// another task) holds the others.
    Partly(usize, Vec<Position>),
    /// Another instance holds every checkpoint; they are at the positions.
    Elsewhere(Vec<Position>),
}

impl Batch {
    /// Where the checkpoints stand after the batch.
    pub fn positions(&self) -> &[Position] {
        match self {
            Batch::Applied(_, at) | Batch::Partly(_, at) | Batch::Elsewhere(at) => at,
        }
    }

    /// How many events the batch read.
    fn read(&self) -> usize {
        match self {
            Batch::Applied(count, _) | Batch::Partly(count, _) => *count,
            Batch::Elsewhere(_) => 0,
        }
    }
}

struct Runner {
    tenant_id: Uuid,
    pool: PgPool,
    log: EventLog,
    projections: Vec<Box<dyn Projection>>,
    progress: watch::Sender<Vec<Position>>,
    /// Where batches are timed and counted.
    metrics: Metrics,
}

impl Runner {
    async fn run(self, wake: Arc<Notify>) {
        // Projections whose last batch failed: they are left out of the shared pass, so that
        // one read model's failure holds back only its own readers, and retried on their own.
        let mut failing = vec![false; self.projections.len()];
        let mut retry_at = tokio::time::Instant::now();
        let mut poll = MIN_POLL;
        let mut unreachable = false;
        let mut day_checked: Option<tokio::time::Instant> = None;
        loop {
            let healthy: Vec<usize> = (0..failing.len()).filter(|i| !failing[*i]).collect();
            let full = match self.pass(&healthy).await {
                Ok(batch) => {
                    if std::mem::take(&mut unreachable) {
                        tracing::info!(tenant.id = %self.tenant_id, "projector: the database answers again");
                    }
                    if batch.read() > 0 {
                        poll = MIN_POLL;
                    }
                    batch.read() as i64 == BATCH
                }
                // The tenant's context was closed (a handle may outlive it for a moment).
                Err(_) if self.pool.is_closed() => return,
                // No read model is at fault: the shared pass is tried again soon, so that the
                // read models follow as soon as the database is back.
                Err(err) if crate::error::database_unreachable(err.as_ref()) => {
                    if !std::mem::replace(&mut unreachable, true) {
                        tracing::warn!(
                            tenant.id = %self.tenant_id,
                            error = %crate::error::redacted(&err),
                            "projector: the database cannot be reached; trying again"
                        );
                    }
                    tokio::time::sleep(UNREACHABLE).await;
                    true
                }
                Err(err) => {
                    tracing::error!(
                        tenant.id = %self.tenant_id,
                        error = %crate::error::redacted(&err),
                        "projection batch failed; trying each projection on its own"
                    );
                    for index in healthy {
                        failing[index] = true;
                    }
                    retry_at = tokio::time::Instant::now();
                    false
                }
            };
            if failing.contains(&true) && tokio::time::Instant::now() >= retry_at {
                for (index, failed) in failing.iter_mut().enumerate().filter(|(_, f)| **f) {
                    match self.pass(&[index]).await {
                        Ok(_) => *failed = false,
                        Err(err) => tracing::error!(
                            tenant.id = %self.tenant_id,
                            projection = self.projections[index].name(),
                            error = %crate::error::redacted(&err),
                            "projection batch failed; retrying"
                        ),
                    }
                }
                retry_at = tokio::time::Instant::now() + RETRY;
            }
            if full {
                continue;
            }
            // Caught up: the day's scheduled changes, once no event that could cancel one is
            // still to be applied.
            if day_checked.is_none_or(|at| at.elapsed() >= DAY_CHECK) {
                day_checked = Some(tokio::time::Instant::now());
                let projections: Vec<&dyn Projection> =
                    self.projections.iter().map(AsRef::as_ref).collect();
                let today = custos_projections::records::day_in_force();
                if let Err(err) = on_day(&self.pool, &projections, today).await {
                    if self.pool.is_closed() {
                        return;
                    }
                    tracing::warn!(
                        tenant.id = %self.tenant_id,
                        error = %crate::error::redacted(&err),
                        "projector: the day's scheduled changes did not take effect; trying again"
                    );
                    day_checked = None;
                }
            }
            // A receiver beyond the `Projectors` handle's own means a request is waiting: an
            // event it needs may be held back by another open transaction, or be applied by
            // another instance, so look again soon.
            if self.progress.receiver_count() > 1 {
                let _ = tokio::time::timeout(FOLLOW, wake.notified()).await;
            } else if failing.contains(&true) {
                poll = idle(&wake, poll.min(RETRY)).await;
            } else {
                poll = idle(&wake, poll).await;
            }
        }
    }

    /// One batch over the projections at `indexes`; publishes where their checkpoints stand.
    async fn pass(&self, indexes: &[usize]) -> anyhow::Result<Batch> {
        if indexes.is_empty() {
            return Ok(Batch::Applied(0, Vec::new()));
        }
        let projections: Vec<&dyn Projection> = indexes
            .iter()
            .map(|i| self.projections[*i].as_ref())
            .collect();
        let started = std::time::Instant::now();
        let batch = run_pass(&self.pool, &self.log, &projections, BATCH).await;
        let outcome = match &batch {
            Ok(batch) if batch.read() > 0 => "applied",
            Ok(_) => "empty",
            Err(_) => "failed",
        };
        let metrics = &self.metrics;
        metrics
            .projector_batch
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        match &batch {
            Ok(batch) => metrics.projector_events.inc_by(batch.read() as u64),
            Err(_) => metrics.projector_failures.inc(),
        }
        let batch = batch?;
        self.progress.send_modify(|progress| {
            for (index, at) in indexes.iter().zip(batch.positions()) {
                progress[*index] = *at;
            }
        });
        Ok(batch)
    }
}

/// Brings `projections` to `today` (see [`Projection::on_day`]) in one transaction, one such
/// transaction at a time per database, and tells the record feed's readers what took effect
/// ([`record_feed::took_effect`]); how many changes took effect.
pub(crate) async fn on_day(
    pool: &PgPool,
    projections: &[&dyn Projection],
    today: chrono::NaiveDate,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    record_feed::serialise_effects(&mut tx).await?;
    let mut took = Vec::new();
    for projection in projections {
        took.extend(projection.on_day(&mut tx, today).await?);
    }
    record_feed::took_effect(&mut tx, &took).await?;
    tx.commit().await?;
    Ok(took.len() as u64)
}

/// Waits for a wake-up or the poll interval; returns the next interval (reset by a wake-up,
/// doubled up to `MAX_POLL` by a quiet one).
async fn idle(wake: &Notify, poll: Duration) -> Duration {
    match tokio::time::timeout(poll, wake.notified()).await {
        Ok(()) => MIN_POLL,
        Err(_) => (poll * 2).min(MAX_POLL),
    }
}

/// One projector transaction for one projection (see [`run_pass`]).
pub async fn run_batch(
    pool: &PgPool,
    log: &EventLog,
    projection: &dyn Projection,
    limit: i64,
) -> anyhow::Result<Batch> {
    run_pass(pool, log, &[projection], limit).await
}

/// One projector transaction for `projections`: lock their checkpoints (those another instance
/// holds are left to it), read up to `limit` events after the oldest of them below the horizon,
/// apply to each projection the events of its types past its own checkpoint, move every
/// checkpoint, commit.
pub async fn run_pass(
    pool: &PgPool,
    log: &EventLog,
    projections: &[&dyn Projection],
    limit: i64,
) -> anyhow::Result<Batch> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let mut tx = pool.begin().await?;
    // The horizon comes from this statement's snapshot, taken before the row locks give this
    // transaction an id of its own.
    let rows = sqlx::query(&format!(
        "SELECT {HORIZON} AS horizon, projection,
                transaction_id::text::bigint AS transaction_id, global_position
         FROM projection_checkpoints WHERE projection = ANY($1) FOR UPDATE SKIP LOCKED",
    ))
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Batch::Elsewhere(checkpoints(pool, &names).await?));
    }
    let horizon: i64 = rows[0].try_get("horizon")?;
    // Each projection's checkpoint; `None` for those held elsewhere.
    let mut locked: Vec<Option<Position>> = vec![None; projections.len()];
    for row in &rows {
        let name: String = row.try_get("projection")?;
        if let Some(index) = names.iter().position(|n| *n == name) {
            locked[index] = Some(Position::from_row(row)?);
        }
    }
    let start = locked.iter().flatten().min().copied().unwrap_or_default();
    let mut types: Vec<&str> = projections
        .iter()
        .zip(&locked)
        .filter(|(_, at)| at.is_some())
        .flat_map(|(p, _)| p.aggregate_types().iter().copied())
        .collect();
    types.sort_unstable();
    types.dedup();
    let mut stored = log.after(&mut tx, &types, start, horizon, limit).await?;
    let decoded = stored
        .iter_mut()
        .map(projected)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut events = Vec::with_capacity(stored.len());
    for (event, projected) in stored.iter().zip(decoded) {
        if let Some(projected) = projected {
            events.push((
                event.position,
                event.event.aggregate_type.as_str(),
                projected,
            ));
        }
    }
    // A batch not cut by the limit has seen every event of its types below the horizon, so
    // the checkpoints may pass all of them, whatever their type.
    let end = match stored.last() {
        Some(last) if (stored.len() as i64) == limit => last.position,
        Some(last) => last.position.max(Position::below(horizon)),
        None => Position::below(horizon),
    };
    let mut moved = Vec::new();
    for (projection, at) in projections.iter().zip(&mut locked) {
        let Some(from) = *at else { continue };
        apply(&mut tx, *projection, from, &events).await?;
        if end > from {
            moved.push((projection.name(), end));
            *at = Some(end);
        }
    }
    if !moved.is_empty() {
        let (moved_names, (transactions, globals)): (Vec<&str>, (Vec<String>, Vec<i64>)) = moved
            .iter()
            .map(|(name, at)| (*name, (at.transaction_id.to_string(), at.global_position)))
            .unzip();
        sqlx::query(
            "UPDATE projection_checkpoints AS c
             SET transaction_id = m.transaction_id::xid8, global_position = m.global_position,
                 updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::bigint[])
                  AS m(projection, transaction_id, global_position)
             WHERE c.projection = m.projection",
        )
        .bind(&moved_names)
        .bind(&transactions)
        .bind(&globals)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if locked.iter().all(Option::is_some) {
        return Ok(Batch::Applied(
            stored.len(),
            locked.into_iter().flatten().collect(),
        ));
    }
    let elsewhere = checkpoints(pool, &names).await?;
    let positions = locked
        .into_iter()
        .zip(elsewhere)
        .map(|(mine, theirs)| mine.unwrap_or(theirs))
        .collect();
    Ok(Batch::Partly(stored.len(), positions))
}

/// Hands `projection` the events of its types past its checkpoint `from`.
async fn apply<T: AsRef<str>>(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    from: Position,
    events: &[(Position, T, ProjectedEvent)],
) -> anyhow::Result<()> {
    let types = projection.aggregate_types();
    let mine: Vec<&ProjectedEvent> = events
        .iter()
        .filter(|(at, aggregate_type, _)| *at > from && types.contains(&aggregate_type.as_ref()))
        .map(|(_, _, event)| event)
        .collect();
    if !mine.is_empty() {
        projection.apply_all(conn, &mine).await?;
    }
    Ok(())
}

/// Brings every projection in `projections` up to the end of the log, all at once, and returns
/// when each has applied everything below the horizon (a read model rebuilt after an import).
pub(crate) async fn catch_up(
    pool: &PgPool,
    log: &EventLog,
    projections: &[Box<dyn Projection>],
) -> anyhow::Result<()> {
    const LIMIT: i64 = 5_000;
    let all: Vec<&dyn Projection> = projections.iter().map(AsRef::as_ref).collect();
    loop {
        match run_pass(pool, log, &all, LIMIT).await? {
            Batch::Applied(n, _) if (n as i64) < LIMIT => return Ok(()),
            Batch::Applied(..) => {}
            Batch::Partly(..) | Batch::Elsewhere(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
    }
}

/// Memory for each index build at the end of [`fill`] (PostgreSQL's default is 64 MB).
pub(crate) const INDEX_BUILD_MEMORY: &str = "128MB";
/// Events read, decoded and applied per step of [`fill`].
const FILL_BATCH: i64 = 5_000;

/// A batch of [`fill`]: the events, opened and decoded once, with their aggregate types.
type Decoded = Arc<Vec<(Position, String, ProjectedEvent)>>;

/// Fills read models that are empty, in a database nothing serves yet (an import, a move, a
/// restore), to the end of the log, faster than [`catch_up`], which it then runs to finish:
///
/// - one task reads and opens the events, batch after batch, on its own connection, while two
///   lanes apply the batch before, each on its own connection in a transaction of its own that
///   also moves its projections' checkpoints: the records read model in one lane, every other
///   in the other (measured with `pg_stat_statements` on a 100,000-event import, the records'
///   inserts take about as long as all the others together);
/// - the indexes that only reads use ([`custos_projections::Table::read_indexes`]) are dropped
///   first and built once at the end, two at a time, rather than maintained row by row (an
///   index a table names that the database lacks is an error before anything is dropped).
///
/// The read models' tables are analysed at the end: the organisation's first lists are planned
/// with statistics of their rows, not before autovacuum comes by.
///
/// Interrupted, it leaves read models part-filled and some indexes missing; its callers remove
/// such a database (a failed import or move, and on the next start an abandoned one).
pub(crate) async fn fill(
    pool: &PgPool,
    log: &EventLog,
    projections: &[Box<dyn Projection>],
) -> anyhow::Result<()> {
    let all: Vec<&dyn Projection> = projections.iter().map(AsRef::as_ref).collect();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    anyhow::ensure!(
        checkpoints(pool, &names)
            .await?
            .iter()
            .all(|at| *at == Position::default()),
        "the read models to fill are not empty"
    );
    let definitions = drop_read_indexes(pool, &all).await?;
    let horizon: i64 = sqlx::query_scalar(&format!("SELECT {HORIZON}"))
        .fetch_one(pool)
        .await?;
    let (records, others): (Vec<&dyn Projection>, Vec<&dyn Projection>) = all
        .iter()
        .partition(|p| p.tables().iter().any(|table| table.name == "records"));
    let mut types: Vec<&str> = all
        .iter()
        .flat_map(|p| p.aggregate_types().iter().copied())
        .collect();
    types.sort_unstable();
    types.dedup();
    let (to_records, from_reader_records) = tokio::sync::mpsc::channel::<Decoded>(1);
    let (to_others, from_reader_others) = tokio::sync::mpsc::channel::<Decoded>(1);
    let reader = async {
        let mut conn = pool.acquire().await?;
        let mut at = Position::default();
        loop {
            let mut stored = log
                .after(&mut conn, &types, at, horizon, FILL_BATCH)
                .await?;
            let Some(last) = stored.last() else { break };
            at = last.position;
            let mut batch = Vec::with_capacity(stored.len());
            for event in &mut stored {
                if let Some(projected) = projected(event)? {
                    batch.push((
                        event.position,
                        event.event.aggregate_type.clone(),
                        projected,
                    ));
                }
            }
            let batch = Arc::new(batch);
            // A lane that stopped has an error of its own, which is the one reported.
            if to_records.send(batch.clone()).await.is_err()
                || to_others.send(batch).await.is_err()
                || (stored.len() as i64) < FILL_BATCH
            {
                break;
            }
        }
        drop((to_records, to_others));
        Ok::<_, anyhow::Error>(())
    };
    let (read, records, others) = tokio::join!(
        reader,
        lane(pool, &records, from_reader_records),
        lane(pool, &others, from_reader_others)
    );
    records?;
    others?;
    read?;
    catch_up(pool, log, projections).await?;
    on_day(pool, &all, custos_projections::records::day_in_force()).await?;
    futures::stream::iter(definitions)
        .map(|definition| async move {
            let mut conn = pool.acquire().await?;
            sqlx::query(&format!(
                "SET maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"
            ))
            .execute(&mut *conn)
            .await?;
            sqlx::query(&definition).execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(())
        })
        .buffer_unordered(2)
        .try_collect::<()>()
        .await?;
    let mut tables: Vec<String> = all
        .iter()
        .flat_map(|p| p.tables())
        .map(|table| format!("public.\"{}\"", table.name))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    // Statistics only speed plans up: failing to gather them does not fail the fill.
    if let Err(err) = sqlx::query(&format!("ANALYZE {}", tables.join(", ")))
        .execute(pool)
        .await
    {
        tracing::warn!(error = %err, "analysing the filled read models failed; they are planned without statistics until autovacuum comes by");
    }
    Ok(())
}

/// One lane of [`fill`]: each batch applied to `projections` and their checkpoints moved to its
/// last event, in one transaction.
async fn lane(
    pool: &PgPool,
    projections: &[&dyn Projection],
    mut batches: tokio::sync::mpsc::Receiver<Decoded>,
) -> anyhow::Result<()> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    while let Some(batch) = batches.recv().await {
        let Some((end, _, _)) = batch.last() else {
            continue;
        };
        let mut tx = pool.begin().await?;
        for projection in projections {
            apply(&mut tx, *projection, Position::default(), &batch).await?;
        }
        sqlx::query(
            "UPDATE projection_checkpoints
             SET transaction_id = $2::text::xid8, global_position = $3, updated_at = now()
             WHERE projection = ANY($1)",
        )
        .bind(&names)
        .bind(end.transaction_id.to_string())
        .bind(end.global_position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Drops the indexes of `projections`' tables that only reads use, answering the statements
/// that build them again.
async fn drop_read_indexes(
    pool: &PgPool,
    projections: &[&dyn Projection],
) -> anyhow::Result<Vec<String>> {
    let names: Vec<&str> = projections
        .iter()
        .flat_map(|p| p.tables())
        .flat_map(|table| table.read_indexes.iter().copied())
        .collect();
    let definitions: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(c.oid)
         FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'i' AND c.relname = ANY($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    if let Some(missing) = names
        .iter()
        .find(|name| !definitions.iter().any(|(found, _)| found == *name))
    {
        anyhow::bail!("the read models name an index the database lacks: {missing}");
    }
    if !definitions.is_empty() {
        let dropped: Vec<String> = definitions
            .iter()
            .map(|(name, _)| format!("public.\"{name}\""))
            .collect();
        sqlx::query(&format!("DROP INDEX {}", dropped.join(", ")))
            .execute(pool)
            .await?;
    }
    Ok(definitions
        .into_iter()
        .map(|(_, definition)| definition)
        .collect())
}

/// Where the checkpoints of `names` stand, in that order, read without locking them.
async fn checkpoints(pool: &PgPool, names: &[&str]) -> anyhow::Result<Vec<Position>> {
    let rows = sqlx::query(
        "SELECT projection, transaction_id::text::bigint AS transaction_id, global_position
         FROM projection_checkpoints WHERE projection = ANY($1)",
    )
    .bind(names)
    .fetch_all(pool)
    .await?;
    names
        .iter()
        .map(|name| {
            let row = rows
                .iter()
                .find(|row| row.try_get::<&str, _>("projection").ok() == Some(*name))
                .ok_or_else(|| anyhow::anyhow!("projection {name} has no checkpoint"))?;
            Ok(Position::from_row(row)?)
        })
        .collect()
}

/// Where one read model stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Standing {
    pub name: &'static str,
    /// When its checkpoint last moved.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Events of its kinds written after its checkpoint, and when the oldest of them was.
    pub behind: i64,
    pub oldest_behind: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where each of `projections` stands in the database of `conn`, read without locking.
pub(crate) async fn standings(
    conn: &mut PgConnection,
    projections: &[Box<dyn Projection>],
) -> anyhow::Result<Vec<Standing>> {
    let mut standings = Vec::with_capacity(projections.len());
    for projection in projections {
        let row = sqlx::query(
            "SELECT c.updated_at, b.behind, b.oldest
             FROM projection_checkpoints AS c
             CROSS JOIN LATERAL (
                 SELECT count(*) AS behind, min(e.recorded_at) AS oldest FROM events AS e
                 WHERE e.aggregate_type = ANY($2)
                   AND (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)
             ) AS b
             WHERE c.projection = $1",
        )
        .bind(projection.name())
        .bind(projection.aggregate_types())
        .fetch_one(&mut *conn)
        .await?;
        standings.push(Standing {
            name: projection.name(),
            updated_at: row.try_get("updated_at")?,
            behind: row.try_get("behind")?,
            oldest_behind: row.try_get("oldest")?,
        });
    }
    Ok(standings)
}

/// Where a projection's checkpoint stands, read without locking it.
pub async fn checkpoint(pool: &PgPool, projection: &str) -> anyhow::Result<Position> {
    Ok(checkpoints(pool, &[projection]).await?[0])
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

/// Decodes a stored event for projections, taking its payload (left `null`: no caller reads it
/// after, and its copy was a tree of allocations per event); `None` for aggregate types no
/// projection reads.
pub(crate) fn projected(stored: &mut StoredEvent) -> anyhow::Result<Option<ProjectedEvent>> {
    let payload = std::mem::take(&mut stored.event.payload);
    let event = &stored.event;
    let Some(decoded) = AnyEvent::decode(&event.aggregate_type, payload)? else {
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
