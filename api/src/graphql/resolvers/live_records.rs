//! Live records for frontends: `recordChanged`, every change of the records a subscriber may
//! read, as the read model shows it (`infra::record_feed` reads them once per organisation).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_graphql::{Context, Enum, Object, ID};
use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, Permission};
use custos_projections::accesses::ReadVia;
use custos_projections::records;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::auth::policy::{check, check_datasheet, check_standing, rule};
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::graphql::arguments::parse_id;
use crate::graphql::consistency::passed_after;
use crate::graphql::context::{Cx, SubscriptionAuth};
use crate::graphql::types::enums::DatasheetKind;
use crate::graphql::types::records::RecordNode;
use crate::infra::record_feed::{Batch, RecordChange};
use crate::service::identity::RequestOrigin;
use crate::service::Services;

/// The most record ids one subscription may follow.
const MAX_IDS: usize = 100;

/// How a record changed.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(
    name = "RecordChangeKind",
    remote = "crate::infra::record_feed::ChangeKind"
)]
pub(crate) enum RecordChangeKindValue {
    Created,
    Updated,
    Archived,
    Restored,
    /// An applicant was hired (the new employee record is `CREATED` on its own).
    Hired,
    Restricted,
    RestrictionLifted,
    /// Its personal data was erased: `record` is null from now on.
    Erased,
    /// A change scheduled for a later day was cancelled (`version`: the cancellation's).
    ScheduledChangeCancelled,
    /// A change scheduled for a later day took effect on its day: `version` is the version it
    /// was recorded at (its `pendingChanges` entry, gone now), `at` when it took effect.
    ScheduledChangeTookEffect,
}

/// One change of a record: which, how, and its version after it; sent to `principal` as the
/// subscriber's session stands now (not as it stood when it subscribed).
pub(crate) struct RecordChangeNode(RecordChange, Arc<Principal>);

#[Object(name = "RecordChange")]
impl RecordChangeNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn datasheet(&self) -> DatasheetKind {
        self.0.datasheet.into()
    }

    async fn change(&self) -> RecordChangeKindValue {
        self.0.kind.into()
    }

    /// The record's version after the change (for `SCHEDULED_CHANGE_TOOK_EFFECT`, the version
    /// the change was recorded at).
    async fn version(&self) -> i64 {
        self.0.version
    }

    /// When the change was recorded (for `SCHEDULED_CHANGE_TOOK_EFFECT`, when it took effect).
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }

    /// The record as it is when this is sent (the change's state or a later one); null once
    /// erased. Reading it is recorded like any read of the record.
    async fn record(&self, ctx: &Context<'_>) -> Result<Option<RecordNode>, ApiError> {
        let cx = Cx::new(ctx)?;
        let Some(row) = records::records_by_id(&cx.tenant().pool, &[self.0.id])
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let readable = |principal: &Principal| principal.may(row.datasheet(), Permission::Read);
        if row.erased_at.is_some() || !readable(&self.1) || !readable(cx.caller) {
            return Ok(None);
        }
        cx.record_reads(&[row.id], ReadVia::Subscription).await?;
        Ok(Some(row.into()))
    }
}

