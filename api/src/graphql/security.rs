//! Two-factor authentication (enrolment, recovery codes, the administrators' reset and
//! tenant-wide requirement) and API tokens for integrations.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_projections::api_tokens::{self, ApiTokenRow};
use custos_projections::roles;
use secrecy::{ExposeSecret, SecretString};

use super::admin::Role;
use super::identity::{User, UserRef};
use super::{id_connection, load_user, page_args, parse_id, principal, request, services};
use crate::error::ApiError;
use crate::service::NewApiToken;

/// What an authenticator app needs; shown when enrolment starts.
#[derive(SimpleObject)]
pub struct TwoFactorEnrolment {
    /// The secret in base32, for typing into the app by hand.
    secret: String,
    /// The `otpauth://totp/...` URI the app reads.
    otpauth_uri: String,
    /// The URI as a QR code: an SVG document.
    qr_code_svg: String,
}

/// An integration's credential: it acts with one role's permissions, never as an
/// administrator or a user.
pub struct ApiToken(pub ApiTokenRow);

#[Object]
impl ApiToken {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The role whose permissions the token has; `null` once the role is deleted.
    async fn role(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Role>> {
        let pool = &principal(ctx)?.tenant.pool;
        Ok(roles::role(pool, self.0.role_id)
            .await
            .map_err(ApiError::from)?
            .map(Role))
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
    async fn created_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserRef>> {
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

/// A new API token: the bearer token is shown only here.
#[derive(SimpleObject)]
pub struct CreatedApiToken {
    /// Send as `Authorization: Bearer <token>`. Store it now: it cannot be shown again.
    token: String,
    api_token: ApiToken,
}

#[derive(InputObject)]
pub struct CreateApiTokenInput {
    /// What the token is for, e.g. "Payroll sync".
    name: String,
    /// The role whose permissions the token has.
    role_id: ID,
    /// When the token stops working; never when omitted.
    expires_at: Option<DateTime<Utc>>,
}

pub type ApiTokenConnection = Connection<String, ApiToken, super::ConnectionTotal, EmptyFields>;

#[derive(Default)]
pub struct SecurityQuery;

#[Object]
impl SecurityQuery {
    /// The organisation's API tokens in creation order; revoked and expired ones only when
    /// `includeInactive` is true.
    async fn api_tokens(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        include_inactive: Option<bool>,
    ) -> async_graphql::Result<ApiTokenConnection> {
        let principal = principal(ctx)?;
        let (first, after) = page_args(first, after)?;
        let mut conn = principal
            .tenant
            .pool
            .acquire()
            .await
            .map_err(ApiError::from)?;
        let page =
            api_tokens::tokens_page(&mut conn, first, after, include_inactive.unwrap_or(false))
                .await
                .map_err(ApiError::from)?;
        Ok(id_connection(page, after, |row| row.id, ApiToken))
    }
}

#[derive(Default)]
pub struct SecurityMutation;

#[Object]
impl SecurityMutation {
    /// Starts enrolling your authenticator app: add the secret (or scan the QR code), then
    /// confirm with `confirmTwoFactorEnrolment`. Starting again replaces an unconfirmed secret.
    async fn begin_two_factor_enrolment(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<TwoFactorEnrolment> {
        let enrolment = services(ctx)?
            .begin_two_factor_enrolment(principal(ctx)?)
            .await?;
        Ok(TwoFactorEnrolment {
            secret: enrolment.secret,
            otpauth_uri: enrolment.otpauth_uri,
            qr_code_svg: enrolment.qr_code_svg,
        })
    }

    /// Confirms enrolment with a current code from the app; logins need a second factor from
    /// now on. Answers ten one-time recovery codes, shown only here: store them safely.
    async fn confirm_two_factor_enrolment(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] code: String,
    ) -> async_graphql::Result<Vec<String>> {
        Ok(services(ctx)?
            .confirm_two_factor_enrolment(principal(ctx)?, &code, &request(ctx)?.origin)
            .await?)
    }

    /// Replaces your recovery codes (the old ones stop working); needs a current code from
    /// the app or an unused recovery code.
    async fn regenerate_recovery_codes(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] code: String,
    ) -> async_graphql::Result<Vec<String>> {
        Ok(services(ctx)?
            .regenerate_recovery_codes(principal(ctx)?, &code, &request(ctx)?.origin)
            .await?)
    }

    /// Turns your two-factor authentication off, with your password; refused while the
    /// organisation requires it.
    async fn disable_two_factor(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] password: String,
    ) -> async_graphql::Result<User> {
        let password = SecretString::from(password);
        Ok(User(
            services(ctx)?
                .disable_two_factor(principal(ctx)?, password, &request(ctx)?.origin)
                .await?,
        ))
    }

    /// Removes a user's second factor (a lost device): they log in with their password and
    /// enrol again.
    async fn reset_two_factor(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
    ) -> async_graphql::Result<User> {
        let id = parse_id("userId", &user_id)?;
        Ok(User(
            services(ctx)?
                .reset_two_factor(principal(ctx)?, id, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    /// Requires every user to log in with a second factor, or stops requiring it. Answers
    /// the setting now in force.
    async fn set_two_factor_required(
        &self,
        ctx: &Context<'_>,
        required: bool,
    ) -> async_graphql::Result<bool> {
        Ok(services(ctx)?
            .set_two_factor_required(principal(ctx)?, required, request(ctx)?.origin.request_id)
            .await?)
    }

    /// Creates an API token for an integration, with one role's permissions.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        input: CreateApiTokenInput,
    ) -> async_graphql::Result<CreatedApiToken> {
        let role_id = parse_id("roleId", &input.role_id)?;
        let created = services(ctx)?
            .create_api_token(
                principal(ctx)?,
                NewApiToken {
                    name: input.name,
                    role_id,
                    expires_at: input.expires_at,
                },
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(CreatedApiToken {
            token: created.secret.expose_secret().to_owned(),
            api_token: ApiToken(created.token),
        })
    }

    /// Revokes an API token: it authenticates nothing from now on.
    async fn revoke_api_token(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ApiToken> {
        let id = parse_id("id", &id)?;
        Ok(ApiToken(
            services(ctx)?
                .revoke_api_token(principal(ctx)?, id, request(ctx)?.origin.request_id)
                .await?,
        ))
    }
}
