//! Effective-dated records: changes scheduled for a later day, corrections of the past, and
//! questions on both time axes — what was true on a day, and what the system said at a moment.

use chrono::{Duration, NaiveDate, Utc};
use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

const UPDATE: &str = "mutation($id: ID!, $input: UpdateEmployeeInput!, $on: NaiveDate) {
    updateEmployee(id: $id, input: $input, effectiveFrom: $on) {
        version jobTitle department endDate
        pendingChanges { effectiveFrom version changes { field value } } } }";

const CREATE: &str = "mutation($input: CreateEmployeeInput!, $on: NaiveDate) {
    createEmployee(input: $input, effectiveFrom: $on) { id version } }";

const REPORT: &str = "query($on: NaiveDate, $at: DateTime) {
    report(datasheet: EMPLOYEES, groupBy: \"department\", effectiveAt: $on, recordedAt: $at) {
        total effectiveAt groups { value count } } }";

const HEADCOUNT: &str = "query($on: NaiveDate, $at: DateTime) {
    headcount(effectiveAt: $on, recordedAt: $at) { total effectiveAt groups { value count } } }";

const AS_OF: &str = "query($id: ID!, $on: NaiveDate, $at: DateTime) {
    recordAsOf(id: $id, effectiveAt: $on, recordedAt: $at) { version effectiveAt fields { field value } } }";

const HISTORY: &str = "query($id: ID!) { recordHistory(id: $id) { edges { node {
    sequence recordedAt effectiveFrom correction changes { field before after } } } } }";

const EMPLOYEE: &str = "query($id: ID!) { employee(id: $id) {
    version jobTitle department pendingChanges { effectiveFrom } } }";

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

async fn update(app: &TestApp, admin: &Session, id: &str, input: Value, on: &str) -> Response {
    app.graphql(
        Some(&admin.token),
        UPDATE,
        json!({ "id": id, "input": input, "on": on }),
    )
    .await
}

async fn create(app: &TestApp, admin: &Session, input: Value, on: Option<&str>) -> String {
    app.graphql(
        Some(&admin.token),
        CREATE,
        json!({ "input": input, "on": on }),
    )
    .await
    .ok()
    .data("createEmployee.id")
    .as_str()
    .unwrap()
    .to_owned()
}

async fn employee(app: &TestApp, admin: &Session, id: &str) -> Value {
    app.graphql(Some(&admin.token), EMPLOYEE, json!({ "id": id }))
        .await
        .ok()
        .data("employee")
        .clone()
}

/// A record's fields as `recordAsOf` gives them: field name to value.
fn as_of_fields(response: &Response) -> std::collections::BTreeMap<String, Value> {
    response
        .data("recordAsOf.fields")
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap().to_owned(), f["value"].clone()))
        .collect()
}

#[tokio::test]
async fn a_promotion_dated_next_month_waits_in_pending_changes_and_takes_effect_on_its_day() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("scheduled")).await;
    let id = create(
        &app,
        &admin,
        json!({ "firstName": "Ada", "lastName": "L", "jobTitle": "Engineer" }),
        None,
    )
    .await;
    let next_month = today() + Duration::days(31);
    let on = next_month.to_string();

    let scheduled = update(&app, &admin, &id, json!({ "jobTitle": "Lead" }), &on)
        .await
        .ok();
    assert_eq!(
        scheduled.data("updateEmployee.jobTitle"),
        "Engineer",
        "not yet"
    );
    assert_eq!(scheduled.data("updateEmployee.version"), 2);
    assert_eq!(
        scheduled.data("updateEmployee.pendingChanges"),
        &json!([{ "effectiveFrom": on, "version": 2,
                  "changes": [{ "field": "jobTitle", "value": "Lead" }] }])
    );
    // What is true next month can be asked already; today's values are today's.
    let then = app
        .graphql(Some(&admin.token), AS_OF, json!({ "id": id, "on": on }))
        .await
        .ok();
    assert_eq!(as_of_fields(&then)["jobTitle"], "Lead");
    let now = app
        .graphql(
            Some(&admin.token),
            AS_OF,
            json!({ "id": id, "on": today().to_string() }),
        )
        .await
        .ok();
    assert_eq!(as_of_fields(&now)["jobTitle"], "Engineer");

    // The day before: nothing takes effect. On the day: it does, without anyone acting.
    let tenant = app.tenant(admin.tenant_id).await;
    let day_before = next_month - Duration::days(1);
    let took = app
        .services
        .scheduled_changes_take_effect(&tenant, day_before)
        .await
        .unwrap();
    assert_eq!(took, 0);
    assert_eq!(employee(&app, &admin, &id).await["jobTitle"], "Engineer");
    let took = app
        .services
        .scheduled_changes_take_effect(&tenant, next_month)
        .await
        .unwrap();
    assert_eq!(took, 1);
    let current = employee(&app, &admin, &id).await;
    assert_eq!(current["jobTitle"], "Lead");
    assert_eq!(current["pendingChanges"], json!([]));
    // Running the day again changes nothing.
    let again = app
        .services
        .scheduled_changes_take_effect(&tenant, next_month)
        .await
        .unwrap();
    assert_eq!(again, 0);

    let history = app
        .graphql(Some(&admin.token), HISTORY, json!({ "id": id }))
        .await
        .ok();
    let entry = history.data("recordHistory.edges.1.node");
    assert_eq!(entry["effectiveFrom"], on);
    assert_eq!(entry["correction"], false);
    assert_eq!(
        entry["changes"],
        json!([{ "field": "jobTitle", "before": "Engineer", "after": "Lead" }])
    );
    assert_eq!(
        history.data("recordHistory.edges.0.node.effectiveFrom"),
        &json!(today().to_string())
    );
}

