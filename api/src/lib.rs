//! The Custos service: configuration, PostgreSQL (private cluster, pools per tenant), the event
//! store, the projector, authentication, GraphQL, HTTP and the command line.
//!
//! The modules are floors (`../shared/LAYOUT.md`, enforced by `tests/architecture.rs`); a
//! module imports only those below it: `cli` → `startup` → `http` → `graphql` → `service` →
//! `auth` → `infra` → `config`, `error`, `telemetry`. What the binary needs is exported here,
//! and what the end-to-end tests and the benchmark need through `testing`; everything else is
//! `pub(crate)`.

mod auth;
mod cli;
mod config;
mod error;
mod graphql;
mod http;
mod infra;
mod service;
mod startup;
pub mod telemetry;

pub use cli::Cli;
pub use config::{BackupConfig, Config, DatabaseConfig, NotificationPolicy, Region, SessionPolicy};
pub use startup::Application;

/// What the end-to-end tests (`custos-tests`) and the benchmark (`custos-bench`) reach inside
/// the service beyond its HTTP API: the private cluster, keys, the event log and projector, a
/// tenant's open context, the use cases, and the schema's limits. Not an interface for other
/// programs: it changes with the service.
pub mod testing {
    pub use crate::error::{ApiError, Code};
    pub use crate::graphql::limits::MAX_ALIASES;
    pub use crate::graphql::limits::MAX_DEPTH;
    pub use crate::infra::archive::export::Exported;
    pub use crate::infra::archive::format::{ArchiveError, Opener, Protection};
    pub use crate::infra::archive::import::Imported;
    pub use crate::infra::blind_index::{
        remove_fields as blind_index_remove_fields, FIELDS_REMOVED as BLIND_INDEX_FIELDS_REMOVED,
    };
    pub use crate::infra::cluster::{find_bin_dir, PrivateCluster, Supervisor};
    pub use crate::infra::event_store::log::{events_after, EventLog, Position, REBUILDING};
    pub use crate::infra::event_store::repository::Cqrs;
    pub use crate::infra::integrity::proof::{
        check_file, ConsistencyProof, EventProof, ProvenEvent,
    };
    pub use crate::infra::integrity::read_models::{
        rebuild_unless as rebuild_read_model, replacement as replacement_table,
        shadow as shadow_table, Ended as RebuildEnded, Rebuilt, REBUILD_LOCK,
    };
    pub use crate::infra::integrity::tree_head::{TreeHead, Witness};
    pub use crate::infra::integrity::verify::{verify, Report};
    pub use crate::infra::keys::MasterKey;
    pub use crate::infra::projector::{self, Projectors};
    pub use crate::infra::stores::idempotency::sweep as sweep_idempotency_keys;
    pub use crate::infra::subject_keys::{KeyError, SubjectKeys};
    pub use crate::infra::tenancy::archives::{Arrived, OpenedArchive, Placement};
    pub use crate::infra::tenancy::catalog::{Tenancy, TEMPLATE_DATABASE, TEMPLATE_LOCK};
    pub use crate::infra::tenancy::tenant::Tenant;
    pub use crate::infra::webhooks::feed::changes_after as webhook_changes_after;
    pub use crate::service::identity::NewOrganization;
    pub use crate::service::Services;

    use cqrs_es::{Aggregate, AggregateError};
    use custos_domain::EventMetadata;
    use uuid::Uuid;

    /// Provisions an organisation `slug` (its database and role, on trial for 30 days, no
    /// users): what the lifecycle bench fills its store with.
    pub async fn provision(services: &Services, slug: &str) -> anyhow::Result<Uuid> {
        let trial_ends_at = chrono::Utc::now() + chrono::Duration::days(30);
        let row = services
            .tenancy
            .provision(slug, slug, crate::config::Region::Eu, trial_ends_at)
            .await?;
        Ok(row.id)
    }

    /// Runs `command` on the aggregate `id` through the one door every use case uses
    /// (`Services::command`), waiting for its read models.
    pub async fn run_command<A>(
        services: &Services,
        tenant: &Tenant,
        cqrs: &Cqrs<A>,
        id: Uuid,
        command: A::Command,
        metadata: EventMetadata,
    ) -> Result<(), ApiError>
    where
        A: Aggregate + 'static,
        A::Command: Clone + Send,
        A::Error: Send,
        ApiError: From<AggregateError<A::Error>>,
    {
        services.command(tenant, cqrs, id, command, metadata).await
    }
}
