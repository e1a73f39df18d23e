//! The `Consents` aggregate: one data subject's consent register. For each purpose of
//! processing it holds the legal basis the processing rests on (one of the six of GDPR
//! Art. 6(1)), with an evidence note and an optional expiry, and records withdrawals. Its
//! stream has the id of the subject's record and is sealed with the subject's key, so erasing
//! the record shreds the register with it.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::datasheet::Datasheet;
use crate::values::{long_text, ValueError};

/// The purpose under which an applicant's `talent_pool_until` is kept as a consent.
pub const TALENT_POOL: &str = "talent_pool";
/// The longest purpose key.
pub const MAX_PURPOSE: usize = 64;
/// The longest evidence or withdrawal note.
pub const MAX_NOTE: usize = 1_000;

/// The lawful bases of GDPR Art. 6(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegalBasis {
    /// (a) the subject consented to the purpose.
    Consent,
    /// (b) needed for a contract with the subject, or steps before one.
    Contract,
    /// (c) needed to comply with a legal obligation.
    LegalObligation,
    /// (d) needed to protect someone's vital interests.
    VitalInterests,
    /// (e) a task in the public interest or official authority.
    PublicTask,
    /// (f) the organisation's or a third party's legitimate interests.
    LegitimateInterests,
}

impl LegalBasis {
    pub const ALL: [LegalBasis; 6] = [
        LegalBasis::Consent,
        LegalBasis::Contract,
        LegalBasis::LegalObligation,
        LegalBasis::VitalInterests,
        LegalBasis::PublicTask,
        LegalBasis::LegitimateInterests,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LegalBasis::Consent => "consent",
            LegalBasis::Contract => "contract",
            LegalBasis::LegalObligation => "legal_obligation",
            LegalBasis::VitalInterests => "vital_interests",
            LegalBasis::PublicTask => "public_task",
            LegalBasis::LegitimateInterests => "legitimate_interests",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == raw)
    }
}

/// A purpose key: lower-case letters, digits and `_`, starting with a letter, at most
/// [`MAX_PURPOSE`] characters (`newsletter`, `talent_pool`, `payroll`).
pub fn parse_purpose(raw: &str) -> Result<String, ConsentError> {
    let purpose = raw.trim();
    let valid = purpose.len() <= MAX_PURPOSE
        && purpose.starts_with(|c: char| c.is_ascii_lowercase())
        && purpose
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(purpose.to_owned())
    } else {
        Err(ConsentError::InvalidPurpose)
    }
}

/// One purpose as it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurposeState {
    pub legal_basis: LegalBasis,
    /// The last day the basis holds; `None`: until withdrawn.
    pub expires_on: Option<NaiveDate>,
    pub withdrawn: bool,
}

