//! The `records` read model: one row per record of any datasheet, with its field values as a
//! JSON object, for listing and lookups.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::record::Fields;
use custos_domain::{Datasheet, Record, RecordEvent, Stage};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects Record events into `records`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordsProjection;

#[async_trait]
impl Projection for RecordsProjection {
    fn name(&self) -> &'static str {
        "records"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Record as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const {
            &[crate::Table::new("records").read_indexes(&[
                "records_by_sheet",
                "records_by_sheet_all",
                "records_manager",
                "records_search",
                "records_fields",
                "records_last_name",
                "records_first_name",
            ])]
        }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Record(record_event) = &event.event else {
            return Ok(());
        };
        let actor = event.metadata.actor.id();
        // Every change but creation: `set` assigns (with `$5` onwards), guarded by version.
        let change = |set: &str| {
            format!(
                "UPDATE records SET version = $2, updated_at = $3, updated_by = $4, {set}
                 WHERE id = $1 AND version < $2"
            )
        };
        match record_event {
            RecordEvent::RecordCreated { .. } => {
                insert_created(conn, &creations(&[event])).await?;
            }
            RecordEvent::RecordUpdated { .. } => update_all(conn, &[event]).await?,
            RecordEvent::RecordArchived { .. } | RecordEvent::RecordRestored { .. } => {
                let archived = matches!(record_event, RecordEvent::RecordArchived { .. });
                sqlx::query(&change(
                    "archived = $5, archived_at = CASE WHEN $5 THEN $3 END",
                ))
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .bind(actor)
                .bind(archived)
                .execute(conn)
                .await?;
            }
            RecordEvent::RecordRestricted { reason, .. } => {
                let reason = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                sqlx::query(&change("restricted_at = $5, restriction_reason = $6"))
                    .bind(event.aggregate_id)
                    .bind(event.sequence)
                    .bind(event.recorded_at)
                    .bind(actor)
                    .bind(event.recorded_at)
                    .bind(reason)
                    .execute(conn)
                    .await?;
            }
            RecordEvent::RestrictionLifted { .. } => {
                sqlx::query(&change("restricted_at = NULL, restriction_reason = NULL"))
                    .bind(event.aggregate_id)
                    .bind(event.sequence)
                    .bind(event.recorded_at)
                    .bind(actor)
                    .execute(conn)
                    .await?;
            }
            // Nothing of the subject remains: no value, and nothing to search for.
            RecordEvent::RecordErased { .. } => {
                sqlx::query(&change(
                    "fields = '{}'::jsonb, erased_at = $5, restricted_at = NULL, restriction_reason = NULL",
                ))
                    .bind(event.aggregate_id)
                    .bind(event.sequence)
                    .bind(event.recorded_at)
                    .bind(actor)
                    .bind(event.recorded_at)
                    .execute(conn)
                    .await?;
            }
            RecordEvent::ApplicantHired { employee_id, .. } => {
                sqlx::query(&change(
                    "fields = jsonb_set(fields, '{stage}', to_jsonb($5::text)), hired_as = $6,
                     stage_since = $3",
                ))
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .bind(actor)
                .bind(Stage::Hired.as_str())
                .bind(employee_id)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Runs of creations (seeding, imports, a rebuild) as one multi-row insert each, runs of
    /// updates as one statement each (a record's updates within a run folded into one);
    /// every other event on its own, in order.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
    ) -> sqlx::Result<()> {
        let mut rest = events;
        while let Some(first) = rest.first() {
            let window = &rest[..rest.len().min(1_000)];
            let created = creations(window);
            if !created.is_empty() {
                insert_created(conn, &created).await?;
                rest = &rest[created.len()..];
                continue;
            }
            let updated = updates(window);
            if updated > 0 {
                update_all(conn, &window[..updated]).await?;
                rest = &rest[updated..];
                continue;
            }
            self.apply(conn, first).await?;
            rest = &rest[1..];
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM records").execute(conn).await?;
        Ok(())
    }
}

/// A record's creation: its event, datasheet, fields and the applicant it was hired from.
type Creation<'a> = (&'a ProjectedEvent, &'static str, &'a Fields, Option<Uuid>);

/// The creations at the start of `events`, up to the first event of another kind.
fn creations<'a>(events: &[&'a ProjectedEvent]) -> Vec<Creation<'a>> {
    events
        .iter()
        .map_while(|event| match &event.event {
            AnyEvent::Record(RecordEvent::RecordCreated {
                datasheet,
                fields,
                hired_from,
            }) => Some((*event, datasheet.as_str(), fields, *hired_from)),
            _ => None,
        })
        .collect()
}