#[tokio::test]
async fn a_correction_changes_the_past_as_effective_but_not_as_recorded_before_it() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("corrected")).await;
    let mut ids = Vec::new();
    for last in ["A", "B"] {
        let input = json!({ "firstName": "F", "lastName": last, "department": "Sales" });
        ids.push(create(&app, &admin, input, Some("2024-01-01")).await);
    }
    let before_correction = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let corrected = update(
        &app,
        &admin,
        &ids[0],
        json!({ "department": "Support" }),
        "2025-01-01",
    )
    .await
    .ok();
    assert_eq!(corrected.data("updateEmployee.department"), "Support");
    assert_eq!(corrected.data("updateEmployee.pendingChanges"), &json!([]));

    let report = |on: &'static str, at: Option<String>| {
        let app = &app;
        let token = admin.token.clone();
        async move {
            app.graphql(Some(&token), REPORT, json!({ "on": on, "at": at }))
                .await
                .ok()
                .data("report.groups")
                .clone()
        }
    };
    assert_eq!(
        report("2025-06-30", None).await,
        json!([{ "value": "Sales", "count": 1 }, { "value": "Support", "count": 1 }]),
        "as effective: the correction holds from its day"
    );
    assert_eq!(
        report("2024-06-30", None).await,
        json!([{ "value": "Sales", "count": 2 }]),
        "before its day, the correction changes nothing"
    );
    assert_eq!(
        report("2025-06-30", Some(before_correction.to_rfc3339())).await,
        json!([{ "value": "Sales", "count": 2 }]),
        "as recorded before the correction, the system said Sales"
    );
    assert_eq!(
        report("2023-06-30", None).await,
        json!([]),
        "before the records took effect, nothing is counted"
    );

    // A later change stands when an earlier-dated correction is entered after it.
    update(
        &app,
        &admin,
        &ids[1],
        json!({ "department": "Marketing" }),
        "2025-09-01",
    )
    .await
    .ok();
    let corrected = update(
        &app,
        &admin,
        &ids[1],
        json!({ "department": "Legal" }),
        "2025-03-01",
    )
    .await
    .ok();
    assert_eq!(
        corrected.data("updateEmployee.department"),
        "Marketing",
        "today's value is the change that takes effect last"
    );
    assert_eq!(
        employee(&app, &admin, &ids[1]).await["department"],
        "Marketing"
    );
    assert_eq!(
        report("2025-06-30", None).await,
        json!([{ "value": "Legal", "count": 1 }, { "value": "Support", "count": 1 }])
    );
    let history = app
        .graphql(Some(&admin.token), HISTORY, json!({ "id": ids[1] }))
        .await
        .ok();
    let correction = history.data("recordHistory.edges.2.node");
    assert_eq!(correction["correction"], true);
    assert_eq!(correction["effectiveFrom"], "2025-03-01");
    assert_eq!(
        correction["changes"],
        json!([{ "field": "department", "before": "Sales", "after": "Legal" }]),
        "before: the value in force on the correction's day"
    );
}

#[tokio::test]
async fn headcount_places_staff_entered_later_by_their_employment_dates() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("headcount")).await;
    for (last, start, end) in [
        ("A", "2021-02-01", None),
        ("B", "2024-05-01", None),
        ("C", "2020-01-01", Some("2022-12-31")),
    ] {
        let input = json!({ "firstName": "F", "lastName": last, "department": "Ops",
                            "startDate": start, "endDate": end });
        create(&app, &admin, input, None).await;
    }
    let headcount = |on: &'static str| {
        let app = &app;
        let token = admin.token.clone();
        async move {
            let response = app
                .graphql(Some(&token), HEADCOUNT, json!({ "on": on }))
                .await
                .ok();
            assert_eq!(response.data("headcount.effectiveAt"), on);
            response.data("headcount.total").clone()
        }
    };
    assert_eq!(headcount("2023-06-30").await, 1, "A only");
    assert_eq!(headcount("2022-06-30").await, 2, "A and C");
    assert_eq!(headcount("2025-12-31").await, 2, "A and B");
    assert_eq!(headcount("2019-12-31").await, 0);
}

#[tokio::test]
async fn an_erased_record_has_no_values_on_either_axis() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("erased-dated")).await;
    let id = create(
        &app,
        &admin,
        json!({ "firstName": "Eve", "lastName": "Secret", "department": "Vault" }),
        Some("2024-01-01"),
    )
    .await;
    update(
        &app,
        &admin,
        &id,
        json!({ "department": "Attic" }),
        "2025-01-01",
    )
    .await
    .ok();
    let later = (today() + Duration::days(40)).to_string();
    update(&app, &admin, &id, json!({ "jobTitle": "Keeper" }), &later)
        .await
        .ok();
    let before_erasure = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 3, ground: OBJECTION) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    assert_eq!(
        employee(&app, &admin, &id).await["pendingChanges"],
        json!([])
    );
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_changes")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        pending, 0,
        "the scheduled values are gone from the read model"
    );

    let secrets = ["Eve", "Secret", "Vault", "Attic", "Keeper"];
    for (on, at) in [
        ("2024-06-30", None),
        ("2025-06-30", None),
        (later.as_str(), None),
        ("2025-06-30", Some(before_erasure.to_rfc3339())),
        (later.as_str(), Some(before_erasure.to_rfc3339())),
    ] {
        let response = app
            .graphql(
                Some(&admin.token),
                AS_OF,
                json!({ "id": id, "on": on, "at": at }),
            )
            .await
            .ok();
        let text = response.body.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} on {on}/{at:?}: {text}");
        }
    }
    let counted = app
        .graphql(Some(&admin.token), REPORT, json!({ "on": "2025-06-30" }))
        .await
        .ok();
    assert_eq!(
        counted.data("report.groups"),
        &json!([{ "value": null, "count": 1 }]),
        "still a record, without a value"
    );
}

