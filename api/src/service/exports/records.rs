//! Exports of a datasheet's records (with the lists' filters) as CSV or JSON. Starting one
//! records it as an event — who, when, which datasheet, the arguments (fields and operators;
//! the values a user typed are withheld: they may name a person, and events outlive erasures)
//! and records — and hands out a one-time download link; the download streams the rows in
//! batches, so memory stays flat whatever the size. Each record carries the values in force
//! today and its changes scheduled for a later day (`pendingChanges`: in JSON an array, in CSV
//! one cell holding that array as JSON text).

use std::collections::HashMap;
use std::sync::Arc;

use custos_domain::custom_field::CUSTOM_PREFIX;
use custos_domain::{CustomSchema, DataExportCommand, Datasheet, ExportFormat, FieldKind};
use custos_projections::record_query::{self, RecordQuery};
use custos_projections::records::{self, RecordRow};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::links::{format_name, guarded, issue_link, stream, ExportTicket};
use crate::auth::principal::Principal;
use crate::error::{api_field_name, ApiError};
use crate::infra::stores::downloads::NewDownload;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// Rows read per round trip while streaming.
const BATCH: usize = 500;

/// A datasheet's records to stream.
pub(crate) struct RecordsDownload {
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) datasheet: Datasheet,
    pub(crate) format: ExportFormat,
    pub(crate) bom: bool,
    pub(crate) record_ids: Vec<Uuid>,
    pub(crate) schema: CustomSchema,
}

impl Services {
    /// Records an export of the records `query` selects (in its order) and hands out its
    /// download link. `arguments` (the list's, as given) are recorded with their values
    /// withheld.
    pub(crate) async fn start_export(
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
            filter: withhold_values(filter),
            record_ids: record_ids.clone(),
        };
        self.record_export(principal, export_id, command, request_id)
            .await?;
        let link = NewDownload {
            datasheet: Some(query.datasheet.as_str()),
            bom,
            record_ids: &record_ids,
            actor: Some((principal.actor().id(), principal.actor().kind())),
            ..NewDownload::new("records", export_id, format_name(format))
        };
        let ticket = issue_link(tenant, link, count).await?;
        tracing::info!(tenant.id = %tenant.id, export.id = %export_id, count, "records exported");
        Ok(ticket)
    }
}

/// What a value a user typed into a list's arguments reads as in the export's event.
pub(crate) const WITHHELD: &str = "[withheld]";

/// The list's arguments without the values a user typed: each filter keeps its fields and
/// operators (`isNull` keeps its answer, a custom field its key) and drops what was not
/// given, a search says only that there was one. A search for
/// a person's name, kept in an event, would outlive that person's erasure.
pub(crate) fn withhold_values(arguments: Value) -> Value {
    const OPERANDS: [&str; 9] = [
        "eq",
        "neq",
        "in",
        "gt",
        "gte",
        "lt",
        "lte",
        "contains",
        "startsWith",
    ];
    fn filter(value: Value) -> Value {
        match value {
            // What was not given is left out.
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, value)| !value.is_null())
                    .map(|(key, value)| {
                        let value = match key.as_str() {
                            k if OPERANDS.contains(&k) => Value::String(WITHHELD.to_owned()),
                            // A field's filter, `custom`, `and`, `or`, `not`: operators are
                            // found at any depth.
                            _ => filter(value),
                        };
                        (key, value)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(filter).collect()),
            other => other,
        }
    }
    let Value::Object(mut map) = arguments else {
        return Value::Null;
    };
    if let Some(value) = map.remove("filter") {
        map.insert("filter".to_owned(), filter(value));
    }
    if let Some(search) = map.get_mut("search") {
        if !search.is_null() {
            *search = Value::String(WITHHELD.to_owned());
        }
    }
    Value::Object(map)
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
    for meta in ["archived", "version", "createdAt", "updatedAt", PENDING] {
        columns.push((meta.to_owned(), meta.to_owned()));
    }
    columns
}

/// The column (and JSON key) of a record's scheduled changes.
const PENDING: &str = "pendingChanges";

