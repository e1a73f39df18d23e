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
                let cluster = tokio::task::spawn_blocking(move || {
                    if let Some(store) = store {
                        store.prepare(&Tools::find()?)?;
                    }
                    Ok::<_, anyhow::Error>(PrivateCluster::start(&dir, &settings)?)
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
