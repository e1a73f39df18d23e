//! The catalog of tenants, the PostgreSQL server of each region, and each tenant's own
//! database and login role, opened lazily as a [`Tenant`] context.
//!
//! Creating a database or a role cannot be a migration (migrations run inside one database),
//! so provisioning issues that DDL here, with generated identifiers only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::RwLock;
use uuid::Uuid;

use super::tenant::{anchor_mac, Tenant, TenantRow};
use crate::config::Region;
use crate::error::ServerDown;
use crate::infra::database::Health;
use crate::infra::keys::{scram_sha256_verifier, MasterKey};
use crate::telemetry::metrics::Metrics;
use custos_domain::Plan;

pub(crate) static CATALOG_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/catalog");
pub(crate) static TENANT_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/tenant");

/// The migrated database every tenant database is copied from.
pub const TEMPLATE_DATABASE: &str = "custos_tenant_template";
/// Advisory lock (in the server's `postgres` database) that keeps template migrations and
/// copies of the template apart: copying needs nobody connected to the template.
pub const TEMPLATE_LOCK: i64 = 0x6375_7374_6f73_0001;

/// The statuses in which an organisation has its database and is opened: served in full
/// (trial, active, cancelling), or with the limits of its standing (an ended trial, a
/// suspension, the migration window: `auth::policy::check_standing`).
pub(crate) const LIVE: &str =
    "('trial', 'active', 'cancelling', 'expired', 'suspended', 'migration')";

/// Whether an organisation in `status` is live (see [`LIVE`]).
pub(crate) fn is_live(status: &str) -> bool {
    custos_domain::SubscriptionStatus::parse(status)
        .is_some_and(|s| s != custos_domain::SubscriptionStatus::Purged)
}

/// The catalog columns of a [`TenantRow`].
const TENANT_COLUMNS: &str =
    "id, slug, name, region, status, database_name, role_name, audit_anchor, audit_anchor_mac";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProvisionError {
    #[error("the organisation slug is already taken")]
    SlugTaken,
    #[error("an organisation with this id is already on this server")]
    IdTaken,
    #[error("an organisation with this id was purged from this server")]
    Purged,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Other(anyhow::Error),
}

/// A PostgreSQL server that hosts tenant databases.
struct Server {
    /// Connects as the administrator; the database is set per use.
    admin: PgConnectOptions,
    /// Whether it answers: the default server's is the service's; a region on a server of its
    /// own has its own, kept by a watcher of its own.
    health: Arc<Health>,
    /// A region's own server (not the default one).
    own: bool,
}

impl Server {
    async fn connect(&self, database: &str) -> sqlx::Result<PgConnection> {
        PgConnection::connect_with(&self.admin.clone().database(database)).await
    }
}

/// The tenant directory and every open tenant.
pub struct Tenancy {
    catalog: PgPool,
    servers: HashMap<Region, Server>,
    master_key: Arc<MasterKey>,
    pool_size: u32,
    open: RwLock<HashMap<Uuid, Arc<Tenant>>>,
    /// Notified after each commit of a change a webhook may be told about, in any open tenant.
    changes: Arc<tokio::sync::Notify>,
    /// Where open tenants count their commits and projector batches.
    metrics: Metrics,
}

/// The connections of one pool, or of a kind of pool summed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolUsage {
    /// Connections open, idle among them, and the most the pool (each pool) may open.
    pub(crate) size: u32,
    pub(crate) idle: usize,
    pub(crate) max: u32,
}

impl PoolUsage {
    /// Connections lent out (the two counts are read apart, so never below zero).
    pub(crate) fn in_use(&self) -> u32 {
        self.size.saturating_sub(self.idle as u32)
    }
}

/// The catalog pool, the open tenants' pools together, and how many tenants are open.
pub(crate) struct Pools {
    pub(crate) catalog: PoolUsage,
    pub(crate) tenants: PoolUsage,
    pub(crate) open: usize,
}

/// How often an open tenant context is checked against the catalog.
const RECHECK: Duration = Duration::from_secs(5);