/// How many of `events`, from the start, are updates.
fn updates(events: &[&ProjectedEvent]) -> usize {
    events
        .iter()
        .take_while(|event| {
            matches!(
                event.event,
                AnyEvent::Record(RecordEvent::RecordUpdated { .. })
            )
        })
        .count()
}

/// What a record's updates in one run change together: later values over earlier ones.
struct Folded<'a> {
    last: &'a ProjectedEvent,
    set: Map<String, Value>,
    cleared: Vec<String>,
    /// When the last of them that gave the stage a value was recorded.
    stage_since: Option<DateTime<Utc>>,
}

/// Folds updates (only updates) per record, in the order each record first appears.
fn fold<'a>(events: &[&'a ProjectedEvent]) -> Vec<Folded<'a>> {
    let mut folded: Vec<Folded<'a>> = Vec::new();
    let mut at: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for event in events {
        let AnyEvent::Record(RecordEvent::RecordUpdated { changes, .. }) = &event.event else {
            continue;
        };
        let index = *at.entry(event.aggregate_id).or_insert_with(|| {
            folded.push(Folded {
                last: event,
                set: Map::new(),
                cleared: Vec::new(),
                stage_since: None,
            });
            folded.len() - 1
        });
        let record = &mut folded[index];
        record.last = event;
        for (key, value) in changes {
            if value.is_null() {
                record.set.remove(key);
                if !record.cleared.contains(key) {
                    record.cleared.push(key.clone());
                }
            } else {
                record.cleared.retain(|cleared| cleared != key);
                record.set.insert(key.clone(), value.clone());
                if key == "stage" {
                    record.stage_since = Some(event.recorded_at);
                }
            }
        }
    }
    folded
}

/// Applies a run of updates with one statement. A record's folded change, applied where the
/// row is behind its last update, leaves what its updates one by one would: each field ends
/// at the last value given to it, whichever of them the row had already seen.
async fn update_all(conn: &mut PgConnection, events: &[&ProjectedEvent]) -> sqlx::Result<()> {
    let folded = fold(events);
    let n = folded.len();
    let (mut ids, mut versions, mut times, mut actors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut sets, mut cleared, mut stages) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for record in folded {
        ids.push(record.last.aggregate_id);
        versions.push(record.last.sequence);
        times.push(record.last.recorded_at);
        actors.push(record.last.metadata.actor.id());
        sets.push(Json(record.set));
        cleared.push(Json(record.cleared));
        stages.push(record.stage_since);
    }
    sqlx::query(
        "UPDATE records AS r
         SET version = u.version, updated_at = u.updated_at, updated_by = u.updated_by,
             fields = (r.fields || u.set) - ARRAY(SELECT jsonb_array_elements_text(u.cleared)),
             stage_since = coalesce(u.stage_since, r.stage_since)
         FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::uuid[], $5::jsonb[],
                     $6::jsonb[], $7::timestamptz[])
              AS u(id, version, updated_at, updated_by, set, cleared, stage_since)
         WHERE r.id = u.id AND r.version < u.version",
    )
    .bind(ids)
    .bind(versions)
    .bind(times)
    .bind(actors)
    .bind(sets)
    .bind(cleared)
    .bind(stages)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts the rows of newly created records (a replayed creation changes nothing).
