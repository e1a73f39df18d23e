//! Datasheets and their fields: which fields a record of each datasheet has, and how each
//! field's raw value is parsed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use uuid::Uuid;

use crate::pipeline::Stage;
use crate::values::{long_text, parse_date, Email, PersonName, Phone, ShortText, ValueError};

/// A datasheet: a kind of record about people that a tenant keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Datasheet {
    Employees,
    Contacts,
    Applicants,
}

/// How a field's raw value is parsed and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    PersonName,
    Email,
    Phone,
    ShortText,
    /// Multi-line text of at most `max` characters.
    LongText {
        max: usize,
    },
    /// `YYYY-MM-DD`.
    Date,
    /// One of a fixed list (`joined` lists them for error messages).
    Choice {
        options: &'static [&'static str],
        joined: &'static str,
    },
    /// An applicant's pipeline stage (see [`crate::pipeline::Stage`]).
    Stage,
    /// The id of another employee record; the service checks it exists and makes no cycle.
    EmployeeRef,
    /// Lists: at most [`MAX_LIST`] distinct entries (tags: [`MAX_TAGS`]); an empty list is no
    /// value.
    EmailList,
    PhoneList,
    TagList,
}

/// The most entries an email or phone list holds.
pub const MAX_LIST: usize = 20;
/// The most tags a contact has.
pub const MAX_TAGS: usize = 50;
/// The longest address and notes.
pub const MAX_ADDRESS: usize = 1_000;
pub const MAX_NOTES: usize = 10_000;

/// Kinds of employment.
pub const EMPLOYMENT_TYPES: &[&str] = &[
    "full_time",
    "part_time",
    "contractor",
    "intern",
    "temporary",
];

/// One built-in field of a datasheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field's stable name, as it appears in events and history (`snake_case`).
    pub name: &'static str,
    pub kind: FieldKind,
    /// A required field must be present at creation and can never be cleared.
    pub required: bool,
}

const fn field(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: false,
    }
}

const fn required(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: true,
    }
}

const ADDRESS: FieldKind = FieldKind::LongText { max: MAX_ADDRESS };
const NOTES: FieldKind = FieldKind::LongText { max: MAX_NOTES };

const EMPLOYEE_FIELDS: &[FieldSpec] = &[
    required("first_name", FieldKind::PersonName),
    required("last_name", FieldKind::PersonName),
    field("email", FieldKind::Email),
    field("phone", FieldKind::Phone),
    field("date_of_birth", FieldKind::Date),
    field("address", ADDRESS),
    field("job_title", FieldKind::ShortText),
    field("department", FieldKind::ShortText),
    field("manager_id", FieldKind::EmployeeRef),
    field(
        "employment_type",
        FieldKind::Choice {
            options: EMPLOYMENT_TYPES,
            joined: "full_time, part_time, contractor, intern, temporary",
        },
    ),
    field("start_date", FieldKind::Date),
    field("end_date", FieldKind::Date),
    field("notes", NOTES),
];

const CONTACT_FIELDS: &[FieldSpec] = &[
    required("first_name", FieldKind::PersonName),
    required("last_name", FieldKind::PersonName),
    field("company", FieldKind::ShortText),
    field("job_title", FieldKind::ShortText),
    field("emails", FieldKind::EmailList),
    field("phones", FieldKind::PhoneList),
    field("address", ADDRESS),
    field("tags", FieldKind::TagList),
    field("notes", NOTES),
];

const APPLICANT_FIELDS: &[FieldSpec] = &[
    required("first_name", FieldKind::PersonName),
    required("last_name", FieldKind::PersonName),
    field("email", FieldKind::Email),
    field("phone", FieldKind::Phone),
    field("position", FieldKind::ShortText),
    field("source", FieldKind::ShortText),
    field("stage", FieldKind::Stage),
    field("applied_on", FieldKind::Date),
    field("notes", NOTES),
    field("talent_pool_until", FieldKind::Date),
];

impl Datasheet {
    pub const ALL: [Datasheet; 3] = [
        Datasheet::Employees,
        Datasheet::Contacts,
        Datasheet::Applicants,
    ];

    /// The stable name used in events, metadata and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Datasheet::Employees => "employees",
            Datasheet::Contacts => "contacts",
            Datasheet::Applicants => "applicants",
        }
    }

    /// The datasheet with this stable name.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == raw)
    }

    /// The datasheet's built-in fields, in display order.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            Datasheet::Employees => EMPLOYEE_FIELDS,
            Datasheet::Contacts => CONTACT_FIELDS,
            Datasheet::Applicants => APPLICANT_FIELDS,
        }
    }

    /// The field called `name`, if this datasheet has one.
    pub fn field(self, name: &str) -> Option<&'static FieldSpec> {
        self.fields().iter().find(|spec| spec.name == name)
    }
}

