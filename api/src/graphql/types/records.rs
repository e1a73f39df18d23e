//! Records as the API shows them. What every record has is the `Record` interface, resolved
//! once ([`RecordCommon`]) and merged into each datasheet's type. Each datasheet's own type and
//! its create and update inputs are generated from one field table (`datasheet!` below), so a
//! built-in field is one row here and one in the domain (`Datasheet::fields`); a test checks
//! the two agree.

use std::sync::Arc;

use async_graphql::{
    Context, InputObject, Interface, MaybeUndefined, MergedObject, Object, OneofObject,
    SimpleObject, ID,
};
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::record::Fields;
use custos_domain::{Datasheet, Permission};
use custos_projections::records::{self, RecordRow};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::actor::Actor;
use super::custom_fields::{self, CustomFieldInput, CustomFieldValue};
use super::enums::{
    stored_enum, DatasheetKind, EmploymentType, PipelineStage, RestrictionReasonKind,
};
use super::filters::{
    Choice, CustomFieldFilter, CustomFieldOrder, DateFilter, DateTimeFilter, FieldFilter, IdFilter,
    OrderChoice, SortDirection, Split, StringFilter, StringListFilter, TypedFilter, TypedOrder,
};
use crate::error::ApiError;
use crate::graphql::context::Cx;

/// What every record has.
pub(crate) struct RecordCommon(Arc<RecordRow>);

