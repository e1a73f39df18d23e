//! Sign-up, login, logout and the current user.

use crate::error::ApiError;
use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_projections::logins;
use custos_projections::users::UserRow;
use secrecy::{ExposeSecret, SecretString};

use super::{principal, request, services};
use crate::service::{LoginOutcome, NewOrganization, SignedIn};
use crate::tenancy::Tenant;

/// A user of the organisation.
pub struct User(pub UserRow);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Administrators manage users and roles and hold every permission.
    async fn is_admin(&self) -> bool {
        self.0.is_admin
    }
    async fn active(&self) -> bool {
        self.0.active
    }
    /// Set after an administrator chose the password: only `me`, `changePassword` and
    /// `logout` work until the user sets their own.
    async fn must_change_password(&self) -> bool {
        self.0.must_change_password
    }
    /// Whether the user logs in with a second factor (TOTP or a recovery code).
    async fn two_factor_enabled(&self) -> bool {
        self.0.two_factor
    }
    /// The user's roles.
    async fn roles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<super::admin::Role>> {
        let pool = &super::principal(ctx)?.tenant.pool;
        let all = custos_projections::roles::roles(pool)
            .await
            .map_err(crate::error::ApiError::from)?;
        Ok(all
            .into_iter()
            .filter(|r| self.0.roles.contains(&r.id))
            .map(super::admin::Role)
            .collect())
    }
    /// What the user may do: every permission for administrators, else the union of the
    /// user's roles' grants.
    async fn permissions(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::admin::GrantObject>> {
        let grants = if self.0.is_admin {
            custos_domain::permission::all_grants()
        } else {
            let pool = &super::principal(ctx)?.tenant.pool;
            custos_projections::roles::grants_of_roles(pool, &self.0.roles)
                .await
                .map_err(crate::error::ApiError::from)?
        };
        Ok(super::admin::grant_objects(&grants))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A live session (the token itself is never shown again).
pub struct Session {
    row: crate::auth::sessions::SessionRow,
    current: bool,
}

#[Object]
impl Session {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserRef>> {
        Ok(super::load_user(ctx, self.row.user_id).await?.map(UserRef))
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
pub struct LoginEvent(logins::LoginRow);

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
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserRef>> {
        match self.0.user_id {
            Some(id) => Ok(super::load_user(ctx, id).await?.map(UserRef)),
            None => Ok(None),
        }
    }
    /// The API token, for API token entries.
    async fn api_token(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<super::security::ApiToken>> {
        match self.0.api_token_id {
            Some(id) => Ok(super::load_api_token(ctx, id)
                .await?
                .map(super::security::ApiToken)),
            None => Ok(None),
        }
    }
    /// Why a login failed: `wrong_password`, `wrong_second_factor`, `deactivated` or
    /// `locked`; why an API token was refused: `revoked` or `expired`.
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

pub type LoginConnection =
    Connection<String, LoginEvent, super::records::ConnectionTotal, EmptyFields>;

/// A user as anyone who sees their work sees them (who created or changed a record, who
/// logged in): name and email only. Roles, permissions and account state are for
/// administrators (`user`, `users`) and the user themself (`me`).
pub struct UserRef(pub UserRow);

#[Object]
impl UserRef {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
}

/// `id` if it is a user of the principal's organisation, else `NOT_FOUND` (as for another
/// organisation's id).
async fn existing_user(
    principal: &crate::auth::Principal,
    id: uuid::Uuid,
) -> Result<uuid::Uuid, ApiError> {
    custos_projections::users::user(&principal.tenant.pool, id)
        .await?
        .map(|u| u.id)
        .ok_or(ApiError::NotFound)
}

/// The organisation (tenant) a user belongs to.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Organization {
    id: ID,
    slug: String,
    name: String,
    /// The data region the organisation chose: `eu` or `us`.
    region: String,
    /// The tenant's database, for the settings (also answered right after sign-up and login).
    #[graphql(skip)]
    pool: sqlx::PgPool,
}

#[async_graphql::ComplexObject]
impl Organization {
    /// Whether every user must log in with a second factor; users without one can only
    /// enrol, change their password and log out until they have.
    async fn two_factor_required(&self) -> async_graphql::Result<bool> {
        Ok(
            custos_projections::organization::two_factor_required(&self.pool)
                .await
                .map_err(ApiError::from)?,
        )
    }
}

impl From<&Tenant> for Organization {
    fn from(tenant: &Tenant) -> Self {
        Self {
            id: ID(tenant.id.to_string()),
            slug: tenant.slug.clone(),
            name: tenant.name.clone(),
            region: tenant.region.as_str().to_owned(),
            pool: tenant.pool.clone(),
        }
    }
}

/// A new session: the bearer token is shown only here.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    tenant: Organization,
    user: User,
}

/// The answer to `login`: a session, or — for users with a second factor — a challenge to
/// complete with `completeLogin`.
#[derive(SimpleObject)]
pub struct LoginPayload {
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
pub struct SignUpInput {
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
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The user the bearer token belongs to.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        Ok(User(principal(ctx)?.user()?.clone()))
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
    ) -> async_graphql::Result<LoginConnection> {
        let principal = principal(ctx)?;
        let me = principal.user()?;
        let user = user_id
            .map(|id| super::parse_id("userId", &id))
            .transpose()?;
        let api_token = api_token_id
            .map(|id| super::parse_id("apiTokenId", &id))
            .transpose()?;
        let user = match (me.is_admin, user) {
            (true, Some(id)) => Some(existing_user(principal, id).await?),
            (true, None) => None,
            (false, None) => Some(me.id),
            (false, Some(id)) if id == me.id => Some(id),
            (false, Some(_)) => return Err(ApiError::Forbidden.into()),
        };
        let api_token = match (me.is_admin, api_token) {
            (_, None) => None,
            (true, Some(id)) => Some(
                custos_projections::api_tokens::token(&principal.tenant.pool, id)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or(ApiError::NotFound)?
                    .id,
            ),
            (false, Some(_)) => return Err(ApiError::Forbidden.into()),
        };
        let first = first.unwrap_or(20);
        if !(1..=100).contains(&first) {
            return Err(ApiError::validation("first", "`first` must be between 1 and 100").into());
        }
        let before = after
            .map(|raw| {
                super::history::decode_sequence(&raw)
                    .ok_or_else(|| ApiError::validation("after", "`after` is not a valid cursor"))
            })
            .transpose()?;
        let filter = logins::HistoryFilter {
            user,
            api_token,
            from,
            to,
        };
        let mut conn = principal
            .tenant
            .pool
            .acquire()
            .await
            .map_err(ApiError::from)?;
        let page = logins::history(&mut conn, filter, first.into(), before)
            .await
            .map_err(ApiError::from)?;
        let mut connection = Connection::with_additional_fields(
            before.is_some(),
            page.has_next_page,
            super::records::ConnectionTotal {
                total_count: page.total_count,
            },
        );
        connection.edges.extend(page.items.into_iter().map(|row| {
            Edge::new(
                super::history::encode_sequence(row.global_position),
                LoginEvent(row),
            )
        }));
        Ok(connection)
    }

    /// Live sessions, newest first: your own, or any user's for administrators.
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        user_id: Option<ID>,
    ) -> async_graphql::Result<Vec<Session>> {
        let principal = principal(ctx)?;
        let me = principal.user()?;
        let user = match user_id
            .map(|id| super::parse_id("userId", &id))
            .transpose()?
        {
            None => me.id,
            Some(id) if id == me.id => id,
            Some(id) if me.is_admin => existing_user(principal, id).await?,
            Some(_) => return Err(ApiError::Forbidden.into()),
        };
        let services = super::services(ctx)?;
        let live = crate::auth::sessions::live(&principal.tenant.pool, user, services.sessions)
            .await
            .map_err(ApiError::from)?;
        Ok(live
            .into_iter()
            .map(|row| Session {
                current: Some(row.id) == principal.session_id(),
                row,
            })
            .collect())
    }

    /// The organisation the bearer token belongs to.
    async fn organization(&self, ctx: &Context<'_>) -> async_graphql::Result<Organization> {
        Ok(Organization::from(principal(ctx)?.tenant.as_ref()))
    }
}

#[derive(Default)]
pub struct IdentityMutation;

#[Object]
impl IdentityMutation {
    /// Creates an organisation with its own database and its first administrator, and logs
    /// the administrator in.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        input: SignUpInput,
    ) -> async_graphql::Result<AuthPayload> {
        let services = services(ctx)?;
        let origin = &request(ctx)?.origin;
        let organization = NewOrganization {
            name: input.organization,
            slug: input.slug,
            region: input.region,
            admin_email: input.admin_email,
            admin_name: input.admin_name,
            password: SecretString::from(input.password),
        };
        Ok(services.sign_up(organization, origin).await?.into())
    }

    /// Logs in to the organisation `tenant` (its slug). Any failure answers the same. Users
    /// with a second factor get a challenge instead of a token: see `completeLogin`.
    async fn login(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        email: String,
        #[graphql(secret)] password: String,
    ) -> async_graphql::Result<LoginPayload> {
        let services = services(ctx)?;
        let origin = &request(ctx)?.origin;
        let outcome = services
            .login(&tenant, &email, SecretString::from(password), origin)
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
    ) -> async_graphql::Result<AuthPayload> {
        let services = services(ctx)?;
        let origin = &request(ctx)?.origin;
        Ok(services
            .complete_login(&challenge, &code, origin)
            .await?
            .into())
    }

    /// Ends every one of your sessions, this one included; answers how many ended.
    async fn logout_everywhere(&self, ctx: &Context<'_>) -> async_graphql::Result<i32> {
        let principal = principal(ctx)?;
        let ended = services(ctx)?
            .logout_everywhere(principal, request(ctx)?.origin.request_id)
            .await?;
        Ok(i32::try_from(ended).unwrap_or(i32::MAX))
    }

    /// Ends one session: one of your own, or anyone's for administrators.
    async fn end_session(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let principal = principal(ctx)?;
        let id = super::parse_id("id", &id)?;
        services(ctx)?
            .end_session(principal, id, request(ctx)?.origin.request_id)
            .await?;
        Ok(true)
    }

    /// Ends the current session.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let principal = principal(ctx)?;
        services(ctx)?
            .logout(principal, request(ctx)?.origin.request_id)
            .await?;
        Ok(true)
    }
}
