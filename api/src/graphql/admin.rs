//! User and role administration (administrators only; see `authz`), and self-service.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::{Grant, Grants, Permission};
use custos_projections::roles::{self, RoleRow};
use custos_projections::users;
use secrecy::SecretString;
use uuid::Uuid;

use super::identity::User;
use super::records::{ConnectionTotal, DatasheetKind};
use super::{id_connection, page_args, parse_id, principal, request, services};
use crate::error::ApiError;

/// What a role lets its users do with a datasheet.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Permission")]
pub enum PermissionKind {
    Read,
    Create,
    Update,
    Archive,
    Erase,
    Export,
    History,
    Report,
}

impl From<Permission> for PermissionKind {
    fn from(p: Permission) -> Self {
        match p {
            Permission::Read => Self::Read,
            Permission::Create => Self::Create,
            Permission::Update => Self::Update,
            Permission::Archive => Self::Archive,
            Permission::Erase => Self::Erase,
            Permission::Export => Self::Export,
            Permission::History => Self::History,
            Permission::Report => Self::Report,
        }
    }
}

impl From<PermissionKind> for Permission {
    fn from(p: PermissionKind) -> Self {
        match p {
            PermissionKind::Read => Self::Read,
            PermissionKind::Create => Self::Create,
            PermissionKind::Update => Self::Update,
            PermissionKind::Archive => Self::Archive,
            PermissionKind::Erase => Self::Erase,
            PermissionKind::Export => Self::Export,
            PermissionKind::History => Self::History,
            PermissionKind::Report => Self::Report,
        }
    }
}

/// A permission on a datasheet.
#[derive(SimpleObject, InputObject, Clone, Copy)]
#[graphql(input_name = "GrantInput", name = "Grant")]
pub struct GrantObject {
    datasheet: DatasheetKind,
    permission: PermissionKind,
}

impl From<Grant> for GrantObject {
    fn from(g: Grant) -> Self {
        Self {
            datasheet: g.datasheet.into(),
            permission: g.permission.into(),
        }
    }
}

impl From<GrantObject> for Grant {
    fn from(g: GrantObject) -> Self {
        Grant::new(g.datasheet.into(), g.permission.into())
    }
}

pub(crate) fn grant_objects(grants: &Grants) -> Vec<GrantObject> {
    grants.iter().copied().map(GrantObject::from).collect()
}

/// A named set of permissions assigned to users.
pub struct Role(pub RoleRow);

#[Object]
impl Role {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn version(&self) -> i64 {
        self.0.version
    }
    async fn grants(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<GrantObject>> {
        let grants = roles::grants_of_role(&principal(ctx)?.tenant.pool, self.0.id)
            .await
            .map_err(ApiError::from)?;
        Ok(grant_objects(&grants))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(InputObject)]
pub struct CreateUserInput {
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
pub struct UpdateUserInput {
    name: Option<String>,
    email: Option<String>,
    /// Replaces the user's roles.
    role_ids: Option<Vec<ID>>,
}

#[derive(InputObject)]
pub struct CreateRoleInput {
    name: String,
    #[graphql(default)]
    grants: Vec<GrantObject>,
}

fn ids(field: &str, raw: &[ID]) -> Result<Vec<Uuid>, ApiError> {
    raw.iter().map(|id| parse_id(field, id)).collect()
}

pub type UserConnection = Connection<String, User, ConnectionTotal, EmptyFields>;

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// The organisation's users in creation order.
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        include_deactivated: Option<bool>,
    ) -> async_graphql::Result<UserConnection> {
        let principal = principal(ctx)?;
        let (first, after) = page_args(first, after)?;
        let mut conn = principal
            .tenant
            .pool
            .acquire()
            .await
            .map_err(ApiError::from)?;
        let page = users::users_page(
            &mut conn,
            first,
            after,
            include_deactivated.unwrap_or(false),
        )
        .await
        .map_err(ApiError::from)?;
        Ok(id_connection(page, after, |row| row.id, User))
    }

    async fn user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<User> {
        let principal = principal(ctx)?;
        let id = parse_id("id", &id)?;
        let row = users::user(&principal.tenant.pool, id)
            .await
            .map_err(ApiError::from)?;
        Ok(User(row.ok_or(ApiError::NotFound)?))
    }

    /// Every role, by name.
    async fn roles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Role>> {
        let principal = principal(ctx)?;
        let rows = roles::roles(&principal.tenant.pool)
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(Role).collect())
    }

