//! What a resolver works with: the request's context, which the HTTP layer attaches to every
//! GraphQL request, and [`Cx`], the one resolver context that gives the services and the
//! signed-in caller at once.

use std::sync::Arc;

use async_graphql::{Context, ID};
use custos_domain::Permission;
use custos_projections::accesses::{self, ReadVia};
use custos_projections::records::{self, RecordRow};
use uuid::Uuid;

use super::arguments::parse_id;
use crate::auth::policy::check_record;
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::identity::RequestOrigin;
use crate::service::Services;

/// What the HTTP layer attaches to each GraphQL request.
pub(crate) struct RequestContext {
    pub(crate) origin: RequestOrigin,
    /// Set when the request carried a valid bearer token.
    pub(crate) principal: Option<Principal>,
}

/// What a live subscription's connection carries: the bearer token it authenticated with
/// (checked again while a feed runs, so an ended session ends the feed). Its presence marks a
/// WebSocket connection.
pub(crate) struct SubscriptionAuth {
    pub(crate) token: String,
    pub(crate) origin: RequestOrigin,
}

/// A resolver's context for every field but the public ones: the services and the signed-in
/// caller of the request.
pub(crate) struct Cx<'a> {
    pub(crate) services: &'a Arc<Services>,
    pub(crate) caller: &'a Principal,
    pub(crate) origin: &'a RequestOrigin,
    /// The request's id: in its log span and in the metadata of every event it causes.
    pub(crate) request_id: Uuid,
}

impl<'a> Cx<'a> {
    /// The context of an authenticated request, or `UNAUTHENTICATED`.
    pub(crate) fn new(ctx: &Context<'a>) -> Result<Self, ApiError> {
        let public = PublicCx::new(ctx)?;
        let caller = ctx
            .data::<RequestContext>()
            .ok()
            .and_then(|request| request.principal.as_ref())
            .ok_or(ApiError::Unauthenticated)?;
        Ok(Self {
            services: public.services,
            caller,
            origin: public.origin,
            request_id: public.origin.request_id,
        })
    }

    /// The caller's organisation.
    pub(crate) fn tenant(&self) -> &'a Arc<Tenant> {
        &self.caller.tenant
    }
}

/// A resolver's context for the public fields (sign-up and login): the services and where the
/// request came from.
pub(crate) struct PublicCx<'a> {
    pub(crate) services: &'a Arc<Services>,
    pub(crate) origin: &'a RequestOrigin,
}

impl<'a> PublicCx<'a> {
    pub(crate) fn new(ctx: &Context<'a>) -> Result<Self, ApiError> {
        let services = ctx
            .data::<Arc<Services>>()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("schema built without services")))?;
        let request = ctx
            .data::<RequestContext>()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("request without context")))?;
        Ok(Self {
            services,
            origin: &request.origin,
        })
    }
}

impl Cx<'_> {
    /// The record `id` of any datasheet, if the caller holds `permission` on its datasheet
    /// (`FORBIDDEN` otherwise; the policy let the call in because they hold it on some
    /// datasheet).
    pub(crate) async fn authorized_record(
        &self,
        id: &ID,
        permission: Permission,
    ) -> Result<RecordRow, ApiError> {
        let id = parse_id("id", id)?;
        let row = records::record(&self.tenant().pool, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        check_record(self.caller, row.datasheet(), permission)?;
        Ok(row)
    }

    /// Records that the caller saw these records on one list page (one row for the request;
    /// each person's trail and the breach register count it as a read of each).
    pub(crate) async fn list_read(
        &self,
        conn: &mut sqlx::PgConnection,
        ids: &[Uuid],
        via: ReadVia,
    ) -> Result<(), ApiError> {
        accesses::list_read(conn, ids, self.caller.actor(), self.request_id, via).await?;
        Ok(())
    }

    /// Records that the caller read these records' data (for each person's trail and the
    /// breach register).
    pub(crate) async fn record_reads(&self, ids: &[Uuid], via: ReadVia) -> Result<(), ApiError> {
        accesses::record_reads(
            &self.tenant().pool,
            ids,
            self.caller.actor(),
            self.request_id,
            via,
        )
        .await?;
        Ok(())
    }
}
