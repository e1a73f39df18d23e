//! Data subjects' rights beyond reading and changing records: the consent register
//! (`consents`), retention policies and their runs (`retention`), and the breach register
//! (`breaches`).

pub(crate) mod breaches;
pub(crate) mod consents;
pub(crate) mod retention;
