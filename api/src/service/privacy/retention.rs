//! Retention: administrators define per-datasheet policies; a scheduler inside the service (and
//! `runRetention`, and `custos retention run`) erases the records past their period, each
//! erasure attributed to its policy, and records every run on the policy's stream. Runs are
//! safe on any number of instances: a tenant-wide advisory lock lets one run at a time, and
//! each erasure names the record's version, so a record that changed since it was scheduled is
//! left for the next run.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use custos_domain::{
    Actor, Consents, Datasheet, ErasureGround, EventMetadata, Record, RecordCommand,
    RetentionCommand, RetentionPolicy, RetentionTrigger,
};
use custos_projections::retention::{self, DueRow, PolicyRow};
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::tenancy::tenant::{Tenant, TenantRow};
use crate::service::Services;

/// Advisory lock key (transaction-scoped, in the tenant database) held during a retention run.
const RETENTION_LOCK: i64 = 0x6375_7374_6f73_0005;
/// Records erased per policy per batch.
const BATCH: i64 = 500;

/// A policy an administrator defines.
pub(crate) struct NewPolicy {
    pub(crate) datasheet: Datasheet,
    pub(crate) name: String,
    pub(crate) trigger: RetentionTrigger,
    pub(crate) period_days: u32,
    pub(crate) unless_consent: Option<String>,
}

/// What one policy erased in a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PolicyRun {
    pub(crate) policy_id: Uuid,
    pub(crate) erased: Vec<Uuid>,
    /// Records due but changed since they were scheduled, or failing; tried again next run.
    pub(crate) skipped: usize,
}

/// A run's outcome; `ran` is false when another instance was running the tenant's retention.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct RetentionRun {
    pub(crate) ran: bool,
    pub(crate) policies: Vec<PolicyRun>,
}

