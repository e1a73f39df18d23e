//! The `Record` aggregate: one record of a datasheet (an employee, a contact or a job
//! applicant). Its field values are the personal data of one data subject.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{Months, NaiveDate};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::custom_field::{CustomSchema, CUSTOM_PREFIX};
use crate::datasheet::Datasheet;
use crate::pipeline::Stage;
use crate::values::ValueError;

/// Field values of a record, by field name, in canonical form (see [`crate::FieldKind::parse`]).
/// Absent and `null` both mean "no value".
pub type Fields = BTreeMap<String, Value>;

/// The state of one record, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    datasheet: Option<Datasheet>,
    /// How many events the record has; the version a client passes as `expectedVersion`.
    version: u64,
    fields: Fields,
    archived: bool,
    /// For an employee hired from an applicant: the applicant record.
    hired_from: Option<Uuid>,
    /// For a hired applicant: the employee record created for them.
    hired_as: Option<Uuid>,
    /// The subject was erased: the values are gone for good and nothing changes any more.
    erased: bool,
    /// Processing is restricted (GDPR Art. 18): readable and exportable, not changeable.
    restricted: bool,
    /// Every value the record was given, by the day it takes effect and then the version it
    /// was recorded at (the creation's values on the record's first day), `null` where a value
    /// was cleared. `fields` is all of it applied: the values in force from the last of these
    /// days on.
    #[serde(with = "timeline_entries")]
    timeline: BTreeMap<(NaiveDate, u64), Change>,
    /// The day the record takes effect: its creation's `effective_from` (`None` for records
    /// created before changes were effective-dated).
    starts: Option<NaiveDate>,
}

/// The earliest day a change may take effect.
pub fn earliest_effective_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date")
}

/// The latest day a change entered on `today` may take effect: ten years ahead.
pub fn latest_effective_day(today: NaiveDate) -> NaiveDate {
    today
        .checked_add_months(Months::new(120))
        .unwrap_or(NaiveDate::MAX)
}

/// Why processing of a record is restricted: the cases of GDPR Art. 18(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictionReason {
    /// (a) the subject contests the data's accuracy, while it is verified.
    AccuracyContested,
    /// (b) the processing is unlawful and the subject asks for restriction instead of erasure.
    UnlawfulProcessing,
    /// (c) no longer needed, but the subject needs the data for legal claims.
    LegalClaims,
    /// (d) the subject objected, while legitimate grounds are weighed.
    ObjectionPending,
}

/// Why a record's subject is erased: the grounds of GDPR Art. 17(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureGround {
    /// (a) no longer necessary for the purposes collected for (a retention period ended).
    NoLongerNecessary,
    /// (b) the subject withdrew the consent the processing rested on.
    ConsentWithdrawn,
    /// (c) the subject objected and no overriding legitimate grounds remain.
    Objection,
    /// (d) the data was processed unlawfully.
    UnlawfulProcessing,
    /// (e) a legal obligation requires erasure.
    LegalObligation,
    /// (f) collected in relation to information society services offered to a child.
    ChildData,
}

/// The value that stands for an erased field value, wherever an erased record's events are
/// read: the key that opened them is gone.
pub fn erased_marker() -> Value {
    serde_json::json!({ "erased": true })
}

/// Whether a stored value is the erased marker.
pub fn is_erased_marker(value: &Value) -> bool {
    value.get("erased").and_then(Value::as_bool) == Some(true)
}

/// What a client asks a record to do. Raw values are parsed by the aggregate, so every path
/// into the write model applies the same rules.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordCommand {
    Create {
        datasheet: Datasheet,
        fields: Fields,
        /// Set when the employee is created by hiring this applicant.
        hired_from: Option<Uuid>,
        /// The datasheet's custom fields, which `custom.<key>` values are checked against.
        schema: CustomSchema,
        /// The day the record takes effect (today or earlier: a record of the past entered
        /// now); `None`: today.
        effective_from: Option<NaiveDate>,
        /// The day the command is given on (the service's clock, UTC).
        today: NaiveDate,
    },
    /// A patch: fields absent from `changes` stay as they are; `null` clears an optional field.
    /// A record of another datasheet answers `NotFound`, as a missing one does.
    Update {
        datasheet: Datasheet,
        expected_version: Option<u64>,
        changes: Fields,
        schema: CustomSchema,
        /// The day the change takes effect: later is a scheduled change, earlier a correction;
        /// `None`: today.
        effective_from: Option<NaiveDate>,
        today: NaiveDate,
    },
    Archive {
        expected_version: Option<u64>,
    },
    Restore {
        expected_version: Option<u64>,
    },
    /// Hires an applicant at the `offer` stage as the employee `employee_id` (which the
    /// service creates, linked back with `hired_from`).
    Hire {
        employee_id: Uuid,
        expected_version: Option<u64>,
        today: NaiveDate,
    },
    /// Restricts processing (GDPR Art. 18): until lifted, the record is read and exported but
    /// not changed.
    Restrict {
        reason: RestrictionReason,
    },
    LiftRestriction,
    /// Cancels the scheduled change recorded at `version` (one that takes effect after
    /// `today`).
    CancelScheduledChange {
        version: u64,
        expected_version: Option<u64>,
        today: NaiveDate,
    },
    /// Erases the record's subject (the service then destroys its data key). Irreversible;
    /// needs the current version.
    Erase {
        expected_version: u64,
        ground: ErasureGround,
        /// Why, in the organisation's words; kept in clear with the erasure, so it must not
        /// hold the subject's personal data.
        note: Option<String>,
    },
}

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordEvent {
    RecordCreated {
        datasheet: Datasheet,
        fields: Fields,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hired_from: Option<Uuid>,
        /// The day the record takes effect. Events written before changes were
        /// effective-dated have none: they took effect when they were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_from: Option<NaiveDate>,
    },
    /// Only the fields whose value changed (on its day), with their new value (`null` when
    /// cleared).
    RecordUpdated {
        datasheet: Datasheet,
        changes: Fields,
        /// The day the change takes effect (see `RecordCreated`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_from: Option<NaiveDate>,
    },
    RecordArchived {
        datasheet: Datasheet,
    },
    RecordRestored {
        datasheet: Datasheet,
    },
    /// The applicant was hired: their stage is `hired` and `employee_id` is their employee
    /// record.
    ApplicantHired {
        datasheet: Datasheet,
        employee_id: Uuid,
        /// The day of the hire (see `RecordCreated`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_from: Option<NaiveDate>,
    },
    RecordRestricted {
        datasheet: Datasheet,
        reason: RestrictionReason,
    },
    RestrictionLifted {
        datasheet: Datasheet,
    },
    /// The change recorded at `version`, scheduled for a later day, will not take effect.
    ScheduledChangeCancelled {
        datasheet: Datasheet,
        version: u64,
    },
    /// The subject was erased: `fields` names the fields that held values.
    RecordErased {
        datasheet: Datasheet,
        fields: Vec<String>,
        ground: ErasureGround,
        note: Option<String>,
    },
}

