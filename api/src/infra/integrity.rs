//! Tamper evidence: the per-stream hash chain (`chain`), signed checkpoints over every stream's
//! head (`checkpoint`), and verification of both (`verify`).

pub(crate) mod chain;
pub(crate) mod checkpoint;
pub(crate) mod verify;
