//! The event store: postgres-es's repository wrapped by ours (`repository`), the codec that
//! seals and opens personal content (`codec`), and the log that reads events with their
//! positions (`log`).

pub(crate) mod codec;
pub(crate) mod log;
pub(crate) mod repository;
