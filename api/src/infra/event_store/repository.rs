//! postgres-es's repository, wrapped so that every event passes through the codec, and the
//! command side of one aggregate type built on it.

use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, CqrsFramework};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

use super::codec::EventCodec;

/// A tenant's command side for one aggregate type.
pub type Cqrs<A> = CqrsFramework<A, PersistedEventStore<CustosEventRepository, A>>;

/// postgres-es's `PostgresEventRepository`, wrapped so that every event passes through the
/// codec. Snapshots are not enabled (they would hold personal data in clear).
pub struct CustosEventRepository {
    inner: PostgresEventRepository,
    codec: EventCodec,
}

impl CustosEventRepository {
    pub fn new(pool: PgPool, codec: EventCodec) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool),
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
        let sealed = self.codec.seal_all(events.to_vec()).await?;
        self.inner.persist::<A>(&sealed, None).await
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
