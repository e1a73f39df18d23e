//! The flags the commands share and take, with environment fallbacks, and the [`Config`] they
//! describe.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, Subcommand};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;

use crate::config::{BackupConfig, Config, DatabaseConfig, Region, SessionPolicy, GB};

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Create an organisation and its first administrator. The password is read from
    /// CUSTOS_ADMIN_PASSWORD or, if unset, from the first line of standard input.
    Create(TenantCreateArgs),
    /// Rotate the key that signs the organisation's tree heads: a hand-over tree head, signed
    /// by the key in force, names a new random key, which signs every later head. Works
    /// beside a running service (with DATABASE_URL).
    RotateAuditKey(TenantRotateArgs),
    /// Write the organisation's archive: every event as stored, its signed tree heads and
    /// signing key, its subjects' keys and two-factor secrets, and the record of who read whom.
    /// Its secrets are sealed under a key encrypted to the age recipients given with
    /// --recipient, or else derived from a passphrase with Argon2id: the passphrase comes from
    /// CUSTOS_ARCHIVE_PASSPHRASE, --passphrase-file, or the first line of standard input.
    Export(TenantExportArgs),
    /// Bring an organisation in from its archive: checked and verified against its signed tree
    /// heads before anything is kept; its signing key is then handed over to a new one and its
    /// read models rebuilt. Opened with --identity (an archive written to age recipients) or
    /// its passphrase, as for export.
    Import(TenantImportArgs),
    /// Move the organisation to another region's server: not served meanwhile; exported,
    /// imported and verified there, the catalog switched, the old database dropped. A failure
    /// leaves it where it was. Run it with the service stopped (users log in again afterwards).
    Move(TenantMoveArgs),
    /// List every organisation: status, plan, trial end, cancellation and purge dates.
    List(TenantListArgs),
    /// Put the organisation on a plan (basic, standard, maxi or premium): ends a trial (or an
    /// expired one's grace period), every record kept.
    Plan(TenantPlanArgs),
    /// Suspend the organisation (late payment, a serious reason): until resumed its users get
    /// SUSPENDED; its administrators may read its status and export its data.
    Suspend(TenantReasonArgs),
    /// Resume a suspended organisation: served again as it was.
    Resume(TenantReasonArgs),
    /// Let the organisation's trial run until a later date (also after it expired, before its
    /// purge).
    ExtendTrial(TenantExtendTrialArgs),
    /// Cancel the organisation's subscription: served until the end of a month's notice from
    /// the first day of the following month, then its migration window opens.
    Cancel(TenantSlugArgs),
    /// Withdraw a cancellation before it takes effect.
    WithdrawCancellation(TenantSlugArgs),
    /// Delete the organisation for good once an ended trial's grace period or an ended
    /// subscription's migration window is over (earlier only with --now and a --reason): its
    /// last tree head is signed and recorded, its database, role, keys, files and backup
    /// archives deleted, and the catalog keeps a tombstone. Run again, it finishes a purge
    /// that was cut short.
    Purge(TenantPurgeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TenantPurgeArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
    /// Purge before the grace period or migration window is over.
    #[arg(long, requires = "reason")]
    pub(crate) now: bool,
    /// Why it is purged early, kept in its history and tombstone (no personal data).
    #[arg(long, requires = "now")]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TenantListArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TenantSlugArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
}

#[derive(Debug, Args)]
pub(crate) struct TenantPlanArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
    /// basic, standard, maxi or premium.
    #[arg(long)]
    pub(crate) plan: String,
}