#[Object]
impl RecordCommon {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn datasheet(&self) -> DatasheetKind {
        self.0.datasheet().into()
    }
    /// The number of changes so far; pass it as `expectedVersion` to change the record safely.
    async fn version(&self) -> i64 {
        self.0.version
    }
    /// Archived records are hidden from lists by default and read-only until restored.
    async fn archived(&self) -> bool {
        self.0.archived
    }
    /// When the record's subject was erased: its values are gone for good.
    async fn erased_at(&self) -> Option<DateTime<Utc>> {
        self.0.erased_at
    }
    /// Whether processing is restricted (GDPR Art. 18): readable and exportable, not changed.
    async fn restricted(&self) -> bool {
        self.0.restricted_at.is_some()
    }
    async fn restriction_reason(&self) -> Option<RestrictionReasonKind> {
        stored_enum(self.0.restriction_reason.as_deref())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn created_by(&self) -> Actor {
        Actor::new(self.0.created_by, None)
    }
    async fn updated_by(&self) -> Actor {
        Actor::new(self.0.updated_by, None)
    }
    /// Every live custom field of the datasheet with this record's value (`null` without one).
    async fn custom_fields(&self, ctx: &Context<'_>) -> Result<Vec<CustomFieldValue>, ApiError> {
        custom_fields::values(ctx, self.0.datasheet(), &self.0.fields).await
    }
    /// Changes entered to take effect on a later day, soonest first. The record's fields show
    /// the values in force today; each of these becomes one of them on its day.
    async fn pending_changes(&self, ctx: &Context<'_>) -> Result<Vec<PendingChange>, ApiError> {
        let pending = crate::graphql::loaders::load_pending_changes(ctx, self.0.id).await?;
        Ok(pending.into_iter().map(PendingChange::from).collect())
    }
}

/// A change of a record that takes effect on a later day.
#[derive(SimpleObject)]
pub(crate) struct PendingChange {
    /// The day it takes effect.
    effective_from: NaiveDate,
    recorded_at: DateTime<Utc>,
    recorded_by: Actor,
    /// The record's version it was recorded at: its entry in `recordHistory`.
    version: i64,
    /// The fields it changes, with their values from that day (`null`: cleared).
    changes: Vec<PendingValue>,
}

/// One field's value in a pending change.
#[derive(SimpleObject)]
pub(crate) struct PendingValue {
    field: String,
    value: Option<String>,
}

impl From<records::PendingChange> for PendingChange {
    fn from(pending: records::PendingChange) -> Self {
        Self {
            effective_from: pending.effective_from,
            recorded_at: pending.recorded_at,
            recorded_by: Actor::new(pending.recorded_by, None),
            version: pending.sequence,
            changes: pending
                .changes
                .0
                .iter()
                .map(|(name, value)| PendingValue {
                    field: crate::error::api_field_name(name),
                    value: crate::service::audit::history::display(Some(value)),
                })
                .collect(),
        }
    }
}

/// A datasheet's GraphQL object and its create and update inputs, from one field table.
///
/// Each row is a built-in field of the domain's table, in its order: `name: Kind,` where the
/// kind says how the field reads and is written — `Name` (required text), `Text`, `Date`,
/// `List` (of text), `Id` (of another record), `Choice(Enum)`, `ChoiceOr(Enum, Default)`.
/// `///` lines describe the field on the object; `[create = "..."]` describes it on the create
/// input. Rows starting with `fn` are read-only fields that are not the domain's: the record
/// a reference names (`Reference(field)`), a hire's link (`LinkId(column)`), or the employee
/// record it links to (`LinkedRecord(column)`). Create inputs take required fields as
/// non-null; update inputs are patches (omitted: unchanged, `null`: cleared).
macro_rules! datasheet {
    (
        $(#[doc = $object_doc:literal])*
        object $object:ident, fields $fields:ident;
        create $create:ident;
        $(#[doc = $update_doc:literal])*
        update $update:ident;
        filter $filter:ident, order $order:ident;
        { $($rows:tt)* }
    ) => {
        $(#[doc = $object_doc])*
        #[derive(MergedObject)]
        pub(crate) struct $object(RecordCommon, $fields);

        impl From<RecordRow> for $object {
            fn from(row: RecordRow) -> Self {
                let row = Arc::new(row);
                Self(RecordCommon(row.clone()), $fields(row))
            }
        }

        pub(crate) struct $fields(Arc<RecordRow>);

        datasheet!(@object $fields [] $($rows)*);
        datasheet!(@inputs ($create [] ) ([$(#[doc = $update_doc])*] $update []) $($rows)*);
        datasheet!(@filter ($object, $filter, $order) [] [] $($rows)*);
    };

    // The object's fields, one rule per kind.
    (@object $fields:ident [$($done:tt)*]) => {
        #[Object]
        impl $fields { $($done)* }
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Name, $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> &str {
                self.0.text(stringify!($name)).unwrap_or_default()
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Text, $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> Option<&str> {
                self.0.text(stringify!($name))
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Date, $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> Option<NaiveDate> {
                date(&self.0, stringify!($name))
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: List, $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> Vec<&str> {
                self.0.list(stringify!($name))
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Id, $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> Option<ID> {
                self.0.text(stringify!($name)).map(|id| ID(id.to_owned()))
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Choice($ty:ident),
        $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> Option<$ty> {
                stored_enum(self.0.text(stringify!($name)))
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident:
        ChoiceOr($ty:ident, $default:ident), $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> $ty {
                stored_enum(self.0.text(stringify!($name))).unwrap_or($ty::$default)
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* fn $name:ident: Reference($field:ident), $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self, ctx: &Context<'_>) -> Result<Option<Employee>, ApiError> {
                let id = self
                    .0
                    .text(stringify!($field))
                    .and_then(|id| Uuid::try_parse(id).ok());
                referenced_employee(ctx, id).await
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* fn $name:ident: LinkId($column:ident), $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self) -> Option<ID> {
                self.0.$column.map(|id| ID(id.to_string()))
            }
        ] $($rest)*);
    };
    (@object $fields:ident [$($done:tt)*]
        $(#[doc = $d:literal])* fn $name:ident: LinkedRecord($column:ident), $($rest:tt)*) => {
        datasheet!(@object $fields [$($done)*
            $(#[doc = $d])*
            async fn $name(&self, ctx: &Context<'_>) -> Result<Option<Employee>, ApiError> {
                referenced_employee(ctx, self.0.$column).await
            }
        ] $($rest)*);
    };

    // The inputs' fields: each row's input type, required or not on creation, a patch on
    // update. Read-only rows have none.
    (@inputs ($create:ident [$($c_done:tt)*])
        ([$(#[doc = $update_doc:literal])*] $update:ident [$($u_done:tt)*])) => {
        #[derive(InputObject, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub(crate) struct $create {
            $($c_done)*
            /// Values of the datasheet's custom fields.
            #[serde(skip_serializing_if = "Option::is_none")]
            custom_fields: Option<Vec<CustomFieldInput>>,
        }

        $(#[doc = $update_doc])*
        #[derive(InputObject, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub(crate) struct $update {
            $($u_done)*
            /// Custom field values to set; fields not listed stay as they are.
            #[serde(skip_serializing_if = "Option::is_none")]
            custom_fields: Option<Vec<CustomFieldInput>>,
        }
    };
    (@inputs $create:tt $update:tt $(#[doc = $d:literal])* fn $name:ident: $kind:ident($arg:ident),
        $($rest:tt)*) => {
        datasheet!(@inputs $create $update $($rest)*);
    };
    (@inputs $create:tt $update:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Name, $($rest:tt)*) => {
        datasheet!(@field $create $update [$([create = $c])?] $name (String) (String) $($rest)*);
    };
    (@inputs $create:tt $update:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: List, $($rest:tt)*) => {
        datasheet!(@field $create $update [$([create = $c])?] $name
            (Option<Vec<String>>) (Vec<String>) $($rest)*);
    };
    (@inputs $create:tt $update:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Id, $($rest:tt)*) => {
        datasheet!(@field $create $update [$([create = $c])?] $name (Option<ID>) (ID) $($rest)*);
    };
    (@inputs $create:tt $update:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Choice($ty:ident),
        $($rest:tt)*) => {
        datasheet!(@field $create $update [$([create = $c])?] $name (Option<$ty>) ($ty) $($rest)*);
    };
    (@inputs $create:tt $update:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident:
        ChoiceOr($ty:ident, $default:ident), $($rest:tt)*) => {
        datasheet!(@field $create $update [$([create = $c])?] $name (Option<$ty>) ($ty) $($rest)*);
    };
    // Text and dates: dates are `YYYY-MM-DD` strings, so that a bad one is a `VALIDATION`
    // error naming its field.
    (@inputs $create:tt $update:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: $kind:ident, $($rest:tt)*) => {
        datasheet!(@field $create $update [$([create = $c])?] $name
            (Option<String>) (String) $($rest)*);
    };
    // The filter's fields, each the filter of its kind, and the order's keys: every field
    // but lists. Read-only rows have neither.
    (@filter $names:tt $f:tt $o:tt) => {
        datasheet!(@filter_types $names $f $o);
    };
    (@filter $names:tt $f:tt $o:tt $(#[doc = $d:literal])* fn $name:ident: $kind:ident($arg:ident),
        $($rest:tt)*) => {
        datasheet!(@filter $names $f $o $($rest)*);
    };
    (@filter $names:tt [$($f:tt)*] $o:tt
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: List, $($rest:tt)*) => {
        datasheet!(@filter $names [$($f)* $name: (StringListFilter),] $o $($rest)*);
    };
    (@filter $names:tt [$($f:tt)*] [$($o:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Date, $($rest:tt)*) => {
        datasheet!(@filter $names [$($f)* $name: (DateFilter),] [$($o)* $name] $($rest)*);
    };
    (@filter $names:tt [$($f:tt)*] [$($o:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Id, $($rest:tt)*) => {
        datasheet!(@filter $names [$($f)* $name: (IdFilter),] [$($o)* $name] $($rest)*);
    };
    (@filter $names:tt [$($f:tt)*] [$($o:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: Choice($ty:ident),
        $($rest:tt)*) => {
        datasheet!(@filter $names [$($f)* $name: (<$ty as Choice>::Filter),] [$($o)* $name]
            $($rest)*);
    };
    (@filter $names:tt [$($f:tt)*] [$($o:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident:
        ChoiceOr($ty:ident, $default:ident), $($rest:tt)*) => {
        datasheet!(@filter $names [$($f)* $name: (<$ty as Choice>::Filter),] [$($o)* $name]
            $($rest)*);
    };
    // Names and text.
    (@filter $names:tt [$($f:tt)*] [$($o:tt)*]
        $(#[doc = $d:literal])* $([create = $c:literal])? $name:ident: $kind:ident, $($rest:tt)*) => {
        datasheet!(@filter $names [$($f)* $name: (StringFilter),] [$($o)* $name] $($rest)*);
    };
    (@filter_types ($object:ident, $filter:ident, $order:ident)
        [$($field:ident: ($($ty:tt)*),)*] [$($key:ident)*]) => {
        #[doc = concat!(
            "Conditions on ", stringify!($object), " records: everything given must hold. ",
            "A record without a value meets only `neq` and `isNull: true`."
        )]
        #[derive(InputObject, Default)]
        pub(crate) struct $filter {
            $($field: Option<$($ty)*>,)*
            /// When the record was created.
            created_at: Option<DateTimeFilter>,
            /// When the record last changed.
            updated_at: Option<DateTimeFilter>,
            /// Conditions on custom fields, each of which must hold.
            custom: Option<Vec<CustomFieldFilter>>,
            /// Each of these filters holds.
            and: Option<Vec<$filter>>,
            /// At least one of these filters holds.
            or: Option<Vec<$filter>>,
            /// This filter does not hold.
            not: Option<Box<$filter>>,
        }

        impl TypedFilter for $filter {
            fn split(self) -> Split<Self> {
                Split {
                    fields: [$((stringify!($field), self.$field.map(FieldFilter::ops)),)*]
                        .into_iter()
                        .filter_map(|(name, ops)| Some((name, ops?)))
                        .collect(),
                    created_at: self.created_at.map(FieldFilter::ops),
                    updated_at: self.updated_at.map(FieldFilter::ops),
                    custom: self.custom,
                    and: self.and,
                    or: self.or,
                    not: self.not,
                }
            }
        }

        #[doc = concat!(
            "One key of an order of ", stringify!($object), " records, a field and its ",
            "direction: `{lastName: ASC}`. Records without a value come last either way."
        )]
        #[derive(OneofObject)]
        #[allow(non_camel_case_types)]
        pub(crate) enum $order {
            $($key(SortDirection),)*
            created_at(SortDirection),
            updated_at(SortDirection),
            /// A custom field (multiple-choice fields cannot order).
            custom(CustomFieldOrder),
        }

        impl TypedOrder for $order {
            fn key(self) -> OrderChoice {
                match self {
                    $(Self::$key(direction) => OrderChoice::Field(stringify!($key), direction),)*
                    Self::created_at(direction) => OrderChoice::Field("created_at", direction),
                    Self::updated_at(direction) => OrderChoice::Field("updated_at", direction),
                    Self::custom(custom) => OrderChoice::Custom(custom),
                }
            }
        }
    };
    (@field ($create:ident [$($c_done:tt)*])
        ([$(#[doc = $update_doc:literal])*] $update:ident [$($u_done:tt)*])
        [$([create = $c:literal])?] $name:ident ($($create_ty:tt)*) ($($update_ty:tt)*)
        $($rest:tt)*) => {
        datasheet!(@inputs
            ($create [$($c_done)* $(#[doc = $c])? $name: $($create_ty)*,])
            ([$(#[doc = $update_doc])*] $update [$($u_done)*
                #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
                $name: MaybeUndefined<$($update_ty)*>,
            ])
            $($rest)*);
    };
}

datasheet! {
    /// An employee.
    object Employee, fields EmployeeFields;
    create CreateEmployeeInput;
    /// A patch: omitted fields stay as they are, `null` clears an optional field.
    update UpdateEmployeeInput;
    filter EmployeeFilter, order EmployeeOrder;
    {
        first_name: Name,
        last_name: Name,
        email: Text,
        [create = "Digits with an optional leading `+`; spaces, dots, dashes and parentheses are ignored."]
        phone: Text,
        [create = "`YYYY-MM-DD`, like every date here."]
        date_of_birth: Date,
        address: Text,
        job_title: Text,
        department: Text,
        [create = "Another active employee, who must not report to this one."]
        manager_id: Id,
        /// The manager's record (`null` without one, or without `read` on employees).
        fn manager: Reference(manager_id),
        employment_type: Choice(EmploymentType),
        start_date: Date,
        [create = "Not before `startDate`."]
        end_date: Date,
        notes: Text,
        /// The applicant record this employee was hired from, if any.
        fn hired_from_id: LinkId(hired_from),
    }
}

datasheet! {
    /// A contact: someone the organisation deals with who is not an employee.
    object Contact, fields ContactFields;
    create CreateContactInput;
    /// A patch: omitted fields stay as they are, `null` (or an empty list) clears a field. Lists
    /// are replaced whole.
    update UpdateContactInput;
    filter ContactFilter, order ContactOrder;
    {
        first_name: Name,
        last_name: Name,
        company: Text,
        job_title: Text,
        [create = "Up to 20; duplicates are dropped."]
        emails: List,
        [create = "Up to 20; duplicates are dropped."]
        phones: List,
        address: Text,
        [create = "Up to 50; duplicates (ignoring case) are dropped."]
        tags: List,
        notes: Text,
    }
}

datasheet! {
    /// A job applicant.
    object Applicant, fields ApplicantFields;
    create CreateApplicantInput;
    /// A patch: omitted fields stay as they are, `null` clears an optional field. `stage` moves
    /// one step forward (`APPLIED → SCREENING → INTERVIEW → OFFER`) or to `REJECTED` /
    /// `WITHDRAWN` from an open stage; `HIRED` only through `hireApplicant`.
    update UpdateApplicantInput;
    filter ApplicantFilter, order ApplicantOrder;
    {
        first_name: Name,
        last_name: Name,
        email: Text,
        phone: Text,
        /// The position applied for.
        position: Text,
        /// Where the application came from (a job board, a referral...).
        source: Text,
        [create = "`APPLIED` when omitted; `HIRED` only through `hireApplicant`."]
        stage: ChoiceOr(PipelineStage, Applied),
        applied_on: Date,
        notes: Text,
        /// Until when the applicant agreed to be kept in the talent pool.
        talent_pool_until: Date,
        /// The employee record created by hiring this applicant.
        fn hired_as_id: LinkId(hired_as),
        /// That employee's record (`null` before the hire, or without `read` on employees).
        fn hired_as: LinkedRecord(hired_as),
    }
}

/// A filter of one datasheet's records, for the fields that take any datasheet (`report`,
/// `exportRecords`): give the one of the `datasheet` argument.
#[derive(OneofObject)]
pub(crate) enum RecordsFilter {
    Employees(Box<EmployeeFilter>),
    Contacts(Box<ContactFilter>),
    Applicants(Box<ApplicantFilter>),
}

/// An order of one datasheet's records, for the fields that take any datasheet: give the one
/// of the `datasheet` argument.
#[derive(OneofObject)]
pub(crate) enum RecordsOrder {
    Employees(Vec<EmployeeOrder>),
    Contacts(Vec<ContactOrder>),
    Applicants(Vec<ApplicantOrder>),
}

fn date(row: &RecordRow, field: &str) -> Option<NaiveDate> {
    row.text(field)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// Loads the employees a record points at (managers, hires) within the caller's datasheet
/// permissions: a reference the caller may not read is `null`.
async fn referenced_employee(
    ctx: &Context<'_>,
    id: Option<Uuid>,
) -> Result<Option<Employee>, ApiError> {
    let Some(id) = id else {
        return Ok(None);
    };
    let cx = Cx::new(ctx)?;
    if !cx.caller.may(Datasheet::Employees, Permission::Read) {
        return Ok(None);
    }
    Ok(records::record(&cx.tenant().pool, id)
        .await?
        .filter(|row| row.datasheet() == Datasheet::Employees)
        .map(Employee::from))
}

/// The `Record` interface calls each type's own methods for its fields: these delegate to
/// `RecordCommon`, which also resolves them as GraphQL fields of the merged types.
macro_rules! record_interface {
    ($($ty:ident),*) => {$(
        impl $ty {
            async fn id(&self, ctx: &Context<'_>) -> async_graphql::Result<ID> {
                self.0.id(ctx).await
            }
            async fn datasheet(&self, ctx: &Context<'_>) -> async_graphql::Result<DatasheetKind> {
                self.0.datasheet(ctx).await
            }
            async fn version(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
                self.0.version(ctx).await
            }
            async fn archived(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
                self.0.archived(ctx).await
            }
            async fn erased_at(
                &self,
                ctx: &Context<'_>,
            ) -> async_graphql::Result<Option<DateTime<Utc>>> {
                self.0.erased_at(ctx).await
            }
            async fn restricted(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
                self.0.restricted(ctx).await
            }
            async fn created_at(&self, ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
                self.0.created_at(ctx).await
            }
            async fn updated_at(&self, ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
                self.0.updated_at(ctx).await
            }
            async fn created_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Actor> {
                self.0.created_by(ctx).await
            }
            async fn updated_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Actor> {
                self.0.updated_by(ctx).await
            }
            async fn custom_fields(
                &self,
                ctx: &Context<'_>,
            ) -> async_graphql::Result<Vec<CustomFieldValue>> {
                Ok(self.0.custom_fields(ctx).await?)
            }
            async fn pending_changes(
                &self,
                ctx: &Context<'_>,
            ) -> async_graphql::Result<Vec<PendingChange>> {
                Ok(self.0.pending_changes(ctx).await?)
            }
        }
    )*};
}

record_interface!(Employee, Contact, Applicant);

/// What every record has, whatever its datasheet.
// The derive's `field(...)` entries repeat the `ty = ...` key by design.
#[allow(clippy::duplicated_attributes)]
#[derive(Interface)]
#[graphql(
    name = "Record",
    field(name = "id", ty = "ID"),
    field(name = "datasheet", ty = "DatasheetKind"),
    field(name = "version", ty = "i64"),
    field(name = "archived", ty = "bool"),
    field(name = "erased_at", ty = "Option<DateTime<Utc>>"),
    field(name = "restricted", ty = "bool"),
    field(name = "created_at", ty = "DateTime<Utc>"),
    field(name = "updated_at", ty = "DateTime<Utc>"),
    field(name = "created_by", ty = "Actor"),
    field(name = "updated_by", ty = "Actor"),
    field(name = "custom_fields", ty = "Vec<CustomFieldValue>"),
    field(name = "pending_changes", ty = "Vec<PendingChange>")
)]
pub(crate) enum RecordNode {
    Employee(Employee),
    Contact(Contact),
    Applicant(Applicant),
}

impl From<RecordRow> for RecordNode {
    fn from(row: RecordRow) -> Self {
        match row.datasheet() {
            Datasheet::Employees => RecordNode::Employee(row.into()),
            Datasheet::Contacts => RecordNode::Contact(row.into()),
            Datasheet::Applicants => RecordNode::Applicant(row.into()),
        }
    }
}

/// The new employee's details; name, email and phone come from the applicant, and the job
/// title defaults to the position applied for.
#[derive(InputObject, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) struct HireApplicantInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    job_title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    department: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_id: Option<ID>,
    #[serde(skip_serializing_if = "Option::is_none")]
    employment_type: Option<EmploymentType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_date: Option<String>,
}

/// A hire: the applicant (now `HIRED`) and their new employee record.
#[derive(SimpleObject)]
pub(crate) struct HirePayload {
    pub(crate) applicant: Applicant,
    pub(crate) employee: Employee,
}

/// An input as the field map the domain parses.
pub(crate) fn fields(input: impl Serialize) -> Result<Fields, ApiError> {
    match serde_json::to_value(input).map_err(ApiError::internal)? {
        Value::Object(map) => {
            let mut fields: Fields = map.into_iter().collect();
            custom_fields::spread_custom_fields(&mut fields)?;
            Ok(fields)
        }
        _ => Err(ApiError::internal(anyhow::anyhow!(
            "an input did not serialise to an object"
        ))),
    }
}
