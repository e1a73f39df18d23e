//! Tenancy: the catalog of tenants and their databases (`catalog`), and one tenant's open
//! context (`tenant`).

pub(crate) mod catalog;
pub(crate) mod tenant;
