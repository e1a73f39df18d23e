//! `custos backup now|list|verify|restore`: base backups of the private cluster with its WAL
//! archive, verified by restoring them, and point-in-time restore into a new data directory;
//! with `DATABASE_URL`, archives of every organisation, verified by importing them into a
//! scratch database, and one organisation restored from one.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::args::{backup_passphrase, BackupArgs, BackupRestoreArgs, BackupVerifyArgs, CommonArgs};
use super::verify::print_report;
use crate::config::{BackupConfig, Config, DatabaseConfig};
use crate::infra::archive::format::Opener;
use crate::infra::backups::archives::{ArchiveBackups, ArchiveInfo};
use crate::infra::backups::restore::{flush_archive, lay_out, recover, EndedBeforeTarget, Layout};
use crate::infra::backups::verify::Backups;
use crate::infra::backups::{BackupInfo, BackupStore, Verification, RESTORING};
use crate::infra::cluster::{attach_options, in_use, postmaster_alive, PrivateCluster, Tools};
use crate::infra::database::Database;
use crate::infra::integrity::tree_head::witness_file;
use crate::infra::keys::MasterKey;
use crate::infra::tenancy::archives::{set_aside_witness, Placement};
use crate::infra::tenancy::catalog::{is_live, Tenancy};
use crate::infra::tenancy::verification::{verify_organisations, Scope};
use crate::startup::{self, with_services};

