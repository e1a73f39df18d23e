//! Exports: a datasheet's records (with the lists' filters) as CSV or JSON. Starting an export
//! records it as an event — who, when, which datasheet, filter and records — and hands out a
//! one-time download link; the download streams the rows in batches, so memory stays flat
//! whatever the size.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_domain::custom_field::CUSTOM_PREFIX;
use custos_domain::{
    Actor, CustomSchema, DataExportCommand, Datasheet, EventMetadata, ExportFormat, FieldKind,
};
use custos_projections::record_query::{self, RecordQuery};
use custos_projections::records::{self, RecordRow};
use secrecy::SecretString;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Services;
use crate::auth::{BearerToken, Principal, TokenKind};
use crate::error::{api_field_name, ApiError};
use crate::tenancy::Tenant;

/// How long a download link works, once.
pub(super) const LINK_LIFETIME_SECONDS: f64 = 300.0;
/// Rows read per round trip while streaming.
const BATCH: usize = 500;

/// A started export.
pub struct ExportTicket {
    pub export_id: Uuid,
    pub count: usize,
    /// The download link's token, shown once.
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
}

/// An opened download link: what to send.
pub enum Download {
    /// A datasheet's records, streamed in batches.
    Records(RecordsDownload),
    /// A data subject's trail, built (and its export recorded) when the link was opened.
    SubjectTrail(super::trail::TrailBundle),
    /// The people a breach affected, streamed in batches.
    NotificationList(super::breaches::NotificationList),
    /// Entries of the audit log, streamed in batches.
    AuditLog(super::audit::AuditDownload),
}

/// A datasheet's records to stream.
pub struct RecordsDownload {
    pub tenant: Arc<Tenant>,
    pub datasheet: Datasheet,
    pub format: ExportFormat,
    pub bom: bool,
    pub record_ids: Vec<Uuid>,
    pub schema: CustomSchema,
}

/// A format as a download link stores it.
pub(super) fn format_name(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Json => "json",
    }
}

/// A stored format; anything but `json` is CSV.
fn stored_format(name: &str) -> ExportFormat {
    if name == "json" {
        ExportFormat::Json
    } else {
        ExportFormat::Csv
    }
}

