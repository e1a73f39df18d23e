//! The `webhooks` read model: each registered webhook's endpoint, topics, state and who
//! registered it (kept, marked, once removed). Deliveries are not projected: the delivery worker follows the event log
//! itself (see migration 0023), so rebuilding this read model sends nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{Webhook, WebhookEvent, WebhookTopic};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, Page, ProjectedEvent, Projection};

/// Projects Webhook events into `webhooks`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhooksProjection;

fn topic_names(topics: &[WebhookTopic]) -> Vec<&'static str> {
    topics.iter().map(|t| t.as_str()).collect()
}

#[async_trait]
impl Projection for WebhooksProjection {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Webhook as cqrs_es::Aggregate>::TYPE]
    }

    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("webhooks")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Webhook(webhook_event) = &event.event else {
            return Ok(());
        };
        let (id, version, at) = (event.aggregate_id, event.sequence, event.recorded_at);
        match webhook_event {
            WebhookEvent::WebhookRegistered {
                url,
                topics,
                description,
            } => {
                sqlx::query(
                    "INSERT INTO webhooks (id, version, url, topics, description, enabled, created_by, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, true, $6, $7, $7) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(version)
                .bind(url.as_str())
                .bind(topic_names(topics))
                .bind(description)
                .bind(event.metadata.actor.id())
                .bind(at)
                .execute(conn)
                .await?;
            }
            WebhookEvent::WebhookChanged { url, topics } => {
                sqlx::query(
                    "UPDATE webhooks SET version = $2, url = $3, topics = $4, updated_at = $5
                     WHERE id = $1 AND version < $2",
                )
                .bind(id)
                .bind(version)
                .bind(url.as_str())
                .bind(topic_names(topics))
                .bind(at)
                .execute(conn)
                .await?;
            }
            WebhookEvent::WebhookDisabled { .. }
            | WebhookEvent::WebhookEnabled
            | WebhookEvent::WebhookRemoved => {
                let (enabled, reason, removed) = match webhook_event {
                    WebhookEvent::WebhookDisabled { reason } => (false, Some(reason), false),
                    WebhookEvent::WebhookEnabled => (true, None, false),
                    _ => (false, None, true),
                };
                // Enabling keeps the last reason it was disabled for (history tells when).
                sqlx::query(
                    "UPDATE webhooks SET version = $2, enabled = $3,
                            disabled_reason = COALESCE($4, disabled_reason),
                            removed_at = CASE WHEN $5 THEN $6 ELSE removed_at END, updated_at = $6
                     WHERE id = $1 AND version < $2",
                )
                .bind(id)
                .bind(version)
                .bind(enabled)
                .bind(reason)
                .bind(removed)
                .bind(at)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM webhooks").execute(conn).await?;
        Ok(())
    }
}

/// A webhook as administrators see it (never its secret).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: Uuid,
    pub version: i64,
    pub url: String,
    pub topics: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

const WEBHOOK_COLUMNS: &str = "id, version, url, topics, description, enabled, disabled_reason, \
     created_by, created_at, updated_at, removed_at";

/// The webhook with this id (removed ones too).
pub async fn webhook<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<WebhookRow>> {
    sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Every webhook not removed, oldest first (an organisation has a handful).
pub async fn webhooks<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<Vec<WebhookRow>> {
    sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE removed_at IS NULL ORDER BY created_at, id"
    ))
    .fetch_all(db)
    .await
}

/// One delivery attempt, as logged by the worker.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AttemptRow {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub message_id: String,
    pub topic: String,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub succeeded: bool,
}

/// A page of a webhook's delivery attempts, newest first (by id, which UUIDv7 orders by
/// time), after the attempt `after`.
pub async fn attempts(
    db: &sqlx::PgPool,
    webhook_id: Uuid,
    after: Option<Uuid>,
    first: i64,
) -> sqlx::Result<Page<AttemptRow>> {
    let items: Vec<AttemptRow> = sqlx::query_as(
        "SELECT id, webhook_id, message_id, topic, attempt, attempted_at, status_code, error,
                duration_ms, succeeded
         FROM webhook_attempts
         WHERE webhook_id = $1 AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(webhook_id)
    .bind(after)
    .bind(first + 1)
    .fetch_all(db)
    .await?;
    let total_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_attempts WHERE webhook_id = $1")
            .bind(webhook_id)
            .fetch_one(db)
            .await?;
    Ok(Page::cut(items, first, total_count))
}