impl Services {
    pub(crate) async fn define_retention_policy(
        &self,
        principal: &Principal,
        policy: NewPolicy,
        request_id: Uuid,
    ) -> Result<PolicyRow, ApiError> {
        let tenant = &principal.tenant;
        let id = Uuid::now_v7();
        let command = RetentionCommand::Define {
            datasheet: policy.datasheet,
            name: policy.name,
            trigger: policy.trigger,
            period_days: policy.period_days,
            unless_consent: policy.unless_consent,
        };
        self.command(
            tenant,
            &tenant.retention,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        self.retention_policy(tenant, id).await
    }

    pub(crate) async fn remove_retention_policy(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<PolicyRow, ApiError> {
        let tenant = &principal.tenant;
        self.command(
            tenant,
            &tenant.retention,
            id,
            RetentionCommand::Remove,
            self.actor(principal, request_id),
        )
        .await?;
        self.retention_policy(tenant, id).await
    }

    pub(crate) async fn retention_policy(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<PolicyRow, ApiError> {
        retention::policy(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    /// What the policies in force will erase by `until`, and when: the dry run.
    pub(crate) async fn retention_schedule(
        &self,
        tenant: &Tenant,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(PolicyRow, DueRow)>, ApiError> {
        let mut schedule = Vec::new();
        for policy in retention::policies(&tenant.pool, false).await? {
            let due = retention::due(&tenant.pool, &policy, until, None, &[], limit).await?;
            schedule.extend(due.into_iter().map(|row| (policy.clone(), row)));
        }
        schedule.sort_by_key(|(_, row)| (row.due_at, row.record_id));
        schedule.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(schedule)
    }

    /// Erases every record past its period under the policies in force, unless another
    /// instance is running the tenant's retention already.
    pub(crate) async fn run_retention(&self, tenant: &Tenant) -> Result<RetentionRun, ApiError> {
        let mut lock = tenant.pool.begin().await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RETENTION_LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !taken {
            return Ok(RetentionRun::default());
        }
        // The schedule is read from the read models: bring them up to every change so far.
        for aggregate in [Record::TYPE, Consents::TYPE, RetentionPolicy::TYPE] {
            if let Some(latest) = tenant.log.latest(aggregate).await? {
                tenant
                    .projectors
                    .wait_for(aggregate, latest, self.projection_wait)
                    .await
                    .map_err(|_| ApiError::Unavailable)?;
            }
        }
        let now = Utc::now();
        let mut run = RetentionRun {
            ran: true,
            policies: Vec::new(),
        };
        for policy in retention::policies(&tenant.pool, false).await? {
            run.policies
                .push(self.apply_policy(tenant, &policy, now).await?);
        }
        lock.rollback().await?;
        Ok(run)
    }

    async fn apply_policy(
        &self,
        tenant: &Tenant,
        policy: &PolicyRow,
        now: DateTime<Utc>,
    ) -> Result<PolicyRun, ApiError> {
        let request_id = Uuid::now_v7();
        let metadata = EventMetadata::new(Actor::RetentionPolicy(policy.id), request_id);
        let ground = match policy.trigger.0 {
            RetentionTrigger::ConsentEnded { .. } => ErasureGround::ConsentWithdrawn,
            _ => ErasureGround::NoLongerNecessary,
        };
        let mut erased = Vec::new();
        // Due but changed since they were scheduled, or failing: left for the next run.
        let mut failed: Vec<Uuid> = Vec::new();
        loop {
            let due = retention::due(&tenant.pool, policy, now, None, &failed, BATCH).await?;
            if due.is_empty() {
                break;
            }
            for row in due {
                let command = RecordCommand::Erase {
                    expected_version: u64::try_from(row.version).unwrap_or_default(),
                    ground,
                    note: Some(format!("retention policy \"{}\"", policy.name)),
                };
                let metadata = EventMetadata {
                    command_id: Uuid::now_v7(),
                    ..metadata
                };
                match self
                    .erase_subject(tenant, row.record_id, command, metadata, false)
                    .await
                {
                    Ok(()) => erased.push(row.record_id),
                    Err(err) => {
                        tracing::warn!(
                            tenant.id = %tenant.id,
                            policy.id = %policy.id,
                            record.id = %row.record_id,
                            code = err.code().as_str(),
                            "retention left a record for the next run"
                        );
                        err.report();
                        failed.push(row.record_id);
                    }
                }
            }
        }
        if !erased.is_empty() {
            self.command(
                tenant,
                &tenant.retention,
                policy.id,
                RetentionCommand::RecordRun {
                    erased: erased.clone(),
                },
                metadata,
            )
            .await?;
            tracing::info!(tenant.id = %tenant.id, policy.id = %policy.id, erased = erased.len(), "retention erased records");
        }
        Ok(PolicyRun {
            policy_id: policy.id,
            erased,
            skipped: failed.len(),
        })
    }
}

/// Runs the retention of every tenant (or of the one with `slug`), one after the other. A
/// tenant that cannot be opened or run is logged and left for the next run.
pub(crate) async fn run_tenants(
    services: &Services,
    slug: Option<&str>,
) -> anyhow::Result<Vec<(TenantRow, RetentionRun)>> {
    let mut runs = Vec::new();
    let tenants = services.tenancy.list().await?;
    if let Some(slug) = slug {
        if !tenants.iter().any(|t| t.slug == slug) {
            anyhow::bail!("no organisation has the slug `{slug}`");
        }
    }
    for row in tenants {
        if slug.is_some_and(|slug| slug != row.slug) {
            continue;
        }
        let tenant = match services.tenancy.get(row.id).await {
            Ok(Some(tenant)) => tenant,
            Ok(None) => continue,
            Err(err) => {
                tracing::error!(tenant.id = %row.id, error = %crate::error::redacted(&err), "retention could not open a tenant");
                continue;
            }
        };
        match services.run_retention(&tenant).await {
            Ok(run) => runs.push((row, run)),
            // Cut short by the service stopping: not a failure, and the next run goes on.
            Err(_) if services.closing.is_cancelled() => {
                tracing::info!(tenant.id = %row.id, "a retention run stopped with the service");
                break;
            }
            Err(err) => {
                tracing::error!(tenant.id = %row.id, code = err.code().as_str(), "a retention run failed");
                err.report();
            }
        }
    }
    Ok(runs)
}
