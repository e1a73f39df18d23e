//! Read models against history (`custos verify --read-models`): each projection rebuilt from
//! the events into temporary tables of the same shape, up to the position its live read model
//! stands at, and compared row for row with the live tables in one snapshot. Nothing live is
//! written, and a running service keeps writing meanwhile. The same replay can also build a
//! read model's replacement beside it and swap it in (`custos projections rebuild`,
//! [`rebuild`]).
//!
//! A temporary table shadows the table of the same name for this connection only (PostgreSQL
//! searches `pg_temp` first), so each projection's own SQL writes the copy; a replacement table
//! is found the same way, by the search path of the transactions that write it.

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
            shadow(&mut *conn, table).await?;
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
        replay_to(&mut tx, log, &**projection, &mut at, live).await?;
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
    /// Where the read model stood when the rebuilt tables replaced the live ones.
    pub at: Position,
    /// How long the swapping transaction ran (the last events applied and the tables
    /// swapped): as long as the read model stood still for its projector and its readers.
    pub held: std::time::Duration,
}

/// The schema in which [`rebuild`] builds a read model's replacement tables (tenant migration
/// 0035): the service's role has no access to it.
const REPLACEMENTS: &str = "custos_rebuild";
/// The class of the session lock a rebuild of one read model holds (with the hash of its name).
pub const REBUILD_LOCK: i32 = 0x6375_0009;
/// How long the swap waits for the live tables (a long read holding them) before it lets the
/// statements queued behind it through, and how many times it tries.
const SWAP_LOCK_TIMEOUT: &str = "2s";
const SWAP_ATTEMPTS: u32 = 5;

/// Rebuilds `projection` from the events beside the live read model, which keeps serving and
/// whose projector keeps applying, then swaps the rebuilt tables in for the live ones in one
/// transaction: a reader sees the old rows or the new ones, never a mix or an empty table.
/// Only the swap stops the read model (its projector and the statements that read it wait for
/// it); a subject erased meanwhile, or a reset of the read model, refuses it, and nothing live
/// changes. One rebuild of a read model runs at a time in an organisation.
///
/// - The replay writes tables shaped like the live ones in the `custos_rebuild` schema, made
///   unlogged and without the indexes only reads use. It runs in short transactions up to
///   where the live read model stood at the start, each batch read and opened on another
///   connection (of `log`'s pool, which needs one to spare) while the one before is applied; a
///   transaction that wrote, or changed, any other table fails.
/// - The replacements are then logged (written to the WAL page by page), get the live tables'
///   read indexes (built once, not row by row) and statistics. The session is named
///   [`REBUILDING`](crate::infra::event_store::log::REBUILDING): it never appends an event, so
///   these long transactions hold back no projector.
/// - The events since are applied to them; then the swapping transaction locks the read
///   model's checkpoint row (its projector, on any instance, skips a locked row and applies
///   nothing meanwhile), applies the last events, and replaces each live table by its rebuilt
///   one, which takes the live table's name, privileges, owner and identity counters. The
///   checkpoint stays where it was: the rebuilt tables stand exactly there.
///
/// A table the swap could not carry everything of (row-level or disabled triggers, row
/// security, storage options, foreign keys, column privileges) is refused before anything is
/// built. What a rebuild that did not finish left in `custos_rebuild` is removed by the next
/// one and when the service starts ([`remove_unfinished`]).
async fn rebuild(
    conn: &mut PgConnection,
    helper: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
) -> anyhow::Result<Rebuilt> {
    anyhow::ensure!(
        try_rebuild_lock(&mut *conn, projection).await?,
        "a rebuild of the {} read model is already running for this organisation",
        projection.name()
    );
    let rebuilt = rebuild_locked(&mut *conn, helper, log, projection).await;
    let mut cleanup = Ok(());
    for table in projection.tables() {
        let dropped = sqlx::query(&format!(
            "DROP TABLE IF EXISTS {REPLACEMENTS}.\"{name}\"",
            name = table.name
        ))
        .execute(&mut *conn)
        .await;
        cleanup = cleanup.and(dropped.map(|_| ()));
    }
    let rebuilt = rebuilt?;
    cleanup?;
    Ok(rebuilt)
}

