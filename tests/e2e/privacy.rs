//! Personal data at rest: the personal content of every record's and user's events is sealed
//! with the subject's own key; the log keeps in clear only what auditors need.

use custos_tests::{logs, pg_dump, slug, TestApp};
use serde_json::json;

#[tokio::test]
async fn events_hold_no_personal_value_in_clear() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("sealed")).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Zebedee", "lastName": "Quuxworth", "email": "zebedee.q@sealed.example",
                    "phone": "+44 20 7946 0123", "department": "Cryptography" }),
        )
        .await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { updateEmployee(id: $id, input: { notes: \"Prefers Xylophone music\" }) { id } }",
        json!({ "id": employee["id"] }),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        "mutation { createUser(input: { email: \"yolanda.v@sealed.example\", name: \"Yolanda Vexley\", temporaryPassword: \"temporary passphrase 9\" }) { id } }",
        json!({}),
    )
    .await
    .ok();

    let mut db = app.tenant_admin(admin.tenant_id).await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let log = stored.join("\n").to_lowercase();
    for value in [
        "zebedee",
        "quuxworth",
        "zebedee.q@sealed.example",
        "442079460123",
        "cryptography",
        "xylophone",
        "yolanda",
        "vexley",
        "argon2id",
    ] {
        assert!(
            !log.contains(value),
            "`{value}` is in the event log in clear"
        );
    }
    // What auditors need stays readable: the datasheet and the names of the fields.
    let created: serde_json::Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(employee["id"].as_str().unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(created["clear"]["datasheet"], "employees");
    assert_eq!(
        created["clear"]["fields"],
        json!(["department", "email", "first_name", "last_name", "phone"])
    );
    // One key per subject (the employee, the two users), stored wrapped.
    let keys: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped_key FROM subject_keys ORDER BY created_at")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k.len() == 24 + 32 + 16),
        "nonce, key and tag"
    );

    // Through the service everything reads as before: the read model and the history.
    let history = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { recordHistory(id: $id) { edges { node { changes { field after } } } } }",
            json!({ "id": employee["id"] }),
        )
        .await
        .ok();
    assert!(history.body.to_string().contains("Xylophone"));
}

const ERASE: &str = "mutation($id: ID!, $v: Int!) { eraseRecord(id: $id, expectedVersion: $v, ground: CONSENT_WITHDRAWN, note: \"request 2026-114\") { id version erasedAt } }";