/// Why a record command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("the record already exists")]
    AlreadyExists,
    #[error("no such record")]
    NotFound,
    #[error("the record is archived; restore it before changing it")]
    Archived,
    #[error("the record is already archived")]
    AlreadyArchived,
    #[error("the record is not archived")]
    NotArchived,
    #[error("the record is at version {actual}, not {expected}")]
    StaleVersion { expected: u64, actual: u64 },
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("field `{0}` is required")]
    MissingField(String),
    #[error("field `{field}` {reason}")]
    InvalidField { field: String, reason: ValueError },
    #[error("only a job applicant at the `offer` stage can be hired")]
    NotHireable,
    #[error("the record was erased")]
    Erased,
    #[error("processing of the record is restricted; lift the restriction first")]
    Restricted,
    #[error("processing of the record is already restricted")]
    AlreadyRestricted,
    #[error("processing of the record is not restricted")]
    NotRestricted,
    #[error("no change recorded at version {0} of the record is still scheduled")]
    NotScheduled(u64),
    /// Several of the above about fields at once (each an `UnknownField`, `MissingField` or
    /// `InvalidField`): every problem of a command's values is told together.
    #[error("{}", joined(.0))]
    Invalid(Vec<RecordError>),
}

fn joined(problems: &[RecordError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// No problem, the one problem, or all of them at once.
fn told(mut problems: Vec<RecordError>) -> Result<(), RecordError> {
    match problems.len() {
        0 => Ok(()),
        1 => Err(problems.remove(0)),
        _ => Err(RecordError::Invalid(problems)),
    }
}

impl RecordError {
    /// The field a validation error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            RecordError::UnknownField(field)
            | RecordError::MissingField(field)
            | RecordError::InvalidField { field, .. } => Some(field),
            RecordError::Invalid(problems) => problems.first().and_then(RecordError::field),
            _ => None,
        }
    }
}

