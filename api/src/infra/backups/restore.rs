//! Point-in-time restore: a base backup laid out as a new data directory (its data, its
//! sealed keys opened, the witness files it carries, the newest erasure ledgers anywhere), its
//! WAL replayed from the archive up to a moment, and the cluster promoted. Starting and
//! verifying the result is the caller's (the command that restores).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection};

use super::{
    controldata, copy_files, copy_tree, quote, write_durably, BackupInfo, BackupStore, Secrets,
};
use crate::infra::cluster::{PrivateCluster, Tools};
use crate::infra::erasure_ledger::copy_longer;
use crate::infra::keys::KEY_FILE;

/// Recovery reached the end of the archived WAL before the target: every archived change is
/// from before it, so the end of the archive is the state at the target as far as the archive
/// knows. Lay out again and recover without a target.
#[derive(Debug, thiserror::Error)]
#[error("the archived WAL ends before the restore target")]
pub(crate) struct EndedBeforeTarget;

/// What a restore is made of.
pub(crate) struct Layout<'a> {
    pub store: &'a BackupStore,
    pub backup: &'a BackupInfo,
    pub secrets: &'a Secrets,
    /// The data directory the backups are of, when it still exists: its erasure ledgers are
    /// newer than any copy.
    pub live: Option<&'a Path>,
    /// Also take the live cluster's WAL the archive lacks (when it is not running to archive
    /// it).
    pub unarchived_wal: bool,
}

/// Fills `into` (empty but for the [`super::RESTORING`] marker) as a Custos data directory
/// from the backup: the cluster's data, the master key and the superuser password, the
/// witness files, and for each organisation the longest erasure ledger among the live data
/// directory's, the backup directory's copy and the backup's own. Blocking.
pub(crate) fn lay_out(layout: &Layout<'_>, into: &Path, tools: &Tools) -> anyhow::Result<()> {
    let set = layout.store.set_dir(&layout.backup.id);
    let postgres = into.join("postgres");
    if postgres.exists() {
        fs::remove_dir_all(&postgres)?;
    }
    fs::create_dir_all(&postgres)?;
    copy_tree(&set.join("data"), &postgres.join("data"))?;
    let _ = fs::remove_file(postgres.join("data").join("backup_manifest"));
    write_durably(
        &into.join(KEY_FILE),
        layout.secrets.master_key.expose_secret().as_bytes(),
    )?;
    write_durably(
        &postgres.join("superuser.password"),
        layout.secrets.superuser_password.expose_secret().as_bytes(),
    )?;
    copy_files(&set.join("checkpoints"), &into.join("checkpoints"))?;
    let ledgers = into.join("erasures");
    fs::create_dir_all(&ledgers)?;
    let mut sources = vec![set.join("erasures"), layout.store.erasures_dir()];
    sources.extend(layout.live.map(|live| live.join("erasures")));
    for source in sources {
        copy_longer(&source, &ledgers)?;
    }
    if let Some(live) = layout.live.filter(|_| layout.unarchived_wal) {
        copy_unarchived_wal(layout.store, live, &postgres.join("data"), tools)?;
    }
    Ok(())
}

/// The live cluster's WAL segments the archive lacks (the newest, when the live cluster is not
/// running to archive them), into the restored cluster's `pg_wal`: recovery reads the archive
/// first and these after it.
fn copy_unarchived_wal(
    store: &BackupStore,
    live: &Path,
    pgdata: &Path,
    tools: &Tools,
) -> anyhow::Result<()> {
    let from = live.join("postgres").join("data").join("pg_wal");
    let archive = store.wal_dir();
    for entry in fs::read_dir(&from).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let segment = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
        if !segment || archive.join(format!("{name}.gz")).exists() {
            continue;
        }
        let to = pgdata.join("pg_wal").join(&name);
        fs::copy(entry.path(), &to).with_context(|| format!("copying WAL {name}"))?;
        tools.hand_over(&to)?;
    }
    Ok(())
}

