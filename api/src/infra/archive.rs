//! Tenant archives: one organisation, whole, in one file it can take to another Custos —
//! every event as stored, its signed tree heads and signing key, its subjects' keys (sealed
//! under a key derived from the caller's passphrase, never the master key), its two-factor
//! secrets and the record of who read whom. `format` is the file; `export` writes it from a
//! tenant database; `import` reads it into a new one, verified before it commits.

pub(crate) mod export;
pub(crate) mod format;
pub(crate) mod import;
