//! Signed checkpoints and verification for the service: made on demand (`createCheckpoint`)
//! and by the schedule in `jobs`, listed, and `verifyIntegrity` for auditors.

use crate::error::ApiError;
use crate::infra::integrity::checkpoint::{
    checkpoint_file, create_checkpoint, latest_checkpoints, read_checkpoint_file, Checkpoint,
};
use crate::infra::integrity::verify::{verify, Report};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

impl Services {
    /// Makes a checkpoint of the tenant's event store now; `None` when nothing was written
    /// since the last one (or another instance is making one at this moment).
    pub async fn create_checkpoint(&self, tenant: &Tenant) -> Result<Option<Checkpoint>, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        let file = checkpoint_file(&self.data_dir, tenant.id);
        let checkpoint = create_checkpoint(&mut conn, tenant.id, &tenant.checkpoint_key, &file)
            .await
            .map_err(ApiError::internal)?;
        if let Some(checkpoint) = &checkpoint {
            tracing::info!(tenant.id = %tenant.id, checkpoint = checkpoint.number, events = checkpoint.events, "checkpoint signed");
        }
        Ok(checkpoint)
    }

    /// The tenant's newest `limit` checkpoints, oldest first.
    pub(crate) async fn checkpoints(
        &self,
        tenant: &Tenant,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        Ok(latest_checkpoints(&mut conn, tenant.id, limit).await?)
    }

    /// Recomputes every chain of the tenant and checks its checkpoints against this instance's
    /// checkpoint file and the tenant's signing key.
    pub(crate) async fn verify_integrity(&self, tenant: &Tenant) -> Result<Report, ApiError> {
        let file = read_checkpoint_file(&checkpoint_file(&self.data_dir, tenant.id))
            .map_err(ApiError::internal)?;
        let mut conn = tenant.pool.acquire().await?;
        let report = verify(
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
