//! CSV import: a column mapping, a dry run that reports every bad row, all-or-nothing mode,
//! and rows that become ordinary creation events of the importing user.

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

const IMPORT: &str = "mutation($d: Datasheet!, $csv: String!, $m: [ColumnMappingInput!]!, $dry: Boolean, $all: Boolean) {
    importRecords(datasheet: $d, csv: $csv, mapping: $m, dryRun: $dry, allOrNothing: $all) {
        dryRun rows created createdIds errors { row field message } } }";

async fn import(app: &TestApp, session: &Session, variables: Value) -> Response {
    app.graphql(Some(&session.token), IMPORT, variables).await
}

fn mapping(pairs: &[(&str, &str)]) -> Value {
    json!(pairs
        .iter()
        .map(|(c, f)| json!({ "column": c, "field": f }))
        .collect::<Vec<_>>())
}

const FILE: &str = "Given,Family,Mail,Started,Team,Extra\n\
Ada,Lovelace,ada@example.org,1843-07-01,Analytics,ignored\n\
Grace,,grace@example.org,1943-12-01,Navy,ignored\n\
Alan,Turing,not-an-email,1936-05-28,Bletchley,ignored\n\
\"Hopper, Jr.\",Smith,,2020-02-30,Ops,ignored\n\
Linus,Torvalds,,,,ignored\n";

fn employee_mapping() -> Value {
    mapping(&[
        ("Given", "firstName"),
        ("Family", "lastName"),
        ("Mail", "email"),
        ("Started", "startDate"),
        ("Team", "department"),
    ])
}

#[tokio::test]
async fn a_dry_run_and_all_or_nothing_report_every_bad_row_and_write_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("import")).await;
    // A last row with three problems: every one of them is reported.
    let file = format!("{FILE}Mary,,not-an-email,1999-99-99,Ops,ignored\n");
    for (dry, all) in [(true, false), (false, true)] {
        let result = import(
            &app,
            &admin,
            json!({ "d": "EMPLOYEES", "csv": file, "m": employee_mapping(), "dry": dry, "all": all }),
        )
        .await
        .ok();
        assert_eq!(result.data("importRecords.rows"), &json!(6));
        assert_eq!(result.data("importRecords.created"), &json!(0));
        let mut errors: Vec<(i64, String)> = result
            .data("importRecords.errors")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["row"].as_i64().unwrap(),
                    e["field"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        errors.sort();
        assert_eq!(
            errors,
            [
                (2, "lastName".to_owned()),
                (3, "email".to_owned()),
                (4, "startDate".to_owned()),
                (6, "email".to_owned()),
                (6, "lastName".to_owned()),
                (6, "startDate".to_owned())
            ]
        );
        assert_eq!(app.employee_count(&admin).await, 0, "nothing written");
    }
}

#[tokio::test]
async fn valid_rows_become_creation_events_of_the_importer() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("import-write")).await;
    let hr = app.role_id(&admin, "HR manager").await;
    let importer = app.user_with_roles(&admin, &[hr]).await;
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let analyzed =
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'records'";
    let before: bool = sqlx::query_scalar(analyzed)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(
        !before,
        "nothing analyzed the new organisation's records by hand"
    );
    let result = import(
        &app,
        &importer,
        json!({ "d": "EMPLOYEES", "csv": FILE, "m": employee_mapping(), "all": false }),
    )
    .await
    .ok();
    assert_eq!(result.data("importRecords.created"), &json!(2));
    assert_eq!(
        result
            .data("importRecords.errors")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(app.employee_count(&importer).await, 2);
    let listed = app
        .graphql(
            Some(&importer.token),
            "{ employees(orderBy: [{ lastName: ASC }]) { edges { node { firstName lastName email startDate department createdBy { id } } } } }",
            json!({}),
        )
        .await
        .ok();
    let first = listed.data("employees.edges.0.node");
    assert_eq!(first["lastName"], "Lovelace");
    assert_eq!(first["startDate"], "1843-07-01");
    assert_eq!(
        first["createdBy"]["id"],
        json!(importer.user_id.to_string())
    );
    assert!(
        listed.data("employees.edges.1.node.email").is_null(),
        "an empty cell is no value"
    );

    // The service refreshed the list table's statistics itself (a manual ANALYZE, which the
    // tenant's own role could not run), not waiting for autovacuum.
    let after: bool = sqlx::query_scalar(analyzed)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(after, "the import refreshed the statistics of `records`");
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, metadata::jsonb FROM events WHERE aggregate_type = 'record' ORDER BY global_position",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(events.len(), 2);
    for (event_type, metadata) in events {
        assert_eq!(event_type, "RecordCreated");
        assert_eq!(metadata["actor_id"], json!(importer.user_id.to_string()));
    }
}

