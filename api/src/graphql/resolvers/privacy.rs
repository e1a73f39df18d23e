//! Data-subject rights beyond the records themselves: a person's consent register and their
//! trail.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::{LegalBasis, Permission};
use custos_projections::consents::ConsentRow;
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::error::ApiError;
use crate::graphql::arguments::parse_ids;
use crate::graphql::context::Cx;
use crate::graphql::types::actor::Actor;
use crate::graphql::types::enums::LegalBasisKind;
use crate::service::privacy::consents::{ConsentChange, NewConsent};

fn basis(stored: &str) -> Result<LegalBasisKind, ApiError> {
    LegalBasis::parse(stored)
        .map(LegalBasisKind::from)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown legal basis in the register")))
}

/// One purpose of a person's consent register as it stands.
#[derive(SimpleObject)]
pub(crate) struct Consent {
    purpose: String,
    legal_basis: LegalBasisKind,
    /// When the basis was last given or renewed.
    given_at: DateTime<Utc>,
    /// The last day the basis holds; `null`: until withdrawn.
    expires_on: Option<NaiveDate>,
    withdrawn_at: Option<DateTime<Utc>>,
    /// Whether processing for the purpose may go on today.
    holds: bool,
}

impl TryFrom<ConsentRow> for Consent {
    type Error = ApiError;
    fn try_from(row: ConsentRow) -> Result<Self, ApiError> {
        Ok(Self {
            holds: row.holds_on(Utc::now().date_naive()),
            legal_basis: basis(&row.legal_basis)?,
            purpose: row.purpose,
            given_at: row.given_at,
            expires_on: row.expires_on,
            withdrawn_at: row.withdrawn_at,
        })
    }
}

/// One change of a person's consent register.
#[derive(SimpleObject)]
pub(crate) struct ConsentEvent {
    /// `ConsentGiven` or `ConsentWithdrawn`.
    event_type: String,
    recorded_at: DateTime<Utc>,
    purpose: String,
    legal_basis: Option<LegalBasisKind>,
    evidence: Option<String>,
    expires_on: Option<NaiveDate>,
    /// Why it was withdrawn.
    note: Option<String>,
    actor: Option<Actor>,
}

impl From<ConsentChange> for ConsentEvent {
    fn from(change: ConsentChange) -> Self {
        Self {
            event_type: change.event_type,
            recorded_at: change.recorded_at,
            purpose: change.purpose,
            legal_basis: change.legal_basis.map(Into::into),
            evidence: change.evidence,
            expires_on: change.expires_on,
            note: change.note,
            actor: change
                .metadata
                .map(|m| Actor::new(m.actor.id(), Some(m.actor))),
        }
    }
}

/// A person's consent register: where it stands, and every change.
pub(crate) struct SubjectConsents {
    subject_id: Uuid,
}

#[Object]
impl SubjectConsents {
    async fn subject_id(&self) -> ID {
        ID(self.subject_id.to_string())
    }

    /// Each purpose as it stands.
    async fn current(&self, ctx: &Context<'_>) -> Result<Vec<Consent>, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        let rows = cx.services.consents(tenant, self.subject_id).await?;
        rows.into_iter()
            .map(Consent::try_from)
            .collect::<Result<_, _>>()
    }

    /// Every consent given and withdrawn, oldest first (empty once the person was erased).
    async fn history(&self, ctx: &Context<'_>) -> Result<Vec<ConsentEvent>, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        let changes = cx.services.consent_history(tenant, self.subject_id).await?;
        Ok(changes.into_iter().map(ConsentEvent::from).collect())
    }
}

#[derive(InputObject)]
pub(crate) struct ConsentInput {
    /// What the data is processed for: lower-case letters, digits and `_` (`newsletter`).
    /// For a job applicant, `talent_pool` is their `talentPoolUntil`.
    purpose: String,
    legal_basis: LegalBasisKind,
    /// How the consent or basis is evidenced (a signed form, a ticket), in the organisation's
    /// words. Encrypted with the person's key.
    evidence: Option<String>,
    /// The last day the basis holds.
    expires_on: Option<NaiveDate>,
}

/// A download link for a person's trail.
#[derive(SimpleObject)]
pub(crate) struct SubjectTrailPayload {
    export_id: ID,
    /// The records the trail covers: those named, those found by email, and those linked to
    /// them by a hire.
    record_ids: Vec<ID>,
    /// `GET` it once, within five minutes: a ZIP of `subject.json`, CSV files and
    /// `manifest.sha256`. The export is recorded, with the manifest's hash, when it is built.
    download_url: String,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub(crate) struct PrivacyQuery;

#[Object]
impl PrivacyQuery {
    /// A person's consent register (the record's subject). Needs `read` on its datasheet.
    async fn consents(
        &self,
        ctx: &Context<'_>,
        subject_id: ID,
    ) -> Result<SubjectConsents, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx.authorized_record(&subject_id, Permission::Read).await?;
        Ok(SubjectConsents {
            subject_id: record.id,
        })
    }
}

#[derive(Default)]
pub(crate) struct PrivacyMutation;

#[Object]
impl PrivacyMutation {
    /// Records the legal basis for one purpose of processing a person's data — consent with
    /// its evidence, or another basis of Art. 6(1) — replacing what the register held for
    /// that purpose. Needs `update` on the record's datasheet.
    async fn give_consent(
        &self,
        ctx: &Context<'_>,
        subject_id: ID,
        input: ConsentInput,
    ) -> Result<SubjectConsents, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx
            .authorized_record(&subject_id, Permission::Update)
            .await?;
        let consent = NewConsent {
            purpose: input.purpose,
            legal_basis: input.legal_basis.into(),
            evidence: input.evidence,
            expires_on: input.expires_on,
        };
        cx.services
            .give_consent(cx.caller, &record, consent, cx.request_id)
            .await?;
        Ok(SubjectConsents {
            subject_id: record.id,
        })
    }

    /// Records that the person withdrew consent for a purpose (or that its basis ended).
    /// Policies with `unlessConsent` or `CONSENT_ENDED` on that purpose then apply. Needs
    /// `update` on the record's datasheet.
    async fn withdraw_consent(
        &self,
        ctx: &Context<'_>,
        subject_id: ID,
        purpose: String,
        note: Option<String>,
    ) -> Result<SubjectConsents, ApiError> {
        let cx = Cx::new(ctx)?;
        let record = cx
            .authorized_record(&subject_id, Permission::Update)
            .await?;
        cx.services
            .withdraw_consent(cx.caller, &record, &purpose, note, cx.request_id)
            .await?;
        Ok(SubjectConsents {
            subject_id: record.id,
        })
    }

    /// A person's trail (GDPR Art. 15 and 20): their records by id and/or every record the
    /// blind index finds for `email`. Needs `export` on every datasheet involved.
    async fn subject_trail(
        &self,
        ctx: &Context<'_>,
        subject_ids: Option<Vec<ID>>,
        email: Option<String>,
    ) -> Result<SubjectTrailPayload, ApiError> {
        let cx = Cx::new(ctx)?;
        let subject_ids = parse_ids("subjectIds", &subject_ids.unwrap_or_default())?;
        let (ticket, record_ids) = cx
            .services
            .start_subject_trail(cx.caller, subject_ids, email, cx.request_id)
            .await?;
        Ok(SubjectTrailPayload {
            export_id: ID(ticket.export_id.to_string()),
            record_ids: record_ids.iter().map(|id| ID(id.to_string())).collect(),
            download_url: format!("/exports/{}", ticket.token.expose_secret()),
            expires_at: ticket.expires_at,
        })
    }
}