/// Starts the laid-out cluster under `into` in archive recovery up to `target` (the end of the
/// archive without one), waits until it is promoted, and stops it: the commit time of the last
/// transaction replayed, when it says.
pub(crate) async fn recover(
    into: &Path,
    store: &BackupStore,
    target: Option<DateTime<Utc>>,
    tools: &Tools,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let postgres = into.join("postgres");
    let signal = postgres.join("data").join("recovery.signal");
    fs::write(&signal, "")?;
    tools.hand_over(&signal)?;
    // Read-only connections during recovery (to see when it ends) need at least the
    // connection slots the backed-up server had.
    let slots = controldata(tools, &postgres.join("data"), "max_connections setting")?
        .parse::<u32>()
        .unwrap_or(300);
    let mut settings = vec![
        ("restore_command", store.restore_command()),
        ("recovery_target_action", "'promote'".to_owned()),
        ("archive_mode", "off".to_owned()),
        ("max_connections", slots.to_string()),
    ];
    if let Some(target) = target {
        settings.push((
            "recovery_target_time",
            quote(&target.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()),
        ));
    }
    let log = postgres.join("postgres.log");
    let log_start = fs::metadata(&log).map_or(0, |m| m.len());
    let new_lines = move || {
        fs::read(&log)
            .map(|text| {
                String::from_utf8_lossy(text.get(log_start as usize..).unwrap_or_default())
                    .into_owned()
            })
            .unwrap_or_default()
    };
    let ended_before =
        || new_lines().contains("recovery ended before configured recovery target was reached");
    // What the server said, for an error: its last lines (paths and WAL positions, no data).
    let said = || {
        let lines = new_lines();
        let lines: Vec<&str> = lines.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    let started = {
        let postgres = postgres.clone();
        tokio::task::spawn_blocking(move || {
            PrivateCluster::start_waiting(&postgres, &settings, 24 * 60 * 60)
        })
        .await?
    };
    let cluster = match started {
        Ok(cluster) => cluster,
        Err(_) if ended_before() => return Err(EndedBeforeTarget.into()),
        Err(err) => {
            return Err(anyhow::Error::from(err).context(format!(
                "the restored server did not start; its log ends:\n{}",
                said()
            )))
        }
    };
    let promoted = wait_for_promotion(&cluster).await;
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    match promoted {
        Ok(reached) => {
            stopped?;
            Ok(reached)
        }
        Err(_) if ended_before() => Err(EndedBeforeTarget.into()),
        Err(err) => Err(err.context(format!("the restored server's log ends:\n{}", said()))),
    }
}

/// Makes the running cluster `options` reaches archive everything up to now: a transaction
/// committed now (so a restore to any earlier moment finds a commit after it), then a switch to
/// a new WAL file, then a wait until the archive has the old one.
pub(crate) async fn flush_archive(
    options: &sqlx::postgres::PgConnectOptions,
) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(options).await?;
    sqlx::query("SELECT txid_current()")
        .execute(&mut conn)
        .await?;
    let file: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut conn)
        .await?;
    for _ in 0..600 {
        let archived: Option<String> =
            sqlx::query_scalar("SELECT last_archived_wal FROM pg_stat_archiver")
                .fetch_one(&mut conn)
                .await?;
        if archived.is_some_and(|archived| archived.get(8..) >= file.get(8..)) {
            conn.close().await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the running cluster has not archived WAL file {file} within a minute: is archive_command failing? (see postgres.log)"
    )
}

/// Polls until the server has left recovery (a day at most: replaying a large archive takes
/// time), then asks when the last transaction it replayed committed; an error when it stops
/// answering.
async fn wait_for_promotion(cluster: &PrivateCluster) -> anyhow::Result<Option<DateTime<Utc>>> {
    let options = cluster.connect_options();
    let mut failures = 0;
    for _ in 0..(24 * 60 * 60 * 5) {
        match PgConnection::connect_with(&options).await {
            Ok(mut conn) => {
                failures = 0;
                let (recovering, reached): (bool, Option<DateTime<Utc>>) =
                    sqlx::query_as("SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()")
                        .fetch_one(&mut conn)
                        .await?;
                conn.close().await?;
                if !recovering {
                    return Ok(reached);
                }
            }
            Err(err) => {
                failures += 1;
                if failures >= 25 {
                    return Err(anyhow::anyhow!(
                        "the restored server stopped during recovery: {err} (see {})",
                        cluster.log_file().display()
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the restored server was still recovering after a day")
}