#[tokio::test]
async fn an_erased_record_leaves_no_readable_value_anywhere() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("erase")).await;
    let seeded = [
        "Wilhelmina",
        "Fennimore-Quist",
        "wilhelmina.fq@erase.example",
        "+44 20 7946 0777",
        "Obscure Team",
        "Knows Esperanto fluently",
    ];
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": seeded[0], "lastName": seeded[1], "email": seeded[2], "phone": seeded[3], "department": seeded[4] }),
        )
        .await;
    let id = employee["id"].clone();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!, $n: String) { updateEmployee(id: $id, input: { notes: $n }) { id } }",
        json!({ "id": id, "n": seeded[5] }),
    )
    .await
    .ok();
    let other = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Otto", "lastName": "Unrelated" }),
        )
        .await;

    // Stale or forbidden erasures change nothing.
    let stale = app
        .graphql(Some(&admin.token), ERASE, json!({ "id": id, "v": 1 }))
        .await;
    assert_eq!(stale.code(), Some("CONFLICT"));
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let forbidden = app
        .graphql(Some(&reader.token), ERASE, json!({ "id": id, "v": 2 }))
        .await;
    assert_eq!(forbidden.code(), Some("FORBIDDEN"));

    // Someone searched for the person by name and exported what a filter on their team
    // found: the export is recorded, but not what was typed.
    app.graphql(
        Some(&admin.token),
        "mutation($s: String, $f: RecordsFilter) { exportRecords(datasheet: EMPLOYEES, format: CSV, search: $s, filter: $f) { count } }",
        json!({ "s": seeded[1], "f": { "employees": { "department": { "eq": seeded[4] } } } }),
    )
    .await
    .ok();

    let erased = app
        .graphql(Some(&admin.token), ERASE, json!({ "id": id, "v": 2 }))
        .await
        .ok();
    assert!(erased.data("eraseRecord.erasedAt").is_string());
    assert_eq!(erased.data("eraseRecord.version"), &json!(3));

    // Nothing of the subject is readable in a dump of the tenant database, nor in the logs.
    let dump = pg_dump(&app.tenant_database(admin.tenant_id).await).to_lowercase();
    assert!(
        dump.contains("otto"),
        "the dump has the other records' values"
    );
    let logs = logs().to_lowercase();
    for value in seeded {
        let value = value.to_lowercase();
        assert!(!dump.contains(&value), "`{value}` is in the dump");
        assert!(!logs.contains(&value), "`{value}` is in the logs");
    }
    let phone_digits = "442079460777";
    assert!(!dump.contains(phone_digits));

    // The record stays, blank; the history still loads, with values marked erased.
    let read = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { employee(id: $id) { firstName email department erasedAt } employees { totalCount } all: employees(includeArchived: true) { totalCount } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(read.data("employee.firstName"), &json!(""));
    assert!(read.data("employee.email").is_null());
    assert_eq!(
        read.data("employees.totalCount"),
        &json!(1),
        "erased records leave lists"
    );
    assert_eq!(read.data("all.totalCount"), &json!(2));
    let history = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { recordHistory(id: $id) { edges { node { eventType actor { id } changes { field before after } } } } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    let events = history
        .data("recordHistory.edges")
        .as_array()
        .unwrap()
        .clone();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["node"]["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["RecordCreated", "RecordUpdated", "RecordErased"]);
    assert!(events[0]["node"]["changes"]
        .as_array()
        .unwrap()
        .contains(&json!({ "field": "firstName", "before": null, "after": "[erased]" })));
    assert_eq!(
        events[2]["node"]["actor"]["id"],
        json!(admin.user_id.to_string())
    );
    // The erasure's own entry: who and when (above), which fields held values, the ground and
    // the note.
    let erasure = events[2]["node"]["changes"].as_array().unwrap();
    for expected in [
        json!({ "field": "lastName", "before": "[erased]", "after": null }),
        json!({ "field": "erasureGround", "before": null, "after": "CONSENT_WITHDRAWN" }),
        json!({ "field": "erasureNote", "before": null, "after": "request 2026-114" }),
    ] {
        assert!(erasure.contains(&expected), "{expected} not in {erasure:?}");
    }
    let shown = history.body.to_string().to_lowercase();
    for value in seeded {
        assert!(
            !shown.contains(&value.to_lowercase()),
            "`{value}` in the history"
        );
    }

    // Erasure is final.
    let again = app
        .graphql(Some(&admin.token), ERASE, json!({ "id": id, "v": 3 }))
        .await;
    assert_eq!(again.code(), Some("VALIDATION"));
    let update = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Back\" }) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(update.code(), Some("VALIDATION"));
    app.graphql(
        Some(&admin.token),
        "query($id: ID!) { employee(id: $id) { lastName } }",
        json!({ "id": other["id"] }),
    )
    .await
    .ok();
}

#[tokio::test]
async fn a_restricted_record_is_read_and_exported_but_not_changed() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("restrict")).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Rita", "lastName": "Stricter" }),
        )
        .await;
    let id = employee["id"].clone();
    let hr = app.role_id(&admin, "HR manager").await;
    let manager = app.user_with_roles(&admin, &[hr]).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let restrict = "mutation($id: ID!) { restrictRecord(id: $id, reason: ACCURACY_CONTESTED) { restricted ... on Employee { firstName } } }";
    assert_eq!(
        app.graphql(Some(&reader.token), restrict, json!({ "id": id }))
            .await
            .code(),
        Some("FORBIDDEN")
    );
    let restricted = app
        .graphql(Some(&manager.token), restrict, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(restricted.data("restrictRecord.restricted"), &json!(true));

    let update =
        "mutation($id: ID!) { updateEmployee(id: $id, input: { lastName: \"Changed\" }) { id } }";
    let refused = app
        .graphql(Some(&manager.token), update, json!({ "id": id }))
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"));
    assert_eq!(
        refused.body["errors"][0]["extensions"]["reason"],
        "RESTRICTED"
    );
    let archive = app
        .graphql(
            Some(&manager.token),
            "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        archive.body["errors"][0]["extensions"]["reason"],
        "RESTRICTED"
    );
    let again = app
        .graphql(Some(&manager.token), restrict, json!({ "id": id }))
        .await;
    assert_eq!(again.code(), Some("VALIDATION"));

    // Still read and exported, flagged.
    let read = app
        .graphql(
            Some(&reader.token),
            "query($id: ID!) { employee(id: $id) { lastName restricted restrictionReason } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(read.data("employee.lastName"), &json!("Stricter"));
    assert_eq!(
        read.data("employee.restrictionReason"),
        &json!("ACCURACY_CONTESTED")
    );
    app.graphql(
        Some(&manager.token),
        "mutation { exportRecords(datasheet: EMPLOYEES, format: JSON) { count } }",
        json!({}),
    )
    .await
    .ok();

    app.graphql(
        Some(&manager.token),
        "mutation($id: ID!) { liftRestriction(id: $id) { restricted } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    app.graphql(Some(&manager.token), update, json!({ "id": id }))
        .await
        .ok();
    let history = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { recordHistory(id: $id) { edges { node { eventType } } } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    let types: Vec<&str> = history
        .data("recordHistory.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "RecordCreated",
            "RecordRestricted",
            "RestrictionLifted",
            "RecordUpdated"
        ]
    );
}

#[tokio::test]
async fn an_erased_user_leaves_an_id_and_nothing_of_the_person() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("erase-user")).await;
    let hr = app.role_id(&admin, "HR manager").await;
    let created = app
        .graphql(
            Some(&admin.token),
            "mutation($r: ID!) { createUser(input: { email: \"theodora.k@leaver.example\", name: \"Theodora Kallisti\", temporaryPassword: \"temporary passphrase 3\", roleIds: [$r] }) { id } }",
            json!({ "r": hr }),
        )
        .await
        .ok();
    let id = created.data("createUser.id").clone();
    let token = app
        .login(
            &admin.slug,
            "theodora.k@leaver.example",
            "temporary passphrase 3",
        )
        .await
        .unwrap();
    app.graphql(
        Some(&token),
        "mutation { changePassword(currentPassword: \"temporary passphrase 3\", newPassword: \"her own long passphrase\") { id } }",
        json!({}),
    )
    .await
    .ok();
    // Her work stays attributed to her id.
    let record = app
        .create_employee(&token, json!({ "firstName": "Made", "lastName": "ByHer" }))
        .await;

    let erase = "mutation($id: ID!) { eraseUser(id: $id) { id email name active } }";
    let active = app
        .graphql(Some(&admin.token), erase, json!({ "id": id }))
        .await;
    assert_eq!(active.code(), Some("VALIDATION"), "deactivate first");
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let erased = app
        .graphql(Some(&admin.token), erase, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(erased.data("eraseUser.email"), &json!(""));
    let again = app
        .graphql(Some(&admin.token), erase, json!({ "id": id }))
        .await;
    assert_eq!(again.code(), Some("VALIDATION"));

    let dump = pg_dump(&app.tenant_database(admin.tenant_id).await).to_lowercase();
    let logs = logs().to_lowercase();
    for value in ["theodora", "kallisti", "leaver.example"] {
        assert!(!logs.contains(value), "`{value}` in the logs");
        assert!(!dump.contains(value), "`{value}` in the dump");
    }
    assert!(app
        .login(
            &admin.slug,
            "theodora.k@leaver.example",
            "her own long passphrase"
        )
        .await
        .is_err());
    let history = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!, $u: ID) { employee(id: $id) { createdBy { id email } } loginHistory(userId: $u) { totalCount edges { node { eventType ip userAgent } } } }",
            json!({ "id": record["id"], "u": id }),
        )
        .await
        .ok();
    assert_eq!(history.data("employee.createdBy.id"), &id);
    assert_eq!(history.data("employee.createdBy.email"), &json!(""));
    let entries = history.data("loginHistory.edges").as_array().unwrap();
    assert!(!entries.is_empty(), "logins happened and stay counted");
    assert!(entries
        .iter()
        .all(|e| e["node"]["ip"].is_null() && e["node"]["userAgent"].is_null()));
}

