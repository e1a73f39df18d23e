//! The event store: postgres-es's repository wrapped by ours. Every event written or read
//! passes through [`EventCodec`], the seam where personal content is encrypted and decrypted;
//! [`EventLog`] reads events with their global position, transaction and time, for the
//! projector and for history. No other code reads the `events` table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, CqrsFramework};

use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

/// A tenant's command side for one aggregate type.
pub type Cqrs<A> = CqrsFramework<A, PersistedEventStore<CustosEventRepository, A>>;

/// Turns domain payloads into stored payloads and back. Today the stored form is the domain
/// form; the privacy issue's encryption with each data subject's key goes here, so that
/// writes, aggregate loads, projections and history all see the same decrypted events.
#[derive(Debug, Clone, Default)]
pub struct EventCodec;

impl EventCodec {
    /// Domain payload → stored payload.
    pub fn seal(&self, event: SerializedEvent) -> Result<SerializedEvent, PersistenceError> {
        Ok(event)
    }

    /// Stored payload → domain payload.
    pub fn open(&self, event: SerializedEvent) -> Result<SerializedEvent, PersistenceError> {
        Ok(event)
    }
}

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

    fn open_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        events.into_iter().map(|e| self.codec.open(e)).collect()
    }
}

impl PersistedEventRepository for CustosEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.open_all(self.inner.get_events::<A>(aggregate_id).await?)
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
        let sealed = events
            .iter()
            .cloned()
            .map(|e| self.codec.seal(e))
            .collect::<Result<Vec<_>, _>>()?;
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

/// Where an event stands in commit order: the writing transaction, then the global position.
/// Projector checkpoints are positions; comparing them is comparing this pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub transaction_id: i64,
    pub global_position: i64,
}

impl Position {
    /// Reads the `transaction_id` (as bigint) and `global_position` columns of a row.
    pub fn from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            transaction_id: row.try_get("transaction_id")?,
            global_position: row.try_get("global_position")?,
        })
    }

    /// The position just past every event of every transaction below `horizon`.
    pub fn below(horizon: i64) -> Self {
        Self {
            transaction_id: horizon - 1,
            global_position: i64::MAX,
        }
    }
}

/// An event as stored, decoded by the codec, with what the database added.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: SerializedEvent,
    pub position: Position,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The metadata as cqrs-es wrote it.
    pub fn metadata(&self) -> HashMap<String, String> {
        serde_json::from_value(self.event.metadata.clone()).unwrap_or_default()
    }
}

const STORED_COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload, metadata, transaction_id::text::bigint AS transaction_id, global_position, recorded_at";

/// Reads events with their positions. All reads decode through the codec.
#[derive(Debug, Clone)]
pub struct EventLog {
    pool: PgPool,
    codec: EventCodec,
}

impl EventLog {
    pub fn new(pool: PgPool, codec: EventCodec) -> Self {
        Self { pool, codec }
    }

    fn decode(&self, row: &sqlx::postgres::PgRow) -> Result<StoredEvent, anyhow::Error> {
        let sequence: i64 = row.try_get("sequence")?;
        let event = SerializedEvent::new(
            row.try_get("aggregate_id")?,
            usize::try_from(sequence)?,
            row.try_get("aggregate_type")?,
            row.try_get("event_type")?,
            row.try_get("event_version")?,
            row.try_get("payload")?,
            row.try_get("metadata")?,
        );
        Ok(StoredEvent {
            event: self.codec.open(event)?,
            position: Position::from_row(row)?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }

    /// Every event of one aggregate, in sequence order.
    pub async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {STORED_COLUMNS} FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    /// The position of an aggregate's latest event: what a writer waits for the projector to
    /// pass before answering (read-your-writes).
    pub async fn head(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> sqlx::Result<Option<Position>> {
        let row = sqlx::query(
            "SELECT transaction_id::text::bigint AS transaction_id, global_position FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence DESC LIMIT 1",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Position::from_row).transpose()
    }

    /// The position of the newest event of an aggregate type, in commit order.
    pub async fn latest(&self, aggregate_type: &str) -> sqlx::Result<Option<Position>> {
        let row = sqlx::query(
            "SELECT transaction_id::text::bigint AS transaction_id, global_position FROM events
             WHERE aggregate_type = $1 ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
        )
        .bind(aggregate_type)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Position::from_row).transpose()
    }

    /// Appends the first event of many new streams in one transaction: all are written or
    /// none is. For bulk creation (imports), where going through the framework one aggregate at
    /// a time could stop half-way. Each event passes through the codec like any other; a
    /// stream that exists already makes the whole batch fail on the primary key.
    pub async fn append_new_streams(&self, events: Vec<SerializedEvent>) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(1_000) {
            let mut columns: [Vec<String>; 6] = Default::default();
            let mut sequences: Vec<i64> = Vec::with_capacity(chunk.len());
            for event in chunk {
                if event.sequence != 1 {
                    anyhow::bail!("only first events of new streams can be appended in bulk");
                }
                let event = self.codec.seal(event.clone())?;
                columns[0].push(event.aggregate_type);
                columns[1].push(event.aggregate_id);
                columns[2].push(event.event_type);
                columns[3].push(event.event_version);
                columns[4].push(serde_json::to_string(&event.payload)?);
                columns[5].push(serde_json::to_string(&event.metadata)?);
                sequences.push(1);
            }
            let [types, ids, event_types, versions, payloads, metadata] = columns;
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 SELECT t, i, s, e, v, p::json, m::json
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
                      AS u(t, i, s, e, v, p, m)",
            )
            .bind(types)
            .bind(ids)
            .bind(sequences)
            .bind(event_types)
            .bind(versions)
            .bind(payloads)
            .bind(metadata)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` events of `aggregate_type` recorded at or before `at`, after the global
    /// position `after`, in position order: history as it stood at a moment, read in batches.
    pub async fn until(
        &self,
        aggregate_type: &str,
        at: DateTime<Utc>,
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {STORED_COLUMNS} FROM events
             WHERE aggregate_type = $1 AND recorded_at <= $2 AND global_position > $3
             ORDER BY global_position LIMIT $4"
        ))
        .bind(aggregate_type)
        .bind(at)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    /// Up to `limit` events of `aggregate_types` after `after` in commit order, from
    /// transactions below `horizon` (the oldest transaction still running when the caller's
    /// statement began: everything below it is committed or rolled back). Reading by
    /// (transaction, position) below the horizon never skips an event whose transaction commits
    /// late, which reading by global position alone would.
    pub async fn after(
        &self,
        conn: &mut PgConnection,
        aggregate_types: &[&str],
        after: Position,
        horizon: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {STORED_COLUMNS} FROM events
             WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
               AND transaction_id < $3::text::xid8
               AND aggregate_type = ANY($4)
             ORDER BY transaction_id, global_position
             LIMIT $5"
        ))
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(horizon.to_string())
        .bind(aggregate_types)
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }
}