#[tokio::test]
async fn bad_days_are_refused_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("bad-days")).await;
    let id = create(
        &app,
        &admin,
        json!({ "firstName": "Ada", "lastName": "L", "startDate": "2024-01-01",
                "endDate": "2026-12-31" }),
        Some("2024-01-01"),
    )
    .await;
    let ten_years_on = (today() + Duration::days(3_660)).to_string();
    for on in [
        "1899-12-31",
        ten_years_on.as_str(),
        "2023-12-31",
        "2026-13-01",
        "next week",
    ] {
        let refused = update(&app, &admin, &id, json!({ "jobTitle": "X" }), on).await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{on}: {}", refused.body);
        assert_eq!(
            refused.field(),
            Some("effectiveFrom"),
            "{on}: {}",
            refused.body
        );
    }
    // A correction that would end the employment before it starts, on any later day.
    let refused = update(
        &app,
        &admin,
        &id,
        json!({ "startDate": "2027-02-01" }),
        "2024-06-01",
    )
    .await;
    assert_eq!(refused.code(), Some("VALIDATION"), "{}", refused.body);
    assert_eq!(refused.field(), Some("endDate"), "{}", refused.body);
    // A record does not take effect in the future.
    let tomorrow = (today() + Duration::days(1)).to_string();
    let refused = app
        .graphql(
            Some(&admin.token),
            CREATE,
            json!({ "input": { "firstName": "B", "lastName": "C" }, "on": tomorrow }),
        )
        .await;
    assert_eq!(refused.field(), Some("effectiveFrom"), "{}", refused.body);
    // Questions about a recorded moment to come.
    let future = (Utc::now() + Duration::hours(1)).to_rfc3339();
    let refused = app
        .graphql(Some(&admin.token), AS_OF, json!({ "id": id, "at": future }))
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"));
    assert_eq!(refused.field(), Some("recordedAt"));
    let refused = app
        .graphql(Some(&admin.token), HEADCOUNT, json!({ "at": future }))
        .await;
    assert_eq!(refused.field(), Some("recordedAt"), "{}", refused.body);

    let unchanged = employee(&app, &admin, &id).await;
    assert_eq!(unchanged["version"], 1);
    assert_eq!(unchanged["pendingChanges"], json!([]));
    let employees: i64 = app
        .graphql(
            Some(&admin.token),
            "{ employees { totalCount } }",
            json!({}),
        )
        .await
        .ok()
        .data("employees.totalCount")
        .as_i64()
        .unwrap();
    assert_eq!(employees, 1);
}

#[tokio::test]
async fn a_scheduled_change_is_cancelled_before_its_day_and_a_rebuild_agrees() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("cancelled")).await;
    let id = create(
        &app,
        &admin,
        json!({ "firstName": "Ada", "lastName": "L", "jobTitle": "Engineer", "department": "R&D" }),
        Some("2025-01-01"),
    )
    .await;
    let next_month = today() + Duration::days(31);
    let later = today() + Duration::days(62);
    update(
        &app,
        &admin,
        &id,
        json!({ "jobTitle": "Lead" }),
        &next_month.to_string(),
    )
    .await
    .ok();
    update(
        &app,
        &admin,
        &id,
        json!({ "department": "Ops" }),
        &later.to_string(),
    )
    .await
    .ok();
    // And a correction, in force at once.
    update(
        &app,
        &admin,
        &id,
        json!({ "department": "Research" }),
        "2025-06-01",
    )
    .await
    .ok();
    const CANCEL: &str = "mutation($id: ID!, $v: Int!) { cancelScheduledChange(id: $id, version: $v) {
        version ... on Employee { jobTitle department pendingChanges { version effectiveFrom } } } }";
    let before_cancelling = Utc::now();
    let cancelled = app
        .graphql(Some(&admin.token), CANCEL, json!({ "id": id, "v": 2 }))
        .await
        .ok();
    assert_eq!(cancelled.data("cancelScheduledChange.version"), 5);
    assert_eq!(
        cancelled.data("cancelScheduledChange.pendingChanges"),
        &json!([{ "version": 3, "effectiveFrom": later.to_string() }])
    );
    assert_eq!(
        cancelled.data("cancelScheduledChange.department"),
        "Research"
    );
    // Not scheduled (any more): cancelled already, in force, the creation, never recorded.
    for version in [2, 4, 1, 99] {
        let refused = app
            .graphql(
                Some(&admin.token),
                CANCEL,
                json!({ "id": id, "v": version }),
            )
            .await;
        assert_eq!(
            refused.code(),
            Some("VALIDATION"),
            "{version}: {}",
            refused.body
        );
        assert_eq!(refused.field(), Some("version"), "{version}");
    }
    assert_eq!(
        employee(&app, &admin, &id).await["version"],
        5,
        "nothing changed"
    );

    // The read models rebuilt from the history hold exactly what the live ones hold: the
    // pending change, the correction in force, the cancelled change nowhere.
    let verify = ["verify", "--tenant", admin.slug.as_str(), "--read-models"];
    assert!(app.custos(&verify).await);

    // Reports of next month: the promotion, as recorded before it was cancelled; not after.
    const TITLES: &str = "query($on: NaiveDate, $at: DateTime) {
        report(datasheet: EMPLOYEES, groupBy: \"jobTitle\", effectiveAt: $on, recordedAt: $at) {
            groups { value count } } }";
    for (at, title) in [(None, "Engineer"), (Some(before_cancelling), "Lead")] {
        let report = app
            .graphql(
                Some(&admin.token),
                TITLES,
                json!({ "on": next_month, "at": at }),
            )
            .await
            .ok();
        assert_eq!(
            report.data("report.groups"),
            &json!([{ "value": title, "count": 1 }]),
            "recorded at {at:?}"
        );
    }

    let history = app
        .graphql(Some(&admin.token), HISTORY, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(history.data("recordHistory.edges.4.node.sequence"), 5);
    let tenant = app.tenant(admin.tenant_id).await;
    app.services
        .scheduled_changes_take_effect(&tenant, later)
        .await
        .unwrap();
    let current = employee(&app, &admin, &id).await;
    assert_eq!(
        current["jobTitle"], "Engineer",
        "the cancelled promotion never came"
    );
    assert_eq!(current["department"], "Ops");
}

