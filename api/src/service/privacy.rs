//! Data subjects' rights beyond reading and changing records: the consent register
//! (`consents`), retention policies and their runs (`retention`), the breach register
//! (`breaches`), and the erasure ledger's replay (`erasures`).

pub(crate) mod breaches;
pub(crate) mod consents;
pub(crate) mod erasures;
pub(crate) mod retention;
