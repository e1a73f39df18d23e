//! The use cases, shared by GraphQL, the CLI and the schedules. This file holds what every use
//! case needs: the [`Services`] (the dependencies), the one door through which commands run
//! ([`Services::command`]), and the tenant-wide locks that rules spanning several aggregates
//! are checked under. Each area's use cases are an `impl Services` block in a file of its own.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use cqrs_es::{Aggregate, AggregateError};
use custos_domain::{ApiToken, EventMetadata, Record, Role, User};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::auth::passwords::Passwords;
use crate::auth::principal::Principal;
use crate::config::SessionPolicy;
use crate::error::ApiError;
use crate::infra::event_store::log::Position;
use crate::infra::event_store::repository::{noting_appends, Appended, Cqrs};
use crate::infra::projector::WaitError;
use crate::infra::tenancy::catalog::Tenancy;
use crate::infra::tenancy::tenant::Tenant;

pub(crate) mod admin;
pub(crate) mod api_tokens;
pub(crate) mod audit;
pub(crate) mod custom_fields;
pub(crate) mod exports;
pub(crate) mod idempotency;
pub(crate) mod identity;
pub(crate) mod imports;
pub(crate) mod jobs;
pub(crate) mod lifecycle;
pub(crate) mod notifications;
pub(crate) mod privacy;
pub(crate) mod records;
pub(crate) mod two_factor;
pub(crate) mod webhooks;

/// Advisory lock key (transaction-scoped, in the tenant database) for the user directory.
const DIRECTORY_LOCK: i64 = 0x6375_7374_6f73_0002;

/// The service's use cases and what they depend on.
pub struct Services {
    pub tenancy: Tenancy,
    /// Login attempts per client address.
    pub(crate) login_limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    pub(crate) passwords: Passwords,
    pub(crate) sessions: SessionPolicy,
    pub(crate) projection_wait: Duration,
    /// The data directory: checkpoint files are appended under it.
    pub(crate) data_dir: std::path::PathBuf,
    /// Every erasure, also kept outside the database (replayed after a restore).
    pub(crate) erasures: crate::infra::erasure_ledger::ErasureLedgers,
    /// Organisations whose last checkpoint refused to sign, and why (until one signs again).
    pub(crate) integrity_alarms: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, String>>,
    /// Organisations with a removal of read-model rebuild copies under way after an erasure,
    /// and whether another erasure asked for one more round ([`Services::remove_rebuild_copies`]).
    pub(crate) rebuild_copies_removals:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, bool>>>,
    /// Backups (of the private cluster, or archives of every organisation with
    /// `DATABASE_URL`), when a backup directory is configured.
    pub(crate) backups: Option<std::sync::Arc<crate::infra::backups::plan::BackupPlan>>,
    /// Trial length and the periods of an organisation's life.
    pub(crate) lifecycle: crate::config::LifecyclePolicy,
    /// The storage each plan includes and the overage step.
    pub(crate) storage: crate::config::StoragePolicy,
    /// How notifications are delivered, and the mail server (`None`: none configured).
    pub(crate) notifications: crate::config::NotificationPolicy,
    pub(crate) mailer: Option<crate::infra::notifications::mail::Mailer>,
    /// Wakes the delivery worker when this process wrote to the outbox.
    pub(crate) outbox_written: tokio::sync::Notify,
    /// How webhooks are delivered, and the HTTP client that delivers them.
    pub(crate) webhooks: crate::config::WebhookPolicy,
    pub(crate) webhook_sender: crate::infra::webhooks::sender::Sender,
    /// Where this service listens, once it does: no webhook may point there.
    pub(crate) listening: std::sync::OnceLock<std::net::SocketAddr>,
    /// Whether the database server answers (kept by the service's watcher).
    pub(crate) database: std::sync::Arc<crate::infra::database::Health>,
    /// Cancelled when the service begins to stop: open subscriptions close.
    pub(crate) closing: tokio_util::sync::CancellationToken,
    /// The service's metrics (`/metrics`).
    pub(crate) metrics: crate::telemetry::metrics::Metrics,
}

/// Held while a change checked against other aggregates runs; dropping it (even on
/// cancellation) rolls back the transaction and releases the lock.
pub(crate) struct TenantLock(#[allow(dead_code)] Transaction<'static, Postgres>);

/// A command on its way to a tenant's aggregate, built by [`Services::command`]. Awaiting it
/// runs it once and waits until the read models of its aggregate type have applied its events
/// (read-your-writes), mapping every failure to an [`ApiError`]; the methods change that.
#[must_use = "a command does nothing until it is awaited"]
pub(crate) struct Command<'a, A: Aggregate + 'static> {
    services: &'a Services,
    tenant: &'a Tenant,
    cqrs: &'a Cqrs<A>,
    aggregate_id: Uuid,
    command: A::Command,
    metadata: EventMetadata,
    attempts: u32,
    read_models: ReadModels,
}

/// What a command waits for before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadModels {
    /// The read models have applied the change (the default): the answer may read them.
    Wait,
    /// Nothing: the caller waits itself, or does not need to.
    Skip,
    /// Nothing, for an answer that reads none of them: the tenant's reads on this instance wait
    /// for the change instead ([`crate::infra::projector::Projectors::defer`]), and the writer
    /// only, before it writes, while many such changes are outstanding.
    Defer,
}

