//! Employee records: create, update, archive, restore, list, read, history and bad input.

use custos_tests::{slug, TestApp};
use serde_json::{json, Value};

const UPDATE: &str = "mutation($id: ID!, $v: Int, $input: UpdateEmployeeInput!) {
    updateEmployee(id: $id, expectedVersion: $v, input: $input) { id version firstName email phone department startDate } }";
const EMPLOYEE: &str = "query($id: ID!) { employee(id: $id) { id version firstName lastName email phone department archived createdBy { id } updatedBy { id } } }";
const LIST: &str = "query($first: Int, $after: String, $all: Boolean) {
    employees(first: $first, after: $after, includeArchived: $all) {
        totalCount edges { cursor node { id firstName archived } } pageInfo { hasNextPage endCursor } } }";
const HISTORY: &str = "query($id: ID!, $first: Int, $after: String) { recordHistory(id: $id, first: $first, after: $after) {
    totalCount edges { cursor node { sequence eventType recordedAt requestId actor { id email } changes { field before after } } }
    pageInfo { hasNextPage } } }";

fn grace() -> Value {
    json!({ "firstName": "Grace", "lastName": "Hopper", "email": "grace@navy.example.org",
            "phone": "+1 (555) 010-0200", "jobTitle": "Rear Admiral", "department": "Navy", "startDate": "1943-12-01" })
}

#[tokio::test]
async fn create_then_read_normalises_values() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("create")).await;

    let created = app.create_employee(&session.token, grace()).await;
    let read = app
        .graphql(
            Some(&session.token),
            EMPLOYEE,
            json!({ "id": created["id"] }),
        )
        .await
        .ok();

    assert_eq!(created["version"], json!(1));
    assert_eq!(created["phone"], json!("+15550100200"));
    assert_eq!(created["startDate"], json!("1943-12-01"));
    assert_eq!(read.data("employee.firstName"), &json!("Grace"));
    assert_eq!(
        read.data("employee.createdBy.id"),
        &json!(session.user_id.to_string())
    );
}

#[tokio::test]
async fn update_patches_only_the_given_fields_and_null_clears() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("update")).await;
    let created = app.create_employee(&session.token, grace()).await;

    let updated = app
        .graphql(Some(&session.token), UPDATE, json!({ "id": created["id"], "v": 1, "input": { "department": "Computing", "email": null } }))
        .await
        .ok();

    assert_eq!(updated.data("updateEmployee.version"), &json!(2));
    assert_eq!(
        updated.data("updateEmployee.department"),
        &json!("Computing")
    );
    assert_eq!(updated.data("updateEmployee.email"), &Value::Null);
    assert_eq!(updated.data("updateEmployee.firstName"), &json!("Grace"));
    assert_eq!(updated.data("updateEmployee.phone"), &json!("+15550100200"));
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("stale")).await;
    let created = app.create_employee(&session.token, grace()).await;
    app.graphql(
        Some(&session.token),
        UPDATE,
        json!({ "id": created["id"], "v": 1, "input": { "department": "A" } }),
    )
    .await
    .ok();

    let stale = app
        .graphql(
            Some(&session.token),
            UPDATE,
            json!({ "id": created["id"], "v": 1, "input": { "department": "B" } }),
        )
        .await;

    assert_eq!(stale.code(), Some("CONFLICT"), "{}", stale.body);
    let read = app
        .graphql(
            Some(&session.token),
            EMPLOYEE,
            json!({ "id": created["id"] }),
        )
        .await
        .ok();
    assert_eq!(read.data("employee.department"), &json!("A"));
    assert_eq!(read.data("employee.version"), &json!(2));
}