#[derive(Debug, Args)]
pub(crate) struct TenantReasonArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
    /// Why, kept in the organisation's history (no personal data).
    #[arg(long)]
    pub(crate) reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct TenantExtendTrialArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
    /// The new end of the trial: a date (2027-01-31, the end of that day, UTC) or an RFC 3339
    /// time.
    #[arg(long)]
    pub(crate) until: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up now and verify it. Private cluster: a base backup (beside a running service,
    /// or starting the cluster), then the backups and WAL the newest verified ones no longer
    /// need are removed. With DATABASE_URL: an archive of every organisation (or --slug),
    /// each imported into a scratch database to verify it. The backup passphrase comes from
    /// CUSTOS_BACKUP_PASSPHRASE, --backup-passphrase-file, or the first line of standard
    /// input.
    Now(BackupArgs),
    /// List the backups, newest first, with their verification (and the WAL archive of the
    /// private cluster).
    List(BackupArgs),
    /// Verify a backup again (the newest by default; with DATABASE_URL, every
    /// organisation's newest archive). Private cluster: pg_verifybackup against its manifest,
    /// its sealed keys opened, a copy started in a scratch directory and every organisation
    /// in it verified. Archives: imported whole into a scratch database, then dropped. Exits
    /// 1 when it does not verify.
    Verify(BackupVerifyArgs),
    /// Restore. Private cluster: into a new data directory (--into), to a moment (--to) or
    /// the newest state the archive has — the newest base backup from before it, its WAL
    /// replayed, every organisation verified and every erasure made since replayed; start it
    /// with `custos serve --data-dir DIR`. With DATABASE_URL: one organisation (--slug) from
    /// its newest verified archive taken at or before --to, verified as it is imported, in
    /// place of its database (or created again when the catalog lost it); erasures made since
    /// are made again. Works beside running instances (requests to it fail meanwhile).
    Restore(BackupRestoreArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// With DATABASE_URL: only this organisation.
    #[arg(long)]
    pub(crate) slug: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BackupVerifyArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The backup's id (as `custos backup list` shows it).
    #[arg(long)]
    pub(crate) id: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BackupRestoreArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The moment to restore, RFC 3339 (2026-12-02T09:30:00Z); the newest state otherwise.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Private cluster: the new data directory (absent or empty).
    #[arg(long)]
    pub(crate) into: Option<PathBuf>,
    /// With DATABASE_URL: the organisation to restore.
    #[arg(long)]
    pub(crate) slug: Option<String>,
    /// The backup to start from (default: the newest that finished before --to).
    #[arg(long)]
    pub(crate) backup: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TenantMoveArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
    /// The region to move to: eu or us.
    #[arg(long)]
    pub(crate) region: String,
}

#[derive(Debug, Args)]
pub(crate) struct TenantExportArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
    /// The archive file to write (must not exist).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// An age X25519 recipient (`age1…`, as `age-keygen` prints it) to encrypt the archive's
    /// key to, instead of a passphrase; repeat it for several (up to 20). Only their
    /// identities open the archive.
    #[arg(long = "recipient", conflicts_with = "passphrase_file")]
    pub(crate) recipients: Vec<String>,
    /// A file whose first line is the passphrase.
    #[arg(long)]
    pub(crate) passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TenantImportArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The archive file.
    #[arg(long = "in")]
    pub(crate) input: PathBuf,
    /// The slug here (default: the archive's).
    #[arg(long)]
    pub(crate) slug: Option<String>,
    /// The region here, eu or us (default: the archive's).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// The organisation's first signing key (64 hex digits: generation 0 of
    /// `organization { auditKeys }` on the server it comes from, or what its auditors
    /// pinned). Without it the archive's history is checked against the key the archive itself
    /// names, which someone holding the passphrase — or anyone, for an archive written to age
    /// recipients, whose public keys encrypt for all — could have replaced.
    #[arg(long)]
    pub(crate) expect_key: Option<String>,
    /// The age identity file (as `age-keygen` writes it) of a recipient the archive was
    /// written to; then no passphrase is read.
    #[arg(long, conflicts_with = "passphrase_file")]
    pub(crate) identity: Option<PathBuf>,
    /// A file whose first line is the passphrase.
    #[arg(long)]
    pub(crate) passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TenantRotateArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The organisation's slug.
    #[arg(long)]
    pub(crate) slug: String,
}

