//! Webhooks: registering endpoints, changing, disabling, enabling, removing and testing them.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use custos_projections::webhooks;
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::context::Cx;
use crate::graphql::types::webhook::{Webhook, WebhookEventType};
use crate::service::webhooks::{NewWebhook, WebhookChange};

#[derive(InputObject)]
pub(crate) struct RegisterWebhookInput {
    /// Where deliveries are POSTed: an `http` or `https` URL (not this service itself).
    url: String,
    /// What the endpoint is told about; at least one.
    events: Vec<WebhookEventType>,
    /// What the webhook is for, e.g. "CRM sync" (at most 200 characters).
    description: Option<String>,
}

#[derive(InputObject)]
pub(crate) struct UpdateWebhookInput {
    /// A new endpoint; unchanged when omitted.
    url: Option<String>,
    /// New event types; unchanged when omitted.
    events: Option<Vec<WebhookEventType>>,
}

/// A registered webhook and the secret its deliveries are signed with.
#[derive(SimpleObject)]
pub(crate) struct RegisteredWebhook {
    /// The signing secret (`whsec_…`, as the Standard Webhooks libraries take it). Store it
    /// now: it cannot be shown again.
    secret: String,
    webhook: Webhook,
}

/// What a webhook's endpoint answered to a test message.
#[derive(SimpleObject)]
pub(crate) struct WebhookTestResult {
    succeeded: bool,
    /// The endpoint's HTTP status, when it answered.
    status_code: Option<i32>,
    /// Why it failed (`null` when it succeeded).
    error: Option<String>,
    duration_ms: i32,
}

fn topics(events: Vec<WebhookEventType>) -> Vec<custos_domain::WebhookTopic> {
    events.into_iter().map(Into::into).collect()
}

#[derive(Default)]
pub(crate) struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// The organisation's webhooks, in the order they were registered.
    async fn webhooks(&self, ctx: &Context<'_>) -> Result<Vec<Webhook>, ApiError> {
        let cx = Cx::new(ctx)?;
        let rows = webhooks::webhooks(&cx.tenant().pool).await?;
        Ok(rows.into_iter().map(Webhook).collect())
    }
}

#[derive(Default)]
pub(crate) struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// Registers a webhook: from now on, each change of the chosen kinds is POSTed to `url`,
    /// signed as Standard Webhooks specifies (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` headers). A delivery names what changed, never a value.
    async fn register_webhook(
        &self,
        ctx: &Context<'_>,
        input: RegisterWebhookInput,
    ) -> Result<RegisteredWebhook, ApiError> {
        let cx = Cx::new(ctx)?;
        let registered = cx
            .services
            .register_webhook(
                cx.caller,
                NewWebhook {
                    url: input.url,
                    topics: topics(input.events),
                    description: input.description,
                },
                cx.request_id,
            )
            .await?;
        Ok(RegisteredWebhook {
            secret: registered.secret.expose_secret().to_owned(),
            webhook: Webhook(registered.webhook),
        })
    }

    /// Changes a webhook's endpoint or event types.
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateWebhookInput,
    ) -> Result<Webhook, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let change = WebhookChange::Update {
            url: input.url,
            topics: input.events.map(topics),
        };
        Ok(Webhook(
            cx.services
                .change_webhook(cx.caller, id, change, cx.request_id)
                .await?,
        ))
    }

    /// Stops deliveries; changes made while disabled are never delivered.
    async fn disable_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<Webhook, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(Webhook(
            cx.services
                .change_webhook(cx.caller, id, WebhookChange::Disable, cx.request_id)
                .await?,
        ))
    }

    /// Delivers again, from the changes made after this.
    async fn enable_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<Webhook, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(Webhook(
            cx.services
                .change_webhook(cx.caller, id, WebhookChange::Enable, cx.request_id)
                .await?,
        ))
    }

    /// Removes a webhook and its delivery log. Answers its id.
    async fn remove_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<ID, ApiError> {
        let cx = Cx::new(ctx)?;
        let parsed = parse_id("id", &id)?;
        cx.services
            .remove_webhook(cx.caller, parsed, cx.request_id)
            .await?;
        Ok(id)
    }

    /// Sends a signed `webhook.test` message to the webhook now (enabled or not) and says
    /// what its endpoint answered.
    async fn test_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<WebhookTestResult, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let answer = cx.services.test_webhook(cx.caller, id).await?;
        Ok(WebhookTestResult {
            succeeded: answer.succeeded(),
            status_code: answer.status.map(i32::from),
            error: answer.error,
            duration_ms: i32::try_from(answer.duration.as_millis()).unwrap_or(i32::MAX),
        })
    }
}
