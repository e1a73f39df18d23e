//! Backups with `DATABASE_URL`: the operator backs up that server with its own tools (its WAL
//! and base backups are out of Custos's reach), and Custos keeps, beside them, a scheduled
//! **tenant archive** of every organisation in the backup directory — the same lossless file
//! `custos tenant export` writes, sealed under the backup passphrase:
//!
//! - `archives/<organisation id>/<id>.custos-archive` and `<id>.json` (whose archive, when,
//!   how much, and its verification: the archive imported whole into a scratch database and
//!   dropped again);
//! - `erasures/`: the mirror of the erasure ledgers, as for the private cluster;
//! - `scratch/`: the names of the scratch databases a verification uses, so one that was
//!   killed half-way has its database dropped by the next.
//!
//! Unlike an export handed to a client, a backup archive hands no signing key over: it stays
//! with the operator, who holds the master key that opens the key in force anyway. Restoring
//! one puts the organisation back as the archive holds it ([`crate::infra::tenancy`]'s
//! `restore_tenant`), its erasures replayed from the ledger.

use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{write_durably, BackupStore};
use crate::infra::archive::format::{
    passphrase_chars, ArchiveKey, Kdf, KeyLock, MIN_PASSPHRASE_CHARS,
};
use crate::infra::tenancy::archives::derive_key;
use crate::infra::tenancy::catalog::Tenancy;
use crate::infra::tenancy::tenant::TenantRow;

/// The file name ending of a backup archive.
const ARCHIVE: &str = "custos-archive";

/// One backup archive, as its `<id>.json` describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ArchiveInfo {
    pub id: String,
    pub organization: Uuid,
    pub slug: String,
    pub region: String,
    /// When the archive's snapshot was taken: restoring it gives the organisation as it was
    /// then.
    pub taken_at: DateTime<Utc>,
    pub events: u64,
    pub tree_heads: u64,
    pub bytes: u64,
    pub custos_version: String,
    pub verification: Option<ArchiveVerification>,
}

/// What importing an archive into a scratch database found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ArchiveVerification {
    pub at: DateTime<Utc>,
    /// It imported whole: its manifest, every chain, the Merkle log against every signed tree
    /// head, and every sealed key under the backup passphrase.
    pub imported: bool,
    /// SHA-256 of the whole file as the import read it.
    pub sha256: Option<String>,
    /// What failed, in words (no personal data: the archive's own error messages).
    pub problems: Vec<String>,
}

impl ArchiveInfo {
    /// When this archive was last verified whole, if it was and passed.
    pub(crate) fn verified_at(&self) -> Option<DateTime<Utc>> {
        self.verification
            .as_ref()
            .filter(|v| v.imported && v.problems.is_empty())
            .map(|v| v.at)
    }
}

/// What one round did for one organisation.
pub(crate) struct Round {
    pub slug: String,
    pub result: anyhow::Result<ArchiveInfo>,
}

/// The backup archives of the organisations of a service on `DATABASE_URL`.
pub(crate) struct ArchiveBackups {
    dir: PathBuf,
    passphrase: Option<SecretString>,
    keep: usize,
}

impl ArchiveBackups {
    pub(crate) fn new(backups: &crate::config::BackupConfig) -> Self {
        Self {
            dir: backups.dir.clone(),
            passphrase: backups.passphrase.clone(),
            keep: backups.keep.max(1),
        }
    }

    /// The mirror of the erasure ledgers.
    pub(crate) fn erasures_dir(&self) -> PathBuf {
        self.dir.join("erasures")
    }

    fn organization_dir(&self, organization: Uuid) -> PathBuf {
        self.dir.join("archives").join(organization.to_string())
    }

