//! The datasheets' lists, lookups, creation and changes — generated per datasheet from its
//! names (`datasheet_resolvers!`) — and what every record's lifecycle shares: hiring,
//! archiving, erasure and restriction, and finding every record about one person.

use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, MergedObject, Object, ID};
use chrono::NaiveDate;
use custos_domain::{Datasheet, Permission, RecordCommand};
use custos_projections::accesses::ReadVia;
use custos_projections::record_query::{self, QueryListError, Window};
use custos_projections::records::{self, RecordRow};
use serde::Serialize;
use uuid::Uuid;

use super::record_query::{record_query, ListArgs};
use crate::error::ApiError;
use crate::graphql::arguments::{parse_id, parse_version};
use crate::graphql::consistency::Consistency;
use crate::graphql::context::Cx;
use crate::graphql::pagination::{connection, ConnectionTotal};
use crate::graphql::types::enums::{ErasureGroundKind, RestrictionReasonKind};
use crate::graphql::types::records::{
    fields, Applicant, ApplicantFilter, ApplicantOrder, Contact, ContactFilter, ContactOrder,
    CreateApplicantInput, CreateContactInput, CreateEmployeeInput, Employee, EmployeeFilter,
    EmployeeOrder, HireApplicantInput, HirePayload, RecordNode, RecordsFilter, RecordsOrder,
    UpdateApplicantInput, UpdateContactInput, UpdateEmployeeInput,
};
use crate::service::records::{Answer, Changed};

/// A datasheet's list and lookup (two objects, so that the root query keeps its committed
/// order) and its create and update mutations, from the datasheet's names and descriptions.
macro_rules! datasheet_resolvers {
    (
        $datasheet:ident: $object:ident, $connection:ident, $filter:ident, $order:ident;
        $(#[doc = $list_doc:literal])*
        $list_query:ident::$list:ident;
        $(#[doc = $one_doc:literal])*
        $one_query:ident::$one:ident;
        $mutation:ident::$create_fn:ident($create:ident);
        $(#[doc = $update_doc:literal])*
        $update_fn:ident($update:ident);
    ) => {
        pub(crate) type $connection = Connection<String, $object, ConnectionTotal, EmptyFields>;

        #[derive(Default)]
        pub(crate) struct $list_query;

        #[Object]
        impl $list_query {
            $(#[doc = $list_doc])*
            #[allow(clippy::too_many_arguments)]
            async fn $list(
                &self,
                ctx: &Context<'_>,
                #[graphql(desc = "Page size from the start or from `after`, 1 to 100 (default 20).")]
                first: Option<i32>,
                after: Option<String>,
                #[graphql(desc = "Page size from the end or from `before`, 1 to 100 (default 20); not with `first` or `after`.")]
                last: Option<i32>,
                before: Option<String>,
                #[graphql(desc = "Include archived records (default false).")]
                include_archived: Option<bool>,
                filter: Option<$filter>,
                #[graphql(desc = "Up to three keys; creation order breaks ties.")]
                order_by: Option<Vec<$order>>,
                #[graphql(
                    desc = "Words that must each begin a word of the names, emails, company or notes."
                )]
                search: Option<String>,
            ) -> Result<$connection, ApiError> {
                let args = ListArgs {
                    first,
                    after,
                    last,
                    before,
                    include_archived,
                    filter: filter.map(|f| RecordsFilter::$datasheet(Box::new(f))),
                    order_by: order_by.map(RecordsOrder::$datasheet),
                    search,
                    count: ctx.look_ahead().field("totalCount").exists(),
                };
                page(&Cx::new(ctx)?, Datasheet::$datasheet, args).await
            }
        }

        #[derive(Default)]
        pub(crate) struct $one_query;

        #[Object]
        impl $one_query {
            $(#[doc = $one_doc])*
            async fn $one(&self, ctx: &Context<'_>, id: ID) -> Result<$object, ApiError> {
                one(&Cx::new(ctx)?, Datasheet::$datasheet, &id).await
            }
        }

        #[derive(Default)]
        pub(crate) struct $mutation;

        #[Object]
        impl $mutation {
            async fn $create_fn(
                &self,
                ctx: &Context<'_>,
                input: $create,
                #[graphql(
                    desc = "The day the record takes effect: today (the default) or earlier, for a record of the past entered now. Changes cannot take effect before it."
                )]
                effective_from: Option<NaiveDate>,
            ) -> Result<$object, ApiError> {
                let cx = Cx::new(ctx)?;
                let changed = cx
                    .services
                    .create_record(
                        cx.caller,
                        Datasheet::$datasheet,
                        fields(input)?,
                        effective_from,
                        cx.request_id,
                        answer(ctx),
                    )
                    .await?;
                Ok(answered(ctx, changed))
            }

            $(#[doc = $update_doc])*
            async fn $update_fn(
                &self,
                ctx: &Context<'_>,
                id: ID,
                expected_version: Option<i64>,
                input: $update,
                #[graphql(
                    desc = "The day the change takes effect (default today): a later day schedules it (the record lists it in `pendingChanges` until then), an earlier one corrects the past from that day on. From 1900-01-01 to ten years ahead, not before the record takes effect."
                )]
                effective_from: Option<NaiveDate>,
            ) -> Result<$object, ApiError> {
                update(
                    ctx,
                    Datasheet::$datasheet,
                    &id,
                    expected_version,
                    input,
                    effective_from,
                )
                .await
            }
        }
    };
}

