//! Reading events with what the database added — global position, transaction, time — for
//! the projector and for history. Every read decodes through the codec; no other code reads
//! the `events` table.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::codec::EventCodec;
use crate::infra::subject_keys::OfferedKey;

/// Where an event stands in commit order: the writing transaction, then the global position.
/// Projector checkpoints are positions; comparing them is comparing this pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub transaction_id: i64,
    pub global_position: i64,
}

/// A text that is not a position.
#[derive(Debug, thiserror::Error)]
#[error("not a position: <transaction>.<global position>")]
pub struct NotAPosition;

impl FromStr for Position {
    type Err = NotAPosition;

    /// `<transaction>.<global position>`, as [`Position`]'s `Display` writes it.
    fn from_str(text: &str) -> Result<Self, NotAPosition> {
        let (transaction, global) = text.split_once('.').ok_or(NotAPosition)?;
        let part = |part: &str| {
            part.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0 && !part.starts_with('+'))
                .ok_or(NotAPosition)
        };
        Ok(Position {
            transaction_id: part(transaction)?,
            global_position: part(global)?,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.transaction_id, self.global_position)
    }
}

/// The `application_name` of a session that rebuilds read models, as a literal for `concat!`.
macro_rules! rebuilding {
    () => {
        "custos read-model rebuild"
    };
}

/// The `application_name` of a session that rebuilds read models: it never appends an event,
/// so [`HORIZON`] does not wait for its transactions.
pub const REBUILDING: &str = rebuilding!();

/// The commit-safe horizon of a statement, as a bigint: the oldest transaction *of this
/// database* still running when the statement's snapshot was taken (or the snapshot's end when
/// none is). Every event below it is committed or rolled back. Transaction ids are shared by
/// every database of a PostgreSQL server, so the snapshot's own `xmin` would let one
/// organisation's long transaction hold back the read models of every other organisation on
/// the server; a running transaction is skipped only when `pg_stat_activity` shows it belongs
/// to another database (one that ended meanwhile is kept: that only waits longer), or to a
/// session named [`REBUILDING`], which writes read models and never an event (a read model
/// rebuild replaying into and indexing its tables for tens of seconds must not stop every
/// projector of the organisation meanwhile).
pub(crate) const HORIZON: &str = concat!(
    "(SELECT COALESCE(
        (SELECT min(x) FROM pg_snapshot_xip(s) AS x
         WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                           WHERE a.backend_xid = xid(x)
                             AND (a.datname <> current_database()
                                  OR a.application_name = '",
    rebuilding!(),
    "'))),
        pg_snapshot_xmax(s))::text::bigint
    FROM pg_current_snapshot() AS s)"
);

