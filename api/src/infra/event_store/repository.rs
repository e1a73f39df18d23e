//! postgres-es's repository, wrapped so that every event passes through the codec, and the
//! command side of one aggregate type built on it, loading aggregates through a cache.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

use super::codec::EventCodec;
use super::log::{EventLog, Position};

/// A tenant's command side for one aggregate type.
pub type Cqrs<A> = CqrsFramework<A, CachedEventStore<A>>;

tokio::task_local! {
    /// Where the last append of the commands run inside [`noting_appends`] landed.
    static APPENDED: Cell<Option<Position>>;
}

/// Runs `work` (commands through a tenant's [`Cqrs`]) and answers, with its output, where its
/// last append landed in the log: what a writer waits for the read models to pass, known
/// without looking it up. `None` when nothing was appended.
pub(crate) async fn noting_appends<F: Future>(work: F) -> (F::Output, Option<Position>) {
    APPENDED
        .scope(Cell::new(None), async move {
            let output = work.await;
            (output, APPENDED.with(Cell::get))
        })
        .await
}

/// How many aggregates a tenant keeps in memory, of all types together.
const CACHED_AGGREGATES: usize = 1_024;
/// How long a cached aggregate is used. Past this, its stream is read again: a subject erased
/// through another instance of the service leaves no values in this one's memory for longer.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// An aggregate as it stood after its last commit in this process.
struct Cached {
    aggregate: Value,
    sequence: usize,
    at: Instant,
}

type Entries = lru::LruCache<(&'static str, String), Cached>;

/// A tenant's aggregates as this process last wrote them, so that loading one reads only the
/// events appended since (by another instance) instead of its whole stream. Kept in memory
/// only: stored snapshots would hold personal data in clear. Checked against the stream on
/// every load, bounded (least recently used first out) and short-lived (see [`FRESH_FOR`]). It
/// lives as long as the tenant's open context, so a restored or moved database never meets an
/// aggregate cached from another.
pub struct AggregateCache(Mutex<Entries>);

impl Default for AggregateCache {
    fn default() -> Self {
        Self(Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(CACHED_AGGREGATES).expect("the capacity is not zero"),
        )))
    }
}

impl AggregateCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached state of an aggregate and its version, while fresh.
    fn get(&self, aggregate_type: &'static str, id: &str) -> Option<(Value, usize)> {
        let mut entries = self.entries();
        let key = (aggregate_type, id.to_owned());
        match entries.get(&key) {
            Some(cached) if cached.at.elapsed() < FRESH_FOR => {
                Some((cached.aggregate.clone(), cached.sequence))
            }
            Some(_) => {
                entries.pop(&key);
                None
            }
            None => None,
        }
    }

    fn put(&self, aggregate_type: &'static str, id: String, aggregate: Value, sequence: usize) {
        self.entries().put(
            (aggregate_type, id),
            Cached {
                aggregate,
                sequence,
                at: Instant::now(),
            },
        );
    }

    fn forget(&self, aggregate_type: &'static str, id: &str) {
        self.entries().pop(&(aggregate_type, id.to_owned()));
    }
}

/// cqrs-es's event store on [`CustosEventRepository`], loading an aggregate from the tenant's
/// [`AggregateCache`] and the events written after the cached version (the whole stream on a
/// miss), and caching the state each commit leaves.
pub struct CachedEventStore<A: Aggregate> {
    store: PersistedEventStore<CustosEventRepository, A>,
    log: EventLog,
    cache: Arc<AggregateCache>,
}

impl<A: Aggregate> CachedEventStore<A> {
    pub fn new(pool: PgPool, codec: EventCodec, cache: Arc<AggregateCache>) -> Self {
        Self {
            store: PersistedEventStore::new_event_store(CustosEventRepository::new(
                pool.clone(),
                codec.clone(),
            )),
            log: EventLog::new(pool, codec),
            cache,
        }
    }
}

/// A failed read of the log as cqrs-es reports it: the codec's own errors as they are, the
/// database's as a connection error (the service answers `UNAVAILABLE`), anything else as
/// unexpected.
fn log_error<E: std::error::Error>(err: anyhow::Error) -> AggregateError<E> {
    match err.downcast::<PersistenceError>() {
        Ok(persistence) => persistence.into(),
        Err(err) => match err.downcast::<sqlx::Error>() {
            Ok(database) => AggregateError::DatabaseConnectionError(Box::new(database)),
            Err(other) => AggregateError::UnexpectedError(other.into()),
        },
    }
}

impl<A: Aggregate> EventStore<A> for CachedEventStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.store.load_events(aggregate_id).await
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<A::Error>> {
        let cached = self
            .cache
            .get(A::TYPE, aggregate_id)
            .and_then(|(state, sequence)| {
                Some((serde_json::from_value::<A>(state).ok()?, sequence))
            });
        let Some((aggregate, sequence)) = cached else {
            return self.store.load_aggregate(aggregate_id).await;
        };
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            current_sequence: sequence,
            current_snapshot: None,
        };
        // Read through the log, not postgres-es's `get_last_events`, which writes the sequence
        // into its SQL text: a new prepared statement for every version.
        let after = i64::try_from(sequence).unwrap_or(i64::MAX);
        for stored in self
            .log
            .stream_after(A::TYPE, aggregate_id, after)
            .await
            .map_err(log_error)?
        {
            let envelope = EventEnvelope::<A>::try_from(stored.event)?;
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let id = context.aggregate_id;
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(context.current_sequence + 1..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let serialized = envelopes
            .iter()
            .map(SerializedEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        // cqrs-es applied the new events to the context's aggregate as the command emitted
        // them: it is the state this commit leaves.
        let sequence = context.current_sequence + envelopes.len();
        let state = serde_json::to_value(&context.aggregate);
        let appended = self.log.append(serialized).await;
        match (&appended, state) {
            (Ok(position), Ok(state)) => {
                self.cache.put(A::TYPE, id, state, sequence);
                if let Some(position) = position {
                    let _outside_noting_appends = APPENDED.try_with(|at| at.set(Some(*position)));
                }
            }
            // Another writer won the race (or the write failed): read the stream next time.
            _ => self.cache.forget(A::TYPE, &id),
        }
        appended?;
        Ok(envelopes)
    }
}

/// postgres-es's `PostgresEventRepository` for reading, wrapped so that every event passes
/// through the codec; appends go through [`EventLog::append`] (one statement, its position
/// answered). Snapshots are not stored (they would hold personal data in clear): see
/// [`AggregateCache`].
pub(crate) struct CustosEventRepository {
    inner: PostgresEventRepository,
    codec: EventCodec,
    log: EventLog,
}

impl CustosEventRepository {
    pub(crate) fn new(pool: PgPool, codec: EventCodec) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            log: EventLog::new(pool, codec.clone()),
            codec,
        }
    }

    async fn open_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.codec.open_all(events).await
    }
}

impl PersistedEventRepository for CustosEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.open_all(self.inner.get_events::<A>(aggregate_id).await?)
            .await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.open_all(
            self.inner
                .get_last_events::<A>(aggregate_id, last_sequence)
                .await?,
        )
        .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.log.append(events.to_vec()).await.map(|_| ())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        // postgres-es's streaming panics on a database error mid-stream; load instead.
        let events = self.get_events::<A>(aggregate_id).await?;
        replay(events).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(PersistenceError::UnknownError(
            "replaying every event of a type is done by the projector, not cqrs-es".into(),
        ))
    }
}

async fn replay(events: Vec<SerializedEvent>) -> Result<ReplayStream, PersistenceError> {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    for event in events {
        feed.push(Ok(event)).await?;
    }
    Ok(stream)
}