#[tokio::test]
async fn one_person_is_found_across_datasheets_by_a_blind_index() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("find")).await;
    let contact = app
        .graphql(
            Some(&admin.token),
            "mutation { createContact(input: { firstName: \"Pat\", lastName: \"Seeker\", emails: [\"pat.seeker@find.example\", \"pat@work.example\"] }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createContact.id")
        .clone();
    let applicant = app
        .graphql(
            Some(&admin.token),
            "mutation { createApplicant(input: { firstName: \"Pat\", lastName: \"Seeker\", email: \"PAT.SEEKER@find.example\", phone: \"+44 20 7946 0555\" }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createApplicant.id")
        .clone();
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "P", "lastName": "S", "phone": "+44 (20) 7946-0555" }),
        )
        .await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Other", "lastName": "Person", "email": "other@find.example" }),
    )
    .await;

    let find =
        "query($e: String, $p: String) { findSubject(email: $e, phone: $p) { id datasheet } }";
    let ids = |response: custos_tests::Response| -> Vec<serde_json::Value> {
        let response = response.ok();
        let mut ids: Vec<serde_json::Value> = response
            .data("findSubject")
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        ids.sort_by_key(|v| v.to_string());
        ids
    };
    let mut expected = vec![contact.clone(), applicant.clone()];
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(
        ids(app
            .graphql(
                Some(&admin.token),
                find,
                json!({ "e": " Pat.Seeker@FIND.example" })
            )
            .await),
        expected
    );
    let mut by_phone = vec![applicant.clone(), employee["id"].clone()];
    by_phone.sort_by_key(|v| v.to_string());
    assert_eq!(
        ids(app
            .graphql(Some(&admin.token), find, json!({ "p": "+442079460555" }))
            .await),
        by_phone
    );

    // Stored only as digests under a key outside the database: not even an unkeyed hash of
    // the address matches.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let (entries, unkeyed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE digest = sha256('email:pat.seeker@find.example'::bytea)
                                           OR digest = sha256('pat.seeker@find.example'::bytea))
         FROM subject_index",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        entries, 6,
        "two contact emails, applicant email and phone, employee phone, other email"
    );
    assert_eq!(unkeyed, 0);

    // Readers see only datasheets they may read; erased records are not found.
    let hr = app.role_id(&admin, "HR manager").await;
    let manager = app.user_with_roles(&admin, &[hr]).await;
    assert_eq!(
        ids(app
            .graphql(
                Some(&manager.token),
                find,
                json!({ "e": "pat.seeker@find.example" })
            )
            .await),
        vec![applicant.clone()],
        "the HR manager does not read contacts"
    );
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
        json!({ "id": applicant }),
    )
    .await
    .ok();
    assert_eq!(
        ids(app
            .graphql(
                Some(&admin.token),
                find,
                json!({ "e": "pat.seeker@find.example" })
            )
            .await),
        vec![contact]
    );
    for variables in [
        json!({}),
        json!({ "e": "a@b.example", "p": "+4412345678" }),
        json!({ "e": "not-an-email" }),
    ] {
        let refused = app
            .graphql(Some(&admin.token), find, variables.clone())
            .await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{variables}");
    }
}