#[tokio::test]
async fn imported_staff_take_effect_from_their_column_and_bad_days_are_row_errors() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("imported-days")).await;
    const IMPORT: &str = "mutation($csv: String!, $dry: Boolean) {
        importRecords(datasheet: EMPLOYEES, csv: $csv, dryRun: $dry, mapping: [
            { column: \"First\", field: \"firstName\" }, { column: \"Last\", field: \"lastName\" },
            { column: \"Dept\", field: \"department\" }, { column: \"Since\", field: \"effectiveFrom\" }
        ]) { created errors { row field message } } }";
    let tomorrow = (today() + Duration::days(1)).to_string();
    let bad = format!(
        "First,Last,Dept,Since\nA,X,Ops,2021-02-01\nB,Y,Ops,{tomorrow}\nC,Z,Ops,01/02/2020\n"
    );
    let refused = app
        .graphql(
            Some(&admin.token),
            IMPORT,
            json!({ "csv": bad, "dry": true }),
        )
        .await
        .ok();
    let fields: Vec<(i64, &str)> = refused
        .data("importRecords.errors")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_i64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, [(2, "effectiveFrom"), (3, "effectiveFrom")]);

    let good = "First,Last,Dept,Since\nA,X,Ops,2021-02-01\nB,Y,Sales,2023-09-01\nC,Z,Ops,\n";
    let imported = app
        .graphql(Some(&admin.token), IMPORT, json!({ "csv": good }))
        .await
        .ok();
    assert_eq!(imported.data("importRecords.created"), 3);
    let counted = app
        .graphql(Some(&admin.token), REPORT, json!({ "on": "2024-01-31" }))
        .await
        .ok();
    assert_eq!(
        counted.data("report.groups"),
        &json!([{ "value": "Ops", "count": 1 }, { "value": "Sales", "count": 1 }]),
        "C, without a day, takes effect today"
    );
}

#[tokio::test]
async fn a_stage_scheduled_for_a_later_day_starts_its_retention_period_on_that_day() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("scheduled-stage")).await;
    app.graphql(
        Some(&admin.token),
        "mutation($i: RetentionPolicyInput!) { defineRetentionPolicy(input: $i) { id } }",
        json!({ "i": { "datasheet": "APPLICANTS", "name": "Closed applications",
                       "trigger": "STAGE_REACHED", "stages": ["REJECTED"], "periodDays": 10 } }),
    )
    .await
    .ok();
    let id = app
        .graphql(
            Some(&admin.token),
            "mutation { createApplicant(input: { firstName: \"Rhea\", lastName: \"Later\", stage: INTERVIEW }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createApplicant.id")
        .as_str()
        .unwrap()
        .to_owned();
    let next_month = today() + Duration::days(31);
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!, $on: NaiveDate) {
            updateApplicant(id: $id, input: { stage: REJECTED }, effectiveFrom: $on) { version } }",
        json!({ "id": id, "on": next_month }),
    )
    .await
    .ok();
    // Called directly, not through a request (which would wait for the changes answered
    // without waiting for the read models).
    app.settled(admin.tenant_id).await;
    let tenant = app.tenant(admin.tenant_id).await;
    app.services
        .scheduled_changes_take_effect(&tenant, next_month)
        .await
        .unwrap();

    // Rejected from the start of its day, not from when the rejection was entered.
    let schedule = app
        .graphql(
            Some(&admin.token),
            "query($u: DateTime) { retentionSchedule(until: $u, first: 10) { recordId erasesAt } }",
            json!({ "u": Utc::now() + Duration::days(400) }),
        )
        .await
        .ok();
    let rows = schedule.data("retentionSchedule").as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["recordId"], id.as_str());
    let erases_at: chrono::DateTime<Utc> = rows[0]["erasesAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        erases_at,
        (next_month + Duration::days(10))
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    );
}

