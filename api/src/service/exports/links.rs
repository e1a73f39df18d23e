//! The bottom of every export: the one-time download link — issued here for every kind of
//! export, and only here — its lifetime, the ticket the caller gets, and the guard every CSV
//! cell passes through.

use chrono::{DateTime, Utc};
use custos_domain::{DataExportCommand, ExportFormat};
use secrecy::SecretString;
use std::future::Future;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::auth::tokens::{BearerToken, TokenKind};
use crate::error::ApiError;
use crate::infra::stores::downloads::{self, NewDownload};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// How long a download link works, once.
const LINK_LIFETIME_SECONDS: f64 = 300.0;

/// A started export.
pub(crate) struct ExportTicket {
    pub(crate) export_id: Uuid,
    pub(crate) count: usize,
    /// The download link's token, shown once.
    pub(crate) token: SecretString,
    pub(crate) expires_at: DateTime<Utc>,
}

impl Services {
    /// Records an export as the principal — who, when, what, as a `DataExport` stream of its
    /// own — before anything of it is handed out.
    pub(crate) async fn record_export(
        &self,
        principal: &Principal,
        export_id: Uuid,
        command: DataExportCommand,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        let metadata = self.actor(principal, request_id);
        self.command(tenant, &tenant.exports, export_id, command, metadata)
            .await
    }
}

/// Hands out a one-time link to `link`, an export of `count` items already recorded.
pub(crate) async fn issue_link(
    tenant: &Tenant,
    link: NewDownload<'_>,
    count: usize,
) -> Result<ExportTicket, ApiError> {
    let (token, stored) = BearerToken::generate(TokenKind::Download, tenant.id);
    let expires_at =
        downloads::insert(&tenant.pool, &stored.hash, &link, LINK_LIFETIME_SECONDS).await?;
    Ok(ExportTicket {
        export_id: link.export_id,
        count,
        token,
        expires_at,
    })
}

/// Runs `write` in a task of its own, which sends the file in chunks as it produces them. A
/// failure ends the stream early (the client sees a truncated file) and is logged once, as
/// `failure`.
pub(crate) fn stream<Fut>(
    tenant_id: Uuid,
    failure: &'static str,
    write: impl FnOnce(mpsc::Sender<Vec<u8>>) -> Fut,
) -> mpsc::Receiver<Vec<u8>>
where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(4);
    let writing = write(sender);
    tokio::spawn(async move {
        if let Err(err) = writing.await {
            tracing::error!(tenant.id = %tenant_id, error = %crate::error::redacted(&err), "{failure}");
        }
    });
    receiver
}

/// A format as a download link stores it.
pub(crate) fn format_name(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Json => "json",
    }
}

/// A stored format; anything but `json` is CSV.
pub(crate) fn stored_format(name: &str) -> ExportFormat {
    if name == "json" {
        ExportFormat::Json
    } else {
        ExportFormat::Csv
    }
}

/// The content type of a format.
pub(crate) fn content_type(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Json => "application/json",
    }
}

/// A cell that a spreadsheet would run as a formula is prefixed with `'` (OWASP's guard
/// against CSV injection).
pub(crate) fn guarded(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused() {
        assert_eq!(guarded("=1+1".into()), "'=1+1");
        assert_eq!(guarded("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(guarded("-2".into()), "'-2");
        assert_eq!(guarded("Ada".into()), "Ada");
    }
}
