//! Reports: record counts grouped by a field, today (with the lists' filters) or as of any
//! past moment or effective day (from each record's history on both time axes); headcount and the applicant pipeline.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, NaiveDate, Utc};
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
    /// The moment of the history a report from the history describes (as `recordedAt`);
    /// `null` for today's records.
    as_of: Option<DateTime<Utc>>,
    /// The history as recorded up to this moment... (`null` for today's records)
    recorded_at: Option<DateTime<Utc>>,
    /// ... with the values in force on this day (`null` for today's records).
    effective_at: Option<NaiveDate>,
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

/// The two time axes of a question about the past: the history as recorded up to a moment
/// (`recordedAt`, or its older name `asOf`; default now) and the values in force on a day
/// (`effectiveAt`; default the day of that moment). `None` when neither is given.
pub(crate) fn time_axes(
    as_of: Option<DateTime<Utc>>,
    recorded_at: Option<DateTime<Utc>>,
    effective_at: Option<NaiveDate>,
) -> Result<Option<(DateTime<Utc>, NaiveDate)>, ApiError> {
    if as_of.is_some() && recorded_at.is_some() {
        return Err(ApiError::validation(
            "asOf",
            "give `recordedAt` or its older name `asOf`, not both",
        ));
    }
    let name = if as_of.is_some() {
        "asOf"
    } else {
        "recordedAt"
    };
    let Some(recorded) = recorded_at.or(as_of).or(effective_at.map(|_| Utc::now())) else {
        return Ok(None);
    };
    if recorded > Utc::now() {
        return Err(ApiError::validation(
            name,
            format!("`{name}` is in the future: the history is recorded up to now"),
        ));
    }
    let effective = effective_at.unwrap_or(recorded.date_naive());
    let today = Utc::now().date_naive();
    if effective < custos_domain::record::earliest_effective_day()
        || effective > custos_domain::record::latest_effective_day(today)
    {
        return Err(ApiError::validation(
            "effectiveAt",
            "`effectiveAt` must be a day from 1900-01-01 to ten years from today",
        ));
    }
    Ok(Some((recorded, effective)))
}

fn report(
    datasheet: Datasheet,
    group_by: String,
    axes: Option<(DateTime<Utc>, NaiveDate)>,
    counts: Vec<(Option<String>, i64)>,
    records: i64,
) -> Report {
    Report {
        datasheet: datasheet.into(),
        group_by,
        as_of: axes.map(|(recorded, _)| recorded),
        recorded_at: axes.map(|(recorded, _)| recorded),
        effective_at: axes.map(|(_, effective)| effective),
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
    (recorded_at, effective_at): (DateTime<Utc>, NaiveDate),
    current: bool,
    employed_only: bool,
) -> Result<Report, ApiError> {
    let cx = Cx::new(ctx)?;
    let schema = cx.services.custom_schema(cx.tenant(), datasheet).await?;
    let field = group_field(datasheet, &schema, &group_by)?;
    let request = AsOf {
        datasheet,
        recorded_at,
        effective_at,
        current,
        group_by: field.json_key(),
        employed_only,
    };
    let mut conn = cx.tenant().pool.acquire().await?;
    let counted = counts_as_of(&mut conn, &request).await?;
    cx.list_read(&mut conn, &counted.shown, ReadVia::Report)
        .await?;
    Ok(report(
        datasheet,
        group_by,
        Some((recorded_at, effective_at)),
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
    /// lists' `filter`, `search` and `includeArchived`. From the history instead (then without
    /// filters): `recordedAt` counts the records as recorded up to that moment ("what the
    /// system said then"), `effectiveAt` with the values in force on that day ("what was true
    /// then", corrections entered later included); either alone takes the other as now or as
    /// that moment's day. Needs `report` on the datasheet.
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
        #[graphql(deprecation = "use recordedAt")] as_of: Option<DateTime<Utc>>,
        recorded_at: Option<DateTime<Utc>>,
        effective_at: Option<NaiveDate>,
    ) -> Result<Report, ApiError> {
        let cx = Cx::new(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        check_datasheet(cx.caller, datasheet, Permission::Report)?;
        if let Some(axes) = time_axes(as_of, recorded_at, effective_at)? {
            if filter.is_some() || search.is_some() || include_archived.is_some() {
                return Err(ApiError::validation(
                    match (effective_at, recorded_at) {
                        (Some(_), _) => "effectiveAt",
                        (None, Some(_)) => "recordedAt",
                        (None, None) => "asOf",
                    },
                    "a report from the history counts the whole datasheet: no filter, search or includeArchived",
                ));
            }
            let current = as_of.is_none() && recorded_at.is_none();
            return as_of_report(ctx, datasheet, group_by, axes, current, false).await;
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

    /// Employees employed on `effectiveAt` (started by that day or without a start date, not
    /// ended before it), by their employment dates as in force that day — an employee entered
    /// later with an earlier start date counts — among the employees as recorded up to
    /// `recordedAt` and not archived then, per value of `groupBy` (default `department`).
    /// Defaults: `recordedAt` now, `effectiveAt` the day of `recordedAt`. Needs `report` on
    /// employees.
    async fn headcount(
        &self,
        ctx: &Context<'_>,
        #[graphql(deprecation = "use recordedAt")] as_of: Option<DateTime<Utc>>,
        recorded_at: Option<DateTime<Utc>>,
        effective_at: Option<NaiveDate>,
        group_by: Option<String>,
    ) -> Result<Report, ApiError> {
        let group_by = group_by.unwrap_or_else(|| "department".to_owned());
        let axes = time_axes(as_of, recorded_at, effective_at)?;
        let now = Utc::now();
        let axes = axes.unwrap_or((now, now.date_naive()));
        let current = as_of.is_none() && recorded_at.is_none();
        as_of_report(ctx, Datasheet::Employees, group_by, axes, current, true).await
    }
}
