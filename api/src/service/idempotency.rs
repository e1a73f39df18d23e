//! Retry-safe mutations: a caller's `Idempotency-Key` makes a retried mutation return the first
//! answer and append nothing (the store is `infra::stores::idempotency`).
//!
//! A mutation with a key takes it before it runs. A second request with the key finds it: the
//! same request gets the stored answer (waiting for it while the first still runs), another
//! request is refused. A running request renews its lease while it runs; one that never
//! answered (the service stopped, or lost its database, while it ran) leaves the key running
//! until its lease lapses; then its events are looked for (by its request id, the server's own
//! for every request with a key): found, the retry is told it was applied and its answer lost;
//! none, the retry runs it.

use std::time::Duration;

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Services;
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::stores::idempotency as store;
use crate::infra::subject_keys::{open, seal};

/// How long a request holds its key without renewing it: a retry meanwhile waits for its
/// answer, and after it the request counts as never answered.
const LEASE: Duration = Duration::from_secs(60);

/// How often a running request renews its lease (three renewals fit in one lease, so one or
/// two that fail, say while the database restarts, do not let the key go).
const RENEW: Duration = Duration::from_secs(20);

/// How long a retry waits for the answer of the request still running with its key.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The longest key accepted.
pub(crate) const MAX_KEY: usize = 255;

/// Whether `key` is a key: 1 to 255 visible ASCII characters.
pub(crate) fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// What a request is, for telling a retry from another request: SHA-256 of its document,
/// operation name and variables (JSON with sorted keys).
pub(crate) fn fingerprint(
    query: &str,
    operation_name: Option<&str>,
    variables: &serde_json::Value,
) -> [u8; 32] {
    let canonical = serde_json::json!([query, operation_name, variables]).to_string();
    Sha256::digest(canonical.as_bytes()).into()
}

/// A key this request holds: it runs ([`Services::while_holding`]), then
/// [`Services::answered`] or [`Services::not_run`].
pub(crate) struct Holding {
    key: String,
    /// The request's id: the server's own (a caller's `x-request-id` could stand for two
    /// requests, a retry often sends it again), in the metadata of every event it appends.
    holding_id: Uuid,
}

/// What a request with a key does.
pub(crate) enum Begun {
    /// It runs, holding the key.
    Run(Holding),
    /// It is a retry: the first answer, as sent (HTTP status and body).
    Replay { status: u16, body: String },
    /// It may not run: why.
    Refused(Refusal),
}

/// Why a request with a key may not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The key was used for another request.
    OtherRequest,
    /// The request with the key is still running after [`WAIT`].
    StillRunning,
    /// It was applied; its answer is no longer kept (an erasure dropped every stored answer).
    AnswerDropped,
    /// It was applied, but the service stopped or lost its database before it answered.
    AnswerLost,
}

impl Refusal {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::OtherRequest => {
                "this Idempotency-Key was used for another request: use a new key for a new request"
            }
            Refusal::StillRunning => {
                "the request with this Idempotency-Key is still running: retry later with the same key"
            }
            Refusal::AnswerDropped => {
                "the request with this Idempotency-Key was applied; its answer is no longer kept \
                 (an erasure removed stored answers): read the change back"
            }
            Refusal::AnswerLost => {
                "the request with this Idempotency-Key was applied, but its answer was lost (the \
                 service stopped while answering): read the change back"
            }
        }
    }
}

/// Binds a sealed answer to its caller and key.
fn binding(actor_id: Uuid, key: &str) -> Vec<u8> {
    format!("custos/idempotent-answer/{actor_id}/{key}").into_bytes()
}

