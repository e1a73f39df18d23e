//! Data-subject rights: the consent register, a person's trail, retention runs and the breach
//! register — through the GraphQL API, against the real database.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use chrono::{Duration, Utc};
use custos_tests::{pg_dump, slug, Session, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CONSENTS: &str = "query($id: ID!) { consents(subjectId: $id) {
    current { purpose legalBasis expiresOn withdrawnAt holds }
    history { eventType purpose legalBasis evidence expiresOn note actor { kind } } } }";
const GIVE: &str =
    "mutation($id: ID!, $i: ConsentInput!) { giveConsent(subjectId: $id, input: $i) {
    current { purpose legalBasis expiresOn withdrawnAt holds } } }";
const WITHDRAW: &str = "mutation($id: ID!, $p: String!, $n: String) { withdrawConsent(subjectId: $id, purpose: $p, note: $n) {
    current { purpose withdrawnAt holds } } }";

async fn create(app: &TestApp, admin: &Session, mutation: &str, input: Value) -> String {
    let response = app
        .graphql(
            Some(&admin.token),
            &format!(
                "mutation($i: Create{mutation}Input!) {{ create{mutation}(input: $i) {{ id }} }}"
            ),
            json!({ "i": input }),
        )
        .await
        .ok();
    response
        .data(&format!("create{mutation}.id"))
        .as_str()
        .unwrap()
        .to_owned()
}

async fn consents(app: &TestApp, session: &Session, id: &str) -> Value {
    app.graphql(Some(&session.token), CONSENTS, json!({ "id": id }))
        .await
        .ok()
        .body["data"]["consents"]
        .clone()
}