/// Takes the session lock of rebuilds of `projection` on `conn`'s database, unless another
/// session holds it.
async fn try_rebuild_lock(
    conn: &mut PgConnection,
    projection: &dyn Projection,
) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(REBUILD_LOCK)
        .bind(projection.name())
        .fetch_one(conn)
        .await
}

/// [`rebuild`], its lock held.
async fn rebuild_locked(
    conn: &mut PgConnection,
    helper: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
) -> anyhow::Result<Rebuilt> {
    for table in projection.tables() {
        refuse_what_a_swap_loses(&mut *conn, table.name).await?;
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {REPLACEMENTS}.\"{}\"",
            table.name
        ))
        .execute(&mut *conn)
        .await?;
        replacement(&mut *conn, table).await?;
    }
    let mut tx = writing_replacements(&mut *conn).await?;
    projection.reset(&mut tx).await?;
    let erased_before = last_erasure(&mut tx).await?;
    refuse_live_writes(&mut tx, projection).await?;
    tx.commit().await?;
    let mut events = 0;
    let mut at = Position::default();
    let phase = std::time::Instant::now();
    // Up to where the live read model stands, then once more up to where it stands after
    // that, so that the read indexes are built from nearly the live position.
    for _round in 0..2 {
        let mut tx = read_only(&mut *conn, "").await?;
        let target = live_position(&mut tx, projection.name()).await?;
        tx.commit().await?;
        events += replay_reading_ahead(&mut *conn, log, projection, &mut at, target).await?;
    }
    tracing::debug!(
        projection = projection.name(),
        events,
        seconds = phase.elapsed().as_secs_f64(),
        "rebuild: replayed into the replacements"
    );
    for table in projection.tables() {
        finish_replacement(&mut *conn, &mut *helper, table).await?;
    }
    // The events applied while the replacements' read indexes were built.
    let phase = std::time::Instant::now();
    let mut tx = writing_replacements(&mut *conn).await?;
    let target = live_position(&mut tx, projection.name()).await?;
    let caught_up = replay_to(&mut tx, log, projection, &mut at, target).await?;
    events += caught_up;
    refuse_live_writes(&mut tx, projection).await?;
    tx.commit().await?;
    tracing::debug!(
        projection = projection.name(),
        events = caught_up,
        seconds = phase.elapsed().as_secs_f64(),
        "rebuild: caught up in the replacements"
    );
    // A long read of a live table (an export) would keep the swap waiting, and every
    // statement that reads the table after it in the queue: the swap gives up after a moment,
    // lets them through, and tries again.
    for attempt in 1..=SWAP_ATTEMPTS {
        let mut from = at;
        if let Some(swapped_in) =
            hold_and_swap(&mut *conn, log, projection, &mut from, erased_before).await?
        {
            return Ok(Rebuilt {
                events: events + swapped_in.events,
                ..swapped_in
            });
        }
        if attempt < SWAP_ATTEMPTS {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    anyhow::bail!(
        "the live tables of {} stayed in use (a long read) at each of {SWAP_ATTEMPTS} tries to swap them; nothing was replaced: run the rebuild again",
        projection.name()
    )
}

/// The swapping transaction: from `at`, the events up to the live read model's position
/// applied to the replacements, which then replace the live tables; the events it applied,
/// the rows, the position, and how long it held the read model. `None` when the live tables
/// stayed in use for [`SWAP_LOCK_TIMEOUT`] (nothing changed).
async fn hold_and_swap(
    conn: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
    at: &mut Position,
    erased_before: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<Option<Rebuilt>> {
    let holding = std::time::Instant::now();
    let mut tx = writing_replacements(&mut *conn).await?;
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
    // ledger replayed after a restore, which also resets the read models) must not reach the
    // live tables.
    anyhow::ensure!(
        live >= *at,
        "the read model was reset while it was rebuilt; nothing was replaced: run the rebuild again"
    );
    anyhow::ensure!(
        last_erasure(&mut tx).await? == erased_before,
        "a subject was erased while the read model was rebuilt; nothing was replaced: run the rebuild again"
    );
    let events = replay_to(&mut tx, log, projection, at, live).await?;
    projection
        .on_day(&mut tx, custos_projections::records::day_in_force())
        .await?;
    refuse_live_writes(&mut tx, projection).await?;
    let names: Vec<String> = projection
        .tables()
        .iter()
        .map(|table| format!("public.\"{}\"", table.name))
        .collect();
    sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    let locked = sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        names.join(", ")
    ))
    .execute(&mut *tx)
    .await;
    match locked {
        // Waited too long, or chosen to give way in a deadlock.
        Err(err)
            if matches!(
                err.as_database_error().and_then(|e| e.code()).as_deref(),
                Some("55P03" | "40P01")
            ) =>
        {
            tx.rollback().await?;
            return Ok(None);
        }
        locked => {
            locked?;
        }
    }
    let locked_at = holding.elapsed();
    for table in projection.tables() {
        swap(&mut tx, table.name).await?;
    }
    let swapped_at = holding.elapsed();
    tx.commit().await?;
    let held = holding.elapsed();
    tracing::debug!(
        projection = projection.name(),
        events,
        locked = locked_at.as_secs_f64(),
        swapped = (swapped_at - locked_at).as_secs_f64(),
        committed = (held - swapped_at).as_secs_f64(),
        "rebuild: swapped"
    );
    // Counted once the read model moves again.
    let mut rows = 0;
    for table in projection.tables() {
        rows += sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM public.\"{}\"",
            table.name
        ))
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(Some(Rebuilt {
        events,
        rows,
        at: live,
        held,
    }))
}