    /// Deletes every archive of a purged organisation.
    pub(crate) fn remove_organization(&self, organization: Uuid) -> std::io::Result<()> {
        match fs::remove_dir_all(self.organization_dir(organization)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// The archive file of `info`.
    pub(crate) fn path(&self, info: &ArchiveInfo) -> PathBuf {
        self.organization_dir(info.organization)
            .join(format!("{}.{ARCHIVE}", info.id))
    }

    fn info_path(&self, info: &ArchiveInfo) -> PathBuf {
        self.organization_dir(info.organization)
            .join(format!("{}.json", info.id))
    }

    pub(crate) fn passphrase(&self) -> anyhow::Result<SecretString> {
        let passphrase = self.passphrase.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "no backup passphrase: set CUSTOS_BACKUP_PASSPHRASE or CUSTOS_BACKUP_PASSPHRASE_FILE"
            )
        })?;
        if passphrase_chars(&passphrase) < MIN_PASSPHRASE_CHARS {
            anyhow::bail!(
                "the backup passphrase must be at least {MIN_PASSPHRASE_CHARS} characters long"
            );
        }
        Ok(passphrase)
    }

    /// Waits for, then holds, the directory's lock (the one the private cluster's backups use):
    /// one round, verification or restore at a time.
    pub(crate) async fn lock(&self) -> anyhow::Result<fs::File> {
        self.prepare()?;
        let store = BackupStore::new(&self.dir);
        tokio::task::spawn_blocking(move || store.lock()).await?
    }

    fn prepare(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [
            self.dir.clone(),
            self.dir.join("archives"),
            self.dir.join("scratch"),
            self.erasures_dir(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("securing {}", dir.display()))?;
        }
        Ok(())
    }

    /// Every complete archive (of `organization`, or of all), newest first.
    pub(crate) fn list(&self, organization: Option<Uuid>) -> anyhow::Result<Vec<ArchiveInfo>> {
        let dirs: Vec<PathBuf> = match organization {
            Some(id) => vec![self.organization_dir(id)],
            None => match fs::read_dir(self.dir.join("archives")) {
                Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(err) => return Err(err).context("reading the backup directory"),
            },
        };
        let mut archives = Vec::new();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let info: ArchiveInfo = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not an archive description", path.display()))?;
                archives.push(info);
            }
        }
        archives.sort_by_key(|a| std::cmp::Reverse((a.taken_at, a.id.clone())));
        Ok(archives)
    }

    /// The archive `id`.
    pub(crate) fn get(&self, id: &str) -> anyhow::Result<ArchiveInfo> {
        self.list(None)?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| anyhow::anyhow!("no backup archive `{id}` in {}", self.dir.display()))
    }

    /// For each organisation in service, the time its newest verified archive was taken
    /// (`None`: it has none).
    pub(crate) async fn coverage(
        &self,
        tenancy: &Tenancy,
    ) -> anyhow::Result<Vec<(TenantRow, Option<DateTime<Utc>>)>> {
        let archives = self.list(None)?;
        Ok(tenancy
            .in_service_rows()
            .await?
            .into_iter()
            .map(|row| {
                let newest = archives
                    .iter()
                    .filter(|a| a.organization == row.id && a.verified_at().is_some())
                    .map(|a| a.taken_at)
                    .max();
                (row, newest)
            })
            .collect())
    }

    /// One round: an archive of every organisation in service (or of `only`), each verified,
    /// then the ones no longer needed removed. One organisation's failure does not stop the
    /// others.
    pub(crate) async fn run(
        &self,
        tenancy: &Tenancy,
        only: Option<&TenantRow>,
    ) -> anyhow::Result<Vec<Round>> {
        let passphrase = self.passphrase()?;
        let _lock = self.lock().await?;
        self.drop_scratch(tenancy).await;
        // One key for the round (Argon2id costs a second of a core); each archive binds its
        // secrets to its organisation.
        let kdf = Kdf::new();
        let key = derive_key(passphrase.clone(), kdf.clone()).await?;
        let rows = match only {
            Some(row) => vec![row.clone()],
            None => tenancy.in_service_rows().await?,
        };
        let mut rounds = Vec::new();
        for row in rows {
            let result = async {
                let info = self.take(tenancy, &row, &key, kdf.clone()).await?;
                self.verify_locked(tenancy, info, passphrase.clone()).await
            }
            .await;
            match &result {
                Ok(info) if info.verified_at().is_some() => {
                    tracing::info!(tenant.id = %row.id, archive = %info.id, events = info.events, "backup archive written and verified");
                }
                Ok(info) => {
                    tracing::error!(tenant.id = %row.id, archive = %info.id, problems = ?info.verification.as_ref().map(|v| &v.problems), "a backup archive did not verify");
                }
                Err(err) => {
                    tracing::error!(tenant.id = %row.id, error = %format!("{err:#}"), "a backup archive could not be written");
                }
            }
            if result.is_ok() {
                self.prune(row.id)?;
            }
            rounds.push(Round {
                slug: row.slug,
                result,
            });
        }
        Ok(rounds)
    }

    /// Writes the archive of `row` (a `.partial` file, synced and renamed when whole).
    async fn take(
        &self,
        tenancy: &Tenancy,
        row: &TenantRow,
        key: &ArchiveKey,
        kdf: Kdf,
    ) -> anyhow::Result<ArchiveInfo> {
        let dir = self.organization_dir(row.id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Leftovers of a round that was killed.
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let taken_at = Utc::now();
        let mut info = ArchiveInfo {
            id: format!("{}-{}", taken_at.format("%Y%m%dT%H%M%S%.3fZ"), row.slug),
            organization: row.id,
            slug: row.slug.clone(),
            region: row.region.clone(),
            taken_at,
            events: 0,
            tree_heads: 0,
            bytes: 0,
            custos_version: env!("CARGO_PKG_VERSION").to_owned(),
            verification: None,
        };
        let path = self.path(&info);
        let partial = path.with_extension(format!("{ARCHIVE}.partial"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let exported = tenancy
            .export_database(row, key, KeyLock::Passphrase(kdf), file)
            .await;
        let exported = match exported {
            Ok(exported) => exported,
            Err(err) => {
                let _ = fs::remove_file(&partial);
                return Err(err.into());
            }
        };
        let synced = tokio::task::spawn_blocking({
            let (partial, path, dir) = (partial.clone(), path.clone(), dir.clone());
            move || -> std::io::Result<()> {
                fs::File::open(&partial)?.sync_all()?;
                fs::rename(&partial, &path)?;
                fs::File::open(&dir)?.sync_all()
            }
        })
        .await?;
        if let Err(err) = synced {
            let _ = fs::remove_file(&partial);
            return Err(err).context("saving the archive");
        }
        info.events = exported.events;
        info.tree_heads = exported.tree_heads;
        info.bytes = exported.bytes;
        self.write_info(&info)?;
        Ok(info)
    }

    fn write_info(&self, info: &ArchiveInfo) -> anyhow::Result<()> {
        write_durably(&self.info_path(info), &serde_json::to_vec_pretty(info)?)
    }

    /// Verifies the archive `id` again: imported into a scratch database and dropped.
    pub(crate) async fn verify(&self, tenancy: &Tenancy, id: &str) -> anyhow::Result<ArchiveInfo> {
        let passphrase = self.passphrase()?;
        let _lock = self.lock().await?;
        self.drop_scratch(tenancy).await;
        let info = self.get(id)?;
        self.verify_locked(tenancy, info, passphrase).await
    }

    async fn verify_locked(
        &self,
        tenancy: &Tenancy,
        mut info: ArchiveInfo,
        passphrase: SecretString,
    ) -> anyhow::Result<ArchiveInfo> {
        let scratch = format!("custos_v_{}", Uuid::now_v7().simple());
        // Named before it exists: a verification killed half-way has it dropped by the next.
        let marker = self.dir.join("scratch").join(&scratch);
        write_durably(&marker, info.region.as_bytes())?;
        let witness = self
            .dir
            .join("scratch")
            .join(format!("{scratch}.witness.jsonl"));
        let imported = tenancy
            .trial_import(&self.path(&info), passphrase, &scratch, &witness)
            .await;
        let mut verification = ArchiveVerification {
            at: Utc::now(),
            imported: false,
            sha256: None,
            problems: Vec::new(),
        };
        match imported {
            Ok(imported) => {
                let sha256 = hex::encode(&imported.archive_sha256);
                let earlier = info.verification.as_ref().and_then(|v| v.sha256.as_ref());
                if let Some(earlier) = earlier.filter(|e| **e != sha256) {
                    verification.problems.push(format!(
                        "the file changed since it was first verified (SHA-256 {earlier}, now {sha256})"
                    ));
                }
                if imported.events as u64 != info.events {
                    verification.problems.push(format!(
                        "it holds {} events; {} were written",
                        imported.events, info.events
                    ));
                }
                verification.imported = true;
                verification.sha256 = Some(sha256);
                let _ = fs::remove_file(&marker);
            }
            Err(err) => {
                verification.problems.push(err.to_string());
                // Dropped by the import unless the server failed; the marker stays then.
                if tenancy
                    .drop_scratch_database(&info.region, &scratch)
                    .await
                    .is_ok()
                {
                    let _ = fs::remove_file(&marker);
                }
            }
        }
        info.verification = Some(verification);
        self.write_info(&info)?;
        Ok(info)
    }

    /// Drops the scratch databases that verifications killed half-way left.
    async fn drop_scratch(&self, tenancy: &Tenancy) {
        let Ok(entries) = fs::read_dir(self.dir.join("scratch")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("custos_v_") || name.contains('.') {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let region = fs::read_to_string(entry.path()).unwrap_or_default();
            match tenancy.drop_scratch_database(region.trim(), &name).await {
                Ok(()) => {
                    tracing::warn!(database = %name, "dropped the scratch database of an interrupted verification");
                    let _ = fs::remove_file(entry.path());
                }
                Err(err) => {
                    tracing::warn!(database = %name, error = %err, "the scratch database of an interrupted verification could not be dropped yet");
                }
            }
        }
    }

    /// Removes the archives of `organization` its newest `keep` verified ones no longer need:
    /// older archives, and unverified ones beyond the two newest.
    fn prune(&self, organization: Uuid) -> anyhow::Result<()> {
        let mut verified = 0;
        let mut unverified = 0;
        for info in self.list(Some(organization))? {
            let kept = if info.verified_at().is_some() {
                verified += 1;
                verified <= self.keep
            } else {
                unverified += 1;
                verified < self.keep && unverified <= 2
            };
            if !kept {
                // The description last: an archive without one is not listed.
                let path = self.path(&info);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err).context(format!("removing {}", path.display())),
                }
                fs::remove_file(self.info_path(&info))?;
                tracing::info!(tenant.id = %organization, archive = %info.id, "old backup archive removed");
            }
        }
        Ok(())
    }

    /// The archive to restore `organization` from: `id` if given, otherwise the newest
    /// verified one taken at or before `to` (or the newest verified one).
    pub(crate) fn choose(
        &self,
        organization: Uuid,
        id: Option<&str>,
        to: Option<DateTime<Utc>>,
    ) -> anyhow::Result<ArchiveInfo> {
        let archives = self.list(Some(organization))?;
        if let Some(id) = id {
            return archives
                .into_iter()
                .find(|a| a.id == id)
                .ok_or_else(|| anyhow::anyhow!("no backup archive `{id}` of that organisation"));
        }
        archives
            .into_iter()
            .filter(|a| a.verified_at().is_some())
            .find(|a| to.is_none_or(|to| a.taken_at <= to))
            .ok_or_else(|| match to {
                Some(to) => anyhow::anyhow!(
                    "no verified backup archive of that organisation was taken at or before {to}"
                ),
                None => anyhow::anyhow!("no verified backup archive of that organisation"),
            })
    }

    /// Every organisation that has archives here, by id, with the slug of its newest.
    pub(crate) fn organisations(&self) -> anyhow::Result<Vec<(Uuid, String)>> {
        let mut seen: Vec<(Uuid, String)> = Vec::new();
        for info in self.list(None)? {
            if !seen.iter().any(|(id, _)| *id == info.organization) {
                seen.push((info.organization, info.slug));
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(store: &ArchiveBackups, org: Uuid, minute: u32, verified: Option<bool>) -> String {
        let taken_at = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 2, 9, minute, 0).unwrap();
        let info = ArchiveInfo {
            id: format!("{}-{}", taken_at.format("%Y%m%dT%H%M%S%.3fZ"), org.simple()),
            organization: org,
            slug: "acme".into(),
            region: "eu".into(),
            taken_at,
            events: 1,
            tree_heads: 1,
            bytes: 1,
            custos_version: "test".into(),
            verification: verified.map(|ok| ArchiveVerification {
                at: taken_at,
                imported: ok,
                sha256: None,
                problems: if ok { vec![] } else { vec!["broken".into()] },
            }),
        };
        fs::create_dir_all(store.organization_dir(org)).unwrap();
        fs::write(store.path(&info), b"archive").unwrap();
        store.write_info(&info).unwrap();
        info.id
    }

    #[test]
    fn pruning_keeps_the_newest_verified_archives_and_at_most_two_unverified_newer_ones() {
        let dir = std::env::temp_dir().join(format!("custos-archives-{}", Uuid::now_v7()));
        let mut config = crate::config::BackupConfig::new(dir.clone());
        config.keep = 2;
        let store = ArchiveBackups::new(&config);
        let (org, other) = (Uuid::now_v7(), Uuid::now_v7());
        let oldest = archive(&store, org, 1, Some(true));
        let second = archive(&store, org, 2, Some(true));
        let failed = archive(&store, org, 3, Some(false));
        let third = archive(&store, org, 4, Some(true));
        let unverified = [
            archive(&store, org, 5, None),
            archive(&store, org, 6, Some(false)),
            archive(&store, org, 7, None),
        ];
        let elsewhere = archive(&store, other, 1, Some(true));

        store.prune(org).unwrap();
        let kept: Vec<String> = store
            .list(Some(org))
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(
            kept,
            vec![
                unverified[2].clone(),
                unverified[1].clone(),
                third.clone(),
                second.clone()
            ],
            "the two newest verified and the two newest unverified above them"
        );
        assert_eq!(
            fs::read_dir(store.organization_dir(org)).unwrap().count(),
            8,
            "each removed archive's file goes with its description"
        );
        for gone in [&oldest, &failed, &unverified[0]] {
            assert!(store.get(gone).is_err(), "{gone} is removed");
        }
        assert!(
            store.get(&elsewhere).is_ok(),
            "another organisation's are not touched"
        );

        // A restore chooses the newest verified archive taken at or before the moment.
        let at =
            |minute| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 2, 9, minute, 30).unwrap();
        assert_eq!(store.choose(org, None, None).unwrap().id, third);
        assert_eq!(store.choose(org, None, Some(at(3))).unwrap().id, second);
        assert!(store.choose(org, None, Some(at(0))).is_err());
        assert_eq!(
            store.choose(org, Some(&unverified[2]), None).unwrap().id,
            unverified[2]
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