#[tokio::test]
async fn the_consent_register_records_each_basis_and_its_withdrawal() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("consent")).await;
    let contact = create(
        &app,
        &admin,
        "Contact",
        json!({ "firstName": "Cosima", "lastName": "Vell" }),
    )
    .await;
    let next_year = (Utc::now() + Duration::days(365)).date_naive().to_string();

    let given = app
        .graphql(
            Some(&admin.token),
            GIVE,
            json!({ "id": contact, "i": { "purpose": "newsletter", "legalBasis": "CONSENT",
                    "evidence": "Signed form ticket QX-4471", "expiresOn": next_year } }),
        )
        .await
        .ok();
    assert_eq!(
        given.data("giveConsent.current"),
        &json!([{ "purpose": "newsletter", "legalBasis": "CONSENT", "expiresOn": next_year, "withdrawnAt": null, "holds": true }])
    );
    app.graphql(
        Some(&admin.token),
        GIVE,
        json!({ "id": contact, "i": { "purpose": "invoicing", "legalBasis": "CONTRACT" } }),
    )
    .await
    .ok();

    // Bad input: a clear error, nothing recorded.
    for (input, field) in [
        (
            json!({ "purpose": "News Letter", "legalBasis": "CONSENT" }),
            Some("purpose"),
        ),
        (
            json!({ "purpose": "newsletter", "legalBasis": "CONSENT", "expiresOn": "2001-01-01" }),
            Some("expiresOn"),
        ),
        (
            json!({ "purpose": "newsletter", "legalBasis": "GUT_FEELING" }),
            None,
        ),
    ] {
        let refused = app
            .graphql(
                Some(&admin.token),
                GIVE,
                json!({ "id": contact, "i": input }),
            )
            .await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{}", refused.body);
        if field.is_some() {
            assert_eq!(refused.field(), field);
        }
    }
    let refused = app
        .graphql(
            Some(&admin.token),
            WITHDRAW,
            json!({ "id": contact, "p": "marketing" }),
        )
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"));
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let forbidden = app
        .graphql(
            Some(&reader.token),
            GIVE,
            json!({ "id": contact, "i": { "purpose": "newsletter", "legalBasis": "CONSENT" } }),
        )
        .await;
    assert_eq!(forbidden.code(), Some("FORBIDDEN"));
    // A reader sees the register.
    let register = consents(&app, &reader, &contact).await;
    assert_eq!(register["history"].as_array().unwrap().len(), 2);

    let withdrawn = app
        .graphql(
            Some(&admin.token),
            WITHDRAW,
            json!({ "id": contact, "p": "newsletter", "n": "Asked by email" }),
        )
        .await
        .ok();
    let current = withdrawn
        .data("withdrawConsent.current")
        .as_array()
        .unwrap()
        .clone();
    let newsletter = current
        .iter()
        .find(|c| c["purpose"] == "newsletter")
        .unwrap();
    assert!(newsletter["withdrawnAt"].is_string());
    assert_eq!(newsletter["holds"], false);
    let register = consents(&app, &admin, &contact).await;
    let types: Vec<(&str, &str)> = register["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap(),
                e["purpose"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("ConsentGiven", "newsletter"),
            ("ConsentGiven", "invoicing"),
            ("ConsentWithdrawn", "newsletter")
        ]
    );
    assert_eq!(
        register["history"][0]["evidence"],
        "Signed form ticket QX-4471"
    );
    assert_eq!(register["history"][0]["actor"]["kind"], "USER");
    assert_eq!(register["history"][2]["note"], "Asked by email");

    // An applicant's talent-pool date is their talent-pool consent, both ways.
    let applicant = create(
        &app,
        &admin,
        "Applicant",
        json!({ "firstName": "Talia", "lastName": "Pool", "talentPoolUntil": next_year }),
    )
    .await;
    let register = consents(&app, &admin, &applicant).await;
    assert_eq!(
        register["current"],
        json!([{ "purpose": "talent_pool", "legalBasis": "CONSENT", "expiresOn": next_year, "withdrawnAt": null, "holds": true }])
    );
    let without_date = app
        .graphql(
            Some(&admin.token),
            GIVE,
            json!({ "id": applicant, "i": { "purpose": "talent_pool", "legalBasis": "CONSENT" } }),
        )
        .await;
    assert_eq!(without_date.field(), Some("expiresOn"));
    app.graphql(
        Some(&admin.token),
        WITHDRAW,
        json!({ "id": applicant, "p": "talent_pool" }),
    )
    .await
    .ok();
    let read = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { applicant(id: $id) { talentPoolUntil } }",
            json!({ "id": applicant }),
        )
        .await
        .ok();
    assert_eq!(read.data("applicant.talentPoolUntil"), &Value::Null);
    let register = consents(&app, &admin, &applicant).await;
    assert_eq!(register["current"][0]["holds"], false);
    assert_eq!(
        register["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ConsentGiven", "ConsentWithdrawn"]
    );

    // Erasing the person shreds their register with them: nothing of it stays readable.
    let version = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { contact(id: $id) { version } }",
            json!({ "id": contact }),
        )
        .await
        .ok()
        .data("contact.version")
        .as_i64()
        .unwrap();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!, $v: Int!) { eraseRecord(id: $id, expectedVersion: $v, ground: CONSENT_WITHDRAWN) { id } }",
        json!({ "id": contact, "v": version }),
    )
    .await
    .ok();
    let register = consents(&app, &admin, &contact).await;
    assert_eq!(register["current"], json!([]));
    assert_eq!(register["history"], json!([]));
    let erased_again = app
        .graphql(
            Some(&admin.token),
            GIVE,
            json!({ "id": contact, "i": { "purpose": "newsletter", "legalBasis": "CONSENT" } }),
        )
        .await;
    assert_eq!(erased_again.code(), Some("VALIDATION"));
    let dump = pg_dump(&app.tenant_database(admin.tenant_id).await).to_lowercase();
    for value in ["qx-4471", "asked by email", "cosima"] {
        assert!(
            !dump.contains(value),
            "`{value}` is readable in the database"
        );
    }
}

/// Unpacks a ZIP into its files.
fn unzip(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a ZIP archive");
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        files.insert(file.name().to_owned(), content);
    }
    files
}

async fn get(app: &TestApp, url: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{url}", app.address))
        .await
        .expect("the service answers")
}

const TRAIL: &str = "mutation($ids: [ID!], $email: String) { subjectTrail(subjectIds: $ids, email: $email) { exportId recordIds downloadUrl } }";