/// A transaction whose unqualified table names find the replacement tables first.
async fn writing_replacements(
    conn: &mut PgConnection,
) -> sqlx::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query(&format!("SET LOCAL search_path = {REPLACEMENTS}, public"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Fails a transaction that wrote `projection`'s replacements when it also wrote, or changed
/// the definition of, anything else (a projection that writes a table it does not list):
/// every relation it holds a lock stronger than a read's or a `FOR UPDATE`'s on must be one of
/// the replacements, or their TOAST tables, indexes and identity counters. Locks are held to
/// the end of the transaction and count `TRUNCATE`, DDL and `nextval` as well as rows.
async fn refuse_live_writes(
    tx: &mut PgConnection,
    projection: &dyn Projection,
) -> anyhow::Result<()> {
    let listed: Vec<&str> = projection.tables().iter().map(|table| table.name).collect();
    let written: Option<String> = sqlx::query_scalar(&format!(
        "WITH listed AS (
             SELECT oid, reltoastrelid FROM pg_class
             WHERE relnamespace = '{REPLACEMENTS}'::regnamespace AND relname = ANY($1)
         ), allowed AS (
             SELECT oid FROM listed
             UNION ALL SELECT reltoastrelid FROM listed
             UNION ALL SELECT indexrelid FROM pg_index
                 WHERE indrelid IN (SELECT oid FROM listed UNION ALL SELECT reltoastrelid FROM listed)
             UNION ALL SELECT objid FROM pg_depend
                 WHERE classid = 'pg_class'::regclass AND refclassid = 'pg_class'::regclass
                   AND refobjid IN (SELECT oid FROM listed) AND deptype IN ('a', 'i')
         )
         -- An index, a TOAST table and its index by their table's name.
         SELECT string_agg(DISTINCT CASE WHEN n.nspname = 'public' THEN c.relname::text
                                         ELSE coalesce(n.nspname || '.' || c.relname,
                                                       l.relation::text) END, ', ')
         FROM pg_locks AS l
         LEFT JOIN pg_index AS i ON i.indexrelid = l.relation
         LEFT JOIN pg_class AS toasted ON toasted.reltoastrelid = coalesce(i.indrelid, l.relation)
         LEFT JOIN pg_class AS c ON c.oid = coalesce(toasted.oid, i.indrelid, l.relation)
         LEFT JOIN pg_namespace AS n ON n.oid = c.relnamespace
         WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'
           AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')
           AND l.relation NOT IN (SELECT oid FROM allowed)"
    ))
    .bind(&listed)
    .fetch_one(tx)
    .await?;
    match written {
        Some(tables) => anyhow::bail!(
            "the projection wrote {tables}, which it does not list as its tables; nothing was replaced"
        ),
        None => Ok(()),
    }
}

/// Refuses a live table with what a swap would not carry over to its replacement.
async fn refuse_what_a_swap_loses(conn: &mut PgConnection, table: &str) -> anyhow::Result<()> {
    let lost: Vec<String> = sqlx::query_scalar(
        "WITH t AS (SELECT format('public.%I', $1::text)::regclass AS oid)
         SELECT 'row-level or disabled triggers' FROM t WHERE EXISTS
             (SELECT FROM pg_trigger WHERE tgrelid = t.oid AND NOT tgisinternal
              AND (tgtype & 1 = 1 OR tgenabled <> 'O'))
         UNION ALL SELECT 'row security' FROM t JOIN pg_class c ON c.oid = t.oid
             WHERE c.relrowsecurity OR EXISTS (SELECT FROM pg_policy WHERE polrelid = t.oid)
         UNION ALL SELECT 'storage options' FROM t JOIN pg_class c ON c.oid = t.oid
             WHERE c.reloptions IS NOT NULL
         UNION ALL SELECT 'foreign keys' FROM t WHERE EXISTS
             (SELECT FROM pg_constraint WHERE contype = 'f'
              AND (conrelid = t.oid OR confrelid = t.oid))
         UNION ALL SELECT 'column privileges' FROM t WHERE EXISTS
             (SELECT FROM pg_attribute WHERE attrelid = t.oid AND attacl IS NOT NULL)",
    )
    .bind(table)
    .fetch_all(conn)
    .await?;
    anyhow::ensure!(
        lost.is_empty(),
        "the table {table} has {}, which a rebuild does not carry over to the rebuilt table; nothing was rebuilt",
        lost.join(" and ")
    );
    Ok(())
}

/// Creates `table`'s replacement in [`REPLACEMENTS`], which the replay then writes: the live
/// table's columns, defaults, generated columns, identity and constraints, and those of its
/// indexes the projection's statements use (not [`Table::read_indexes`], which
/// [`finish_replacement`] builds once the rows are in), each under the live index's own name
/// (an index is named within its table's schema, so the names are free there and move with
/// the table); with the live rows when a reset keeps them. It is unlogged until the replay
/// ends: the replay's rows are not written to the WAL one by one (a crash empties such a table,
/// and what a crashed rebuild left is removed at the next start anyway).
pub async fn replacement(conn: &mut PgConnection, table: &Table) -> anyhow::Result<()> {
    let name = table.name;
    sqlx::query(&format!(
        "CREATE UNLOGGED TABLE {REPLACEMENTS}.\"{name}\"
             (LIKE public.\"{name}\" INCLUDING ALL EXCLUDING INDEXES)"
    ))
    .execute(&mut *conn)
    .await?;
    for definition in index_definitions(&mut *conn, table, Indexes::ForWrites).await? {
        sqlx::query(&definition).execute(&mut *conn).await?;
    }
    if table.kept_on_reset {
        copy_live_rows(conn, name, REPLACEMENTS).await?;
    }
    Ok(())
}

/// Which of a live table's indexes [`index_definitions`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexes {
    /// Its constraints' (primary key, unique, exclusion), then the other indexes the
    /// projection's statements use.
    ForWrites,
    /// Those only reads use: the ones PostgreSQL builds on one core (GIN, and every other but
    /// btree) first, then those it builds with parallel workers.
    ForReads,
}

/// The statements that give `table`'s replacement the live table's indexes of one kind, in the
/// order [`Indexes`] says. A definition a rebuild cannot copy fails.
async fn index_definitions(
    conn: &mut PgConnection,
    table: &Table,
    which: Indexes,
) -> anyhow::Result<Vec<String>> {
    let definitions: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT definition, understood, for_reads FROM (
             SELECT format('ALTER TABLE %s.%I ADD CONSTRAINT %I %s',
                           $2::text, $1::text, conname, pg_get_constraintdef(oid)) AS definition,
                    true AS understood, true AS is_constraint, false AS one_core,
                    false AS for_reads
             FROM pg_constraint
             WHERE conrelid = format('public.%I', $1::text)::regclass
               AND contype IN ('p', 'u', 'x')
             UNION ALL
             SELECT replace(pg_get_indexdef(i.indexrelid),
                            format(' ON public.%I USING ', $1::text),
                            format(' ON %s.%I USING ', $2::text, $1::text)),
                    pg_get_indexdef(i.indexrelid) LIKE format('%% ON public.%I USING %%', $1::text),
                    false, am.amname <> 'btree', c.relname = ANY($3)
             FROM pg_index AS i
             JOIN pg_class AS c ON c.oid = i.indexrelid
             JOIN pg_am AS am ON am.oid = c.relam
             WHERE i.indrelid = format('public.%I', $1::text)::regclass
               AND NOT EXISTS (SELECT FROM pg_constraint WHERE conindid = i.indexrelid)
         ) AS d
         -- The constraints first (each locks the whole table).
         ORDER BY is_constraint DESC, one_core DESC",
    )
    .bind(table.name)
    .bind(REPLACEMENTS)
    .bind(table.read_indexes)
    .fetch_all(&mut *conn)
    .await?;
    if let Some((definition, ..)) = definitions.iter().find(|(_, understood, _)| !understood) {
        anyhow::bail!(
            "an index of {} is defined in a way a rebuild cannot copy: {definition}",
            table.name
        );
    }
    Ok(definitions
        .into_iter()
        .filter(|(.., for_reads)| *for_reads == (which == Indexes::ForReads))
        .map(|(definition, ..)| definition)
        .collect())
}

