//! The portability suite (`--suite portability`): an organisation of `--events` events (default
//! 100,000) written to a tenant archive and imported into a second Custos (its own catalog and
//! data directory, on the same PostgreSQL server), then verified there. Reports export and
//! import events/s (import split into filling and verifying the database, and rebuilding the
//! read models), the archive's size, and how much the process's peak memory grew while
//! exporting.
//!
//! With `--data-dir`, the filled source store is kept and reused by the next run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use custos_api::testing::{
    verify, Exported, Opener, Placement, Protection, Services, Tenancy, Tenant,
};
use custos_api::{Application, Config, DatabaseConfig};
use custos_domain::EventMetadata;

use crate::common::{bench_tenant, data_dir, rebuild_records, BenchArgs};
use crate::privacy::{events_in, fill};

pub(crate) const SLUG: &str = "portability";
const PASSPHRASE: &str = "benchmark archive passphrase";

/// Peak resident memory of this process so far (kB), from /proc.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Current resident memory (kB).
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Exports `tenant` to a new file at `path` under `protection`: what was written, how long it
/// took, and how much the process's peak resident memory grew meanwhile.
async fn export_measured(
    services: &Services,
    tenant: &Tenant,
    protection: Protection,
    path: &std::path::Path,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Exported, Duration, String)> {
    // Resets the peak to what is resident now.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss_kb();
    let file = tokio::fs::File::create(path).await?;
    let started = Instant::now();
    let exported = services
        .tenancy
        .export_archive(tenant, protection, file, data_dir)
        .await?;
    let took = started.elapsed();
    let growth = match (peak_rss_kb(), before) {
        (Some(peak), Some(before)) => {
            format!("{:.1} MB", peak.saturating_sub(before) as f64 / 1024.0)
        }
        _ => "n/a".into(),
    };
    Ok((exported, took, growth))
}

