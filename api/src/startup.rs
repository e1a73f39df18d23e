//! The composition root: PostgreSQL (private cluster or `DATABASE_URL`), tenancy, services,
//! the schedules, the router and the listener. Tests build an `Application` exactly as
//! `custos serve` does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::auth::passwords::Passwords;
use crate::config::{Config, DatabaseConfig};
use crate::graphql::build_schema;
use crate::http::{router, AppState};
use crate::infra::backups::archives::ArchiveBackups;
use crate::infra::backups::plan::BackupPlan;
use crate::infra::backups::verify::Backups;
use crate::infra::database::{self, Database};
use crate::infra::erasure_ledger::ErasureLedgers;
use crate::infra::keys::MasterKey;
use crate::infra::notifications::mail::Mailer;
use crate::infra::tenancy::catalog::Tenancy;
use crate::service::{jobs, Services};
use crate::telemetry::metrics::Metrics;

/// Connects tenancy and builds the services, for `serve` and the one-shot commands.
pub(crate) async fn services(
    config: &Config,
    database: &Database,
) -> anyhow::Result<Arc<Services>> {
    let master_key = Arc::new(MasterKey::load(
        config.master_key.as_ref(),
        &config.data_dir,
    )?);
    let backups = match (&config.backups, &config.database) {
        (None, _) => None,
        (Some(backups), DatabaseConfig::Private) => Some(Arc::new(BackupPlan::Cluster(
            Backups::new(config, backups, Some(master_key.clone()))?,
        ))),
        (Some(backups), DatabaseConfig::External(_)) => {
            Some(Arc::new(BackupPlan::Archives(ArchiveBackups::new(backups))))
        }
    };
    let erasures = ErasureLedgers::new(
        &config.data_dir,
        backups.as_ref().map(|b| b.erasures_dir()),
        master_key.clone(),
    );
    let metrics = Metrics::new();
    let health = Arc::new(database::Health::default());
    let tenancy = Tenancy::start(
        database.options.clone(),
        &config.catalog_database,
        &config.regions,
        master_key,
        config.tenant_pool_size,
        metrics.clone(),
        health.clone(),
    )
    .await?;
    let per_minute = std::num::NonZeroU32::new(config.login_attempts_per_minute.max(1))
        .unwrap_or(std::num::NonZeroU32::MIN);
    let services = Arc::new(Services {
        tenancy,
        login_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
        passwords: Passwords::new(config.password_hash_concurrency),
        sessions: config.sessions,
        projection_wait: config.projection_wait,
        data_dir: config.data_dir.clone(),
        erasures,
        integrity_alarms: Default::default(),
        rebuild_copies_removals: Default::default(),
        backups,
        lifecycle: config.lifecycle,
        storage: config.storage,
        mailer: config
            .notifications
            .smtp_url
            .as_ref()
            .map(|url| Mailer::new(url, &config.notifications.from))
            .transpose()?,
        notifications: config.notifications.clone(),
        outbox_written: tokio::sync::Notify::new(),
        webhooks: config.webhooks.clone(),
        webhook_sender: crate::infra::webhooks::sender::Sender::new(
            config.webhooks.timeout,
            config.webhooks.allow_private,
        )?,
        listening: std::sync::OnceLock::new(),
        database: health,
        closing: Default::default(),
        metrics,
    });
    // Before anything is served: erasures made since a restored backup are made again. Beside
    // a running service, that service did so when it started (and may be between writing an
    // erasure's ledger entry and destroying its key).
    if !database.attached {
        services.replay_erasure_ledgers().await?;
    }
    if let Err(err) = services.erasures.sync_mirror() {
        tracing::error!(error = %err, "the erasure ledgers could not be copied into the backup directory");
    }
    Ok(services)
}

/// Runs `f` with the services on the configured database (opened, and the private cluster
/// started for it unless the service runs on it already: then on the service's cluster, as
/// another instance would), closing them after.
pub(crate) async fn with_services<T, F, Fut>(config: &Config, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Arc<Services>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let database = Database::open_or_attach(config).await?;
    let result = async {
        let built = services(config, &database).await?;
        let result = f(built.clone()).await;
        built.tenancy.close().await;
        result
    }
    .await;
    database.stop().await?;
    result
}

/// How often the open organisations' expired idempotency keys (and their answers) are deleted.
const KEY_SWEEP: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// How often the open organisations' cached aggregates that are no longer used (cached a
/// minute ago or more) are forgotten.
const AGGREGATE_SWEEP: std::time::Duration = std::time::Duration::from_secs(15);

/// How often the read models' lag is measured for the metrics.
const LAG_SAMPLE: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a stop waits for running requests before it goes on without them.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a stop then waits for the pools to be given back their connections.
const CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops a background task when its owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running service.
pub struct Application {
    /// The schedules (idle tenants, retention, checkpoints, backups, lifecycle, storage,
    /// notifications, webhooks): stopped before the pools and the cluster.
    jobs: Vec<AbortOnDrop>,
    /// Watches the database server (and restarts the private cluster's); it sends only the
    /// error that ends the service.
    watcher: AbortOnDrop,
    fatal: tokio::sync::oneshot::Receiver<anyhow::Error>,
    listener: TcpListener,
    router: Router,
    services: Arc<Services>,
    database: Database,
}

