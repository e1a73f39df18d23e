//! Tamper evidence: hash chains computed by the database, signed checkpoints, and verification
//! that finds each kind of tampering a database superuser can do — and passes an untouched
//! store, and one where a person was erased.

use custos_tests::{slug, Session, TestApp};
use serde_json::{json, Value};
use sqlx::PgConnection;

const VERIFY: &str =
    "{ verifyIntegrity { ok streams events checkpoints checkedCheckpoint checkpointProblems
    broken { aggregateType aggregateId sequence breach } } }";

/// An organisation with a few employees, one of them (returned) with three events.
async fn store(app: &TestApp, name: &str) -> (Session, String) {
    let admin = app.sign_up(&slug(name)).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Chain", "lastName": "Link", "department": "Sales" }),
        )
        .await;
    let id = employee["id"].as_str().unwrap().to_owned();
    for department in ["Support", "Finance"] {
        app.graphql(
            Some(&admin.token),
            "mutation($id: ID!, $d: String) { updateEmployee(id: $id, input: { department: $d }) { id } }",
            json!({ "id": id, "d": department }),
        )
        .await
        .ok();
    }
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Other", "lastName": "Link" }),
    )
    .await;
    (admin, id)
}

async fn verify(app: &TestApp, admin: &Session) -> Value {
    app.graphql(Some(&admin.token), VERIFY, json!({}))
        .await
        .ok()
        .body["data"]["verifyIntegrity"]
        .clone()
}

async fn checkpoint(app: &TestApp, admin: &Session) -> Value {
    app.graphql(
        Some(&admin.token),
        "mutation { createCheckpoint { number streams events root publicKey } }",
        json!({}),
    )
    .await
    .ok()
    .body["data"]["createCheckpoint"]
        .clone()
}

/// A superuser session on the tenant database with every trigger off (replica mode).
async fn superuser(app: &TestApp, admin: &Session) -> PgConnection {
    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut db)
        .await
        .unwrap();
    db
}

async fn run(db: &mut PgConnection, sql: &str, id: &str) {
    sqlx::query(sql).bind(id).execute(db).await.unwrap();
}

