//! History as the API shows it: each event with who caused it and the change it made to
//! each field.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{SimpleObject, ID};
use chrono::{DateTime, NaiveDate, Utc};

use super::actor::Actor;
use crate::graphql::pagination::ConnectionTotal;
use crate::service::audit::history::{self, HistoryEntry};

/// One field's value before and after an event (`null`: no value).
#[derive(SimpleObject)]
pub(crate) struct FieldChange {
    field: String,
    before: Option<String>,
    after: Option<String>,
}

impl From<history::FieldChange> for FieldChange {
    fn from(c: history::FieldChange) -> Self {
        Self {
            field: c.field,
            before: c.before,
            after: c.after,
        }
    }
}

/// One event in a record's history.
#[derive(SimpleObject)]
pub(crate) struct HistoryEvent {
    /// The record's version after this event (1 for its creation).
    sequence: i64,
    event_type: String,
    recorded_at: DateTime<Utc>,
    /// The day a change of values takes effect (`null` for other events): later than
    /// `recordedAt` for a scheduled change, earlier for a correction.
    effective_from: Option<NaiveDate>,
    /// Whether the change was entered after the day it takes effect: it corrects the past.
    correction: bool,
    /// `null` only for events written without metadata.
    actor: Option<Actor>,
    /// The request that caused the event.
    request_id: Option<ID>,
    /// Every field the event changed.
    changes: Vec<FieldChange>,
}

impl From<HistoryEntry> for HistoryEvent {
    fn from(entry: HistoryEntry) -> Self {
        Self {
            sequence: entry.sequence,
            event_type: entry.event_type,
            recorded_at: entry.recorded_at,
            effective_from: entry.effective_from,
            correction: entry
                .effective_from
                .is_some_and(|day| day < entry.recorded_at.date_naive()),
            actor: entry
                .metadata
                .map(|m| Actor::new(m.actor.id(), Some(m.actor))),
            request_id: entry.metadata.map(|m| ID(m.request_id.to_string())),
            changes: entry.changes.into_iter().map(FieldChange::from).collect(),
        }
    }
}

pub(crate) type HistoryConnection = Connection<String, HistoryEvent, ConnectionTotal, EmptyFields>;
