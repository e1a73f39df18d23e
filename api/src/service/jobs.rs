//! What `serve` runs on a schedule: every organisation's retention policies, signed
//! checkpoints of every open organisation, verified backups, the read models' lag for the
//! metrics, expired idempotency keys, and closing tenant contexts nobody uses.

use std::sync::Arc;
use std::time::Duration;

use crate::infra::backups::archives::ArchiveBackups;
use crate::infra::backups::plan::BackupPlan;
use crate::infra::backups::verify::Backups;
use crate::infra::projector::standings;
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
        let mut covered = true;
        for tenant in services.tenancy.open_tenants().await {
            if let Err(err) = services.create_checkpoint(&tenant).await {
                tracing::error!(tenant.id = %tenant.id, code = err.code().as_str(), "a checkpoint failed");
                err.report();
                services.metrics.checkpoint_failures.inc();
                covered = false;
            }
        }
        if covered {
            services
                .metrics
                .checkpoint_round
                .set(chrono::Utc::now().timestamp() as f64);
        }
    }
}

/// Every `interval`: trials past their end expire, cancellations past their notice open their
/// migration window, and organisations past their grace period or window are purged.
pub(crate) async fn lifecycle(services: Arc<Services>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = services.lifecycle_round(chrono::Utc::now()).await {
            tracing::error!(error = %format!("{err:#}"), "the organisation lifecycle schedule failed");
        }
    }
}

/// Every `interval`: every organisation's storage measured, and each crossing recorded.
pub(crate) async fn storage(services: Arc<Services>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = services.measure_storage().await {
            tracing::error!(error = %format!("{err:#}"), "the storage measurement failed");
        }
    }
}

/// Delivers the outbox: every `interval`, and at once when this process wrote to it.
pub(crate) async fn notifications(services: Arc<Services>, interval: Duration) {
    loop {
        if let Err(err) = services.deliver_notifications().await {
            tracing::error!(error = %format!("{err:#}"), "notification delivery failed");
        }
        let _ = tokio::time::timeout(interval, services.outbox_written.notified()).await;
    }
}

/// Delivers webhooks: every `interval`, and at once after this process commits a change one
/// may be told about.
pub(crate) async fn webhooks(services: Arc<Services>, interval: Duration) {
    loop {
        if let Err(err) = services.deliver_webhooks().await {
            tracing::error!(error = %crate::error::redacted(&err), "webhook delivery failed");
        }
        // A commit during the round left a permit: the next round starts at once.
        let _ = tokio::time::timeout(interval, services.tenancy.changes().notified()).await;
    }
}

/// Backs up every `interval`, as the plan says: base backups of the private cluster, or
/// archives of every organisation.
pub(crate) async fn backups(services: Arc<Services>, plan: Arc<BackupPlan>, interval: Duration) {
    match &*plan {
        BackupPlan::Cluster(backups) => base_backups(&services, backups, interval).await,
        BackupPlan::Archives(archives) => archive_backups(&services, archives, interval).await,
    }
}

/// How long a failed round waits before it is tried again.
fn retry_after(interval: Duration) -> Duration {
    (interval / 4).min(Duration::from_secs(3600))
}

/// Sleeps until `interval` after `newest` (at once when there is none or it is older).
async fn wait_since(newest: Option<chrono::DateTime<chrono::Utc>>, interval: Duration) {
    let age = newest
        .and_then(|at| (chrono::Utc::now() - at).to_std().ok())
        .unwrap_or(interval);
    tokio::time::sleep(interval.saturating_sub(age)).await;
}

/// Takes, verifies and prunes a base backup every `interval` — the first at once when the
/// newest is older than that or from another timeline (the cluster was restored). A backup
/// that does not verify is verified again after a quarter of the interval (an hour at most);
/// no new one is taken for it.
async fn base_backups(services: &Services, backups: &Backups, interval: Duration) {
    let timeline = backups.current_timeline();
    let newest = backups.store.list().ok().and_then(|list| {
        list.into_iter().find(|b| {
            timeline
                .as_deref()
                .is_none_or(|t| b.start_wal.starts_with(t))
        })
    });
    wait_since(newest.map(|b| b.finished_at), interval).await;
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
                services.metrics.backup_failures.inc();
                failed = Some(info.id);
                retry_after(interval)
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "the scheduled backup failed");
                services.metrics.backup_failures.inc();
                failed = None;
                retry_after(interval)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Archives every organisation every `interval` — the first round at once when the newest
