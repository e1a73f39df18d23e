//! The erasure ledger: every erasure, also written outside the database — one append-only file
//! per organisation under the data directory (`erasures/<organisation id>.jsonl`), beside the
//! witness files and, like them, outside database backups. Each line is chained to the one
//! before by an HMAC under a key derived from the master key, so lines cannot be forged or
//! altered without it.
//!
//! A database restored from a backup, or an organisation brought back from an archive, may
//! hold keys erased since: replaying the ledger destroys them again (and the read models are
//! rebuilt without them) before the organisation is served, so a restore to a moment before an
//! erasure does not bring the person back.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::infra::keys::MasterKey;

/// One erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Erased {
    pub subject: Uuid,
    pub erased_at: DateTime<Utc>,
    /// HMAC-SHA-256 over the previous line's MAC, the organisation, the subject and the time.
    #[serde(with = "hex::serde")]
    pub mac: Vec<u8>,
}

/// What a ledger holds: the erasures whose chain holds, and the first line where it does not.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub erased: Vec<Erased>,
    pub broken_at: Option<usize>,
}

/// The erasure ledgers of a data directory.
pub(crate) struct ErasureLedgers {
    dir: PathBuf,
    /// A copy of every ledger in the backup directory, rewritten after each erasure: a restore
    /// after the data directory itself was lost still knows every erasure.
    mirror: Option<PathBuf>,
    master: std::sync::Arc<MasterKey>,
}

/// Held while a ledger is appended to: one writer per process.
static APPENDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Locks the ledgers of `dir` across processes (the service and a command run beside it, such
/// as `custos retention run`) while one is read and appended to — each entry's MAC chains to
/// the last one — until the returned file is closed.
fn lock_ledgers(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".append.lock"))?;
    file.lock()?;
    Ok(file)
}

impl ErasureLedgers {
    /// The ledgers under `data_dir`, copied into `mirror` (the backup directory's) when given.
    pub(crate) fn new(
        data_dir: &Path,
        mirror: Option<PathBuf>,
        master: std::sync::Arc<MasterKey>,
    ) -> Self {
        Self {
            dir: data_dir.join("erasures"),
            mirror,
            master,
        }
    }

    fn path(&self, tenant: Uuid) -> PathBuf {
        self.dir.join(format!("{tenant}.jsonl"))
    }

    fn mac(&self, tenant: Uuid, previous: &[u8], subject: Uuid, at: DateTime<Utc>) -> Vec<u8> {
        let key = self
            .master
            .derive(&format!("custos/erasure-ledger/{tenant}"));
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(previous);
        mac.update(tenant.as_bytes());
        mac.update(subject.as_bytes());
        mac.update(&at.timestamp_micros().to_be_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Reads a tenant's ledger (empty if it has none), checking the chain.
    pub(crate) fn read(&self, tenant: Uuid) -> std::io::Result<Ledger> {
        let file = match std::fs::File::open(self.path(tenant)) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
            Err(err) => return Err(err),
        };
        let mut ledger = Ledger::default();
        let mut previous: Vec<u8> = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            let entry = serde_json::from_str::<Erased>(&line)
                .ok()
                .filter(|e| e.mac == self.mac(tenant, &previous, e.subject, e.erased_at));
            match entry {
                Some(entry) => {
                    previous = entry.mac.clone();
                    ledger.erased.push(entry);
                }
                None => {
                    ledger.broken_at = Some(n + 1);
                    break;
                }
            }
        }
        Ok(ledger)
    }

