//! Tenancy: the catalog of tenants and their databases (`catalog`), organisations leaving and
//! arriving as archives (`archives`), each organisation's life with the provider
//! (`lifecycle`), its storage (`storage`) and what is left of it once purged (`tombstones`), one tenant's open context
//! (`tenant`) and what it keeps in memory (`tenant_caches`), and every organisation of a server verified (`verification`).

pub(crate) mod archives;
pub(crate) mod catalog;
pub(crate) mod lifecycle;
pub(crate) mod storage;
pub(crate) mod tenant;
pub(crate) mod tenant_caches;
pub(crate) mod tombstones;
pub(crate) mod verification;
