//! Reports: counts grouped by a field today (with filters) and as of any past moment, from the
//! history; headcount by employment dates; the applicant pipeline.

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

const REPORT: &str = "query($d: Datasheet!, $g: String!, $f: RecordsFilter, $at: DateTime, $a: Boolean) {
    report(datasheet: $d, groupBy: $g, filter: $f, asOf: $at, includeArchived: $a) { total asOf groups { value count } } }";

async fn report(app: &TestApp, session: &Session, variables: Value) -> Response {
    app.graphql(Some(&session.token), REPORT, variables).await
}

fn groups(response: &Response, path: &str) -> Value {
    response.data(&format!("{path}.groups")).clone()
}

#[tokio::test]
async fn today_s_counts_follow_filters_and_as_of_counts_replay_the_history() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("reports")).await;
    let mut ids = Vec::new();
    for (last, department) in [
        ("A", "Sales"),
        ("B", "Sales"),
        ("C", "Engineering"),
        ("D", "Sales"),
    ] {
        let employee = app
            .create_employee(
                &admin.token,
                json!({ "firstName": "F", "lastName": last, "department": department }),
            )
            .await;
        ids.push(employee["id"].as_str().unwrap().to_owned());
    }
    let before = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Then: one moves to Engineering, one is archived, one joins without a department.
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Engineering\" }) { id } }",
        json!({ "id": ids[0] }),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
        json!({ "id": ids[1] }),
    )
    .await
    .ok();
    app.create_employee(&admin.token, json!({ "firstName": "F", "lastName": "E" }))
        .await;

    let today = report(&app, &admin, json!({ "d": "EMPLOYEES", "g": "department" }))
        .await
        .ok();
    assert_eq!(
        groups(&today, "report"),
        json!([{ "value": "Engineering", "count": 2 }, { "value": "Sales", "count": 1 }, { "value": null, "count": 1 }])
    );
    assert_eq!(today.data("report.total"), &json!(4));
    assert!(today.data("report.asOf").is_null());
    let with_archived = report(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "g": "department", "a": true }),
    )
    .await
    .ok();
    assert_eq!(with_archived.data("report.total"), &json!(5));
    let filtered = report(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "g": "department", "f": { "employees": { "lastName": { "in": ["A", "C"] } } } }),
    )
    .await
    .ok();
    assert_eq!(
        groups(&filtered, "report"),
        json!([{ "value": "Engineering", "count": 2 }])
    );
    // Everyone a report counted is recorded as read by it (a group's value can single a
    // person out): the two it filtered to, not the others.
    assert_eq!(
        last_report_read(&app, &admin).await,
        sorted(&[&ids[0], &ids[2]])
    );

    let then = report(
        &app,
        &admin,
        json!({ "d": "EMPLOYEES", "g": "department", "at": before.to_rfc3339() }),
    )
    .await
    .ok();
    assert_eq!(
        groups(&then, "report"),
        json!([{ "value": "Sales", "count": 3 }, { "value": "Engineering", "count": 1 }]),
        "as it was, not as it is"
    );
    assert_eq!(then.data("report.total"), &json!(4));
    let counted: Vec<&String> = ids.iter().collect();
    assert_eq!(last_report_read(&app, &admin).await, sorted(&counted));
}

