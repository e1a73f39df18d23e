//! postgres-es's repository, wrapped so that every event passes through the codec, and the
//! command side of one aggregate type built on it, loading aggregates through a cache.

use std::any::Any;
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
    /// What the commands run inside [`noting_appends`] did, and how they load aggregates.
    static NOTED: Cell<Noted>;
}

/// Where an append landed, and the version it left its stream at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub position: Position,
    pub version: usize,
}

/// What the commands run inside [`noting_appends`] did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Noted {
    /// What the last append wrote; `None` when nothing was appended.
    pub appended: Option<Appended>,
    /// The version of a cached aggregate a command was decided on without reading its
    /// stream (see [`noting_appends`]); `None` when every aggregate was read up to date.
    pub unread: Option<usize>,
    /// Whether a cached aggregate's stream is read before it is used.
    read_streams: bool,
}

/// Runs `work` (commands through a tenant's [`Cqrs`]) and answers, with its output, what it
/// did: where its last append landed (what a writer waits for the read models to pass, known
/// without looking it up) and whether an aggregate was taken from the cache without reading
/// its stream.
///
/// With `read_streams` false, a cached aggregate is used as it is: its stream is not read for
/// events another instance may have appended since. An append decided on it that lands proves
/// it was current (the next sequence number was free); one that does not is a conflict. What
/// does not append — a refusal, a command that changes nothing — proves nothing, and the
/// caller checks the stream's version ([`Noted::unread`]) before it trusts the answer. Outside
/// this function, every cached aggregate's stream is read.
pub(crate) async fn noting_appends<F: Future>(read_streams: bool, work: F) -> (F::Output, Noted) {
    NOTED
        .scope(
            Cell::new(Noted {
                read_streams,
                ..Noted::default()
            }),
            async move {
                let output = work.await;
                (output, NOTED.with(Cell::get))
            },
        )
        .await
}

/// Notes `change` in the task's [`Noted`], when there is one.
fn note(change: impl FnOnce(&mut Noted)) -> Option<Noted> {
    NOTED
        .try_with(|cell| {
            let mut noted = cell.get();
            change(&mut noted);
            cell.set(noted);
            noted
        })
        .ok()
}

/// How many aggregates a tenant keeps in memory, of all types together.
const CACHED_AGGREGATES: usize = 1_024;
/// How long a cached aggregate is used and kept. Past this, its stream is read again and the
/// cached state is forgotten ([`AggregateCache::forget_stale`]): a subject erased through
/// another instance of the service leaves no values in this one's memory for much longer.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// An aggregate (of the type its key names) as it stood after its last commit in this process.
struct Cached {
    aggregate: Box<dyn Any + Send>,
    sequence: usize,
    at: Instant,
}

type Entries = lru::LruCache<(&'static str, String), Cached>;

/// A tenant's aggregates as this process last wrote them, so that loading one reads only the
/// events appended since (by another instance) instead of its whole stream. Kept in memory
/// only: stored snapshots would hold personal data in clear. Checked against the stream (by
/// reading the events appended since, or inside [`noting_appends`] by the append the command
/// makes), bounded (least recently used first out) and short-lived (see [`FRESH_FOR`]). It
/// lives as long as the tenant's open context, so a restored or moved database never meets an
/// aggregate cached from another.
///
/// The aggregate itself is kept, not a copy: a load takes it out and the commit puts the state
/// it leaves back, so a command costs the same however long the aggregate's history (a
/// record's timeline holds every change; copying or serialising it made each update of a
/// record cost more than the one before). A command that fails leaves nothing cached — its
/// aggregate may hold events it applied before failing — and the next load reads the stream.
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

    /// Takes an aggregate out, with its version, while fresh.
    fn take<A: Any>(&self, aggregate_type: &'static str, id: &str) -> Option<(A, usize)> {
        let cached = self.entries().pop(&(aggregate_type, id.to_owned()))?;
        if cached.at.elapsed() >= FRESH_FOR {
            return None;
        }
        let aggregate = cached.aggregate.downcast::<A>().ok()?;
        Some((*aggregate, cached.sequence))
    }

    /// Caches an aggregate, and forgets those no longer fresh.
    fn put<A: Any + Send>(
        &self,
        aggregate_type: &'static str,
        id: String,
        aggregate: A,
        sequence: usize,
    ) {
        let stale = {
            let mut entries = self.entries();
            entries.put(
                (aggregate_type, id),
                Cached {
                    aggregate: Box::new(aggregate),
                    sequence,
                    at: Instant::now(),
                },
            );
            Self::pop_stale(&mut entries)
        };
        drop(stale);
    }

    /// Forgets every aggregate cached [`FRESH_FOR`] ago or more: none would be used again, and
    /// the personal data a state holds stays in memory no longer than it may be used. Run on
    /// every [`Self::put`] and, for a tenant whose commands stopped, by a job
    /// (`jobs::forget_stale_aggregates`). Answers how many it forgot.
    pub(crate) fn forget_stale(&self) -> usize {
        let stale = Self::pop_stale(&mut self.entries());
        stale.len()
    }

    /// The least recently cached entries while stale. Only [`Self::put`] and [`Self::take`]
    /// touch the entries, so the least recently used is the least recently cached: the first
    /// fresh one ends the stale. The caller drops them after letting the lock go.
    fn pop_stale(entries: &mut Entries) -> Vec<Cached> {
        let mut stale = Vec::new();
        while entries
            .peek_lru()
            .is_some_and(|(_, cached)| cached.at.elapsed() >= FRESH_FOR)
        {
            stale.extend(entries.pop_lru().map(|(_, cached)| cached));
        }
        stale
    }
}