/// Makes `table`'s replacement, its rows replayed, ready for the events since and the swap:
/// logged (PostgreSQL writes the table to the WAL page by page, so it survives a crash and
/// reaches backups and standbys like the live one), its identity counters moved past the live
/// table's, its read indexes built (two at a time, on the rebuild's two sessions: PostgreSQL
/// builds a GIN index on one core), then statistics.
async fn finish_replacement(
    conn: &mut PgConnection,
    helper: &mut PgConnection,
    table: &Table,
) -> anyhow::Result<()> {
    let name = table.name;
    timed(
        &mut *conn,
        name,
        &format!("ALTER TABLE {REPLACEMENTS}.\"{name}\" SET LOGGED"),
        "logged",
    )
    .await?;
    // The rows keep their identity values; the events applied from here draw new ones.
    move_counters(&mut *conn, name).await?;
    let indexes = std::sync::Mutex::new(
        index_definitions(&mut *conn, table, Indexes::ForReads)
            .await?
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    );
    let (built, built_beside) = tokio::join!(
        build_indexes(&mut *conn, name, &indexes),
        build_indexes(&mut *helper, name, &indexes)
    );
    built?;
    built_beside?;
    timed(
        &mut *conn,
        name,
        &format!("ANALYZE {REPLACEMENTS}.\"{name}\""),
        "analyzed",
    )
    .await
}

