//! The organisation's notifications and their delivery (administrators): what Custos owes
//! its administrators and the people in its records, and whether it reached them.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Object, ID};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::context::Cx;
use crate::graphql::pagination::{connection, page_size, ConnectionTotal};
use crate::graphql::types::notification::{NotificationKind, NotificationNode, NotificationStatus};
use crate::infra::notifications::outbox::NotificationFilter;

/// A page's position: when the last notification was written, and its id.
fn cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.timestamp_micros()))
}

fn parse_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (micros, id) = text.split_once(':')?;
    // Only moments PostgreSQL can compare with (a notification is never older than 2000).
    let micros: i64 = micros.parse().ok()?;
    if !(946_684_800_000_000..=253_402_300_799_000_000).contains(&micros) {
        return None;
    }
    Some((
        DateTime::from_timestamp_micros(micros)?,
        Uuid::parse_str(id).ok()?,
    ))
}

#[derive(Default)]
pub(crate) struct NotificationsQuery;

#[Object]
impl NotificationsQuery {
    /// The organisation's notifications, newest first, with how their delivery went
    /// (administrators): notices about the organisation to each administrator, and breach
    /// notices to the people an incident affected.
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<NotificationStatus>,
        kind: Option<NotificationKind>,
        incident_id: Option<ID>,
    ) -> Result<Connection<String, NotificationNode, ConnectionTotal, EmptyFields>, ApiError> {
        let cx = Cx::new(ctx)?;
        let first = page_size(first)?;
        let after = after
            .map(|raw| {
                parse_cursor(&raw)
                    .ok_or_else(|| ApiError::validation("after", "`after` is not a valid cursor"))
            })
            .transpose()?;
        let filter = NotificationFilter {
            status: status.map(|s| s.as_str().to_owned()),
            kind: kind.map(|k| k.as_str().to_owned()),
            cause: incident_id
                .map(|id| parse_id("incidentId", &id).map(|id| format!("incident:{id}")))
                .transpose()?,
        };
        let (mut rows, total) = cx
            .services
            .notifications(cx.caller, &filter, after, first)
            .await?;
        let has_next = rows.len() as i64 > first;
        rows.truncate(usize::try_from(first).unwrap_or(0));
        Ok(connection(
            after.is_some(),
            has_next,
            total,
            rows.into_iter()
                .map(|row| (cursor(row.created_at, row.id), NotificationNode(row))),
        ))
    }
}
