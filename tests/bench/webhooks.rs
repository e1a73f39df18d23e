//! The webhooks suite (`--suite webhooks`): an organisation with a webhook on record changes,
//! delivering to a local HTTP receiver (the test harness's, on loopback), while `--rate`
//! changes per second (100 by default) arrive for `--seconds`, open loop, spread over
//! employees so that each gets at most 5 a second (16 at least). Reports the latency from
//! sending each change's request until its signed delivery arrived (an upper bound of
//! commit-to-webhook). In `--data-dir`, or a fresh temporary directory.

use std::time::Duration;

use custos_api::{Application, Config, DatabaseConfig};
use custos_tests::receiver::Receiver;
use serde_json::json;

use crate::common::{
    data_dir, graphql, ms, open_loop_employees, open_loop_updates, percentile, sign_up, BenchArgs,
    OpenLoop,
};

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let receiver = Receiver::start().await;
    let (_temp, dir) = data_dir(&args)?;
    let mut config = Config::new(dir, DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.checkpoint_interval = None;
    config.webhooks.interval = Some(Duration::from_secs(1));
    config.webhooks.allow_private = true;
    let application = Application::build(config).await?;
    let url = format!("http://{}/graphql", application.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let signed = sign_up(&client, &url).await?;
    let token = signed["token"].as_str().unwrap_or_default().to_owned();
    graphql(
        &client,
        &url,
        Some(&token),
        "mutation($u: String!) { registerWebhook(input: { url: $u, events: [RECORD_UPDATED] }) { secret } }",
        json!({ "u": receiver.url("/bench") }),
    )
    .await?;
    let rate = args.rate.max(1);
    let records = open_loop_employees(&client, &url, &token, rate, "Hook").await?;

    let OpenLoop { sent, offered } =
        open_loop_updates(&client, &url, &token, &records, rate, args.seconds).await?;
    let total = sent.len();
    let count = records.len();
    let received = receiver.until(|r| r.len() >= total).await;
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|delivery| {
            let body = delivery.json();
            let key = (
                body["data"]["recordId"].as_str()?.to_owned(),
                body["data"]["version"].as_i64()?,
            );
            Some(delivery.at.saturating_duration_since(*sent.get(&key)?))
        })
        .collect();
    anyhow::ensure!(
        latencies.len() == total,
        "{} of {total} changes were delivered once",
        latencies.len()
    );
    latencies.sort();

    println!("## custos-bench --suite webhooks\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| changes offered | {total} at {rate}/s over {count} employees ({:.1} s) |",
        offered.as_secs_f64()
    );
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("**p99**", 0.99)] {
        println!(
            "| change sent → delivery received, {name} | {:.1} ms |",
            ms(percentile(&latencies, p))
        );
    }
    println!(
        "| max | {:.1} ms |",
        ms(latencies.last().copied().unwrap_or_default())
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}
