//! The `audit_log` read model: one entry per event of every stream, with who, when, what kind,
//! which records or users it is about and the names of the fields it changed — never a value.
//! Values are read from the event itself (through the codec) when an entry is shown.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use custos_domain::{
    ApiToken, ConsentEvent, Consents, DataExport, DataExportEvent, FieldSchema, FieldSchemaEvent,
    Incident, Organization, Record, RecordEvent, RetentionEvent, RetentionPolicy, Role, RoleEvent,
    User, Webhook,
};
use sqlx::{PgConnection, PgExecutor, QueryBuilder};
use uuid::Uuid;

use crate::{column, AnyEvent, ProjectedEvent, Projection};

/// Every aggregate type: the audit log reads them all.
const ALL_TYPES: &[&str] = &[
    <User as cqrs_es::Aggregate>::TYPE,
    <Role as cqrs_es::Aggregate>::TYPE,
    <Record as cqrs_es::Aggregate>::TYPE,
    <Organization as cqrs_es::Aggregate>::TYPE,
    <ApiToken as cqrs_es::Aggregate>::TYPE,
    <FieldSchema as cqrs_es::Aggregate>::TYPE,
    <DataExport as cqrs_es::Aggregate>::TYPE,
    <Consents as cqrs_es::Aggregate>::TYPE,
    <RetentionPolicy as cqrs_es::Aggregate>::TYPE,
    <Incident as cqrs_es::Aggregate>::TYPE,
    <Webhook as cqrs_es::Aggregate>::TYPE,
];

/// Projects every event into `audit_log`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLogProjection;

/// What an entry records of an event: aggregate type, event type, datasheet, subjects, fields.
struct Entry {
    aggregate_type: &'static str,
    event_type: String,
    datasheet: Option<&'static str>,
    subjects: Vec<Uuid>,
    fields: Vec<String>,
}

fn names<'a>(fields: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    fields.into_iter().map(str::to_owned).collect()
}

fn entry(event: &ProjectedEvent) -> Entry {
    let own = vec![event.aggregate_id];
    let (aggregate_type, event_type, datasheet, subjects, fields) = match &event.event {
        AnyEvent::Record(e) => {
            let fields = e.field_names();
            let datasheet = match e {
                RecordEvent::RecordCreated { datasheet, .. }
                | RecordEvent::RecordUpdated { datasheet, .. }
                | RecordEvent::RecordArchived { datasheet }
                | RecordEvent::RecordRestored { datasheet }
                | RecordEvent::ApplicantHired { datasheet, .. }
                | RecordEvent::RecordRestricted { datasheet, .. }
                | RecordEvent::RestrictionLifted { datasheet }
                | RecordEvent::ScheduledChangeCancelled { datasheet, .. }
                | RecordEvent::RecordErased { datasheet, .. } => datasheet.as_str(),
            };
            let mut subjects = own;
            if let RecordEvent::ApplicantHired { employee_id, .. } = e {
                subjects.push(*employee_id);
            }
            (
                <Record as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                Some(datasheet),
                subjects,
                fields,
            )
        }
        AnyEvent::User(e) => {
            let fields = e.field_names();
            (
                <User as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                None,
                own,
                fields,
            )
        }
        AnyEvent::Role(e) => {
            let fields = match e {
                RoleEvent::RoleCreated { .. } => names(["name", "permissions"]),
                RoleEvent::RoleRenamed { .. } => names(["name"]),
                RoleEvent::PermissionGranted { .. } | RoleEvent::PermissionRevoked { .. } => {
                    names(["permissions"])
                }
                RoleEvent::RoleDeleted => Vec::new(),
            };
            (
                <Role as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                None,
                own,
                fields,
            )
        }
        AnyEvent::Organization(e) => (
            <Organization as cqrs_es::Aggregate>::TYPE,
            e.event_type(),
            None,
            Vec::new(),
            names(["two_factor_required"]),
        ),
        AnyEvent::ApiToken(e) => (
            <ApiToken as cqrs_es::Aggregate>::TYPE,
            e.event_type(),
            None,
            own,
            Vec::new(),
        ),
        AnyEvent::FieldSchema(e) => {
            let (datasheet, key) = match e {
                FieldSchemaEvent::CustomFieldAdded { datasheet, key, .. }
                | FieldSchemaEvent::CustomFieldChanged { datasheet, key, .. }
                | FieldSchemaEvent::CustomFieldRetired { datasheet, key } => (datasheet, key),
            };
            (
                <FieldSchema as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                Some(datasheet.as_str()),
                Vec::new(),
                vec![format!("custom.{key}")],
            )
        }
        AnyEvent::DataExport(e) => {
            let datasheet = match e {
                DataExportEvent::RecordsExported { datasheet, .. } => Some(datasheet.as_str()),
                _ => None,
            };
            (
                <DataExport as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                datasheet,
                e.record_ids().to_vec(),
                Vec::new(),
            )
        }
        AnyEvent::Consent(e) => {
            let (datasheet, purpose) = match e {
                ConsentEvent::ConsentGiven {
                    datasheet, purpose, ..
                }
                | ConsentEvent::ConsentWithdrawn {
                    datasheet, purpose, ..
                } => (Some(datasheet.as_str()), vec![purpose.clone()]),
                ConsentEvent::Redacted => (None, Vec::new()),
            };
            (
                <Consents as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                datasheet,
                own,
                purpose,
            )
        }
        AnyEvent::Retention(e) => {
            let subjects = match e {
                RetentionEvent::RetentionApplied { erased } => erased.clone(),
                _ => Vec::new(),
            };
            (
                <RetentionPolicy as cqrs_es::Aggregate>::TYPE,
                e.event_type(),
                None,
                subjects,
                Vec::new(),
            )
        }
        AnyEvent::Incident(e) => (
            <Incident as cqrs_es::Aggregate>::TYPE,
            e.event_type(),
            None,
            Vec::new(),
            Vec::new(),
        ),
        AnyEvent::Webhook(e) => (
            <Webhook as cqrs_es::Aggregate>::TYPE,
            e.event_type(),
            None,
            own,
            Vec::new(),
        ),
    };
    Entry {
        aggregate_type,
        event_type,
        datasheet,
        subjects,
        fields,
    }
}

