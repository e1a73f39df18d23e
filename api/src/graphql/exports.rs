//! Exports: `exportRecords` records the export and answers a one-time download link, which
//! `GET /exports/<token>` streams.

use async_graphql::{Context, Enum, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, ExportFormat, Permission};
use secrecy::ExposeSecret;
use serde_json::json;

use super::record_query::{record_query, ListArgs, RecordFilter, RecordOrder};
use super::records::DatasheetKind;
use super::{principal, request, services};
use crate::error::ApiError;
use crate::service::ExportTicket;

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum ExportFormatKind {
    /// RFC 4180 CSV, UTF-8, one row per record; cells a spreadsheet would run as formulas
    /// (`=`, `+`, `-`, `@`) start with `'`; lists are joined with `; `.
    Csv,
    /// A JSON array of records.
    Json,
}

impl From<ExportFormatKind> for ExportFormat {
    fn from(kind: ExportFormatKind) -> Self {
        match kind {
            ExportFormatKind::Csv => ExportFormat::Csv,
            ExportFormatKind::Json => ExportFormat::Json,
        }
    }
}

/// A recorded export and where to download it.
#[derive(SimpleObject)]
pub struct ExportPayload {
    pub(crate) export_id: ID,
    /// How many records the file holds.
    pub(crate) count: i64,
    /// `GET` it once, within five minutes (no token header needed: the link is the
    /// credential).
    pub(crate) download_url: String,
    pub(crate) expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct ExportsMutation;

#[Object]
impl ExportsMutation {
    /// Exports the records a list with these arguments would show, all of them, in its
    /// order. The export is recorded (who, when, datasheet, arguments, records) before the
    /// link is handed out. Needs `export` on the datasheet.
    #[allow(clippy::too_many_arguments)]
    async fn export_records(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        format: ExportFormatKind,
        filter: Option<RecordFilter>,
        order_by: Option<Vec<RecordOrder>>,
        search: Option<String>,
        include_archived: Option<bool>,
        #[graphql(
            desc = "Start a CSV file with a UTF-8 byte order mark, for spreadsheets that need it (default false)."
        )]
        bom: Option<bool>,
    ) -> async_graphql::Result<ExportPayload> {
        let bom = bom.unwrap_or(false);
        let principal = principal(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        crate::authz::check_record(principal, datasheet, Permission::Export)?;
        let arguments = json!({
            "filter": filter,
            "orderBy": order_by,
            "search": search,
            "includeArchived": include_archived.unwrap_or(false),
        });
        let services = services(ctx)?;
        let schema = services.custom_schema(&principal.tenant, datasheet).await?;
        let query = record_query(
            datasheet,
            &schema,
            ListArgs {
                first: None,
                after: None,
                include_archived,
                filter,
                order_by,
                search,
            },
        )?;
        let format = ExportFormat::from(format);
        let ticket = services
            .start_export(
                principal,
                &query,
                format,
                bom && format == ExportFormat::Csv,
                arguments,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(export_payload(ticket)?)
    }
}

/// What a started export answers: its id, size and one-time link.
pub(crate) fn export_payload(ticket: ExportTicket) -> Result<ExportPayload, ApiError> {
    Ok(ExportPayload {
        export_id: ID(ticket.export_id.to_string()),
        count: i64::try_from(ticket.count).map_err(ApiError::internal)?,
        download_url: format!("/exports/{}", ticket.token.expose_secret()),
        expires_at: ticket.expires_at,
    })
}
