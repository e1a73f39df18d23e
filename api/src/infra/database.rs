//! The PostgreSQL server Custos administers: the private cluster it starts under the data
//! directory, or the server `DATABASE_URL` names.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;

use crate::config::{Config, DatabaseConfig};
use crate::infra::backups::{BackupStore, RESTORING};
use crate::infra::cluster::{PrivateCluster, Supervisor, Tools};

/// The PostgreSQL server Custos administers, and the private cluster when it runs one.
pub(crate) struct Database {
    pub options: PgConnectOptions,
    pub cluster: Option<PrivateCluster>,
    /// On the private cluster of a service running on the same data directory.
    pub attached: bool,
}

impl Database {
    /// Starts the private cluster under `<data-dir>/postgres`, or uses the configured server.
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        match &config.database {
            DatabaseConfig::External(options) => Ok(Self {
                options: (**options).clone(),
                cluster: None,
                attached: false,
            }),
            DatabaseConfig::Private => {
                if config.data_dir.join(RESTORING).exists() {
                    anyhow::bail!(
                        "{} holds an interrupted restore: run `custos backup restore` into it again, or remove it",
                        config.data_dir.display()
                    );
                }
                let dir = config.data_dir.join("postgres");
                let mut settings = config.cluster_settings.clone();
                let store = config.backups.as_ref().map(|b| BackupStore::new(&b.dir));
                if let Some(store) = &store {
                    settings.extend(store.archive_settings());
                }
                let data_dir = config.data_dir.clone();
                let cluster = tokio::task::spawn_blocking(move || {
                    let pgdata = dir.join("data");
                    let Some(store) = store else {
                        return Ok::<_, anyhow::Error>(PrivateCluster::start(&dir, &settings)?);
                    };
                    let tools = Tools::find()?;
                    store.prepare(&tools)?;
                    let fresh = !pgdata.join("PG_VERSION").exists();
                    match (fresh, store.owner()) {
                        (true, Some(owner)) => anyhow::bail!(
                            "{} has no PostgreSQL cluster, but the backup directory {} holds the \
                             backups of one (system {owner}): to bring it back, run `custos backup \
                             restore`; to start afresh, use another backup directory",
                            data_dir.display(),
                            store.dir().display()
                        ),
                        (false, _) => {
                            store.claim(&tools, &pgdata)?;
                        }
                        (true, None) => {}
                    }
                    let cluster = PrivateCluster::start(&dir, &settings)?;
                    if fresh {
                        store.claim(&tools, &pgdata)?;
                    }
                    remember_backup_dir(&data_dir, store.dir())?;
                    // A cluster promoted by a restore began a timeline while it did not
                    // archive: its history file goes into the archive now, so later restores
                    // follow it.
                    store.archive_history(&tools, &pgdata)?;
                    Ok(cluster)
                })
                .await??;
                tracing::info!(socket = %cluster.socket_dir().display(), "private PostgreSQL cluster started");
                Ok(Self {
                    options: cluster.connect_options(),
                    cluster: Some(cluster),
                    attached: false,
                })
            }
        }
    }

    /// Like [`Self::open`], but when the service is running on the data directory already,
    /// connects to its private cluster instead of starting one (for the commands run beside
    /// it: they work as another instance would).
    pub(crate) async fn open_or_attach(config: &Config) -> anyhow::Result<Self> {
        match Self::open(config).await {
            Err(err)
                if err
                    .downcast_ref::<crate::infra::cluster::ClusterError>()
                    .is_some_and(|e| {
                        matches!(e, crate::infra::cluster::ClusterError::InUse(_))
                    }) =>
            {
                let options =
                    crate::infra::cluster::attach_options(&config.data_dir.join("postgres"))?;
                tracing::info!("the service is running on this data directory: using its cluster");
                Ok(Self {
                    options,
                    cluster: None,
                    attached: true,
                })
            }
            other => other,
        }
    }

    /// Stops the private cluster, if this process started one.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        if let Some(cluster) = self.cluster {
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
            tracing::info!("private PostgreSQL cluster stopped");
        }
        Ok(())
    }
}

/// Where a data directory's backups go, kept in it once given (`<data-dir>/backup-dir`): a
/// later command or start without `CUSTOS_BACKUP_DIR` still archives there, so no start leaves
/// a hole in the WAL archive.
const REMEMBERED: &str = "backup-dir";

fn remember_backup_dir(data_dir: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let path = data_dir.join(REMEMBERED);
    let text = dir.display().to_string();
    if std::fs::read_to_string(&path).is_ok_and(|known| known.trim() == text) {
        return Ok(());
    }
    crate::infra::backups::write_durably(&path, text.as_bytes())
}

/// The backup directory this data directory was last started with, if any.
pub(crate) fn remembered_backup_dir(data_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_to_string(data_dir.join(REMEMBERED))
        .ok()
        .map(|text| std::path::PathBuf::from(text.trim()))
        .filter(|path| !path.as_os_str().is_empty())
}

/// Whether the database server answers, as the [`watch`] task last found. Requests consult it
/// before they touch a pool, so that an outage is answered at once instead of after the pool's
/// connection attempts time out. Up until the watcher finds otherwise (and always for the
/// one-shot commands, which run no watcher).
#[derive(Debug)]
pub(crate) struct Health(watch::Sender<bool>);

impl Default for Health {
    fn default() -> Self {
        Self(watch::Sender::new(true))
    }
}

