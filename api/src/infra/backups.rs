//! Backups. With `DATABASE_URL`, verified tenant archives of every organisation
//! ([`archives`]). Of the private cluster, with PostgreSQL's own tools; the backup directory
//! then holds:
//!
//! - `wal/`: the WAL archive — each completed WAL segment, gzipped by the cluster's
//!   `archive_command`, fsynced, never overwritten;
//! - `base/<id>/`: a base backup — `data/` (`pg_basebackup`, plain format, its WAL streamed in,
//!   a manifest with SHA-256 checksums), `secrets.json` (the master key and the cluster's
//!   superuser password, sealed under a key derived from the backup passphrase with Argon2id:
//!   never in clear beside the data), `checkpoints/` (the witness files, copied before the base
//!   backup began, so they never hold a tree head the backup lacks) and `backup.json` (times,
//!   first WAL file, size, verification);
//! - `erasures/`: a copy of every erasure ledger, rewritten after each erasure
//!   ([`crate::infra::erasure_ledger`]), so a restore after the data directory itself was lost
//!   still knows every erasure.
//!
//! A base backup in progress is `base/<id>.partial/`, removed by the next backup. Restoring is
//! in [`restore`]; verifying a backup restores it into a scratch directory ([`verify`]).

pub(crate) mod archives;
pub(crate) mod plan;
pub(crate) mod restore;
pub(crate) mod verify;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::infra::archive::format::{ArchiveKey, Kdf, MIN_PASSPHRASE_CHARS};
use crate::infra::cluster::Tools;

/// A file in a data directory that a restore is filling: nothing starts on it until the
/// restore has finished (and removed it); a restore into it again starts over.
pub(crate) const RESTORING: &str = "restore.incomplete";

/// One base backup, as `backup.json` describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackupInfo {
    pub id: String,
    pub started_at: DateTime<Utc>,
    /// When `pg_basebackup` had finished: a point-in-time restore from this backup reaches any
    /// moment after it.
    pub finished_at: DateTime<Utc>,
    /// The first WAL file the backup needs; the archive keeps it and every later one.
    pub start_wal: String,
    /// The cluster's database system identifier (`pg_controldata`), which its WAL carries.
    pub system_id: String,
    pub bytes: u64,
    pub custos_version: String,
    pub verification: Option<Verification>,
}

/// What checking a backup found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Verification {
    pub at: DateTime<Utc>,
    /// `pg_verifybackup` found every file, and the WAL, as the manifest lists them.
    pub manifest: bool,
    /// Its sealed keys opened, and the backup started in a scratch directory.
    pub restored: bool,
    /// Organisations whose chains, Merkle log and signed tree heads verified in it.
    pub organisations: usize,
    /// What failed, in words (check names, organisation slugs, paths: no personal data).
    pub problems: Vec<String>,
}

impl Verification {
    pub(crate) fn ok(&self) -> bool {
        self.manifest && self.restored && self.problems.is_empty()
    }
}

impl BackupInfo {
    /// When this backup was last verified whole, if it was and passed.
    pub(crate) fn verified_at(&self) -> Option<DateTime<Utc>> {
        self.verification.as_ref().filter(|v| v.ok()).map(|v| v.at)
    }
}

/// What a backup seals: enough, with the data, to bring the service back.
pub(crate) struct Secrets {
    pub master_key: SecretString,
    pub superuser_password: SecretString,
}