fn broken(report: &Value) -> Vec<(String, i64, String)> {
    report["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["aggregateId"].as_str().unwrap().to_owned(),
                b["sequence"].as_i64().unwrap(),
                b["breach"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_untouched_store_verifies_and_so_does_one_after_an_erasure() {
    let app = TestApp::spawn().await;
    let (admin, id) = store(&app, "intact").await;
    let first = checkpoint(&app, &admin).await;
    assert_eq!(first["number"], 1);
    assert_eq!(first["publicKey"].as_str().unwrap().len(), 64);
    // Nothing new: no checkpoint.
    assert_eq!(checkpoint(&app, &admin).await, Value::Null);
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checkedCheckpoint"], 1);
    assert!(report["events"].as_i64().unwrap() >= 5);

    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 3, ground: OBJECTION) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    assert_eq!(
        verify(&app, &admin).await["ok"],
        true,
        "the old checkpoint still holds after an erasure"
    );
    assert_eq!(checkpoint(&app, &admin).await["number"], 2);
    let listed = app
        .graphql(
            Some(&admin.token),
            "{ checkpoints(last: 1) { number events } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(listed.data("checkpoints").as_array().unwrap().len(), 1);
    assert_eq!(listed.data("checkpoints.0.number"), 2);
    let all = app
        .graphql(Some(&admin.token), "{ checkpoints { number } }", json!({}))
        .await
        .ok();
    assert_eq!(
        all.data("checkpoints"),
        &json!([{ "number": 1 }, { "number": 2 }])
    );
    let refused = app
        .graphql(
            Some(&admin.token),
            "{ checkpoints(last: 0) { number } }",
            json!({}),
        )
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"));
    let report = verify(&app, &admin).await;
    assert_eq!(
        (report["ok"].clone(), report["checkedCheckpoint"].clone()),
        (json!(true), json!(2)),
        "{report}"
    );

    // Events are hashed by the database, so even the service's own role cannot write one
    // without it: the column is filled by the trigger.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let unhashed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE hash IS NULL")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(unhashed, 0);
}

#[tokio::test]
async fn each_kind_of_tampering_is_found_at_the_first_broken_link() {
    let app = TestApp::spawn().await;

    // Edited: an event's payload changed in place.
    let (admin, id) = store(&app, "edited").await;
    let mut db = superuser(&app, &admin).await;
    // (Record payloads are sealed: the forger can only change the ciphertext.)
    run(&mut db, "UPDATE events SET payload = json_build_object('sealed', 'Rm9yZ2Vk', 'clear', payload::jsonb->'clear') WHERE aggregate_id = $1 AND sequence = 2", &id).await;
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], false);
    assert_eq!(broken(&report), [(id.clone(), 2, "EDITED".to_owned())]);

    // Deleted: an event removed.
    let (admin, id) = store(&app, "deleted").await;
    let mut db = superuser(&app, &admin).await;
    run(
        &mut db,
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence = 2",
        &id,
    )
    .await;
    assert_eq!(
        broken(&verify(&app, &admin).await),
        [(id.clone(), 2, "DELETED".to_owned())]
    );

    // Inserted: a forged event slipped in at 2, hashed with the database's own function; the
    // rest renumbered.
    let (admin, id) = store(&app, "inserted").await;
    let mut db = superuser(&app, &admin).await;
    for sql in [
        "UPDATE events SET sequence = 4 WHERE aggregate_id = $1 AND sequence = 3",
        "UPDATE events SET sequence = 3 WHERE aggregate_id = $1 AND sequence = 2",
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, prev_hash, hash)
         SELECT e.aggregate_type, e.aggregate_id, 2, e.event_type, e.event_version, e.payload, e.metadata, p.hash,
                custos_event_hash(p.hash, e.aggregate_type, e.aggregate_id, 2, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at)
         FROM events e JOIN events p ON p.aggregate_id = e.aggregate_id AND p.sequence = 1
         WHERE e.aggregate_id = $1 AND e.sequence = 3",
    ] {
        run(&mut db, sql, &id).await;
    }
    // The forged row's recorded_at defaulted to now: rehash it with the stored time.
    run(&mut db, "UPDATE events SET hash = custos_event_hash(prev_hash, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at) WHERE aggregate_id = $1 AND sequence = 2", &id).await;
    assert_eq!(
        broken(&verify(&app, &admin).await),
        [(id.clone(), 2, "INSERTED".to_owned())]
    );

    // Reordered: two events swapped.
    let (admin, id) = store(&app, "reordered").await;
    let mut db = superuser(&app, &admin).await;
    for sql in [
        "UPDATE events SET sequence = 99 WHERE aggregate_id = $1 AND sequence = 2",
        "UPDATE events SET sequence = 2 WHERE aggregate_id = $1 AND sequence = 3",
        "UPDATE events SET sequence = 3 WHERE aggregate_id = $1 AND sequence = 99",
    ] {
        run(&mut db, sql, &id).await;
    }
    assert_eq!(
        broken(&verify(&app, &admin).await),
        [(id.clone(), 2, "REORDERED".to_owned())]
    );

    // Rewritten: an event edited and the whole stream re-hashed, so every chain verifies —
    // but not the signed checkpoint taken before, nor the checkpoint file.
    let (admin, id) = store(&app, "rewritten").await;
    checkpoint(&app, &admin).await;
    let mut db = superuser(&app, &admin).await;
    run(&mut db, "UPDATE events SET metadata = '{\"actor_id\":\"00000000-0000-0000-0000-000000000000\"}'::json WHERE aggregate_id = $1 AND sequence = 2", &id).await;
    for sequence in 2..=3 {
        sqlx::query(
            "UPDATE events e SET prev_hash = p.hash,
                 hash = custos_event_hash(p.hash, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at)
             FROM events p WHERE p.aggregate_id = e.aggregate_id AND p.sequence = e.sequence - 1
               AND e.aggregate_id = $1 AND e.sequence = $2",
        )
        .bind(&id)
        .bind(sequence)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let report = verify(&app, &admin).await;
    assert_eq!(broken(&report), []);
    assert_eq!(report["ok"], false);
    assert!(
        report["checkpointProblems"][0]
            .as_str()
            .unwrap()
            .contains("checkpoint 1"),
        "{report}"
    );
    // Deleting the checkpoint rows too does not help: the file still has them.
    run(&mut db, "DELETE FROM checkpoints WHERE $1 <> ''", &id).await;
    let report = verify(&app, &admin).await;
    assert!(
        report["checkpointProblems"]
            .to_string()
            .contains("missing from the database"),
        "{report}"
    );
}

#[tokio::test]
async fn auditing_needs_the_history_permission() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("auditor")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let refused = app.graphql(Some(&reader.token), VERIFY, json!({})).await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    let refused = app
        .graphql(
            Some(&reader.token),
            "mutation { createCheckpoint { number } }",
            json!({}),
        )
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
}