async fn insert_created(conn: &mut PgConnection, creations: &[Creation<'_>]) -> sqlx::Result<()> {
    let mut query = sqlx::QueryBuilder::new(
        "INSERT INTO records (id, datasheet, version, fields, hired_from,
                              created_at, updated_at, created_by, updated_by, stage_since) ",
    );
    query.push_values(
        creations,
        |mut row, (event, datasheet, fields, hired_from)| {
            let actor = event.metadata.actor.id();
            row.push_bind(event.aggregate_id)
                .push_bind(*datasheet)
                .push_bind(event.sequence)
                .push_bind(Json(*fields))
                .push_bind(*hired_from)
                .push_bind(event.recorded_at)
                .push_bind(event.recorded_at)
                .push_bind(actor)
                .push_bind(actor)
                .push_bind(fields.contains_key("stage").then_some(event.recorded_at));
        },
    );
    query.push(" ON CONFLICT (id) DO NOTHING");
    crate::execute_rows(conn, query, creations.len()).await
}

/// One record as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RecordRow {
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub datasheet: DatasheetName,
    pub version: i64,
    pub archived: bool,
    pub fields: Json<Map<String, Value>>,
    pub hired_from: Option<Uuid>,
    pub hired_as: Option<Uuid>,
    /// When the record's subject was erased.
    pub erased_at: Option<DateTime<Utc>>,
    /// When processing was restricted, and why (a `RestrictionReason` name).
    pub restricted_at: Option<DateTime<Utc>>,
    pub restriction_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Uuid,
    pub updated_by: Uuid,
}

impl RecordRow {
    /// The text values of the fields `names`, in that order: a text field's value, each item
    /// of a list.
    pub fn texts(&self, names: &[&str]) -> Vec<&str> {
        names
            .iter()
            .filter_map(|name| self.fields.get(*name))
            .flat_map(|value| match value {
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                Value::String(text) => vec![text.as_str()],
                _ => Vec::new(),
            })
            .collect()
    }
}

/// A datasheet read from its stored name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasheetName(pub Datasheet);

impl TryFrom<String> for DatasheetName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Datasheet::parse(&value)
            .map(DatasheetName)
            .ok_or_else(|| format!("unknown datasheet `{value}`"))
    }
}

impl RecordRow {
    pub fn datasheet(&self) -> Datasheet {
        self.datasheet.0
    }

    /// A text field's value.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }

    /// A list field's values (empty when it has none).
    pub fn list(&self, field: &str) -> Vec<&str> {
        self.fields
            .get(field)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

pub(crate) const RECORD_COLUMNS: &str =
    "id, datasheet, version, archived, fields, hired_from, hired_as, erased_at, restricted_at, restriction_reason, \
     created_at, updated_at, created_by, updated_by";

/// The record with this id, of any datasheet, archived or not.
pub async fn record<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<RecordRow>> {
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The records with these ids (missing ids are left out).
pub async fn records_by_id<'e>(
    db: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<RecordRow>> {
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Whether making `manager` the manager of `employee` would close a loop: `employee` is
/// `manager` or among `manager`'s managers.
pub async fn manages_indirectly<'e>(
    db: impl PgExecutor<'e>,
    employee: Uuid,
    manager: Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "WITH RECURSIVE chain(id, depth) AS (
             SELECT $2::uuid, 0
             UNION ALL
             SELECT (r.fields->>'manager_id')::uuid, c.depth + 1
             FROM records r JOIN chain c ON r.id = c.id
             WHERE r.datasheet = 'employees' AND r.fields ? 'manager_id' AND c.depth < 10000
         )
         SELECT EXISTS (SELECT 1 FROM chain WHERE id = $1)",
    )
    .bind(employee)
    .bind(manager)
    .fetch_one(db)
    .await
}
