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

/// Takes, verifies and prunes a base backup every `interval` — the first at once when the
/// newest is older than that or from another timeline (the cluster was restored). A backup
/// that does not verify is verified again after a quarter of the interval (an hour at most);
/// no new one is taken for it.
pub(crate) async fn backups(backups: Arc<Backups>, interval: Duration) {
    let retry_after = (interval / 4).min(Duration::from_secs(3600));
    let timeline = backups.current_timeline();
    let newest = backups.store.list().ok().and_then(|list| {
        list.into_iter().find(|b| {
            timeline
                .as_deref()
                .is_none_or(|t| b.start_wal.starts_with(t))
        })
    });
    let age = newest
        .and_then(|b| (chrono::Utc::now() - b.finished_at).to_std().ok())
        .unwrap_or(interval);
    tokio::time::sleep(interval.saturating_sub(age)).await;
    let mut failed: Option<String> = None;
    loop {
        let round = match &failed {
            Some(id) => backups.retry(id).await,
            None => backups.run().await,
        };
        let wait = match round {
            Ok(info) if info.verified_at().is_some() => {
                failed = None;
                interval
            }
            Ok(info) => {
                tracing::error!(backup = %info.id, "a backup did not verify; it is verified again later");
                failed = Some(info.id);
                retry_after
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "the scheduled backup failed");
                failed = None;
                retry_after
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
