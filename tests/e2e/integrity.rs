//! Tamper evidence: hash chains computed by the database, the Merkle log and its signed tree
//! heads, proofs checked offline, and verification (`verifyIntegrity` and `custos verify`)
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
        "mutation { createCheckpoint { number streams events treeSize root keyId publicKey tenantId } }",
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
    // The first tree head holds every event of the organisation, in every stream.
    assert_eq!(first["treeSize"], report["events"]);
    assert_eq!(first["events"], report["events"]);
    assert_eq!(first["streams"], report["streams"]);
    assert_eq!(first["tenantId"], admin.tenant_id.to_string());
    assert!(app.custos(&["verify", "--tenant", &admin.slug]).await);

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
    assert!(
        app.custos(&["verify", "--tenant", &admin.slug]).await,
        "an erased person's history still verifies"
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

/// The trigger that chains each new event calls `custos_event_hash`. Not inlined, that call
/// parsed and planned its body and each `custos_hash_part` in it again for every event (a
/// sixth of the CPU while seeding); inlined, it is planned once per connection. Whether
/// PostgreSQL inlines it depends on the functions' declared volatility (migration 0033).
#[tokio::test]
async fn the_hash_chains_functions_are_inlined_where_they_are_called() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("inlined")).await;
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (VERBOSE, COSTS OFF)
         SELECT custos_event_hash(prev_hash, aggregate_type, aggregate_id, sequence, event_type,
                                  event_version, payload, metadata, recorded_at)
         FROM events",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let output = plan
        .iter()
        .find(|line| line.trim_start().starts_with("Output:"))
        .expect("a verbose plan names its output");
    assert!(
        output.contains("sha256(") && !output.contains("custos_"),
        "the hash is computed in the statement itself: {output}"
    );
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
    // but not the Merkle log the signed tree head holds, nor the witness file.
    let (admin, id) = store(&app, "rewritten").await;
    checkpoint(&app, &admin).await;
    let mut db = superuser(&app, &admin).await;
    rewrite_actor(&mut db, &id).await;
    let report = verify(&app, &admin).await;
    assert_eq!(broken(&report), []);
    assert_eq!(report["ok"], false);
    let found = problems(&report);
    assert!(
        found.contains(&format!("{id} sequence 2")) && found.contains("tree head 1 "),
        "{report}"
    );
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);
    // Deleting the tree heads too does not help: the witness file still has them.
    run(&mut db, "DELETE FROM tree_heads WHERE $1 <> ''", &id).await;
    let report = verify(&app, &admin).await;
    assert!(
        problems(&report).contains("tree head 1 of the witness file is missing from the database"),
        "{report}"
    );
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);
}

/// Edits the second event of the stream `id` (its actor) and recomputes the stream's chain
/// from there with the database's own function, so every chain verifies.
async fn rewrite_actor(db: &mut PgConnection, id: &str) {
    run(db, "UPDATE events SET metadata = '{\"actor_id\":\"00000000-0000-0000-0000-000000000000\"}'::json WHERE aggregate_id = $1 AND sequence = 2", id).await;
    for sequence in 2..=3 {
        sqlx::query(
            "UPDATE events e SET prev_hash = p.hash,
                 hash = custos_event_hash(p.hash, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at)
             FROM events p WHERE p.aggregate_id = e.aggregate_id AND p.sequence = e.sequence - 1
               AND e.aggregate_id = $1 AND e.sequence = $2",
        )
        .bind(id)
        .bind(sequence)
        .execute(&mut *db)
        .await
        .unwrap();
    }
}

async fn newest_head(app: &TestApp, admin: &Session) -> Value {
    app.graphql(
        Some(&admin.token),
        "{ checkpoints(last: 1) { number treeSize } }",
        json!({}),
    )
    .await
    .ok()
    .body["data"]["checkpoints"][0]
        .clone()
}

/// What verification says is wrong with the Merkle log and the tree heads, as one text.
fn problems(report: &Value) -> String {
    report["checkpointProblems"].to_string()
}

/// Writes something new and asks for a checkpoint: the error code it answers.
async fn checkpoint_after_a_write(app: &TestApp, admin: &Session) -> Option<String> {
    app.create_employee(
        &admin.token,
        json!({ "firstName": "New", "lastName": "Event" }),
    )
    .await;
    let answer = app
        .graphql(
            Some(&admin.token),
            "mutation { createCheckpoint { number } }",
            json!({}),
        )
        .await;
    answer.code().map(str::to_owned)
}