#[async_trait]
impl Projection for AuditLogProjection {
    fn name(&self) -> &'static str {
        "audit_log"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        ALL_TYPES
    }
    fn tables(&self) -> &'static [crate::Table] {
        &[crate::Table {
            name: "audit_log",
            incidental: &["feed_seq"],
            kept_on_reset: false,
            read_indexes: &[
                "audit_log_by_time",
                "audit_log_by_actor",
                "audit_log_by_type",
                "audit_log_by_subject",
            ],
        }]
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        self.apply_all(conn, &[event]).await
    }

    /// One insert of every entry, from arrays (as the records projection's creations): one
    /// prepared statement for any number of entries. An entry's subjects and fields, lists of
    /// their own, pass as array literals (`unnest` takes no array of arrays), in `events`'
    /// order, which `feed_seq` numbers.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
    ) -> sqlx::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = events.iter().map(|event| entry(event)).collect();
        sqlx::query(
            "INSERT INTO audit_log (global_position, recorded_at, aggregate_type, aggregate_id,
                                    sequence, event_type, actor_id, actor_kind, request_id,
                                    datasheet, subjects, fields)
             SELECT global_position, recorded_at, aggregate_type, aggregate_id, sequence,
                    event_type, actor_id, actor_kind, request_id, datasheet, subjects::uuid[],
                    fields::text[]
             FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::uuid[], $8::text[], $9::uuid[], $10::text[],
                         $11::text[], $12::text[])
                  WITH ORDINALITY
                  AS e(global_position, recorded_at, aggregate_type, aggregate_id, sequence,
                       event_type, actor_id, actor_kind, request_id, datasheet, subjects,
                       fields, n)
             ORDER BY n
             ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(column(events, |event| event.global_position))
        .bind(column(events, |event| event.recorded_at))
        .bind(column(&entries, |entry| entry.aggregate_type))
        .bind(column(events, |event| event.aggregate_id.to_string()))
        .bind(column(events, |event| event.sequence))
        .bind(column(&entries, |entry| entry.event_type.as_str()))
        .bind(column(events, |event| event.metadata.actor.id()))
        .bind(column(events, |event| event.metadata.actor.kind()))
        .bind(column(events, |event| event.metadata.request_id))
        .bind(column(&entries, |entry| entry.datasheet))
        .bind(column(&entries, |entry| array_literal(&entry.subjects)))
        .bind(column(&entries, |entry| array_literal(&entry.fields)))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM audit_log").execute(conn).await?;
        Ok(())
    }
}

