//! Service configuration, built from flags and environment by the CLI (or directly by tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;

/// A data region a client can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    Eu,
    Us,
}

impl Region {
    pub const ALL: [Region; 2] = [Region::Eu, Region::Us];

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Eu => "eu",
            Region::Us => "us",
        }
    }
}

impl FromStr for Region {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "eu" => Ok(Region::Eu),
            "us" => Ok(Region::Us),
            _ => Err(()),
        }
    }
}

/// Where PostgreSQL is.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// Run a private cluster under `<data-dir>/postgres` (the default).
    Private,
    /// Use this server; the role must be allowed to create databases and roles.
    External(Box<PgConnectOptions>),
}

/// Backups (`CUSTOS_BACKUP_DIR`): of the private cluster, WAL archiving and base backups; with
/// `DATABASE_URL`, archives of every organisation.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Where the WAL archive and the base backups, or the organisation archives, go (best on
    /// another disk or a mount of another machine).
    pub dir: PathBuf,
    /// Seals the master key and the superuser password inside each base backup, or the
    /// secrets of each organisation archive (Argon2id); a scheduled backup needs it, and so
    /// does a restore.
    pub passphrase: Option<SecretString>,
    /// How often a base backup is taken, or every organisation archived (and verified);
    /// `None`: only `custos backup now`.
    pub interval: Option<Duration>,
    /// How many verified base backups are kept (with the WAL to restore from the oldest), or
    /// verified archives per organisation.
    pub keep: usize,
}

impl BackupConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            passphrase: None,
            interval: None,
            keep: 7,
        }
    }
}

/// Session lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session unused for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after login, however active.
    pub absolute_lifetime: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_lifetime: Duration::from_secs(12 * 60 * 60),
        }
    }
}

/// Everything `Application::build` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    /// The catalog database's name on the default server.
    pub catalog_database: String,
    /// Servers for regions that do not live on the default server.
    pub regions: HashMap<Region, PgConnectOptions>,
    /// `CUSTOS_MASTER_KEY`; when absent the key file in the data directory is used.
    pub master_key: Option<SecretString>,
    pub sessions: SessionPolicy,
    /// Serve GraphiQL on `GET /graphql`.
    pub graphiql: bool,
    /// Answer GraphQL introspection queries (switch off in production if clients do not need it).
    pub introspection: bool,
    /// `CUSTOS_METRICS_TOKEN`: when set, `/metrics` answers only requests that present it as
    /// a bearer token.
    pub metrics_token: Option<SecretString>,
    /// Origins allowed to call the API from a browser on another origin (CORS); none when
    /// empty. Each is `scheme://host[:port]`.
    pub cors_origins: Vec<String>,
    /// The limits of GraphQL over WebSocket.
    pub websockets: WebSocketLimits,
    /// Connections per tenant pool (opened lazily, closed when idle).
    pub tenant_pool_size: u32,
    /// Login attempts allowed per client address per minute (a burst of this size, refilled
    /// evenly over the minute).
    pub login_attempts_per_minute: u32,
    /// How many password hashes may be computed at once (each takes ~19 MiB and a core).
    pub password_hash_concurrency: usize,
    /// How long a mutation waits for its events to reach the read models.
    pub projection_wait: Duration,
    /// A tenant context unused this long is closed (pool and projectors).
    pub tenant_idle: Duration,
    /// How often every tenant's retention policies run; `None` (the default outside `serve`)
    /// switches the scheduler off (`runRetention` and `custos retention run` still work).
    pub retention_interval: Option<Duration>,
    /// How often every open tenant gets a signed checkpoint (when something was written since
    /// the last); `None` (the default outside `serve`) switches it off (`createCheckpoint`
    /// still works).
    pub checkpoint_interval: Option<Duration>,
    /// Extra `postgresql.conf` settings for the private cluster.
    pub cluster_settings: Vec<(&'static str, String)>,
    /// Backups of the private cluster; `None`: none are taken.
    pub backups: Option<BackupConfig>,
    /// Trial length, the grace and migration periods, and how often the schedule moves
    /// organisations along.
    pub lifecycle: LifecyclePolicy,
    /// The storage each plan includes, the overage step, and how often it is measured.
    pub storage: StoragePolicy,
    /// Where notifications leave (the mail server) and how their delivery is retried.
    pub notifications: NotificationPolicy,
    /// How webhooks are delivered and retried.
    pub webhooks: WebhookPolicy,
}