/// The configuration with its backup settings, which these commands need; the passphrase from
/// standard input when neither the environment nor a file gives it.
fn config(common: &CommonArgs, passphrase: bool) -> anyhow::Result<(Config, BackupConfig)> {
    let config = common.config()?;
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

/// Whether the service runs on `DATABASE_URL` (its backups are organisation archives).
fn external(config: &Config) -> bool {
    matches!(config.database, DatabaseConfig::External(_))
}

pub(crate) async fn now(args: BackupArgs) -> anyhow::Result<bool> {
    let (mut config, settings) = config(&args.common, true)?;
    if external(&config) {
        return archives_now(&config, &settings, args.slug.as_deref()).await;
    }
    no_slug(args.slug.as_deref())?;
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

/// `--slug` is for organisation archives.
fn no_slug(slug: Option<&str>) -> anyhow::Result<()> {
    match slug {
        Some(_) => anyhow::bail!(
            "--slug is for the organisation archives kept with DATABASE_URL; a base backup \
             holds every organisation"
        ),
        None => Ok(()),
    }
}

pub(crate) async fn list(args: BackupArgs) -> anyhow::Result<bool> {
    let (config, settings) = config(&args.common, false)?;
    if external(&config) {
        return archives_list(&settings, args.slug.as_deref());
    }
    no_slug(args.slug.as_deref())?;
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
    if external(&config) {
        return archives_verify(&config, &settings, args.id.as_deref()).await;
    }
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

/// `--to`, read and checked.
fn restore_target(to: Option<&str>) -> anyhow::Result<Option<DateTime<Utc>>> {
    let target = to
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
    Ok(target)
}

pub(crate) async fn restore(args: BackupRestoreArgs) -> anyhow::Result<bool> {
    let (config, settings) = config(&args.common, false)?;
    let target = restore_target(args.to.as_deref())?;
    if external(&config) {
        if args.into.is_some() {
            anyhow::bail!(
                "--into is for the private cluster; with DATABASE_URL an organisation is \
                 restored in place (--slug)"
            );
        }
        let slug = args.slug.as_deref().ok_or_else(|| {
            anyhow::anyhow!("with DATABASE_URL, name the organisation to restore: --slug")
        })?;
        return archives_restore(&config, &settings, slug, args.backup.as_deref(), target).await;
    }
    no_slug(args.slug.as_deref())?;
    let into = args.into.as_deref().ok_or_else(|| {
        anyhow::anyhow!("name the new data directory to restore into: --into DIR")
    })?;
    let into = std::path::absolute(into)?;
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
        attached: false,
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

/// `backup now` with DATABASE_URL: an archive of every organisation (or of `slug`), verified.
async fn archives_now(
    config: &Config,
    settings: &BackupConfig,
    slug: Option<&str>,
) -> anyhow::Result<bool> {
    let archives = ArchiveBackups::new(settings);
    with_services(config, |services| async move {
        let row = match slug {
            Some(slug) => Some(services.tenancy.in_service(slug).await?),
            None => None,
        };
        let rounds = archives.run(&services.tenancy, row.as_ref()).await?;
        if rounds.is_empty() {
            println!("no organisation to back up");
        }
        let mut ok = true;
        for round in rounds {
            match round.result {
                Ok(info) => {
                    ok &= info.verified_at().is_some();
                    print_archive(&info);
                }
                Err(err) => {
                    ok = false;
                    println!("{}: FAILED: {err:#}", round.slug);
                }
            }
        }
        Ok(ok)
    })
    .await
}

/// `backup list` with DATABASE_URL: every organisation's archives, newest first.
fn archives_list(settings: &BackupConfig, slug: Option<&str>) -> anyhow::Result<bool> {
    let archives = ArchiveBackups::new(settings);
    let list: Vec<ArchiveInfo> = archives
        .list(None)?
        .into_iter()
        .filter(|a| slug.is_none_or(|s| a.slug == s))
        .collect();
    if list.is_empty() {
        println!("no organisation archives in {}", settings.dir.display());
    }
    for info in &list {
        print_archive(info);
    }
    Ok(true)
}

/// `backup verify` with DATABASE_URL: the archive `id`, or every organisation's newest.
async fn archives_verify(
    config: &Config,
    settings: &BackupConfig,
    id: Option<&str>,
) -> anyhow::Result<bool> {
    let archives = ArchiveBackups::new(settings);
    let ids: Vec<String> = match id {
        Some(id) => vec![archives.get(id)?.id],
        None => {
            let mut newest: Vec<ArchiveInfo> = Vec::new();
            for info in archives.list(None)? {
                if !newest.iter().any(|n| n.organization == info.organization) {
                    newest.push(info);
                }
            }
            if newest.is_empty() {
                anyhow::bail!("no organisation archives in {}", settings.dir.display());
            }
            newest.into_iter().map(|a| a.id).collect()
        }
    };
    with_services(config, |services| async move {
        let mut ok = true;
        for id in ids {
            let info = archives.verify(&services.tenancy, &id).await?;
            ok &= info.verified_at().is_some();
            print_archive(&info);
        }
        Ok(ok)
    })
    .await
}

/// `backup restore --slug` with DATABASE_URL: the organisation put back as its chosen archive
/// holds it, in place of its database (or created again when the catalog no longer has it),
/// then the erasures made since replayed.
async fn archives_restore(
    config: &Config,
    settings: &BackupConfig,
    slug: &str,
    id: Option<&str>,
    target: Option<DateTime<Utc>>,
) -> anyhow::Result<bool> {
    let archives = ArchiveBackups::new(settings);
    let passphrase = archives.passphrase().or_else(|_| backup_passphrase(None))?;
    // The ledgers in the backup directory are the longer ones when the data directory was
    // lost: erasures made since the archive are made again from them.
    crate::infra::erasure_ledger::copy_longer(
        &archives.erasures_dir(),
        &config.data_dir.join("erasures"),
    )?;
    // No scheduled round prunes the archive this restore reads meanwhile.
    let _lock = archives.lock().await?;
    with_services(config, |services| async move {
        let tenancy = &services.tenancy;
        let existing = tenancy.row_by_slug(slug).await?;
        let organization = match &existing {
            Some(row) => row.id,
            None => archives
                .organisations()?
                .into_iter()
                .find(|(_, s)| s == slug)
                .map(|(id, _)| id)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no organisation `{slug}` here, and no archive of one in {}",
                        settings.dir.display()
                    )
                })?,
        };
        let info = archives.choose(organization, id, target)?;
        println!(
            "restoring {} from archive {} (taken {})",
            slug,
            info.id,
            stamp(info.taken_at)
        );
        let path = archives.path(&info);
        let restored = match existing {
            Some(row) => {
                if !is_live(&row.status) {
                    anyhow::bail!(
                        "`{slug}` is {}: it cannot be restored now",
                        row.status
                    );
                }
                let moved = tenancy
                    .restore_tenant(row, &path, passphrase, &config.data_dir)
                    .await?;
                moved.arrived
            }
            None => {
                let file = tokio::fs::File::open(&path).await?;
                let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
                let opened = Tenancy::open_archive(&mut reader, Opener::Passphrase(passphrase)).await?;
                // Heads this server witnessed after the archive belong to the history that
                // was lost: kept aside, not continued.
                set_aside_witness(&witness_file(&config.data_dir, organization))?;
                let placement = Placement {
                    slug: Some(slug.to_owned()),
                    region: None,
                };
                tenancy
                    .import_archive(&mut reader, opened, placement, &config.data_dir)
                    .await?
            }
        };
        let replayed = services.replay_erasure_ledger(organization).await?;
        println!(
            "restored {} ({}) in region {}: {} events verified against {} signed tree heads in {:.1} s; tree head {} hands its signing over to a new key; read models rebuilt in {:.1} s{}",
            restored.row.slug,
            restored.row.id,
            restored.row.region,
            restored.imported.events,
            restored.imported.tree_heads,
            restored.loaded.as_secs_f64(),
            restored.handover,
            restored.rebuilt.as_secs_f64(),
            match replayed {
                0 => String::new(),
                n => format!("; {n} people erased since the archive was taken were erased again"),
            }
        );
        println!("what was written after {} is not in it", stamp(info.taken_at));
        Ok(true)
    })
    .await
}

fn print_archive(info: &ArchiveInfo) {
    let verification = match &info.verification {
        None => "not verified".to_owned(),
        Some(v) if info.verified_at().is_some() => {
            format!(
                "verified {}: imported whole into a scratch database",
                stamp(v.at)
            )
        }
        Some(v) => format!("DOES NOT VERIFY (checked {})", stamp(v.at)),
    };
    println!(
        "{}: {} ({}), taken {}, {} events, {:.1} MB — {}",
        info.id,
        info.slug,
        info.organization,
        stamp(info.taken_at),
        info.events,
        info.bytes as f64 / 1e6,
        verification
    );
    for problem in info.verification.iter().flat_map(|v| v.problems.iter()) {
        println!("  {problem}");
    }
}
