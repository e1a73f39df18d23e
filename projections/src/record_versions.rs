//! The `record_versions` read model: each record's history on both time axes, one row per
//! event that changes what a report counts — the values a creation, an update or a hire set,
//! with the day they take effect and the moment they were recorded; archivals, restorations
//! and the erasure — so that reports "as recorded" at any moment and "as effective" on any day
//! read rows instead of replaying and opening the event log.
//!
//! Values are personal data, as in `records`: an erasure empties every row of the person (a
//! report counts them under "no value"), and a cancelled scheduled change keeps the moment it
//! was cancelled, since a report recorded before it still saw it.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::record::Fields;
use custos_domain::{Datasheet, Record, RecordEvent, Stage};
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::types::Json;
use sqlx::{Arguments, PgConnection};
use uuid::Uuid;

use crate::column;
use crate::records::effective_day;
use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects Record events into `record_versions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordVersionsProjection;

/// What a row of `record_versions` says happened to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Updated,
    Hired,
    Archived,
    Restored,
    Erased,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Updated => "updated",
            Kind::Hired => "hired",
            Kind::Archived => "archived",
            Kind::Restored => "restored",
            Kind::Erased => "erased",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "created" => Kind::Created,
            "updated" => Kind::Updated,
            "hired" => Kind::Hired,
            "archived" => Kind::Archived,
            "restored" => Kind::Restored,
            "erased" => Kind::Erased,
            _ => return None,
        })
    }
}

/// One row to insert.
struct Row<'a> {
    event: &'a ProjectedEvent,
    datasheet: &'static str,
    kind: Kind,
    effective_from: NaiveDate,
    changes: Option<&'a Fields>,
}

/// What an event does to the read model.
enum Step<'a> {
    Insert(Row<'a>),
    /// The scheduled change recorded at this version was cancelled at the event's moment.
    Cancel(i64),
    Nothing,
}

/// What a hire sets.
static HIRED: LazyLock<Fields> = LazyLock::new(|| {
    Fields::from([(
        "stage".to_owned(),
        Value::String(Stage::Hired.as_str().to_owned()),
    )])
});

fn step(event: &ProjectedEvent) -> Step<'_> {
    let AnyEvent::Record(record_event) = &event.event else {
        return Step::Nothing;
    };
    let row = |datasheet: &Datasheet, kind, effective_from: &Option<NaiveDate>, changes| {
        Step::Insert(Row {
            event,
            datasheet: datasheet.as_str(),
            kind,
            effective_from: effective_day(*effective_from, event),
            changes,
        })
    };
    match record_event {
        RecordEvent::RecordCreated {
            datasheet,
            fields,
            effective_from,
            ..
        } => row(datasheet, Kind::Created, effective_from, Some(fields)),
        RecordEvent::RecordUpdated {
            datasheet,
            changes,
            effective_from,
        } => row(datasheet, Kind::Updated, effective_from, Some(changes)),
        RecordEvent::ApplicantHired {
            datasheet,
            effective_from,
            ..
        } => row(datasheet, Kind::Hired, effective_from, Some(&*HIRED)),
        RecordEvent::RecordArchived { datasheet } => row(datasheet, Kind::Archived, &None, None),
        RecordEvent::RecordRestored { datasheet } => row(datasheet, Kind::Restored, &None, None),
        RecordEvent::RecordErased { datasheet, .. } => row(datasheet, Kind::Erased, &None, None),
        RecordEvent::ScheduledChangeCancelled { version, .. } => {
            Step::Cancel(i64::try_from(*version).unwrap_or(i64::MAX))
        }
        RecordEvent::RecordRestricted { .. } | RecordEvent::RestrictionLifted { .. } => {
            Step::Nothing
        }
    }
}

/// Inserts `rows` (a replayed one is left as it is), then empties the rows of the people erased
/// among them.
async fn insert(conn: &mut PgConnection, rows: &[Row<'_>]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // Arrays, one parameter a column, as the records projection's creations: one statement
    // for any number of rows, prepared once per connection.
    sqlx::query(
        "INSERT INTO record_versions (record_id, version, datasheet, kind, effective_from,
                                      recorded_at, changes)
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::date[],
                              $6::timestamptz[], $7::jsonb[])
         ON CONFLICT (record_id, version) DO NOTHING",
    )
    .bind(column(rows, |row| row.event.aggregate_id))
    .bind(column(rows, |row| row.event.sequence))
    .bind(column(rows, |row| row.datasheet))
    .bind(column(rows, |row| row.kind.as_str()))
    .bind(column(rows, |row| row.effective_from))
    .bind(column(rows, |row| row.event.recorded_at))
    .bind(column(rows, |row| row.changes.map(Json)))
    .execute(&mut *conn)
    .await?;
    let erased: Vec<Uuid> = rows
        .iter()
        .filter(|row| row.kind == Kind::Erased)
        .map(|row| row.event.aggregate_id)
        .collect();
    if !erased.is_empty() {
        sqlx::query(
            "UPDATE record_versions SET changes = NULL
              WHERE record_id = ANY($1) AND changes IS NOT NULL",
        )
        .bind(erased)
        .execute(conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Projection for RecordVersionsProjection {
    fn name(&self) -> &'static str {
        "record_versions"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Record as cqrs_es::Aggregate>::TYPE]
    }

    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("record_versions").read_indexes(&["record_versions_by_sheet"])] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        self.apply_all(conn, &[event]).await
    }

    /// Inserts from arrays, in order up to each cancellation.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
    ) -> sqlx::Result<()> {
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            match step(event) {
                Step::Insert(row) => rows.push(row),
                Step::Cancel(version) => {
                    insert(conn, &std::mem::take(&mut rows)).await?;
                    sqlx::query(
                        "UPDATE record_versions SET cancelled_at = $3
                          WHERE record_id = $1 AND version = $2 AND cancelled_at IS NULL",
                    )
                    .bind(event.aggregate_id)
                    .bind(version)
                    .bind(event.recorded_at)
                    .execute(&mut *conn)
                    .await?;
                }
                Step::Nothing => {}
            }
        }
        insert(conn, &rows).await
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM record_versions")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A row as a report reads it, with the values the change gave the field grouped by, the start
/// date and the end date (`Some(Value::Null)`: it cleared the field; `None`: it did not touch
/// it).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    pub record_id: Uuid,
    pub version: i64,
    pub kind: Kind,
    pub effective_from: NaiveDate,
    pub group: Option<Value>,
    pub start_date: Option<Value>,
    pub end_date: Option<Value>,
}

type Fetched = (
    Uuid,
    i64,
    String,
    NaiveDate,
    Option<Json<Value>>,
    Option<Json<Value>>,
    Option<Json<Value>>,
);

/// The rows of `datasheet`'s records as recorded up to `recorded_at`, without the scheduled
/// changes cancelled by then, with their values of the field `group_by` and of the employment
/// dates.
pub async fn as_recorded(
    conn: &mut PgConnection,
    datasheet: Datasheet,
    recorded_at: DateTime<Utc>,
    group_by: &str,
) -> sqlx::Result<Vec<VersionRow>> {
    let rows: Vec<Fetched> = sqlx::query_as(
        "SELECT record_id, version, kind, effective_from,
                changes -> $3, changes -> 'start_date', changes -> 'end_date'
           FROM record_versions
          WHERE datasheet = $1 AND recorded_at <= $2
            AND (cancelled_at IS NULL OR cancelled_at > $2)",
    )
    .bind(datasheet.as_str())
    .bind(recorded_at)
    .bind(group_by)
    .persistent(false)
    .fetch_all(conn)
    .await?;
    decode(rows)
}

/// The rows of the records `ids` as recorded up to `recorded_at` (`None`: every row the read
/// model has now), without the scheduled changes cancelled by then, with the same values as
/// [`as_recorded`].
pub async fn of_records(
    conn: &mut PgConnection,
    ids: &[Uuid],
    group_by: &str,
    recorded_at: Option<DateTime<Utc>>,
) -> sqlx::Result<Vec<VersionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Fetched> = sqlx::query_as(
        "SELECT record_id, version, kind, effective_from,
                changes -> $2, changes -> 'start_date', changes -> 'end_date'
           FROM record_versions
          WHERE record_id = ANY($1)
            AND CASE WHEN $3::timestamptz IS NULL THEN cancelled_at IS NULL
                     ELSE recorded_at <= $3 AND (cancelled_at IS NULL OR cancelled_at > $3) END",
    )
    .bind(ids)
    .bind(group_by)
    .bind(recorded_at)
    .persistent(false)
    .fetch_all(conn)
    .await?;
    decode(rows)
}

fn decode(rows: Vec<Fetched>) -> sqlx::Result<Vec<VersionRow>> {
    let value = |v: Option<Json<Value>>| v.map(|Json(v)| v);
    rows.into_iter()
        .map(
            |(record_id, version, kind, effective_from, group, start, end)| {
                Ok(VersionRow {
                    record_id,
                    version,
                    kind: Kind::parse(&kind).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown record version kind `{kind}`").into())
                    })?,
                    effective_from,
                    group: value(group),
                    start_date: value(start),
                    end_date: value(end),
                })
            },
        )
        .collect()
}

/// Whether `records` and `record_versions` have read the log up to the same event (the
/// projector moves both in one transaction, unless one of them is being rebuilt or retried
/// alone): only then does a row of `records` hold what the record's history says.
pub async fn in_step_with_records(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT coalesce(bool_and(r.transaction_id = v.transaction_id
                                  AND r.global_position = v.global_position), false)
           FROM projection_checkpoints r, projection_checkpoints v
          WHERE r.projection = 'records' AND v.projection = 'record_versions'",
    )
    .fetch_one(conn)
    .await
}

/// A report on a day as the records are recorded now, read from `records` where a record's row
/// already holds its values of that day (see [`settled`]).
#[derive(Debug, Default)]
pub struct Settled {
    /// Per value of the grouped field (as stored: `None` for no value), how many records have
    /// it, and which when fewer than [`SMALL_GROUP`](crate::record_query::SMALL_GROUP).
    pub groups: Vec<(Option<Value>, i64, Vec<Uuid>)>,
    /// The records whose row does not hold their values of the day: their history decides.
    pub unsettled: Vec<Uuid>,
}

/// Counts of `datasheet`'s records, not archived, as the read model has them now, per value of
/// `group_by` in force on `day` — for each record whose `records` row holds the values of that
/// day: not erased, no change in force taking effect later than the day (`since_max`, or none
/// since its creation), no change scheduled (`pending_changes`) to take effect by then. The
/// others are returned for their history to decide; which record goes which way may be decided
/// cautiously (a record sent to its history gets the same answer), never the other way.
///
/// As recorded at `recorded_at` (`None`: now), a record's row also holds what the history said
/// then only if nothing happened to the record since (its row's `updated_at`, the moment of its
/// last event, every event of a record moving it; a record's events are stamped in order, each
/// appended by the database's clock after the one before it committed): the records changed,
/// archived, restored, erased or with a change cancelled after that moment are returned for
/// their history to decide, and the records created after it are not counted (their history
/// then was empty).
/// The scheduled changes that took effect since need no event: they took effect by their day,
/// which the rule above reads.
///
/// A record that takes effect after `day` is not counted, unless `employed_only` (a headcount):
/// then it counts with its values of its first day, if it was employed on `day` by its
/// employment dates (started by then or without a start date, not ended before it), which
/// `employed_only` asks of every record counted. The same rules as a report folding each
/// record's history; only which records take which path differs.
///
/// `today`: no record takes effect after it (a creation cannot be dated later than the day it
/// is entered), so no change scheduled later than it and than `day` changes a value counted.
pub async fn settled(
    conn: &mut PgConnection,
    datasheet: Datasheet,
    day: NaiveDate,
    group_by: &str,
    employed_only: bool,
    today: NaiveDate,
    recorded_at: Option<DateTime<Utc>>,
) -> sqlx::Result<Settled> {
    // One day of leeway for a clock behind the one that dated a creation.
    let due_by = day.max(today.succ_opt().unwrap_or(today));
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT record_id FROM pending_changes WHERE effective_from <= $1",
    )
    .bind(due_by)
    .fetch_all(&mut *conn)
    .await?;
    // The keys (`YYYY-MM-DD#version`, compared bytewise) of the changes in force by `day`.
    let by_day = format!("{}#~", day.format("%Y-%m-%d"));
    // As recorded at a moment: the row is as it was then if no event of the record came
    // after it.
    let (unchanged, existed) = if recorded_at.is_some() {
        ("updated_at <= $7", "AND created_at <= $7")
    } else {
        ("true", "")
    };
    // Settled: the row holds the record's values on `day`, or on its first day if that is
    // later (a key of a change later than the creation's is later than `by_day`, unless the
    // change is in force by `day`).
    let settled = format!(
        "erased_at IS NULL
         AND (since_max COLLATE \"C\" <= $4 OR since_max COLLATE \"C\" = since_base)
         AND id <> ALL($5) AND {unchanged}"
    );
    // The records counted: not archived (or archived since the moment asked about); taking
    // effect by `day` unless a headcount; a headcount's settled rows employed on `day` (the
    // employment dates of a row not erased are dates, as text, when given). The others are
    // left to their history.
    let counted = format!(
        "FROM records
          WHERE datasheet = $1 AND (NOT archived OR NOT ({unchanged})) {existed}
            AND ($2 OR since_base COLLATE \"C\" <= $4)
            AND (NOT $2 OR NOT ({settled})
                 OR ((fields ->> 'start_date' IS NULL OR fields ->> 'start_date' COLLATE \"C\" <= $6)
                     AND (fields ->> 'end_date' IS NULL OR fields ->> 'end_date' COLLATE \"C\" >= $6)))"
    );
    let on = day.format("%Y-%m-%d").to_string();
    // The grouped value as JSON text, read back as the fold reads `record_versions`. A record
    // left to its history is a group of its own (no list of ids is built for the others).
    let mut args = PgArguments::default();
    let encode = sqlx::Error::Encode;
    args.add(datasheet.as_str()).map_err(encode)?;
    args.add(employed_only).map_err(encode)?;
    args.add(group_by).map_err(encode)?;
    args.add(&by_day).map_err(encode)?;
    args.add(&due).map_err(encode)?;
    args.add(&on).map_err(encode)?;
    if let Some(moment) = recorded_at {
        args.add(moment).map_err(encode)?;
    }
    let rows: Vec<(Option<String>, Option<Uuid>, i64)> = sqlx::query_as_with(
        &format!(
            "SELECT (fields -> $3)::text, CASE WHEN NOT ({settled}) THEN id END, count(*)
               {counted}
              GROUP BY 1, 2"
        ),
        args.clone(),
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let mut settled_groups = Vec::new();
    let mut unsettled = Vec::new();
    for (value, id, count) in rows {
        match id {
            Some(id) => unsettled.push(id),
            None => settled_groups.push((value, count)),
        }
    }
    // The members of the groups small enough to single people out (`''`: no value, which no
    // JSON text is).
    let small: Vec<String> = settled_groups
        .iter()
        .filter(|(_, count)| *count < crate::record_query::SMALL_GROUP)
        .map(|(value, _)| value.clone().unwrap_or_default())
        .collect();
    let found: Vec<(Option<String>, Uuid)> = if small.is_empty() {
        Vec::new()
    } else {
        args.add(&small).map_err(encode)?;
        let values = args.len();
        sqlx::query_as_with(
            &format!(
                "SELECT (fields -> $3)::text, id {counted}
                    AND {settled} AND coalesce((fields -> $3)::text, '') = ANY(${values})"
            ),
            args,
        )
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?
    };
    let mut members: HashMap<Option<String>, Vec<Uuid>> = HashMap::new();
    for (text, id) in found {
        members.entry(text).or_default().push(id);
    }
    let mut settled = Settled {
        groups: Vec::with_capacity(settled_groups.len()),
        unsettled,
    };
    for (text, count) in settled_groups {
        let ids = members.remove(&text).unwrap_or_default();
        let value = text
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| sqlx::Error::Decode(error.into()))?;
        settled.groups.push((value, count, ids));
    }
    Ok(settled)
}
