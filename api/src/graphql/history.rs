//! A record's history, replayed from the event store.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, SimpleObject, ID};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use custos_projections::api_tokens::ApiTokenRow;
use custos_projections::retention::PolicyRow;
use custos_projections::users::UserRow;

use super::records::ConnectionTotal;
use super::{load_api_token, load_user, principal};
use crate::error::ApiError;
use crate::history::{
    diff, record_history, record_states, role_history, state_fields, user_history, HistoryEntry,
};
use custos_domain::Permission;
use custos_projections::accesses::ReadVia;

/// One field's value before and after an event (`null`: no value).
#[derive(SimpleObject)]
pub struct FieldChange {
    field: String,
    before: Option<String>,
    after: Option<String>,
}

impl From<crate::history::FieldChange> for FieldChange {
    fn from(c: crate::history::FieldChange) -> Self {
        Self {
            field: c.field,
            before: c.before,
            after: c.after,
        }
    }
}

/// What kind of actor caused an event.
#[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq)]
pub enum ActorKind {
    User,
    ApiToken,
    /// A retention policy the service applied on its schedule.
    RetentionPolicy,
}

/// Who caused an event or last changed a record: a user, an integration through an API
/// token, or a retention policy.
pub struct Actor {
    id: Uuid,
    /// Known from event metadata; read models that keep only the id leave it to be looked up.
    known: Option<custos_domain::Actor>,
}

enum Resolved {
    User(UserRow),
    ApiToken(ApiTokenRow),
    RetentionPolicy(PolicyRow),
}

impl Actor {
    pub(crate) fn new(id: Uuid, known: Option<custos_domain::Actor>) -> Self {
        Self { id, known }
    }

    /// The user or token behind the id (ids are UUIDv7s: they never collide across kinds).
    async fn resolve(&self, ctx: &Context<'_>) -> Result<Option<Resolved>, ApiError> {
        if let Some(custos_domain::Actor::RetentionPolicy(id)) = self.known {
            let tenant = &super::principal(ctx)?.tenant;
            let policy = custos_projections::retention::policy(&tenant.pool, id).await?;
            return Ok(policy.map(Resolved::RetentionPolicy));
        }
        if !matches!(self.known, Some(custos_domain::Actor::ApiToken(_))) {
            if let Some(user) = load_user(ctx, self.id).await? {
                return Ok(Some(Resolved::User(user)));
            }
        }
        if !matches!(self.known, Some(custos_domain::Actor::User(_))) {
            if let Some(token) = load_api_token(ctx, self.id).await? {
                return Ok(Some(Resolved::ApiToken(token)));
            }
        }
        Ok(None)
    }
}

#[Object]
impl Actor {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// `null` when the actor is not a user or token of this organisation.
    async fn kind(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ActorKind>> {
        Ok(self.resolve(ctx).await?.map(|resolved| match resolved {
            Resolved::User(_) => ActorKind::User,
            Resolved::ApiToken(_) => ActorKind::ApiToken,
            Resolved::RetentionPolicy(_) => ActorKind::RetentionPolicy,
        }))
    }
    /// The user's or the token's current name.
    async fn name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(self.resolve(ctx).await?.map(|resolved| match resolved {
            Resolved::User(user) => user.name,
            Resolved::ApiToken(token) => token.name,
            Resolved::RetentionPolicy(policy) => policy.name,
        }))
    }
    /// The user's current email; `null` for API tokens.
    async fn email(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(match self.resolve(ctx).await? {
            Some(Resolved::User(user)) => Some(user.email),
            _ => None,
        })
    }
}

/// One event in a record's history.
#[derive(SimpleObject)]
pub struct HistoryEvent {
    /// The record's version after this event (1 for its creation).
    sequence: i64,
    event_type: String,
    recorded_at: DateTime<Utc>,
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
            actor: entry
                .metadata
                .map(|m| Actor::new(m.actor.id(), Some(m.actor))),
            request_id: entry.metadata.map(|m| ID(m.request_id.to_string())),
            changes: entry
                .changes
                .into_iter()
                .map(|c| FieldChange {
                    field: c.field,
                    before: c.before,
                    after: c.after,
                })
                .collect(),
        }
    }
}

pub type HistoryConnection = Connection<String, HistoryEvent, ConnectionTotal, EmptyFields>;

/// An opaque cursor for a position in an integer-ordered list.
pub(crate) fn encode_sequence(sequence: i64) -> String {
    URL_SAFE_NO_PAD.encode(sequence.to_be_bytes())
}

