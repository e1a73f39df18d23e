//! Read-your-writes for changes answered before the read models show them: a mutation whose
//! answer reads nothing of the read models (`WRITTEN_FIELDS`) does not wait for them, so every
//! other root field of the organisation waits, before it runs, until they show every such
//! change this instance answered, and the position a client passes back in `Custos-After` (a
//! change answered by another instance). A request's own deferred change is returned in the
//! response's `extensions.position`. Subscriptions are left alone (their root field is
//! resolved again for every event sent): their resolvers wait once, before their feeds start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{ExtensionContext, ResolveInfo};
use async_graphql::ServerResult;

use super::context::RequestContext;
use super::error::root_field_error;
use crate::infra::event_store::log::Position;
use crate::service::Services;

/// The mutations that may answer before the read models show their change: they decide on
/// the aggregate alone, and wait for the read models themselves when their answer reads them.
pub(crate) const DEFERRING: [&str; 6] = [
    "createEmployee",
    "updateEmployee",
    "createContact",
    "updateContact",
    "createApplicant",
    "updateApplicant",
];

/// What one request carries about positions: the one its client passed (`Custos-After`), and
/// the newest change it answered without waiting for the read models.
#[derive(Debug, Default)]
pub(crate) struct Consistency {
    pub(crate) after: Option<Position>,
    written: Mutex<Option<Position>>,
    /// Whether a root field ran.
    ran: AtomicBool,
    /// Whether a root field was held back: the read models did not show what it waited for.
    held_back: AtomicBool,
}

impl Consistency {
    pub(crate) fn after(after: Option<Position>) -> Self {
        Self {
            after,
            ..Self::default()
        }
    }

    /// Whether nothing of the request ran because the read models did not show what it
    /// waited for (so a retry-safe mutation's key is let go, not kept with this answer).
    pub(crate) fn held_back_entirely(&self) -> bool {
        self.held_back.load(Ordering::Relaxed) && !self.ran.load(Ordering::Relaxed)
    }

    /// Notes a change the request answered without waiting for the read models.
    pub(crate) fn wrote(&self, position: Position) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        *written = Some(written.map_or(position, |w| w.max(position)));
    }

    /// The newest change the request answered without waiting for the read models.
    pub(crate) fn written(&self) -> Option<Position> {
        *self.written.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The position the request's client passed (`Custos-After`, or a subscription's
/// `extensions.custosAfter`), for a resolver that waits itself.
pub(crate) fn passed_after(ctx: &async_graphql::Context<'_>) -> Option<Position> {
    ctx.data_opt::<Arc<Consistency>>()
        .and_then(|consistency| consistency.after)
}

/// Makes the root field `info` wait, before its resolver runs, for the deferred changes it
/// must see (a [`super::hooks`] step; the caller passes root fields only).
pub(crate) async fn wait(ctx: &ExtensionContext<'_>, info: &ResolveInfo<'_>) -> ServerResult<()> {
    // A subscription's root field is resolved again for every event it sends: its
    // resolver waits once, as it starts.
    let exempt = info.parent_type == "Subscription"
        || info.parent_type == "Mutation" && DEFERRING.contains(&info.name);
    let consistency = ctx.data_opt::<Arc<Consistency>>();
    if !exempt {
        let principal = ctx
            .data_opt::<RequestContext>()
            .and_then(|request| request.principal.as_ref());
        let services = ctx.data_opt::<Arc<Services>>();
        if let (Some(principal), Some(services)) = (principal, services) {
            let after = consistency.and_then(|consistency| consistency.after);
            services
                .wait_for_deferred(&principal.tenant, after)
                .await
                .map_err(|err| {
                    if let Some(consistency) = consistency {
                        consistency.held_back.store(true, Ordering::Relaxed);
                    }
                    root_field_error(info, err)
                })?;
        }
    }
    if let Some(consistency) = consistency {
        consistency.ran.store(true, Ordering::Relaxed);
    }
    Ok(())
}
