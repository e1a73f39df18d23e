//! Webhooks as administrators see them (never their secret), and their delivery attempts.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Enum, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::WebhookTopic;
use custos_projections::webhooks::{self, AttemptRow, WebhookRow};

use super::user::UserRef;
use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::loaders::load_user;
use crate::graphql::pagination::{id_connection, page_args, ConnectionTotal};

/// What a webhook can be told about. A delivery's `type` is the lower-case name with a dot
/// (`record.created`, `user.changed`, …).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub(crate) enum WebhookEventType {
    /// A record was created (in any datasheet).
    RecordCreated,
    /// A record's fields changed (an applicant hired included).
    RecordUpdated,
    /// A record was archived or restored.
    RecordArchived,
    /// A record's subject was erased.
    RecordErased,
    /// A record's processing was restricted, or the restriction lifted.
    RecordRestricted,
    /// A user was created, renamed, given roles, made or unmade administrator, deactivated,
    /// reactivated or erased (logins and passwords are never delivered).
    UserChanged,
    /// A role was created, renamed, deleted, or its permissions changed.
    RoleChanged,
    /// The organisation's subscription changed: a plan chosen, the trial extended or ended,
    /// a suspension or resumption, a cancellation scheduled or withdrawn, the subscription
    /// ended, a storage level crossed (`organization.lifecycle_changed`).
    LifecycleChanged,
}

impl From<WebhookEventType> for WebhookTopic {
    fn from(kind: WebhookEventType) -> Self {
        match kind {
            WebhookEventType::RecordCreated => WebhookTopic::RecordCreated,
            WebhookEventType::RecordUpdated => WebhookTopic::RecordUpdated,
            WebhookEventType::RecordArchived => WebhookTopic::RecordArchived,
            WebhookEventType::RecordErased => WebhookTopic::RecordErased,
            WebhookEventType::RecordRestricted => WebhookTopic::RecordRestricted,
            WebhookEventType::UserChanged => WebhookTopic::UserChanged,
            WebhookEventType::RoleChanged => WebhookTopic::RoleChanged,
            WebhookEventType::LifecycleChanged => WebhookTopic::LifecycleChanged,
        }
    }
}

impl WebhookEventType {
    fn of(name: &str) -> Option<Self> {
        [
            Self::RecordCreated,
            Self::RecordUpdated,
            Self::RecordArchived,
            Self::RecordErased,
            Self::RecordRestricted,
            Self::UserChanged,
            Self::RoleChanged,
            Self::LifecycleChanged,
        ]
        .into_iter()
        .find(|kind| WebhookTopic::from(*kind).as_str() == name)
    }
}

/// An endpoint told, by a signed POST, when what it subscribed to happens.
pub(crate) struct Webhook(pub(crate) WebhookRow);

#[Object]
impl Webhook {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn events(&self) -> Vec<WebhookEventType> {
        self.0
            .topics
            .iter()
            .filter_map(|t| WebhookEventType::of(t))
            .collect()
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    /// Whether changes are delivered. Changes made while a webhook is disabled are never
    /// delivered.
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    /// Why it was last disabled: by an administrator, or by Custos after repeated failures.
    async fn disabled_reason(&self) -> Option<&str> {
        self.0.disabled_reason.as_deref()
    }
    async fn created_by(&self, ctx: &Context<'_>) -> Result<Option<UserRef>, ApiError> {
        Ok(load_user(ctx, self.0.created_by).await?.map(UserRef))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// Its delivery attempts, newest first (kept 30 days).
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, WebhookDelivery, ConnectionTotal, EmptyFields>, ApiError> {
        let cx = Cx::new(ctx)?;
        let (first, after) = page_args(first, after)?;
        let page =
            webhooks::attempts(&cx.tenant().pool, self.0.id, after.map(|c| c.0), first).await?;
        Ok(id_connection(
            page,
            after,
            |row| row.id,
            WebhookDelivery::from,
        ))
    }
}

/// One attempt to deliver a message to a webhook.
#[derive(SimpleObject)]
pub(crate) struct WebhookDelivery {
    id: ID,
    /// The `webhook-id` header: the same on every attempt of one message.
    message_id: String,
    /// The message's `type` (`record.created`, … or `webhook.test`).
    event_type: String,
    /// 1 for the first attempt of the message, 2 for its first retry, …
    attempt: i32,
    attempted_at: DateTime<Utc>,
    /// The endpoint's HTTP status, when it answered.
    status_code: Option<i32>,
    /// Why the attempt failed (`null` when it succeeded).
    error: Option<String>,
    duration_ms: i32,
    succeeded: bool,
}

impl From<AttemptRow> for WebhookDelivery {
    fn from(row: AttemptRow) -> Self {
        Self {
            id: ID(row.id.to_string()),
            message_id: row.message_id,
            event_type: row.topic,
            attempt: row.attempt,
            attempted_at: row.attempted_at,
            status_code: row.status_code,
            error: row.error,
            duration_ms: row.duration_ms,
            succeeded: row.succeeded,
        }
    }
}
