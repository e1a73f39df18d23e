//! Roles and the grants they hold.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::{Grant, Grants};
use custos_projections::roles::{self, RoleRow};

use super::enums::{DatasheetKind, PermissionKind};
use crate::error::ApiError;
use crate::graphql::context::Cx;

/// A permission on a datasheet.
#[derive(SimpleObject, InputObject, Clone, Copy)]
#[graphql(input_name = "GrantInput", name = "Grant")]
pub(crate) struct GrantObject {
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
pub(crate) struct Role(pub(crate) RoleRow);

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
    async fn grants(&self, ctx: &Context<'_>) -> Result<Vec<GrantObject>, ApiError> {
        let grants = roles::grants_of_role(&Cx::new(ctx)?.tenant().pool, self.0.id).await?;
        Ok(grant_objects(&grants))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}
