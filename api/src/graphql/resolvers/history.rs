//! A record's history, replayed from the event store.

use async_graphql::{Context, Object, SimpleObject, ID};
use chrono::{DateTime, NaiveDate, Utc};

use custos_domain::Permission;
use custos_projections::accesses::ReadVia;

use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::context::Cx;
use crate::graphql::pagination::{connection, encode_sequence, page_size_within, sequence_after};
use crate::graphql::resolvers::reports::time_axes;
use crate::graphql::types::history::{FieldChange, HistoryConnection, HistoryEvent};
use crate::service::audit::history::{
    diff, record_history, role_history, state_fields, user_history, HistoryEntry, RecordStream,
};

/// One field's value in a record as it was.
#[derive(SimpleObject)]
pub(crate) struct FieldValue {
    field: String,
    value: Option<String>,
}

/// A record as the history had it at a moment, with the values in force on a day, replayed
/// from its events.
#[derive(SimpleObject)]
pub(crate) struct RecordAsOf {
    id: ID,
    /// The record's version then.
    version: i64,
    /// When its latest event up to that moment was recorded.
    changed_at: DateTime<Utc>,
    /// The moment of the history described.
    recorded_at: DateTime<Utc>,
    /// The day whose values are shown.
    effective_at: NaiveDate,
    /// Every field that had a value (API names, values as in history; erased ones as
    /// `[erased]`), and `archived`, `restricted`, `erased`, `hiredFrom`, `hiredAs`.
    fields: Vec<FieldValue>,
}

#[derive(Default)]
pub(crate) struct HistoryQuery;

#[Object]
impl HistoryQuery {
    /// A record as its history stood at `recordedAt` ("what the system said then"), with the
    /// values in force on `effectiveAt` ("what was true then"): either alone takes the other
    /// as now or as that moment's day (`at` is `recordedAt`'s older name). `history` on its
    /// datasheet. Before the record was recorded or took effect: `NOT_FOUND`; `recordedAt` in
    /// the future: `VALIDATION`.
    async fn record_as_of(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(deprecation = "use recordedAt")] at: Option<DateTime<Utc>>,
        recorded_at: Option<DateTime<Utc>>,
        effective_at: Option<NaiveDate>,
    ) -> Result<RecordAsOf, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::History).await?;
        let (recorded_at, effective_at) = match time_axes(at, recorded_at, effective_at) {
            Ok(Some(axes)) => axes,
            Ok(None) => {
                return Err(ApiError::validation(
                    "recordedAt",
                    "give `recordedAt`, `effectiveAt` or both",
                ))
            }
            Err(ApiError::Validation { message, field }) if at.is_some() => {
                // `at` keeps the name it always had in its errors.
                let field = field.map(|f| if f == "asOf" { "at".to_owned() } else { f });
                return Err(ApiError::Validation {
                    message: message.replace("`asOf`", "`at`"),
                    field,
                });
            }
            Err(err) => return Err(err),
        };
        cx.record_reads(&[record.id], ReadVia::History).await?;
        let (changed_at, state) = RecordStream::load(&cx.tenant().log, record.id)
            .await
            .map_err(ApiError::internal)?
            .recorded_by(recorded_at)
            .ok_or(ApiError::NotFound)?;
        if state.starts().is_some_and(|starts| starts > effective_at) {
            return Err(ApiError::NotFound);
        }
        Ok(RecordAsOf {
            id: ID(record.id.to_string()),
            version: i64::try_from(state.version()).map_err(ApiError::internal)?,
            changed_at,
            recorded_at,
            effective_at,
            fields: state_fields(&state, Some(effective_at))
                .into_iter()
                .map(|(field, value)| FieldValue { field, value })
                .collect(),
        })
    }

    /// The fields that differ between two versions of a record (0: before it existed;
    /// `history` on its datasheet): with `effectiveAt`, the values each version had in force
    /// on that day; without, with every change each version holds (scheduled ones too).
    /// Versions it never had: `VALIDATION`.
    async fn record_diff(
        &self,
        ctx: &Context<'_>,
        id: ID,
        from_version: i64,
        to_version: i64,
        effective_at: Option<NaiveDate>,
    ) -> Result<Vec<FieldChange>, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::History).await?;
        cx.record_reads(&[record.id], ReadVia::History).await?;
        let stream = RecordStream::load(&cx.tenant().log, record.id)
            .await
            .map_err(ApiError::internal)?;
        let last = stream.versions() as i64;
        for (name, version) in [("fromVersion", from_version), ("toVersion", to_version)] {
            if !(0..=last).contains(&version) {
                return Err(ApiError::validation(
                    name,
                    format!("the record has versions 0 to {last}"),
                ));
            }
        }
        if from_version > to_version {
            return Err(ApiError::validation(
                "fromVersion",
                "`fromVersion` is after `toVersion`",
            ));
        }
        // Both are within 0..=last, checked above.
        let (before, after) = stream.at_versions(from_version as usize, to_version as usize);
        Ok(diff(&before, &after, effective_at)
            .into_iter()
            .map(FieldChange::from)
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
    ) -> Result<HistoryConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = cx.authorized_record(&id, Permission::History).await?.id;
        cx.record_reads(&[id], ReadVia::History).await?;
        let entries = record_history(&cx.tenant().log, id)
            .await
            .map_err(ApiError::internal)?;
        history_page(entries, first, after)
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
    ) -> Result<HistoryConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let entries = user_history(&cx.tenant().log, id)
            .await
            .map_err(ApiError::internal)?;
        history_page(entries, first, after)
    }

    /// Every change to a role: its name and each permission granted or revoked. `history` on
    /// every datasheet.
    async fn role_history(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        after: Option<String>,
    ) -> Result<HistoryConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let entries = role_history(&cx.tenant().log, id)
            .await
            .map_err(ApiError::internal)?;
        history_page(entries, first, after)
    }
}

/// One page of a stream's history (`NOT_FOUND` when the stream has no events).
fn history_page(
    entries: Vec<HistoryEntry>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<HistoryConnection, ApiError> {
    let first = page_size_within("first", first, 100, 1000)?;
    let after = sequence_after(after)?;
    if entries.is_empty() {
        return Err(ApiError::NotFound);
    }
    let total_count = entries.len() as i64;
    let mut rest = entries
        .into_iter()
        .filter(|e| after.is_none_or(|after| e.sequence > after))
        .peekable();
    let page: Vec<HistoryEntry> = rest.by_ref().take(first as usize).collect();
    let has_next = rest.peek().is_some();
    let edges = page
        .into_iter()
        .map(|entry| (encode_sequence(entry.sequence), HistoryEvent::from(entry)));
    Ok(connection(after.is_some(), has_next, total_count, edges))
}
