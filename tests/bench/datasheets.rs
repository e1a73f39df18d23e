//! The datasheets suite (`--suite datasheets`): with `--employees` employees in one tenant (imported
//! through `importRecords` in batches of 10,000, which is itself measured), the latency of a
//! filtered and ordered list, of full-text search, of a report by department (today's, and on a
//! past effective day and today's, as recorded now), of a headcount by employment dates (as
//! recorded now, at an explicit moment after the import, and as recorded before 1,000
//! employees moved), and an export of every employee as CSV (time and the process's peak RSS
//! growth while streaming).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use custos_api::{Application, Config, DatabaseConfig};

use crate::common::{
    data_dir, graphql, ms, peak_memory_during, percentile, rss, sign_up, BenchArgs,
};

const IMPORT_BATCH: usize = 10_000;
/// How many employees move before the last headcount, which is asked as recorded before.
const MOVED: usize = 1_000;

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, data_dir) = data_dir(&args)?;
    let mut config = Config::new(data_dir, DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.login_attempts_per_minute = u32::MAX;
    let application = Application::build(config).await?;
    let address = application.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let url = format!("http://{address}/graphql");
    let post = |token: Option<&str>, query: &str, variables: Value| {
        graphql(&client, &url, token, query, variables)
    };
    let signed_up = sign_up(&client, &url).await?;
    let token = signed_up["token"].as_str().unwrap_or_default().to_owned();
    let token = Some(token.as_str());

    // Import the employees, 10,000 rows per request.
    let import = "mutation($csv: String!) { importRecords(datasheet: EMPLOYEES, csv: $csv, mapping: [
        { column: \"first\", field: \"firstName\" }, { column: \"last\", field: \"lastName\" },
        { column: \"email\", field: \"email\" }, { column: \"department\", field: \"department\" },
        { column: \"start\", field: \"startDate\" }, { column: \"notes\", field: \"notes\" }]) { created } }";
    let mut import_times = Vec::new();
    let mut written = 0;
    while written < args.employees {
        let rows = IMPORT_BATCH.min(args.employees - written);
        let mut csv = String::from("first,last,email,department,start,notes\n");
        for i in written..written + rows {
            csv.push_str(&format!(
                "Given{i},Family{:05},person{i}@example.org,Dept {},20{:02}-{:02}-15,Note {i} about skills\n",
                (i * 7919) % 100_000,
                i % 50,
                i % 25,
                i % 12 + 1
            ));
        }
        let started = Instant::now();
        post(token, import, json!({ "csv": csv })).await?;
        import_times.push((rows, started.elapsed()));
        written += rows;
    }
    let (first_rows, first_time) = import_times[0];
    // No ANALYZE here: the service refreshes the planner's statistics of `records` after
    // every import itself, which is what these figures measure.

    let measure = |query: &'static str, variables: Value, n: usize| {
        let post = &post;
        async move {
            let mut latencies = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                post(token, query, variables.clone()).await?;
                latencies.push(started.elapsed());
            }
            latencies.sort();
            Ok::<_, anyhow::Error>(latencies)
        }
    };
    let first_page = measure(
        "{ employees(first: 50) { edges { cursor node { id firstName lastName email department startDate } } } }",
        json!({}),
        args.reads,
    )
    .await?;
    let first_page_counted = measure(
        "{ employees(first: 50) { totalCount edges { cursor node { id firstName lastName email department startDate } } } }",
        json!({}),
        args.reads,
    )
    .await?;
    let filtered = measure(
        "query($f: EmployeeFilter, $o: [EmployeeOrder!]) { employees(first: 50, filter: $f, orderBy: $o) {
            edges { cursor node { id firstName lastName email department startDate } } } }",
        json!({ "f": { "department": { "eq": "Dept 7" } }, "o": [{ "lastName": "ASC" }] }),
        args.reads,
    )
    .await?;
    let backward = measure(
        "query($f: EmployeeFilter, $o: [EmployeeOrder!]) { employees(last: 50, filter: $f, orderBy: $o) {
            edges { cursor node { id firstName lastName email department startDate } } } }",
        json!({ "f": { "department": { "eq": "Dept 7" } }, "o": [{ "lastName": "ASC" }] }),
        args.reads,
    )
    .await?;
    let list = measure(
        "query($f: EmployeeFilter, $o: [EmployeeOrder!]) { employees(first: 50, filter: $f, orderBy: $o) {
            totalCount edges { cursor node { id firstName lastName email department startDate } } } }",
        json!({ "f": { "department": { "eq": "Dept 7" } }, "o": [{ "lastName": "ASC" }] }),
        args.reads,
    )
    .await?;
    let search = measure(
        "query($s: String) { employees(first: 50, search: $s) { totalCount edges { node { id lastName } } } }",
        json!({ "s": "family0421" }),
        args.reads,
    )
    .await?;
    let report = measure(
        "{ report(datasheet: EMPLOYEES, groupBy: \"department\") { total groups { value count } } }",
        json!({}),
        args.reads.min(500),
    )
    .await?;
    // The same from each record's history: values in force on a past day, as recorded now.
    let report_effective = measure(
        "{ report(datasheet: EMPLOYEES, groupBy: \"department\", effectiveAt: \"2012-06-30\") { total groups { value count } } }",
        json!({}),
        args.reads.min(500),
    )
    .await?;
    let headcount = measure(
        "{ headcount(effectiveAt: \"2012-06-30\") { total groups { value count } } }",
        json!({}),
        args.reads.min(500),
    )
    .await?;
    // Every employee in effect (today), as recorded now; and the headcount with an explicit
    // moment, which folds every record's history.
    let report_today = measure(
        "query($on: NaiveDate) { report(datasheet: EMPLOYEES, groupBy: \"department\", effectiveAt: $on) { total groups { value count } } }",
        json!({ "on": chrono::Utc::now().date_naive().to_string() }),
        args.reads.min(500),
    )
    .await?;
    let headcount_recorded = measure(
        "query($at: DateTime) { headcount(effectiveAt: \"2012-06-30\", recordedAt: $at) { total groups { value count } } }",
        json!({ "at": chrono::Utc::now().to_rfc3339() }),
        args.reads.min(500),
    )
    .await?;
    // Then the first 1,000 employees move, and the same headcount as recorded before they
    // did: their histories folded, the others from today's rows.
    let before_moves = chrono::Utc::now().to_rfc3339();
    let (mut moved, mut after) = (0, None::<String>);
    while moved < args.employees.min(MOVED) {
        let page = post(
            token,
            "query($after: String) { employees(first: 100, after: $after) { edges { cursor node { id } } } }",
            json!({ "after": after }),
        )
        .await?;
        let edges = page["data"]["employees"]["edges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(last) = edges.last() else { break };
        after = last["cursor"].as_str().map(str::to_owned);
        for edge in &edges {
            post(
                token,
                "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Moved\" }) { id } }",
                json!({ "id": edge["node"]["id"] }),
            )
            .await?;
            moved += 1;
        }
    }
    let headcount_before_moves = measure(
        "query($at: DateTime) { headcount(effectiveAt: \"2012-06-30\", recordedAt: $at) { total groups { value count } } }",
        json!({ "at": before_moves }),
        args.reads.min(500),
    )
    .await?;

    // Export every employee as CSV, reading the stream as it comes; sample RSS meanwhile.
    let rss_before = rss();
    let export_started = Instant::now();
    let started = post(
        token,
        "mutation { exportRecords(datasheet: EMPLOYEES, format: CSV) { count downloadUrl } }",
        json!({}),
    )
    .await?;
    let count = started["data"]["exportRecords"]["count"]
        .as_u64()
        .unwrap_or(0);
    let link = started["data"]["exportRecords"]["downloadUrl"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (counted, peak) = peak_memory_during(async {
        let mut response = client.get(format!("http://{address}{link}")).send().await?;
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(chunk) = response.chunk().await? {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        Ok::<_, anyhow::Error>((bytes, lines))
    })
    .await;
    let (bytes, lines) = counted?;
    let export_time = export_started.elapsed();
    let rss_growth = peak.resident.saturating_sub(rss_before);

    let _ = stop.send(());
    server.await??;

    println!("## custos-bench --suite datasheets");
    println!();
    println!(
        "employees: {}, requests per latency figure: {}",
        args.employees, args.reads
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| import through `importRecords`, {first_rows} rows in one request (first batch) | {:.2} s ({:.0} rows/s) |",
        first_time.as_secs_f64(),
        first_rows as f64 / first_time.as_secs_f64()
    );
    let (all_rows, all_time) = import_times
        .iter()
        .fold((0, Duration::ZERO), |(r, t), (rows, time)| {
            (r + rows, t + *time)
        });
    println!(
        "| import, all {all_rows} rows in batches of {IMPORT_BATCH} | {:.1} s ({:.0} rows/s) |",
        all_time.as_secs_f64(),
        all_rows as f64 / all_time.as_secs_f64()
    );
    for (name, latencies) in [
        ("`employees(first: 50)`, no `totalCount`", &first_page),
        (
            "`employees(first: 50)` with `totalCount`",
            &first_page_counted,
        ),
        (
            "`employees(first: 50)` filtered by department, ordered by last name, no `totalCount`",
            &filtered,
        ),
        (
            "`employees(last: 50)` filtered by department, ordered by last name, no `totalCount`",
            &backward,
        ),
        (
            "`employees(first: 50)` filtered by department, ordered by last name",
            &list,
        ),
        ("`employees(first: 50, search:)` full-text", &search),
        ("`report(groupBy: \"department\")`", &report),
        (
            "`report(groupBy: \"department\", effectiveAt: 2012-06-30)` (no record in effect yet)",
            &report_effective,
        ),
        (
            "`report(groupBy: \"department\", effectiveAt: today)` (every record)",
            &report_today,
        ),
        (
            "`headcount(effectiveAt: 2012-06-30)` by employment dates, per department",
            &headcount,
        ),
        (
            "the same headcount with `recordedAt: now` given",
            &headcount_recorded,
        ),
        (
            "the same headcount as recorded before 1,000 employees moved (their histories folded)",
            &headcount_before_moves,
        ),
    ] {
        println!(
            "| {name}: p50 / p99 | {:.2} ms / {:.2} ms |",
            ms(percentile(latencies, 0.50)),
            ms(percentile(latencies, 0.99))
        );
    }
    println!(
        "| CSV export of {count} employees: recorded, streamed and read ({} data lines, {:.1} MB) | {:.2} s ({:.0} rows/s) |",
        lines.saturating_sub(1),
        bytes as f64 / 1e6,
        export_time.as_secs_f64(),
        count as f64 / export_time.as_secs_f64()
    );
    println!(
        "| peak RSS growth of the process (server and reading client) during the export | {:.1} MB |",
        rss_growth as f64 / 1e6
    );
    Ok(())
}