/// Where data lives: shared by every command.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// The data directory: master key and, without DATABASE_URL, the private PostgreSQL cluster.
    #[arg(long, env = "CUSTOS_DATA_DIR", default_value = "./.custos")]
    pub(crate) data_dir: PathBuf,
    /// A PostgreSQL server to use instead of the private cluster (the role needs CREATEDB and
    /// CREATEROLE). Its database, if named, is the catalog.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Server for the `eu` region, when not the default server.
    #[arg(long, env = "CUSTOS_REGION_EU_URL", hide_env_values = true)]
    pub(crate) region_eu_url: Option<String>,
    /// Server for the `us` region, when not the default server.
    #[arg(long, env = "CUSTOS_REGION_US_URL", hide_env_values = true)]
    pub(crate) region_us_url: Option<String>,
    /// Where the private cluster's backups go (WAL archive and base backups): best another
    /// disk or a mount of another machine. Without it no backup is taken.
    #[arg(long, env = "CUSTOS_BACKUP_DIR")]
    pub(crate) backup_dir: Option<PathBuf>,
    /// A file whose first line is the backup passphrase (or set CUSTOS_BACKUP_PASSPHRASE): it
    /// seals the master key inside each backup.
    #[arg(long, env = "CUSTOS_BACKUP_PASSPHRASE_FILE")]
    pub(crate) backup_passphrase_file: Option<PathBuf>,
    /// How many verified base backups to keep.
    #[arg(long, env = "CUSTOS_BACKUP_KEEP", default_value_t = 7)]
    pub(crate) backup_keep: usize,
    /// Days a new organisation's trial lasts.
    #[arg(long, env = "CUSTOS_TRIAL_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub(crate) trial_days: u32,
    /// Days an expired trial is kept (a plan chosen meanwhile keeps everything) before it may
    /// be purged.
    #[arg(long, env = "CUSTOS_TRIAL_GRACE_DAYS", default_value_t = 14, value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub(crate) trial_grace_days: u32,
    /// Days administrators may take their data away after a cancellation took effect.
    #[arg(long, env = "CUSTOS_MIGRATION_WINDOW_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub(crate) migration_window_days: u32,
    /// The storage each plan includes, in GB (10⁹ bytes): a trial's, beyond which it takes no
    /// new data.
    #[arg(long, env = "CUSTOS_STORAGE_GB_TRIAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) storage_gb_trial: u64,
    /// Basic's storage, in GB.
    #[arg(long, env = "CUSTOS_STORAGE_GB_BASIC", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) storage_gb_basic: u64,
    /// Standard's storage, in GB.
    #[arg(long, env = "CUSTOS_STORAGE_GB_STANDARD", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) storage_gb_standard: u64,
    /// Maxi's storage, in GB.
    #[arg(long, env = "CUSTOS_STORAGE_GB_MAXI", default_value_t = 80, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) storage_gb_maxi: u64,
    /// Premium's storage, in GB, when one limit applies to every Premium client (unset: agreed
    /// with each, none applied automatically).
    #[arg(long, env = "CUSTOS_STORAGE_GB_PREMIUM", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) storage_gb_premium: Option<u64>,
    /// Beyond a plan's storage, each begun step of this many GB is a billable overage.
    #[arg(long, env = "CUSTOS_STORAGE_STEP_GB", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) storage_step_gb: u64,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Address to listen on.
    #[arg(long, env = "CUSTOS_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Do not serve GraphiQL on GET /graphql.
    #[arg(long, env = "CUSTOS_NO_GRAPHIQL")]
    pub(crate) no_graphiql: bool,
    /// Refuse GraphQL introspection queries.
    #[arg(long, env = "CUSTOS_NO_INTROSPECTION")]
    pub(crate) no_introspection: bool,
    /// Origins of browser apps allowed to call the API across origins (CORS), separated by
    /// commas, e.g. `https://app.example.com,http://localhost:5173`. None by default.
    #[arg(long, env = "CUSTOS_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub(crate) cors_origins: Vec<String>,
    /// Seconds a new WebSocket connection has to send `connection_init` (closed with 4408
    /// after).
    #[arg(long, env = "CUSTOS_WS_INIT_TIMEOUT_SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) ws_init_timeout_seconds: u64,
    /// Seconds between the WebSocket pings the service sends; a connection that sent nothing,
    /// not even a pong, by the next ping is let go. Keep it below a proxy's idle timeout.
    #[arg(long, env = "CUSTOS_WS_KEEPALIVE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) ws_keepalive_seconds: u64,
    /// Operations (subscriptions) running at once on one WebSocket connection.
    #[arg(long, env = "CUSTOS_WS_MAX_OPERATIONS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) ws_max_operations: u64,
    /// WebSocket connections open at once per organisation (more are closed with 4429).
    #[arg(long, env = "CUSTOS_WS_MAX_CONNECTIONS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) ws_max_connections: u64,
    /// Minutes of inactivity after which a session ends.
    #[arg(long, env = "CUSTOS_SESSION_IDLE_MINUTES", default_value_t = 30)]
    pub(crate) session_idle_minutes: u64,
    /// Hours after login at which a session ends, however active.
    #[arg(long, env = "CUSTOS_SESSION_LIFETIME_HOURS", default_value_t = 12)]
    pub(crate) session_lifetime_hours: u64,
    /// Minutes between runs of every organisation's retention policies (0: never; run them
    /// with `custos retention run` or the `runRetention` mutation instead).
    #[arg(long, env = "CUSTOS_RETENTION_INTERVAL_MINUTES", default_value_t = 60)]
    pub(crate) retention_interval_minutes: u64,
    /// The mail server notifications are sent through: `smtp://host:port`,
    /// `smtp://user:password@host:587?tls=required` (STARTTLS) or `smtps://…` (TLS). Unset:
    /// notifications wait in the outbox, unsent, until one is configured.
    #[arg(long, env = "CUSTOS_SMTP_URL", hide_env_values = true)]
    pub(crate) smtp_url: Option<String>,
    /// Seconds a delivery worker holds a notification it took; if it dies meanwhile, another
    /// (or the next start) sends it after that.
    #[arg(long, env = "CUSTOS_NOTIFICATION_LEASE_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) notification_lease_seconds: u64,
    /// Seconds a delivery worker holds a webhook it delivers to; if it dies meanwhile,
    /// another (or the next start) goes on after that, sending the message it was sending
    /// again (with the same `webhook-id`). At least 16: a delivery may take 10.
    #[arg(long, env = "CUSTOS_WEBHOOK_LEASE_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(16..=86_400))]
    pub(crate) webhook_lease_seconds: u64,
    /// Let webhooks reach private, loopback and other non-public addresses (a receiver on the
    /// same network). Link-local addresses (cloud metadata) are never reached.
    #[arg(long, env = "CUSTOS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES")]
    pub(crate) webhook_allow_private_addresses: bool,
    /// Who notification emails are from.
    #[arg(
        long,
        env = "CUSTOS_MAIL_FROM",
        default_value = "Custos <custos@localhost>"
    )]
    pub(crate) mail_from: String,
    /// Minutes between measurements of every organisation's storage; 0 turns them off.
    #[arg(long, env = "CUSTOS_STORAGE_INTERVAL_MINUTES", default_value_t = 60)]
    pub(crate) storage_interval_minutes: u64,
    /// Seconds between checkpoints (signed tree heads of the Merkle log) of every open
    /// organisation (0: only on demand, with the `createCheckpoint` mutation).
    #[arg(long, env = "CUSTOS_CHECKPOINT_INTERVAL_SECONDS", default_value_t = 60)]
    pub(crate) checkpoint_interval_seconds: u64,
    /// How often a base backup is taken and verified, with CUSTOS_BACKUP_DIR (`24h`, `6h`,
    /// `30m`; `0`: only with `custos backup now`).
    #[arg(long, env = "CUSTOS_BACKUP_INTERVAL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) backup_interval: std::time::Duration,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Only this organisation (its slug); every organisation otherwise.
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// The witness file of signed tree heads to check against (with --tenant; default: the
    /// one in the data directory, `checkpoints/<tenant id>.jsonl`).
    #[arg(long)]
    pub(crate) checkpoints: Option<PathBuf>,
    /// Also rebuild every read model from the events (into temporary tables, rolled back) and
    /// report the rows that differ from the live read model. Replays every event once per
    /// read model: slow on large organisations.
    #[arg(long)]
    pub(crate) read_models: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyProofArgs {
    /// The organisation's Ed25519 public key, 64 hex digits (`organization { auditKey }`).
    #[arg(long)]
    pub(crate) public_key: String,
    /// The saved proof: JSON of an `eventProof` or `consistencyProof` with every field, or the
    /// whole GraphQL response holding it.
    pub(crate) file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Where each read model of every organisation (or one) stands: when its checkpoint last
    /// moved, how many events of its kinds it has not applied yet and how old the oldest is.
    /// Works beside a running service.
    Status(ProjectionsStatusArgs),
    /// Rebuilds one read model of every organisation (or one) from the events, into tables
    /// beside the live one while it keeps serving, then swaps them in in one transaction.
    /// Works beside a running service.
    Rebuild(ProjectionsRebuildArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProjectionsRebuildArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The read model, by the name `custos projections status` shows (e.g. `records`).
    pub(crate) name: String,
    /// Only this organisation (its slug).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectionsStatusArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Only this organisation (its slug).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RetentionCommand {
    /// Run every organisation's retention policies now (or one organisation's), print what
    /// was erased, and exit.
    Run(RetentionRunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RetentionRunArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Only this organisation (its slug).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TenantCreateArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Short name used at login (3-63 lower-case letters, digits, dashes).
    #[arg(long)]
    pub(crate) slug: String,
    /// The organisation's display name.
    #[arg(long)]
    pub(crate) name: String,
    /// Data region: eu or us.
    #[arg(long)]
    pub(crate) region: String,
    #[arg(long)]
    pub(crate) admin_email: String,
    #[arg(long)]
    pub(crate) admin_name: String,
}

fn parse_url(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|_| anyhow::anyhow!("not a valid PostgreSQL URL (the value is not shown)"))
}

impl CommonArgs {
    /// The configuration these flags describe, with defaults for the rest.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let (database, catalog) = match &self.database_url {
            Some(url) => {
                let options = parse_url(url)?;
                let catalog = options.get_database().unwrap_or("custos").to_owned();
                (DatabaseConfig::External(Box::new(options)), catalog)
            }
            None => (DatabaseConfig::Private, "custos".to_owned()),
        };
        let mut config = Config::new(self.data_dir.clone(), database);
        config.catalog_database = catalog;
        let mut regions = HashMap::new();
        for (region, url) in [
            (Region::Eu, &self.region_eu_url),
            (Region::Us, &self.region_us_url),
        ] {
            if let Some(url) = url {
                regions.insert(region, parse_url(url)?);
            }
        }
        config.regions = regions;
        let days = |n: u32| std::time::Duration::from_secs(u64::from(n) * 24 * 60 * 60);
        config.lifecycle.trial = days(self.trial_days);
        config.lifecycle.trial_grace = days(self.trial_grace_days);
        config.lifecycle.migration_window = days(self.migration_window_days);
        config.storage.trial = self.storage_gb_trial * GB;
        config.storage.basic = self.storage_gb_basic * GB;
        config.storage.standard = self.storage_gb_standard * GB;
        config.storage.maxi = self.storage_gb_maxi * GB;
        config.storage.premium = self.storage_gb_premium.map(|gb| gb * GB);
        config.storage.step = self.storage_step_gb * GB;
        config.master_key = std::env::var("CUSTOS_MASTER_KEY")
            .ok()
            .map(SecretString::from);
        // Given, or the one the data directory was last started with; always absolute, since
        // PostgreSQL's archive and restore commands run elsewhere.
        let backup_dir = self
            .backup_dir
            .clone()
            .or_else(|| crate::infra::database::remembered_backup_dir(&self.data_dir))
            .map(std::path::absolute)
            .transpose()?;
        config.backups = match &backup_dir {
            Some(dir) => {
                let mut backups = BackupConfig::new(dir.clone());
                backups.keep = self.backup_keep.max(1);
                // Never standard input here: `serve` has none to read from.
                backups.passphrase = match (
                    std::env::var("CUSTOS_BACKUP_PASSPHRASE").is_ok(),
                    &self.backup_passphrase_file,
                ) {
                    (false, None) => None,
                    (_, file) => Some(backup_passphrase(file.as_deref())?),
                };
                Some(backups)
            }
            None => None,
        };
        Ok(config)
    }
}

