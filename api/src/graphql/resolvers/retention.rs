//! Retention policies: defining and removing them, the dry run of what they will erase, and
//! running them now.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::{RetentionTrigger, Stage};
use custos_projections::retention::{DueRow, PolicyRow};

use crate::error::ApiError;
use crate::graphql::arguments::{moment, parse_id};
use crate::graphql::context::Cx;
use crate::graphql::pagination::page_size_within;
use crate::graphql::types::enums::{stored_enum, DatasheetKind, PipelineStage};
use crate::service::privacy::retention::NewPolicy;

/// When a retention policy's period starts.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub(crate) enum RetentionTriggerKind {
    /// When the record was archived (while it stays archived).
    Archived,
    /// When a job applicant reached one of `stages` (while they stay there).
    StageReached,
    /// The day after an employee's `endDate`.
    EmploymentEnded,
    /// When the person's basis for `purpose` ended: withdrawn, or the day after it expired.
    ConsentEnded,
}

#[derive(InputObject)]
pub(crate) struct RetentionPolicyInput {
    datasheet: DatasheetKind,
    name: String,
    trigger: RetentionTriggerKind,
    /// For `STAGE_REACHED`.
    stages: Option<Vec<PipelineStage>>,
    /// For `CONSENT_ENDED`.
    purpose: Option<String>,
    /// Days from the trigger to the erasure (0 to 36525).
    period_days: i32,
    /// While the person's basis for this purpose holds, the record is kept; once it ends, the
    /// record is erased no earlier than that (`talent_pool` for applicants).
    unless_consent: Option<String>,
}

pub(crate) struct RetentionPolicyNode(PolicyRow);

#[Object(name = "RetentionPolicy")]
impl RetentionPolicyNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn datasheet(&self) -> DatasheetKind {
        self.0.datasheet().into()
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn trigger(&self) -> RetentionTriggerKind {
        match &self.0.trigger.0 {
            RetentionTrigger::Archived => RetentionTriggerKind::Archived,
            RetentionTrigger::StageReached { .. } => RetentionTriggerKind::StageReached,
            RetentionTrigger::EmploymentEnded => RetentionTriggerKind::EmploymentEnded,
            RetentionTrigger::ConsentEnded { .. } => RetentionTriggerKind::ConsentEnded,
        }
    }
    async fn stages(&self) -> Vec<PipelineStage> {
        match &self.0.trigger.0 {
            RetentionTrigger::StageReached { stages } => stages
                .iter()
                .filter_map(|s| stored_enum(Some(s.as_str())))
                .collect(),
            _ => Vec::new(),
        }
    }
    async fn purpose(&self) -> Option<&str> {
        match &self.0.trigger.0 {
            RetentionTrigger::ConsentEnded { purpose } => Some(purpose),
            _ => None,
        }
    }
    async fn period_days(&self) -> i32 {
        self.0.period_days
    }
    async fn unless_consent(&self) -> Option<&str> {
        self.0.unless_consent.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn removed_at(&self) -> Option<DateTime<Utc>> {
        self.0.removed_at
    }
    async fn last_run_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_run_at
    }
    /// Records the policy has erased, over all runs.
    async fn erased_total(&self) -> i64 {
        self.0.erased_total
    }
}

/// A record a policy will erase, and when.
#[derive(SimpleObject)]
pub(crate) struct ScheduledErasure {
    record_id: ID,
    datasheet: DatasheetKind,
    policy_id: ID,
    policy_name: String,
    /// When the policy erases it (in the past: at the next run).
    erases_at: DateTime<Utc>,
}

impl ScheduledErasure {
    fn new(policy: &PolicyRow, due: &DueRow) -> Self {
        Self {
            record_id: ID(due.record_id.to_string()),
            datasheet: policy.datasheet().into(),
            policy_id: ID(policy.id.to_string()),
            policy_name: policy.name.clone(),
            erases_at: due.due_at,
        }
    }
}

/// What one policy erased in a run.
#[derive(SimpleObject)]
pub(crate) struct PolicyRunResult {
    policy_id: ID,
    erased_ids: Vec<ID>,
    /// Records due that changed since they were scheduled (or failed): left for the next run.
    skipped: i32,
}

