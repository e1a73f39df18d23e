//! The breach register (GDPR Art. 33 and 34): administrators record an incident with its scope;
//! Custos computes whom it affected, tracks the 72-hour deadline for telling the supervisory
//! authority; the list of people to notify is an export (`exports::notification_list`).

use chrono::{DateTime, Utc};
use custos_domain::{IncidentCommand, IncidentScope};
use custos_projections::incidents::{self, AffectedRow, IncidentRow};
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// An incident as an administrator records it.
pub(crate) struct NewIncident {
    pub(crate) detected_at: DateTime<Utc>,
    pub(crate) description: String,
    pub(crate) scope: IncidentScope,
}

impl Services {
    pub(crate) async fn record_incident(
        &self,
        principal: &Principal,
        incident: NewIncident,
        request_id: Uuid,
    ) -> Result<IncidentRow, ApiError> {
        let tenant = &principal.tenant;
        let id = Uuid::now_v7();
        let command = IncidentCommand::Record {
            detected_at: incident.detected_at,
            description: incident.description,
            scope: incident.scope,
            now: Utc::now(),
        };
        self.command(
            tenant,
            &tenant.incidents,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        tracing::warn!(tenant.id = %tenant.id, incident.id = %id, "a personal-data breach was recorded");
        self.incident(tenant, id).await
    }

    /// Records that the authority (`authority`) or the affected people were notified.
    pub(crate) async fn record_notification(
        &self,
        principal: &Principal,
        id: Uuid,
        command: IncidentCommand,
        request_id: Uuid,
    ) -> Result<IncidentRow, ApiError> {
        let tenant = &principal.tenant;
        self.incident(tenant, id).await?;
        self.command(
            tenant,
            &tenant.incidents,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        self.incident(tenant, id).await
    }

    pub(crate) async fn incident(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<IncidentRow, ApiError> {
        incidents::incident(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    pub(crate) async fn affected_subjects(
        &self,
        tenant: &Tenant,
        incident: &IncidentRow,
    ) -> Result<Vec<AffectedRow>, ApiError> {
        Ok(incidents::affected(&tenant.pool, incident).await?)
    }
}