/// `recordChanged` (a root field of `graphql::Subscription`): every change of the records the
/// caller may read, narrowed to `datasheet` and `ids`.
pub(crate) async fn record_changed(
    ctx: &Context<'_>,
    datasheet: Option<DatasheetKind>,
    ids: Option<Vec<ID>>,
) -> Result<impl Stream<Item = async_graphql::Result<RecordChangeNode>>, ApiError> {
    let cx = Cx::new(ctx)?;
    // A subscription's root field is not resolved through the authorization extension: its
    // rule and the organisation's standing are checked here.
    check(rule("Subscription", "recordChanged"), Some(cx.caller))?;
    check_standing("Subscription", "recordChanged", cx.caller)?;
    let datasheet: Option<Datasheet> = datasheet.map(Into::into);
    if let Some(datasheet) = datasheet {
        check_datasheet(cx.caller, datasheet, Permission::Read)?;
    }
    let ids = match ids {
        None => None,
        Some(ids) if ids.len() > MAX_IDS => {
            return Err(ApiError::validation(
                "ids",
                format!("at most {MAX_IDS} ids"),
            ))
        }
        Some(ids) => Some(
            ids.iter()
                .map(|id| parse_id("ids", id))
                .collect::<Result<HashSet<Uuid>, _>>()?,
        ),
    };
    let auth = ctx
        .data::<SubscriptionAuth>()
        .map_err(|_| ApiError::Unauthenticated)?;
    let tenant = cx.tenant();
    // The feed starts from what the lists show, once they show every change answered before,
    // here and at the position the client passed (the consistency extension leaves
    // subscriptions alone).
    cx.services
        .wait_for_deferred(tenant, passed_after(ctx))
        .await?;
    let sessions = tenant.caches.session_changes();
    let changes = tenant
        .record_feed
        .subscribe()
        .await
        .ok_or(ApiError::Unavailable)?;
    let live = Live {
        services: cx.services.clone(),
        principal: Arc::new(cx.caller.clone()),
        token: auth.token.clone(),
        origin: auth.origin.clone(),
        sessions,
        changes,
        queue: VecDeque::new(),
        datasheet,
        ids,
    };
    Ok(futures::stream::unfold(Some(live), |live| async move {
        let mut live = live?;
        match live.next().await {
            Some(Ok(change)) => {
                let principal = live.principal.clone();
                Some((Ok(RecordChangeNode(change, principal)), Some(live)))
            }
            // The error is sent, then the subscription ends.
            Some(Err(err)) => Some((Err(err.into()), None)),
            None => None,
        }
    }))
}

/// One subscriber's place in its organisation's record feed.
struct Live {
    services: Arc<Services>,
    /// The subscriber as of the session's last change.
    principal: Arc<Principal>,
    token: String,
    origin: RequestOrigin,
    sessions: tokio::sync::watch::Receiver<u64>,
    changes: tokio::sync::broadcast::Receiver<Batch>,
    queue: VecDeque<RecordChange>,
    datasheet: Option<Datasheet>,
    ids: Option<HashSet<Uuid>>,
}

impl Live {
    /// The next change this subscriber is sent; `None` when the subscription ends.
    async fn next(&mut self) -> Option<Result<RecordChange, ApiError>> {
        loop {
            while let Some(change) = self.queue.pop_front() {
                if self.wants(&change) {
                    return Some(Ok(change));
                }
            }
            tokio::select! {
                batch = self.changes.recv() => match batch {
                    Ok(batch) => self.queue.extend(batch.iter().cloned()),
                    Err(RecvError::Lagged(missed)) => {
                        return Some(Err(ApiError::Conflict(format!(
                            "this subscriber fell behind and missed {missed} batches of changes: \
                             read the records again and subscribe again"
                        ))))
                    }
                    // The reader stopped (the organisation's context closed).
                    Err(RecvError::Closed) => return Some(Err(ApiError::Unavailable)),
                },
                changed = self.sessions.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    match self.recheck().await {
                        Ok(true) => {}
                        Ok(false) => return None,
                        // Not known whether the subscriber may still read what it is sent:
                        // it ends, and may subscribe again.
                        Err(err) => return Some(Err(err)),
                    }
                }
            }
        }
    }

    fn wants(&self, change: &RecordChange) -> bool {
        self.datasheet
            .is_none_or(|datasheet| datasheet == change.datasheet)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&change.id))
            && self.principal.may(change.datasheet, Permission::Read)
    }

    /// Reads the session again after a change to sessions, users or roles: `false` if it
    /// ended or may no longer subscribe; an error if it could not be read.
    async fn recheck(&mut self) -> Result<bool, ApiError> {
        match self.services.authenticate(&self.token, &self.origin).await {
            Ok(Some(principal))
                if principal.tenant.id == self.principal.tenant.id
                    && check(rule("Subscription", "recordChanged"), Some(&principal)).is_ok()
                    && check_standing("Subscription", "recordChanged", &principal).is_ok() =>
            {
                self.principal = Arc::new(principal);
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(err) => Err(err),
        }
    }
}
