//! The event store and the projector: append-only history, metadata on every event, rebuilds
//! that equal incremental projection, and no event skipped when commits come out of order.

use std::time::Duration;

use custos_api::testing::projector::{self, Batch};
use custos_api::testing::{EventLog, Position};
use custos_projections::records::RecordsProjection;
use custos_projections::Projection;
use custos_tests::{slug, TestApp};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

#[tokio::test]
async fn events_cannot_be_changed_or_removed_even_by_a_superuser() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("immutable")).await;
    app.create_employee(
        &session.token,
        json!({ "firstName": "Ada", "lastName": "L" }),
    )
    .await;
    let tenant = app.tenant(session.tenant_id).await;
    let mut db = app.tenant_admin(session.tenant_id).await;

    for statement in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(statement)
            .execute(&mut db)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
        let as_tenant = sqlx::query(statement)
            .execute(&tenant.pool)
            .await
            .expect_err(statement);
        assert!(
            as_tenant.to_string().contains("permission denied")
                || as_tenant.to_string().contains("append-only"),
            "{as_tenant}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(
        count >= 3,
        "registration, login and the record are all still there"
    );
}

#[tokio::test]
async fn every_event_carries_actor_request_command_and_database_columns() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("metadata")).await;
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L" }),
        )
        .await;
    let mut db = app.tenant_admin(session.tenant_id).await;

    let rows: Vec<(String, Value, i64, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT aggregate_type, metadata::jsonb, global_position, transaction_id::text, recorded_at FROM events ORDER BY global_position",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();

    assert!(rows.len() >= 3);
    for (_, metadata, _, transaction, _) in &rows {
        for key in ["actor_id", "request_id", "command_id"] {
            let id = metadata[key].as_str().unwrap_or_default();
            assert!(Uuid::parse_str(id).is_ok(), "{key} in {metadata}");
        }
        assert!(transaction.parse::<u64>().is_ok());
    }
    let record = rows.iter().find(|(t, ..)| t == "record").unwrap();
    assert_eq!(record.1["actor_id"], json!(session.user_id.to_string()));
    assert_eq!(record.1["actor_kind"], json!("user"));
    let positions: Vec<i64> = rows.iter().map(|r| r.2).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert!(created["id"].is_string());
}

async fn employee_rows(db: &mut PgConnection) -> Vec<Value> {
    sqlx::query_scalar("SELECT to_jsonb(r) FROM records r ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
}

/// The position of the newest record event in the tenant's log.
async fn newest_record_event(pool: &sqlx::PgPool) -> Position {
    let (transaction_id, global_position): (i64, i64) = sqlx::query_as(
        "SELECT transaction_id::text::bigint, global_position FROM events WHERE aggregate_type = 'record'
         ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    Position {
        transaction_id,
        global_position,
    }
}

/// Runs projector batches (this task's or the service's own) until the records projection
/// has passed the newest record event.
async fn catch_up(pool: &sqlx::PgPool, log: &EventLog) {
    let target = newest_record_event(pool).await;
    for _ in 0..500 {
        projector::run_batch(pool, log, &RecordsProjection, 500)
            .await
            .unwrap();
        if projector::checkpoint(pool, RecordsProjection.name())
            .await
            .unwrap()
            >= target
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the projection did not catch up");
}

/// Runs until one batch of this task's own has run (rather than finding the checkpoint held
/// by the service's projector).
async fn one_batch(pool: &sqlx::PgPool, log: &EventLog) {
    for _ in 0..500 {
        if let Batch::Applied(..) = projector::run_batch(pool, log, &RecordsProjection, 500)
            .await
            .unwrap()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no projector batch could run");
}

#[tokio::test]
async fn rebuilding_a_projection_from_zero_gives_the_same_rows() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("rebuild")).await;
    for i in 0..5 {
        let e = app.create_employee(&session.token, json!({ "firstName": format!("E{i}"), "lastName": "R", "email": format!("e{i}@example.org") })).await;
        app.graphql(
            Some(&session.token),
            "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Ops\", email: null }) { id } }",
            json!({ "id": e["id"] }),
        )
        .await
        .ok();
        if i % 2 == 0 {
            app.graphql(
                Some(&session.token),
                "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
                json!({ "id": e["id"] }),
            )
            .await
            .ok();
        }
    }
    let tenant = app.tenant(session.tenant_id).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    let incremental = employee_rows(&mut db).await;

    projector::reset(&tenant.pool, &RecordsProjection)
        .await
        .unwrap();
    // The service's own projector may start rebuilding at once (it polls): in one snapshot,
    // the rows are gone whenever the checkpoint is still at zero.
    let (rows, position): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM records),
                (SELECT global_position FROM projection_checkpoints WHERE projection = 'records')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        position > 0 || rows == 0,
        "{rows} rows left at position {position}"
    );
    catch_up(&tenant.pool, &tenant.log).await;

    let rebuilt = employee_rows(&mut db).await;
    assert_eq!(incremental.len(), 5);
    assert_eq!(rebuilt, incremental);
    assert_eq!(RecordsProjection.name(), "records");
}

fn created_event(first_name: &str) -> Value {
    json!({ "RecordCreated": { "datasheet": "employees", "fields": { "first_name": first_name, "last_name": "Order" } } })
}

async fn insert_event(conn: &mut PgConnection, id: Uuid, actor: Uuid, first_name: &str) {
    append_directly(conn, "record", id, 1, actor, created_event(first_name)).await;
}

/// Appends an event as another instance of the service would, unsealed (unsealed payloads pass
/// through the codec like events written before sealing existed); its type is the payload's key.
async fn append_directly(
    conn: &mut PgConnection,
    aggregate_type: &str,
    id: Uuid,
    sequence: i64,
    actor: Uuid,
    payload: Value,
) {
    let event_type = payload
        .as_object()
        .and_then(|body| body.keys().next())
        .cloned()
        .unwrap_or_default();
    let metadata = json!({ "actor_id": actor.to_string(), "actor_kind": "user", "request_id": Uuid::now_v7().to_string(), "command_id": Uuid::now_v7().to_string() });
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ($1, $2, $3, $4, '1', $5, $6)",
    )
    .bind(aggregate_type)
    .bind(id.to_string())
    .bind(sequence)
    .bind(event_type)
    .bind(payload)
    .bind(metadata)
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_event_committed_after_a_later_one_is_not_skipped() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("order")).await;
    let tenant = app.tenant(session.tenant_id).await;
    let (early, late) = (Uuid::now_v7(), Uuid::now_v7());

    // Transaction A writes first (lower position) but commits last.
    let mut a = tenant.pool.acquire().await.unwrap();
    let mut tx_a = a.begin().await.unwrap();
    insert_event(&mut tx_a, early, session.user_id, "Early").await;
    let mut b = tenant.pool.acquire().await.unwrap();
    let mut tx_b = b.begin().await.unwrap();
    insert_event(&mut tx_b, late, session.user_id, "Late").await;
    tx_b.commit().await.unwrap();

    one_batch(&tenant.pool, &tenant.log).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT fields->>'first_name' FROM records ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert!(
        names.is_empty(),
        "nothing is projected past a transaction that is still open: {names:?}"
    );

    tx_a.commit().await.unwrap();
    catch_up(&tenant.pool, &tenant.log).await;

    let names: Vec<String> =
        sqlx::query_scalar("SELECT fields->>'first_name' FROM records ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(names, ["Early", "Late"]);
}

/// How many pages of tables and indexes `statement` (a read of the events after a position)
/// touched when run with `binds`: `EXPLAIN (ANALYZE, BUFFERS)`'s count for the whole plan.
async fn pages_read<'q>(
    db: &mut PgConnection,
    statement: &'q str,
    binds: impl FnOnce(
        sqlx::query::QueryScalar<'q, sqlx::Postgres, Value, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<
        'q,
        sqlx::Postgres,
        Value,
        sqlx::postgres::PgArguments,
    >,
) -> i64 {
    let plan = binds(sqlx::query_scalar(statement))
        .fetch_one(db)
        .await
        .unwrap();
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// Appends the creations of `count` records of their own, by `actor`, in one statement.
async fn records_created(db: &mut PgConnection, count: i64, actor: Uuid) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'record', gen_random_uuid()::text, 1, 'RecordCreated', '1', $1, $2
         FROM generate_series(1, $3)",
    )
    .bind(created_event("Other"))
    .bind(json!({ "actor_id": actor.to_string(), "actor_kind": "user" }))
    .bind(count)
    .execute(db)
    .await
    .unwrap();
}

/// The position of the newest event but `skip`, in commit order.
async fn newest(db: &mut PgConnection, skip: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT transaction_id::text::bigint, global_position FROM events
         ORDER BY transaction_id DESC, global_position DESC OFFSET $1 LIMIT 1",
    )
    .bind(skip)
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn reading_after_a_position_touches_the_events_read_not_the_backlog_nor_the_type() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("backlog")).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    // A backlog: the reader has read every user, role and organisation event, and 200,000
    // record events follow.
    let backlog = newest(&mut db, 0).await;
    records_created(&mut db, 200_000, session.user_id).await;
    sqlx::query("ANALYZE events")
        .execute(&mut db)
        .await
        .unwrap();
    // A live pass: the reader is 40 events behind.
    let tail = newest(&mut db, 40).await;
    let projector = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        custos_api::testing::events_after()
    );
    let webhooks = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        custos_api::testing::webhook_changes_after()
    );
    // 500 events of about 300 bytes fill a few dozen pages. Filtering the commit order by type
    // reads the whole backlog for each type with nothing in it, and a scan that starts at the
    // type's first event reads 200,000 index entries: hundreds of pages either way.
    for (after, what) in [(backlog, "a backlog"), (tail, "a tail")] {
        let read = [
            pages_read(&mut db, &projector, |q| {
                q.bind(after.0.to_string())
                    .bind(after.1)
                    .bind(i64::from(i32::MAX).to_string())
                    .bind(["record", "user", "role", "organization"])
                    .bind(500_i64)
            })
            .await,
            pages_read(&mut db, &webhooks, |q| {
                q.bind(["record", "user", "role"])
                    .bind(after.0.to_string())
                    .bind(after.1)
                    .bind(500_i64)
            })
            .await,
        ];
        assert!(
            read.iter().all(|&pages| pages < 120),
            "{what}: {read:?} pages"
        );
    }
}