impl DomainEvent for RecordEvent {
    fn event_type(&self) -> String {
        match self {
            RecordEvent::RecordCreated { .. } => "RecordCreated",
            RecordEvent::RecordUpdated { .. } => "RecordUpdated",
            RecordEvent::RecordArchived { .. } => "RecordArchived",
            RecordEvent::RecordRestored { .. } => "RecordRestored",
            RecordEvent::ApplicantHired { .. } => "ApplicantHired",
            RecordEvent::RecordErased { .. } => "RecordErased",
            RecordEvent::RecordRestricted { .. } => "RecordRestricted",
            RecordEvent::RestrictionLifted { .. } => "RestrictionLifted",
            RecordEvent::ScheduledChangeCancelled { .. } => "ScheduledChangeCancelled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Record {
    pub fn datasheet(&self) -> Option<Datasheet> {
        self.datasheet
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    pub fn is_archived(&self) -> bool {
        self.archived
    }

    /// The value of one field, `None` when it has none.
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    pub fn hired_from(&self) -> Option<Uuid> {
        self.hired_from
    }

    pub fn hired_as(&self) -> Option<Uuid> {
        self.hired_as
    }

    pub fn is_erased(&self) -> bool {
        self.erased
    }

    pub fn is_restricted(&self) -> bool {
        self.restricted
    }

    /// The day the record takes effect, if it was recorded.
    pub fn starts(&self) -> Option<NaiveDate> {
        self.starts
    }

    /// The values in force on `day`: every change effective by then, in the order of the days
    /// they take effect (and of recording, within a day). Nothing before the record starts.
    pub fn fields_on(&self, day: NaiveDate) -> Cow<'_, Fields> {
        match self.timeline.keys().next_back() {
            Some((last, _)) if *last <= day => Cow::Borrowed(&self.fields),
            None => Cow::Borrowed(&self.fields),
            Some(_) => Cow::Owned(fold(
                self.timeline.range(..=(day, u64::MAX)).map(|(_, c)| c),
            )),
        }
    }

    /// The day the change recorded at `version` takes effect, if it changed values.
    pub fn change_day(&self, version: u64) -> Option<NaiveDate> {
        self.timeline
            .keys()
            .find(|(_, at)| *at == version)
            .map(|(day, _)| *day)
    }

    /// The day an event without one takes effect: the record's last day so far (events
    /// written before changes were effective-dated took effect in the order they were
    /// recorded).
    fn day_of(&self, effective_from: Option<NaiveDate>) -> NaiveDate {
        effective_from
            .or_else(|| self.timeline.keys().next_back().map(|(day, _)| *day))
            .unwrap_or(NaiveDate::MIN)
    }

    /// Records `changes`, of the event that brings the record to its current version, as
    /// taking effect on `day`, after what that day already had.
    fn change_on(&mut self, day: NaiveDate, changes: Fields) {
        let last = self
            .timeline
            .keys()
            .next_back()
            .is_none_or(|(last, _)| *last <= day);
        if last {
            for (name, value) in &changes {
                if value.is_null() {
                    self.fields.remove(name);
                } else {
                    self.fields.insert(name.clone(), value.clone());
                }
            }
        }
        self.timeline
            .insert((day, self.version), changes.into_iter().collect());
        if !last {
            self.fields = fold(self.timeline.values());
        }
    }

    /// The datasheet of an existing record that may change: not erased, not restricted.
    fn changeable(&self) -> Result<Datasheet, RecordError> {
        let datasheet = self.existing()?;
        if self.restricted {
            return Err(RecordError::Restricted);
        }
        Ok(datasheet)
    }

    /// The day a change entered on `today` takes effect: `effective_from` or today, within
    /// the range a change may take and not before the record starts.
    fn effective_day(
        &self,
        effective_from: Option<NaiveDate>,
        today: NaiveDate,
    ) -> Result<NaiveDate, RecordError> {
        let day = effective_from.unwrap_or(today);
        let invalid = |reason| RecordError::InvalidField {
            field: "effective_from".into(),
            reason,
        };
        if day < earliest_effective_day() || day > latest_effective_day(today) {
            return Err(invalid(ValueError::DateOutOfRange));
        }
        if self.starts.is_some_and(|starts| day < starts) {
            return Err(invalid(ValueError::BeforeRecordStart));
        }
        Ok(day)
    }

    /// The record's datasheet, if it exists and was not erased.
    fn existing(&self) -> Result<Datasheet, RecordError> {
        let datasheet = self.datasheet.ok_or(RecordError::NotFound)?;
        if self.erased {
            return Err(RecordError::Erased);
        }
        Ok(datasheet)
    }

    /// The rules across fields with `changes` taking effect on `day`: on that day and on every
    /// later day on which some change takes effect.
    fn check_change(
        &self,
        datasheet: Datasheet,
        day: NaiveDate,
        changes: &Fields,
    ) -> Result<(), RecordError> {
        let mut after = self.fields_on(day).into_owned();
        after.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        check_record(datasheet, &after)?;
        for (_, later) in self.timeline.range((day, u64::MAX)..) {
            after.extend(later.iter().map(|(k, v)| (k.clone(), v.clone())));
            check_record(datasheet, &after)?;
        }
        Ok(())
    }

    /// The rules across fields without the change recorded at `version` (on `day`): on that
    /// day and on every later day on which some change takes effect.
    fn check_without(
        &self,
        datasheet: Datasheet,
        day: NaiveDate,
        version: u64,
    ) -> Result<(), RecordError> {
        let mut after = fold(self.timeline.range(..(day, 0)).map(|(_, c)| c));
        for ((_, at), change) in self.timeline.range((day, 0)..) {
            if *at != version {
                after.extend(change.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            check_record(datasheet, &after)?;
        }
        Ok(())
    }

    fn check_version(&self, expected: Option<u64>) -> Result<(), RecordError> {
        match expected {
            Some(expected) if expected != self.version => Err(RecordError::StaleVersion {
                expected,
                actual: self.version,
            }),
            _ => Ok(()),
        }
    }
}

/// The values one change gave, as the timeline keeps them: a change sets a few fields, and a
/// list of them takes a fraction of the memory of a map (a record keeps every change it ever
/// had, and the aggregate cache keeps the records most changed).
type Change = Box<[(String, Value)]>;

/// Values with `changes` applied in order (`null` clears).
fn fold<'a>(changes: impl Iterator<Item = &'a Change>) -> Fields {
    let mut fields = Fields::new();
    for change in changes {
        for (name, value) in change {
            if value.is_null() {
                fields.remove(name);
            } else {
                fields.insert(name.clone(), value.clone());
            }
        }
    }
    fields
}

/// An applicant's stage among `fields` (`applied` for records written before stages had a
/// default).
fn stage_of(fields: &Fields) -> Stage {
    fields
        .get("stage")
        .and_then(Value::as_str)
        .and_then(|s| Stage::parse(s).ok())
        .unwrap_or(Stage::Applied)
}

/// Rules across fields of a record's values after a change (`fields` is the whole record).
fn check_record(datasheet: Datasheet, fields: &Fields) -> Result<(), RecordError> {
    if datasheet == Datasheet::Employees {
        let date = |name: &str| fields.get(name).and_then(Value::as_str);
        // Canonical dates (`YYYY-MM-DD`) compare as text.
        if let (Some(start), Some(end)) = (date("start_date"), date("end_date")) {
            if end < start {
                return Err(RecordError::InvalidField {
                    field: "end_date".into(),
                    reason: ValueError::EndBeforeStart,
                });
            }
        }
    }
    Ok(())
}

/// The field values a new record of `datasheet` would have, or why it cannot be created:
/// every value parsed, required fields present, an applicant's stage defaulted to `applied`,
/// rules across fields kept. Every problem with the values is told at once.
pub fn validate_new(
    datasheet: Datasheet,
    schema: &CustomSchema,
    raw: Fields,
) -> Result<Fields, RecordError> {
    let (mut fields, mut problems) = parse_all(datasheet, schema, raw);
    fields.retain(|_, value| !value.is_null());
    let told_of = |problems: &[RecordError], name: &str| {
        problems.iter().any(|problem| problem.field() == Some(name))
    };
    for spec in datasheet.fields() {
        if spec.required && !fields.contains_key(spec.name) && !told_of(&problems, spec.name) {
            problems.push(RecordError::MissingField(spec.name.to_owned()));
        }
    }
    for field in schema.active() {
        let name = field.name();
        if field.required && !fields.contains_key(&name) && !told_of(&problems, &name) {
            problems.push(RecordError::MissingField(name));
        }
    }
    if datasheet == Datasheet::Applicants {
        let stage = fields
            .entry("stage".to_owned())
            .or_insert_with(|| Value::String(Stage::Applied.as_str().to_owned()));
        // Only hiring makes an applicant `hired`: it creates their employee record.
        if stage == Stage::Hired.as_str() {
            problems.push(RecordError::InvalidField {
                field: "stage".into(),
                reason: ValueError::IllegalTransition {
                    from: Stage::Applied.as_str(),
                    to: Stage::Hired.as_str(),
                },
            });
        }
    }
    told(problems)?;
    check_record(datasheet, &fields)?;
    Ok(fields)
}

/// Parses every raw value against the datasheet's fields and its custom fields; every
/// problem at once.
fn parse_fields(
    datasheet: Datasheet,
    schema: &CustomSchema,
    raw: Fields,
) -> Result<Fields, RecordError> {
    let (fields, problems) = parse_all(datasheet, schema, raw);
    told(problems)?;
    Ok(fields)
}

/// The values that parsed, and the problems of those that did not.
fn parse_all(
    datasheet: Datasheet,
    schema: &CustomSchema,
    raw: Fields,
) -> (Fields, Vec<RecordError>) {
    let mut fields = Fields::new();
    let mut problems = Vec::new();
    for (name, value) in raw {
        match parse_one(datasheet, schema, &name, &value) {
            Ok(value) => {
                fields.insert(name, value);
            }
            Err(problem) => problems.push(problem),
        }
    }
    (fields, problems)
}

/// One raw value parsed against its field.
fn parse_one(
    datasheet: Datasheet,
    schema: &CustomSchema,
    name: &str,
    value: &Value,
) -> Result<Value, RecordError> {
    let invalid = |reason| RecordError::InvalidField {
        field: name.to_owned(),
        reason,
    };
    let (value, required) = if name.starts_with(CUSTOM_PREFIX) {
        let field = schema
            .field(name)
            .ok_or_else(|| RecordError::UnknownField(name.to_owned()))?;
        (field.parse(value).map_err(invalid)?, field.required)
    } else {
        let spec = datasheet
            .field(name)
            .ok_or_else(|| RecordError::UnknownField(name.to_owned()))?;
        (spec.kind.parse(value).map_err(invalid)?, spec.required)
    };
    if required && value.is_null() {
        return Err(RecordError::MissingField(name.to_owned()));
    }
    Ok(value)
}

impl Aggregate for Record {
    const TYPE: &'static str = "record";
    type Command = RecordCommand;
    type Event = RecordEvent;
    type Error = RecordError;
    type Services = ();

    async fn handle(
        &mut self,
        command: RecordCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), RecordError> {
        match command {
            RecordCommand::Create {
                datasheet,
                fields,
                hired_from,
                schema,
                effective_from,
                today,
            } => {
                if self.datasheet.is_some() {
                    return Err(RecordError::AlreadyExists);
                }
                let day = self.effective_day(effective_from, today)?;
                if day > today {
                    return Err(RecordError::InvalidField {
                        field: "effective_from".into(),
                        reason: ValueError::FutureCreation,
                    });
                }
                let fields = validate_new(datasheet, &schema, fields)?;
                let hired_from = hired_from.filter(|_| datasheet == Datasheet::Employees);
                sink.write(
                    RecordEvent::RecordCreated {
                        datasheet,
                        fields,
                        hired_from,
                        effective_from: Some(day),
                    },
                    self,
                )
                .await;
            }
            RecordCommand::Update {
                datasheet: expected_datasheet,
                expected_version,
                changes,
                schema,
                effective_from,
                today,
            } => {
                let datasheet = self.changeable()?;
                if datasheet != expected_datasheet {
                    return Err(RecordError::NotFound);
                }
                self.check_version(expected_version)?;
                if self.archived {
                    return Err(RecordError::Archived);
                }
                let day = self.effective_day(effective_from, today)?;
                let mut changes = parse_fields(datasheet, &schema, changes)?;
                let before = self.fields_on(day);
                changes.retain(|name, value| before.get(name).unwrap_or(&Value::Null) != value);
                if let Some(stage) = changes.get("stage") {
                    let to = stage.as_str().map(Stage::parse).transpose().ok().flatten();
                    let moved = match to {
                        Some(to) => stage_of(&before).check_move(to),
                        // Clearing the stage is not a move anywhere.
                        None => Err(ValueError::Empty),
                    };
                    moved.map_err(|reason| RecordError::InvalidField {
                        field: "stage".into(),
                        reason,
                    })?;
                }
                self.check_change(datasheet, day, &changes)?;
                if !changes.is_empty() {
                    sink.write(
                        RecordEvent::RecordUpdated {
                            datasheet,
                            changes,
                            effective_from: Some(day),
                        },
                        self,
                    )
                    .await;
                }
            }
            RecordCommand::Archive { expected_version } => {
                let datasheet = self.changeable()?;
                self.check_version(expected_version)?;
                if self.archived {
                    return Err(RecordError::AlreadyArchived);
                }
                sink.write(RecordEvent::RecordArchived { datasheet }, self)
                    .await;
            }
            RecordCommand::Restore { expected_version } => {
                let datasheet = self.changeable()?;
                self.check_version(expected_version)?;
                if !self.archived {
                    return Err(RecordError::NotArchived);
                }
                sink.write(RecordEvent::RecordRestored { datasheet }, self)
                    .await;
            }
            RecordCommand::Restrict { reason } => {
                let datasheet = self.existing()?;
                if self.restricted {
                    return Err(RecordError::AlreadyRestricted);
                }
                sink.write(RecordEvent::RecordRestricted { datasheet, reason }, self)
                    .await;
            }
            RecordCommand::LiftRestriction => {
                let datasheet = self.existing()?;
                if !self.restricted {
                    return Err(RecordError::NotRestricted);
                }
                sink.write(RecordEvent::RestrictionLifted { datasheet }, self)
                    .await;
            }
            RecordCommand::CancelScheduledChange {
                version,
                expected_version,
                today,
            } => {
                let datasheet = self.changeable()?;
                self.check_version(expected_version)?;
                if self.archived {
                    return Err(RecordError::Archived);
                }
                let day = self
                    .change_day(version)
                    .filter(|day| *day > today && version > 1)
                    .ok_or(RecordError::NotScheduled(version))?;
                self.check_without(datasheet, day, version)?;
                sink.write(
                    RecordEvent::ScheduledChangeCancelled { datasheet, version },
                    self,
                )
                .await;
            }
            RecordCommand::Erase {
                expected_version,
                ground,
                note,
            } => {
                let datasheet = self.existing()?;
                self.check_version(Some(expected_version))?;
                let note = note
                    .map(|n| crate::values::long_text(&n, 1_000))
                    .transpose()
                    .map_err(|reason| RecordError::InvalidField {
                        field: "note".into(),
                        reason,
                    })?;
                // Every field that held a value on any day, past or scheduled.
                let fields: std::collections::BTreeSet<&String> = self
                    .timeline
                    .values()
                    .flat_map(|change| change.iter())
                    .filter(|(_, v)| !v.is_null())
                    .map(|(name, _)| name)
                    .collect();
                let fields = fields.into_iter().cloned().collect();
                sink.write(
                    RecordEvent::RecordErased {
                        datasheet,
                        fields,
                        ground,
                        note,
                    },
                    self,
                )
                .await;
            }
            RecordCommand::Hire {
                employee_id,
                expected_version,
                today,
            } => {
                let datasheet = self.changeable()?;
                self.check_version(expected_version)?;
                if self.archived {
                    return Err(RecordError::Archived);
                }
                let day = self.effective_day(None, today)?;
                if datasheet != Datasheet::Applicants
                    || stage_of(&self.fields_on(day)) != Stage::Offer
                {
                    return Err(RecordError::NotHireable);
                }
                sink.write(
                    RecordEvent::ApplicantHired {
                        datasheet,
                        employee_id,
                        effective_from: Some(day),
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: RecordEvent) {
        self.version += 1;
        match event {
            RecordEvent::RecordCreated {
                datasheet,
                fields,
                hired_from,
                effective_from,
            } => {
                self.datasheet = Some(datasheet);
                self.hired_from = hired_from;
                self.starts = effective_from;
                let day = self.day_of(effective_from);
                self.change_on(day, fields);
            }
            RecordEvent::RecordUpdated {
                changes,
                effective_from,
                ..
            } => {
                let day = self.day_of(effective_from);
                self.change_on(day, changes);
            }
            RecordEvent::RecordArchived { .. } => self.archived = true,
            RecordEvent::RecordRestored { .. } => self.archived = false,
            RecordEvent::ApplicantHired {
                employee_id,
                effective_from,
                ..
            } => {
                let day = self.day_of(effective_from);
                let stage = Value::String(Stage::Hired.as_str().to_owned());
                self.change_on(day, Fields::from([("stage".to_owned(), stage)]));
                self.hired_as = Some(employee_id);
            }
            RecordEvent::RecordErased { .. } => {
                self.fields.clear();
                self.timeline.clear();
                self.erased = true;
                self.restricted = false;
            }
            RecordEvent::RecordRestricted { .. } => self.restricted = true,
            RecordEvent::RestrictionLifted { .. } => self.restricted = false,
            RecordEvent::ScheduledChangeCancelled { version, .. } => {
                self.timeline.retain(|(_, at), _| *at != version);
                self.fields = fold(self.timeline.values());
            }
        }
    }
}

/// The timeline as a list of entries (`[[day, version], fields]`): JSON maps take only text
/// keys.
mod timeline_entries {
    use std::collections::BTreeMap;

    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Change, Fields};

    type Timeline = BTreeMap<(NaiveDate, u64), Change>;

    /// A change's values as a JSON map, as events write them.
    struct AsMap<'a>(&'a Change);

    impl Serialize for AsMap<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
        }
    }

    pub(super) fn serialize<S: Serializer>(
        timeline: &Timeline,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(timeline.iter().map(|(key, change)| (key, AsMap(change))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Timeline, D::Error> {
        let entries: Vec<((NaiveDate, u64), Fields)> = Vec::deserialize(deserializer)?;
        Ok(entries
            .into_iter()
            .map(|(key, fields)| (key, fields.into_iter().collect()))
            .collect())
    }
}

/// A new record id: UUIDv7, so ids sort in creation order (the read models page by id).
pub fn new_record_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type RecordTest = TestFramework<Record>;

    /// The day the tests' commands are given on.
    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 6, 1).unwrap()
    }

    /// The day the tests' records start.
    fn first_day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()
    }

    fn fields(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn created() -> RecordEvent {
        RecordEvent::RecordCreated {
            effective_from: Some(first_day()),
            datasheet: Datasheet::Employees,
            hired_from: None,
            fields: fields(&[
                ("first_name", json!("Ada")),
                ("last_name", json!("Lovelace")),
                ("email", json!("ada@example.org")),
            ]),
        }
    }

    fn update(changes: &[(&str, Value)]) -> RecordCommand {
        RecordCommand::Update {
            effective_from: None,
            today: today(),
            datasheet: Datasheet::Employees,
            schema: CustomSchema::default(),
            expected_version: None,
            changes: fields(changes),
        }
    }

    #[test]
    fn create_parses_and_normalises_fields() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(RecordCommand::Create {
                effective_from: Some(first_day()),
                today: today(),
                datasheet: Datasheet::Employees,
                hired_from: None,
                schema: CustomSchema::default(),
                fields: fields(&[
                    ("first_name", json!(" Ada ")),
                    ("last_name", json!("Lovelace")),
                    ("email", json!("ada@example.org")),
                    ("phone", Value::Null),
                ]),
            })
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn create_requires_names() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(RecordCommand::Create {
                effective_from: Some(first_day()),
                today: today(),
                datasheet: Datasheet::Employees,
                hired_from: None,
                schema: CustomSchema::default(),
                fields: fields(&[("first_name", json!("Ada"))]),
            })
            .then_expect_error(RecordError::MissingField("last_name".into()));
    }

    #[test]
    fn create_rejects_an_empty_name() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(RecordCommand::Create {
                effective_from: Some(first_day()),
                today: today(),
                datasheet: Datasheet::Employees,
                hired_from: None,
                schema: CustomSchema::default(),
                fields: fields(&[("first_name", json!("  ")), ("last_name", json!("L"))]),
            })
            .then_expect_error(RecordError::InvalidField {
                field: "first_name".into(),
                reason: ValueError::Empty,
            });
    }

    #[test]
    fn create_rejects_unknown_fields() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(RecordCommand::Create {
                effective_from: Some(first_day()),
                today: today(),
                datasheet: Datasheet::Employees,
                hired_from: None,
                schema: CustomSchema::default(),
                fields: fields(&[
                    ("first_name", json!("Ada")),
                    ("last_name", json!("L")),
                    ("salary", json!("1")),
                ]),
            })
            .then_expect_error(RecordError::UnknownField("salary".into()));
    }

