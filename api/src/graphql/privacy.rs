//! Data-subject rights beyond the records themselves: the consent register, a person's trail,
//! retention policies and their runs, and the breach register.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::{
    Datasheet, IncidentCommand, IncidentScope, LegalBasis, Permission, RetentionTrigger, Stage,
};
use custos_projections::consents::ConsentRow;
use custos_projections::incidents::IncidentRow;
use custos_projections::retention::{DueRow, PolicyRow};
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::exports::{export_payload, ExportPayload};
use super::history::Actor;
use super::records::{authorized_record, stored_enum, DatasheetKind, PipelineStage};
use super::{moment, parse_id, principal, request, services};
use crate::error::ApiError;
use crate::service::{ConsentChange, NewConsent, NewIncident, NewPolicy};

/// The lawful bases of GDPR Art. 6(1).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "LegalBasis")]
pub enum LegalBasisKind {
    /// (a) the person consented to the purpose.
    Consent,
    /// (b) needed for a contract with the person, or steps before one.
    Contract,
    /// (c) needed to comply with a legal obligation.
    LegalObligation,
    /// (d) needed to protect someone's vital interests.
    VitalInterests,
    /// (e) a task in the public interest or official authority.
    PublicTask,
    /// (f) the organisation's or a third party's legitimate interests.
    LegitimateInterests,
}

impl From<LegalBasisKind> for LegalBasis {
    fn from(value: LegalBasisKind) -> Self {
        match value {
            LegalBasisKind::Consent => LegalBasis::Consent,
            LegalBasisKind::Contract => LegalBasis::Contract,
            LegalBasisKind::LegalObligation => LegalBasis::LegalObligation,
            LegalBasisKind::VitalInterests => LegalBasis::VitalInterests,
            LegalBasisKind::PublicTask => LegalBasis::PublicTask,
            LegalBasisKind::LegitimateInterests => LegalBasis::LegitimateInterests,
        }
    }
}

impl From<LegalBasis> for LegalBasisKind {
    fn from(value: LegalBasis) -> Self {
        match value {
            LegalBasis::Consent => LegalBasisKind::Consent,
            LegalBasis::Contract => LegalBasisKind::Contract,
            LegalBasis::LegalObligation => LegalBasisKind::LegalObligation,
            LegalBasis::VitalInterests => LegalBasisKind::VitalInterests,
            LegalBasis::PublicTask => LegalBasisKind::PublicTask,
            LegalBasis::LegitimateInterests => LegalBasisKind::LegitimateInterests,
        }
    }
}

fn basis(stored: &str) -> Result<LegalBasisKind, ApiError> {
    LegalBasis::parse(stored)
        .map(LegalBasisKind::from)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown legal basis in the register")))
}

/// One purpose of a person's consent register as it stands.
#[derive(SimpleObject)]
pub struct Consent {
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
pub struct ConsentEvent {
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
pub struct SubjectConsents {
    subject_id: Uuid,
}

#[Object]
impl SubjectConsents {
    async fn subject_id(&self) -> ID {
        ID(self.subject_id.to_string())
    }

