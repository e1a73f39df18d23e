//! The event store: postgres-es's repository wrapped by ours. Every event written or read
//! passes through [`EventCodec`], the seam where personal content is encrypted and decrypted;
//! [`EventLog`] reads events with their global position, transaction and time, for the
//! projector and for history. No other code reads the `events` table.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, CqrsFramework};
use custos_domain::{Consents, Record, User};
use postgres_es::PostgresEventRepository;
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::subject_keys::{self, KeyError, SubjectKeys};

/// A tenant's command side for one aggregate type.
pub type Cqrs<A> = CqrsFramework<A, PersistedEventStore<CustosEventRepository, A>>;

/// Turns domain payloads into stored payloads and back. Events of data subjects (records and
/// users) are sealed with the subject's own key (XChaCha20-Poly1305, bound to the event's
/// stream and sequence): what stays in clear is the event type (a column), the metadata (ids
/// only), the datasheet and the names of the fields the event carries. Writes, aggregate loads,
/// projections and history all pass through here, so they all see the same opened events.
#[derive(Clone)]
pub struct EventCodec {
    keys: Arc<SubjectKeys>,
    /// False only in `custos bench --suite privacy`, which measures what sealing costs by
    /// writing the same commands unsealed into its own scratch tenant.
    seal: bool,
}

impl std::fmt::Debug for EventCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventCodec")
    }
}

/// Aggregate types whose streams are about one data subject, named by the stream's id: a
/// record, a user, and a record's consent register.
const SUBJECTS: [&str; 3] = [Record::TYPE, User::TYPE, Consents::TYPE];

/// Events of data subjects that carry no personal value (ids, flags, the erasure itself): they
/// stay in clear, so they read the same after an erasure.
const CLEAR_EVENTS: [&str; 7] = [
    "UserErased",
    "RecordArchived",
    "RecordRestored",
    "ApplicantHired",
    "RecordErased",
    "RecordRestricted",
    "RestrictionLifted",
];

fn unknown(err: impl std::error::Error + Send + Sync + 'static) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(err))
}

fn key_error(err: KeyError) -> PersistenceError {
    match err {
        KeyError::Database(err) => PersistenceError::ConnectionError(Box::new(err)),
        other => unknown(other),
    }
}

/// What stays readable of a sealed payload: its datasheet and the names of its fields.
fn clear_summary(payload: &Value) -> Value {
    let Some((_, body)) = payload.as_object().and_then(|m| m.iter().next()) else {
        return Value::Null;
    };
    let Some(body) = body.as_object() else {
        return Value::Null;
    };
    let mut clear = serde_json::Map::new();
    if let Some(datasheet) = body.get("datasheet") {
        clear.insert("datasheet".into(), datasheet.clone());
    }
    let nested: Vec<&str> = ["fields", "changes"]
        .iter()
        .filter_map(|key| body.get(*key).and_then(Value::as_object))
        .flat_map(|map| map.keys().map(String::as_str))
        .collect();
    let names: Vec<Value> = if nested.is_empty() {
        body.keys()
            .filter(|k| k.as_str() != "datasheet")
            .map(|k| Value::String(k.clone()))
            .collect()
    } else {
        nested
            .into_iter()
            .map(|k| Value::String(k.to_owned()))
            .collect()
    };
    clear.insert("fields".into(), Value::Array(names));
    Value::Object(clear)
}

fn binding(event: &SerializedEvent) -> Vec<u8> {
    format!(
        "custos/event/{}/{}/{}",
        event.aggregate_type, event.aggregate_id, event.sequence
    )
    .into_bytes()
}

/// The subject whose key seals this event, if its payload has content to seal.
fn subject_of(event: &SerializedEvent) -> Option<Uuid> {
    if !SUBJECTS.contains(&event.aggregate_type.as_str())
        || !event.payload.is_object()
        || CLEAR_EVENTS.contains(&event.event_type.as_str())
    {
        return None;
    }
    Uuid::try_parse(&event.aggregate_id).ok()
}

