//! Notifications that reach people. What causes one writes it to the outbox
//! (`infra::notifications::outbox`) idempotently: the organisation's lifecycle events as they
//! are projected, the schedule's notices (a trial ending in 7 days and in 1, a deletion
//! approaching), a purge's last notice, and the breach notices an administrator issues to the
//! people an incident affected. The delivery worker (`jobs::notifications`) splits notices
//! for the administrators into one per administrator, looks each recipient's address up when
//! it sends (so an erased person is never written to), sends over SMTP, and retries with
//! exponential backoff until a dead letter.

pub(crate) mod messages;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_projections::{Cursor, Page};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use uuid::Uuid;

use self::messages::BreachFacts;
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::notifications::mail::{MailError, Outgoing};
use crate::infra::notifications::outbox::{
    self, NewNotification, Notification, NotificationFilter, ADMINISTRATORS,
};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// Notifications sent at once, and taken per round trip.
const CONCURRENCY: usize = crate::infra::notifications::mail::CONNECTIONS as usize;
const BATCH: i64 = CONCURRENCY as i64;
/// The longest wait between two attempts.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(6 * 60 * 60);

/// What became of one notification in a delivery round.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    Expanded,
    Retried,
    Dead,
    Cancelled,
}

/// Where a notification goes, looked up when it is sent.
enum Target {
    To {
        address: String,
        organization: String,
        breach: Option<(DateTime<Utc>, String)>,
    },
    /// Nobody to send it to, and why.
    Nobody(&'static str),
}

/// How a breach notice round went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubjectNotices {
    /// Notices written now.
    pub queued: usize,
    /// People who had one already.
    pub already: usize,
}