/// Index fetches the transaction on `db` has made from `events` so far.
async fn events_fetched(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'events'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn chaining_an_event_reads_its_stream_s_newest_alone_with_a_plan_made_on_a_young_table() {
    // A new organisation's database, as the service creates it: from the tenant template,
    // under the template's lock (shared: the service holds it exclusively only to migrate).
    let _app = TestApp::spawn().await;
    let young = format!("custos_young_{}", Uuid::now_v7().simple());
    let mut server = PgConnection::connect_with(&custos_tests::admin_options("postgres"))
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(custos_api::testing::TEMPLATE_LOCK)
        .execute(&mut server)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE DATABASE {young} TEMPLATE {}",
        custos_api::testing::TEMPLATE_DATABASE
    ))
    .execute(&mut server)
    .await
    .unwrap();
    sqlx::query("SELECT pg_advisory_unlock_shared($1)")
        .bind(custos_api::testing::TEMPLATE_LOCK)
        .execute(&mut server)
        .await
        .unwrap();
    let mut db = PgConnection::connect_with(&custos_tests::admin_options(&young))
        .await
        .unwrap();
    // A connection keeps a generic plan of the trigger's lookup after five calls; here the
    // first call makes it, while the events fill a page and have no statistics.
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut db)
        .await
        .unwrap();
    let (first, actor) = (Uuid::now_v7(), Uuid::now_v7());
    append_directly(&mut db, "record", first, 1, actor, created_event("Young")).await;
    let change = json!({ "RecordUpdated": { "datasheet": "employees", "changes": { "department": "Dept" } } });
    append_directly(&mut db, "record", first, 2, actor, change.clone()).await;
    // Then the type grows: 2,000 records of others, and one more.
    records_created(&mut db, 2_000, actor).await;
    let stream = Uuid::now_v7();
    append_directly(&mut db, "record", stream, 1, actor, created_event("Late")).await;

    // Its next event reads its predecessor alone, not the type's events before it.
    let mut tx = db.begin().await.unwrap();
    let before = events_fetched(&mut tx).await;
    append_directly(&mut tx, "record", stream, 2, actor, change.clone()).await;
    let fetched = events_fetched(&mut tx).await - before;
    assert!(fetched <= 2, "{fetched} events read to chain one");
    tx.commit().await.unwrap();
    let chained: bool = sqlx::query_scalar(
        "SELECT e.prev_hash = p.hash FROM events e JOIN events p USING (aggregate_type, aggregate_id)
         WHERE e.aggregate_type = 'record' AND e.aggregate_id = $1 AND e.sequence = 2 AND p.sequence = 1",
    )
    .bind(stream.to_string())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(chained);

    // An event whose predecessor is not there is refused, and nothing is written.
    let gap = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('record', $1, 4, 'RecordUpdated', '1', $2, '{}')",
    )
    .bind(stream.to_string())
    .bind(&change)
    .execute(&mut db)
    .await
    .unwrap_err();
    let gap = gap.as_database_error().unwrap();
    assert_eq!(gap.code().as_deref(), Some("23000"), "{gap}");
    assert!(gap.message().contains("has no predecessor"), "{gap}");
    let newest: i64 = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'record' AND aggregate_id = $1",
    )
    .bind(stream.to_string())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(newest, 2);
    db.close().await.unwrap();
    sqlx::query(&format!("DROP DATABASE {young}"))
        .execute(&mut server)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_transaction_left_open_by_another_organisation_holds_back_no_read_model() {
    let app = TestApp::spawn().await;
    let busy = app.sign_up(&slug("busy")).await;
    let other = app.sign_up(&slug("other")).await;

    // A long transaction in one organisation's database (a big import, a stuck client) has a
    // transaction id; ids are shared by every database of the server.
    let busy_tenant = app.tenant(busy.tenant_id).await;
    let mut held = busy_tenant.pool.acquire().await.unwrap();
    let mut open = held.begin().await.unwrap();
    insert_event(&mut open, Uuid::now_v7(), busy.user_id, "Pending").await;

    // The other organisation's writes are projected meanwhile, by a batch of this task's and by
    // the service (the mutation waits for its read models, ten seconds at most).
    let tenant = app.tenant(other.tenant_id).await;
    let mut conn = tenant.pool.acquire().await.unwrap();
    insert_event(&mut conn, Uuid::now_v7(), other.user_id, "Direct").await;
    one_batch(&tenant.pool, &tenant.log).await;
    app.create_employee(
        &other.token,
        json!({ "firstName": "Served", "lastName": "S" }),
    )
    .await;
    let mut db = app.tenant_admin(other.tenant_id).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT fields->>'first_name' FROM records ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(names, ["Direct", "Served"]);

    // Its own organisation's read models still wait for it, and take it once it commits.
    open.commit().await.unwrap();
    catch_up(&busy_tenant.pool, &busy_tenant.log).await;
    let mut db = app.tenant_admin(busy.tenant_id).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT fields->>'first_name' FROM records ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(names, ["Pending"]);
}

#[tokio::test]
async fn a_record_changed_by_another_instance_is_changed_from_its_latest_version() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("cached")).await;
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L", "department": "Ops" }),
        )
        .await;
    let update = "mutation($id: ID!, $v: Int, $i: UpdateEmployeeInput!) {
        updateEmployee(id: $id, expectedVersion: $v, input: $i) { version department jobTitle } }";
    let second = app
        .graphql(
            Some(&session.token),
            update,
            json!({ "id": created["id"], "v": 1, "i": { "department": "R&D" } }),
        )
        .await
        .ok();
    assert_eq!(second.data("updateEmployee.version"), &json!(2));

    // Another instance of the service appends the third event of the stream.
    let tenant = app.tenant(session.tenant_id).await;
    let mut conn = tenant.pool.acquire().await.unwrap();
    append_directly(
        &mut conn,
        "record",
        created["id"].as_str().unwrap().parse().unwrap(),
        3,
        session.user_id,
        json!({ "RecordUpdated": { "datasheet": "employees", "changes": { "department": "Elsewhere" } } }),
    )
    .await;

    // This instance changed the record last at version 2; it sees version 3 all the same.
    let stale = app
        .graphql(
            Some(&session.token),
            update,
            json!({ "id": created["id"], "v": 2, "i": { "jobTitle": "Engineer" } }),
        )
        .await;
    assert_eq!(stale.code(), Some("CONFLICT"), "{}", stale.body);
    let fourth = app
        .graphql(
            Some(&session.token),
            update,
            json!({ "id": created["id"], "v": 3, "i": { "jobTitle": "Engineer" } }),
        )
        .await
        .ok();
    assert_eq!(
        fourth.data("updateEmployee"),
        &json!({ "version": 4, "department": "Elsewhere", "jobTitle": "Engineer" })
    );
}

#[tokio::test]
async fn a_command_on_a_record_cached_before_another_instance_changed_it_is_decided_again() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("unread")).await;
    // This instance caches the record as its creation left it (version 1, department Ops).
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L", "department": "Ops" }),
        )
        .await;
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let tenant = app.tenant(session.tenant_id).await;
    let mut conn = tenant.pool.acquire().await.unwrap();
    let update = "mutation($id: ID!, $v: Int, $i: UpdateEmployeeInput!) {
        updateEmployee(id: $id, expectedVersion: $v, input: $i) { version department jobTitle } }";
    // Each step: another instance appends a change as the stream's next event, then this
    // instance, which cached the record before it, changes the record.
    let steps = [
        // Moving the record back to its department is no change to the cached record, and a
        // change to the stream.
        (
            2,
            json!({ "department": "Elsewhere" }),
            json!({ "id": id, "i": { "department": "Ops" } }),
            json!({ "version": 3, "department": "Ops", "jobTitle": null }),
        ),
        // The version another instance wrote is stale to the cache, and current in the stream.
        (
            4,
            json!({ "job_title": "Engineer" }),
            json!({ "id": id, "v": 4, "i": { "department": "R&D" } }),
            json!({ "version": 5, "department": "R&D", "jobTitle": "Engineer" }),
        ),
        // A change decided on the cache takes a sequence number another instance has taken:
        // it is decided again on the stream, not refused as a conflict.
        (
            6,
            json!({ "department": "Elsewhere" }),
            json!({ "id": id, "i": { "jobTitle": "Lead" } }),
            json!({ "version": 7, "department": "Elsewhere", "jobTitle": "Lead" }),
        ),
    ];
    for (sequence, elsewhere, variables, answer) in steps {
        append_directly(
            &mut conn,
            "record",
            id,
            sequence,
            session.user_id,
            json!({ "RecordUpdated": { "datasheet": "employees", "changes": elsewhere } }),
        )
        .await;
        let updated = app
            .graphql(Some(&session.token), update, variables)
            .await
            .ok();
        assert_eq!(
            updated.data("updateEmployee"),
            &answer,
            "after event {sequence}"
        );
    }
}

