//! CSV import through a column mapping, with a dry run and an all-or-nothing mode.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use custos_domain::{Datasheet, Permission};

use crate::auth::policy::check_datasheet;
use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::types::enums::DatasheetKind;
use crate::service::imports::{ColumnMapping, ImportRequest};

#[derive(InputObject)]
pub(crate) struct ColumnMappingInput {
    /// A column of the file's header row.
    column: String,
    /// The field it fills: `firstName`, `startDate`, `custom.<key>`...
    field: String,
}

/// One problem with one row.
#[derive(SimpleObject)]
pub(crate) struct ImportRowError {
    /// The row, counting from 1 after the header.
    row: i64,
    /// The field, when the problem is about one.
    field: Option<String>,
    message: String,
}

/// What an import did (or, in a dry run, would do).
#[derive(SimpleObject)]
pub(crate) struct ImportResult {
    dry_run: bool,
    /// Data rows in the file.
    rows: i64,
    /// How many records were created (always 0 in a dry run, and in all-or-nothing mode
    /// with any error).
    created: i64,
    created_ids: Vec<ID>,
    errors: Vec<ImportRowError>,
}

#[derive(Default)]
pub(crate) struct ImportsMutation;

#[Object]
impl ImportsMutation {
    /// Imports a CSV file (with a header row; the request may be up to 1 MiB) into a
    /// datasheet. Each mapped column fills a field; list fields and multiple choices take
    /// `;`-separated entries; an empty cell is no value. Every row is checked like a new
    /// record. `dryRun` writes nothing and reports every problem; `allOrNothing` (the
    /// default) writes nothing unless every row is valid; otherwise the valid rows are
    /// created and the others reported. Needs `create` on the datasheet.
    #[allow(clippy::too_many_arguments)]
    async fn import_records(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        csv: String,
        mapping: Vec<ColumnMappingInput>,
        #[graphql(desc = "Default false.")] dry_run: Option<bool>,
        #[graphql(desc = "Default true.")] all_or_nothing: Option<bool>,
    ) -> Result<ImportResult, ApiError> {
        let cx = Cx::new(ctx)?;
        let dry_run = dry_run.unwrap_or(false);
        let all_or_nothing = all_or_nothing.unwrap_or(true);
        let datasheet = Datasheet::from(datasheet);
        check_datasheet(cx.caller, datasheet, Permission::Create)?;
        let mapping = mapping
            .into_iter()
            .map(|m| ColumnMapping {
                column: m.column,
                field: m.field,
            })
            .collect();
        let outcome = cx
            .services
            .import_records(
                cx.caller,
                ImportRequest {
                    datasheet,
                    csv: &csv,
                    mapping,
                    dry_run,
                    all_or_nothing,
                },
                cx.request_id,
            )
            .await?;
        Ok(ImportResult {
            dry_run,
            rows: outcome.rows as i64,
            created: outcome.created.len() as i64,
            created_ids: outcome
                .created
                .iter()
                .map(|id| ID(id.to_string()))
                .collect(),
            errors: outcome
                .errors
                .into_iter()
                .map(|e| ImportRowError {
                    row: e.row as i64,
                    field: e.field,
                    message: e.message,
                })
                .collect(),
        })
    }
}
