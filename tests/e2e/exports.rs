//! Exports: CSV that a spreadsheet opens correctly and JSON, streamed through a one-time link;
//! every export recorded as an event with who, what and which records.

use custos_tests::{logs, slug, Session, TestApp};
use serde_json::{json, Value};

const EXPORT: &str = "mutation($d: Datasheet!, $fmt: ExportFormatKind!, $f: RecordsFilter, $bom: Boolean!) {
    exportRecords(datasheet: $d, format: $fmt, filter: $f, bom: $bom) { exportId count downloadUrl expiresAt } }";

async fn download(app: &TestApp, url: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{url}", app.address))
        .await
        .expect("the service answers")
}

async fn export(app: &TestApp, session: &Session, variables: Value) -> custos_tests::Response {
    app.graphql(Some(&session.token), EXPORT, variables).await
}

async fn seed(app: &TestApp, admin: &Session) {
    for (last, department, notes) in [
        ("Ames", "Sales", Some("=HYPERLINK(\"http://evil.example\")")),
        ("Baker, Jr.", "Sales", Some("line one\nline \"two\"")),
        ("Carter", "Engineering", None),
    ] {
        app.create_employee(
            &admin.token,
            json!({ "firstName": "Zoë", "lastName": last, "department": department, "notes": notes }),
        )
        .await;
    }
}

#[tokio::test]
async fn csv_exports_open_correctly_in_a_spreadsheet_and_are_recorded() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("export")).await;
    seed(&app, &admin).await;
    let hr = app.role_id(&admin, "HR manager").await;
    let manager = app.user_with_roles(&admin, &[hr]).await;

    let started = export(
        &app,
        &manager,
        json!({ "d": "EMPLOYEES", "fmt": "CSV", "bom": true, "f": { "employees": { "department": { "eq": "Sales" } } } }),
    )
    .await
    .ok();
    assert_eq!(started.data("exportRecords.count"), &json!(2));
    let url = started
        .data("exportRecords.downloadUrl")
        .as_str()
        .unwrap()
        .to_owned();
    let response = download(&app, &url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert!(response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"employees-"));
    let body = response.bytes().await.unwrap();
    assert!(
        body.starts_with("\u{feff}".as_bytes()),
        "the byte order mark leads"
    );

    let mut reader = csv::Reader::from_reader(&body[3..]);
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[0], "id");
    assert!(headers.iter().any(|h| h == "lastName"));
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][column("firstName")], "Zoë", "UTF-8 survives");
    assert_eq!(
        &rows[0][column("notes")],
        "'=HYPERLINK(\"http://evil.example\")",
        "formulas are defused"
    );
    assert_eq!(
        &rows[1][column("lastName")],
        "Baker, Jr.",
        "commas are quoted"
    );
    assert_eq!(
        &rows[1][column("notes")],
        "line one\nline \"two\"",
        "line breaks and quotes survive"
    );

    assert_eq!(
        download(&app, &url).await.status(),
        404,
        "a link works once"
    );
    assert!(
        !logs().contains(&url[9..]),
        "the download token is not logged"
    );

    // The export is an event: who, which datasheet, the arguments, which records.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let (payload, metadata): (Value, Value) = sqlx::query_as(
        "SELECT payload::jsonb, metadata::jsonb FROM events WHERE aggregate_type = 'data_export'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let event = &payload["RecordsExported"];
    assert_eq!(event["datasheet"], "employees");
    assert_eq!(event["format"], "csv");
    assert_eq!(event["count"], 2);
    assert_eq!(event["record_ids"].as_array().unwrap().len(), 2);
    // The value typed into the filter is withheld: it could name a person.
    assert_eq!(
        event["filter"]["filter"],
        json!({ "employees": { "department": { "eq": "[withheld]" } } })
    );
    assert_eq!(metadata["actor_id"], json!(manager.user_id.to_string()));
}

