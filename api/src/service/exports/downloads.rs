//! The top of the exports: an opened download link becomes a [`Download`] — records, a
//! subject's trail, a breach's notification list or the audit log — which the HTTP layer
//! streams.

use chrono::Utc;
use custos_domain::{Actor, Datasheet, EventMetadata};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::audit_log::AuditDownload;
use super::links::{content_type, format_name, stored_format};
use super::notification_list::NotificationList;
use super::organization::OrganizationDownload;
use super::records::RecordsDownload;
use super::trail::TrailBundle;
use crate::auth::tokens::{BearerToken, TokenKind};
use crate::error::ApiError;
use crate::infra::stores::downloads;
use crate::service::Services;
use custos_projections::users;

/// An opened download link: what to send.
pub(crate) enum Download {
    /// A datasheet's records, streamed in batches.
    Records(RecordsDownload),
    /// A data subject's trail, built (and its export recorded) when the link was opened.
    SubjectTrail(TrailBundle),
    /// The people a breach affected, streamed in batches.
    NotificationList(NotificationList),
    /// Entries of the audit log, streamed in batches.
    AuditLog(AuditDownload),
    /// The whole organisation as a tenant archive, streamed from the database.
    Organization(OrganizationDownload),
}

impl Services {
    /// Uses up a download link; `None` when it is unknown, used or expired.
    pub(crate) async fn open_download(&self, token: &str) -> Result<Option<Download>, ApiError> {
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
        let Some(row) = downloads::take(&tenant.pool, &parsed.hash).await? else {
            return Ok(None);
        };
        // An organisation not served in full (an ended trial, a suspension, the migration
        // window) hands out only what its administrators asked for: a link someone else
        // obtained before is used up, and answers as an unknown one.
        if !tenant.standing().is_served() {
            let by_admin = match (row.actor_kind.as_deref(), row.actor_id) {
                (Some("user"), Some(id)) => users::user(&tenant.pool, id)
                    .await?
                    .is_some_and(|u| u.is_admin && u.active),
                _ => false,
            };
            if !by_admin {
                return Ok(None);
            }
        }
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
                Ok(Some(Download::AuditLog(AuditDownload {
                    tenant,
                    filter,
                    upto,
                    format,
                })))
            }
            "organization" => {
                let stored = row.filter.ok_or_else(corrupt)?;
                let download = self
                    .organization_download(tenant, row.export_id, &stored)
                    .await?;
                Ok(Some(Download::Organization(download)))
            }
            "notification_list" => Ok(Some(Download::NotificationList(NotificationList {
                tenant,
                record_ids: row.record_ids,
            }))),
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

impl Download {
    /// The file name a browser saves the download as.
    pub(crate) fn file_name(&self) -> String {
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
            Download::Organization(archive) => archive.file_name(),
        }
    }

    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Download::Records(records) => content_type(records.format),
            Download::SubjectTrail(_) => "application/zip",
            Download::NotificationList(_) => "text/csv; charset=utf-8",
            Download::AuditLog(audit) => content_type(audit.format),
            Download::Organization(_) => "application/x-ndjson",
        }
    }

    /// The file in chunks, as they are produced.
    pub(crate) fn stream(self) -> mpsc::Receiver<Vec<u8>> {
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
            Download::Organization(archive) => archive.stream(),
        }
    }
}
