//! Records: the employees, contacts and job applicants datasheets, and the lifecycle every
//! record shares. Each datasheet has its own type and inputs; what every record has is the
//! `Record` interface, resolved once (`RecordCommon`) and merged into each type.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{
    Context, Enum, InputObject, Interface, MaybeUndefined, MergedObject, Object, SimpleObject, ID,
};

use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::record::Fields;
use custos_domain::{Datasheet, ErasureGround, Permission, RecordCommand, RestrictionReason};
use custos_projections::accesses::{self, ReadVia};
use custos_projections::record_query::{self, QueryListError};
use custos_projections::records::{self, RecordRow};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::custom_fields::{self, CustomFieldInput, CustomFieldValue};
use super::history::Actor;
use super::record_query::{record_query, ListArgs, RecordFilter, RecordOrder};
use super::{parse_id, principal, request, services};
use crate::error::ApiError;

/// The datasheets a tenant keeps.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Datasheet")]
pub enum DatasheetKind {
    Employees,
    Contacts,
    Applicants,
}

impl From<Datasheet> for DatasheetKind {
    fn from(value: Datasheet) -> Self {
        match value {
            Datasheet::Employees => DatasheetKind::Employees,
            Datasheet::Contacts => DatasheetKind::Contacts,
            Datasheet::Applicants => DatasheetKind::Applicants,
        }
    }
}

impl From<DatasheetKind> for Datasheet {
    fn from(value: DatasheetKind) -> Self {
        match value {
            DatasheetKind::Employees => Datasheet::Employees,
            DatasheetKind::Contacts => Datasheet::Contacts,
            DatasheetKind::Applicants => Datasheet::Applicants,
        }
    }
}

/// Why a subject is erased: the grounds of GDPR Art. 17(1).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum ErasureGroundKind {
    /// (a) no longer necessary for the purposes it was collected for.
    NoLongerNecessary,
    /// (b) consent withdrawn, and no other legal basis.
    ConsentWithdrawn,
    /// (c) the subject objected.
    Objection,
    /// (d) processed unlawfully.
    UnlawfulProcessing,
    /// (e) erasure required by a legal obligation.
    LegalObligation,
    /// (f) collected from a child for information society services.
    ChildData,
}

impl From<ErasureGroundKind> for ErasureGround {
    fn from(ground: ErasureGroundKind) -> Self {
        match ground {
            ErasureGroundKind::NoLongerNecessary => Self::NoLongerNecessary,
            ErasureGroundKind::ConsentWithdrawn => Self::ConsentWithdrawn,
            ErasureGroundKind::Objection => Self::Objection,
            ErasureGroundKind::UnlawfulProcessing => Self::UnlawfulProcessing,
            ErasureGroundKind::LegalObligation => Self::LegalObligation,
            ErasureGroundKind::ChildData => Self::ChildData,
        }
    }
}

/// Why processing is restricted: the cases of GDPR Art. 18(1).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictionReasonKind {
    /// (a) the subject contests the data's accuracy, while it is verified.
    AccuracyContested,
    /// (b) unlawful processing; the subject asks for restriction instead of erasure.
    UnlawfulProcessing,
    /// (c) no longer needed, but the subject needs it for legal claims.
    LegalClaims,
    /// (d) the subject objected, while legitimate grounds are weighed.
    ObjectionPending,
}

impl From<RestrictionReasonKind> for RestrictionReason {
    fn from(reason: RestrictionReasonKind) -> Self {
        match reason {
            RestrictionReasonKind::AccuracyContested => Self::AccuracyContested,
            RestrictionReasonKind::UnlawfulProcessing => Self::UnlawfulProcessing,
            RestrictionReasonKind::LegalClaims => Self::LegalClaims,
            RestrictionReasonKind::ObjectionPending => Self::ObjectionPending,
        }
    }
}

/// How an employee is employed.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmploymentType {
    FullTime,
    PartTime,
    Contractor,
    Intern,
    Temporary,
}

/// Where a job applicant is in the recruiting pipeline.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStage {
    Applied,
    Screening,
    Interview,
    Offer,
    Hired,
    Rejected,
    Withdrawn,
}

