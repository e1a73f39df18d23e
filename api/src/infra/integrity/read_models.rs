//! Read models against history (`custos verify --read-models`): each projection rebuilt from
//! the events into temporary tables of the same shape, up to the position its live read model
//! stands at, and compared row for row with the live tables in one snapshot. Nothing live is
//! written, and a running service keeps writing meanwhile. The same rebuild can also replace a
//! live read model's rows in one transaction (`custos projections rebuild`, [`rebuild`]).
//!
//! A temporary table shadows the table of the same name for this connection only (PostgreSQL
//! searches `pg_temp` first), so each projection's own SQL writes the copy.

use custos_projections::{ProjectedEvent, Projection, Table};
use sqlx::{PgConnection, Row};

use crate::infra::event_store::log::{EventLog, Position};
use crate::infra::projector::projected;

/// Events read and applied per round trip.
const BATCH: i64 = 5_000;
/// Primary keys named per differing table.
const EXAMPLES: i64 = 5;

/// How one table of a rebuilt read model differs from the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableDifference {
    pub(crate) projection: String,
    pub(crate) table: String,
    /// Rows the events give that the live table lacks (or holds otherwise).
    pub(crate) only_rebuilt: i64,
    /// Rows of the live table the events do not give.
    pub(crate) only_live: i64,
    /// The primary keys of a few differing rows (ids, never values).
    pub(crate) examples: Vec<String>,
}

/// What comparing every read model found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReadModelReport {
    pub(crate) projections: usize,
    pub(crate) tables: usize,
    /// Events applied, summed over the projections.
    pub(crate) events: i64,
    pub(crate) differences: Vec<TableDifference>,
}

/// Rebuilds each projection on `conn` (a connection to the tenant database) and compares it
/// with its live tables.
///
/// The replay runs in short transactions (each would otherwise hold back every projector's and
/// checkpoint's horizon for as long as it lasts), into temporary tables that live as long as
/// this session; events up to where the live read model stood at the start are committed and
/// never change. The comparison then runs in one snapshot: the live read model's position is
/// read again, the events since applied, and the tables compared.
pub(crate) async fn compare(
    conn: &mut PgConnection,
    log: &EventLog,
    projections: &[Box<dyn Projection>],
) -> anyhow::Result<ReadModelReport> {
    let mut report = ReadModelReport::default();
    for projection in projections {
        for table in projection.tables() {
            shadow(&mut *conn, table, Shadow::Compared).await?;
        }
        // Every write from here on runs in READ ONLY transactions, which PostgreSQL lets write
        // temporary tables only: a table a projection writes but does not list fails the
        // check instead of being changed.
        let mut tx = read_only(&mut *conn, "").await?;
        projection.reset(&mut tx).await?;
        let start = live_position(&mut tx, projection.name()).await?;
        tx.commit().await?;
        let mut at = Position::default();
        loop {
            let mut tx = read_only(&mut *conn, "").await?;
            let (applied, done) = replay(&mut tx, log, &**projection, &mut at, start).await?;
            tx.commit().await?;
            report.events += applied;
            if done {
                break;
            }
        }
        let mut tx = read_only(&mut *conn, "ISOLATION LEVEL REPEATABLE READ,").await?;
        let live = live_position(&mut tx, projection.name()).await?;
        while !replay(&mut tx, log, &**projection, &mut at, live).await?.1 {}
        // The day's scheduled changes, as the live projector takes them.
        projection
            .on_day(&mut tx, custos_projections::records::day_in_force())
            .await?;
        for table in projection.tables() {
            if let Some(difference) = differences(&mut tx, projection.name(), table).await? {
                report.differences.push(difference);
            }
            report.tables += 1;
        }
        tx.rollback().await?;
        for table in projection.tables() {
            sqlx::query(&format!("DROP TABLE pg_temp.\"{}\"", table.name))
                .execute(&mut *conn)
                .await?;
        }
        report.projections += 1;
    }
    Ok(report)
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events applied to the rebuilt tables.
    pub events: i64,
    /// Rows the live tables hold now, all tables together.
    pub rows: i64,
    /// Where the read model stood when the rebuilt rows replaced the live ones.
    pub at: Position,
    /// How long the replacing transaction ran (the last events applied and the rows copied):
    /// as long as every read model of the organisation stood still.
    pub held: std::time::Duration,
}

