//! What is personal data, said once: which streams are each about one person (a data subject),
//! which of their events carry that person's values (the event store seals those with the
//! subject's own key), which fields an event names, and what an event still reads as once the
//! subject's key is destroyed. The event store's codec and the audit log ask here instead of
//! keeping lists of their own.

use cqrs_es::Aggregate;

use crate::{ConsentEvent, Consents, Record, RecordEvent, User, UserEvent};

/// Aggregate types whose streams are each about one data subject, named by the stream's id:
/// a record, a user, and a record's consent register.
pub const SUBJECT_TYPES: [&str; 3] = [Record::TYPE, User::TYPE, Consents::TYPE];

/// Record events that carry no personal value (ids, flags, the erasure itself): they stay in
/// clear, so they read the same after an erasure.
pub const CLEAR_RECORD_EVENTS: [&str; 7] = [
    "ScheduledChangeCancelled",
    "RecordArchived",
    "RecordRestored",
    "ApplicantHired",
    "RecordErased",
    "RecordRestricted",
    "RestrictionLifted",
];

/// User events that carry nothing of the person: changes of a flag, and the erasure itself.
pub const CLEAR_USER_EVENTS: [&str; 11] = [
    "AdministratorGranted",
    "AdministratorRevoked",
    "UserDeactivated",
    "UserReactivated",
    "LoginUnlocked",
    "TwoFactorEnabled",
    "TwoFactorDisabled",
    "TwoFactorReset",
    "RecoveryCodesRegenerated",
    "UserErased",
    "Redacted",
];

/// Consent events that carry nothing of the person (only what an erased one reads as).
pub const CLEAR_CONSENT_EVENTS: [&str; 1] = ["Redacted"];

/// What an event of an erased subject reads as, its values being unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasedReading {
    /// The same event, every value under this key of its payload replaced by the erased
    /// marker (the field names stay known).
    ValuesMarked(&'static str),
    /// `Redacted`: it happened, nothing more is known.
    Redacted,
}

/// Whether streams of `aggregate_type` are each about one data subject.
pub fn is_subject(aggregate_type: &str) -> bool {
    SUBJECT_TYPES.contains(&aggregate_type)
}

/// Whether an event of this type carries personal values, and so is sealed with its subject's
/// key. Events of streams that are not about one person never are.
pub fn carries_personal_values(aggregate_type: &str, event_type: &str) -> bool {
    let clear: &[&str] = match aggregate_type {
        Record::TYPE => &CLEAR_RECORD_EVENTS,
        User::TYPE => &CLEAR_USER_EVENTS,
        Consents::TYPE => &CLEAR_CONSENT_EVENTS,
        _ => return false,
    };
    !clear.contains(&event_type)
}

/// What a sealed event reads as once its subject's key is gone; `None` for an event that
/// cannot be read without its values.
pub fn erased_reading(aggregate_type: &str, event_type: &str) -> Option<ErasedReading> {
    match (aggregate_type, event_type) {
        (Record::TYPE, "RecordCreated") => Some(ErasedReading::ValuesMarked("fields")),
        (Record::TYPE, "RecordUpdated") => Some(ErasedReading::ValuesMarked("changes")),
        (Record::TYPE, _) => None,
        (User::TYPE | Consents::TYPE, _) => Some(ErasedReading::Redacted),
        _ => None,
    }
}

fn names<'a>(fields: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    fields.into_iter().map(str::to_owned).collect()
}

impl RecordEvent {
    /// Whether the event carries the subject's values (see [`CLEAR_RECORD_EVENTS`]).
    pub fn carries_personal_values(&self) -> bool {
        match self {
            RecordEvent::RecordCreated { .. } | RecordEvent::RecordUpdated { .. } => true,
            RecordEvent::RecordArchived { .. }
            | RecordEvent::RecordRestored { .. }
            | RecordEvent::ApplicantHired { .. }
            | RecordEvent::RecordErased { .. }
            | RecordEvent::RecordRestricted { .. }
            | RecordEvent::RestrictionLifted { .. }
            | RecordEvent::ScheduledChangeCancelled { .. } => false,
        }
    }