impl Position {
    /// Reads the `transaction_id` (as bigint) and `global_position` columns of a row.
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            transaction_id: row.try_get("transaction_id")?,
            global_position: row.try_get("global_position")?,
        })
    }

    /// The position just past every event of every transaction below `horizon`.
    pub(crate) fn below(horizon: i64) -> Self {
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
    /// The metadata as cqrs-es wrote it (read from the stored value in place, not a copy).
    pub(crate) fn metadata(&self) -> HashMap<String, String> {
        HashMap::deserialize(&self.event.metadata).unwrap_or_default()
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
    pub(crate) fn new(pool: PgPool, codec: EventCodec) -> Self {
        Self { pool, codec }
    }

    /// The pool the log reads and appends through (the organisation's database).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
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
        self.stream_after(aggregate_type, aggregate_id, 0).await
    }

    /// The events of one aggregate after the version `sequence`, in sequence order (what a
    /// cached aggregate has not seen).
    pub(crate) async fn stream_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {STORED_COLUMNS} FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_all(&self.pool)
        .await?;
        self.decode(&rows).await
    }

    /// The position of an aggregate's latest event: what a writer waits for the projector to
    /// pass before answering (read-your-writes).
    pub(crate) async fn head(
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

    /// The sequence number of an aggregate's latest event (its version); 0 for no stream.
    pub(crate) async fn version(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> sqlx::Result<usize> {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await?;
        usize::try_from(version.unwrap_or(0)).map_err(|err| sqlx::Error::Decode(err.into()))
    }

    /// The position of the newest event, in commit order.
    pub(crate) async fn newest(&self) -> sqlx::Result<Option<Position>> {
        let row = sqlx::query(
            "SELECT transaction_id::text::bigint AS transaction_id, global_position FROM events
             ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
        )
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

    /// Appends the events of one command (sealed by the codec first) in one statement, its
    /// own transaction, and answers where the last one landed: what a writer waits for the
    /// read models to pass. `None` for no events. A sequence number taken by a concurrent
    /// writer is an optimistic lock error, as cqrs-es expects of a repository. A new subject's
    /// key is stored by the same statement ([`EventCodec::seal_for_append`]).
    pub(crate) async fn append(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Option<Position>, PersistenceError> {
        if events.is_empty() {
            return Ok(None);
        }
        let (events, offer) = self.codec.seal_for_append(events).await?;
        let Some(offer) = offer else {
            let landed = insert(&self.pool, &events, &[]).await;
            return Ok(landed.map_err(append_error)?.into_iter().max());
        };
        let landed = insert(&self.pool, &events, &offer.offered)
            .await
            .map_err(append_error)?;
        if !landed.is_empty() {
            self.codec.kept(offer);
            return Ok(landed.into_iter().max());
        }
        // A subject had a key already, or another writer stored one first: nothing was
        // written, and the events are sealed again with the stored keys.
        let events = self.codec.reseal(events, &offer).await?;
        let landed = insert(&self.pool, &events, &[]).await;
        Ok(landed.map_err(append_error)?.into_iter().max())
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
            insert(&mut *tx, chunk, &[]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` events of `aggregate_types` after `after` in commit order, from
    /// transactions below `horizon` (see [`HORIZON`]: everything below it is committed or
    /// rolled back). Reading by
    /// (transaction, position) below the horizon never skips an event whose transaction commits
    /// late, which reading by global position alone would.
    pub(crate) async fn after(
        &self,
        conn: &mut PgConnection,
        aggregate_types: &[&str],
        after: Position,
        horizon: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows = sqlx::query(&events_after())
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

/// The statement of [`EventLog::after`]: `$1`, `$2` the position after which, `$3` the
/// horizon, `$4` the aggregate types, `$5` the limit.
///
/// One ordered range scan of `events_by_type_commit_order` per type, merged. The two
/// comparisons say the same; each is there for PostgreSQL 15. The one over (transaction,
/// position) is where the index scan starts within the type (beside the type's equality, the
/// btree drops a comparison that begins with the type). The one over all three columns cannot
/// be checked in `events_commit_order`: without it the planner chose that index, filtered by
/// type, for a large backlog, reading every later event for each type that has none (a
/// catch-up's every batch read the whole backlog: 0.25-1.2 s a batch at 1,000,000 events).
pub fn events_after() -> String {
    format!(
        "SELECT e.* FROM unnest($4::text[]) AS t(aggregate_type)
         CROSS JOIN LATERAL (
             SELECT {STORED_COLUMNS} FROM events
             WHERE events.aggregate_type = t.aggregate_type
               AND (transaction_id, global_position) > ($1::text::xid8, $2)
               AND (events.aggregate_type, transaction_id, global_position)
                   > (t.aggregate_type, $1::text::xid8, $2)
               AND transaction_id < $3::text::xid8
             ORDER BY events.transaction_id, events.global_position
             LIMIT $5
         ) AS e
         ORDER BY e.transaction_id, e.global_position
         LIMIT $5"
    )
}

/// Inserts events in their order with one statement over arrays (the hash chain's trigger sees
/// the rows inserted before each), answering the position of each. With `keys`, the same
/// statement first stores each offered subject key, and inserts the events only if every one
/// was stored (a subject that has a key keeps it): otherwise it writes nothing and answers no
/// position.
async fn insert<'e>(
    db: impl sqlx::PgExecutor<'e>,
    events: &[SerializedEvent],
    keys: &[OfferedKey],
) -> Result<Vec<Position>, sqlx::Error> {
    let mut texts: [Vec<String>; 6] = Default::default();
    let mut sequences = Vec::with_capacity(events.len());
    for event in events {
        texts[0].push(event.aggregate_type.clone());
        texts[1].push(event.aggregate_id.clone());
        texts[2].push(event.event_type.clone());
        texts[3].push(event.event_version.clone());
        texts[4].push(event.payload.to_string());
        texts[5].push(event.metadata.to_string());
        sequences.push(i64::try_from(event.sequence).map_err(|e| sqlx::Error::Encode(e.into()))?);
    }
    let [types, ids, event_types, versions, payloads, metadata] = texts;
    const INSERT: &str =
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT t, i, s, e, v, p::json, m::json
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
              WITH ORDINALITY AS u(t, i, s, e, v, p, m, n)";
    const RETURNING: &str =
        "ORDER BY n RETURNING transaction_id::text::bigint AS transaction_id, global_position";
    let statement = if keys.is_empty() {
        format!("{INSERT} {RETURNING}")
    } else {
        format!(
            "WITH stored AS (
                 INSERT INTO subject_keys (subject_id, wrapped_key)
                 SELECT * FROM unnest($8::uuid[], $9::bytea[])
                 ON CONFLICT (subject_id) DO NOTHING
                 RETURNING subject_id)
             {INSERT}
             WHERE (SELECT count(*) FROM stored) = cardinality($8::uuid[])
             {RETURNING}"
        )
    };
    let mut query = sqlx::query(&statement)
        .bind(types)
        .bind(ids)
        .bind(sequences)
        .bind(event_types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata);
    if !keys.is_empty() {
        let (subjects, wrapped): (Vec<Uuid>, Vec<&[u8]>) = keys
            .iter()
            .map(|key| (key.subject, key.wrapped.as_slice()))
            .unzip();
        query = query.bind(subjects).bind(wrapped);
    }
    let rows = query.fetch_all(db).await?;
    rows.iter().map(Position::from_row).collect()
}

/// A failed append as cqrs-es expects a repository to report it: a taken sequence number is
/// an optimistic lock error (the command is retried or refused as a conflict), a lost or
/// unreachable database a connection error (`UNAVAILABLE`), anything else unexpected.
fn append_error(err: sqlx::Error) -> PersistenceError {
    match &err {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => PersistenceError::ConnectionError(Box::new(err)),
        _ => PersistenceError::UnknownError(Box::new(err)),
    }
}