/// The suite's organisation, filled to `events` events if it has fewer (the backups suite
/// reuses it, and the store, with `--data-dir`).
pub(crate) async fn organization(
    services: &Services,
    events: usize,
) -> anyhow::Result<(Arc<Tenant>, EventMetadata)> {
    let (tenant, metadata) = bench_tenant(
        services,
        SLUG,
        "Portability bench",
        "portability@example.org",
    )
    .await?;
    let target = i64::try_from(events)?;
    let have = events_in(&tenant).await?;
    if have < target {
        fill(&tenant, usize::try_from(target - have)?, metadata).await?;
    }
    Ok((tenant, metadata))
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, source_dir) = data_dir(&args)?;
    let mut config = Config::new(source_dir.clone(), DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.checkpoint_interval = None;
    let application = Application::build(config).await?;
    let services = application.services();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let (tenant, _) = organization(&services, args.events).await?;
    // Signed heads over (nearly) everything, so the import verifies the whole tree.
    let deadline = Instant::now() + Duration::from_secs(60);
    while services
        .create_checkpoint(&tenant)
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint failed: {:?}", e.code()))?
        .is_none()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = events_in(&tenant).await?;

    // Exports, streamed to a file, each with its peak memory: to an age recipient (no key
    // derivation), then under a passphrase (Argon2id's 64 MiB), which the import reads.
    let scratch = tempfile::tempdir()?;
    let identity = age::x25519::Identity::generate();
    let (to_recipient, recipient_time, recipient_growth) = export_measured(
        &services,
        &tenant,
        Protection::Recipients(vec![identity.to_public()]),
        &scratch.path().join("portability-age.custos-archive"),
        &source_dir,
    )
    .await?;
    let archive = scratch.path().join("portability.custos-archive");
    let (exported, export_time, rss_growth) = export_measured(
        &services,
        &tenant,
        Protection::Passphrase(SecretString::from(PASSPHRASE)),
        &archive,
        &source_dir,
    )
    .await?;

    // A second Custos on the same server: its own catalog and data directory (and master key).
    let password = std::fs::read_to_string(source_dir.join("postgres/superuser.password"))?;
    let server = PgConnectOptions::new()
        .socket(source_dir.join("postgres/run"))
        .port(5432)
        .username("custos")
        .password(password.trim())
        .database("postgres");
    let target_dir = tempfile::tempdir()?;
    let catalog = format!("custos_portability_{}", Uuid::now_v7().simple());
    let mut target_config = Config::new(
        target_dir.path().to_owned(),
        DatabaseConfig::External(Box::new(server.clone())),
    );
    target_config.listen = "127.0.0.1:0".parse()?;
    target_config.catalog_database = catalog.clone();
    target_config.checkpoint_interval = None;
    let second = Application::build(target_config).await?;
    let target_services = second.services();
    let file = tokio::fs::File::open(&archive).await?;
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
    let started = Instant::now();
    let opened = Tenancy::open_archive(
        &mut reader,
        Opener::Passphrase(SecretString::from(PASSPHRASE)),
    )
    .await?;
    let arrived = target_services
        .tenancy
        .import_archive(&mut reader, opened, Placement::default(), target_dir.path())
        .await?;
    let import_time = started.elapsed();
    let imported_tenant = target_services
        .tenancy
        .by_slug(SLUG)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the import is not in service"))?;
    let mut conn = imported_tenant.pool.acquire().await?;
    let started = Instant::now();
    let report = verify(&mut conn, imported_tenant.id, None, None).await?;
    let verify_time = started.elapsed();
    anyhow::ensure!(
        report.ok(),
        "the imported organisation does not verify: {report:?}"
    );
    drop(conn);
    let imported_database: String =
        sqlx::query_scalar("SELECT database_name FROM tenants WHERE id = $1")
            .bind(imported_tenant.id)
            .fetch_one(target_services.tenancy.catalog())
            .await?;
    drop(imported_tenant);
    drop(target_services);
    drop(second);
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect_with(&server).await?;
        for statement in [
            format!("DROP DATABASE IF EXISTS \"{imported_database}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{imported_database}\""),
            format!("DROP DATABASE IF EXISTS \"{catalog}\" WITH (FORCE)"),
        ] {
            sqlx::query(&statement).execute(&mut admin).await?;
        }
    }
    // `custos projections rebuild records` on the source organisation, once its read models
    // have caught up: the records read model rebuilt from every event beside the live one and
    // swapped in. Every event here is a creation, so nothing folds: a row per event.
    crate::privacy::settle(&tenant).await?;
    let (rebuilt, rebuild_time) = rebuild_records(&server, &tenant).await?;
    drop(tenant);
    let _ = stop.send(());
    running.await??;

    let per_second = |d: Duration| events as f64 / d.as_secs_f64();
    println!("## Portability suite: {events} events");
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| export, streamed to a file | {:.1} s, {:.0} events/s, {:.1} MB ({} bytes/event) |",
        export_time.as_secs_f64(),
        per_second(export_time),
        exported.bytes as f64 / 1_048_576.0,
        exported.bytes / exported.events.max(1)
    );
    println!("| peak memory growth while exporting | {rss_growth} |");
    println!(
        "| export to an age recipient, streamed to a file | {:.1} s, {:.0} events/s, {:.1} MB |",
        recipient_time.as_secs_f64(),
        per_second(recipient_time),
        to_recipient.bytes as f64 / 1_048_576.0,
    );
    println!("| peak memory growth while exporting to an age recipient | {recipient_growth} |");
    println!(
        "| import: fill, verify before commit, hand-over | {:.1} s, {:.0} events/s |",
        arrived.loaded.as_secs_f64(),
        per_second(arrived.loaded)
    );
    println!(
        "| import: read models rebuilt | {:.1} s, {:.0} events/s |",
        arrived.rebuilt.as_secs_f64(),
        per_second(arrived.rebuilt)
    );
    println!(
        "| import in all (passphrase key included) | {:.1} s, {:.0} events/s |",
        import_time.as_secs_f64(),
        per_second(import_time)
    );
    println!(
        "| `custos verify` of the imported organisation | {:.1} s, {:.0} events/s |",
        verify_time.as_secs_f64(),
        per_second(verify_time)
    );
    println!(
        "| the records read model of the source rebuilt beside the live one and swapped in (`custos projections rebuild records`) | {:.1} s, {:.0} events/s ({} events, {} rows; the read model held {:.2} s while its tables were swapped) |",
        rebuild_time.as_secs_f64(),
        rebuilt.events as f64 / rebuild_time.as_secs_f64(),
        rebuilt.events,
        rebuilt.rows,
        rebuilt.held.as_secs_f64()
    );
    Ok(())
}