/// Rebuilds `projection` from the events into temporary tables of the same shape while the
/// live read model keeps serving and its projector keeps applying, then replaces the live
/// rows with the rebuilt ones in one transaction: a reader sees the old rows or the new ones,
/// never a mix or an empty table. While the rows are copied, every read model of the
/// organisation stands still (the transaction holds back the projectors' horizon), so
/// requests that wait for one wait that long. A subject erased meanwhile, or a reset of the
/// read model, refuses the replacement: nothing live changes.
///
/// The replay runs in short read-only transactions (as [`compare`]) up to where the live read
/// model stood at the start, each batch read and opened on another connection (of `log`'s
/// pool) while the one before is applied, into shadow tables without the indexes only reads
/// use and without computing generated columns: the live table builds both as the rebuilt rows
/// arrive. The replacing transaction then locks the projection's checkpoint
/// row — its projector, on any instance, skips a locked row (`FOR UPDATE SKIP LOCKED`) and
/// applies nothing meanwhile — applies the events since, and replaces the rows; the checkpoint
/// stays where it was, because the rebuilt tables stand exactly there.
pub async fn rebuild(
    conn: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
) -> anyhow::Result<Rebuilt> {
    for table in projection.tables() {
        shadow(&mut *conn, table, Shadow::Replacing).await?;
    }
    let replaced = async {
        let mut tx = read_only(&mut *conn, "").await?;
        projection.reset(&mut tx).await?;
        let erased_before = last_erasure(&mut tx).await?;
        tx.commit().await?;
        let mut events = 0;
        let mut at = Position::default();
        // Up to where the live read model stands, then once more up to where it stands after
        // that: the replacing transaction, which holds back every projector of the
        // organisation (its transaction id is below their horizon), applies only the last
        // moments' events.
        for _round in 0..2 {
            let mut tx = read_only(&mut *conn, "").await?;
            let target = live_position(&mut tx, projection.name()).await?;
            tx.commit().await?;
            events += replay_reading_ahead(&mut *conn, log, projection, &mut at, target).await?;
        }
        let holding = std::time::Instant::now();
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let live = Position::from_row(
            &sqlx::query(
                "SELECT transaction_id::text::bigint AS transaction_id, global_position
                 FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
            )
            .bind(projection.name())
            .fetch_one(&mut *tx)
            .await?,
        )?;
        // Values the rebuilt tables took from keys destroyed since (an erasure, or the erasure
        // ledger replayed after a restore, which also resets the read models) must not reach
        // the live tables.
        anyhow::ensure!(
            live >= at,
            "the read model was reset while it was rebuilt; nothing was replaced: run the rebuild again"
        );
        anyhow::ensure!(
            last_erasure(&mut tx).await? == erased_before,
            "a subject was erased while the read model was rebuilt; nothing was replaced: run the rebuild again"
        );
        loop {
            let (applied, done) = replay(&mut tx, log, projection, &mut at, live).await?;
            events += applied;
            if done {
                break;
            }
        }
        projection
            .on_day(&mut tx, custos_projections::records::day_in_force())
            .await?;
        let mut rows = 0;
        for table in projection.tables() {
            let name = table.name;
            let columns = columns(&mut tx, name, &[], true).await?;
            sqlx::query(&format!("DELETE FROM public.\"{name}\""))
                .execute(&mut *tx)
                .await?;
            rows += sqlx::query(&format!(
                "INSERT INTO public.\"{name}\" ({columns}) OVERRIDING SYSTEM VALUE
                 SELECT {columns} FROM pg_temp.\"{name}\""
            ))
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        }
        tx.commit().await?;
        Ok::<_, anyhow::Error>(Rebuilt {
            events,
            rows,
            at: live,
            held: holding.elapsed(),
        })
    }
    .await;
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS pg_temp.\"{}\"", table.name))
            .execute(&mut *conn)
            .await?;
    }
    replaced
}

/// When a subject key was last destroyed, if ever.
async fn last_erasure(
    conn: &mut PgConnection,
) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    sqlx::query_scalar("SELECT max(erased_at) FROM subject_keys")
        .fetch_one(conn)
        .await
}

