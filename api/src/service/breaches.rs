//! The breach register (GDPR Art. 33 and 34): administrators record an incident with its scope;
//! Custos computes whom it affected, tracks the 72-hour deadline for telling the supervisory
//! authority, and exports the list of people to notify — an export recorded like any other.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_domain::{DataExportCommand, IncidentCommand, IncidentScope};
use custos_projections::incidents::{self, AffectedRow, IncidentRow};
use custos_projections::records::{self, RecordRow};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::exports::{guarded, ExportTicket, LINK_LIFETIME_SECONDS};
use super::Services;
use crate::auth::{BearerToken, Principal, TokenKind};
use crate::error::ApiError;
use crate::tenancy::Tenant;

/// Rows read per round trip while streaming a notification list.
const BATCH: usize = 500;

/// An incident as an administrator records it.
pub struct NewIncident {
    pub detected_at: DateTime<Utc>,
    pub description: String,
    pub scope: IncidentScope,
}

impl Services {
    pub async fn record_incident(
        &self,
        principal: &Principal,
        incident: NewIncident,
        request_id: Uuid,
    ) -> Result<IncidentRow, ApiError> {
        let tenant = &principal.tenant;
        let id = Uuid::now_v7();
        let command = IncidentCommand::Record {
            detected_at: incident.detected_at,
            description: incident.description,
            scope: incident.scope,
            now: Utc::now(),
        };
        self.execute(
            tenant,
            &tenant.incidents,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        tracing::warn!(tenant.id = %tenant.id, incident.id = %id, "a personal-data breach was recorded");
        self.incident(tenant, id).await
    }

    /// Records that the authority (`authority`) or the affected people were notified.
    pub async fn record_notification(
        &self,
        principal: &Principal,
        id: Uuid,
        command: IncidentCommand,
        request_id: Uuid,
    ) -> Result<IncidentRow, ApiError> {
        let tenant = &principal.tenant;
        self.incident(tenant, id).await?;
        self.execute(
            tenant,
            &tenant.incidents,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        self.incident(tenant, id).await
    }

    pub async fn incident(&self, tenant: &Tenant, id: Uuid) -> Result<IncidentRow, ApiError> {
        incidents::incident(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    pub async fn affected_subjects(
        &self,
        tenant: &Tenant,
        incident: &IncidentRow,
    ) -> Result<Vec<AffectedRow>, ApiError> {
        Ok(incidents::affected(&tenant.pool, incident).await?)
    }

    /// Records the export of an incident's notification list (the affected people with their
    /// contact details) and hands out its download link.
    pub async fn start_notification_list(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<ExportTicket, ApiError> {
        let tenant = &principal.tenant;
        let incident = self.incident(tenant, id).await?;
        let record_ids: Vec<Uuid> = self
            .affected_subjects(tenant, &incident)
            .await?
            .into_iter()
            .map(|a| a.record_id)
            .collect();
        let export_id = Uuid::now_v7();
        let command = DataExportCommand::NotificationList {
            incident_id: id,
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
            "INSERT INTO export_downloads (token_hash, export_id, kind, incident_id, format, bom, record_ids, expires_at)
             VALUES ($1, $2, 'notification_list', $3, 'csv', false, $4, now() + $5 * interval '1 second')
             RETURNING expires_at",
        )
        .bind(&stored.hash)
        .bind(export_id)
        .bind(id)
        .bind(&record_ids)
        .bind(LINK_LIFETIME_SECONDS)
        .fetch_one(&tenant.pool)
        .await?;
        Ok(ExportTicket {
            export_id,
            count: record_ids.len(),
            token,
            expires_at,
        })
    }
}

/// A notification list to stream: for each affected person, how to reach them.
pub struct NotificationList {
    pub tenant: Arc<Tenant>,
    pub record_ids: Vec<Uuid>,
}

const COLUMNS: [&str; 8] = [
    "record_id",
    "datasheet",
    "status",
    "first_name",
    "last_name",
    "emails",
    "phones",
    "address",
];

/// One text or list value as a cell (lists joined with `; `).
fn joined(row: &RecordRow, fields: &[&str]) -> String {
    fields
        .iter()
        .filter_map(|f| row.fields.get(*f))
        .flat_map(|value| match value {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
            Value::String(text) => vec![text.as_str()],
            _ => Vec::new(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl NotificationList {
    pub fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(err) = self.write(&sender).await {
                tracing::error!(tenant.id = %self.tenant.id, error = %crate::error::redacted(&err), "a notification list stream failed");
            }
        });
        receiver
    }

    async fn write(&self, sender: &mpsc::Sender<Vec<u8>>) -> anyhow::Result<()> {
        let mut header = true;
        for batch in self.record_ids.chunks(BATCH) {
            let rows = records::records_by_id(&self.tenant.pool, batch).await?;
            let mut writer = csv::Writer::from_writer(Vec::new());
            if std::mem::take(&mut header) {
                writer.write_record(COLUMNS)?;
            }
            for row in &rows {
                let status = if row.erased_at.is_some() {
                    "erased"
                } else {
                    "held"
                };
                writer.write_record([
                    row.id.to_string(),
                    row.datasheet().as_str().to_owned(),
                    status.to_owned(),
                    guarded(joined(row, &["first_name"])),
                    guarded(joined(row, &["last_name"])),
                    guarded(joined(row, &["email", "emails"])),
                    guarded(joined(row, &["phone", "phones"])),
                    guarded(joined(row, &["address"])),
                ])?;
            }
            sender.send(writer.into_inner()?).await?;
        }
        if header {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(COLUMNS)?;
            sender.send(writer.into_inner()?).await?;
        }
        Ok(())
    }
}