    async fn role(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Role> {
        let principal = principal(ctx)?;
        let id = parse_id("id", &id)?;
        let row = roles::role(&principal.tenant.pool, id)
            .await
            .map_err(ApiError::from)?;
        Ok(Role(row.ok_or(ApiError::NotFound)?))
    }
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Creates a user with a temporary password they must change at first login.
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInput,
    ) -> async_graphql::Result<User> {
        let principal = principal(ctx)?;
        let new = crate::service::NewUser {
            email: input.email,
            name: input.name,
            password: SecretString::from(input.temporary_password),
            roles: ids("roleIds", &input.role_ids)?,
            administrator: input.administrator,
        };
        Ok(User(
            services(ctx)?
                .create_user(principal, new, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    /// Changes a user's name, email or roles, all or nothing.
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateUserInput,
    ) -> async_graphql::Result<User> {
        let principal = principal(ctx)?;
        let id = parse_id("id", &id)?;
        let changes = crate::service::UserChanges {
            name: input.name,
            email: input.email,
            roles: input.role_ids.map(|r| ids("roleIds", &r)).transpose()?,
        };
        Ok(User(
            services(ctx)?
                .update_user(principal, id, changes, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    /// Deactivates a user: they cannot log in and their sessions end.
    async fn deactivate_user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<User> {
        let id = parse_id("id", &id)?;
        Ok(User(
            services(ctx)?
                .deactivate_user(principal(ctx)?, id, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    /// Erases a deactivated user's personal data for good (GDPR Art. 17): their name, email,
    /// password and login origins become unreadable everywhere; the id remains in history.
    async fn erase_user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<User> {
        let id = parse_id("id", &id)?;
        Ok(User(
            services(ctx)?
                .erase_user(principal(ctx)?, id, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    async fn reactivate_user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<User> {
        let id = parse_id("id", &id)?;
        Ok(User(
            services(ctx)?
                .reactivate_user(principal(ctx)?, id, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    /// Sets a temporary password the user must replace at next login; their sessions end.
    async fn reset_user_password(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(secret)] temporary_password: String,
    ) -> async_graphql::Result<User> {
        let id = parse_id("id", &id)?;
        let password = SecretString::from(temporary_password);
        Ok(User(
            services(ctx)?
                .reset_password(
                    principal(ctx)?,
                    id,
                    password,
                    request(ctx)?.origin.request_id,
                )
                .await?,
        ))
    }

    /// Lifts a lock on a user's logins (after repeated failures) before it expires.
    async fn unlock_user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<User> {
        let id = parse_id("id", &id)?;
        Ok(User(
            services(ctx)?
                .unlock_user(principal(ctx)?, id, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    /// Makes a user an administrator, or not. The last active administrator stays one.
    async fn set_administrator(
        &self,
        ctx: &Context<'_>,
        id: ID,
        administrator: bool,
    ) -> async_graphql::Result<User> {
        let id = parse_id("id", &id)?;
        let request_id = request(ctx)?.origin.request_id;
        Ok(User(
            services(ctx)?
                .set_administrator(principal(ctx)?, id, administrator, request_id)
                .await?,
        ))
    }

    async fn create_role(
        &self,
        ctx: &Context<'_>,
        input: CreateRoleInput,
    ) -> async_graphql::Result<Role> {
        let grants: Grants = input.grants.into_iter().map(Grant::from).collect();
        let request_id = request(ctx)?.origin.request_id;
        Ok(Role(
            services(ctx)?
                .create_role(principal(ctx)?, &input.name, grants, request_id)
                .await?,
        ))
    }

    async fn rename_role(
        &self,
        ctx: &Context<'_>,
        id: ID,
        name: String,
    ) -> async_graphql::Result<Role> {
        let id = parse_id("id", &id)?;
        Ok(Role(
            services(ctx)?
                .rename_role(principal(ctx)?, id, &name, request(ctx)?.origin.request_id)
                .await?,
        ))
    }

    async fn grant_permission(
        &self,
        ctx: &Context<'_>,
        role_id: ID,
        grant: GrantObject,
    ) -> async_graphql::Result<Role> {
        let id = parse_id("roleId", &role_id)?;
        let request_id = request(ctx)?.origin.request_id;
        Ok(Role(
            services(ctx)?
                .set_grant(principal(ctx)?, id, grant.into(), true, request_id)
                .await?,
        ))
    }

    async fn revoke_permission(
        &self,
        ctx: &Context<'_>,
        role_id: ID,
        grant: GrantObject,
    ) -> async_graphql::Result<Role> {
        let id = parse_id("roleId", &role_id)?;
        let request_id = request(ctx)?.origin.request_id;
        Ok(Role(
            services(ctx)?
                .set_grant(principal(ctx)?, id, grant.into(), false, request_id)
                .await?,
        ))
    }

    /// Deletes a role; while users hold it, `reassignTo` must name the role they get instead.
    async fn delete_role(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reassign_to: Option<ID>,
    ) -> async_graphql::Result<bool> {
        let id = parse_id("id", &id)?;
        let reassign_to = reassign_to
            .map(|r| parse_id("reassignTo", &r))
            .transpose()?;
        let request_id = request(ctx)?.origin.request_id;
        services(ctx)?
            .delete_role(principal(ctx)?, id, reassign_to, request_id)
            .await?;
        Ok(true)
    }

    /// Changes your own password; your other sessions end.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] current_password: String,
        #[graphql(secret)] new_password: String,
    ) -> async_graphql::Result<User> {
        let origin = &request(ctx)?.origin;
        let (current, new) = (
            SecretString::from(current_password),
            SecretString::from(new_password),
        );
        Ok(User(
            services(ctx)?
                .change_password(principal(ctx)?, current, new, origin)
                .await?,
        ))
    }

    /// Changes your own name.
    async fn update_me(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<User> {
        let request_id = request(ctx)?.origin.request_id;
        Ok(User(
            services(ctx)?
                .update_me(principal(ctx)?, name, request_id)
                .await?,
        ))
    }
}