/// How many reads reports recorded, and the records the newest one read.
async fn report_reads(db: &mut sqlx::PgConnection) -> (i64, Vec<uuid::Uuid>) {
    let (count, mut ids): (i64, Vec<uuid::Uuid>) = sqlx::query_as(
        "SELECT count(*) OVER (), record_ids FROM list_reads WHERE via = 'report'
          ORDER BY read_at DESC LIMIT 1",
    )
    .fetch_optional(db)
    .await
    .unwrap()
    .unwrap_or_default();
    ids.sort();
    (count, ids)
}

/// What a report answered (`total`, `groups`), how many reads it recorded and of whom.
type Answered = ((Value, Value), i64, Vec<uuid::Uuid>);

/// Asks `query` (a report or a headcount) with `variables` as recorded now, and as recorded at
/// `at`.
async fn both_ways(
    app: &TestApp,
    admin: &Session,
    db: &mut sqlx::PgConnection,
    query: &'static str,
    variables: Value,
    at: &str,
) -> (Answered, Answered) {
    let field = if query.contains("headcount(") {
        "headcount"
    } else {
        "report"
    };
    let mut ask = async |variables: Value| {
        let before = report_reads(db).await;
        let response = app.graphql(Some(&admin.token), query, variables).await.ok();
        let read = report_reads(db).await;
        let answer = (
            response.data(&format!("{field}.total")).clone(),
            response.data(&format!("{field}.groups")).clone(),
        );
        // Who was read, if the answer recorded a read.
        let reads = read.0 - before.0;
        (answer, reads, if reads > 0 { read.1 } else { Vec::new() })
    };
    let now = ask(variables.clone()).await;
    let mut then = variables;
    then["at"] = json!(at);
    let then = ask(then).await;
    (now, then)
}