/// archive is older than that. The organisations whose archive failed or did not verify get
/// a new one after a quarter of the interval (an hour at most).
async fn archive_backups(services: &Services, archives: &ArchiveBackups, interval: Duration) {
    let newest = archives
        .list(None)
        .ok()
        .and_then(|list| list.first().map(|a| a.taken_at));
    wait_since(newest, interval).await;
    let mut failed: Vec<String> = Vec::new();
    loop {
        let mut again = false;
        let tenancy = &services.tenancy;
        let rounds = if failed.is_empty() {
            archives.run(tenancy, None).await
        } else {
            let mut rounds = Vec::new();
            for slug in std::mem::take(&mut failed) {
                // Gone or no longer in service: nothing to back up.
                let Ok(row) = tenancy.in_service(&slug).await else {
                    continue;
                };
                match archives.run(tenancy, Some(&row)).await {
                    Ok(round) => rounds.extend(round),
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), "the scheduled backup failed");
                        again = true;
                        failed.push(slug);
                    }
                }
            }
            Ok(rounds)
        };
        match rounds {
            Ok(rounds) => failed.extend(
                rounds
                    .into_iter()
                    .filter(|r| !r.result.as_ref().is_ok_and(|i| i.verified_at().is_some()))
                    .map(|r| r.slug),
            ),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "the scheduled backup failed");
                again = true;
            }
        }
        let wait = if failed.is_empty() && !again {
            interval
        } else {
            services.metrics.backup_failures.inc();
            retry_after(interval)
        };
        tokio::time::sleep(wait).await;
    }
}

/// Every `interval`: how far behind each read model is, in the open organisation where it is
/// most behind, into the metrics. An organisation whose server is down, or that does not answer
/// within `interval`, is left out of the round.
pub(crate) async fn projection_lag(services: Arc<Services>, interval: Duration) {
    let projections = custos_projections::all();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !services.database.is_up() {
            continue;
        }
        let now = chrono::Utc::now();
        let mut worst: std::collections::HashMap<&'static str, (i64, f64)> = projections
            .iter()
            .map(|projection| (projection.name(), (0, 0.0)))
            .collect();
        for tenant in services.tenancy.open_tenants().await {
            // Its region's own server is down: asking would only wait for the pool.
            if !tenant.server.is_up() {
                continue;
            }
            let standings = tokio::time::timeout(interval, async {
                let mut conn = tenant.pool.acquire().await?;
                standings(&mut conn, &projections).await
            })
            .await;
            let Ok(Ok(standings)) = standings else {
                continue;
            };
            for standing in standings {
                let age = standing.oldest_behind.map_or(0.0, |at| {
                    (now - at).num_milliseconds().max(0) as f64 / 1000.0
                });
                let entry = worst.entry(standing.name).or_default();
                *entry = (entry.0.max(standing.behind), entry.1.max(age));
            }
        }
        let metrics = &services.metrics;
        for (name, (events, seconds)) in worst {
            metrics
                .projection_lag_events
                .with_label_values(&[name])
                .set(events);
            metrics
                .projection_lag_seconds
                .with_label_values(&[name])
                .set(seconds);
        }
    }
}

/// Every `interval`: every open organisation's idempotency keys older than a day deleted, with
/// their stored answers.
pub(crate) async fn idempotency_keys(services: Arc<Services>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for tenant in services.tenancy.open_tenants().await {
            if let Err(err) = crate::infra::stores::idempotency::sweep(&tenant.pool).await {
                tracing::warn!(tenant.id = %tenant.id, error = %crate::error::redacted(&err.into()), "expired idempotency keys could not be deleted");
            }
        }
    }
}

/// Forgets, every `every`, the cached aggregates of open tenants that are no longer fresh:
/// a tenant whose commands stopped caches nothing new, so nothing else would let them go.
pub(crate) async fn forget_stale_aggregates(services: Arc<Services>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let forgotten: usize = services
            .tenancy
            .open_tenants()
            .await
            .iter()
            .map(|tenant| tenant.forget_stale_aggregates())
            .sum();
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot stale cached aggregates");
        }
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