/// Runs `statement` on `table`'s replacement and logs at debug how long it took, as the
/// rebuild's phase `done`.
async fn timed(
    conn: &mut PgConnection,
    table: &str,
    statement: &str,
    done: &str,
) -> anyhow::Result<()> {
    let phase = std::time::Instant::now();
    sqlx::query(statement).execute(conn).await?;
    tracing::debug!(
        table,
        seconds = phase.elapsed().as_secs_f64(),
        "rebuild: {done}"
    );
    Ok(())
}

/// Builds the indexes of `table`'s replacement that `indexes` holds, taking the next one from it
/// until none is left (run on two sessions at once).
async fn build_indexes(
    conn: &mut PgConnection,
    table: &str,
    indexes: &std::sync::Mutex<std::collections::VecDeque<String>>,
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "SET maintenance_work_mem = '{}'",
        crate::infra::projector::INDEX_BUILD_MEMORY
    ))
    .execute(&mut *conn)
    .await?;
    loop {
        let next = indexes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front();
        let Some(definition) = next else { break };
        let phase = std::time::Instant::now();
        if let Err(e) = sqlx::query(&definition).execute(&mut *conn).await {
            // The other session builds nothing more: the rebuild has failed.
            indexes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clear();
            return Err(e);
        }
        tracing::debug!(
            table,
            seconds = phase.elapsed().as_secs_f64(),
            "rebuild: an index built"
        );
    }
    sqlx::query("RESET maintenance_work_mem")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sets the identity counters of `table`'s replacement past both the live table's and the
