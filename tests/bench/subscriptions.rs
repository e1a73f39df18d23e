//! The subscriptions suite (`--suite subscriptions`): `--subscribers` live record
//! subscriptions (`recordChanged { id version }`), each on a WebSocket of its own, to one
//! organisation. First the CPU time of this process (service and clients) and of the
//! benchmark's PostgreSQL cluster over `--seconds` idle, without and then with the
//! subscribers; then `--rate` record changes a second for `--seconds`, open loop, and the
//! latency from sending each change's request until each subscriber received it (an upper
//! bound of commit-to-subscriber). In `--data-dir`, or a fresh temporary directory.

use std::path::Path;
use std::time::{Duration, Instant};

use custos_api::{Application, Config, DatabaseConfig};
use custos_tests::feed::{open_with, Socket};
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    cpu_during, data_dir, ms, open_loop_employees, open_loop_updates, percentile, sign_up,
    BenchArgs, OpenLoop,
};

const SUBSCRIPTION: &str = "subscription { recordChanged { id version } }";
/// CPU used over `seconds` of waiting, as a share of one core: this process, the cluster.
async fn idle_cpu(cluster_dir: &Path, seconds: u64) -> (f64, f64) {
    let ((), used) = cpu_during(
        cluster_dir,
        tokio::time::sleep(Duration::from_secs(seconds)),
    )
    .await;
    used.cores()
}

/// Reads one subscriber's socket until told to stop: when each (record, version) arrived.
async fn receive(
    mut socket: Socket,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<((String, i64), Instant)> {
    let mut got = Vec::new();
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                    let change = &value["payload"]["data"]["recordChanged"];
                    if let (Some(id), Some(version)) = (change["id"].as_str(), change["version"].as_i64()) {
                        got.push(((id.to_owned(), version), Instant::now()));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = stop.changed() => break,
        }
    }
    got
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, dir) = data_dir(&args)?;
    let cluster_dir = dir.join("postgres").join("data");
    let subscribers = args.subscribers.max(1);
    let mut config = Config::new(dir, DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.checkpoint_interval = None;
    config.websockets.max_connections_per_organization = subscribers + 10;
    let application = Application::build(config).await?;
    let address = application.local_addr()?.to_string();
    let url = format!("http://{address}/graphql");
    let (stop_service, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let signed = sign_up(&client, &url).await?;
    let token = signed["token"].as_str().unwrap_or_default().to_owned();
    let rate = args.rate.max(1);
    let records = open_loop_employees(&client, &url, &token, rate, "Live").await?;

    let without = idle_cpu(&cluster_dir, args.seconds).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (socket, ack) = open_with(&address, Some(&token), SUBSCRIPTION, Value::Null).await;
        anyhow::ensure!(ack["type"] == "connection_ack", "not acknowledged: {ack}");
        readers.push(tokio::spawn(receive(socket, stop_rx.clone())));
    }
    // Let every subscription start before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = idle_cpu(&cluster_dir, args.seconds).await;

    let OpenLoop { sent, offered } =
        open_loop_updates(&client, &url, &token, &records, rate, args.seconds).await?;
    let total = sent.len();
    let count = records.len();
    // Whatever is still on its way arrives within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let mut latencies = Vec::with_capacity(total * subscribers);
    let mut short = 0;
    for reader in readers {
        let got = reader.await?;
        let mut matched = 0;
        for (key, at) in got {
            if let Some(sent) = sent.get(&key) {
                latencies.push(at.saturating_duration_since(*sent));
                matched += 1;
            }
        }
        if matched < total {
            short += 1;
        }
    }
    anyhow::ensure!(
        short == 0,
        "{short} of {subscribers} subscribers did not receive all {total} changes"
    );
    latencies.sort();

    println!("## custos-bench --suite subscriptions\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| idle, no subscriber: this process / PostgreSQL | {:.2} % / {:.2} % of a core |",
        without.0 * 100.0,
        without.1 * 100.0
    );
    println!(
        "| idle, **{subscribers} subscribers**: this process / PostgreSQL | {:.2} % / {:.2} % of a core |",
        with.0 * 100.0,
        with.1 * 100.0
    );
    println!(
        "| changes offered | {total} at {rate}/s over {count} employees ({:.1} s), {} deliveries |",
        offered.as_secs_f64(),
        latencies.len()
    );
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("**p99**", 0.99)] {
        println!(
            "| change sent → subscriber received, {name} | {:.1} ms |",
            ms(percentile(&latencies, p))
        );
    }
    println!(
        "| max | {:.1} ms |",
        ms(latencies.last().copied().unwrap_or_default())
    );
    let _ = stop_service.send(());
    running.await??;
    Ok(())
}
