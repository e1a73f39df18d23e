//! Reports as of a past moment or day — two time axes, "as the system said then" and "as was
//! true then" — from today's rows where they hold what the history said, and otherwise from the
//! `record_versions` read model: each record's changes as recorded up to a moment, keeping only
//! what the report needs, read off for the values in force on a day.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::Datasheet;
use custos_projections::record_query::SMALL_GROUP;
use custos_projections::record_versions::{self, Kind, VersionRow};
use serde_json::Value;
use sqlx::{Acquire, PgConnection};
use uuid::Uuid;

/// What one record looked like, as far as the report cares: its values of the fields counted,
/// each change with the day it takes effect, so that any effective day can be read off.
#[derive(Default)]
struct Snapshot {
    /// Whether its creation is among the rows (a record's rows all belong to its datasheet).
    created: bool,
    archived: bool,
    /// The day the record takes effect.
    starts: Option<NaiveDate>,
    /// Changes of the counted fields: (day in effect, version, field, value).
    changes: Vec<(NaiveDate, i64, Counted, Option<Value>)>,
    erased: bool,
}

/// The fields a report reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Group,
    StartDate,
    EndDate,
}

impl Snapshot {
    /// Takes in the record's next row (in version order).
    fn take(&mut self, row: VersionRow) {
        let (day, version) = (row.effective_from, row.version);
        let mut note = |field, value: Option<Value>| {
            if let Some(value) = value {
                self.changes.push((day, version, field, counted(value)));
            }
        };
        match row.kind {
            Kind::Created | Kind::Updated | Kind::Hired => {
                if row.kind == Kind::Created {
                    self.created = true;
                    self.starts = Some(day);
                }
                note(Counted::Group, row.group);
                note(Counted::StartDate, row.start_date);
                note(Counted::EndDate, row.end_date);
            }
            Kind::Archived => self.archived = true,
            Kind::Restored => self.archived = false,
            // No value of an erased person on any day.
            Kind::Erased => {
                self.erased = true;
                self.changes.clear();
            }
        }
    }

    /// The value of `field` in force on `day`: the change that takes effect last by then (of
    /// one day, the one recorded last).
    fn on(&self, day: NaiveDate, field: Counted) -> Option<&Value> {
        self.changes
            .iter()
            .filter(|(d, _, f, _)| *f == field && *d <= day)
            .max_by_key(|(d, version, _, _)| (*d, *version))
            .and_then(|(_, _, _, value)| value.as_ref())
    }
}

/// What to count.
pub(crate) struct AsOf {
    pub(crate) datasheet: Datasheet,
    /// The records as the history had them at this moment...
    pub(crate) recorded_at: DateTime<Utc>,
    /// ... with the values in force on this day.
    pub(crate) effective_at: NaiveDate,
    /// Whether `recorded_at` is now because no moment was asked for: the history as recorded
    /// now, every row the read models hold (see [`counts_as_of`]).
    pub(crate) current: bool,
    /// The record field (`department`, `custom.<key>`) to group by.
    pub(crate) group_by: String,
    /// Count only employees employed on `effective_at`: started by then (or without a start
    /// date) and not ended before it.
    pub(crate) employed_only: bool,
}

/// A value as a report counts it: an erased value is no value (the record still counts, under
/// "none").
fn counted(value: Value) -> Option<Value> {
    (!value.is_null() && !custos_domain::record::is_erased_marker(&value)).then_some(value)
}

/// Group values as text, as today's reports give them (lists count each entry).
fn group_values(value: &Option<Value>) -> Vec<Option<String>> {
    match value {
        None => vec![None],
        Some(Value::String(text)) => vec![Some(text.clone())],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| {
                Some(
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned),
                )
            })
            .collect(),
        Some(Value::Array(_)) => vec![None],
        Some(other) => vec![Some(other.to_string())],
    }
}

