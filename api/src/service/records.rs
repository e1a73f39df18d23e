//! Record use cases: create, update, archive and restore records of any datasheet, and hire an
//! applicant. The aggregate validates each record on its own; what spans records — a manager
//! must be another active employee and must not close a reporting loop — is checked here,
//! under the tenant's org-chart lock.

use chrono::NaiveDate;
use cqrs_es::Aggregate;
use custos_domain::record::{new_record_id, Fields};
use custos_domain::{Datasheet, ErasureGround, EventMetadata, Record, RecordCommand};
use custos_projections::records::{self, today, RecordRow};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::event_store::repository::Appended;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::{Command, Services, TenantLock};

/// Advisory lock key (transaction-scoped, in the tenant database) for manager changes.
const ORG_CHART_LOCK: i64 = 0x6375_7374_6f73_0003;

/// The employee fields an applicant's record gives their new employee record.
const FROM_APPLICANT: [(&str, &str); 4] = [
    ("first_name", "first_name"),
    ("last_name", "last_name"),
    ("email", "email"),
    ("phone", "phone"),
];

/// What a change of a record answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The record as the read models show it after the change (they are waited for).
    Row,
    /// Its version only, when the change appended: the read models are not waited for (the
    /// tenant's reads wait for them instead; see `Command::defer_read_models`).
    Version,
}

/// A record after a change.
#[derive(Debug)]
pub(crate) enum Changed {
    /// As the read models show it.
    Row(RecordRow),
    /// The version the change left it at and where it landed, written and not necessarily
    /// projected yet.
    Version {
        id: Uuid,
        datasheet: Datasheet,
        written: Appended,
    },
}

impl Services {
    /// The record `id` of `datasheet`, or `NOT_FOUND` (also for another datasheet's record,
    /// and another tenant's id: each tenant's records live in its own database).
    pub(crate) async fn find_record(
        &self,
        tenant: &Tenant,
        datasheet: Datasheet,
        id: Uuid,
    ) -> Result<RecordRow, ApiError> {
        records::record(&tenant.pool, id)
            .await?
            .filter(|row| row.datasheet() == datasheet)
            .ok_or(ApiError::NotFound)
    }

    /// Creates a record of `datasheet` from raw field values, taking effect on
    /// `effective_from` (today or earlier; `None`: today).
    pub(crate) async fn create_record(
        &self,
        principal: &Principal,
        datasheet: Datasheet,
        fields: Fields,
        effective_from: Option<NaiveDate>,
        request_id: Uuid,
        answer: Answer,
    ) -> Result<Changed, ApiError> {
        let id = new_record_id();
        let _lock = self
            .check_manager(principal, datasheet, id, &fields)
            .await?;
        let command = RecordCommand::Create {
            datasheet,
            fields,
            hired_from: None,
            schema: self.custom_schema(&principal.tenant, datasheet).await?,
            effective_from,
            today: today(),
        };
        self.change_record(principal, datasheet, id, command, request_id, answer)
            .await
    }