#[derive(Serialize, Deserialize)]
struct SealedSecrets {
    kdf: Kdf,
    #[serde(with = "hex::serde")]
    sealed: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct PlainSecrets {
    master_key: String,
    superuser_password: String,
}

/// The backup directory.
#[derive(Debug, Clone)]
pub(crate) struct BackupStore {
    dir: PathBuf,
}

impl BackupStore {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    fn base_dir(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// The directory of the base backup `id`.
    pub(crate) fn set_dir(&self, id: &str) -> PathBuf {
        self.base_dir().join(id)
    }

    /// The mirror of the erasure ledgers.
    pub(crate) fn erasures_dir(&self) -> PathBuf {
        self.dir.join("erasures")
    }

    /// Creates the layout (mode 0700), the WAL archive and base backups owned by the cluster's
    /// user, who writes them. The path goes into a shell command, so it is kept to characters
    /// that need no quoting there.
    pub(crate) fn prepare(&self, tools: &Tools) -> anyhow::Result<()> {
        let path = self.dir.display().to_string();
        if path
            .chars()
            .any(|c| matches!(c, '"' | '\'' | '$' | '`' | '\\' | '%' | '\n' | '\r'))
        {
            anyhow::bail!(
                "the backup directory {path} has a quote, `$`, backquote, backslash, `%` or line \
                 break in its path: choose a plainer one"
            );
        }
        for dir in [
            self.dir.clone(),
            self.wal_dir(),
            self.base_dir(),
            self.erasures_dir(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("securing {}", dir.display()))?;
        }
        for dir in [self.dir.clone(), self.wal_dir(), self.base_dir()] {
            tools.hand_over(&dir)?;
        }
        // A verification starts a copy of each backup under `scratch/`, listening on a socket
        // there.
        let socket = self.dir.join("scratch/postgres/run/.s.PGSQL.5432");
        if socket.as_os_str().len() > 107 {
            anyhow::bail!(
                "the backup directory's path is too long for a Unix socket under it ({}): choose a shorter one",
                socket.display()
            );
        }
        Ok(())
    }

    /// Copies the timeline history files of `pgdata/pg_wal` the archive lacks into it.
    pub(crate) fn archive_history(&self, tools: &Tools, pgdata: &Path) -> anyhow::Result<()> {
        for entry in fs::read_dir(pgdata.join("pg_wal"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let archived = self.wal_dir().join(format!("{name}.gz"));
            if !name.ends_with(".history") || archived.exists() {
                continue;
            }
            let output = Command::new("gzip")
                .arg("-c")
                .arg(entry.path())
                .output()
                .context("running gzip")?;
            anyhow::ensure!(output.status.success(), "gzip of {name} failed");
            write_durably(&archived, &output.stdout)?;
            tools.hand_over(&archived)?;
            tracing::info!(file = %name, "timeline history archived");
        }
        Ok(())
    }

    /// The system identifier of the cluster this directory backs up, once one has used it.
    pub(crate) fn owner(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("system-id"))
            .ok()
            .map(|id| id.trim().to_owned())
    }

    /// Ties the directory to the cluster in `pgdata` (an existing one): the first cluster to
    /// use it owns it; another is refused, so a fresh cluster started on a lost data directory
    /// can never archive into, back up into or prune the backups of the one that was lost.
    /// The cluster's system identifier.
    pub(crate) fn claim(&self, tools: &Tools, pgdata: &Path) -> anyhow::Result<String> {
        let id = controldata(tools, pgdata, "Database system identifier")?;
        match self.owner() {
            Some(owner) if owner == id => Ok(id),
            Some(owner) => anyhow::bail!(
                "{} holds the backups of another PostgreSQL cluster (system {owner}; this one is {id}): \
                 to bring that one back, run `custos backup restore`; to back this one up, use another backup directory",
                self.dir.display()
            ),
            None => {
                write_durably(&self.dir.join("system-id"), id.as_bytes())?;
                Ok(id)
            }
        }
    }

    /// The settings that make the cluster archive its WAL here: every completed segment, and
    /// at least one a minute while anything is written (the most a restore can lose when the
    /// server is lost with its disk).
    pub(crate) fn archive_settings(&self) -> Vec<(&'static str, String)> {
        let wal = self.wal_dir().display().to_string();
        let command = format!(
            "f=\"{wal}/%f.gz\"; if test -f \"$f\"; then gzip -dc \"$f\" | cmp -s - \"%p\"; \
             else gzip -1c \"%p\" > \"$f.part\" && sync \"$f.part\" && mv \"$f.part\" \"$f\" \
             && sync \"{wal}\"; fi"
        );
        vec![
            ("archive_mode", "on".to_owned()),
            ("archive_command", quote(&command)),
            ("archive_timeout", "60".to_owned()),
        ]
    }

    /// The command that fetches an archived WAL file during recovery.
    pub(crate) fn restore_command(&self) -> String {
        let wal = self.wal_dir().display().to_string();
        quote(&format!(
            "test -f \"{wal}/%f.gz\" && gzip -dc \"{wal}/%f.gz\" > \"%p\""
        ))
    }

    /// Every complete base backup, newest first.
    pub(crate) fn list(&self) -> anyhow::Result<Vec<BackupInfo>> {
        let mut backups = Vec::new();
        let entries = match fs::read_dir(self.base_dir()) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(backups),
            Err(err) => return Err(err).context("reading the backup directory"),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") || name.ends_with(".removing") {
                continue;
            }
            let path = entry.path().join("backup.json");
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let info: BackupInfo = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a backup description", path.display()))?;
            backups.push(info);
        }
        backups.sort_by_key(|b| std::cmp::Reverse(b.finished_at));
        Ok(backups)
    }