/// replacement's own rows.
async fn move_counters(conn: &mut PgConnection, table: &str) -> sqlx::Result<()> {
    let counters: Vec<String> = sqlx::query_scalar(
        "SELECT format('SELECT setval(%L, greatest(%s, (SELECT max(%I) FROM %s.%I)))',
                       pg_get_serial_sequence(format('%s.%I', $2::text, $1::text), attname),
                       coalesce(pg_sequence_last_value(
                           pg_get_serial_sequence(format('public.%I', $1::text), attname)::regclass
                       )::text, 'NULL'),
                       attname, $2::text, $1::text)
         FROM pg_attribute
         WHERE attrelid = format('public.%I', $1::text)::regclass AND attidentity <> ''
           AND NOT attisdropped",
    )
    .bind(table)
    .bind(REPLACEMENTS)
    .fetch_all(&mut *conn)
    .await?;
    for counter in counters {
        sqlx::query(&counter).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Replaces the live `table` (locked) with its replacement, which takes the live one's
/// privileges, owner, identity counters and (statement-level) triggers; those triggers then
/// fire once for a deletion and once for an insertion, as replacing the rows in place would
/// have fired them (the service's caches hear of the change that way).
async fn swap(tx: &mut PgConnection, table: &str) -> anyhow::Result<()> {
    move_counters(&mut *tx, table).await?;
    let carried: Vec<String> = sqlx::query_scalar(
        "SELECT format('ALTER TABLE public.%I OWNER TO %I', $1::text, pg_get_userbyid(c.relowner))
         FROM pg_class AS c WHERE c.oid = format('public.%I', $1::text)::regclass
         UNION ALL
         SELECT format('GRANT %s ON TABLE public.%I TO %s%s', a.privilege_type, $1::text,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                       CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
         FROM pg_class AS c, aclexplode(c.relacl) AS a
         WHERE c.oid = format('public.%I', $1::text)::regclass AND a.grantee <> c.relowner
         UNION ALL
         SELECT pg_get_triggerdef(oid) FROM pg_trigger
         WHERE tgrelid = format('public.%I', $1::text)::regclass AND NOT tgisinternal",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let triggers = carried
        .iter()
        .any(|statement| statement.starts_with("CREATE"));
    sqlx::query(&format!("DROP TABLE public.\"{table}\""))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "ALTER TABLE {REPLACEMENTS}.\"{table}\" SET SCHEMA public"
    ))
    .execute(&mut *tx)
    .await?;
    for statement in carried {
        sqlx::query(&statement).execute(&mut *tx).await?;
    }
    if triggers {
        let columns = columns(&mut *tx, table, &[], true).await?;
        sqlx::query(&format!("DELETE FROM public.\"{table}\" WHERE false"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO public.\"{table}\" ({columns}) OVERRIDING SYSTEM VALUE
             SELECT {columns} FROM public.\"{table}\" WHERE false"
        ))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// How [`rebuild_unless`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Rebuilt(Rebuilt),
    /// Stopped; `swapped` when the rebuilt tables had already replaced the live ones (the
    /// rebuild is done, and nothing of it is left to remove).
    Stopped {
        swapped: bool,
    },
}

/// Rebuilds `projection` (see [`rebuild`]) on a connection of its own, made with `options` and
/// named [`REBUILDING`](crate::infra::event_store::log::REBUILDING) (so it is never a connection
/// that appends events), given up if `stop` completes first (an operator's Ctrl-C): the
/// session is then ended, which rolls back what it was doing and lets its lock go, and the
/// tables it had built are removed.
pub async fn rebuild_unless(
    options: &sqlx::postgres::PgConnectOptions,
    log: &EventLog,
    projection: &dyn Projection,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Ended> {
    use sqlx::Connection;
    // A session whose client is gone (the process killed) ends its statement within a
    // second rather than building an index on to the end, holding the tables.
    let rebuilding = options
        .clone()
        .application_name(crate::infra::event_store::log::REBUILDING)
        .options([("client_connection_check_interval", "1s")]);
    // The rebuild's session, and the one beside it that builds indexes with it.
    let mut conn = PgConnection::connect_with(&rebuilding).await?;
    let mut helper = PgConnection::connect_with(&rebuilding).await?;
    let mut sessions: Vec<i32> = Vec::with_capacity(2);
    for session in [&mut conn, &mut helper] {
        sessions.push(
            sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(session)
                .await?,
        );
    }
    // A swap gives the first table (every table, in one transaction) another oid.
    let first = projection
        .tables()
        .first()
        .map(|table| format!("public.\"{}\"", table.name));
    let oid = "SELECT to_regclass($1)::oid::bigint";
    let live: Option<i64> = sqlx::query_scalar(oid)
        .bind(&first)
        .fetch_one(&mut conn)
        .await?;
    let finished = tokio::select! {
        rebuilt = rebuild(&mut conn, &mut helper, log, projection) => Some(rebuilt),
        () = stop => None,
    };
    if let Some(rebuilt) = finished {
        conn.close().await?;
        helper.close().await?;
        return rebuilt.map(Ended::Rebuilt);
    }
    // Stopped in the middle of a statement: the connections are not used again.
    drop((conn, helper));
    // Not named as a rebuild's: only those are ended, and its own transactions are short.
    let mut cleaning = PgConnection::connect_with(options).await?;
    // Ended now, or already (a session that was idle ends when its connection closes). Only
    // a rebuild's sessions of these process ids are ended: an id may have been given to another.
    let mut ended: bool = sqlx::query_scalar(
        "SELECT coalesce(bool_and(pg_terminate_backend(pid, 30000)), true)
         FROM pg_stat_activity WHERE pid = ANY($1) AND application_name = $2",
    )
    .bind(&sessions)
    .bind(crate::infra::event_store::log::REBUILDING)
    .fetch_one(&mut cleaning)
    .await?;
    if !ended {
        ended = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT FROM pg_stat_activity
                                WHERE pid = ANY($1) AND application_name = $2)",
        )
        .bind(&sessions)
        .bind(crate::infra::event_store::log::REBUILDING)
        .fetch_one(&mut cleaning)
        .await?;
    }
    anyhow::ensure!(
        ended,
        "the rebuild's database sessions (processes {sessions:?}) did not end within 30 s each; what they built is removed by the next rebuild or start"
    );
    remove_unfinished(&mut cleaning, &[projection]).await?;
    let now: Option<i64> = sqlx::query_scalar(oid)
        .bind(&first)
        .fetch_one(&mut cleaning)
        .await?;
    cleaning.close().await?;
    Ok(Ended::Stopped {
        swapped: now != live,
    })
}

/// Removes the replacement tables that rebuilds of `projections` which did not finish (the
/// process killed) left in an organisation's database, except those of a rebuild still
/// running; how many.
pub(crate) async fn remove_unfinished(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
) -> sqlx::Result<usize> {
    let any: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT FROM pg_class WHERE relnamespace = '{REPLACEMENTS}'::regnamespace)"
    ))
    .fetch_one(&mut *conn)
    .await?;
    if !any {
        return Ok(0);
    }
    remove_replacements(conn, projections, Running::LeftAlone).await
}

