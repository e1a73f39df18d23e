//! The privacy suite (`--suite privacy`), in one run on one private cluster and in process (no HTTP):
//! (a) what sealing costs on the write path — the foundation's command path (an update that
//! waits for its read models) on sealed records and on the same records written unsealed;
//! (b) building a person's trail with 10,000 and with `--events` (1,000,000) events in the
//! tenant;
//! (c) the latency of erasing a record (event, key destruction, read models).

use std::time::{Duration, Instant};

use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent};
use custos_domain::record::{new_record_id, Fields};
use custos_domain::{
    Actor, Datasheet, ErasureGround, EventMetadata, Record, RecordCommand, RecordEvent,
};
use serde_json::json;
use uuid::Uuid;

use custos_api::testing::{run_command, Cqrs, NewOrganization, Services, Tenant};
use custos_api::{Application, Config, DatabaseConfig};

use crate::common::{data_dir, graphql, latencies, ms, percentile, BenchArgs};

/// Records each client updates in turn in (a).
const SPREAD: usize = 16;
/// Alternating phases of each write comparison (the machine is shared: more, shorter phases
/// average its noise out better than two long ones).
const ROUNDS: usize = 4;
/// Records appended per transaction while filling the tenant.
const FILL_BATCH: usize = 5_000;

