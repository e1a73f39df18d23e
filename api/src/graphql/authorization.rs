//! The authorization policy (`auth::policy`) — who may call the field, and what the
//! organisation's standing still allows — applied to every root field before its resolver
//! runs, and WebSocket connections kept to subscriptions.

use async_graphql::extensions::{ExtensionContext, ResolveInfo};
use async_graphql::ServerResult;

use super::context::{RequestContext, SubscriptionAuth};
use super::error::root_field_error;
use crate::auth::policy::{check, check_standing, rule, Rule};
use crate::auth::principal::Principal;
use crate::error::ApiError;

/// Whether `principal` may run the subscription `field` now (checked again while it runs).
pub(crate) fn may_subscribe(field: &str, principal: &Principal) -> Result<(), ApiError> {
    check(rule("Subscription", field), Some(principal))?;
    check_standing("Subscription", field, principal)
}

/// Applies the policy to the root field `info` before its resolver runs (a [`super::hooks`]
/// step; the caller passes root fields only): `FORBIDDEN`, `UNAUTHENTICATED` or the
/// organisation's standing as the field's error, and a denial logged as a security event.
pub(crate) fn authorize(ctx: &ExtensionContext<'_>, info: &ResolveInfo<'_>) -> ServerResult<()> {
    let principal = ctx
        .data_opt::<RequestContext>()
        .and_then(|r| r.principal.as_ref());
    // A WebSocket connection authenticates once, at its start: it serves subscriptions
    // only (which re-check their session), never queries or mutations.
    let over_websocket = ctx.data_opt::<SubscriptionAuth>().is_some();
    let decision = if over_websocket && info.parent_type != "Subscription" {
        Err(ApiError::validation(
            "operation",
            "only subscriptions are served over WebSocket: send queries and mutations to POST /graphql",
        ))
    } else {
        let rule = rule(info.parent_type, info.name);
        check(rule, principal).and_then(|()| match principal {
            Some(principal) if rule != Some(Rule::Public) => {
                check_standing(info.parent_type, info.name, principal)
            }
            _ => Ok(()),
        })
    };
    if let Err(err) = decision {
        if matches!(err, ApiError::Forbidden | ApiError::Denied(_)) {
            tracing::warn!(
                tenant.id = ?principal.map(|p| p.tenant.id),
                actor.id = ?principal.map(|p| p.actor().id()),
                graphql.field = info.name,
                "security: access denied"
            );
        }
        return Err(root_field_error(info, err));
    }
    Ok(())
}
