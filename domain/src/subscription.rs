//! The `Subscription` aggregate: an organisation's life with the provider — trial, plan,
//! suspension, cancellation with notice, the migration window, purge. One stream per
//! organisation (its id), kept in the catalog: the organisation's own database goes when it is
//! purged; this history stays as the proof of what happened, by whom and why. Times come in
//! with the commands: the aggregate has no clock.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The paid plans of the terms (storage limits are configuration, not history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Basic,
    Standard,
    Maxi,
    Premium,
}

impl Plan {
    pub const ALL: [Plan; 4] = [Plan::Basic, Plan::Standard, Plan::Maxi, Plan::Premium];

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Basic => "basic",
            Plan::Standard => "standard",
            Plan::Maxi => "maxi",
            Plan::Premium => "premium",
        }
    }

    /// A plan from its name (`basic`, `standard`, `maxi`, `premium`, any case).
    pub fn parse(name: &str) -> Result<Self, SubscriptionError> {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| SubscriptionError::UnknownPlan(name.trim().chars().take(40).collect()))
    }
}

/// Where an organisation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trying it out until `trial_ends_at`.
    Trial,
    /// On a paid plan.
    Active,
    /// The trial ended without a plan: not served, purged after a grace period.
    Expired,
    /// Stopped by the provider (late payment, a serious reason) until resumed.
    Suspended,
    /// Cancelled, served until the notice period ends.
    Cancelling,
    /// The subscription ended: administrators may sign in to read and take their data away
    /// until the window closes.
    Migration,
    /// Its database, role, keys and files are gone.
    Purged,
}

