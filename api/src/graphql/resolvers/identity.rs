//! Sign-up, login, logout and the current user.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_projections::logins;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::context::{Cx, PublicCx};
use crate::graphql::loaders::{load_api_token, load_user};
use crate::graphql::pagination::{
    connection, encode_sequence, page_size, sequence_after, ConnectionTotal,
};
use crate::graphql::types::api_token::ApiToken;
use crate::graphql::types::organization::Organization;
use crate::graphql::types::user::{User, UserRef};
use crate::infra::stores::sessions::{self, SessionRow};
use crate::service::identity::{LoginOutcome, NewOrganization, SignedIn};

/// A live session (the token itself is never shown again).
pub(crate) struct Session {
    row: SessionRow,
    current: bool,
}

#[Object]
impl Session {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<UserRef>, ApiError> {
        Ok(load_user(ctx, self.row.user_id).await?.map(UserRef))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
    async fn last_seen_at(&self) -> DateTime<Utc> {
        self.row.last_seen_at
    }
    async fn expires_at(&self) -> DateTime<Utc> {
        self.row.expires_at
    }
    /// Whether this is the session making the request.
    async fn current(&self) -> bool {
        self.current
    }
}

/// One entry of the login history.
pub(crate) struct LoginEvent(logins::LoginRow);

#[Object]
impl LoginEvent {
    /// `LoginSucceeded`, `LoginFailed`, `LoggedOut`, `LoginLocked` or `LoginUnlocked` for
    /// users; `ApiTokenUsed` or `ApiTokenRefused` for API tokens.
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
    /// The user, for user entries.
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<UserRef>, ApiError> {
        match self.0.user_id {
            Some(id) => Ok(load_user(ctx, id).await?.map(UserRef)),
            None => Ok(None),
        }
    }
    /// The API token, for API token entries.
    async fn api_token(&self, ctx: &Context<'_>) -> Result<Option<ApiToken>, ApiError> {
        match self.0.api_token_id {
            Some(id) => Ok(load_api_token(ctx, id).await?.map(ApiToken)),
            None => Ok(None),
        }
    }
    /// Why a login failed: `wrong_password`, `wrong_second_factor`, `deactivated`, `locked`
    /// or `organization_restricted` (the password was right, but the organisation admitted
    /// only administrators then); why an API token was refused: `revoked` or `expired`.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// How a successful login proved the second factor: `totp` or `recovery_code`.
    async fn second_factor(&self) -> Option<&str> {
        self.0.second_factor.as_deref()
    }
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
}

pub(crate) type LoginConnection = Connection<String, LoginEvent, ConnectionTotal, EmptyFields>;

/// `id` if it is a user of the principal's organisation, else `NOT_FOUND` (as for another
/// organisation's id).
async fn existing_user(principal: &Principal, id: uuid::Uuid) -> Result<uuid::Uuid, ApiError> {
    custos_projections::users::user(&principal.tenant.pool, id)
        .await?
        .map(|u| u.id)
        .ok_or(ApiError::NotFound)
}

/// A new session: the bearer token is shown only here.
#[derive(SimpleObject)]
pub(crate) struct AuthPayload {
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    tenant: Organization,
    user: User,
}

/// The answer to `login`: a session, or — for users with a second factor — a challenge to
/// complete with `completeLogin`.
#[derive(SimpleObject)]
pub(crate) struct LoginPayload {
    /// The bearer token, when no second factor is needed.
    token: Option<String>,
    tenant: Option<Organization>,
    user: Option<User>,
    /// Whether the login must be completed with a TOTP or recovery code.
    second_factor_required: bool,
    /// Pass to `completeLogin` with the code; valid for five minutes and a few attempts.
    challenge: Option<String>,
    challenge_expires_at: Option<DateTime<Utc>>,
}

impl From<LoginOutcome> for LoginPayload {
    fn from(outcome: LoginOutcome) -> Self {
        match outcome {
            LoginOutcome::SignedIn(signed_in) => {
                let auth = AuthPayload::from(signed_in);
                Self {
                    token: Some(auth.token),
                    tenant: Some(auth.tenant),
                    user: Some(auth.user),
                    second_factor_required: false,
                    challenge: None,
                    challenge_expires_at: None,
                }
            }
            LoginOutcome::SecondFactorRequired {
                challenge,
                expires_at,
            } => Self {
                token: None,
                tenant: None,
                user: None,
                second_factor_required: true,
                challenge: Some(challenge.expose_secret().to_owned()),
                challenge_expires_at: Some(expires_at),
            },
        }
    }
}

impl From<SignedIn> for AuthPayload {
    fn from(signed_in: SignedIn) -> Self {
        Self {
            token: signed_in.token.expose_secret().to_owned(),
            tenant: Organization::from(signed_in.tenant.as_ref()),
            user: User(signed_in.user),
        }
    }
}

#[derive(async_graphql::InputObject)]
pub(crate) struct SignUpInput {
    /// The organisation's display name.
    organization: String,
    /// Short name used at login: 3-63 lower-case letters, digits, dashes.
    slug: String,
    /// `eu` or `us`: where the organisation's database lives.
    region: String,
    admin_email: String,
    admin_name: String,
    /// At least 12 characters.
    #[graphql(secret)]
    password: String,
}

#[derive(Default)]
pub(crate) struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The user the bearer token belongs to.
    async fn me(&self, ctx: &Context<'_>) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        Ok(User(cx.caller.user()?.clone()))
    }

