//! Reports: record counts grouped by a field, today (with the lists' filters) or as of any
//! past moment (replayed from the event history); headcount and the applicant pipeline.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use custos_domain::{CustomKind, Datasheet, FieldKind, Permission};
use custos_projections::accesses::ReadVia;
use custos_projections::record_query::{self, Field};

use super::record_query::{record_query, resolve_field, ListArgs};
use crate::auth::policy::check_datasheet;
use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::types::enums::DatasheetKind;
use crate::graphql::types::records::RecordsFilter;
use crate::service::audit::reports::{counts_as_of, AsOf};

/// How many records have one value of the grouped field (`null`: no value).
#[derive(SimpleObject)]
pub(crate) struct ReportGroup {
    value: Option<String>,
    count: i64,
}

/// Counts per value, largest first.
#[derive(SimpleObject)]
pub(crate) struct Report {
    datasheet: DatasheetKind,
    group_by: String,
    /// The moment an as-of report describes; `null` for today's records.
    as_of: Option<DateTime<Utc>>,
    /// Records counted (list fields count a record once per entry in `groups`).
    total: i64,
    groups: Vec<ReportGroup>,
}

/// The field to group by: any field but long texts, dates and times.
fn group_field(
    datasheet: Datasheet,
    schema: &custos_domain::CustomSchema,
    name: &str,
) -> Result<Field, ApiError> {
    let field = resolve_field(datasheet, schema, name, "groupBy")?;
    let groupable = match &field {
        Field::Data(spec) => !matches!(spec.kind, FieldKind::LongText { .. }),
        Field::Custom { kind, .. } => !matches!(kind, CustomKind::LongText),
        Field::CreatedAt | Field::UpdatedAt => false,
    };
    if groupable {
        Ok(field)
    } else {
        Err(ApiError::validation(
            "groupBy",
            format!("`{name}` cannot group a report"),
        ))
    }
}

fn check_moment(at: DateTime<Utc>) -> Result<(), ApiError> {
    if at > Utc::now() {
        return Err(ApiError::validation(
            "asOf",
            "`asOf` is in the future; reports describe the past and the present",
        ));
    }
    Ok(())
}

fn report(
    datasheet: Datasheet,
    group_by: String,
    as_of: Option<DateTime<Utc>>,
    counts: Vec<(Option<String>, i64)>,
    records: i64,
) -> Report {
    Report {
        datasheet: datasheet.into(),
        group_by,
        as_of,
        total: records,
        groups: counts
            .into_iter()
            .map(|(value, count)| ReportGroup { value, count })
            .collect(),
    }
}

async fn as_of_report(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    group_by: String,
    at: DateTime<Utc>,
    employed_only: bool,
) -> Result<Report, ApiError> {
    let cx = Cx::new(ctx)?;
    check_moment(at)?;
    let schema = cx.services.custom_schema(cx.tenant(), datasheet).await?;
    let field = group_field(datasheet, &schema, &group_by)?;
    let request = AsOf {
        datasheet,
        at,
        group_by: field.json_key(),
        employed_only,
    };
    let counted = counts_as_of(&cx.tenant().log, &request)
        .await
        .map_err(ApiError::internal)?;
    let mut conn = cx.tenant().pool.acquire().await?;
    cx.list_read(&mut conn, &counted.shown, ReadVia::Report)
        .await?;
    Ok(report(
        datasheet,
        group_by,
        Some(at),
        counted.counts,
        counted.records,
    ))
}

#[derive(Default)]
pub(crate) struct ReportsQuery;

#[Object]
impl ReportsQuery {
    /// Counts a datasheet's records per value of `groupBy` (any field but long texts and
    /// dates: e.g. `department`, `stage`, `custom.shirt_size`). Today's records take the
    /// lists' `filter`, `search` and `includeArchived`; with `asOf`, the records as they were
    /// at that moment are counted from the history (then without filters). Needs `report` on
    /// the datasheet.
    #[allow(clippy::too_many_arguments)]
    async fn report(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        group_by: String,
        #[graphql(
            desc = "The datasheet's filter, as its list takes it: `{employees: {department: {eq: \"Sales\"}}}`."
        )]
        filter: Option<RecordsFilter>,
        search: Option<String>,
        include_archived: Option<bool>,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Report, ApiError> {
        let cx = Cx::new(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        check_datasheet(cx.caller, datasheet, Permission::Report)?;
        if let Some(at) = as_of {
            if filter.is_some() || search.is_some() || include_archived.is_some() {
                return Err(ApiError::validation(
                    "asOf",
                    "a report as of a past moment counts the whole datasheet: no filter, search or includeArchived",
                ));
            }
            return as_of_report(ctx, datasheet, group_by, at, false).await;
        }
        let schema = cx.services.custom_schema(cx.tenant(), datasheet).await?;
        let field = group_field(datasheet, &schema, &group_by)?;
        let args = ListArgs {
            first: None,
            after: None,
            last: None,
            before: None,
            include_archived,
            filter,
            order_by: None,
            search,
            count: false,
        };
        let query = record_query(datasheet, &schema, args)?;
        let mut conn = cx.tenant().pool.acquire().await?;
        let groups = record_query::group_counts(&mut conn, &query, &field).await?;
        let records = record_query::count(&mut conn, &query).await?;
        // The records of small groups are recorded as read: their value can single them out.
        let mut shown: Vec<uuid::Uuid> = groups
            .iter()
            .flat_map(|g| g.members.iter().copied())
            .collect();
        shown.sort_unstable();
        shown.dedup();
        cx.list_read(&mut conn, &shown, ReadVia::Report).await?;
        let counts = groups.into_iter().map(|g| (g.value, g.count)).collect();
        Ok(report(datasheet, group_by, None, counts, records))
    }

    /// Employees employed at `asOf` (started by that day or without a start date, not ended
    /// before it, not archived then), from the history, per value of `groupBy` (default
    /// `department`). Needs `report` on employees.
    async fn headcount(
        &self,
        ctx: &Context<'_>,
        as_of: DateTime<Utc>,
        group_by: Option<String>,
    ) -> Result<Report, ApiError> {
        let group_by = group_by.unwrap_or_else(|| "department".to_owned());
        as_of_report(ctx, Datasheet::Employees, group_by, as_of, true).await
    }
}