impl ServeArgs {
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let mut config = self.common.config()?;
        config.listen = self.listen;
        config.graphiql = !self.no_graphiql;
        config.introspection = !self.no_introspection;
        config.cors_origins = self.cors_origins.clone();
        config.websockets = crate::config::WebSocketLimits {
            init_timeout: std::time::Duration::from_secs(self.ws_init_timeout_seconds),
            keepalive: std::time::Duration::from_secs(self.ws_keepalive_seconds),
            max_operations: usize::try_from(self.ws_max_operations)?,
            max_connections_per_organization: usize::try_from(self.ws_max_connections)?,
        };
        // From the environment only: a flag's value would show in the process list.
        config.metrics_token = std::env::var("CUSTOS_METRICS_TOKEN")
            .ok()
            .filter(|token| !token.trim().is_empty())
            .map(SecretString::from);
        config.checkpoint_interval = (self.checkpoint_interval_seconds > 0)
            .then(|| std::time::Duration::from_secs(self.checkpoint_interval_seconds));
        config.lifecycle.interval = Some(std::time::Duration::from_secs(60));
        config.notifications.smtp_url = self.smtp_url.clone().map(SecretString::from);
        config.notifications.from = self.mail_from.clone();
        config.notifications.lease =
            std::time::Duration::from_secs(self.notification_lease_seconds);
        config.notifications.interval = Some(std::time::Duration::from_secs(1));
        config.webhooks.interval = Some(std::time::Duration::from_secs(1));
        config.webhooks.lease = std::time::Duration::from_secs(self.webhook_lease_seconds);
        config.webhooks.allow_private = self.webhook_allow_private_addresses;
        config.storage.interval = (self.storage_interval_minutes > 0)
            .then(|| std::time::Duration::from_secs(self.storage_interval_minutes * 60));
        config.retention_interval = (self.retention_interval_minutes > 0)
            .then(|| std::time::Duration::from_secs(self.retention_interval_minutes * 60));
        if let Some(backups) = &mut config.backups {
            if self.backup_interval.is_zero() {
                backups.interval = None;
            } else {
                backups.interval = Some(self.backup_interval);
                match &backups.passphrase {
                    None => anyhow::bail!(
                        "backups go to {} but there is no backup passphrase: set \
                         CUSTOS_BACKUP_PASSPHRASE or CUSTOS_BACKUP_PASSPHRASE_FILE",
                        backups.dir.display()
                    ),
                    Some(passphrase)
                        if secrecy::ExposeSecret::expose_secret(passphrase)
                            .chars()
                            .count()
                            < crate::infra::archive::format::MIN_PASSPHRASE_CHARS =>
                    {
                        anyhow::bail!(
                            "the backup passphrase must be at least {} characters long",
                            crate::infra::archive::format::MIN_PASSPHRASE_CHARS
                        )
                    }
                    Some(_) => {}
                }
            }
        }
        config.sessions = SessionPolicy {
            idle_timeout: std::time::Duration::from_secs(self.session_idle_minutes * 60),
            absolute_lifetime: std::time::Duration::from_secs(self.session_lifetime_hours * 3600),
        };
        Ok(config)
    }
}

