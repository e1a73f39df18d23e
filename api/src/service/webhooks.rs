//! Webhooks: administrators register endpoints to be told, by a signed POST, when records,
//! users, roles or the organisation's subscription change; the delivery worker follows each
//! webhook's cursor through the event log and delivers in the log's order (by writing
//! transaction, as the read models apply it), at least once, retrying with backoff and
//! disabling a webhook whose deliveries keep failing.
//!
//! A delivery carries ids, the kind of change and the new version — never a value: the
//! receiver reads what it needs through the API with its own token and permissions, so an
//! erased or restricted person's data never leaves in a webhook.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::Utc;
use custos_domain::{Actor, EventMetadata, Webhook, WebhookCommand, WebhookTopic, WebhookUrl};
use custos_projections::webhooks::{self, WebhookRow};
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::json;
use sha2::Digest;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::event_store::log::Position;
use crate::infra::tenancy::tenant::Tenant;
use crate::infra::webhooks::cursor::{self, Attempt, Held, Move};
use crate::infra::webhooks::feed;
use crate::infra::webhooks::sender::{reachable, Answer, Message};
use crate::infra::webhooks::signing::SigningKey;
use crate::service::Services;

/// Events read from the log per webhook and round.
const BATCH: i64 = 100;
/// The longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(8 * 3600);
/// Webhooks delivered to at once, over all organisations.
const CONCURRENCY: usize = 32;
/// How long one webhook may take of a round before the others' turn (it goes on next round).
const ROUND_SHARE: Duration = Duration::from_secs(10);

/// A webhook an administrator registers.
pub(crate) struct NewWebhook {
    pub(crate) url: String,
    pub(crate) topics: Vec<WebhookTopic>,
    pub(crate) description: Option<String>,
}

/// A registered webhook and its signing secret, shown only here.
pub(crate) struct RegisteredWebhook {
    pub(crate) secret: SecretString,
    pub(crate) webhook: WebhookRow,
}

/// A change to a webhook an administrator asks for.
pub(crate) enum WebhookChange {
    Update {
        url: Option<String>,
        topics: Option<Vec<WebhookTopic>>,
    },
    Disable,
    Enable,
}

impl Services {
    /// Registers a webhook; its secret is shown once, in the answer.
    pub(crate) async fn register_webhook(
        &self,
        principal: &Principal,
        input: NewWebhook,
        request_id: Uuid,
    ) -> Result<RegisteredWebhook, ApiError> {
        let tenant = &principal.tenant;
        self.check_endpoint(&input.url)?;
        // Marked first: the worker looks at this organisation from now on, even while no
        // request keeps it open (a registration refused below leaves only this mark).
        let lifecycle: i64 = sqlx::query_scalar(
            "UPDATE tenants SET webhooks = true WHERE id = $1 RETURNING lifecycle_sequence",
        )
        .bind(tenant.id)
        .fetch_one(self.tenancy.catalog())
        .await?;
        let id = Uuid::now_v7();
        let command = WebhookCommand::Register {
            url: input.url,
            topics: input.topics,
            description: input.description,
        };
        self.webhook_command(principal, id, command, request_id)
            .await?;
        // Its cursor starts at the registration, and at the subscription as it is now.
        cursor::start(&tenant.pool, id, lifecycle).await?;
        let webhook = self.existing_webhook(tenant, id).await?;
        tracing::info!(tenant.id = %tenant.id, webhook.id = %id, "security: a webhook was registered");
        let secret = SigningKey::derive(self.tenancy.master_key(), tenant.id, id).secret();
        Ok(RegisteredWebhook { secret, webhook })
    }

    /// Changes a webhook's endpoint or topics, or disables or enables it. While disabled,
    /// changes are not delivered (nor later).
    pub(crate) async fn change_webhook(
        &self,
        principal: &Principal,
        id: Uuid,
        change: WebhookChange,
        request_id: Uuid,
    ) -> Result<WebhookRow, ApiError> {
        let tenant = &principal.tenant;
        self.existing_webhook(tenant, id).await?;
        let command = match change {
            WebhookChange::Update { url, topics } => {
                if let Some(url) = &url {
                    self.check_endpoint(url)?;
                }
                WebhookCommand::Change { url, topics }
            }
            WebhookChange::Disable => WebhookCommand::Disable {
                reason: "disabled by an administrator".to_owned(),
            },
            WebhookChange::Enable => WebhookCommand::Enable,
        };
        self.webhook_command(principal, id, command, request_id)
            .await?;
        self.existing_webhook(tenant, id).await
    }