#[tokio::test]
async fn a_read_model_that_fails_holds_back_only_its_own_readers() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("poison")).await;
    let tenant = app.tenant(session.tenant_id).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    // The webhooks read model breaks (a damaged table), then a webhook is registered (by
    // another instance: the event is written directly).
    sqlx::query("ALTER TABLE webhooks ADD CONSTRAINT broken CHECK (false) NOT VALID")
        .execute(&mut db)
        .await
        .unwrap();
    let mut conn = tenant.pool.acquire().await.unwrap();
    append_directly(
        &mut conn,
        "webhook",
        Uuid::now_v7(),
        1,
        session.user_id,
        json!({ "WebhookRegistered": { "url": "https://hooks.example.org/custos", "topics": ["record_created"], "description": null } }),
    )
    .await;

    // Records, consents and the audit log are still projected, so a change to a record
    // answers (it waits for them) and is listed.
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Still", "lastName": "Served" }),
        )
        .await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT fields->>'first_name' FROM records ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(names, ["Still"]);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE aggregate_type = 'webhook'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(audited, 1);
    let webhooks = projector::checkpoint(&tenant.pool, "webhooks")
        .await
        .unwrap();
    assert!(webhooks < newest_record_event(&tenant.pool).await);

    // Repaired, the read model catches up by itself.
    sqlx::query("ALTER TABLE webhooks DROP CONSTRAINT broken")
        .execute(&mut db)
        .await
        .unwrap();
    let mut listed: i64 = 0;
    for _ in 0..100 {
        listed = sqlx::query_scalar("SELECT count(*) FROM webhooks")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if listed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, 1, "the webhooks read model caught up");
    assert!(created["id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_rebuilt_under_concurrent_writes_serves_throughout_and_ends_equal_to_history()
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("rebuild")).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let created = app
            .create_employee(
                &session.token,
                json!({ "firstName": format!("Rebuilt{i}"), "lastName": "R", "department": "Start" }),
            )
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let done = AtomicBool::new(false);
    let (writes, reads) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let writer = async {
        let mut n = 0;
        while !done.load(Ordering::Relaxed) {
            n += 1;
            app.graphql(
                Some(&session.token),
                "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { id } }",
                json!({ "id": ids[n % ids.len()], "d": format!("Dept {n}") }),
            )
            .await
            .ok();
            writes.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Every list answered while the read model is rebuilt and swapped holds every employee.
    let reader = async {
        while !done.load(Ordering::Relaxed) {
            let listed = app
                .graphql(
                    Some(&session.token),
                    "{ employees(first: 100) { totalCount edges { node { id } } } }",
                    json!({}),
                )
                .await
                .ok();
            assert_eq!(listed.data("employees.totalCount"), &json!(30));
            assert_eq!(listed.data("employees.edges").as_array().unwrap().len(), 30);
            reads.fetch_add(1, Ordering::Relaxed);
        }
    };
    let rebuild = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut rebuilt = true;
        // The audit log too: it takes every change, so it gets some during its copy.
        for read_model in ["records", "audit_log"] {
            rebuilt &= app.custos(&rebuild_args(read_model, &session.slug)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        done.store(true, Ordering::Relaxed);
        rebuilt
    };
    let ((), (), rebuilt) = tokio::join!(writer, reader, rebuild);
    assert!(rebuilt);
    assert!(writes.load(Ordering::Relaxed) > 0 && reads.load(Ordering::Relaxed) > 0);

    // The rebuilt read model equals a fresh projection of the whole history, and the writes
    // made during and after the swap are in it.
    app.settled(session.tenant_id).await;
    assert!(
        app.custos(&["verify", "--tenant", &session.slug, "--read-models"])
            .await
    );
    let last = writes.load(Ordering::Relaxed);
    let listed = app
        .graphql(
            Some(&session.token),
            "{ employees(first: 100) { edges { node { department } } } }",
            json!({}),
        )
        .await
        .ok();
    let departments: Vec<&str> = listed
        .data("employees.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["department"].as_str().unwrap())
        .collect();
    assert!(
        departments.contains(&format!("Dept {last}").as_str()),
        "the last write is in the read model: {departments:?}"
    );

    // An unknown read model is refused naming the ones there are, touching nothing.
    let refused = app
        .custos_result(&rebuild_args("nonsense", &session.slug))
        .await
        .expect_err("an unknown read model is refused");
    assert!(refused.to_string().contains("records"), "{refused}");
}

/// A shadow table (compared with the live one) and a replacement (which a rebuild replays into)
/// keep the indexes their projection's statements use and leave out those only reads use; both
/// compute the generated columns as the live table does, and the replacement's indexes have
/// the live ones' names (they move with it into `public`).
#[tokio::test]
async fn a_shadow_table_keeps_the_indexes_its_projection_writes_through_and_no_read_index() {
    use custos_api::testing::{replacement_table, shadow_table};

    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("shadow")).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    let records = &RecordsProjection.tables()[0];
    assert_eq!(records.name, "records");
    assert!(!records.read_indexes.is_empty());
    // The definitions of a `records` table's indexes from `USING` on, and whether the table's
    // `search` column is generated.
    async fn shape(db: &mut PgConnection, table: &str) -> (Vec<String>, String) {
        let indexes = sqlx::query_scalar(
            "SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.*? USING ', '')
             FROM pg_index WHERE indrelid = $1::regclass ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&mut *db)
        .await
        .unwrap();
        let generated = sqlx::query_scalar(
            "SELECT attgenerated::text FROM pg_attribute
             WHERE attrelid = $1::regclass AND attname = 'search'",
        )
        .bind(table)
        .fetch_one(&mut *db)
        .await
        .unwrap();
        (indexes, generated)
    }
    let (live, live_generated) = shape(&mut db, "public.records").await;
    let read: Vec<String> = sqlx::query_scalar(
        "SELECT regexp_replace(pg_get_indexdef(i.indexrelid), '^.*? USING ', '')
         FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'public.records'::regclass AND c.relname = ANY($1)",
    )
    .bind(records.read_indexes)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(read.len(), records.read_indexes.len());
    let kept: Vec<String> = live.into_iter().filter(|i| !read.contains(i)).collect();
    assert!(kept.iter().any(|i| i == "btree (id)"), "{kept:?}");
    assert_eq!(live_generated, "s");

    shadow_table(&mut db, records).await.unwrap();
    replacement_table(&mut db, records).await.unwrap();
    for table in ["pg_temp.records", "custos_rebuild.records"] {
        let (indexes, generated) = shape(&mut db, table).await;
        assert_eq!(indexes, kept, "{table}");
        assert_eq!(generated, "s", "{table}");
        let primary: bool = sqlx::query_scalar(
            "SELECT bool_or(indisprimary) FROM pg_index WHERE indrelid = $1::regclass",
        )
        .bind(table)
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(primary, "{table}");
    }
    let names =
        "SELECT c.relname::text FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                 WHERE i.indrelid = $1::regclass AND NOT c.relname = ANY($2) ORDER BY 1";
    let mut index_names = Vec::new();
    for table in ["public.records", "custos_rebuild.records"] {
        let found: Vec<String> = sqlx::query_scalar(names)
            .bind(table)
            .bind(records.read_indexes)
            .fetch_all(&mut db)
            .await
            .unwrap();
        index_names.push(found);
    }
    assert_eq!(
        index_names[1], index_names[0],
        "the replacement's index names"
    );
    assert!(
        index_names[0].iter().any(|name| name == "records_pkey"),
        "{index_names:?}"
    );
    sqlx::query("DROP TABLE pg_temp.records, custos_rebuild.records")
        .execute(&mut db)
        .await
        .unwrap();
}

/// A rebuild whose projection fails to apply a batch reports the failure, with batches still
/// to read: the batch read ahead does not keep it waiting, and nothing live is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_fails_to_apply_a_batch_reports_it_with_batches_still_to_read() {
    use cqrs_es::persist::SerializedEvent;
    use cqrs_es::DomainEvent;
    use custos_domain::{Datasheet, EventMetadata, Record, RecordEvent};

    /// Reads the records' events as `records` does, and deletes each event's record from a live
    /// table it does not list: the rebuild's transaction fails and is undone.
    struct WritesElsewhere;

    #[async_trait::async_trait]
    impl Projection for WritesElsewhere {
        fn name(&self) -> &'static str {
            "records"
        }
        fn aggregate_types(&self) -> &'static [&'static str] {
            RecordsProjection.aggregate_types()
        }
        fn tables(&self) -> &'static [custos_projections::Table] {
            &[]
        }
        async fn apply(
            &self,
            conn: &mut PgConnection,
            event: &custos_projections::ProjectedEvent,
        ) -> sqlx::Result<()> {
            sqlx::query("DELETE FROM records WHERE id = $1")
                .bind(event.aggregate_id)
                .execute(conn)
                .await
                .map(|_| ())
        }
        async fn reset(&self, _conn: &mut PgConnection) -> sqlx::Result<()> {
            Ok(())
        }
    }

    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("failing")).await;
    let tenant = app.tenant(session.tenant_id).await;
    // More than two of the rebuild's batches (5,000 events each).
    let metadata = serde_json::to_value(
        EventMetadata::new(custos_domain::Actor::User(session.user_id), Uuid::now_v7()).to_map(),
    )
    .unwrap();
    let events = (0..12_000)
        .map(|i| {
            let event = RecordEvent::RecordCreated {
                datasheet: Datasheet::Employees,
                fields: [("last_name".to_owned(), json!(format!("Many{i}")))].into(),
                hired_from: None,
                effective_from: None,
            };
            SerializedEvent::new(
                custos_domain::record::new_record_id().to_string(),
                1,
                <Record as cqrs_es::Aggregate>::TYPE.to_owned(),
                event.event_type(),
                event.event_version(),
                serde_json::to_value(&event).unwrap(),
                metadata.clone(),
            )
        })
        .collect();
    tenant.log.append_new_streams(events).await.unwrap();
    app.settled(session.tenant_id).await;

    let mut db = app.tenant_admin(session.tenant_id).await;
    let database = app.tenant_database(session.tenant_id).await;
    let failed = tokio::time::timeout(
        Duration::from_secs(120),
        custos_api::testing::rebuild_read_model(
            &custos_tests::admin_options(&database),
            &tenant.log,
            &WritesElsewhere,
            std::future::pending(),
        ),
    )
    .await
    .expect("the rebuild reports its failure instead of waiting")
    .expect_err("a projection that writes an unlisted table fails the rebuild");
    assert!(
        format!("{failed:#}").contains("wrote records, which it does not list"),
        "{failed:#}"
    );
    let listed: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(listed, 12_000, "the live read model is untouched");
}