/// How many changes answered without waiting for the read models may be outstanding.
const DEFERRED_LAG: usize = 1_000;

impl Services {
    /// The one door through which use cases change an aggregate: `command` on the aggregate
    /// `aggregate_id` of `tenant`, attributed to `metadata`'s actor and request.
    pub(crate) fn command<'a, A: Aggregate + 'static>(
        &'a self,
        tenant: &'a Tenant,
        cqrs: &'a Cqrs<A>,
        aggregate_id: Uuid,
        command: A::Command,
        metadata: EventMetadata,
    ) -> Command<'a, A> {
        Command {
            services: self,
            tenant,
            cqrs,
            aggregate_id,
            command,
            metadata,
            attempts: 1,
            read_models: ReadModels::Wait,
        }
    }

    /// The metadata of events the principal causes within one request.
    pub(crate) fn actor(&self, principal: &Principal, request_id: Uuid) -> EventMetadata {
        EventMetadata::new(principal.actor(), request_id)
    }

    /// Waits until the read models of `aggregate_type` have applied the stream's latest event
    /// (read-your-writes); `UNAVAILABLE` when they lag beyond the projection wait.
    pub(crate) async fn wait_for_stream(
        &self,
        tenant: &Tenant,
        aggregate_type: &str,
        aggregate_id: Uuid,
    ) -> Result<(), ApiError> {
        let id = aggregate_id.to_string();
        match tenant.log.head(aggregate_type, &id).await? {
            Some(head) => self.wait_for(tenant, aggregate_type, head).await,
            None => Ok(()),
        }
    }

    /// Waits until the read models of `aggregate_type` have passed `position`;
    /// `UNAVAILABLE` when they lag beyond the projection wait.
    async fn wait_for(
        &self,
        tenant: &Tenant,
        aggregate_type: &str,
        position: Position,
    ) -> Result<(), ApiError> {
        tenant
            .projectors
            .wait_for(aggregate_type, position, self.projection_wait)
            .await
            .map_err(|_| lagging(tenant, aggregate_type))
    }

    /// Waits until the read models of `tenant` show every change this instance answered
    /// without waiting for them, and `after` (a position a client passes back, from another
    /// instance's answer): read-your-writes for what [`Command::defer_read_models`] answered.
    /// `VALIDATION` for a position the organisation's log has not reached.
    pub(crate) async fn wait_for_deferred(
        &self,
        tenant: &Tenant,
        after: Option<Position>,
    ) -> Result<(), ApiError> {
        if let Some(after) = after {
            if !tenant.projectors.passed(Record::TYPE, after)
                && tenant.log.newest().await? < Some(after)
            {
                return Err(ApiError::Validation {
                    message: "Custos-After is not a position of this organisation's changes"
                        .to_owned(),
                    field: None,
                });
            }
        }
        // Only record changes are answered before the read models show them, so a position a
        // client passes back is one of a record's.
        tenant
            .projectors
            .wait_for_deferred(
                after.map(|after| (Record::TYPE, after)),
                self.projection_wait,
            )
            .await
            .map_err(|err| waited(tenant, Record::TYPE, err))
    }

    /// Takes the tenant's directory lock: user, role and API token rules are checked under it.
    pub(crate) async fn directory_lock(&self, tenant: &Tenant) -> Result<TenantLock, ApiError> {
        self.tenant_lock(
            tenant,
            DIRECTORY_LOCK,
            &[User::TYPE, Role::TYPE, ApiToken::TYPE],
        )
        .await
    }

    /// Takes the tenant-wide advisory lock `key` without holding a pooled connection while
    /// waiting for it, then waits until the read models of `aggregates` have caught up with the
    /// log — a previous holder may have given up waiting for them — so rules spanning several
    /// aggregates are checked against every change made so far, on any number of instances.
    pub(crate) async fn tenant_lock(
        &self,
        tenant: &Tenant,
        key: i64,
        aggregates: &[&str],
    ) -> Result<TenantLock, ApiError> {
        let deadline = tokio::time::Instant::now() + self.projection_wait;
        let lock = loop {
            let mut tx = tenant.pool.begin().await?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                break TenantLock(tx);
            }
            tx.rollback().await?;
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for aggregate in aggregates {
            if let Some(latest) = tenant.log.latest(aggregate).await? {
                tenant
                    .projectors
                    .wait_for(aggregate, latest, self.projection_wait)
                    .await
                    .map_err(|_| ApiError::Unavailable)?;
            }
        }
        Ok(lock)
    }
}

/// What a wait for the read models that failed answers: `UNAVAILABLE` when they lag (logged),
/// the storage error when the log could not be read.
fn waited(tenant: &Tenant, aggregate_type: &str, err: WaitError) -> ApiError {
    match err {
        WaitError::Timeout => lagging(tenant, aggregate_type),
        WaitError::Log(err) => err.into(),
    }
}