#[tokio::test]
async fn a_subjects_key_asked_for_by_many_writers_at_once_is_one_key() {
    use secrecy::ExposeSecret;
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("one-key")).await;
    let tenant = app.tenant(session.tenant_id).await;
    let keys = tenant.subject_keys();
    let subject = uuid::Uuid::now_v7();

    // Eight writers find no key cached and each offers a new one in the same moment.
    let asked = [subject];
    let answers = futures::future::join_all((0..8).map(|_| keys.for_writing(&asked))).await;
    let answered: Vec<[u8; 32]> = answers
        .into_iter()
        .map(|answer| *answer.expect("a key")[&subject].expose_secret())
        .collect();
    assert!(
        answered.iter().all(|key| *key == answered[0]),
        "every writer seals with the same key"
    );
    keys.forget_cached();
    let stored = keys.for_reading(&asked).await.unwrap();
    assert_eq!(
        *stored[&subject].expose_secret(),
        answered[0],
        "the key the writers sealed with is the one kept"
    );
    let mut db = app.tenant_admin(session.tenant_id).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_keys WHERE subject_id = $1")
        .bind(subject)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // An erased subject gets no new key, from this instance's cache or from the database.
    assert!(keys.erase(subject).await.unwrap());
    assert!(matches!(
        keys.for_writing(&[subject]).await,
        Err(custos_api::testing::KeyError::Erased)
    ));
    let other = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO subject_keys (subject_id, wrapped_key, erased_at) VALUES ($1, NULL, now())",
    )
    .bind(other)
    .execute(&mut db)
    .await
    .unwrap();
    assert!(matches!(
        keys.for_writing(&[other, uuid::Uuid::now_v7()]).await,
        Err(custos_api::testing::KeyError::Erased)
    ));
}