    #[test]
    fn create_twice_is_refused() {
        RecordTest::with(())
            .given(vec![created()])
            .when(RecordCommand::Create {
                effective_from: Some(first_day()),
                today: today(),
                datasheet: Datasheet::Employees,
                hired_from: None,
                schema: CustomSchema::default(),
                fields: fields(&[("first_name", json!("A")), ("last_name", json!("B"))]),
            })
            .then_expect_error(RecordError::AlreadyExists);
    }

    #[test]
    fn update_records_only_changed_fields() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[
                ("first_name", json!("Ada")),
                ("phone", json!("+44 20 7946 0958")),
                ("email", Value::Null),
            ]))
            .then_expect_events(vec![RecordEvent::RecordUpdated {
                effective_from: Some(today()),
                datasheet: Datasheet::Employees,
                changes: fields(&[("email", Value::Null), ("phone", json!("+442079460958"))]),
            }]);
    }

    #[test]
    fn update_without_changes_emits_nothing() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[("first_name", json!("Ada"))]))
            .then_expect_events(vec![]);
    }

    #[test]
    fn update_rejects_a_malformed_email() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[("email", json!("ada-at-example"))]))
            .then_expect_error(RecordError::InvalidField {
                field: "email".into(),
                reason: ValueError::InvalidEmail,
            });
    }

    #[test]
    fn update_rejects_a_malformed_phone() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[("phone", json!("call me"))]))
            .then_expect_error(RecordError::InvalidField {
                field: "phone".into(),
                reason: ValueError::InvalidPhone,
            });
    }

    #[test]
    fn update_cannot_clear_a_required_field() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[("last_name", Value::Null)]))
            .then_expect_error(RecordError::MissingField("last_name".into()));
    }

    #[test]
    fn update_rejects_unknown_fields() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[("shoe_size", json!("42"))]))
            .then_expect_error(RecordError::UnknownField("shoe_size".into()));
    }

    #[test]
    fn update_with_a_stale_version_is_refused() {
        RecordTest::with(())
            .given(vec![
                created(),
                RecordEvent::RecordArchived {
                    datasheet: Datasheet::Employees,
                },
                RecordEvent::RecordRestored {
                    datasheet: Datasheet::Employees,
                },
            ])
            .when(RecordCommand::Update {
                effective_from: None,
                today: today(),
                datasheet: Datasheet::Employees,
                schema: CustomSchema::default(),
                expected_version: Some(1),
                changes: fields(&[("first_name", json!("Augusta"))]),
            })
            .then_expect_error(RecordError::StaleVersion {
                expected: 1,
                actual: 3,
            });
    }

    #[test]
    fn update_with_the_current_version_succeeds() {
        RecordTest::with(())
            .given(vec![created()])
            .when(RecordCommand::Update {
                effective_from: None,
                today: today(),
                datasheet: Datasheet::Employees,
                schema: CustomSchema::default(),
                expected_version: Some(1),
                changes: fields(&[("department", json!("Engineering"))]),
            })
            .then_expect_events(vec![RecordEvent::RecordUpdated {
                effective_from: Some(today()),
                datasheet: Datasheet::Employees,
                changes: fields(&[("department", json!("Engineering"))]),
            }]);
    }

    #[test]
    fn update_of_a_missing_record_is_not_found() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(update(&[("first_name", json!("Ada"))]))
            .then_expect_error(RecordError::NotFound);
    }

    #[test]
    fn archived_records_are_read_only() {
        RecordTest::with(())
            .given(vec![
                created(),
                RecordEvent::RecordArchived {
                    datasheet: Datasheet::Employees,
                },
            ])
            .when(update(&[("first_name", json!("Augusta"))]))
            .then_expect_error(RecordError::Archived);
    }

    #[test]
    fn archive_then_restore() {
        RecordTest::with(())
            .given(vec![created()])
            .when(RecordCommand::Archive {
                expected_version: None,
            })
            .then_expect_events(vec![RecordEvent::RecordArchived {
                datasheet: Datasheet::Employees,
            }]);
        RecordTest::with(())
            .given(vec![
                created(),
                RecordEvent::RecordArchived {
                    datasheet: Datasheet::Employees,
                },
            ])
            .when(RecordCommand::Restore {
                expected_version: Some(2),
            })
            .then_expect_events(vec![RecordEvent::RecordRestored {
                datasheet: Datasheet::Employees,
            }]);
    }

    #[test]
    fn archive_twice_is_refused() {
        RecordTest::with(())
            .given(vec![
                created(),
                RecordEvent::RecordArchived {
                    datasheet: Datasheet::Employees,
                },
            ])
            .when(RecordCommand::Archive {
                expected_version: None,
            })
            .then_expect_error(RecordError::AlreadyArchived);
    }

    #[test]
    fn restore_of_an_active_record_is_refused() {
        RecordTest::with(())
            .given(vec![created()])
            .when(RecordCommand::Restore {
                expected_version: None,
            })
            .then_expect_error(RecordError::NotArchived);
    }

    #[test]
    fn archive_of_a_missing_record_is_not_found() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(RecordCommand::Archive {
                expected_version: None,
            })
            .then_expect_error(RecordError::NotFound);
    }

    fn applicant(stage: &str) -> RecordEvent {
        RecordEvent::RecordCreated {
            effective_from: Some(first_day()),
            datasheet: Datasheet::Applicants,
            hired_from: None,
            fields: fields(&[
                ("first_name", json!("Grace")),
                ("last_name", json!("Hopper")),
                ("stage", json!(stage)),
            ]),
        }
    }

    fn applicant_update(changes: &[(&str, Value)]) -> RecordCommand {
        RecordCommand::Update {
            effective_from: None,
            today: today(),
            datasheet: Datasheet::Applicants,
            schema: CustomSchema::default(),
            expected_version: None,
            changes: fields(changes),
        }
    }

    #[test]
    fn applicants_start_applied_and_move_through_the_pipeline() {
        RecordTest::with(())
            .given_no_previous_events()
            .when(RecordCommand::Create {
                effective_from: Some(first_day()),
                today: today(),
                datasheet: Datasheet::Applicants,
                hired_from: None,
                schema: CustomSchema::default(),
                fields: fields(&[
                    ("first_name", json!("Grace")),
                    ("last_name", json!("Hopper")),
                ]),
            })
            .then_expect_events(vec![applicant("applied")]);
        RecordTest::with(())
            .given(vec![applicant("applied")])
            .when(applicant_update(&[("stage", json!("screening"))]))
            .then_expect_events(vec![RecordEvent::RecordUpdated {
                effective_from: Some(today()),
                datasheet: Datasheet::Applicants,
                changes: fields(&[("stage", json!("screening"))]),
            }]);
        for (from, to) in [
            ("applied", "offer"),
            ("offer", "hired"),
            ("rejected", "applied"),
        ] {
            RecordTest::with(())
                .given(vec![applicant(from)])
                .when(applicant_update(&[("stage", json!(to))]))
                .then_expect_error(RecordError::InvalidField {
                    field: "stage".into(),
                    reason: ValueError::IllegalTransition {
                        from: Stage::parse(from).unwrap().as_str(),
                        to: Stage::parse(to).unwrap().as_str(),
                    },
                });
        }
        RecordTest::with(())
            .given(vec![applicant("applied")])
            .when(applicant_update(&[("stage", Value::Null)]))
            .then_expect_error(RecordError::InvalidField {
                field: "stage".into(),
                reason: ValueError::Empty,
            });
    }

    #[test]
    fn only_an_offer_is_hired_and_the_link_is_recorded() {
        let employee_id = Uuid::now_v7();
        let hire = RecordCommand::Hire {
            today: today(),
            employee_id,
            expected_version: None,
        };
        RecordTest::with(())
            .given(vec![applicant("offer")])
            .when(hire.clone())
            .then_expect_events(vec![RecordEvent::ApplicantHired {
                effective_from: Some(today()),
                datasheet: Datasheet::Applicants,
                employee_id,
            }]);
        RecordTest::with(())
            .given(vec![applicant("interview")])
            .when(hire.clone())
            .then_expect_error(RecordError::NotHireable);
        RecordTest::with(())
            .given(vec![created()])
            .when(hire)
            .then_expect_error(RecordError::NotHireable);
        let mut hired = Record::default();
        hired.apply(applicant("offer"));
        hired.apply(RecordEvent::ApplicantHired {
            effective_from: Some(today()),
            datasheet: Datasheet::Applicants,
            employee_id,
        });
        assert_eq!(hired.value("stage"), Some(&json!("hired")));
        assert_eq!(hired.hired_as(), Some(employee_id));
    }

    #[test]
    fn an_employment_cannot_end_before_it_starts() {
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[
                ("start_date", json!("2024-05-01")),
                ("end_date", json!("2024-04-30")),
            ]))
            .then_expect_error(RecordError::InvalidField {
                field: "end_date".into(),
                reason: ValueError::EndBeforeStart,
            });
        RecordTest::with(())
            .given(vec![created()])
            .when(update(&[
                ("start_date", json!("2024-05-01")),
                ("end_date", json!("2024-05-01")),
            ]))
            .then_expect_events(vec![RecordEvent::RecordUpdated {
                effective_from: Some(today()),
                datasheet: Datasheet::Employees,
                changes: fields(&[
                    ("end_date", json!("2024-05-01")),
                    ("start_date", json!("2024-05-01")),
                ]),
            }]);
    }

    #[test]
    fn erasure_needs_the_current_version_and_ends_every_change() {
        let erase = |version| RecordCommand::Erase {
            expected_version: version,
            ground: ErasureGround::ConsentWithdrawn,
            note: Some("request by e-mail".into()),
        };
        RecordTest::with(())
            .given(vec![created()])
            .when(erase(1))
            .then_expect_events(vec![RecordEvent::RecordErased {
                datasheet: Datasheet::Employees,
                fields: vec!["email".into(), "first_name".into(), "last_name".into()],
                ground: ErasureGround::ConsentWithdrawn,
                note: Some("request by e-mail".into()),
            }]);
        RecordTest::with(())
            .given(vec![created()])
            .when(erase(0))
            .then_expect_error(RecordError::StaleVersion {
                expected: 0,
                actual: 1,
            });
        let erased = vec![
            created(),
            RecordEvent::RecordErased {
                datasheet: Datasheet::Employees,
                fields: vec![],
                ground: ErasureGround::Objection,
                note: None,
            },
        ];
        RecordTest::with(())
            .given(erased.clone())
            .when(erase(2))
            .then_expect_error(RecordError::Erased);
        RecordTest::with(())
            .given(erased)
            .when(update(&[("first_name", json!("Ada"))]))
            .then_expect_error(RecordError::Erased);
    }

    #[test]
    fn a_restricted_record_changes_only_by_lifting_or_erasure() {
        let restricted = vec![
            created(),
            RecordEvent::RecordRestricted {
                datasheet: Datasheet::Employees,
                reason: RestrictionReason::AccuracyContested,
            },
        ];
        for command in [
            update(&[("first_name", json!("Augusta"))]),
            RecordCommand::Archive {
                expected_version: None,
            },
        ] {
            RecordTest::with(())
                .given(restricted.clone())
                .when(command)
                .then_expect_error(RecordError::Restricted);
        }
        RecordTest::with(())
            .given(restricted.clone())
            .when(RecordCommand::Restrict {
                reason: RestrictionReason::LegalClaims,
            })
            .then_expect_error(RecordError::AlreadyRestricted);
        RecordTest::with(())
            .given(restricted.clone())
            .when(RecordCommand::LiftRestriction)
            .then_expect_events(vec![RecordEvent::RestrictionLifted {
                datasheet: Datasheet::Employees,
            }]);
        RecordTest::with(())
            .given(restricted)
            .when(RecordCommand::Erase {
                expected_version: 2,
                ground: ErasureGround::Objection,
                note: None,
            })
            .then_expect_events(vec![RecordEvent::RecordErased {
                datasheet: Datasheet::Employees,
                fields: vec!["email".into(), "first_name".into(), "last_name".into()],
                ground: ErasureGround::Objection,
                note: None,
            }]);
    }

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn dated_update(on: &str, changes: &[(&str, Value)]) -> RecordCommand {
        RecordCommand::Update {
            datasheet: Datasheet::Employees,
            schema: CustomSchema::default(),
            expected_version: None,
            changes: fields(changes),
            effective_from: Some(day(on)),
            today: today(),
        }
    }

    fn dated(on: &str, changes: &[(&str, Value)]) -> RecordEvent {
        RecordEvent::RecordUpdated {
            datasheet: Datasheet::Employees,
            changes: fields(changes),
            effective_from: Some(day(on)),
        }
    }

    #[test]
    fn a_record_and_its_timeline_round_trip_through_json_with_each_change_a_map() {
        let mut record = Record::default();
        record.apply(created());
        record.apply(dated("2026-07-01", &[("job_title", json!("Lead"))]));
        record.apply(dated(
            "2026-03-01",
            &[("department", json!("Ops")), ("job_title", Value::Null)],
        ));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json["timeline"][1],
            json!([["2026-03-01", 3], { "department": "Ops", "job_title": null }])
        );
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert_eq!(
            back.fields_on(day("2026-07-01")).get("job_title"),
            Some(&json!("Lead"))
        );
    }

    #[test]
    fn a_scheduled_change_is_in_force_from_its_day_only() {
        RecordTest::with(())
            .given(vec![created()])
            .when(dated_update("2026-07-01", &[("job_title", json!("Lead"))]))
            .then_expect_events(vec![dated("2026-07-01", &[("job_title", json!("Lead"))])]);
        let mut record = Record::default();
        record.apply(created());
        record.apply(dated("2026-07-01", &[("job_title", json!("Lead"))]));
        assert_eq!(record.fields_on(today()).get("job_title"), None);
        assert_eq!(
            record.fields_on(day("2026-07-01")).get("job_title"),
            Some(&json!("Lead"))
        );
        assert_eq!(record.fields_on(day("2025-12-31")).len(), 0);
    }

    #[test]
    fn a_correction_does_not_undo_a_later_change() {
        let mut record = Record::default();
        record.apply(created());
        record.apply(dated("2026-05-01", &[("department", json!("Sales"))]));
        // Entered later, effective earlier: in force only until the later change.
        record.apply(dated("2026-03-01", &[("department", json!("Support"))]));
        let on = |record: &Record, d: &str| record.fields_on(day(d)).get("department").cloned();
        assert_eq!(on(&record, "2026-02-28"), None);
        assert_eq!(on(&record, "2026-03-01"), Some(json!("Support")));
        assert_eq!(on(&record, "2026-05-01"), Some(json!("Sales")));
        assert_eq!(record.value("department"), Some(&json!("Sales")));
        // A change the same day as an earlier one, recorded after it, wins that day.
        record.apply(dated("2026-05-01", &[("department", json!("R&D"))]));
        assert_eq!(on(&record, "2026-05-01"), Some(json!("R&D")));
        // A change equal to what is in force on its day is no change.
        RecordTest::with(())
            .given(vec![
                created(),
                dated("2026-05-01", &[("department", json!("Sales"))]),
            ])
            .when(dated_update(
                "2026-05-02",
                &[("department", json!("Sales"))],
            ))
            .then_expect_events(vec![]);
    }

    #[test]
    fn effective_days_are_checked() {
        let invalid = |reason| RecordError::InvalidField {
            field: "effective_from".into(),
            reason,
        };
        for (on, reason) in [
            ("1899-12-31", ValueError::DateOutOfRange),
            ("2036-06-02", ValueError::DateOutOfRange),
            ("2026-01-04", ValueError::BeforeRecordStart),
        ] {
            RecordTest::with(())
                .given(vec![created()])
                .when(dated_update(on, &[("job_title", json!("Lead"))]))
                .then_expect_error(invalid(reason));
        }
        RecordTest::with(())
            .given(vec![created()])
            .when(dated_update("2036-06-01", &[("job_title", json!("Lead"))]))
            .then_expect_events(vec![dated("2036-06-01", &[("job_title", json!("Lead"))])]);
        let create = |on: &str| RecordCommand::Create {
            effective_from: Some(day(on)),
            today: today(),
            datasheet: Datasheet::Employees,
            hired_from: None,
            schema: CustomSchema::default(),
            fields: fields(&[("first_name", json!("A")), ("last_name", json!("B"))]),
        };
        RecordTest::with(())
            .given_no_previous_events()
            .when(create("2026-06-02"))
            .then_expect_error(invalid(ValueError::FutureCreation));
        RecordTest::with(())
            .given_no_previous_events()
            .when(create("1899-12-31"))
            .then_expect_error(invalid(ValueError::DateOutOfRange));
    }

    #[test]
    fn a_correction_is_checked_against_every_later_day() {
        let history = vec![
            created(),
            dated("2026-01-05", &[("start_date", json!("2026-01-05"))]),
            dated("2026-09-01", &[("end_date", json!("2026-12-31"))]),
        ];
        // A start in 2027 from March on is fine until the end date takes effect in September.
        RecordTest::with(())
            .given(history.clone())
            .when(dated_update(
                "2026-03-01",
                &[("start_date", json!("2027-01-10"))],
            ))
            .then_expect_error(RecordError::InvalidField {
                field: "end_date".into(),
                reason: ValueError::EndBeforeStart,
            });
        RecordTest::with(())
            .given(history)
            .when(dated_update(
                "2026-03-01",
                &[("start_date", json!("2026-02-01"))],
            ))
            .then_expect_events(vec![dated(
                "2026-03-01",
                &[("start_date", json!("2026-02-01"))],
            )]);
    }

    #[test]
    fn a_scheduled_change_is_cancelled_by_an_event_of_its_own() {
        let cancel = |version| RecordCommand::CancelScheduledChange {
            version,
            expected_version: None,
            today: today(),
        };
        let history = vec![
            created(),
            dated("2026-09-01", &[("job_title", json!("Lead"))]),
            dated("2026-03-01", &[("department", json!("R&D"))]),
        ];
        RecordTest::with(())
            .given(history.clone())
            .when(cancel(2))
            .then_expect_events(vec![RecordEvent::ScheduledChangeCancelled {
                datasheet: Datasheet::Employees,
                version: 2,
            }]);
        // Not scheduled: a change in force already, the creation, a version it never had.
        for version in [3, 1, 9] {
            RecordTest::with(())
                .given(history.clone())
                .when(cancel(version))
                .then_expect_error(RecordError::NotScheduled(version));
        }
        let mut record = Record::default();
        for event in history {
            record.apply(event);
        }
        record.apply(RecordEvent::ScheduledChangeCancelled {
            datasheet: Datasheet::Employees,
            version: 2,
        });
        assert_eq!(record.value("job_title"), None);
        assert_eq!(record.fields_on(day("2026-10-01")).get("job_title"), None);
        assert_eq!(record.value("department"), Some(&json!("R&D")));
        // Cancelled twice: nothing is scheduled at that version any more.
        RecordTest::with(())
            .given(vec![
                created(),
                dated("2026-09-01", &[("job_title", json!("Lead"))]),
                RecordEvent::ScheduledChangeCancelled {
                    datasheet: Datasheet::Employees,
                    version: 2,
                },
            ])
            .when(cancel(2))
            .then_expect_error(RecordError::NotScheduled(2));
        // A cancellation that would leave an employment ending before it starts.
        RecordTest::with(())
            .given(vec![
                created(),
                dated("2026-01-05", &[("start_date", json!("2027-03-01"))]),
                dated("2026-07-01", &[("start_date", json!("2026-07-01"))]),
                dated("2026-08-01", &[("end_date", json!("2026-12-31"))]),
            ])
            .when(cancel(3))
            .then_expect_error(RecordError::InvalidField {
                field: "end_date".into(),
                reason: ValueError::EndBeforeStart,
            });
    }

    #[test]
    fn the_state_survives_the_aggregate_cache() {
        let mut record = Record::default();
        record.apply(created());
        record.apply(dated("2026-09-01", &[("job_title", json!("Lead"))]));
        let cached: Record =
            serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
        assert_eq!(cached, record);
    }

    #[test]
    fn erasure_names_the_fields_of_every_day() {
        RecordTest::with(())
            .given(vec![
                created(),
                dated("2026-09-01", &[("job_title", json!("Lead"))]),
            ])
            .when(RecordCommand::Erase {
                expected_version: 2,
                ground: ErasureGround::Objection,
                note: None,
            })
            .then_expect_events(vec![RecordEvent::RecordErased {
                datasheet: Datasheet::Employees,
                fields: vec![
                    "email".into(),
                    "first_name".into(),
                    "job_title".into(),
                    "last_name".into(),
                ],
                ground: ErasureGround::Objection,
                note: None,
            }]);
        let mut erased = Record::default();
        erased.apply(created());
        erased.apply(dated("2026-09-01", &[("job_title", json!("Lead"))]));
        erased.apply(RecordEvent::RecordErased {
            datasheet: Datasheet::Employees,
            fields: vec![],
            ground: ErasureGround::Objection,
            note: None,
        });
        assert!(erased.fields_on(day("2026-09-01")).is_empty());
        assert!(erased.fields_on(day("2026-02-01")).is_empty());
    }

    #[test]
    fn events_without_a_day_take_effect_in_recording_order() {
        let mut record = Record::default();
        record.apply(RecordEvent::RecordCreated {
            datasheet: Datasheet::Employees,
            hired_from: None,
            effective_from: None,
            fields: fields(&[("first_name", json!("Ada")), ("last_name", json!("L"))]),
        });
        record.apply(RecordEvent::RecordUpdated {
            datasheet: Datasheet::Employees,
            changes: fields(&[("department", json!("R&D"))]),
            effective_from: None,
        });
        assert_eq!(record.starts(), None);
        assert_eq!(record.value("department"), Some(&json!("R&D")));
        assert_eq!(
            record.fields_on(today()).get("department"),
            Some(&json!("R&D"))
        );
    }

    #[test]
    fn applying_events_rebuilds_the_state() {
        let mut record = Record::default();
        record.apply(created());
        record.apply(RecordEvent::RecordUpdated {
            effective_from: Some(today()),
            datasheet: Datasheet::Employees,
            changes: fields(&[("email", Value::Null), ("department", json!("R&D"))]),
        });
        record.apply(RecordEvent::RecordArchived {
            datasheet: Datasheet::Employees,
        });
        assert_eq!(record.version(), 3);
        assert!(record.is_archived());
        assert_eq!(record.value("email"), None);
        assert_eq!(record.value("department"), Some(&json!("R&D")));
    }
}