/// Reports on a day read each record's values from today's rows when those hold the day's
/// values as the history had them at the moment asked about, and fold the history of the
/// others (changed, corrected or scheduled with effect after the day, erased, or with an event
/// since that moment). On every day around every change, a report as recorded at a moment is
/// what it was when asked at that moment, and as recorded now what it is today.
#[tokio::test]
async fn reports_from_todays_rows_agree_with_the_folded_history_on_every_day() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("two-paths")).await;
    let employee_input = |last: &str, department: Option<&str>, start: Option<&str>| {
        json!({ "firstName": "F", "lastName": last, "department": department,
                "startDate": start })
    };
    let soon = (today() + Duration::days(20)).to_string();
    let next_month = (today() + Duration::days(30)).to_string();
    let later = (today() + Duration::days(60)).to_string();
    let run = |query: &'static str, variables: Value| {
        let app = &app;
        let token = admin.token.clone();
        async move { app.graphql(Some(&token), query, variables).await.ok() }
    };

    // Fifteen settled since their creation, so that the records with an event after the
    // moment asked about below are fewer than the others (and their history is looked up
    // record by record).
    for n in 0..15 {
        create(
            &app,
            &admin,
            employee_input(&format!("P{n}"), Some("Plain"), Some("2015-01-01")),
            Some("2015-01-01"),
        )
        .await;
    }
    // Settled since its creation.
    let a = create(
        &app,
        &admin,
        employee_input("A", Some("Ops"), Some("2020-01-01")),
        Some("2020-01-01"),
    )
    .await;
    // Entered later than its start; moved in 2023, then corrected to have moved in 2022.
    let b = create(
        &app,
        &admin,
        employee_input("B", Some("Sales"), Some("2019-06-01")),
        Some("2021-03-01"),
    )
    .await;
    update(
        &app,
        &admin,
        &b,
        json!({ "department": "Support" }),
        "2023-01-01",
    )
    .await
    .ok();
    update(
        &app,
        &admin,
        &b,
        json!({ "department": "Legal" }),
        "2022-01-01",
    )
    .await
    .ok();
    // Entered today, employed from 2018 to 2022.
    let c = create(
        &app,
        &admin,
        employee_input("C", Some("Ops"), Some("2018-01-01")),
        None,
    )
    .await;
    update(
        &app,
        &admin,
        &c,
        json!({ "endDate": "2022-12-31" }),
        &today().to_string(),
    )
    .await
    .ok();
    // Changes scheduled: a move next month, an end later.
    let d = create(
        &app,
        &admin,
        employee_input("D", Some("Sales"), Some("2022-06-01")),
        Some("2022-06-01"),
    )
    .await;
    update(
        &app,
        &admin,
        &d,
        json!({ "department": "Ops" }),
        &next_month,
    )
    .await
    .ok();
    update(&app, &admin, &d, json!({ "endDate": later }), &later)
        .await
        .ok();
    // A scheduled move cancelled.
    let e = create(
        &app,
        &admin,
        employee_input("E", Some("Ops"), None),
        Some("2020-05-01"),
    )
    .await;
    update(&app, &admin, &e, json!({ "department": "HR" }), &soon)
        .await
        .ok();
    run(
        "mutation($id: ID!) { cancelScheduledChange(id: $id, version: 2) { id } }",
        json!({ "id": e }),
    )
    .await;
    // Archived; archived and restored; erased.
    let f = create(
        &app,
        &admin,
        employee_input("F", Some("R&D"), None),
        Some("2020-01-01"),
    )
    .await;
    run(
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
        json!({ "id": f }),
    )
    .await;
    let g = create(
        &app,
        &admin,
        employee_input("G", Some("R&D"), Some("2020-02-01")),
        Some("2020-01-01"),
    )
    .await;
    for mutation in [
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
        "mutation($id: ID!) { restoreRecord(id: $id) { id } }",
    ] {
        run(mutation, json!({ "id": g })).await;
    }
    let h = create(
        &app,
        &admin,
        employee_input("H", Some("Vault"), Some("2021-01-01")),
        Some("2021-01-01"),
    )
    .await;
    run(
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
        json!({ "id": h }),
    )
    .await;
    // Left in 2021, both dates given at its creation.
    let k = create(
        &app,
        &admin,
        json!({ "firstName": "F", "lastName": "K", "department": "Ops",
                "startDate": "2019-01-01", "endDate": "2021-06-30" }),
        Some("2019-01-01"),
    )
    .await;
    // Without a department or dates; and one moved today.
    let i = create(
        &app,
        &admin,
        employee_input("I", None, None),
        Some("2019-01-01"),
    )
    .await;
    let j = create(
        &app,
        &admin,
        employee_input("J", Some("Ops"), Some("2024-02-01")),
        None,
    )
    .await;
    update(
        &app,
        &admin,
        &j,
        json!({ "department": "Sales" }),
        &today().to_string(),
    )
    .await
    .ok();

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let recorded = Utc::now().to_rfc3339();
    let mut days: Vec<String> = [
        "2017-12-31",
        "2018-01-01",
        "2019-05-31",
        "2019-06-01",
        "2020-01-01",
        "2020-06-30",
        "2021-02-28",
        "2021-03-01",
        "2021-12-31",
        "2022-01-01",
        "2022-06-01",
        "2022-12-31",
        "2023-01-01",
        "2024-02-01",
        "2025-06-30",
    ]
    .map(str::to_owned)
    .to_vec();
    for offset in [-1, 0, 19, 20, 29, 30, 59, 60, 400] {
        days.push((today() + Duration::days(offset)).to_string());
    }
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let mut answered_then = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for day in &days {
        for query in [REPORT, HEADCOUNT] {
            let (now, at_last_write) = both_ways(
                &app,
                &admin,
                &mut db,
                query,
                json!({ "on": day }),
                &recorded,
            )
            .await;
            assert_eq!(now, at_last_write, "{query} on {day}");
            seen.insert(now.0 .1.to_string());
            answered_then.push(now);
        }
    }
    // The days differ from one another: the comparison is of answers that change.
    assert!(seen.len() > 8, "{seen:?}");
    // Two answers checked by hand (besides the fifteen in "Plain"). Mid-2022: B in Legal (the correction), C and J not yet in
    // effect, F archived, H (erased) and I without a value, K still a record. Next month: B in
    // Support since 2023, D moved to Ops, E still in Ops (its move cancelled), C and K gone,
    // H erased.
    let groups =
        |response: Response, field: &str| response.data(&format!("{field}.groups")).clone();
    assert_eq!(
        groups(run(REPORT, json!({ "on": "2022-06-30" })).await, "report"),
        json!([{ "value": "Plain", "count": 15 },
               { "value": "Ops", "count": 3 }, { "value": null, "count": 2 },
               { "value": "Legal", "count": 1 }, { "value": "R&D", "count": 1 },
               { "value": "Sales", "count": 1 }])
    );
    assert_eq!(
        groups(
            run(HEADCOUNT, json!({ "on": next_month })).await,
            "headcount"
        ),
        json!([{ "value": "Plain", "count": 15 },
               { "value": "Ops", "count": 3 }, { "value": "R&D", "count": 1 },
               { "value": "Sales", "count": 1 }, { "value": "Support", "count": 1 },
               { "value": null, "count": 1 }])
    );

    // Then, after that moment: A moved with effect from 2021, I given a department today, F
    // restored, G archived, K restricted and released (an event that changes no value), D's
    // scheduled move cancelled, and L entered, employed since 2019. Asked as recorded at the
    // moment before, each report is what it was then: the records changed since from their
    // history, the others from today's rows (or, where the changed ones are most, every
    // history); asked as recorded now, it is today's answer either way.
    update(
        &app,
        &admin,
        &a,
        json!({ "department": "Finance" }),
        "2021-01-01",
    )
    .await
    .ok();
    update(
        &app,
        &admin,
        &i,
        json!({ "department": "Ops" }),
        &today().to_string(),
    )
    .await
    .ok();
    for (mutation, id) in [
        ("mutation($id: ID!) { restoreRecord(id: $id) { id } }", &f),
        ("mutation($id: ID!) { archiveRecord(id: $id) { id } }", &g),
        (
            "mutation($id: ID!) { restrictRecord(id: $id, reason: ACCURACY_CONTESTED) { id } }",
            &k,
        ),
        ("mutation($id: ID!) { liftRestriction(id: $id) { id } }", &k),
        (
            "mutation($id: ID!) { cancelScheduledChange(id: $id, version: 2) { id } }",
            &d,
        ),
    ] {
        run(mutation, json!({ "id": id })).await;
    }
    create(
        &app,
        &admin,
        employee_input("L", Some("Ops"), Some("2019-01-01")),
        None,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let recorded_last = Utc::now().to_rfc3339();
    let mut answered_then = answered_then.into_iter();
    let mut changed = 0;
    for day in &days {
        for query in [REPORT, HEADCOUNT] {
            let (now, then) = both_ways(
                &app,
                &admin,
                &mut db,
                query,
                json!({ "on": day }),
                &recorded,
            )
            .await;
            assert_eq!(
                Some(&then),
                answered_then.next().as_ref(),
                "{query} on {day}, as recorded then"
            );
            changed += usize::from(now.0 != then.0);
            let (now_again, at_last_write) = both_ways(
                &app,
                &admin,
                &mut db,
                query,
                json!({ "on": day }),
                &recorded_last,
            )
            .await;
            assert_eq!(now_again, at_last_write, "{query} on {day}");
            assert_eq!(now.0, now_again.0, "{query} on {day}");
        }
    }
    // The changes since changed most answers: as recorded then is not as recorded now.
    assert!(
        changed > days.len(),
        "{changed} of {} answers changed",
        days.len() * 2
    );
}