/// How notifications are delivered.
#[derive(Debug, Clone)]
pub struct NotificationPolicy {
    /// The mail server (`CUSTOS_SMTP_URL`); `None`: emails stay in the outbox, unsent and
    /// visible, until one is configured.
    pub smtp_url: Option<SecretString>,
    /// Who the emails are from (`CUSTOS_MAIL_FROM`).
    pub from: String,
    /// How often the outbox is looked at (besides at once when this process writes to it);
    /// `None` (the default outside `serve`): nothing is delivered.
    pub interval: Option<Duration>,
    /// Attempts before a notification is given up as a dead letter.
    pub max_attempts: u32,
    /// The wait after the first failed attempt, doubled after each further one (at most
    /// six hours).
    pub retry_base: Duration,
    /// How long a worker holds a notification it took; one that died lets it go then.
    pub lease: Duration,
}

impl Default for NotificationPolicy {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Custos <custos@localhost>".to_owned(),
            interval: None,
            max_attempts: 12,
            retry_base: Duration::from_secs(30),
            lease: Duration::from_secs(120),
        }
    }
}

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    /// How often the organisations with webhooks are looked at (besides at once when this
    /// process commits a change); `None` (the default outside `serve`): nothing is delivered.
    pub interval: Option<Duration>,
    /// How long an endpoint may take to answer one delivery.
    pub timeout: Duration,
    /// The wait after the first failed delivery, doubled after each further one (at most
    /// eight hours).
    pub retry_base: Duration,
    /// Failed deliveries in a row after which Custos disables the webhook.
    pub max_failures: u32,
    /// How long a worker holds a webhook it is delivering to; one that died lets it go then.
    /// Renewed before each delivery that could outlast it; at least `timeout` + 6 s.
    pub lease: Duration,
    /// Whether deliveries may reach private, loopback and other non-public addresses (a
    /// receiver beside the service); link-local addresses are never reached.
    pub allow_private: bool,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            max_failures: 15,
            lease: Duration::from_secs(60),
            allow_private: false,
        }
    }
}

/// One gigabyte as the plans count it (10⁹ bytes).
pub(crate) const GB: u64 = 1_000_000_000;

/// The storage each plan includes (the terms' 30, 50 and 80 GB by default), beyond which each
/// begun step of `step` bytes is a billable overage — and a trial takes no new data.
#[derive(Debug, Clone, Copy)]
pub struct StoragePolicy {
    /// A trial's limit (`CUSTOS_STORAGE_GB_TRIAL`, 30 GB).
    pub trial: u64,
    /// `CUSTOS_STORAGE_GB_BASIC`, 30 GB.
    pub basic: u64,
    /// `CUSTOS_STORAGE_GB_STANDARD`, 50 GB.
    pub standard: u64,
    /// `CUSTOS_STORAGE_GB_MAXI`, 80 GB.
    pub maxi: u64,
    /// Premium's storage is agreed with each client (`CUSTOS_STORAGE_GB_PREMIUM`; unset: no
    /// limit is applied automatically).
    pub premium: Option<u64>,
    /// The overage step (`CUSTOS_STORAGE_STEP_GB`, 10 GB).
    pub step: u64,
    /// How often every organisation's storage is measured; `None` (the default outside
    /// `serve`): never.
    pub interval: Option<Duration>,
}