#[derive(SimpleObject)]
pub(crate) struct RetentionRunResult {
    /// False when another instance was running this organisation's retention at that moment.
    ran: bool,
    policies: Vec<PolicyRunResult>,
}

#[derive(Default)]
pub(crate) struct RetentionQuery;

#[Object]
impl RetentionQuery {
    /// The retention policies (administrators).
    async fn retention_policies(
        &self,
        ctx: &Context<'_>,
        include_removed: Option<bool>,
    ) -> Result<Vec<RetentionPolicyNode>, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        let rows =
            custos_projections::retention::policies(&tenant.pool, include_removed.unwrap_or(false))
                .await?;
        Ok(rows.into_iter().map(RetentionPolicyNode).collect())
    }

    /// The dry run: what the policies in force will erase by `until` (default now), and when,
    /// earliest first (administrators).
    async fn retention_schedule(
        &self,
        ctx: &Context<'_>,
        until: Option<DateTime<Utc>>,
        #[graphql(desc = "At most this many (1 to 1000, default 100).")] first: Option<i32>,
    ) -> Result<Vec<ScheduledErasure>, ApiError> {
        let cx = Cx::new(ctx)?;
        let first = page_size_within("first", first, 100, 1000)?;
        let tenant = cx.tenant();
        let schedule = cx
            .services
            .retention_schedule(
                tenant,
                moment("until", until.unwrap_or_else(Utc::now))?,
                first,
            )
            .await?;
        Ok(schedule
            .iter()
            .map(|(policy, due)| ScheduledErasure::new(policy, due))
            .collect())
    }
}

#[derive(Default)]
pub(crate) struct RetentionMutation;

#[Object]
impl RetentionMutation {
    /// Defines a retention policy (administrators). It applies from the next run.
    async fn define_retention_policy(
        &self,
        ctx: &Context<'_>,
        input: RetentionPolicyInput,
    ) -> Result<RetentionPolicyNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let trigger = match input.trigger {
            RetentionTriggerKind::Archived => RetentionTrigger::Archived,
            RetentionTriggerKind::EmploymentEnded => RetentionTrigger::EmploymentEnded,
            RetentionTriggerKind::StageReached => RetentionTrigger::StageReached {
                stages: input
                    .stages
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|s| {
                        serde_json::to_value(s)
                            .ok()
                            .and_then(|v| v.as_str().and_then(|s| Stage::parse(s).ok()))
                    })
                    .collect(),
            },
            RetentionTriggerKind::ConsentEnded => RetentionTrigger::ConsentEnded {
                purpose: input.purpose.ok_or_else(|| {
                    ApiError::validation("purpose", "`CONSENT_ENDED` needs the purpose")
                })?,
            },
        };
        let period_days = u32::try_from(input.period_days)
            .map_err(|_| ApiError::validation("periodDays", "the period must not be negative"))?;
        let policy = NewPolicy {
            datasheet: input.datasheet.into(),
            name: input.name,
            trigger,
            period_days,
            unless_consent: input.unless_consent,
        };
        let row = cx
            .services
            .define_retention_policy(cx.caller, policy, cx.request_id)
            .await?;
        Ok(RetentionPolicyNode(row))
    }

    /// Removes a retention policy (administrators); its past runs stay in the history.
    async fn remove_retention_policy(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<RetentionPolicyNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let row = cx
            .services
            .remove_retention_policy(cx.caller, id, cx.request_id)
            .await?;
        Ok(RetentionPolicyNode(row))
    }

    /// Runs retention now rather than at the scheduler's next run (administrators).
    async fn run_retention(&self, ctx: &Context<'_>) -> Result<RetentionRunResult, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        let run = cx.services.run_retention(tenant).await?;
        Ok(RetentionRunResult {
            ran: run.ran,
            policies: run
                .policies
                .into_iter()
                .map(|p| PolicyRunResult {
                    policy_id: ID(p.policy_id.to_string()),
                    erased_ids: p.erased.iter().map(|id| ID(id.to_string())).collect(),
                    skipped: i32::try_from(p.skipped).unwrap_or(i32::MAX),
                })
                .collect(),
        })
    }
}
