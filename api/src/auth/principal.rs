//! Who a request acts as: a user through one session, or an integration through an API token,
//! within one tenant.

use std::sync::Arc;

use custos_domain::{Actor, Grants};
use custos_projections::api_tokens::ApiTokenRow;
use custos_projections::users::UserRow;
use uuid::Uuid;

use crate::error::ApiError;
use crate::infra::tenancy::tenant::Tenant;

/// Who a request acts as, within one tenant.
#[derive(Clone)]
pub(crate) struct Principal {
    pub tenant: Arc<Tenant>,
    pub subject: Subject,
    /// The grants of the user's roles (administrators hold every permission anyway) or of the
    /// API token's role.
    pub grants: Grants,
    /// Whether the organisation requires users to log in with a second factor.
    pub two_factor_required: bool,
}

/// The user or integration behind a principal.
#[derive(Clone)]
pub(crate) enum Subject {
    /// A user, through one session.
    User { user: UserRow, session_id: Uuid },
    /// An integration, through an API token: never an administrator, never a user.
    ApiToken(ApiTokenRow),
}

impl Principal {
    /// Who events caused by this principal are attributed to.
    pub(crate) fn actor(&self) -> Actor {
        match &self.subject {
            Subject::User { user, .. } => Actor::User(user.id),
            Subject::ApiToken(token) => Actor::ApiToken(token.id),
        }
    }

    /// The signed-in user; API tokens may not use what needs one.
    pub(crate) fn user(&self) -> Result<&UserRow, ApiError> {
        match &self.subject {
            Subject::User { user, .. } => Ok(user),
            Subject::ApiToken(_) => Err(ApiError::Forbidden),
        }
    }

    /// The session the request came with, for users.
    pub(crate) fn session_id(&self) -> Option<Uuid> {
        match &self.subject {
            Subject::User { session_id, .. } => Some(*session_id),
            Subject::ApiToken(_) => None,
        }
    }

    pub(crate) fn is_admin(&self) -> bool {
        matches!(&self.subject, Subject::User { user, .. } if user.is_admin)
    }
}