impl StoragePolicy {
    /// The limits of every plan, as the subscription's storage command takes them.
    pub fn limits(&self) -> custos_domain::StorageLimits {
        custos_domain::StorageLimits {
            trial: Some(self.trial),
            basic: Some(self.basic),
            standard: Some(self.standard),
            maxi: Some(self.maxi),
            premium: self.premium,
            step_bytes: self.step,
        }
    }

    /// The limit of `plan` (`None`: a trial).
    pub fn limit(&self, plan: Option<custos_domain::Plan>) -> Option<u64> {
        self.limits().of(plan)
    }
}

impl Default for StoragePolicy {
    fn default() -> Self {
        Self {
            trial: 30 * GB,
            basic: 30 * GB,
            standard: 50 * GB,
            maxi: 80 * GB,
            premium: None,
            step: 10 * GB,
            interval: None,
        }
    }
}

/// The periods of an organisation's life with the provider.
#[derive(Debug, Clone, Copy)]
pub struct LifecyclePolicy {
    /// How long a new organisation's trial lasts (`CUSTOS_TRIAL_DAYS`, 30).
    pub trial: Duration,
    /// How long an expired trial is kept before its purge (`CUSTOS_TRIAL_GRACE_DAYS`, 14).
    pub trial_grace: Duration,
    /// How long administrators may take their data away after a cancellation took effect
    /// (`CUSTOS_MIGRATION_WINDOW_DAYS`, 30).
    pub migration_window: Duration,
    /// How often ended trials and notice periods are acted on; `None` (the default outside
    /// `serve`): never.
    pub interval: Option<Duration>,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            trial: Duration::from_secs(30 * DAY),
            trial_grace: Duration::from_secs(14 * DAY),
            migration_window: Duration::from_secs(30 * DAY),
            interval: None,
        }
    }
}

/// The limits of GraphQL over WebSocket (`graphql-transport-ws`).
#[derive(Debug, Clone)]
pub struct WebSocketLimits {
    /// How long a new connection may take to send `connection_init` (closed with 4408 after).
    pub init_timeout: Duration,
    /// How often a ping is sent; a connection that sent nothing, not even the pong, by the
    /// next one is let go.
    pub keepalive: Duration,
    /// Operations running at once on one connection (one more is answered with an error).
    pub max_operations: usize,
    /// Connections open at once per organisation (one more is closed with 4429).
    pub max_connections_per_organization: usize,
}

impl Default for WebSocketLimits {
    fn default() -> Self {
        Self {
            init_timeout: Duration::from_secs(3),
            keepalive: Duration::from_secs(30),
            max_operations: 100,
            max_connections_per_organization: 500,
        }
    }
}

impl Config {
    /// Defaults for everything but where data lives.
    pub fn new(data_dir: PathBuf, database: DatabaseConfig) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            database,
            catalog_database: "custos".to_owned(),
            regions: HashMap::new(),
            master_key: None,
            sessions: SessionPolicy::default(),
            graphiql: true,
            introspection: true,
            metrics_token: None,
            cors_origins: Vec::new(),
            websockets: WebSocketLimits::default(),
            tenant_pool_size: 8,
            login_attempts_per_minute: 30,
            // Half the cores: a login flood then leaves the other half to everything else.
            password_hash_concurrency: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).max(1)),
            projection_wait: Duration::from_secs(10),
            tenant_idle: Duration::from_secs(5 * 60),
            retention_interval: None,
            checkpoint_interval: None,
            cluster_settings: vec![("max_connections", "300".to_owned())],
            backups: None,
            lifecycle: LifecyclePolicy::default(),
            storage: StoragePolicy::default(),
            notifications: NotificationPolicy::default(),
            webhooks: WebhookPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_parse_from_their_names() {
        for region in Region::ALL {
            assert_eq!(region.as_str().parse::<Region>(), Ok(region));
        }
        assert!("mars".parse::<Region>().is_err());
    }
}