    /// The fields the event sets or changes, by their stable names (never a value).
    pub fn field_names(&self) -> Vec<String> {
        match self {
            RecordEvent::RecordCreated {
                fields, hired_from, ..
            } => {
                let mut names: Vec<String> = fields.keys().cloned().collect();
                if hired_from.is_some() {
                    names.push("hired_from".into());
                }
                names
            }
            RecordEvent::RecordUpdated { changes, .. } => changes.keys().cloned().collect(),
            RecordEvent::RecordArchived { .. } | RecordEvent::RecordRestored { .. } => {
                names(["archived"])
            }
            RecordEvent::RecordRestricted { .. } | RecordEvent::RestrictionLifted { .. } => {
                names(["restricted"])
            }
            RecordEvent::ApplicantHired { .. } => names(["stage", "hired_as"]),
            RecordEvent::ScheduledChangeCancelled { .. } => names(["pending_changes"]),
            RecordEvent::RecordErased { fields, .. } => fields.clone(),
        }
    }
}

impl UserEvent {
    /// Whether the event carries something of the person (see [`CLEAR_USER_EVENTS`]): their
    /// name and email, password hashes, roles, and every login's origin and time.
    pub fn carries_personal_values(&self) -> bool {
        match self {
            UserEvent::UserRegistered { .. }
            | UserEvent::UserRenamed { .. }
            | UserEvent::EmailChanged { .. }
            | UserEvent::RolesAssigned { .. }
            | UserEvent::PasswordReset { .. }
            | UserEvent::PasswordChanged { .. }
            | UserEvent::LoginSucceeded { .. }
            | UserEvent::LoginFailed { .. }
            | UserEvent::LoginLocked { .. }
            | UserEvent::LoggedOut { .. } => true,
            UserEvent::AdministratorGranted
            | UserEvent::AdministratorRevoked
            | UserEvent::UserDeactivated
            | UserEvent::UserReactivated
            | UserEvent::LoginUnlocked
            | UserEvent::TwoFactorEnabled
            | UserEvent::TwoFactorDisabled
            | UserEvent::TwoFactorReset
            | UserEvent::RecoveryCodesRegenerated
            | UserEvent::UserErased
            | UserEvent::Redacted => false,
        }
    }

    /// The user's fields the event changes (never a value; logins change none).
    pub fn field_names(&self) -> Vec<String> {
        match self {
            UserEvent::UserRegistered { .. } => names(["name", "email", "administrator", "roles"]),
            UserEvent::UserRenamed { .. } => names(["name"]),
            UserEvent::EmailChanged { .. } => names(["email"]),
            UserEvent::RolesAssigned { .. } => names(["roles"]),
            UserEvent::AdministratorGranted | UserEvent::AdministratorRevoked => {
                names(["administrator"])
            }
            UserEvent::UserDeactivated | UserEvent::UserReactivated => names(["active"]),
            UserEvent::PasswordReset { .. } | UserEvent::PasswordChanged { .. } => {
                names(["password"])
            }
            UserEvent::LoginLocked { .. } | UserEvent::LoginUnlocked => names(["locked"]),
            UserEvent::TwoFactorEnabled
            | UserEvent::TwoFactorDisabled
            | UserEvent::TwoFactorReset => names(["two_factor"]),
            UserEvent::RecoveryCodesRegenerated => names(["recovery_codes"]),
            UserEvent::UserErased => names(["name", "email"]),
            UserEvent::LoginSucceeded { .. }
            | UserEvent::LoginFailed { .. }
            | UserEvent::LoggedOut { .. }
            | UserEvent::Redacted => Vec::new(),
        }
    }
}