    /// The backup `id`.
    pub(crate) fn get(&self, id: &str) -> anyhow::Result<BackupInfo> {
        self.list()?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| anyhow::anyhow!("no backup `{id}` in {}", self.dir.display()))
    }

    /// Waits for, then holds, the directory's lock: one backup, verification or pruning at a
    /// time, across processes. Blocking.
    pub(crate) fn lock(&self) -> anyhow::Result<File> {
        let path = self.dir.join("backup.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    /// Rewrites a backup's description (after verifying it).
    pub(crate) fn write_info(&self, info: &BackupInfo) -> anyhow::Result<()> {
        let path = self.set_dir(&info.id).join("backup.json");
        write_durably(&path, &serde_json::to_vec_pretty(info)?)
    }

    /// Takes a base backup of the private cluster under `data_dir` (running), with its sealed
    /// secrets and the witness files. Blocking; hold [`BackupStore::lock`].
    pub(crate) fn take(
        &self,
        tools: &Tools,
        data_dir: &Path,
        secrets: &Secrets,
        passphrase: &SecretString,
    ) -> anyhow::Result<BackupInfo> {
        if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
            anyhow::bail!(
                "the backup passphrase must be at least {MIN_PASSPHRASE_CHARS} characters long"
            );
        }
        self.prepare(tools)?;
        let pgdata = data_dir.join("postgres").join("data");
        let system_id = self.claim(tools, &pgdata)?;
        self.remove_partials()?;
        let started_at = Utc::now();
        let id = started_at.format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let partial = self.base_dir().join(format!("{id}.partial"));
        fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o700))?;
        // Witness files and ledgers first: none then holds a tree head the data lacks.
        for what in ["checkpoints", "erasures"] {
            copy_files(&data_dir.join(what), &partial.join(what))?;
        }
        write_durably(
            &partial.join("secrets.json"),
            &seal_secrets(&id, secrets, passphrase)?,
        )?;
        tools.hand_over(&partial)?;
        let cluster = data_dir.join("postgres").canonicalize()?;
        // The password in a file only the cluster's user reads (removed with the partial
        // set if this is killed), not in an environment others may read.
        let passfile = partial.join(".pgpass");
        write_durably(
            &passfile,
            pgpass_line(secrets.superuser_password.expose_secret()).as_bytes(),
        )?;
        tools.hand_over(&passfile)?;
        let mut command = tools.command_tied("pg_basebackup", &partial);
        command
            .arg("--pgdata")
            .arg(partial.join("data"))
            .args(["--format=plain", "--wal-method=stream", "--checkpoint=fast"])
            .args(["--manifest-checksums=SHA256", "--no-password"])
            .arg(format!("--label=custos {id}"))
            .arg("--host")
            .arg(cluster.join("run"))
            .args([
                "--port",
                "5432",
                "--username",
                crate::infra::cluster::SUPERUSER,
            ])
            .env("PGPASSFILE", &passfile);
        let taken = tools.run(command);
        fs::remove_file(&passfile)?;
        taken?;
        let label = fs::read_to_string(partial.join("data").join("backup_label"))
            .context("the base backup has no backup_label")?;
        let start_wal = start_wal(&label)
            .ok_or_else(|| anyhow::anyhow!("the backup_label names no start WAL file"))?;
        let info = BackupInfo {
            id: id.clone(),
            started_at,
            finished_at: Utc::now(),
            start_wal,
            system_id,
            bytes: size(&partial),
            custos_version: env!("CARGO_PKG_VERSION").to_owned(),
            verification: None,
        };
        write_durably(
            &partial.join("backup.json"),
            &serde_json::to_vec_pretty(&info)?,
        )?;
        let done = self.set_dir(&id);
        fs::rename(&partial, &done)?;
        File::open(self.base_dir())?.sync_all()?;
        Ok(info)
    }

    /// Removes what an interrupted backup left.
    fn remove_partials(&self) -> anyhow::Result<()> {
        for entry in fs::read_dir(self.base_dir())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") || name.ends_with(".removing") {
                tracing::warn!(backup = %name, "removing an interrupted base backup");
                fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// Opens the secrets the backup `id` sealed; a wrong passphrase is a clear error.
    pub(crate) fn open_secrets(
        &self,
        id: &str,
        passphrase: &SecretString,
    ) -> anyhow::Result<Secrets> {
        let path = self.set_dir(id).join("secrets.json");
        let sealed: SealedSecrets = serde_json::from_slice(
            &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is damaged", path.display()))?;
        let key = ArchiveKey::derive(passphrase, &sealed.kdf)?;
        let plain = key
            .open(&sealed.sealed, &binding(id))
            .ok_or_else(|| anyhow::anyhow!("the backup passphrase does not open backup {id}"))?;
        let plain: PlainSecrets = serde_json::from_slice(&plain)?;
        Ok(Secrets {
            master_key: SecretString::from(plain.master_key),
            superuser_password: SecretString::from(plain.superuser_password),
        })
    }

    /// `pg_verifybackup` on the backup `id`: every file and the WAL against the manifest.
    pub(crate) fn check_manifest(&self, tools: &Tools, id: &str) -> Result<(), String> {
        let dir = self.set_dir(id);
        let mut command = tools.command("pg_verifybackup", &dir);
        command.arg("--quiet").arg(dir.join("data"));
        tools
            .run(command)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    /// Keeps the newest `keep` verified backups (and the two newest unverified ones newer than
    /// the oldest of those), removes the rest, and the archived WAL none of the kept ones
    /// needs. Nothing is removed until a backup has verified, except unverified backups beyond
    /// the two newest (a verification failing again and again must not fill the disk).
    /// Blocking; hold [`BackupStore::lock`]. The removed ids.
    pub(crate) fn prune(&self, tools: &Tools, keep: usize) -> anyhow::Result<Vec<String>> {
        let backups = self.list()?;
        let verified: Vec<&BackupInfo> = backups
            .iter()
            .filter(|b| b.verified_at().is_some())
            .take(keep.max(1))
            .collect();
        let unverified: Vec<&BackupInfo> = backups
            .iter()
            .filter(|b| b.verified_at().is_none())
            .take(2)
            .collect();
        let oldest_verified = verified.last().map(|b| b.finished_at);
        let kept = |b: &BackupInfo| {
            verified.iter().any(|k| k.id == b.id)
                || (unverified.iter().any(|k| k.id == b.id)
                    && oldest_verified.is_none_or(|oldest| b.finished_at > oldest))
        };
        let mut removed = Vec::new();
        for backup in &backups {
            if !kept(backup) {
                self.remove(&backup.id)?;
                removed.push(backup.id.clone());
            }
        }
        // The WAL before the first segment any kept backup starts from (compared without the
        // timeline, as pg_archivecleanup does).
        let first = backups
            .iter()
            .filter(|b| kept(b))
            .map(|b| b.start_wal.as_str())
            .min_by_key(|wal| wal.get(8..).unwrap_or_default().to_owned());
        if let (Some(first), Some(_)) = (first, oldest_verified) {
            let mut command = tools.command("pg_archivecleanup", &self.dir);
            command.args(["-x", ".gz"]).arg(self.wal_dir()).arg(first);
            tools.run(command)?;
        }
        Ok(removed)
    }

    /// Removes a base backup: renamed first, so that an interrupted removal never leaves one
    /// that still looks whole.
    fn remove(&self, id: &str) -> anyhow::Result<()> {
        let removing = self.base_dir().join(format!("{id}.removing"));
        fs::rename(self.set_dir(id), &removing)?;
        File::open(self.base_dir())?.sync_all()?;
        fs::remove_dir_all(&removing)?;
        Ok(())
    }

    /// The first WAL segment missing from the archive between `from` and the newest archived
    /// segment of its timeline: past it, recovery stops, and a restore would silently end
    /// early.
    pub(crate) fn wal_gap(&self, from: &str) -> Option<String> {
        let timeline = from.get(..8)?;
        let mut have: Vec<u64> = fs::read_dir(self.wal_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let segment = name.strip_suffix(".gz")?;
                (segment.len() == 24 && segment.starts_with(timeline))
                    .then(|| segment_number(segment))
                    .flatten()
            })
            .collect();
        have.sort_unstable();
        let start = segment_number(from)?;
        (start..)
            .zip(have.into_iter().filter(|n| *n >= start))
            .find(|(expected, number)| number != expected)
            .map(|(expected, _)| segment_name(timeline, expected))
    }

    /// Bytes in the WAL archive and its oldest file's name.
    pub(crate) fn wal_summary(&self) -> (u64, Option<String>) {
        let mut names: Vec<String> = fs::read_dir(self.wal_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".gz") && !n.contains(".history"))
            .collect();
        names.sort();
        (
            size(&self.wal_dir()),
            names.first().map(|n| n.trim_end_matches(".gz").to_owned()),
        )
    }
}