/// A batch's scheduled changes, per record, each as `{effectiveFrom, version, recordedAt,
/// changes}` with the fields named as the API names them (a cleared field: `null`).
async fn pending_by_record(
    pool: &sqlx::PgPool,
    ids: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, Vec<Value>>> {
    let mut pending: HashMap<Uuid, Vec<Value>> = HashMap::new();
    for change in records::pending_changes(pool, ids).await? {
        let changes: Map<String, Value> = change
            .changes
            .0
            .into_iter()
            .map(|(name, value)| (api_field_name(&name), value))
            .collect();
        pending
            .entry(change.record_id)
            .or_default()
            .push(serde_json::json!({
                "effectiveFrom": change.effective_from,
                "version": change.sequence,
                "recordedAt": change.recorded_at.to_rfc3339(),
                "changes": changes,
            }));
    }
    Ok(pending)
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

fn csv_chunk(
    rows: &[RecordRow],
    pending: &HashMap<Uuid, Vec<Value>>,
    columns: &[(String, String)],
    header: bool,
) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    if header {
        // Column names are ours, never personal data, but guarded all the same.
        let _ = writer.write_record(columns.iter().map(|(title, _)| guarded(title.clone())));
    }
    for row in rows {
        let cells = columns.iter().map(|(_, key)| {
            if key == PENDING {
                return pending.get(&row.id).map_or_else(String::new, |changes| {
                    guarded(serde_json::to_string(changes).unwrap_or_default())
                });
            }
            let value = meta(row, key).or_else(|| row.fields.get(key).cloned());
            guarded(cell(value.as_ref()))
        });
        let _ = writer.write_record(cells);
    }
    writer.into_inner().unwrap_or_default()
}

/// One record as a JSON object: built-in fields by API name, custom fields under `custom`.
pub(crate) fn json_object(row: &RecordRow, datasheet: Datasheet, schema: &CustomSchema) -> Value {
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
    pub(crate) fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        stream(
            self.tenant.id,
            "an export stream failed",
            move |sender| async move { self.write(&sender).await },
        )
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
            let mut pending = pending_by_record(&self.tenant.pool, batch).await?;
            let chunk = match self.format {
                ExportFormat::Csv => {
                    csv_chunk(&rows, &pending, &columns, std::mem::take(&mut header))
                }
                ExportFormat::Json => {
                    let mut chunk = Vec::new();
                    for row in &rows {
                        if written > 0 {
                            chunk.push(b',');
                        }
                        written += 1;
                        chunk.push(b'\n');
                        let mut object = json_object(row, self.datasheet, &self.schema);
                        object[PENDING] = Value::Array(pending.remove(&row.id).unwrap_or_default());
                        serde_json::to_writer(&mut chunk, &object)?;
                    }
                    chunk
                }
            };
            sender.send(chunk).await?;
        }
        if header && self.format == ExportFormat::Csv {
            sender
                .send(csv_chunk(&[], &HashMap::new(), &columns, true))
                .await?;
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
    fn an_exports_arguments_keep_fields_and_operators_but_no_typed_value() {
        let arguments = serde_json::json!({
            "filter": { "employees": { "lastName": { "eq": "Hopper" }, "and": [
                { "department": { "in": ["R&D", "Ops"] } },
                { "not": { "email": { "contains": "hopper@" } } },
                { "phone": { "isNull": true, "startsWith": null } },
                { "firstName": { "startsWith": "Gra" } },
                { "custom": [{ "key": "badge", "text": { "eq": "B-17" } }] },
            ] } },
            "orderBy": { "employees": [{ "lastName": "ASC" }] },
            "search": "Grace Hopper",
            "includeArchived": false,
        });
        let kept = withhold_values(arguments.clone());
        let text = kept.to_string();
        for typed in [
            "Hopper\"", "R&D", "Ops", "hopper@", "Grace", "Gra\"", "B-17",
        ] {
            assert!(!text.contains(typed), "{typed} in {text}");
        }
        let filter = &kept["filter"]["employees"];
        assert_eq!(filter["lastName"]["eq"], WITHHELD);
        assert_eq!(filter["and"][0]["department"]["in"], WITHHELD);
        assert_eq!(filter["and"][1]["not"]["email"]["contains"], WITHHELD);
        assert_eq!(filter["and"][2]["phone"]["isNull"], true);
        assert!(filter["and"][2]["phone"]["startsWith"].is_null());
        assert_eq!(filter["and"][3]["firstName"]["startsWith"], WITHHELD);
        assert_eq!(filter["and"][4]["custom"][0]["key"], "badge");
        assert_eq!(filter["and"][4]["custom"][0]["text"]["eq"], WITHHELD);
        assert_eq!(kept["orderBy"], arguments["orderBy"]);
        assert_eq!(kept["search"], WITHHELD);
        assert_eq!(kept["includeArchived"], false);
        assert!(withhold_values(serde_json::json!({ "search": null }))["search"].is_null());
    }

    #[test]
    fn lists_are_joined_in_one_cell() {
        assert_eq!(
            cell(Some(&serde_json::json!(["a@example.org", "b@example.org"]))),
            "a@example.org; b@example.org"
        );
        assert_eq!(cell(None), "");
    }
}
