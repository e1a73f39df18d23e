//! The foundation suite: in one run on one private cluster, (a) raw single-row INSERTs into an
//! events-shaped table, (b) `updateEmployee` mutations over HTTP, (c) `employees(first: 50)`
//! latency with many employees, (d) `{ me { id } }`, (e) the updates in process, (f) a login
//! flood and (g) the list during it, (h) the updates from four times as many clients, (i) the
//! history of a record with 1,000 events and its state at a moment, (r) the records read model
//! rebuilt. Prints a Markdown report for docs/performance.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_domain::record::{new_record_id, Fields};
use custos_domain::{Actor, Datasheet, EventMetadata, RecordCommand};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use uuid::Uuid;

use custos_api::testing::run_command;
use custos_api::{Application, Config, DatabaseConfig};
use custos_tests::employee_created;

use crate::baseline;
use crate::common::{
    closed_loop, compared, cpu_during, data_dir, graphql, heap_allocated, last_recorded, latencies,
    ms, peak_memory_during, percentile, rebuild_records, rss, sign_up, BenchArgs, CpuTime,
};

/// Records per client in the spread variant of phase (b).
const SPREAD: usize = 64;

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, data_dir) = data_dir(&args)?;
    let cluster_dir = data_dir.join("postgres").join("data");
    let mut config = Config::new(data_dir, DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.tenant_pool_size = (args.clients as u32).max(8);
    // The benchmark floods logins from one address on purpose.
    config.login_attempts_per_minute = u32::MAX;
    let hash_concurrency = config.password_hash_concurrency;
    if args.statements > 0 {
        config.cluster_settings.extend([
            (
                "shared_preload_libraries",
                "'pg_stat_statements'".to_owned(),
            ),
            ("pg_stat_statements.track", "'all'".to_owned()),
            ("pg_stat_statements.track_planning", "on".to_owned()),
        ]);
    }
    let application = Application::build(config).await?;
    let address = application.local_addr()?;
    let services = application.services();
    let admin = application.database_options();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let duration = Duration::from_secs(args.seconds);
    let mut statements = Statements::new(&admin, args.statements).await?;

    // (a) raw INSERTs into a table shaped like `events`, one row per transaction.
    let scratch = format!("custos_bench_{}", Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect_with(&admin.clone().database("postgres")).await?;
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut conn)
        .await?;
    let raw_pool = PgPoolOptions::new()
        .max_connections(args.clients as u32)
        .connect_with(admin.clone().database(&scratch))
        .await?;
    sqlx::query(
        "CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint NOT NULL,
            event_type text NOT NULL, event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
            global_position bigint GENERATED ALWAYS AS IDENTITY, transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    )
    .execute(&raw_pool)
    .await?;
    sqlx::query("CREATE INDEX ON events (transaction_id, global_position)")
        .execute(&raw_pool)
        .await?;
    let payload = json!({ "RecordUpdated": { "datasheet": "employees", "changes": { "department": "Engineering" } } });
    let metadata = EventMetadata::new(Actor::User(Uuid::now_v7()), Uuid::now_v7()).to_map();
    let inserts = Arc::new(AtomicU64::new(0));
    let raw_before = CpuTime::now(&cluster_dir);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (pool, payload, metadata, inserts) = (
            raw_pool.clone(),
            payload.clone(),
            json!(metadata),
            inserts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = Uuid::now_v7().to_string();
            let mut sequence = 0i64;
            while started.elapsed() < duration {
                sequence += 1;
                sqlx::query(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                     VALUES ('record', $1, $2, 'RecordUpdated', '1', $3, $4)",
                )
                .bind(&id)
                .bind(sequence)
                .bind(&payload)
                .bind(&metadata)
                .execute(&pool)
                .await?;
                inserts.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let raw_rate = inserts.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let raw_cpu = CpuTime::now(&cluster_dir).since(raw_before);
    raw_pool.close().await;
    sqlx::query(&format!("DROP DATABASE {scratch} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;

    // (baseline) The same kind of update through a plain cqrs-es service on the same server.
    let (baseline_rate, baseline_cpu) = cpu_during(
        &cluster_dir,
        baseline::rate(&admin, args.clients, SPREAD, duration),
    )
    .await;
    let baseline_rate = baseline_rate?;

    // (b) updateEmployee over HTTP, each client on its own employee (no conflicts).
    let client = reqwest::Client::new();
    let url = format!("http://{address}/graphql");
    let post = |token: Option<String>, query: &'static str, variables: Value| {
        graphql(&client, &url, token.as_deref(), query, variables)
    };
    let signed_up = sign_up(&client, &url).await?;
    let token = signed_up["token"].as_str().unwrap_or_default().to_owned();
    let tenant_id: Uuid = signed_up["tenant"]["id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let user_id: Uuid = signed_up["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    // Hot: each client rewrites one record of its own, so its stream grows by one event per
    // request. Spread: each client cycles over `SPREAD` records of its own (streams stay short).
    let mut rates = Vec::new();
    let mut spread_ids = Vec::new();
    let mut spread_projector = ProjectorWork::default();
    let mut spread_cpu = CpuTime::default();
    let mut spread_vacuums: anyhow::Result<Vec<(String, u32)>> = Ok(Vec::new());
    let mut spread_statements = String::new();
    let mut caught_up_in = Duration::ZERO;
    for per_client in [1, SPREAD] {
        let mut sets = Vec::new();
        for c in 0..args.clients {
            let mut ids = Vec::new();
            for r in 0..per_client {
                let created = post(
                    Some(token.clone()),
                    "mutation($i: CreateEmployeeInput!) { createEmployee(input: $i) { id } }",
                    json!({ "i": { "firstName": format!("Writer{c}x{r}"), "lastName": "Bench" } }),
                )
                .await?;
                ids.push(
                    created["data"]["createEmployee"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            sets.push(ids);
        }
        let before = ProjectorWork::scrape(&client, &address).await?;
        statements.reset().await?;
        let ((rate, vacuums), cpu) = cpu_during(&cluster_dir, autovacuum_during(&admin, closed_loop(args.clients, duration, |client, n| {
            let (token, ids) = (token.clone(), &sets[client]);
            async move {
                post(
                    Some(token),
                    "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { id version } }",
                    json!({ "id": ids[n % ids.len()], "d": format!("Dept {n}") }),
                )
                .await
                .map(|_| ())
            }
        })))
        .await;
        let rate = rate?;
        if per_client == SPREAD {
            spread_cpu = cpu;
            spread_vacuums = vacuums;
            spread_statements = statements.top(rate * cpu.seconds(), "mutation").await?;
            // The answers did not wait for the read models: a read waits until they show
            // every change answered, so timing one counts the phase until projected.
            let read = Instant::now();
            post(Some(token.clone()), "{ me { id } }", json!({})).await?;
            caught_up_in = read.elapsed();
            spread_projector = ProjectorWork::scrape(&client, &address)
                .await?
                .since(before);
        }
        rates.push(rate);
        spread_ids = sets;
    }
    let (hot_rate, spread_rate) = (rates[0], rates[1]);

    // (b, keyed) The spread updates again, each with an Idempotency-Key of its own: what
    // taking a key and storing the sealed answer add to a mutation.
    let keyed_rate = closed_loop(args.clients, duration, |c, n| {
        let ids = &spread_ids[c];
        let request = client
            .post(&url)
            .bearer_auth(&token)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({
                "query": "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { id version } }",
                "variables": { "id": ids[n % ids.len()], "d": format!("Keyed {n}") },
            }));
        async move {
            let body: Value = request.send().await?.json().await?;
            anyhow::ensure!(body.get("errors").is_none(), "request failed: {}", body["errors"]);
            Ok(())
        }
    })
    .await?;

    // (b, read back) The spread updates again, each answering a field of the read model: the
    // answer waits for the read models to show the change.
    let before = ProjectorWork::scrape(&client, &address).await?;
    statements.reset().await?;
    let (read_back_rate, read_back_cpu) = cpu_during(&cluster_dir, closed_loop(args.clients, duration, |c, n| {
        let (token, ids) = (token.clone(), &spread_ids[c]);
        async move {
            post(
                Some(token),
                "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { id version department } }",
                json!({ "id": ids[n % ids.len()], "d": format!("Read back {n}") }),
            )
            .await
            .map(|_| ())
        }
    }))
    .await;
    let read_back_rate = read_back_rate?;
    let read_back_projector = ProjectorWork::scrape(&client, &address)
        .await?
        .since(before);
    let read_back_statements = statements
        .top(read_back_rate * read_back_cpu.seconds(), "mutation")
        .await?;

    // (d) The floor of any request: HTTP, authentication and GraphQL, no command.
    let (me_rate, me_cpu) = cpu_during(
        &cluster_dir,
        closed_loop(args.clients, duration, |_, _| {
            let token = token.clone();
            async move {
                post(Some(token), "{ me { id } }", json!({}))
                    .await
                    .map(|_| ())
            }
        }),
    )
    .await;
    let me_rate = me_rate?;

    // (e) The command path in process: the same updates without HTTP or GraphQL, each waiting
    // for its event to be projected, as a mutation does.
    let tenant = services
        .tenancy
        .get(tenant_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("bench tenant vanished"))?;
    statements.reset().await?;
    let ((command_rate, command_vacuums), command_cpu) = cpu_during(
        &cluster_dir,
        autovacuum_during(
            &admin,
            closed_loop(args.clients, duration, |client, n| {
                let (services, tenant, ids) =
                    (services.clone(), tenant.clone(), &spread_ids[client]);
                async move {
                    let command = department_update(format!("Direct {n}"));
                    let id: Uuid = ids[n % ids.len()].parse()?;
                    run_command(
                        &services,
                        &tenant,
                        &tenant.records,
                        id,
                        command,
                        EventMetadata::new(Actor::User(user_id), Uuid::now_v7()),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("update failed: {:?}", e.code()))
                }
            }),
        ),
    )
    .await;
    let command_rate = command_rate?;
    let command_statements = statements
        .top(command_rate * command_cpu.seconds(), "command")
        .await?;
    let written = args.clients * (1 + SPREAD);

    // (c) employees(first: 50) with many employees, seeded through the command side.
    let tenant = services
        .tenancy
        .get(tenant_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("bench tenant vanished"))?;
    let seed_started = Instant::now();
    let per_task = args.employees.div_ceil(args.clients);
    let mut seeders = Vec::new();
    for t in 0..args.clients {
        let tenant = tenant.clone();
        let count = per_task.min(args.employees.saturating_sub(t * per_task));
        seeders.push(async move {
            for i in 0..count {
                let mut fields = Fields::new();
                fields.insert("first_name".into(), json!(format!("Seed{t}x{i}")));
                fields.insert("last_name".into(), json!("Bench"));
                fields.insert("department".into(), json!(format!("Dept {}", i % 20)));
                fields.insert("email".into(), json!(format!("seed{t}x{i}@example.org")));
                let command = employee_created(fields);
                let metadata = EventMetadata::new(Actor::User(user_id), Uuid::now_v7());
                tenant
                    .records
                    .execute_with_metadata(&new_record_id().to_string(), command, metadata.to_map())
                    .await
                    .map_err(|e| anyhow::anyhow!("seeding failed: {e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    for result in futures::future::join_all(seeders).await {
        result?;
    }
    let commanded_in = seed_started.elapsed();
    // Wait for the read model to hold every employee.
    loop {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM records WHERE datasheet = 'employees'")
                .fetch_one(&tenant.pool)
                .await?;
        if count as usize >= args.employees + written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seeded_in = seed_started.elapsed();
    let seeded_at = chrono::Utc::now();
    // `reads` requests of `query`, one after another: their latencies, sorted.
    let timed = |reads: usize, query: &'static str, variables: Value| {
        let (token, post) = (&token, &post);
        latencies(reads, move || {
            let request = post(Some(token.clone()), query, variables.clone());
            async move { request.await.map(|_| ()) }
        })
    };
    let list = || {
        timed(
            args.reads,
            "{ employees(first: 50) { totalCount edges { cursor node { id version firstName lastName email department archived } } pageInfo { hasNextPage endCursor } } }",
            json!({}),
        )
    };
    let list_started = chrono::Utc::now();
    let vacuumed_before_list = records_vacuumed_since(&tenant.pool, seeded_at).await?;
    let latencies = list().await?;
    // Whether PostgreSQL's autovacuum worked on `records` while (c) ran: its tail latency
    // depends on it (a freshly seeded table is read through the heap until it is vacuumed).
    let autovacuum_during_list = records_vacuumed_since(&tenant.pool, list_started).await?;
    // (c, vacuumed) the same after `VACUUM ANALYZE records`: what (c) is once autovacuum has
    // caught up, whenever it runs.
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&tenant.pool)
        .await?;
    let mut tenant_admin =
        sqlx::PgConnection::connect_with(&admin.clone().database(&database)).await?;
    sqlx::query("VACUUM ANALYZE records")
        .execute(&mut tenant_admin)
        .await?;
    tenant_admin.close().await?;
    let vacuumed_latencies = list().await?;

    // (f) A login flood: every client logs in as a user of its own, again and again.
    let mut accounts = Vec::new();
    for c in 0..args.clients {
        let email = format!("flood{c}@example.org");
        post(
            Some(token.clone()),
            "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
            json!({ "i": { "email": email, "name": format!("Flood {c}"), "temporaryPassword": "flood password one" } }),
        )
        .await?;
        accounts.push(email);
    }
    let flood_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (accounts, flood_stop) = (&accounts, flood_stop.clone());
        async move {
            let logins = AtomicU64::new(0);
            let started = Instant::now();
            let loops = accounts.iter().map(|email| {
                let (logins, flood_stop) = (&logins, &flood_stop);
                async move {
                    while !flood_stop.load(Ordering::Relaxed) {
                        post(
                            None,
                            "mutation($e: String!) { login(tenant: \"bench\", email: $e, password: \"flood password one\") { token } }",
                            json!({ "e": email }),
                        )
                        .await?;
                        logins.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, anyhow::Error>(())
                }
            });
            for result in futures::future::join_all(loops).await {
                result?;
            }
            Ok::<_, anyhow::Error>(
                logins.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
            )
        }
    };
    // (g) The (c) query again, while the flood runs.
    let measured = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let latencies = list().await;
        flood_stop.store(true, Ordering::Relaxed);
        latencies
    };
    let (login_rate, flooded) = tokio::join!(flood, measured);
    let (login_rate, flooded) = (login_rate?, flooded?);

    // (h) The (b) updates from four times as many clients, four to each client's records
    // (each on a quarter of them, so no two touch one record at once): the process's memory
    // under that load.
    let many = args.clients * 4;
    let (rss_before_many, heap_before_many) = (rss(), heap_allocated());
    let (many_rate, many_peak) = peak_memory_during(closed_loop(many, duration, |client, n| {
        let (token, ids) = (token.clone(), &spread_ids[client % args.clients]);
        let quarter = client / args.clients;
        async move {
            post(
                Some(token),
                "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { id version } }",
                json!({ "id": ids[(n * 4 + quarter) % ids.len()], "d": format!("Many {n}") }),
            )
            .await
            .map(|_| ())
        }
    }))
    .await;
    let many_rate = many_rate?;
    // What of (h)'s heap outlives its requests: what the service keeps, not what it holds
    // while serving.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heap_after_many = heap_allocated();

    // (i) The audit reads of one record with 1,000 events: its history, and the record as it
    // was at its 500th (recordAsOf folds the state up to a moment).
    let long = new_record_id();
    for n in 0..1_000 {
        let command = if n == 0 {
            let mut fields = Fields::new();
            fields.insert("first_name".into(), json!("Long"));
            fields.insert("last_name".into(), json!("Story"));
            employee_created(fields)
        } else {
            department_update(format!("Dept {n}"))
        };
        let metadata = EventMetadata::new(Actor::User(user_id), Uuid::now_v7());
        run_command(&services, &tenant, &tenant.records, long, command, metadata)
            .await
            .map_err(|e| anyhow::anyhow!("long record: {:?}", e.code()))?;
    }
    let middle: String = sqlx::query_scalar(
        "SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
         FROM events WHERE aggregate_type = 'record' AND aggregate_id = $1 AND sequence = 500",
    )
    .bind(long.to_string())
    .fetch_one(&tenant.pool)
    .await?;
    let audit_reads = args.reads.min(200);
    let (history, history_cpu) = cpu_during(&cluster_dir, timed(
        audit_reads,
        "query($id: ID!) { recordHistory(id: $id, first: 1000) { totalCount edges { node { sequence eventType recordedAt changes { field before after } } } } }",
        json!({ "id": long }),
    ))
    .await;
    let history = history?;
    let as_of = timed(
        audit_reads,
        "query($id: ID!, $at: DateTime!) { recordAsOf(id: $id, recordedAt: $at) { version fields { field value } } }",
        json!({ "id": long, "at": middle }),
    )
    .await?;

    // (r) The records read model rebuilt from every event beside the live one and swapped
    // in: what `custos projections rebuild records` runs.
    statements.reset().await?;
    let (rebuilt, rebuilt_in) = rebuild_records(&admin, &tenant).await?;
    let rebuild_statements = statements
        .top(rebuilt.events as f64 / 1000.0, "1,000 events")
        .await?;

    let _ = stop.send(());
    server.await??;

    println!("## custos-bench");
    println!();
    println!(
        "clients: {}, phase length: {} s, employees: {}, reads: {}",
        args.clients, args.seconds, args.employees, args.reads
    );
    println!();
    let mut rows: Vec<String> = Vec::new();
    rows.push(format!("| (a) raw single-row INSERT into an events-shaped table, {} connections | {raw_rate:.0} tx/s |", args.clients));
    rows.push(format!("| (b) `updateEmployee` over HTTP, {} clients, each on {SPREAD} records of its own | {spread_rate:.0} mutations/s |", args.clients));
    rows.push(format!(
        "| (a) CPU per INSERT: this process / PostgreSQL | {} |",
        raw_cpu.per_operation(raw_rate * raw_cpu.seconds())
    ));
    rows.push(format!(
        "| (b) CPU per mutation: this process (service and load generator) / PostgreSQL | {} |",
        spread_cpu.per_operation(spread_rate * spread_cpu.seconds())
    ));
    rows.push(format!("| (b)/(a) | {:.3} |", spread_rate / raw_rate));
    rows.push(format!(
        "| (b) autovacuum at work during (b), seen every 100 ms (its workers' CPU counts as PostgreSQL's) | {} |",
        vacuums_row(&spread_vacuums)
    ));
    rows.push(format!("| (baseline) plain cqrs-es + postgres-es + axum, the cqrs-es demo's shape (a JSON POST per command, its view updated in the request; no authentication, sealing, chain or projector), {} clients, each on {SPREAD} aggregates of its own | {baseline_rate:.0} commands/s |", args.clients));
    rows.push(format!(
        "| (baseline) CPU per command: this process (service and load generator) / PostgreSQL | {} |",
        baseline_cpu.per_operation(baseline_rate * baseline_cpu.seconds())
    ));
    rows.push(format!(
        "| (b)/(baseline) | {:.3} |",
        spread_rate / baseline_rate
    ));
    rows.push(format!("| (b, keyed) the (b) updates, each with an `Idempotency-Key` of its own | {keyed_rate:.0} mutations/s |"));
    rows.push(format!(
        "| (b, keyed)/(b) | {:.3} |",
        keyed_rate / spread_rate
    ));
    rows.push(spread_projector.row("(b)"));
    let phase = duration.as_secs_f64();
    rows.push(format!(
        "| (b, until projected) the (b) updates counted until a read shows the last of them | {:.0} mutations/s (the read waited {:.0} ms) |",
        spread_rate * phase / (phase + caught_up_in.as_secs_f64()),
        caught_up_in.as_secs_f64() * 1000.0
    ));
    rows.push(format!("| (b, read back) the (b) updates answering `department` too, so each waits for the read models | {read_back_rate:.0} mutations/s |"));
    rows.push(read_back_projector.row("(b, read back)"));
    rows.push(format!(
        "| (b, read back) CPU per mutation: this process / PostgreSQL | {} |",
        read_back_cpu.per_operation(read_back_rate * read_back_cpu.seconds())
    ));
    rows.push(format!(
        "| (b, read back)/(a) | {:.3} |",
        read_back_rate / raw_rate
    ));
    rows.push(format!("| (b, hot) the same, each client on a single record (its stream grows by one event per request) | {hot_rate:.0} mutations/s |"));
    rows.push(format!("| (b, hot)/(a) | {:.3} |", hot_rate / raw_rate));
    rows.push(format!("| (b, hot)/(b) | {:.3} |", hot_rate / spread_rate));
    rows.push(format!("| (d) `{{ me {{ id }} }}` over HTTP, {} clients: HTTP, authentication and GraphQL alone | {me_rate:.0} requests/s |", args.clients));
    rows.push(format!(
        "| (d) CPU per request: this process / PostgreSQL | {} |",
        me_cpu.per_operation(me_rate * me_cpu.seconds())
    ));
    rows.push(format!("| (e) the (b) updates in process, no HTTP, each waiting for its projection | {command_rate:.0} commands/s |"));
    rows.push(format!(
        "| (e) CPU per command: this process / PostgreSQL | {} |",
        command_cpu.per_operation(command_rate * command_cpu.seconds())
    ));
    rows.push(format!("| (e)/(a) | {:.3} |", command_rate / raw_rate));
    rows.push(format!(
        "| (e) autovacuum at work during (e), seen every 100 ms | {} |",
        vacuums_row(&command_vacuums)
    ));
    rows.push(format!(
        "| seeding {} employees through the command side, until projected | {:.1} s ({:.0}/s) |",
        args.employees,
        seeded_in.as_secs_f64(),
        args.employees as f64 / seeded_in.as_secs_f64()
    ));
    rows.push(format!(
        "| seeding: the commands alone (the projector still behind by the rest) | {:.1} s ({:.0}/s) |",
        commanded_in.as_secs_f64(),
        args.employees as f64 / commanded_in.as_secs_f64()
    ));
    rows.push(format!(
        "| (c) `employees(first: 50)` p50, one client | {:.2} ms |",
        ms(percentile(&latencies, 0.50))
    ));
    rows.push(format!(
        "| (c) `employees(first: 50)` p99, one client | {:.2} ms |",
        ms(percentile(&latencies, 0.99))
    ));
    rows.push(format!(
        "| (c) autovacuum or autoanalyze of `records` finished while (c) ran | {} |",
        if autovacuum_during_list { "yes" } else { "no" }
    ));
    rows.push(format!(
        "| (c) autovacuum or autoanalyze of `records` finished after the seeding, before (c) began | {} |",
        if vacuumed_before_list { "yes" } else { "no" }
    ));
    rows.push(format!(
        "| (c, vacuumed) the same after `VACUUM ANALYZE records`, p50 / p99 | {} |",
        p50_p99(&vacuumed_latencies)
    ));
    rows.push(format!(
        "| (f) logins/s, {} clients on accounts of their own (argon2id m=19456 KiB, t=2, p=1; {hash_concurrency} hash(es) at a time) | {login_rate:.1} logins/s |",
        args.clients
    ));
    rows.push(format!(
        "| (g) `employees(first: 50)` p50 / p99 during the login flood | {} |",
        p50_p99(&flooded)
    ));
    rows.push(format!(
        "| (g)/(c) p99 | {:.2} |",
        percentile(&flooded, 0.99).as_secs_f64() / percentile(&latencies, 0.99).as_secs_f64()
    ));
    rows.push(format!(
        "| (h) the (b) updates from {many} clients, four to each client's records | {many_rate:.0} mutations/s |"
    ));
    rows.push(format!(
        "| (h) resident memory of the process (service and load generator), before / at most during (h) | {:.0} MB / {:.0} MB |",
        rss_before_many as f64 / 1e6,
        many_peak.resident as f64 / 1e6
    ));
    rows.push(format!(
        "| (h) of that, the heap the program holds allocated (jemalloc's count), before / at most during (h) | {:.0} MB / {:.0} MB |",
        heap_before_many as f64 / 1e6,
        many_peak.allocated as f64 / 1e6
    ));
    rows.push(format!(
        "| (h) the heap 2 s after (h) | {:.0} MB |",
        heap_after_many as f64 / 1e6
    ));
    rows.push(format!(
        "| (h) at the highest resident memory: file pages / anonymous; of the anonymous, jemalloc's (allocated, its metadata, freed and kept) / the rest (thread stacks and other mappings) | {} |",
        many_peak.split.describe()
    ));
    rows.push(format!(
        "| (i) `recordHistory(first: 1000)` of a record with 1,000 events, p50 / p99, one client | {} |",
        p50_p99(&history)
    ));
    rows.push(format!(
        "| (i) `recordHistory(first: 1000)` CPU per request: this process / PostgreSQL | {} |",
        history_cpu.per_operation(history.len() as f64)
    ));
    rows.push(format!(
        "| (i) `recordAsOf` of the same record at its 500th event, p50 / p99, one client | {} |",
        p50_p99(&as_of)
    ));
    rows.push(format!(
        "| (r) the records read model rebuilt from every event beside the live one and swapped in (`custos projections rebuild records`) | {:.0} events/s ({:.1} s, {} events; the read model held {:.2} s while its tables were swapped) |",
        rebuilt.events as f64 / rebuilt_in.as_secs_f64(),
        rebuilt_in.as_secs_f64(),
        rebuilt.events,
        rebuilt.held.as_secs_f64()
    ));
    print!("{}", compared(&rows, &last_recorded()));
    if args.statements > 0 {
        println!(
            "\n### Statements during (b), with pg_stat_statements loaded\n\n{spread_statements}"
        );
        println!("### Statements during (b, read back)\n\n{read_back_statements}");
        println!("### Statements during (e)\n\n{command_statements}");
        println!("### Statements during (r)\n\n{rebuild_statements}");
    }
    Ok(())
}

/// pg_stat_statements in the benchmark's cluster, when `--statements` asks for it: where
/// PostgreSQL spent its time during a phase, statement by statement, over every database.
struct Statements {
    conn: Option<sqlx::PgConnection>,
    top: usize,
}

impl Statements {
    async fn new(admin: &sqlx::postgres::PgConnectOptions, top: usize) -> anyhow::Result<Self> {
        if top == 0 {
            return Ok(Self { conn: None, top });
        }
        let mut conn =
            sqlx::PgConnection::connect_with(&admin.clone().database("postgres")).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await?;
        Ok(Self {
            conn: Some(conn),
            top,
        })
    }

    /// Forgets what was counted so far.
    async fn reset(&mut self) -> anyhow::Result<()> {
        if let Some(conn) = &mut self.conn {
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// The statements with the most time since the reset, as a Markdown table: per
    /// `operations` (the phase's operations, each a `per`), the calls and the milliseconds in
    /// planning and execution; each statement's share of all the time.
    async fn top(&mut self, operations: f64, per: &str) -> anyhow::Result<String> {
        let Some(conn) = &mut self.conn else {
            return Ok(String::new());
        };
        // Statements run inside others (functions, triggers) are counted in theirs too: the
        // shares are of the time of the statements clients sent.
        let rows: Vec<(String, bool, i64, f64, Option<f64>)> = sqlx::query_as(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), toplevel, calls,
                    total_plan_time + total_exec_time,
                    sum(total_plan_time + total_exec_time) FILTER (WHERE toplevel) OVER ()
             FROM pg_stat_statements ORDER BY 4 DESC LIMIT $1",
        )
        .bind(self.top as i64)
        .fetch_all(conn)
        .await?;
        let operations = operations.max(1.0);
        let mut table = format!(
            "| statement | sent by a client | calls per {per} | ms per {per} (planning and execution) | share |\n|---|---|---|---|---|\n",
        );
        for (query, toplevel, calls, ms, all) in rows {
            let query: String = query.chars().take(160).collect();
            table.push_str(&format!(
                "| `{}` | {} | {:.2} | {:.3} | {:.2} |\n",
                query.replace('|', "\\|").replace('`', "'"),
                if toplevel { "yes" } else { "no" },
                calls as f64 / operations,
                ms / operations,
                ms / all.unwrap_or_default().max(f64::EPSILON),
            ));
        }
        Ok(table)
    }
}

/// Runs `phase` while looking every 100 ms at what PostgreSQL's autovacuum workers do, in any
/// database of the cluster: the phase's output, and each distinct piece of work seen (its
/// statement, as `VACUUM ANALYZE public.records`) with the number of looks that saw it. The
/// looking stops as soon as the phase ends, so that a phase timed around this is not lengthened.
async fn autovacuum_during<T>(
    admin: &sqlx::postgres::PgConnectOptions,
    phase: impl std::future::Future<Output = T>,
) -> (T, anyhow::Result<Vec<(String, u32)>>) {
    let ended = tokio::sync::Notify::new();
    let watch = async {
        let mut conn =
            sqlx::PgConnection::connect_with(&admin.clone().database("postgres")).await?;
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        loop {
            let working: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT regexp_replace(query, '^autovacuum: ', '') FROM pg_stat_activity
                 WHERE backend_type = 'autovacuum worker' AND query <> ''",
            )
            .fetch_all(&mut conn)
            .await?;
            for work in working {
                *seen.entry(work).or_default() += 1;
            }
            tokio::select! {
                () = ended.notified() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        conn.close().await?;
        Ok(seen.into_iter().collect())
    };
    let phase = async {
        let output = phase.await;
        // Stored if the watcher is not waiting yet: its next wait ends at once.
        ended.notify_one();
        output
    };
    tokio::join!(phase, watch)
}

/// [`autovacuum_during`]'s findings as a table cell.
fn vacuums_row(seen: &anyhow::Result<Vec<(String, u32)>>) -> String {
    match seen {
        Err(err) => format!("unavailable: {err}"),
        Ok(seen) if seen.is_empty() => "none".to_owned(),
        Ok(seen) => seen
            .iter()
            .map(|(work, looks)| {
                format!(
                    "{work} ({looks} {})",
                    if *looks == 1 { "look" } else { "looks" }
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Whether PostgreSQL's autovacuum has vacuumed or analysed `records` since `at`.
async fn records_vacuumed_since(
    pool: &sqlx::PgPool,
    at: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(greatest(last_autovacuum, last_autoanalyze) >= $1, false)
         FROM pg_stat_user_tables WHERE relname = 'records'",
    )
    .bind(at)
    .fetch_optional(pool)
    .await?
    .unwrap_or(false))
}

/// What the service's projectors had done, from its `/metrics`: passes that applied events,
/// their time in all, and the events read; between two scrapes with [`ProjectorWork::since`].
#[derive(Debug, Default, Clone, Copy)]
struct ProjectorWork {
    passes: f64,
    seconds: f64,
    events: f64,
    elapsed: Duration,
    at: Option<Instant>,
}

impl ProjectorWork {
    async fn scrape(
        client: &reqwest::Client,
        address: &impl std::fmt::Display,
    ) -> anyhow::Result<Self> {
        let text = client
            .get(format!("http://{address}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let value = |series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .ok_or_else(|| anyhow::anyhow!("/metrics has no {series}"))
        };
        Ok(Self {
            passes: value("custos_projector_batch_duration_seconds_count{outcome=\"applied\"}")?,
            seconds: value("custos_projector_batch_duration_seconds_sum{outcome=\"applied\"}")?,
            events: value("custos_projector_events_total")?,
            elapsed: Duration::ZERO,
            at: Some(Instant::now()),
        })
    }

    /// The work done between `before` and this scrape.
    fn since(self, before: Self) -> Self {
        Self {
            passes: self.passes - before.passes,
            seconds: self.seconds - before.seconds,
            events: self.events - before.events,
            elapsed: match (self.at, before.at) {
                (Some(now), Some(then)) => now.duration_since(then),
                _ => Duration::ZERO,
            },
            at: None,
        }
    }

    /// The bench's row for `phase`: how many passes, how full, how long, and the share of the
    /// phase the projector spent in them (near 1: the projector bounds the phase).
    fn row(&self, phase: &str) -> String {
        let passes = self.passes.max(1.0);
        format!(
            "| {phase} projector during {phase}: passes that applied events, events a pass, mean pass, share of the phase in passes | {:.0}, {:.1}, {:.2} ms, {:.2} |",
            self.passes,
            self.events / passes,
            self.seconds * 1_000.0 / passes,
            self.seconds / self.elapsed.as_secs_f64().max(f64::EPSILON),
        )
    }
}

/// An employee's department changed, as `updateEmployee` commands it.
fn department_update(department: String) -> RecordCommand {
    let mut changes = Fields::new();
    changes.insert("department".into(), json!(department));
    RecordCommand::Update {
        datasheet: Datasheet::Employees,
        expected_version: None,
        changes,
        schema: Default::default(),
        effective_from: None,
        today: custos_projections::records::today(),
    }
}

/// Sorted latencies' median and 99th percentile as a row shows them.
fn p50_p99(sorted: &[Duration]) -> String {
    format!(
        "{:.2} ms / {:.2} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99))
    )
}
