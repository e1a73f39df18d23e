//! Exports, from the bottom up: `links` issues every one-time download link; the producers —
//! `records`, `audit_log`, `notification_list`, `trail` — record an export and build what it
//! sends; `downloads` turns an opened link into the [`downloads::Download`] to stream.

pub(crate) mod audit_log;
pub(crate) mod downloads;
pub(crate) mod links;
pub(crate) mod notification_list;
pub(crate) mod organization;
pub(crate) mod records;
pub(crate) mod trail;
