//! Users as the API shows them: whole to administrators and to themselves ([`User`]), by
//! name and email to anyone who sees their work ([`UserRef`]).

use async_graphql::{Context, Object, ID};
use chrono::{DateTime, Utc};
use custos_projections::roles;
use custos_projections::users::UserRow;

use super::role::{grant_objects, GrantObject, Role};
use crate::error::ApiError;
use crate::graphql::context::Cx;

/// A user of the organisation.
pub(crate) struct User(pub(crate) UserRow);

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
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<Role>, ApiError> {
        let all = roles::roles(&Cx::new(ctx)?.tenant().pool).await?;
        Ok(all
            .into_iter()
            .filter(|r| self.0.roles.contains(&r.id))
            .map(Role)
            .collect())
    }
    /// What the user may do: every permission for administrators, else the union of the
    /// user's roles' grants.
    async fn permissions(&self, ctx: &Context<'_>) -> Result<Vec<GrantObject>, ApiError> {
        let grants = if self.0.is_admin {
            custos_domain::permission::all_grants()
        } else {
            roles::grants_of_roles(&Cx::new(ctx)?.tenant().pool, &self.0.roles).await?
        };
        Ok(grant_objects(&grants))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A user as anyone who sees their work sees them (who created or changed a record, who
/// logged in): name and email only. Roles, permissions and account state are for
/// administrators (`user`, `users`) and the user themself (`me`).
pub(crate) struct UserRef(pub(crate) UserRow);

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
