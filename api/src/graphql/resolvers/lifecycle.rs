//! The organisation's administrators choose its plan, cancel its subscription and withdraw a
//! cancellation (its standing and dates are fields of `organization`).

use async_graphql::{Context, Object};

use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::types::enums::PlanKind;
use crate::graphql::types::organization::Organization;

#[derive(Default)]
pub(crate) struct SubscriptionMutation;

#[Object]
impl SubscriptionMutation {
    /// Chooses a plan: ends a trial (also one that ended, until its data is deleted) with
    /// every record kept, or changes the plan. Administrators only.
    async fn choose_plan(
        &self,
        ctx: &Context<'_>,
        plan: PlanKind,
    ) -> Result<Organization, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services.choose_plan(cx.caller, plan.into()).await?;
        Ok(Organization::from(cx.tenant().as_ref()))
    }

    /// Cancels the subscription with a month's notice from the first day of the following
    /// month: served in full until `cancellationEffectiveAt`, then administrators may read and
    /// export until `migrationAccessUntil`, then everything is deleted. Administrators only.
    async fn cancel_subscription(&self, ctx: &Context<'_>) -> Result<Organization, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services.cancel_subscription(cx.caller).await?;
        Ok(Organization::from(cx.tenant().as_ref()))
    }

    /// Withdraws a cancellation before it takes effect. Administrators only.
    async fn withdraw_cancellation(&self, ctx: &Context<'_>) -> Result<Organization, ApiError> {
        let cx = Cx::new(ctx)?;
        cx.services.withdraw_cancellation(cx.caller).await?;
        Ok(Organization::from(cx.tenant().as_ref()))
    }
}