/// What a table is made of, as a list of lines: its columns (type, default or generation,
/// identity, nullability), constraints, indexes (by name), owner, privileges, whether it and
/// its identity counters are logged, and triggers.
async fn table_shape(db: &mut PgConnection, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "WITH t AS (SELECT format('public.%I', $1::text)::regclass AS oid)
         SELECT line FROM (
           SELECT format('column %s %s %s %s %s', a.attname, format_type(a.atttypid, a.atttypmod),
                         a.attgenerated, a.attidentity, a.attnotnull)
                  || coalesce(' = ' || pg_get_expr(d.adbin, d.adrelid), '') AS line
           FROM t JOIN pg_attribute AS a ON a.attrelid = t.oid
           LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attnum > 0 AND NOT a.attisdropped
           UNION ALL
           SELECT format('constraint %s %s', conname, pg_get_constraintdef(c.oid))
           FROM t JOIN pg_constraint AS c ON c.conrelid = t.oid
           UNION ALL
           SELECT format('index %s', pg_get_indexdef(i.indexrelid))
           FROM t JOIN pg_index AS i ON i.indrelid = t.oid
           UNION ALL
           SELECT format('owner %s privileges %s persistence %s', pg_get_userbyid(c.relowner),
                         c.relacl, c.relpersistence)
           FROM t JOIN pg_class AS c ON c.oid = t.oid
           UNION ALL
           SELECT format('identity of %s persistence %s', a.attname, s.relpersistence)
           FROM t JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attidentity <> ''
           JOIN pg_class AS s
             ON s.oid = pg_get_serial_sequence(format('public.%I', $1::text), a.attname)::regclass
           UNION ALL
           SELECT format('trigger %s %s', pg_get_triggerdef(g.oid), g.tgenabled)
           FROM t JOIN pg_trigger AS g ON g.tgrelid = t.oid WHERE NOT g.tgisinternal
         ) AS lines ORDER BY line",
    )
    .bind(table)
    .fetch_all(db)
    .await
    .unwrap()
}

/// Every read model, rebuilt, is swapped in: the live tables are replaced by the rebuilt ones,
/// which carry their columns, constraints, indexes (by name), owner, privileges, triggers and
/// identity counters; the triggers announce the change to the caches, and the service goes on
/// writing and reading the tables.
#[tokio::test]
async fn every_read_model_rebuilt_is_swapped_in_with_its_tables_indexes_privileges_triggers_and_counters(
) {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("swap")).await;
    for name in ["Ada", "Grace"] {
        app.create_employee(
            &session.token,
            json!({ "firstName": name, "lastName": format!("{name}son") }),
        )
        .await;
    }
    app.settled(session.tenant_id).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    let projections = custos_projections::all();
    let tables: Vec<&str> = projections
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| t.name))
        .collect();
    let mut before = Vec::new();
    for table in &tables {
        before.push(table_shape(&mut db, table).await);
    }
    let shape_of = |table: &str| &before[tables.iter().position(|t| *t == table).unwrap()];
    assert!(
        shape_of("audit_log")
            .iter()
            .any(|line| line.starts_with("column feed_seq bigint  a")),
        "audit_log has an identity column"
    );
    assert!(
        shape_of("users")
            .iter()
            .any(|line| line.starts_with("trigger CREATE TRIGGER users_announce_change")),
        "users announces its changes"
    );
    let oids = "SELECT array_agg(format('public.%I', t)::regclass::oid::bigint ORDER BY n)
                FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n)";
    let oids_before: Vec<i64> = sqlx::query_scalar(oids)
        .bind(&tables)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let feed_before: i64 = sqlx::query_scalar("SELECT max(feed_seq) FROM audit_log")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let database = app.tenant_database(session.tenant_id).await;
    let listening = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(custos_tests::admin_options(&database))
        .await
        .unwrap();
    let mut announcements = sqlx::postgres::PgListener::connect_with(&listening)
        .await
        .unwrap();
    announcements.listen("custos_cache").await.unwrap();

    for projection in &projections {
        assert!(
            app.custos(&rebuild_args(projection.name(), &session.slug))
                .await,
            "{}",
            projection.name()
        );
    }
    let oids_after: Vec<i64> = sqlx::query_scalar(oids)
        .bind(&tables)
        .fetch_one(&mut db)
        .await
        .unwrap();
    for (i, table) in tables.iter().enumerate() {
        assert_ne!(oids_after[i], oids_before[i], "{table} was swapped");
        assert_eq!(table_shape(&mut db, table).await, before[i], "{table}");
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'custos_rebuild'::regnamespace",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(left, 0, "nothing is left beside the live tables");
    // The swaps of users, roles and custom fields were announced to the caches.
    let mut heard = std::collections::BTreeSet::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_secs(2), announcements.recv()).await
    {
        heard.insert(notification.payload().to_owned());
    }
    assert!(
        heard.contains("sessions") && heard.contains("field_schemas"),
        "{heard:?}"
    );

    // The service writes and reads the swapped tables: the tenant's role keeps its
    // privileges, full-text search its generated column and index, and the audit log's
    // counter goes on from where it stood.
    app.create_employee(
        &session.token,
        json!({ "firstName": "Katherine", "lastName": "Johnson" }),
    )
    .await;
    let found = app
        .graphql(
            Some(&session.token),
            "{ employees(first: 10, search: \"kath\") { edges { node { lastName } } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        found.data("employees.edges"),
        &json!([{ "node": { "lastName": "Johnson" } }])
    );
    let mut names = app.employee_last_names(&session.token).await;
    names.sort();
    assert_eq!(names, ["Adason", "Graceson", "Johnson"]);
    app.settled(session.tenant_id).await;
    let (newer, distinct, total): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE feed_seq > $1), count(DISTINCT feed_seq), count(*)
         FROM audit_log",
    )
    .bind(feed_before)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        newer >= 1,
        "the new change's audit entry follows the old ones"
    );
    assert_eq!(distinct, total);
    assert!(
        app.custos(&["verify", "--tenant", &session.slug, "--read-models"])
            .await
    );
}

/// A projection that writes or changes a table it does not list, where the rebuild's
/// transactions can write (they write the rebuilt tables), fails the rebuild, and the change is
/// undone: whether it deletes rows, truncates or creates a table, while the events are replayed
/// or in the day's work at the swap.
#[tokio::test]
async fn a_rebuild_whose_projection_writes_a_live_table_it_does_not_list_is_refused() {
    /// The webhooks read model, fed the records' events, with a step that runs `statement`.
    struct EmptiesRecords {
        statement: &'static str,
        /// In each batch of the replay; otherwise in the day's work.
        in_replay: bool,
    }

    impl EmptiesRecords {
        async fn empty_records(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
            sqlx::query(self.statement).execute(conn).await?;
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Projection for EmptiesRecords {
        fn name(&self) -> &'static str {
            "webhooks"
        }
        fn aggregate_types(&self) -> &'static [&'static str] {
            custos_projections::records::RecordsProjection.aggregate_types()
        }
        fn tables(&self) -> &'static [custos_projections::Table] {
            custos_projections::webhooks::WebhooksProjection.tables()
        }
        async fn apply(
            &self,
            conn: &mut PgConnection,
            _event: &custos_projections::ProjectedEvent,
        ) -> sqlx::Result<()> {
            if self.in_replay {
                self.empty_records(conn).await?;
            }
            Ok(())
        }
        async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
            custos_projections::webhooks::WebhooksProjection
                .reset(conn)
                .await
        }
        async fn on_day(
            &self,
            conn: &mut PgConnection,
            _today: chrono::NaiveDate,
        ) -> sqlx::Result<Vec<custos_projections::TookEffect>> {
            self.empty_records(conn).await?;
            Ok(Vec::new())
        }
    }

    let (app, session, _db) = one_employee("unlisted", "Kept", "Safe").await;
    let tenant = app.tenant(session.tenant_id).await;
    let database = app.tenant_database(session.tenant_id).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    for (statement, named) in [
        ("DELETE FROM records", "records"),
        ("TRUNCATE records", "records"),
        (
            "CREATE TABLE IF NOT EXISTS unlisted (n int)",
            "custos_rebuild.unlisted",
        ),
    ] {
        for in_replay in [true, false] {
            let failed = custos_api::testing::rebuild_read_model(
                &custos_tests::admin_options(&database),
                &tenant.log,
                &EmptiesRecords {
                    statement,
                    in_replay,
                },
                std::future::pending(),
            )
            .await
            .expect_err("the rebuild is refused");
            assert!(
                format!("{failed:#}").contains(&format!("wrote {named}, which it does not list")),
                "{statement}, in the replay: {in_replay}: {failed:#}"
            );
            assert_eq!(app.employee_last_names(&session.token).await, ["Safe"]);
            let created: bool = sqlx::query_scalar(
                "SELECT to_regclass('custos_rebuild.unlisted') IS NOT NULL
                     OR to_regclass('public.unlisted') IS NOT NULL",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            assert!(!created, "{statement}, in the replay: {in_replay}");
        }
    }
}

