//! Which backups a service takes: the private cluster's, or organisation archives.

use std::path::PathBuf;

use super::archives::ArchiveBackups;
use super::verify::Backups;

/// How a service's data is backed up into its backup directory.
pub(crate) enum BackupPlan {
    /// The private cluster: its WAL archive and verified base backups.
    Cluster(Backups),
    /// `DATABASE_URL`: the operator backs that server up; Custos keeps verified tenant
    /// archives of every organisation.
    Archives(ArchiveBackups),
}

impl BackupPlan {
    /// Where the erasure ledgers are mirrored.
    pub(crate) fn erasures_dir(&self) -> PathBuf {
        match self {
            Self::Cluster(backups) => backups.store.erasures_dir(),
            Self::Archives(archives) => archives.erasures_dir(),
        }
    }
}
