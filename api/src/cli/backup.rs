//! `custos backup now|list|verify|restore`: base backups of the private cluster with its WAL
//! archive, verified by restoring them, and point-in-time restore into a new data directory.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::args::{backup_passphrase, BackupArgs, BackupRestoreArgs, BackupVerifyArgs, CommonArgs};
use super::verify::print_report;
use crate::config::{BackupConfig, Config, DatabaseConfig};
use crate::infra::backups::restore::{flush_archive, lay_out, recover, EndedBeforeTarget, Layout};
use crate::infra::backups::verify::Backups;
use crate::infra::backups::{BackupInfo, BackupStore, Verification, RESTORING};
use crate::infra::cluster::{attach_options, in_use, postmaster_alive, PrivateCluster, Tools};
use crate::infra::database::Database;
use crate::infra::keys::MasterKey;
use crate::infra::tenancy::verification::{verify_organisations, Scope};
use crate::startup;

/// The configuration with its backup settings, which these commands need; the passphrase from
/// standard input when neither the environment nor a file gives it.
fn config(common: &CommonArgs, passphrase: bool) -> anyhow::Result<(Config, BackupConfig)> {
    let config = common.config()?;
    if !matches!(config.database, DatabaseConfig::Private) {
        anyhow::bail!(
            "`custos backup` is for the private cluster; with DATABASE_URL, back up that server \
             with its own tools and the organisations with `custos tenant export`"
        );
    }
    let mut backups = config.backups.clone().ok_or_else(|| {
        anyhow::anyhow!("no backup directory: set CUSTOS_BACKUP_DIR or pass --backup-dir")
    })?;
    if passphrase && backups.passphrase.is_none() {
        backups.passphrase = Some(backup_passphrase(None)?);
    }
    Ok((config, backups))
}

/// The backups of the data directory's cluster; with `master`, its master key (which must
/// exist: these commands never make a new one).
fn backups(config: &Config, backups: &BackupConfig, master: bool) -> anyhow::Result<Backups> {
    let master = if master {
        let file = config.data_dir.join(crate::infra::keys::KEY_FILE);
        if config.master_key.is_none() && !file.exists() {
            anyhow::bail!(
                "{} has no master key: is it the service's data directory?",
                config.data_dir.display()
            );
        }
        Some(Arc::new(MasterKey::load(
            config.master_key.as_ref(),
            &config.data_dir,
        )?))
    } else {
        None
    };
    Backups::new(config, backups, master)
}

pub(crate) async fn now(args: BackupArgs) -> anyhow::Result<bool> {
    let (mut config, settings) = config(&args.common, true)?;
    config.backups = Some(settings.clone());
    if !config.data_dir.join("postgres/data/PG_VERSION").exists() {
        anyhow::bail!(
            "{} holds no PostgreSQL cluster to back up",
            config.data_dir.display()
        );
    }
    let database = Database::open_or_attach(&config).await?;
    let result = async { backups(&config, &settings, true)?.run().await }.await;
    database.stop().await?;
    let info = result?;
    print_backup(&info);
    Ok(info.verified_at().is_some())
}

pub(crate) async fn list(args: BackupArgs) -> anyhow::Result<bool> {
    let (_, settings) = config(&args.common, false)?;
    let store = BackupStore::new(&settings.dir);
    let backups = store.list()?;
    if backups.is_empty() {
        println!("no base backups in {}", settings.dir.display());
    }
    for info in &backups {
        print_backup(info);
    }
    let (bytes, oldest) = store.wal_summary();
    println!(
        "WAL archive: {:.1} MB{}",
        bytes as f64 / 1e6,
        oldest
            .map(|name| format!(", from {name}"))
            .unwrap_or_default()
    );
    match backups.iter().find(|b| b.verified_at().is_some()) {
        Some(info) => println!(
            "last verified backup: {} (finished {})",
            info.id,
            stamp(info.finished_at)
        ),
        None => println!("last verified backup: none"),
    }
    Ok(true)
}