/// A rebuild's session appends no event, so its long transactions (replaying into and indexing
/// the rebuilt tables) hold back no projector of its organisation.
#[tokio::test]
async fn a_transaction_of_a_read_model_rebuild_holds_back_no_read_model() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("copying")).await;
    let mut rebuilding = app.tenant_admin(session.tenant_id).await;
    sqlx::query(&format!(
        "SET application_name = '{}'",
        custos_api::testing::REBUILDING
    ))
    .execute(&mut rebuilding)
    .await
    .unwrap();
    let mut open = rebuilding.begin().await.unwrap();
    sqlx::query("CREATE TABLE custos_rebuild.copying AS SELECT * FROM records")
        .execute(&mut *open)
        .await
        .unwrap();
    let xid: Option<String> = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
        .fetch_one(&mut *open)
        .await
        .unwrap();
    assert!(xid.is_some(), "the open transaction has a transaction id");

    // A list waits for the read models (ten seconds at most), which take the new employee.
    app.create_employee(
        &session.token,
        json!({ "firstName": "Served", "lastName": "Meanwhile" }),
    )
    .await;
    assert_eq!(app.employee_last_names(&session.token).await, ["Meanwhile"]);
    open.rollback().await.unwrap();
}

/// `custos projections rebuild <read_model> --tenant <slug>`.
fn rebuild_args<'a>(read_model: &'a str, slug: &'a str) -> [&'a str; 5] {
    ["projections", "rebuild", read_model, "--tenant", slug]
}

/// An organisation with one employee, projected, and a superuser connection to its database.
async fn one_employee(
    prefix: &str,
    first: &str,
    last: &str,
) -> (TestApp, custos_tests::Session, PgConnection) {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug(prefix)).await;
    app.create_employee(
        &session.token,
        json!({ "firstName": first, "lastName": last }),
    )
    .await;
    app.settled(session.tenant_id).await;
    let db = app.tenant_admin(session.tenant_id).await;
    (app, session, db)
}

/// The live `records` table's oid: another after a swap.
async fn records_oid(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT 'public.records'::regclass::oid::bigint")
        .fetch_one(db)
        .await
        .unwrap()
}

/// A superuser session that keeps `records` in use (a transaction left open after reading
/// it), as a long export does; [`release`] ends it.
async fn reading_records(app: &TestApp, tenant_id: Uuid) -> PgConnection {
    let mut reader = app.tenant_admin(tenant_id).await;
    for statement in ["BEGIN", "SELECT count(*) FROM records"] {
        sqlx::query(statement).execute(&mut reader).await.unwrap();
    }
    reader
}

/// One rebuild of a read model runs at a time in an organisation; what a rebuild that did not
/// finish left is removed by the next one and by `custos migrate` (and every start), and the
/// tables of one still running are left alone.
#[tokio::test]
async fn what_an_unfinished_rebuild_left_is_removed_and_a_running_one_is_left_alone() {
    let (app, session, mut db) = one_employee("leftover", "Left", "Over").await;
    // As a rebuild killed between the copy and the swap leaves it: the rows, personal data
    // and all, in a table the service cannot see.
    let leave = "CREATE TABLE custos_rebuild.records AS SELECT * FROM records";
    let left = "SELECT count(*) FROM pg_class WHERE relnamespace = 'custos_rebuild'::regnamespace
                AND relkind = 'r'";
    sqlx::query(leave).execute(&mut db).await.unwrap();

    // Another session holds the rebuild's lock, as a rebuild running does.
    let mut running = app.tenant_admin(session.tenant_id).await;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext('records'))")
        .bind(custos_api::testing::REBUILD_LOCK)
        .execute(&mut running)
        .await
        .unwrap();
    let refused = app
        .custos_result(&rebuild_args("records", &session.slug))
        .await
        .expect_err("a second rebuild of the read model is refused");
    assert!(
        format!("{refused:#}").contains("already running"),
        "{refused:#}"
    );
    assert!(app.custos(&["migrate"]).await);
    let count: i64 = sqlx::query_scalar(left).fetch_one(&mut db).await.unwrap();
    assert_eq!(count, 1, "a running rebuild's tables are left alone");

    // Once it has ended, the next start removes what it left.
    running.close().await.unwrap();
    assert!(app.custos(&["migrate"]).await);
    let count: i64 = sqlx::query_scalar(left).fetch_one(&mut db).await.unwrap();
    assert_eq!(count, 0, "the unfinished rebuild's tables are removed");

    // So does the next rebuild, which then swaps its own in.
    sqlx::query(leave).execute(&mut db).await.unwrap();
    assert!(app.custos(&rebuild_args("records", &session.slug)).await);
    let count: i64 = sqlx::query_scalar(left).fetch_one(&mut db).await.unwrap();
    assert_eq!(count, 0);
    assert_eq!(app.employee_last_names(&session.token).await, ["Over"]);
}

/// An erasure removes the copy of a read model that a killed rebuild left (it holds the erased
/// person's values), at once when no rebuild runs and, when one does, as soon as it has ended;
/// the erasure does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_removes_the_copies_killed_rebuilds_left() {
    let (app, session, mut db) = one_employee("erasedcopy", "Kept", "Apart").await;
    let copied = "CREATE TABLE custos_rebuild.records AS SELECT * FROM records";
    let copies =
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'custos_rebuild'::regnamespace";
    let erase = |name: &'static str| {
        let app = &app;
        let token = session.token.clone();
        async move {
            let id = app
                .create_employee(&token, json!({ "firstName": name, "lastName": "Erased" }))
                .await["id"]
                .clone();
            app.graphql(
                Some(&token),
                "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
                json!({ "id": id }),
            )
            .await
            .ok();
        }
    };
    // A rebuild killed between its copy and its swap left the copy; none runs.
    sqlx::query(copied).execute(&mut db).await.unwrap();
    erase("First").await;
    until(&mut db, copies, 0).await;

    // A rebuild runs, its copy not made yet: the removal waits for it.
    let mut running = app.tenant_admin(session.tenant_id).await;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext('records'))")
        .bind(custos_api::testing::REBUILD_LOCK)
        .execute(&mut running)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), erase("Second"))
        .await
        .expect("the erasure does not wait for the rebuild");
    let waiting = format!(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND classid = {}::oid AND NOT granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        custos_api::testing::REBUILD_LOCK
    );
    until(&mut db, &waiting, 1).await;
    // Another erasure meanwhile asks the waiting removal for one more round instead of
    // opening a connection of its own to wait beside it.
    tokio::time::timeout(Duration::from_secs(30), erase("Third"))
        .await
        .expect("the erasure does not wait for the rebuild");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count: i64 = sqlx::query_scalar(&waiting)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(count, 1, "one removal waits, not one per erasure");
    // It copies the rows (the erased person's with them, had it read them before the erasure)
    // and is killed before its swap.
    sqlx::query(copied).execute(&mut running).await.unwrap();
    running.close().await.unwrap();
    until(&mut db, copies, 0).await;
    assert_eq!(
        app.employee_last_names(&session.token).await,
        ["Apart"],
        "the live read model serves on"
    );
}

/// The audit feed keeps its place across a rebuild of the audit log, which numbers the entries
/// again: a reader placed after an entry is given exactly the entries after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_feed_keeps_its_place_when_the_audit_log_is_rebuilt() {
    use custos_projections::audit_log;

    let (app, session, mut db) = one_employee("feedplace", "First", "Placed").await;
    let hire = |last: &'static str| {
        let (app, token) = (&app, session.token.clone());
        async move {
            app.create_employee(&token, json!({ "firstName": "Then", "lastName": last }))
                .await;
            app.settled(session.tenant_id).await;
        }
    };
    // Numbers the live table skipped (an insertion rolled back, a crash's sequence jump).
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('audit_log', 'feed_seq'), max(feed_seq) + 100)
         FROM audit_log",
    )
    .execute(&mut db)
    .await
    .unwrap();
    hire("Later").await;
    // A reader's place: the newest entry, numbered after the gap.
    let (place, numbered): (i64, i64) = sqlx::query_as(
        "SELECT global_position, feed_seq FROM audit_log ORDER BY feed_seq DESC LIMIT 1",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    hire("Latest").await;
    let after: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM audit_log WHERE feed_seq > $1 ORDER BY feed_seq",
    )
    .bind(numbered)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(!after.is_empty());
    let given = |rows: Vec<audit_log::AuditRow>| -> Vec<i64> {
        rows.iter().map(|row| row.global_position).collect()
    };
    assert_eq!(
        given(
            audit_log::added_after(&mut db, Some(place), 100)
                .await
                .unwrap()
                .expect("the place is there")
        ),
        after
    );

    assert!(app.custos(&rebuild_args("audit_log", &session.slug)).await);
    let past_the_number: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE feed_seq > $1")
            .bind(numbered)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        past_the_number, 0,
        "the rebuild numbered the entries again, without the gap: a reader keeping its number would miss the newer ones"
    );
    assert_eq!(
        given(
            audit_log::added_after(&mut db, Some(place), 100)
                .await
                .unwrap()
                .expect("the place is there")
        ),
        after,
        "the entries after the place, no fewer and no more"
    );
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        given(
            audit_log::added_after(&mut db, None, 1000)
                .await
                .unwrap()
                .expect("from the first")
        )
        .len() as i64,
        all
    );
    assert_eq!(
        audit_log::feed_head(&mut db).await.unwrap(),
        after.last().copied()
    );
    // A place whose entry is not (yet) there gives nothing, rather than everything again, and
    // says so.
    assert_eq!(
        audit_log::added_after(&mut db, Some(i64::MAX), 100)
            .await
            .unwrap(),
        None
    );
}

