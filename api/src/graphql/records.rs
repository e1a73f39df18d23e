//! Records: the employees datasheet, and the lifecycle every record shares.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Enum, InputObject, Interface, MaybeUndefined, Object, ID};
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::record::{new_record_id, Fields};
use custos_domain::{Datasheet, EventMetadata, RecordCommand};
use custos_projections::employees::{self, EmployeeRow};
use serde_json::Value;
use uuid::Uuid;

use super::history::Actor;
use super::{id_connection, page_args, parse_id, principal, request, services};
use crate::auth::Principal;
use crate::error::ApiError;

/// The datasheets a tenant keeps.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Datasheet")]
pub enum DatasheetKind {
    Employees,
}

impl From<Datasheet> for DatasheetKind {
    fn from(value: Datasheet) -> Self {
        match value {
            Datasheet::Employees => DatasheetKind::Employees,
        }
    }
}

impl From<DatasheetKind> for Datasheet {
    fn from(value: DatasheetKind) -> Self {
        match value {
            DatasheetKind::Employees => Datasheet::Employees,
        }
    }
}

/// An employee record.
pub struct Employee(pub EmployeeRow);

#[Object]
impl Employee {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn datasheet(&self) -> DatasheetKind {
        DatasheetKind::Employees
    }
    /// The number of changes so far; pass it as `expectedVersion` to update safely.
    async fn version(&self) -> i64 {
        self.0.version
    }
    async fn first_name(&self) -> &str {
        &self.0.first_name
    }
    async fn last_name(&self) -> &str {
        &self.0.last_name
    }
    async fn email(&self) -> Option<&str> {
        self.0.email.as_deref()
    }
    async fn phone(&self) -> Option<&str> {
        self.0.phone.as_deref()
    }
    async fn job_title(&self) -> Option<&str> {
        self.0.job_title.as_deref()
    }
    async fn department(&self) -> Option<&str> {
        self.0.department.as_deref()
    }
    async fn start_date(&self) -> Option<NaiveDate> {
        self.0.start_date
    }
    async fn archived(&self) -> bool {
        self.0.archived
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
}

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
    field(name = "created_at", ty = "DateTime<Utc>"),
    field(name = "updated_at", ty = "DateTime<Utc>"),
    field(name = "created_by", ty = "Actor"),
    field(name = "updated_by", ty = "Actor")
)]
pub enum RecordNode {
    Employee(Employee),
}

#[derive(InputObject)]
pub struct CreateEmployeeInput {
    first_name: String,
    last_name: String,
    email: Option<String>,
    /// Digits with an optional leading `+`; spaces, dots, dashes and parentheses are ignored.
    phone: Option<String>,
    job_title: Option<String>,
    department: Option<String>,
    /// `YYYY-MM-DD`.
    start_date: Option<String>,
}

/// A patch: omitted fields stay as they are, `null` clears an optional field.
#[derive(InputObject)]
pub struct UpdateEmployeeInput {
    first_name: MaybeUndefined<String>,
    last_name: MaybeUndefined<String>,
    email: MaybeUndefined<String>,
    phone: MaybeUndefined<String>,
    job_title: MaybeUndefined<String>,
    department: MaybeUndefined<String>,
    start_date: MaybeUndefined<String>,
}

fn set(fields: &mut Fields, name: &str, value: Option<String>) {
    fields.insert(name.to_owned(), value.map_or(Value::Null, Value::String));
}

fn patch(fields: &mut Fields, name: &str, value: MaybeUndefined<String>) {
    match value {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => set(fields, name, None),
        MaybeUndefined::Value(value) => set(fields, name, Some(value)),
    }
}

impl CreateEmployeeInput {
    fn into_fields(self) -> Fields {
        let mut fields = Fields::new();
        set(&mut fields, "first_name", Some(self.first_name));
        set(&mut fields, "last_name", Some(self.last_name));
        set(&mut fields, "email", self.email);
        set(&mut fields, "phone", self.phone);
        set(&mut fields, "job_title", self.job_title);
        set(&mut fields, "department", self.department);
        set(&mut fields, "start_date", self.start_date);
        fields
    }
}

