//! The end-to-end suite: the real HTTP/GraphQL API against a real PostgreSQL (the private
//! cluster the service itself starts). One module per feature.

mod access;
mod api_tokens;
mod audit;
mod authz_matrix;
mod backups;
mod caches;
mod custom_fields;
mod datasheets;
mod effective_dating;
mod event_store;
mod exports;
mod faults;
mod http;
mod idempotency;
mod identity;
mod imports;
mod integrity;
mod lifecycle;
mod live_records;
mod logs;
mod metrics;
mod notifications;
mod portability;
mod privacy;
mod queries;
mod records;
mod reports;
mod rights;
mod tenancy;
mod two_factor;
mod webhooks;
mod websocket;
