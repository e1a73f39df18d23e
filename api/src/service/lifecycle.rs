//! The organisation's own life with the provider: as its administrators see and change it
//! (its standing, plan, dates and storage; choosing a plan, which ends a trial keeping every
//! record; cancelling with a month's notice and withdrawing the cancellation), and as the
//! schedule moves it along (the lifecycle round, the purge and its tombstone, the storage
//! measurement). The provider's side is the `custos tenant` commands; all change the one
//! `Subscription` stream in the catalog.

use chrono::{DateTime, Utc};
use custos_domain::subscription::storage_level;
use custos_domain::{FinalTreeHead, Plan, SubscriptionCommand, SubscriptionEvent};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::backups::plan::BackupPlan;
use crate::infra::integrity::tree::{self, newest_tree_head, Checkpointed};
use crate::infra::integrity::tree_head::witness_file;
use crate::infra::tenancy::lifecycle::{LifecycleChange, LifecycleError, SubscriptionRow};
use crate::infra::tenancy::tenant::TenantRow;
use crate::infra::tenancy::tombstones::Tombstone;
use crate::service::Services;

/// Removes `path`; one that is not there is removed already.
fn remove_if_there(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The errors of a lifecycle change, as clients see them.
fn refused(err: LifecycleError) -> ApiError {
    match err {
        LifecycleError::Refused(err) => err.into(),
        LifecycleError::Conflict => ApiError::Conflict(
            "the organisation's subscription changed meanwhile; try again".into(),
        ),
        LifecycleError::Other(err) => ApiError::internal(err),
    }
}

impl Services {
    /// The subscription of the principal's organisation.
    pub(crate) async fn organization_subscription(
        &self,
        principal: &Principal,
    ) -> Result<SubscriptionRow, ApiError> {
        self.tenancy
            .subscription_by_id(principal.tenant.id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    /// Every change in the life of the principal's organisation (administrators only).
    pub(crate) async fn organization_lifecycle(
        &self,
        principal: &Principal,
    ) -> Result<Vec<LifecycleChange>, ApiError> {
        if !principal.is_admin() {
            return Err(ApiError::Forbidden);
        }
        Ok(self.tenancy.lifecycle_changes(principal.tenant.id).await?)
    }

    /// An administrator chooses `plan`: a trial (or an ended one, before its deletion) becomes
    /// a subscription with every record kept; a subscription changes plan.
    pub(crate) async fn choose_plan(
        &self,
        principal: &Principal,
        plan: Plan,
    ) -> Result<SubscriptionRow, ApiError> {
        self.change_own_subscription(principal, SubscriptionCommand::ChoosePlan { plan })
            .await
    }

    /// An administrator cancels the subscription: it ends on the first day of the month after
    /// next (a month's notice from the first of the following month), then the migration
    /// window opens.
    pub(crate) async fn cancel_subscription(
        &self,
        principal: &Principal,
    ) -> Result<SubscriptionRow, ApiError> {
        let at = chrono::Utc::now();
        self.change_own_subscription(principal, SubscriptionCommand::Cancel { at })
            .await
    }

    /// An administrator withdraws a cancellation before it takes effect.
    pub(crate) async fn withdraw_cancellation(
        &self,
        principal: &Principal,
    ) -> Result<SubscriptionRow, ApiError> {
        self.change_own_subscription(principal, SubscriptionCommand::WithdrawCancellation)
            .await
    }

    async fn change_own_subscription(
        &self,
        principal: &Principal,
        command: SubscriptionCommand,
    ) -> Result<SubscriptionRow, ApiError> {
        let user = principal.user()?;
        let id = principal.tenant.id;
        let actor = format!("user:{}", user.id);
        self.tenancy
            .change_subscription(id, command, &actor, None)
            .await
            .map_err(refused)?;
        tracing::info!(tenant.id = %id, actor.id = %user.id, "organisation lifecycle changed by an administrator");
        self.organization_subscription(principal).await
    }

    /// Purges the organisation `id` as `actor` at `at`: once its ended trial's grace period or
    /// its migration window is over, or earlier with `early_reason` (recorded). Under the
    /// organisation's lock (no move or import meanwhile), and only when the purge is allowed:
    /// its database is fenced (no instance writes there any more), a last tree head signed over
    /// everything and named in the `Purged` event; then its database and login role are
    /// dropped (with its subject keys and sessions), its witness files and backup archives
    /// removed, and its catalog row replaced by a tombstone. A purge cut short is finished by
    /// running it again (the schedule does).
    pub(crate) async fn purge_organization(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        early_reason: Option<&str>,
        actor: &str,
    ) -> Result<Tombstone, ApiError> {
        // A `Purged` event written before a crash is in the row before anything is decided.
        self.tenancy.project_subscription(id).await?;
        let Some(row) = self.tenancy.row(id).await? else {
            return self.tombstone(id).await;
        };
        let Some(lock) = self.tenancy.organization_lock(id).await? else {
            return Err(ApiError::Conflict(
                "the organisation is being moved, imported or purged; try again later".into(),
            ));
        };
        let purged = async {
            if self.tenancy.is_moving(id).await? {
                return Err(ApiError::Conflict(
                    "the organisation is being moved; try again once the move is over".into(),
                ));
            }
            if row.status != "purged" {
                let (subscription, _) = self.tenancy.subscription(id).await?;
                subscription.purge_reason(at, early_reason)?;
                self.prepare_purge_notices(id, at)
                    .await
                    .map_err(ApiError::internal)?;
                self.tenancy.fence(&row, true).await?;
                let final_tree_head = match self.final_tree_head(&row).await {
                    Ok(head) => head,
                    Err(err) => {
                        self.tenancy.fence(&row, false).await?;
                        self.forget_purge_notices(id).await?;
                        return Err(err);
                    }
                };
                let command = SubscriptionCommand::Purge {
                    at,
                    early_reason: early_reason.map(str::to_owned),
                    final_tree_head,
                };
                if let Err(err) = self
                    .tenancy
                    .change_subscription(id, command, actor, early_reason)
                    .await
                {
                    self.tenancy.fence(&row, false).await?;
                    self.forget_purge_notices(id).await?;
                    return Err(refused(err));
                }
            }
            self.finish_purge(id).await
        }
        .await;
        lock.release().await;
        purged?;
        self.tombstone(id).await
    }

    /// What the schedule does at `now`: trials past their end expire, cancellations past
    /// their notice open their migration window, organisations past their grace period or
    /// window are purged (and purges cut short finished).
    pub async fn lifecycle_round(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let days = |d: std::time::Duration| {
            chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(30))
        };
        let policy = self.lifecycle;
        let advanced = self
            .tenancy
            .advance_subscriptions(now, days(policy.trial_grace), days(policy.migration_window))
            .await;
        let purged = self.purge_due(now).await;
        let noticed = self.tenancy.schedule_notices(now).await;
        if matches!(noticed, Ok(n) if n > 0) {
            self.outbox_written.notify_one();
        }
        advanced.and(purged).and(noticed).map(|_| ())
    }

    /// Purges every organisation whose grace period or migration window ended by `now`, and
    /// finishes purges cut short. How many were purged; one that fails does not stop the
    /// others (the errors are returned together).
    async fn purge_due(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let due = self.tenancy.due_for_purge(now).await?;
        let mut purged = 0;
        let mut failures = Vec::new();
        for id in due {
            match self
                .purge_organization(id, now, None, "custos (schedule)")
                .await
            {
                Ok(_) => {
                    purged += 1;
                    tracing::info!(tenant.id = %id, "organisation purged by the schedule");
                }
                // Changed meanwhile (a plan chosen, the trial extended), or busy (a move):
                // not due any more, or next time.
                Err(err @ (ApiError::Validation { .. } | ApiError::Conflict(_))) => {
                    tracing::info!(tenant.id = %id, reason = %err.message(), "organisation not purged");
                }
                Err(err) => {
                    err.report();
                    failures.push(format!("{id}: {}", err.message()));
                }
            }
        }
        if !failures.is_empty() {
            anyhow::bail!("purging {}", failures.join("; "));
        }
        Ok(purged)
    }

    /// The last signed tree head of a fenced organisation's history: a checkpoint is signed
    /// over a superuser connection first, so that it covers every event. An integrity alarm
    /// (the store does not agree with its last signed head) is logged and the last good head
    /// named. `None` when it never had one.
    async fn final_tree_head(&self, row: &TenantRow) -> Result<Option<FinalTreeHead>, ApiError> {
        let mut conn = self.tenancy.admin_connection(row).await?;
        let keys = row.audit_keys(self.tenancy.master_key())?;
        let file = witness_file(&self.data_dir, row.id);
        match tree::checkpoint(&mut conn, row.id, &keys, &file, false).await? {
            Checkpointed::Signed(_) | Checkpointed::Nothing => {}
            Checkpointed::Refused(alarm) => {
                tracing::error!(tenant.id = %row.id, alarm = %alarm.0, "security: integrity alarm at the purge — the last good tree head is recorded");
            }
        }
        let head = newest_tree_head(&mut conn, row.id).await?;
        let _ = sqlx::Connection::close(conn).await;
        let Some(head) = head else {
            return Ok(None);
        };
        let signed = serde_json::to_vec(&head).map_err(ApiError::internal)?;
        Ok(Some(FinalTreeHead {
            number: head.number,
            tree_size: head.tree_size,
            root: hex::encode(&head.root),
            sha256: hex::encode(Sha256::digest(&signed)),
        }))
    }

    /// The deletions after the `Purged` event: database and role, files, then the tombstone.
    /// Each step is idempotent.
    async fn finish_purge(&self, id: Uuid) -> Result<(), ApiError> {
        let Some(row) = self.tenancy.row(id).await? else {
            return Ok(());
        };
        self.tenancy.drop_purged(&row).await?;
        self.remove_files(id).await.map_err(ApiError::internal)?;
        let changes = self.tenancy.lifecycle_changes(id).await?;
        let (at, actor, early_reason, final_tree_head) = changes
            .iter()
            .rev()
            .find_map(|change| match &change.event {
                SubscriptionEvent::Purged {
                    early_reason,
                    final_tree_head,
                } => Some((
                    change.at,
                    change.actor.clone(),
                    early_reason.clone(),
                    final_tree_head.clone(),
                )),
                _ => None,
            })
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("{id} is purged without a Purged event"))
            })?;
        let ended_trial = changes
            .iter()
            .any(|c| matches!(c.event, SubscriptionEvent::TrialExpired { .. }))
            && !changes
                .iter()
                .any(|c| matches!(c.event, SubscriptionEvent::SubscriptionEnded { .. }));
        let reason = match early_reason {
            Some(reason) => format!("purged early: {reason}"),
            None if ended_trial => {
                "the trial ended without a plan and its grace period passed".to_owned()
            }
            None => "the subscription ended and its migration window closed".to_owned(),
        };
        self.tenancy
            .bury(&row, at, &actor, &reason, final_tree_head.as_ref())
            .await?;
        Ok(())
    }

    /// Removes the organisation's files: its witness files (the current one and any set
    /// aside by a restore) and its backup archives (under the backup directory's lock, so no
    /// round writes one meanwhile). Its erasure ledger stays: should a backup from before the
    /// purge ever be restored, the erasures since are replayed from it.
    async fn remove_files(&self, id: Uuid) -> anyhow::Result<()> {
        let witness = witness_file(&self.data_dir, id);
        if let (Some(dir), Some(name)) = (witness.parent(), witness.file_name()) {
            let prefix = name.to_string_lossy().into_owned();
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with(&prefix) {
                        remove_if_there(&entry.path())?;
                    }
                }
            }
        }
        if let Some(plan) = &self.backups {
            if let BackupPlan::Archives(archives) = plan.as_ref() {
                let _lock = archives.lock().await?;
                archives.remove_organization(id)?;
            }
        }
        Ok(())
    }

    async fn tombstone(&self, id: Uuid) -> Result<Tombstone, ApiError> {
        self.tenancy.tombstone(id).await?.ok_or(ApiError::NotFound)
    }

    /// Measures every organisation's storage now and records, in its subscription stream,
    /// each level crossed: 80 % of its plan's limit, the limit (a trial then takes no new
    /// data: `QUOTA_EXCEEDED`), each overage step begun beyond it (billable), and falling back
    /// below. How many organisations crossed a level.
    pub async fn measure_storage(&self) -> anyhow::Result<usize> {
        let policy = self.storage;
        let measured = self
            .tenancy
            .measure_storage(|plan| policy.limit(plan))
            .await?;
        let mut crossed = 0;
        for m in measured {
            let level = storage_level(m.used_bytes, m.limit_bytes, policy.step);
            if level == m.recorded_level {
                continue;
            }
            let command = SubscriptionCommand::RecordStorage {
                used_bytes: m.used_bytes,
                limits: policy.limits(),
            };
            match self
                .tenancy
                .change_subscription(m.id, command, "custos (storage measurement)", None)
                .await
            {
                Ok(()) => {
                    crossed += 1;
                    tracing::info!(tenant.id = %m.id, level, "organisation storage crossed a level");
                }
                // Purged or changed meanwhile: measured again next time.
                Err(LifecycleError::Refused(_) | LifecycleError::Conflict) => {}
                Err(LifecycleError::Other(err)) => return Err(err),
            }
        }
        Ok(crossed)
    }
}