/// cqrs-es's event store on [`CustosEventRepository`], loading an aggregate from the tenant's
/// [`AggregateCache`] and the events written after the cached version (the whole stream on a
/// miss; inside [`noting_appends`], the cached version alone), and caching the state each
/// commit leaves.
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

impl<A: Aggregate + 'static> EventStore<A> for CachedEventStore<A> {
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
        let Some((aggregate, sequence)) = self.cache.take::<A>(A::TYPE, aggregate_id) else {
            return self.store.load_aggregate(aggregate_id).await;
        };
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            current_sequence: sequence,
            current_snapshot: None,
        };
        // Inside the command door, the command is decided on the cached state alone.
        let unread = note(|noted| {
            if !noted.read_streams {
                noted.unread = Some(sequence);
            }
        })
        .is_some_and(|noted| !noted.read_streams);
        if unread {
            return Ok(context);
        }
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
        let EventStoreAggregateContext {
            aggregate_id: id,
            aggregate,
            current_sequence,
            ..
        } = context;
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(current_sequence + 1..)
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
        let sequence = current_sequence + envelopes.len();
        let appended = self.log.append(serialized).await;
        // Another writer won the race (whose state may be cached now), or the write failed:
        // nothing of this one is kept, and a load without a cached state reads the stream.
        if let Ok(position) = &appended {
            self.cache.put(A::TYPE, id, aggregate, sequence);
            if let Some(position) = position {
                note(|noted| {
                    noted.appended = Some(Appended {
                        position: *position,
                        version: sequence,
                    });
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_aggregate_is_taken_out_once_and_only_as_its_own_type() {
        let cache = AggregateCache::default();
        cache.put("record", "r1".to_owned(), vec![1_u64, 2, 3], 3);
        assert_eq!(
            cache.take::<String>("record", "r1"),
            None,
            "another type is not taken for it"
        );
        // A failed downcast drops the entry: the stream is read instead.
        assert_eq!(cache.take::<Vec<u64>>("record", "r1"), None);

        cache.put("record", "r2".to_owned(), vec![4_u64], 7);
        assert_eq!(cache.take::<Vec<u64>>("user", "r2"), None, "keyed by type");
        assert_eq!(cache.take::<Vec<u64>>("record", "r2"), Some((vec![4], 7)));
        assert_eq!(
            cache.take::<Vec<u64>>("record", "r2"),
            None,
            "a command holds it until it commits"
        );
    }

    #[test]
    fn a_stale_aggregate_is_not_taken() {
        let cache = AggregateCache::default();
        cache.put("record", "r1".to_owned(), 1_u8, 1);
        cache
            .entries()
            .get_mut(&("record", "r1".to_owned()))
            .expect("cached")
            .at -= FRESH_FOR;
        assert_eq!(cache.take::<u8>("record", "r1"), None);
    }

    /// Ages an entry as if it had been cached [`FRESH_FOR`] ago (in place: `peek_mut` does not
    /// make it the most recently used).
    fn age(cache: &AggregateCache, id: &str) {
        cache
            .entries()
            .peek_mut(&("record", id.to_owned()))
            .expect("cached")
            .at -= FRESH_FOR;
    }

    #[test]
    fn a_stale_aggregate_is_forgotten_when_another_is_cached_or_by_the_sweep() {
        let cache = AggregateCache::default();
        cache.put("record", "old".to_owned(), 1_u8, 1);
        age(&cache, "old");
        cache.put("record", "new".to_owned(), 2_u8, 1);
        assert_eq!(cache.entries().len(), 1, "the stale one went with the put");
        assert!(cache.entries().contains(&("record", "new".to_owned())));

        // Without commands, the sweep forgets what went stale, and only that.
        cache.put("record", "kept".to_owned(), 3_u8, 1);
        age(&cache, "new");
        assert_eq!(cache.forget_stale(), 1);
        assert_eq!(cache.forget_stale(), 0);
        assert_eq!(cache.take::<u8>("record", "kept"), Some((3, 1)));
        assert_eq!(cache.entries().len(), 0);
    }
}
