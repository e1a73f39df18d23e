//! Custom fields: per datasheet, administrators add fields of their own (text, long text,
//! number, date, boolean, single or multiple choice), change their label, required flag and
//! choices, and retire them. Each datasheet's field schema is a `FieldSchema` aggregate, so
//! every change to it is history. Record values of custom fields live beside the built-in ones
//! under `custom.<key>` and are checked against the schema the command carries.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::datasheet::Datasheet;
use crate::values::{bounded_text, long_text, parse_date, ShortText, ValueError};

/// Record field names of custom fields start with this.
pub const CUSTOM_PREFIX: &str = "custom.";
/// The most custom fields a datasheet has (retired ones included), and choices a field has.
pub const MAX_CUSTOM_FIELDS: usize = 100;
pub const MAX_OPTIONS: usize = 100;
const MAX_LABEL: usize = 100;
const MAX_KEY: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomKind {
    Text,
    LongText,
    Number,
    Date,
    Boolean,
    SingleChoice,
    MultipleChoice,
}

impl CustomKind {
    pub fn has_options(self) -> bool {
        matches!(self, CustomKind::SingleChoice | CustomKind::MultipleChoice)
    }
}

/// One custom field of a datasheet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomField {
    pub key: String,
    pub label: String,
    pub kind: CustomKind,
    pub required: bool,
    /// The choices of a choice field, in display order.
    pub options: Vec<String>,
    /// A retired field takes no new values; its values stay in history.
    pub retired: bool,
}

/// A datasheet's custom fields by key, and the order they were added in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomSchema {
    pub fields: BTreeMap<String, CustomField>,
    #[serde(default)]
    pub order: Vec<String>,
}

impl CustomSchema {
    /// The field a record field name (`custom.<key>`) refers to.
    pub fn field(&self, name: &str) -> Option<&CustomField> {
        self.fields.get(name.strip_prefix(CUSTOM_PREFIX)?)
    }

    /// Every field, retired ones included, in the order they were added.
    pub fn all(&self) -> impl Iterator<Item = &CustomField> {
        self.order.iter().filter_map(|key| self.fields.get(key))
    }

    /// The live fields, in the order they were added.
    pub fn active(&self) -> impl Iterator<Item = &CustomField> {
        self.all().filter(|f| !f.retired)
    }

    /// Adds a field at the end.
    pub fn insert(&mut self, field: CustomField) {
        if !self.fields.contains_key(&field.key) {
            self.order.push(field.key.clone());
        }
        self.fields.insert(field.key.clone(), field);
    }
}

impl CustomField {
    /// The record field name of this field.
    pub fn name(&self) -> String {
        format!("{CUSTOM_PREFIX}{}", self.key)
    }

    /// Parses a raw value into its stored form: text, a number, `YYYY-MM-DD`, a boolean, one
    /// of the choices or a list of them; `null` (or an empty list) is no value.
    pub fn parse(&self, raw: &Value) -> Result<Value, ValueError> {
        if self.retired {
            return Err(ValueError::Retired);
        }
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let text = || {
            raw.as_str()
                .ok_or(ValueError::WrongType { expected: "string" })
        };
        let choice = |t: &str| {
            self.options
                .iter()
                .find(|o| o.as_str() == t.trim())
                .cloned()
                .ok_or(ValueError::NotAChoice)
        };
        Ok(match self.kind {
            CustomKind::Text => Value::String(ShortText::parse(text()?)?.as_str().to_owned()),
            CustomKind::LongText => Value::String(long_text(text()?, crate::datasheet::MAX_NOTES)?),
            CustomKind::Date => Value::String(parse_date(text()?)?.format("%Y-%m-%d").to_string()),
            CustomKind::Number => {
                let number = raw
                    .as_f64()
                    .filter(|n| n.is_finite())
                    .ok_or(ValueError::WrongType { expected: "number" })?;
                serde_json::Number::from_f64(number)
                    .map(Value::Number)
                    .ok_or(ValueError::WrongType { expected: "number" })?
            }
            CustomKind::Boolean => Value::Bool(raw.as_bool().ok_or(ValueError::WrongType {
                expected: "boolean",
            })?),
            CustomKind::SingleChoice => Value::String(choice(text()?)?),
            CustomKind::MultipleChoice => {
                let items = raw.as_array().ok_or(ValueError::WrongType {
                    expected: "list of strings",
                })?;
                let mut chosen: Vec<String> = Vec::new();
                for item in items {
                    let item = item.as_str().ok_or(ValueError::WrongType {
                        expected: "list of strings",
                    })?;
                    let option = choice(item)?;
                    if !chosen.contains(&option) {
                        chosen.push(option);
                    }
                }
                if chosen.is_empty() {
                    Value::Null
                } else {
                    Value::Array(chosen.into_iter().map(Value::String).collect())
                }
            }
        })
    }
}

