//! The `DataExport` aggregate: one export of personal data. Each export is an event naming who
//! exported (the actor), when, what, and which records — so it shows in the history and in
//! each exported person's trail: a datasheet's records (with the list's filter and format), a
//! data subject's trail (with the SHA-256 of its manifest), or a breach's notification list.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::datasheet::Datasheet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataExport {
    recorded: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DataExportCommand {
    Record {
        datasheet: Datasheet,
        format: ExportFormat,
        /// The list arguments as the client gave them (field names and operators; values
        /// are the client's own).
        filter: Value,
        record_ids: Vec<Uuid>,
    },
    /// A data subject's trail (GDPR Art. 15 and 20): everything held about `record_ids`.
    SubjectTrail {
        record_ids: Vec<Uuid>,
        /// Hex SHA-256 of the bundle's manifest, which lists the hash of every file.
        manifest_sha256: String,
    },
    /// The people a breach affected, with their contact details, to notify them.
    NotificationList {
        incident_id: Uuid,
        record_ids: Vec<Uuid>,
    },
    /// Entries of the audit log (ids, types, times and field names: no personal values).
    AuditLog { filter: Value, count: usize },
    /// The whole organisation as a tenant archive (every record, sealed under a passphrase
    /// the administrator chose, or encrypted to the age `recipients` they named): `subjects`
    /// people's data keys went with it.
    Organization {
        subjects: usize,
        recipients: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataExportEvent {
    RecordsExported {
        datasheet: Datasheet,
        format: ExportFormat,
        filter: Value,
        count: usize,
        record_ids: Vec<Uuid>,
    },
    SubjectTrailExported {
        record_ids: Vec<Uuid>,
        manifest_sha256: String,
    },
    NotificationListExported {
        incident_id: Uuid,
        record_ids: Vec<Uuid>,
    },
    AuditLogExported {
        filter: Value,
        count: usize,
    },
    OrganizationExported {
        subjects: usize,
        /// The age recipients (public keys) whose identities open the archive; none when a
        /// passphrase does.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        recipients: Vec<String>,
    },
}

impl DataExportEvent {
    /// The records whose data the export contained.
    pub fn record_ids(&self) -> &[Uuid] {
        match self {
            DataExportEvent::RecordsExported { record_ids, .. }
            | DataExportEvent::SubjectTrailExported { record_ids, .. }
            | DataExportEvent::NotificationListExported { record_ids, .. } => record_ids,
            DataExportEvent::AuditLogExported { .. }
            | DataExportEvent::OrganizationExported { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataExportError {
    #[error("this export is recorded already")]
    AlreadyRecorded,
}

impl DomainEvent for DataExportEvent {
    fn event_type(&self) -> String {
        match self {
            DataExportEvent::RecordsExported { .. } => "RecordsExported",
            DataExportEvent::SubjectTrailExported { .. } => "SubjectTrailExported",
            DataExportEvent::NotificationListExported { .. } => "NotificationListExported",
            DataExportEvent::AuditLogExported { .. } => "AuditLogExported",
            DataExportEvent::OrganizationExported { .. } => "OrganizationExported",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Aggregate for DataExport {
    const TYPE: &'static str = "data_export";
    type Command = DataExportCommand;
    type Event = DataExportEvent;
    type Error = DataExportError;
    type Services = ();

    async fn handle(
        &mut self,
        command: DataExportCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), DataExportError> {
        if self.recorded {
            return Err(DataExportError::AlreadyRecorded);
        }
        let event = match command {
            DataExportCommand::Record {
                datasheet,
                format,
                filter,
                record_ids,
            } => DataExportEvent::RecordsExported {
                datasheet,
                format,
                filter,
                count: record_ids.len(),
                record_ids,
            },
            DataExportCommand::SubjectTrail {
                record_ids,
                manifest_sha256,
            } => DataExportEvent::SubjectTrailExported {
                record_ids,
                manifest_sha256,
            },
            DataExportCommand::NotificationList {
                incident_id,
                record_ids,
            } => DataExportEvent::NotificationListExported {
                incident_id,
                record_ids,
            },
            DataExportCommand::AuditLog { filter, count } => {
                DataExportEvent::AuditLogExported { filter, count }
            }
            DataExportCommand::Organization {
                subjects,
                recipients,
            } => DataExportEvent::OrganizationExported {
                subjects,
                recipients,
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: DataExportEvent) {
        self.recorded = true;
    }
}
