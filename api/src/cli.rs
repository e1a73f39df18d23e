//! The `custos` command line: one file per command, and the flags they share in `args`.

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

mod args;
mod backup;
mod migrate;
mod projections;
mod retention;
mod serve;
mod tenant;
mod verify;
mod verify_proof;

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
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (GraphQL on /graphql).
    Serve(args::ServeArgs),
    /// Apply database migrations to the catalog, the tenant template and every tenant, then exit.
    Migrate(args::CommonArgs),
    /// Manage tenants (organisations).
    #[command(subcommand)]
    Tenant(args::TenantCommand),
    /// Read models: where each organisation's projections stand.
    #[command(subcommand)]
    Projections(args::ProjectionsCommand),
    /// Data retention.
    #[command(subcommand)]
    Retention(args::RetentionCommand),
    /// Backups (CUSTOS_BACKUP_DIR): of the private cluster, base backups and the WAL archive,
    /// verified, and point-in-time restore; with DATABASE_URL, verified archives of every
    /// organisation, and restoring one.
    #[command(subcommand)]
    Backup(args::BackupCommand),
    /// Verify the event store: every stream's hash chain and the signed checkpoints (against
    /// the checkpoint files). Works whether or not the service is running on the data
    /// directory. Exits 1 when anything does not verify.
    Verify(args::VerifyArgs),
    /// Check a saved `eventProof` or `consistencyProof` (the proof, or the GraphQL response
    /// holding it) with the organisation's public key (`organization { auditKey }`), offline:
    /// no database, no data directory. Exits 1 with the check that failed.
    VerifyProof(args::VerifyProofArgs),
}

impl Cli {
    /// Runs the chosen command; `Ok(false)` when it ran and found a failure to report through
    /// the exit status (`verify`).
    pub async fn run(self) -> anyhow::Result<bool> {
        match self.command {
            Command::Serve(args) => serve::run(args).await.map(|()| true),
            Command::Migrate(args) => migrate::run(args).await.map(|()| true),
            Command::Tenant(args::TenantCommand::Create(args)) => {
                tenant::create(args).await.map(|()| true)
            }
            Command::Tenant(args::TenantCommand::RotateAuditKey(args)) => {
                tenant::rotate_audit_key(args).await.map(|()| true)
            }
            Command::Tenant(args::TenantCommand::Export(args)) => {
                tenant::export(args).await.map(|()| true)
            }
            Command::Tenant(args::TenantCommand::Import(args)) => {
                tenant::import(args).await.map(|()| true)
            }
            Command::Tenant(args::TenantCommand::Move(args)) => {
                tenant::move_tenant(args).await.map(|()| true)
            }
            Command::Tenant(args::TenantCommand::List(args)) => {
                tenant::list(args).await.map(|()| true)
            }
            Command::Tenant(args::TenantCommand::Purge(args)) => {
                tenant::purge(args).await.map(|()| true)
            }
            Command::Tenant(command) => tenant::lifecycle(command).await.map(|()| true),
            Command::Projections(args::ProjectionsCommand::Status(args)) => {
                projections::status(args).await.map(|()| true)
            }
            Command::Projections(args::ProjectionsCommand::Rebuild(args)) => {
                projections::rebuild(args).await.map(|()| true)
            }
            Command::Retention(args::RetentionCommand::Run(args)) => {
                retention::run(args).await.map(|()| true)
            }
            Command::Backup(args::BackupCommand::Now(args)) => backup::now(args).await,
            Command::Backup(args::BackupCommand::List(args)) => backup::list(args).await,
            Command::Backup(args::BackupCommand::Verify(args)) => backup::verify(args).await,
            Command::Backup(args::BackupCommand::Restore(args)) => backup::restore(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::VerifyProof(args) => Ok(verify_proof::run(&args)),
        }
    }
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
            vec!["custos", "verify-proof", "--public-key", "00", "proof.json"],
            vec!["custos", "backup", "now", "--backup-dir", "/srv/b"],
            vec![
                "custos",
                "backup",
                "restore",
                "--to",
                "2026-12-02T09:30:00Z",
                "--into",
                "/srv/restored",
            ],
            vec!["custos", "serve", "--backup-interval", "6h"],
            vec![
                "custos",
                "tenant",
                "export",
                "--slug",
                "a-b",
                "--out",
                "a.archive",
            ],
            vec![
                "custos",
                "tenant",
                "import",
                "--in",
                "a.archive",
                "--slug",
                "c-d",
                "--region",
                "us",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_ok());
        }
        assert!(Cli::try_parse_from(["custos", "tenant", "create", "--password", "x"]).is_err());
        // A passphrase never comes from the command line, where other users can see it.
        assert!(Cli::try_parse_from([
            "custos",
            "tenant",
            "export",
            "--slug",
            "a-b",
            "--out",
            "f",
            "--passphrase",
            "x"
        ])
        .is_err());
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
}
