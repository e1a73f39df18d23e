//! API tokens for integrations: administrators create them for one role, with an optional
//! expiry, and revoke them. A token authenticates requests as itself — its events name it as
//! the actor — with its role's permissions and nothing else. Its uses are recorded like
//! logins: about one `ApiTokenUsed` (and one `ApiTokenRefused` for a revoked or expired
//! token) per token per minute — requests arriving before the read model shows the last one
//! may each record one — so a busy integration does not write an event per request.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_domain::{Actor, ApiTokenCommand, EventMetadata, TokenRefusal};
use custos_projections::api_tokens::{self, ApiTokenRow};
use custos_projections::roles;
use secrecy::SecretString;
use uuid::Uuid;

use crate::auth::principal::{Principal, Subject};
use crate::auth::tokens::{BearerToken, TokenKind};
use crate::error::ApiError;
use crate::infra::stores::sessions;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::identity::RequestOrigin;
use crate::service::Services;

/// A token an administrator creates.
pub(crate) struct NewApiToken {
    pub(crate) name: String,
    pub(crate) role_id: Uuid,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

/// A new token: the secret, shown only here, and the token as listed.
pub(crate) struct CreatedApiToken {
    pub(crate) secret: SecretString,
    pub(crate) token: ApiTokenRow,
}

impl Services {
    /// Creates an API token acting with `role_id`'s permissions.
    pub(crate) async fn create_api_token(
        &self,
        principal: &Principal,
        input: NewApiToken,
        request_id: Uuid,
    ) -> Result<CreatedApiToken, ApiError> {
        let tenant = &principal.tenant;
        // Under the directory lock, so that the role cannot be deleted meanwhile.
        let _lock = self.directory_lock(tenant).await?;
        if roles::role(&tenant.pool, input.role_id).await?.is_none() {
            return Err(ApiError::NotFound);
        }
        let (secret, stored) = BearerToken::generate(TokenKind::ApiToken, tenant.id);
        let id = Uuid::now_v7();
        let command = ApiTokenCommand::Create {
            name: input.name,
            role: input.role_id,
            expires_at: input.expires_at,
            token_hash: hex::encode(&stored.hash),
            at: Utc::now(),
        };
        self.command(
            tenant,
            &tenant.api_tokens,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        let token = self.existing_token(tenant, id).await?;
        tracing::info!(tenant.id = %tenant.id, api_token.id = %id, "security: an API token was created");
        Ok(CreatedApiToken { secret, token })
    }

    /// Revokes a token: it authenticates nothing from now on.
    pub(crate) async fn revoke_api_token(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<ApiTokenRow, ApiError> {
        let tenant = &principal.tenant;
        self.existing_token(tenant, id).await?;
        self.command(
            tenant,
            &tenant.api_tokens,
            id,
            ApiTokenCommand::Revoke,
            self.actor(principal, request_id),
        )
        .await?;
        tracing::info!(tenant.id = %tenant.id, api_token.id = %id, "security: an API token was revoked");
        self.existing_token(tenant, id).await
    }

    async fn existing_token(&self, tenant: &Tenant, id: Uuid) -> Result<ApiTokenRow, ApiError> {
        api_tokens::token(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    /// The principal for a presented API token, recording its use (or its refusal).
    pub(super) async fn authenticate_api_token(
        &self,
        tenant: Arc<Tenant>,
        presented: &BearerToken,
        origin: &RequestOrigin,
    ) -> Result<Option<Principal>, ApiError> {
        let Some(found) = sessions::api_token(&tenant.pool, &presented.hash).await? else {
            tracing::warn!(tenant.id = %tenant.id, "security: an unknown API token was presented");
            return Ok(None);
        };
        let now = Utc::now();
        let token = &found.token;
        let refusal = if token.revoked_at.is_some() {
            Some(TokenRefusal::Revoked)
        } else if token.expires_at.is_some_and(|expiry| expiry <= now) {
            Some(TokenRefusal::Expired)
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::warn!(tenant.id = %tenant.id, api_token.id = %token.id, reason = ?reason, "security: a refused API token was presented");
            if !found.recently_refused {
                let command = ApiTokenCommand::RecordRefusal {
                    reason,
                    origin: origin.login_origin(),
                };
                self.record_token_event(&tenant, token.id, command, origin)
                    .await?;
            }
            return Ok(None);
        }
        if !found.recently_used {
            let command = ApiTokenCommand::RecordUse {
                origin: origin.login_origin(),
                at: now,
            };
            match self
                .record_token_event(&tenant, token.id, command, origin)
                .await
            {
                Ok(()) => {}
                // Revoked or expired between the read and the write.
                Err(ApiError::Unauthenticated) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
        Ok(Some(Principal {
            tenant,
            subject: Subject::ApiToken(found.token),
            grants: found.grants,
            two_factor_required: false,
        }))
    }

    /// Appends a use or refusal to the token's stream, as the token. Concurrent requests
    /// racing for the stream's next sequence number retry; the read models are not awaited.
    async fn record_token_event(
        &self,
        tenant: &Tenant,
        token_id: Uuid,
        command: ApiTokenCommand,
        origin: &RequestOrigin,
    ) -> Result<(), ApiError> {
        let metadata = EventMetadata::new(Actor::ApiToken(token_id), origin.request_id);
        self.command(tenant, &tenant.api_tokens, token_id, command, metadata)
            .retry_on_conflict(10)
            .wait_for_read_models(false)
            .await
            .map_err(|err| match err {
                // Ten lost races for the token's stream: too busy to record the use now.
                ApiError::Conflict(_) => ApiError::Unavailable,
                other => other,
            })
    }
}