    /// Each purpose as it stands.
    async fn current(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Consent>> {
        let tenant = &principal(ctx)?.tenant;
        let rows = services(ctx)?.consents(tenant, self.subject_id).await?;
        Ok(rows
            .into_iter()
            .map(Consent::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Every consent given and withdrawn, oldest first (empty once the person was erased).
    async fn history(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ConsentEvent>> {
        let tenant = &principal(ctx)?.tenant;
        let changes = services(ctx)?
            .consent_history(tenant, self.subject_id)
            .await?;
        Ok(changes.into_iter().map(ConsentEvent::from).collect())
    }
}

#[derive(InputObject)]
pub struct ConsentInput {
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
pub struct SubjectTrailPayload {
    export_id: ID,
    /// The records the trail covers: those named, those found by email, and those linked to
    /// them by a hire.
    record_ids: Vec<ID>,
    /// `GET` it once, within five minutes: a ZIP of `subject.json`, CSV files and
    /// `manifest.sha256`. The export is recorded, with the manifest's hash, when it is built.
    download_url: String,
    expires_at: DateTime<Utc>,
}

/// When a retention policy's period starts.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum RetentionTriggerKind {
    /// When the record was archived (while it stays archived).
    Archived,
    /// When a job applicant reached one of `stages` (while they stay there).
    StageReached,
    /// The day after an employee's `endDate`.
    EmploymentEnded,
    /// When the person's basis for `purpose` ended: withdrawn, or the day after it expired.
    ConsentEnded,
}

#[derive(InputObject)]
pub struct RetentionPolicyInput {
    datasheet: DatasheetKind,
    name: String,
    trigger: RetentionTriggerKind,
    /// For `STAGE_REACHED`.
    stages: Option<Vec<PipelineStage>>,
    /// For `CONSENT_ENDED`.
    purpose: Option<String>,
    /// Days from the trigger to the erasure (0 to 36525).
    period_days: i32,
    /// While the person's basis for this purpose holds, the record is kept; once it ends, the
    /// record is erased no earlier than that (`talent_pool` for applicants).
    unless_consent: Option<String>,
}

pub struct RetentionPolicyNode(PolicyRow);

#[Object(name = "RetentionPolicy")]
impl RetentionPolicyNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn datasheet(&self) -> DatasheetKind {
        self.0.datasheet().into()
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn trigger(&self) -> RetentionTriggerKind {
        match &self.0.trigger.0 {
            RetentionTrigger::Archived => RetentionTriggerKind::Archived,
            RetentionTrigger::StageReached { .. } => RetentionTriggerKind::StageReached,
            RetentionTrigger::EmploymentEnded => RetentionTriggerKind::EmploymentEnded,
            RetentionTrigger::ConsentEnded { .. } => RetentionTriggerKind::ConsentEnded,
        }
    }
    async fn stages(&self) -> Vec<PipelineStage> {
        match &self.0.trigger.0 {
            RetentionTrigger::StageReached { stages } => stages
                .iter()
                .filter_map(|s| stored_enum(Some(s.as_str())))
                .collect(),
            _ => Vec::new(),
        }
    }
    async fn purpose(&self) -> Option<&str> {
        match &self.0.trigger.0 {
            RetentionTrigger::ConsentEnded { purpose } => Some(purpose),
            _ => None,
        }
    }
    async fn period_days(&self) -> i32 {
        self.0.period_days
    }
    async fn unless_consent(&self) -> Option<&str> {
        self.0.unless_consent.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn removed_at(&self) -> Option<DateTime<Utc>> {
        self.0.removed_at
    }
    async fn last_run_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_run_at
    }
    /// Records the policy has erased, over all runs.
    async fn erased_total(&self) -> i64 {
        self.0.erased_total
    }
}

/// A record a policy will erase, and when.
#[derive(SimpleObject)]
pub struct ScheduledErasure {
    record_id: ID,
    datasheet: DatasheetKind,
    policy_id: ID,
    policy_name: String,
    /// When the policy erases it (in the past: at the next run).
    erases_at: DateTime<Utc>,
}

impl ScheduledErasure {
    fn new(policy: &PolicyRow, due: &DueRow) -> Self {
        Self {
            record_id: ID(due.record_id.to_string()),
            datasheet: policy.datasheet().into(),
            policy_id: ID(policy.id.to_string()),
            policy_name: policy.name.clone(),
            erases_at: due.due_at,
        }
    }
}

/// What one policy erased in a run.
#[derive(SimpleObject)]
pub struct PolicyRunResult {
    policy_id: ID,
    erased_ids: Vec<ID>,
    /// Records due that changed since they were scheduled (or failed): left for the next run.
    skipped: i32,
}

#[derive(SimpleObject)]
pub struct RetentionRunResult {
    /// False when another instance was running this organisation's retention at that moment.
    ran: bool,
    policies: Vec<PolicyRunResult>,
}

#[derive(InputObject)]
pub struct IncidentInput {
    detected_at: DateTime<Utc>,
    /// What happened, in the organisation's words. Kept in clear in the register: describe the
    /// incident, not the people.
    description: String,
    datasheets: Vec<DatasheetKind>,
    window_from: DateTime<Utc>,
    window_to: DateTime<Utc>,
    /// Users or API tokens through which data was reached (a stolen session, a leaked token):
    /// then only what they read, exported or changed in the window counts as affected.
    actor_ids: Option<Vec<ID>>,
}

/// Why a record counts as affected by an incident.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum AffectedReason {
    /// Held in the incident's datasheets during its window.
    Held,
    /// Read by one of the incident's actors during the window.
    Read,
    /// Exported by one of them.
    Exported,
    /// Changed by one of them.
    Changed,
}

#[derive(SimpleObject)]
pub struct AffectedSubject {
    record_id: ID,
    datasheet: DatasheetKind,
    /// Erased since: there is nobody left to notify through this record.
    erased: bool,
    reasons: Vec<AffectedReason>,
}

pub struct IncidentNode(IncidentRow);

#[Object(name = "Incident")]
impl IncidentNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn detected_at(&self) -> DateTime<Utc> {
        self.0.detected_at
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn datasheets(&self) -> Vec<DatasheetKind> {
        self.0
            .datasheets
            .iter()
            .filter_map(|d| Datasheet::parse(d))
            .map(DatasheetKind::from)
            .collect()
    }
    async fn window_from(&self) -> DateTime<Utc> {
        self.0.window_from
    }
    async fn window_to(&self) -> DateTime<Utc> {
        self.0.window_to
    }
    async fn actor_ids(&self) -> Vec<ID> {
        self.0.actors.iter().map(|a| ID(a.to_string())).collect()
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
    /// When the supervisory authority must be notified: 72 hours after detection.
    async fn notification_deadline(&self) -> DateTime<Utc> {
        custos_domain::Incident::deadline(self.0.detected_at)
    }
    /// The deadline passed without the authority being notified.
    async fn overdue(&self) -> bool {
        self.0.authority_notified_at.is_none()
            && Utc::now() > custos_domain::Incident::deadline(self.0.detected_at)
    }
    async fn authority_notified_at(&self) -> Option<DateTime<Utc>> {
        self.0.authority_notified_at
    }
    async fn authority_reference(&self) -> Option<&str> {
        self.0.authority_reference.as_deref()
    }
    async fn subjects_notified_at(&self) -> Option<DateTime<Utc>> {
        self.0.subjects_notified_at
    }
    /// The people whose data the incident reached, computed from its scope now.
    async fn affected_subjects(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<AffectedSubject>> {
        let principal = principal(ctx)?;
        let services = services(ctx)?;
        let affected = services
            .affected_subjects(&principal.tenant, &self.0)
            .await?;
        let ids: Vec<Uuid> = affected.iter().map(|a| a.record_id).collect();
        let rows = custos_projections::records::records_by_id(&principal.tenant.pool, &ids)
            .await
            .map_err(ApiError::from)?;
        Ok(affected
            .into_iter()
            .filter_map(|a| {
                let row = rows.iter().find(|r| r.id == a.record_id)?;
                Some(AffectedSubject {
                    record_id: ID(a.record_id.to_string()),
                    datasheet: row.datasheet().into(),
                    erased: row.erased_at.is_some(),
                    reasons: a
                        .reasons
                        .iter()
                        .filter_map(|r| match r.as_str() {
                            "held" => Some(AffectedReason::Held),
                            "read" => Some(AffectedReason::Read),
                            "exported" => Some(AffectedReason::Exported),
                            "changed" => Some(AffectedReason::Changed),
                            _ => None,
                        })
                        .collect(),
                })
            })
            .collect())
    }
}

fn ids(field: &str, raw: Option<Vec<ID>>) -> Result<Vec<Uuid>, ApiError> {
    raw.unwrap_or_default()
        .iter()
        .map(|id| parse_id(field, id))
        .collect()
}

#[derive(Default)]
pub struct PrivacyQuery;

#[Object]
impl PrivacyQuery {
    /// A person's consent register (the record's subject). Needs `read` on its datasheet.
    async fn consents(
        &self,
        ctx: &Context<'_>,
        subject_id: ID,
    ) -> async_graphql::Result<SubjectConsents> {
        let record = authorized_record(ctx, &subject_id, Permission::Read).await?;
        Ok(SubjectConsents {
            subject_id: record.id,
        })
    }

    /// The retention policies (administrators).
    async fn retention_policies(
        &self,
        ctx: &Context<'_>,
        include_removed: Option<bool>,
    ) -> async_graphql::Result<Vec<RetentionPolicyNode>> {
        let tenant = &principal(ctx)?.tenant;
        let rows =
            custos_projections::retention::policies(&tenant.pool, include_removed.unwrap_or(false))
                .await
                .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(RetentionPolicyNode).collect())
    }

    /// The dry run: what the policies in force will erase by `until` (default now), and when,
    /// earliest first (administrators).
    async fn retention_schedule(
        &self,
        ctx: &Context<'_>,
        until: Option<DateTime<Utc>>,
        #[graphql(desc = "At most this many (1 to 1000, default 100).")] first: Option<i32>,
    ) -> async_graphql::Result<Vec<ScheduledErasure>> {
        let first = first.unwrap_or(100);
        if !(1..=1000).contains(&first) {
            return Err(ApiError::validation("first", "`first` must be between 1 and 1000").into());
        }
        let tenant = &principal(ctx)?.tenant;
        let schedule = services(ctx)?
            .retention_schedule(
                tenant,
                moment("until", until.unwrap_or_else(Utc::now))?,
                i64::from(first),
            )
            .await?;
        Ok(schedule
            .iter()
            .map(|(policy, due)| ScheduledErasure::new(policy, due))
            .collect())
    }

    /// The breach register, newest detection first (administrators).
    async fn incidents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<IncidentNode>> {
        let tenant = &principal(ctx)?.tenant;
        let rows = custos_projections::incidents::incidents(&tenant.pool)
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(IncidentNode).collect())
    }

    async fn incident(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<IncidentNode> {
        let id = parse_id("id", &id)?;
        let tenant = &principal(ctx)?.tenant;
        Ok(IncidentNode(services(ctx)?.incident(tenant, id).await?))
    }
}

#[derive(Default)]
pub struct PrivacyMutation;

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
    ) -> async_graphql::Result<SubjectConsents> {
        let record = authorized_record(ctx, &subject_id, Permission::Update).await?;
        let consent = NewConsent {
            purpose: input.purpose,
            legal_basis: input.legal_basis.into(),
            evidence: input.evidence,
            expires_on: input.expires_on,
        };
        services(ctx)?
            .give_consent(
                principal(ctx)?,
                &record,
                consent,
                request(ctx)?.origin.request_id,
            )
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
    ) -> async_graphql::Result<SubjectConsents> {
        let record = authorized_record(ctx, &subject_id, Permission::Update).await?;
        services(ctx)?
            .withdraw_consent(
                principal(ctx)?,
                &record,
                &purpose,
                note,
                request(ctx)?.origin.request_id,
            )
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
    ) -> async_graphql::Result<SubjectTrailPayload> {
        let subject_ids = ids("subjectIds", subject_ids)?;
        let (ticket, record_ids) = services(ctx)?
            .start_subject_trail(
                principal(ctx)?,
                subject_ids,
                email,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(SubjectTrailPayload {
            export_id: ID(ticket.export_id.to_string()),
            record_ids: record_ids.iter().map(|id| ID(id.to_string())).collect(),
            download_url: format!("/exports/{}", ticket.token.expose_secret()),
            expires_at: ticket.expires_at,
        })
    }

    /// Defines a retention policy (administrators). It applies from the next run.
    async fn define_retention_policy(
        &self,
        ctx: &Context<'_>,
        input: RetentionPolicyInput,
    ) -> async_graphql::Result<RetentionPolicyNode> {
        let trigger = match input.trigger {
            RetentionTriggerKind::Archived => RetentionTrigger::Archived,
            RetentionTriggerKind::EmploymentEnded => RetentionTrigger::EmploymentEnded,
            RetentionTriggerKind::StageReached => RetentionTrigger::StageReached {
                stages: input
                    .stages
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|s| {
                        serde_json::to_value(s)
                            .ok()
                            .and_then(|v| v.as_str().and_then(|s| Stage::parse(s).ok()))
                    })
                    .collect(),
            },
            RetentionTriggerKind::ConsentEnded => RetentionTrigger::ConsentEnded {
                purpose: input.purpose.ok_or_else(|| {
                    ApiError::validation("purpose", "`CONSENT_ENDED` needs the purpose")
                })?,
            },
        };
        let period_days = u32::try_from(input.period_days)
            .map_err(|_| ApiError::validation("periodDays", "the period must not be negative"))?;
        let policy = NewPolicy {
            datasheet: input.datasheet.into(),
            name: input.name,
            trigger,
            period_days,
            unless_consent: input.unless_consent,
        };
        let row = services(ctx)?
            .define_retention_policy(principal(ctx)?, policy, request(ctx)?.origin.request_id)
            .await?;
        Ok(RetentionPolicyNode(row))
    }

    /// Removes a retention policy (administrators); its past runs stay in the history.
    async fn remove_retention_policy(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<RetentionPolicyNode> {
        let id = parse_id("id", &id)?;
        let row = services(ctx)?
            .remove_retention_policy(principal(ctx)?, id, request(ctx)?.origin.request_id)
            .await?;
        Ok(RetentionPolicyNode(row))
    }

    /// Runs retention now rather than at the scheduler's next run (administrators).
    async fn run_retention(&self, ctx: &Context<'_>) -> async_graphql::Result<RetentionRunResult> {
        let tenant = &principal(ctx)?.tenant;
        let run = services(ctx)?.run_retention(tenant).await?;
        Ok(RetentionRunResult {
            ran: run.ran,
            policies: run
                .policies
                .into_iter()
                .map(|p| PolicyRunResult {
                    policy_id: ID(p.policy_id.to_string()),
                    erased_ids: p.erased.iter().map(|id| ID(id.to_string())).collect(),
                    skipped: i32::try_from(p.skipped).unwrap_or(i32::MAX),
                })
                .collect(),
        })
    }

    /// Records a personal-data breach in the register (administrators).
    async fn record_incident(
        &self,
        ctx: &Context<'_>,
        input: IncidentInput,
    ) -> async_graphql::Result<IncidentNode> {
        let incident = NewIncident {
            detected_at: moment("detectedAt", input.detected_at)?,
            description: input.description,
            scope: IncidentScope {
                datasheets: input.datasheets.into_iter().map(Datasheet::from).collect(),
                window_from: moment("windowFrom", input.window_from)?,
                window_to: moment("windowTo", input.window_to)?,
                actors: ids("actorIds", input.actor_ids)?,
            },
        };
        let row = services(ctx)?
            .record_incident(principal(ctx)?, incident, request(ctx)?.origin.request_id)
            .await?;
        Ok(IncidentNode(row))
    }

    /// Records when the supervisory authority was notified of an incident (administrators).
    async fn record_authority_notified(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: DateTime<Utc>,
        reference: Option<String>,
    ) -> async_graphql::Result<IncidentNode> {
        let id = parse_id("id", &id)?;
        let command = IncidentCommand::NotifyAuthority {
            at: moment("at", at)?,
            reference,
            now: Utc::now(),
        };
        let row = services(ctx)?
            .record_notification(
                principal(ctx)?,
                id,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(IncidentNode(row))
    }

    /// Records when the affected people were notified (administrators).
    async fn record_subjects_notified(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: DateTime<Utc>,
    ) -> async_graphql::Result<IncidentNode> {
        let id = parse_id("id", &id)?;
        let command = IncidentCommand::NotifySubjects {
            at: moment("at", at)?,
            now: Utc::now(),
        };
        let row = services(ctx)?
            .record_notification(
                principal(ctx)?,
                id,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(IncidentNode(row))
    }

    /// Exports the people an incident affected, with their names and contact details, as
    /// CSV — recorded as an export before the link is handed out (administrators).
    async fn export_notification_list(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ExportPayload> {
        let id = parse_id("id", &id)?;
        let ticket = services(ctx)?
            .start_notification_list(principal(ctx)?, id, request(ctx)?.origin.request_id)
            .await?;
        Ok(export_payload(ticket)?)
    }
}
