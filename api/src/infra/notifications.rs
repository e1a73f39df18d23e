//! Notifications owed to people: the outbox in the catalog (`outbox`) and the mail server
//! they leave through (`mail`).

pub(crate) mod mail;
pub(crate) mod outbox;