datasheet_resolvers! {
    Employees: Employee, EmployeeConnection, EmployeeFilter, EmployeeOrder;
    /// Employees: in creation order unless `orderBy` says otherwise; archived ones only with
    /// `includeArchived`. `filter` and `search` narrow the list; `totalCount` counts every match.
    EmployeeList::employees;
    /// One employee, archived or not.
    EmployeeLookup::employee;
    EmployeeMutation::create_employee(CreateEmployeeInput);
    /// Changes the given fields. With `expectedVersion`, refuses (`CONFLICT`) if the record
    /// changed since the client read it.
    update_employee(UpdateEmployeeInput);
}

datasheet_resolvers! {
    Contacts: Contact, ContactConnection, ContactFilter, ContactOrder;
    /// Contacts: in creation order unless `orderBy` says otherwise; archived ones only with
    /// `includeArchived`. `filter` and `search` narrow the list; `totalCount` counts every match.
    ContactList::contacts;
    /// One contact, archived or not.
    ContactLookup::contact;
    ContactMutation::create_contact(CreateContactInput);
    /// Changes the given fields (see `updateEmployee`).
    update_contact(UpdateContactInput);
}

datasheet_resolvers! {
    Applicants: Applicant, ApplicantConnection, ApplicantFilter, ApplicantOrder;
    /// Job applicants: in creation order unless `orderBy` says otherwise; archived ones only with
    /// `includeArchived`. `filter` and `search` narrow the list; `totalCount` counts every match.
    ApplicantList::applicants;
    /// One job applicant, archived or not.
    ApplicantLookup::applicant;
    ApplicantMutation::create_applicant(CreateApplicantInput);
    /// Changes the given fields (see `updateEmployee`); moves the stage by the pipeline's rules.
    update_applicant(UpdateApplicantInput);
}

/// The datasheets' queries, in the committed schema's order.
#[derive(MergedObject, Default)]
pub(crate) struct RecordsQuery(
    EmployeeList,
    EmployeeLookup,
    ContactList,
    ContactLookup,
    ApplicantList,
    SubjectQuery,
    ApplicantLookup,
);

/// The datasheets' mutations and every record's lifecycle, in the committed schema's order.
#[derive(MergedObject, Default)]
pub(crate) struct RecordsMutation(
    EmployeeMutation,
    ContactMutation,
    ApplicantMutation,
    LifecycleMutation,
);

/// One page of a datasheet's records as a connection of `T`; the people on it are recorded as
/// read (one row for the page).
async fn page<T: From<RecordRow> + async_graphql::OutputType>(
    cx: &Cx<'_>,
    datasheet: Datasheet,
    args: ListArgs,
) -> Result<Connection<String, T, ConnectionTotal, EmptyFields>, ApiError> {
    let schema = cx.services.custom_schema(cx.tenant(), datasheet).await?;
    let query = record_query(datasheet, &schema, args)?;
    let cursor_argument = match query.window {
        Window::First { .. } => "after",
        Window::Last { .. } => "before",
    };
    let mut conn = cx.tenant().pool.acquire().await?;
    let page = record_query::list(&mut conn, &query)
        .await
        .map_err(|err| match err {
            QueryListError::Query(err) => ApiError::validation(cursor_argument, err.to_string()),
            // A value the database cannot read as its key's type comes only from a forged
            // cursor (the service writes them from the database's own values).
            QueryListError::Database(sqlx::Error::Database(db))
                if query.window_has_cursor() && db.code().is_some_and(|c| c.starts_with("22")) =>
            {
                ApiError::validation(
                    cursor_argument,
                    format!("`{cursor_argument}` is not a valid cursor"),
                )
            }
            QueryListError::Database(err) => ApiError::from(err),
        })?;
    let shown: Vec<uuid::Uuid> = page.items.iter().map(|(_, row)| row.id).collect();
    cx.list_read(&mut conn, &shown, ReadVia::List).await?;
    let edges = page
        .items
        .into_iter()
        .map(|(cursor, row)| (cursor, T::from(row)));
    Ok(connection(
        page.has_previous_page,
        page.has_next_page,
        page.total_count,
        edges,
    ))
}

