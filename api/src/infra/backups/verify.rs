//! Verified backups: each base backup is checked against its manifest (`pg_verifybackup`), its
//! sealed keys opened, the backup started in a scratch directory and every organisation in it
//! verified (hash chains, Merkle log, signed tree heads against the witness files the backup
//! carries). [`Backups::run`] is one scheduled round: take, verify, prune.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;

use super::{
    controldata, copy_files, copy_tree, write_durably, BackupInfo, BackupStore, Secrets,
    Verification,
};
use crate::config::Region;
use crate::infra::cluster::{stored_password, PrivateCluster, Tools};
use crate::infra::keys::MasterKey;
use crate::infra::tenancy::verification::{verify_organisations, Scope};

/// Backups of one data directory's private cluster.
pub(crate) struct Backups {
    pub store: BackupStore,
    tools: Tools,
    data_dir: PathBuf,
    passphrase: Option<SecretString>,
    keep: usize,
    catalog: String,
    regions: HashMap<Region, PgConnectOptions>,
    /// The service's master key, sealed into each backup taken (not needed to verify one,
    /// which carries its own).
    master: Option<std::sync::Arc<MasterKey>>,
}

impl Backups {
    pub(crate) fn new(
        config: &crate::config::Config,
        backups: &crate::config::BackupConfig,
        master: Option<std::sync::Arc<MasterKey>>,
    ) -> anyhow::Result<Self> {
        let store = BackupStore::new(&backups.dir);
        Ok(Self {
            store,
            tools: Tools::find()?,
            data_dir: config.data_dir.clone(),
            passphrase: backups.passphrase.clone(),
            keep: backups.keep,
            catalog: config.catalog_database.clone(),
            regions: config.regions.clone(),
            master,
        })
    }

    /// When the newest backup that verified finished (read from the backup directory, so a
    /// backup taken or checked by `custos backup` counts too).
    pub(crate) fn last_verified(&self) -> Option<DateTime<Utc>> {
        self.store
            .list()
            .ok()?
            .iter()
            .find(|b| b.verified_at().is_some())
            .map(|b| b.finished_at)
    }