impl Status {
    /// The name the catalog stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Trial => "trial",
            Status::Active => "active",
            Status::Expired => "expired",
            Status::Suspended => "suspended",
            Status::Cancelling => "cancelling",
            Status::Migration => "migration",
            Status::Purged => "purged",
        }
    }

    /// The status the catalog stores as `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Status::Trial,
            Status::Active,
            Status::Expired,
            Status::Suspended,
            Status::Cancelling,
            Status::Migration,
            Status::Purged,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether everything is served: on trial, on a plan, or cancelled but within the notice.
    pub fn is_served(self) -> bool {
        matches!(self, Status::Trial | Status::Active | Status::Cancelling)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    status: Option<Status>,
    plan: Option<Plan>,
    trial_ends_at: Option<DateTime<Utc>>,
    /// What a suspension returns to.
    suspended_from: Option<Status>,
    cancellation_effective_at: Option<DateTime<Utc>>,
    /// Until when an expired trial, or a closed subscription's migration window, is kept.
    kept_until: Option<DateTime<Utc>>,
    /// How far its storage has gone, as last recorded (see [`storage_level`]).
    storage_level: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionCommand {
    /// A new organisation: on trial until `trial_ends_at`, or on `plan` from the start.
    Open {
        trial_ends_at: Option<DateTime<Utc>>,
        plan: Option<Plan>,
    },
    /// A plan chosen: ends a trial (every record kept), or changes plan.
    ChoosePlan {
        plan: Plan,
    },
    /// The trial lasts until `until` (also after it ended, before the purge).
    ExtendTrial {
        until: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The trial ended at `at` without a plan; it is purged after `grace`.
    ExpireTrial {
        at: DateTime<Utc>,
        grace: Duration,
    },
    Suspend {
        reason: String,
    },
    Resume {
        reason: String,
    },
    /// Cancelled at `at`: with one month's notice from the first day of the following month.
    Cancel {
        at: DateTime<Utc>,
    },
    WithdrawCancellation,
    /// The notice period is over at `at`: the migration window of `window` opens.
    EndSubscription {
        at: DateTime<Utc>,
        window: Duration,
    },
    /// Its storage measured: `used_bytes` against the limit `limits` give its plan (as it is
    /// when the command is handled), with overage counted in their steps. Crossing 80 %, the limit, and each further
    /// step is recorded (a step beyond the limit is billable); falling back below a level too.
    RecordStorage {
        used_bytes: u64,
        limits: StorageLimits,
    },
    /// Purged at `at`: after the grace period or window, or before it with `early_reason`;
    /// `final_tree_head` names the last signed tree head of its history, kept as the proof of
    /// what was deleted.
    Purge {
        at: DateTime<Utc>,
        early_reason: Option<String>,
        final_tree_head: Option<FinalTreeHead>,
    },
}

/// The last signed tree head of a purged organisation's history: its number and size, its
/// Merkle root and the SHA-256 of the signed head as the witness file holds it (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalTreeHead {
    pub number: i64,
    pub tree_size: i64,
    pub root: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubscriptionEvent {
    SubscriptionOpened {
        status: Status,
        plan: Option<Plan>,
        trial_ends_at: Option<DateTime<Utc>>,
    },
    PlanChosen {
        plan: Plan,
        previous: Option<Plan>,
    },
    TrialExtended {
        until: DateTime<Utc>,
    },
    TrialExpired {
        purge_after: DateTime<Utc>,
    },
    Suspended {
        reason: String,
    },
    Resumed {
        reason: String,
        status: Status,
    },
    CancellationScheduled {
        effective_at: DateTime<Utc>,
    },
    CancellationWithdrawn,
    SubscriptionEnded {
        migration_access_until: DateTime<Utc>,
    },
    Purged {
        early_reason: Option<String>,
        #[serde(default)]
        final_tree_head: Option<FinalTreeHead>,
    },
    /// Its storage reached 80 % of the plan's limit.
    StorageNearLimit {
        used_bytes: u64,
        limit_bytes: u64,
    },
    /// Its storage reached the plan's limit: a trial takes no new data from now on.
    StorageLimitReached {
        used_bytes: u64,
        limit_bytes: u64,
    },
    /// Its storage went `steps` overage steps of `step_bytes` beyond the limit (billable).
    StorageOverage {
        used_bytes: u64,
        limit_bytes: u64,
        step_bytes: u64,
        steps: u64,
    },
    /// Its storage fell back below a level it had reached (data deleted, a larger plan).
    StorageBelowLevel {
        used_bytes: u64,
        limit_bytes: Option<u64>,
        level: u64,
    },
}

/// The storage each plan includes, in bytes (`None`: no limit applied), and the overage step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    pub trial: Option<u64>,
    pub basic: Option<u64>,
    pub standard: Option<u64>,
    pub maxi: Option<u64>,
    pub premium: Option<u64>,
    pub step_bytes: u64,
}

impl StorageLimits {
    /// The limit of `plan` (`None`: a trial).
    pub fn of(&self, plan: Option<Plan>) -> Option<u64> {
        match plan {
            None => self.trial,
            Some(Plan::Basic) => self.basic,
            Some(Plan::Standard) => self.standard,
            Some(Plan::Maxi) => self.maxi,
            Some(Plan::Premium) => self.premium,
        }
    }
}

/// How far `used` bytes have gone against `limit`: 0 below 80 %, 1 from 80 %, 2 from the
/// limit, 2 + n with n overage steps of `step` begun beyond it. No limit: 0.
pub fn storage_level(used: u64, limit: Option<u64>, step: u64) -> u64 {
    let Some(limit) = limit else { return 0 };
    if used >= limit {
        let over = used - limit;
        2 + over.div_ceil(step.max(1))
    } else if u128::from(used) * 5 >= u128::from(limit) * 4 {
        1
    } else {
        0
    }
}

impl SubscriptionEvent {
    /// The status the organisation is in after this event.
    pub fn status_after(&self, before: Option<Status>) -> Option<Status> {
        match self {
            SubscriptionEvent::SubscriptionOpened { status, .. } => Some(*status),
            SubscriptionEvent::PlanChosen { .. } => match before {
                Some(Status::Cancelling) => Some(Status::Cancelling),
                _ => Some(Status::Active),
            },
            SubscriptionEvent::TrialExtended { .. } => Some(Status::Trial),
            SubscriptionEvent::TrialExpired { .. } => Some(Status::Expired),
            SubscriptionEvent::Suspended { .. } => Some(Status::Suspended),
            SubscriptionEvent::Resumed { status, .. } => Some(*status),
            SubscriptionEvent::CancellationScheduled { .. } => Some(Status::Cancelling),
            SubscriptionEvent::CancellationWithdrawn => Some(Status::Active),
            SubscriptionEvent::SubscriptionEnded { .. } => Some(Status::Migration),
            SubscriptionEvent::Purged { .. } => Some(Status::Purged),
            SubscriptionEvent::StorageNearLimit { .. }
            | SubscriptionEvent::StorageLimitReached { .. }
            | SubscriptionEvent::StorageOverage { .. }
            | SubscriptionEvent::StorageBelowLevel { .. } => before,
        }
    }
}

impl DomainEvent for SubscriptionEvent {
    fn event_type(&self) -> String {
        match self {
            SubscriptionEvent::SubscriptionOpened { .. } => "SubscriptionOpened",
            SubscriptionEvent::PlanChosen { .. } => "PlanChosen",
            SubscriptionEvent::TrialExtended { .. } => "TrialExtended",
            SubscriptionEvent::TrialExpired { .. } => "TrialExpired",
            SubscriptionEvent::Suspended { .. } => "Suspended",
            SubscriptionEvent::Resumed { .. } => "Resumed",
            SubscriptionEvent::CancellationScheduled { .. } => "CancellationScheduled",
            SubscriptionEvent::CancellationWithdrawn => "CancellationWithdrawn",
            SubscriptionEvent::SubscriptionEnded { .. } => "SubscriptionEnded",
            SubscriptionEvent::Purged { .. } => "Purged",
            SubscriptionEvent::StorageNearLimit { .. } => "StorageNearLimit",
            SubscriptionEvent::StorageLimitReached { .. } => "StorageLimitReached",
            SubscriptionEvent::StorageOverage { .. } => "StorageOverage",
            SubscriptionEvent::StorageBelowLevel { .. } => "StorageBelowLevel",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("the organisation's subscription was not opened")]
    NotOpened,
    #[error("the organisation's subscription is already open")]
    AlreadyOpened,
    #[error("an organisation in status `{status}` cannot {action}")]
    Illegal {
        status: Status,
        action: &'static str,
    },
    #[error("unknown plan `{0}` (basic, standard, maxi or premium)")]
    UnknownPlan(String),
    #[error("it is already on that plan")]
    SamePlan,
    #[error("the new end of the trial is not later than now")]
    NotLater,
    #[error("the trial runs until {0}")]
    TrialNotOver(DateTime<Utc>),
    #[error("the notice period runs until {0}")]
    NoticeNotOver(DateTime<Utc>),
    #[error("it is kept until {0}; purging it earlier needs a reason")]
    KeptUntil(DateTime<Utc>),
    #[error("a reason is required")]
    NoReason,
}

impl Subscription {
    pub fn status(&self) -> Option<Status> {
        self.status
    }

    pub fn plan(&self) -> Option<Plan> {
        self.plan
    }

    pub fn trial_ends_at(&self) -> Option<DateTime<Utc>> {
        self.trial_ends_at
    }

    pub fn cancellation_effective_at(&self) -> Option<DateTime<Utc>> {
        self.cancellation_effective_at
    }

    /// Until when an expired trial or an ended subscription is kept before its purge.
    pub fn kept_until(&self) -> Option<DateTime<Utc>> {
        self.kept_until
    }

    fn illegal(&self, action: &'static str) -> SubscriptionError {
        match self.status {
            Some(status) => SubscriptionError::Illegal { status, action },
            None => SubscriptionError::NotOpened,
        }
    }
}

/// When a cancellation made at `at` takes effect: one month's notice that starts on the first
/// day of the following month, so the first day of the month after that (UTC).
pub fn cancellation_effective_at(at: DateTime<Utc>) -> DateTime<Utc> {
    let months = at.year() * 12 + at.month0() as i32 + 2;
    Utc.with_ymd_and_hms(
        months.div_euclid(12),
        months.rem_euclid(12) as u32 + 1,
        1,
        0,
        0,
        0,
    )
    .single()
    .unwrap_or(at)
}

/// A reason given by the provider: trimmed, required, at most 500 characters.
fn reason(text: &str) -> Result<String, SubscriptionError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SubscriptionError::NoReason);
    }
    Ok(text.chars().take(500).collect())
}