/// A GraphQL enum value from its stored (`snake_case`) name.
pub(crate) fn stored_enum<T: async_graphql::resolver_utils::EnumType + Serialize>(
    raw: Option<&str>,
) -> Option<T> {
    let raw = raw?;
    T::items().iter().map(|item| item.value).find(|value| {
        serde_json::to_value(value)
            .ok()
            .as_ref()
            .and_then(Value::as_str)
            == Some(raw)
    })
}

fn date(row: &RecordRow, field: &str) -> Option<NaiveDate> {
    row.text(field)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// What every record has.
pub struct RecordCommon(Arc<RecordRow>);

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
    async fn custom_fields(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<CustomFieldValue>> {
        Ok(custom_fields::values(ctx, self.0.datasheet(), &self.0.fields).await?)
    }
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
    let principal = principal(ctx)?;
    if !principal.may(Datasheet::Employees, Permission::Read) {
        return Ok(None);
    }
    Ok(records::record(&principal.tenant.pool, id)
        .await?
        .filter(|row| row.datasheet() == Datasheet::Employees)
        .map(Employee::from))
}

pub struct EmployeeFields(Arc<RecordRow>);

#[Object]
impl EmployeeFields {
    async fn first_name(&self) -> &str {
        self.0.text("first_name").unwrap_or_default()
    }
    async fn last_name(&self) -> &str {
        self.0.text("last_name").unwrap_or_default()
    }
    async fn email(&self) -> Option<&str> {
        self.0.text("email")
    }
    async fn phone(&self) -> Option<&str> {
        self.0.text("phone")
    }
    async fn date_of_birth(&self) -> Option<NaiveDate> {
        date(&self.0, "date_of_birth")
    }
    async fn address(&self) -> Option<&str> {
        self.0.text("address")
    }
    async fn job_title(&self) -> Option<&str> {
        self.0.text("job_title")
    }
    async fn department(&self) -> Option<&str> {
        self.0.text("department")
    }
    async fn manager_id(&self) -> Option<ID> {
        self.0.text("manager_id").map(|id| ID(id.to_owned()))
    }
    /// The manager's record (`null` without one, or without `read` on employees).
    async fn manager(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Employee>> {
        let id = self
            .0
            .text("manager_id")
            .and_then(|id| Uuid::try_parse(id).ok());
        Ok(referenced_employee(ctx, id).await?)
    }
    async fn employment_type(&self) -> Option<EmploymentType> {
        stored_enum(self.0.text("employment_type"))
    }
    async fn start_date(&self) -> Option<NaiveDate> {
        date(&self.0, "start_date")
    }
    async fn end_date(&self) -> Option<NaiveDate> {
        date(&self.0, "end_date")
    }
    async fn notes(&self) -> Option<&str> {
        self.0.text("notes")
    }
    /// The applicant record this employee was hired from, if any.
    async fn hired_from_id(&self) -> Option<ID> {
        self.0.hired_from.map(|id| ID(id.to_string()))
    }
}

/// An employee.
#[derive(MergedObject)]
pub struct Employee(RecordCommon, EmployeeFields);

impl From<RecordRow> for Employee {
    fn from(row: RecordRow) -> Self {
        let row = Arc::new(row);
        Self(RecordCommon(row.clone()), EmployeeFields(row))
    }
}

pub struct ContactFields(Arc<RecordRow>);

#[Object]
impl ContactFields {
    async fn first_name(&self) -> &str {
        self.0.text("first_name").unwrap_or_default()
    }
    async fn last_name(&self) -> &str {
        self.0.text("last_name").unwrap_or_default()
    }
    async fn company(&self) -> Option<&str> {
        self.0.text("company")
    }
    async fn job_title(&self) -> Option<&str> {
        self.0.text("job_title")
    }
    async fn emails(&self) -> Vec<&str> {
        self.0.list("emails")
    }
    async fn phones(&self) -> Vec<&str> {
        self.0.list("phones")
    }
    async fn address(&self) -> Option<&str> {
        self.0.text("address")
    }
    async fn tags(&self) -> Vec<&str> {
        self.0.list("tags")
    }
    async fn notes(&self) -> Option<&str> {
        self.0.text("notes")
    }
}

/// A contact: someone the organisation deals with who is not an employee.
#[derive(MergedObject)]
pub struct Contact(RecordCommon, ContactFields);

impl From<RecordRow> for Contact {
    fn from(row: RecordRow) -> Self {
        let row = Arc::new(row);
        Self(RecordCommon(row.clone()), ContactFields(row))
    }
}

pub struct ApplicantFields(Arc<RecordRow>);

#[Object]
impl ApplicantFields {
    async fn first_name(&self) -> &str {
        self.0.text("first_name").unwrap_or_default()
    }
    async fn last_name(&self) -> &str {
        self.0.text("last_name").unwrap_or_default()
    }
    async fn email(&self) -> Option<&str> {
        self.0.text("email")
    }
    async fn phone(&self) -> Option<&str> {
        self.0.text("phone")
    }
    /// The position applied for.
    async fn position(&self) -> Option<&str> {
        self.0.text("position")
    }
    /// Where the application came from (a job board, a referral...).
    async fn source(&self) -> Option<&str> {
        self.0.text("source")
    }
    async fn stage(&self) -> PipelineStage {
        stored_enum(self.0.text("stage")).unwrap_or(PipelineStage::Applied)
    }
    async fn applied_on(&self) -> Option<NaiveDate> {
        date(&self.0, "applied_on")
    }
    async fn notes(&self) -> Option<&str> {
        self.0.text("notes")
    }
    /// Until when the applicant agreed to be kept in the talent pool.
    async fn talent_pool_until(&self) -> Option<NaiveDate> {
        date(&self.0, "talent_pool_until")
    }
    /// The employee record created by hiring this applicant.
    async fn hired_as_id(&self) -> Option<ID> {
        self.0.hired_as.map(|id| ID(id.to_string()))
    }
    /// That employee's record (`null` before the hire, or without `read` on employees).
    async fn hired_as(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Employee>> {
        Ok(referenced_employee(ctx, self.0.hired_as).await?)
    }
}

/// A job applicant.
#[derive(MergedObject)]
pub struct Applicant(RecordCommon, ApplicantFields);

impl From<RecordRow> for Applicant {
    fn from(row: RecordRow) -> Self {
        let row = Arc::new(row);
        Self(RecordCommon(row.clone()), ApplicantFields(row))
    }
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
                self.0.custom_fields(ctx).await
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
    field(name = "custom_fields", ty = "Vec<CustomFieldValue>")
)]
pub enum RecordNode {
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

// Inputs serialise (snake_case) into the field map the domain parses: an omitted field of a
// patch is skipped, `null` clears it. Dates are `YYYY-MM-DD` strings, so that a bad one is a
// `VALIDATION` error naming its field.

#[derive(InputObject, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct CreateEmployeeInput {
    first_name: String,
    last_name: String,
    email: Option<String>,
    /// Digits with an optional leading `+`; spaces, dots, dashes and parentheses are ignored.
    phone: Option<String>,
    /// `YYYY-MM-DD`, like every date here.
    date_of_birth: Option<String>,
    address: Option<String>,
    job_title: Option<String>,
    department: Option<String>,
    /// Another active employee, who must not report to this one.
    manager_id: Option<ID>,
    employment_type: Option<EmploymentType>,
    start_date: Option<String>,
    /// Not before `startDate`.
    end_date: Option<String>,
    notes: Option<String>,
    /// Values of the datasheet's custom fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<Vec<CustomFieldInput>>,
}

/// A patch: omitted fields stay as they are, `null` clears an optional field.
#[derive(InputObject, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct UpdateEmployeeInput {
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    first_name: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    last_name: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    email: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    phone: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    date_of_birth: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    address: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    job_title: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    department: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    manager_id: MaybeUndefined<ID>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    employment_type: MaybeUndefined<EmploymentType>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    start_date: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    end_date: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    notes: MaybeUndefined<String>,
    /// Custom field values to set; fields not listed stay as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<Vec<CustomFieldInput>>,
}

#[derive(InputObject, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct CreateContactInput {
    first_name: String,
    last_name: String,
    company: Option<String>,
    job_title: Option<String>,
    /// Up to 20; duplicates are dropped.
    emails: Option<Vec<String>>,
    /// Up to 20; duplicates are dropped.
    phones: Option<Vec<String>>,
    address: Option<String>,
    /// Up to 50; duplicates (ignoring case) are dropped.
    tags: Option<Vec<String>>,
    notes: Option<String>,
    /// Values of the datasheet's custom fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<Vec<CustomFieldInput>>,
}

