//! The organisation (tenant) as its users see it: who it is, the keys that sign its tree
//! heads, and its life with the provider (standing, plan, dates, and every change to them).

use async_graphql::{ComplexObject, Context, SimpleObject, ID};
use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use crate::error::ApiError;
use crate::graphql::context::{Cx, PublicCx};
use crate::graphql::types::enums::{OrganizationStatus, PlanKind};
use crate::infra::integrity::audit_keys::follow;
use crate::infra::integrity::tree_head::handovers_before;
use crate::infra::tenancy::lifecycle::SubscriptionRow;
use crate::infra::tenancy::tenant::Tenant;

/// The organisation (tenant) a user belongs to.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct Organization {
    id: ID,
    slug: String,
    name: String,
    /// The data region the organisation chose: `eu` or `us`.
    region: String,
    /// The tenant's database, for the settings (also answered right after sign-up and login).
    #[graphql(skip)]
    pool: sqlx::PgPool,
    /// Generation 0 of the key that signs tree heads.
    #[graphql(skip)]
    audit_anchor: ed25519_dalek::VerifyingKey,
    #[graphql(skip)]
    tenant_id: uuid::Uuid,
    /// The catalog's subscription row, read once per response.
    #[graphql(skip)]
    subscription: OnceCell<SubscriptionRow>,
}

/// One change in the organisation's life with the provider.
#[derive(SimpleObject)]
pub(crate) struct LifecycleEntry {
    at: DateTime<Utc>,
    /// `SubscriptionOpened`, `PlanChosen`, `TrialExtended`, `TrialExpired`, `Suspended`,
    /// `Resumed`, `CancellationScheduled`, `CancellationWithdrawn`, `SubscriptionEnded`,
    /// `Purged`, or a storage crossing: `StorageNearLimit` (80 % of the plan's),
    /// `StorageLimitReached`, `StorageOverage` (a billable step begun beyond it),
    /// `StorageBelowLevel`.
    change: String,
    /// The status it left the organisation in.
    status: OrganizationStatus,
    /// `user:<id>` (an administrator), `operator` (the provider), `sign-up`, `import`, or
    /// `custos (…)` (the service on its schedule, or measuring storage).
    actor: String,
    /// The provider's reason, where it gave one (suspension, resumption, early deletion).
    reason: Option<String>,
}

/// One generation of the key that signs the organisation's tree heads.
#[derive(SimpleObject)]
pub(crate) struct AuditKey {
    /// 0 for the first key; one more at each rotation.
    generation: i32,
    /// The first 16 hex digits of SHA-256 over `publicKey`.
    key_id: String,
    /// Hex Ed25519 public key.
    public_key: String,
    /// When it was made (none for the first, derived from the master key).
    created_at: Option<DateTime<Utc>>,
    /// The number of the tree head that handed over to it (signed by the key before it).
    handed_over_at: Option<i64>,
}

#[ComplexObject]
impl Organization {
    /// Where the organisation is in its life with the provider: `TRIAL`, `ACTIVE` (on a
    /// plan), `CANCELLING` (served until `cancellationEffectiveAt`), `EXPIRED` (the trial
    /// ended: choose a plan or export before `deletionScheduledAt`), `SUSPENDED` (by the
    /// provider), `MIGRATION` (ended: read and export until `migrationAccessUntil`).
    async fn status(&self, ctx: &Context<'_>) -> Result<OrganizationStatus, ApiError> {
        let row = self.subscription(ctx).await?;
        custos_domain::SubscriptionStatus::parse(&row.status)
            .map(Into::into)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown status {}", row.status)))
    }

    /// The plan chosen; none during a trial.
    async fn plan(&self, ctx: &Context<'_>) -> Result<Option<PlanKind>, ApiError> {
        let row = self.subscription(ctx).await?;
        Ok(custos_domain::Plan::parse(&row.plan).ok().map(Into::into))
    }

    /// When the trial ends (or ended); none once a plan is chosen.
    async fn trial_ends_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>, ApiError> {
        Ok(self.subscription(ctx).await?.trial_ends_at)
    }

    /// When a cancellation takes effect (the first day of the month after next, counted from
    /// the cancellation); none unless cancelled.
    async fn cancellation_effective_at(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        Ok(self.subscription(ctx).await?.cancellation_effective_at)
    }

    /// Until when administrators may sign in to read and export, once the subscription ended.
    async fn migration_access_until(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        let row = self.subscription(ctx).await?;
        Ok(row.kept_until.filter(|_| row.status == "migration"))
    }