#[tokio::test]
async fn history_rewritten_before_an_automatic_checkpoint_is_still_found() {
    // The schedule signs a tree head soon after every write.
    let app = TestApp::spawn_with(|config| {
        config.checkpoint_interval = Some(std::time::Duration::from_millis(200));
    })
    .await;
    let (admin, id) = store(&app, "automatic").await;
    let mut db = superuser(&app, &admin).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    // Wait until a signed head covers every event so far (the one to be forged included).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let first = loop {
        let head = newest_head(&app, &admin).await;
        if head["treeSize"].as_i64() == Some(events) {
            break head;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic checkpoint: {head}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    rewrite_actor(&mut db, &id).await;
    // Something new for the schedule to sign over the rewritten history.
    app.create_employee(
        &admin.token,
        json!({ "firstName": "After", "lastName": "Forgery" }),
    )
    .await;
    let second = loop {
        let head = newest_head(&app, &admin).await;
        if head["number"].as_i64() > first["number"].as_i64() {
            break head;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second checkpoint: {head}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(second["treeSize"].as_i64() > first["treeSize"].as_i64());
    // It extended the tree it had signed: the forged event is not in it, and verification
    // recomputes both heads from the events and names the forged one.
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], false, "{report}");
    let found = problems(&report);
    assert!(found.contains(&format!("{id} sequence 2")), "{report}");
    for head in [&first, &second] {
        assert!(
            found.contains(&format!("tree head {} (size", head["number"])),
            "{report}"
        );
    }
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);
}

#[tokio::test]
async fn a_truncated_tail_a_rewritten_frontier_and_a_replayed_tree_head_are_found() {
    let app = TestApp::spawn().await;

    // The tail truncated: the newest events removed (a whole stream with them, so no chain
    // shows it).
    let (admin, _) = store(&app, "truncated").await;
    checkpoint(&app, &admin).await;
    let mut db = superuser(&app, &admin).await;
    run(&mut db, "DELETE FROM events WHERE global_position = (SELECT max(global_position) FROM events) AND $1 <> ''", "x").await;
    let report = verify(&app, &admin).await;
    assert_eq!(broken(&report), []);
    assert!(
        problems(&report).contains("events were removed"),
        "{report}"
    );
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);

    // The stored frontier rewritten (to hide a rewrite from the next checkpoint): verification
    // names it, and the checkpoint signs nothing and raises the alarm.
    let (admin, _) = store(&app, "frontier").await;
    checkpoint(&app, &admin).await;
    let mut db = superuser(&app, &admin).await;
    run(
        &mut db,
        "UPDATE tree_heads SET frontier = sha256(frontier) || frontier WHERE $1 <> ''",
        "x",
    )
    .await;
    let report = verify(&app, &admin).await;
    assert!(
        problems(&report).contains("tree head 1: its stored frontier was changed"),
        "{report}"
    );
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);
    assert_eq!(
        checkpoint_after_a_write(&app, &admin).await.as_deref(),
        Some("CONFLICT")
    );
    assert_eq!(
        newest_head(&app, &admin).await["number"],
        1,
        "nothing was signed"
    );
    let report = verify(&app, &admin).await;
    assert!(problems(&report).contains("integrity alarm"), "{report}");
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health
        .text()
        .await
        .unwrap()
        .contains("integrity alarm: 1 organisation"));

    // An old tree head replayed: history cut back to the first head and every newer head
    // removed, so the database agrees with itself — but not with the witness file.
    let (admin, _) = store(&app, "replayed").await;
    let first = checkpoint(&app, &admin).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Later", "lastName": "Event" }),
    )
    .await;
    let second = checkpoint(&app, &admin).await;
    assert_eq!(second["number"], 2);
    let mut db = superuser(&app, &admin).await;
    let size = first["treeSize"].as_i64().unwrap();
    for sql in [
        "DELETE FROM events WHERE global_position IN (SELECT global_position FROM merkle_leaves WHERE leaf_index >= $1)",
        "DELETE FROM merkle_leaves WHERE leaf_index >= $1",
        "DELETE FROM tree_heads WHERE number > 1 AND $1 > 0",
    ] {
        sqlx::query(sql).bind(size).execute(&mut db).await.unwrap();
    }
    let report = verify(&app, &admin).await;
    let found = problems(&report);
    assert!(
        found.contains("tree head 2 of the witness file is missing from the database")
            && found.contains("events were removed"),
        "{report}"
    );
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);
    assert_eq!(
        checkpoint_after_a_write(&app, &admin).await.as_deref(),
        Some("CONFLICT")
    );
}

