//! A breach's notification list: the people an incident affected with how to reach them, as
//! CSV — an export recorded like any other before its one-time link is handed out.

use std::sync::Arc;

use custos_domain::DataExportCommand;
use custos_projections::records::{self, RecordRow};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::links::{guarded, issue_link, stream, ExportTicket};
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::stores::downloads::NewDownload;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// Rows read per round trip while streaming a notification list.
const BATCH: usize = 500;

impl Services {
    /// Records the export of an incident's notification list (the affected people with their
    /// contact details) and hands out its download link.
    pub(crate) async fn start_notification_list(
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
        self.record_export(principal, export_id, command, request_id)
            .await?;
        let link = NewDownload {
            record_ids: &record_ids,
            incident_id: Some(id),
            actor: Some((principal.actor().id(), principal.actor().kind())),
            ..NewDownload::new("notification_list", export_id, "csv")
        };
        issue_link(tenant, link, record_ids.len()).await
    }
}

/// A notification list to stream: for each affected person, how to reach them.
pub(crate) struct NotificationList {
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) record_ids: Vec<Uuid>,
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
    row.texts(fields).join("; ")
}

impl NotificationList {
    pub(crate) fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        stream(
            self.tenant.id,
            "a notification list stream failed",
            move |sender| async move { self.write(&sender).await },
        )
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
