//! The types resolvers share: enums mirrored from the domain, actors, users, roles, API tokens,
//! records (the `Record` interface and each datasheet's type and inputs), custom field values,
//! history entries and export payloads.

pub(crate) mod actor;
pub(crate) mod api_token;
pub(crate) mod custom_fields;
pub(crate) mod enums;
pub(crate) mod exports;
pub(crate) mod filters;
pub(crate) mod history;
pub(crate) mod notification;
pub(crate) mod organization;
pub(crate) mod records;
pub(crate) mod role;
pub(crate) mod user;
pub(crate) mod webhook;