const EVENT_PROOF: &str = "query($id: ID!, $sequence: Int!, $size: Int) {
  eventProof(aggregateType: \"record\", aggregateId: $id, sequence: $sequence, treeSize: $size) {
    leafIndex treeSize auditPath
    event { aggregateType aggregateId sequence eventType eventVersion payload metadata recordedAtMicros previousHash hash }
    treeHead { tenantId number treeSize streams createdAt root keyId publicKey signature }
  }
}";

const CONSISTENCY_PROOF: &str = "query($from: Int!, $to: Int) {
  consistencyProof(fromSize: $from, toSize: $to) {
    fromSize toSize path
    fromHead { tenantId number treeSize streams createdAt root keyId publicKey signature }
    toHead { tenantId number treeSize streams createdAt root keyId publicKey signature }
  }
}";

/// Runs `custos verify-proof` on a saved file.
async fn verify_proof(key: &str, proof: &Value) -> bool {
    use clap::Parser;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), proof.to_string()).unwrap();
    let path = file.path().display().to_string();
    custos_api::Cli::try_parse_from(["custos", "verify-proof", "--public-key", key, &path])
        .unwrap()
        .run()
        .await
        .unwrap()
}

#[tokio::test]
async fn proofs_verify_offline_and_fail_for_an_altered_event_or_another_key() {
    let app = TestApp::spawn().await;
    let (admin, id) = store(&app, "proofs").await;
    let key = app
        .graphql(
            Some(&admin.token),
            "{ organization { auditKey } }",
            json!({}),
        )
        .await
        .ok()
        .data("organization.auditKey")
        .as_str()
        .unwrap()
        .to_owned();
    // No tree head yet: asking for a proof signs one.
    let response = app
        .graphql(
            Some(&admin.token),
            EVENT_PROOF,
            json!({ "id": id, "sequence": 2 }),
        )
        .await
        .ok();
    let proof = response.body.clone();
    assert_eq!(proof["data"]["eventProof"]["treeHead"]["number"], 1);
    assert_eq!(
        proof["data"]["eventProof"]["treeHead"]["publicKey"],
        key.as_str()
    );
    // The saved response, as it came, checks out offline; so does the proof alone.
    assert!(verify_proof(&key, &proof).await);
    assert!(verify_proof(&key, &proof["data"]["eventProof"]).await);
    let check = |p: &Value| custos_api::testing::check_file(&p.to_string(), &key);
    assert!(check(&proof).unwrap().starts_with("OK: record/"));

    // An altered event, a wrong leaf, another key, a forged root, a cut path: each fails,
    // naming the check.
    let mut altered = proof.clone();
    altered["data"]["eventProof"]["event"]["metadata"] =
        json!("{\"actor_id\":\"00000000-0000-0000-0000-000000000000\"}");
    assert!(check(&altered)
        .unwrap_err()
        .contains("does not match its hash"));
    assert!(!verify_proof(&key, &altered).await);
    let mut rehashed = altered.clone();
    rehashed["data"]["eventProof"]["event"]["hash"] = json!("00".repeat(32));
    assert!(check(&rehashed).is_err());
    let mut moved = proof.clone();
    moved["data"]["eventProof"]["leafIndex"] = json!(0);
    assert!(check(&moved).unwrap_err().contains("audit path"));
    let other_key = hex::encode([0x11u8; 32]);
    let wrong = custos_api::testing::check_file(&proof.to_string(), &other_key);
    assert!(wrong.is_err(), "{wrong:?}");
    assert!(!verify_proof(&other_key, &proof).await);
    let mut forged = proof.clone();
    forged["data"]["eventProof"]["treeHead"]["root"] = json!("ab".repeat(32));
    assert!(check(&forged).unwrap_err().contains("signature"));
    let mut cut = proof.clone();
    cut["data"]["eventProof"]["auditPath"]
        .as_array_mut()
        .unwrap()
        .pop();
    assert!(check(&cut).is_err());
    assert!(check(&json!({ "data": { "me": {} } }))
        .unwrap_err()
        .contains("neither"));
    assert!(custos_api::testing::check_file("not json", &key)
        .unwrap_err()
        .contains("not JSON"));
    assert!(custos_api::testing::check_file(&proof.to_string(), "xyz")
        .unwrap_err()
        .contains("public key"));

    // A second head; the event's proof in either; the first head is a prefix of the second.
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Third", "lastName": "Link" }),
    )
    .await;
    let second = checkpoint(&app, &admin).await;
    let first_size = proof["data"]["eventProof"]["treeSize"].as_i64().unwrap();
    let second_size = second["treeSize"].as_i64().unwrap();
    for size in [json!(first_size), json!(second_size), Value::Null] {
        let proof = app
            .graphql(
                Some(&admin.token),
                EVENT_PROOF,
                json!({ "id": id, "sequence": 1, "size": size }),
            )
            .await
            .ok()
            .body;
        assert!(verify_proof(&key, &proof).await, "{proof}");
    }
    let consistency = app
        .graphql(
            Some(&admin.token),
            CONSISTENCY_PROOF,
            json!({ "from": first_size }),
        )
        .await
        .ok()
        .body;
    assert_eq!(
        consistency["data"]["consistencyProof"]["toSize"],
        second_size
    );
    assert!(verify_proof(&key, &consistency).await, "{consistency}");
    let mut rewritten = consistency.clone();
    rewritten["data"]["consistencyProof"]["path"][0] = json!("cd".repeat(32));
    assert!(
        custos_api::testing::check_file(&rewritten.to_string(), &key)
            .unwrap_err()
            .contains("prefix")
    );

    // Bad input: typed errors.
    let missing = app
        .graphql(
            Some(&admin.token),
            EVENT_PROOF,
            json!({ "id": id, "sequence": 99 }),
        )
        .await;
    assert_eq!(missing.code(), Some("NOT_FOUND"));
    for (variables, field) in [
        (json!({ "from": 1, "to": second_size + 1 }), "toSize"),
        (json!({ "from": 0 }), "fromSize"),
        (json!({ "from": second_size, "to": first_size }), "fromSize"),
        (json!({ "from": 2 }), "fromSize"),
    ] {
        let refused = app
            .graphql(Some(&admin.token), CONSISTENCY_PROOF, variables.clone())
            .await;
        assert_eq!(
            (refused.code(), refused.field()),
            (Some("VALIDATION"), Some(field)),
            "{variables}"
        );
    }
    let refused = app
        .graphql(
            Some(&admin.token),
            EVENT_PROOF,
            json!({ "id": id, "sequence": 1, "size": 2 }),
        )
        .await;
    assert_eq!(
        (refused.code(), refused.field()),
        (Some("VALIDATION"), Some("treeSize"))
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

const KEYS: &str =
    "{ organization { auditKey auditKeys { generation keyId publicKey createdAt handedOverAt } } }";

#[tokio::test]
async fn a_rotated_key_takes_over_at_a_signed_hand_over_that_verification_follows() {
    let app = TestApp::spawn().await;
    let (admin, id) = store(&app, "rotation").await;
    let keys = app.graphql(Some(&admin.token), KEYS, json!({})).await.ok();
    let first_key = keys
        .data("organization.auditKey")
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        keys.data("organization.auditKeys")[0]["publicKey"],
        first_key.as_str()
    );
    let first = checkpoint(&app, &admin).await;

    // Rotated from the command line, beside the running service.
    assert!(
        app.custos(&["tenant", "rotate-audit-key", "--slug", &admin.slug])
            .await
    );
    let keys = app.graphql(Some(&admin.token), KEYS, json!({})).await.ok();
    let generations = keys
        .data("organization.auditKeys")
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(generations.len(), 2, "{generations:?}");
    let new_key = keys
        .data("organization.auditKey")
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_key, first_key);
    assert_eq!(generations[1]["publicKey"], new_key.as_str());
    assert_eq!(generations[1]["generation"], 1);
    let handover_number = first["number"].as_i64().unwrap() + 1;
    assert_eq!(generations[1]["handedOverAt"], handover_number);
    // The hand-over: signed by the first key over the same tree, naming the new key.
    let heads = app
        .graphql(
            Some(&admin.token),
            "{ checkpoints(last: 5) { number treeSize publicKey nextPublicKey nextKeyId } }",
            json!({}),
        )
        .await
        .ok();
    let handover = heads
        .data("checkpoints")
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(handover["number"], handover_number);
    assert_eq!(handover["treeSize"], first["treeSize"]);
    assert_eq!(handover["publicKey"], first_key.as_str());
    assert_eq!(handover["nextPublicKey"], new_key.as_str());
    assert_eq!(handover["nextKeyId"], generations[1]["keyId"]);

    // A key slipped into the table (as the service's own role can) is never used: which key
    // is in force follows from the signed hand-overs alone.
    let stranger = "05".repeat(32);
    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query(
        "INSERT INTO audit_keys (generation, public_key, sealed_secret) VALUES (2, decode($1, 'hex'), '\\x00')",
    )
    .bind(&stranger)
    .execute(&mut db)
    .await
    .unwrap();
    let keys = app.graphql(Some(&admin.token), KEYS, json!({})).await.ok();
    assert_eq!(keys.data("organization.auditKey"), &json!(new_key));
    assert_eq!(
        keys.data("organization.auditKeys")
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Later heads are signed by the new key; everything verifies, through the API and the CLI.
    app.create_employee(
        &admin.token,
        json!({ "firstName": "After", "lastName": "Rotation" }),
    )
    .await;
    let after = checkpoint(&app, &admin).await;
    assert_eq!(after["publicKey"], new_key.as_str());
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], true, "{report}");
    assert!(app.custos(&["verify", "--tenant", &admin.slug]).await);

    // A proof against the new head carries the hand-over: it checks out offline with the
    // first key (through the hand-over) and with the new key, and not with the first key alone.
    let proof = app
        .graphql(
            Some(&admin.token),
            &EVENT_PROOF.replace(
                "treeHead {",
                "keyHandovers { tenantId number treeSize streams createdAt root keyId publicKey signature nextPublicKey }\n    treeHead {",
            ),
            json!({ "id": id, "sequence": 1 }),
        )
        .await
        .ok()
        .body;
    assert_eq!(
        proof["data"]["eventProof"]["keyHandovers"][0]["number"],
        handover_number
    );
    assert!(verify_proof(&first_key, &proof).await, "{proof}");
    assert!(verify_proof(&new_key, &proof).await, "{proof}");
    let mut without = proof.clone();
    without["data"]["eventProof"]["keyHandovers"] = json!([]);
    assert!(!verify_proof(&first_key, &without).await);
    // A proof against the first tree size (its newest head there is the hand-over itself,
    // signed by the first key) checks with the new key too: the hand-over leads back to it.
    // (A hand-over's signature covers `nextPublicKey`: the tree head must carry it.)
    let old = app
        .graphql(
            Some(&admin.token),
            &EVENT_PROOF
                .replace("publicKey signature }", "publicKey signature nextPublicKey }")
                .replace(
                    "treeHead {",
                    "keyHandovers { tenantId number treeSize streams createdAt root keyId publicKey signature nextPublicKey }\n    treeHead {",
                ),
            json!({ "id": id, "sequence": 1, "size": first["treeSize"] }),
        )
        .await
        .ok()
        .body;
    assert_eq!(
        old["data"]["eventProof"]["treeHead"]["publicKey"],
        first_key.as_str()
    );
    assert!(verify_proof(&new_key, &old).await, "{old}");
    assert!(verify_proof(&first_key, &old).await, "{old}");

    // The hand-over made to name another key (a forger's): its signature no longer holds, the
    // heads after it are signed by a key no valid hand-over named, and verification says so.
    let mut db = superuser(&app, &admin).await;
    run(
        &mut db,
        "UPDATE tree_heads SET next_public_key = sha256(next_public_key) WHERE next_public_key IS NOT NULL AND $1 <> ''",
        "x",
    )
    .await;
    let report = verify(&app, &admin).await;
    assert_eq!(report["ok"], false);
    assert!(problems(&report).contains("key in force"), "{report}");
    assert!(!app.custos(&["verify", "--tenant", &admin.slug]).await);
}

#[tokio::test]
async fn read_models_rebuilt_from_history_match_and_a_forged_row_is_reported() {
    let app = TestApp::spawn().await;
    let (admin, id) = store(&app, "models").await;
    let args = ["verify", "--tenant", admin.slug.as_str(), "--read-models"];
    let verify_models = || app.custos(&args);
    assert!(verify_models().await);

    // A read model changed behind the projector's back: found.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query("UPDATE records SET archived = true WHERE id = $1::uuid")
        .bind(&id)
        .execute(&mut db)
        .await
        .unwrap();
    assert!(!verify_models().await);
    sqlx::query("UPDATE records SET archived = false WHERE id = $1::uuid")
        .bind(&id)
        .execute(&mut db)
        .await
        .unwrap();
    assert!(verify_models().await);
    // A row of the audit log removed: found.
    sqlx::query("DELETE FROM audit_log WHERE global_position = (SELECT max(global_position) FROM audit_log)")
        .execute(&mut db)
        .await
        .unwrap();
    assert!(!verify_models().await);
}