/// The schema stream of a datasheet: a fixed id per datasheet in every tenant.
pub fn schema_id(datasheet: Datasheet) -> Uuid {
    let n: u128 = match datasheet {
        Datasheet::Employees => 1,
        Datasheet::Contacts => 2,
        Datasheet::Applicants => 3,
    };
    // A recognisable, valid UUID: `c057005c-...` + the datasheet's number.
    Uuid::from_u128(0xc057_005c_0000_4000_8000_0000_0000_0000 | n)
}

/// The `FieldSchema` aggregate: one datasheet's custom fields.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSchema {
    schema: CustomSchema,
    version: u64,
}

/// A change to one datasheet's schema; `datasheet` is the stream's (see [`schema_id`]).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldSchemaCommand {
    Add {
        datasheet: Datasheet,
        key: String,
        label: String,
        kind: CustomKind,
        required: bool,
        options: Vec<String>,
    },
    /// Changes what is given; a choice list is replaced whole (values already stored keep
    /// their history; new values must be among the new choices).
    Change {
        datasheet: Datasheet,
        key: String,
        label: Option<String>,
        required: Option<bool>,
        options: Option<Vec<String>>,
    },
    Retire {
        datasheet: Datasheet,
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FieldSchemaEvent {
    CustomFieldAdded {
        datasheet: Datasheet,
        key: String,
        label: String,
        kind: CustomKind,
        required: bool,
        options: Vec<String>,
    },
    CustomFieldChanged {
        datasheet: Datasheet,
        key: String,
        label: Option<String>,
        required: Option<bool>,
        options: Option<Vec<String>>,
    },
    CustomFieldRetired {
        datasheet: Datasheet,
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldSchemaError {
    #[error("the key must be 1 to 40 lower-case letters, digits and underscores, starting with a letter")]
    InvalidKey,
    #[error("a custom field `{0}` exists already (retired keys are not reused)")]
    KeyTaken(String),
    #[error("no custom field `{0}`")]
    UnknownField(String),
    #[error("the custom field `{0}` is retired")]
    Retired(String),
    #[error("field `{field}` {reason}")]
    Invalid {
        field: &'static str,
        reason: ValueError,
    },
    #[error("a choice field needs 1 to 100 distinct choices; other fields take none")]
    Options,
    #[error("a datasheet has at most 100 custom fields")]
    TooMany,
    /// More than one of the above, each about its own field: told at once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<FieldSchemaError>),
}

impl DomainEvent for FieldSchemaEvent {
    fn event_type(&self) -> String {
        match self {
            FieldSchemaEvent::CustomFieldAdded { .. } => "CustomFieldAdded",
            FieldSchemaEvent::CustomFieldChanged { .. } => "CustomFieldChanged",
            FieldSchemaEvent::CustomFieldRetired { .. } => "CustomFieldRetired",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

fn check_key(key: &str) -> Result<(), FieldSchemaError> {
    let ok = (1..=MAX_KEY).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(FieldSchemaError::InvalidKey)
    }
}

fn label(raw: &str) -> Result<String, FieldSchemaError> {
    bounded_text(raw, MAX_LABEL).map_err(|reason| FieldSchemaError::Invalid {
        field: "label",
        reason,
    })
}

fn options(kind: CustomKind, raw: Vec<String>) -> Result<Vec<String>, FieldSchemaError> {
    if !kind.has_options() {
        return if raw.is_empty() {
            Ok(raw)
        } else {
            Err(FieldSchemaError::Options)
        };
    }
    let mut parsed: Vec<String> = Vec::new();
    for option in raw {
        let option = ShortText::parse(&option).map_err(|reason| FieldSchemaError::Invalid {
            field: "options",
            reason,
        })?;
        if parsed.iter().any(|o| o == option.as_str()) {
            return Err(FieldSchemaError::Options);
        }
        parsed.push(option.as_str().to_owned());
    }
    if parsed.is_empty() || parsed.len() > MAX_OPTIONS {
        return Err(FieldSchemaError::Options);
    }
    Ok(parsed)
}

impl FieldSchema {
    pub fn schema(&self) -> &CustomSchema {
        &self.schema
    }

    fn live(&self, key: &str) -> Result<&CustomField, FieldSchemaError> {
        let field = self
            .schema
            .fields
            .get(key)
            .ok_or_else(|| FieldSchemaError::UnknownField(key.to_owned()))?;
        if field.retired {
            return Err(FieldSchemaError::Retired(key.to_owned()));
        }
        Ok(field)
    }
}

impl Aggregate for FieldSchema {
    const TYPE: &'static str = "field_schema";
    type Command = FieldSchemaCommand;
    type Event = FieldSchemaEvent;
    type Error = FieldSchemaError;
    type Services = ();

    async fn handle(
        &mut self,
        command: FieldSchemaCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), FieldSchemaError> {
        let event = match command {
            FieldSchemaCommand::Add {
                datasheet,
                key,
                label: raw_label,
                kind,
                required,
                options: raw_options,
            } => {
                // Every problem of the definition at once.
                let mut problems = Vec::new();
                if let Err(err) = check_key(&key) {
                    problems.push(err);
                } else if self.schema.fields.contains_key(&key) {
                    problems.push(FieldSchemaError::KeyTaken(key.clone()));
                }
                if self.schema.fields.len() >= MAX_CUSTOM_FIELDS {
                    problems.push(FieldSchemaError::TooMany);
                }
                let (label, options) = match (label(&raw_label), options(kind, raw_options)) {
                    (Ok(label), Ok(options)) if problems.is_empty() => (label, options),
                    (label, options) => {
                        problems.extend(label.err());
                        problems.extend(options.err());
                        return Err(crate::values::told_at_once(
                            problems,
                            FieldSchemaError::Several,
                        ));
                    }
                };
                FieldSchemaEvent::CustomFieldAdded {
                    datasheet,
                    label,
                    options,
                    key,
                    kind,
                    required,
                }
            }
            FieldSchemaCommand::Change {
                datasheet,
                key,
                label: raw_label,
                required,
                options: raw_options,
            } => {
                let field = self.live(&key)?;
                let label = raw_label
                    .map(|l| label(&l))
                    .transpose()?
                    .filter(|l| *l != field.label);
                let options = raw_options
                    .map(|o| options(field.kind, o))
                    .transpose()?
                    .filter(|o| *o != field.options);
                let required = required.filter(|r| *r != field.required);
                if label.is_none() && options.is_none() && required.is_none() {
                    return Ok(());
                }
                FieldSchemaEvent::CustomFieldChanged {
                    datasheet,
                    key,
                    label,
                    required,
                    options,
                }
            }
            FieldSchemaCommand::Retire { datasheet, key } => {
                self.live(&key)?;
                FieldSchemaEvent::CustomFieldRetired { datasheet, key }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: FieldSchemaEvent) {
        self.version += 1;
        match event {
            FieldSchemaEvent::CustomFieldAdded {
                key,
                label,
                kind,
                required,
                options,
                ..
            } => {
                self.schema.insert(CustomField {
                    key,
                    label,
                    kind,
                    required,
                    options,
                    retired: false,
                });
            }
            FieldSchemaEvent::CustomFieldChanged {
                key,
                label,
                required,
                options,
                ..
            } => {
                if let Some(field) = self.schema.fields.get_mut(&key) {
                    if let Some(label) = label {
                        field.label = label;
                    }
                    if let Some(required) = required {
                        field.required = required;
                    }
                    if let Some(options) = options {
                        field.options = options;
                    }
                }
            }
            FieldSchemaEvent::CustomFieldRetired { key, .. } => {
                if let Some(field) = self.schema.fields.get_mut(&key) {
                    field.retired = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type SchemaTest = TestFramework<FieldSchema>;
    const SHEET: Datasheet = Datasheet::Employees;

    fn add(key: &str, kind: CustomKind, options: &[&str]) -> FieldSchemaCommand {
        FieldSchemaCommand::Add {
            datasheet: SHEET,
            key: key.into(),
            label: " Shirt size ".into(),
            kind,
            required: false,
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    fn added(key: &str, kind: CustomKind, options: &[&str]) -> FieldSchemaEvent {
        FieldSchemaEvent::CustomFieldAdded {
            datasheet: SHEET,
            key: key.into(),
            label: "Shirt size".into(),
            kind,
            required: false,
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    #[test]
    fn fields_are_added_with_valid_keys_and_choices() {
        SchemaTest::with(())
            .given_no_previous_events()
            .when(add("shirt_size", CustomKind::SingleChoice, &["S", "M"]))
            .then_expect_events(vec![added(
                "shirt_size",
                CustomKind::SingleChoice,
                &["S", "M"],
            )]);
        for bad in ["Shirt", "1size", "", "a-b", &"x".repeat(41)] {
            SchemaTest::with(())
                .given_no_previous_events()
                .when(add(bad, CustomKind::Text, &[]))
                .then_expect_error(FieldSchemaError::InvalidKey);
        }
        for (kind, options) in [
            (CustomKind::SingleChoice, &[][..]),
            (CustomKind::MultipleChoice, &["S", "S"][..]),
            (CustomKind::Text, &["S"][..]),
        ] {
            SchemaTest::with(())
                .given_no_previous_events()
                .when(add("size", kind, options))
                .then_expect_error(FieldSchemaError::Options);
        }
    }

    #[test]
    fn retired_keys_stay_taken_and_take_no_changes() {
        let history = vec![
            added("badge", CustomKind::Text, &[]),
            FieldSchemaEvent::CustomFieldRetired {
                datasheet: SHEET,
                key: "badge".into(),
            },
        ];
        SchemaTest::with(())
            .given(history.clone())
            .when(add("badge", CustomKind::Text, &[]))
            .then_expect_error(FieldSchemaError::KeyTaken("badge".into()));
        SchemaTest::with(())
            .given(history)
            .when(FieldSchemaCommand::Change {
                datasheet: SHEET,
                key: "badge".into(),
                label: Some("Badge".into()),
                required: None,
                options: None,
            })
            .then_expect_error(FieldSchemaError::Retired("badge".into()));
    }

    #[test]
    fn values_are_checked_against_the_field() {
        let field = |kind, options: &[&str]| CustomField {
            key: "f".into(),
            label: "F".into(),
            kind,
            required: false,
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            retired: false,
        };
        let size = field(CustomKind::MultipleChoice, &["S", "M"]);
        assert_eq!(size.parse(&json!(["M", "S", "M"])), Ok(json!(["M", "S"])));
        assert_eq!(size.parse(&json!(["XL"])), Err(ValueError::NotAChoice));
        assert_eq!(size.parse(&json!([])), Ok(Value::Null));
        let number = field(CustomKind::Number, &[]);
        assert_eq!(number.parse(&json!(42.5)), Ok(json!(42.5)));
        assert_eq!(
            number.parse(&json!("42")),
            Err(ValueError::WrongType { expected: "number" })
        );
        assert_eq!(
            field(CustomKind::Boolean, &[]).parse(&json!(true)),
            Ok(json!(true))
        );
        assert_eq!(
            field(CustomKind::Date, &[]).parse(&json!("2026-02-30")),
            Err(ValueError::InvalidDate)
        );
        let mut retired = field(CustomKind::Text, &[]);
        retired.retired = true;
        assert_eq!(retired.parse(&json!("x")), Err(ValueError::Retired));
    }
}