#[tokio::test]
async fn concurrent_writers_never_lose_an_update() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("race")).await;
    let created = app.create_employee(&session.token, grace()).await;

    let writes = (0..8).map(|i| {
        let app = &app;
        let token = session.token.clone();
        let id = created["id"].clone();
        async move {
            app.graphql(
                Some(&token),
                UPDATE,
                json!({ "id": id, "v": 1, "input": { "department": format!("D{i}") } }),
            )
            .await
        }
    });
    let responses = futures::future::join_all(writes).await;

    let won: Vec<_> = responses.iter().filter(|r| r.code().is_none()).collect();
    assert_eq!(won.len(), 1, "exactly one writer at version 1 wins");
    assert!(responses
        .iter()
        .all(|r| r.status == 200 && (r.code().is_none() || r.code() == Some("CONFLICT"))));
    let read = app
        .graphql(
            Some(&session.token),
            EMPLOYEE,
            json!({ "id": created["id"] }),
        )
        .await
        .ok();
    assert_eq!(read.data("employee.version"), &json!(2));
    assert_eq!(
        read.data("employee.department"),
        won[0].data("updateEmployee.department")
    );
}

#[tokio::test]
async fn archived_records_are_hidden_read_only_and_restorable() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("archive")).await;
    let kept = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Kept", "lastName": "K" }),
        )
        .await;
    let gone = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Gone", "lastName": "G" }),
        )
        .await;

    let archived = app
        .graphql(
            Some(&session.token),
            "mutation($id: ID!) { archiveRecord(id: $id) { id version archived datasheet } }",
            json!({ "id": gone["id"] }),
        )
        .await
        .ok();
    assert_eq!(archived.data("archiveRecord.archived"), &json!(true));
    assert_eq!(
        archived.data("archiveRecord.datasheet"),
        &json!("EMPLOYEES")
    );

    let visible = app
        .graphql(Some(&session.token), LIST, json!({}))
        .await
        .ok();
    assert_eq!(visible.data("employees.totalCount"), &json!(1));
    assert_eq!(visible.data("employees.edges.0.node.id"), &kept["id"]);
    let all = app
        .graphql(Some(&session.token), LIST, json!({ "all": true }))
        .await
        .ok();
    assert_eq!(all.data("employees.totalCount"), &json!(2));

    let edit = app
        .graphql(
            Some(&session.token),
            UPDATE,
            json!({ "id": gone["id"], "input": { "firstName": "X" } }),
        )
        .await;
    assert_eq!(edit.code(), Some("VALIDATION"), "{}", edit.body);
    let again = app
        .graphql(
            Some(&session.token),
            "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
            json!({ "id": gone["id"] }),
        )
        .await;
    assert_eq!(again.code(), Some("VALIDATION"));

    let restored = app
        .graphql(Some(&session.token), "mutation($id: ID!) { restoreRecord(id: $id, expectedVersion: 2) { version archived } }", json!({ "id": gone["id"] }))
        .await
        .ok();
    assert_eq!(restored.data("restoreRecord.archived"), &json!(false));
    assert_eq!(restored.data("restoreRecord.version"), &json!(3));
    let visible = app
        .graphql(Some(&session.token), LIST, json!({}))
        .await
        .ok();
    assert_eq!(visible.data("employees.totalCount"), &json!(2));
}

#[tokio::test]
async fn pages_walk_every_employee_once_in_creation_order() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("pages")).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            app.create_employee(
                &session.token,
                json!({ "firstName": format!("E{i}"), "lastName": "P" }),
            )
            .await["id"]
                .clone(),
        );
    }

    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = app
            .graphql(
                Some(&session.token),
                LIST,
                json!({ "first": 3, "after": after }),
            )
            .await
            .ok();
        assert_eq!(page.data("employees.totalCount"), &json!(7));
        for edge in page.data("employees.edges").as_array().unwrap() {
            seen.push(edge["node"]["id"].clone());
        }
        if page.data("employees.pageInfo.hasNextPage") != &json!(true) {
            break;
        }
        after = page.data("employees.pageInfo.endCursor").clone();
    }

    assert_eq!(seen, created);
}