    /// Removes a webhook: nothing more is delivered to it.
    pub(crate) async fn remove_webhook(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        self.existing_webhook(tenant, id).await?;
        self.webhook_command(principal, id, WebhookCommand::Remove, request_id)
            .await?;
        tracing::info!(tenant.id = %tenant.id, webhook.id = %id, "security: a webhook was removed");
        Ok(())
    }

    /// Sends a signed `webhook.test` message to the webhook now and says what its endpoint
    /// answered (logged with its deliveries).
    pub(crate) async fn test_webhook(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<Answer, ApiError> {
        let tenant = &principal.tenant;
        let webhook = self.existing_webhook(tenant, id).await?;
        if webhook.removed_at.is_some() {
            return Err(custos_domain::WebhookError::Removed.into());
        }
        let message = Outgoing {
            id: format!("msg_test_{}", Uuid::now_v7().simple()),
            kind: TEST,
            timestamp: Utc::now(),
            data: json!({ "webhookId": id }),
            global_position: 0,
        };
        Ok(self
            .send_logged(tenant, id, &webhook.url, &message, 1)
            .await?)
    }

    /// Runs `command` on webhook `id` of the principal's organisation, as the principal.
    async fn webhook_command(
        &self,
        principal: &Principal,
        id: Uuid,
        command: WebhookCommand,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        let metadata = self.actor(principal, request_id);
        self.command(tenant, &tenant.webhooks, id, command, metadata)
            .await
    }

    async fn existing_webhook(&self, tenant: &Tenant, id: Uuid) -> Result<WebhookRow, ApiError> {
        webhooks::webhook(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    /// Refuses endpoints a delivery must never reach, as far as the URL says: this service
    /// itself (a loop), link-local addresses (cloud metadata services), and — unless the
    /// provider allows them — other non-public addresses. A name is checked again on every
    /// delivery, on the addresses it resolves to then (`infra::webhooks::sender`).
    fn check_endpoint(&self, url: &str) -> Result<(), ApiError> {
        let parsed = WebhookUrl::parse(url).map_err(ApiError::from)?;
        let Some((host, port)) = parsed.host_and_port() else {
            return Ok(());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<IpAddr> = host.parse().ok();
        if ip.is_some_and(|ip| !reachable(ip, true)) {
            return Err(ApiError::validation(
                "url",
                "`url` must not be a link-local, multicast or unspecified address",
            ));
        }
        if ip.is_some_and(|ip| !reachable(ip, self.webhooks.allow_private)) {
            return Err(ApiError::validation(
                "url",
                "`url` must name a public address",
            ));
        }
        let listening = self.listening.get().copied();
        if listening.is_some_and(|listen| names_this_service(host, ip, port, listen)) {
            return Err(ApiError::validation(
                "url",
                "`url` must not point at this service",
            ));
        }
        Ok(())
    }

    /// Signs and POSTs one message to a webhook, and logs the attempt.
    async fn send_logged(
        &self,
        tenant: &Tenant,
        webhook_id: Uuid,
        url: &str,
        message: &Outgoing,
        attempt: i32,
    ) -> anyhow::Result<Answer> {
        let body = serde_json::to_vec(&json!({
            "id": message.id,
            "type": message.kind,
            "timestamp": message.timestamp,
            "organization": tenant.id,
            "data": message.data,
        }))?;
        let timestamp = Utc::now().timestamp();
        let key = SigningKey::derive(self.tenancy.master_key(), tenant.id, webhook_id);
        let signature = key.sign(&message.id, timestamp, &body);
        let answer = self
            .webhook_sender
            .send(Message {
                url,
                id: &message.id,
                timestamp,
                signature: &signature,
                body,
            })
            .await;
        cursor::log_attempt(
            &tenant.pool,
            Attempt {
                webhook_id,
                message_id: &message.id,
                topic: message.kind,
                global_position: message.global_position,
                attempt,
                status_code: answer.status,
                error: answer.error.as_deref(),
                duration: answer.duration,
            },
        )
        .await?;
        Ok(answer)
    }

    /// One round of the delivery worker: every webhook of every organisation that has any,
    /// as far as each can go within its share of the round. One organisation's failure is
    /// logged and leaves the others alone.
    pub(crate) async fn deliver_webhooks(&self) -> anyhow::Result<()> {
        let due: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT id, lifecycle_sequence FROM tenants
             WHERE webhooks AND status IN {} AND move IS NULL",
            crate::infra::tenancy::catalog::LIVE
        ))
        .fetch_all(self.tenancy.catalog())
        .await?;
        let mut work = Vec::new();
        for (id, lifecycle) in due {
            match self.webhooks_of(id).await {
                Ok(Some((tenant, ids))) => work.extend(
                    ids.into_iter()
                        .map(|webhook| (tenant.clone(), webhook, lifecycle)),
                ),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(tenant.id = %id, error = %crate::error::redacted(&err), "webhooks could not be looked at");
                }
            }
        }
        futures::stream::iter(work)
            .for_each_concurrent(CONCURRENCY, |(tenant, id, lifecycle)| async move {
                if let Err(err) = self.deliver_to(&tenant, id, lifecycle).await {
                    tracing::error!(tenant.id = %tenant.id, webhook.id = %id, error = %crate::error::redacted(&err), "webhook delivery failed");
                }
            })
            .await;
        Ok(())
    }

    /// An organisation's open context and its webhooks, its removed ones' cursors and old
    /// attempts cleared away.
    async fn webhooks_of(
        &self,
        id: Uuid,
    ) -> anyhow::Result<Option<(std::sync::Arc<Tenant>, Vec<Uuid>)>> {
        let Some(tenant) = self.tenancy.get(id).await? else {
            return Ok(None);
        };
        cursor::forget_removed(&tenant.pool).await?;
        cursor::prune_attempts(&tenant.pool).await?;
        let ids = webhooks::webhooks(&tenant.pool)
            .await?
            .into_iter()
            .map(|w| w.id)
            .collect();
        Ok(Some((tenant, ids)))
    }

    /// Delivers what is due to one webhook — the changes in its organisation's log in the log's
    /// order, then those of the organisation's subscription up to `lifecycle` — until it is up
    /// to date, a delivery fails, its share of the round is used, or the lease is lost.
    async fn deliver_to(
        &self,
        tenant: &Tenant,
        webhook_id: Uuid,
        lifecycle: i64,
    ) -> anyhow::Result<()> {
        let policy = &self.webhooks;
        let Some(held) = cursor::take(&tenant.pool, webhook_id, policy.lease, lifecycle).await?
        else {
            return Ok(());
        };
        let mut run = Run::new(held, policy.lease, lifecycle);
        let round = match self.deliver_log(tenant, &mut run).await {
            Ok(Round::Done) => self.deliver_lifecycle(tenant, &mut run).await,
            other => other,
        };
        let held = &run.held;
        let (failures, next_attempt_at) = match &round {
            Ok(Round::Failed(failures)) => {
                let wait = policy
                    .retry_base
                    .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).unsigned_abs()))
                    .min(MAX_BACKOFF);
                (
                    *failures,
                    Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                )
            }
            Ok(Round::Done | Round::Stopped) => (0, Utc::now()),
            // Tried again soon, the failures so far kept.
            Ok(Round::Lagging) | Err(_) => {
                (run.failures, Utc::now() + chrono::Duration::seconds(1))
            }
        };
        cursor::release(&tenant.pool, held, failures, next_attempt_at).await?;
        round.map(|_| ())
    }

    /// Delivers the changes of the organisation's log after the held cursor, each judged by
    /// the webhook as it was when the change was written *and* as it is now (a webhook
    /// disabled since is not sent its backlog), to its endpoint as it is now.
    async fn deliver_log(&self, tenant: &Tenant, run: &mut Run) -> anyhow::Result<Round> {
        let mut position = run.held.position;
        loop {
            if run.started.elapsed() > ROUND_SHARE {
                return Ok(Round::Done);
            }
            let mut conn = tenant.pool.acquire().await?;
            let changes = feed::after(&mut conn, position, BATCH).await?;
            if changes.is_empty() {
                return Ok(Round::Done);
            }
            // A record's datasheet comes from the records read model: let it catch up first.
            let newest_record = changes
                .iter()
                .rev()
                .find(|c| c.aggregate_type == "record")
                .map(|c| c.position);
            if let Some(newest) = newest_record {
                let caught_up = tenant
                    .projectors
                    .wait_for("record", newest, Duration::from_secs(5))
                    .await;
                if caught_up.is_err() {
                    return Ok(Round::Lagging);
                }
            }
            let datasheets = feed::datasheets(&mut conn, &changes).await?;
            drop(conn);
            // Read after the changes: it holds every change of the webhook committed before
            // them, and its state now.
            let history = WebhookHistory::load(tenant, run.held.webhook_id).await?;
            let full = changes.len() as i64 == BATCH;
            let mut saved = position;
            for change in &changes {
                let then = history.at(change.position);
                let now = history.latest();
                let wanted = change.topic().filter(|topic| {
                    then.is_some_and(|s| s.is_enabled() && s.topics().contains(topic))
                        && now.is_some_and(Webhook::is_enabled)
                });
                let url = now.and_then(Webhook::url).map(WebhookUrl::as_str);
                if let (Some(topic), Some(url)) = (wanted, url) {
                    // What was skipped before it is saved first (a failure returns below).
                    if saved != position && !run.keep(tenant, Move::Past(position)).await? {
                        return Ok(Round::Stopped);
                    }
                    let datasheet = change
                        .aggregate_id
                        .parse()
                        .ok()
                        .and_then(|id: Uuid| datasheets.get(&id))
                        .map(String::as_str);
                    let message = Outgoing {
                        id: message_id(
                            run.held.webhook_id,
                            &format!(
                                "{}/{}/{}",
                                change.aggregate_type, change.aggregate_id, change.sequence
                            ),
                        ),
                        kind: topic.as_str(),
                        timestamp: change.recorded_at,
                        data: change.data(datasheet),
                        global_position: change.position.global_position,
                    };
                    match self.deliver_message(tenant, run, url, &message).await? {
                        Sent::Delivered => {}
                        Sent::LeaseLost => return Ok(Round::Stopped),
                        Sent::Failed(answer) => {
                            return self.delivery_failed(tenant, run, &answer).await
                        }
                    }
                    position = change.position;
                    if !run.keep(tenant, Move::Past(position)).await? {
                        tracing::warn!(tenant.id = %tenant.id, webhook.id = %run.held.webhook_id, "another worker took over the webhook");
                        return Ok(Round::Stopped);
                    }
                    saved = position;
                } else {
                    position = change.position;
                }
            }
            if saved != position && !run.keep(tenant, Move::Past(position)).await? {
                return Ok(Round::Stopped);
            }
            if history.is_removed() {
                return Ok(Round::Stopped);
            }
            if !full {
                return Ok(Round::Done);
            }
        }
    }

    /// Delivers the changes of the organisation's subscription (its stream in the catalog)
    /// after the held cursor, up to the round's, if the webhook (as it is now) is enabled and
    /// chose them; otherwise moves past them.
    async fn deliver_lifecycle(&self, tenant: &Tenant, run: &mut Run) -> anyhow::Result<Round> {
        let until = run.lifecycle;
        if run.held.lifecycle_sequence >= until {
            return Ok(Round::Done);
        }
        let history = WebhookHistory::load(tenant, run.held.webhook_id).await?;
        let now = history.latest();
        let wanted = now.is_some_and(|state| {
            state.is_enabled() && state.topics().contains(&WebhookTopic::LifecycleChanged)
        });
        let url = now.and_then(Webhook::url).map(WebhookUrl::as_str);
        let (true, Some(url)) = (wanted, url) else {
            return Ok(if run.keep(tenant, Move::PastSubscription(until)).await? {
                Round::Done
            } else {
                Round::Stopped
            });
        };
        let changes: Vec<(i64, String, chrono::DateTime<Utc>)> = sqlx::query_as(
            "SELECT sequence, event_type, recorded_at FROM subscription_events
             WHERE aggregate_type = 'subscription' AND aggregate_id = $1
               AND sequence > $2 AND sequence <= $3
             ORDER BY sequence",
        )
        .bind(tenant.id.to_string())
        .bind(run.held.lifecycle_sequence)
        .bind(until)
        .fetch_all(self.tenancy.catalog())
        .await?;
        for (sequence, change, at) in changes {
            let message = Outgoing {
                // The time too: an organisation imported elsewhere starts its subscription's
                // stream again at 1.
                id: message_id(
                    run.held.webhook_id,
                    &format!("subscription/{sequence}/{}", at.timestamp_micros()),
                ),
                kind: WebhookTopic::LifecycleChanged.as_str(),
                timestamp: at,
                data: json!({ "change": change, "sequence": sequence }),
                global_position: 0,
            };
            match self.deliver_message(tenant, run, url, &message).await? {
                Sent::Delivered => {}
                Sent::LeaseLost => return Ok(Round::Stopped),
                Sent::Failed(answer) => return self.delivery_failed(tenant, run, &answer).await,
            }
            if !run.keep(tenant, Move::PastSubscription(sequence)).await? {
                return Ok(Round::Stopped);
            }
        }
        Ok(Round::Done)
    }

    /// A delivery failed: retried later, or — the last allowed failure in a row — the webhook
    /// is disabled and both cursors move past everything up to its disabling.
    async fn delivery_failed(
        &self,
        tenant: &Tenant,
        run: &mut Run,
        answer: &Answer,
    ) -> anyhow::Result<Round> {
        run.failures += 1;
        if run.failures < i32::try_from(self.webhooks.max_failures).unwrap_or(i32::MAX) {
            return Ok(Round::Failed(run.failures));
        }
        let disabled = self
            .disable_failing(tenant, run.held.webhook_id, run.failures, answer)
            .await?;
        run.keep(tenant, Move::Past(disabled)).await?;
        run.keep(tenant, Move::PastSubscription(run.lifecycle))
            .await?;
        Ok(Round::Stopped)
    }

    /// Delivers one message and logs the attempt; the lease is renewed first when the
    /// delivery could outlast it.
    async fn deliver_message(
        &self,
        tenant: &Tenant,
        run: &mut Run,
        url: &str,
        message: &Outgoing,
    ) -> anyhow::Result<Sent> {
        if !run.renew_for(tenant, self.webhooks.timeout).await? {
            return Ok(Sent::LeaseLost);
        }
        let attempt = run.failures + 1;
        let answer = self
            .send_logged(tenant, run.held.webhook_id, url, message, attempt)
            .await?;
        if let Some(error) = &answer.error {
            tracing::warn!(tenant.id = %tenant.id, webhook.id = %run.held.webhook_id, attempt, error = %error, "a webhook delivery failed");
            return Ok(Sent::Failed(answer));
        }
        run.failures = 0;
        Ok(Sent::Delivered)
    }

    /// Disables a webhook whose deliveries failed `failures` times in a row (the webhook
    /// itself is the actor: Custos acted on its record of failures); the position of the
    /// disabling.
    async fn disable_failing(
        &self,
        tenant: &Tenant,
        id: Uuid,
        failures: i32,
        answer: &Answer,
    ) -> anyhow::Result<Position> {
        let reason = format!(
            "disabled by Custos after {failures} failed deliveries in a row (the last: {})",
            answer.error.as_deref().unwrap_or("failed")
        );
        let metadata = EventMetadata::new(Actor::Webhook(id), Uuid::now_v7());
        self.command(
            tenant,
            &tenant.webhooks,
            id,
            WebhookCommand::Disable { reason },
            metadata,
        )
        .wait_for_read_models(false)
        .await
        .map_err(|err| anyhow::anyhow!("{err:?}"))?;
        tracing::warn!(tenant.id = %tenant.id, webhook.id = %id, failures, "a webhook was disabled after repeated failures");
        use cqrs_es::Aggregate;
        tenant
            .log
            .head(Webhook::TYPE, &id.to_string())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the disabled webhook has no events"))
    }
}