impl Services {
    /// One delivery round: every due notification taken, split or sent, and its outcome
    /// recorded. How many were sent. Notifications are taken 16 at a time as sending makes
    /// room (never more than one batch ahead of the messages in flight, so none waits near
    /// its lease), until none is due.
    pub async fn deliver_notifications(&self) -> anyhow::Result<usize> {
        let catalog = self.tenancy.catalog();
        let sending = self.mailer.is_some();
        let lease = self.notifications.lease;
        let batches =
            futures::stream::unfold((false, catalog.clone()), move |(failed, catalog)| {
                claim_batch(failed, catalog, lease, sending)
            });
        let outcomes: Vec<anyhow::Result<Outcome>> = batches
            .map_ok(|(claim, batch)| {
                futures::stream::iter(
                    batch
                        .into_iter()
                        .map(move |n| Ok::<_, anyhow::Error>((claim, n))),
                )
            })
            .try_flatten()
            .map(|taken| self.deliver_taken(taken))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut sent = 0;
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok(Outcome::Sent) => sent += 1,
                Ok(_) => {}
                // Left as it is: tried again once its lease runs out.
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "a notification could not be taken or its outcome recorded");
                    failure = Some(err);
                }
            }
        }
        if !sending {
            outbox::note_no_mail_server(catalog).await?;
        }
        match failure {
            Some(err) if sent == 0 => Err(err),
            _ => Ok(sent),
        }
    }

    async fn deliver_taken(
        &self,
        taken: anyhow::Result<(Uuid, Notification)>,
    ) -> anyhow::Result<Outcome> {
        let (claim, notification) = taken?;
        self.deliver(notification, claim).await
    }

    /// Splits or sends one notification the worker took under `claim`, and records what
    /// became of it. An error is one recording it (the lease lets it go later).
    async fn deliver(&self, notification: Notification, claim: Uuid) -> anyhow::Result<Outcome> {
        let catalog = self.tenancy.catalog();
        let id = notification.id;
        if notification.recipient == ADMINISTRATORS {
            return match self.expand(&notification, claim).await {
                Ok(outcome) => Ok(outcome),
                Err(err) => self.failed(&notification, claim, &format!("{err:#}")).await,
            };
        }
        let (address, organization, breach) = match self.target(&notification).await {
            Ok(Target::To {
                address,
                organization,
                breach,
            }) => (address, organization, breach),
            Ok(Target::Nobody(why)) => {
                outbox::cancel(catalog, id, claim, why).await?;
                return Ok(Outcome::Cancelled);
            }
            Err(err) => return self.failed(&notification, claim, &format!("{err:#}")).await,
        };
        let mut payload = notification.payload.0.clone();
        if let (Some(facts), Some(plan)) = (
            payload.as_object_mut(),
            notification.payload.0.get("plan").and_then(|p| p.as_str()),
        ) {
            // The storage a plan includes is the configuration's when the message goes.
            let plan = custos_domain::Plan::parse(plan).ok();
            facts.insert("limit_bytes".into(), json!(self.storage.limit(plan)));
            facts.insert("step_bytes".into(), json!(self.storage.step));
        }
        let message = messages::render(
            &notification.kind,
            &payload,
            &organization,
            breach
                .as_ref()
                .map(|(detected_at, description)| BreachFacts {
                    detected_at: *detected_at,
                    description,
                }),
        );
        let Some(mailer) = &self.mailer else {
            anyhow::bail!("no mail server is configured");
        };
        let sent = mailer
            .send(Outgoing {
                id,
                to: &address,
                subject: &message.subject,
                body: message.body,
            })
            .await;
        match sent {
            Ok(()) => {
                outbox::sent(catalog, id, claim).await?;
                tracing::info!(notification.id = %id, kind = %notification.kind, "notification sent");
                Ok(Outcome::Sent)
            }
            Err(MailError::BadAddress) => {
                outbox::cancel(catalog, id, claim, "the address is not an email address").await?;
                Ok(Outcome::Cancelled)
            }
            Err(MailError::Server(error)) => self.failed(&notification, claim, &error).await,
        }
    }

    /// Records a failed attempt: tried again after the backoff, or a dead letter after the
    /// last attempt.
    async fn failed(
        &self,
        notification: &Notification,
        claim: Uuid,
        error: &str,
    ) -> anyhow::Result<Outcome> {
        let policy = &self.notifications;
        let attempts = u32::try_from(notification.attempts.max(1)).unwrap_or(1);
        let retry_at = (attempts < policy.max_attempts).then(|| {
            let wait = policy
                .retry_base
                .saturating_mul(2u32.saturating_pow(attempts - 1))
                .min(MAX_BACKOFF);
            Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(6))
        });
        let catalog = self.tenancy.catalog();
        outbox::failed(catalog, notification.id, claim, error, retry_at).await?;
        if retry_at.is_some() {
            tracing::warn!(notification.id = %notification.id, kind = %notification.kind, attempts, "a notification could not be sent; it is tried again");
            Ok(Outcome::Retried)
        } else {
            tracing::error!(notification.id = %notification.id, kind = %notification.kind, attempts, "a notification could not be sent and was given up (dead letter)");
            Ok(Outcome::Dead)
        }
    }

    /// The open context of the organisation `id`: `None` once it is gone (purged); an error
    /// while it cannot be opened for now (being moved), so what it is owed waits.
    async fn served(&self, id: Uuid) -> anyhow::Result<Option<Arc<Tenant>>> {
        if let Some(tenant) = self.tenancy.get(id).await? {
            return Ok(Some(tenant));
        }
        match self.tenancy.subscription_by_id(id).await? {
            Some(_) => anyhow::bail!("the organisation is being moved; tried again later"),
            None => Ok(None),
        }
    }

    /// Splits a notice for the administrators into one per active administrator now.
    async fn expand(&self, audience: &Notification, claim: Uuid) -> anyhow::Result<Outcome> {
        let catalog = self.tenancy.catalog();
        let Some(tenant) = self.served(audience.tenant_id).await? else {
            outbox::cancel(catalog, audience.id, claim, "the organisation is gone").await?;
            return Ok(Outcome::Cancelled);
        };
        let administrators = custos_projections::users::administrators(&tenant.pool).await?;
        if administrators.is_empty() {
            let why = "the organisation has no active administrator";
            outbox::cancel(catalog, audience.id, claim, why).await?;
            return Ok(Outcome::Cancelled);
        }
        let ids: Vec<Uuid> = administrators.iter().map(|u| u.id).collect();
        outbox::expand(catalog, audience, claim, &ids).await?;
        Ok(Outcome::Expanded)
    }

    /// The address a notification goes to, and what its message needs, as things are now.
    async fn target(&self, notification: &Notification) -> anyhow::Result<Target> {
        let tenant_id = notification.tenant_id;
        if let Some(address) = &notification.address {
            let organization = match self.tenancy.subscription_by_id(tenant_id).await? {
                Some(row) => row.name,
                None => self
                    .tenancy
                    .tombstone(tenant_id)
                    .await?
                    .map(|t| t.name)
                    .unwrap_or_default(),
            };
            return Ok(Target::To {
                address: address.clone(),
                organization,
                breach: None,
            });
        }
        let Some(tenant) = self.served(tenant_id).await? else {
            return Ok(Target::Nobody("the organisation is gone"));
        };
        let organization = tenant.name.clone();
        let (kind, id) = notification
            .recipient
            .split_once(':')
            .and_then(|(kind, id)| Some((kind, Uuid::parse_str(id).ok()?)))
            .ok_or_else(|| anyhow::anyhow!("unknown recipient {}", notification.recipient))?;
        match kind {
            "user" => {
                let user = custos_projections::users::user(&tenant.pool, id).await?;
                match user {
                    Some(user) if user.active && user.is_admin => Ok(Target::To {
                        address: user.email,
                        organization,
                        breach: None,
                    }),
                    _ => Ok(Target::Nobody("no longer an active administrator")),
                }
            }
            "record" => {
                let Some(record) = custos_projections::records::record(&tenant.pool, id).await?
                else {
                    return Ok(Target::Nobody("the record no longer exists"));
                };
                if record.erased_at.is_some() {
                    return Ok(Target::Nobody("the person was erased"));
                }
                let emails = record.texts(&["email", "emails"]);
                let Some(address) = emails
                    .into_iter()
                    .find(|e| !e.is_empty())
                    .map(str::to_owned)
                else {
                    return Ok(Target::Nobody("the record has no email address"));
                };
                let incident = notification
                    .payload
                    .0
                    .get("incident_id")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok());
                let breach = match incident {
                    Some(incident) => {
                        match custos_projections::incidents::incident(&tenant.pool, incident)
                            .await?
                        {
                            Some(i) => Some((i.detected_at, i.description)),
                            None => {
                                return Ok(Target::Nobody("the incident is not in the register"))
                            }
                        }
                    }
                    None => None,
                };
                Ok(Target::To {
                    address,
                    organization,
                    breach,
                })
            }
            other => anyhow::bail!("unknown recipient kind {other}"),
        }
    }

    /// Issues the breach notice of incident `id` to every person it affected (administrators):
    /// one notification per person, written once however often this is asked, sent by the
    /// worker to the record's email address as it is then; the incident records when the
    /// people were first notified.
    pub(crate) async fn notify_subjects(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<(custos_projections::incidents::IncidentRow, SubjectNotices), ApiError> {
        let tenant = &principal.tenant;
        let incident = self.incident(tenant, id).await?;
        let affected = self.affected_subjects(tenant, &incident).await?;
        let mut tx = self.tenancy.catalog().begin().await?;
        let mut notices = SubjectNotices {
            queued: 0,
            already: 0,
        };
        for person in &affected {
            let notice = NewNotification {
                tenant_id: tenant.id,
                kind: "breach",
                cause: format!("incident:{id}"),
                recipient: format!("record:{}", person.record_id),
                payload: json!({ "incident_id": id }),
                address: None,
                held: false,
            };
            if outbox::enqueue(&mut *tx, &notice).await? {
                notices.queued += 1;
            } else {
                notices.already += 1;
            }
        }
        tx.commit().await?;
        self.outbox_written.notify_one();
        tracing::info!(tenant.id = %tenant.id, incident.id = %id, queued = notices.queued, "breach notices issued");
        if incident.subjects_notified_at.is_some() || affected.is_empty() {
            return Ok((incident, notices));
        }
        let command = custos_domain::IncidentCommand::NotifySubjects {
            at: Utc::now(),
            now: Utc::now(),
        };
        let incident = self
            .record_notification(principal, id, command, request_id)
            .await?;
        Ok((incident, notices))
    }

    /// A page of the organisation's notifications, newest first (administrators).
    pub(crate) async fn notifications(
        &self,
        principal: &Principal,
        filter: &NotificationFilter,
        after: Option<Cursor>,
        first: i64,
    ) -> Result<Page<Notification>, ApiError> {
        let catalog = self.tenancy.catalog();
        Ok(outbox::page(catalog, principal.tenant.id, filter, after, first).await?)
    }

    /// Before a purge drops the organisation's database: its last notice, to each of its
    /// administrators, held until the purge is over (the only notification that keeps an
    /// address: nothing is left to look it up in when it goes).
    pub(crate) async fn prepare_purge_notices(
        &self,
        tenant_id: Uuid,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let Some(tenant) = self.tenancy.get(tenant_id).await? else {
            return Ok(());
        };
        let administrators = custos_projections::users::administrators(&tenant.pool).await?;
        let mut tx = self.tenancy.catalog().begin().await?;
        // Those of an earlier purge that did not go ahead: written anew, to today's
        // administrators.
        outbox::drop_held_purge_notices(&mut *tx, tenant_id).await?;
        for user in &administrators {
            let notice = NewNotification {
                tenant_id,
                kind: "purged",
                cause: "purge".to_owned(),
                recipient: format!("user:{}", user.id),
                payload: json!({ "purged_at": at }),
                address: Some(&user.email),
                held: true,
            };
            outbox::enqueue(&mut *tx, &notice).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Services {
    /// A purge that did not go ahead: the notices it held back (with addresses) are dropped.
    pub(crate) async fn forget_purge_notices(&self, tenant_id: Uuid) -> Result<(), ApiError> {
        outbox::drop_held_purge_notices(self.tenancy.catalog(), tenant_id).await?;
        Ok(())
    }
}

/// The next batch of a delivery round (the state: whether taking one failed, and the catalog):
/// the batch with its claim token; nothing once none is due or after a failure.
async fn claim_batch(
    failed: bool,
    catalog: sqlx::PgPool,
    lease: std::time::Duration,
    sending: bool,
) -> Option<(
    anyhow::Result<(Uuid, Vec<Notification>)>,
    (bool, sqlx::PgPool),
)> {
    if failed {
        return None;
    }
    let claim = Uuid::now_v7();
    match outbox::claim(&catalog, claim, BATCH, lease, sending).await {
        Ok(batch) if batch.is_empty() => None,
        Ok(batch) => Some((Ok((claim, batch)), (false, catalog))),
        Err(err) => Some((Err(err.into()), (true, catalog))),
    }
}