impl Services {
    /// Takes `key` for `principal`'s request `fingerprint` (the HTTP request `holding_id`, an
    /// id of the server's own), or says what a retry gets.
    pub(crate) async fn begin_idempotent(
        &self,
        principal: &Principal,
        key: &str,
        fingerprint: &[u8; 32],
        holding_id: Uuid,
    ) -> Result<Begun, ApiError> {
        let pool = &principal.tenant.pool;
        let actor_id = principal.actor().id();
        let lease = lease_ms();
        let started = tokio::time::Instant::now();
        let mut held =
            match store::take(pool, actor_id, key, fingerprint, holding_id, lease).await? {
                None => return Ok(Begun::Run(Holding::new(key, holding_id))),
                Some(held) => held,
            };
        loop {
            if held.fingerprint != fingerprint {
                return Ok(Begun::Refused(Refusal::OtherRequest));
            }
            if held.running_until.is_none() {
                return Ok(match (held.status, held.answer) {
                    (Some(status), Some(sealed)) => {
                        let key_bytes = principal.tenant.idempotency_key.expose_secret();
                        let body = open(key_bytes, &sealed, &binding(actor_id, key))
                            .and_then(|plain| String::from_utf8(plain).ok())
                            .ok_or_else(|| {
                                ApiError::internal(anyhow::anyhow!(
                                    "a stored idempotent answer does not open"
                                ))
                            })?;
                        Begun::Replay {
                            status: u16::try_from(status).unwrap_or(200),
                            body,
                        }
                    }
                    (Some(_), None) => Begun::Refused(Refusal::AnswerDropped),
                    (None, _) => Begun::Refused(Refusal::AnswerLost),
                });
            }
            if held.lapsed {
                if store::appended(pool, held.request_id, held.after_position).await? {
                    store::answer(pool, actor_id, key, held.request_id, None, None).await?;
                    return Ok(Begun::Refused(Refusal::AnswerLost));
                }
                if store::take_over(pool, actor_id, key, &held, holding_id, lease).await? {
                    return Ok(Begun::Run(Holding::new(key, holding_id)));
                }
            } else if started.elapsed() >= WAIT {
                return Ok(Begun::Refused(Refusal::StillRunning));
            }
            tokio::time::sleep(POLL).await;
            held = match store::held(pool, actor_id, key).await? {
                Some(held) => held,
                // Let go meanwhile (the other request did not run): take it, or wait for the
                // request that took it first.
                None => {
                    match store::take(pool, actor_id, key, fingerprint, holding_id, lease).await? {
                        None => return Ok(Begun::Run(Holding::new(key, holding_id))),
                        Some(held) => held,
                    }
                }
            };
        }
    }

    /// Runs `request` while holding the key, renewing its lease every [`RENEW`] until it ends.
    /// A renewal that fails is logged and tried again at the next; one that finds the key
    /// taken over (every renewal failed for a whole lease) is logged as an error: a retry may
    /// have run the request a second time.
    pub(crate) async fn while_holding<T>(
        &self,
        principal: &Principal,
        holding: &Holding,
        request: impl std::future::Future<Output = T>,
    ) -> T {
        let pool = &principal.tenant.pool;
        let actor_id = principal.actor().id();
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + RENEW, RENEW);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(request);
        loop {
            tokio::select! {
                answer = &mut request => return answer,
                _ = renewals.tick() => {
                    match store::renew(pool, actor_id, &holding.key, holding.holding_id, lease_ms()).await {
                        Ok(true) => {}
                        Ok(false) => tracing::error!(
                            request.holding = %holding.holding_id,
                            "a request running with an Idempotency-Key lost it: its lease lapsed"
                        ),
                        Err(err) => tracing::warn!(
                            error = %err,
                            "the lease of an Idempotency-Key could not be renewed; trying again"
                        ),
                    }
                }
            }
        }
    }

    /// Stores the answer of the request holding the key (HTTP `status`, body as sent).
    pub(crate) async fn answered(
        &self,
        principal: &Principal,
        holding: Holding,
        status: u16,
        body: &str,
    ) -> Result<(), ApiError> {
        let actor_id = principal.actor().id();
        let sealed = seal(
            principal.tenant.idempotency_key.expose_secret(),
            body.as_bytes(),
            &binding(actor_id, &holding.key),
        );
        store::answer(
            &principal.tenant.pool,
            actor_id,
            &holding.key,
            holding.holding_id,
            Some(i16::try_from(status).unwrap_or(500)),
            Some(&sealed),
        )
        .await?;
        Ok(())
    }

    /// Lets the key go: the request did not run (it failed validation), so a retry may.
    pub(crate) async fn not_run(
        &self,
        principal: &Principal,
        holding: Holding,
    ) -> Result<(), ApiError> {
        store::release(
            &principal.tenant.pool,
            principal.actor().id(),
            &holding.key,
            holding.holding_id,
        )
        .await?;
        Ok(())
    }
}

impl Holding {
    fn new(key: &str, holding_id: Uuid) -> Self {
        Holding {
            key: key.to_owned(),
            holding_id,
        }
    }
}

fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(valid_key("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("line\nbreak"));
        assert!(!valid_key("clé"));
    }

    #[test]
    fn the_fingerprint_ignores_the_order_of_variables_and_nothing_else() {
        let a = serde_json::json!({ "a": 1, "b": 2 });
        let b: serde_json::Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(fingerprint("q", None, &a), fingerprint("q", None, &b));
        assert_ne!(fingerprint("q", None, &a), fingerprint("q", Some("Op"), &a));
        assert_ne!(
            fingerprint("q", None, &a),
            fingerprint("q", None, &serde_json::json!({ "a": 1, "b": 3 }))
        );
    }
}