pub(crate) fn decode_sequence(raw: &str) -> Option<i64> {
    let bytes: [u8; 8] = URL_SAFE_NO_PAD.decode(raw).ok()?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// One field's value in a record as it was.
#[derive(SimpleObject)]
pub struct FieldValue {
    field: String,
    value: Option<String>,
}

/// A record exactly as it was at a moment, replayed from its events.
#[derive(SimpleObject)]
pub struct RecordAsOf {
    id: ID,
    /// The record's version then.
    version: i64,
    /// When its latest event up to that moment was recorded.
    changed_at: DateTime<Utc>,
    /// Every field that had a value (API names, values as in history; erased ones as
    /// `[erased]`), and `archived`, `restricted`, `erased`, `hiredFrom`, `hiredAs`.
    fields: Vec<FieldValue>,
}

#[derive(Default)]
pub struct HistoryQuery;

#[Object]
impl HistoryQuery {
    /// A record exactly as it was at `at`, replayed from its events (`history` on its
    /// datasheet). Before the record existed: `NOT_FOUND`; a time in the future: `VALIDATION`.
    async fn record_as_of(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: DateTime<Utc>,
    ) -> async_graphql::Result<RecordAsOf> {
        let record = super::records::authorized_record(ctx, &id, Permission::History).await?;
        super::records::record_reads(ctx, &[record.id], ReadVia::History).await?;
        if at > Utc::now() {
            return Err(ApiError::validation("at", "`at` is in the future").into());
        }
        let states = record_states(&principal(ctx)?.tenant.log, record.id)
            .await
            .map_err(ApiError::internal)?;
        let (changed_at, state) = states
            .iter()
            .take_while(|(recorded_at, _)| *recorded_at <= at)
            .last()
            .ok_or(ApiError::NotFound)?;
        Ok(RecordAsOf {
            id: ID(record.id.to_string()),
            version: i64::try_from(state.version()).map_err(ApiError::internal)?,
            changed_at: *changed_at,
            fields: state_fields(state)
                .into_iter()
                .map(|(field, value)| FieldValue { field, value })
                .collect(),
        })
    }

    /// The fields that differ between two versions of a record (0: before it existed;
    /// `history` on its datasheet). Versions it never had: `VALIDATION`.
    async fn record_diff(
        &self,
        ctx: &Context<'_>,
        id: ID,
        from_version: i64,
        to_version: i64,
    ) -> async_graphql::Result<Vec<FieldChange>> {
        let record = super::records::authorized_record(ctx, &id, Permission::History).await?;
        super::records::record_reads(ctx, &[record.id], ReadVia::History).await?;
        let states = record_states(&principal(ctx)?.tenant.log, record.id)
            .await
            .map_err(ApiError::internal)?;
        let last = states.len() as i64;
        for (name, version) in [("fromVersion", from_version), ("toVersion", to_version)] {
            if !(0..=last).contains(&version) {
                return Err(ApiError::validation(
                    name,
                    format!("the record has versions 0 to {last}"),
                )
                .into());
            }
        }
        if from_version > to_version {
            return Err(
                ApiError::validation("fromVersion", "`fromVersion` is after `toVersion`").into(),
            );
        }
        let empty = custos_domain::Record::default();
        let state = |version: i64| {
            usize::try_from(version - 1)
                .ok()
                .and_then(|i| states.get(i))
                .map_or(&empty, |(_, state)| state)
        };
        Ok(diff(state(from_version), state(to_version))
            .into_iter()
            .map(|c| FieldChange {
                field: c.field,
                before: c.before,
                after: c.after,
            })
            .collect())
    }

    /// Every change to a record, oldest first, with who made it and each field's value
    /// before and after. Replayed from the event store, not from a read model.
    async fn record_history(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<HistoryConnection> {
        let principal = principal(ctx)?;
        let id = super::records::authorized_record(ctx, &id, Permission::History)
            .await?
            .id;
        super::records::record_reads(ctx, &[id], ReadVia::History).await?;
        let entries = record_history(&principal.tenant.log, id)
            .await
            .map_err(ApiError::internal)?;
        Ok(history_page(entries, first, after)?)
    }

    /// Every change to a user — profile, roles, administrator, activation, password (never
    /// the hash), lock, second factor, erasure — and their logins and logouts as events
    /// without values (the login history has their origins). `history` on every datasheet.
    async fn user_history(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<HistoryConnection> {
        let id = super::parse_id("id", &id)?;
        let entries = user_history(&principal(ctx)?.tenant.log, id)
            .await
            .map_err(ApiError::internal)?;
        Ok(history_page(entries, first, after)?)
    }

    /// Every change to a role: its name and each permission granted or revoked. `history` on
    /// every datasheet.
    async fn role_history(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<HistoryConnection> {
        let id = super::parse_id("id", &id)?;
        let entries = role_history(&principal(ctx)?.tenant.log, id)
            .await
            .map_err(ApiError::internal)?;
        Ok(history_page(entries, first, after)?)
    }
}

/// One page of a stream's history (`NOT_FOUND` when the stream has no events).
fn history_page(
    entries: Vec<HistoryEntry>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<HistoryConnection, ApiError> {
    let first = first.unwrap_or(100);
    if !(1..=1000).contains(&first) {
        return Err(ApiError::validation(
            "first",
            "`first` must be between 1 and 1000",
        ));
    }
    let after = after
        .map(|raw| {
            decode_sequence(&raw)
                .ok_or_else(|| ApiError::validation("after", "`after` is not a valid cursor"))
        })
        .transpose()?;
    if entries.is_empty() {
        return Err(ApiError::NotFound);
    }
    let total_count = entries.len() as i64;
    let mut rest = entries
        .into_iter()
        .filter(|e| after.is_none_or(|after| e.sequence > after))
        .peekable();
    let page: Vec<HistoryEntry> = rest.by_ref().take(first as usize).collect();
    let mut connection = Connection::with_additional_fields(
        after.is_some(),
        rest.peek().is_some(),
        ConnectionTotal { total_count },
    );
    connection.edges.extend(
        page.into_iter()
            .map(|entry| Edge::new(encode_sequence(entry.sequence), HistoryEvent::from(entry))),
    );
    Ok(connection)
}
