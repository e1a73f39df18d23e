//! The `employees` read model: one row per employee record, for listing and lookups.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::{Datasheet, Record, RecordEvent};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, QueryBuilder};
use uuid::Uuid;

use crate::page::{Cursor, Page, MAX_PAGE};
use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects Record events of the employees datasheet into `employees`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmployeesProjection;

/// Column values taken from a JSON object of field values; a column whose field is absent
/// keeps its value, so the same expressions serve creation and patches.
const PATCH_COLUMNS: &str = "
    first_name = CASE WHEN $3::jsonb ? 'first_name' THEN $3::jsonb->>'first_name' ELSE first_name END,
    last_name  = CASE WHEN $3::jsonb ? 'last_name'  THEN $3::jsonb->>'last_name'  ELSE last_name END,
    email      = CASE WHEN $3::jsonb ? 'email'      THEN $3::jsonb->>'email'      ELSE email END,
    phone      = CASE WHEN $3::jsonb ? 'phone'      THEN $3::jsonb->>'phone'      ELSE phone END,
    job_title  = CASE WHEN $3::jsonb ? 'job_title'  THEN $3::jsonb->>'job_title'  ELSE job_title END,
    department = CASE WHEN $3::jsonb ? 'department' THEN $3::jsonb->>'department' ELSE department END,
    start_date = CASE WHEN $3::jsonb ? 'start_date' THEN ($3::jsonb->>'start_date')::date ELSE start_date END";

#[async_trait]
impl Projection for EmployeesProjection {
    fn name(&self) -> &'static str {
        "employees"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Record as cqrs_es::Aggregate>::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Record(record_event) = &event.event else {
            return Ok(());
        };
        let actor = event.metadata.actor.id();
        match record_event {
            RecordEvent::RecordCreated { datasheet, fields } => {
                if *datasheet != Datasheet::Employees {
                    return Ok(());
                }
                let fields = Json(fields);
                sqlx::query(
                    "INSERT INTO employees (id, version, first_name, last_name, email, phone,
                                            job_title, department, start_date,
                                            created_at, updated_at, created_by, updated_by)
                     VALUES ($1, $2, $3::jsonb->>'first_name', $3::jsonb->>'last_name',
                             $3::jsonb->>'email', $3::jsonb->>'phone', $3::jsonb->>'job_title',
                             $3::jsonb->>'department', ($3::jsonb->>'start_date')::date,
                             $4, $4, $5, $5)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(fields)
                .bind(event.recorded_at)
                .bind(actor)
                .execute(conn)
                .await?;
            }
            RecordEvent::RecordUpdated { datasheet, changes } => {
                if *datasheet != Datasheet::Employees {
                    return Ok(());
                }
                sqlx::query(&format!(
                    "UPDATE employees SET version = $2, updated_at = $4, updated_by = $5, {PATCH_COLUMNS}
                     WHERE id = $1 AND version < $2"
                ))
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(Json(changes))
                .bind(event.recorded_at)
                .bind(actor)
                .execute(conn)
                .await?;
            }
            RecordEvent::RecordArchived { datasheet }
            | RecordEvent::RecordRestored { datasheet } => {
                if *datasheet != Datasheet::Employees {
                    return Ok(());
                }
                let archived = matches!(record_event, RecordEvent::RecordArchived { .. });
                sqlx::query(
                    "UPDATE employees SET version = $2, archived = $3, updated_at = $4, updated_by = $5
                     WHERE id = $1 AND version < $2",
                )
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(archived)
                .bind(event.recorded_at)
                .bind(actor)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM employees").execute(conn).await?;
        Ok(())
    }
}

/// One employee as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EmployeeRow {
    pub id: Uuid,
    pub version: i64,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub start_date: Option<NaiveDate>,
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Uuid,
    pub updated_by: Uuid,
}

const EMPLOYEE_COLUMNS: &str = "id, version, first_name, last_name, email, phone, job_title, \
     department, start_date, archived, created_at, updated_at, created_by, updated_by";

/// The employee with this id, archived or not.
pub async fn employee<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<EmployeeRow>> {
    sqlx::query_as(&format!(
        "SELECT {EMPLOYEE_COLUMNS} FROM employees WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A page of employees in creation order, after `after`; archived ones only when asked.
/// `first` is clamped to 1..=[`MAX_PAGE`].
pub async fn employees(
    db: &mut PgConnection,
    first: i64,
    after: Option<Cursor>,
    include_archived: bool,
) -> sqlx::Result<Page<EmployeeRow>> {
    let first = first.clamp(1, MAX_PAGE);
    let mut query = QueryBuilder::new(format!(
        "SELECT {EMPLOYEE_COLUMNS} FROM employees WHERE true"
    ));
    if !include_archived {
        query.push(" AND NOT archived");
    }
    if let Some(Cursor(after)) = after {
        query.push(" AND id > ").push_bind(after);
    }
    query.push(" ORDER BY id LIMIT ").push_bind(first + 1);
    let mut items: Vec<EmployeeRow> = query.build_query_as().fetch_all(&mut *db).await?;
    let has_next_page = items.len() as i64 > first;
    items.truncate(first as usize);

    let total_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM employees WHERE $1 OR NOT archived")
            .bind(include_archived)
            .fetch_one(&mut *db)
            .await?;
    Ok(Page {
        items,
        has_next_page,
        total_count,
    })
}