impl ConsentEvent {
    /// Whether the event carries something of the person: every change of their register
    /// does.
    pub fn carries_personal_values(&self) -> bool {
        match self {
            ConsentEvent::ConsentGiven { .. } | ConsentEvent::ConsentWithdrawn { .. } => true,
            ConsentEvent::Redacted => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Datasheet, ErasureGround, LegalBasis, LoginFailure, LoginOrigin, RestrictionReason,
    };
    use chrono::Utc;
    use cqrs_es::DomainEvent;
    use uuid::Uuid;

    fn record_events() -> Vec<RecordEvent> {
        let datasheet = Datasheet::Employees;
        vec![
            RecordEvent::RecordCreated {
                datasheet,
                fields: Default::default(),
                hired_from: None,
                effective_from: None,
            },
            RecordEvent::RecordUpdated {
                datasheet,
                changes: Default::default(),
                effective_from: None,
            },
            RecordEvent::RecordArchived { datasheet },
            RecordEvent::RecordRestored { datasheet },
            RecordEvent::ApplicantHired {
                datasheet,
                employee_id: Uuid::nil(),
                effective_from: None,
            },
            RecordEvent::RecordRestricted {
                datasheet,
                reason: RestrictionReason::LegalClaims,
            },
            RecordEvent::RestrictionLifted { datasheet },
            RecordEvent::ScheduledChangeCancelled {
                datasheet,
                version: 2,
            },
            RecordEvent::RecordErased {
                datasheet,
                fields: Vec::new(),
                ground: ErasureGround::Objection,
                note: None,
            },
        ]
    }

    fn user_events() -> Vec<UserEvent> {
        let origin = LoginOrigin::new(None, None);
        vec![
            UserEvent::UserRegistered {
                email: crate::Email::parse("a@b.io").unwrap(),
                name: crate::PersonName::parse("A").unwrap(),
                password_hash: String::new(),
                administrator: false,
                roles: Default::default(),
                must_change_password: false,
            },
            UserEvent::UserRenamed {
                name: crate::PersonName::parse("B").unwrap(),
            },
            UserEvent::EmailChanged {
                email: crate::Email::parse("b@b.io").unwrap(),
            },
            UserEvent::RolesAssigned {
                roles: Default::default(),
            },
            UserEvent::AdministratorGranted,
            UserEvent::AdministratorRevoked,
            UserEvent::UserDeactivated,
            UserEvent::UserReactivated,
            UserEvent::PasswordReset {
                password_hash: String::new(),
            },
            UserEvent::PasswordChanged {
                password_hash: String::new(),
            },
            UserEvent::LoginSucceeded {
                session_id: Uuid::nil(),
                origin: origin.clone(),
                second_factor: None,
            },
            UserEvent::LoginFailed {
                reason: LoginFailure::WrongPassword,
                origin,
                at: Utc::now(),
            },
            UserEvent::LoginLocked { until: Utc::now() },
            UserEvent::LoginUnlocked,
            UserEvent::LoggedOut {
                session_id: Uuid::nil(),
            },
            UserEvent::TwoFactorEnabled,
            UserEvent::TwoFactorDisabled,
            UserEvent::TwoFactorReset,
            UserEvent::RecoveryCodesRegenerated,
            UserEvent::UserErased,
            UserEvent::Redacted,
        ]
    }

    fn consent_events() -> Vec<ConsentEvent> {
        vec![
            ConsentEvent::ConsentGiven {
                datasheet: Datasheet::Contacts,
                purpose: "newsletter".into(),
                legal_basis: LegalBasis::Consent,
                evidence: None,
                expires_on: None,
            },
            ConsentEvent::ConsentWithdrawn {
                datasheet: Datasheet::Contacts,
                purpose: "newsletter".into(),
                note: None,
            },
            ConsentEvent::Redacted,
        ]
    }

    #[test]
    fn the_type_lists_say_what_each_event_says_of_itself() {
        for event in record_events() {
            assert_eq!(
                carries_personal_values(Record::TYPE, &event.event_type()),
                event.carries_personal_values(),
                "{}",
                event.event_type()
            );
        }
        for event in user_events() {
            assert_eq!(
                carries_personal_values(User::TYPE, &event.event_type()),
                event.carries_personal_values(),
                "{}",
                event.event_type()
            );
        }
        for event in consent_events() {
            assert_eq!(
                carries_personal_values(Consents::TYPE, &event.event_type()),
                event.carries_personal_values(),
                "{}",
                event.event_type()
            );
        }
        assert!(!carries_personal_values("role", "RoleCreated"));
    }

    #[test]
    fn every_personal_event_has_a_reading_after_erasure() {
        for event in record_events()
            .into_iter()
            .filter(RecordEvent::carries_personal_values)
        {
            assert!(erased_reading(Record::TYPE, &event.event_type()).is_some());
        }
        assert_eq!(
            erased_reading(User::TYPE, "UserRenamed"),
            Some(ErasedReading::Redacted)
        );
        assert_eq!(
            erased_reading(Consents::TYPE, "ConsentGiven"),
            Some(ErasedReading::Redacted)
        );
        assert!(is_subject(Record::TYPE) && !is_subject("role"));
    }

    #[test]
    fn field_names_never_carry_values() {
        let created = RecordEvent::RecordCreated {
            datasheet: Datasheet::Employees,
            fields: [("first_name".to_owned(), serde_json::json!("Ada"))].into(),
            hired_from: Some(Uuid::nil()),
            effective_from: None,
        };
        assert_eq!(created.field_names(), ["first_name", "hired_from"]);
        assert_eq!(
            user_events()[0].field_names(),
            ["name", "email", "administrator", "roles"]
        );
    }
}