/// A patch: omitted fields stay as they are, `null` (or an empty list) clears a field. Lists
/// are replaced whole.
#[derive(InputObject, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct UpdateContactInput {
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    first_name: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    last_name: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    company: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    job_title: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    emails: MaybeUndefined<Vec<String>>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    phones: MaybeUndefined<Vec<String>>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    address: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    tags: MaybeUndefined<Vec<String>>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    notes: MaybeUndefined<String>,
    /// Custom field values to set; fields not listed stay as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<Vec<CustomFieldInput>>,
}

#[derive(InputObject, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct CreateApplicantInput {
    first_name: String,
    last_name: String,
    email: Option<String>,
    phone: Option<String>,
    position: Option<String>,
    source: Option<String>,
    /// `APPLIED` when omitted; `HIRED` only through `hireApplicant`.
    stage: Option<PipelineStage>,
    applied_on: Option<String>,
    notes: Option<String>,
    talent_pool_until: Option<String>,
    /// Values of the datasheet's custom fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<Vec<CustomFieldInput>>,
}

/// A patch: omitted fields stay as they are, `null` clears an optional field. `stage` moves
/// one step forward (`APPLIED → SCREENING → INTERVIEW → OFFER`) or to `REJECTED` /
/// `WITHDRAWN` from an open stage; `HIRED` only through `hireApplicant`.
#[derive(InputObject, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct UpdateApplicantInput {
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    first_name: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    last_name: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    email: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    phone: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    position: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    source: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    stage: MaybeUndefined<PipelineStage>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    applied_on: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    notes: MaybeUndefined<String>,
    #[serde(skip_serializing_if = "MaybeUndefined::is_undefined")]
    talent_pool_until: MaybeUndefined<String>,
    /// Custom field values to set; fields not listed stay as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_fields: Option<Vec<CustomFieldInput>>,
}