    /// Appends an erasure, durably (fsync) — before the key is destroyed, so no erasure that
    /// happened is missing from the ledger.
    pub(crate) fn append(&self, tenant: Uuid, subject: Uuid) -> std::io::Result<()> {
        let _appending = APPENDING.lock().unwrap_or_else(|e| e.into_inner());
        let _other_processes = lock_ledgers(&self.dir)?;
        let ledger = self.read(tenant)?;
        if let Some(line) = ledger.broken_at {
            return Err(std::io::Error::other(format!(
                "the erasure ledger of {tenant} does not verify from line {line}"
            )));
        }
        if ledger.erased.iter().any(|e| e.subject == subject) {
            self.mirror(tenant);
            return Ok(());
        }
        let previous = ledger
            .erased
            .last()
            .map(|e| e.mac.clone())
            .unwrap_or_default();
        // Microseconds, as the ledger's MAC and PostgreSQL keep them.
        let at = DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
            .expect("now is a valid time");
        let entry = Erased {
            subject,
            erased_at: at,
            mac: self.mac(tenant, &previous, subject, at),
        };
        std::fs::create_dir_all(&self.dir)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(tenant))?;
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_all()?;
        self.mirror(tenant);
        Ok(())
    }

    /// Copies the tenant's ledger into the backup directory. A failure there (a backup mount
    /// gone) does not stop the erasure, which the ledger here holds: it is logged, and the copy
    /// made again by the next erasure or start ([`ErasureLedgers::sync_mirror`]).
    fn mirror(&self, tenant: Uuid) {
        if let Some(mirror) = &self.mirror {
            if let Err(err) =
                copy_durably(&self.path(tenant), &mirror.join(format!("{tenant}.jsonl")))
            {
                tracing::error!(tenant.id = %tenant, error = %err, "the erasure ledger could not be copied into the backup directory");
            }
        }
    }

    /// Brings every copy in the backup directory up to its ledger here (where the copy is
    /// missing or shorter).
    pub(crate) fn sync_mirror(&self) -> std::io::Result<()> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let _appending = APPENDING.lock().unwrap_or_else(|e| e.into_inner());
        let _other_processes = lock_ledgers(&self.dir)?;
        copy_longer(&self.dir, mirror)
    }
}

/// Copies each ledger of the directory `from` over its copy in `to` where that is missing or
/// shorter (ledgers only grow: the longer one is the newer).
pub(crate) fn copy_longer(from: &Path, to: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let copy = to.join(&name);
        let shorter = std::fs::metadata(&copy).map_or(0, |m| m.len())
            < entry.metadata().map_or(0, |m| m.len());
        if shorter {
            copy_durably(&entry.path(), &copy)?;
        }
    }
    Ok(())
}

/// Copies the ledger `from` over `to` (a temporary file, fsynced, renamed into place): the
/// copy is whole, old or new, whenever it is read.
pub(crate) fn copy_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A name of its own: two processes (the service and a command) may copy at once.
    let partial = to.with_extension(format!(
        "jsonl.{}.{}.partial",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::copy(from, &partial)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, to)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_chains_its_lines_and_notices_an_altered_one() {
        let dir = std::env::temp_dir().join(format!("custos-ledger-{}", Uuid::now_v7()));
        let master = std::sync::Arc::new(MasterKey::from_hex(&"ab".repeat(32)).unwrap());
        let mirror = dir.join("backups").join("erasures");
        let ledgers = ErasureLedgers::new(&dir, Some(mirror.clone()), master.clone());
        let tenant = Uuid::now_v7();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        ledgers.append(tenant, a).unwrap();
        ledgers.append(tenant, b).unwrap();
        ledgers.append(tenant, a).unwrap();
        let copy = mirror.join(format!("{tenant}.jsonl"));
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(ledgers.path(tenant)).unwrap(),
            "the backup directory holds the whole ledger"
        );
        let read = ledgers.read(tenant).unwrap();
        assert_eq!(read.broken_at, None);
        assert_eq!(
            read.erased.iter().map(|e| e.subject).collect::<Vec<_>>(),
            vec![a, b]
        );
        // Another master key cannot read it as valid; an edited line breaks the chain there.
        let other = ErasureLedgers::new(
            &dir,
            None,
            std::sync::Arc::new(MasterKey::from_hex(&"cd".repeat(32)).unwrap()),
        );
        assert_eq!(other.read(tenant).unwrap().broken_at, Some(1));
        let path = ledgers.path(tenant);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replacen(&a.to_string(), &Uuid::now_v7().to_string(), 1),
        )
        .unwrap();
        assert_eq!(ledgers.read(tenant).unwrap().broken_at, Some(1));
        assert!(ledgers.append(tenant, Uuid::now_v7()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
