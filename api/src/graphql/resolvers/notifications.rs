//! The organisation's notifications and their delivery (administrators): what Custos owes
//! its administrators and the people in its records, and whether it reached them.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Object, ID};

use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::context::Cx;
use crate::graphql::pagination::{id_connection, page_args, ConnectionTotal};
use crate::graphql::types::notification::{NotificationKind, NotificationNode, NotificationStatus};
use crate::infra::notifications::outbox::NotificationFilter;

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
        let (first, after) = page_args(first, after)?;
        let filter = NotificationFilter {
            status: status.map(|s| s.as_str().to_owned()),
            kind: kind.map(|k| k.as_str().to_owned()),
            cause: incident_id
                .map(|id| parse_id("incidentId", &id).map(|id| format!("incident:{id}")))
                .transpose()?,
        };
        let page = cx
            .services
            .notifications(cx.caller, &filter, after, first)
            .await?;
        Ok(id_connection(page, after, |n| n.id, NotificationNode))
    }
}
