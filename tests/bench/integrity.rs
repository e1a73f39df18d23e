//! The integrity suite (`--suite integrity`): the Merkle log on a store of `--events` events
//! (default 1,000,000) — the first checkpoint (building the whole tree), a checkpoint over
//! 1,000 new events, `eventProof` over HTTP, and `custos verify`'s work against the floor it
//! cannot beat: reading the same columns of every event in the same order, in the same run.
//!
//! With `--data-dir`, the filled store is kept and reused by the next run (each run adds the
//! 1,000 events it checkpoints), so a change can be measured before and after on one store.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::json;
use sqlx::Row;

use custos_api::testing::{verify, Report};
use custos_api::{Application, Config, DatabaseConfig};
use custos_domain::Datasheet;

use crate::common::{bench_tenant, data_dir, ms, percentile, BenchArgs, PASSWORD};
use crate::privacy::{create, events_in, fields, fill, settle, update};

const SLUG: &str = "integrity";
const EMAIL: &str = "integrity@example.org";
/// Records with a history of their own (ten events each), so chains are longer than one.
const LONG_STREAMS: usize = 200;
/// Alternating rounds of verification and the floor read.
const ROUNDS: usize = 3;
/// Checkpoints measured, each over 1,000 new events.
const CHECKPOINTS: usize = 5;