#[tokio::test]
async fn contacts_import_lists_and_custom_fields() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("import-contacts")).await;
    app.graphql(
        Some(&admin.token),
        "mutation { addCustomField(datasheet: CONTACTS, input: { key: \"rating\", label: \"Rating\", type: NUMBER }) { key } }",
        json!({}),
    )
    .await
    .ok();
    let file = "first,last,mails,tags,rating\nLin,Supplier,lin@parts.example; sales@parts.example,supplier; emea,4.5\nMo,Buyer,,,high\n";
    let result = import(
        &app,
        &admin,
        json!({ "d": "CONTACTS", "csv": file, "all": false, "m": mapping(&[
            ("first", "firstName"), ("last", "lastName"), ("mails", "emails"), ("tags", "tags"), ("rating", "custom.rating"),
        ]) }),
    )
    .await
    .ok();
    assert_eq!(result.data("importRecords.created"), &json!(1));
    assert_eq!(
        result.data("importRecords.errors.0.field"),
        &json!("custom.rating")
    );
    let contact = app
        .graphql(
            Some(&admin.token),
            "{ contacts { edges { node { emails tags customFields { key value } } } } }",
            json!({}),
        )
        .await
        .ok();
    let node = contact.data("contacts.edges.0.node");
    assert_eq!(
        node["emails"],
        json!(["lin@parts.example", "sales@parts.example"])
    );
    assert_eq!(node["tags"], json!(["supplier", "emea"]));
    assert_eq!(
        node["customFields"],
        json!([{ "key": "rating", "value": 4.5 }])
    );
}

#[tokio::test]
async fn a_bad_mapping_or_file_is_refused_before_any_row() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("import-bad")).await;
    for (csv, m, field) in [
        ("a,b\n1,2\n", mapping(&[("c", "firstName")]), "mapping"),
        ("a,b\n1,2\n", mapping(&[("a", "salary")]), "mapping"),
        (
            "a,b\n1,2\n",
            mapping(&[("a", "firstName"), ("b", "firstName")]),
            "mapping",
        ),
        ("a,b\n1,2\n", json!([]), "mapping"),
    ] {
        let response = import(
            &app,
            &admin,
            json!({ "d": "EMPLOYEES", "csv": csv, "m": m }),
        )
        .await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{m}: {:?}",
            response.body
        );
        assert_eq!(response.field(), Some(field));
    }
    // A row with the wrong number of cells is a row error, not a crash.
    let ragged = import(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "csv": "a,b\nAda,Lovelace\nonly-one\n", "m": mapping(&[("a", "firstName"), ("b", "lastName")]), "all": false }),
    )
    .await
    .ok();
    assert_eq!(ragged.data("importRecords.created"), &json!(1));
    assert_eq!(ragged.data("importRecords.errors.0.row"), &json!(2));
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let refused = import(
        &app,
        &reader,
        json!({ "d": "EMPLOYEES", "csv": "a\n1\n", "m": mapping(&[("a", "firstName")]) }),
    )
    .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
}
