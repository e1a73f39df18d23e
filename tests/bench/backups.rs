//! The backups suite (`--suite backups`): the portability suite's organisation (`--events`
//! events, filled if missing) on a private cluster archiving its WAL, then `custos backup now`
//! (a base backup, verified by `pg_verifybackup` and by starting it and verifying every
//! organisation), a tenth as many events again written after it, and `custos backup restore`
//! to the newest state: the base backup copied, that WAL replayed from the archive, the result
//! started, migrated and every organisation verified. Reports each time and the sizes.
//!
//! Then the same organisation backed up as a service on `DATABASE_URL` does it (the running
//! cluster addressed by its URL): `custos backup now --slug` (the organisation's archive,
//! verified by importing it into a scratch database) and `custos backup restore --slug` (the
//! archive imported in place of its database, read models rebuilt).
//!
//! With `--data-dir`, the store (and its backup directory, `<data-dir>/backups`) is reused.

use std::time::{Duration, Instant};

use custos_api::{Application, BackupConfig, Cli, Config, DatabaseConfig};

use crate::common::{data_dir, BenchArgs};
use crate::portability::{organization, SLUG};
use crate::privacy::{events_in, fill};

const PASSPHRASE: &str = "benchmark backup passphrase";

/// Runs a `custos` command in this process on the bench's data and backup directories.
async fn custos(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<bool> {
    custos_in(dir, "backups", args).await
}

/// Runs a `custos` command in this process on the bench's data directory and the backup
/// directory `<dir>/<backups>`.
async fn custos_in(dir: &std::path::Path, backups: &str, args: &[&str]) -> anyhow::Result<bool> {
    use clap::Parser;
    let (data, backups, passphrase) = (
        dir.display().to_string(),
        dir.join(backups).display().to_string(),
        dir.join("backup.passphrase").display().to_string(),
    );
    let mut argv = vec!["custos"];
    argv.extend_from_slice(args);
    argv.extend([
        "--data-dir",
        &data,
        "--backup-dir",
        &backups,
        "--backup-passphrase-file",
        &passphrase,
    ]);
    Cli::try_parse_from(argv)?.run().await
}

/// The running private cluster of `dir` as a `DATABASE_URL` (its catalog database).
fn database_url(dir: &std::path::Path) -> anyhow::Result<String> {
    let postgres = dir.join("postgres");
    let password = std::fs::read_to_string(postgres.join("superuser.password"))?;
    Ok(format!(
        "postgres://custos:{}@localhost:5432/custos?host={}",
        password.trim(),
        postgres.join("run").display()
    ))
}

fn size_mb(path: &std::path::Path) -> f64 {
    let output = std::process::Command::new("du")
        .args(["-sb"])
        .arg(path)
        .output()
        .ok();
    output
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map_or(0.0, |bytes| bytes as f64 / 1e6)
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, dir) = data_dir(&args)?;
    std::fs::write(dir.join("backup.passphrase"), PASSPHRASE)?;
    let mut config = Config::new(dir.clone(), DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.checkpoint_interval = None;
    let mut backups = BackupConfig::new(dir.join("backups"));
    backups.passphrase = Some(PASSPHRASE.to_owned().into());
    config.backups = Some(backups);
    let application = Application::build(config).await?;
    let services = application.services();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let (tenant, metadata) = organization(&services, args.events).await?;
    let events = events_in(&tenant).await?;
    let cluster_mb = size_mb(&dir.join("postgres/data"));

    let started = Instant::now();
    anyhow::ensure!(
        custos(&dir, &["backup", "now"]).await?,
        "the base backup did not verify"
    );
    let backup_time = started.elapsed();
    let newest = std::fs::read_dir(dir.join("backups/base"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("backup.json").exists())
        .max()
        .ok_or_else(|| anyhow::anyhow!("no base backup"))?;
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(newest.join("backup.json"))?)?;
    let at = |key: &str| {
        info[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let take = match (at("startedAt"), at("finishedAt")) {
        (Some(start), Some(end)) => (end - start).to_std().unwrap_or(Duration::ZERO),
        _ => Duration::ZERO,
    };
    let base_mb = size_mb(&newest);

    // Changes after the base backup: what the restore replays from the WAL archive.
    let after = (events / 10).max(1) as usize;
    let wal_before = size_mb(&dir.join("backups/wal"));
    fill(&tenant, after, metadata).await?;
    drop(tenant);
    let restored = tempfile::Builder::new()
        .prefix("custos-bench-restored-")
        .tempdir_in(std::env::temp_dir())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(restored.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let started = Instant::now();
    let into = restored.path().display().to_string();
    anyhow::ensure!(
        custos(&dir, &["backup", "restore", "--into", &into]).await?,
        "the restored cluster did not verify"
    );
    let restore_time = started.elapsed();
    let wal_mb = size_mb(&dir.join("backups/wal")) - wal_before;
    drop(restored);

    // The same organisation as a service on DATABASE_URL backs it up: its archive, verified
    // by a trial import, then restored in place.
    let url = database_url(&dir)?;
    let slug = SLUG.to_owned();
    let _ = std::fs::remove_dir_all(dir.join("archive-backups"));
    let started = Instant::now();
    anyhow::ensure!(
        custos_in(
            &dir,
            "archive-backups",
            &["backup", "now", "--slug", &slug, "--database-url", &url]
        )
        .await?,
        "the organisation's archive did not verify"
    );
    let archive_time = started.elapsed();
    let archive_mb = size_mb(&dir.join("archive-backups/archives"));
    let started = Instant::now();
    anyhow::ensure!(
        custos_in(
            &dir,
            "archive-backups",
            &["backup", "restore", "--slug", &slug, "--database-url", &url]
        )
        .await?,
        "the organisation was not restored from its archive"
    );
    let archive_restore_time = started.elapsed();
    let _ = std::fs::remove_dir_all(dir.join("archive-backups"));
    let _ = stop.send(());
    running.await??;

    println!("## Backups suite: {events} events, then {after} more");
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| cluster data directory | {cluster_mb:.0} MB |");
    println!(
        "| `custos backup now` in all | {:.1} s |",
        backup_time.as_secs_f64()
    );
    println!(
        "| of which `pg_basebackup` | {:.1} s, {base_mb:.0} MB backup set |",
        take.as_secs_f64()
    );
    println!(
        "| of which verification (pg_verifybackup, start in scratch, verify every organisation) and pruning | {:.1} s |",
        (backup_time.saturating_sub(take)).as_secs_f64()
    );
    println!("| WAL archived for the {after} events after the backup (gzip) | {wal_mb:.0} MB |");
    println!(
        "| `custos backup restore` to the newest state (copy, replay, start, verify) | {:.1} s |",
        restore_time.as_secs_f64()
    );
    let total = events + after as i64;
    println!(
        "| with `DATABASE_URL`: `custos backup now --slug` (archive, {archive_mb:.0} MB, and its trial import) | {:.1} s ({:.0} events/s) |",
        archive_time.as_secs_f64(),
        total as f64 / archive_time.as_secs_f64()
    );
    println!(
        "| with `DATABASE_URL`: `custos backup restore --slug` (import in place, read models rebuilt) | {:.1} s ({:.0} events/s) |",
        archive_restore_time.as_secs_f64(),
        total as f64 / archive_restore_time.as_secs_f64()
    );
    Ok(())
}