#[tokio::test]
async fn json_exports_stream_every_record_with_custom_fields() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("export-json")).await;
    app.graphql(
        Some(&admin.token),
        "mutation { addCustomField(datasheet: EMPLOYEES, input: { key: \"badge\", label: \"Badge\", type: NUMBER }) { key } }",
        json!({}),
    )
    .await
    .ok();
    // More than one streaming batch.
    for i in 0..1_050 {
        if i % 350 == 0 {
            app.graphql(
                Some(&admin.token),
                "mutation($b: JSON) { createEmployee(input: { firstName: \"Badge\", lastName: \"Holder\", customFields: [{ key: \"badge\", value: $b }] }) { id } }",
                json!({ "b": i }),
            )
            .await
            .ok();
        } else {
            app.create_employee(
                &admin.token,
                json!({ "firstName": "F", "lastName": format!("E{i:04}") }),
            )
            .await;
        }
    }
    let started = export(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "fmt": "JSON", "bom": false }),
    )
    .await
    .ok();
    let url = started
        .data("exportRecords.downloadUrl")
        .as_str()
        .unwrap()
        .to_owned();
    let response = download(&app, &url).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    let records: Vec<Value> = response.json().await.expect("a JSON array");
    assert_eq!(records.len(), 1_050);
    let holder = records.iter().find(|r| r["lastName"] == "Holder").unwrap();
    assert_eq!(holder["custom"]["badge"], json!(0.0));
    assert_eq!(holder["datasheet"], "employees");

    let empty = export(
        &app,
        &admin,
        json!({ "d": "CONTACTS", "fmt": "JSON", "bom": false }),
    )
    .await
    .ok();
    assert_eq!(empty.data("exportRecords.count"), &json!(0));
    let nothing: Vec<Value> = download(
        &app,
        empty.data("exportRecords.downloadUrl").as_str().unwrap(),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn exports_carry_each_records_scheduled_changes_with_their_day() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("export-pending")).await;
    let id = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Ida", "lastName": "Pending", "jobTitle": "Engineer", "notes": "Old note" }),
        )
        .await["id"]
        .clone();
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Otto", "lastName": "Settled" }),
    )
    .await;
    let on = (chrono::Utc::now().date_naive() + chrono::Duration::days(40)).to_string();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!, $on: NaiveDate) {
            updateEmployee(id: $id, input: { jobTitle: \"Lead\", notes: null }, effectiveFrom: $on) { version } }",
        json!({ "id": id, "on": on }),
    )
    .await
    .ok();
    let expected = json!([{ "effectiveFrom": on, "version": 2,
                            "changes": { "jobTitle": "Lead", "notes": null } }]);
    let without_time = |mut pending: Value| {
        for change in pending.as_array_mut().unwrap() {
            assert!(change["recordedAt"].is_string(), "{change}");
            change.as_object_mut().unwrap().remove("recordedAt");
        }
        pending
    };

    let url = |started: custos_tests::Response| {
        started
            .data("exportRecords.downloadUrl")
            .as_str()
            .unwrap()
            .to_owned()
    };
    let json_export = export(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "fmt": "JSON", "bom": false }),
    )
    .await
    .ok();
    let records: Vec<Value> = download(&app, &url(json_export))
        .await
        .json()
        .await
        .unwrap();
    let ida = records.iter().find(|r| r["lastName"] == "Pending").unwrap();
    assert_eq!(ida["jobTitle"], "Engineer", "today's value");
    assert_eq!(without_time(ida["pendingChanges"].clone()), expected);
    let otto = records.iter().find(|r| r["lastName"] == "Settled").unwrap();
    assert_eq!(otto["pendingChanges"], json!([]));

    let csv_export = export(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "fmt": "CSV", "bom": false }),
    )
    .await
    .ok();
    let body = download(&app, &url(csv_export))
        .await
        .bytes()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(&body[..]);
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let ida = rows
        .iter()
        .find(|row| &row[column("lastName")] == "Pending")
        .unwrap();
    assert_eq!(&ida[column("jobTitle")], "Engineer");
    let cell: Value = serde_json::from_str(&ida[column("pendingChanges")]).unwrap();
    assert_eq!(without_time(cell), expected);
    let otto = rows
        .iter()
        .find(|row| &row[column("lastName")] == "Settled")
        .unwrap();
    assert_eq!(&otto[column("pendingChanges")], "");
}

#[tokio::test]
async fn exports_need_the_export_permission_and_a_valid_link() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("export-deny")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let refused = export(
        &app,
        &reader,
        json!({ "d": "EMPLOYEES", "fmt": "CSV", "bom": false }),
    )
    .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    let bad_filter = export(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "fmt": "CSV", "bom": false, "f": { "contacts": { "tags": { "eq": "x" } } } }),
    )
    .await;
    assert_eq!(bad_filter.code(), Some("VALIDATION"));
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'data_export'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(recorded, 0, "refused exports record nothing");
    for url in [
        "/exports/nothing",
        "/exports/cud_0_AAAA",
        &format!("/exports/{}", admin.token),
    ] {
        assert_eq!(download(&app, url).await.status(), 404, "{url}");
    }
}
