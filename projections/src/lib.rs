//! Read models of Custos: for each, its tables, how each event changes them, and the queries
//! that GraphQL needs. The projector that feeds them lives in the API crate.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use custos_domain::{
    ApiToken, ApiTokenEvent, ConsentEvent, Consents, DataExport, DataExportEvent, EventMetadata,
    FieldSchema, FieldSchemaEvent, Incident, IncidentEvent, Organization, OrganizationEvent,
    Record, RecordEvent, RetentionEvent, RetentionPolicy, Role, RoleEvent, User, UserEvent,
    Webhook, WebhookEvent,
};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub mod accesses;
pub mod api_tokens;
pub mod audit_log;
pub mod consents;
pub mod custom_fields;
pub mod incidents;
pub mod logins;
pub mod organization;
pub mod page;
pub mod record_query;
pub mod record_versions;
pub mod records;
pub mod retention;
pub mod roles;
pub mod users;
pub mod webhooks;

pub use page::{Cursor, Page};

/// A domain event of any aggregate, decoded from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyEvent {
    Record(RecordEvent),
    User(UserEvent),
    Role(RoleEvent),
    Organization(OrganizationEvent),
    ApiToken(ApiTokenEvent),
    FieldSchema(FieldSchemaEvent),
    Consent(ConsentEvent),
    DataExport(DataExportEvent),
    Retention(RetentionEvent),
    Incident(IncidentEvent),
    Webhook(WebhookEvent),
}

impl AnyEvent {
    /// Decodes a stored (already decrypted) payload by its aggregate type. `Ok(None)` for an
    /// aggregate type no read model knows.
    pub fn decode(aggregate_type: &str, payload: Value) -> Result<Option<Self>, serde_json::Error> {
        Ok(match aggregate_type {
            Record::TYPE => Some(AnyEvent::Record(serde_json::from_value(payload)?)),
            User::TYPE => Some(AnyEvent::User(serde_json::from_value(payload)?)),
            Role::TYPE => Some(AnyEvent::Role(serde_json::from_value(payload)?)),
            Organization::TYPE => Some(AnyEvent::Organization(serde_json::from_value(payload)?)),
            ApiToken::TYPE => Some(AnyEvent::ApiToken(serde_json::from_value(payload)?)),
            FieldSchema::TYPE => Some(AnyEvent::FieldSchema(serde_json::from_value(payload)?)),
            Consents::TYPE => Some(AnyEvent::Consent(serde_json::from_value(payload)?)),
            DataExport::TYPE => Some(AnyEvent::DataExport(serde_json::from_value(payload)?)),
            RetentionPolicy::TYPE => Some(AnyEvent::Retention(serde_json::from_value(payload)?)),
            Incident::TYPE => Some(AnyEvent::Incident(serde_json::from_value(payload)?)),
            Webhook::TYPE => Some(AnyEvent::Webhook(serde_json::from_value(payload)?)),
            _ => None,
        })
    }
}

/// One event as a projection sees it: decoded, with its position and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedEvent {
    pub global_position: i64,
    pub aggregate_id: Uuid,
    /// The aggregate's version after this event.
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub metadata: EventMetadata,
    pub event: AnyEvent,
}

/// A table a projection writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// Columns that do not follow from the events alone (an insertion counter): left out when
    /// a rebuild is compared with the live table.
    pub incidental: &'static [&'static str],
    /// Its rows stay, set back to their first state, when the projection is reset (a one-row
    /// settings table) rather than being removed.
    pub kept_on_reset: bool,
    /// Its indexes that only reads use (no statement of the projection needs them): filling the
    /// table from nothing (an import, a move, a restore) builds them once at the end instead of
    /// maintaining them row by row.
    pub read_indexes: &'static [&'static str],
}

impl Table {
    /// A table whose every column follows from the events and whose rows a reset removes.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            incidental: &[],
            kept_on_reset: false,
            read_indexes: &[],
        }
    }

    /// The same table with indexes that only reads use.
    pub const fn read_indexes(self, read_indexes: &'static [&'static str]) -> Self {
        Self {
            read_indexes,
            ..self
        }
    }
}

/// A read model fed from the event stream. `apply` runs inside the projector's transaction,
/// together with the checkpoint update; it must be idempotent, so that replaying an event it
/// has already seen changes nothing.
#[async_trait]
pub trait Projection: Send + Sync {
    /// The projection's row in `projection_checkpoints`.
    fn name(&self) -> &'static str;

    /// The aggregate types whose events this projection reads; it is neither woken by nor
    /// waited for on commits of other types.
    fn aggregate_types(&self) -> &'static [&'static str];

    /// The tables it writes (and [`Projection::reset`] empties): what `custos verify
    /// --read-models` rebuilds and compares.
    fn tables(&self) -> &'static [Table];

    /// Applies one event to the read model.
    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()>;

    /// Applies events in order, all of them of the types it reads: one [`Projection::apply`]
    /// each unless the projection writes them with set-based statements.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
    ) -> sqlx::Result<()> {
        for event in events {
            self.apply(conn, event).await?;
        }
        Ok(())
    }

    /// Removes every row, before a rebuild from position 0.
    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()>;

    /// Brings the read model to `today` (UTC), for what takes effect on a day rather than with
    /// an event: the projector calls it when it starts and every minute, in a transaction of
    /// its own. It must leave the same rows however often it runs. Returns the changes that
    /// took effect.
    async fn on_day(
        &self,
        _conn: &mut PgConnection,
        _today: chrono::NaiveDate,
    ) -> sqlx::Result<Vec<TookEffect>> {
        Ok(Vec::new())
    }
}

/// A change recorded to take effect on a later day that has now taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TookEffect {
    pub record_id: uuid::Uuid,
    /// The record's version it was recorded at.
    pub sequence: i64,
    pub effective_from: chrono::NaiveDate,
}

/// One column of `rows` (a parameter of an insert from arrays, `unnest($1::uuid[], …)`).
pub(crate) fn column<'a, R, T>(rows: &'a [R], value: impl FnMut(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

/// Every read model, in the order their projectors are started.
pub fn all() -> Vec<Box<dyn Projection>> {
    vec![
        Box::new(users::UsersProjection),
        Box::new(roles::RolesProjection),
        Box::new(logins::LoginsProjection),
        Box::new(records::RecordsProjection),
        Box::new(record_versions::RecordVersionsProjection),
        Box::new(organization::OrganizationProjection),
        Box::new(api_tokens::ApiTokensProjection),
        Box::new(custom_fields::CustomFieldsProjection),
        Box::new(consents::ConsentsProjection),
        Box::new(accesses::RecordExportsProjection),
        Box::new(retention::RetentionPoliciesProjection),
        Box::new(incidents::IncidentsProjection),
        Box::new(audit_log::AuditLogProjection),
        Box::new(webhooks::WebhooksProjection),
    ]
}