/// One record of a datasheet by id.
async fn one<T: From<RecordRow>>(
    cx: &Cx<'_>,
    datasheet: Datasheet,
    id: &ID,
) -> Result<T, ApiError> {
    let id = parse_id("id", id)?;
    let row = cx.services.find_record(cx.tenant(), datasheet, id).await?;
    cx.record_reads(&[row.id], ReadVia::Record).await?;
    Ok(row.into())
}

async fn update<T: From<RecordRow>>(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    id: &ID,
    expected: Option<i64>,
    input: impl Serialize,
    effective_from: Option<NaiveDate>,
) -> Result<T, ApiError> {
    let cx = Cx::new(ctx)?;
    let id = parse_id("id", id)?;
    let changed = cx
        .services
        .update_record(
            cx.caller,
            datasheet,
            id,
            parse_version(expected)?,
            fields(input)?,
            effective_from,
            cx.request_id,
            answer(ctx),
        )
        .await?;
    Ok(answered(ctx, changed))
}

/// The fields of a changed record its change knows without the read models. Nothing else may
/// be added here: a record answered from its version alone ([`answered`]) holds no other value.
pub(crate) const WRITTEN_FIELDS: [&str; 4] = ["id", "datasheet", "version", "__typename"];

/// How a mutation that changes a record answers: from the change alone when its selection
/// (through fragments, whatever their conditions) reads nothing but [`WRITTEN_FIELDS`], without
/// waiting for the read models; otherwise from the read models once they show the change.
fn answer(ctx: &Context<'_>) -> Answer {
    if ctx
        .field()
        .selection_set()
        .all(|field| WRITTEN_FIELDS.contains(&field.name()))
    {
        Answer::Version
    } else {
        Answer::Row
    }
}

/// The GraphQL object of a changed record. One answered from its version carries only what
/// [`WRITTEN_FIELDS`] read; [`answer`] chose it because nothing else is selected.
fn answered<T: From<RecordRow>>(ctx: &Context<'_>, changed: Changed) -> T {
    match changed {
        Changed::Row(row) => row.into(),
        Changed::Version {
            id,
            datasheet,
            written,
        } => {
            if let Ok(consistency) = ctx.data::<Arc<Consistency>>() {
                consistency.wrote(written.position);
            }
            let now = chrono::Utc::now();
            RecordRow {
                id,
                datasheet: records::DatasheetName(datasheet),
                version: i64::try_from(written.version).unwrap_or(i64::MAX),
                archived: false,
                fields: sqlx::types::Json(serde_json::Map::new()),
                hired_from: None,
                hired_as: None,
                erased_at: None,
                restricted_at: None,
                restriction_reason: None,
                created_at: now,
                updated_at: now,
                created_by: Uuid::nil(),
                updated_by: Uuid::nil(),
            }
            .into()
        }
    }
}

/// Finding every record about one person.
#[derive(Default)]
pub(crate) struct SubjectQuery;

#[Object]
impl SubjectQuery {
    /// Every record about one person — as an employee, a contact or an applicant — found by
    /// email or by phone (give one) through the blind index, among the datasheets you may
    /// read. Erased records are not found.
    async fn find_subject(
        &self,
        ctx: &Context<'_>,
        email: Option<String>,
        phone: Option<String>,
    ) -> Result<Vec<RecordNode>, ApiError> {
        let cx = Cx::new(ctx)?;
        let index = &cx.tenant().blind_index;
        let digest = match (email, phone) {
            (Some(email), None) => index
                .email(&email)
                .ok_or_else(|| ApiError::validation("email", "not a valid email address"))?,
            (None, Some(phone)) => index
                .phone(&phone)
                .ok_or_else(|| ApiError::validation("phone", "not a valid phone number"))?,
            _ => {
                return Err(ApiError::validation(
                    "email",
                    "give exactly one of email and phone",
                ))
            }
        };
        let ids = index.records(&cx.tenant().pool, &digest).await?;
        let mut rows = records::records_by_id(&cx.tenant().pool, &ids).await?;
        rows.retain(|row| {
            row.erased_at.is_none() && cx.caller.may(row.datasheet(), Permission::Read)
        });
        rows.sort_by_key(|row| row.id);
        let found: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        cx.record_reads(&found, ReadVia::FindSubject).await?;
        Ok(rows.into_iter().map(RecordNode::from).collect())
    }
}

