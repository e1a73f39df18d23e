//! One tenant's open context: its pool (as the tenant's own login role, to its own database),
//! event store, command sides, keys and projectors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::{Aggregate, CqrsFramework};
use custos_domain::{
    ApiToken, Consents, DataExport, FieldSchema, Incident, Organization, Record, RetentionPolicy,
    Role, SubscriptionStatus, User, Webhook,
};
use custos_projections::Projection;
use secrecy::{ExposeSecret, SecretBox};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Region;
use crate::infra::blind_index::{BlindIndex, BlindIndexProjection};
use crate::infra::caches::{Hearing, Listening};
use crate::infra::database::Health;
use crate::infra::event_store::codec::EventCodec;
use crate::infra::event_store::log::EventLog;
use crate::infra::event_store::repository::{AggregateCache, CachedEventStore, Cqrs};
use crate::infra::integrity::audit_keys::AuditKeys;
use crate::infra::integrity::tree_head::verifying_key;
use crate::infra::keys::MasterKey;
use crate::infra::projector::Projectors;
use crate::infra::record_feed::RecordFeed;
use crate::infra::subject_keys::SubjectKeys;
use crate::infra::tenancy::tenant_caches::TenantCaches;
use crate::telemetry::metrics::Metrics;

/// A tenant as the catalog lists it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct TenantRow {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub region: String,
    pub status: String,
    pub database_name: String,
    pub role_name: String,
    /// Generation 0 of the signing key of an organisation imported from another server, and
    /// its HMAC under a master-derived key ([`anchor_mac`]).
    pub audit_anchor: Option<Vec<u8>>,
    pub audit_anchor_mac: Option<Vec<u8>>,
    /// Its storage, as last measured, had reached its plan's limit (read where a context is
    /// opened; other queries leave it false, so they work on catalogs older than the column).
    #[sqlx(default)]
    pub storage_over_limit: bool,
}

/// The HMAC that makes an imported anchor in the catalog trustworthy: only a holder of the
/// master key can write one that [`TenantRow::audit_keys`] accepts.
pub(crate) fn anchor_mac(master_key: &MasterKey, tenant_id: Uuid, anchor: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let key = master_key.derive(&format!("custos/audit-anchor/{tenant_id}"));
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("any key");
    mac.update(anchor);
    mac.finalize().into_bytes().to_vec()
}

impl TenantRow {
    /// The organisation's signing keys: generation 0 derived from `master_key`, or the
    /// imported anchor.
    pub(crate) fn audit_keys(&self, master_key: &MasterKey) -> anyhow::Result<AuditKeys> {
        let anchor = match &self.audit_anchor {
            Some(bytes) => {
                let expected = anchor_mac(master_key, self.id, bytes);
                let holds = self.audit_anchor_mac.as_deref().is_some_and(|mac| {
                    bool::from(subtle::ConstantTimeEq::ct_eq(mac, expected.as_slice()))
                });
                if !holds {
                    tracing::error!(tenant.id = %self.id, "security: the catalog's first signing key of this organisation was changed outside Custos; it is not opened");
                    anyhow::bail!(
                        "the catalog's audit anchor of {} does not verify with the master key",
                        self.id
                    );
                }
                Some(verifying_key(bytes).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the catalog's audit anchor of {} is not an Ed25519 key",
                        self.id
                    )
                })?)
            }
            None => None,
        };
        Ok(AuditKeys::new(master_key, self.id, anchor))
    }
}

/// What reading a tenant's events takes: its subject keys, the codec that opens events with
/// them, the log, the blind index, and every read model.
pub(crate) struct Reading {
    /// What the context keeps in memory; it caches only once [`TenantCaches::listen`] hears
    /// the database.
    pub(crate) caches: Arc<TenantCaches>,
    pub(crate) subject_keys: Arc<SubjectKeys>,
    pub(crate) codec: EventCodec,
    pub(crate) log: EventLog,
    pub(crate) blind_index: BlindIndex,
    pub(crate) read_models: Vec<Box<dyn Projection>>,
}

impl Reading {
    /// On `pool`; starts nothing (`custos verify --read-models` uses it as it is).
    pub(crate) fn new(pool: &PgPool, master_key: &MasterKey, tenant_id: Uuid) -> Self {
        let kek = SecretBox::new(Box::new(
            master_key.derive(&format!("custos/tenant-key-encryption/{tenant_id}")),
        ));
        let hearing = Arc::new(Hearing::default());
        let subject_keys = Arc::new(SubjectKeys::new(pool.clone(), kek, hearing.clone()));
        let caches = Arc::new(TenantCaches::new(hearing, subject_keys.clone()));
        let codec = EventCodec::new(subject_keys.clone());
        let log = EventLog::new(pool.clone(), codec.clone());
        let blind_index = BlindIndex::new(SecretBox::new(Box::new(
            master_key.derive(&format!("custos/blind-index/{tenant_id}")),
        )));
        let mut read_models = custos_projections::all();
        read_models.push(Box::new(BlindIndexProjection(blind_index.clone())));
        Self {
            caches,
            subject_keys,
            codec,
            log,
            blind_index,
            read_models,
        }
    }
}