impl Health {
    pub(crate) fn is_up(&self) -> bool {
        *self.0.borrow()
    }

    /// Records whether the database answers; `true` when that changed.
    fn set(&self, up: bool) -> bool {
        self.0
            .send_if_modified(|was| std::mem::replace(was, up) != up)
    }

    /// Completes when the database goes down (at once if it is down).
    pub(crate) async fn went_down(&self) {
        let mut receiver = self.0.subscribe();
        // An error means the sender is gone: the service is closing; nothing to wait for.
        if receiver.wait_for(|up| !*up).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the database is down now or is found down within one round of the watcher
    /// ([`PROBE_EVERY`], and [`PROBE_TIMEOUT`] for its answer). An error a request met as the
    /// server went away (a connection cut off mid-statement) may reach it before the watcher
    /// has seen the outage; asked then, this tells the outage from a fault of its own.
    pub(crate) async fn down_within_a_probe(&self) -> bool {
        tokio::time::timeout(PROBE_EVERY + PROBE_TIMEOUT, self.went_down())
            .await
            .is_ok()
    }
}

/// Completes when `server` goes down; never without one (for a select that ends a request
/// when the server it needs goes away, if it needs one of its own).
pub(crate) async fn went_down(server: Option<&Health>) {
    match server {
        Some(server) => server.went_down().await,
        None => std::future::pending().await,
    }
}

/// How often the watcher asks the server whether it answers, and how long an answer may take.
/// A refused or broken connection is an outage at once; a late answer only twice in a row (a
/// busy server may be slow once without being down).
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
const LATE_ANSWERS: u32 = 2;
/// Every how many rounds the watcher also opens a connection of its own, and closes it: its
/// probe's connection outlives a server that refuses new ones while old ones live (a smart
/// shutdown), which the pools' new connections would otherwise wait on until their time-out.
const NEW_CONNECTION_EVERY: u32 = 4;
/// Restarts of a dead private cluster tried in a row, the wait before the first, and the
/// longest wait between two, before the service gives up and exits.
const RESTARTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Watches the database server until it cannot be brought back: asks it every
/// [`PROBE_EVERY`] whether it answers (on a connection of its own, so a full pool does not
/// count as an outage; every [`NEW_CONNECTION_EVERY`] rounds on a new one too) and records the
/// answer in `health`; with a private cluster, starts its server again when the postmaster
/// died, backing off between tries. Returns the error that ends the service: a private
/// cluster that did not start again after [`RESTARTS`] tries (a process supervisor takes over
/// from there). A server named by `DATABASE_URL` (or a region's own) is someone else's to
/// restart: the watcher waits for it indefinitely. `server` names the server in the log
/// (`default`, or the region).
pub(crate) async fn watch(
    health: std::sync::Arc<Health>,
    options: PgConnectOptions,
    supervisor: Option<Supervisor>,
    server: &'static str,
) -> anyhow::Error {
    let options = options.disable_statement_logging();
    let mut probe: Option<PgConnection> = None;
    let mut late = 0;
    let mut failed_restarts = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut round: u32 = 0;
    loop {
        round = round.wrapping_add(1);
        if let Some(supervisor) = &supervisor {
            if !supervisor.alive() {
                if health.set(false) {
                    tracing::error!("the private PostgreSQL server died; starting it again");
                }
                probe = None;
                let restarter = supervisor.clone();
                match tokio::task::spawn_blocking(move || restarter.restart()).await {
                    Ok(Ok(true)) => {
                        tracing::warn!("the private PostgreSQL server was started again");
                        failed_restarts = 0;
                        backoff = FIRST_BACKOFF;
                    }
                    // The cluster is being stopped: the service is closing.
                    Ok(Ok(false)) => return std::future::pending().await,
                    Ok(Err(err)) => {
                        failed_restarts += 1;
                        tracing::error!(error = %err, attempt = failed_restarts, "the private PostgreSQL server did not start again");
                        if failed_restarts >= RESTARTS {
                            return anyhow::anyhow!(
                                "the private PostgreSQL server died and did not start again \
                                 after {RESTARTS} tries (see postgres.log in the data directory): {err}"
                            );
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    Err(err) => return anyhow::anyhow!("the restart task failed: {err}"),
                }
            }
        }
        let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
            let conn = match probe.as_mut() {
                Some(conn) => conn,
                None => probe.insert(PgConnection::connect_with(&options).await?),
            };
            sqlx::query("SELECT 1").execute(conn).await?;
            if round.is_multiple_of(NEW_CONNECTION_EVERY) {
                PgConnection::connect_with(&options).await?.close().await?;
            }
            Ok(())
        })
        .await;
        match answered {
            Ok(Ok(())) => {
                late = 0;
                if health.set(true) {
                    tracing::warn!(server, "the database answers again");
                }
            }
            // A server with no connection to spare answers: it is not down.
            Ok(Err(sqlx::Error::Database(err))) if err.code().as_deref() == Some("53300") => {
                late = 0;
                health.set(true);
            }
            Ok(Err(err)) => {
                late = 0;
                if health.set(false) {
                    tracing::error!(server, error = %err, "the database does not answer");
                }
                probe = None;
            }
            Err(_) => {
                late += 1;
                probe = None;
                if late >= LATE_ANSWERS && health.set(false) {
                    tracing::error!(server, timeout = ?PROBE_TIMEOUT, times = late, "the database does not answer in time");
                }
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