    /// When the organisation's data is deleted unless a plan is chosen (an ended trial) or
    /// as the migration window closes (an ended subscription).
    async fn deletion_scheduled_at(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        let row = self.subscription(ctx).await?;
        Ok(row
            .kept_until
            .filter(|_| matches!(row.status.as_str(), "expired" | "migration")))
    }

    /// The organisation's storage as last measured (its database, with its stored exports),
    /// in bytes; none until the first measurement. A Float: GraphQL's Int has 32 bits.
    async fn storage_used_bytes(&self, ctx: &Context<'_>) -> Result<Option<f64>, ApiError> {
        Ok(self
            .subscription(ctx)
            .await?
            .storage_used_bytes
            .map(|bytes| bytes as f64))
    }

    /// When the storage was last measured.
    async fn storage_measured_at(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        Ok(self.subscription(ctx).await?.storage_measured_at)
    }

    /// The storage the plan (or the trial) includes, in bytes; none when the plan has no
    /// limit applied automatically (Premium, agreed with each client). Beyond it, each begun
    /// overage step is billed; a trial takes no new data (`QUOTA_EXCEEDED`).
    async fn storage_limit_bytes(&self, ctx: &Context<'_>) -> Result<Option<f64>, ApiError> {
        let row = self.subscription(ctx).await?;
        let plan = custos_domain::Plan::parse(&row.plan).ok();
        Ok(PublicCx::new(ctx)?
            .services
            .storage
            .limit(plan)
            .map(|bytes| bytes as f64))
    }

    /// Every change in the organisation's life with the provider, oldest first, with who made
    /// it and why (administrators only).
    async fn lifecycle_history(&self, ctx: &Context<'_>) -> Result<Vec<LifecycleEntry>, ApiError> {
        let cx = Cx::new(ctx)?;
        if cx.caller.tenant.id != self.tenant_id {
            return Err(ApiError::Forbidden);
        }
        Ok(cx
            .services
            .organization_lifecycle(cx.caller)
            .await?
            .into_iter()
            .map(|change| LifecycleEntry {
                at: change.at,
                change: cqrs_es::DomainEvent::event_type(&change.event),
                status: change.status.into(),
                actor: change.actor,
                reason: change.reason,
            })
            .collect())
    }

    /// Whether every user must log in with a second factor; users without one can only
    /// enrol, change their password and log out until they have.
    async fn two_factor_required(&self) -> Result<bool, ApiError> {
        Ok(custos_projections::organization::two_factor_required(&self.pool).await?)
    }

    /// Hex Ed25519 public key that signs the organisation's tree heads now: give it (or the
    /// first of `auditKeys`) to auditors, who check proofs with it offline (`custos
    /// verify-proof --public-key`); a proof carries the hand-overs from an earlier key.
    async fn audit_key(&self) -> Result<String, ApiError> {
        let keys = self.generations().await?;
        Ok(keys
            .last()
            .map(|k| k.public_key.clone())
            .unwrap_or_default())
    }

    /// Every key that has signed the organisation's tree heads, oldest first: each after the
    /// first took over at a hand-over tree head signed by the one before.
    async fn audit_keys(&self) -> Result<Vec<AuditKey>, ApiError> {
        self.generations().await
    }
}

impl Organization {
    async fn subscription(&self, ctx: &Context<'_>) -> Result<&SubscriptionRow, ApiError> {
        self.subscription
            .get_or_try_init(|| async {
                PublicCx::new(ctx)?
                    .services
                    .tenancy
                    .subscription_by_id(self.tenant_id)
                    .await?
                    .ok_or(ApiError::NotFound)
            })
            .await
    }

    async fn generations(&self) -> Result<Vec<AuditKey>, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let handovers = handovers_before(&mut conn, self.tenant_id, i64::MAX).await?;
        let generations = follow(&self.audit_anchor, &handovers);
        Ok(generations
            .into_iter()
            .map(|g| AuditKey {
                generation: g.generation,
                key_id: g.key_id,
                public_key: hex::encode(g.public_key),
                created_at: g.created_at,
                handed_over_at: g.handed_over_at,
            })
            .collect())
    }
}

impl From<&Tenant> for Organization {
    fn from(tenant: &Tenant) -> Self {
        Self {
            id: ID(tenant.id.to_string()),
            slug: tenant.slug.clone(),
            name: tenant.name.clone(),
            region: tenant.region.as_str().to_owned(),
            pool: tenant.pool.clone(),
            audit_anchor: tenant.audit_keys.anchor(),
            tenant_id: tenant.id,
            subscription: OnceCell::new(),
        }
    }
}
