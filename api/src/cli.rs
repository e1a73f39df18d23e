//! The `custos` command line: flags with environment fallbacks, turned into a [`Config`].

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;

use crate::config::{Config, DatabaseConfig, SessionPolicy};
use crate::telemetry::LogFormat;
use crate::tenancy::Region;

#[derive(Debug, Parser)]
#[command(
    name = "custos",
    version,
    about = "Custos: accountable records about people, event-sourced."
)]
pub struct Cli {
    /// How log lines are written: text (the default) or json. (No clap default: with a global
    /// flag, a default would let the subcommand overwrite a value given before it.)
    #[arg(long, env = "CUSTOS_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (GraphQL on /graphql).
    Serve(ServeArgs),
    /// Apply database migrations to the catalog, the tenant template and every tenant, then exit.
    Migrate(CommonArgs),
    /// Manage tenants (organisations).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Data retention.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Verify the event store: every stream's hash chain and the signed checkpoints (against
    /// the checkpoint files). Works whether or not the service is running on the data
    /// directory. Exits 1 when anything does not verify.
    Verify(VerifyArgs),
    /// Measure write and read throughput on this machine (see docs/performance.md).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create an organisation and its first administrator. The password is read from
    /// CUSTOS_ADMIN_PASSWORD or, if unset, from the first line of standard input.
    Create(TenantCreateArgs),
}

/// Where data lives: shared by every command.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The data directory: master key and, without DATABASE_URL, the private PostgreSQL cluster.
    #[arg(long, env = "CUSTOS_DATA_DIR", default_value = "./.custos")]
    pub data_dir: PathBuf,
    /// A PostgreSQL server to use instead of the private cluster (the role needs CREATEDB and
    /// CREATEROLE). Its database, if named, is the catalog.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Server for the `eu` region, when not the default server.
    #[arg(long, env = "CUSTOS_REGION_EU_URL", hide_env_values = true)]
    pub region_eu_url: Option<String>,
    /// Server for the `us` region, when not the default server.
    #[arg(long, env = "CUSTOS_REGION_US_URL", hide_env_values = true)]
    pub region_us_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on.
    #[arg(long, env = "CUSTOS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Do not serve GraphiQL on GET /graphql.
    #[arg(long, env = "CUSTOS_NO_GRAPHIQL")]
    pub no_graphiql: bool,
    /// Refuse GraphQL introspection queries.
    #[arg(long, env = "CUSTOS_NO_INTROSPECTION")]
    pub no_introspection: bool,
    /// Minutes of inactivity after which a session ends.
    #[arg(long, env = "CUSTOS_SESSION_IDLE_MINUTES", default_value_t = 30)]
    pub session_idle_minutes: u64,
    /// Hours after login at which a session ends, however active.
    #[arg(long, env = "CUSTOS_SESSION_LIFETIME_HOURS", default_value_t = 12)]
    pub session_lifetime_hours: u64,
    /// Minutes between runs of every organisation's retention policies (0: never; run them
    /// with `custos retention run` or the `runRetention` mutation instead).
    #[arg(long, env = "CUSTOS_RETENTION_INTERVAL_MINUTES", default_value_t = 60)]
    pub retention_interval_minutes: u64,
    /// Seconds between signed checkpoints of every open organisation's event store (0: only on
    /// demand, with the `createCheckpoint` mutation).
    #[arg(long, env = "CUSTOS_CHECKPOINT_INTERVAL_SECONDS", default_value_t = 60)]
    pub checkpoint_interval_seconds: u64,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only this organisation (its slug); every organisation otherwise.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The checkpoint file to check against (with --tenant; default: the one in the data
    /// directory, `checkpoints/<tenant id>.jsonl`).
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Run every organisation's retention policies now (or one organisation's), print what
    /// was erased, and exit.
    Run(RetentionRunArgs),
}

#[derive(Debug, Args)]
pub struct RetentionRunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only this organisation (its slug).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct TenantCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Short name used at login (3-63 lower-case letters, digits, dashes).
    #[arg(long)]
    pub slug: String,
    /// The organisation's display name.
    #[arg(long)]
    pub name: String,
    /// Data region: eu or us.
    #[arg(long)]
    pub region: String,
    #[arg(long)]
    pub admin_email: String,
    #[arg(long)]
    pub admin_name: String,
}

fn parse_url(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|_| anyhow::anyhow!("not a valid PostgreSQL URL (the value is not shown)"))
}

impl CommonArgs {
    /// The configuration these flags describe, with defaults for the rest.
    pub fn config(&self) -> anyhow::Result<Config> {
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
        config.master_key = std::env::var("CUSTOS_MASTER_KEY")
            .ok()
            .map(SecretString::from);
        Ok(config)
    }
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = self.common.config()?;
        config.listen = self.listen;
        config.graphiql = !self.no_graphiql;
        config.introspection = !self.no_introspection;
        config.checkpoint_interval = (self.checkpoint_interval_seconds > 0)
            .then(|| std::time::Duration::from_secs(self.checkpoint_interval_seconds));
        config.retention_interval = (self.retention_interval_minutes > 0)
            .then(|| std::time::Duration::from_secs(self.retention_interval_minutes * 60));
        config.sessions = SessionPolicy {
            idle_timeout: std::time::Duration::from_secs(self.session_idle_minutes * 60),
            absolute_lifetime: std::time::Duration::from_secs(self.session_lifetime_hours * 3600),
        };
        Ok(config)
    }
}

/// The administrator's password for `tenant create`: CUSTOS_ADMIN_PASSWORD, else one line of
/// standard input. Never a flag, so it never shows in a process list or shell history.
pub fn admin_password() -> anyhow::Result<SecretString> {
    if let Ok(password) = std::env::var("CUSTOS_ADMIN_PASSWORD") {
        return Ok(SecretString::from(password));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        anyhow::bail!("no password: set CUSTOS_ADMIN_PASSWORD or write it on standard input");
    }
    Ok(SecretString::from(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_help() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for args in [
            vec!["custos", "serve", "--listen", "127.0.0.1:0"],
            vec!["custos", "migrate"],
            vec![
                "custos",
                "tenant",
                "create",
                "--slug",
                "a-b",
                "--name",
                "N",
                "--region",
                "eu",
                "--admin-email",
                "a@b.io",
                "--admin-name",
                "A",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_ok());
        }
        assert!(Cli::try_parse_from(["custos", "tenant", "create", "--password", "x"]).is_err());
        for args in [
            ["custos", "--log-format", "json", "migrate"],
            ["custos", "migrate", "--log-format", "json"],
        ] {
            assert_eq!(
                Cli::try_parse_from(args).unwrap().log_format,
                Some(LogFormat::Json)
            );
        }
    }

    #[test]
    fn a_database_url_names_the_catalog() {
        let args = CommonArgs {
            data_dir: "/tmp/x".into(),
            database_url: Some("postgres://u:p@db.internal/records".into()),
            region_eu_url: None,
            region_us_url: None,
        };
        let config = args.config().unwrap();
        assert_eq!(config.catalog_database, "records");
        assert!(matches!(config.database, DatabaseConfig::External(_)));
    }
}