pub(crate) fn fields(pairs: &[(&str, String)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect()
}

pub(crate) async fn create(
    services: &Services,
    tenant: &Tenant,
    cqrs: &Cqrs<Record>,
    datasheet: Datasheet,
    values: Fields,
    metadata: EventMetadata,
) -> anyhow::Result<Uuid> {
    let id = new_record_id();
    let command = RecordCommand::Create {
        datasheet,
        fields: values,
        hired_from: None,
        schema: Default::default(),
        effective_from: None,
        today: custos_projections::records::today(),
    };
    run_command(services, tenant, cqrs, id, command, metadata)
        .await
        .map_err(|e| anyhow::anyhow!("create failed: {:?}", e.code()))?;
    Ok(id)
}

pub(crate) async fn update(
    services: &Services,
    tenant: &Tenant,
    cqrs: &Cqrs<Record>,
    id: Uuid,
    values: Fields,
    metadata: EventMetadata,
) -> anyhow::Result<()> {
    let command = RecordCommand::Update {
        datasheet: Datasheet::Employees,
        expected_version: None,
        changes: values,
        schema: Default::default(),
        effective_from: None,
        today: custos_projections::records::today(),
    };
    run_command(services, tenant, cqrs, id, command, metadata)
        .await
        .map_err(|e| anyhow::anyhow!("update failed: {:?}", e.code()))
}

/// Updates per second over `duration`, `clients` at a time, each on its own records.
async fn update_rate(
    services: &Services,
    tenant: &Tenant,
    cqrs: &Cqrs<Record>,
    sets: &[Vec<Uuid>],
    duration: Duration,
    metadata: EventMetadata,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let loops = sets.iter().map(|ids| async move {
        let mut n = 0usize;
        while started.elapsed() < duration {
            n += 1;
            let values = fields(&[("department", format!("Dept {n}"))]);
            update(services, tenant, cqrs, ids[n % ids.len()], values, metadata).await?;
        }
        Ok::<_, anyhow::Error>(n)
    });
    let mut done = 0;
    for result in futures::future::join_all(loops).await {
        done += result?;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Appends `count` new employee records (one `RecordCreated` each, sealed) in batches.
pub(crate) async fn fill(
    tenant: &Tenant,
    count: usize,
    metadata: EventMetadata,
) -> anyhow::Result<()> {
    let stored = serde_json::to_value(metadata.to_map())?;
    let mut written = 0;
    while written < count {
        let batch = FILL_BATCH.min(count - written);
        let events = (written..written + batch)
            .map(|i| {
                let event = RecordEvent::RecordCreated {
                    datasheet: Datasheet::Employees,
                    fields: fields(&[
                        ("first_name", format!("Filler{i}")),
                        ("last_name", "Crowd".to_owned()),
                        ("email", format!("filler{i}@crowd.example")),
                        ("department", format!("Dept {}", i % 40)),
                    ]),
                    hired_from: None,
                    effective_from: None,
                };
                Ok(SerializedEvent::new(
                    new_record_id().to_string(),
                    1,
                    Record::TYPE.to_owned(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)?,
                    stored.clone(),
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        tenant.log.append_new_streams(events).await?;
        written += batch;
    }
    Ok(())
}

/// Waits until every read model of the tenant has caught up with the log.
pub(crate) async fn settle(tenant: &Tenant) -> anyhow::Result<()> {
    for aggregate in [Record::TYPE, "consent", "data_export", "user"] {
        if let Some(latest) = tenant.log.latest(aggregate).await? {
            tenant
                .projectors
                .wait_for(aggregate, latest, Duration::from_secs(3_600))
                .await?;
        }
    }
    Ok(())
}

pub(crate) async fn events_in(tenant: &Tenant) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&tenant.pool)
        .await?)
}

/// Builds the person's trail `n` times; the sorted latencies.
async fn trails(
    services: &Services,
    tenant: &Tenant,
    person: &[Uuid],
    metadata: EventMetadata,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let bundle = services
            .build_subject_trail(tenant, Uuid::now_v7(), person, metadata)
            .await
            .map_err(|e| anyhow::anyhow!("trail failed: {:?}", e.code()))?;
        latencies.push(started.elapsed());
        anyhow::ensure!(!bundle.bytes.is_empty(), "an empty trail");
    }
    latencies.sort();
    Ok(latencies)
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (_temp, data_dir) = data_dir(&args)?;
    let mut config = Config::new(data_dir, DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse()?;
    config.tenant_pool_size = (args.clients as u32).max(8);
    config.projection_wait = Duration::from_secs(600);
    let application = Application::build(config).await?;
    let services = application.services();
    let admin = application.database_options();
    let address = application.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let organization = NewOrganization {
        name: "Bench".into(),
        slug: "bench".into(),
        region: "eu".into(),
        admin_email: "bench@example.org".into(),
        admin_name: "Bench".into(),
        password: "benchmark password 1".to_owned().into(),
    };
    let (row, user) = services
        .create_organization(organization, Uuid::now_v7())
        .await
        .map_err(|e| anyhow::anyhow!("sign-up failed: {}", e.message()))?;
    let tenant = services
        .tenancy
        .get(row.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("bench tenant vanished"))?;
    let metadata = EventMetadata::new(Actor::User(user.id), Uuid::now_v7());
    let duration = Duration::from_secs(args.seconds);

    // (b) A person with three records (contact, applicant, employee) and their changes.
    let mut person = Vec::new();
    for (datasheet, extra) in [
        (Datasheet::Contacts, ("company", "Trail Works".to_owned())),
        (Datasheet::Applicants, ("position", "Surveyor".to_owned())),
        (Datasheet::Employees, ("department", "Atlas".to_owned())),
    ] {
        let email = if datasheet == Datasheet::Contacts {
            "emails"
        } else {
            "email"
        };
        let email_value = if datasheet == Datasheet::Contacts {
            json!(["person@trail.example"])
        } else {
            json!("person@trail.example")
        };
        let mut values = fields(&[
            ("first_name", "Persona".to_owned()),
            ("last_name", "Traillian".to_owned()),
            extra,
        ]);
        values.insert(email.to_owned(), email_value);
        let id = create(
            &services,
            &tenant,
            &tenant.records,
            datasheet,
            values,
            metadata,
        )
        .await?;
        for n in 0..10 {
            let command = RecordCommand::Update {
                datasheet,
                expected_version: None,
                changes: fields(&[("notes", format!("Note {n} about the person"))]),
                schema: Default::default(),
                effective_from: None,
                today: custos_projections::records::today(),
            };
            run_command(&services, &tenant, &tenant.records, id, command, metadata)
                .await
                .map_err(|e| anyhow::anyhow!("update failed: {:?}", e.code()))?;
        }
        person.push(id);
    }
    let small_target: i64 = 10_000;
    let have = events_in(&tenant).await?;
    fill(
        &tenant,
        usize::try_from((small_target - have).max(0))?,
        metadata,
    )
    .await?;
    settle(&tenant).await?;
    let small_events = events_in(&tenant).await?;
    let small = trails(&services, &tenant, &person, metadata, args.reads.min(200)).await?;

    // (a) Sealed and unsealed updates, alternating, on records of their own kind.
    let unsealed = tenant.unsealed_records();
    let mut sets = [Vec::new(), Vec::new()];
    for (set, cqrs) in sets.iter_mut().zip([&tenant.records, &unsealed]) {
        for c in 0..args.clients {
            let mut ids = Vec::new();
            for r in 0..SPREAD {
                let values = fields(&[
                    ("first_name", format!("Writer{c}x{r}")),
                    ("last_name", "Bench".to_owned()),
                    ("email", format!("writer{c}x{r}@bench.example")),
                ]);
                ids.push(
                    create(
                        &services,
                        &tenant,
                        cqrs,
                        Datasheet::Employees,
                        values,
                        metadata,
                    )
                    .await?,
                );
            }
            set.push(ids);
        }
    }
    // A third set for the hash-chain phases (written sealed, like the service writes).
    let mut unchained_set = Vec::new();
    for c in 0..args.clients {
        let mut ids = Vec::new();
        for r in 0..SPREAD {
            let values = fields(&[
                ("first_name", format!("Chain{c}x{r}")),
                ("last_name", "Bench".to_owned()),
            ]);
            ids.push(
                create(
                    &services,
                    &tenant,
                    &tenant.records,
                    Datasheet::Employees,
                    values,
                    metadata,
                )
                .await?,
            );
        }
        unchained_set.push(ids);
    }
    let (mut sealed_rates, mut plain_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        sealed_rates.push(
            update_rate(
                &services,
                &tenant,
                &tenant.records,
                &sets[0],
                duration,
                metadata,
            )
            .await?,
        );
        plain_rates
            .push(update_rate(&services, &tenant, &unsealed, &sets[1], duration, metadata).await?);
    }
    // The hash-chain trigger on and off (off only here, in the benchmark's own tenant; the
    // events written while it is off carry no hash and verify as broken, as they should).
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&tenant.pool)
        .await?;
    let mut superuser = {
        use sqlx::Connection;
        sqlx::PgConnection::connect_with(&admin.clone().database(&database)).await?
    };
    let (mut chained_rates, mut unchained_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        chained_rates.push(
            update_rate(
                &services,
                &tenant,
                &tenant.records,
                &unchained_set,
                duration,
                metadata,
            )
            .await?,
        );
        sqlx::query(
            "ALTER TABLE events DISABLE TRIGGER events_hash_chain, ALTER COLUMN hash DROP NOT NULL",
        )
        .execute(&mut superuser)
        .await?;
        let rate = update_rate(
            &services,
            &tenant,
            &tenant.records,
            &unchained_set,
            duration,
            metadata,
        )
        .await;
        sqlx::query("ALTER TABLE events ENABLE TRIGGER events_hash_chain")
            .execute(&mut superuser)
            .await?;
        unchained_rates.push(rate?);
    }
    // Chain the events written without the trigger, as the migration chains old events, so
    // the store verifies again and checkpoints can be made.
    sqlx::raw_sql(
        "SET session_replication_role = replica;
         DO $$
         DECLARE e record; previous bytea; stream text := NULL;
         BEGIN
             FOR e IN SELECT * FROM events
                      WHERE (aggregate_type, aggregate_id) IN
                            (SELECT aggregate_type, aggregate_id FROM events WHERE hash IS NULL)
                      ORDER BY aggregate_type, aggregate_id, sequence LOOP
                 IF stream IS DISTINCT FROM e.aggregate_type || '/' || e.aggregate_id THEN
                     previous := NULL;
                     stream := e.aggregate_type || '/' || e.aggregate_id;
                 END IF;
                 UPDATE events SET prev_hash = previous,
                        hash = custos_event_hash(previous, e.aggregate_type, e.aggregate_id, e.sequence,
                                                 e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at)
                  WHERE aggregate_type = e.aggregate_type AND aggregate_id = e.aggregate_id
                    AND sequence = e.sequence
                 RETURNING hash INTO previous;
             END LOOP;
         END $$;
         SET session_replication_role = origin;
         ALTER TABLE events ALTER COLUMN hash SET NOT NULL;",
    )
    .execute(&mut superuser)
    .await?;
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    let (sealed, plain) = (mean(&sealed_rates), mean(&plain_rates));

    let fill_started = Instant::now();
    let large_target = i64::try_from(args.events)?;
    let have = events_in(&tenant).await?;
    fill(
        &tenant,
        usize::try_from((large_target - have).max(0))?,
        metadata,
    )
    .await?;
    let fill_time = fill_started.elapsed();
    settle(&tenant).await?;
    let settle_time = fill_started.elapsed();
    let large_events = events_in(&tenant).await?;
    // Planner statistics, as autovacuum's analyze gives them soon after a bulk change.
    {
        use sqlx::Connection;
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&tenant.pool)
            .await?;
        let mut conn = sqlx::PgConnection::connect_with(&admin.clone().database(&database)).await?;
        for table in [
            "records",
            "subject_index",
            "subject_keys",
            "events",
            "consents",
        ] {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(&mut conn)
                .await?;
        }
    }
    let large = trails(&services, &tenant, &person, metadata, args.reads.min(200)).await?;

    // (d) Audit reads over HTTP: one record with 1,000 events, its history and as-of.
    let long = create(
        &services,
        &tenant,
        &tenant.records,
        Datasheet::Employees,
        fields(&[
            ("first_name", "Long".to_owned()),
            ("last_name", "Story".to_owned()),
        ]),
        metadata,
    )
    .await?;
    for n in 1..1_000 {
        update(
            &services,
            &tenant,
            &tenant.records,
            long,
            fields(&[("department", format!("Dept {n}"))]),
            metadata,
        )
        .await?;
    }
    let client = reqwest::Client::new();
    let url = format!("http://{address}/graphql");
    let login: serde_json::Value = client
        .post(&url)
        .json(&json!({ "query": "mutation { login(tenant: \"bench\", email: \"bench@example.org\", password: \"benchmark password 1\") { token } }" }))
        .send()
        .await?
        .json()
        .await?;
    let token = login["data"]["login"]["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("login failed: {login}"))?
        .to_owned();
    let middle: String = sqlx::query_scalar(
        "SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM events
         WHERE aggregate_type = 'record' AND aggregate_id = $1 AND sequence = 500",
    )
    .bind(long.to_string())
    .fetch_one(&tenant.pool)
    .await?;
    let reads = args.reads.min(200);
    let timed = |query: &'static str, variables: serde_json::Value| {
        let (client, url, token) = (&client, &url, &token);
        latencies(reads, move || {
            let request = graphql(client, url, Some(token.as_str()), query, variables.clone());
            async move { request.await.map(|_| ()) }
        })
    };
    let history = timed(
        "query($id: ID!) { recordHistory(id: $id, first: 1000) { totalCount edges { node { sequence eventType recordedAt changes { field before after } } } } }",
        json!({ "id": long }),
    )
    .await?;
    let as_of = timed(
        "query($id: ID!, $at: DateTime!) { recordAsOf(id: $id, at: $at) { version fields { field value } } }",
        json!({ "id": long, "at": middle }),
    )
    .await?;

    // (f) The audit log's first page, with a million events in the tenant: all entries, and
    // one person's.
    let audit_all = timed(
        "{ auditLog(first: 50) { edges { node { position recordedAt eventType aggregateId actor { kind } fields } } } }",
        json!({}),
    )
    .await?;
    let audit_subject = timed(
        "query($id: ID!) { auditLog(first: 50, filter: { subjectId: $id }) { edges { node { position eventType fields } } } }",
        json!({ "id": person[0] }),
    )
    .await?;

    // (c) Erasing records one at a time.
    let victims: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM records WHERE datasheet = 'employees' AND erased_at IS NULL
         AND fields->>'last_name' = 'Crowd' LIMIT $1",
    )
    .bind(i64::try_from(args.reads.min(500))?)
    .fetch_all(&tenant.pool)
    .await?;
    let mut erasures = Vec::with_capacity(victims.len());
    for id in &victims {
        let started = Instant::now();
        let command = RecordCommand::Erase {
            expected_version: 1,
            ground: ErasureGround::NoLongerNecessary,
            note: None,
        };
        services
            .erase_subject(&tenant, *id, command, metadata, false)
            .await
            .map_err(|e| anyhow::anyhow!("erasure failed: {:?}", e.code()))?;
        erasures.push(started.elapsed());
    }
    erasures.sort();

    println!("## Privacy benchmark\n");
    println!(
        "(a) sealing on the write path, {} clients, {} s per phase, {ROUNDS} phases each, alternating:\n",
        args.clients, args.seconds
    );
    println!("| Path | Updates/s (each phase) | Mean |\n|---|---|---|");
    println!(
        "| sealed (the service) | {} | {sealed:.0} |",
        sealed_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| unsealed | {} | {plain:.0} |",
        plain_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\nsealed / unsealed = {:.3}\n", sealed / plain);
    println!(
        "(b) building one person's trail (3 records, 33 events), {} times each:\n",
        small.len()
    );
    println!("| Events in the tenant | p50 ms | p99 ms |\n|---|---|---|");
    for (events, latencies) in [(small_events, &small), (large_events, &large)] {
        println!(
            "| {events} | {:.2} | {:.2} |",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99))
        );
    }
    println!(
        "\np50 ratio (large / small) = {:.3}; p99 ratio = {:.3}",
        ms(percentile(&large, 0.5)) / ms(percentile(&small, 0.5)),
        ms(percentile(&large, 0.99)) / ms(percentile(&small, 0.99))
    );
    println!(
        "(filling to {large_events} events took {:.0} s; the read models caught up after {:.0} s)\n",
        fill_time.as_secs_f64(),
        settle_time.as_secs_f64()
    );
    println!(
        "(c) erasing {} records one at a time (event, key destroyed, read models): p50 {:.2} ms, p99 {:.2} ms",
        erasures.len(),
        ms(percentile(&erasures, 0.5)),
        ms(percentile(&erasures, 0.99))
    );

    println!(
        "\n(a') the hash-chain trigger on the same path, {} clients, {} s per phase, {ROUNDS} phases each, alternating:\n",
        args.clients, args.seconds
    );
    println!("| Trigger | Updates/s (each phase) | Mean |\n|---|---|---|");
    for (name, rates) in [
        ("on (the service)", &chained_rates),
        ("off", &unchained_rates),
    ] {
        println!(
            "| {name} | {} | {:.0} |",
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            mean(rates)
        );
    }
    println!(
        "\non / off = {:.3}",
        mean(&chained_rates) / mean(&unchained_rates)
    );
    println!(
        "\n(d) one record with 1,000 events, and the audit log's first page, {} requests each over HTTP, {} events in the tenant:\n",
        history.len(),
        large_events
    );
    println!("| Query | p50 ms | p99 ms |\n|---|---|---|");
    for (name, latencies) in [
        ("recordHistory(first: 1000)", &history),
        ("recordAsOf (version 500)", &as_of),
        ("auditLog(first: 50), whole tenant", &audit_all),
        ("auditLog(first: 50), one subject", &audit_subject),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} |",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99))
        );
    }
    drop(tenant);
    let _ = stop.send(());
    server.await??;
    Ok(())
}
