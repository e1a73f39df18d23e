//! Datasheets and their fields: which fields a record of each datasheet has, and how each
//! field's raw value is parsed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::values::{parse_date, Email, PersonName, Phone, ShortText, ValueError};

/// A datasheet: a kind of record about people that a tenant keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Datasheet {
    Employees,
}

/// How a field's raw value is parsed and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    PersonName,
    Email,
    Phone,
    ShortText,
    Date,
}

/// One built-in field of a datasheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field's stable name, as it appears in events and history (`snake_case`).
    pub name: &'static str,
    pub kind: FieldKind,
    /// A required field must be present at creation and can never be cleared.
    pub required: bool,
}

const EMPLOYEE_FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "first_name",
        kind: FieldKind::PersonName,
        required: true,
    },
    FieldSpec {
        name: "last_name",
        kind: FieldKind::PersonName,
        required: true,
    },
    FieldSpec {
        name: "email",
        kind: FieldKind::Email,
        required: false,
    },
    FieldSpec {
        name: "phone",
        kind: FieldKind::Phone,
        required: false,
    },
    FieldSpec {
        name: "job_title",
        kind: FieldKind::ShortText,
        required: false,
    },
    FieldSpec {
        name: "department",
        kind: FieldKind::ShortText,
        required: false,
    },
    FieldSpec {
        name: "start_date",
        kind: FieldKind::Date,
        required: false,
    },
];

impl Datasheet {
    pub const ALL: [Datasheet; 1] = [Datasheet::Employees];

    /// The stable name used in events, metadata and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Datasheet::Employees => "employees",
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
        }
    }

    /// The field called `name`, if this datasheet has one.
    pub fn field(self, name: &str) -> Option<&'static FieldSpec> {
        self.fields().iter().find(|spec| spec.name == name)
    }
}

impl FieldKind {
    /// Parses a raw JSON value into the canonical stored form: a string (trimmed, normalised)
    /// or `null` for "no value". Dates are stored as `YYYY-MM-DD`.
    pub fn parse(self, raw: &Value) -> Result<Value, ValueError> {
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
            FieldKind::Date => parse_date(text)?.format("%Y-%m-%d").to_string(),
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
    fn datasheets_know_their_fields() {
        let sheet = Datasheet::Employees;
        assert_eq!(sheet.as_str(), "employees");
        assert!(sheet.field("first_name").is_some_and(|f| f.required));
        assert!(sheet.field("email").is_some_and(|f| !f.required));
        assert!(sheet.field("salary").is_none());
    }
}
