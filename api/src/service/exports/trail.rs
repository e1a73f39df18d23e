//! A data subject's trail (GDPR Art. 15 and 20): everything the organisation holds about one
//! person, as a ZIP bundle — one JSON document, the same facts as CSV files, and a manifest of
//! SHA-256 hashes (in `sha256sum` format) that lets anyone check the files offline.
//!
//! The bundle is built when its one-time link is used, from the person's own records, streams
//! and index entries only, so its cost grows with the person's events, not the tenant's. It is
//! recorded as a `SubjectTrailExported` event carrying the manifest's hash before a byte of it
//! leaves the service.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use custos_domain::{CustomSchema, DataExportCommand, Datasheet, EventMetadata, Permission};
use custos_projections::accesses::{self, AccessRow};
use custos_projections::consents::ConsentRow;
use custos_projections::records::{self, RecordRow};
use custos_projections::retention;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::links::{guarded, issue_link, ExportTicket};
use super::records::json_object;
use crate::auth::policy::check_record;
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::stores::downloads::NewDownload;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::audit::history::{record_history, HistoryEntry};
use crate::service::privacy::consents::ConsentChange;
use crate::service::Services;

/// The most records one trail may cover (one person rarely has more than a handful).
const MAX_RECORDS: usize = 100;

/// A built bundle, ready to send.
pub struct TrailBundle {
    pub bytes: Vec<u8>,
    /// The SHA-256 of the manifest, as the export event records it.
    pub manifest_sha256: String,
}

/// Everything gathered about one record of the person.
struct RecordTrail {
    row: RecordRow,
    events: Vec<HistoryEntry>,
    consents: Vec<ConsentRow>,
    consent_history: Vec<ConsentChange>,
    accesses: Vec<AccessRow>,
    /// (policy id, policy name, when it erases the record)
    retention: Vec<(Uuid, String, DateTime<Utc>)>,
}

fn actor_json(metadata: Option<&EventMetadata>) -> Value {
    match metadata {
        Some(m) => json!({ "kind": m.actor.kind(), "id": m.actor.id() }),
        None => Value::Null,
    }
}

fn csv_file(header: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header)?;
    for row in rows {
        writer.write_record(row.into_iter().map(guarded))?;
    }
    Ok(writer.into_inner()?)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339()
}

