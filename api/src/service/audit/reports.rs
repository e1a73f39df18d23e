//! Reports as of a past moment or day, computed from the event history rather than today's
//! rows: every record event recorded up to a moment is replayed, keeping per record only what
//! the report needs, and read off for the values in force on a day — two time axes, "as the
//! system said then" and "as was true then".

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use custos_domain::{Datasheet, Record, RecordEvent, Stage};
use custos_projections::record_query::SMALL_GROUP;
use serde_json::Value;
use uuid::Uuid;

use crate::infra::event_store::log::EventLog;

/// Events read per round trip.
const BATCH: i64 = 5_000;

/// What one record looked like, as far as the report cares: its values of the fields counted,
/// each change with the day it takes effect, so that any effective day can be read off.
#[derive(Default)]
struct Snapshot {
    datasheet: Option<Datasheet>,
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
    /// The record field (`department`, `custom.<key>`) to group by.
    pub(crate) group_by: String,
    /// Count only employees employed on `effective_at`: started by then (or without a start
    /// date) and not ended before it.
    pub(crate) employed_only: bool,
}

fn note(
    snapshot: &mut Snapshot,
    day: NaiveDate,
    version: i64,
    name: &str,
    value: &Value,
    group_by: &str,
) {
    // An erased value is no value: the record still counts, under "none".
    let value = (!value.is_null() && !custos_domain::record::is_erased_marker(value))
        .then(|| value.clone());
    if name == group_by {
        snapshot
            .changes
            .push((day, version, Counted::Group, value.clone()));
    }
    let field = match name {
        "start_date" => Counted::StartDate,
        "end_date" => Counted::EndDate,
        _ => return,
    };
    snapshot.changes.push((day, version, field, value));
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
/// archived at `request.at`, largest groups first, and how many records were counted.
pub(crate) async fn counts_as_of(log: &EventLog, request: &AsOf) -> anyhow::Result<AsOfCounts> {
    let mut records: HashMap<String, Snapshot> = HashMap::new();
    let mut after = 0;
    loop {
        let batch = log
            .until(Record::TYPE, request.recorded_at, after, BATCH)
            .await?;
        let Some(last) = batch.last() else {
            break;
        };
        after = last.position.global_position;
        for stored in batch {
            let event: RecordEvent = serde_json::from_value(stored.event.payload)?;
            let version = i64::try_from(stored.event.sequence).unwrap_or(i64::MAX);
            let recorded_on = stored.recorded_at.date_naive();
            let snapshot = records.entry(stored.event.aggregate_id).or_default();
            let group_by = request.group_by.as_str();
            match event {
                RecordEvent::RecordCreated {
                    datasheet,
                    fields,
                    effective_from,
                    ..
                } => {
                    let day = effective_from.unwrap_or(recorded_on);
                    snapshot.datasheet = Some(datasheet);
                    snapshot.starts = Some(day);
                    for (name, value) in &fields {
                        note(snapshot, day, version, name, value, group_by);
                    }
                }
                RecordEvent::RecordUpdated {
                    changes,
                    effective_from,
                    ..
                } => {
                    let day = effective_from.unwrap_or(recorded_on);
                    for (name, value) in &changes {
                        note(snapshot, day, version, name, value, group_by);
                    }
                }
                RecordEvent::RecordArchived { .. } => snapshot.archived = true,
                RecordEvent::RecordRestored { .. } => snapshot.archived = false,
                RecordEvent::RecordRestricted { .. } | RecordEvent::RestrictionLifted { .. } => {}
                RecordEvent::ScheduledChangeCancelled { version, .. } => {
                    let version = i64::try_from(version).unwrap_or(i64::MAX);
                    snapshot.changes.retain(|(_, at, _, _)| *at != version);
                }
                // No value of an erased person on any day.
                RecordEvent::RecordErased { .. } => {
                    snapshot.erased = true;
                    snapshot.changes.clear();
                }
                RecordEvent::ApplicantHired { effective_from, .. } => {
                    let day = effective_from.unwrap_or(recorded_on);
                    let hired = Value::String(Stage::Hired.as_str().to_owned());
                    note(snapshot, day, version, "stage", &hired, group_by);
                }
            }
        }
    }
    let effective = request.effective_at;
    let day = effective.format("%Y-%m-%d").to_string();
    let mut counts: HashMap<Option<String>, (i64, Vec<Uuid>)> = HashMap::new();
    let mut counted = 0;
    for (id, snapshot) in &records {
        if snapshot.datasheet != Some(request.datasheet) || snapshot.archived {
            continue;
        }
        // The day whose values count. A headcount places people by their employment dates:
        // an employee recorded after the day, with a start date before it, was employed then,
        // so their first values stand for the days before the record. Any other report counts
        // only the records that had taken effect by the day.
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
        counted += 1;
        for value in group_values(&snapshot.on(on, Counted::Group).cloned()) {
            let (count, members) = counts.entry(value).or_default();
            *count += 1;
            if *count < SMALL_GROUP {
                members.extend(id.parse::<Uuid>());
            }
        }
    }
    let mut shown: Vec<Uuid> = counts
        .values()
        .filter(|(count, _)| *count < SMALL_GROUP)
        .flat_map(|(_, members)| members.iter().copied())
        .collect();
    shown.sort_unstable();
    shown.dedup();
    let mut counts: Vec<(Option<String>, i64)> = counts
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
    Ok(AsOfCounts {
        counts,
        records: counted,
        shown,
    })
}

/// A report as of a moment: the counts per value, how many records, and the records of the
/// groups small enough to single people out (recorded as read).
pub(crate) struct AsOfCounts {
    pub counts: Vec<(Option<String>, i64)>,
    pub records: i64,
    pub shown: Vec<Uuid>,
}
