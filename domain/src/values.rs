//! Value objects: values with rules, parsed once at the edge (parse, don't validate).

use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

/// Why a raw value was rejected. Carried inside field-level errors so a client learns which
/// field failed and why, never the value itself (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ValueError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("is not a valid email address")]
    InvalidEmail,
    #[error("is not a valid phone number (digits with an optional leading +, 7 to 15 digits)")]
    InvalidPhone,
    #[error("is not a valid date (expected YYYY-MM-DD)")]
    InvalidDate,
    #[error("has the wrong type (expected {expected})")]
    WrongType { expected: &'static str },
    #[error("must not contain control characters")]
    ControlCharacters,
    #[error("must be one of: {options}")]
    NotAnOption { options: &'static str },
    #[error("must have at most {max} entries")]
    TooMany { max: usize },
    #[error("cannot move from `{from}` to `{to}`")]
    IllegalTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("must not be before the start date")]
    EndBeforeStart,
    #[error("is not a valid record id")]
    InvalidId,
    #[error("is not one of the field's choices")]
    NotAChoice,
    #[error("is a retired field and takes no new values")]
    Retired,
    #[error("must be a date from 1900-01-01 to ten years from today")]
    DateOutOfRange,
    #[error("must not be before the day the record takes effect")]
    BeforeRecordStart,
    #[error("cannot be in the future for a new record: a record takes effect when it is created or earlier")]
    FutureCreation,
}

fn trimmed(raw: &str, max: usize) -> Result<&str, ValueError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(ValueError::Empty);
    }
    if value.chars().count() > max {
        return Err(ValueError::TooLong { max });
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ValueError::ControlCharacters);
    }
    Ok(value)
}

/// One line of text of at most `max` characters (a name, a label): trimmed, non-empty, no
/// control characters.
pub fn bounded_text(raw: &str, max: usize) -> Result<String, ValueError> {
    trimmed(raw, max).map(str::to_owned)
}

/// Multi-line free text such as notes or an address: trimmed, non-empty, at most `max`
/// characters; line breaks and tabs are kept, other control characters refused.
pub fn long_text(raw: &str, max: usize) -> Result<String, ValueError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(ValueError::Empty);
    }
    if value.chars().count() > max {
        return Err(ValueError::TooLong { max });
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ValueError::ControlCharacters);
    }
    Ok(value.to_owned())
}

/// A person's given or family name: trimmed, non-empty, at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonName(String);

