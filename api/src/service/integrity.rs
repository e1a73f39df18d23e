//! Signed checkpoints and verification for the service: on a schedule for every open tenant,
//! on demand (`createCheckpoint`), and `verifyIntegrity` for auditors.

use std::sync::Arc;
use std::time::Duration;

use super::Services;
use crate::error::ApiError;
use crate::integrity::{self, Checkpoint, Report};
use crate::tenancy::Tenant;

impl Services {
    /// Makes a checkpoint of the tenant's event store now; `None` when nothing was written
    /// since the last one (or another instance is making one at this moment).
    pub async fn create_checkpoint(&self, tenant: &Tenant) -> Result<Option<Checkpoint>, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        let file = integrity::checkpoint_file(&self.data_dir, tenant.id);
        let checkpoint =
            integrity::create_checkpoint(&mut conn, tenant.id, &tenant.checkpoint_key, &file)
                .await
                .map_err(ApiError::internal)?;
        if let Some(checkpoint) = &checkpoint {
            tracing::info!(tenant.id = %tenant.id, checkpoint = checkpoint.number, events = checkpoint.events, "checkpoint signed");
        }
        Ok(checkpoint)
    }

    /// The tenant's newest `limit` checkpoints, oldest first.
    pub async fn checkpoints(
        &self,
        tenant: &Tenant,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        Ok(integrity::latest_checkpoints(&mut conn, tenant.id, limit).await?)
    }

    /// Recomputes every chain of the tenant and checks its checkpoints against this instance's
    /// checkpoint file and the tenant's signing key.
    pub async fn verify_integrity(&self, tenant: &Tenant) -> Result<Report, ApiError> {
        let file =
            integrity::read_checkpoint_file(&integrity::checkpoint_file(&self.data_dir, tenant.id))
                .map_err(ApiError::internal)?;
        let mut conn = tenant.pool.acquire().await?;
        let report = integrity::verify(
            &mut conn,
            tenant.id,
            Some(tenant.checkpoint_key.verifying_key()),
            Some(&file),
        )
        .await
        .map_err(ApiError::internal)?;
        if !report.ok() {
            tracing::error!(tenant.id = %tenant.id, broken = report.broken.len(), checkpoint_problems = report.checkpoint_problems.len(), "security: the event store does not verify");
        }
        Ok(report)
    }
}

/// Checkpoints every open tenant every `interval`. A tenant context stays open for a while
/// after its last use, longer than the default interval, so its last writes are checkpointed
/// before it closes.
pub async fn schedule(services: Arc<Services>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for tenant in services.tenancy.open_tenants().await {
            if let Err(err) = services.create_checkpoint(&tenant).await {
                tracing::error!(tenant.id = %tenant.id, code = err.code().as_str(), "a checkpoint failed");
                err.report();
            }
        }
    }
}