/// Advisory lock class (in the catalog) held by a move or an import of one organisation.
const ORGANIZATION_LOCK: i32 = 0x6375_0007;

/// Held for the length of a move or an import; closing its connection releases it.
pub(crate) struct OrganizationLock(PgConnection);

impl OrganizationLock {
    /// Releases the lock.
    pub(crate) async fn release(self) {
        let _ = self.0.close().await;
    }
}

/// Quotes an SQL identifier. Provisioning only ever passes generated names, but quoting keeps
/// that a property of this function rather than of its callers.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Tenancy {
    /// Connects to the catalog and prepares every region's server: the catalog is migrated,
    /// the tenant template created or migrated, and every existing tenant migrated.
    pub(crate) async fn start(
        default_server: PgConnectOptions,
        catalog_database: &str,
        regions: &HashMap<Region, PgConnectOptions>,
        master_key: Arc<MasterKey>,
        pool_size: u32,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let default_server = default_server.disable_statement_logging();
        let maintenance = Server {
            admin: default_server.clone(),
            health: health.clone(),
            own: false,
        };
        let mut admin = maintenance.connect("postgres").await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
                .bind(catalog_database)
                .fetch_one(&mut admin)
                .await?;
        if !exists {
            let created = sqlx::query(&format!("CREATE DATABASE {}", ident(catalog_database)))
                .execute(&mut admin)
                .await;
            // Two instances starting at once: the loser finds the catalog created.
            if let Err(err) = created {
                if err
                    .as_database_error()
                    .is_none_or(|e| e.code().as_deref() != Some("42P04"))
                {
                    return Err(err.into());
                }
            }
        }
        admin.close().await?;
        let catalog = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(60))
            .connect_with(default_server.clone().database(catalog_database))
            .await?;
        CATALOG_MIGRATIONS.run(&catalog).await?;

        let servers: HashMap<Region, Server> = Region::ALL
            .iter()
            .map(|region| {
                let server = match regions.get(region) {
                    Some(own) => Server {
                        admin: own.clone().disable_statement_logging(),
                        health: Arc::default(),
                        own: true,
                    },
                    None => Server {
                        admin: default_server.clone(),
                        health: health.clone(),
                        own: false,
                    },
                };
                (*region, server)
            })
            .collect();
        for server in servers.values() {
            prepare_template(server).await?;
        }
        let tenancy = Self {
            catalog,
            servers,
            master_key,
            pool_size,
            open: RwLock::new(HashMap::new()),
            changes: Arc::new(tokio::sync::Notify::new()),
            metrics,
        };
        tenancy.remove_abandoned().await?;
        tenancy.recover_moves().await?;
        tenancy.repair_subscriptions().await?;
        tenancy.migrate_tenants().await?;
        Ok(tenancy)
    }

    /// Whether the server of the open tenant `id` answers (`None`: not open here).
    pub(crate) async fn server_of(&self, id: Uuid) -> Option<Arc<Health>> {
        self.open
            .read()
            .await
            .get(&id)
            .map(|tenant| tenant.server.clone())
    }

    /// The regions on servers of their own: each one's administrator options and health, for
    /// the service to watch.
    pub(crate) fn region_servers(&self) -> Vec<(Region, PgConnectOptions, Arc<Health>)> {
        let mut servers: Vec<_> = self
            .servers
            .iter()
            .filter(|(_, server)| server.own)
            .map(|(region, server)| (*region, server.admin.clone(), server.health.clone()))
            .collect();
        servers.sort_by_key(|(region, ..)| region.as_str());
        servers
    }

    /// The connections of the catalog pool and of every open tenant's pool, as they stand.
    pub(crate) async fn pool_usage(&self) -> Pools {
        let open = self.open.read().await;
        let mut tenants = PoolUsage {
            size: 0,
            idle: 0,
            max: self.pool_size,
        };
        for tenant in open.values() {
            tenants.size += tenant.pool.size();
            tenants.idle += tenant.pool.num_idle();
        }
        Pools {
            catalog: PoolUsage {
                size: self.catalog.size(),
                idle: self.catalog.num_idle(),
                max: self.catalog.options().get_max_connections(),
            },
            tenants,
            open: open.len(),
        }
    }

    /// The catalog pool (read-only use outside this module).
    pub fn catalog(&self) -> &PgPool {
        &self.catalog
    }

    /// Removes tenants whose provisioning never finished (the process died half-way through a
    /// sign-up), so their slug, database and role do not stay taken for ever. Ten minutes is far
    /// longer than provisioning takes, so another instance's sign-up in progress is left alone.
    async fn remove_abandoned(&self) -> anyhow::Result<()> {
        let abandoned: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tenants WHERE status = 'provisioning' AND created_at < now() - interval '10 minutes'",
        )
        .fetch_all(&self.catalog)
        .await?;
        for id in abandoned {
            // An import in progress holds its organisation's lock, however long it takes.
            let Some(lock) = self.organization_lock(id).await? else {
                continue;
            };
            tracing::warn!(tenant.id = %id, "removing a tenant whose provisioning never finished");
            self.remove(id).await?;
            lock.release().await;
        }
        Ok(())
    }

    /// Finishes or undoes what a move killed half-way left (see `archives`): a switched move's
    /// old database is dropped; an unswitched one's new database is dropped and the old one
    /// opened again. A move in progress elsewhere (its lock held) is left alone.
    async fn recover_moves(&self) -> anyhow::Result<()> {
        let moves: Vec<(Uuid, serde_json::Value)> =
            sqlx::query_as("SELECT id, move FROM tenants WHERE move IS NOT NULL")
                .fetch_all(&self.catalog)
                .await?;
        for (id, state) in moves {
            let Some(lock) = self.organization_lock(id).await? else {
                continue;
            };
            let row = self
                .row(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("tenant {id} vanished"))?;
            let region = |key: &str| -> anyhow::Result<&Server> {
                let region: Region = state[key]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("tenant {id}: a move names no region"))?;
                Ok(&self.servers[&region])
            };
            if let Some(old) = state["drop"].as_str() {
                tracing::warn!(tenant.id = %id, "finishing a move: dropping the old database");
                let old_row = TenantRow {
                    database_name: old.to_owned(),
                    role_name: old.to_owned(),
                    ..row.clone()
                };
                self.drop_database(region("region")?, &old_row).await?;
            } else if let Some(new) = state["database"].as_str() {
                tracing::warn!(tenant.id = %id, "undoing a move that did not finish: the organisation stays where it was");
                let new_row = TenantRow {
                    database_name: new.to_owned(),
                    role_name: new.to_owned(),
                    ..row.clone()
                };
                self.drop_database(region("region")?, &new_row).await?;
                self.fence(&row, false).await?;
            }
            self.move_done(id).await?;
            lock.release().await;
        }
        Ok(())
    }

    /// Clears the organisation's move state: it is served where the catalog says.
    pub(crate) async fn move_done(&self, id: Uuid) -> sqlx::Result<()> {
        sqlx::query("UPDATE tenants SET move = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.catalog)
            .await?;
        Ok(())
    }

    /// The lock a move or an import of `id` holds for its length (a catalog session lock);
    /// `None` when another process holds it.
    pub(crate) async fn organization_lock(
        &self,
        id: Uuid,
    ) -> sqlx::Result<Option<OrganizationLock>> {
        let mut conn = self.catalog.acquire().await?;
        let key = i64::from_be_bytes(id.as_bytes()[8..].try_into().expect("8 bytes"));
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(ORGANIZATION_LOCK)
            .bind(key as i32 ^ (key >> 32) as i32)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then(|| OrganizationLock(conn.detach())))
    }

    /// Closes (`true`) or opens again (`false`) a tenant database to its own role: closing
    /// revokes its CONNECT and ends its sessions, so no instance writes there meanwhile.
    pub(crate) async fn fence(&self, row: &TenantRow, close: bool) -> anyhow::Result<()> {
        let server = self.server(row)?;
        let mut admin = server.connect("postgres").await?;
        if close {
            sqlx::query(&format!(
                "REVOKE CONNECT ON DATABASE {} FROM {}",
                ident(&row.database_name),
                ident(&row.role_name)
            ))
            .execute(&mut admin)
            .await?;
            sqlx::query(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                 WHERE datname = $1 AND usename = $2 AND pid <> pg_backend_pid()",
            )
            .bind(&row.database_name)
            .bind(&row.role_name)
            .execute(&mut admin)
            .await?;
        } else {
            sqlx::query(&format!(
                "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
                ident(&row.database_name),
                ident(&row.role_name)
            ))
            .execute(&mut admin)
            .await?;
        }
        admin.close().await?;
        Ok(())
    }

    /// The catalog entry of the live organisation (see [`LIVE`]; not moving) with this slug.
    pub(crate) async fn in_service_by_slug(&self, slug: &str) -> sqlx::Result<Option<TenantRow>> {
        sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants
             WHERE slug = $1 AND status IN {LIVE} AND move IS NULL"
        ))
        .bind(slug)
        .fetch_optional(&self.catalog)
        .await
    }

    /// Every organisation in service (see [`LIVE`]), oldest first.
    pub(crate) async fn in_service_rows(&self) -> sqlx::Result<Vec<TenantRow>> {
        sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE status IN {LIVE} ORDER BY created_at"
        ))
        .fetch_all(&self.catalog)
        .await
    }

    /// The catalog entry with this slug, whatever its state.
    pub(crate) async fn row_by_slug(&self, slug: &str) -> sqlx::Result<Option<TenantRow>> {
        sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1"
        ))
        .bind(slug)
        .fetch_optional(&self.catalog)
        .await
    }

    /// A tenant's catalog entry, whatever its state.
    pub(crate) async fn row(&self, id: Uuid) -> sqlx::Result<Option<TenantRow>> {
        sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.catalog)
        .await
    }

    /// The context of `id` if it is open here (without opening it or counting a use).
    pub(crate) async fn opened(&self, id: Uuid) -> Option<Arc<Tenant>> {
        self.open.read().await.get(&id).cloned()
    }

    /// Closes this process's open context of a tenant, if any.
    pub async fn close_tenant(&self, id: Uuid) {
        if let Some(tenant) = self.open.write().await.remove(&id) {
            tenant.close().await;
        }
    }

    /// The PostgreSQL server of a region.
    fn region_server(&self, region: Region) -> &Server {
        &self.servers[&region]
    }

    /// The size in bytes of each of these databases on `region`'s server (those that exist).
    pub(crate) async fn database_sizes(
        &self,
        region: Region,
        names: &[String],
    ) -> sqlx::Result<Vec<(String, i64)>> {
        let mut admin = self.region_server(region).connect("postgres").await?;
        let sizes = sqlx::query_as(
            "SELECT datname::text, pg_database_size(oid) FROM pg_database
             WHERE datname = ANY($1)",
        )
        .bind(names)
        .fetch_all(&mut admin)
        .await;
        admin.close().await?;
        sizes
    }

    /// Creates a tenant database and role on `region`'s server for `row` (a move's target).
    pub(crate) async fn create_tenant_database(
        &self,
        region: Region,
        row: &TenantRow,
    ) -> Result<(), ProvisionError> {
        self.create_database(self.region_server(region), row).await
    }

    /// Drops a tenant database and role on `region`'s server.
    pub(crate) async fn drop_tenant_database(
        &self,
        region: Region,
        row: &TenantRow,
    ) -> sqlx::Result<()> {
        self.drop_database(self.region_server(region), row).await
    }

    /// Drops the scratch database `name` (and its role) of a backup archive's verification on
    /// the server of `region`.
    pub(crate) async fn drop_scratch_database(
        &self,
        region: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            name.starts_with("custos_v_"),
            "`{name}` is not the name of a scratch database"
        );
        let region: Region = region
            .parse()
            .map_err(|()| anyhow::anyhow!("unknown region `{region}`"))?;
        let mut admin = self.region_server(region).connect("postgres").await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(name)
        ))
        .execute(&mut admin)
        .await?;
        sqlx::query(&format!("DROP ROLE IF EXISTS {}", ident(name)))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(())
    }

    /// Runs the tenant migrations on every tenant database, and removes what read-model
    /// rebuilds that did not finish left there.
    pub(crate) async fn migrate_tenants(&self) -> anyhow::Result<()> {
        let projections = custos_projections::all();
        for row in self.list().await? {
            let server = self.server(&row)?;
            let mut conn = server.connect(&row.database_name).await?;
            TENANT_MIGRATIONS.run_direct(&mut conn).await?;
            let removed = crate::infra::integrity::read_models::remove_unfinished(
                &mut conn,
                &projections.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            )
            .await?;
            if removed > 0 {
                tracing::warn!(
                    tenant.id = %row.id,
                    tables = removed,
                    "removed the tables of read-model rebuilds that did not finish"
                );
            }
            conn.close().await?;
        }
        Ok(())
    }

    /// Every provisioned tenant not being purged.
    pub(crate) async fn list(&self) -> sqlx::Result<Vec<TenantRow>> {
        let mut conn = self.catalog.acquire().await?;
        list_tenants(&mut conn).await
    }

    fn server(&self, row: &TenantRow) -> anyhow::Result<&Server> {
        let region: Region = row
            .region
            .parse()
            .map_err(|()| anyhow::anyhow!("tenant {} has unknown region {}", row.id, row.region))?;
        self.servers
            .get(&region)
            .ok_or_else(|| anyhow::anyhow!("no server for region {}", row.region))
    }

    /// Creates a tenant: its catalog entry, login role and database (a copy of the migrated
    /// template, reachable only by that role). On any failure everything created is removed.
    /// Its trial ends at `trial_ends_at`.
    pub(crate) async fn provision(
        &self,
        slug: &str,
        name: &str,
        region: Region,
        trial_ends_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<TenantRow, ProvisionError> {
        let id = Uuid::now_v7();
        self.create(id, slug, name, region, None).await?;
        if let Err(err) = self
            .open_subscription(id, Some(trial_ends_at), None, "sign-up")
            .await
        {
            let _ = self.remove(id).await;
            return Err(ProvisionError::Other(anyhow::anyhow!(
                "opening the subscription: {err}"
            )));
        }
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.catalog)
        .await?;
        tracing::info!(tenant.id = %id, tenant.region = region.as_str(), "tenant provisioned");
        Ok(row)
    }

    /// Creates the catalog entry (still `provisioning`: not served, not listed), login role and
    /// database of an organisation imported with this id and generation-0 signing key; the
    /// import then fills the database and calls [`Tenancy::finish_import`], or
    /// [`Tenancy::remove`] when it fails. The database gets a fresh name: the server may hold
    /// the organisation's old one (a move within one server).
    pub(crate) async fn begin_import(
        &self,
        id: Uuid,
        slug: &str,
        name: &str,
        region: Region,
        anchor: &[u8; 32],
    ) -> Result<TenantRow, ProvisionError> {
        self.create(id, slug, name, region, Some(anchor)).await
    }

    /// Puts an imported organisation in service with the status it had.
    pub(crate) async fn finish_import(
        &self,
        id: Uuid,
        status: &str,
        plan: &str,
        trial_ends_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> anyhow::Result<()> {
        let provisioning: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM tenants WHERE id = $1 AND status = 'provisioning')",
        )
        .bind(id)
        .fetch_one(&self.catalog)
        .await?;
        anyhow::ensure!(
            provisioning,
            "the imported organisation was removed before it could be put in service"
        );
        // It keeps its plan, or its trial; the life it had elsewhere stays in its archive.
        let plan = Plan::parse(plan).ok().filter(|_| status != "trial");
        if !matches!(status, "trial" | "active") {
            tracing::warn!(tenant.id = %id, status, "an organisation imported in a status other than trial or active is opened as {}", if plan.is_some() { "active" } else { "trial" });
        }
        self.open_subscription(id, trial_ends_at, plan, "import")
            .await
            .map_err(|e| anyhow::anyhow!("opening the imported organisation's subscription: {e}"))
    }

    /// The catalog entry and database of a new tenant, `provisioning`.
    async fn create(
        &self,
        id: Uuid,
        slug: &str,
        name: &str,
        region: Region,
        anchor: Option<&[u8; 32]>,
    ) -> Result<TenantRow, ProvisionError> {
        // A purged organisation's id stays with its tombstone and its closed stream.
        let purged: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tombstones WHERE id = $1)")
                .bind(id)
                .fetch_one(&self.catalog)
                .await?;
        if purged {
            return Err(ProvisionError::Purged);
        }
        let db_name = format!("custos_t_{}", Uuid::now_v7().simple());
        let inserted = sqlx::query_as::<_, TenantRow>(&format!(
            "INSERT INTO tenants (id, slug, name, region, status, database_name, role_name,
                                  trial_ends_at, audit_anchor, audit_anchor_mac)
             VALUES ($1, $2, $3, $4, 'provisioning', $5, $5, now() + interval '30 days', $6, $7)
             RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id)
        .bind(slug)
        .bind(name)
        .bind(region.as_str())
        .bind(&db_name)
        .bind(anchor.map(|a| a.as_slice()))
        .bind(anchor.map(|a| anchor_mac(&self.master_key, id, a)))
        .fetch_one(&self.catalog)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(err) => {
                return Err(match err.as_database_error().and_then(|e| e.constraint()) {
                    Some("tenants_slug_key") => ProvisionError::SlugTaken,
                    Some("tenants_pkey") => ProvisionError::IdTaken,
                    _ => err.into(),
                })
            }
        };
        let server = &self.servers[&region];
        if let Err(err) = self.create_database(server, &row).await {
            if let Err(cleanup) = self.drop_database(server, &row).await {
                tracing::error!(tenant.id = %id, error = %cleanup, "cleanup after a failed provisioning failed");
            }
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id)
                .execute(&self.catalog)
                .await?;
            return Err(err);
        }
        Ok(row)
    }

    /// The master key.
    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.master_key
    }

    /// Notified after each commit, in any open tenant, of a change a webhook may be told
    /// about (records, users, roles, webhooks).
    pub(crate) fn changes(&self) -> &tokio::sync::Notify {
        &self.changes
    }

    /// Superuser options for a tenant's own database.
    pub(crate) fn admin_options(&self, row: &TenantRow) -> anyhow::Result<PgConnectOptions> {
        Ok(self.server(row)?.admin.clone().database(&row.database_name))
    }

    /// A superuser connection to a tenant's own database.
    pub(crate) async fn admin_connection(&self, row: &TenantRow) -> anyhow::Result<PgConnection> {
        Ok(self.server(row)?.connect(&row.database_name).await?)
    }

    async fn create_database(
        &self,
        server: &Server,
        row: &TenantRow,
    ) -> Result<(), ProvisionError> {
        let password = self.master_key.tenant_db_password(row.id);
        let mut admin = server.connect("postgres").await?;
        sqlx::query("SELECT pg_advisory_lock_shared($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut admin)
            .await?;
        // Only a SCRAM verifier of the derived password travels in the SQL text.
        let verifier = scram_sha256_verifier(&password);
        let statements = [
            format!(
                "CREATE ROLE {} LOGIN PASSWORD '{verifier}' IN ROLE custos_tenant",
                ident(&row.role_name)
            ),
            format!(
                "CREATE DATABASE {} TEMPLATE {}",
                ident(&row.database_name),
                ident(TEMPLATE_DATABASE)
            ),
            format!(
                "REVOKE ALL ON DATABASE {} FROM PUBLIC",
                ident(&row.database_name)
            ),
            format!(
                "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
                ident(&row.database_name),
                ident(&row.role_name)
            ),
        ];
        for statement in &statements {
            sqlx::query(statement).execute(&mut admin).await?;
        }
        admin.close().await?;
        let mut conn = server.connect(&row.database_name).await?;
        TENANT_MIGRATIONS.run_direct(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Drops a tenant's database and role; both are attempted, the first error is returned.
    async fn drop_database(&self, server: &Server, row: &TenantRow) -> sqlx::Result<()> {
        let mut admin = server.connect("postgres").await?;
        let database = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(&row.database_name)
        ))
        .execute(&mut admin)
        .await;
        let role = sqlx::query(&format!("DROP ROLE IF EXISTS {}", ident(&row.role_name)))
            .execute(&mut admin)
            .await;
        admin.close().await?;
        database.and(role).map(|_| ())
    }

    /// Drops the database and login role of a purged organisation (its catalog row stays
    /// until the tombstone replaces it): its context here is closed, and every connection to
    /// it, from any process, ended. Idempotent.
    pub(crate) async fn drop_purged(&self, row: &TenantRow) -> anyhow::Result<()> {
        anyhow::ensure!(
            row.status == "purged",
            "only a purged organisation's database is dropped (it is {})",
            row.status
        );
        self.close_tenant(row.id).await;
        self.drop_database(self.server(row)?, row).await?;
        Ok(())
    }

    /// Removes a tenant entirely: closes it, drops its database and role, deletes its
    /// catalog entry. Used to undo a sign-up that failed half-way.
    pub(crate) async fn remove(&self, id: Uuid) -> anyhow::Result<()> {
        if let Some(tenant) = self.open.write().await.remove(&id) {
            tenant.close().await;
        }
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.catalog)
        .await?;
        if let Some(row) = row {
            self.drop_database(self.server(&row)?, &row).await?;
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id)
                .execute(&self.catalog)
                .await?;
        }
        Ok(())
    }

    /// The open context of the tenant with this id, opening it on first use. `None` for an
    /// unknown id or a tenant that is not in service.
    ///
    /// An open context is checked against the catalog every [`RECHECK`]: an organisation
    /// moved to another database (by another process), or being moved, is closed here too.
    ///
    /// While the server the tenant lives on does not answer, the answer is [`ServerDown`] at
    /// once.
    pub async fn get(&self, id: Uuid) -> anyhow::Result<Option<Arc<Tenant>>> {
        let tenant = self.context(id).await?;
        if tenant.as_ref().is_some_and(|tenant| !tenant.server.is_up()) {
            return Err(ServerDown.into());
        }
        Ok(tenant)
    }

    /// The open context of the tenant with this id (see [`Tenancy::get`]), whether its server
    /// answers or not.
    async fn context(&self, id: Uuid) -> anyhow::Result<Option<Arc<Tenant>>> {
        let cached = self.open.read().await.get(&id).cloned();
        if let Some(tenant) = cached {
            if !tenant.due_for_check(RECHECK) {
                tenant.touch();
                return Ok(Some(tenant));
            }
            let current: Option<(String, String, bool)> = sqlx::query_as(&format!(
                "SELECT database_name, status,
                        COALESCE(storage_used_bytes >= storage_limit_bytes, false)
                 FROM tenants WHERE id = $1 AND status IN {LIVE} AND move IS NULL",
            ))
            .bind(id)
            .fetch_optional(&self.catalog)
            .await?;
            if let Some((database, status, over_limit)) = current {
                if database == tenant.database_name {
                    tenant.set_standing(&status);
                    tenant.set_over_storage_limit(over_limit);
                    tenant.touch();
                    return Ok(Some(tenant));
                }
            }
            tracing::info!(tenant.id = %id, "the organisation moved or is moving: closing its context");
            self.close_tenant(id).await;
        }
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "SELECT {TENANT_COLUMNS},
                    COALESCE(storage_used_bytes >= storage_limit_bytes, false) AS storage_over_limit
             FROM tenants WHERE id = $1 AND status IN {LIVE} AND move IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.catalog)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut open = self.open.write().await;
        if let Some(tenant) = open.get(&id) {
            return Ok(Some(tenant.clone()));
        }
        let server = self.server(&row)?;
        let tenant = Arc::new(Tenant::open(
            &row,
            &server.admin,
            server.health.clone(),
            &self.master_key,
            self.pool_size,
            &self.changes,
            &self.metrics,
        )?);
        open.insert(id, tenant.clone());
        Ok(Some(tenant))
    }

    /// The tenant with this slug (see [`Tenancy::get`]).
    pub async fn by_slug(&self, slug: &str) -> anyhow::Result<Option<Arc<Tenant>>> {
        let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.catalog)
            .await?;
        match id {
            Some(id) => self.get(id).await,
            None => Ok(None),
        }
    }

    /// Closes the contexts of tenants nobody has used for `idle` and nobody holds now: their
    /// projectors stop and their pools close, so connections do not grow with the number of
    /// tenants ever opened. The next request opens the tenant again and its projectors catch up.
    pub(crate) async fn close_idle(&self, idle: Duration) -> usize {
        let closed: Vec<Arc<Tenant>> = {
            let mut open = self.open.write().await;
            let ids: Vec<Uuid> = open
                .iter()
                .filter(|(_, tenant)| Arc::strong_count(tenant) == 1 && tenant.idle_for() >= idle)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        for tenant in &closed {
            tenant.close().await;
        }
        closed.len()
    }

    /// The open tenant contexts, without counting this as a use (they still close when idle).
    ///
    /// Contexts the catalog no longer backs — the organisation moved, restored into another
    /// database, or no longer served, by another process since this one last checked — are
    /// closed here rather than returned.
    pub(crate) async fn open_tenants(&self) -> Vec<Arc<Tenant>> {
        let open: Vec<Arc<Tenant>> = self.open.read().await.values().cloned().collect();
        if open.is_empty() {
            return open;
        }
        let ids: Vec<Uuid> = open.iter().map(|t| t.id).collect();
        let current: Vec<(Uuid, String, String)> = match sqlx::query_as(&format!(
            "SELECT id, database_name, status FROM tenants
             WHERE id = ANY($1) AND status IN {LIVE} AND move IS NULL"
        ))
        .bind(&ids)
        .fetch_all(&self.catalog)
        .await
        {
            Ok(current) => current,
            // The catalog does not answer: the callers' own errors will say so.
            Err(_) => return open,
        };
        let mut kept = Vec::with_capacity(open.len());
        for tenant in open {
            let backed = current
                .iter()
                .find(|(id, db, _)| *id == tenant.id && *db == tenant.database_name);
            if let Some((_, _, status)) = backed {
                tenant.set_standing(status);
                kept.push(tenant);
            } else {
                tracing::info!(tenant.id = %tenant.id, "the organisation moved or is no longer served: closing its context");
                self.close_tenant(tenant.id).await;
            }
        }
        kept
    }

    /// How many tenant contexts are open.
    pub async fn open_count(&self) -> usize {
        self.open.read().await.len()
    }

    /// Closes every open tenant's pool and stops its projectors.
    pub(crate) async fn close(&self) {
        let tenants: Vec<Arc<Tenant>> = self.open.write().await.drain().map(|(_, t)| t).collect();
        for tenant in tenants {
            tenant.close().await;
        }
        self.catalog.close().await;
    }
}

/// Every provisioned tenant of the catalog `conn` is connected to, oldest first (not those
/// being purged: their database may be gone already).
pub(crate) async fn list_tenants(conn: &mut PgConnection) -> sqlx::Result<Vec<TenantRow>> {
    sqlx::query_as(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE status NOT IN ('provisioning', 'purged')
         ORDER BY created_at"
    ))
    .fetch_all(conn)
    .await
}

/// Creates the tenant template on a server if missing and brings it to the latest migration,
/// holding the template lock so no tenant database is being copied from it meanwhile.
async fn prepare_template(server: &Server) -> anyhow::Result<()> {
    let mut admin = server.connect("postgres").await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(TEMPLATE_DATABASE)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {}", ident(TEMPLATE_DATABASE)))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC",
            ident(TEMPLATE_DATABASE)
        ))
        .execute(&mut admin)
        .await?;
    }
    let mut template = server.connect(TEMPLATE_DATABASE).await?;
    let migrated = TENANT_MIGRATIONS.run_direct(&mut template).await;
    template.close().await?;
    // Closing the session releases the lock, whatever happened.
    admin.close().await?;
    migrated?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("custos_t_abc"), "\"custos_t_abc\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