/// Counts per group value of the records of `request.datasheet` that existed and were not
/// archived at `request.recorded_at`, largest groups first, and how many records were counted.
///
/// While `records` and `record_versions` have read the log equally far, the records whose row
/// in `records` holds their values of the day, as the history had them at the moment asked
/// about, are counted there, in one grouped query; only the others
/// (changed or corrected with effect after the day, with a change due by then, erased, or with
/// an event since the moment) are folded from their history, both read from one snapshot of
/// the database. When more records need their history than not, one pass over the whole
/// history of the datasheet costs less than looking each one up.
pub(crate) async fn counts_as_of(
    conn: &mut PgConnection,
    request: &AsOf,
) -> sqlx::Result<AsOfCounts> {
    let mut tally = Tally::default();
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Taken before the snapshot is: a rebuild's swap of one of these tables (a new table whose
    // last rows its own transaction wrote) is then wholly before the snapshot or after it.
    sqlx::query("LOCK TABLE records, pending_changes, record_versions IN ACCESS SHARE MODE")
        .execute(&mut *tx)
        .await?;
    // As recorded now, every row the read models hold counts, whenever it was written.
    let moment = (!request.current).then_some(request.recorded_at);
    // While `records` (or `record_versions`) is rebuilt or retried alone, the rows are not the
    // histories' account: every history is folded.
    let settled = if record_versions::in_step_with_records(&mut tx).await? {
        Some(
            record_versions::settled(
                &mut tx,
                request.datasheet,
                request.effective_at,
                &request.group_by,
                request.employed_only,
                Utc::now().date_naive(),
                moment,
            )
            .await?,
        )
    } else {
        None
    };
    // When most records need their history, one pass over all of it costs less than looking
    // each one up.
    let rows = match settled {
        Some(settled)
            if settled.unsettled.len() as i64
                <= settled.groups.iter().map(|(_, count, _)| count).sum() =>
        {
            for (value, count, members) in settled.groups {
                tally.add(&value.and_then(counted), count, &members);
            }
            record_versions::of_records(&mut tx, &settled.unsettled, &request.group_by, moment)
                .await?
        }
        _ => {
            record_versions::as_recorded(
                &mut tx,
                request.datasheet,
                request.recorded_at,
                &request.group_by,
            )
            .await?
        }
    };
    tx.commit().await?;
    tally.fold(rows, request);
    Ok(tally.finish())
}

/// Counts per group value, and the records of each group while it is small.
#[derive(Default)]
struct Tally {
    counts: HashMap<Option<String>, (i64, Vec<Uuid>)>,
    records: i64,
}

impl Tally {
    /// Counts `records` records with `value` (`members`: them, when few).
    fn add(&mut self, value: &Option<Value>, records: i64, members: &[Uuid]) {
        self.records += records;
        for value in group_values(value) {
            let (count, shown) = self.counts.entry(value).or_default();
            *count += records;
            if *count < SMALL_GROUP {
                shown.extend_from_slice(members);
            }
        }
    }

    /// Folds each record's rows into its values and counts those in force on the day.
    fn fold(&mut self, mut rows: Vec<VersionRow>, request: &AsOf) {
        rows.sort_unstable_by_key(|row| (row.record_id, row.version));
        let mut records: HashMap<Uuid, Snapshot> = HashMap::new();
        for row in rows {
            records.entry(row.record_id).or_default().take(row);
        }
        let effective = request.effective_at;
        let day = effective.format("%Y-%m-%d").to_string();
        for (id, snapshot) in &records {
            if !snapshot.created || snapshot.archived {
                continue;
            }
            // The day whose values count. A headcount places people by their employment dates:
            // an employee recorded after the day, with a start date before it, was employed
            // then, so their first values stand for the days before the record. Any other
            // report counts only the records that had taken effect by the day.
            let mut on = effective;
            if let Some(starts) = snapshot.starts.filter(|starts| *starts > effective) {
                if !request.employed_only {
                    continue;
                }
                on = starts;
            }
            if request.employed_only {
                // Without its dates, an erased employee cannot be placed in time.
                if snapshot.erased {
                    continue;
                }
                let date = |field| snapshot.on(on, field).and_then(Value::as_str);
                let started = date(Counted::StartDate).is_none_or(|s| s <= day.as_str());
                let not_ended = date(Counted::EndDate).is_none_or(|e| e >= day.as_str());
                if !(started && not_ended) {
                    continue;
                }
            }
            self.add(&snapshot.on(on, Counted::Group).cloned(), 1, &[*id]);
        }
    }

    /// Largest groups first, and the records of the small ones.
    fn finish(self) -> AsOfCounts {
        let mut shown: Vec<Uuid> = self
            .counts
            .values()
            .filter(|(count, _)| *count < SMALL_GROUP)
            .flat_map(|(_, members)| members.iter().copied())
            .collect();
        shown.sort_unstable();
        shown.dedup();
        let mut counts: Vec<(Option<String>, i64)> = self
            .counts
            .into_iter()
            .map(|(value, (count, _))| (value, count))
            .collect();
        counts.sort_by(|a, b| {
            b.1.cmp(&a.1).then_with(|| match (&a.0, &b.0) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => x.cmp(y),
            })
        });
        AsOfCounts {
            counts,
            records: self.records,
            shown,
        }
    }
}

/// A report as of a moment: the counts per value, how many records, and the records of the
/// groups small enough to single people out (recorded as read).
pub(crate) struct AsOfCounts {
    pub counts: Vec<(Option<String>, i64)>,
    pub records: i64,
    pub shown: Vec<Uuid>,
}
