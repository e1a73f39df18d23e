//! Infrastructure: PostgreSQL (the private cluster, its backups and the server in use), keys, the event
//! store and its projector, tenancy, tamper evidence, the blind index, and what tenant
//! databases keep outside the event log.

pub(crate) mod archive;
pub(crate) mod backups;
pub(crate) mod blind_index;
pub(crate) mod caches;
pub(crate) mod cluster;
pub(crate) mod database;
pub(crate) mod erasure_ledger;
pub(crate) mod event_store;
pub(crate) mod integrity;
pub(crate) mod keys;
pub(crate) mod notifications;
pub mod projector;
pub(crate) mod record_feed;
pub(crate) mod stores;
pub(crate) mod subject_keys;
pub(crate) mod tenancy;
pub(crate) mod webhooks;