/// A new record's key is stored by the statement that appends its creation, and only if the
/// subject has no key yet: a subject with a stored key keeps it and its events are sealed with
/// it; writers racing to create one record leave one record and one key that opens it.
#[tokio::test]
async fn a_new_subjects_key_is_stored_with_its_first_events() {
    use custos_domain::record::Fields;
    use custos_domain::{Actor, EventMetadata};
    use secrecy::ExposeSecret;
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("key-with-events")).await;
    let tenant = app.tenant(session.tenant_id).await;
    let keys = tenant.subject_keys();
    let mut db = app.tenant_admin(session.tenant_id).await;
    let create = |first_name: &str| {
        let mut fields = Fields::new();
        fields.insert("first_name".into(), json!(first_name));
        fields.insert("last_name".into(), json!("Keyholder"));
        custos_tests::employee_created(fields)
    };
    let metadata =
        || EventMetadata::new(Actor::User(session.user_id), uuid::Uuid::now_v7()).to_map();

    // Eight writers create the same new record at once.
    let raced = uuid::Uuid::now_v7();
    let raced_id = raced.to_string();
    let outcomes = futures::future::join_all((0..8).map(|i| {
        tenant
            .records
            .execute_with_metadata(&raced_id, create(&format!("Racer{i}")), metadata())
    }))
    .await;
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(wrapped_keys(&mut db, raced).await.len(), 1, "one key");
    keys.forget_cached();
    let events = tenant
        .log
        .stream("record", &raced.to_string())
        .await
        .expect("the creation opens with the stored key");
    assert_eq!(events.len(), 1);
    assert!(events[0].event.payload.to_string().contains("Racer"));

    // A subject whose key is stored (and not cached) keeps that key.
    let kept = uuid::Uuid::now_v7();
    let before = *keys.for_writing(&[kept]).await.unwrap()[&kept].expose_secret();
    let wrapped = wrapped_keys(&mut db, kept).await;
    keys.forget_cached();
    tenant
        .records
        .execute_with_metadata(&kept.to_string(), create("Kept"), metadata())
        .await
        .expect("created");
    assert_eq!(
        wrapped_keys(&mut db, kept).await,
        wrapped,
        "the stored key is kept"
    );
    keys.forget_cached();
    assert_eq!(
        *keys.for_reading(&[kept]).await.unwrap()[&kept].expose_secret(),
        before
    );
    let events = tenant
        .log
        .stream("record", &kept.to_string())
        .await
        .expect("the creation opens with the key that was stored before");
    assert_eq!(events.len(), 1, "the refused offer wrote nothing");
    assert!(events[0].event.payload.to_string().contains("Kept"));
}

/// The wrapped keys stored for `subject` (one, or none).
async fn wrapped_keys(db: &mut sqlx::PgConnection, subject: uuid::Uuid) -> Vec<Vec<u8>> {
    sqlx::query_scalar("SELECT wrapped_key FROM subject_keys WHERE subject_id = $1")
        .bind(subject)
        .fetch_all(db)
        .await
        .unwrap()
}

/// The blind index's batches find the rows they replace through its record index even before
/// the table has statistics (an organisation's first minute, a rebuild), instead of reading
/// the whole table for every batch.
#[tokio::test]
async fn the_blind_index_replaces_digests_through_its_record_index_before_any_statistics() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("blind-plan")).await;
    let mut db = app.tenant_admin(session.tenant_id).await;
    sqlx::query("ALTER TABLE subject_index SET (autovacuum_enabled = false)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO subject_index (digest, record_id, field)
         SELECT sha256(i::text::bytea), gen_random_uuid(), 'email' FROM generate_series(1, 30000) AS i",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let analysed: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables
         WHERE relname = 'subject_index'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(analysed, None, "the table has no statistics");

    // A projector batch of eight records' emails, planned with its values as at any first
    // execution.
    let records: Vec<uuid::Uuid> = (0..8).map(|_| uuid::Uuid::now_v7()).collect();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        custos_api::testing::BLIND_INDEX_FIELDS_REMOVED
    ))
    .bind(&records)
    .bind(vec!["email"; records.len()])
    .fetch_all(&mut db)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("subject_index_record"), "{plan}");
    assert!(!plan.contains("Seq Scan on subject_index"), "{plan}");

    // The projector sends it unnamed, so every execution is planned with its values: a
    // connection that ran it many times holds no prepared statement (whose generic plan
    // PostgreSQL may use from the sixth execution on).
    for _ in 0..8 {
        custos_api::testing::blind_index_remove_fields(
            &mut db,
            &records,
            &vec!["email"; records.len()],
        )
        .await
        .unwrap();
    }
    let prepared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'DELETE FROM subject_index%'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(prepared, 0);
}