/// Whether `host:port` is where this service listens.
fn names_this_service(host: &str, ip: Option<IpAddr>, port: u16, listen: SocketAddr) -> bool {
    if port != listen.port() {
        return false;
    }
    let local = host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || ip.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified());
    local || ip == Some(listen.ip()) || (listen.ip().is_unspecified() && ip.is_some())
}

/// The `webhook-id` of the delivery of one change (`what`: its stream and version, or the
/// subscription's sequence and time) to a webhook: the same on every retry and every
/// instance, so receivers can drop repeats.
fn message_id(webhook_id: Uuid, what: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{webhook_id}/{what}"));
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// How far a round got with one webhook.
enum Round {
    /// Up to date, or its share of the round used.
    Done,
    /// A delivery failed this many times in a row; it waits for its next attempt.
    Failed(i32),
    /// The read models lag: tried again soon, its failures kept.
    Lagging,
    /// The lease was lost, or the webhook disabled or removed.
    Stopped,
}

/// What became of one message.
enum Sent {
    Delivered,
    Failed(Answer),
    LeaseLost,
}

/// One webhook's cursor as a worker holds it during a round.
struct Run {
    held: Held,
    lease: Duration,
    /// The subscription's sequence as the round found it: how far its changes go this round.
    lifecycle: i64,
    /// Until when the lease holds at least (it was taken or renewed before this).
    lease_until: std::time::Instant,
    /// Failed deliveries in a row of the message being retried.
    failures: i32,
    started: std::time::Instant,
}

impl Run {
    fn new(held: Held, lease: Duration, lifecycle: i64) -> Self {
        let now = std::time::Instant::now();
        Self {
            failures: held.failures,
            held,
            lease,
            lifecycle,
            lease_until: now + lease,
            started: now,
        }
    }

    /// Renews the lease when a delivery of up to `timeout` (and a margin) could outlast it.
    async fn renew_for(&mut self, tenant: &Tenant, timeout: Duration) -> sqlx::Result<bool> {
        let needed = std::time::Instant::now() + timeout + Duration::from_secs(5);
        if needed < self.lease_until {
            return Ok(true);
        }
        self.keep(tenant, Move::Stay).await
    }

    /// Moves the cursor and renews the lease; false when the lease was lost.
    async fn keep(&mut self, tenant: &Tenant, to: Move) -> sqlx::Result<bool> {
        let renewed_at = std::time::Instant::now();
        let kept = cursor::advance(&tenant.pool, &self.held, to, self.lease).await?;
        self.lease_until = renewed_at + self.lease;
        Ok(kept)
    }
}

/// What a `webhook.test` message's type is.
const TEST: &str = "webhook.test";

/// One message on its way.
struct Outgoing {
    id: String,
    /// Its `type`: a topic's name, or [`TEST`].
    kind: &'static str,
    timestamp: chrono::DateTime<Utc>,
    data: serde_json::Value,
    /// The change's position in the log (0 for the subscription's changes and tests).
    global_position: i64,
}

/// A webhook's own events with their positions: its endpoint, topics and state as of any
/// point in the log (a change is judged by the webhook as it was when the change committed).
struct WebhookHistory {
    states: Vec<(Position, Webhook)>,
}

impl WebhookHistory {
    async fn load(tenant: &Tenant, id: Uuid) -> anyhow::Result<Self> {
        use cqrs_es::Aggregate;
        let mut state = Webhook::default();
        let mut states = Vec::new();
        for stored in tenant.log.stream(Webhook::TYPE, &id.to_string()).await? {
            state.apply(serde_json::from_value(stored.event.payload.clone())?);
            states.push((stored.position, state.clone()));
        }
        Ok(Self { states })
    }

    /// The webhook as it was at `position`.
    fn at(&self, position: Position) -> Option<&Webhook> {
        self.states
            .iter()
            .rev()
            .find(|(at, _)| *at <= position)
            .map(|(_, state)| state)
    }

    /// The webhook as it is now.
    fn latest(&self) -> Option<&Webhook> {
        self.states.last().map(|(_, state)| state)
    }

    /// Whether it is removed (now).
    fn is_removed(&self) -> bool {
        self.latest().is_some_and(Webhook::is_removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_s_own_address_is_recognised() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let check = |host: &str, port| names_this_service(host, host.parse().ok(), port, listen);
        assert!(check("localhost", 8080));
        assert!(check("127.0.0.1", 8080));
        assert!(check("::1", 8080));
        assert!(check("0.0.0.0", 8080));
        assert!(!check("127.0.0.1", 9000));
        assert!(!check("hooks.example.org", 8080));
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(names_this_service(
            "10.1.2.3",
            "10.1.2.3".parse().ok(),
            8080,
            any
        ));
    }

    #[test]
    fn a_message_keeps_its_id_across_retries() {
        let webhook = Uuid::now_v7();
        assert_eq!(message_id(webhook, "42"), message_id(webhook, "42"));
        assert_ne!(
            message_id(webhook, "42"),
            message_id(Uuid::now_v7(), "42"),
            "another webhook"
        );
        assert_ne!(
            message_id(webhook, "42"),
            message_id(webhook, "lifecycle/42")
        );
        assert!(message_id(webhook, "42").starts_with("msg_"));
    }
}