/// What every record's lifecycle shares.
#[derive(Default)]
pub(crate) struct LifecycleMutation;

impl LifecycleMutation {
    /// Archives or restores a record of any datasheet the principal may archive.
    async fn lifecycle(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        archive: bool,
    ) -> Result<RecordNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::Archive).await?;
        let expected_version = parse_version(expected_version)?;
        let command = if archive {
            RecordCommand::Archive { expected_version }
        } else {
            RecordCommand::Restore { expected_version }
        };
        let row = cx
            .services
            .record_lifecycle(cx.caller, &record, command, cx.request_id)
            .await?;
        Ok(row.into())
    }
}

#[Object]
impl LifecycleMutation {
    /// Hires an applicant at the `OFFER` stage: creates their employee record and moves them
    /// to `HIRED`; both records name each other.
    async fn hire_applicant(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        input: Option<HireApplicantInput>,
    ) -> Result<HirePayload, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let (applicant, employee) = cx
            .services
            .hire_applicant(
                cx.caller,
                id,
                parse_version(expected_version)?,
                fields(input.unwrap_or_default())?,
                cx.request_id,
            )
            .await?;
        Ok(HirePayload {
            applicant: applicant.into(),
            employee: employee.into(),
        })
    }

    /// Cancels a scheduled change (one of the record's `pendingChanges`, named by its
    /// `version`) before its day: it will not take effect; the cancellation is in the record's
    /// history. A change already in force is changed by another change instead
    /// (`VALIDATION` on `version`). Needs `update` on the record's datasheet.
    async fn cancel_scheduled_change(
        &self,
        ctx: &Context<'_>,
        id: ID,
        version: i64,
        expected_version: Option<i64>,
    ) -> Result<RecordNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::Update).await?;
        let version = u64::try_from(version)
            .map_err(|_| ApiError::validation("version", "a record's versions are 1 and up"))?;
        let command = RecordCommand::CancelScheduledChange {
            version,
            expected_version: parse_version(expected_version)?,
            today: custos_projections::records::today(),
        };
        let row = cx
            .services
            .record_lifecycle(cx.caller, &record, command, cx.request_id)
            .await?;
        Ok(row.into())
    }

    /// Archives a record of any datasheet: hidden from lists by default and read-only until
    /// restored. Needs `archive` on the record's datasheet.
    async fn archive_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> Result<RecordNode, ApiError> {
        self.lifecycle(ctx, id, expected_version, true).await
    }

    /// Erases a record's subject (GDPR Art. 17): the record's data key is destroyed, so none
    /// of its values can be read again — not from the read models, not from the history,
    /// which keeps each event's type, time, actor and field names with values marked erased.
    /// Irreversible; needs the record's current `version` and `erase` on its datasheet.
    async fn erase_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: i64,
        ground: ErasureGroundKind,
        #[graphql(desc = "Why, in your words; kept in clear: never the subject's personal data.")]
        note: Option<String>,
    ) -> Result<RecordNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::Erase).await?;
        let expected_version = parse_version(Some(expected_version))?.unwrap_or_default();
        let row = cx
            .services
            .erase_record(
                cx.caller,
                &record,
                expected_version,
                ground.into(),
                note,
                cx.request_id,
            )
            .await?;
        Ok(row.into())
    }

    /// Restricts processing of a record (GDPR Art. 18): it stays readable and exportable, and
    /// every change is refused (`VALIDATION`, reason `RESTRICTED`) until the restriction is
    /// lifted. Needs `erase` on the record's datasheet.
    async fn restrict_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: RestrictionReasonKind,
    ) -> Result<RecordNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::Erase).await?;
        let command = RecordCommand::Restrict {
            reason: reason.into(),
        };
        let row = cx
            .services
            .record_lifecycle(cx.caller, &record, command, cx.request_id)
            .await?;
        Ok(row.into())
    }

    /// Lifts a restriction of processing. Needs `erase` on the record's datasheet.
    async fn lift_restriction(&self, ctx: &Context<'_>, id: ID) -> Result<RecordNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&id, Permission::Erase).await?;
        let row = cx
            .services
            .record_lifecycle(
                cx.caller,
                &record,
                RecordCommand::LiftRestriction,
                cx.request_id,
            )
            .await?;
        Ok(row.into())
    }

    /// Restores an archived record. Needs `archive` on the record's datasheet.
    async fn restore_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> Result<RecordNode, ApiError> {
        self.lifecycle(ctx, id, expected_version, false).await
    }
}