/// A transaction that can write temporary tables only (`mode`: more transaction modes).
async fn read_only<'c>(
    conn: &'c mut PgConnection,
    mode: &str,
) -> sqlx::Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query(&format!("SET TRANSACTION {mode} READ ONLY"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Where the live read model of `projection` stands.
async fn live_position(conn: &mut PgConnection, projection: &str) -> sqlx::Result<Position> {
    Position::from_row(
        &sqlx::query(
            "SELECT transaction_id::text::bigint AS transaction_id, global_position
             FROM projection_checkpoints WHERE projection = $1",
        )
        .bind(projection)
        .fetch_one(conn)
        .await?,
    )
}

/// Applies the next batch of events after `at`, up to `until`, to the shadow tables; how many,
/// and whether every event up to `until` has been applied.
async fn replay(
    conn: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
    at: &mut Position,
    until: Position,
) -> anyhow::Result<(i64, bool)> {
    let (batch, done) = next_batch(&mut *conn, log, projection, at, until).await?;
    apply(conn, projection, &batch).await?;
    Ok((batch.len() as i64, done))
}

/// Applies every event after `at` up to `until` to the shadow tables on `conn`, a batch in
/// each read-only transaction, while a connection of `log`'s pool (which needs one to spare)
/// reads and opens the batch after it: the database applying one batch and this process
/// opening the next overlap. How many events were applied.
async fn replay_reading_ahead(
    conn: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
    at: &mut Position,
    until: Position,
) -> anyhow::Result<i64> {
    let (to_apply, read) = tokio::sync::mpsc::channel::<(Vec<ProjectedEvent>, Position)>(1);
    let from = *at;
    let reader = async move {
        let mut reading = log.pool().acquire().await?;
        let mut at = from;
        loop {
            let (batch, done) = next_batch(&mut reading, log, projection, &mut at, until).await?;
            // The applier stopped on an error of its own, which is the one reported.
            if to_apply.send((batch, at)).await.is_err() || done {
                return Ok::<_, anyhow::Error>(());
            }
        }
    };
    let applier = async {
        // Owned here, so an applier that stops drops it and the reader's next send fails
        // instead of waiting for room forever.
        let mut read = read;
        let mut applied = 0;
        while let Some((batch, last)) = read.recv().await {
            let mut tx = read_only(&mut *conn, "").await?;
            apply(&mut tx, projection, &batch).await?;
            tx.commit().await?;
            applied += batch.len() as i64;
            *at = last;
        }
        Ok::<_, anyhow::Error>(applied)
    };
    let (read, applied) = tokio::join!(reader, applier);
    let applied = applied?;
    read?;
    Ok(applied)
}

/// The events after `at` up to `until`, a batch of them opened and decoded, with `at` moved
/// past them; and whether every event up to `until` is among them or before.
async fn next_batch(
    conn: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
    at: &mut Position,
    until: Position,
) -> anyhow::Result<(Vec<ProjectedEvent>, bool)> {
    let events = log
        .after(
            conn,
            projection.aggregate_types(),
            *at,
            until.transaction_id.saturating_add(1),
            BATCH,
        )
        .await?;
    let mut done = (events.len() as i64) < BATCH;
    let mut batch = Vec::with_capacity(events.len());
    for stored in &events {
        if stored.position > until {
            done = true;
            break;
        }
        if let Some(event) = projected(stored)? {
            batch.push(event);
        }
        *at = stored.position;
    }
    Ok((batch, done))
}

/// Applies `batch` to the shadow tables as the projector applies it: set-based where the
/// projection writes that way.
async fn apply(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    batch: &[ProjectedEvent],
) -> sqlx::Result<()> {
    let batch: Vec<_> = batch.iter().collect();
    projection.apply_all(conn, &batch).await
}

/// What a shadow table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shadow {
    /// Compared with the live table column for column: generated columns are computed as
    /// the live table computes them.
    Compared,
    /// Its rows replace the live ones, which compute their generated columns themselves: in
    /// the shadow they are plain columns, left empty, and not computed at every change.
    Replacing,
}

/// A temporary table shaped like `table` (columns, defaults, constraints, and the indexes its
/// projection's statements use, not those only reads use: nothing reads the shadow but the
/// comparison, which reads all of it), with the live rows when a reset keeps them; dropped
/// when compared (or with the session).
pub async fn shadow(conn: &mut PgConnection, table: &Table, purpose: Shadow) -> sqlx::Result<()> {
    let name = table.name;
    let generated = match purpose {
        Shadow::Compared => "",
        Shadow::Replacing => " EXCLUDING GENERATED",
    };
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE \"{name}\" (LIKE public.\"{name}\" INCLUDING ALL{generated})"
    ))
    .execute(&mut *conn)
    .await?;
    if !table.read_indexes.is_empty() {
        // The copies of the live table's read indexes, known by their definitions: a copied
        // index has a name of its own, and its definition differs only up to `USING`.
        let copies: Vec<String> = sqlx::query_scalar(
            "SELECT format('pg_temp.%I', c.relname)
             FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
             WHERE i.indrelid = format('pg_temp.%I', $1::text)::regclass
               AND NOT EXISTS (SELECT FROM pg_constraint WHERE conindid = i.indexrelid)
               AND EXISTS (
                   SELECT FROM pg_index AS li JOIN pg_class AS lc ON lc.oid = li.indexrelid
                   WHERE li.indrelid = format('public.%I', $1::text)::regclass
                     AND lc.relname = ANY($2) AND li.indisunique = i.indisunique
                     AND regexp_replace(pg_get_indexdef(li.indexrelid), '^.*? USING ', '')
                       = regexp_replace(pg_get_indexdef(i.indexrelid), '^.*? USING ', ''))",
        )
        .bind(name)
        .bind(table.read_indexes)
        .fetch_all(&mut *conn)
        .await?;
        if !copies.is_empty() {
            sqlx::query(&format!("DROP INDEX {}", copies.join(", ")))
                .execute(&mut *conn)
                .await?;
        }
    }
    if table.kept_on_reset {
        let columns = columns(conn, name, &[], true).await?;
        sqlx::query(&format!(
            "INSERT INTO pg_temp.\"{name}\" ({columns}) OVERRIDING SYSTEM VALUE
             SELECT {columns} FROM public.\"{name}\""
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The live table's columns, quoted and comma-separated, without `left_out` (and, when
/// `writable`, without generated columns).
async fn columns(
    conn: &mut PgConnection,
    table: &str,
    left_out: &[&str],
    writable: bool,
) -> sqlx::Result<String> {
    let left_out: Vec<String> = left_out.iter().map(|c| (*c).to_owned()).collect();
    sqlx::query_scalar(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
         FROM pg_attribute
         WHERE attrelid = ('public.' || quote_ident($1))::regclass AND attnum > 0
           AND NOT attisdropped AND NOT (attname = ANY($2))
           AND (NOT $3 OR attgenerated = '')",
    )
    .bind(table)
    .bind(&left_out)
    .bind(writable)
    .fetch_one(conn)
    .await
}

/// The rows in which the rebuilt and the live `table` differ, if any.
async fn differences(
    conn: &mut PgConnection,
    projection: &str,
    table: &Table,
) -> sqlx::Result<Option<TableDifference>> {
    let name = table.name;
    let compared = columns(conn, name, table.incidental, false).await?;
    let key: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(quote_ident(a.attname) || '::text', ' || ''/'' || ' ORDER BY k.n)
         FROM pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = ('public.' || quote_ident($1))::regclass AND i.indisprimary",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    let key = key.unwrap_or_else(|| "'(no primary key)'".to_owned());
    let row = sqlx::query(&format!(
        "WITH rebuilt AS (SELECT {compared} FROM pg_temp.\"{name}\"),
              live AS (SELECT {compared} FROM public.\"{name}\"),
              only_rebuilt AS (TABLE rebuilt EXCEPT ALL TABLE live),
              only_live AS (TABLE live EXCEPT ALL TABLE rebuilt)
         SELECT (SELECT count(*) FROM only_rebuilt) AS only_rebuilt,
                (SELECT count(*) FROM only_live) AS only_live,
                ARRAY(SELECT DISTINCT {key} FROM (TABLE only_rebuilt UNION ALL TABLE only_live) AS d
                      ORDER BY 1 LIMIT {EXAMPLES}) AS examples"
    ))
    .fetch_one(&mut *conn)
    .await?;
    let (only_rebuilt, only_live): (i64, i64) =
        (row.try_get("only_rebuilt")?, row.try_get("only_live")?);
    let examples: Vec<String> = row.try_get("examples")?;
    Ok(
        (only_rebuilt > 0 || only_live > 0).then(|| TableDifference {
            projection: projection.to_owned(),
            table: name.to_owned(),
            only_rebuilt,
            only_live,
            examples,
        }),
    )
}
