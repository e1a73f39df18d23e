//! Each organisation's life with the provider as events (`custos_domain::Subscription`), one
//! stream per organisation in the catalog (postgres-es, tables `subscription_events` and
//! `subscription_snapshots`), and the catalog row as its projection: after each change the
//! row's status, plan and dates are written from the aggregate, with the sequence they reflect,
//! so a start repairs a row a crash left behind. Organisations older than the stream are
//! adopted: their stream is opened from what the row says.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, CqrsFramework, EventStore};
use custos_domain::{
    Plan, Subscription, SubscriptionCommand, SubscriptionError, SubscriptionEvent,
    SubscriptionStatus,
};
use postgres_es::PostgresEventRepository;
use sqlx::types::Json;
use uuid::Uuid;

use super::catalog::Tenancy;
use crate::infra::notifications::outbox::{self, NewNotification, ADMINISTRATORS};

type Store = PersistedEventStore<PostgresEventRepository, Subscription>;

/// Why a lifecycle change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LifecycleError {
    #[error(transparent)]
    Refused(#[from] SubscriptionError),
    #[error("the organisation changed meanwhile; try again")]
    Conflict,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<AggregateError<SubscriptionError>> for LifecycleError {
    fn from(err: AggregateError<SubscriptionError>) -> Self {
        match err {
            AggregateError::UserError(err) => Self::Refused(err),
            AggregateError::AggregateConflict => Self::Conflict,
            other => Self::Other(anyhow::anyhow!("the subscription store: {other}")),
        }
    }
}

/// An organisation's subscription as the catalog row shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SubscriptionRow {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub region: String,
    pub status: String,
    pub plan: String,
    pub trial_ends_at: Option<DateTime<Utc>>,
    pub cancellation_effective_at: Option<DateTime<Utc>>,
    pub kept_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub storage_used_bytes: Option<i64>,
    pub storage_measured_at: Option<DateTime<Utc>>,
}

/// One change in an organisation's life: when, what, the status it left, who and why.
#[derive(Debug, Clone)]
pub(crate) struct LifecycleChange {
    pub at: DateTime<Utc>,
    pub event: SubscriptionEvent,
    pub status: SubscriptionStatus,
    /// `operator`, `user:<id>`, `sign-up`, `import` or `custos (…)`.
    pub actor: String,
    pub reason: Option<String>,
}

/// A subscription event as stored: payload, metadata (actor, reason), time.
type StoredChange = (
    Json<SubscriptionEvent>,
    Json<HashMap<String, String>>,
    DateTime<Utc>,
);

/// A catalog row as the start's repair reads it: id, status, plan, trial end, the sequence
/// it reflects, and its stream's last sequence.
type RepairRow = (
    Uuid,
    String,
    String,
    Option<DateTime<Utc>>,
    i64,
    Option<i64>,
);

