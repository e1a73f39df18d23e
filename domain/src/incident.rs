//! The `Incident` aggregate: one entry of the breach register (GDPR Art. 33). It records when
//! a personal-data breach was detected, what it concerns — datasheets, a time window and,
//! when known, the accounts or tokens through which data was reached — and when the
//! supervisory authority and the affected people were notified. The authority must be told
//! within 72 hours of detection; the service computes the affected subjects from this scope.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::datasheet::Datasheet;
use crate::values::{bounded_text, long_text, ValueError};

/// How long after detection the authority must be notified (Art. 33(1)).
pub const NOTIFICATION_DEADLINE_HOURS: i64 = 72;
/// The longest description.
pub const MAX_DESCRIPTION: usize = 4_000;

/// What a breach concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentScope {
    pub datasheets: Vec<Datasheet>,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    /// Users or API tokens through which data was reached; empty: the datasheets as a whole.
    pub actors: Vec<Uuid>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    detected_at: Option<DateTime<Utc>>,
    authority_notified: bool,
    subjects_notified: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IncidentCommand {
    Record {
        detected_at: DateTime<Utc>,
        description: String,
        scope: IncidentScope,
        now: DateTime<Utc>,
    },
    NotifyAuthority {
        at: DateTime<Utc>,
        /// The authority's case number or similar.
        reference: Option<String>,
        now: DateTime<Utc>,
    },
    NotifySubjects {
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IncidentEvent {
    IncidentRecorded {
        detected_at: DateTime<Utc>,
        description: String,
        scope: IncidentScope,
    },
    AuthorityNotified {
        at: DateTime<Utc>,
        reference: Option<String>,
    },
    SubjectsNotified {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IncidentError {
    #[error("the incident is recorded already")]
    AlreadyExists,
    #[error("no such incident")]
    NotFound,
    #[error("`{field}` {reason}")]
    Invalid {
        field: &'static str,
        reason: ValueError,
    },
    #[error("`{0}` must not be in the future")]
    InFuture(&'static str),
    #[error("name at least one datasheet")]
    NoDatasheet,
    #[error("the window must not end before it starts")]
    WindowReversed,
    #[error("a notification cannot come before the breach was detected")]
    BeforeDetection,
    #[error("this notification is recorded already")]
    AlreadyNotified,
    /// More than one of the above, each about its own field: told at once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<IncidentError>),
}

impl DomainEvent for IncidentEvent {
    fn event_type(&self) -> String {
        match self {
            IncidentEvent::IncidentRecorded { .. } => "IncidentRecorded",
            IncidentEvent::AuthorityNotified { .. } => "AuthorityNotified",
            IncidentEvent::SubjectsNotified { .. } => "SubjectsNotified",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Incident {
    /// When the authority must have been notified.
    pub fn deadline(detected_at: DateTime<Utc>) -> DateTime<Utc> {
        detected_at + Duration::hours(NOTIFICATION_DEADLINE_HOURS)
    }

    /// A notification time: not before detection, not in the future.
    fn check_notification(
        &self,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), IncidentError> {
        let detected_at = self.detected_at.ok_or(IncidentError::NotFound)?;
        if at > now {
            return Err(IncidentError::InFuture("at"));
        }
        if at < detected_at {
            return Err(IncidentError::BeforeDetection);
        }
        Ok(())
    }
}

impl Aggregate for Incident {
    const TYPE: &'static str = "incident";
    type Command = IncidentCommand;
    type Event = IncidentEvent;
    type Error = IncidentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: IncidentCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), IncidentError> {
        let event = match command {
            IncidentCommand::Record {
                detected_at,
                description,
                mut scope,
                now,
            } => {
                if self.detected_at.is_some() {
                    return Err(IncidentError::AlreadyExists);
                }
                // Every problem of the report at once.
                let mut problems = Vec::new();
                let description = long_text(&description, MAX_DESCRIPTION)
                    .map_err(|reason| {
                        problems.push(IncidentError::Invalid {
                            field: "description",
                            reason,
                        })
                    })
                    .ok();
                if detected_at > now {
                    problems.push(IncidentError::InFuture("detectedAt"));
                }
                scope.datasheets.sort();
                scope.datasheets.dedup();
                if scope.datasheets.is_empty() {
                    problems.push(IncidentError::NoDatasheet);
                }
                if scope.window_to < scope.window_from {
                    problems.push(IncidentError::WindowReversed);
                }
                let description = match description {
                    Some(description) if problems.is_empty() => description,
                    _ => {
                        return Err(crate::values::told_at_once(
                            problems,
                            IncidentError::Several,
                        ))
                    }
                };
                scope.actors.sort();
                scope.actors.dedup();
                IncidentEvent::IncidentRecorded {
                    detected_at,
                    description,
                    scope,
                }
            }
            IncidentCommand::NotifyAuthority { at, reference, now } => {
                self.check_notification(at, now)?;
                if self.authority_notified {
                    return Err(IncidentError::AlreadyNotified);
                }
                let reference = reference
                    .map(|r| bounded_text(&r, 200))
                    .transpose()
                    .map_err(|reason| IncidentError::Invalid {
                        field: "reference",
                        reason,
                    })?;
                IncidentEvent::AuthorityNotified { at, reference }
            }
            IncidentCommand::NotifySubjects { at, now } => {
                self.check_notification(at, now)?;
                if self.subjects_notified {
                    return Err(IncidentError::AlreadyNotified);
                }
                IncidentEvent::SubjectsNotified { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: IncidentEvent) {
        match event {
            IncidentEvent::IncidentRecorded { detected_at, .. } => {
                self.detected_at = Some(detected_at)
            }
            IncidentEvent::AuthorityNotified { .. } => self.authority_notified = true,
            IncidentEvent::SubjectsNotified { .. } => self.subjects_notified = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type IncidentTest = TestFramework<Incident>;

    fn now() -> DateTime<Utc> {
        "2026-11-21T12:00:00Z".parse().unwrap()
    }

    fn scope() -> IncidentScope {
        IncidentScope {
            datasheets: vec![Datasheet::Contacts, Datasheet::Contacts],
            window_from: now() - Duration::days(2),
            window_to: now() - Duration::days(1),
            actors: vec![],
        }
    }

    fn recorded() -> IncidentEvent {
        IncidentEvent::IncidentRecorded {
            detected_at: now() - Duration::hours(1),
            description: "Laptop stolen".into(),
            scope: IncidentScope {
                datasheets: vec![Datasheet::Contacts],
                ..scope()
            },
        }
    }

    #[test]
    fn an_incident_is_recorded_and_notified() {
        IncidentTest::with(())
            .given_no_previous_events()
            .when(IncidentCommand::Record {
                detected_at: now() - Duration::hours(1),
                description: " Laptop stolen ".into(),
                scope: scope(),
                now: now(),
            })
            .then_expect_events(vec![recorded()]);
        IncidentTest::with(())
            .given(vec![recorded()])
            .when(IncidentCommand::NotifyAuthority {
                at: now(),
                reference: Some("DPA-1".into()),
                now: now(),
            })
            .then_expect_events(vec![IncidentEvent::AuthorityNotified {
                at: now(),
                reference: Some("DPA-1".into()),
            }]);
        assert_eq!(
            Incident::deadline(now()),
            now() + Duration::hours(NOTIFICATION_DEADLINE_HOURS)
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let record = |detected_at, scope| IncidentCommand::Record {
            detected_at,
            description: "x".into(),
            scope,
            now: now(),
        };
        IncidentTest::with(())
            .given_no_previous_events()
            .when(record(now() + Duration::hours(1), scope()))
            .then_expect_error(IncidentError::InFuture("detectedAt"));
        IncidentTest::with(())
            .given_no_previous_events()
            .when(record(
                now(),
                IncidentScope {
                    window_to: now() - Duration::days(3),
                    ..scope()
                },
            ))
            .then_expect_error(IncidentError::WindowReversed);
        IncidentTest::with(())
            .given_no_previous_events()
            .when(record(
                now(),
                IncidentScope {
                    datasheets: vec![],
                    ..scope()
                },
            ))
            .then_expect_error(IncidentError::NoDatasheet);
        IncidentTest::with(())
            .given(vec![recorded()])
            .when(IncidentCommand::NotifySubjects {
                at: now() - Duration::hours(2),
                now: now(),
            })
            .then_expect_error(IncidentError::BeforeDetection);
        IncidentTest::with(())
            .given_no_previous_events()
            .when(IncidentCommand::NotifySubjects {
                at: now(),
                now: now(),
            })
            .then_expect_error(IncidentError::NotFound);
    }
}
