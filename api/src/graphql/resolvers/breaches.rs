//! The breach register (GDPR Art. 33 and 34): incidents, whom they affected, the 72-hour
//! deadline, and the notification list to export.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, IncidentCommand, IncidentScope};
use custos_projections::incidents::IncidentRow;
use uuid::Uuid;

use crate::error::ApiError;
use crate::graphql::arguments::{moment, parse_id, parse_ids};
use crate::graphql::context::Cx;
use crate::graphql::types::enums::DatasheetKind;
use crate::graphql::types::exports::{export_payload, ExportPayload};
use crate::service::privacy::breaches::NewIncident;

#[derive(InputObject)]
pub(crate) struct IncidentInput {
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
pub(crate) enum AffectedReason {
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
pub(crate) struct AffectedSubject {
    record_id: ID,
    datasheet: DatasheetKind,
    /// Erased since: there is nobody left to notify through this record.
    erased: bool,
    reasons: Vec<AffectedReason>,
}

pub(crate) struct IncidentNode(IncidentRow);

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
    async fn affected_subjects(&self, ctx: &Context<'_>) -> Result<Vec<AffectedSubject>, ApiError> {
        let cx = Cx::new(ctx)?;
        let services = cx.services;
        let affected = services.affected_subjects(cx.tenant(), &self.0).await?;
        let ids: Vec<Uuid> = affected.iter().map(|a| a.record_id).collect();
        let rows = custos_projections::records::records_by_id(&cx.tenant().pool, &ids).await?;
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

#[derive(Default)]
pub(crate) struct BreachesQuery;

#[Object]
impl BreachesQuery {
    /// The breach register, newest detection first (administrators).
    async fn incidents(&self, ctx: &Context<'_>) -> Result<Vec<IncidentNode>, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        let rows = custos_projections::incidents::incidents(&tenant.pool).await?;
        Ok(rows.into_iter().map(IncidentNode).collect())
    }

    async fn incident(&self, ctx: &Context<'_>, id: ID) -> Result<IncidentNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let tenant = cx.tenant();
        Ok(IncidentNode(cx.services.incident(tenant, id).await?))
    }
}

/// What `notifySubjects` did.
#[derive(SimpleObject)]
pub(crate) struct SubjectNotices {
    incident: IncidentNode,
    /// Notices written now, one per affected person.
    queued: i32,
    /// Affected people who had been sent (or were being sent) this notice already.
    already_queued: i32,
}

#[derive(Default)]
pub(crate) struct BreachesMutation;

#[Object]
impl BreachesMutation {
    /// Records a personal-data breach in the register (administrators).
    async fn record_incident(
        &self,
        ctx: &Context<'_>,
        input: IncidentInput,
    ) -> Result<IncidentNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let incident = NewIncident {
            detected_at: moment("detectedAt", input.detected_at)?,
            description: input.description,
            scope: IncidentScope {
                datasheets: input.datasheets.into_iter().map(Datasheet::from).collect(),
                window_from: moment("windowFrom", input.window_from)?,
                window_to: moment("windowTo", input.window_to)?,
                actors: parse_ids("actorIds", &input.actor_ids.unwrap_or_default())?,
            },
        };
        let row = cx
            .services
            .record_incident(cx.caller, incident, cx.request_id)
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
    ) -> Result<IncidentNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let command = IncidentCommand::NotifyAuthority {
            at: moment("at", at)?,
            reference,
            now: Utc::now(),
        };
        let row = cx
            .services
            .record_notification(cx.caller, id, command, cx.request_id)
            .await?;
        Ok(IncidentNode(row))
    }

    /// Records when the affected people were notified (administrators).
    async fn record_subjects_notified(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: DateTime<Utc>,
    ) -> Result<IncidentNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let command = IncidentCommand::NotifySubjects {
            at: moment("at", at)?,
            now: Utc::now(),
        };
        let row = cx
            .services
            .record_notification(cx.caller, id, command, cx.request_id)
            .await?;
        Ok(IncidentNode(row))
    }

    /// Sends the incident's breach notice by email to every person it affected (GDPR Art.
    /// 34), at the email address their record holds when it goes out; erased people and
    /// records without an address are not written to. Asking again sends nothing twice (it
    /// reaches only people affected since). The incident records when the people were first
    /// notified; `notifications(incidentId:)` shows each delivery (administrators).
    async fn notify_subjects(&self, ctx: &Context<'_>, id: ID) -> Result<SubjectNotices, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let (row, notices) = cx
            .services
            .notify_subjects(cx.caller, id, cx.request_id)
            .await?;
        Ok(SubjectNotices {
            incident: IncidentNode(row),
            queued: i32::try_from(notices.queued).unwrap_or(i32::MAX),
            already_queued: i32::try_from(notices.already).unwrap_or(i32::MAX),
        })
    }

    /// Exports the people an incident affected, with their names and contact details, as
    /// CSV — recorded as an export before the link is handed out (administrators).
    async fn export_notification_list(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<ExportPayload, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let ticket = cx
            .services
            .start_notification_list(cx.caller, id, cx.request_id)
            .await?;
        export_payload(ticket)
    }
}
