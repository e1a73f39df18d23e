//! The root fields of the schema, one file per area; each area's query and mutation objects
//! are merged in `graphql`.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod breaches;
pub(crate) mod custom_fields;
pub(crate) mod datasheets;
pub(crate) mod exports;
pub(crate) mod history;
pub(crate) mod identity;
pub(crate) mod imports;
pub(crate) mod lifecycle;
pub(crate) mod live_records;
pub(crate) mod notifications;
pub(crate) mod privacy;
pub(crate) mod record_query;
pub(crate) mod reports;
pub(crate) mod retention;
pub(crate) mod security;
pub(crate) mod webhooks;