/// The new employee's details; name, email and phone come from the applicant, and the job
/// title defaults to the position applied for.
#[derive(InputObject, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub struct HireApplicantInput {
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
pub struct HirePayload {
    applicant: Applicant,
    employee: Employee,
}

/// An input as the field map the domain parses.
fn fields(input: impl Serialize) -> Result<Fields, ApiError> {
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

pub use super::ConnectionTotal;

pub type EmployeeConnection = Connection<String, Employee, ConnectionTotal, EmptyFields>;
pub type ContactConnection = Connection<String, Contact, ConnectionTotal, EmptyFields>;
pub type ApplicantConnection = Connection<String, Applicant, ConnectionTotal, EmptyFields>;

fn expected(version: Option<i64>) -> Result<Option<u64>, ApiError> {
    version
        .map(|v| {
            u64::try_from(v).map_err(|_| {
                ApiError::validation("expectedVersion", "the version must not be negative")
            })
        })
        .transpose()
}

/// One page of a datasheet's records as a connection of `T`.
async fn page<T: From<RecordRow> + async_graphql::OutputType>(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    args: ListArgs,
) -> async_graphql::Result<Connection<String, T, ConnectionTotal, EmptyFields>> {
    let principal = principal(ctx)?;
    let after = args.after.is_some();
    let schema = services(ctx)?
        .custom_schema(&principal.tenant, datasheet)
        .await?;
    let query = record_query(datasheet, &schema, args)?;
    let mut conn = principal
        .tenant
        .pool
        .acquire()
        .await
        .map_err(ApiError::from)?;
    let page = record_query::list(&mut conn, &query)
        .await
        .map_err(|err| match err {
            QueryListError::Query(err) => ApiError::validation("after", err.to_string()),
            QueryListError::Database(err) => ApiError::from(err),
        })?;
    let mut connection = Connection::with_additional_fields(
        after,
        page.has_next_page,
        ConnectionTotal {
            total_count: page.total_count,
        },
    );
    connection.edges.extend(
        page.items
            .into_iter()
            .map(|(cursor, row)| Edge::new(cursor, T::from(row))),
    );
    Ok(connection)
}

/// One record of a datasheet by id.
async fn one<T: From<RecordRow>>(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    id: &ID,
) -> async_graphql::Result<T> {
    let id = parse_id("id", id)?;
    let principal = principal(ctx)?;
    let row = services(ctx)?
        .find_record(&principal.tenant, datasheet, id)
        .await?;
    record_reads(ctx, &[row.id], ReadVia::Record).await?;
    Ok(row.into())
}

/// Records that the principal read these records' data (for each person's trail and the
/// breach register).
pub(crate) async fn record_reads(
    ctx: &Context<'_>,
    ids: &[Uuid],
    via: ReadVia,
) -> Result<(), ApiError> {
    let principal = principal(ctx)?;
    accesses::record_reads(
        &principal.tenant.pool,
        ids,
        principal.actor(),
        request(ctx)?.origin.request_id,
        via,
    )
    .await?;
    Ok(())
}

async fn create<T: From<RecordRow>>(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    input: impl Serialize,
) -> async_graphql::Result<T> {
    let row = services(ctx)?
        .create_record(
            principal(ctx)?,
            datasheet,
            fields(input)?,
            request(ctx)?.origin.request_id,
        )
        .await?;
    Ok(row.into())
}

async fn update<T: From<RecordRow>>(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    id: &ID,
    expected_version: Option<i64>,
    input: impl Serialize,
) -> async_graphql::Result<T> {
    let id = parse_id("id", id)?;
    let row = services(ctx)?
        .update_record(
            principal(ctx)?,
            datasheet,
            id,
            expected(expected_version)?,
            fields(input)?,
            request(ctx)?.origin.request_id,
        )
        .await?;
    Ok(row.into())
}

/// The record `id` of any datasheet, if the principal holds `permission` on its datasheet
/// (`FORBIDDEN` otherwise; the policy let the call in because they hold it on some datasheet).
pub(crate) async fn authorized_record(
    ctx: &Context<'_>,
    id: &ID,
    permission: Permission,
) -> Result<RecordRow, ApiError> {
    let id = parse_id("id", id)?;
    let principal = principal(ctx)?;
    let row = records::record(&principal.tenant.pool, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    crate::authz::check_record(principal, row.datasheet(), permission)?;
    Ok(row)
}

#[derive(Default)]
pub struct RecordsQuery;

#[Object]
impl RecordsQuery {
    /// Employees: in creation order unless `orderBy` says otherwise; archived ones only with
    /// `includeArchived`. `filter` and `search` narrow the list; `totalCount` counts every match.
    #[allow(clippy::too_many_arguments)]
    async fn employees(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, 1 to 100 (default 20).")] first: Option<i32>,
        after: Option<String>,
        #[graphql(desc = "Include archived records (default false).")] include_archived: Option<
            bool,
        >,
        filter: Option<RecordFilter>,
        #[graphql(desc = "Up to three keys; creation order breaks ties.")] order_by: Option<
            Vec<RecordOrder>,
        >,
        #[graphql(
            desc = "Words that must each begin a word of the names, emails, company or notes."
        )]
        search: Option<String>,
    ) -> async_graphql::Result<EmployeeConnection> {
        let args = ListArgs {
            first,
            after,
            include_archived,
            filter,
            order_by,
            search,
        };
        page(ctx, Datasheet::Employees, args).await
    }

    /// One employee, archived or not.
    async fn employee(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Employee> {
        one(ctx, Datasheet::Employees, &id).await
    }

    /// Contacts: in creation order unless `orderBy` says otherwise; archived ones only with
    /// `includeArchived`. `filter` and `search` narrow the list; `totalCount` counts every match.
    #[allow(clippy::too_many_arguments)]
    async fn contacts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, 1 to 100 (default 20).")] first: Option<i32>,
        after: Option<String>,
        #[graphql(desc = "Include archived records (default false).")] include_archived: Option<
            bool,
        >,
        filter: Option<RecordFilter>,
        #[graphql(desc = "Up to three keys; creation order breaks ties.")] order_by: Option<
            Vec<RecordOrder>,
        >,
        #[graphql(
            desc = "Words that must each begin a word of the names, emails, company or notes."
        )]
        search: Option<String>,
    ) -> async_graphql::Result<ContactConnection> {
        let args = ListArgs {
            first,
            after,
            include_archived,
            filter,
            order_by,
            search,
        };
        page(ctx, Datasheet::Contacts, args).await
    }

    /// One contact, archived or not.
    async fn contact(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Contact> {
        one(ctx, Datasheet::Contacts, &id).await
    }

    /// Job applicants: in creation order unless `orderBy` says otherwise; archived ones only with
    /// `includeArchived`. `filter` and `search` narrow the list; `totalCount` counts every match.
    #[allow(clippy::too_many_arguments)]
    async fn applicants(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, 1 to 100 (default 20).")] first: Option<i32>,
        after: Option<String>,
        #[graphql(desc = "Include archived records (default false).")] include_archived: Option<
            bool,
        >,
        filter: Option<RecordFilter>,
        #[graphql(desc = "Up to three keys; creation order breaks ties.")] order_by: Option<
            Vec<RecordOrder>,
        >,
        #[graphql(
            desc = "Words that must each begin a word of the names, emails, company or notes."
        )]
        search: Option<String>,
    ) -> async_graphql::Result<ApplicantConnection> {
        let args = ListArgs {
            first,
            after,
            include_archived,
            filter,
            order_by,
            search,
        };
        page(ctx, Datasheet::Applicants, args).await
    }

    /// Every record about one person — as an employee, a contact or an applicant — found by
    /// email or by phone (give one) through the blind index, among the datasheets you may
    /// read. Erased records are not found.
    async fn find_subject(
        &self,
        ctx: &Context<'_>,
        email: Option<String>,
        phone: Option<String>,
    ) -> async_graphql::Result<Vec<RecordNode>> {
        let principal = principal(ctx)?;
        let index = &principal.tenant.blind_index;
        let digest = match (email, phone) {
            (Some(email), None) => index
                .email(&email)
                .ok_or_else(|| ApiError::validation("email", "not a valid email address"))?,
            (None, Some(phone)) => index
                .phone(&phone)
                .ok_or_else(|| ApiError::validation("phone", "not a valid phone number"))?,
            _ => {
                return Err(
                    ApiError::validation("email", "give exactly one of email and phone").into(),
                )
            }
        };
        let ids = index
            .records(&principal.tenant.pool, &digest)
            .await
            .map_err(ApiError::from)?;
        let mut rows = records::records_by_id(&principal.tenant.pool, &ids)
            .await
            .map_err(ApiError::from)?;
        rows.retain(|row| {
            row.erased_at.is_none() && principal.may(row.datasheet(), Permission::Read)
        });
        rows.sort_by_key(|row| row.id);
        let found: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        record_reads(ctx, &found, ReadVia::FindSubject).await?;
        Ok(rows.into_iter().map(RecordNode::from).collect())
    }

    /// One job applicant, archived or not.
    async fn applicant(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Applicant> {
        one(ctx, Datasheet::Applicants, &id).await
    }
}

