//! Sign-up, login, logout and the current user.

use async_graphql::{Context, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_projections::users::UserRow;
use secrecy::{ExposeSecret, SecretString};

use super::{principal, request, services};
use crate::service::{NewOrganization, SignedIn};
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

/// The organisation (tenant) a user belongs to.
#[derive(SimpleObject)]
pub struct Organization {
    id: ID,
    slug: String,
    name: String,
    /// The data region the organisation chose: `eu` or `us`.
    region: String,
}

impl From<&Tenant> for Organization {
    fn from(tenant: &Tenant) -> Self {
        Self {
            id: ID(tenant.id.to_string()),
            slug: tenant.slug.clone(),
            name: tenant.name.clone(),
            region: tenant.region.as_str().to_owned(),
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
        Ok(User(principal(ctx)?.user.clone()))
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

    /// Logs in to the organisation `tenant` (its slug). Any failure answers the same.
    async fn login(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        email: String,
        #[graphql(secret)] password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let services = services(ctx)?;
        let origin = &request(ctx)?.origin;
        let signed_in = services
            .login(&tenant, &email, SecretString::from(password), origin)
            .await?;
        Ok(signed_in.into())
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