impl Aggregate for Subscription {
    const TYPE: &'static str = "subscription";
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;
    type Error = SubscriptionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SubscriptionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SubscriptionError> {
        use SubscriptionCommand as C;
        use SubscriptionEvent as E;
        let status = self.status;
        let event = match command {
            C::Open {
                trial_ends_at,
                plan,
            } => {
                if status.is_some() {
                    return Err(SubscriptionError::AlreadyOpened);
                }
                E::SubscriptionOpened {
                    status: if plan.is_some() {
                        Status::Active
                    } else {
                        Status::Trial
                    },
                    plan,
                    trial_ends_at: trial_ends_at.filter(|_| plan.is_none()),
                }
            }
            C::ChoosePlan { plan } => match status {
                Some(Status::Trial | Status::Expired | Status::Active | Status::Cancelling) => {
                    if self.plan == Some(plan) && status != Some(Status::Expired) {
                        return Err(SubscriptionError::SamePlan);
                    }
                    E::PlanChosen {
                        plan,
                        previous: self.plan,
                    }
                }
                _ => return Err(self.illegal("choose a plan")),
            },
            C::ExtendTrial { until, at } => match status {
                Some(Status::Trial | Status::Expired) if self.plan.is_none() => {
                    if until <= at {
                        return Err(SubscriptionError::NotLater);
                    }
                    E::TrialExtended { until }
                }
                _ => return Err(self.illegal("have its trial extended")),
            },
            C::ExpireTrial { at, grace } => match (status, self.trial_ends_at) {
                // The whole grace period from when it is acted on (a schedule that was down
                // does not shorten it).
                (Some(Status::Trial), Some(ends)) if ends <= at => E::TrialExpired {
                    purge_after: at + grace,
                },
                (Some(Status::Trial), Some(ends)) => {
                    return Err(SubscriptionError::TrialNotOver(ends))
                }
                _ => return Err(self.illegal("end a trial")),
            },
            C::Suspend { reason: text } => match status {
                Some(Status::Trial | Status::Active | Status::Cancelling) => E::Suspended {
                    reason: reason(&text)?,
                },
                _ => return Err(self.illegal("be suspended")),
            },
            C::Resume { reason: text } => match (status, self.suspended_from) {
                (Some(Status::Suspended), Some(from)) => E::Resumed {
                    reason: reason(&text)?,
                    status: from,
                },
                _ => return Err(self.illegal("be resumed")),
            },
            C::Cancel { at } => match status {
                Some(Status::Active) => E::CancellationScheduled {
                    effective_at: cancellation_effective_at(at),
                },
                _ => return Err(self.illegal("be cancelled")),
            },
            C::WithdrawCancellation => match status {
                Some(Status::Cancelling) => E::CancellationWithdrawn,
                _ => return Err(self.illegal("withdraw a cancellation")),
            },
            C::EndSubscription { at, window } => match (status, self.cancellation_effective_at) {
                (Some(Status::Cancelling), Some(effective)) if effective <= at => {
                    E::SubscriptionEnded {
                        migration_access_until: at + window,
                    }
                }
                (Some(Status::Cancelling), Some(effective)) => {
                    return Err(SubscriptionError::NoticeNotOver(effective))
                }
                _ => return Err(self.illegal("end its subscription")),
            },
            C::RecordStorage { used_bytes, limits } => {
                if matches!(status, None | Some(Status::Purged)) {
                    return Err(self.illegal("have its storage recorded"));
                }
                let limit = limits.of(self.plan);
                for event in self.storage_events(used_bytes, limit, limits.step_bytes) {
                    sink.write(event, self).await;
                }
                return Ok(());
            }
            C::Purge {
                at,
                early_reason,
                final_tree_head,
            } => E::Purged {
                early_reason: self.purge_reason(at, early_reason.as_deref())?,
                final_tree_head,
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: SubscriptionEvent) {
        let before = self.status;
        self.status = event.status_after(before);
        match event {
            SubscriptionEvent::SubscriptionOpened {
                plan,
                trial_ends_at,
                ..
            } => {
                self.plan = plan;
                self.trial_ends_at = trial_ends_at;
            }
            SubscriptionEvent::PlanChosen { plan, .. } => {
                self.plan = Some(plan);
                self.trial_ends_at = None;
                self.kept_until = None;
            }
            SubscriptionEvent::TrialExtended { until } => {
                self.trial_ends_at = Some(until);
                self.kept_until = None;
            }
            SubscriptionEvent::TrialExpired { purge_after } => self.kept_until = Some(purge_after),
            SubscriptionEvent::Suspended { .. } => self.suspended_from = before,
            SubscriptionEvent::Resumed { .. } => self.suspended_from = None,
            SubscriptionEvent::CancellationScheduled { effective_at } => {
                self.cancellation_effective_at = Some(effective_at);
            }
            SubscriptionEvent::CancellationWithdrawn => self.cancellation_effective_at = None,
            SubscriptionEvent::SubscriptionEnded {
                migration_access_until,
            } => self.kept_until = Some(migration_access_until),
            SubscriptionEvent::Purged { .. } => {}
            SubscriptionEvent::StorageNearLimit { .. } => self.storage_level = 1,
            SubscriptionEvent::StorageLimitReached { .. } => self.storage_level = 2,
            SubscriptionEvent::StorageOverage { steps, .. } => self.storage_level = 2 + steps,
            SubscriptionEvent::StorageBelowLevel { level, .. } => self.storage_level = level,
        }
    }
}

impl Subscription {
    /// Whether it may be purged at `at` (with `early_reason` before its time is over), and
    /// the early reason the `Purged` event then records. Checked before a purge fences
    /// anything, and again by the command.
    pub fn purge_reason(
        &self,
        at: DateTime<Utc>,
        early_reason: Option<&str>,
    ) -> Result<Option<String>, SubscriptionError> {
        match (self.status, self.kept_until) {
            (Some(Status::Expired | Status::Migration), Some(until)) => {
                let early_reason = early_reason.map(reason).transpose()?;
                if at < until && early_reason.is_none() {
                    return Err(SubscriptionError::KeptUntil(until));
                }
                Ok(early_reason.filter(|_| at < until))
            }
            _ => Err(self.illegal("be purged")),
        }
    }

    /// How far its storage had gone at the last recorded crossing (see [`storage_level`]).
    pub fn storage_level(&self) -> u64 {
        self.storage_level
    }

    /// What a measurement of `used` bytes against `limit` records: each level crossed upward,
    /// or one event for falling back below the level recorded.
    fn storage_events(&self, used: u64, limit: Option<u64>, step: u64) -> Vec<SubscriptionEvent> {
        let before = self.storage_level;
        let now = storage_level(used, limit, step);
        // Falling back counts only once clearly below (by 5 % of the limit): a size that
        // wavers at a boundary does not record (and bill) the same step again and again.
        let margin = limit.map_or(0, |l| l / 20);
        let clearly = storage_level(used.saturating_add(margin), limit, step);
        if clearly < before {
            return vec![SubscriptionEvent::StorageBelowLevel {
                used_bytes: used,
                limit_bytes: limit,
                level: clearly,
            }];
        }
        let Some(limit_bytes) = limit else {
            return vec![];
        };
        let mut events = Vec::new();
        if before < 1 && now == 1 {
            events.push(SubscriptionEvent::StorageNearLimit {
                used_bytes: used,
                limit_bytes,
            });
        }
        if before < 2 && now >= 2 {
            events.push(SubscriptionEvent::StorageLimitReached {
                used_bytes: used,
                limit_bytes,
            });
        }
        if now > 2 && now > before {
            events.push(SubscriptionEvent::StorageOverage {
                used_bytes: used,
                limit_bytes,
                step_bytes: step,
                steps: now - 2,
            });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type SubscriptionTest = TestFramework<Subscription>;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    fn trial() -> SubscriptionEvent {
        SubscriptionEvent::SubscriptionOpened {
            status: Status::Trial,
            plan: None,
            trial_ends_at: Some(at(2026, 12, 31)),
        }
    }

    fn active() -> Vec<SubscriptionEvent> {
        vec![
            trial(),
            SubscriptionEvent::PlanChosen {
                plan: Plan::Standard,
                previous: None,
            },
        ]
    }

    #[test]
    fn a_trial_ends_with_a_plan_chosen_or_expires_and_is_purged_after_the_grace_period() {
        SubscriptionTest::with(())
            .given(vec![trial()])
            .when(SubscriptionCommand::ChoosePlan { plan: Plan::Basic })
            .then_expect_events(vec![SubscriptionEvent::PlanChosen {
                plan: Plan::Basic,
                previous: None,
            }]);
        SubscriptionTest::with(())
            .given(vec![trial()])
            .when(SubscriptionCommand::ExpireTrial {
                at: at(2026, 12, 30),
                grace: Duration::days(14),
            })
            .then_expect_error(SubscriptionError::TrialNotOver(at(2026, 12, 31)));
        let expired = SubscriptionEvent::TrialExpired {
            purge_after: at(2027, 1, 15),
        };
        SubscriptionTest::with(())
            .given(vec![trial()])
            .when(SubscriptionCommand::ExpireTrial {
                at: at(2027, 1, 1),
                grace: Duration::days(14),
            })
            .then_expect_events(vec![expired.clone()]);
        SubscriptionTest::with(())
            .given(vec![trial(), expired.clone()])
            .when(SubscriptionCommand::Purge {
                at: at(2027, 1, 2),
                early_reason: None,
                final_tree_head: None,
            })
            .then_expect_error(SubscriptionError::KeptUntil(at(2027, 1, 15)));
        SubscriptionTest::with(())
            .given(vec![trial(), expired.clone()])
            .when(SubscriptionCommand::Purge {
                at: at(2027, 1, 16),
                early_reason: None,
                final_tree_head: None,
            })
            .then_expect_events(vec![SubscriptionEvent::Purged {
                early_reason: None,
                final_tree_head: None,
            }]);
        // Choosing a plan in the grace period keeps everything.
        SubscriptionTest::with(())
            .given(vec![trial(), expired])
            .when(SubscriptionCommand::ChoosePlan { plan: Plan::Maxi })
            .then_expect_events(vec![SubscriptionEvent::PlanChosen {
                plan: Plan::Maxi,
                previous: None,
            }]);
    }

    #[test]
    fn a_suspension_returns_to_where_it_was() {
        let suspended = SubscriptionEvent::Suspended {
            reason: "late payment".into(),
        };
        SubscriptionTest::with(())
            .given(vec![trial()])
            .when(SubscriptionCommand::Suspend {
                reason: "  ".into(),
            })
            .then_expect_error(SubscriptionError::NoReason);
        SubscriptionTest::with(())
            .given(vec![trial(), suspended.clone()])
            .when(SubscriptionCommand::Resume {
                reason: "paid".into(),
            })
            .then_expect_events(vec![SubscriptionEvent::Resumed {
                reason: "paid".into(),
                status: Status::Trial,
            }]);
        SubscriptionTest::with(())
            .given(vec![trial(), suspended.clone()])
            .when(SubscriptionCommand::ChoosePlan { plan: Plan::Basic })
            .then_expect_error(SubscriptionError::Illegal {
                status: Status::Suspended,
                action: "choose a plan",
            });
        SubscriptionTest::with(())
            .given(vec![trial()])
            .when(SubscriptionCommand::Resume {
                reason: "paid".into(),
            })
            .then_expect_error(SubscriptionError::Illegal {
                status: Status::Trial,
                action: "be resumed",
            });
    }

    #[test]
    fn a_cancellation_takes_effect_after_a_months_notice_from_the_first_of_next_month() {
        assert_eq!(
            cancellation_effective_at(at(2026, 12, 2)),
            Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            cancellation_effective_at(at(2026, 1, 31)),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
        let scheduled = SubscriptionEvent::CancellationScheduled {
            effective_at: Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap(),
        };
        let mut given = active();
        SubscriptionTest::with(())
            .given(given.clone())
            .when(SubscriptionCommand::Cancel {
                at: at(2026, 12, 2),
            })
            .then_expect_events(vec![scheduled.clone()]);
        given.push(scheduled);
        SubscriptionTest::with(())
            .given(given.clone())
            .when(SubscriptionCommand::WithdrawCancellation)
            .then_expect_events(vec![SubscriptionEvent::CancellationWithdrawn]);
        SubscriptionTest::with(())
            .given(given.clone())
            .when(SubscriptionCommand::EndSubscription {
                at: at(2027, 1, 31),
                window: Duration::days(30),
            })
            .then_expect_error(SubscriptionError::NoticeNotOver(
                Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap(),
            ));
        let ended = SubscriptionEvent::SubscriptionEnded {
            migration_access_until: Utc.with_ymd_and_hms(2027, 3, 3, 12, 0, 0).unwrap(),
        };
        SubscriptionTest::with(())
            .given(given.clone())
            .when(SubscriptionCommand::EndSubscription {
                at: at(2027, 2, 1),
                window: Duration::days(30),
            })
            .then_expect_events(vec![ended.clone()]);
        given.push(ended);
        // Before the window closes only with a reason, which is recorded.
        SubscriptionTest::with(())
            .given(given.clone())
            .when(SubscriptionCommand::Purge {
                at: at(2027, 2, 2),
                early_reason: Some("the client asked for deletion".into()),
                final_tree_head: None,
            })
            .then_expect_events(vec![SubscriptionEvent::Purged {
                early_reason: Some("the client asked for deletion".into()),
                final_tree_head: None,
            }]);
        given.push(SubscriptionEvent::Purged {
            early_reason: None,
            final_tree_head: None,
        });
        SubscriptionTest::with(())
            .given(given)
            .when(SubscriptionCommand::ChoosePlan { plan: Plan::Basic })
            .then_expect_error(SubscriptionError::Illegal {
                status: Status::Purged,
                action: "choose a plan",
            });
    }

    #[test]
    fn storage_crossings_are_recorded_once_each_and_overage_in_steps() {
        const GB: u64 = 1 << 30;
        let limits = |standard| StorageLimits {
            trial: Some(GB),
            basic: Some(GB),
            standard: Some(standard),
            maxi: Some(GB),
            premium: None,
            step_bytes: 10 * GB,
        };
        // The limit of the plan it is on (standard) when the command is handled.
        let record = |used| SubscriptionCommand::RecordStorage {
            used_bytes: used,
            limits: limits(30 * GB),
        };
        assert_eq!(storage_level(23 * GB, Some(30 * GB), 10 * GB), 0);
        assert_eq!(storage_level(24 * GB, Some(30 * GB), 10 * GB), 1);
        assert_eq!(storage_level(30 * GB, Some(30 * GB), 10 * GB), 2);
        assert_eq!(storage_level(30 * GB + 1, Some(30 * GB), 10 * GB), 3);
        assert_eq!(storage_level(50 * GB, Some(30 * GB), 10 * GB), 4);
        assert_eq!(storage_level(u64::MAX, None, 10 * GB), 0);
        SubscriptionTest::with(())
            .given(active())
            .when(record(20 * GB))
            .then_expect_events(vec![]);
        let near = SubscriptionEvent::StorageNearLimit {
            used_bytes: 25 * GB,
            limit_bytes: 30 * GB,
        };
        SubscriptionTest::with(())
            .given(active())
            .when(record(25 * GB))
            .then_expect_events(vec![near.clone()]);
        let mut given = active();
        given.push(near);
        SubscriptionTest::with(())
            .given(given.clone())
            .when(record(26 * GB))
            .then_expect_events(vec![]);
        // From 80 % straight past the limit: the limit and the first two steps, at once.
        SubscriptionTest::with(())
            .given(given.clone())
            .when(record(45 * GB))
            .then_expect_events(vec![
                SubscriptionEvent::StorageLimitReached {
                    used_bytes: 45 * GB,
                    limit_bytes: 30 * GB,
                },
                SubscriptionEvent::StorageOverage {
                    used_bytes: 45 * GB,
                    limit_bytes: 30 * GB,
                    step_bytes: 10 * GB,
                    steps: 2,
                },
            ]);
        given.push(SubscriptionEvent::StorageLimitReached {
            used_bytes: 30 * GB,
            limit_bytes: 30 * GB,
        });
        // Just below the limit again: not clearly below (5 % of it), nothing recorded.
        SubscriptionTest::with(())
            .given(given.clone())
            .when(record(29 * GB))
            .then_expect_events(vec![]);
        // A larger plan: back below every level.
        SubscriptionTest::with(())
            .given(given)
            .when(SubscriptionCommand::RecordStorage {
                used_bytes: 30 * GB,
                limits: limits(80 * GB),
            })
            .then_expect_events(vec![SubscriptionEvent::StorageBelowLevel {
                used_bytes: 30 * GB,
                limit_bytes: Some(80 * GB),
                level: 0,
            }]);
    }

    #[test]
    fn plans_parse_by_name_and_an_unknown_one_is_refused() {
        assert_eq!(Plan::parse(" Standard "), Ok(Plan::Standard));
        assert_eq!(
            Plan::parse("gold"),
            Err(SubscriptionError::UnknownPlan("gold".into()))
        );
        SubscriptionTest::with(())
            .given(active())
            .when(SubscriptionCommand::ChoosePlan {
                plan: Plan::Standard,
            })
            .then_expect_error(SubscriptionError::SamePlan);
        SubscriptionTest::with(())
            .given_no_previous_events()
            .when(SubscriptionCommand::Suspend { reason: "x".into() })
            .then_expect_error(SubscriptionError::NotOpened);
    }
}