#[derive(Default)]
pub struct RecordsMutation;

impl RecordsMutation {
    /// Archives or restores a record of any datasheet the principal may archive.
    async fn lifecycle(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        archive: bool,
    ) -> async_graphql::Result<RecordNode> {
        let record = authorized_record(ctx, &id, Permission::Archive).await?;
        let expected_version = expected(expected_version)?;
        let command = if archive {
            RecordCommand::Archive { expected_version }
        } else {
            RecordCommand::Restore { expected_version }
        };
        let row = services(ctx)?
            .record_lifecycle(
                principal(ctx)?,
                &record,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(row.into())
    }
}

#[Object]
impl RecordsMutation {
    async fn create_employee(
        &self,
        ctx: &Context<'_>,
        input: CreateEmployeeInput,
    ) -> async_graphql::Result<Employee> {
        create(ctx, Datasheet::Employees, input).await
    }

    /// Changes the given fields. With `expectedVersion`, refuses (`CONFLICT`) if the record
    /// changed since the client read it.
    async fn update_employee(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        input: UpdateEmployeeInput,
    ) -> async_graphql::Result<Employee> {
        update(ctx, Datasheet::Employees, &id, expected_version, input).await
    }

    async fn create_contact(
        &self,
        ctx: &Context<'_>,
        input: CreateContactInput,
    ) -> async_graphql::Result<Contact> {
        create(ctx, Datasheet::Contacts, input).await
    }

