//! Authentication and authorization: password hashing and policy (`passwords`), bearer tokens
//! (`tokens`), who a request acts as (`principal`), second factors (`totp`), and the policy
//! for every root field of the schema (`policy`).

pub(crate) mod passwords;
pub(crate) mod policy;
pub(crate) mod principal;
pub(crate) mod tokens;
pub(crate) mod totp;
