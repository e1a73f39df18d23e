//! The consent register: per subject and purpose, the legal basis of the processing, given and
//! withdrawn as events on the subject's `consent` stream. A job applicant's talent-pool consent
//! is their record's `talent_pool_until`, so giving or withdrawing the `talent_pool` purpose of
//! an applicant changes that field, and the register shows it like any other purpose.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use custos_domain::consent::{parse_purpose, TALENT_POOL};
use custos_domain::record::Fields;
use custos_domain::EventMetadata;
use custos_domain::{ConsentCommand, ConsentError, ConsentEvent, Consents, Datasheet, LegalBasis};
use custos_projections::consents::{self, ConsentRow};
use custos_projections::records::RecordRow;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::audit::history::{record_history, HistoryEntry};
use crate::service::records::Answer;
use crate::service::Services;

/// What giving consent (or recording another basis) for a purpose takes.
pub(crate) struct NewConsent {
    pub(crate) purpose: String,
    pub(crate) legal_basis: LegalBasis,
    pub(crate) evidence: Option<String>,
    pub(crate) expires_on: Option<NaiveDate>,
}

/// One change of a subject's register, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConsentChange {
    pub(crate) recorded_at: DateTime<Utc>,
    /// `ConsentGiven` or `ConsentWithdrawn`.
    pub(crate) event_type: String,
    pub(crate) purpose: String,
    pub(crate) legal_basis: Option<LegalBasis>,
    pub(crate) evidence: Option<String>,
    pub(crate) expires_on: Option<NaiveDate>,
    pub(crate) note: Option<String>,
    pub(crate) metadata: Option<EventMetadata>,
}

fn talent_pool(record: &RecordRow, purpose: &str) -> bool {
    record.datasheet() == Datasheet::Applicants && purpose == TALENT_POOL
}

fn not_erased(record: &RecordRow) -> Result<(), ApiError> {
    if record.erased_at.is_some() {
        return Err(ConsentError::Erased.into());
    }
    Ok(())
}

impl Services {
    /// Records the legal basis for one purpose of processing `record`'s data (replacing what
    /// the register held for that purpose), and answers the register as it stands.
    pub(crate) async fn give_consent(
        &self,
        principal: &Principal,
        record: &RecordRow,
        consent: NewConsent,
        request_id: Uuid,
    ) -> Result<Vec<ConsentRow>, ApiError> {
        not_erased(record)?;
        let tenant = &principal.tenant;
        let today = Utc::now().date_naive();
        let purpose = parse_purpose(&consent.purpose)?;
        if talent_pool(record, &purpose) {
            if consent.legal_basis != LegalBasis::Consent {
                return Err(ApiError::validation(
                    "legalBasis",
                    "the talent pool rests on the applicant's consent",
                ));
            }
            let Some(until) = consent.expires_on else {
                return Err(ApiError::validation(
                    "expiresOn",
                    "the talent-pool consent is kept until a date: give one",
                ));
            };
            if consent.evidence.is_some() {
                return Err(ApiError::validation(
                    "evidence",
                    "the talent-pool consent is the applicant's talentPoolUntil, which keeps no evidence note; keep the evidence in the applicant's notes",
                ));
            }
            if until < today {
                return Err(ConsentError::ExpiryInPast.into());
            }
            let changes = Fields::from([(
                "talent_pool_until".to_owned(),
                Value::String(until.to_string()),
            )]);
            self.update_record(
                principal,
                Datasheet::Applicants,
                record.id,
                None,
                changes,
                None,
                request_id,
                Answer::Row,
            )
            .await?;
        } else {
            let command = ConsentCommand::Give {
                datasheet: record.datasheet(),
                purpose,
                legal_basis: consent.legal_basis,
                evidence: consent.evidence,
                expires_on: consent.expires_on,
                today,
            };
            self.command(
                tenant,
                &tenant.consents,
                record.id,
                command,
                self.actor(principal, request_id),
            )
            .await?;
        }
        self.consents(tenant, record.id).await
    }