#[tokio::test]
async fn a_subject_trail_holds_every_fact_about_the_person_and_none_about_anyone_else() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("trail")).await;
    // The person: a contact, then an applicant, hired as an employee.
    let contact = create(
        &app,
        &admin,
        "Contact",
        json!({ "firstName": "Philippa", "lastName": "Quenneville", "emails": ["philippa.q@trail.example"],
                "phones": ["+44 20 7946 0555"], "company": "Marzipan Works", "notes": "Met at Lisbon fair" }),
    )
    .await;
    let applicant = create(
        &app,
        &admin,
        "Applicant",
        json!({ "firstName": "Philippa", "lastName": "Quenneville", "email": "philippa.q@trail.example",
                "position": "Cartographer", "stage": "OFFER", "notes": "Portfolio of sea charts" }),
    )
    .await;
    let hired = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { hireApplicant(id: $id, input: { department: \"Atlas Team\" }) { employee { id } } }",
            json!({ "id": applicant }),
        )
        .await
        .ok();
    let employee = hired
        .data("hireApplicant.employee.id")
        .as_str()
        .unwrap()
        .to_owned();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { updateContact(id: $id, input: { company: \"Nougat Holdings\" }) { id } }",
        json!({ "id": contact }),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        GIVE,
        json!({ "id": contact, "i": { "purpose": "newsletter", "legalBasis": "CONSENT", "evidence": "Web form 8812" } }),
    )
    .await
    .ok();
    // Someone else, in the same datasheets.
    let other = create(
        &app,
        &admin,
        "Contact",
        json!({ "firstName": "Bartholomew", "lastName": "Oyelaran", "emails": ["bart.o@trail.example"], "notes": "Prefers Zanzibar" }),
    )
    .await;
    // An export containing both, and a recorded read of the person's contact record.
    app.graphql(
        Some(&admin.token),
        "mutation { exportRecords(datasheet: CONTACTS, format: CSV) { count } }",
        json!({}),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        "query($id: ID!) { contact(id: $id) { id } }",
        json!({ "id": contact }),
    )
    .await
    .ok();

    // Only someone who may export every datasheet involved may take the trail.
    let contacts_exporter = app
        .graphql(
            Some(&admin.token),
            "mutation { createRole(input: { name: \"Contact exporter\", grants: [{ datasheet: CONTACTS, permission: EXPORT }, { datasheet: CONTACTS, permission: READ }] }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createRole.id")
        .as_str()
        .unwrap()
        .to_owned();
    let partial = app.user_with_roles(&admin, &[contacts_exporter]).await;
    let refused = app
        .graphql(
            Some(&partial.token),
            TRAIL,
            json!({ "email": "Philippa.Q@trail.example" }),
        )
        .await;
    // Records in datasheets the caller cannot read stay unseen (as in findSubject): the trail
    // covers the contact only.
    assert_eq!(
        refused.ok().data("subjectTrail.recordIds"),
        &json!([contact.clone()])
    );
    // One who can read them but not export them is refused.
    let reader_exporter = app
        .graphql(
            Some(&admin.token),
            "mutation { createRole(input: { name: \"Reads all, exports contacts\", grants: [{ datasheet: CONTACTS, permission: EXPORT }, { datasheet: CONTACTS, permission: READ }, { datasheet: EMPLOYEES, permission: READ }, { datasheet: APPLICANTS, permission: READ }] }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createRole.id")
        .as_str()
        .unwrap()
        .to_owned();
    let reader = app.user_with_roles(&admin, &[reader_exporter]).await;
    let refused = app
        .graphql(
            Some(&reader.token),
            TRAIL,
            json!({ "email": "Philippa.Q@trail.example" }),
        )
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    let unknown = app
        .graphql(
            Some(&admin.token),
            TRAIL,
            json!({ "ids": [uuid::Uuid::now_v7().to_string()] }),
        )
        .await;
    assert_eq!(unknown.code(), Some("NOT_FOUND"));
    let nobody = app
        .graphql(
            Some(&admin.token),
            TRAIL,
            json!({ "email": "nobody@trail.example" }),
        )
        .await;
    assert_eq!(nobody.code(), Some("VALIDATION"));
    // Seen on a list page: a read of everyone on it.
    app.graphql(
        Some(&admin.token),
        "{ contacts(first: 50) { edges { node { id } } } }",
        json!({}),
    )
    .await
    .ok();

    let started = app
        .graphql(
            Some(&admin.token),
            TRAIL,
            json!({ "email": "Philippa.Q@trail.example" }),
        )
        .await
        .ok();
    let covered: BTreeSet<String> = started
        .data("subjectTrail.recordIds")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        covered,
        BTreeSet::from([contact.clone(), applicant.clone(), employee.clone()])
    );
    let url = started
        .data("subjectTrail.downloadUrl")
        .as_str()
        .unwrap()
        .to_owned();
    let response = get(&app, &url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let files = unzip(&response.bytes().await.unwrap());
    assert_eq!(get(&app, &url).await.status(), 404, "the link works once");

    // The manifest checks every file, offline.
    let manifest = String::from_utf8(files["manifest.sha256"].clone()).unwrap();
    let mut listed = BTreeSet::new();
    for line in manifest.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        assert_eq!(hash, hex::encode(Sha256::digest(&files[name])), "{name}");
        listed.insert(name.to_owned());
    }
    let names: BTreeSet<String> = files
        .keys()
        .filter(|n| *n != "manifest.sha256")
        .cloned()
        .collect();
    assert_eq!(listed, names);
    assert!(names.contains("subject.json") && names.contains("events.csv"));

    // Every seeded fact about the person, and nothing about anyone else.
    let all = files
        .values()
        .map(|bytes| String::from_utf8_lossy(bytes).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for fact in [
        "Philippa",
        "Quenneville",
        "philippa.q@trail.example",
        "+442079460555",
        "Marzipan Works",
        "Nougat Holdings",
        "Met at Lisbon fair",
        "Cartographer",
        "Portfolio of sea charts",
        "Atlas Team",
        "Web form 8812",
        "newsletter",
    ] {
        assert!(all.contains(fact), "the trail lacks `{fact}`");
    }
    for foreign in [
        "Bartholomew",
        "Oyelaran",
        "bart.o@trail.example",
        "Zanzibar",
        other.as_str(),
    ] {
        assert!(
            !all.contains(foreign),
            "the trail holds `{foreign}` about someone else"
        );
    }
    let document: Value = serde_json::from_slice(&files["subject.json"]).unwrap();
    let records = document["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    let contact_trail = records
        .iter()
        .find(|r| r["id"] == contact.as_str())
        .unwrap();
    let changes: Vec<(&str, &str)> = contact_trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["changes"].as_array().unwrap().iter())
        .filter(|c| c["field"] == "company")
        .map(|c| {
            (
                c["before"].as_str().unwrap_or(""),
                c["after"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("", "Marzipan Works"),
            ("Marzipan Works", "Nougat Holdings")
        ]
    );
    // Both time axes: each change of values says the day it takes effect beside its time.
    for event in contact_trail["events"].as_array().unwrap() {
        let recorded = event["recordedAt"].as_str().unwrap();
        if matches!(
            event["type"].as_str(),
            Some("RecordCreated" | "RecordUpdated")
        ) {
            assert_eq!(event["effectiveFrom"], recorded[..10], "{event}");
        }
    }
    let events_csv = String::from_utf8(files["events.csv"].clone()).unwrap();
    assert!(
        events_csv.starts_with("record_id,sequence,event_type,recorded_at,effective_from,"),
        "{events_csv}"
    );
    let accesses: Vec<(&str, &str)> = contact_trail["accesses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["access"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    assert!(
        accesses.contains(&("export", "RecordsExported")),
        "{accesses:?}"
    );
    assert!(accesses.contains(&("read", "record")), "{accesses:?}");
    assert!(accesses.contains(&("read", "list")), "{accesses:?}");
    assert_eq!(contact_trail["consents"][0]["purpose"], "newsletter");

    // The trail itself is recorded, with the manifest's hash.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let recorded: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_type = 'data_export' AND aggregate_id = $1",
    )
    .bind(started.data("subjectTrail.exportId").as_str().unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        recorded["SubjectTrailExported"]["manifest_sha256"],
        hex::encode(Sha256::digest(manifest.as_bytes()))
    );
    assert_eq!(
        recorded["SubjectTrailExported"]["record_ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

const POLICY: &str =
    "mutation($i: RetentionPolicyInput!) { defineRetentionPolicy(input: $i) { id name } }";

#[tokio::test]
async fn a_retention_run_erases_exactly_the_records_past_their_period() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("retain")).await;
    let next_year = (Utc::now() + Duration::days(365)).date_naive();
    let yesterday = (Utc::now() - Duration::days(1)).date_naive();
    for input in [
        json!({ "datasheet": "CONTACTS", "name": "Archived contacts", "trigger": "ARCHIVED", "periodDays": 0 }),
        json!({ "datasheet": "APPLICANTS", "name": "Closed applications", "trigger": "STAGE_REACHED",
                "stages": ["REJECTED", "WITHDRAWN"], "periodDays": 0, "unlessConsent": "talent_pool" }),
        json!({ "datasheet": "EMPLOYEES", "name": "Former employees", "trigger": "EMPLOYMENT_ENDED", "periodDays": 30 }),
    ] {
        app.graphql(Some(&admin.token), POLICY, json!({ "i": input }))
            .await
            .ok();
    }
    let invalid = app
        .graphql(
            Some(&admin.token),
            POLICY,
            json!({ "i": { "datasheet": "CONTACTS", "name": "Nonsense", "trigger": "STAGE_REACHED", "stages": ["REJECTED"], "periodDays": 1 } }),
        )
        .await;
    assert_eq!(
        (invalid.code(), invalid.field()),
        (Some("VALIDATION"), Some("trigger"))
    );
    // Every problem of the policy at once.
    let several = app
        .graphql(
            Some(&admin.token),
            POLICY,
            json!({ "i": { "datasheet": "CONTACTS", "name": " ", "trigger": "STAGE_REACHED", "stages": ["REJECTED"],
                           "periodDays": 40000, "unlessConsent": "Not A Purpose" } }),
        )
        .await;
    assert_eq!(
        several.invalid_fields(),
        ["name", "periodDays", "trigger", "unlessConsent"],
        "{}",
        several.body
    );

    let contact = |first: &'static str| {
        create(
            &app,
            &admin,
            "Contact",
            json!({ "firstName": first, "lastName": "Retained" }),
        )
    };
    let archived_contact = contact("Archived").await;
    let active_contact = contact("Active").await;
    let restricted_contact = contact("Restricted").await;
    for id in [&archived_contact, &restricted_contact] {
        app.graphql(
            Some(&admin.token),
            "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    }
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { restrictRecord(id: $id, reason: LEGAL_CLAIMS) { id } }",
        json!({ "id": restricted_contact }),
    )
    .await
    .ok();
    let applicant = |first: &'static str, stage: &'static str, pool: Option<String>| {
        create(
            &app,
            &admin,
            "Applicant",
            json!({ "firstName": first, "lastName": "Retained", "stage": stage, "talentPoolUntil": pool }),
        )
    };
    let rejected = applicant("Rejected", "REJECTED", None).await;
    let pooled = applicant("Pooled", "REJECTED", Some(next_year.to_string())).await;
    let unpooled = applicant("Unpooled", "WITHDRAWN", Some(next_year.to_string())).await;
    let interviewing = applicant("Interviewing", "INTERVIEW", None).await;
    app.graphql(
        Some(&admin.token),
        WITHDRAW,
        json!({ "id": unpooled, "p": "talent_pool" }),
    )
    .await
    .ok();
    let employee = |first: &'static str, end: Option<String>| {
        create(
            &app,
            &admin,
            "Employee",
            json!({ "firstName": first, "lastName": "Retained", "startDate": "2015-01-01", "endDate": end }),
        )
    };
    let long_gone = employee("Longgone", Some("2020-01-01".to_owned())).await;
    let just_left = employee("Justleft", Some(yesterday.to_string())).await;
    let staying = employee("Staying", None).await;

    let expected: BTreeSet<String> = [&archived_contact, &rejected, &unpooled, &long_gone]
        .into_iter()
        .cloned()
        .collect();
    let schedule = |until: Option<String>| {
        let app = &app;
        let admin = &admin;
        async move {
            app.graphql(
                Some(&admin.token),
                "query($u: DateTime) { retentionSchedule(until: $u, first: 1000) { recordId policyName erasesAt } }",
                json!({ "u": until }),
            )
            .await
            .ok()
            .data("retentionSchedule")
            .as_array()
            .unwrap()
            .clone()
        }
    };
    let ids = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .map(|r| r["recordId"].as_str().unwrap().to_owned())
            .collect()
    };
    // The dry run: what a run now would erase, and what later.
    assert_eq!(ids(&schedule(None).await), expected);
    let later = schedule(Some((Utc::now() + Duration::days(400)).to_rfc3339())).await;
    let mut eventually = expected.clone();
    eventually.extend([pooled.clone(), just_left.clone()]);
    assert_eq!(ids(&later), eventually);
    let due = |id: &str| {
        later.iter().find(|r| r["recordId"] == id).unwrap()["erasesAt"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        due(&pooled).starts_with(&(next_year + Duration::days(1)).to_string()),
        "{}",
        due(&pooled)
    );
    assert!(
        due(&just_left).starts_with(&(yesterday + Duration::days(31)).to_string()),
        "{}",
        due(&just_left)
    );

    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let forbidden = app
        .graphql(
            Some(&reader.token),
            "mutation { runRetention { ran } }",
            json!({}),
        )
        .await;
    assert_eq!(forbidden.code(), Some("FORBIDDEN"));

    let run = app
        .graphql(
            Some(&admin.token),
            "mutation { runRetention { ran policies { policyId erasedIds skipped } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(run.data("runRetention.ran"), true);
    let erased: BTreeSet<String> = run
        .data("runRetention.policies")
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["erasedIds"].as_array().unwrap().iter())
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(erased, expected);
    for id in [
        &archived_contact,
        &active_contact,
        &restricted_contact,
        &rejected,
        &pooled,
        &unpooled,
        &interviewing,
        &long_gone,
        &just_left,
        &staying,
    ] {
        let node = app
            .graphql(Some(&admin.token), "query($id: ID!) { recordHistory(id: $id) { edges { node { eventType actor { kind name } } } } }", json!({ "id": id }))
            .await
            .ok();
        let edges = node.data("recordHistory.edges").as_array().unwrap();
        let last = &edges.last().unwrap()["node"];
        if expected.contains(id) {
            assert_eq!(last["eventType"], "RecordErased", "{id}");
            assert_eq!(last["actor"]["kind"], "RETENTION_POLICY");
        } else {
            assert_ne!(last["eventType"], "RecordErased", "{id} was erased");
        }
    }
    let policies = app
        .graphql(
            Some(&admin.token),
            "{ retentionPolicies { name erasedTotal lastRunAt } }",
            json!({}),
        )
        .await
        .ok();
    let totals: BTreeMap<String, i64> = policies
        .data("retentionPolicies")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["erasedTotal"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        totals,
        BTreeMap::from([
            ("Archived contacts".to_owned(), 1),
            ("Closed applications".to_owned(), 2),
            ("Former employees".to_owned(), 1)
        ])
    );
    // A second run finds nothing more to do.
    let again = app
        .graphql(
            Some(&admin.token),
            "mutation { runRetention { policies { erasedIds } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(again.body.to_string().contains("\"erasedIds\":[]"));
    assert!(!again.body.to_string().contains("\"erasedIds\":[\""));
}

const INCIDENT: &str = "mutation($i: IncidentInput!) { recordIncident(input: $i) {
    id notificationDeadline overdue affectedSubjects { recordId datasheet erased reasons } } }";

#[tokio::test]
async fn the_breach_register_finds_the_affected_people_and_tracks_the_deadline() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("breach")).await;
    let start = Utc::now() - Duration::minutes(1);
    let read_one = create(&app, &admin, "Contact", json!({ "firstName": "Ingrid", "lastName": "Breachley", "emails": ["ingrid.b@breach.example"] })).await;
    let untouched = create(
        &app,
        &admin,
        "Contact",
        json!({ "firstName": "Ottilie", "lastName": "Safeworth" }),
    )
    .await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Elsewhere", "lastName": "Employee" }),
        )
        .await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let thief = app.user_with_roles(&admin, &[viewer]).await;
    app.graphql(
        Some(&thief.token),
        "query($id: ID!) { contact(id: $id) { firstName } }",
        json!({ "id": read_one }),
    )
    .await
    .ok();
    let now = Utc::now() + Duration::seconds(1);

    // The whole datasheet in the window.
    let held = app
        .graphql(
            Some(&admin.token),
            INCIDENT,
            json!({ "i": { "detectedAt": Utc::now().to_rfc3339(), "description": "Backup disk lost",
                    "datasheets": ["CONTACTS"], "windowFrom": start.to_rfc3339(), "windowTo": now.to_rfc3339() } }),
        )
        .await
        .ok();
    let affected: BTreeSet<String> = held
        .data("recordIncident.affectedSubjects")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["recordId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        affected,
        BTreeSet::from([read_one.clone(), untouched.clone()])
    );
    assert!(!affected.contains(employee["id"].as_str().unwrap()));
    assert_eq!(held.data("recordIncident.overdue"), false);

    // Through one account: only what it reached.
    let stolen = app
        .graphql(
            Some(&admin.token),
            INCIDENT,
            json!({ "i": { "detectedAt": (Utc::now() - Duration::days(4)).to_rfc3339(), "description": "Stolen session",
                    "datasheets": ["CONTACTS", "EMPLOYEES"], "windowFrom": start.to_rfc3339(), "windowTo": now.to_rfc3339(),
                    "actorIds": [thief.user_id.to_string()] } }),
        )
        .await
        .ok();
    assert_eq!(
        stolen.data("recordIncident.affectedSubjects"),
        &json!([{ "recordId": read_one, "datasheet": "CONTACTS", "erased": false, "reasons": ["READ"] }])
    );
    // Detected four days ago and not notified: past the 72 hours.
    assert_eq!(stolen.data("recordIncident.overdue"), true);

    // A leaked session that only listed employees: everyone on the page it saw.
    let viewer = app.role_id(&admin, "Viewer").await;
    let lister = app.user_with_roles(&admin, &[viewer]).await;
    app.graphql(
        Some(&lister.token),
        "{ employees(first: 10) { edges { node { lastName } } } }",
        json!({}),
    )
    .await
    .ok();
    let listed = app
        .graphql(
            Some(&admin.token),
            INCIDENT,
            json!({ "i": { "detectedAt": Utc::now().to_rfc3339(), "description": "Leaked session",
                    "datasheets": ["CONTACTS", "EMPLOYEES"], "windowFrom": start.to_rfc3339(),
                    "windowTo": (Utc::now() + Duration::seconds(1)).to_rfc3339(),
                    "actorIds": [lister.user_id.to_string()] } }),
        )
        .await
        .ok();
    assert_eq!(
        listed.data("recordIncident.affectedSubjects"),
        &json!([{ "recordId": employee["id"], "datasheet": "EMPLOYEES", "erased": false, "reasons": ["READ"] }])
    );
    let id = stolen
        .data("recordIncident.id")
        .as_str()
        .unwrap()
        .to_owned();
    let early = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!, $at: DateTime!) { recordAuthorityNotified(id: $id, at: $at) { overdue } }",
            json!({ "id": id, "at": (Utc::now() - Duration::days(5)).to_rfc3339() }),
        )
        .await;
    assert_eq!(early.code(), Some("VALIDATION"));
    let notified = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!, $at: DateTime!) { recordAuthorityNotified(id: $id, at: $at, reference: \"DPA-2026-77\") { overdue authorityReference } }",
            json!({ "id": id, "at": Utc::now().to_rfc3339() }),
        )
        .await
        .ok();
    assert_eq!(notified.data("recordAuthorityNotified.overdue"), false);
    for bad in [
        json!({ "detectedAt": (Utc::now() + Duration::days(1)).to_rfc3339(), "description": "x", "datasheets": ["CONTACTS"], "windowFrom": start.to_rfc3339(), "windowTo": now.to_rfc3339() }),
        json!({ "detectedAt": Utc::now().to_rfc3339(), "description": "x", "datasheets": [], "windowFrom": start.to_rfc3339(), "windowTo": now.to_rfc3339() }),
        json!({ "detectedAt": Utc::now().to_rfc3339(), "description": "x", "datasheets": ["CONTACTS"], "windowFrom": now.to_rfc3339(), "windowTo": start.to_rfc3339() }),
        // Beyond what the database stores: refused, never a stuck read model.
        json!({ "detectedAt": Utc::now().to_rfc3339(), "description": "x", "datasheets": ["CONTACTS"], "windowFrom": "0000-01-01T00:00:00Z", "windowTo": start.to_rfc3339() }),
    ] {
        let refused = app
            .graphql(Some(&admin.token), INCIDENT, json!({ "i": bad }))
            .await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{}", refused.body);
    }
    // Every problem of the report at once.
    let several = app
        .graphql(
            Some(&admin.token),
            INCIDENT,
            json!({ "i": { "detectedAt": (Utc::now() + Duration::days(1)).to_rfc3339(), "description": " ",
                           "datasheets": [], "windowFrom": now.to_rfc3339(), "windowTo": start.to_rfc3339() } }),
        )
        .await;
    assert_eq!(
        several.invalid_fields(),
        ["datasheets", "description", "detectedAt", "windowTo"],
        "{}",
        several.body
    );
    let forbidden = app
        .graphql(Some(&thief.token), "{ incidents { id } }", json!({}))
        .await;
    assert_eq!(forbidden.code(), Some("FORBIDDEN"));

    // The notification list: who to tell and how to reach them; recorded as an export.
    let list = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { exportNotificationList(id: $id) { exportId count downloadUrl } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(list.data("exportNotificationList.count"), 1);
    let csv = get(
        &app,
        list.data("exportNotificationList.downloadUrl")
            .as_str()
            .unwrap(),
    )
    .await
    .text()
    .await
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "record_id,datasheet,status,first_name,last_name,emails,phones,address"
    );
    assert_eq!(lines.len(), 2);
    assert!(lines[1].contains("Ingrid") && lines[1].contains("ingrid.b@breach.example"));
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'data_export' AND event_type = 'NotificationListExported'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn the_scheduler_applies_retention_on_its_own_and_runs_never_collide() {
    let app = TestApp::spawn_with(|config| {
        config.retention_interval = Some(std::time::Duration::from_millis(300));
    })
    .await;
    let admin = app.sign_up(&slug("schedule")).await;
    let mut archived = BTreeSet::new();
    for n in 0..6 {
        let id = create(
            &app,
            &admin,
            "Contact",
            json!({ "firstName": format!("Sched{n}"), "lastName": "Uled" }),
        )
        .await;
        app.graphql(
            Some(&admin.token),
            "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await
        .ok();
        archived.insert(id);
    }
    let kept = create(
        &app,
        &admin,
        "Contact",
        json!({ "firstName": "Kept", "lastName": "Uled" }),
    )
    .await;
    // Two runs at once, then the scheduler: each record is erased once, by whichever got it.
    let run = "mutation { runRetention { ran policies { erasedIds skipped } } }";
    app.graphql(
        Some(&admin.token),
        POLICY,
        json!({ "i": { "datasheet": "CONTACTS", "name": "Archived contacts", "trigger": "ARCHIVED", "periodDays": 0 } }),
    )
    .await
    .ok();
    let (first, second) = tokio::join!(
        app.graphql(Some(&admin.token), run, json!({})),
        app.graphql(Some(&admin.token), run, json!({}))
    );
    let mut erased = Vec::new();
    for response in [first.ok(), second.ok()] {
        for policy in response.data("runRetention.policies").as_array().unwrap() {
            erased.extend(
                policy["erasedIds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().to_owned()),
            );
        }
    }
    let unique: BTreeSet<String> = erased.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        erased.len(),
        "a record erased twice: {erased:?}"
    );
    assert!(unique.is_subset(&archived));

    // Whatever the two runs left, the scheduler erases within a few of its runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed = app
            .graphql(Some(&admin.token), "{ contacts(includeArchived: true, first: 100) { edges { node { id erasedAt } } } }", json!({}))
            .await
            .ok();
        let erased_now: BTreeSet<String> = listed
            .data("contacts.edges")
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["node"]["erasedAt"].is_string())
            .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
            .collect();
        if erased_now == archived {
            break;
        }
        assert!(!erased_now.contains(&kept), "an active contact was erased");
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler did not erase {archived:?}: {erased_now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let history = app
        .graphql(
            Some(&admin.token),
            "{ retentionPolicies { erasedTotal lastRunAt } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(history.data("retentionPolicies.0.erasedTotal"), 6);
}