/// Waits until `query` answers `wanted` (at most 30 s).
async fn until(db: &mut PgConnection, query: &str, wanted: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now: i64 = sqlx::query_scalar(query).fetch_one(&mut *db).await.unwrap();
        if now == wanted {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{query}: {now}, not {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rebuild refuses a live table with what its swap would not carry over, and gives up,
/// replacing nothing, when a long read keeps the live table in use at every try; it swaps
/// once the read has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refuses_what_it_cannot_carry_and_gives_way_to_a_long_read() {
    let (app, session, mut db) = one_employee("giveway", "Long", "Read").await;
    let live = records_oid(&mut db).await;
    let rebuild = rebuild_args("records", &session.slug);

    for statement in [
        "CREATE FUNCTION noticed() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
        "CREATE TRIGGER noticed BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION noticed()",
    ] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }
    let refused = app
        .custos_result(&rebuild)
        .await
        .expect_err("a table with a trigger is refused");
    assert!(format!("{refused:#}").contains("triggers"), "{refused:#}");
    for statement in ["DROP TRIGGER noticed ON records", "DROP FUNCTION noticed()"] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }

    let reader = reading_records(&app, session.tenant_id).await;
    let refused = app
        .custos_result(&rebuild)
        .await
        .expect_err("the swap gives up");
    assert!(
        format!("{refused:#}").contains("stayed in use"),
        "{refused:#}"
    );
    // The service reads it as before.
    assert_eq!(app.employee_last_names(&session.token).await, ["Read"]);
    release(reader).await;
    assert_eq!(records_oid(&mut db).await, live, "nothing was replaced");

    assert!(app.custos(&rebuild).await);
    assert_ne!(records_oid(&mut db).await, live);
    assert_eq!(app.employee_last_names(&session.token).await, ["Read"]);
}

/// A rebuild stopped midway (an operator's Ctrl-C) ends its session and removes what it had
/// built; the live read model is as it was, and the next rebuild runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_stopped_midway_leaves_nothing_behind() {
    let (app, session, mut db) = one_employee("stopped", "Still", "Here").await;
    let tenant = app.tenant(session.tenant_id).await;
    let database = app.tenant_database(session.tenant_id).await;
    let live = records_oid(&mut db).await;
    // A long read keeps the swap trying (up to about 12 s), so the rebuild is caught with its
    // replacement built.
    let reader = reading_records(&app, session.tenant_id).await;
    let built = "SELECT count(*) FROM pg_class WHERE relnamespace = 'custos_rebuild'::regnamespace";
    let mut watching = app.tenant_admin(session.tenant_id).await;
    let stop = async {
        loop {
            let count: i64 = sqlx::query_scalar(built)
                .fetch_one(&mut watching)
                .await
                .unwrap();
            if count > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let stopped = custos_api::testing::rebuild_read_model(
        &custos_tests::admin_options(&database),
        &tenant.log,
        &RecordsProjection,
        stop,
    )
    .await
    .unwrap();
    assert_eq!(
        stopped,
        custos_api::testing::RebuildEnded::Stopped { swapped: false },
        "the rebuild was stopped before its swap"
    );
    release(reader).await;

    let count: i64 = sqlx::query_scalar(built).fetch_one(&mut db).await.unwrap();
    assert_eq!(count, 0, "nothing built is left");
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(custos_api::testing::REBUILDING)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(sessions, 0, "the rebuild's session has ended");
    assert_eq!(records_oid(&mut db).await, live, "nothing was replaced");
    assert!(app.custos(&rebuild_args("records", &session.slug)).await);
    assert_eq!(app.employee_last_names(&session.token).await, ["Here"]);
}

/// A record event as the projector hands it over: the `n`th of the log, by `actor`.
fn projected(
    n: i64,
    record: Uuid,
    sequence: i64,
    event: custos_domain::RecordEvent,
) -> custos_projections::ProjectedEvent {
    let actor = custos_domain::Actor::User(Uuid::from_u128(n as u128));
    custos_projections::ProjectedEvent {
        global_position: n,
        aggregate_id: record,
        sequence,
        recorded_at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(n),
        metadata: custos_domain::EventMetadata::new(actor, Uuid::nil()),
        event: custos_projections::AnyEvent::Record(event),
    }
}

/// The audit log takes a batch as arrays, an entry's subjects and fields as array literals:
/// any field name reads back as itself, in its place, and `feed_seq` numbers the entries in the
/// batch's order, not by their positions.
#[tokio::test]
async fn audit_entries_keep_every_field_name_as_written_and_the_batch_order() {
    use custos_domain::Datasheet::{Applicants, Employees};
    use custos_domain::RecordEvent::{ApplicantHired, RecordArchived, RecordUpdated};
    use custos_projections::audit_log::AuditLogProjection;

    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("literal")).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    // A table of this connection's own shadows the service's `audit_log` (and its projector).
    sqlx::query("CREATE TEMP TABLE audit_log (LIKE public.audit_log INCLUDING ALL)")
        .execute(&mut db)
        .await
        .unwrap();
    let odd = [
        "plain",
        "with \"quotes\"",
        "back\\slash\\",
        "comma, {brace} and space",
        "NULL",
        "",
        " padded ",
        "tab\there",
        "line\nbreak",
        "\"",
        "\\",
        "ünïcödé",
    ];
    let changes: custos_domain::record::Fields = odd
        .iter()
        .map(|name| (name.to_string(), json!("x")))
        .collect();
    // In the order the event names them.
    let written: Vec<String> = changes.keys().cloned().collect();
    assert_eq!(written.len(), odd.len());
    let (ada, cy, hired) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let events = [
        projected(
            9,
            ada,
            2,
            RecordUpdated {
                datasheet: Employees,
                changes,
                effective_from: None,
            },
        ),
        projected(
            4,
            cy,
            2,
            ApplicantHired {
                datasheet: Applicants,
                employee_id: hired,
                effective_from: None,
            },
        ),
        projected(
            7,
            ada,
            3,
            RecordArchived {
                datasheet: Employees,
            },
        ),
    ];
    let batch: Vec<&custos_projections::ProjectedEvent> = events.iter().collect();
    AuditLogProjection.apply_all(&mut db, &batch).await.unwrap();
    // Applied again (a replayed batch): nothing changes.
    AuditLogProjection.apply_all(&mut db, &batch).await.unwrap();

    let rows: Vec<(i64, Vec<Uuid>, Vec<String>)> = sqlx::query_as(
        "SELECT global_position, subjects, fields FROM pg_temp.audit_log ORDER BY feed_seq",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (9, vec![ada], written),
            (
                4,
                vec![cy, hired],
                vec!["stage".to_owned(), "hired_as".to_owned()]
            ),
            (7, vec![ada], vec!["archived".to_owned()]),
        ],
        "each entry as its event, in the batch's order"
    );
}