impl UpdateEmployeeInput {
    fn into_fields(self) -> Fields {
        let mut fields = Fields::new();
        patch(&mut fields, "first_name", self.first_name);
        patch(&mut fields, "last_name", self.last_name);
        patch(&mut fields, "email", self.email);
        patch(&mut fields, "phone", self.phone);
        patch(&mut fields, "job_title", self.job_title);
        patch(&mut fields, "department", self.department);
        patch(&mut fields, "start_date", self.start_date);
        fields
    }
}

pub use super::ConnectionTotal;

pub type EmployeeConnection = Connection<String, Employee, ConnectionTotal, EmptyFields>;

/// The employee `id` of the principal's tenant, or `NOT_FOUND` (also for another tenant's id:
/// each tenant's records live in its own database).
async fn find_employee(principal: &Principal, id: Uuid) -> Result<EmployeeRow, ApiError> {
    employees::employee(&principal.tenant.pool, id)
        .await?
        .ok_or(ApiError::NotFound)
}

fn expected(field: &str, version: Option<i64>) -> Result<Option<u64>, ApiError> {
    version
        .map(|v| {
            u64::try_from(v)
                .map_err(|_| ApiError::validation(field, "the version must not be negative"))
        })
        .transpose()
}

#[derive(Default)]
pub struct RecordsQuery;

#[Object]
impl RecordsQuery {
    /// Employees in creation order, archived ones only with `includeArchived`.
    async fn employees(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, 1 to 100 (default 20).")] first: Option<i32>,
        after: Option<String>,
        #[graphql(desc = "Include archived employees (default false).")] include_archived: Option<
            bool,
        >,
    ) -> async_graphql::Result<EmployeeConnection> {
        let principal = principal(ctx)?;
        let (first, after) = page_args(first, after)?;
        let mut conn = principal
            .tenant
            .pool
            .acquire()
            .await
            .map_err(ApiError::from)?;
        let page = employees::employees(&mut conn, first, after, include_archived.unwrap_or(false))
            .await
            .map_err(ApiError::from)?;
        Ok(id_connection(page, after, |row| row.id, Employee))
    }

    /// One employee, archived or not.
    async fn employee(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Employee> {
        let principal = principal(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(Employee(find_employee(principal, id).await?))
    }
}

#[derive(Default)]
pub struct RecordsMutation;

impl RecordsMutation {
    async fn run(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        command: RecordCommand,
    ) -> Result<EmployeeRow, ApiError> {
        let principal = principal(ctx)?;
        let services = services(ctx)?;
        let tenant = &principal.tenant;
        let metadata = EventMetadata::new(principal.actor(), request(ctx)?.origin.request_id);
        services
            .execute(tenant, &tenant.records, id, command, metadata)
            .await?;
        find_employee(principal, id).await
    }

    /// A lifecycle command that applies to a record of any datasheet.
    async fn lifecycle(
        &self,
        ctx: &Context<'_>,
        id: ID,
        command: RecordCommand,
    ) -> async_graphql::Result<RecordNode> {
        let id = parse_id("id", &id)?;
        Ok(RecordNode::Employee(Employee(
            self.run(ctx, id, command).await?,
        )))
    }
}

#[Object]
impl RecordsMutation {
    async fn create_employee(
        &self,
        ctx: &Context<'_>,
        input: CreateEmployeeInput,
    ) -> async_graphql::Result<Employee> {
        let command = RecordCommand::Create {
            datasheet: Datasheet::Employees,
            fields: input.into_fields(),
        };
        Ok(Employee(self.run(ctx, new_record_id(), command).await?))
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
        let id = parse_id("id", &id)?;
        let command = RecordCommand::Update {
            datasheet: Datasheet::Employees,
            expected_version: expected("expectedVersion", expected_version)?,
            changes: input.into_fields(),
        };
        Ok(Employee(self.run(ctx, id, command).await?))
    }

    /// Archives a record: hidden from lists by default and read-only until restored.
    async fn archive_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<RecordNode> {
        let expected_version = expected("expectedVersion", expected_version)?;
        self.lifecycle(ctx, id, RecordCommand::Archive { expected_version })
            .await
    }

    /// Restores an archived record.
    async fn restore_record(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<RecordNode> {
        let expected_version = expected("expectedVersion", expected_version)?;
        self.lifecycle(ctx, id, RecordCommand::Restore { expected_version })
            .await
    }
}