pub(crate) async fn verify(args: BackupVerifyArgs) -> anyhow::Result<bool> {
    let (config, settings) = config(&args.common, true)?;
    let backups = backups(&config, &settings, false)?;
    let id = match args.id {
        Some(id) => id,
        None => backups
            .store
            .list()?
            .first()
            .map(|b| b.id.clone())
            .ok_or_else(|| anyhow::anyhow!("no base backups in {}", settings.dir.display()))?,
    };
    let verification = backups.verify(&id).await?;
    print_backup(&backups.store.get(&id)?);
    Ok(verification.ok())
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn print_backup(info: &BackupInfo) {
    println!(
        "{}: finished {}, {:.1} MB, from WAL {} — {}",
        info.id,
        stamp(info.finished_at),
        info.bytes as f64 / 1e6,
        info.start_wal,
        describe(info.verification.as_ref())
    );
    for problem in info.verification.iter().flat_map(|v| v.problems.iter()) {
        println!("  {problem}");
    }
}

fn describe(verification: Option<&Verification>) -> String {
    match verification {
        None => "not verified".to_owned(),
        Some(v) if v.ok() => format!(
            "verified {}: manifest and WAL checked, restored, {} organisation(s) verified",
            stamp(v.at),
            v.organisations
        ),
        Some(v) => format!("DOES NOT VERIFY (checked {})", stamp(v.at)),
    }
}

pub(crate) async fn restore(args: BackupRestoreArgs) -> anyhow::Result<bool> {
    let (config, settings) = config(&args.common, false)?;
    let target = args
        .to
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--to `{text}` is not an RFC 3339 time (like 2026-12-02T09:30:00Z)"
                    )
                })
        })
        .transpose()?;
    if target.is_some_and(|t| t > Utc::now()) {
        anyhow::bail!("--to is in the future");
    }
    let into = std::path::absolute(&args.into)?;
    let into = into.as_path();
    let interrupted = check_target(into, &config.data_dir)?;
    let store = BackupStore::new(&settings.dir);
    // No scheduled round prunes the backup or the WAL this restore reads meanwhile.
    let _lock = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.lock()).await??
    };
    let backup = choose(&store, args.backup.as_deref(), target)?;
    let passphrase = match settings.passphrase.clone() {
        Some(passphrase) => passphrase,
        None => backup_passphrase(None)?,
    };
    let secrets = {
        let (store, id) = (store.clone(), backup.id.clone());
        tokio::task::spawn_blocking(move || store.open_secrets(&id, &passphrase)).await??
    };
    if interrupted {
        clean_interrupted(into)?;
    }
    // Everything the running service has written reaches the archive first.
    let running = running_cluster(&config.data_dir).await?;
    if let Some(options) = &running {
        flush_archive(options).await?;
    }
    let gap = store.wal_gap(&backup.start_wal);
    if let (Some(gap), None) = (&gap, target) {
        anyhow::bail!(
            "the WAL archive lacks segment {gap}: the newest state cannot be restored past it \
             (restore --to a moment before it, or look for the segment)"
        );
    }
    let live = config
        .data_dir
        .exists()
        .then_some(config.data_dir.as_path());
    std::fs::create_dir_all(into)?;
    crate::infra::backups::write_durably(&into.join(RESTORING), b"")?;
    std::fs::File::open(into)?.sync_all()?;
    let tools = Tools::find()?;
    let layout = Layout {
        store: &store,
        backup: &backup,
        secrets: &secrets,
        live,
        unarchived_wal: running.is_none(),
    };
    println!(
        "restoring base backup {} (finished {}) into {}",
        backup.id,
        stamp(backup.finished_at),
        into.display()
    );
    // Blocking file copies: nothing else runs in this command meanwhile.
    lay_out(&layout, into, &tools)?;
    let reached = match recover(into, &store, target, &tools).await {
        Ok(last) => format!(
            "{}{}",
            target
                .map(stamp)
                .unwrap_or_else(|| "the end of the WAL archive".to_owned()),
            last.map(|t| format!(" (last transaction {})", stamp(t)))
                .unwrap_or_default()
        ),
        Err(err) if err.is::<EndedBeforeTarget>() => {
            if let Some(gap) = gap {
                anyhow::bail!(
                    "the WAL archive lacks segment {gap}, and recovery stopped there, before --to: \
                     restore to an earlier moment, or look for the segment"
                );
            }
            lay_out(&layout, into, &tools)?;
            let last = recover(into, &store, None, &tools).await?;
            format!(
                "the end of the WAL archive{}: nothing archived is later than --to",
                last.map(|t| format!(" (last transaction {})", stamp(t)))
                    .unwrap_or_default()
            )
        }
        Err(err) => return Err(err),
    };
    println!("recovered to {reached}; starting it and verifying every organisation");
    let ok = start_and_verify(&config, into).await?;
    std::fs::remove_file(into.join(RESTORING))?;
    if ok {
        println!(
            "restored: start it with `custos serve --data-dir {}`",
            into.display()
        );
    } else {
        println!("restored, but some organisation DOES NOT VERIFY (above)");
    }
    Ok(ok)
}