impl Services {
    /// Records an export of the records `query` selects (in its order) and hands out its
    /// download link.
    pub async fn start_export(
        &self,
        principal: &Principal,
        query: &RecordQuery,
        format: ExportFormat,
        bom: bool,
        filter: Value,
        request_id: Uuid,
    ) -> Result<ExportTicket, ApiError> {
        let tenant = &principal.tenant;
        let mut conn = tenant.pool.acquire().await?;
        let record_ids = record_query::ids(&mut conn, query).await?;
        drop(conn);
        let export_id = Uuid::now_v7();
        let count = record_ids.len();
        let command = DataExportCommand::Record {
            datasheet: query.datasheet,
            format,
            filter,
            record_ids: record_ids.clone(),
        };
        self.execute(
            tenant,
            &tenant.exports,
            export_id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        let (token, stored) = BearerToken::generate(TokenKind::Download, tenant.id);
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO export_downloads (token_hash, export_id, datasheet, format, bom, record_ids, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 second') RETURNING expires_at",
        )
        .bind(&stored.hash)
        .bind(export_id)
        .bind(query.datasheet.as_str())
        .bind(format_name(format))
        .bind(bom)
        .bind(&record_ids)
        .bind(LINK_LIFETIME_SECONDS)
        .fetch_one(&tenant.pool)
        .await?;
        tracing::info!(tenant.id = %tenant.id, export.id = %export_id, count, "records exported");
        Ok(ExportTicket {
            export_id,
            count,
            token,
            expires_at,
        })
    }

    /// Uses up a download link; `None` when it is unknown, used or expired.
    pub async fn open_download(&self, token: &str) -> Result<Option<Download>, ApiError> {
        let Some(parsed) = BearerToken::parse(token).filter(|t| t.kind == TokenKind::Download)
        else {
            return Ok(None);
        };
        let Some(tenant) = self
            .tenancy
            .get(parsed.tenant_id)
            .await
            .map_err(ApiError::internal)?
        else {
            return Ok(None);
        };
        let row: Option<DownloadRow> = sqlx::query_as(
            "UPDATE export_downloads SET used_at = now()
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
             RETURNING kind, export_id, datasheet, format, bom, record_ids, actor_id, actor_kind, request_id, filter",
        )
        .bind(&parsed.hash)
        .fetch_optional(&tenant.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let corrupt = || ApiError::internal(anyhow::anyhow!("a download link is malformed"));
        match row.kind.as_str() {
            "subject_trail" => {
                let actor = row
                    .actor_kind
                    .as_deref()
                    .zip(row.actor_id)
                    .and_then(|(kind, id)| Actor::from_parts(kind, id))
                    .ok_or_else(corrupt)?;
                let metadata =
                    EventMetadata::new(actor, row.request_id.unwrap_or_else(Uuid::now_v7));
                let bundle = self
                    .build_subject_trail(&tenant, row.export_id, &row.record_ids, metadata)
                    .await?;
                Ok(Some(Download::SubjectTrail(bundle)))
            }
            "audit_log" => {
                let stored = row.filter.ok_or_else(corrupt)?;
                let filter =
                    serde_json::from_value(stored["filter"].clone()).map_err(|_| corrupt())?;
                let upto = stored["upto"].as_i64().ok_or_else(corrupt)?;
                let format = stored_format(&row.format);
                Ok(Some(Download::AuditLog(super::audit::AuditDownload {
                    tenant,
                    filter,
                    upto,
                    format,
                })))
            }
            "notification_list" => Ok(Some(Download::NotificationList(
                super::breaches::NotificationList {
                    tenant,
                    record_ids: row.record_ids,
                },
            ))),
            _ => {
                let datasheet = row
                    .datasheet
                    .as_deref()
                    .and_then(Datasheet::parse)
                    .ok_or_else(corrupt)?;
                let format = stored_format(&row.format);
                let schema = self.custom_schema(&tenant, datasheet).await?;
                Ok(Some(Download::Records(RecordsDownload {
                    tenant,
                    datasheet,
                    format,
                    bom: row.bom,
                    record_ids: row.record_ids,
                    schema,
                })))
            }
        }
    }
}

/// A download link as stored.
#[derive(sqlx::FromRow)]
struct DownloadRow {
    kind: String,
    export_id: Uuid,
    datasheet: Option<String>,
    format: String,
    bom: bool,
    record_ids: Vec<Uuid>,
    actor_id: Option<Uuid>,
    actor_kind: Option<String>,
    request_id: Option<Uuid>,
    filter: Option<Value>,
}

impl Download {
    /// The file name a browser saves the download as.
    pub fn file_name(&self) -> String {
        let today = Utc::now().format("%Y-%m-%d");
        match self {
            Download::Records(records) => format!(
                "{}-{today}.{}",
                records.datasheet.as_str(),
                format_name(records.format)
            ),
            Download::SubjectTrail(_) => format!("subject-trail-{today}.zip"),
            Download::NotificationList(_) => format!("breach-notification-list-{today}.csv"),
            Download::AuditLog(audit) => format!("audit-log-{today}.{}", format_name(audit.format)),
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Download::Records(records) => match records.format {
                ExportFormat::Csv => "text/csv; charset=utf-8",
                ExportFormat::Json => "application/json",
            },
            Download::SubjectTrail(_) => "application/zip",
            Download::NotificationList(_) => "text/csv; charset=utf-8",
            Download::AuditLog(audit) => match audit.format {
                ExportFormat::Csv => "text/csv; charset=utf-8",
                ExportFormat::Json => "application/json",
            },
        }
    }

    /// The file in chunks, as they are produced.
    pub fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        match self {
            Download::Records(records) => records.stream(),
            Download::SubjectTrail(bundle) => {
                let (sender, receiver) = mpsc::channel(1);
                tokio::spawn(async move {
                    let _ = sender.send(bundle.bytes).await;
                });
                receiver
            }
            Download::NotificationList(list) => list.stream(),
            Download::AuditLog(audit) => audit.stream(),
        }
    }
}

/// A cell that a spreadsheet would run as a formula is prefixed with `'` (OWASP's guard
/// against CSV injection).
pub(super) fn guarded(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// A stored value as one CSV cell: lists joined with `; `.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_owned)
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(other) => other.to_string(),
    }
}

/// The columns of an export: the record's id, its built-in fields, its live custom fields and
/// its bookkeeping.
fn columns(datasheet: Datasheet, schema: &CustomSchema) -> Vec<(String, String)> {
    let mut columns = vec![("id".to_owned(), "id".to_owned())];
    for spec in datasheet.fields() {
        columns.push((api_field_name(spec.name), spec.name.to_owned()));
    }
    for field in schema.active() {
        columns.push((field.name(), field.name()));
    }
    for meta in ["archived", "version", "createdAt", "updatedAt"] {
        columns.push((meta.to_owned(), meta.to_owned()));
    }
    columns
}