/// Removes every replacement table that rebuilds of `projections` left, waiting for each one
/// running to end first (it swaps its tables in or removes them, unless it is killed); how many
/// were left. After an erasure: a copy built before it holds the erased subject's values, which
/// nothing else would remove until the next start.
pub(crate) async fn remove_once_rebuilds_end(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
) -> sqlx::Result<usize> {
    remove_replacements(conn, projections, Running::Awaited).await
}

/// Whether the session lock of a rebuild is held somewhere in the database of `conn` (a role
/// without access to the replacements can ask), or a rebuild left tables there.
pub(crate) async fn any_rebuild(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT FROM pg_class WHERE relnamespace = '{REPLACEMENTS}'::regnamespace)
             OR EXISTS (SELECT FROM pg_locks
                        WHERE locktype = 'advisory' AND objsubid = 2 AND classid = $1::oid
                          AND database = (SELECT oid FROM pg_database
                                          WHERE datname = current_database()))"
    ))
    .bind(REBUILD_LOCK)
    .fetch_one(conn)
    .await
}

/// What [`remove_replacements`] does about a rebuild that is running.
enum Running {
    LeftAlone,
    Awaited,
}

async fn remove_replacements(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    running: Running,
) -> sqlx::Result<usize> {
    let mut removed = 0;
    for projection in projections {
        if !try_rebuild_lock(&mut *conn, *projection).await? {
            match running {
                Running::LeftAlone => continue,
                Running::Awaited => {
                    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
                        .bind(REBUILD_LOCK)
                        .bind(projection.name())
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        for table in projection.tables() {
            let present: bool = sqlx::query_scalar(
                "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            )
            .bind(REPLACEMENTS)
            .bind(table.name)
            .fetch_one(&mut *conn)
            .await?;
            if present {
                sqlx::query(&format!("DROP TABLE {REPLACEMENTS}.\"{}\"", table.name))
                    .execute(&mut *conn)
                    .await?;
                removed += 1;
            }
        }
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(REBUILD_LOCK)
            .bind(projection.name())
            .execute(&mut *conn)
            .await?;
    }
    Ok(removed)
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

/// Applies the next batch of events after `at`, up to `until`, to the tables `conn`'s
/// transaction finds by the projection's names (its shadows, or its replacements); how many,
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

/// Applies every event after `at` up to `until` to the tables `conn`'s transaction finds by
/// the projection's names (its shadows, or its replacements), in that transaction; how many.
async fn replay_to(
    conn: &mut PgConnection,
    log: &EventLog,
    projection: &dyn Projection,
    at: &mut Position,
    until: Position,
) -> anyhow::Result<i64> {
    let mut events = 0;
    loop {
        let (applied, done) = replay(&mut *conn, log, projection, at, until).await?;
        events += applied;
        if done {
            return Ok(events);
        }
    }
}

/// Applies every event after `at` up to `until` to the replacement tables on `conn`, a batch in
/// each transaction (which fails if it wrote any other table), while a connection of `log`'s
/// pool (which needs one to spare) reads and opens the batch after it: the database applying
/// one batch and this process opening the next overlap. How many events were applied.
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
            let mut tx = writing_replacements(&mut *conn).await?;
            // A crash loses the rebuild anyway (its tables are removed at the next start), so
            // the batches need not wait for their commits to reach the disk.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            apply(&mut tx, projection, &batch).await?;
            refuse_live_writes(&mut tx, projection).await?;
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
    let mut events = log
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
    for stored in &mut events {
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

/// Applies `batch` to the shadow or replacement tables as the projector applies it: set-based
/// where the projection writes that way.
async fn apply(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    batch: &[ProjectedEvent],
) -> sqlx::Result<()> {
    let batch: Vec<_> = batch.iter().collect();
    projection.apply_all(conn, &batch).await
}

/// A temporary table shaped like `table` (columns, defaults, constraints, and the indexes its
/// projection's statements use, not those only reads use: nothing reads the shadow but the
/// comparison, which reads all of it), with the live rows when a reset keeps them; dropped
/// when compared (or with the session).
pub async fn shadow(conn: &mut PgConnection, table: &Table) -> sqlx::Result<()> {
    let name = table.name;
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE \"{name}\" (LIKE public.\"{name}\" INCLUDING ALL)"
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
        copy_live_rows(conn, name, "pg_temp").await?;
    }
    Ok(())
}

/// Copies the live `table`'s rows into the table of that name in `schema`.
async fn copy_live_rows(conn: &mut PgConnection, table: &str, schema: &str) -> sqlx::Result<()> {
    let columns = columns(&mut *conn, table, &[], true).await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.\"{table}\" ({columns}) OVERRIDING SYSTEM VALUE
         SELECT {columns} FROM public.\"{table}\""
    ))
    .execute(conn)
    .await?;
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