/// Reads what verification reads, in its order, and does nothing with it; the events read.
async fn floor(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    let mut rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload, metadata::text AS metadata, recorded_at, prev_hash, hash,
                transaction_id::text::bigint AS transaction_id, global_position
         FROM events
         ORDER BY global_position",
    )
    .fetch(conn);
    let mut events = 0i64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        bytes += row.try_get::<&str, _>("payload")?.len();
        events += 1;
    }
    std::hint::black_box(bytes);
    Ok(events)
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, data_dir) = data_dir(&args)?;
    let mut config = Config::new(data_dir, DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.projection_wait = Duration::from_secs(600);
    // Checkpoints only when this suite asks for them.
    config.checkpoint_interval = None;
    let application = Application::build(config).await?;
    let services = application.services();
    let address = application.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));

    let (tenant, metadata) = bench_tenant(&services, SLUG, "Integrity bench", EMAIL).await?;

    let target = i64::try_from(args.events)?;
    let have = events_in(&tenant).await?;
    let filled = if have < target {
        let started = Instant::now();
        for _ in 0..LONG_STREAMS {
            let id = create(
                &services,
                &tenant,
                &tenant.records,
                Datasheet::Employees,
                fields(&[
                    ("first_name", "Long".to_owned()),
                    ("last_name", "History".to_owned()),
                ]),
                metadata,
            )
            .await?;
            for n in 1..10 {
                let changes = fields(&[("department", format!("Dept {n}"))]);
                update(&services, &tenant, &tenant.records, id, changes, metadata).await?;
            }
        }
        let have = events_in(&tenant).await?;
        fill(&tenant, usize::try_from((target - have).max(0))?, metadata).await?;
        settle(&tenant).await?;
        Some(started.elapsed())
    } else {
        None
    };

    // The first checkpoint builds the tree over the whole store (only on a new store).
    let heads_before: i64 = sqlx::query_scalar("SELECT count(*) FROM tree_heads")
        .fetch_one(&tenant.pool)
        .await?;
    let first_started = Instant::now();
    let first = services
        .create_checkpoint(&tenant)
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint failed: {:?}", e.code()))?;
    let first_checkpoint = first_started.elapsed();
    // Checkpoints over 1,000 new events each.
    let mut checkpoints = Vec::with_capacity(CHECKPOINTS);
    for _ in 0..CHECKPOINTS {
        fill(&tenant, 1_000, metadata).await?;
        // The projectors idle again, and no transaction older than the new events left open
        // (else nothing is below the checkpoint's horizon yet: it signs nothing, and is retried).
        settle(&tenant).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started = Instant::now();
            let made = services
                .create_checkpoint(&tenant)
                .await
                .map_err(|e| anyhow::anyhow!("checkpoint failed: {:?}", e.code()))?;
            if made.is_some() {
                checkpoints.push(started.elapsed());
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no checkpoint over 1,000 new events"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    checkpoints.sort();
    settle(&tenant).await?;

    let client = reqwest::Client::new();
    let url = format!("http://{address}/graphql");
    let login: serde_json::Value = client
        .post(&url)
        .json(&json!({
            "query": "mutation($tenant: String!, $email: String!, $password: String!) { login(tenant: $tenant, email: $email, password: $password) { token } }",
            "variables": { "tenant": SLUG, "email": EMAIL, "password": PASSWORD },
        }))
        .send()
        .await?
        .json()
        .await?;
    let token = login["data"]["login"]["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("login failed: {login}"))?
        .to_owned();
    let proven: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, sequence FROM events TABLESAMPLE SYSTEM (1)
         WHERE aggregate_type = 'record' LIMIT $1",
    )
    .bind(i64::try_from(args.reads.min(1_000))?)
    .fetch_all(&tenant.pool)
    .await?;
    let mut proofs = Vec::with_capacity(proven.len());
    for (id, sequence) in &proven {
        let started = Instant::now();
        let body: serde_json::Value = client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({
                "query": "query($id: ID!, $sequence: Int!) { eventProof(aggregateType: \"record\", aggregateId: $id, sequence: $sequence) { leafIndex auditPath treeHead { root signature } } }",
                "variables": { "id": id, "sequence": sequence },
            }))
            .send()
            .await?
            .json()
            .await?;
        proofs.push(started.elapsed());
        anyhow::ensure!(body.get("errors").is_none(), "{}", body["errors"]);
    }
    proofs.sort();

    // Verification and the floor, alternating, on one connection.
    let mut conn = tenant.pool.acquire().await?;
    let (mut verifications, mut floors) = (Vec::new(), Vec::new());
    let mut report = Report::default();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        report = verify(&mut conn, tenant.id, None, None).await?;
        verifications.push(started.elapsed());
        anyhow::ensure!(report.ok(), "the store does not verify: {report:?}");
        let started = Instant::now();
        let read = floor(&mut conn).await?;
        floors.push(started.elapsed());
        anyhow::ensure!(read == report.events, "the floor read {read} events");
    }
    drop(conn);
    let rate = |d: &Duration| report.events as f64 / d.as_secs_f64();
    let list = |times: &[Duration]| {
        times
            .iter()
            .map(|d| format!("{:.0}", rate(d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let best = |times: &[Duration]| *times.iter().min().expect("rounds");

    println!("## Integrity benchmark\n");
    println!(
        "{} events in {} streams{}.\n",
        report.events,
        report.streams,
        match filled {
            Some(took) => format!(" (filled in this run: {:.0} s)", took.as_secs_f64()),
            None => " (the store of an earlier run)".to_owned(),
        }
    );
    println!("| measure | figure |\n|---|---|");
    println!(
        "| {} | {} |",
        if heads_before == 0 {
            "first checkpoint (the whole tree built)"
        } else {
            "first checkpoint of this run (over what the last run left unsigned)"
        },
        if first.is_some() {
            format!("{:.0} ms", ms(first_checkpoint))
        } else {
            "nothing to sign".to_owned()
        }
    );
    println!(
        "| checkpoint over 1,000 new events, {CHECKPOINTS} times: median (each) | {:.1} ms ({}) |",
        ms(percentile(&checkpoints, 0.5)),
        checkpoints
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| `eventProof` over HTTP, {} random events, p50 / p99 | {:.2} / {:.2} ms |",
        proofs.len(),
        ms(percentile(&proofs, 0.5)),
        ms(percentile(&proofs, 0.99))
    );
    println!(
        "| `custos verify` work, events/s (each round) | {} |",
        list(&verifications)
    );
    println!(
        "| floor: the same columns read in the same order, events/s (each round) | {} |",
        list(&floors)
    );
    println!(
        "| best verify / best floor | {:.2} |",
        rate(&best(&verifications)) / rate(&best(&floors))
    );
    drop(tenant);
    let _ = stop.send(());
    server.await??;
    Ok(())
}