    /// Changes the given fields (see `updateEmployee`).
    async fn update_contact(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        input: UpdateContactInput,
    ) -> async_graphql::Result<Contact> {
        update(ctx, Datasheet::Contacts, &id, expected_version, input).await
    }

    async fn create_applicant(
        &self,
        ctx: &Context<'_>,
        input: CreateApplicantInput,
    ) -> async_graphql::Result<Applicant> {
        create(ctx, Datasheet::Applicants, input).await
    }

    /// Changes the given fields (see `updateEmployee`); moves the stage by the pipeline's rules.
    async fn update_applicant(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        input: UpdateApplicantInput,
    ) -> async_graphql::Result<Applicant> {
        update(ctx, Datasheet::Applicants, &id, expected_version, input).await
    }

    /// Hires an applicant at the `OFFER` stage: creates their employee record and moves them
    /// to `HIRED`; both records name each other.
    async fn hire_applicant(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
        input: Option<HireApplicantInput>,
    ) -> async_graphql::Result<HirePayload> {
        let id = parse_id("id", &id)?;
        let (applicant, employee) = services(ctx)?
            .hire_applicant(
                principal(ctx)?,
                id,
                expected(expected_version)?,
                fields(input.unwrap_or_default())?,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(HirePayload {
            applicant: applicant.into(),
            employee: employee.into(),
        })
    }

    /// Archives a record of any datasheet: hidden from lists by default and read-only until
    /// restored. Needs `archive` on the record's datasheet.
    async fn archive_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<RecordNode> {
        self.lifecycle(ctx, id, expected_version, true).await
    }

    /// Erases a record's subject (GDPR Art. 17): the record's data key is destroyed, so none
    /// of its values can be read again — not from the read models, not from the history,
    /// which keeps each event's type, time, actor and field names with values marked erased.
    /// Irreversible; needs the record's current `version` and `erase` on its datasheet.
    async fn erase_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: i64,
        ground: ErasureGroundKind,
        #[graphql(desc = "Why, in your words; kept in clear: never the subject's personal data.")]
        note: Option<String>,
    ) -> async_graphql::Result<RecordNode> {
        let record = authorized_record(ctx, &id, Permission::Erase).await?;
        let expected_version = expected(Some(expected_version))?.unwrap_or_default();
        let row = services(ctx)?
            .erase_record(
                principal(ctx)?,
                &record,
                expected_version,
                ground.into(),
                note,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(row.into())
    }

    /// Restricts processing of a record (GDPR Art. 18): it stays readable and exportable, and
    /// every change is refused (`VALIDATION`, reason `RESTRICTED`) until the restriction is
    /// lifted. Needs `erase` on the record's datasheet.
    async fn restrict_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: RestrictionReasonKind,
    ) -> async_graphql::Result<RecordNode> {
        let record = authorized_record(ctx, &id, Permission::Erase).await?;
        let command = RecordCommand::Restrict {
            reason: reason.into(),
        };
        let row = services(ctx)?
            .record_lifecycle(
                principal(ctx)?,
                &record,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(row.into())
    }

    /// Lifts a restriction of processing. Needs `erase` on the record's datasheet.
    async fn lift_restriction(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<RecordNode> {
        let record = authorized_record(ctx, &id, Permission::Erase).await?;
        let row = services(ctx)?
            .record_lifecycle(
                principal(ctx)?,
                &record,
                RecordCommand::LiftRestriction,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(row.into())
    }

    /// Restores an archived record. Needs `archive` on the record's datasheet.
    async fn restore_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<RecordNode> {
        self.lifecycle(ctx, id, expected_version, false).await
    }
}
