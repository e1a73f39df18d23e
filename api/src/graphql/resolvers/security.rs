//! Two-factor authentication (enrolment, recovery codes, the administrators' reset and
//! tenant-wide requirement) and API tokens for integrations.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_projections::api_tokens;
use secrecy::{ExposeSecret, SecretString};

use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::context::Cx;
use crate::graphql::pagination::{id_connection, page_args, ConnectionTotal};
use crate::graphql::types::api_token::ApiToken;
use crate::graphql::types::user::User;
use crate::service::api_tokens::NewApiToken;

/// What an authenticator app needs; shown when enrolment starts.
#[derive(SimpleObject)]
pub(crate) struct TwoFactorEnrolment {
    /// The secret in base32, for typing into the app by hand.
    secret: String,
    /// The `otpauth://totp/...` URI the app reads.
    otpauth_uri: String,
    /// The URI as a QR code: an SVG document.
    qr_code_svg: String,
}

/// A new API token: the bearer token is shown only here.
#[derive(SimpleObject)]
pub(crate) struct CreatedApiToken {
    /// Send as `Authorization: Bearer <token>`. Store it now: it cannot be shown again.
    token: String,
    api_token: ApiToken,
}

#[derive(InputObject)]
pub(crate) struct CreateApiTokenInput {
    /// What the token is for, e.g. "Payroll sync".
    name: String,
    /// The role whose permissions the token has.
    role_id: ID,
    /// When the token stops working; never when omitted.
    expires_at: Option<DateTime<Utc>>,
}

pub(crate) type ApiTokenConnection = Connection<String, ApiToken, ConnectionTotal, EmptyFields>;

#[derive(Default)]
pub(crate) struct SecurityQuery;

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
    ) -> Result<ApiTokenConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let (first, after) = page_args(first, after)?;
        let mut conn = cx.tenant().pool.acquire().await?;
        let page =
            api_tokens::tokens_page(&mut conn, first, after, include_inactive.unwrap_or(false))
                .await?;
        Ok(id_connection(page, after, |row| row.id, ApiToken))
    }
}

#[derive(Default)]
pub(crate) struct SecurityMutation;

#[Object]
impl SecurityMutation {
    /// Starts enrolling your authenticator app: add the secret (or scan the QR code), then
    /// confirm with `confirmTwoFactorEnrolment`. Starting again replaces an unconfirmed secret.
    async fn begin_two_factor_enrolment(
        &self,
        ctx: &Context<'_>,
    ) -> Result<TwoFactorEnrolment, ApiError> {
        let cx = Cx::new(ctx)?;
        let enrolment = cx.services.begin_two_factor_enrolment(cx.caller).await?;
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
    ) -> Result<Vec<String>, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services
            .confirm_two_factor_enrolment(cx.caller, &code, cx.origin)
            .await
    }

    /// Replaces your recovery codes (the old ones stop working); needs a current code from
    /// the app or an unused recovery code.
    async fn regenerate_recovery_codes(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] code: String,
    ) -> Result<Vec<String>, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services
            .regenerate_recovery_codes(cx.caller, &code, cx.origin)
            .await
    }

    /// Turns your two-factor authentication off, with your password; refused while the
    /// organisation requires it.
    async fn disable_two_factor(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] password: String,
    ) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let password = SecretString::from(password);
        Ok(User(
            cx.services
                .disable_two_factor(cx.caller, password, cx.origin)
                .await?,
        ))
    }

    /// Removes a user's second factor (a lost device): they log in with their password and
    /// enrol again.
    async fn reset_two_factor(&self, ctx: &Context<'_>, user_id: ID) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("userId", &user_id)?;
        Ok(User(
            cx.services
                .reset_two_factor(cx.caller, id, cx.request_id)
                .await?,
        ))
    }

    /// Requires every user to log in with a second factor, or stops requiring it. Answers
    /// the setting now in force.
    async fn set_two_factor_required(
        &self,
        ctx: &Context<'_>,
        required: bool,
    ) -> Result<bool, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services
            .set_two_factor_required(cx.caller, required, cx.request_id)
            .await
    }

    /// Creates an API token for an integration, with one role's permissions.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        input: CreateApiTokenInput,
    ) -> Result<CreatedApiToken, ApiError> {
        let cx = Cx::new(ctx)?;
        let role_id = parse_id("roleId", &input.role_id)?;
        let created = cx
            .services
            .create_api_token(
                cx.caller,
                NewApiToken {
                    name: input.name,
                    role_id,
                    expires_at: input.expires_at,
                },
                cx.request_id,
            )
            .await?;
        Ok(CreatedApiToken {
            token: created.secret.expose_secret().to_owned(),
            api_token: ApiToken(created.token),
        })
    }

    /// Revokes an API token: it authenticates nothing from now on.
    async fn revoke_api_token(&self, ctx: &Context<'_>, id: ID) -> Result<ApiToken, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(ApiToken(
            cx.services
                .revoke_api_token(cx.caller, id, cx.request_id)
                .await?,
        ))
    }
}