/// The administrator's password for `tenant create`: CUSTOS_ADMIN_PASSWORD, else one line of
/// standard input. Never a flag, so it never shows in a process list or shell history.
/// A web origin as browsers send it: `scheme://host[:port]`, nothing after.
fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    let url = url::Url::parse(text).map_err(|err| format!("{text:?} is not an origin: {err}"))?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || origin != text.trim_end_matches('/') {
        return Err(format!(
            "{text:?} is not an origin: give scheme, host and port only, e.g. https://app.example.com"
        ));
    }
    Ok(origin)
}

pub(crate) fn admin_password() -> anyhow::Result<SecretString> {
    secret_line("CUSTOS_ADMIN_PASSWORD", None).and_then(|secret| {
        secret.ok_or_else(|| {
            anyhow::anyhow!("no password: set CUSTOS_ADMIN_PASSWORD or write it on standard input")
        })
    })
}

/// Reads the passphrase of an archive: `CUSTOS_ARCHIVE_PASSPHRASE`, else the first line of
/// `file`, else the first line of standard input (never a command-line argument, which other
/// users of the machine can see).
pub(crate) fn archive_passphrase(file: Option<&Path>) -> anyhow::Result<SecretString> {
    secret_line("CUSTOS_ARCHIVE_PASSPHRASE", file)?.ok_or_else(|| {
        anyhow::anyhow!("no passphrase: set CUSTOS_ARCHIVE_PASSPHRASE, pass --passphrase-file, or write it on standard input")
    })
}