    /// Patches a record of `datasheet`; `expected_version` guards against lost updates. The
    /// change takes effect on `effective_from` (`None`: today): a later day schedules it, an
    /// earlier one corrects the past.
    // The request's parts, each of its own kind: a struct of them would only be unpacked here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_record(
        &self,
        principal: &Principal,
        datasheet: Datasheet,
        id: Uuid,
        expected_version: Option<u64>,
        changes: Fields,
        effective_from: Option<NaiveDate>,
        request_id: Uuid,
        answer: Answer,
    ) -> Result<Changed, ApiError> {
        // The aggregate refuses a record that does not exist, or is of another datasheet, as
        // `NOT_FOUND`. A new manager is checked before the command runs, so the record is
        // looked up then too, under the org-chart lock, which waits for the read models to
        // show every record change written so far (this request does not wait for them).
        let lock = self
            .check_manager(principal, datasheet, id, &changes)
            .await?;
        if lock.is_some() {
            self.find_record(&principal.tenant, datasheet, id).await?;
        }
        let command = RecordCommand::Update {
            datasheet,
            expected_version,
            changes,
            schema: self.custom_schema(&principal.tenant, datasheet).await?,
            effective_from,
            today: today(),
        };
        self.change_record(principal, datasheet, id, command, request_id, answer)
            .await
    }

    /// Runs `command` on record `id` of `datasheet` and answers as `answer` asks.
    async fn change_record(
        &self,
        principal: &Principal,
        datasheet: Datasheet,
        id: Uuid,
        command: RecordCommand,
        request_id: Uuid,
        answer: Answer,
    ) -> Result<Changed, ApiError> {
        let tenant = &principal.tenant;
        if answer == Answer::Version {
            let written = self
                .record_command(principal, id, command, request_id)
                .defer_read_models()
                .written()
                .await?;
            // A change that changed nothing is answered from the read models, which show the
            // record's latest change by now.
            if let Some(written) = written {
                return Ok(Changed::Version {
                    id,
                    datasheet,
                    written,
                });
            }
        } else {
            self.run_record(principal, id, command, request_id).await?;
        }
        Ok(Changed::Row(self.find_record(tenant, datasheet, id).await?))
    }

    /// Archives or restores a record of any datasheet (the caller checked the permission on
    /// the record's datasheet).
    pub(crate) async fn record_lifecycle(
        &self,
        principal: &Principal,
        record: &RecordRow,
        command: RecordCommand,
        request_id: Uuid,
    ) -> Result<RecordRow, ApiError> {
        self.run_record(principal, record.id, command, request_id)
            .await?;
        self.find_record(&principal.tenant, record.datasheet(), record.id)
            .await
    }

    /// Hires an applicant at the `offer` stage: creates their employee record from their name,
    /// email and phone plus `employee` (job title defaults to the position applied for), and
    /// moves the applicant to `hired`. Both streams record the link. Everything is validated
    /// before either is written.
    pub(crate) async fn hire_applicant(
        &self,
        principal: &Principal,
        applicant_id: Uuid,
        expected_version: Option<u64>,
        employee: Fields,
        request_id: Uuid,
    ) -> Result<(RecordRow, RecordRow), ApiError> {
        let tenant = &principal.tenant;
        let applicant = self
            .find_record(tenant, Datasheet::Applicants, applicant_id)
            .await?;
        let mut fields = Fields::new();
        for (from, to) in FROM_APPLICANT {
            if let Some(value) = applicant.fields.get(from) {
                fields.insert(to.to_owned(), value.clone());
            }
        }
        if let Some(position) = applicant.text("position") {
            fields.insert("job_title".to_owned(), Value::String(position.to_owned()));
        }
        fields.extend(employee);
        let employee_id = new_record_id();
        // The employee record is checked by the rules of its creation first, so a hire never
        // stops half-way on a bad value.
        let schema = self.custom_schema(tenant, Datasheet::Employees).await?;
        custos_domain::record::validate_new(Datasheet::Employees, &schema, fields.clone())?;
        let _lock = self
            .check_manager(principal, Datasheet::Employees, employee_id, &fields)
            .await?;
        let hire = RecordCommand::Hire {
            employee_id,
            expected_version,
            today: today(),
        };
        self.run_record(principal, applicant_id, hire, request_id)
            .await?;
        let create = RecordCommand::Create {
            datasheet: Datasheet::Employees,
            fields,
            hired_from: Some(applicant_id),
            schema,
            effective_from: None,
            today: today(),
        };
        self.run_record(principal, employee_id, create, request_id)
            .await?;
        Ok((
            self.find_record(tenant, Datasheet::Applicants, applicant_id)
                .await?,
            self.find_record(tenant, Datasheet::Employees, employee_id)
                .await?,
        ))
    }

    /// The scheduled changes due by `today` take effect in the read models. The projector
    /// does this every minute with the service's date; this names the day (a test's clock, an
    /// operator catching up at once).
    pub async fn scheduled_changes_take_effect(
        &self,
        tenant: &Tenant,
        today: NaiveDate,
    ) -> anyhow::Result<u64> {
        let projections = custos_projections::all();
        let projections: Vec<&dyn custos_projections::Projection> =
            projections.iter().map(AsRef::as_ref).collect();
        crate::infra::projector::on_day(&tenant.pool, &projections, today).await
    }

    /// Erases a record's subject: records the erasure (who, when, on what ground, which fields)
    /// and destroys the record's data key, so none of its values can be read again from the
    /// log; the read models blank it. If an earlier attempt recorded the erasure but did not
    /// destroy the key, this finishes it.
    pub(crate) async fn erase_record(
        &self,
        principal: &Principal,
        record: &RecordRow,
        expected_version: u64,
        ground: ErasureGround,
        note: Option<String>,
        request_id: Uuid,
    ) -> Result<RecordRow, ApiError> {
        let tenant = &principal.tenant;
        let command = RecordCommand::Erase {
            expected_version,
            ground,
            note,
        };
        self.erase_subject(
            tenant,
            record.id,
            command,
            self.actor(principal, request_id),
            record.erased_at.is_some(),
        )
        .await?;
        self.find_record(tenant, record.datasheet(), record.id)
            .await
    }

    /// Runs an `Erase` command on record `id` and destroys its data key. `erased_before`: the
    /// read model shows the record erased already; if an earlier attempt recorded the erasure
    /// but did not destroy the key, this finishes it.
    pub async fn erase_subject(
        &self,
        tenant: &Tenant,
        id: Uuid,
        command: RecordCommand,
        metadata: EventMetadata,
        erased_before: bool,
    ) -> Result<(), ApiError> {
        // The key is destroyed as soon as the erasure is recorded, before waiting for the read
        // models: a slow projector must never leave a recorded erasure with a live key.
        let recorded = match self
            .command(tenant, &tenant.records, id, command, metadata)
            .wait_for_read_models(false)
            .await
        {
            Ok(()) => true,
            Err(ApiError::Validation { .. }) if erased_before => false,
            Err(err) => return Err(err),
        };
        // Written outside the database first, so a restored backup cannot bring the person back.
        self.ledger_erasure(tenant, id)?;
        let destroyed = tenant
            .subject_keys
            .erase(id)
            .await
            .map_err(ApiError::internal)?;
        if !recorded && !destroyed {
            return Err(ApiError::validation("id", "the record was erased already"));
        }
        self.remove_rebuild_copies(tenant).await;
        tracing::info!(tenant.id = %tenant.id, record.id = %id, actor.kind = metadata.actor.kind(), "a record's subject was erased");
        self.wait_for_stream(tenant, Record::TYPE, id).await
    }

    async fn run_record(
        &self,
        principal: &Principal,
        id: Uuid,
        command: RecordCommand,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        self.record_command(principal, id, command, request_id)
            .await
    }

    /// `command` on record `id`, attributed to `principal` within request `request_id`.
    fn record_command<'a>(
        &'a self,
        principal: &'a Principal,
        id: Uuid,
        command: RecordCommand,
        request_id: Uuid,
    ) -> Command<'a, Record> {
        let tenant = &principal.tenant;
        self.command(
            tenant,
            &tenant.records,
            id,
            command,
            self.actor(principal, request_id),
        )
    }

    /// When `fields` set an employee's manager: takes the org-chart lock (held by the caller
    /// until the change is written) and checks the manager is another active employee who
    /// does not report, directly or not, to `employee`.
    async fn check_manager(
        &self,
        principal: &Principal,
        datasheet: Datasheet,
        employee: Uuid,
        fields: &Fields,
    ) -> Result<Option<TenantLock>, ApiError> {
        let Some(manager) = manager_of(datasheet, fields) else {
            return Ok(None);
        };
        let tenant = &principal.tenant;
        let lock = self
            .tenant_lock(tenant, ORG_CHART_LOCK, &[Record::TYPE])
            .await?;
        let refuse = |message: &str| Err(ApiError::validation("managerId", message));
        if manager == employee {
            return refuse("an employee cannot be their own manager");
        }
        match records::record(&tenant.pool, manager).await? {
            Some(row) if row.datasheet() == Datasheet::Employees && !row.archived => {}
            _ => return refuse("the manager must be an active employee"),
        }
        if records::manages_indirectly(&tenant.pool, employee, manager).await? {
            return refuse("the manager reports to this employee: that would make a loop");
        }
        Ok(Some(lock))
    }
}

/// The manager `fields` give an employee; `None` when they set none (malformed values are the
/// aggregate's to refuse; clearing needs no check).
fn manager_of(datasheet: Datasheet, fields: &Fields) -> Option<Uuid> {
    match fields.get("manager_id") {
        Some(Value::String(raw)) if datasheet == Datasheet::Employees => {
            Uuid::try_parse(raw.trim()).ok()
        }
        _ => None,
    }
}
