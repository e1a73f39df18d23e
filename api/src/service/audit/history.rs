//! History: a record's events replayed from the event store (so they pass through the codec),
//! with the field-level change each one made.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use custos_domain::{EventMetadata, Record, RecordEvent, Role, RoleEvent, User, UserEvent};
use serde_json::Value;
use uuid::Uuid;

use crate::error::api_field_name;
use crate::infra::event_store::log::EventLog;

/// One field's value before and after an event; `None` is "no value".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldChange {
    pub(crate) field: String,
    pub(crate) before: Option<String>,
    pub(crate) after: Option<String>,
}

/// One event of a record's history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryEntry {
    pub(crate) sequence: i64,
    pub(crate) event_type: String,
    pub(crate) recorded_at: DateTime<Utc>,
    /// The day a change of values takes effect (`None` for other events).
    pub(crate) effective_from: Option<NaiveDate>,
    pub(crate) metadata: Option<EventMetadata>,
    pub(crate) changes: Vec<FieldChange>,
}

/// How an erased value shows in history.
pub(crate) const ERASED: &str = "[erased]";

pub(crate) fn display(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        value if custos_domain::record::is_erased_marker(value) => Some(ERASED.to_owned()),
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// An erasure's ground as the API names it (`CONSENT_WITHDRAWN`...).
fn ground_name(ground: custos_domain::ErasureGround) -> String {
    serde_json::to_value(ground)
        .ok()
        .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
        .unwrap_or_default()
}

fn flag(value: bool) -> Option<String> {
    Some(value.to_string())
}

/// The day a record event that changes values takes effect: its own, or (written before
/// changes were effective-dated) the day it was recorded.
pub(crate) fn effective_day(event: &RecordEvent, recorded_at: DateTime<Utc>) -> Option<NaiveDate> {
    match event {
        RecordEvent::RecordCreated { effective_from, .. }
        | RecordEvent::RecordUpdated { effective_from, .. }
        | RecordEvent::ApplicantHired { effective_from, .. } => {
            Some(effective_from.unwrap_or(recorded_at.date_naive()))
        }
        _ => None,
    }
}

/// The change each event makes to `state`, which it then applies: each value before it is the
/// one in force on the day the change takes effect (`day`).
fn changes(state: &mut Record, event: RecordEvent, day: Option<NaiveDate>) -> Vec<FieldChange> {
    // Borrowed from the state unless the day is before its last change (then folded).
    let before = day.map(|day| state.fields_on(day));
    let before_value = |name: &str| before.as_ref().and_then(|fields| fields.get(name).cloned());
    let change = |field: &str, before: Option<String>, after: Option<String>| FieldChange {
        field: api_field_name(field),
        before,
        after,
    };
    let changes = match &event {
        RecordEvent::RecordCreated {
            fields, hired_from, ..
        } => fields
            .iter()
            .map(|(name, value)| change(name, None, display(Some(value))))
            .chain(hired_from.map(|from| change("hired_from", None, Some(from.to_string()))))
            .collect(),
        RecordEvent::RecordUpdated { changes, .. } => changes
            .iter()
            .map(|(name, value)| {
                change(
                    name,
                    display(before_value(name).as_ref()),
                    display(Some(value)),
                )
            })
            .collect(),
        RecordEvent::RecordArchived { .. } => vec![change("archived", flag(false), flag(true))],
        RecordEvent::RecordRestored { .. } => vec![change("archived", flag(true), flag(false))],
        RecordEvent::RecordRestricted { .. } => vec![change("restricted", flag(false), flag(true))],
        RecordEvent::RestrictionLifted { .. } => {
            vec![change("restricted", flag(true), flag(false))]
        }
        // The fields that held values, then why and with what note (GDPR Art. 17(1) ground,
        // as `eraseRecord` took it), as the pseudo-fields `erasureGround` and `erasureNote`.
        RecordEvent::RecordErased {
            fields,
            ground,
            note,
            ..
        } => fields
            .iter()
            .map(|name| change(name, Some(ERASED.to_owned()), None))
            .chain([change("erasure_ground", None, Some(ground_name(*ground)))])
            .chain(
                note.iter()
                    .map(|n| change("erasure_note", None, Some(n.clone()))),
            )
            .collect(),
        // The cancelled change, as the pseudo-field `scheduledChange`.
        RecordEvent::ScheduledChangeCancelled { version, .. } => {
            let day = state.change_day(*version);
            vec![change(
                "scheduled_change",
                Some(match day {
                    Some(day) => format!("version {version}, from {day}"),
                    None => format!("version {version}"),
                }),
                None,
            )]
        }
        RecordEvent::ApplicantHired { employee_id, .. } => vec![
            change(
                "stage",
                display(before_value("stage").as_ref()),
                Some(custos_domain::Stage::Hired.as_str().to_owned()),
            ),
            change("hired_as", None, Some(employee_id.to_string())),
        ],
    };
    drop(before);
    state.apply(event);
    changes
}

/// Every event of the record `id`, oldest first. Empty when the tenant has no such record.
pub(crate) async fn record_history(log: &EventLog, id: Uuid) -> anyhow::Result<Vec<HistoryEntry>> {
    let stored = log.stream(Record::TYPE, &id.to_string()).await?;
    let mut state = Record::default();
    stored
        .into_iter()
        .map(|stored| {
            let metadata = EventMetadata::from_map(&stored.metadata());
            let event: RecordEvent = serde_json::from_value(stored.event.payload)?;
            let effective_from = effective_day(&event, stored.recorded_at);
            Ok(HistoryEntry {
                sequence: i64::try_from(stored.event.sequence)?,
                event_type: stored.event.event_type,
                recorded_at: stored.recorded_at,
                effective_from,
                metadata,
                changes: changes(&mut state, event, effective_from),
            })
        })
        .collect()
}

/// What a user's history tracks, to show each change's before and after.
#[derive(Default)]
struct UserState {
    name: Option<String>,
    email: Option<String>,
    administrator: bool,
    roles: Option<String>,
    active: bool,
    two_factor: bool,
    locked_until: Option<String>,
}

fn ids(roles: &std::collections::BTreeSet<Uuid>) -> Option<String> {
    Some(
        roles
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The change a user event makes (never a password hash, never a login's origin: the login
/// history shows those to whom it may).
fn user_changes(state: &mut UserState, event: &UserEvent) -> Vec<FieldChange> {
    let change = |field: &str, before: Option<String>, after: Option<String>| FieldChange {
        field: field.to_owned(),
        before,
        after,
    };
    let changes = match event {
        UserEvent::UserRegistered {
            email,
            name,
            administrator,
            roles,
            must_change_password,
            ..
        } => {
            state.name = Some(name.as_str().to_owned());
            state.email = Some(email.as_str().to_owned());
            state.administrator = *administrator;
            state.roles = ids(roles);
            state.active = true;
            vec![
                change("name", None, state.name.clone()),
                change("email", None, state.email.clone()),
                change("administrator", None, flag(*administrator)),
                change("roleIds", None, state.roles.clone()),
                change("mustChangePassword", None, flag(*must_change_password)),
            ]
        }
        UserEvent::UserRenamed { name } => {
            let after = Some(name.as_str().to_owned());
            vec![change(
                "name",
                std::mem::replace(&mut state.name, after.clone()),
                after,
            )]
        }
        UserEvent::EmailChanged { email } => {
            let after = Some(email.as_str().to_owned());
            vec![change(
                "email",
                std::mem::replace(&mut state.email, after.clone()),
                after,
            )]
        }
        UserEvent::RolesAssigned { roles } => {
            let after = ids(roles);
            vec![change(
                "roleIds",
                std::mem::replace(&mut state.roles, after.clone()),
                after,
            )]
        }
        UserEvent::AdministratorGranted | UserEvent::AdministratorRevoked => {
            let after = matches!(event, UserEvent::AdministratorGranted);
            let before = std::mem::replace(&mut state.administrator, after);
            vec![change("administrator", flag(before), flag(after))]
        }
        UserEvent::UserDeactivated | UserEvent::UserReactivated => {
            let after = matches!(event, UserEvent::UserReactivated);
            let before = std::mem::replace(&mut state.active, after);
            vec![change("active", flag(before), flag(after))]
        }
        UserEvent::PasswordReset { .. } | UserEvent::PasswordChanged { .. } => {
            vec![change("password", None, Some("[changed]".to_owned()))]
        }
        UserEvent::LoginLocked { until } => {
            let after = Some(until.to_rfc3339());
            vec![change(
                "lockedUntil",
                std::mem::replace(&mut state.locked_until, after.clone()),
                after,
            )]
        }
        UserEvent::LoginUnlocked => {
            vec![change("lockedUntil", state.locked_until.take(), None)]
        }
        UserEvent::TwoFactorEnabled | UserEvent::TwoFactorDisabled | UserEvent::TwoFactorReset => {
            let after = matches!(event, UserEvent::TwoFactorEnabled);
            let before = std::mem::replace(&mut state.two_factor, after);
            vec![change("twoFactor", flag(before), flag(after))]
        }
        UserEvent::RecoveryCodesRegenerated => {
            vec![change(
                "recoveryCodes",
                None,
                Some("[regenerated]".to_owned()),
            )]
        }
        UserEvent::UserErased => [("name", state.name.take()), ("email", state.email.take())]
            .into_iter()
            .filter(|(_, before)| before.is_some())
            .map(|(field, _)| change(field, Some(ERASED.to_owned()), None))
            .collect(),
        UserEvent::LoginSucceeded { .. }
        | UserEvent::LoginFailed { .. }
        | UserEvent::LoggedOut { .. }
        | UserEvent::Redacted => Vec::new(),
    };
    changes
}

/// Every event of the user `id`, oldest first. Empty when the tenant has no such user.
pub(crate) async fn user_history(log: &EventLog, id: Uuid) -> anyhow::Result<Vec<HistoryEntry>> {
    let stored = log.stream(User::TYPE, &id.to_string()).await?;
    let mut state = UserState::default();
    stored
        .into_iter()
        .map(|stored| {
            let metadata = EventMetadata::from_map(&stored.metadata());
            let event: UserEvent = serde_json::from_value(stored.event.payload)?;
            Ok(HistoryEntry {
                sequence: i64::try_from(stored.event.sequence)?,
                event_type: stored.event.event_type,
                recorded_at: stored.recorded_at,
                effective_from: None,
                metadata,
                changes: user_changes(&mut state, &event),
            })
        })
        .collect()
}

fn grant_text(grant: &custos_domain::Grant) -> String {
    format!("{}:{}", grant.datasheet.as_str(), grant.permission.as_str())
}

/// Every event of the role `id`, oldest first. Empty when the tenant has no such role.
pub(crate) async fn role_history(log: &EventLog, id: Uuid) -> anyhow::Result<Vec<HistoryEntry>> {
    let stored = log.stream(Role::TYPE, &id.to_string()).await?;
    let mut name: Option<String> = None;
    let change = |field: &str, before: Option<String>, after: Option<String>| FieldChange {
        field: field.to_owned(),
        before,
        after,
    };
    stored
        .into_iter()
        .map(|stored| {
            let metadata = EventMetadata::from_map(&stored.metadata());
            let event: RoleEvent = serde_json::from_value(stored.event.payload)?;
            let changes = match &event {
                RoleEvent::RoleCreated {
                    name: created,
                    grants,
                } => {
                    name = Some(created.as_str().to_owned());
                    let mut changes = vec![change("name", None, name.clone())];
                    changes.extend(
                        grants
                            .iter()
                            .map(|g| change("permission", None, Some(grant_text(g)))),
                    );
                    changes
                }
                RoleEvent::RoleRenamed { name: renamed } => {
                    let after = Some(renamed.as_str().to_owned());
                    vec![change(
                        "name",
                        std::mem::replace(&mut name, after.clone()),
                        after,
                    )]
                }
                RoleEvent::PermissionGranted { grant } => {
                    vec![change("permission", None, Some(grant_text(grant)))]
                }
                RoleEvent::PermissionRevoked { grant } => {
                    vec![change("permission", Some(grant_text(grant)), None)]
                }
                RoleEvent::RoleDeleted => vec![change("deleted", flag(false), flag(true))],
            };
            Ok(HistoryEntry {
                sequence: i64::try_from(stored.event.sequence)?,
                event_type: stored.event.event_type,
                recorded_at: stored.recorded_at,
                effective_from: None,
                metadata,
                changes,
            })
        })
        .collect()
}

/// A record's events read back to replay its states: each with the time it was recorded,
/// oldest first. Erased values stay erased in every state (their key is gone).
///
/// A state is folded once from the events as it is asked for: a record's state holds its
/// whole timeline, so keeping every version's state would cost the square of its events.
pub(crate) struct RecordStream(Vec<(DateTime<Utc>, RecordEvent)>);

impl RecordStream {
    pub(crate) async fn load(log: &EventLog, id: Uuid) -> anyhow::Result<Self> {
        let stored = log.stream(Record::TYPE, &id.to_string()).await?;
        let events = stored
            .into_iter()
            .map(|stored| {
                Ok((
                    stored.recorded_at,
                    serde_json::from_value(stored.event.payload)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self(events))
    }

    /// How many events (versions) the record has.
    pub(crate) fn versions(&self) -> usize {
        self.0.len()
    }

    /// The record as it stood after the last of its events recorded at or before `moment`,
    /// with when that event was recorded; `None` before its first.
    pub(crate) fn recorded_by(self, moment: DateTime<Utc>) -> Option<(DateTime<Utc>, Record)> {
        let mut state = Record::default();
        let mut changed_at = None;
        for (recorded_at, event) in self.0 {
            if recorded_at > moment {
                break;
            }
            state.apply(event);
            changed_at = Some(recorded_at);
        }
        changed_at.map(|at| (at, state))
    }

    /// The record as it stood at two versions (0: before it existed), `earlier` first; a
    /// version past the last is the last.
    pub(crate) fn at_versions(self, earlier: usize, later: usize) -> (Record, Record) {
        let mut state = Record::default();
        let mut before = (earlier == 0).then(Record::default);
        for (version, (_, event)) in (1..=later).zip(self.0) {
            state.apply(event);
            if version == earlier {
                before = Some(state.clone());
            }
        }
        (before.unwrap_or_else(|| state.clone()), state)
    }
}

/// Every field of a state that has a value on `day` (`None`: with every change it holds
/// applied), by API name, with the record's flags.
pub(crate) fn state_fields(
    state: &Record,
    day: Option<NaiveDate>,
) -> Vec<(String, Option<String>)> {
    let values = match day {
        Some(day) => state.fields_on(day),
        None => std::borrow::Cow::Borrowed(state.fields()),
    };
    let mut fields: Vec<(String, Option<String>)> = values
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(name, value)| (api_field_name(name), display(Some(value))))
        .collect();
    fields.push(("archived".into(), flag(state.is_archived())));
    fields.push(("restricted".into(), flag(state.is_restricted())));
    fields.push(("erased".into(), flag(state.is_erased())));
    if let Some(from) = state.hired_from() {
        fields.push(("hiredFrom".into(), Some(from.to_string())));
    }
    if let Some(employee) = state.hired_as() {
        fields.push(("hiredAs".into(), Some(employee.to_string())));
    }
    fields.sort();
    fields
}

/// The fields whose values differ between two states of a record, by API name.
/// On `day`: the values in force that day in each; `None`: every change each holds applied.
pub(crate) fn diff(before: &Record, after: &Record, day: Option<NaiveDate>) -> Vec<FieldChange> {
    let before: std::collections::BTreeMap<String, Option<String>> =
        state_fields(before, day).into_iter().collect();
    let after: std::collections::BTreeMap<String, Option<String>> =
        state_fields(after, day).into_iter().collect();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (b, a) = (
                before.get(name).cloned().flatten(),
                after.get(name).cloned().flatten(),
            );
            (b != a).then(|| FieldChange {
                field: name.clone(),
                before: b,
                after: a,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_domain::Datasheet;
    use serde_json::json;

    /// A record created at noon, its department changed at one and at two o'clock.
    fn stream() -> (RecordStream, [DateTime<Utc>; 3]) {
        let day = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let at = |hour| day.and_hms_opt(hour, 0, 0).unwrap().and_utc();
        let times = [at(12), at(13), at(14)];
        let updated = |department: &str| RecordEvent::RecordUpdated {
            datasheet: Datasheet::Employees,
            changes: [("department".to_owned(), json!(department))].into(),
            effective_from: Some(day),
        };
        let events = vec![
            (
                times[0],
                RecordEvent::RecordCreated {
                    datasheet: Datasheet::Employees,
                    fields: [("department".to_owned(), json!("Sales"))].into(),
                    hired_from: None,
                    effective_from: Some(day),
                },
            ),
            (times[1], updated("R&D")),
            (times[2], updated("Legal")),
        ];
        (RecordStream(events), times)
    }

    #[test]
    fn a_record_as_recorded_by_a_moment_has_the_events_up_to_it() {
        let (_, times) = stream();
        let department = |state: &Record| state.value("department").cloned();
        let before = times[0] - chrono::Duration::seconds(1);
        assert!(stream().0.recorded_by(before).is_none());
        let (changed_at, state) = stream().0.recorded_by(times[0]).unwrap();
        assert_eq!((changed_at, state.version()), (times[0], 1));
        assert_eq!(department(&state), Some(json!("Sales")));
        let between = times[1] + chrono::Duration::minutes(30);
        let (changed_at, state) = stream().0.recorded_by(between).unwrap();
        assert_eq!((changed_at, state.version()), (times[1], 2));
        assert_eq!(department(&state), Some(json!("R&D")));
        let (changed_at, state) = stream().0.recorded_by(times[2]).unwrap();
        assert_eq!((changed_at, state.version()), (times[2], 3));
    }

    #[test]
    fn two_versions_of_a_record_are_its_states_after_that_many_events() {
        let department = |state: &Record| state.value("department").cloned();
        assert_eq!(stream().0.versions(), 3);
        for (earlier, later) in [(0, 0), (0, 3), (1, 2), (2, 2), (1, 3)] {
            let (before, after) = stream().0.at_versions(earlier, later);
            assert_eq!(before.version(), earlier as u64, "{earlier}..{later}");
            assert_eq!(after.version(), later as u64, "{earlier}..{later}");
        }
        let (before, after) = stream().0.at_versions(1, 3);
        assert_eq!(department(&before), Some(json!("Sales")));
        assert_eq!(department(&after), Some(json!("Legal")));
        let (before, after) = stream().0.at_versions(0, 2);
        assert_eq!(department(&before), None);
        assert_eq!(department(&after), Some(json!("R&D")));
    }

    #[test]
    fn each_event_shows_before_and_after() {
        let mut state = Record::default();
        let day = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let created = changes(
            &mut state,
            RecordEvent::RecordCreated {
                datasheet: Datasheet::Employees,
                fields: [("first_name".to_owned(), json!("Ada"))].into(),
                hired_from: None,
                effective_from: Some(day),
            },
            Some(day),
        );
        assert_eq!(
            created,
            vec![FieldChange {
                field: "firstName".into(),
                before: None,
                after: Some("Ada".into())
            }]
        );
        let updated = changes(
            &mut state,
            RecordEvent::RecordUpdated {
                datasheet: Datasheet::Employees,
                changes: [
                    ("first_name".to_owned(), json!("Augusta")),
                    ("email".to_owned(), Value::Null),
                ]
                .into(),
                effective_from: Some(day),
            },
            Some(day),
        );
        assert_eq!(
            updated,
            vec![
                FieldChange {
                    field: "email".into(),
                    before: None,
                    after: None
                },
                FieldChange {
                    field: "firstName".into(),
                    before: Some("Ada".into()),
                    after: Some("Augusta".into())
                },
            ]
        );
        let archived = changes(
            &mut state,
            RecordEvent::RecordArchived {
                datasheet: Datasheet::Employees,
            },
            None,
        );
        assert_eq!(archived[0].before.as_deref(), Some("false"));
        assert_eq!(archived[0].after.as_deref(), Some("true"));
    }
}
