//! The typed conditions of record lists, one input per kind of value: `StringFilter`,
//! `DateFilter`, `IdFilter`, an enum's filter, ... Each datasheet's filter (`EmployeeFilter`,
//! generated from its field table in [`super::records`]) gives every field the filter of its
//! kind, so a client's code generator knows each value's type. Each filter hands its
//! conditions on as operators on text ([`FieldFilter::ops`]), which
//! `resolvers::record_query` checks against the field and puts in canonical form.

use async_graphql::{InputObject, ID};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use custos_projections::record_query::Op;
use serde::Serialize;

use super::enums::{EmploymentType, PipelineStage};

/// A filter on one field: its conditions (all must hold), values as text.
pub(crate) trait FieldFilter {
    fn ops(self) -> Vec<Op>;
}

/// A datasheet's filter (`EmployeeFilter`...) taken apart: each field's conditions by the
/// domain's field name, then the parts every datasheet's filter has.
pub(crate) struct Split<F> {
    pub(crate) fields: Vec<(&'static str, Vec<Op>)>,
    pub(crate) created_at: Option<Vec<Op>>,
    pub(crate) updated_at: Option<Vec<Op>>,
    pub(crate) custom: Option<Vec<CustomFieldFilter>>,
    pub(crate) and: Option<Vec<F>>,
    pub(crate) or: Option<Vec<F>>,
    pub(crate) not: Option<Box<F>>,
}

/// A datasheet's filter input, generated with its type (`types::records`).
pub(crate) trait TypedFilter: Sized {
    fn split(self) -> Split<Self>;
}

/// One key of a datasheet's order input: a field (by the domain's name) or a custom field.
pub(crate) enum OrderChoice {
    Field(&'static str, SortDirection),
    Custom(CustomFieldOrder),
}

/// A datasheet's order input (`EmployeeOrder`...), generated with its type.
pub(crate) trait TypedOrder {
    fn key(self) -> OrderChoice;
}

/// Collects a filter's conditions: `eq` … `lte` with their value as text.
#[derive(Default)]
struct Ops(Vec<Op>);

impl Ops {
    fn one<T>(
        mut self,
        value: Option<T>,
        text: impl Fn(T) -> String,
        op: fn(String) -> Op,
    ) -> Self {
        if let Some(value) = value {
            self.0.push(op(text(value)));
        }
        self
    }

    fn any<T>(mut self, values: Option<Vec<T>>, text: impl Fn(T) -> String) -> Self {
        if let Some(values) = values {
            self.0.push(Op::In(values.into_iter().map(text).collect()));
        }
        self
    }