const REPORT_BY: &str = "query($sheet: Datasheet!, $by: String!, $on: NaiveDate, $at: DateTime) {
    report(datasheet: $sheet, groupBy: $by, effectiveAt: $on, recordedAt: $at) {
        total groups { value count } } }";

const HEADCOUNT_BY: &str = "query($by: String, $on: NaiveDate, $at: DateTime) {
    headcount(groupBy: $by, effectiveAt: $on, recordedAt: $at) { total groups { value count } } }";

/// Reports on custom fields (a list counted per entry, a number, a boolean), on a group large
/// enough that its people are not singled out, and on applicants with a hire, agree between
/// today's rows and every record's history: asked as recorded at a moment before an event of
/// every record (a restriction, lifted, which changes no value), each record's history decides.
#[tokio::test]
async fn reports_on_any_field_from_todays_rows_agree_with_every_history_folded() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("any-field")).await;
    for (key, kind, options) in [
        ("skills", "MULTIPLE_CHOICE", json!(["rust", "go", "sql"])),
        ("grade", "NUMBER", json!([])),
        ("remote", "BOOLEAN", json!([])),
    ] {
        app.graphql(
            Some(&admin.token),
            "mutation($i: AddCustomFieldInput!) { addCustomField(datasheet: EMPLOYEES, input: $i) { key } }",
            json!({ "i": { "key": key, "label": key, "type": kind, "options": options } }),
        )
        .await
        .ok();
    }
    let skills = [
        json!(["rust", "sql"]),
        json!(["go"]),
        json!([]),
        Value::Null,
    ];
    let mut employees = Vec::new();
    for n in 0..14_usize {
        let id = create(
            &app,
            &admin,
            json!({ "firstName": "E", "lastName": format!("N{n}"),
                    "department": if n < 12 { "Big" } else { "Small" },
                    "startDate": format!("20{:02}-03-01", 18 + n % 5),
                    "customFields": [
                        { "key": "skills", "value": skills[n % 4] },
                        { "key": "grade", "value": if n % 3 == 0 { Value::Null } else { json!(n % 3) } },
                        { "key": "remote", "value": n % 2 == 0 },
                    ] }),
            Some(&format!("20{:02}-03-01", 18 + n % 5)),
        )
        .await;
        employees.push(id);
    }
    // Corrections, changes scheduled, and a move today.
    for (n, input, on) in [
        (0, json!({ "department": "Small" }), "2021-01-01".to_owned()),
        (
            1,
            json!({ "customFields": [{ "key": "skills", "value": ["go", "sql"] }] }),
            "2023-06-01".to_owned(),
        ),
        (
            2,
            json!({ "customFields": [{ "key": "grade", "value": 3 }] }),
            (today() + Duration::days(30)).to_string(),
        ),
        (
            3,
            json!({ "endDate": "2023-12-31" }),
            "2023-12-31".to_owned(),
        ),
        (4, json!({ "department": "Small" }), today().to_string()),
    ] {
        update(&app, &admin, &employees[n], input, &on).await.ok();
    }
    // Applicants in their stages, one hired, starting next week.
    let mut applicants = Vec::new();
    for (n, stage) in ["APPLIED", "APPLIED", "INTERVIEW", "OFFER"]
        .iter()
        .enumerate()
    {
        let id = app
            .graphql(
                Some(&admin.token),
                "mutation($i: CreateApplicantInput!) { createApplicant(input: $i) { id } }",
                json!({ "i": { "firstName": "A", "lastName": format!("P{n}"), "stage": stage } }),
            )
            .await
            .ok()
            .data("createApplicant.id")
            .as_str()
            .unwrap()
            .to_owned();
        applicants.push(id);
    }
    let hired = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!, $i: HireApplicantInput) { hireApplicant(id: $id, input: $i) { employee { id } } }",
            json!({ "id": applicants[3],
                    "i": { "department": "Small", "startDate": (today() + Duration::days(7)).to_string() } }),
        )
        .await
        .ok()
        .data("hireApplicant.employee.id")
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let recorded = Utc::now().to_rfc3339();
    for id in employees.iter().chain(&applicants).chain([&hired]) {
        for mutation in [
            "mutation($id: ID!) { restrictRecord(id: $id, reason: ACCURACY_CONTESTED) { id } }",
            "mutation($id: ID!) { liftRestriction(id: $id) { id } }",
        ] {
            app.graphql(Some(&admin.token), mutation, json!({ "id": id }))
                .await
                .ok();
        }
    }

    let mut db = app.tenant_admin(admin.tenant_id).await;
    let mut asked = Vec::new();
    for day in ["2019-06-30", "2021-06-30", "2023-12-31", "2024-01-01"]
        .map(str::to_owned)
        .into_iter()
        .chain([0, 7, 30].map(|offset| (today() + Duration::days(offset)).to_string()))
    {
        for by in [
            "department",
            "custom.skills",
            "custom.grade",
            "custom.remote",
        ] {
            asked.push((
                REPORT_BY,
                json!({ "sheet": "EMPLOYEES", "by": by, "on": day }),
            ));
            asked.push((HEADCOUNT_BY, json!({ "by": by, "on": day })));
        }
        asked.push((
            REPORT_BY,
            json!({ "sheet": "APPLICANTS", "by": "stage", "on": day }),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (query, variables) in asked {
        let (now, then) =
            both_ways(&app, &admin, &mut db, query, variables.clone(), &recorded).await;
        assert_eq!(now, then, "{variables}");
        seen.insert(now.0 .1.to_string());
    }
    assert!(seen.len() > 20, "{seen:?}");
    // Checked by hand, in a month: department "Big" is large enough that its people are not
    // named as read; a list counts each entry, an empty one as no value.
    let today_report = |by: &str| json!({ "sheet": "EMPLOYEES", "by": by, "on": (today() + Duration::days(30)).to_string() });
    let (departments, _) = both_ways(
        &app,
        &admin,
        &mut db,
        REPORT_BY,
        today_report("department"),
        &recorded,
    )
    .await;
    assert_eq!(
        departments.0 .1,
        json!([{ "value": "Big", "count": 10 }, { "value": "Small", "count": 5 }])
    );
    let mut small = employees[12..].to_vec();
    small.extend([employees[0].clone(), employees[4].clone(), hired]);
    let mut small: Vec<uuid::Uuid> = small.iter().map(|id| id.parse().unwrap()).collect();
    small.sort();
    assert_eq!(
        departments.2, small,
        "only the small group's people are named"
    );
    let (skills_today, _) = both_ways(
        &app,
        &admin,
        &mut db,
        REPORT_BY,
        today_report("custom.skills"),
        &recorded,
    )
    .await;
    assert_eq!(
        skills_today.0 .1,
        json!([{ "value": null, "count": 7 }, { "value": "sql", "count": 5 },
               { "value": "go", "count": 4 }, { "value": "rust", "count": 4 }])
    );
}

/// Reports count `records` rows only while `records` and `record_versions` have read the log
/// equally far: so they are after every write the projector makes (one transaction moves
/// both), and not while one of them is behind (rebuilt, or retried alone), when every history
/// is folded instead.
#[tokio::test]
async fn the_rows_count_only_while_records_and_record_versions_are_in_step() {
    use custos_projections::record_versions::in_step_with_records;
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("in-step")).await;
    let id = create(
        &app,
        &admin,
        json!({ "firstName": "F", "lastName": "A", "department": "Ops" }),
        Some("2020-01-01"),
    )
    .await;
    update(
        &app,
        &admin,
        &id,
        json!({ "department": "Sales" }),
        "2021-01-01",
    )
    .await
    .ok();
    app.settled(admin.tenant_id).await;
    let mut db = app.tenant_admin(admin.tenant_id).await;
    assert!(in_step_with_records(&mut db).await.unwrap(), "after writes");
    for behind in ["records", "record_versions"] {
        sqlx::query("BEGIN").execute(&mut db).await.unwrap();
        sqlx::query(
            "UPDATE projection_checkpoints SET global_position = global_position - 1
              WHERE projection = $1",
        )
        .bind(behind)
        .execute(&mut db)
        .await
        .unwrap();
        assert!(
            !in_step_with_records(&mut db).await.unwrap(),
            "{behind} behind"
        );
        sqlx::query("ROLLBACK").execute(&mut db).await.unwrap();
    }
    assert!(in_step_with_records(&mut db).await.unwrap());
}

/// Migration 0032 rebuilds `records` where a change may be dated before its record's creation
/// (possible only for creations written before changes were effective-dated, which the
/// projection did not apply to a field the creation did not give), and leaves it alone
/// elsewhere.
#[tokio::test]
async fn the_migration_for_changes_dated_before_an_undated_creation_rebuilds_only_where_needed() {
    const MIGRATION: &str =
        include_str!("../../migrations/tenant/0032_changes_before_an_undated_creation.sql");
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("undated")).await;
    let ada = create(
        &app,
        &admin,
        json!({ "firstName": "Ada", "lastName": "L" }),
        None,
    )
    .await;
    // The creation was answered without waiting for the read models: the migration runs on
    // them once they show it, as it would on a stopped service.
    app.settled(admin.tenant_id).await;
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let records_position = async |db: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT global_position FROM projection_checkpoints WHERE projection = 'records'",
        )
        .fetch_one(db)
        .await
        .unwrap()
    };
    let before = records_position(&mut db).await;
    assert!(before > 0);

    // Nothing dated before a creation: nothing changes.
    sqlx::raw_sql(MIGRATION).execute(&mut db).await.unwrap();
    assert_eq!(records_position(&mut db).await, before);

    // A change dated before its record's creation, as such a record's history holds it.
    sqlx::query(
        "INSERT INTO record_versions (record_id, version, datasheet, kind, effective_from,
                                      recorded_at, changes)
         SELECT record_id, 99, datasheet, 'updated', effective_from - 10, now(),
                '{\"department\": \"Before\"}'
           FROM record_versions WHERE record_id = $1 AND kind = 'created'",
    )
    .bind(uuid::Uuid::parse_str(&ada).unwrap())
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::raw_sql(MIGRATION).execute(&mut db).await.unwrap();
    assert_eq!(records_position(&mut db).await, 0, "records is rebuilt");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 0);

    // The projector fills it again from the log; the next write waits for it.
    let bob = create(
        &app,
        &admin,
        json!({ "firstName": "Bob", "lastName": "M" }),
        None,
    )
    .await;
    for id in [&ada, &bob] {
        assert_eq!(employee(&app, &admin, id).await["version"], 1, "{id}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}