fn meta(row: &RecordRow, name: &str) -> Option<Value> {
    Some(match name {
        "id" => Value::String(row.id.to_string()),
        "archived" => Value::Bool(row.archived),
        "version" => Value::from(row.version),
        "createdAt" => Value::String(row.created_at.to_rfc3339()),
        "updatedAt" => Value::String(row.updated_at.to_rfc3339()),
        _ => return None,
    })
}

fn csv_chunk(rows: &[RecordRow], columns: &[(String, String)], header: bool) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    if header {
        // Column names are ours, never personal data, but guarded all the same.
        let _ = writer.write_record(columns.iter().map(|(title, _)| guarded(title.clone())));
    }
    for row in rows {
        let cells = columns.iter().map(|(_, key)| {
            let value = meta(row, key).or_else(|| row.fields.get(key).cloned());
            guarded(cell(value.as_ref()))
        });
        let _ = writer.write_record(cells);
    }
    writer.into_inner().unwrap_or_default()
}

/// One record as a JSON object: built-in fields by API name, custom fields under `custom`.
pub(super) fn json_object(row: &RecordRow, datasheet: Datasheet, schema: &CustomSchema) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), Value::String(row.id.to_string()));
    object.insert("datasheet".into(), Value::String(datasheet.as_str().into()));
    for spec in datasheet.fields() {
        let value = row.fields.get(spec.name).cloned().unwrap_or(Value::Null);
        let value = match (spec.kind, value) {
            (FieldKind::EmailList | FieldKind::PhoneList | FieldKind::TagList, Value::Null) => {
                Value::Array(Vec::new())
            }
            (_, value) => value,
        };
        object.insert(api_field_name(spec.name), value);
    }
    let custom: Map<String, Value> = schema
        .active()
        .map(|field| {
            let value = row
                .fields
                .get(&field.name())
                .cloned()
                .unwrap_or(Value::Null);
            (
                field.name().trim_start_matches(CUSTOM_PREFIX).to_owned(),
                value,
            )
        })
        .collect();
    object.insert("custom".into(), Value::Object(custom));
    for key in ["archived", "version", "createdAt", "updatedAt"] {
        if let Some(value) = meta(row, key) {
            object.insert(key.into(), value);
        }
    }
    Value::Object(object)
}

impl RecordsDownload {
    /// Streams the file in chunks: a task reads the records in batches (in the export's
    /// order) and writes each batch as it comes. A read failure ends the stream early (the
    /// client sees a truncated file and the cause is logged).
    pub fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(err) = self.write(&sender).await {
                tracing::error!(tenant.id = %self.tenant.id, error = %crate::error::redacted(&err), "an export stream failed");
            }
        });
        receiver
    }

    async fn write(&self, sender: &mpsc::Sender<Vec<u8>>) -> anyhow::Result<()> {
        let columns = columns(self.datasheet, &self.schema);
        let mut header = true;
        let mut written = 0usize;
        if self.bom {
            sender.send("\u{feff}".as_bytes().to_vec()).await?;
        }
        if self.format == ExportFormat::Json {
            sender.send(b"[".to_vec()).await?;
        }
        for batch in self.record_ids.chunks(BATCH) {
            let mut found: HashMap<Uuid, RecordRow> =
                records::records_by_id(&self.tenant.pool, batch)
                    .await?
                    .into_iter()
                    .map(|row| (row.id, row))
                    .collect();
            // In the export's order; records erased or gone since are left out.
            let rows: Vec<RecordRow> = batch.iter().filter_map(|id| found.remove(id)).collect();
            let chunk = match self.format {
                ExportFormat::Csv => csv_chunk(&rows, &columns, std::mem::take(&mut header)),
                ExportFormat::Json => {
                    let mut chunk = Vec::new();
                    for row in &rows {
                        if written > 0 {
                            chunk.push(b',');
                        }
                        written += 1;
                        chunk.push(b'\n');
                        serde_json::to_writer(
                            &mut chunk,
                            &json_object(row, self.datasheet, &self.schema),
                        )?;
                    }
                    chunk
                }
            };
            sender.send(chunk).await?;
        }
        if header && self.format == ExportFormat::Csv {
            sender.send(csv_chunk(&[], &columns, true)).await?;
        }
        if self.format == ExportFormat::Json {
            sender.send(b"\n]\n".to_vec()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused_and_lists_joined() {
        assert_eq!(guarded("=1+1".into()), "'=1+1");
        assert_eq!(guarded("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(guarded("-2".into()), "'-2");
        assert_eq!(guarded("Ada".into()), "Ada");
        assert_eq!(
            cell(Some(&serde_json::json!(["a@example.org", "b@example.org"]))),
            "a@example.org; b@example.org"
        );
        assert_eq!(cell(None), "");
    }
}