/// What a record event whose subject was erased reads as: the same event, every value it
/// carried replaced by the erased marker. `None` for events that cannot be read without their
/// values.
fn erased_payload(event: &SerializedEvent) -> Option<Value> {
    let clear = event.payload.get("clear")?;
    let names = clear.get("fields")?.as_array()?;
    let values: serde_json::Map<String, Value> = names
        .iter()
        .filter_map(Value::as_str)
        .map(|name| (name.to_owned(), custos_domain::record::erased_marker()))
        .collect();
    if event.aggregate_type == User::TYPE || event.aggregate_type == Consents::TYPE {
        // A user's or a register's events cannot stand without their values: each reads as
        // `Redacted`.
        return Some(Value::String("Redacted".into()));
    }
    let datasheet = clear.get("datasheet")?.clone();
    let key = match (event.aggregate_type.as_str(), event.event_type.as_str()) {
        (Record::TYPE, "RecordCreated") => "fields",
        (Record::TYPE, "RecordUpdated") => "changes",
        _ => return None,
    };
    Some(serde_json::json!({ event.event_type.clone(): { "datasheet": datasheet, key: values } }))
}

fn sealed_part(event: &SerializedEvent) -> Option<&str> {
    event.payload.get("sealed").and_then(Value::as_str)
}

