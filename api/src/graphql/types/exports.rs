//! What starting an export answers, whatever was exported.

use async_graphql::{SimpleObject, ID};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::service::exports::links::ExportTicket;

/// A recorded export and where to download it.
#[derive(SimpleObject)]
pub(crate) struct ExportPayload {
    pub(crate) export_id: ID,
    /// How many records the file holds.
    pub(crate) count: i64,
    /// `GET` it once, within five minutes (no token header needed: the link is the
    /// credential).
    pub(crate) download_url: String,
    pub(crate) expires_at: DateTime<Utc>,
}

/// What a started export answers: its id, size and one-time link.
pub(crate) fn export_payload(ticket: ExportTicket) -> Result<ExportPayload, ApiError> {
    Ok(ExportPayload {
        export_id: ID(ticket.export_id.to_string()),
        count: i64::try_from(ticket.count).map_err(ApiError::internal)?,
        download_url: format!("/exports/{}", ticket.token.expose_secret()),
        expires_at: ticket.expires_at,
    })
}