impl PurposeState {
    /// Whether processing for the purpose may go on, on `today`.
    pub fn holds_on(&self, today: NaiveDate) -> bool {
        !self.withdrawn && self.expires_on.is_none_or(|last| today <= last)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consents {
    datasheet: Option<Datasheet>,
    purposes: BTreeMap<String, PurposeState>,
    /// The subject was erased: what the register held can no longer be read.
    erased: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConsentCommand {
    /// Records (or renews, replacing the previous entry) the legal basis for a purpose.
    Give {
        datasheet: Datasheet,
        purpose: String,
        legal_basis: LegalBasis,
        evidence: Option<String>,
        expires_on: Option<NaiveDate>,
        today: NaiveDate,
    },
    /// The subject withdrew consent, or the basis for the purpose ended.
    Withdraw {
        purpose: String,
        note: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConsentEvent {
    ConsentGiven {
        datasheet: Datasheet,
        purpose: String,
        legal_basis: LegalBasis,
        evidence: Option<String>,
        expires_on: Option<NaiveDate>,
    },
    ConsentWithdrawn {
        datasheet: Datasheet,
        purpose: String,
        note: Option<String>,
    },
    /// What any event of the register reads as once the subject was erased.
    Redacted,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConsentError {
    #[error("a purpose is lower-case letters, digits and `_`, starting with a letter, at most 64 characters")]
    InvalidPurpose,
    #[error("the expiry must not be in the past")]
    ExpiryInPast,
    #[error("nothing is recorded for purpose `{0}`, or it was withdrawn already")]
    NotGiven(String),
    #[error("the subject was erased")]
    Erased,
    #[error("`{field}` {reason}")]
    InvalidNote {
        field: &'static str,
        reason: ValueError,
    },
}

impl DomainEvent for ConsentEvent {
    fn event_type(&self) -> String {
        match self {
            ConsentEvent::ConsentGiven { .. } => "ConsentGiven",
            ConsentEvent::ConsentWithdrawn { .. } => "ConsentWithdrawn",
            ConsentEvent::Redacted => "Redacted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

fn note(field: &'static str, raw: Option<String>) -> Result<Option<String>, ConsentError> {
    raw.map(|n| long_text(&n, MAX_NOTE))
        .transpose()
        .map_err(|reason| ConsentError::InvalidNote { field, reason })
}

impl Consents {
    pub fn purposes(&self) -> &BTreeMap<String, PurposeState> {
        &self.purposes
    }

    pub fn is_erased(&self) -> bool {
        self.erased
    }
}

impl Aggregate for Consents {
    const TYPE: &'static str = "consent";
    type Command = ConsentCommand;
    type Event = ConsentEvent;
    type Error = ConsentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ConsentCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ConsentError> {
        if self.erased {
            return Err(ConsentError::Erased);
        }
        let event = match command {
            ConsentCommand::Give {
                datasheet,
                purpose,
                legal_basis,
                evidence,
                expires_on,
                today,
            } => {
                let purpose = parse_purpose(&purpose)?;
                if expires_on.is_some_and(|last| last < today) {
                    return Err(ConsentError::ExpiryInPast);
                }
                ConsentEvent::ConsentGiven {
                    datasheet: self.datasheet.unwrap_or(datasheet),
                    purpose,
                    legal_basis,
                    evidence: note("evidence", evidence)?,
                    expires_on,
                }
            }
            ConsentCommand::Withdraw { purpose, note: raw } => {
                let purpose = parse_purpose(&purpose)?;
                let datasheet = match (self.datasheet, self.purposes.get(&purpose)) {
                    (Some(datasheet), Some(state)) if !state.withdrawn => datasheet,
                    _ => return Err(ConsentError::NotGiven(purpose)),
                };
                ConsentEvent::ConsentWithdrawn {
                    datasheet,
                    purpose,
                    note: note("note", raw)?,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ConsentEvent) {
        match event {
            ConsentEvent::ConsentGiven {
                datasheet,
                purpose,
                legal_basis,
                expires_on,
                ..
            } => {
                self.datasheet = Some(datasheet);
                self.purposes.insert(
                    purpose,
                    PurposeState {
                        legal_basis,
                        expires_on,
                        withdrawn: false,
                    },
                );
            }
            ConsentEvent::ConsentWithdrawn { purpose, .. } => {
                if let Some(state) = self.purposes.get_mut(&purpose) {
                    state.withdrawn = true;
                }
            }
            ConsentEvent::Redacted => {
                self.erased = true;
                self.purposes.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type ConsentTest = TestFramework<Consents>;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
    }

    fn give(purpose: &str, expires_on: Option<NaiveDate>) -> ConsentCommand {
        ConsentCommand::Give {
            datasheet: Datasheet::Contacts,
            purpose: purpose.into(),
            legal_basis: LegalBasis::Consent,
            evidence: Some("signed form".into()),
            expires_on,
            today: today(),
        }
    }

    fn given(purpose: &str) -> ConsentEvent {
        ConsentEvent::ConsentGiven {
            datasheet: Datasheet::Contacts,
            purpose: purpose.into(),
            legal_basis: LegalBasis::Consent,
            evidence: Some("signed form".into()),
            expires_on: None,
        }
    }

    #[test]
    fn consent_is_given_and_withdrawn() {
        ConsentTest::with(())
            .given_no_previous_events()
            .when(give("newsletter", None))
            .then_expect_events(vec![given("newsletter")]);
        ConsentTest::with(())
            .given(vec![given("newsletter")])
            .when(ConsentCommand::Withdraw {
                purpose: "newsletter".into(),
                note: None,
            })
            .then_expect_events(vec![ConsentEvent::ConsentWithdrawn {
                datasheet: Datasheet::Contacts,
                purpose: "newsletter".into(),
                note: None,
            }]);
    }

    #[test]
    fn bad_input_is_refused() {
        ConsentTest::with(())
            .given_no_previous_events()
            .when(give("News Letter", None))
            .then_expect_error(ConsentError::InvalidPurpose);
        ConsentTest::with(())
            .given_no_previous_events()
            .when(give("newsletter", today().pred_opt()))
            .then_expect_error(ConsentError::ExpiryInPast);
        ConsentTest::with(())
            .given_no_previous_events()
            .when(ConsentCommand::Withdraw {
                purpose: "newsletter".into(),
                note: None,
            })
            .then_expect_error(ConsentError::NotGiven("newsletter".into()));
        ConsentTest::with(())
            .given(vec![given("newsletter"), ConsentEvent::Redacted])
            .when(give("newsletter", None))
            .then_expect_error(ConsentError::Erased);
    }

    #[test]
    fn a_basis_holds_until_its_last_day() {
        let state = PurposeState {
            legal_basis: LegalBasis::Consent,
            expires_on: Some(today()),
            withdrawn: false,
        };
        assert!(state.holds_on(today()));
        assert!(!state.holds_on(today().succ_opt().unwrap()));
        assert!(!PurposeState {
            withdrawn: true,
            ..state
        }
        .holds_on(today()));
    }
}