/// `values` as a PostgreSQL array literal: each element double-quoted, a `"` or `\` in it
/// escaped by a backslash, so that any text PostgreSQL takes (none holds a NUL) reads back as
/// itself (`{}` when there is none).
fn array_literal<T: std::fmt::Display>(values: &[T]) -> String {
    let mut literal = String::from("{");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in value.to_string().chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct AuditRow {
    pub global_position: i64,
    pub recorded_at: DateTime<Utc>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub actor_id: Uuid,
    pub actor_kind: String,
    pub request_id: Uuid,
    pub datasheet: Option<String>,
    pub subjects: Vec<Uuid>,
    pub fields: Vec<String>,
}

/// Which entries to show; every part optional.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditFilter {
    pub actor: Option<Uuid>,
    pub datasheet: Option<String>,
    pub subject: Option<Uuid>,
    pub event_types: Option<Vec<String>>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Up to `limit` entries matching `filter`, newest first, before the position `before`.
pub async fn entries<'e>(
    db: impl PgExecutor<'e>,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    let mut query = QueryBuilder::new(
        "SELECT global_position, recorded_at, aggregate_type, aggregate_id, sequence, event_type,
                actor_id, actor_kind, request_id, datasheet, subjects, fields
         FROM audit_log WHERE true",
    );
    if let Some(before) = before {
        query.push(" AND global_position < ").push_bind(before);
    }
    push_filter(&mut query, filter);
    query
        .push(" ORDER BY global_position DESC LIMIT ")
        .push_bind(limit);
    query.build_query_as().persistent(false).fetch_all(db).await
}

fn push_filter(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &AuditFilter) {
    if let Some(actor) = filter.actor {
        query.push(" AND actor_id = ").push_bind(actor);
    }
    if let Some(datasheet) = &filter.datasheet {
        query.push(" AND datasheet = ").push_bind(datasheet.clone());
    }
    if let Some(subject) = filter.subject {
        query
            .push(" AND subjects @> ")
            .push_bind(vec![subject])
            .push("::uuid[]");
    }
    if let Some(types) = &filter.event_types {
        query
            .push(" AND event_type = ANY(")
            .push_bind(types.clone())
            .push(")");
    }
    if let Some(from) = filter.from {
        query.push(" AND recorded_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND recorded_at <= ").push_bind(to);
    }
}

/// How many entries up to the position `upto` match `filter`.
pub async fn count<'e>(
    db: impl PgExecutor<'e>,
    filter: &AuditFilter,
    upto: i64,
) -> sqlx::Result<i64> {
    let mut query = QueryBuilder::new("SELECT count(*) FROM audit_log WHERE global_position <= ");
    query.push_bind(upto);
    push_filter(&mut query, filter);
    query
        .build_query_scalar()
        .persistent(false)
        .fetch_one(db)
        .await
}

/// Entries added after the entry of the event at position `after` (from the first when
/// `None`), in the order they were added (`feed_seq`), at most `limit`.
///
/// The place is kept by the event's position, not by `feed_seq`: a rebuild of the audit log
/// numbers the entries again (without the gaps of the live table), in the same order. `None`
/// while the entry at `after` is missing (the read model reset and being filled again).
pub async fn added_after(
    db: &mut PgConnection,
    after: Option<i64>,
    limit: i64,
) -> sqlx::Result<Option<Vec<AuditRow>>> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT global_position, recorded_at, aggregate_type, aggregate_id, sequence, event_type,
                actor_id, actor_kind, request_id, datasheet, subjects, fields
         FROM audit_log
         WHERE feed_seq > (SELECT coalesce(max(feed_seq), CASE WHEN $1::bigint IS NULL THEN 0 END)
                           FROM audit_log WHERE global_position = $1)
         ORDER BY feed_seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *db)
    .await?;
    if rows.is_empty() {
        if let Some(after) = after {
            let there: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT FROM audit_log WHERE global_position = $1)",
            )
            .bind(after)
            .fetch_one(&mut *db)
            .await?;
            if !there {
                return Ok(None);
            }
        }
    }
    Ok(Some(rows))
}

/// The position of the event of the newest entry (`None` when the log is empty): where a feed
/// that starts now starts.
pub async fn feed_head<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT global_position FROM audit_log ORDER BY feed_seq DESC LIMIT 1")
        .fetch_optional(db)
        .await
}