impl PersonName {
    pub const MAX: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        trimmed(raw, Self::MAX).map(|v| Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short free-text value such as a job title or department: trimmed, non-empty, at most
/// 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortText(String);

impl ShortText {
    pub const MAX: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        trimmed(raw, Self::MAX).map(|v| Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address as RFC 5322 `addr-spec` (checked by the `email_address` crate), trimmed,
/// with a domain part that contains a dot. The original case is kept; [`Email::normalized`]
/// gives the lower-cased form used for lookups and uniqueness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const MAX: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let value = trimmed(raw, Self::MAX)?;
        let parsed = email_address::EmailAddress::parse_with_options(
            value,
            email_address::Options::default().without_display_text(),
        )
        .map_err(|_| ValueError::InvalidEmail)?;
        if !parsed.domain().contains('.') || parsed.domain().ends_with('.') {
            return Err(ValueError::InvalidEmail);
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lower-cased form: what lookups and uniqueness compare.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A phone number, normalised to E.164 shape: an optional leading `+` and 7 to 15 digits.
/// Spaces, dots, dashes and parentheses are accepted as separators and dropped.
///
/// Full numbering-plan validation (the `phonenumber` crate) needs a country context that
/// datasheets do not have and adds a large generated table to every build; the E.164 shape
/// check is what the read models and the blind index need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let value = trimmed(raw, 32)?;
        let (plus, rest) = match value.strip_prefix('+') {
            Some(rest) => ("+", rest),
            None => ("", value),
        };
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '.' | '-' | '(' | ')' => {}
                _ => return Err(ValueError::InvalidPhone),
            }
        }
        if !(7..=15).contains(&digits.len()) {
            return Err(ValueError::InvalidPhone);
        }
        Ok(Self(format!("{plus}{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A calendar date written exactly as `YYYY-MM-DD`, with a year from 1 to 9999. (chrono alone
/// would also take year 0, signed and five-digit years, which PostgreSQL's `date` refuses.)
pub fn parse_date(raw: &str) -> Result<NaiveDate, ValueError> {
    let raw = raw.trim();
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err(ValueError::InvalidDate);
    }
    let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| ValueError::InvalidDate)?;
    if date.year() < 1 {
        return Err(ValueError::InvalidDate);
    }
    Ok(date)
}

macro_rules! string_newtype_conversions {
    ($($ty:ident),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = ValueError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> Self {
                value.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_newtype_conversions!(PersonName, Email, Phone);

/// Problems told at once: the one of a list of one, or all of them as `several` (a command's
/// `Several` error). `problems` is never empty.
pub(crate) fn told_at_once<E>(mut problems: Vec<E>, several: fn(Vec<E>) -> E) -> E {
    if problems.len() == 1 {
        problems.remove(0)
    } else {
        several(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_must_not_be_empty() {
        assert_eq!(PersonName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert_eq!(PersonName::parse("   "), Err(ValueError::Empty));
        assert_eq!(PersonName::parse(""), Err(ValueError::Empty));
        assert_eq!(
            PersonName::parse(&"x".repeat(201)),
            Err(ValueError::TooLong { max: 200 })
        );
        assert_eq!(
            PersonName::parse("Ada\u{0}"),
            Err(ValueError::ControlCharacters)
        );
        assert!(PersonName::parse("Zoë O'Brien-Łukasiewicz").is_ok());
    }

    #[test]
    fn emails_must_be_addresses_with_a_dotted_domain() {
        assert_eq!(
            Email::parse(" Ada@Example.org ").unwrap().as_str(),
            "Ada@Example.org"
        );
        assert_eq!(
            Email::parse("Ada@Example.org").unwrap().normalized(),
            "ada@example.org"
        );
        for bad in [
            "ada",
            "ada@",
            "@example.org",
            "ada@localhost",
            "ada@@example.org",
            "Ada <ada@example.org>",
            "ada@example.",
        ] {
            assert_eq!(Email::parse(bad), Err(ValueError::InvalidEmail), "{bad}");
        }
    }

    #[test]
    fn phones_are_normalised_to_e164_shape() {
        assert_eq!(
            Phone::parse("+44 (20) 7946-0958").unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(Phone::parse("030 1234567").unwrap().as_str(), "0301234567");
        for bad in [
            "123",
            "+1234567890123456",
            "phone",
            "+44 20 x",
            "++4420794609",
        ] {
            assert_eq!(Phone::parse(bad), Err(ValueError::InvalidPhone), "{bad}");
        }
    }

    #[test]
    fn dates_are_iso_8601_calendar_dates() {
        assert_eq!(
            parse_date("2024-02-29").unwrap(),
            NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
        );
        assert_eq!(parse_date("2023-02-29"), Err(ValueError::InvalidDate));
        assert_eq!(parse_date("29/02/2024"), Err(ValueError::InvalidDate));
        assert!(parse_date("0001-01-01").is_ok());
        assert!(parse_date("9999-12-31").is_ok());
        // Years PostgreSQL's `date` would refuse must never reach an event.
        for bad in [
            "0000-01-01",
            "-0001-01-01",
            "+10000-01-01",
            "10000-01-01",
            "2024-1-5",
            "2024-01-05T00:00",
        ] {
            assert_eq!(parse_date(bad), Err(ValueError::InvalidDate), "{bad}");
        }
    }

    #[test]
    fn serde_round_trip_rejects_invalid_values() {
        let email: Result<Email, _> = serde_json::from_str("\"not an email\"");
        assert!(email.is_err());
        let email: Email = serde_json::from_str("\"a@example.org\"").unwrap();
        assert_eq!(serde_json::to_string(&email).unwrap(), "\"a@example.org\"");
    }
}
