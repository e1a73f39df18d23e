//! The audit log's export: recorded as an `AuditLogExported` event (who, the filter, how many
//! entries) before its one-time link is handed out; the download streams the entries, which
//! hold ids, types, times and field names only.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_domain::{DataExportCommand, ExportFormat};
use custos_projections::audit_log::{self, AuditFilter, AuditRow};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::exports::{format_name, guarded, ExportTicket, LINK_LIFETIME_SECONDS};
use super::Services;
use crate::auth::{BearerToken, Principal, TokenKind};
use crate::error::ApiError;
use crate::tenancy::Tenant;

/// Entries read per round trip while streaming.
const BATCH: i64 = 1_000;

impl Services {
    pub async fn start_audit_export(
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
        self.execute(
            tenant,
            &tenant.exports,
            export_id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        let (token, hashed) = BearerToken::generate(TokenKind::Download, tenant.id);
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO export_downloads (token_hash, export_id, kind, format, bom, record_ids, filter, expires_at)
             VALUES ($1, $2, 'audit_log', $3, false, '{}', $4, now() + $5 * interval '1 second')
             RETURNING expires_at",
        )
        .bind(&hashed.hash)
        .bind(export_id)
        .bind(format_name(format))
        .bind(&stored)
        .bind(LINK_LIFETIME_SECONDS)
        .fetch_one(&tenant.pool)
        .await?;
        tracing::info!(tenant.id = %tenant.id, export.id = %export_id, count, "audit log exported");
        Ok(ExportTicket {
            export_id,
            count: usize::try_from(count).unwrap_or_default(),
            token,
            expires_at,
        })
    }
}

/// An audit log export to stream.
pub struct AuditDownload {
    pub tenant: Arc<Tenant>,
    pub filter: AuditFilter,
    pub upto: i64,
    pub format: ExportFormat,
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
    pub fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(err) = self.write(&sender).await {
                tracing::error!(tenant.id = %self.tenant.id, error = %crate::error::redacted(&err), "an audit log stream failed");
            }
        });
        receiver
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
