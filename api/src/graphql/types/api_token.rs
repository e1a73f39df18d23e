//! API tokens as administrators see them (never the token itself).

use async_graphql::{Context, Object, ID};
use chrono::{DateTime, Utc};
use custos_projections::api_tokens::ApiTokenRow;
use custos_projections::roles;

use super::role::Role;
use super::user::UserRef;
use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::loaders::load_user;

/// An integration's credential: it acts with one role's permissions, never as an
/// administrator or a user.
pub(crate) struct ApiToken(pub(crate) ApiTokenRow);

#[Object]
impl ApiToken {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The role whose permissions the token has; `null` once the role is deleted.
    async fn role(&self, ctx: &Context<'_>) -> Result<Option<Role>, ApiError> {
        let pool = &Cx::new(ctx)?.tenant().pool;
        Ok(roles::role(pool, self.0.role_id).await?.map(Role))
    }
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
    /// Neither revoked nor expired.
    async fn active(&self) -> bool {
        self.0.revoked_at.is_none() && self.0.expires_at.is_none_or(|expiry| expiry > Utc::now())
    }
    async fn created_by(&self, ctx: &Context<'_>) -> Result<Option<UserRef>, ApiError> {
        Ok(load_user(ctx, self.0.created_by).await?.map(UserRef))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When a use was last recorded (uses are recorded at most once a minute).
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }
}