/// The key that seals a tenant's TOTP secrets; derived from the master key, never stored.
pub(crate) fn two_factor_key(master_key: &MasterKey, tenant_id: Uuid) -> SecretBox<[u8; 32]> {
    SecretBox::new(Box::new(
        master_key.derive(&format!("custos/two-factor-secrets/{tenant_id}")),
    ))
}

/// One tenant's open context.
pub struct Tenant {
    pub id: Uuid,
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) region: Region,
    /// Connects as the tenant's own login role, to the tenant's own database.
    pub pool: PgPool,
    pub log: EventLog,
    pub records: Cqrs<Record>,
    pub(crate) users: Cqrs<User>,
    pub(crate) roles: Cqrs<Role>,
    pub(crate) organization: Cqrs<Organization>,
    pub(crate) api_tokens: Cqrs<ApiToken>,
    pub(crate) field_schemas: Cqrs<FieldSchema>,
    pub(crate) exports: Cqrs<DataExport>,
    pub(crate) consents: Cqrs<Consents>,
    pub(crate) retention: Cqrs<RetentionPolicy>,
    pub(crate) incidents: Cqrs<Incident>,
    pub(crate) webhooks: Cqrs<Webhook>,
    /// The states the command sides above left, kept between commands (see the type).
    aggregates: Arc<AggregateCache>,
    /// The data keys of the tenant's subjects (also used by the event store's codec).
    pub(crate) subject_keys: Arc<SubjectKeys>,
    /// Sessions, subject keys and custom field schemas kept between requests, and the task
    /// that hears the database announce changes to them.
    pub(crate) caches: Arc<TenantCaches>,
    _listening: Listening,
    /// Record changes for live subscribers, read once for all of them.
    pub(crate) record_feed: RecordFeed,
    /// Finds records by a person's email or phone.
    pub(crate) blind_index: BlindIndex,
    pub projectors: Projectors,
    /// Encrypts the tenant's TOTP secrets; derived from the master key, never stored.
    pub(crate) two_factor_key: SecretBox<[u8; 32]>,
    /// Seals the stored answers of retry-safe mutations; derived from the master key.
    pub(crate) idempotency_key: SecretBox<[u8; 32]>,
    /// The keys that sign the tenant's tree heads (generation 0 derived from the master key).
    pub(crate) audit_keys: AuditKeys,
    /// When a request last used this context; idle contexts are closed.
    last_used: std::sync::Mutex<Instant>,
    /// The database it was opened on, and when that was last checked against the catalog.
    pub(crate) database_name: String,
    checked: std::sync::Mutex<Instant>,
    /// Where the organisation is in its life with the provider, as of the last check: what
    /// its users may still do (`auth::policy::check_standing`).
    standing: std::sync::Mutex<SubscriptionStatus>,
    /// Its storage, as last measured, had reached its plan's limit (a trial then takes no new
    /// data).
    over_limit: std::sync::atomic::AtomicBool,
    /// Whether the server its database is on answers.
    pub(crate) server: Arc<Health>,
}