    fn passphrase(&self) -> anyhow::Result<&SecretString> {
        self.passphrase.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "no backup passphrase: set CUSTOS_BACKUP_PASSPHRASE or CUSTOS_BACKUP_PASSPHRASE_FILE"
            )
        })
    }

    /// Takes a base backup, verifies it, and removes what the newest verified ones no longer
    /// need: one scheduled round, or `custos backup now`.
    pub(crate) async fn run(&self) -> anyhow::Result<BackupInfo> {
        let passphrase = self.passphrase()?.clone();
        let master = self
            .master
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("taking a backup needs the master key"))?;
        let store = self.store.clone();
        let tools = self.tools.clone();
        let data_dir = self.data_dir.clone();
        let secrets = Secrets {
            master_key: master.to_hex(),
            superuser_password: stored_password(&data_dir.join("postgres"))?,
        };
        let (lock, info) = tokio::task::spawn_blocking(move || {
            let lock = store.lock()?;
            let info = store.take(&tools, &data_dir, &secrets, &passphrase)?;
            Ok::<_, anyhow::Error>((lock, info))
        })
        .await??;
        tracing::info!(backup = %info.id, bytes = info.bytes, "base backup taken");
        self.verify_locked(&info.id).await?;
        drop(lock);
        self.prune().await?;
        self.store.get(&info.id)
    }

    /// Verifies the backup `id` again and prunes if it now verifies: a failed round's retry,
    /// which takes no new base backup.
    pub(crate) async fn retry(&self, id: &str) -> anyhow::Result<BackupInfo> {
        self.verify(id).await?;
        self.prune().await?;
        self.store.get(id)
    }

    async fn prune(&self) -> anyhow::Result<()> {
        let (store, tools, keep) = (self.store.clone(), self.tools.clone(), self.keep);
        let removed = tokio::task::spawn_blocking(move || {
            let _lock = store.lock()?;
            store.prune(&tools, keep)
        })
        .await??;
        if !removed.is_empty() {
            tracing::info!(removed = removed.len(), "old base backups removed");
        }
        Ok(())
    }

    /// The private cluster's current timeline (`pg_controldata`), as WAL file names write it.
    pub(crate) fn current_timeline(&self) -> Option<String> {
        let pgdata = self.data_dir.join("postgres").join("data");
        let timeline = controldata(&self.tools, &pgdata, "Latest checkpoint's TimeLineID")
            .ok()?
            .parse::<u32>()
            .ok()?;
        Some(format!("{timeline:08X}"))
    }

    /// Verifies the backup `id` whole, records the result in its description, and returns it.
    pub(crate) async fn verify(&self, id: &str) -> anyhow::Result<Verification> {
        let store = self.store.clone();
        let lock = tokio::task::spawn_blocking(move || store.lock()).await??;
        let verification = self.verify_locked(id).await;
        drop(lock);
        verification
    }

    async fn verify_locked(&self, id: &str) -> anyhow::Result<Verification> {
        let mut info = self.store.get(id)?;
        let mut verification = Verification {
            at: Utc::now(),
            manifest: false,
            restored: false,
            organisations: 0,
            problems: Vec::new(),
        };
        let (store, tools, id_owned) = (self.store.clone(), self.tools.clone(), id.to_owned());
        match tokio::task::spawn_blocking(move || store.check_manifest(&tools, &id_owned)).await? {
            Ok(()) => verification.manifest = true,
            Err(problem) => verification
                .problems
                .push(format!("pg_verifybackup: {problem}")),
        }
        match self.restore_and_verify(id, &mut verification).await {
            Ok(()) => {}
            Err(err) => verification.problems.push(format!("restoring it: {err:#}")),
        }
        let previous = self
            .store
            .list()?
            .into_iter()
            .filter(|b| b.id != info.id && b.finished_at < info.finished_at)
            .find_map(|b| b.verification.filter(|v| v.ok()));
        if verification.organisations == 0 && previous.is_some_and(|p| p.organisations > 0) {
            verification
                .problems
                .push("no organisation in it, though the backup before had some".to_owned());
        }
        info.verification = Some(verification.clone());
        self.store.write_info(&info)?;
        if verification.ok() {
            tracing::info!(backup = %id, organisations = verification.organisations, "backup verified");
        } else {
            tracing::error!(backup = %id, problems = ?verification.problems, "a backup did not verify");
        }
        Ok(verification)
    }

    /// Opens the backup's secrets, starts a copy of it in `<backup-dir>/scratch`, verifies
    /// every organisation in it, and removes the copy.
    async fn restore_and_verify(
        &self,
        id: &str,
        verification: &mut Verification,
    ) -> anyhow::Result<()> {
        let passphrase = self.passphrase()?.clone();
        let (store, id_owned) = (self.store.clone(), id.to_owned());
        let secrets =
            tokio::task::spawn_blocking(move || store.open_secrets(&id_owned, &passphrase))
                .await??;
        let master =
            MasterKey::from_hex(secrecy::ExposeSecret::expose_secret(&secrets.master_key))?;
        let scratch = self.store.dir().join("scratch");
        let set = self.store.set_dir(id);
        let cluster = {
            let scratch = scratch.clone();
            tokio::task::spawn_blocking(move || {
                if scratch.exists() {
                    std::fs::remove_dir_all(&scratch)?;
                }
                let postgres = scratch.join("postgres");
                std::fs::create_dir_all(&postgres)?;
                copy_tree(&set.join("data"), &postgres.join("data"))?;
                write_durably(
                    &postgres.join("superuser.password"),
                    secrecy::ExposeSecret::expose_secret(&secrets.superuser_password).as_bytes(),
                )?;
                copy_files(&set.join("checkpoints"), &scratch.join("checkpoints"))?;
                let settings = [
                    ("archive_mode", "off".to_owned()),
                    ("max_connections", "20".to_owned()),
                ];
                let cluster = PrivateCluster::start_waiting(&postgres, &settings, 60 * 60)?;
                // Not left in clear beside the backups (the cluster keeps it in memory).
                std::fs::remove_file(postgres.join("superuser.password"))?;
                Ok::<_, anyhow::Error>(cluster)
            })
            .await??
        };
        verification.restored = true;
        let options = cluster.connect_options();
        let scope = Scope {
            server: &options,
            catalog: &self.catalog,
            regions: &self.regions,
            default_server_only: true,
            master: &master,
            data_dir: &scratch,
        };
        let result = verify_organisations(&scope, None, None).await;
        tokio::task::spawn_blocking(move || {
            let stopped = cluster.stop();
            let removed = std::fs::remove_dir_all(&scratch);
            stopped?;
            removed?;
            Ok::<_, anyhow::Error>(())
        })
        .await??;
        for organisation in result? {
            if organisation.report.ok() {
                verification.organisations += 1;
            } else {
                verification.problems.push(format!(
                    "organisation {} does not verify in the backup ({} broken stream(s); {})",
                    organisation.row.slug,
                    organisation.report.broken.len(),
                    organisation.report.checkpoint_problems.join("; ")
                ));
            }
        }
        Ok(())
    }
}