    fn null(mut self, is_null: Option<bool>) -> Self {
        if let Some(is_null) = is_null {
            self.0.push(Op::IsNull(is_null));
        }
        self
    }
}

/// Conditions on a text field. Text compares as written, except that `contains` and
/// `startsWith` ignore case; a phone compares by its digits.
#[derive(InputObject, Default)]
pub(crate) struct StringFilter {
    pub(crate) eq: Option<String>,
    /// Also holds for records without a value.
    pub(crate) neq: Option<String>,
    #[graphql(name = "in")]
    pub(crate) in_: Option<Vec<String>>,
    pub(crate) gt: Option<String>,
    pub(crate) gte: Option<String>,
    pub(crate) lt: Option<String>,
    pub(crate) lte: Option<String>,
    /// Case-insensitive substring.
    pub(crate) contains: Option<String>,
    /// Case-insensitive prefix.
    pub(crate) starts_with: Option<String>,
    /// `true`: the field has no value; `false`: it has one.
    pub(crate) is_null: Option<bool>,
}

impl FieldFilter for StringFilter {
    fn ops(self) -> Vec<Op> {
        let text = |s: String| s;
        Ops::default()
            .one(self.eq, text, Op::Eq)
            .one(self.neq, text, Op::Neq)
            .any(self.in_, text)
            .one(self.gt, text, Op::Gt)
            .one(self.gte, text, Op::Gte)
            .one(self.lt, text, Op::Lt)
            .one(self.lte, text, Op::Lte)
            .one(self.contains, text, Op::Contains)
            .one(self.starts_with, text, Op::StartsWith)
            .null(self.is_null)
            .0
    }
}

/// Conditions on a list of texts (emails, phones, tags): each holds when some entry matches,
/// ignoring case.
#[derive(InputObject, Default)]
pub(crate) struct StringListFilter {
    /// Some entry is this value.
    pub(crate) eq: Option<String>,
    /// Some entry contains this text.
    pub(crate) contains: Option<String>,
    /// Some entry starts with this text.
    pub(crate) starts_with: Option<String>,
    /// `true`: the list is empty; `false`: it has an entry.
    pub(crate) is_null: Option<bool>,
}

impl FieldFilter for StringListFilter {
    fn ops(self) -> Vec<Op> {
        let text = |s: String| s;
        Ops::default()
            .one(self.eq, text, Op::Eq)
            .one(self.contains, text, Op::Contains)
            .one(self.starts_with, text, Op::StartsWith)
            .null(self.is_null)
            .0
    }
}

fn day(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// Conditions on a date (`YYYY-MM-DD`).
#[derive(InputObject, Default)]
pub(crate) struct DateFilter {
    pub(crate) eq: Option<NaiveDate>,
    /// Also holds for records without a value.
    pub(crate) neq: Option<NaiveDate>,
    #[graphql(name = "in")]
    pub(crate) in_: Option<Vec<NaiveDate>>,
    pub(crate) gt: Option<NaiveDate>,
    pub(crate) gte: Option<NaiveDate>,
    pub(crate) lt: Option<NaiveDate>,
    pub(crate) lte: Option<NaiveDate>,
    /// `true`: the field has no value; `false`: it has one.
    pub(crate) is_null: Option<bool>,
}

impl FieldFilter for DateFilter {
    fn ops(self) -> Vec<Op> {
        Ops::default()
            .one(self.eq, day, Op::Eq)
            .one(self.neq, day, Op::Neq)
            .any(self.in_, day)
            .one(self.gt, day, Op::Gt)
            .one(self.gte, day, Op::Gte)
            .one(self.lt, day, Op::Lt)
            .one(self.lte, day, Op::Lte)
            .null(self.is_null)
            .0
    }
}

fn moment(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Conditions on a moment (RFC 3339): when a record was created or last changed.
#[derive(InputObject, Default)]
pub(crate) struct DateTimeFilter {
    pub(crate) eq: Option<DateTime<Utc>>,
    pub(crate) neq: Option<DateTime<Utc>>,
    pub(crate) gt: Option<DateTime<Utc>>,
    pub(crate) gte: Option<DateTime<Utc>>,
    pub(crate) lt: Option<DateTime<Utc>>,
    pub(crate) lte: Option<DateTime<Utc>>,
}

impl FieldFilter for DateTimeFilter {
    fn ops(self) -> Vec<Op> {
        Ops::default()
            .one(self.eq, moment, Op::Eq)
            .one(self.neq, moment, Op::Neq)
            .one(self.gt, moment, Op::Gt)
            .one(self.gte, moment, Op::Gte)
            .one(self.lt, moment, Op::Lt)
            .one(self.lte, moment, Op::Lte)
            .0
    }
}

fn id(id: ID) -> String {
    id.0
}

/// Conditions on a reference to another record.
#[derive(InputObject, Default)]
pub(crate) struct IdFilter {
    pub(crate) eq: Option<ID>,
    /// Also holds for records without a value.
    pub(crate) neq: Option<ID>,
    #[graphql(name = "in")]
    pub(crate) in_: Option<Vec<ID>>,
    /// `true`: the field has no value; `false`: it has one.
    pub(crate) is_null: Option<bool>,
}

impl FieldFilter for IdFilter {
    fn ops(self) -> Vec<Op> {
        Ops::default()
            .one(self.eq, id, Op::Eq)
            .one(self.neq, id, Op::Neq)
            .any(self.in_, id)
            .null(self.is_null)
            .0
    }
}

fn number(n: f64) -> String {
    n.to_string()
}

/// Conditions on a number (a custom field).
#[derive(InputObject, Default)]
pub(crate) struct NumberFilter {
    pub(crate) eq: Option<f64>,
    /// Also holds for records without a value.
    pub(crate) neq: Option<f64>,
    #[graphql(name = "in")]
    pub(crate) in_: Option<Vec<f64>>,
    pub(crate) gt: Option<f64>,
    pub(crate) gte: Option<f64>,
    pub(crate) lt: Option<f64>,
    pub(crate) lte: Option<f64>,
    /// `true`: the field has no value; `false`: it has one.
    pub(crate) is_null: Option<bool>,
}

impl FieldFilter for NumberFilter {
    fn ops(self) -> Vec<Op> {
        Ops::default()
            .one(self.eq, number, Op::Eq)
            .one(self.neq, number, Op::Neq)
            .any(self.in_, number)
            .one(self.gt, number, Op::Gt)
            .one(self.gte, number, Op::Gte)
            .one(self.lt, number, Op::Lt)
            .one(self.lte, number, Op::Lte)
            .null(self.is_null)
            .0
    }
}

/// Conditions on a yes/no value (a custom field).
#[derive(InputObject, Default)]
pub(crate) struct BooleanFilter {
    pub(crate) eq: Option<bool>,
    /// `true`: the field has no value; `false`: it has one.
    pub(crate) is_null: Option<bool>,
}

impl FieldFilter for BooleanFilter {
    fn ops(self) -> Vec<Op> {
        Ops::default()
            .one(self.eq, |b: bool| b.to_string(), Op::Eq)
            .null(self.is_null)
            .0
    }
}

/// The stored (`snake_case`) name of an enum value.
fn stored<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// The filter of a choice field's enum.
pub(crate) trait Choice {
    type Filter: async_graphql::InputType + FieldFilter;
}

/// A filter input on one enum's values: `eq`, `neq`, `in`, `isNull`.
macro_rules! choice_filter {
    ($(#[doc = $doc:literal] $filter:ident($enum:ident);)*) => {$(
        #[doc = $doc]
        #[derive(InputObject, Default)]
        pub(crate) struct $filter {
            pub(crate) eq: Option<$enum>,
            /// Also holds for records without a value.
            pub(crate) neq: Option<$enum>,
            #[graphql(name = "in")]
                    pub(crate) in_: Option<Vec<$enum>>,
            /// `true`: the field has no value; `false`: it has one.
            pub(crate) is_null: Option<bool>,
        }

        impl FieldFilter for $filter {
            fn ops(self) -> Vec<Op> {
                Ops::default()
                    .one(self.eq, stored, Op::Eq)
                    .one(self.neq, stored, Op::Neq)
                    .any(self.in_, stored)
                    .null(self.is_null)
                    .0
            }
        }

        impl Choice for $enum {
            type Filter = $filter;
        }
    )*};
}

choice_filter! {
    /// Conditions on how an employee is employed.
    EmploymentTypeFilter(EmploymentType);
    /// Conditions on an applicant's stage.
    PipelineStageFilter(PipelineStage);
}

/// A condition on one custom field: its `key` and the filter of its kind — `text` for text
/// and single-choice fields, `number`, `date`, `boolean`, or `choices` for multiple-choice
/// fields. Give exactly one.
#[derive(InputObject)]
pub(crate) struct CustomFieldFilter {
    /// The custom field's key (`shirt_size`).
    pub(crate) key: String,
    pub(crate) text: Option<StringFilter>,
    pub(crate) number: Option<NumberFilter>,
    pub(crate) date: Option<DateFilter>,
    pub(crate) boolean: Option<BooleanFilter>,
    pub(crate) choices: Option<StringListFilter>,
}

/// Which way a list key orders; records without a value come last either way.
#[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq, Default)]
pub(crate) enum SortDirection {
    #[default]
    Asc,
    Desc,
}

/// An order by a custom field.
#[derive(InputObject)]
pub(crate) struct CustomFieldOrder {
    /// The custom field's key (`shirt_size`); multiple-choice fields cannot order.
    pub(crate) key: String,
    #[graphql(default)]
    pub(crate) direction: SortDirection,
}