/// The passphrase that seals the master key inside backups: `CUSTOS_BACKUP_PASSPHRASE`, else
/// the first line of `file`, else the first line of standard input.
pub(crate) fn backup_passphrase(file: Option<&Path>) -> anyhow::Result<SecretString> {
    secret_line("CUSTOS_BACKUP_PASSPHRASE", file)?.ok_or_else(|| {
        anyhow::anyhow!("no backup passphrase: set CUSTOS_BACKUP_PASSPHRASE, pass --backup-passphrase-file, or write it on standard input")
    })
}

/// A secret from the environment variable `var`, else the first line of `file`, else the first
/// line of standard input; `None` when that line is empty.
fn secret_line(var: &str, file: Option<&Path>) -> anyhow::Result<Option<SecretString>> {
    if let Ok(value) = std::env::var(var) {
        return Ok(Some(SecretString::from(value)));
    }
    let mut line = String::new();
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            line = text.lines().next().unwrap_or_default().to_owned();
        }
        None => {
            std::io::stdin().lock().read_line(&mut line)?;
        }
    }
    let secret = line.trim_end_matches(['\n', '\r']).to_owned();
    Ok((!secret.is_empty()).then(|| SecretString::from(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_names_the_catalog() {
        let args = CommonArgs {
            data_dir: "/tmp/x".into(),
            database_url: Some("postgres://u:p@db.internal/records".into()),
            region_eu_url: None,
            region_us_url: None,
            backup_dir: None,
            backup_passphrase_file: None,
            backup_keep: 7,
            trial_days: 14,
            trial_grace_days: 0,
            migration_window_days: 30,
            storage_gb_trial: 1,
            storage_gb_basic: 30,
            storage_gb_standard: 50,
            storage_gb_maxi: 80,
            storage_gb_premium: None,
            storage_step_gb: 10,
        };
        let config = args.config().unwrap();
        assert_eq!(config.catalog_database, "records");
        assert_eq!(
            config.lifecycle.trial,
            std::time::Duration::from_secs(14 * 86_400)
        );
        assert_eq!(config.lifecycle.trial_grace, std::time::Duration::ZERO);
        assert_eq!(config.storage.limit(None), Some(1_000_000_000));
        assert_eq!(
            config.storage.limit(Some(custos_domain::Plan::Premium)),
            None
        );
        assert!(matches!(config.database, DatabaseConfig::External(_)));
    }
}