/// A WAL segment's number (16 MiB segments: 256 per log id).
fn segment_number(name: &str) -> Option<u64> {
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    (seg < 0x100).then_some(log * 0x100 + seg)
}

fn segment_name(timeline: &str, number: u64) -> String {
    format!("{timeline}{:08X}{:08X}", number / 0x100, number % 0x100)
}

/// The value `pg_controldata` gives for `field` (the text before the colon) of the cluster in
/// `pgdata`, stopped or running.
pub(crate) fn controldata(tools: &Tools, pgdata: &Path, field: &str) -> anyhow::Result<String> {
    let mut command = tools.command("pg_controldata", pgdata.parent().unwrap_or(pgdata));
    command.arg("-D").arg(pgdata);
    tools
        .run(command)?
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("pg_controldata names no `{field}`"))
}

/// A value for `postgresql.conf`, single-quoted.
pub(crate) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn binding(id: &str) -> String {
    format!("custos-backup/{id}/secrets")
}

fn seal_secrets(id: &str, secrets: &Secrets, passphrase: &SecretString) -> anyhow::Result<Vec<u8>> {
    let kdf = Kdf::new();
    let key = ArchiveKey::derive(passphrase, &kdf)?;
    let plain = serde_json::to_vec(&PlainSecrets {
        master_key: secrets.master_key.expose_secret().to_owned(),
        superuser_password: secrets.superuser_password.expose_secret().to_owned(),
    })?;
    let sealed = key.seal(&plain, &binding(id));
    Ok(serde_json::to_vec_pretty(&SealedSecrets { kdf, sealed })?)
}

