//! What auditors ask of the service: history replayed from the event store (`history`),
//! reports as of a past moment (`reports`), and tamper evidence (`integrity`).

pub(crate) mod history;
pub(crate) mod integrity;
pub(crate) mod reports;