#[tokio::test]
async fn a_run_of_updates_written_at_once_or_replayed_from_its_middle_leaves_what_one_by_one_leaves(
) {
    use custos_domain::Datasheet::{Applicants, Employees};
    use custos_domain::RecordEvent::{RecordArchived, RecordCreated, RecordUpdated};

    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("folded")).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    // A table of this connection's own shadows the service's `records` (and its projector).
    for table in ["records", "pending_changes"] {
        sqlx::query(&format!(
            "CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut db)
        .await
        .unwrap();
    }
    // The rows, once the scheduled changes due by today have taken effect.
    async fn in_force(db: &mut PgConnection) -> Vec<Value> {
        RecordsProjection
            .on_day(db, chrono::Utc::now().date_naive())
            .await
            .unwrap();
        employee_rows(db).await
    }
    async fn emptied(db: &mut PgConnection) {
        for table in ["records", "pending_changes"] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *db)
                .await
                .unwrap();
        }
    }
    let fields =
        |pairs: Value| -> custos_domain::record::Fields { serde_json::from_value(pairs).unwrap() };
    let (ada, bob, cy) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let update = |n, record, sequence, changes: Value| {
        projected(
            n,
            record,
            sequence,
            RecordUpdated {
                datasheet: if record == cy { Applicants } else { Employees },
                changes: fields(changes),
                effective_from: None,
            },
        )
    };
    let dated = |n, record, sequence, day: &str, changes: Value| {
        projected(
            n,
            record,
            sequence,
            RecordUpdated {
                datasheet: if record == cy { Applicants } else { Employees },
                changes: fields(changes),
                effective_from: Some(day.parse().unwrap()),
            },
        )
    };
    let created = |n, record, datasheet, values: Value| {
        projected(
            n,
            record,
            1,
            RecordCreated {
                datasheet,
                fields: fields(values),
                hired_from: None,
                effective_from: None,
            },
        )
    };
    let events = [
        created(
            1,
            ada,
            Employees,
            json!({ "first_name": "Ada", "department": "X", "email": "a@example.org" }),
        ),
        created(
            2,
            bob,
            Employees,
            json!({ "first_name": "Bob", "email": "b@example.org" }),
        ),
        created(
            3,
            cy,
            Applicants,
            json!({ "first_name": "Cy", "stage": "applied" }),
        ),
        update(4, ada, 2, json!({ "department": "Y" })),
        update(5, bob, 2, json!({ "email": null })),
        update(6, ada, 3, json!({ "department": null })),
        update(7, cy, 2, json!({ "stage": "screening" })),
        update(
            8,
            ada,
            4,
            json!({ "department": "Z", "email": "a2@example.org" }),
        ),
        update(9, cy, 3, json!({ "notes": "n", "stage": null })),
        update(10, bob, 3, json!({ "email": "b2@example.org" })),
        update(11, cy, 4, json!({ "stage": "interview" })),
        update(12, cy, 5, json!({ "notes": null })),
        projected(
            13,
            ada,
            5,
            RecordArchived {
                datasheet: Employees,
            },
        ),
        update(14, ada, 6, json!({ "department": "W" })),
        // Effective-dated: a correction dated before bob's last email change does not undo
        // it; a change dated after a later-recorded one stands over it.
        dated(
            15,
            bob,
            4,
            "1969-12-31",
            json!({ "email": "b-corrected@example.org" }),
        ),
        dated(16, cy, 6, "2000-01-01", json!({ "notes": "from 2000" })),
        update(
            17,
            cy,
            7,
            json!({ "notes": "recorded later, in force earlier" }),
        ),
        // A creation written before changes were effective-dated does not bound them: a
        // change dated before it sets a field it did not give, and holds from the record's
        // first day, as the record's own fold has it.
        dated(18, bob, 5, "1969-06-30", json!({ "department": "Before" })),
    ];
    let all: Vec<&custos_projections::ProjectedEvent> = events.iter().collect();

    for event in &all {
        RecordsProjection.apply(&mut db, event).await.unwrap();
    }
    let one_by_one = in_force(&mut db).await;
    assert_eq!(one_by_one.len(), 3);
    let ada_row = one_by_one.iter().find(|r| r["id"] == json!(ada)).unwrap();
    assert_eq!(ada_row["fields"]["department"], json!("W"));
    assert_eq!(ada_row["fields"]["email"], json!("a2@example.org"));
    let cy_row = one_by_one.iter().find(|r| r["id"] == json!(cy)).unwrap();
    assert_eq!(
        cy_row["fields"],
        json!({ "first_name": "Cy", "stage": "interview", "notes": "from 2000" })
    );
    let bob_row = one_by_one.iter().find(|r| r["id"] == json!(bob)).unwrap();
    assert_eq!(bob_row["fields"]["email"], json!("b2@example.org"));
    assert_eq!(bob_row["fields"]["department"], json!("Before"));

    emptied(&mut db).await;
    RecordsProjection.apply_all(&mut db, &all).await.unwrap();
    assert_eq!(in_force(&mut db).await, one_by_one, "written at once");

    // Rows part-way through the run (the batch before was cut after the fourth update), the
    // run replayed from its start: what a projector retrying after a crash does.
    emptied(&mut db).await;
    RecordsProjection
        .apply_all(&mut db, &all[..7])
        .await
        .unwrap();
    RecordsProjection
        .apply_all(&mut db, &all[3..])
        .await
        .unwrap();
    assert_eq!(
        in_force(&mut db).await,
        one_by_one,
        "replayed from the middle"
    );

    RecordsProjection.apply_all(&mut db, &all).await.unwrap();
    assert_eq!(in_force(&mut db).await, one_by_one, "replayed whole");
}

/// Holds every read model's checkpoint of `tenant_id` as another instance's projector would:
/// this instance's projector applies nothing until the transaction ends.
async fn hold_the_projector(app: &TestApp, tenant_id: Uuid) -> PgConnection {
    let mut held = app.tenant_admin(tenant_id).await;
    for statement in ["BEGIN", "SELECT 1 FROM projection_checkpoints FOR UPDATE"] {
        sqlx::query(statement).execute(&mut held).await.unwrap();
    }
    held
}

/// Lets the projector go on.
async fn release(mut held: PgConnection) {
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
}

/// Asserts that `request` is still waiting after half a second; then releases the projector
/// and answers what the request got.
async fn waits_for_the_projector(
    request: impl std::future::Future<Output = custos_tests::Response>,
    held: PgConnection,
    what: &str,
) -> custos_tests::Response {
    tokio::pin!(request);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut request)
            .await
            .is_err(),
        "{what} did not wait for the read models"
    );
    release(held).await;
    request.await
}

/// The bound on changes answered before the read models show them: a thousand are answered
/// at once while the read models are held; the next writer waits for them before it writes,
/// and, given up, has written nothing; once they move, it goes through.
#[tokio::test]
async fn a_writer_waits_while_a_thousand_changes_are_outstanding_and_gives_up_having_written_nothing(
) {
    use futures::StreamExt;
    let app = TestApp::spawn_with(|config| config.projection_wait = Duration::from_secs(1)).await;
    let session = app.sign_up(&slug("bounded")).await;
    app.settled(session.tenant_id).await;
    let records = |mut conn: PgConnection| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_type = 'record'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let create =
        "mutation($n: String!) { createEmployee(input: { firstName: $n, lastName: \"B\" }) { id } }";
    let before = records(app.tenant_admin(session.tenant_id).await).await;
    let held = hold_the_projector(&app, session.tenant_id).await;
    futures::stream::iter(0..1_000)
        .map(|n| {
            app.graphql(
                Some(&session.token),
                create,
                json!({ "n": format!("N{n}") }),
            )
        })
        .buffer_unordered(8)
        .for_each(|answered| async move {
            answered.ok();
        })
        .await;
    let written = records(app.tenant_admin(session.tenant_id).await).await;
    assert_eq!(written, before + 1_000);
    let over = app
        .graphql(Some(&session.token), create, json!({ "n": "Over" }))
        .await;
    assert_eq!(over.code(), Some("UNAVAILABLE"), "{}", over.body);
    assert_eq!(
        records(app.tenant_admin(session.tenant_id).await).await,
        written
    );
    release(held).await;
    app.graphql(Some(&session.token), create, json!({ "n": "Over" }))
        .await
        .ok();
    let total = app
        .graphql(
            Some(&session.token),
            "{ employees(first: 1) { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(total.data("employees.totalCount"), &json!(1_001));
}

const EMPLOYEE: &str = "query($id: ID!) { employee(id: $id) { version department } }";

/// Reads the employee `id` as `session`, asserting that the read waits for the held projector
/// until it is released.
async fn employee_once_released(
    app: &TestApp,
    session: &custos_tests::Session,
    id: &Value,
    held: PgConnection,
    what: &str,
) -> custos_tests::Response {
    let read = app.graphql(Some(&session.token), EMPLOYEE, json!({ "id": id }));
    waits_for_the_projector(read, held, what).await.ok()
}

#[tokio::test]
async fn a_change_answered_from_its_version_does_not_wait_for_the_read_models_and_every_read_waits_for_it(
) {
    let app = TestApp::spawn_with(|config| config.projection_wait = Duration::from_secs(2)).await;
    let session = app.sign_up(&slug("deferred")).await;
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L", "department": "Ops" }),
        )
        .await;
    let held = hold_the_projector(&app, session.tenant_id).await;

    // Answered while no read model can apply it: it did not wait for them.
    let changed = app
        .graphql(
            Some(&session.token),
            "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"R&D\" }) { id datasheet version __typename } }",
            json!({ "id": created["id"] }),
        )
        .await
        .ok();
    assert_eq!(
        changed.data("updateEmployee"),
        &json!({ "id": created["id"], "datasheet": "EMPLOYEES", "version": 2, "__typename": "Employee" })
    );
    let position = changed.body["extensions"]["position"]
        .as_str()
        .unwrap()
        .to_owned();
    let (transaction, global) = position.split_once('.').unwrap();
    let stored: (i64, i64) = sqlx::query_as(
        "SELECT transaction_id::text::bigint, global_position FROM events
         WHERE aggregate_id = $1 AND sequence = 2",
    )
    .bind(created["id"].as_str().unwrap())
    .fetch_one(&app.tenant(session.tenant_id).await.pool)
    .await
    .unwrap();
    assert_eq!(
        (transaction.parse().unwrap(), global.parse().unwrap()),
        stored
    );

    // A read of the organisation waits for the read models to show it.
    let read = employee_once_released(&app, &session, &created["id"], held, "the read").await;
    assert_eq!(
        read.data("employee"),
        &json!({ "version": 2, "department": "R&D" })
    );

    // A change whose answer reads the read models waits for them, and answers with them.
    let held = hold_the_projector(&app, session.tenant_id).await;
    let waited = waits_for_the_projector(
        app.graphql(
            Some(&session.token),
            "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Sales\" }) { version department } }",
            json!({ "id": created["id"] }),
        ),
        held,
        "the answer",
    )
    .await
    .ok();
    assert_eq!(
        waited.data("updateEmployee"),
        &json!({ "version": 3, "department": "Sales" })
    );
    assert!(
        waited.body["extensions"]["position"].is_null(),
        "{}",
        waited.body
    );
}

/// A service whose reads wait at most `wait` for the read models, an organisation of it, and
/// an employee there (department `Ops`).
async fn with_an_employee(name: &str, wait: Duration) -> (TestApp, custos_tests::Session, Uuid) {
    let app = TestApp::spawn_with(|config| config.projection_wait = wait).await;
    let session = app.sign_up(&slug(name)).await;
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L", "department": "Ops" }),
        )
        .await;
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    (app, session, id)
}

