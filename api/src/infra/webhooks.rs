//! Webhook delivery's infrastructure: the Standard Webhooks signature, the HTTP client, the
//! per-webhook cursor in the event log, and the events a webhook can be told about.

pub(crate) mod cursor;
pub(crate) mod feed;
pub(crate) mod sender;
pub(crate) mod signing;