/// The restore target must be new: absent, empty, or left by an interrupted restore (whose
/// cluster is not running; true then).
fn check_target(into: &Path, data_dir: &Path) -> anyhow::Result<bool> {
    let same = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .zip(b.canonicalize().ok())
            .is_some_and(|(a, b)| a == b)
    };
    if same(into, data_dir) {
        anyhow::bail!("--into is the data directory itself: restore into a new directory");
    }
    let Ok(mut entries) = std::fs::read_dir(into) else {
        return Ok(false);
    };
    if entries.next().is_none() {
        return Ok(false);
    }
    if !into.join(RESTORING).exists() {
        anyhow::bail!(
            "{} exists and is not empty: restore into a new directory",
            into.display()
        );
    }
    if postmaster_alive(&into.join("postgres").join("data")) {
        anyhow::bail!(
            "{} holds an interrupted restore whose PostgreSQL still runs",
            into.display()
        );
    }
    Ok(true)
}

/// Removes what an interrupted restore left in `into`, but its marker.
fn clean_interrupted(into: &Path) -> anyhow::Result<()> {
    tracing::warn!(dir = %into.display(), "removing what an interrupted restore left");
    // The marker goes last (the restore writes it again): interrupted here, the directory
    // still says what it is.
    for entry in std::fs::read_dir(into)?.flatten() {
        if entry.file_name() == RESTORING {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The base backup to start from: the one named, or the newest that finished before the
/// target.
fn choose(
    store: &BackupStore,
    id: Option<&str>,
    target: Option<DateTime<Utc>>,
) -> anyhow::Result<BackupInfo> {
    let backups = store.list()?;
    let chosen = match id {
        Some(id) => store.get(id)?,
        None => backups
            .iter()
            .filter(|b| b.verification.as_ref().is_none_or(Verification::ok))
            .find(|b| target.is_none_or(|t| b.finished_at <= t))
            .cloned()
            .ok_or_else(|| match (backups.last(), target) {
                (Some(oldest), Some(t)) => anyhow::anyhow!(
                    "no base backup finished before {}: the oldest finished at {}",
                    stamp(t),
                    stamp(oldest.finished_at)
                ),
                _ => anyhow::anyhow!("no base backups in {}", store.dir().display()),
            })?,
    };
    if target.is_some_and(|t| t < chosen.finished_at) {
        anyhow::bail!(
            "base backup {} finished at {}, after --to",
            chosen.id,
            stamp(chosen.finished_at)
        );
    }
    Ok(chosen)
}

/// Superuser options for the service's cluster when it runs on `data_dir` (its lock is held);
/// an error when it runs but does not answer.
async fn running_cluster(
    data_dir: &Path,
) -> anyhow::Result<Option<sqlx::postgres::PgConnectOptions>> {
    use sqlx::Connection;
    if !in_use(&data_dir.join("postgres")) {
        return Ok(None);
    }
    let options = attach_options(&data_dir.join("postgres"))?;
    let conn = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "the service runs on {} but its PostgreSQL does not answer ({err}): stop it, or let it recover, then restore",
                data_dir.display()
            )
        })?;
    conn.close().await?;
    Ok(Some(options))
}

/// Starts the restored directory as `serve` would (migrations, and the erasure ledgers
/// replayed before anything else), verifies every organisation on its cluster, and stops it.
async fn start_and_verify(config: &Config, into: &Path) -> anyhow::Result<bool> {
    let mut restored = Config::new(into.to_owned(), DatabaseConfig::Private);
    restored.catalog_database = config.catalog_database.clone();
    restored.regions = config.regions.clone();
    restored.cluster_settings = config.cluster_settings.clone();
    let cluster = {
        let (dir, settings) = (into.join("postgres"), restored.cluster_settings.clone());
        tokio::task::spawn_blocking(move || PrivateCluster::start(&dir, &settings)).await??
    };
    let database = Database {
        options: cluster.connect_options(),
        cluster: Some(cluster),
    };
    let result = async {
        let services = startup::services(&restored, &database).await?;
        services.tenancy.close().await;
        let master = MasterKey::load(None, into)?;
        let scope = Scope {
            server: &database.options,
            catalog: &restored.catalog_database,
            regions: &restored.regions,
            default_server_only: true,
            master: &master,
            data_dir: into,
        };
        let mut ok = true;
        for organisation in verify_organisations(&scope, None, None).await? {
            let (row, report) = (&organisation.row, &organisation.report);
            print_report(&row.slug, row.id, &organisation.witness, report);
            ok &= report.ok();
        }
        Ok::<_, anyhow::Error>(ok)
    }
    .await;
    database.stop().await?;
    result
}