/// Writes version `sequence` of the employee `id` (its department `Elsewhere`) as another
/// instance would, this one not knowing of it, and answers its position: its transaction and
/// global position (`extensions.position` gives them as `transaction.global`).
async fn answered_elsewhere(
    app: &TestApp,
    session: &custos_tests::Session,
    id: Uuid,
    sequence: i64,
) -> (i64, i64) {
    let tenant = app.tenant(session.tenant_id).await;
    let mut conn = tenant.pool.acquire().await.unwrap();
    append_directly(
        &mut conn,
        "record",
        id,
        sequence,
        session.user_id,
        json!({ "RecordUpdated": { "datasheet": "employees", "changes": { "department": "Elsewhere" } } }),
    )
    .await;
    let (transaction, global): (i64, i64) = sqlx::query_as(
        "SELECT transaction_id::text::bigint, global_position FROM events
         WHERE aggregate_id = $1 AND sequence = $2",
    )
    .bind(id.to_string())
    .bind(sequence)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    (transaction, global)
}

/// The same over WebSocket: a subscription passed the position in `extensions.custosAfter`
/// starts once the read models show that change (held back longer than the projection wait,
/// it ends with `UNAVAILABLE`; once they show it, it runs); one without it starts at once. A
/// malformed position is refused.
#[tokio::test]
async fn a_subscription_passed_another_instance_s_position_waits_for_its_change() {
    use custos_tests::feed::{next, open_with, send, Socket};
    const CHANGES: &str = "subscription { recordChanged(datasheet: EMPLOYEES) { id version } }";
    /// The versions sent to each subscription of `socket` until each of `of` has been sent
    /// `version`.
    async fn sent_until(
        socket: &mut Socket,
        of: &[&str],
        version: i64,
    ) -> std::collections::BTreeMap<String, Vec<i64>> {
        let mut sent: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        while of
            .iter()
            .any(|id| sent.get(*id).and_then(|v| v.last()) != Some(&version))
        {
            let message = next(socket, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("version {version} is sent to {of:?}: {sent:?}"));
            assert_eq!(message["type"], "next", "{message}");
            let changed = message["payload"]["data"]["recordChanged"]["version"]
                .as_i64()
                .unwrap();
            let subscription = message["id"].as_str().unwrap().to_owned();
            sent.entry(subscription).or_default().push(changed);
        }
        sent
    }
    let (app, session, id) = with_an_employee("after-ws", Duration::from_secs(1)).await;
    let update = |department: &'static str| {
        let (app, token) = (&app, &session.token);
        async move {
            app.graphql(
                Some(token),
                "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { version department } }",
                json!({ "id": id, "d": department }),
            )
            .await
            .ok()
        }
    };
    // Subscription 1, without a position, is running: it is sent version 2.
    let (mut socket, ack) = open_with(
        &app.address.to_string(),
        Some(&session.token),
        CHANGES,
        json!({}),
    )
    .await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    update("Warm").await;
    assert_eq!(sent_until(&mut socket, &["1"], 2).await["1"], vec![2]);
    let held = hold_the_projector(&app, session.tenant_id).await;
    // Another instance answers version 3 before its read models show it.
    let (transaction, global) = answered_elsewhere(&app, &session, id, 3).await;
    let position = format!("{transaction}.{global}");
    // Subscription 2 with that position, 3 with one that is not a position.
    for (id, after) in [("2", position.as_str()), ("3", "not a position")] {
        let payload = json!({ "query": CHANGES, "extensions": { "custosAfter": after } });
        send(
            &mut socket,
            json!({ "id": id, "type": "subscribe", "payload": payload }),
        )
        .await;
    }
    // The malformed one is refused at once; the other waits for the read models, and gives
    // up after the projection wait.
    for (id, code) in [("3", "VALIDATION"), ("2", "UNAVAILABLE")] {
        let refused = next(&mut socket, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            (&refused["id"], &refused["type"]),
            (&json!(id), &json!("error")),
            "{refused}"
        );
        assert_eq!(
            refused["payload"][0]["extensions"]["code"], code,
            "{refused}"
        );
    }
    release(held).await;
    let sent = sent_until(&mut socket, &["1"], 3).await;
    assert_eq!(sent["1"], vec![3], "{sent:?}");
    // Once the read models show version 3, a subscription with its position runs.
    let payload = json!({ "query": CHANGES, "extensions": { "custosAfter": position } });
    send(
        &mut socket,
        json!({ "id": "4", "type": "subscribe", "payload": payload }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        update("Fourth").await.data("updateEmployee.version"),
        &json!(4)
    );
    let sent = sent_until(&mut socket, &["1", "4"], 4).await;
    assert_eq!(sent["1"], vec![4], "{sent:?}");
    assert_eq!(sent["4"], vec![4], "{sent:?}");
}

#[tokio::test]
async fn a_read_passed_another_instance_s_position_waits_for_its_change() {
    let (app, session, id) = with_an_employee("after", Duration::from_secs(2)).await;
    // This instance has served a read (the first read of a context waits for the whole log).
    app.graphql(Some(&session.token), EMPLOYEE, json!({ "id": id }))
        .await
        .ok();
    let held = hold_the_projector(&app, session.tenant_id).await;
    // Another instance answers a change, before its read models show it, with its position.
    let (transaction, global) = answered_elsewhere(&app, &session, id, 2).await;
    let position = format!("{transaction}.{global}");

    // Without the position, this instance answers from what its read models show.
    let unaware = app
        .graphql(Some(&session.token), EMPLOYEE, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(unaware.data("employee.department"), &json!("Ops"));
    // With it, the read waits for the change.
    let read = waits_for_the_projector(
        app.graphql_with(
            Some(&session.token),
            EMPLOYEE,
            json!({ "id": id }),
            &[("custos-after", &position)],
        ),
        held,
        "the read with the position",
    )
    .await
    .ok();
    assert_eq!(
        read.data("employee"),
        &json!({ "version": 2, "department": "Elsewhere" })
    );

    // A value that is not a position, or two values: VALIDATION, and nothing runs.
    let change =
        "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"No\" }) { version } }";
    for headers in [
        vec![("custos-after", "soon")],
        vec![("custos-after", "1.-2")],
        vec![
            ("custos-after", position.as_str()),
            ("custos-after", position.as_str()),
        ],
    ] {
        let refused = app
            .graphql_with(Some(&session.token), change, json!({ "id": id }), &headers)
            .await;
        assert_eq!(refused.status, 400, "{headers:?}: {}", refused.body);
        assert_eq!(
            refused.code(),
            Some("VALIDATION"),
            "{headers:?}: {}",
            refused.body
        );
    }
    // A position past the organisation's log: VALIDATION at once, not a wait.
    let beyond = format!("{}.{}", transaction + 1_000_000, global + 1_000_000);
    let refused = app
        .graphql_with(
            Some(&session.token),
            EMPLOYEE,
            json!({ "id": id }),
            &[("custos-after", &beyond)],
        )
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"), "{}", refused.body);
    let unchanged = app
        .graphql(Some(&session.token), EMPLOYEE, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(unchanged.data("employee.version"), &json!(2));
}

#[tokio::test]
async fn a_context_opened_again_waits_for_the_changes_answered_before_it() {
    let app = TestApp::spawn_with(|config| config.projection_wait = Duration::from_secs(2)).await;
    let session = app.sign_up(&slug("reopened")).await;
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L", "department": "Ops" }),
        )
        .await;
    let held = hold_the_projector(&app, session.tenant_id).await;
    app.graphql(
        Some(&session.token),
        "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"R&D\" }) { version } }",
        json!({ "id": created["id"] }),
    )
    .await
    .ok();
    // The context closes (idle, or the service restarts) before the read models show it.
    app.services.tenancy.close_tenant(session.tenant_id).await;
    let read = employee_once_released(
        &app,
        &session,
        &created["id"],
        held,
        "the first read of the context opened again",
    )
    .await;
    assert_eq!(read.data("employee.department"), &json!("R&D"));
}

#[tokio::test]
async fn a_change_held_back_by_the_read_models_runs_nothing_and_lets_its_key_go() {
    let app = TestApp::spawn_with(|config| config.projection_wait = Duration::from_secs(1)).await;
    let session = app.sign_up(&slug("held-back")).await;
    let manager = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Mia", "lastName": "M" }),
        )
        .await;
    let held = hold_the_projector(&app, session.tenant_id).await;
    // Created while the read models are held: answered from its version.
    let created = app
        .graphql(
            Some(&session.token),
            "mutation { createEmployee(input: { firstName: \"Eve\", lastName: \"E\" }) { id } }",
            json!({}),
        )
        .await
        .ok();
    let id = created.data("createEmployee.id").clone();
    // Another mutation of the organisation waits for the read models to show it, and gives up.
    let archive = "mutation($id: ID!) { archiveRecord(id: $id) { version } }";
    let key = [("idempotency-key", "held-back-1")];
    let refused = app
        .graphql_with(Some(&session.token), archive, json!({ "id": id }), &key)
        .await;
    assert_eq!(refused.code(), Some("UNAVAILABLE"), "{}", refused.body);
    // A manager set on the new record is checked once the read models show it (under the
    // org-chart lock), not refused as unknown before.
    let managed = "mutation($id: ID!, $m: ID!) { updateEmployee(id: $id, input: { managerId: $m }) { version } }";
    let set = waits_for_the_projector(
        app.graphql(
            Some(&session.token),
            managed,
            json!({ "id": id, "m": manager["id"] }),
        ),
        held,
        "setting a manager",
    )
    .await
    .ok();
    assert_eq!(set.data("updateEmployee.version"), &json!(2));
    // Nothing of the archive ran, so its key was let go: the retry runs.
    let retried = app
        .graphql_with(Some(&session.token), archive, json!({ "id": id }), &key)
        .await
        .ok();
    assert_eq!(retried.data("archiveRecord.version"), &json!(3));
}
