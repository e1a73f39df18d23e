//! History: a record's events replayed from the event store (so they pass through the codec),
//! with the field-level change each one made.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use custos_domain::{EventMetadata, Record, RecordEvent};
use serde_json::Value;
use uuid::Uuid;

use crate::error::api_field_name;
use crate::event_store::EventLog;

/// One field's value before and after an event; `None` is "no value".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One event of a record's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Option<EventMetadata>,
    pub changes: Vec<FieldChange>,
}

/// How an erased value shows in history.
pub const ERASED: &str = "[erased]";

fn display(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        value if custos_domain::record::is_erased_marker(value) => Some(ERASED.to_owned()),
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn flag(value: bool) -> Option<String> {
    Some(value.to_string())
}

/// The change each event makes to `state`, which it then applies.
fn changes(state: &mut Record, event: RecordEvent) -> Vec<FieldChange> {
    let change = |field: &str, before: Option<String>, after: Option<String>| FieldChange {
        field: api_field_name(field),
        before,
        after,
    };
    let changes = match &event {
        RecordEvent::RecordCreated {
            fields, hired_from, ..
        } => fields
            .iter()
            .map(|(name, value)| change(name, None, display(Some(value))))
            .chain(hired_from.map(|from| change("hired_from", None, Some(from.to_string()))))
            .collect(),
        RecordEvent::RecordUpdated { changes, .. } => changes
            .iter()
            .map(|(name, value)| change(name, display(state.value(name)), display(Some(value))))
            .collect(),
        RecordEvent::RecordArchived { .. } => vec![change("archived", flag(false), flag(true))],
        RecordEvent::RecordRestored { .. } => vec![change("archived", flag(true), flag(false))],
        RecordEvent::RecordRestricted { .. } => vec![change("restricted", flag(false), flag(true))],
        RecordEvent::RestrictionLifted { .. } => {
            vec![change("restricted", flag(true), flag(false))]
        }
        RecordEvent::RecordErased { fields, .. } => fields
            .iter()
            .map(|name| change(name, Some(ERASED.to_owned()), None))
            .collect(),
        RecordEvent::ApplicantHired { employee_id, .. } => vec![
            change(
                "stage",
                display(state.value("stage")),
                Some(custos_domain::Stage::Hired.as_str().to_owned()),
            ),
            change("hired_as", None, Some(employee_id.to_string())),
        ],
    };
    state.apply(event);
    changes
}

/// Every event of the record `id`, oldest first. Empty when the tenant has no such record.
pub async fn record_history(log: &EventLog, id: Uuid) -> anyhow::Result<Vec<HistoryEntry>> {
    let stored = log.stream(Record::TYPE, &id.to_string()).await?;
    let mut state = Record::default();
    stored
        .into_iter()
        .map(|stored| {
            let metadata = EventMetadata::from_map(&stored.metadata());
            let event: RecordEvent = serde_json::from_value(stored.event.payload)?;
            Ok(HistoryEntry {
                sequence: i64::try_from(stored.event.sequence)?,
                event_type: stored.event.event_type,
                recorded_at: stored.recorded_at,
                metadata,
                changes: changes(&mut state, event),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_domain::Datasheet;
    use serde_json::json;

    #[test]
    fn each_event_shows_before_and_after() {
        let mut state = Record::default();
        let created = changes(
            &mut state,
            RecordEvent::RecordCreated {
                datasheet: Datasheet::Employees,
                fields: [("first_name".to_owned(), json!("Ada"))].into(),
                hired_from: None,
            },
        );
        assert_eq!(
            created,
            vec![FieldChange {
                field: "firstName".into(),
                before: None,
                after: Some("Ada".into())
            }]
        );
        let updated = changes(
            &mut state,
            RecordEvent::RecordUpdated {
                datasheet: Datasheet::Employees,
                changes: [
                    ("first_name".to_owned(), json!("Augusta")),
                    ("email".to_owned(), Value::Null),
                ]
                .into(),
            },
        );
        assert_eq!(
            updated,
            vec![
                FieldChange {
                    field: "email".into(),
                    before: None,
                    after: None
                },
                FieldChange {
                    field: "firstName".into(),
                    before: Some("Ada".into()),
                    after: Some("Augusta".into())
                },
            ]
        );
        let archived = changes(
            &mut state,
            RecordEvent::RecordArchived {
                datasheet: Datasheet::Employees,
            },
        );
        assert_eq!(archived[0].before.as_deref(), Some("false"));
        assert_eq!(archived[0].after.as_deref(), Some("true"));
    }
}
