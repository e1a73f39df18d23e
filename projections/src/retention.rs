//! The `retention_policies` read model, and the schedule a policy gives: which records are due
//! for erasure and when, computed from the records' retention clocks (archived since, at their
//! stage since, employment end) and the consent register.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, RetentionEvent, RetentionPolicy, RetentionTrigger};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects RetentionPolicy events into `retention_policies`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionPoliciesProjection;

#[async_trait]
impl Projection for RetentionPoliciesProjection {
    fn name(&self) -> &'static str {
        "retention_policies"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<RetentionPolicy as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("retention_policies")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Retention(policy_event) = &event.event else {
            return Ok(());
        };
        let change = |set: &str| {
            format!(
                "UPDATE retention_policies SET version = $2, {set} WHERE id = $1 AND version < $2"
            )
        };
        match policy_event {
            RetentionEvent::RetentionPolicyDefined {
                datasheet,
                name,
                trigger,
                period_days,
                unless_consent,
            } => {
                sqlx::query(
                    "INSERT INTO retention_policies
                        (id, version, datasheet, name, trigger, period_days, unless_consent, created_at, created_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(datasheet.as_str())
                .bind(name)
                .bind(Json(trigger))
                .bind(i32::try_from(*period_days).unwrap_or(i32::MAX))
                .bind(unless_consent)
                .bind(event.recorded_at)
                .bind(event.metadata.actor.id())
                .execute(conn)
                .await?;
            }
            RetentionEvent::RetentionPolicyRemoved => {
                sqlx::query(&change("removed_at = $3"))
                    .bind(event.aggregate_id)
                    .bind(event.sequence)
                    .bind(event.recorded_at)
                    .execute(conn)
                    .await?;
            }
            RetentionEvent::RetentionApplied { erased } => {
                sqlx::query(&change(
                    "last_run_at = $3, erased_total = erased_total + $4",
                ))
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .bind(i64::try_from(erased.len()).unwrap_or(i64::MAX))
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM retention_policies")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A retention policy as it stands.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PolicyRow {
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub datasheet: crate::records::DatasheetName,
    pub name: String,
    pub trigger: Json<RetentionTrigger>,
    pub period_days: i32,
    pub unless_consent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: Uuid,
    pub removed_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub erased_total: i64,
}

impl PolicyRow {
    pub fn datasheet(&self) -> Datasheet {
        self.datasheet.0
    }
}

const POLICY_COLUMNS: &str = "id, datasheet, name, trigger, period_days, unless_consent, \
     created_at, created_by, removed_at, last_run_at, erased_total";

/// Every policy in force (and, with `include_removed`, those removed), oldest first.
pub async fn policies<'e>(
    db: impl PgExecutor<'e>,
    include_removed: bool,
) -> sqlx::Result<Vec<PolicyRow>> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM retention_policies
         WHERE $1 OR removed_at IS NULL ORDER BY created_at, id"
    ))
    .bind(include_removed)
    .fetch_all(db)
    .await
}

pub async fn policy<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<PolicyRow>> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM retention_policies WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A record a policy will erase, and when.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DueRow {
    pub record_id: Uuid,
    pub version: i64,
    pub due_at: DateTime<Utc>,
}

/// For a trigger: the joins, the condition and the moment its period starts from. `$5` is a
/// text array: the stages, or the one purpose.
fn clock(trigger: &RetentionTrigger) -> (&'static str, &'static str, &'static str) {
    match trigger {
        RetentionTrigger::Archived => ("", "r.archived", "r.archived_at"),
        RetentionTrigger::StageReached { .. } => {
            ("", "r.fields->>'stage' = ANY($5)", "r.stage_since")
        }
        // From the day after the last day of employment.
        RetentionTrigger::EmploymentEnded => (
            "",
            "r.fields ? 'end_date'",
            "((r.fields->>'end_date')::date + 1)::timestamp AT TIME ZONE 'UTC'",
        ),
        // From the withdrawal, or the day after the last day of an expiring basis.
        RetentionTrigger::ConsentEnded { .. } => (
            "JOIN consents c ON c.subject_id = r.id AND c.purpose = ANY($5)",
            "(c.withdrawn_at IS NOT NULL OR c.expires_on IS NOT NULL)",
            "coalesce(c.withdrawn_at, (c.expires_on + 1)::timestamp AT TIME ZONE 'UTC')",
        ),
    }
}

/// The records `policy` erases by `until`, earliest first, at most `limit`. A record is due
/// `period_days` after its clock started; while the policy's `unless_consent` purpose holds it is
/// kept, and once that basis ends it is due no earlier than the end. Erased and restricted
/// records (processing restricted: kept, e.g. for legal claims) are never due.
///
/// `only` limits the schedule to some records (one subject's); `except` leaves records out.
pub async fn due<'e>(
    db: impl PgExecutor<'e>,
    policy: &PolicyRow,
    until: DateTime<Utc>,
    only: Option<&[Uuid]>,
    except: &[Uuid],
    limit: i64,
) -> sqlx::Result<Vec<DueRow>> {
    let (join, condition, start) = clock(&policy.trigger);
    let keys: Vec<String> = match &policy.trigger.0 {
        RetentionTrigger::StageReached { stages } => {
            stages.iter().map(|s| s.as_str().to_owned()).collect()
        }
        RetentionTrigger::ConsentEnded { purpose } => vec![purpose.clone()],
        _ => Vec::new(),
    };
    sqlx::query_as(&format!(
        "WITH clocks AS (
             SELECT r.id, r.version, {start} AS started_at
             FROM records r {join}
             WHERE r.datasheet = $1 AND r.erased_at IS NULL AND r.restricted_at IS NULL
               AND {condition}
               AND ($7::uuid[] IS NULL OR r.id = ANY($7)) AND NOT (r.id = ANY($8))
         ), scheduled AS (
             SELECT k.id AS record_id, k.version,
                    greatest(k.started_at + make_interval(days => $2),
                             coalesce(u.withdrawn_at,
                                      (u.expires_on + 1)::timestamp AT TIME ZONE 'UTC')) AS due_at
             FROM clocks k
             LEFT JOIN consents u ON u.subject_id = k.id AND u.purpose = $3
             WHERE k.started_at IS NOT NULL
               -- a basis without end keeps the record
               AND NOT (u.subject_id IS NOT NULL AND u.withdrawn_at IS NULL AND u.expires_on IS NULL)
         )
         SELECT record_id, version, due_at FROM scheduled
         WHERE due_at <= $4 ORDER BY due_at, record_id LIMIT $6"
    ))
    .bind(policy.datasheet().as_str())
    .bind(policy.period_days)
    .bind(&policy.unless_consent)
    .bind(until)
    .bind(keys)
    .bind(limit)
    .bind(only)
    .bind(except)
    .fetch_all(db)
    .await
}
