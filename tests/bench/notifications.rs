//! The notifications suite (`--suite notifications`): an organisation with `--notices`
//! contacts (2,000 by default), each with an email address, and a breach over all of them;
//! `notifySubjects` writes one notice per person and the delivery worker sends them to a
//! local SMTP server (the test harness's, on loopback). Reports notices delivered per second,
//! from the mutation until the server accepted the last. Always in a fresh data directory.

use std::time::{Duration, Instant};

use custos_api::{Application, Config, DatabaseConfig};
use custos_tests::smtp::SmtpServer;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::common::{graphql, sign_up, BenchArgs};

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await;
    let temp = tempfile::Builder::new()
        .prefix("custos-bench-")
        .tempdir_in(std::env::temp_dir())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut config = Config::new(temp.path().to_owned(), DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.checkpoint_interval = None;
    config.notifications.smtp_url = Some(smtp.url().into());
    config.notifications.interval = Some(Duration::from_secs(1));
    let application = Application::build(config).await?;
    let url = format!("http://{}/graphql", application.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let signed = sign_up(&client, &url).await?;
    let token = signed["token"].as_str().unwrap_or_default().to_owned();
    let from = chrono::Utc::now() - chrono::Duration::minutes(1);
    let notices = args.notices;
    let started = Instant::now();
    futures::stream::iter(0..notices)
        .map(|n| {
            graphql(
                &client,
                &url,
                Some(&token),
                "mutation($i: CreateContactInput!) { createContact(input: $i) { id } }",
                json!({ "i": { "firstName": "Bench", "lastName": format!("Person {n}"),
                               "emails": [format!("person-{n}@bench.example")] } }),
            )
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let seeded = started.elapsed();
    let incident = graphql(
        &client,
        &url,
        Some(&token),
        "mutation($i: IncidentInput!) { recordIncident(input: $i) { id } }",
        json!({ "i": { "detectedAt": chrono::Utc::now().to_rfc3339(),
                       "description": "Benchmark breach", "datasheets": ["CONTACTS"],
                       "windowFrom": from.to_rfc3339(),
                       "windowTo": (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339() } }),
    )
    .await?;
    let incident = incident["data"]["recordIncident"]["id"].clone();

    let started = Instant::now();
    let issued = graphql(
        &client,
        &url,
        Some(&token),
        "mutation($id: ID!) { notifySubjects(id: $id) { queued } }",
        json!({ "id": incident }),
    )
    .await?;
    let written = started.elapsed();
    let delivered = smtp
        .until(Duration::from_secs(600), |mails| mails.len() >= notices)
        .await
        .len();
    let elapsed = started.elapsed();
    anyhow::ensure!(
        delivered == notices,
        "{delivered} of {notices} notices arrived"
    );

    println!("## custos-bench --suite notifications\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| people with an email address | {notices} (created in {:.1} s) |",
        seeded.as_secs_f64()
    );
    println!(
        "| `notifySubjects` (one notice per person written) | {:.0} ms, {} queued |",
        written.as_secs_f64() * 1000.0,
        issued["data"]["notifySubjects"]["queued"]
    );
    println!(
        "| until the SMTP server accepted the last | {:.2} s |",
        elapsed.as_secs_f64()
    );
    println!(
        "| **notices delivered per second** | **{:.0}** |",
        notices as f64 / elapsed.as_secs_f64()
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}
