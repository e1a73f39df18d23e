//! The `RetentionPolicy` aggregate: how long a datasheet's records are kept once the purpose
//! they were collected for has ended. The service's scheduler erases the records past their
//! period, each erasure attributed to the policy, and records every run on the policy's stream.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::consent::parse_purpose;
use crate::datasheet::Datasheet;
use crate::pipeline::Stage;
use crate::values::{bounded_text, ValueError};

/// The longest period a policy can keep records for: a century.
pub const MAX_PERIOD_DAYS: u32 = 36_525;

/// When a record's retention period starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RetentionTrigger {
    /// The record was archived (and stays archived).
    Archived,
    /// An applicant reached one of these stages (and is still there).
    StageReached { stages: Vec<Stage> },
    /// An employee's employment ended (their `end_date`).
    EmploymentEnded,
    /// The record's basis for a purpose ended: it expired or was withdrawn.
    ConsentEnded { purpose: String },
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    defined: bool,
    removed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RetentionCommand {
    Define {
        datasheet: Datasheet,
        name: String,
        trigger: RetentionTrigger,
        period_days: u32,
        /// A purpose whose basis, while it holds, keeps the record (an applicant's talent pool
        /// consent); when it ends the period is counted from then at the earliest.
        unless_consent: Option<String>,
    },
    Remove,
    /// A run of the policy erased these records.
    RecordRun {
        erased: Vec<Uuid>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RetentionEvent {
    RetentionPolicyDefined {
        datasheet: Datasheet,
        name: String,
        trigger: RetentionTrigger,
        period_days: u32,
        unless_consent: Option<String>,
    },
    RetentionPolicyRemoved,
    RetentionApplied {
        erased: Vec<Uuid>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetentionError {
    #[error("the policy exists already")]
    AlreadyExists,
    #[error("no such retention policy")]
    NotFound,
    #[error("the policy was removed already")]
    AlreadyRemoved,
    #[error("the policy name {0}")]
    InvalidName(ValueError),
    #[error("{0}")]
    InvalidTrigger(&'static str),
    #[error("the period must be at most {MAX_PERIOD_DAYS} days")]
    PeriodTooLong,
    #[error("a purpose is lower-case letters, digits and `_`, starting with a letter, at most 64 characters")]
    InvalidPurpose,
    /// More than one of the above, each about its own field: told at once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<RetentionError>),
}

impl DomainEvent for RetentionEvent {
    fn event_type(&self) -> String {
        match self {
            RetentionEvent::RetentionPolicyDefined { .. } => "RetentionPolicyDefined",
            RetentionEvent::RetentionPolicyRemoved => "RetentionPolicyRemoved",
            RetentionEvent::RetentionApplied { .. } => "RetentionApplied",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

fn purpose(raw: String) -> Result<String, RetentionError> {
    parse_purpose(&raw).map_err(|_| RetentionError::InvalidPurpose)
}

/// The trigger, checked against the datasheet it is for.
fn check_trigger(
    datasheet: Datasheet,
    trigger: RetentionTrigger,
) -> Result<RetentionTrigger, RetentionError> {
    Ok(match trigger {
        RetentionTrigger::StageReached { mut stages } => {
            if datasheet != Datasheet::Applicants {
                return Err(RetentionError::InvalidTrigger(
                    "only job applicants have stages",
                ));
            }
            stages.sort_by_key(|s| s.as_str());
            stages.dedup();
            if stages.is_empty() {
                return Err(RetentionError::InvalidTrigger("name at least one stage"));
            }
            RetentionTrigger::StageReached { stages }
        }
        RetentionTrigger::EmploymentEnded if datasheet != Datasheet::Employees => {
            return Err(RetentionError::InvalidTrigger(
                "only employees have an employment that ends",
            ))
        }
        RetentionTrigger::ConsentEnded { purpose: raw } => RetentionTrigger::ConsentEnded {
            purpose: purpose(raw)?,
        },
        other => other,
    })
}

impl Aggregate for RetentionPolicy {
    const TYPE: &'static str = "retention_policy";
    type Command = RetentionCommand;
    type Event = RetentionEvent;
    type Error = RetentionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: RetentionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), RetentionError> {
        let event = match command {
            RetentionCommand::Define {
                datasheet,
                name,
                trigger,
                period_days,
                unless_consent,
            } => {
                if self.defined {
                    return Err(RetentionError::AlreadyExists);
                }
                // Every problem of the policy at once.
                let name = bounded_text(&name, 100).map_err(RetentionError::InvalidName);
                let period = if period_days > MAX_PERIOD_DAYS {
                    Err(RetentionError::PeriodTooLong)
                } else {
                    Ok(period_days)
                };
                let trigger = check_trigger(datasheet, trigger);
                let unless_consent = unless_consent.map(purpose).transpose();
                match (name, period, trigger, unless_consent) {
                    (Ok(name), Ok(period_days), Ok(trigger), Ok(unless_consent)) => {
                        RetentionEvent::RetentionPolicyDefined {
                            datasheet,
                            name,
                            trigger,
                            period_days,
                            unless_consent,
                        }
                    }
                    (name, period, trigger, unless_consent) => {
                        let problems: Vec<RetentionError> = [
                            name.err(),
                            period.err(),
                            trigger.err(),
                            unless_consent.err(),
                        ]
                        .into_iter()
                        .flatten()
                        .collect();
                        return Err(crate::values::told_at_once(
                            problems,
                            RetentionError::Several,
                        ));
                    }
                }
            }
            RetentionCommand::Remove => {
                if !self.defined {
                    return Err(RetentionError::NotFound);
                }
                if self.removed {
                    return Err(RetentionError::AlreadyRemoved);
                }
                RetentionEvent::RetentionPolicyRemoved
            }
            RetentionCommand::RecordRun { erased } => {
                if !self.defined {
                    return Err(RetentionError::NotFound);
                }
                RetentionEvent::RetentionApplied { erased }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: RetentionEvent) {
        match event {
            RetentionEvent::RetentionPolicyDefined { .. } => self.defined = true,
            RetentionEvent::RetentionPolicyRemoved => self.removed = true,
            RetentionEvent::RetentionApplied { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type PolicyTest = TestFramework<RetentionPolicy>;

    fn define(datasheet: Datasheet, trigger: RetentionTrigger) -> RetentionCommand {
        RetentionCommand::Define {
            datasheet,
            name: " Rejected applicants ".into(),
            trigger,
            period_days: 180,
            unless_consent: Some("talent_pool".into()),
        }
    }

    #[test]
    fn a_policy_is_defined_with_its_trigger_checked() {
        PolicyTest::with(())
            .given_no_previous_events()
            .when(define(
                Datasheet::Applicants,
                RetentionTrigger::StageReached {
                    stages: vec![Stage::Withdrawn, Stage::Rejected, Stage::Withdrawn],
                },
            ))
            .then_expect_events(vec![RetentionEvent::RetentionPolicyDefined {
                datasheet: Datasheet::Applicants,
                name: "Rejected applicants".into(),
                trigger: RetentionTrigger::StageReached {
                    stages: vec![Stage::Rejected, Stage::Withdrawn],
                },
                period_days: 180,
                unless_consent: Some("talent_pool".into()),
            }]);
    }

    #[test]
    fn triggers_that_do_not_fit_the_datasheet_are_refused() {
        PolicyTest::with(())
            .given_no_previous_events()
            .when(define(
                Datasheet::Contacts,
                RetentionTrigger::StageReached {
                    stages: vec![Stage::Rejected],
                },
            ))
            .then_expect_error(RetentionError::InvalidTrigger(
                "only job applicants have stages",
            ));
        PolicyTest::with(())
            .given_no_previous_events()
            .when(define(
                Datasheet::Contacts,
                RetentionTrigger::EmploymentEnded,
            ))
            .then_expect_error(RetentionError::InvalidTrigger(
                "only employees have an employment that ends",
            ));
        PolicyTest::with(())
            .given_no_previous_events()
            .when(RetentionCommand::Define {
                datasheet: Datasheet::Contacts,
                name: "Forever".into(),
                trigger: RetentionTrigger::Archived,
                period_days: MAX_PERIOD_DAYS + 1,
                unless_consent: None,
            })
            .then_expect_error(RetentionError::PeriodTooLong);
        PolicyTest::with(())
            .given_no_previous_events()
            .when(RetentionCommand::Remove)
            .then_expect_error(RetentionError::NotFound);
    }
}