/// The records the newest report recorded as read.
async fn last_report_read(app: &TestApp, admin: &Session) -> Vec<String> {
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT record_ids FROM list_reads WHERE via = 'report' ORDER BY read_at DESC LIMIT 1",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let mut ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn headcount_counts_who_was_employed_and_the_pipeline_as_it_stood() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("headcount")).await;
    for (last, start, end) in [
        ("Left", Some("2020-01-01"), Some("2021-06-30")),
        ("Current", Some("2020-01-01"), None),
        ("Unknown start", None, None),
        ("Future", Some("2999-01-01"), None),
    ] {
        app.create_employee(
            &admin.token,
            json!({ "firstName": "F", "lastName": last, "department": "Ops", "startDate": start, "endDate": end }),
        )
        .await;
    }
    let now = chrono::Utc::now().to_rfc3339();
    let headcount = app
        .graphql(
            Some(&admin.token),
            "query($at: DateTime!) { headcount(asOf: $at) { total groups { value count } } }",
            json!({ "at": now }),
        )
        .await
        .ok();
    assert_eq!(headcount.data("headcount.total"), &json!(2));
    assert_eq!(
        headcount.data("headcount.groups"),
        &json!([{ "value": "Ops", "count": 2 }])
    );

    let applicant = app
        .graphql(
            Some(&admin.token),
            "mutation { a: createApplicant(input: { firstName: \"A\", lastName: \"One\" }) { id } b: createApplicant(input: { firstName: \"B\", lastName: \"Two\" }) { id } }",
            json!({}),
        )
        .await
        .ok();
    let before = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { updateApplicant(id: $id, input: { stage: SCREENING }) { stage } }",
        json!({ "id": applicant.data("a.id") }),
    )
    .await
    .ok();
    let pipeline = |at: Option<String>| {
        let app = &app;
        let admin = &admin;
        async move {
            report(
                app,
                admin,
                json!({ "d": "APPLICANTS", "g": "stage", "at": at }),
            )
            .await
            .ok()
            .data("report.groups")
            .clone()
        }
    };
    assert_eq!(
        pipeline(Some(before.to_rfc3339())).await,
        json!([{ "value": "applied", "count": 2 }])
    );
    assert_eq!(
        pipeline(None).await,
        json!([{ "value": "applied", "count": 1 }, { "value": "screening", "count": 1 }])
    );
}

#[tokio::test]
async fn bad_report_requests_are_refused() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("reports-bad")).await;
    let future = (chrono::Utc::now() + chrono::TimeDelta::days(1)).to_rfc3339();
    for (variables, field) in [
        (json!({ "d": "EMPLOYEES", "g": "notes" }), "groupBy"),
        (json!({ "d": "EMPLOYEES", "g": "salary" }), "groupBy"),
        (json!({ "d": "EMPLOYEES", "g": "createdAt" }), "groupBy"),
        (
            json!({ "d": "EMPLOYEES", "g": "department", "at": future }),
            "asOf",
        ),
        (
            json!({ "d": "EMPLOYEES", "g": "department", "at": "2020-01-01T00:00:00Z", "f": { "employees": { "lastName": { "eq": "A" } } } }),
            "asOf",
        ),
        (
            json!({ "d": "EMPLOYEES", "g": "department", "f": { "contacts": { "lastName": { "eq": "A" } } } }),
            "filter",
        ),
    ] {
        let response = report(&app, &admin, variables.clone()).await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{variables}: {:?}",
            response.body
        );
        assert_eq!(response.field(), Some(field), "{variables}");
    }
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let refused = report(&app, &reader, json!({ "d": "CONTACTS", "g": "company" })).await;
    assert_eq!(
        refused.code(),
        Some("FORBIDDEN"),
        "reading is not reporting"
    );
}

#[tokio::test]
async fn a_report_records_as_read_the_people_of_small_groups_only() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("smallgroups")).await;
    let mut crowd = Vec::new();
    for n in 0..10 {
        let employee = app
            .create_employee(
                &admin.token,
                json!({ "firstName": "Crowd", "lastName": format!("M{n}"), "department": "Big" }),
            )
            .await;
        crowd.push(employee["id"].as_str().unwrap().to_owned());
    }
    let solo = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Only", "lastName": "One", "department": "Solo" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let today = report(&app, &admin, json!({ "d": "EMPLOYEES", "g": "department" }))
        .await
        .ok();
    assert_eq!(
        groups(&today, "report"),
        json!([{ "value": "Big", "count": 10 }, { "value": "Solo", "count": 1 }])
    );
    // Ten people in one department are not singled out by its count; the only one in another is.
    assert_eq!(last_report_read(&app, &admin).await, sorted(&[&solo]));
    // Grouped by last name, every group is one person: all of them.
    report(&app, &admin, json!({ "d": "EMPLOYEES", "g": "lastName" }))
        .await
        .ok();
    let mut everyone: Vec<&String> = crowd.iter().collect();
    everyone.push(&solo);
    assert_eq!(last_report_read(&app, &admin).await, sorted(&everyone));
}
