//! The `records` read model: one row per record of any datasheet, with its field values as a
//! JSON object, for listing and lookups; and `pending_changes`, the changes entered to take
//! effect on a later day.
//!
//! Changes are effective-dated: each value in `fields` is the one in force today, the one
//! given by the change that takes effect last by today (of two on one day, the one recorded
//! last). Each field's value has that change's key (`YYYY-MM-DD#sequence`, which sorts as text in
//! that order; `field_since` per field, `since_base` for the values of the creation), so a change
//! applies to a field only when its key is later —
//! in whatever order changes arrive: a correction dated in the past does not undo a later
//! change, a replay changes nothing, and a scheduled change applied on its day (see
//! [`RecordsProjection::on_day`]) leaves what a rebuild on that day would.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::record::Fields;
use custos_domain::{Datasheet, Record, RecordEvent, Stage};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{column, AnyEvent, ProjectedEvent, Projection, TookEffect};

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
            &[
                crate::Table::new("records").read_indexes(&[
                    "records_by_sheet",
                    "records_by_sheet_all",
                    "records_manager",
                    "records_search",
                    "records_fields",
                    "records_last_name",
                    "records_first_name",
                ]),
                crate::Table::new("pending_changes"),
            ]
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
            RecordEvent::ScheduledChangeCancelled { version, .. } => {
                sqlx::query("DELETE FROM pending_changes WHERE record_id = $1 AND sequence = $2")
                    .bind(event.aggregate_id)
                    .bind(i64::try_from(*version).unwrap_or(i64::MAX))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(&change("archived = archived"))
                    .bind(event.aggregate_id)
                    .bind(event.sequence)
                    .bind(event.recorded_at)
                    .bind(actor)
                    .execute(conn)
                    .await?;
            }
            // Nothing of the subject remains: no value, and nothing to search for.
            RecordEvent::RecordErased { .. } => {
                sqlx::query("DELETE FROM pending_changes WHERE record_id = $1")
                    .bind(event.aggregate_id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(&change(
                    "fields = '{}'::jsonb, field_since = '{}'::jsonb, since_base = '',
                     since_max = '', erased_at = $5,
                     restricted_at = NULL, restriction_reason = NULL",
                ))
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .bind(actor)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            RecordEvent::ApplicantHired {
                employee_id,
                effective_from,
                ..
            } => {
                let day = effective_day(*effective_from, event);
                let key = since_key(day, event.sequence);
                sqlx::query(&change(
                    "hired_as = $6,
                     fields = CASE WHEN coalesce(field_since->>'stage', since_base) < $7
                              THEN jsonb_set(fields, '{stage}', to_jsonb($5::text)) ELSE fields END,
                     stage_since = CASE WHEN coalesce(field_since->>'stage', since_base) < $7
                                   THEN $8 ELSE stage_since END,
                     field_since = CASE WHEN coalesce(field_since->>'stage', since_base) < $7
                                   THEN jsonb_set(field_since, '{stage}', to_jsonb($7::text))
                                   ELSE field_since END,
                     since_max = GREATEST(since_max, $7)",
                ))
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .bind(actor)
                .bind(Stage::Hired.as_str())
                .bind(employee_id)
                .bind(key)
                .bind(in_force_at(day, event.recorded_at))
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Runs of creations (seeding, imports, a rebuild) as one insert from arrays each, runs of
    /// updates as one statement each (a record's updates within a run folded into one);
    /// every other event on its own, in order.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
    ) -> sqlx::Result<()> {
        let mut rest = events;
        while let Some(first) = rest.first() {
            // A run of creations is inserted whole, and so is a run of updates: their arrays
            // are parameters of their own, and each record's changes are folded into one row
            // update however many the run holds.
            let created = creations(rest);
            if !created.is_empty() {
                insert_created(conn, &created).await?;
                rest = &rest[created.len()..];
                continue;
            }
            let updated = updates(rest);
            if updated > 0 {
                update_all(conn, &rest[..updated]).await?;
                rest = &rest[updated..];
                continue;
            }
            self.apply(conn, first).await?;
            rest = &rest[1..];
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM pending_changes")
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM records").execute(conn).await?;
        Ok(())
    }

    /// The scheduled changes due by `today` take effect: each field takes the change's value
    /// where it is the one in force (see the module's documentation), and the change leaves
    /// `pending_changes`.
    async fn on_day(
        &self,
        conn: &mut PgConnection,
        today: NaiveDate,
    ) -> sqlx::Result<Vec<TookEffect>> {
        let due: Vec<(Uuid, i64, NaiveDate, Json<Fields>, DateTime<Utc>)> = sqlx::query_as(
            "DELETE FROM pending_changes WHERE effective_from <= $1
             RETURNING record_id, sequence, effective_from, changes, recorded_at",
        )
        .bind(today)
        .fetch_all(&mut *conn)
        .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let changes: Vec<Change<'_>> = due
            .iter()
            .map(|(id, sequence, day, changes, recorded_at)| Change {
                id: *id,
                key: since_key(*day, *sequence),
                changes,
                in_force_at: in_force_at(*day, *recorded_at),
            })
            .collect();
        let folded = fold(changes.iter());
        let n = folded.len();
        let (mut ids, mut sets, mut cleared, mut since, mut stages) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut mins, mut maxes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for record in folded {
            let (min, max) = record.key_range();
            mins.push(min);
            maxes.push(max);
            ids.push(record.id);
            sets.push(Json(record.set));
            cleared.push(Json(record.cleared));
            since.push(Json(record.since));
            stages.push(record.stage_since);
        }
        sqlx::query(&format!(
            "UPDATE records AS r SET {IN_FORCE}
             FROM unnest($1::uuid[], $2::jsonb[], $3::jsonb[], $4::jsonb[], $5::timestamptz[],
                         $6::text[], $7::text[])
                  AS u(id, set, cleared, since, stage_since, min_key, max_key)
             WHERE r.id = u.id AND r.erased_at IS NULL"
        ))
        .bind(ids)
        .bind(sets)
        .bind(cleared)
        .bind(since)
        .bind(stages)
        .bind(mins)
        .bind(maxes)
        .execute(conn)
        .await?;
        Ok(due
            .iter()
            .map(|(record_id, sequence, day, ..)| TookEffect {
                record_id: *record_id,
                sequence: *sequence,
                effective_from: *day,
            })
            .collect())
    }
}

/// What a row's values become with the folded change `u` (`set`, `cleared`, `since`,
/// `stage_since`, and `min_key`/`max_key` of its keys): each field takes `u`'s value where
/// `u`'s key for it is later than the row's (`field_since`, or `since_base` for a field the
/// creation gave and nothing changed since; none for a field never given, which a change dated
/// before the record's creation may set when the creation was written before changes were
/// effective-dated and so does not bound them). When every key of `u` is later than every key
/// of the row (`since_max`) — every change but a correction — `u` applies whole, without
/// looking at fields one by one.
const IN_FORCE: &str = "
    fields = CASE WHEN u.min_key > r.since_max
             THEN (r.fields || u.set) - ARRAY(SELECT jsonb_array_elements_text(u.cleared))
             ELSE (r.fields || coalesce(
                 (SELECT jsonb_object_agg(s.key, s.value) FROM jsonb_each(u.set) s
                  WHERE coalesce(r.field_since->>s.key, CASE WHEN r.fields ? s.key THEN r.since_base ELSE '' END) < u.since->>s.key),
                 '{}'::jsonb))
             - ARRAY(SELECT c FROM jsonb_array_elements_text(u.cleared) c
                     WHERE coalesce(r.field_since->>c, CASE WHEN r.fields ? c THEN r.since_base ELSE '' END) < u.since->>c) END,
    field_since = CASE WHEN u.min_key > r.since_max THEN r.field_since || u.since
             ELSE r.field_since || coalesce(
                 (SELECT jsonb_object_agg(k.key, k.value) FROM jsonb_each_text(u.since) k
                  WHERE coalesce(r.field_since->>k.key, CASE WHEN r.fields ? k.key THEN r.since_base ELSE '' END) < k.value), '{}'::jsonb) END,
    since_max = GREATEST(r.since_max, u.max_key),
    stage_since = CASE WHEN u.stage_since IS NULL THEN r.stage_since
                       WHEN u.min_key > r.since_max
                         OR coalesce(r.field_since->>'stage', CASE WHEN r.fields ? 'stage' THEN r.since_base ELSE '' END) < u.since->>'stage'
                       THEN u.stage_since ELSE r.stage_since END";

/// The day a change takes effect: its own, or (written before changes were effective-dated)
/// the day it was recorded.
pub(crate) fn effective_day(
    effective_from: Option<NaiveDate>,
    event: &ProjectedEvent,
) -> NaiveDate {
    effective_from.unwrap_or_else(|| event.recorded_at.date_naive())
}

/// Since when a change's values hold on the record (a record's `stage_since`, from which
/// retention counts): when it was recorded, or the start of its day (UTC) when it was
/// scheduled for a later one. A correction counts from when it was recorded, not from its
/// earlier day: what the service held until then is not shortened after the fact.
pub(crate) fn in_force_at(day: NaiveDate, recorded_at: DateTime<Utc>) -> DateTime<Utc> {
    recorded_at.max(day.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// The key that orders a record's changes: by the day they take effect, then by the record's
/// version they were recorded at. Sorts as text.
fn since_key(day: NaiveDate, sequence: i64) -> String {
    format!("{}#{sequence:012}", day.format("%Y-%m-%d"))
}

/// Today, as commands count days (UTC).
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// How long after midnight (UTC) the read models take a day's scheduled changes: a
/// cancellation recorded just before midnight is projected by then.
pub const DAY_GRACE: chrono::Duration = chrono::Duration::minutes(1);

/// The day whose scheduled changes the read models have taken: today, from [`DAY_GRACE`]
/// after midnight.
pub fn day_in_force() -> NaiveDate {
    (Utc::now() - DAY_GRACE).date_naive()
}

/// A record's creation: its event, datasheet, fields, the applicant it was hired from, and the
/// day it takes effect.
type Creation<'a> = (
    &'a ProjectedEvent,
    &'static str,
    &'a Fields,
    Option<Uuid>,
    NaiveDate,
);

/// The creations at the start of `events`, up to the first event of another kind.
fn creations<'a>(events: &[&'a ProjectedEvent]) -> Vec<Creation<'a>> {
    events
        .iter()
        .map_while(|event| match &event.event {
            AnyEvent::Record(RecordEvent::RecordCreated {
                datasheet,
                fields,
                hired_from,
                effective_from,
            }) => Some((
                *event,
                datasheet.as_str(),
                fields,
                *hired_from,
                effective_day(*effective_from, event),
            )),
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

/// One change of a record's values, in force from its key's day.
struct Change<'a> {
    id: Uuid,
    key: String,
    changes: &'a Fields,
    /// See [`in_force_at`].
    in_force_at: DateTime<Utc>,
}

/// What a record's changes in one run change together: per field, the value of the change
/// with the latest key.
struct Folded {
    id: Uuid,
    set: Map<String, Value>,
    cleared: Vec<String>,
    /// Each changed field's key.
    since: Map<String, Value>,
    /// Since when the stage has had its value (see [`in_force_at`]).
    stage_since: Option<DateTime<Utc>>,
}

impl Folded {
    /// The smallest and the greatest of its keys (`~`, after every key, and `` when it has
    /// none: it changes nothing).
    fn key_range(&self) -> (String, String) {
        let keys = self.since.values().filter_map(Value::as_str);
        let min = keys.clone().min().unwrap_or("~").to_owned();
        let max = keys.max().unwrap_or_default().to_owned();
        (min, max)
    }
}

/// Folds changes per record, in the order each record first appears.
fn fold<'a>(changes: impl Iterator<Item = &'a Change<'a>>) -> Vec<Folded> {
    let mut folded: Vec<Folded> = Vec::new();
    let mut at: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for change in changes {
        let index = *at.entry(change.id).or_insert_with(|| {
            folded.push(Folded {
                id: change.id,
                set: Map::new(),
                cleared: Vec::new(),
                since: Map::new(),
                stage_since: None,
            });
            folded.len() - 1
        });
        let record = &mut folded[index];
        for (key, value) in change.changes {
            let later = record
                .since
                .get(key)
                .and_then(Value::as_str)
                .is_none_or(|since| since < change.key.as_str());
            if !later {
                continue;
            }
            record
                .since
                .insert(key.clone(), Value::String(change.key.clone()));
            if value.is_null() {
                record.set.remove(key);
                if !record.cleared.contains(key) {
                    record.cleared.push(key.clone());
                }
            } else {
                record.cleared.retain(|cleared| cleared != key);
                record.set.insert(key.clone(), value.clone());
            }
            if key == "stage" {
                record.stage_since = (!value.is_null()).then_some(change.in_force_at);
            }
        }
    }
    folded
}

/// Applies a run of updates with one statement (and, for those scheduled — recorded to take
/// effect after the day they were recorded — one more into `pending_changes`, from which
/// [`RecordsProjection::on_day`] takes them on their day: what the rows hold follows from the
/// events alone, so a rebuild on any day leaves what the live read model holds, and a
/// cancellation finds its change pending). Each record's row moves to its last update's
/// version; each field takes the value of the change with the latest key, whichever of them
/// the row had already seen.
async fn update_all(conn: &mut PgConnection, events: &[&ProjectedEvent]) -> sqlx::Result<()> {
    let mut last: Vec<&ProjectedEvent> = Vec::new();
    let mut at: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    let mut in_force = Vec::with_capacity(events.len());
    let mut scheduled = Vec::new();
    for event in events {
        let AnyEvent::Record(RecordEvent::RecordUpdated {
            changes,
            effective_from,
            ..
        }) = &event.event
        else {
            continue;
        };
        match at.get(&event.aggregate_id) {
            Some(index) => last[*index] = event,
            None => {
                at.insert(event.aggregate_id, last.len());
                last.push(event);
            }
        }
        let day = effective_day(*effective_from, event);
        if day > event.recorded_at.date_naive() {
            scheduled.push((*event, day, changes));
            continue;
        }
        in_force.push(Change {
            id: event.aggregate_id,
            key: since_key(day, event.sequence),
            changes,
            in_force_at: in_force_at(day, event.recorded_at),
        });
    }
    let mut folded: std::collections::HashMap<Uuid, Folded> = fold(in_force.iter())
        .into_iter()
        .map(|record| (record.id, record))
        .collect();
    let n = last.len();
    let (mut ids, mut versions, mut times, mut actors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut sets, mut cleared, mut since, mut stages) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut mins, mut maxes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for event in last {
        let record = folded.remove(&event.aggregate_id);
        let (min, max) = record
            .as_ref()
            .map_or_else(|| ("~".to_owned(), String::new()), Folded::key_range);
        mins.push(min);
        maxes.push(max);
        ids.push(event.aggregate_id);
        versions.push(event.sequence);
        times.push(event.recorded_at);
        actors.push(event.metadata.actor.id());
        let (set, gone, keys, stage) = record.map_or_else(Default::default, |r| {
            (r.set, r.cleared, r.since, r.stage_since)
        });
        sets.push(Json(set));
        cleared.push(Json(gone));
        since.push(Json(keys));
        stages.push(stage);
    }
    sqlx::query(&format!(
        "UPDATE records AS r
         SET version = u.version, updated_at = u.updated_at, updated_by = u.updated_by, {IN_FORCE}
         FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::uuid[], $5::jsonb[],
                     $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::text[], $10::text[])
              AS u(id, version, updated_at, updated_by, set, cleared, since, stage_since,
                   min_key, max_key)
         WHERE r.id = u.id AND r.version < u.version"
    ))
    .bind(ids)
    .bind(versions)
    .bind(times)
    .bind(actors)
    .bind(sets)
    .bind(cleared)
    .bind(since)
    .bind(stages)
    .bind(mins)
    .bind(maxes)
    .execute(&mut *conn)
    .await?;
    for (event, day, changes) in scheduled {
        sqlx::query(
            "INSERT INTO pending_changes
                 (record_id, sequence, effective_from, changes, recorded_at, recorded_by)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE EXISTS (SELECT 1 FROM records WHERE id = $1 AND erased_at IS NULL)
             ON CONFLICT (record_id, sequence) DO NOTHING",
        )
        .bind(event.aggregate_id)
        .bind(event.sequence)
        .bind(day)
        .bind(Json(changes))
        .bind(event.recorded_at)
        .bind(event.metadata.actor.id())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Inserts the rows of newly created records (a replayed creation changes nothing).
async fn insert_created(conn: &mut PgConnection, creations: &[Creation<'_>]) -> sqlx::Result<()> {
    // Arrays, one parameter a column: the statement's text is the same for any number of
    // rows, so it is prepared once per connection, and neither side handles a placeholder per
    // value (a `VALUES` list of a thousand creations had twelve thousand).
    sqlx::query(
        "INSERT INTO records (id, datasheet, version, fields, since_base, since_max, hired_from,
                              created_at, updated_at, created_by, updated_by, stage_since)
         SELECT id, datasheet, version, fields, since, since, hired_from, at, at, by, by,
                stage_since
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::jsonb[], $5::text[], $6::uuid[],
                     $7::timestamptz[], $8::uuid[], $9::timestamptz[])
              AS c(id, datasheet, version, fields, since, hired_from, at, by, stage_since)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(column(creations, |(event, ..)| event.aggregate_id))
    .bind(column(creations, |(_, datasheet, ..)| *datasheet))
    .bind(column(creations, |(event, ..)| event.sequence))
    .bind(column(creations, |(_, _, values, ..)| Json(*values)))
    .bind(column(creations, |(event, .., day)| {
        since_key(*day, event.sequence)
    }))
    .bind(column(creations, |(.., hired_from, _)| *hired_from))
    .bind(column(creations, |(event, ..)| event.recorded_at))
    .bind(column(creations, |(event, ..)| event.metadata.actor.id()))
    .bind(column(creations, |(event, _, values, _, day)| {
        values
            .contains_key("stage")
            .then(|| in_force_at(*day, event.recorded_at))
    }))
    .execute(conn)
    .await?;
    Ok(())
}

/// A change entered to take effect on a later day.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PendingChange {
    pub record_id: Uuid,
    /// The record's version the change was recorded at.
    pub sequence: i64,
    pub effective_from: NaiveDate,
    pub changes: Json<Map<String, Value>>,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: Uuid,
}

/// The changes of the records `ids` not in force yet, per record by the day they take effect,
/// then in the order they were recorded.
pub async fn pending_changes<'e>(
    db: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<PendingChange>> {
    sqlx::query_as(
        "SELECT record_id, sequence, effective_from, changes, recorded_at, recorded_by
         FROM pending_changes WHERE record_id = ANY($1)
         ORDER BY record_id, effective_from, sequence",
    )
    .bind(ids)
    // Planned with its ids, as `records_by_id`.
    .persistent(false)
    .fetch_all(db)
    .await
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
    // Planned with its ids: a reused plan is made for an array of a few, and exports read
    // hundreds at a time.
    .persistent(false)
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