/// The WAL file on the `START WAL LOCATION` line of a backup label.
fn start_wal(label: &str) -> Option<String> {
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')').trim();
    (file.len() == 24 && file.chars().all(|c| c.is_ascii_hexdigit())).then(|| file.to_owned())
}

/// Writes `bytes` to `path` whole (a temporary file, fsynced, renamed), mode 0600.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let partial = path.with_extension("partial");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&partial, path)?;
    Ok(())
}

/// A `.pgpass` line for any host, port, database and user, with `password`.
fn pgpass_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

/// Copies the plain files of `from` (if it exists) into a new directory `to`.
pub(crate) fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Copies a whole directory tree with `cp -a` (modes and owners kept, as a data directory
/// needs).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let output = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("running cp")?;
    if !output.status.success() {
        anyhow::bail!(
            "copying {} to {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Bytes under `path`.
fn size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| size(&entry.path()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pgpass_line_escapes_colons_and_backslashes() {
        assert_eq!(pgpass_line("plain"), "*:*:*:*:plain\n");
        assert_eq!(pgpass_line(r"a:b\c"), "*:*:*:*:a\\:b\\\\c\n");
    }

    #[test]
    fn the_start_wal_file_is_read_from_the_backup_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n";
        assert_eq!(
            start_wal(label).as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(
            start_wal("START WAL LOCATION: 0/2 (file ../../etc)\n"),
            None
        );
        assert_eq!(start_wal("nothing"), None);
    }

    #[test]
    fn a_missing_wal_segment_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackupStore::new(dir.path());
        fs::create_dir_all(store.wal_dir()).unwrap();
        for name in [
            "0000000100000000000000FE",
            "0000000100000000000000FF",
            "000000010000000100000000",
            "000000010000000100000002",
            "000000020000000100000005",
        ] {
            fs::write(store.wal_dir().join(format!("{name}.gz")), "").unwrap();
        }
        assert_eq!(
            store.wal_gap("0000000100000000000000FE").as_deref(),
            Some("000000010000000100000001"),
            "across a log id, on the backup's timeline only"
        );
        assert_eq!(store.wal_gap("000000010000000100000002"), None);
        assert_eq!(
            segment_name(
                "00000001",
                segment_number("0000000100000003000000FF").unwrap() + 1
            ),
            "000000010000000400000000"
        );
    }

    #[test]
    fn settings_are_quoted_for_postgresql_conf() {
        assert_eq!(quote("a 'b' c"), "'a ''b'' c'");
        let store = BackupStore::new(Path::new("/srv/backups"));
        let settings = store.archive_settings();
        assert!(settings.contains(&("archive_mode", "on".to_owned())));
        let command = &settings
            .iter()
            .find(|(name, _)| *name == "archive_command")
            .unwrap()
            .1;
        assert!(command.contains("/srv/backups/wal/%f.gz"));
        assert!(command.starts_with('\'') && command.ends_with('\''));
    }

    #[test]
    fn secrets_open_with_their_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackupStore::new(dir.path());
        let id = "20261202T000000.000Z";
        fs::create_dir_all(store.set_dir(id)).unwrap();
        let secrets = Secrets {
            master_key: SecretString::from("ab".repeat(32)),
            superuser_password: SecretString::from("pw".to_owned()),
        };
        let passphrase = SecretString::from("a long backup passphrase".to_owned());
        let sealed = seal_secrets(id, &secrets, &passphrase).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains(&"ab".repeat(32)));
        write_durably(&store.set_dir(id).join("secrets.json"), &sealed).unwrap();
        let opened = store.open_secrets(id, &passphrase).unwrap();
        assert_eq!(opened.master_key.expose_secret(), &"ab".repeat(32));
        let wrong = store
            .open_secrets(id, &SecretString::from("another passphrase".to_owned()))
            .err()
            .unwrap();
        assert!(wrong.to_string().contains("does not open"));
    }
}
