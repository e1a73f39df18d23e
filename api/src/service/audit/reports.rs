//! Reports as of a past moment, computed from the event history rather than today's rows:
//! every record event recorded up to that moment is replayed, keeping per record only what
//! the report needs.

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

/// What one record looked like at the moment, as far as the report cares.
#[derive(Default)]
struct Snapshot {
    datasheet: Option<Datasheet>,
    archived: bool,
    group: Option<Value>,
    start_date: Option<String>,
    end_date: Option<String>,
    erased: bool,
}

/// What to count.
pub(crate) struct AsOf {
    pub(crate) datasheet: Datasheet,
    pub(crate) at: DateTime<Utc>,
    /// The record field (`department`, `custom.<key>`) to group by.
    pub(crate) group_by: String,
    /// Count only employees employed on the moment's date: started by then (or without a
    /// start date) and not ended before it.
    pub(crate) employed_only: bool,
}

fn note(snapshot: &mut Snapshot, name: &str, value: &Value, group_by: &str) {
    // An erased value is no value: the record still counts, under "none".
    let value = (!value.is_null() && !custos_domain::record::is_erased_marker(value))
        .then(|| value.clone());
    if name == group_by {
        snapshot.group = value.clone();
    }
    match name {
        "start_date" => snapshot.start_date = value.and_then(|v| v.as_str().map(str::to_owned)),
        "end_date" => snapshot.end_date = value.and_then(|v| v.as_str().map(str::to_owned)),
        _ => {}
    }
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
        let batch = log.until(Record::TYPE, request.at, after, BATCH).await?;
        let Some(last) = batch.last() else {
            break;
        };
        after = last.position.global_position;
        for stored in batch {
            let event: RecordEvent = serde_json::from_value(stored.event.payload)?;
            let snapshot = records.entry(stored.event.aggregate_id).or_default();
            match event {
                RecordEvent::RecordCreated {
                    datasheet, fields, ..
                } => {
                    snapshot.datasheet = Some(datasheet);
                    for (name, value) in &fields {
                        note(snapshot, name, value, &request.group_by);
                    }
                }
                RecordEvent::RecordUpdated { changes, .. } => {
                    for (name, value) in &changes {
                        note(snapshot, name, value, &request.group_by);
                    }
                }
                RecordEvent::RecordArchived { .. } => snapshot.archived = true,
                RecordEvent::RecordRestored { .. } => snapshot.archived = false,
                RecordEvent::RecordRestricted { .. } | RecordEvent::RestrictionLifted { .. } => {}
                RecordEvent::RecordErased { .. } => {
                    snapshot.erased = true;
                    snapshot.group = None;
                    snapshot.start_date = None;
                    snapshot.end_date = None;
                }
                RecordEvent::ApplicantHired { .. } => {
                    let hired = Value::String(Stage::Hired.as_str().to_owned());
                    note(snapshot, "stage", &hired, &request.group_by);
                }
            }
        }
    }
    let day: NaiveDate = request.at.date_naive();
    let day = day.format("%Y-%m-%d").to_string();
    let mut counts: HashMap<Option<String>, (i64, Vec<Uuid>)> = HashMap::new();
    let mut counted = 0;
    for (id, snapshot) in &records {
        if snapshot.datasheet != Some(request.datasheet) || snapshot.archived {
            continue;
        }
        if request.employed_only {
            // Without its dates, an erased employee cannot be placed in time.
            if snapshot.erased {
                continue;
            }
            let started = snapshot.start_date.as_ref().is_none_or(|s| *s <= day);
            let not_ended = snapshot.end_date.as_ref().is_none_or(|e| *e >= day);
            if !(started && not_ended) {
                continue;
            }
        }
        counted += 1;
        for value in group_values(&snapshot.group) {
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
