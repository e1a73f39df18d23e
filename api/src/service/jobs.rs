//! What `serve` runs on a schedule: every organisation's retention policies, signed
//! checkpoints of every open organisation, verified backups, and closing tenant contexts
//! nobody uses.

use std::sync::Arc;
use std::time::Duration;

use crate::infra::backups::verify::Backups;
use crate::service::privacy::retention::run_tenants;
use crate::service::Services;

/// Runs every tenant's retention every `interval`, for as long as the service runs.
pub(crate) async fn retention(services: Arc<Services>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = run_tenants(&services, None).await {
            tracing::error!(error = %crate::error::redacted(&err), "retention could not list tenants");
        }
    }
}

/// Checkpoints every open tenant every `interval`. A tenant context stays open for a while
/// after its last use, longer than the default interval, so its last writes are checkpointed
/// before it closes.
pub(crate) async fn checkpoints(services: Arc<Services>, interval: Duration) {
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

/// Takes, verifies and prunes a base backup every `interval` (the first at once when the
/// newest is older than that); a failed round is tried again after a quarter of the interval
/// (an hour at most).
pub(crate) async fn backups(backups: Arc<Backups>, interval: Duration) {
    let newest = backups
        .store
        .list()
        .ok()
        .and_then(|list| list.first().map(|b| b.finished_at));
    let age = newest
        .and_then(|at| (chrono::Utc::now() - at).to_std().ok())
        .unwrap_or(interval);
    tokio::time::sleep(interval.saturating_sub(age)).await;
    loop {
        let wait = match backups.run().await {
            Ok(info) if info.verified_at().is_some() => interval,
            Ok(info) => {
                tracing::error!(backup = %info.id, "the scheduled backup did not verify");
                (interval / 4).min(Duration::from_secs(3600))
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "the scheduled backup failed");
                (interval / 4).min(Duration::from_secs(3600))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Closes idle tenant contexts, checking a few times per `idle` period, and forgets login
/// attempt counts that no longer limit anyone.
pub(crate) async fn close_idle_tenants(services: Arc<Services>, idle: Duration) {
    let mut ticks = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        let closed = services.tenancy.close_idle(idle).await;
        services.login_limiter.retain_recent();
        if closed > 0 {
            tracing::debug!(closed, "closed idle tenant contexts");
        }
    }
}
