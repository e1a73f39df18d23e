//! The audit log's export: recorded as an `AuditLogExported` event (who, the filter, how many
//! entries) before its one-time link is handed out; the download streams the entries, which
//! hold ids, types, times and field names only.

use std::sync::Arc;

use custos_domain::{DataExportCommand, ExportFormat};
use custos_projections::audit_log::{self, AuditFilter, AuditRow};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::links::{format_name, guarded, issue_link, stream, ExportTicket};
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::stores::downloads::NewDownload;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// Entries read per round trip while streaming.
const BATCH: i64 = 1_000;

impl Services {
    pub(crate) async fn start_audit_export(
        &self,
        principal: &Principal,
        filter: AuditFilter,
        format: ExportFormat,
        request_id: Uuid,
    ) -> Result<ExportTicket, ApiError> {
        let tenant = &principal.tenant;
        // The export covers what is logged now: entries up to the newest position.
        let upto: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM audit_log")
            .fetch_one(&tenant.pool)
            .await?;
        let upto = upto.unwrap_or(0);
        let count: i64 = audit_log::count(&tenant.pool, &filter, upto).await?;
        let stored = serde_json::json!({ "filter": filter, "upto": upto });
        let export_id = Uuid::now_v7();
        let command = DataExportCommand::AuditLog {
            filter: stored.clone(),
            count: usize::try_from(count).unwrap_or_default(),
        };
        self.record_export(principal, export_id, command, request_id)
            .await?;
        let link = NewDownload {
            filter: Some(&stored),
            actor: Some((principal.actor().id(), principal.actor().kind())),
            ..NewDownload::new("audit_log", export_id, format_name(format))
        };
        let ticket = issue_link(tenant, link, usize::try_from(count).unwrap_or_default()).await?;
        tracing::info!(tenant.id = %tenant.id, export.id = %export_id, count, "audit log exported");
        Ok(ticket)
    }
}

/// An audit log export to stream.
pub(crate) struct AuditDownload {
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) filter: AuditFilter,
    pub(crate) upto: i64,
    pub(crate) format: ExportFormat,
}

const COLUMNS: [&str; 12] = [
    "position",
    "recorded_at",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "actor_kind",
    "actor_id",
    "request_id",
    "datasheet",
    "subjects",
    "fields",
];

fn csv_rows(rows: &[AuditRow], header: bool) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    if header {
        writer.write_record(COLUMNS)?;
    }
    for row in rows {
        writer.write_record([
            row.global_position.to_string(),
            row.recorded_at.to_rfc3339(),
            row.aggregate_type.clone(),
            row.aggregate_id.clone(),
            row.sequence.to_string(),
            row.event_type.clone(),
            row.actor_kind.clone(),
            row.actor_id.to_string(),
            row.request_id.to_string(),
            row.datasheet.clone().unwrap_or_default(),
            row.subjects
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            guarded(row.fields.join("; ")),
        ])?;
    }
    Ok(writer.into_inner()?)
}

impl AuditDownload {
    pub(crate) fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        stream(
            self.tenant.id,
            "an audit log stream failed",
            move |sender| async move { self.write(&sender).await },
        )
    }

    async fn write(&self, sender: &mpsc::Sender<Vec<u8>>) -> anyhow::Result<()> {
        let mut before = self.upto.saturating_add(1);
        let mut first = true;
        if self.format == ExportFormat::Json {
            sender.send(b"[".to_vec()).await?;
        }
        loop {
            let rows =
                audit_log::entries(&self.tenant.pool, &self.filter, Some(before), BATCH).await?;
            let chunk = match self.format {
                ExportFormat::Csv => csv_rows(&rows, first)?,
                ExportFormat::Json => {
                    let mut chunk = Vec::new();
                    for (i, row) in rows.iter().enumerate() {
                        if !(first && i == 0) {
                            chunk.push(b',');
                        }
                        chunk.push(b'\n');
                        serde_json::to_writer(&mut chunk, row)?;
                    }
                    chunk
                }
            };
            if !chunk.is_empty() {
                sender.send(chunk).await?;
            }
            first = first && rows.is_empty();
            match rows.last() {
                Some(last) if rows.len() as i64 == BATCH => before = last.global_position,
                _ => break,
            }
        }
        if self.format == ExportFormat::Json {
            sender.send(b"\n]\n".to_vec()).await?;
        }
        Ok(())
    }
}