    /// Records that the subject withdrew consent for a purpose (or that its basis ended).
    pub(crate) async fn withdraw_consent(
        &self,
        principal: &Principal,
        record: &RecordRow,
        purpose: &str,
        note: Option<String>,
        request_id: Uuid,
    ) -> Result<Vec<ConsentRow>, ApiError> {
        not_erased(record)?;
        let tenant = &principal.tenant;
        let purpose = parse_purpose(purpose)?;
        if talent_pool(record, &purpose) {
            if record.text("talent_pool_until").is_none() {
                return Err(ConsentError::NotGiven(purpose).into());
            }
            if note.is_some() {
                return Err(ApiError::validation(
                    "note",
                    "the talent-pool consent is the applicant's talentPoolUntil, which keeps no note",
                ));
            }
            let changes = Fields::from([("talent_pool_until".to_owned(), Value::Null)]);
            self.update_record(
                principal,
                Datasheet::Applicants,
                record.id,
                None,
                changes,
                None,
                request_id,
                Answer::Row,
            )
            .await?;
        } else {
            self.command(
                tenant,
                &tenant.consents,
                record.id,
                ConsentCommand::Withdraw { purpose, note },
                self.actor(principal, request_id),
            )
            .await?;
        }
        self.consents(tenant, record.id).await
    }

    /// A subject's register as it stands, by purpose.
    pub(crate) async fn consents(
        &self,
        tenant: &Tenant,
        subject: Uuid,
    ) -> Result<Vec<ConsentRow>, ApiError> {
        Ok(consents::of_subjects(&tenant.pool, &[subject]).await?)
    }

    /// Every change of a subject's register, oldest first: its `consent` stream, and for an
    /// applicant the changes of their talent-pool date. Empty once the subject is erased.
    pub(crate) async fn consent_history(
        &self,
        tenant: &Tenant,
        subject: Uuid,
    ) -> Result<Vec<ConsentChange>, ApiError> {
        let record = record_history(&tenant.log, subject)
            .await
            .map_err(ApiError::internal)?;
        self.consent_history_with(tenant, subject, &record).await
    }

    /// [`Self::consent_history`] with the subject's record history already read.
    pub(crate) async fn consent_history_with(
        &self,
        tenant: &Tenant,
        subject: Uuid,
        record: &[HistoryEntry],
    ) -> Result<Vec<ConsentChange>, ApiError> {
        let stream = tenant
            .log
            .stream(Consents::TYPE, &subject.to_string())
            .await
            .map_err(ApiError::internal)?;
        let mut changes = Vec::with_capacity(stream.len());
        for stored in stream {
            let metadata = EventMetadata::from_map(&stored.metadata());
            let event: ConsentEvent =
                serde_json::from_value(stored.event.payload).map_err(ApiError::internal)?;
            let mut change = ConsentChange {
                recorded_at: stored.recorded_at,
                event_type: stored.event.event_type,
                purpose: String::new(),
                legal_basis: None,
                evidence: None,
                expires_on: None,
                note: None,
                metadata,
            };
            match event {
                ConsentEvent::ConsentGiven {
                    purpose,
                    legal_basis,
                    evidence,
                    expires_on,
                    ..
                } => {
                    change.purpose = purpose;
                    change.legal_basis = Some(legal_basis);
                    change.evidence = evidence;
                    change.expires_on = expires_on;
                }
                ConsentEvent::ConsentWithdrawn { purpose, note, .. } => {
                    change.purpose = purpose;
                    change.note = note;
                }
                // Erased: nothing of the register can be read.
                ConsentEvent::Redacted => continue,
            }
            changes.push(change);
        }
        // Once the person is erased nothing of the register is known any more, including what
        // their talent-pool date was.
        let erased = record.iter().any(|e| e.event_type == "RecordErased");
        for entry in record.iter().filter(|_| !erased) {
            let Some(field) = entry.changes.iter().find(|c| c.field == "talentPoolUntil") else {
                continue;
            };
            let expires_on = field.after.as_deref().and_then(|d| d.parse().ok());
            let given = expires_on.is_some();
            if !given && field.after.is_some() {
                // An erased value.
                continue;
            }
            changes.push(ConsentChange {
                recorded_at: entry.recorded_at,
                event_type: if given {
                    "ConsentGiven"
                } else {
                    "ConsentWithdrawn"
                }
                .to_owned(),
                purpose: TALENT_POOL.to_owned(),
                legal_basis: given.then_some(LegalBasis::Consent),
                evidence: None,
                expires_on,
                note: None,
                metadata: entry.metadata,
            });
        }
        changes.sort_by_key(|c| c.recorded_at);
        Ok(changes)
    }
}