#[tokio::test]
async fn history_is_replayed_with_actor_request_and_field_changes() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("history")).await;
    let created = app
        .create_employee(
            &session.token,
            json!({ "firstName": "Ada", "lastName": "L", "email": "ada@example.org" }),
        )
        .await;
    let update = app
        .graphql(
            Some(&session.token),
            UPDATE,
            json!({ "id": created["id"], "input": { "email": "ada@lovelace.example.org" } }),
        )
        .await
        .ok();
    app.graphql(
        Some(&session.token),
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
        json!({ "id": created["id"] }),
    )
    .await
    .ok();

    let history = app
        .graphql(
            Some(&session.token),
            HISTORY,
            json!({ "id": created["id"] }),
        )
        .await
        .ok();

    let events = history.data("recordHistory.edges").as_array().unwrap();
    let types: Vec<_> = events
        .iter()
        .map(|e| e["node"]["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["RecordCreated", "RecordUpdated", "RecordArchived"]);
    let second = &events[1]["node"];
    assert_eq!(second["sequence"], json!(2));
    assert_eq!(second["actor"]["email"], json!(session.email));
    assert_eq!(
        second["requestId"].as_str(),
        update.request_id.as_deref(),
        "the event names the request that caused it"
    );
    assert_eq!(
        second["changes"],
        json!([{ "field": "email", "before": "ada@example.org", "after": "ada@lovelace.example.org" }])
    );
    assert_eq!(
        events[2]["node"]["changes"],
        json!([{ "field": "archived", "before": "false", "after": "true" }])
    );

    let page = app
        .graphql(
            Some(&session.token),
            HISTORY,
            json!({ "id": created["id"], "first": 2 }),
        )
        .await
        .ok();
    assert_eq!(
        page.data("recordHistory.pageInfo.hasNextPage"),
        &json!(true)
    );
    let cursor = page.data("recordHistory.edges.1.cursor").clone();
    let rest = app
        .graphql(
            Some(&session.token),
            HISTORY,
            json!({ "id": created["id"], "after": cursor }),
        )
        .await
        .ok();
    assert_eq!(rest.data("recordHistory.edges.0.node.sequence"), &json!(3));
}

#[tokio::test]
async fn invalid_values_are_validation_errors_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("invalid")).await;
    let created = app.create_employee(&session.token, grace()).await;
    let cases = [
        ("email", json!("not-an-email")),
        ("phone", json!("call me maybe")),
        ("firstName", json!("   ")),
        ("lastName", json!(null)),
        ("startDate", json!("31/12/2024")),
        ("startDate", json!("0000-01-01")),
        ("startDate", json!("+10000-01-01")),
    ];
    for (field, value) in cases {
        let response = app
            .graphql(
                Some(&session.token),
                UPDATE,
                json!({ "id": created["id"], "input": { field: value } }),
            )
            .await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{field}: {}",
            response.body
        );
        assert_eq!(response.field(), Some(field), "{}", response.body);
    }
    let create = app
        .graphql(
            Some(&session.token),
            "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
            json!({ "input": { "firstName": "", "lastName": "X" } }),
        )
        .await;
    assert_eq!(create.code(), Some("VALIDATION"));
    assert_eq!(create.field(), Some("firstName"));

    // Every invalid field at once, one error each, named as the API names them (in the
    // message too), so a form can mark them all after one request.
    for (mutation, variables) in [
        (
            "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
            json!({ "input": { "firstName": " ", "lastName": "X", "email": "nope",
                               "startDate": "31/12/2024" } }),
        ),
        (
            UPDATE,
            json!({ "id": created["id"], "input": { "email": "nope", "phone": "call me maybe",
                                                    "startDate": "31/12/2024" } }),
        ),
    ] {
        let response = app.graphql(Some(&session.token), mutation, variables).await;
        let errors = response.body["errors"].as_array().expect("errors");
        let mut fields: Vec<&str> = errors
            .iter()
            .map(|error| {
                assert_eq!(error["extensions"]["code"], "VALIDATION", "{error}");
                assert!(error["extensions"].get("fieldErrors").is_none(), "{error}");
                assert!(
                    !error["message"].as_str().unwrap().contains("start_date"),
                    "{error}"
                );
                error["extensions"]["field"].as_str().unwrap()
            })
            .collect();
        fields.sort_unstable();
        let expected: &[&str] = if mutation.contains("createEmployee") {
            &["email", "firstName", "startDate"]
        } else {
            &["email", "phone", "startDate"]
        };
        assert_eq!(fields, expected, "{}", response.body);
    }
    // GraphQL's own errors about an input's value name the field too.
    for (input, field) in [
        (
            json!({ "firstName": "A", "lastName": "B", "employmentType": "BOGUS" }),
            "employmentType",
        ),
        (json!({ "firstName": "A" }), "lastName"),
        (
            json!({ "firstName": "A", "lastName": "B", "nickname": "C" }),
            "nickname",
        ),
    ] {
        let response = app
            .graphql(
                Some(&session.token),
                "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
                json!({ "input": input }),
            )
            .await;
        assert_eq!(response.code(), Some("VALIDATION"), "{}", response.body);
        assert_eq!(response.field(), Some(field), "{}", response.body);
    }
    // ... and every problem of the value at once, written in the document or in variables.
    for (query, variables) in [
        (
            "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
            json!({ "input": { "firstName": "A", "employmentType": "BOGUS", "nickname": "C",
                               "customFields": [{ "key": "k", "value": 1 }, { "value": 2 }] } }),
        ),
        (
            "mutation { created: createEmployee(input: { firstName: \"A\", employmentType: BOGUS, nickname: \"C\", customFields: [{ key: \"k\", value: 1 }, { value: 2 }] }) { id } }",
            json!({}),
        ),
    ] {
        let response = app.graphql(Some(&session.token), query, variables).await;
        assert_eq!(
            response.invalid_fields(),
            ["employmentType", "key", "lastName", "nickname"],
            "{}",
            response.body
        );
    }

    let read = app
        .graphql(
            Some(&session.token),
            EMPLOYEE,
            json!({ "id": created["id"] }),
        )
        .await
        .ok();
    assert_eq!(
        read.data("employee.version"),
        &json!(1),
        "no invalid update was applied"
    );
    let list = app
        .graphql(Some(&session.token), LIST, json!({}))
        .await
        .ok();
    assert_eq!(
        list.data("employees.totalCount"),
        &json!(1),
        "no invalid create was applied"
    );
}

