//! CSV import: rows become records of a datasheet through a column mapping. Every row is
//! checked by the rules of a record's creation first; a dry run only reports the problems;
//! all-or-nothing mode writes nothing unless every row is valid; otherwise the valid rows are
//! written. Whatever is written is written in one transaction, each row a normal
//! `RecordCreated` event attributed to the importing user.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent};
use custos_domain::custom_field::CUSTOM_PREFIX;
use custos_domain::record::{new_record_id, validate_new, Fields, RecordError};
use custos_domain::{CustomKind, CustomSchema, Datasheet, FieldKind, Record, RecordEvent};
use custos_projections::records;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::{api_field_name, ApiError};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// The most rows one import takes.
const MAX_ROWS: usize = 50_000;

/// A column of the file and the field it fills (`firstName`, `custom.<key>`).
pub(crate) struct ColumnMapping {
    pub(crate) column: String,
    pub(crate) field: String,
}

/// An import to run.
pub(crate) struct ImportRequest<'a> {
    pub(crate) datasheet: Datasheet,
    pub(crate) csv: &'a str,
    pub(crate) mapping: Vec<ColumnMapping>,
    /// Check every row, write nothing.
    pub(crate) dry_run: bool,
    /// Write nothing unless every row is valid.
    pub(crate) all_or_nothing: bool,
}

/// One problem with one row (numbered from 1, the header not counted).
pub(crate) struct RowError {
    pub(crate) row: usize,
    /// The field as the API names it, when the problem is about one.
    pub(crate) field: Option<String>,
    pub(crate) message: String,
}

/// What an import did, or would do.
pub(crate) struct ImportOutcome {
    pub(crate) rows: usize,
    pub(crate) created: Vec<Uuid>,
    pub(crate) errors: Vec<RowError>,
}

/// How a mapped field reads a cell.
#[derive(Clone, Copy)]
enum Cell {
    Text,
    List,
    Number,
    Boolean,
}

fn cell_value(kind: Cell, raw: &str) -> Result<Value, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    Ok(match kind {
        Cell::Text => Value::String(raw.to_owned()),
        Cell::List => Value::Array(
            raw.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Cell::Number => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| "is not a number".to_owned())?,
        Cell::Boolean => match raw.to_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err("is not true/false or yes/no".to_owned()),
        },
    })
}

/// The record field a mapping names, and how its cells are read.
/// The mapping target of the column that gives the day each row's record takes effect.
const EFFECTIVE_FROM: &str = "effectiveFrom";

/// The day a row's record takes effect: its `effectiveFrom` cell (`YYYY-MM-DD`, 1900-01-01 to
/// today), or today when none is mapped or the cell is empty.
fn effective_day(cell: Option<&str>, today: NaiveDate) -> Result<NaiveDate, &'static str> {
    let Some(text) = cell.map(str::trim).filter(|text| !text.is_empty()) else {
        return Ok(today);
    };
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| "is not a valid date (expected YYYY-MM-DD)")?;
    if day < custos_domain::record::earliest_effective_day() || day > today {
        return Err("must be a date from 1900-01-01 to today: a record takes effect when it is created or earlier");
    }
    Ok(day)
}

fn target(
    datasheet: Datasheet,
    schema: &CustomSchema,
    field: &str,
) -> Result<(String, Cell), ApiError> {
    if let Some(custom) = schema.field(field) {
        let cell = match custom.kind {
            CustomKind::Number => Cell::Number,
            CustomKind::Boolean => Cell::Boolean,
            CustomKind::MultipleChoice => Cell::List,
            _ => Cell::Text,
        };
        return Ok((custom.name(), cell));
    }
    let spec = datasheet
        .fields()
        .iter()
        .find(|spec| api_field_name(spec.name) == field && !field.starts_with(CUSTOM_PREFIX))
        .ok_or_else(|| {
            ApiError::validation(
                "mapping",
                format!("{} have no field `{field}`", datasheet.as_str()),
            )
        })?;
    let cell = match spec.kind {
        FieldKind::EmailList | FieldKind::PhoneList | FieldKind::TagList => Cell::List,
        _ => Cell::Text,
    };
    Ok((spec.name.to_owned(), cell))
}