impl Tenant {
    /// Opens a tenant's context: its pool (as the tenant's own login role), event store,
    /// command sides and projectors.
    pub(crate) fn open(
        row: &TenantRow,
        server: &PgConnectOptions,
        server_health: Arc<Health>,
        master_key: &MasterKey,
        pool_size: u32,
        changes: &Arc<tokio::sync::Notify>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let options = server
            .clone()
            .username(&row.role_name)
            .password(master_key.tenant_db_password(row.id).expose_secret())
            // PostgreSQL's own choice of plans (`plan_cache_mode = auto`): a statement's plan is
            // reused once five executions showed a generic one is no worse. Lists, searches,
            // reports and reads of a batch of records by id, whose best plan depends on the
            // values they are given (a generic plan cannot see how selective a search or a
            // value is, or how many ids it gets, and can pick a scan of every row), are sent
            // unnamed (`persistent(false)` in `custos-projections`, and the blind index's
            // delete of a batch's fields), so each is planned with its values. Planning every
            // execution of every statement (`force_custom_plan`, until 2026-12-06) was 35 % of
            // the statements' time in the database while employees were seeded
            // (`pg_stat_statements`).
            .database(&row.database_name);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let Reading {
            caches,
            subject_keys,
            codec,
            log,
            blind_index,
            read_models: projections,
        } = Reading::new(&pool, master_key, row.id);
        let projectors = Projectors::spawn(
            row.id,
            pool.clone(),
            log.clone(),
            projections,
            metrics.clone(),
        );
        let listening = caches.listen(&pool);
        let cache = Arc::new(AggregateCache::default());
        Ok(Self {
            id: row.id,
            slug: row.slug.clone(),
            name: row.name.clone(),
            region: row
                .region
                .parse()
                .map_err(|()| anyhow::anyhow!("unknown region"))?,
            records: framework(&pool, &codec, &cache, &projectors, metrics, Some(changes)),
            users: framework(&pool, &codec, &cache, &projectors, metrics, Some(changes)),
            roles: framework(&pool, &codec, &cache, &projectors, metrics, Some(changes)),
            organization: framework(&pool, &codec, &cache, &projectors, metrics, None),
            api_tokens: framework(&pool, &codec, &cache, &projectors, metrics, None),
            field_schemas: framework(&pool, &codec, &cache, &projectors, metrics, None),
            exports: framework(&pool, &codec, &cache, &projectors, metrics, None),
            consents: framework(&pool, &codec, &cache, &projectors, metrics, None),
            retention: framework(&pool, &codec, &cache, &projectors, metrics, None),
            incidents: framework(&pool, &codec, &cache, &projectors, metrics, None),
            webhooks: framework(&pool, &codec, &cache, &projectors, metrics, Some(changes)),
            aggregates: cache,
            subject_keys,
            record_feed: caches.record_feed(&pool),
            caches,
            _listening: listening,
            blind_index,
            two_factor_key: two_factor_key(master_key, row.id),
            idempotency_key: SecretBox::new(Box::new(
                master_key.derive(&format!("custos/idempotent-answers/{}", row.id)),
            )),
            audit_keys: row.audit_keys(master_key)?,
            pool,
            log,
            projectors,
            last_used: std::sync::Mutex::new(Instant::now()),
            database_name: row.database_name.clone(),
            checked: std::sync::Mutex::new(Instant::now()),
            standing: std::sync::Mutex::new(
                SubscriptionStatus::parse(&row.status).unwrap_or(SubscriptionStatus::Suspended),
            ),
            over_limit: std::sync::atomic::AtomicBool::new(row.storage_over_limit),
            server: server_health,
        })
    }

    #[cfg(feature = "testing")]
    /// A command side for records that writes events unsealed: only for `custos-bench --suite
    /// privacy`, which measures sealing's cost in a scratch tenant.
    pub fn unsealed_records(&self) -> Cqrs<Record> {
        let codec = EventCodec::unsealed(self.subject_keys.clone());
        let cache = Arc::new(AggregateCache::default());
        // Counted like the sealed side, into a registry nobody reads.
        let metrics = Metrics::new();
        framework(&self.pool, &codec, &cache, &self.projectors, &metrics, None)
    }

    #[cfg(feature = "testing")]
    /// The organisation's subject keys: for the tests of their creation by writers at once.
    pub fn subject_keys(&self) -> &SubjectKeys {
        &self.subject_keys
    }

    /// Forgets the cached aggregates no longer fresh; answers how many.
    pub(crate) fn forget_stale_aggregates(&self) -> usize {
        self.aggregates.forget_stale()
    }

    pub(crate) fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether the context is due for a check against the catalog (at most every `every`);
    /// true marks it checked now.
    pub(crate) fn due_for_check(&self, every: Duration) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.elapsed() < every {
            return false;
        }
        *checked = Instant::now();
        true
    }

    /// Where the organisation is in its life with the provider (see the field).
    pub(crate) fn standing(&self) -> SubscriptionStatus {
        *self.standing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the catalog's `status` as the organisation's standing (an unknown one restricts
    /// it as a suspension does).
    pub(crate) fn set_standing(&self, status: &str) {
        let standing = SubscriptionStatus::parse(status).unwrap_or(SubscriptionStatus::Suspended);
        *self.standing.lock().unwrap_or_else(|e| e.into_inner()) = standing;
    }

    /// Whether its storage, as last measured, had reached its plan's limit.
    pub(crate) fn over_storage_limit(&self) -> bool {
        self.over_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_over_storage_limit(&self, over: bool) {
        self.over_limit
            .store(over, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Closes the context: its projector first (a pass cut short rolls back; one that found
    /// its pool closed would report a failure), then its pool, once every connection in use
    /// is given back.
    pub(crate) async fn close(&self) {
        self.projectors.stop();
        self.pool.close().await;
    }
}

/// The command side of one aggregate type in a tenant database, loading aggregates through the
/// tenant's cache; its commits wake the projectors that read that type, and `changes` (the
/// webhook worker) when given.
fn framework<A>(
    pool: &PgPool,
    codec: &EventCodec,
    cache: &Arc<AggregateCache>,
    projectors: &Projectors,
    metrics: &Metrics,
    changes: Option<&Arc<tokio::sync::Notify>>,
) -> Cqrs<A>
where
    A: Aggregate<Services = ()> + 'static,
{
    let mut waker = projectors.waker(A::TYPE);
    if let Some(changes) = changes {
        waker = waker.and(changes.clone());
    }
    CqrsFramework::new(
        CachedEventStore::new(pool.clone(), codec.clone(), cache.clone()),
        vec![Box::new(waker), Box::new(metrics.clone())],
        (),
    )
}
