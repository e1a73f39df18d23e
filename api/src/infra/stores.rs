//! What a tenant database keeps outside the event log: sessions and API token lookups
//! (`sessions`), two-factor secrets, recovery codes and login challenges (`two_factor`),
//! one-time download links (`downloads`), and the answers of retry-safe mutations
//! (`idempotency`).

pub(crate) mod downloads;
pub(crate) mod idempotency;
pub(crate) mod sessions;
pub(crate) mod two_factor;