impl Services {
    /// Imports `csv` into `datasheet` (see the module's description).
    pub(crate) async fn import_records(
        &self,
        principal: &Principal,
        request: ImportRequest<'_>,
        request_id: Uuid,
    ) -> Result<ImportOutcome, ApiError> {
        let ImportRequest {
            datasheet,
            csv,
            mapping,
            dry_run,
            all_or_nothing,
        } = request;
        let tenant = &principal.tenant;
        let schema = self.custom_schema(tenant, datasheet).await?;
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(csv.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| ApiError::validation("csv", format!("the header row is unreadable: {e}")))?
            .clone();
        if mapping.is_empty() {
            return Err(ApiError::validation("mapping", "map at least one column"));
        }
        let mut targets = Vec::new();
        let mut mapped_fields = HashSet::new();
        // The column of the day each row's record takes effect, if one is mapped.
        let mut effective_column = None;
        for map in &mapping {
            let index = headers
                .iter()
                .position(|h| h.trim() == map.column.trim())
                .ok_or_else(|| {
                    ApiError::validation(
                        "mapping",
                        format!("the file has no column `{}`", map.column),
                    )
                })?;
            if map.field == EFFECTIVE_FROM {
                if effective_column.replace(index).is_some() {
                    return Err(ApiError::validation(
                        "mapping",
                        format!("`{EFFECTIVE_FROM}` is mapped twice"),
                    ));
                }
                continue;
            }
            let (name, cell) = target(datasheet, &schema, &map.field)?;
            if !mapped_fields.insert(name.clone()) {
                return Err(ApiError::validation(
                    "mapping",
                    format!("`{}` is mapped twice", map.field),
                ));
            }
            targets.push((index, name, cell));
        }

        let mut rows = 0;
        let mut valid: Vec<(usize, Uuid, Fields, NaiveDate)> = Vec::new();
        let today = custos_projections::records::today();
        let mut errors = Vec::new();
        let mut managers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (number, record) in reader.records().enumerate() {
            let row = number + 1;
            rows = row;
            if rows > MAX_ROWS {
                return Err(ApiError::validation(
                    "csv",
                    format!("an import takes at most {MAX_ROWS} rows"),
                ));
            }
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    errors.push(RowError {
                        row,
                        field: None,
                        message: format!("the row is unreadable: {err}"),
                    });
                    continue;
                }
            };
            let mut fields = Fields::new();
            // Cells that could not be read; the row's other problems are reported beside them.
            let mut unreadable = HashSet::new();
            for (index, name, cell) in &targets {
                match cell_value(*cell, record.get(*index).unwrap_or_default()) {
                    Ok(value) => {
                        fields.insert(name.clone(), value);
                    }
                    Err(message) => {
                        errors.push(RowError {
                            row,
                            field: Some(api_field_name(name)),
                            message: format!("field `{}` {message}", api_field_name(name)),
                        });
                        unreadable.insert(name.clone());
                    }
                }
            }
            let cell = effective_column.map(|index| record.get(index).unwrap_or_default());
            let day = match effective_day(cell, today) {
                Ok(day) => day,
                Err(message) => {
                    errors.push(RowError {
                        row,
                        field: Some(EFFECTIVE_FROM.into()),
                        message: format!("`{EFFECTIVE_FROM}` {message}"),
                    });
                    unreadable.insert(EFFECTIVE_FROM.into());
                    today
                }
            };
            match validate_new(datasheet, &schema, fields) {
                Ok(_) if !unreadable.is_empty() => {}
                Ok(fields) => {
                    if let Some(Value::String(manager)) = fields.get("manager_id") {
                        managers
                            .entry(manager.clone())
                            .or_default()
                            .push(valid.len());
                    }
                    valid.push((row, new_record_id(), fields, day));
                }
                // Every problem of the row, one error each (but not again for a cell that
                // could not be read, which is missing to validation).
                Err(err) => {
                    let problems = match err {
                        RecordError::Invalid(problems) => problems,
                        one => vec![one],
                    };
                    for problem in problems {
                        if problem
                            .field()
                            .is_some_and(|field| unreadable.contains(field))
                        {
                            continue;
                        }
                        errors.push(RowError {
                            row,
                            field: problem.field().map(api_field_name),
                            message: ApiError::from(problem).message(),
                        });
                    }
                }
            }
        }
        // Managers must be active employees already (new rows cannot close a loop).
        if !managers.is_empty() {
            let ids: Vec<Uuid> = managers
                .keys()
                .filter_map(|m| Uuid::try_parse(m).ok())
                .collect();
            let found = records::records_by_id(&tenant.pool, &ids).await?;
            let active: HashSet<String> = found
                .iter()
                .filter(|r| r.datasheet() == Datasheet::Employees && !r.archived)
                .map(|r| r.id.to_string())
                .collect();
            let mut refused = HashSet::new();
            for (manager, indices) in &managers {
                if !active.contains(manager) {
                    refused.extend(indices.iter().copied());
                }
            }
            if !refused.is_empty() {
                let mut kept = Vec::new();
                for (i, entry) in valid.into_iter().enumerate() {
                    if refused.contains(&i) {
                        errors.push(RowError {
                            row: entry.0,
                            field: Some("managerId".into()),
                            message: "the manager must be an active employee".into(),
                        });
                    } else {
                        kept.push(entry);
                    }
                }
                valid = kept;
            }
        }
        errors.sort_by_key(|e| e.row);
        let hold = dry_run || (all_or_nothing && !errors.is_empty()) || valid.is_empty();
        if hold {
            return Ok(ImportOutcome {
                rows,
                created: Vec::new(),
                errors,
            });
        }
        let metadata = serde_json::to_value(self.actor(principal, request_id).to_map())
            .map_err(ApiError::internal)?;
        let events = valid
            .iter()
            .map(|(_, id, fields, day)| {
                let event = RecordEvent::RecordCreated {
                    datasheet,
                    fields: fields.clone(),
                    hired_from: None,
                    effective_from: Some(*day),
                };
                Ok(SerializedEvent::new(
                    id.to_string(),
                    1,
                    Record::TYPE.to_owned(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)?,
                    metadata.clone(),
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(ApiError::internal)?;
        tenant
            .log
            .append_new_streams(events)
            .await
            .map_err(ApiError::internal)?;
        if let Some(latest) = tenant.log.latest(Record::TYPE).await? {
            tenant
                .projectors
                .wait_for(Record::TYPE, latest, self.projection_wait)
                .await
                .map_err(|_| ApiError::Unavailable)?;
        }
        tracing::info!(tenant.id = %tenant.id, rows, created = valid.len(), "records imported");
        self.refresh_list_statistics(tenant).await;
        Ok(ImportOutcome {
            rows,
            created: valid.into_iter().map(|(_, id, _, _)| id).collect(),
            errors,
        })
    }

    /// Refreshes the planner's statistics of the records read model after a bulk write, so
    /// that lists are planned for the rows just added rather than waiting for autovacuum
    /// (`ANALYZE` needs the table's owner: the tenant's own role cannot run it). A failure
    /// only costs slower plans until autovacuum comes by; it is logged, never answered.
    async fn refresh_list_statistics(&self, tenant: &Tenant) {
        let analyzed = async {
            let row = self
                .tenancy
                .row(tenant.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the organisation left the catalog"))?;
            let mut admin = self.tenancy.admin_connection(&row).await?;
            sqlx::query("ANALYZE records").execute(&mut admin).await?;
            sqlx::Connection::close(admin).await?;
            Ok::<_, anyhow::Error>(())
        };
        if let Err(err) = analyzed.await {
            tracing::warn!(tenant.id = %tenant.id, error = %err, "could not refresh the statistics of the records read model");
        }
    }
}