/// Parses a list of strings with `parse`, dropping duplicates (by `key`); no entries is no value.
fn list(
    raw: &Value,
    max: usize,
    parse: impl Fn(&str) -> Result<String, ValueError>,
    key: impl Fn(&str) -> String,
) -> Result<Value, ValueError> {
    let items = match raw {
        Value::Null => return Ok(Value::Null),
        Value::Array(items) => items,
        _ => {
            return Err(ValueError::WrongType {
                expected: "list of strings",
            })
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut parsed = Vec::new();
    for item in items {
        let text = item.as_str().ok_or(ValueError::WrongType {
            expected: "list of strings",
        })?;
        let value = parse(text)?;
        if seen.insert(key(&value)) {
            parsed.push(Value::String(value));
        }
    }
    if parsed.len() > max {
        return Err(ValueError::TooMany { max });
    }
    Ok(if parsed.is_empty() {
        Value::Null
    } else {
        Value::Array(parsed)
    })
}

impl FieldKind {
    /// Parses a raw JSON value into the canonical stored form: a string (trimmed, normalised),
    /// a list of strings, or `null` for "no value". Dates are stored as `YYYY-MM-DD`.
    pub fn parse(self, raw: &Value) -> Result<Value, ValueError> {
        match self {
            FieldKind::EmailList => {
                return list(
                    raw,
                    MAX_LIST,
                    |t| Email::parse(t).map(|e| e.as_str().to_owned()),
                    |e| e.to_lowercase(),
                )
            }
            FieldKind::PhoneList => {
                return list(
                    raw,
                    MAX_LIST,
                    |t| Phone::parse(t).map(|p| p.as_str().to_owned()),
                    str::to_owned,
                )
            }
            FieldKind::TagList => {
                return list(
                    raw,
                    MAX_TAGS,
                    |t| ShortText::parse(t).map(|s| s.as_str().to_owned()),
                    |t| t.to_lowercase(),
                )
            }
            _ => {}
        }
        let text = match raw {
            Value::Null => return Ok(Value::Null),
            Value::String(text) => text.as_str(),
            _ => return Err(ValueError::WrongType { expected: "string" }),
        };
        let canonical = match self {
            FieldKind::PersonName => PersonName::parse(text)?.as_str().to_owned(),
            FieldKind::Email => Email::parse(text)?.as_str().to_owned(),
            FieldKind::Phone => Phone::parse(text)?.as_str().to_owned(),
            FieldKind::ShortText => ShortText::parse(text)?.as_str().to_owned(),
            FieldKind::LongText { max } => long_text(text, max)?,
            FieldKind::Date => parse_date(text)?.format("%Y-%m-%d").to_string(),
            FieldKind::Choice { options, joined } => options
                .iter()
                .find(|option| **option == text.trim())
                .map(|option| (*option).to_owned())
                .ok_or(ValueError::NotAnOption { options: joined })?,
            FieldKind::Stage => Stage::parse(text)?.as_str().to_owned(),
            FieldKind::EmployeeRef => Uuid::try_parse(text.trim())
                .map_err(|_| ValueError::InvalidId)?
                .to_string(),
            FieldKind::EmailList | FieldKind::PhoneList | FieldKind::TagList => {
                unreachable!("lists are parsed above")
            }
        };
        Ok(Value::String(canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_field_kind_normalises_or_rejects() {
        assert_eq!(
            FieldKind::Phone.parse(&json!("+1 555 0100 200")),
            Ok(json!("+15550100200"))
        );
        assert_eq!(
            FieldKind::Date.parse(&json!(" 2024-01-05 ")),
            Ok(json!("2024-01-05"))
        );
        assert_eq!(FieldKind::ShortText.parse(&json!(" HR ")), Ok(json!("HR")));
        assert_eq!(FieldKind::Email.parse(&Value::Null), Ok(Value::Null));
        assert_eq!(
            FieldKind::PersonName.parse(&json!(42)),
            Err(ValueError::WrongType { expected: "string" })
        );
        assert_eq!(
            FieldKind::Date.parse(&json!("tomorrow")),
            Err(ValueError::InvalidDate)
        );
    }

    #[test]
    fn lists_choices_and_references_parse_to_canonical_values() {
        assert_eq!(
            FieldKind::EmailList.parse(&json!([
                "a@example.org",
                " A@example.org ",
                "b@example.org"
            ])),
            Ok(json!(["a@example.org", "b@example.org"]))
        );
        assert_eq!(FieldKind::TagList.parse(&json!([])), Ok(Value::Null));
        assert_eq!(
            FieldKind::PhoneList.parse(&json!(["+1 555 0100 200", 7])),
            Err(ValueError::WrongType {
                expected: "list of strings"
            })
        );
        let many: Vec<String> = (0..=MAX_LIST)
            .map(|i| format!("u{i}@example.org"))
            .collect();
        assert_eq!(
            FieldKind::EmailList.parse(&json!(many)),
            Err(ValueError::TooMany { max: MAX_LIST })
        );
        let kind = Datasheet::Employees.field("employment_type").unwrap().kind;
        assert_eq!(kind.parse(&json!("part_time")), Ok(json!("part_time")));
        assert!(matches!(
            kind.parse(&json!("gig")),
            Err(ValueError::NotAnOption { .. })
        ));
        assert_eq!(
            FieldKind::EmployeeRef.parse(&json!("not an id")),
            Err(ValueError::InvalidId)
        );
        assert_eq!(
            FieldKind::LongText { max: 20 }.parse(&json!("line one\nline two")),
            Ok(json!("line one\nline two"))
        );
        assert_eq!(
            FieldKind::LongText { max: 5 }.parse(&json!("too long")),
            Err(ValueError::TooLong { max: 5 })
        );
    }

    #[test]
    fn datasheets_know_their_fields() {
        let sheet = Datasheet::Employees;
        assert_eq!(sheet.as_str(), "employees");
        assert!(sheet.field("first_name").is_some_and(|f| f.required));
        assert!(sheet.field("email").is_some_and(|f| !f.required));
        assert!(sheet.field("salary").is_none());
    }
}
