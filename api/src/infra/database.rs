//! The PostgreSQL server Custos administers: the private cluster it starts under the data
//! directory, or the server `DATABASE_URL` names.

use sqlx::postgres::PgConnectOptions;

use crate::config::{Config, DatabaseConfig};
use crate::infra::backups::{BackupStore, RESTORING};
use crate::infra::cluster::{PrivateCluster, Tools};

/// The PostgreSQL server Custos administers, and the private cluster when it runs one.
pub(crate) struct Database {
    pub options: PgConnectOptions,
    pub cluster: Option<PrivateCluster>,
}

impl Database {
    /// Starts the private cluster under `<data-dir>/postgres`, or uses the configured server.
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        match &config.database {
            DatabaseConfig::External(options) => Ok(Self {
                options: (**options).clone(),
                cluster: None,
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
                })
            }
        }
    }

    /// Like [`Self::open`], but when the service is running on the data directory already,
    /// connects to its private cluster instead of starting one (for `custos verify`).
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
