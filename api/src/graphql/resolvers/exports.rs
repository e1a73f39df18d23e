//! Exports: `exportRecords` records the export and answers a one-time download link, which
//! `GET /exports/<token>` streams.

use async_graphql::{Context, InputType, Object};
use custos_domain::{Datasheet, ExportFormat, Permission};
use serde_json::json;

use super::record_query::{record_query, ListArgs};
use crate::auth::policy::check_datasheet;
use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::types::enums::{DatasheetKind, ExportFormatKind};
use crate::graphql::types::exports::{export_payload, ExportPayload};
use crate::graphql::types::records::{RecordsFilter, RecordsOrder};

#[derive(Default)]
pub(crate) struct ExportsMutation;

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
        #[graphql(
            desc = "The datasheet's filter, as its list takes it: `{employees: {department: {eq: \"Sales\"}}}`."
        )]
        filter: Option<RecordsFilter>,
        #[graphql(
            desc = "The datasheet's order, as its list takes it: `{employees: [{lastName: ASC}]}`."
        )]
        order_by: Option<RecordsOrder>,
        search: Option<String>,
        include_archived: Option<bool>,
        #[graphql(
            desc = "Start a CSV file with a UTF-8 byte order mark, for spreadsheets that need it (default false)."
        )]
        bom: Option<bool>,
    ) -> Result<ExportPayload, ApiError> {
        let cx = Cx::new(ctx)?;
        let bom = bom.unwrap_or(false);
        let datasheet = Datasheet::from(datasheet);
        check_datasheet(cx.caller, datasheet, Permission::Export)?;
        let arguments = json!({
            "filter": filter.as_ref().map(|f| f.to_value().into_json()).transpose().map_err(ApiError::internal)?,
            "orderBy": order_by.as_ref().map(|o| o.to_value().into_json()).transpose().map_err(ApiError::internal)?,
            "search": search,
            "includeArchived": include_archived.unwrap_or(false),
        });
        let services = cx.services;
        let schema = services.custom_schema(cx.tenant(), datasheet).await?;
        let query = record_query(
            datasheet,
            &schema,
            ListArgs {
                first: None,
                after: None,
                last: None,
                before: None,
                include_archived,
                filter,
                order_by,
                search,
                count: false,
            },
        )?;
        let format = ExportFormat::from(format);
        let ticket = services
            .start_export(
                cx.caller,
                &query,
                format,
                bom && format == ExportFormat::Csv,
                arguments,
                cx.request_id,
            )
            .await?;
        export_payload(ticket)
    }

    /// Exports the whole organisation as a tenant archive — every event as stored, its signed
    /// tree heads and signing key, every person's data key and users' two-factor secrets, and
    /// the record of who read whom — which `custos tenant import` brings into another Custos.
    /// Its secrets are sealed under a key derived from `passphrase` (Argon2id; at least 12
    /// characters, never stored) or, with `recipients` instead, under a random key encrypted
    /// to those age recipients, whose identities alone open it. Recorded as an
    /// `OrganizationExported` event before the link is handed out; the download is streamed
    /// from the database when the link is opened. `count` is the number of records.
    /// Administrators only.
    async fn export_organization(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "At least 12 characters; give this or `recipients`.")] passphrase: Option<
            String,
        >,
        #[graphql(
            desc = "Age X25519 recipients (`age1…`, as `age-keygen` prints them; at most 20) to encrypt the archive's key to, instead of a passphrase."
        )]
        recipients: Option<Vec<String>>,
    ) -> Result<ExportPayload, ApiError> {
        let cx = Cx::new(ctx)?;
        let ticket = cx
            .services
            .start_organization_export(
                cx.caller,
                passphrase.map(Into::into),
                recipients,
                cx.request_id,
            )
            .await?;
        export_payload(ticket)
    }
}