/// The subjects whose keys open these events, each once.
fn sealed_subjects(events: &[SerializedEvent]) -> Vec<Uuid> {
    let mut subjects: Vec<Uuid> = events
        .iter()
        .filter(|e| sealed_part(e).is_some())
        .filter_map(|e| Uuid::try_parse(&e.aggregate_id).ok())
        .collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

impl EventCodec {
    pub fn new(keys: Arc<SubjectKeys>) -> Self {
        Self { keys, seal: true }
    }

    /// A codec that writes events unsealed (and reads like any other): for the benchmark
    /// that measures sealing's cost, never for a tenant's own event store.
    pub fn unsealed(keys: Arc<SubjectKeys>) -> Self {
        Self { keys, seal: false }
    }

    /// Domain payloads → stored payloads.
    pub async fn seal_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let mut subjects: Vec<Uuid> = events.iter().filter_map(subject_of).collect();
        subjects.sort();
        subjects.dedup();
        if subjects.is_empty() || !self.seal {
            return Ok(events);
        }
        let keys = self.keys.for_writing(&subjects).await.map_err(key_error)?;
        events
            .into_iter()
            .map(|mut event| {
                let Some(subject) = subject_of(&event) else {
                    return Ok(event);
                };
                let key = keys
                    .get(&subject)
                    .ok_or_else(|| unknown(KeyError::Erased))?;
                let plain = serde_json::to_vec(&event.payload).map_err(unknown)?;
                let sealed = subject_keys::seal(key.expose_secret(), &plain, &binding(&event));
                event.payload = serde_json::json!({
                    "sealed": STANDARD.encode(sealed),
                    "clear": clear_summary(&event.payload),
                });
                Ok(event)
            })
            .collect()
    }

    /// Stored payloads → domain payloads. Events written before sealing existed pass through.
    pub async fn open_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let subjects = sealed_subjects(&events);
        if subjects.is_empty() {
            return Ok(events);
        }
        let keys = self.keys.for_reading(&subjects).await.map_err(key_error)?;
        Self::open_with(events, &keys)
    }

    /// [`Self::open_all`], reading the keys on a connection the caller holds.
    pub async fn open_all_on(
        &self,
        conn: &mut PgConnection,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let subjects = sealed_subjects(&events);
        if subjects.is_empty() {
            return Ok(events);
        }
        let keys = self
            .keys
            .for_reading_on(conn, &subjects)
            .await
            .map_err(key_error)?;
        Self::open_with(events, &keys)
    }

    fn open_with(
        events: Vec<SerializedEvent>,
        keys: &HashMap<Uuid, subject_keys::DataKey>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        events
            .into_iter()
            .map(|mut event| {
                let Some(sealed) = sealed_part(&event) else {
                    return Ok(event);
                };
                let subject = Uuid::try_parse(&event.aggregate_id).map_err(unknown)?;
                let Some(key) = keys.get(&subject) else {
                    event.payload =
                        erased_payload(&event).ok_or_else(|| unknown(KeyError::Erased))?;
                    return Ok(event);
                };
                let bytes = STANDARD.decode(sealed).map_err(unknown)?;
                let plain = subject_keys::open(key.expose_secret(), &bytes, &binding(&event))
                    .ok_or_else(|| unknown(KeyError::Unwrap))?;
                event.payload = serde_json::from_slice(&plain)
                    .map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?;
                Ok(event)
            })
            .collect()
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

    /// Rows as stored events, opened through the codec in one batch (on `conn` when given).
    async fn decode(
        &self,
        rows: &[sqlx::postgres::PgRow],
    ) -> Result<Vec<StoredEvent>, anyhow::Error> {
        self.decode_on(None, rows).await
    }

    async fn decode_on(
        &self,
        conn: Option<&mut PgConnection>,
        rows: &[sqlx::postgres::PgRow],
    ) -> Result<Vec<StoredEvent>, anyhow::Error> {
        let mut events = Vec::with_capacity(rows.len());
        let mut places = Vec::with_capacity(rows.len());
        for row in rows {
            let sequence: i64 = row.try_get("sequence")?;
            events.push(SerializedEvent::new(
                row.try_get("aggregate_id")?,
                usize::try_from(sequence)?,
                row.try_get("aggregate_type")?,
                row.try_get("event_type")?,
                row.try_get("event_version")?,
                row.try_get("payload")?,
                row.try_get("metadata")?,
            ));
            places.push((Position::from_row(row)?, row.try_get("recorded_at")?));
        }
        let opened = match conn {
            Some(conn) => self.codec.open_all_on(conn, events).await?,
            None => self.codec.open_all(events).await?,
        };
        Ok(opened
            .into_iter()
            .zip(places)
            .map(|(event, (position, recorded_at))| StoredEvent {
                event,
                position,
                recorded_at,
            })
            .collect())
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
        self.decode(&rows).await
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
        if events.iter().any(|event| event.sequence != 1) {
            anyhow::bail!("only first events of new streams can be appended in bulk");
        }
        let events = self.codec.seal_all(events).await?;
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(1_000) {
            let mut columns: [Vec<String>; 6] = Default::default();
            for event in chunk {
                columns[0].push(event.aggregate_type.clone());
                columns[1].push(event.aggregate_id.clone());
                columns[2].push(event.event_type.clone());
                columns[3].push(event.event_version.clone());
                columns[4].push(serde_json::to_string(&event.payload)?);
                columns[5].push(serde_json::to_string(&event.metadata)?);
            }
            let [types, ids, event_types, versions, payloads, metadata] = columns;
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 SELECT t, i, 1, e, v, p::json, m::json
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                      AS u(t, i, e, v, p, m)",
            )
            .bind(types)
            .bind(ids)
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
        self.decode(&rows).await
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
        // One ordered range scan of `events_by_type_commit_order` per type, merged.
        let rows = sqlx::query(&format!(
            "SELECT e.* FROM unnest($4::text[]) AS t(aggregate_type)
             CROSS JOIN LATERAL (
                 SELECT {STORED_COLUMNS} FROM events
                 WHERE events.aggregate_type = t.aggregate_type
                   AND (transaction_id, global_position) > ($1::text::xid8, $2)
                   AND transaction_id < $3::text::xid8
                 ORDER BY events.transaction_id, events.global_position
                 LIMIT $5
             ) AS e
             ORDER BY e.transaction_id, e.global_position
             LIMIT $5"
        ))
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(horizon.to_string())
        .bind(aggregate_types)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        self.decode_on(Some(conn), &rows).await
    }
}