impl RecordTrail {
    fn json(&self, schema: &CustomSchema) -> Value {
        let row = &self.row;
        json!({
            "id": row.id,
            "datasheet": row.datasheet().as_str(),
            "data": json_object(row, row.datasheet(), schema),
            "status": {
                "archived": row.archived,
                "restricted": row.restricted_at.is_some(),
                "restrictedAt": row.restricted_at,
                "restrictionReason": row.restriction_reason,
                "erasedAt": row.erased_at,
            },
            "events": self.events.iter().map(|e| json!({
                "sequence": e.sequence,
                "type": e.event_type,
                "recordedAt": e.recorded_at,
                "effectiveFrom": e.effective_from,
                "actor": actor_json(e.metadata.as_ref()),
                "requestId": e.metadata.map(|m| m.request_id),
                "changes": e.changes.iter().map(|c| json!({
                    "field": c.field, "before": c.before, "after": c.after,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "consents": self.consents.iter().map(|c| json!({
                "purpose": c.purpose,
                "legalBasis": c.legal_basis,
                "givenAt": c.given_at,
                "expiresOn": c.expires_on,
                "withdrawnAt": c.withdrawn_at,
                "holds": c.holds_on(Utc::now().date_naive()),
            })).collect::<Vec<_>>(),
            "consentHistory": self.consent_history.iter().map(|c| json!({
                "type": c.event_type,
                "recordedAt": c.recorded_at,
                "purpose": c.purpose,
                "legalBasis": c.legal_basis.map(|b| b.as_str()),
                "evidence": c.evidence,
                "expiresOn": c.expires_on,
                "note": c.note,
                "actor": actor_json(c.metadata.as_ref()),
            })).collect::<Vec<_>>(),
            "accesses": self.accesses.iter().map(|a| json!({
                "at": a.at,
                "access": a.access,
                "kind": a.kind,
                "exportId": a.export_id,
                "actor": { "kind": a.actor_kind, "id": a.actor_id },
            })).collect::<Vec<_>>(),
            "retention": self.retention.iter().map(|(id, name, due)| json!({
                "policyId": id, "policy": name, "erasesAt": due,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Services {
    /// Starts a subject's trail: the records named by `subject_ids` and those the blind index
    /// finds for `email`, plus the records linked to them by a hire (the same person). Needs
    /// `export` on every datasheet involved. Answers a one-time download link.
    pub(crate) async fn start_subject_trail(
        &self,
        principal: &Principal,
        subject_ids: Vec<Uuid>,
        email: Option<String>,
        request_id: Uuid,
    ) -> Result<(ExportTicket, Vec<Uuid>), ApiError> {
        let tenant = &principal.tenant;
        let mut ids: BTreeSet<Uuid> = subject_ids.iter().copied().collect();
        if let Some(email) = email {
            let digest = tenant
                .blind_index
                .email(&email)
                .ok_or_else(|| ApiError::validation("email", "not a valid email address"))?;
            ids.extend(tenant.blind_index.records(&tenant.pool, &digest).await?);
        }
        if ids.is_empty() {
            return Err(ApiError::validation(
                "subjectIds",
                "no record about this person: give record ids or an email the records hold",
            ));
        }
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let mut rows = records::records_by_id(&tenant.pool, &ids).await?;
        let found: BTreeSet<Uuid> = rows.iter().map(|r| r.id).collect();
        if subject_ids.iter().any(|id| !found.contains(id)) {
            return Err(ApiError::NotFound);
        }
        let linked: Vec<Uuid> = rows
            .iter()
            .flat_map(|r| [r.hired_from, r.hired_as])
            .flatten()
            .filter(|id| !ids.contains(id))
            .collect();
        rows.extend(records::records_by_id(&tenant.pool, &linked).await?);
        // Records found by email or through a hire in datasheets the caller may not read stay
        // unseen (as in `findSubject`): otherwise a refusal would tell that they exist. Records
        // named by id must all be exportable.
        rows.retain(|r| {
            subject_ids.contains(&r.id) || principal.may(r.datasheet(), Permission::Read)
        });
        if rows.is_empty() {
            return Err(ApiError::validation(
                "email",
                "no record about this person: give record ids or an email the records hold",
            ));
        }
        if rows.len() > MAX_RECORDS {
            return Err(ApiError::validation(
                "subjectIds",
                format!("a trail covers at most {MAX_RECORDS} records"),
            ));
        }
        for row in &rows {
            check_record(principal, row.datasheet(), Permission::Export)?;
        }
        let record_ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let actor = principal.actor();
        let export_id = Uuid::now_v7();
        let link = NewDownload {
            record_ids: &record_ids,
            actor: Some((actor.id(), actor.kind())),
            request_id: Some(request_id),
            ..NewDownload::new("subject_trail", export_id, "zip")
        };
        let ticket = issue_link(tenant, link, record_ids.len()).await?;
        Ok((ticket, record_ids))
    }

    /// Builds the trail of `record_ids` and records its export (with the manifest's hash) as
    /// `export_id`, on behalf of `metadata`'s actor.
    pub async fn build_subject_trail(
        &self,
        tenant: &Tenant,
        export_id: Uuid,
        record_ids: &[Uuid],
        metadata: EventMetadata,
    ) -> Result<TrailBundle, ApiError> {
        let generated_at = Utc::now();
        let rows = records::records_by_id(&tenant.pool, record_ids).await?;
        let mut consents: BTreeMap<Uuid, Vec<ConsentRow>> = BTreeMap::new();
        for row in custos_projections::consents::of_subjects(&tenant.pool, record_ids).await? {
            consents.entry(row.subject_id).or_default().push(row);
        }
        let mut access: BTreeMap<Uuid, Vec<AccessRow>> = BTreeMap::new();
        for row in accesses::of_records(&tenant.pool, record_ids).await? {
            access.entry(row.record_id).or_default().push(row);
        }
        let policies = retention::policies(&tenant.pool, false).await?;
        let far = generated_at
            + Duration::days(i64::from(custos_domain::retention::MAX_PERIOD_DAYS) + 366);
        let mut schemas: BTreeMap<Datasheet, CustomSchema> = BTreeMap::new();
        let mut trails = Vec::with_capacity(rows.len());
        for row in rows {
            let datasheet = row.datasheet();
            if let std::collections::btree_map::Entry::Vacant(entry) = schemas.entry(datasheet) {
                entry.insert(self.custom_schema(tenant, datasheet).await?);
            }
            let mut due = Vec::new();
            for policy in policies.iter().filter(|p| p.datasheet() == datasheet) {
                for scheduled in
                    retention::due(&tenant.pool, policy, far, Some(&[row.id]), &[], 1).await?
                {
                    due.push((policy.id, policy.name.clone(), scheduled.due_at));
                }
            }
            let events = record_history(&tenant.log, row.id)
                .await
                .map_err(ApiError::internal)?;
            trails.push(RecordTrail {
                consent_history: self.consent_history_with(tenant, row.id, &events).await?,
                events,
                consents: consents.remove(&row.id).unwrap_or_default(),
                accesses: access.remove(&row.id).unwrap_or_default(),
                retention: due,
                row,
            });
        }
        let files = trail_files(&trails, &schemas, generated_at).map_err(ApiError::internal)?;
        let manifest: String = files
            .iter()
            .map(|(name, bytes)| format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))))
            .collect();
        let manifest_sha256 = hex::encode(Sha256::digest(manifest.as_bytes()));
        let bytes = zip(&files, manifest.as_bytes()).map_err(ApiError::internal)?;
        let command = DataExportCommand::SubjectTrail {
            record_ids: record_ids.to_vec(),
            manifest_sha256: manifest_sha256.clone(),
        };
        // Recorded before a byte is sent; the read models (the person's accesses, the audit
        // log) follow in the background — nothing here reads them back.
        self.command(tenant, &tenant.exports, export_id, command, metadata)
            .wait_for_read_models(false)
            .await?;
        tracing::info!(tenant.id = %tenant.id, export.id = %export_id, records = record_ids.len(), "a subject's trail was exported");
        Ok(TrailBundle {
            bytes,
            manifest_sha256,
        })
    }
}

/// The bundle's files (all but the manifest), in order.
fn trail_files(
    trails: &[RecordTrail],
    schemas: &BTreeMap<Datasheet, CustomSchema>,
    generated_at: DateTime<Utc>,
) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let empty = CustomSchema::default();
    let document = json!({
        "format": "custos-subject-trail/1",
        "generatedAt": generated_at,
        "records": trails
            .iter()
            .map(|t| t.json(schemas.get(&t.row.datasheet()).unwrap_or(&empty)))
            .collect::<Vec<_>>(),
    });
    let mut data = Vec::new();
    let mut events = Vec::new();
    let mut consents = Vec::new();
    let mut accesses = Vec::new();
    let mut status = Vec::new();
    for trail in trails {
        let row = &trail.row;
        let id = row.id.to_string();
        let datasheet = row.datasheet().as_str().to_owned();
        let object = json_object(
            row,
            row.datasheet(),
            schemas.get(&row.datasheet()).unwrap_or(&empty),
        );
        if let Some(object) = object.as_object() {
            for (field, value) in object {
                let values: Vec<&Value> = match value {
                    Value::Object(custom) => {
                        for (key, value) in custom {
                            data.push(vec![
                                id.clone(),
                                datasheet.clone(),
                                format!("custom.{key}"),
                                text(value),
                            ]);
                        }
                        continue;
                    }
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for value in values {
                    data.push(vec![
                        id.clone(),
                        datasheet.clone(),
                        field.clone(),
                        text(value),
                    ]);
                }
            }
        }
        for event in &trail.events {
            let (kind, actor) = event
                .metadata
                .map(|m| (m.actor.kind().to_owned(), m.actor.id().to_string()))
                .unwrap_or_default();
            let request = event
                .metadata
                .map(|m| m.request_id.to_string())
                .unwrap_or_default();
            let mut changes: Vec<(String, String, String)> = event
                .changes
                .iter()
                .map(|c| {
                    (
                        c.field.clone(),
                        c.before.clone().unwrap_or_default(),
                        c.after.clone().unwrap_or_default(),
                    )
                })
                .collect();
            if changes.is_empty() {
                changes.push(Default::default());
            }
            for (field, before, after) in changes {
                events.push(vec![
                    id.clone(),
                    event.sequence.to_string(),
                    event.event_type.clone(),
                    time(event.recorded_at),
                    event
                        .effective_from
                        .map(|day| day.to_string())
                        .unwrap_or_default(),
                    kind.clone(),
                    actor.clone(),
                    request.clone(),
                    field,
                    before,
                    after,
                ]);
            }
        }
        for change in &trail.consent_history {
            consents.push(vec![
                id.clone(),
                change.event_type.clone(),
                time(change.recorded_at),
                change.purpose.clone(),
                change
                    .legal_basis
                    .map(|b| b.as_str().to_owned())
                    .unwrap_or_default(),
                change.expires_on.map(|d| d.to_string()).unwrap_or_default(),
                change
                    .evidence
                    .clone()
                    .or_else(|| change.note.clone())
                    .unwrap_or_default(),
            ]);
        }
        for access in &trail.accesses {
            accesses.push(vec![
                id.clone(),
                time(access.at),
                access.access.clone(),
                access.kind.clone(),
                access.export_id.map(|e| e.to_string()).unwrap_or_default(),
                access.actor_kind.clone(),
                access.actor_id.to_string(),
            ]);
        }
        let restricted = row.restricted_at.map(time).unwrap_or_default();
        let erased = row.erased_at.map(time).unwrap_or_default();
        let base = vec![
            id.clone(),
            datasheet.clone(),
            row.archived.to_string(),
            restricted,
            row.restriction_reason.clone().unwrap_or_default(),
            erased,
        ];
        if trail.retention.is_empty() {
            let mut line = base.clone();
            line.extend([String::new(), String::new()]);
            status.push(line);
        }
        for (_, name, due) in &trail.retention {
            let mut line = base.clone();
            line.extend([name.clone(), time(*due)]);
            status.push(line);
        }
    }
    Ok(vec![
        ("subject.json", serde_json::to_vec_pretty(&document)?),
        (
            "data.csv",
            csv_file(&["record_id", "datasheet", "field", "value"], data)?,
        ),
        (
            "events.csv",
            csv_file(
                &[
                    "record_id",
                    "sequence",
                    "event_type",
                    "recorded_at",
                    "effective_from",
                    "actor_kind",
                    "actor_id",
                    "request_id",
                    "field",
                    "before",
                    "after",
                ],
                events,
            )?,
        ),
        (
            "consents.csv",
            csv_file(
                &[
                    "record_id",
                    "event_type",
                    "recorded_at",
                    "purpose",
                    "legal_basis",
                    "expires_on",
                    "evidence_or_note",
                ],
                consents,
            )?,
        ),
        (
            "accesses.csv",
            csv_file(
                &[
                    "record_id",
                    "at",
                    "access",
                    "kind",
                    "export_id",
                    "actor_kind",
                    "actor_id",
                ],
                accesses,
            )?,
        ),
        (
            "status.csv",
            csv_file(
                &[
                    "record_id",
                    "datasheet",
                    "archived",
                    "restricted_at",
                    "restriction_reason",
                    "erased_at",
                    "retention_policy",
                    "erased_by_policy_at",
                ],
                status,
            )?,
        ),
    ])
}

/// The files and the manifest as one ZIP archive (stored, not compressed: a trail is small).
fn zip(files: &[(&str, Vec<u8>)], manifest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in files {
        archive.start_file(*name, options)?;
        archive.write_all(bytes)?;
    }
    archive.start_file("manifest.sha256", options)?;
    archive.write_all(manifest)?;
    Ok(archive.finish()?.into_inner())
}
