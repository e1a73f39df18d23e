//! What a webhook can be told about, read from the event log without opening any event: a
//! delivery says which record, user or role changed, how, and its new version — never a value
//! (the receiver reads those through the API, with its own permissions).

use chrono::{DateTime, Utc};
use custos_domain::{Record, Role, User, WebhookTopic};
use serde_json::{json, Value};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::infra::event_store::log::{Position, HORIZON};

/// The aggregate types whose events may be delivered.
pub(crate) const TYPES: [&str; 3] = [
    <Record as cqrs_es::Aggregate>::TYPE,
    <User as cqrs_es::Aggregate>::TYPE,
    <Role as cqrs_es::Aggregate>::TYPE,
];

/// One committed event, as much as a delivery needs.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
}

impl Change {
    /// The topic this change is delivered under; `None` for what no webhook is told about
    /// (logins, passwords, second factors: security events stay in the audit log).
    pub(crate) fn topic(&self) -> Option<WebhookTopic> {
        use WebhookTopic::*;
        Some(
            match (self.aggregate_type.as_str(), self.event_type.as_str()) {
                ("record", "RecordCreated") => RecordCreated,
                ("record", "RecordUpdated" | "ApplicantHired" | "ScheduledChangeCancelled") => {
                    RecordUpdated
                }
                ("record", "RecordArchived" | "RecordRestored") => RecordArchived,
                ("record", "RecordErased") => RecordErased,
                ("record", "RecordRestricted" | "RestrictionLifted") => RecordRestricted,
                (
                    "user",
                    "UserRegistered"
                    | "UserRenamed"
                    | "EmailChanged"
                    | "RolesAssigned"
                    | "AdministratorGranted"
                    | "AdministratorRevoked"
                    | "UserDeactivated"
                    | "UserReactivated"
                    | "UserErased",
                ) => UserChanged,
                ("role", _) => RoleChanged,
                _ => return None,
            },
        )
    }

    /// The delivery's `data`: what changed, how, and its version now; `datasheet` for records.
    pub(crate) fn data(&self, datasheet: Option<&str>) -> Value {
        let id_field = match self.aggregate_type.as_str() {
            "record" => "recordId",
            "user" => "userId",
            _ => "roleId",
        };
        let mut data = json!({
            id_field: self.aggregate_id,
            "change": self.event_type,
            "version": self.sequence,
        });
        if let Some(datasheet) = datasheet {
            data["datasheet"] = json!(datasheet);
        }
        data
    }
}

/// The statement of [`after`]: `$1` the aggregate types, `$2`, `$3` the position after
/// which, `$4` the limit.
pub fn changes_after() -> String {
    format!(
        "SELECT e.* FROM unnest($1::text[]) AS t(aggregate_type)
         CROSS JOIN LATERAL (
             SELECT aggregate_type, aggregate_id, sequence, event_type, recorded_at,
                    transaction_id::text::bigint AS transaction_id, global_position
             FROM events
             WHERE events.aggregate_type = t.aggregate_type
               -- Both comparisons, as `events_after` has them (its documentation says why).
               AND (transaction_id, global_position) > ($2::text::xid8, $3)
               AND (events.aggregate_type, transaction_id, global_position)
                   > (t.aggregate_type, $2::text::xid8, $3)
               AND transaction_id < {HORIZON}::text::xid8
             ORDER BY events.transaction_id, events.global_position
             LIMIT $4
         ) AS e
         ORDER BY e.transaction_id, e.global_position
         LIMIT $4"
    )
}

/// Up to `limit` changes after `after`, in commit order, from transactions that have ended.
pub(crate) async fn after(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
) -> sqlx::Result<Vec<Change>> {
    let rows = sqlx::query(&changes_after())
        .bind(&TYPES[..])
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Change {
                position: Position::from_row(row)?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: row.try_get("sequence")?,
                event_type: row.try_get("event_type")?,
                recorded_at: row.try_get("recorded_at")?,
            })
        })
        .collect()
}

/// The datasheets of the records among `changes` (a record never changes datasheet).
pub(crate) async fn datasheets(
    conn: &mut PgConnection,
    changes: &[Change],
) -> sqlx::Result<std::collections::HashMap<Uuid, String>> {
    let ids: Vec<Uuid> = changes
        .iter()
        .filter(|c| c.aggregate_type == "record")
        .filter_map(|c| c.aggregate_id.parse().ok())
        .collect();
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, datasheet FROM records WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}