impl Application {
    /// Opens the database, prepares tenancy and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let database = Database::open(&config).await?;
        let services = match services(&config, &database).await {
            Ok(services) => services,
            Err(err) => {
                database.stop().await?;
                return Err(err);
            }
        };
        let state = AppState {
            schema: build_schema(services.clone(), config.introspection),
            services: services.clone(),
            graphiql: config.graphiql,
            metrics_token: config.metrics_token.clone().map(Arc::new),
            cors_origins: config
                .cors_origins
                .iter()
                .map(|origin| axum::http::HeaderValue::from_str(origin))
                .collect::<Result<_, _>>()?,
            websockets: config.websockets.clone(),
            sockets: Default::default(),
        };
        let listener = TcpListener::bind(config.listen).await?;
        let _ = services.listening.set(listener.local_addr()?);
        let (report_fatal, fatal) = tokio::sync::oneshot::channel();
        let watching = database::watch(
            services.database.clone(),
            database.options.clone(),
            database
                .cluster
                .as_ref()
                .map(|cluster| cluster.supervisor()),
            "default",
        );
        let watcher = AbortOnDrop(tokio::spawn(async move {
            let _ = report_fatal.send(watching.await);
        }));
        let sweeper = tokio::spawn(jobs::close_idle_tenants(
            services.clone(),
            config.tenant_idle,
        ));
        let lag = tokio::spawn(jobs::projection_lag(services.clone(), LAG_SAMPLE));
        let keys = tokio::spawn(jobs::idempotency_keys(services.clone(), KEY_SWEEP));
        let aggregates = tokio::spawn(jobs::forget_stale_aggregates(
            services.clone(),
            AGGREGATE_SWEEP,
        ));
        // The servers of regions that do not live on the default one: watched too, never
        // restarted (they are someone else's).
        let region_watchers =
            services
                .tenancy
                .region_servers()
                .into_iter()
                .map(|(region, options, health)| {
                    AbortOnDrop(tokio::spawn(async move {
                        let _ = database::watch(health, options, None, region.as_str()).await;
                    }))
                });
        let retention = config
            .retention_interval
            .map(|interval| AbortOnDrop(tokio::spawn(jobs::retention(services.clone(), interval))));
        let checkpoints = config.checkpoint_interval.map(|interval| {
            AbortOnDrop(tokio::spawn(jobs::checkpoints(services.clone(), interval)))
        });
        let backups = config
            .backups
            .as_ref()
            .and_then(|b| b.interval)
            .zip(services.backups.clone())
            .map(|(interval, plan)| {
                AbortOnDrop(tokio::spawn(jobs::backups(
                    services.clone(),
                    plan,
                    interval,
                )))
            });
        let lifecycle = config
            .lifecycle
            .interval
            .map(|interval| AbortOnDrop(tokio::spawn(jobs::lifecycle(services.clone(), interval))));
        let storage = config
            .storage
            .interval
            .map(|interval| AbortOnDrop(tokio::spawn(jobs::storage(services.clone(), interval))));
        let notifications = config.notifications.interval.map(|interval| {
            AbortOnDrop(tokio::spawn(jobs::notifications(
                services.clone(),
                interval,
            )))
        });
        let webhooks = config
            .webhooks
            .interval
            .map(|interval| AbortOnDrop(tokio::spawn(jobs::webhooks(services.clone(), interval))));
        Ok(Self {
            jobs: [
                AbortOnDrop(sweeper),
                AbortOnDrop(lag),
                AbortOnDrop(keys),
                AbortOnDrop(aggregates),
            ]
            .into_iter()
            .chain(region_watchers)
            .chain(retention)
            .chain(checkpoints)
            .chain(backups)
            .chain(lifecycle)
            .chain(storage)
            .chain(notifications)
            .chain(webhooks)
            .collect(),
            watcher,
            fatal,
            listener,
            router: router(state),
            services,
            database,
        })
    }

    /// Where the service listens (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The HTTP router.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Superuser options for the PostgreSQL server (for the benchmark's scratch database).
    pub fn database_options(&self) -> sqlx::postgres::PgConnectOptions {
        self.database.options.clone()
    }

    /// The use cases, for the CLI and tests.
    pub fn services(&self) -> Arc<Services> {
        self.services.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, closes subscriptions (1001,
    /// going away), waits up to [`DRAIN`] for running requests, stops the schedules and the
    /// projectors, closes the pools and stops the private cluster. Ends with an error, after
    /// the same steps, when the database server died and could not be started again.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.listener.local_addr()?, "serving GraphQL at /graphql");
        let failed = Arc::new(std::sync::Mutex::new(None));
        let closing = self.services.closing.clone();
        let stop = {
            let failed = failed.clone();
            let fatal = self.fatal;
            let closing = closing.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    Ok(err) = fatal => {
                        tracing::error!(error = %format!("{err:#}"), "stopping the service");
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
                    }
                }
                tracing::info!("stopping: no new requests; waiting for running ones");
                closing.cancel();
            }
        };
        let serving = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop);
        let served = tokio::select! {
            served = serving => served,
            () = async { closing.cancelled().await; tokio::time::sleep(DRAIN).await } => {
                tracing::warn!(drain = ?DRAIN, "requests still running after the drain period; stopping without them");
                Ok(())
            }
        };
        drop(self.jobs);
        drop(self.watcher);
        // A request past the drain still holds its connection; the pools are not waited for
        // beyond this, and stopping the cluster (fast) ends such a request's session.
        if tokio::time::timeout(CLOSE, self.services.tenancy.close())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?CLOSE, "connections still in use; stopping without them");
        }
        let stopped = self.database.stop().await;
        if let Some(err) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(err);
        }
        stopped?;
        served?;
        Ok(())
    }
}