#[tokio::test]
async fn unknown_fields_are_rejected_with_a_validation_code() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("unknown")).await;
    let created = app.create_employee(&session.token, grace()).await;

    let response = app
        .graphql(
            Some(&session.token),
            UPDATE,
            json!({ "id": created["id"], "input": { "salary": "1" } }),
        )
        .await;

    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.code(), Some("VALIDATION"));
    assert!(response.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("salary"));
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("ids")).await;
    let missing = uuid::Uuid::now_v7().to_string();

    for query in [EMPLOYEE, HISTORY] {
        let response = app
            .graphql(Some(&session.token), query, json!({ "id": missing }))
            .await;
        assert_eq!(response.code(), Some("NOT_FOUND"), "{}", response.body);
    }
    let update = app
        .graphql(
            Some(&session.token),
            UPDATE,
            json!({ "id": missing, "input": { "firstName": "X" } }),
        )
        .await;
    assert_eq!(update.code(), Some("NOT_FOUND"));
    let archive = app
        .graphql(
            Some(&session.token),
            "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
            json!({ "id": missing }),
        )
        .await;
    assert_eq!(archive.code(), Some("NOT_FOUND"));
    let malformed = app
        .graphql(Some(&session.token), EMPLOYEE, json!({ "id": "42" }))
        .await;
    assert_eq!(malformed.code(), Some("VALIDATION"));
    let bad_page = app
        .graphql(Some(&session.token), LIST, json!({ "first": 0 }))
        .await;
    assert_eq!(bad_page.code(), Some("VALIDATION"));
    let bad_cursor = app
        .graphql(Some(&session.token), LIST, json!({ "after": "nope" }))
        .await;
    assert_eq!(bad_cursor.code(), Some("VALIDATION"));
}

#[tokio::test]
async fn records_need_a_session() {
    let app = TestApp::spawn().await;
    for query in [
        LIST,
        "mutation { createEmployee(input: { firstName: \"A\", lastName: \"B\" }) { id } }",
    ] {
        let response = app.graphql(None, query, json!({})).await;
        assert_eq!(
            response.code(),
            Some("UNAUTHENTICATED"),
            "{}",
            response.body
        );
    }
}
