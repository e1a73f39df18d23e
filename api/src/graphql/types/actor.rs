//! Who caused an event or last changed a record: a user, an integration through an API
//! token, a retention policy, or a webhook Custos disabled, resolved by id when asked.

use async_graphql::{Context, Object, ID};
use custos_projections::api_tokens::ApiTokenRow;
use custos_projections::retention::PolicyRow;
use custos_projections::users::UserRow;
use custos_projections::webhooks::WebhookRow;
use uuid::Uuid;

use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::loaders::{load_api_token, load_user};

/// What kind of actor caused an event.
#[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq)]
pub(crate) enum ActorKind {
    User,
    ApiToken,
    /// A retention policy the service applied on its schedule.
    RetentionPolicy,
    /// Custos, disabling a webhook whose deliveries kept failing.
    Webhook,
}

/// Who caused an event or last changed a record: a user, an integration through an API
/// token, or a retention policy.
pub(crate) struct Actor {
    id: Uuid,
    /// Known from event metadata; read models that keep only the id leave it to be looked up.
    known: Option<custos_domain::Actor>,
}

enum Resolved {
    User(UserRow),
    ApiToken(ApiTokenRow),
    RetentionPolicy(PolicyRow),
    Webhook(WebhookRow),
}

impl Actor {
    pub(crate) fn new(id: Uuid, known: Option<custos_domain::Actor>) -> Self {
        Self { id, known }
    }

    /// The user or token behind the id (ids are UUIDv7s: they never collide across kinds).
    async fn resolve(&self, ctx: &Context<'_>) -> Result<Option<Resolved>, ApiError> {
        if let Some(custos_domain::Actor::RetentionPolicy(id)) = self.known {
            let tenant = Cx::new(ctx)?.tenant();
            let policy = custos_projections::retention::policy(&tenant.pool, id).await?;
            return Ok(policy.map(Resolved::RetentionPolicy));
        }
        if let Some(custos_domain::Actor::Webhook(id)) = self.known {
            let tenant = Cx::new(ctx)?.tenant();
            let webhook = custos_projections::webhooks::webhook(&tenant.pool, id).await?;
            return Ok(webhook.map(Resolved::Webhook));
        }
        if !matches!(self.known, Some(custos_domain::Actor::ApiToken(_))) {
            if let Some(user) = load_user(ctx, self.id).await? {
                return Ok(Some(Resolved::User(user)));
            }
        }
        if !matches!(self.known, Some(custos_domain::Actor::User(_))) {
            if let Some(token) = load_api_token(ctx, self.id).await? {
                return Ok(Some(Resolved::ApiToken(token)));
            }
        }
        Ok(None)
    }
}

#[Object]
impl Actor {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// `null` when the actor is not a user or token of this organisation.
    async fn kind(&self, ctx: &Context<'_>) -> Result<Option<ActorKind>, ApiError> {
        Ok(self.resolve(ctx).await?.map(|resolved| match resolved {
            Resolved::User(_) => ActorKind::User,
            Resolved::ApiToken(_) => ActorKind::ApiToken,
            Resolved::RetentionPolicy(_) => ActorKind::RetentionPolicy,
            Resolved::Webhook(_) => ActorKind::Webhook,
        }))
    }
    /// The user's or the token's current name.
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>, ApiError> {
        Ok(self.resolve(ctx).await?.map(|resolved| match resolved {
            Resolved::User(user) => user.name,
            Resolved::ApiToken(token) => token.name,
            Resolved::RetentionPolicy(policy) => policy.name,
            // Never the URL (it may hold a token): auditors who are not administrators see
            // this name.
            Resolved::Webhook(webhook) => webhook
                .description
                .unwrap_or_else(|| format!("webhook {}", webhook.id)),
        }))
    }
    /// The user's current email; `null` for API tokens.
    async fn email(&self, ctx: &Context<'_>) -> Result<Option<String>, ApiError> {
        Ok(match self.resolve(ctx).await? {
            Some(Resolved::User(user)) => Some(user.email),
            _ => None,
        })
    }
}
