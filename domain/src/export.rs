//! The `DataExport` aggregate: one export of records. Each export is an event naming who
//! exported (the actor), when, which datasheet, with which filter, in which format, and which
//! records — so it shows in the history and in each exported person's trail.

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
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataExportError {
    #[error("this export is recorded already")]
    AlreadyRecorded,
}

impl DomainEvent for DataExportEvent {
    fn event_type(&self) -> String {
        "RecordsExported".to_owned()
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
        let DataExportCommand::Record {
            datasheet,
            format,
            filter,
            record_ids,
        } = command;
        let event = DataExportEvent::RecordsExported {
            datasheet,
            format,
            filter,
            count: record_ids.len(),
            record_ids,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: DataExportEvent) {
        self.recorded = true;
    }
}
