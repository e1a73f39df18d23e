//! Tenancy: the catalog of tenants and their databases (`catalog`), organisations leaving and
//! arriving as archives (`archives`), and one tenant's open
//! context (`tenant`).

pub(crate) mod archives;
pub(crate) mod catalog;
pub(crate) mod tenant;
