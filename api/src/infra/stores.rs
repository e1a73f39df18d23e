//! What a tenant database keeps outside the event log: sessions and API token lookups
//! (`sessions`), two-factor secrets, recovery codes and login challenges (`two_factor`), and
//! one-time download links (`downloads`).

pub(crate) mod downloads;
pub(crate) mod sessions;
pub(crate) mod two_factor;