/// `UNAVAILABLE`, logged: the read models of `tenant` did not catch up with a change of
/// `aggregate_type` within the projection wait.
fn lagging(tenant: &Tenant, aggregate_type: &str) -> ApiError {
    tracing::warn!(tenant.id = %tenant.id, aggregate.kind = aggregate_type, "read models are lagging");
    ApiError::Unavailable
}

impl<'a, A> Command<'a, A>
where
    A: Aggregate + 'static,
    A::Command: Clone,
    A::Error: Send,
    ApiError: From<AggregateError<A::Error>>,
{
    /// Tries up to `attempts` times in all while concurrent writers win the race for the
    /// stream's next sequence number (appends of history, such as logins, that must not fail
    /// because of one another); a stale `expectedVersion` is never retried.
    pub(crate) fn retry_on_conflict(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Whether to wait for the read models (the default) before answering.
    pub(crate) fn wait_for_read_models(mut self, wait: bool) -> Self {
        self.read_models = if wait {
            ReadModels::Wait
        } else {
            ReadModels::Skip
        };
        self
    }

    /// Answers once the change is written, without waiting for the read models, for an answer
    /// that reads none of them: [`Command::written`].
    pub(crate) fn defer_read_models(mut self) -> Self {
        self.read_models = ReadModels::Defer;
        self
    }

    /// Runs the command: the version it left the aggregate's stream at and where it landed,
    /// when it appended; `None` when it changed nothing (then the read models show the
    /// stream's latest change, as after a waiting command).
    pub(crate) async fn written(self) -> Result<Option<Appended>, ApiError> {
        self.run()
            .await?
            .map_err(|refusal| AggregateError::UserError(refusal).into())
    }

    /// Runs the command. The outer result is the service's (storage, conflicts, lagging read
    /// models); the inner one is the aggregate's answer, its refusal as the domain's own
    /// error, for callers that act on the reason.
    pub(crate) async fn outcome(self) -> Result<Result<(), A::Error>, ApiError> {
        Ok(self.run().await?.map(|_| ()))
    }

    /// Runs the command: what it appended, if anything, or the refusal.
    async fn run(self) -> Result<Result<Option<Appended>, A::Error>, ApiError> {
        let id = self.aggregate_id.to_string();
        let metadata = self.metadata.to_map();
        let mut command = Some(self.command);
        let mut attempt = 1;
        // First decided on the aggregate as this instance cached it, without reading its
        // stream: an append that lands proves it current.
        let mut read_streams = false;
        // So that reads never wait long for the changes answered before the read models show
        // them, a writer waits while many are outstanding, before it writes anything.
        if self.read_models == ReadModels::Defer {
            self.tenant
                .projectors
                .make_room(DEFERRED_LAG, self.services.projection_wait)
                .await
                .map_err(|err| waited(self.tenant, A::TYPE, err))?;
        }
        let written = loop {
            let once_more = !read_streams || attempt < self.attempts;
            let this_try = if once_more {
                command.clone()
            } else {
                command.take()
            }
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a command ran out of attempts")))?;
            let (result, noted) = noting_appends(
                read_streams,
                self.cqrs
                    .execute_with_metadata(&id, this_try, metadata.clone()),
            )
            .await;
            // Decided on a cached aggregate and nothing appended (a refusal, a conflict, no
            // change): if another instance has written to the stream since, the answer may be
            // the cache's, so the command is decided again from the stream.
            if let (Some(cached), None) = (noted.unread, noted.appended) {
                let stale = matches!(result, Err(AggregateError::AggregateConflict))
                    || self.tenant.log.version(A::TYPE, &id).await? != cached;
                if stale {
                    read_streams = true;
                    continue;
                }
            }
            match result {
                Ok(()) => break noted,
                Err(AggregateError::AggregateConflict) if attempt < self.attempts => attempt += 1,
                Err(AggregateError::UserError(refusal)) => return Ok(Err(refusal)),
                Err(other) => return Err(other.into()),
            }
        };
        match (self.read_models, written.appended.map(|a| a.position)) {
            (ReadModels::Skip, _) => {}
            (ReadModels::Wait, Some(position)) => {
                self.services
                    .wait_for(self.tenant, A::TYPE, position)
                    .await?
            }
            (ReadModels::Defer, Some(position)) => self.tenant.projectors.defer(A::TYPE, position),
            // Nothing new: the answer must still show the stream's latest change.
            (ReadModels::Wait | ReadModels::Defer, None) => {
                self.services
                    .wait_for_stream(self.tenant, A::TYPE, self.aggregate_id)
                    .await?
            }
        }
        // What this instance keeps in memory of the aggregate's read models goes now, so that
        // the next request sees the change (other instances hear of it from the database).
        self.tenant.caches.changed(A::TYPE);
        Ok(Ok(written.appended))
    }
}

impl<'a, A> IntoFuture for Command<'a, A>
where
    A: Aggregate + 'static,
    A::Command: Clone + Send,
    A::Error: Send,
    ApiError: From<AggregateError<A::Error>>,
{
    type Output = Result<(), ApiError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.outcome()
                .await?
                .map_err(|refusal| AggregateError::UserError(refusal).into())
        })
    }
}