    /// Logins, failed logins, logouts, locks and unlocks, newest first. Administrators see
    /// anyone's (everyone's, API token uses included, when `userId` and `apiTokenId` are
    /// omitted); other users only their own.
    #[allow(clippy::too_many_arguments)]
    async fn login_history(
        &self,
        ctx: &Context<'_>,
        user_id: Option<ID>,
        api_token_id: Option<ID>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<LoginConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let me = cx.caller.user()?;
        let user = user_id.map(|id| parse_id("userId", &id)).transpose()?;
        let api_token = api_token_id
            .map(|id| parse_id("apiTokenId", &id))
            .transpose()?;
        let user = match (me.is_admin, user) {
            (true, Some(id)) => Some(existing_user(cx.caller, id).await?),
            (true, None) => None,
            (false, None) => Some(me.id),
            (false, Some(id)) if id == me.id => Some(id),
            (false, Some(_)) => return Err(ApiError::Forbidden),
        };
        let api_token = match (me.is_admin, api_token) {
            (_, None) => None,
            (true, Some(id)) => Some(
                custos_projections::api_tokens::token(&cx.tenant().pool, id)
                    .await?
                    .ok_or(ApiError::NotFound)?
                    .id,
            ),
            (false, Some(_)) => return Err(ApiError::Forbidden),
        };
        let first = page_size(first)?;
        let before = sequence_after(after)?;
        let filter = logins::HistoryFilter {
            user,
            api_token,
            from,
            to,
        };
        let mut conn = cx.tenant().pool.acquire().await?;
        let page = logins::history(&mut conn, filter, first, before).await?;
        let edges = page
            .items
            .into_iter()
            .map(|row| (encode_sequence(row.global_position), LoginEvent(row)));
        Ok(connection(
            before.is_some(),
            page.has_next_page,
            page.total_count,
            edges,
        ))
    }

    /// Live sessions, newest first: your own, or any user's for administrators.
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        user_id: Option<ID>,
    ) -> Result<Vec<Session>, ApiError> {
        let cx = Cx::new(ctx)?;
        let me = cx.caller.user()?;
        let user = match user_id.map(|id| parse_id("userId", &id)).transpose()? {
            None => me.id,
            Some(id) if id == me.id => id,
            Some(id) if me.is_admin => existing_user(cx.caller, id).await?,
            Some(_) => return Err(ApiError::Forbidden),
        };
        let services = cx.services;
        let live = sessions::live(&cx.tenant().pool, user, services.sessions).await?;
        Ok(live
            .into_iter()
            .map(|row| Session {
                current: Some(row.id) == cx.caller.session_id(),
                row,
            })
            .collect())
    }

    /// The organisation the bearer token belongs to.
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization, ApiError> {
        let cx = Cx::new(ctx)?;
        Ok(Organization::from(cx.caller.tenant.as_ref()))
    }
}

#[derive(Default)]
pub(crate) struct IdentityMutation;

#[Object]
impl IdentityMutation {
    /// Creates an organisation with its own database and its first administrator, and logs
    /// the administrator in.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        input: SignUpInput,
    ) -> Result<AuthPayload, ApiError> {
        let cx = PublicCx::new(ctx)?;
        let organization = NewOrganization {
            name: input.organization,
            slug: input.slug,
            region: input.region,
            admin_email: input.admin_email,
            admin_name: input.admin_name,
            password: SecretString::from(input.password),
        };
        Ok(cx.services.sign_up(organization, cx.origin).await?.into())
    }

    /// Logs in to the organisation `tenant` (its slug). Any failure answers the same. Users
    /// with a second factor get a challenge instead of a token: see `completeLogin`.
    async fn login(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        email: String,
        #[graphql(secret)] password: String,
    ) -> Result<LoginPayload, ApiError> {
        let cx = PublicCx::new(ctx)?;
        let outcome = cx
            .services
            .login(&tenant, &email, SecretString::from(password), cx.origin)
            .await?;
        Ok(outcome.into())
    }

    /// Completes a login that needs a second factor: the challenge from `login` and a code
    /// from the authenticator app, or one of the recovery codes (each works once). A wrong
    /// code counts toward the account's lock like a wrong password.
    async fn complete_login(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] challenge: String,
        #[graphql(secret)] code: String,
    ) -> Result<AuthPayload, ApiError> {
        let cx = PublicCx::new(ctx)?;
        Ok(cx
            .services
            .complete_login(&challenge, &code, cx.origin)
            .await?
            .into())
    }

    /// Ends every one of your sessions, this one included; answers how many ended.
    async fn logout_everywhere(&self, ctx: &Context<'_>) -> Result<i32, ApiError> {
        let cx = Cx::new(ctx)?;
        let ended = cx
            .services
            .logout_everywhere(cx.caller, cx.request_id)
            .await?;
        Ok(i32::try_from(ended).unwrap_or(i32::MAX))
    }

    /// Ends one session: one of your own, or anyone's for administrators.
    async fn end_session(&self, ctx: &Context<'_>, id: ID) -> Result<bool, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        cx.services
            .end_session(cx.caller, id, cx.request_id)
            .await?;
        Ok(true)
    }

    /// Ends the current session.
    async fn logout(&self, ctx: &Context<'_>) -> Result<bool, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services.logout(cx.caller, cx.request_id).await?;
        Ok(true)
    }
}
