//! Tamper evidence: the per-stream hash chain (`chain`), the Merkle log over every event
//! (`merkle` its arithmetic, `tree` its storage and checkpoints, `tree_head` the signed heads
//! and the witness file, `audit_keys` the keys that sign them), the checkpoints from before
//! the Merkle log (`checkpoint`), and verification of all of it (`verify`).

pub(crate) mod audit_keys;
pub(crate) mod chain;
pub(crate) mod checkpoint;
pub(crate) mod merkle;
pub(crate) mod proof;
pub(crate) mod read_models;
pub(crate) mod tree;
pub(crate) mod tree_head;
pub(crate) mod verify;