/// An organisation a schedule's notice may be due for: id, status, trial end, kept until.
type NoticeDue = (Uuid, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

const SUBSCRIPTION_COLUMNS: &str = "id, slug, name, region, status, plan, trial_ends_at, \
     cancellation_effective_at, kept_until, created_at, storage_used_bytes, storage_measured_at";

impl Tenancy {
    fn subscription_store(&self) -> Store {
        let repository = PostgresEventRepository::new(self.catalog().clone())
            .with_tables("subscription_events", "subscription_snapshots");
        PersistedEventStore::new_event_store(repository)
    }

    /// Runs `command` on the subscription of `id` as `actor` — `operator` (a `custos`
    /// command), `user:<id>`, `sign-up`, `import`, `custos (…)` (the service itself) — with
    /// the provider's `reason` when it gives one, then writes the catalog row from the result.
    pub(crate) async fn change_subscription(
        &self,
        id: Uuid,
        command: SubscriptionCommand,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), LifecycleError> {
        let cqrs = CqrsFramework::new(self.subscription_store(), vec![], ());
        let mut metadata = HashMap::from([("actor".to_owned(), actor.to_owned())]);
        if let Some(reason) = reason {
            metadata.insert("reason".to_owned(), reason.chars().take(500).collect());
        }
        cqrs.execute_with_metadata(&id.to_string(), command, metadata)
            .await?;
        self.project_subscription(id).await?;
        Ok(())
    }

    /// The subscription of `id` from its events, and the sequence of the last (0: none).
    pub(crate) async fn subscription(&self, id: Uuid) -> anyhow::Result<(Subscription, usize)> {
        let context = self
            .subscription_store()
            .load_aggregate(&id.to_string())
            .await
            .map_err(|e| anyhow::anyhow!("the subscription store: {e}"))?;
        Ok((context.aggregate, context.current_sequence))
    }

    /// Writes the catalog row of `id` from its subscription (unless it already shows as much)
    /// and, in the same transaction, the notices its new events owe the administrators (none
    /// for a row written for the first time: an organisation imported with its history is not
    /// told its past again).
    pub(crate) async fn project_subscription(&self, id: Uuid) -> anyhow::Result<()> {
        let (subscription, sequence) = self.subscription(id).await?;
        let Some(status) = subscription.status() else {
            return Ok(());
        };
        let sequence = i64::try_from(sequence)?;
        let mut tx = self.catalog().begin().await?;
        let projected: Option<i64> =
            sqlx::query_scalar("SELECT lifecycle_sequence FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(projected) = projected.filter(|p| *p < sequence) else {
            // Written already (by another process): what this one serves follows it at once.
            drop(tx);
            if let Some(tenant) = self.opened(id).await {
                tenant.set_standing(status.as_str());
            }
            return Ok(());
        };
        sqlx::query(
            "UPDATE tenants SET status = $2, plan = $3, trial_ends_at = $4,
                    cancellation_effective_at = $5, kept_until = $6, lifecycle_sequence = $7,
                    storage_level = $8, updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(subscription.plan().map_or("trial", Plan::as_str))
        .bind(subscription.trial_ends_at())
        .bind(subscription.cancellation_effective_at())
        .bind(subscription.kept_until())
        .bind(sequence)
        .bind(i64::try_from(subscription.storage_level()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        if projected > 0 {
            let events: Vec<(i64, Json<SubscriptionEvent>)> = sqlx::query_as(
                "SELECT sequence, payload FROM subscription_events
                 WHERE aggregate_type = 'subscription' AND aggregate_id = $1
                   AND sequence > $2 AND sequence <= $3
                 ORDER BY sequence",
            )
            .bind(id.to_string())
            .bind(projected)
            .bind(sequence)
            .fetch_all(&mut *tx)
            .await?;
            for (number, Json(event)) in events {
                if let Some((kind, payload)) = notice_of(&event) {
                    let notice = NewNotification {
                        tenant_id: id,
                        kind,
                        cause: format!("subscription:{number}"),
                        recipient: ADMINISTRATORS.to_owned(),
                        payload,
                        address: None,
                        held: false,
                    };
                    outbox::enqueue(&mut *tx, &notice).await?;
                }
            }
        }
        tx.commit().await?;
        // What its users may do changes here at once (other processes see it at their next
        // check of the catalog).
        if let Some(tenant) = self.opened(id).await {
            tenant.set_standing(status.as_str());
        }
        Ok(())
    }

    /// The schedule's notices at `now`: a trial ending within 7 days (and again within 1),
    /// and the deletion of an expired trial or an ended subscription within 7 days — each
    /// written once for the date it announces. How many were written.
    pub(crate) async fn schedule_notices(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let week = now + chrono::Duration::days(7);
        let due: Vec<NoticeDue> = sqlx::query_as(
            "SELECT id, status, trial_ends_at, kept_until FROM tenants
                 WHERE (status = 'trial' AND trial_ends_at > $1 AND trial_ends_at <= $2)
                    OR (status IN ('expired', 'migration') AND kept_until > $1
                        AND kept_until <= $2)",
        )
        .bind(now)
        .bind(week)
        .fetch_all(self.catalog())
        .await?;
        let mut written = 0;
        for (id, status, trial_ends_at, kept_until) in due {
            let notice = match (status.as_str(), trial_ends_at, kept_until) {
                ("trial", Some(end), _) => {
                    let days = if end - now <= chrono::Duration::days(1) {
                        1
                    } else {
                        7
                    };
                    NewNotification {
                        tenant_id: id,
                        kind: "trial_ending",
                        cause: format!("trial-ending-{days}d:{}", end.to_rfc3339()),
                        recipient: ADMINISTRATORS.to_owned(),
                        payload: serde_json::json!({ "trial_ends_at": end, "days": days }),
                        address: None,
                        held: false,
                    }
                }
                (_, _, Some(at)) => NewNotification {
                    tenant_id: id,
                    kind: "deletion_approaching",
                    cause: format!("deletion-approaching:{}", at.to_rfc3339()),
                    recipient: ADMINISTRATORS.to_owned(),
                    payload: serde_json::json!({ "at": at }),
                    address: None,
                    held: false,
                },
                _ => continue,
            };
            if outbox::enqueue(self.catalog(), &notice).await? {
                written += 1;
            }
        }
        Ok(written)
    }

    /// Opens the subscription of a new organisation (`trial_ends_at`, or on `plan`), or, when
    /// the organisation has one already (it lived here before), writes its row from it.
    pub(crate) async fn open_subscription(
        &self,
        id: Uuid,
        trial_ends_at: Option<DateTime<Utc>>,
        plan: Option<Plan>,
        actor: &str,
    ) -> Result<(), LifecycleError> {
        let (existing, _) = self.subscription(id).await?;
        if existing.status().is_some() {
            self.project_subscription(id).await?;
            return Ok(());
        }
        let opened = self
            .change_subscription(
                id,
                SubscriptionCommand::Open {
                    trial_ends_at,
                    plan,
                },
                actor,
                None,
            )
            .await;
        match opened {
            // Another instance starting at the same time opened it first.
            Err(LifecycleError::Conflict)
            | Err(LifecycleError::Refused(SubscriptionError::AlreadyOpened)) => {
                self.project_subscription(id).await?;
                Ok(())
            }
            other => other,
        }
    }

    /// At start: every organisation's row agrees with its stream; one without a stream (older
    /// than it) gets one opened from what its row says.
    pub(crate) async fn repair_subscriptions(&self) -> anyhow::Result<()> {
        let rows: Vec<RepairRow> = sqlx::query_as(
            "SELECT t.id, t.status, t.plan, t.trial_ends_at, t.lifecycle_sequence,
                        (SELECT max(sequence) FROM subscription_events e
                         WHERE e.aggregate_type = 'subscription' AND e.aggregate_id = t.id::text)
                 FROM tenants t WHERE t.status <> 'provisioning'",
        )
        .fetch_all(self.catalog())
        .await?;
        for (id, status, plan, trial_ends_at, projected, last) in rows {
            match last {
                Some(last) if last > projected => {
                    tracing::warn!(tenant.id = %id, "the catalog row was behind its subscription; written again");
                    self.project_subscription(id).await?;
                }
                Some(_) => {}
                None => {
                    let plan = Plan::parse(&plan).ok();
                    if !matches!(status.as_str(), "trial" | "active") {
                        tracing::warn!(tenant.id = %id, status = %status, "an organisation without a subscription stream is adopted as it was opened");
                    }
                    self.open_subscription(id, trial_ends_at, plan, "custos (adopted at start)")
                        .await
                        .map_err(|e| anyhow::anyhow!("adopting the subscription of {id}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Every organisation (but those being provisioned) with its subscription, oldest first.
    pub(crate) async fn subscriptions(&self) -> sqlx::Result<Vec<SubscriptionRow>> {
        sqlx::query_as(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM tenants WHERE status <> 'provisioning'
             ORDER BY created_at"
        ))
        .fetch_all(self.catalog())
        .await
    }

    /// The organisation with `slug`, with its subscription.
    pub(crate) async fn subscription_by_slug(
        &self,
        slug: &str,
    ) -> sqlx::Result<Option<SubscriptionRow>> {
        sqlx::query_as(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM tenants
             WHERE slug = $1 AND status <> 'provisioning'"
        ))
        .bind(slug)
        .fetch_optional(self.catalog())
        .await
    }

    /// The organisation with `id`, with its subscription.
    pub(crate) async fn subscription_by_id(
        &self,
        id: Uuid,
    ) -> sqlx::Result<Option<SubscriptionRow>> {
        sqlx::query_as(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM tenants
             WHERE id = $1 AND status <> 'provisioning'"
        ))
        .bind(id)
        .fetch_optional(self.catalog())
        .await
    }

    /// Every change in the life of the organisation `id`, oldest first.
    pub(crate) async fn lifecycle_changes(&self, id: Uuid) -> anyhow::Result<Vec<LifecycleChange>> {
        let rows: Vec<StoredChange> = sqlx::query_as(
            "SELECT payload, metadata, recorded_at FROM subscription_events
                 WHERE aggregate_type = 'subscription' AND aggregate_id = $1
                 ORDER BY sequence",
        )
        .bind(id.to_string())
        .fetch_all(self.catalog())
        .await?;
        let mut status = None;
        Ok(rows
            .into_iter()
            .map(|(Json(event), Json(metadata), at)| {
                status = event.status_after(status);
                LifecycleChange {
                    at,
                    status: status.unwrap_or(SubscriptionStatus::Trial),
                    actor: metadata.get("actor").cloned().unwrap_or_default(),
                    reason: metadata.get("reason").cloned(),
                    event,
                }
            })
            .collect())
    }

    /// What the schedule does at `now`: trials past their end expire (kept for `grace`),
    /// cancellations past their notice end (their migration window of `window` opens). How
    /// many changed.
    pub(crate) async fn advance_subscriptions(
        &self,
        now: DateTime<Utc>,
        grace: chrono::Duration,
        window: chrono::Duration,
    ) -> anyhow::Result<usize> {
        let due: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, status FROM tenants
             WHERE (status = 'trial' AND trial_ends_at <= $1)
                OR (status = 'cancelling' AND cancellation_effective_at <= $1)",
        )
        .bind(now)
        .fetch_all(self.catalog())
        .await?;
        let actor = "custos (schedule)";
        let mut changed = 0;
        for (id, status) in due {
            let command = if status == "trial" {
                SubscriptionCommand::ExpireTrial { at: now, grace }
            } else {
                SubscriptionCommand::EndSubscription { at: now, window }
            };
            match self.change_subscription(id, command, actor, None).await {
                Ok(()) => {
                    changed += 1;
                    tracing::info!(tenant.id = %id, from = %status, "organisation lifecycle advanced by the schedule");
                }
                // Another instance did it first, or an operator changed it meanwhile.
                Err(LifecycleError::Conflict | LifecycleError::Refused(_)) => {}
                Err(LifecycleError::Other(err)) => return Err(err),
            }
        }
        Ok(changed)
    }
}

/// The notice an event of an organisation's life owes its administrators, if any: its kind
/// and the facts its message is written from.
fn notice_of(event: &SubscriptionEvent) -> Option<(&'static str, serde_json::Value)> {
    use serde_json::json;
    Some(match event {
        SubscriptionEvent::SubscriptionOpened { .. }
        | SubscriptionEvent::StorageBelowLevel { .. }
        // The purge's own notice is written before the database goes (with the addresses).
        | SubscriptionEvent::Purged { .. } => return None,
        SubscriptionEvent::PlanChosen { plan, .. } => {
            ("plan_chosen", json!({ "plan": plan.as_str() }))
        }
        SubscriptionEvent::TrialExtended { until } => ("trial_extended", json!({ "until": until })),
        SubscriptionEvent::TrialExpired { purge_after } => {
            ("trial_ended", json!({ "purge_after": purge_after }))
        }
        SubscriptionEvent::Suspended { reason } => ("suspended", json!({ "reason": reason })),
        SubscriptionEvent::Resumed { .. } => ("resumed", json!({})),
        SubscriptionEvent::CancellationScheduled { effective_at } => {
            ("cancellation_scheduled", json!({ "effective_at": effective_at }))
        }
        SubscriptionEvent::CancellationWithdrawn => ("cancellation_withdrawn", json!({})),
        SubscriptionEvent::SubscriptionEnded {
            migration_access_until,
        } => (
            "subscription_ended",
            json!({ "migration_access_until": migration_access_until }),
        ),
        SubscriptionEvent::StorageNearLimit {
            used_bytes,
            limit_bytes,
        } => (
            "storage_near_limit",
            json!({ "used_bytes": used_bytes, "limit_bytes": limit_bytes }),
        ),
        SubscriptionEvent::StorageLimitReached {
            used_bytes,
            limit_bytes,
        } => (
            "storage_limit_reached",
            json!({ "used_bytes": used_bytes, "limit_bytes": limit_bytes }),
        ),
        SubscriptionEvent::StorageOverage {
            used_bytes,
            limit_bytes,
            step_bytes,
            steps,
        } => (
            "storage_overage",
            json!({
                "used_bytes": used_bytes,
                "limit_bytes": limit_bytes,
                "step_bytes": step_bytes,
                "steps": steps,
            }),
        ),
    })
}
