//! User and role administration (administrators only; see `auth::policy`), and self-service.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, InputObject, Object, ID};
use custos_domain::{Grant, Grants};
use custos_projections::roles;
use custos_projections::users;
use secrecy::SecretString;

use crate::error::ApiError;
use crate::graphql::arguments::{parse_id, parse_ids};
use crate::graphql::context::Cx;
use crate::graphql::pagination::{id_connection, page_args, ConnectionTotal};
use crate::graphql::types::role::{GrantObject, Role};
use crate::graphql::types::user::User;
use crate::service::admin::{NewUser, UserChanges};

#[derive(InputObject)]
pub(crate) struct CreateUserInput {
    email: String,
    name: String,
    /// A temporary password (at least 12 characters) the user must replace at first login.
    #[graphql(secret)]
    temporary_password: String,
    #[graphql(default)]
    role_ids: Vec<ID>,
    #[graphql(default)]
    administrator: bool,
}

#[derive(InputObject)]
pub(crate) struct UpdateUserInput {
    name: Option<String>,
    email: Option<String>,
    /// Replaces the user's roles.
    role_ids: Option<Vec<ID>>,
}

#[derive(InputObject)]
pub(crate) struct CreateRoleInput {
    name: String,
    #[graphql(default)]
    grants: Vec<GrantObject>,
}

pub(crate) type UserConnection = Connection<String, User, ConnectionTotal, EmptyFields>;

#[derive(Default)]
pub(crate) struct AdminQuery;

#[Object]
impl AdminQuery {
    /// The organisation's users in creation order.
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        include_deactivated: Option<bool>,
    ) -> Result<UserConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let (first, after) = page_args(first, after)?;
        let mut conn = cx.tenant().pool.acquire().await?;
        let page = users::users_page(
            &mut conn,
            first,
            after,
            include_deactivated.unwrap_or(false),
        )
        .await?;
        Ok(id_connection(page, after, |row| row.id, User))
    }

    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let row = users::user(&cx.tenant().pool, id).await?;
        Ok(User(row.ok_or(ApiError::NotFound)?))
    }

    /// Every role, by name.
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<Role>, ApiError> {
        let cx = Cx::new(ctx)?;
        let rows = roles::roles(&cx.tenant().pool).await?;
        Ok(rows.into_iter().map(Role).collect())
    }

    async fn role(&self, ctx: &Context<'_>, id: ID) -> Result<Role, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let row = roles::role(&cx.tenant().pool, id).await?;
        Ok(Role(row.ok_or(ApiError::NotFound)?))
    }
}

#[derive(Default)]
pub(crate) struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Creates a user with a temporary password they must change at first login.
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInput,
    ) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let new = NewUser {
            email: input.email,
            name: input.name,
            password: SecretString::from(input.temporary_password),
            roles: parse_ids("roleIds", &input.role_ids)?,
            administrator: input.administrator,
        };
        Ok(User(
            cx.services
                .create_user(cx.caller, new, cx.request_id)
                .await?,
        ))
    }

    /// Changes a user's name, email or roles, all or nothing.
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateUserInput,
    ) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let changes = UserChanges {
            name: input.name,
            email: input.email,
            roles: input
                .role_ids
                .map(|r| parse_ids("roleIds", &r))
                .transpose()?,
        };
        Ok(User(
            cx.services
                .update_user(cx.caller, id, changes, cx.request_id)
                .await?,
        ))
    }

    /// Deactivates a user: they cannot log in and their sessions end.
    async fn deactivate_user(&self, ctx: &Context<'_>, id: ID) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(User(
            cx.services
                .deactivate_user(cx.caller, id, cx.request_id)
                .await?,
        ))
    }

    /// Erases a deactivated user's personal data for good (GDPR Art. 17): their name, email,
    /// password and login origins become unreadable everywhere; the id remains in history.
    async fn erase_user(&self, ctx: &Context<'_>, id: ID) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(User(
            cx.services.erase_user(cx.caller, id, cx.request_id).await?,
        ))
    }

    async fn reactivate_user(&self, ctx: &Context<'_>, id: ID) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(User(
            cx.services
                .reactivate_user(cx.caller, id, cx.request_id)
                .await?,
        ))
    }

    /// Sets a temporary password the user must replace at next login; their sessions end.
    async fn reset_user_password(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(secret)] temporary_password: String,
    ) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let password = SecretString::from(temporary_password);
        Ok(User(
            cx.services
                .reset_password(cx.caller, id, password, cx.request_id)
                .await?,
        ))
    }

    /// Lifts a lock on a user's logins (after repeated failures) before it expires.
    async fn unlock_user(&self, ctx: &Context<'_>, id: ID) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(User(
            cx.services
                .unlock_user(cx.caller, id, cx.request_id)
                .await?,
        ))
    }

    /// Makes a user an administrator, or not. The last active administrator stays one.
    async fn set_administrator(
        &self,
        ctx: &Context<'_>,
        id: ID,
        administrator: bool,
    ) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let request_id = cx.request_id;
        Ok(User(
            cx.services
                .set_administrator(cx.caller, id, administrator, request_id)
                .await?,
        ))
    }

    async fn create_role(
        &self,
        ctx: &Context<'_>,
        input: CreateRoleInput,
    ) -> Result<Role, ApiError> {
        let cx = Cx::new(ctx)?;
        let grants: Grants = input.grants.into_iter().map(Grant::from).collect();
        let request_id = cx.request_id;
        Ok(Role(
            cx.services
                .create_role(cx.caller, &input.name, grants, request_id)
                .await?,
        ))
    }

    async fn rename_role(&self, ctx: &Context<'_>, id: ID, name: String) -> Result<Role, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(Role(
            cx.services
                .rename_role(cx.caller, id, &name, cx.request_id)
                .await?,
        ))
    }

    async fn grant_permission(
        &self,
        ctx: &Context<'_>,
        role_id: ID,
        grant: GrantObject,
    ) -> Result<Role, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("roleId", &role_id)?;
        let request_id = cx.request_id;
        Ok(Role(
            cx.services
                .set_grant(cx.caller, id, grant.into(), true, request_id)
                .await?,
        ))
    }

    async fn revoke_permission(
        &self,
        ctx: &Context<'_>,
        role_id: ID,
        grant: GrantObject,
    ) -> Result<Role, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("roleId", &role_id)?;
        let request_id = cx.request_id;
        Ok(Role(
            cx.services
                .set_grant(cx.caller, id, grant.into(), false, request_id)
                .await?,
        ))
    }

    /// Deletes a role; while users hold it, `reassignTo` must name the role they get instead.
    async fn delete_role(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reassign_to: Option<ID>,
    ) -> Result<bool, ApiError> {
        let cx = Cx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let reassign_to = reassign_to
            .map(|r| parse_id("reassignTo", &r))
            .transpose()?;
        let request_id = cx.request_id;
        cx.services
            .delete_role(cx.caller, id, reassign_to, request_id)
            .await?;
        Ok(true)
    }

    /// Changes your own password; your other sessions end.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] current_password: String,
        #[graphql(secret)] new_password: String,
    ) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let origin = cx.origin;
        let (current, new) = (
            SecretString::from(current_password),
            SecretString::from(new_password),
        );
        Ok(User(
            cx.services
                .change_password(cx.caller, current, new, origin)
                .await?,
        ))
    }

    /// Changes your own name.
    async fn update_me(&self, ctx: &Context<'_>, name: String) -> Result<User, ApiError> {
        let cx = Cx::new(ctx)?;
        let request_id = cx.request_id;
        Ok(User(
            cx.services.update_me(cx.caller, name, request_id).await?,
        ))
    }
}
