//! The lifecycle suite (`--suite lifecycle`): `--organizations` organisations (1,000 by
//! default; provisioned — database and role from the template — when the store has fewer),
//! then every organisation's storage measured five times as `serve` does on its schedule
//! (`Services::measure_storage`: one size query per server, the catalog written, levels
//! compared). Reports each sweep's time. With `--data-dir` the organisations are reused.

use std::time::{Duration, Instant};

use custos_api::{Application, Config, DatabaseConfig};

use crate::common::{data_dir, ms, percentile, BenchArgs};

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, dir) = data_dir(&args)?;
    let mut config = Config::new(dir.clone(), DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.checkpoint_interval = None;
    config.cluster_settings = vec![("max_connections", "300".to_owned())];
    let application = Application::build(config).await?;
    let services = application.services();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));

    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(services.tenancy.catalog())
        .await?;
    let wanted = i64::try_from(args.organizations)?;
    let started = Instant::now();
    for n in have..wanted {
        custos_api::testing::provision(&services, &format!("bench-{n:05}")).await?;
    }
    let provisioned = started.elapsed();
    let organizations: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(services.tenancy.catalog())
        .await?;

    let mut sweeps = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        services.measure_storage().await?;
        sweeps.push(started.elapsed());
    }
    let total: u64 =
        sqlx::query_scalar::<_, Option<i64>>("SELECT sum(storage_used_bytes)::bigint FROM tenants")
            .fetch_one(services.tenancy.catalog())
            .await?
            .map_or(0, |b| u64::try_from(b).unwrap_or(0));
    sweeps.sort();

    println!("## custos-bench --suite lifecycle\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| organisations | {organizations} ({} provisioned now in {:.1} s) |",
        wanted.saturating_sub(have).max(0),
        provisioned.as_secs_f64()
    );
    println!(
        "| their databases, measured | {:.1} GB |",
        total as f64 / 1e9
    );
    println!(
        "| storage sweep (every organisation measured, the catalog written), 5 runs: min / p50 / max | {:.1} / {:.1} / {:.1} ms |",
        ms(sweeps[0]),
        ms(percentile(&sweeps, 0.5)),
        ms(*sweeps.last().unwrap_or(&Duration::ZERO))
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}
