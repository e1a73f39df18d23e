//! An auditor's view of one record: as it was at any moment, and what changed between two
//! versions — replayed from the event store, for archived, restored, restricted, hired and
//! erased records.

use std::collections::BTreeMap;

use custos_tests::{slug, TestApp};
use serde_json::{json, Value};

const AS_OF: &str = "query($id: ID!, $at: DateTime!) { recordAsOf(id: $id, at: $at) { version changedAt fields { field value } } }";
const DIFF: &str = "query($id: ID!, $f: Int!, $t: Int!) { recordDiff(id: $id, fromVersion: $f, toVersion: $t) { field before after } }";

fn fields(response: &Value) -> BTreeMap<String, Option<String>> {
    response["data"]["recordAsOf"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_owned(),
                f["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_record_is_replayed_as_it_was_at_any_moment_and_version() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("asof")).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Vera", "lastName": "Version", "department": "Sales" }),
        )
        .await;
    let id = employee["id"].as_str().unwrap().to_owned();
    let call = |query: &'static str, variables: Value| {
        let (app, token) = (&app, admin.token.clone());
        async move { app.graphql(Some(&token), query, variables).await }
    };
    for mutation in [
        "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Support\" }) { id } }",
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
        "mutation($id: ID!) { restoreRecord(id: $id) { id } }",
        "mutation($id: ID!) { restrictRecord(id: $id, reason: ACCURACY_CONTESTED) { id } }",
        "mutation($id: ID!) { liftRestriction(id: $id) { id } }",
    ] {
        call(mutation, json!({ "id": id })).await.ok();
    }
    let history = call(
        "query($id: ID!) { recordHistory(id: $id) { edges { node { sequence recordedAt } } } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let times: Vec<String> = history
        .data("recordHistory.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["recordedAt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(times.len(), 6);

    let at = |i: usize| call(AS_OF, json!({ "id": id, "at": times[i] }));
    let v2 = at(1).await.ok();
    assert_eq!(v2.data("recordAsOf.version"), 2);
    let state = fields(&v2.body);
    assert_eq!(state["department"].as_deref(), Some("Support"));
    assert_eq!(state["archived"].as_deref(), Some("false"));
    assert_eq!(
        fields(&at(2).await.ok().body)["archived"].as_deref(),
        Some("true")
    );
    assert_eq!(
        fields(&at(3).await.ok().body)["archived"].as_deref(),
        Some("false")
    );
    assert_eq!(
        fields(&at(4).await.ok().body)["restricted"].as_deref(),
        Some("true")
    );
    assert_eq!(
        fields(&at(5).await.ok().body)["restricted"].as_deref(),
        Some("false")
    );

    let diff = call(DIFF, json!({ "id": id, "f": 1, "t": 2 })).await.ok();
    assert_eq!(
        diff.data("recordDiff"),
        &json!([{ "field": "department", "before": "Sales", "after": "Support" }])
    );
    let created = call(DIFF, json!({ "id": id, "f": 0, "t": 1 })).await.ok();
    let names: Vec<&str> = created
        .data("recordDiff")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["department", "firstName", "lastName"]);
    assert_eq!(
        call(DIFF, json!({ "id": id, "f": 2, "t": 4 }))
            .await
            .ok()
            .data("recordDiff"),
        &json!([])
    );

    // Bad input: a clear error.
    let early = call(AS_OF, json!({ "id": id, "at": "2001-01-01T00:00:00Z" })).await;
    assert_eq!(early.code(), Some("NOT_FOUND"));
    let future = call(AS_OF, json!({ "id": id, "at": "2999-01-01T00:00:00Z" })).await;
    assert_eq!(future.code(), Some("VALIDATION"));
    for (f, t) in [(0, 7), (-1, 2), (3, 2)] {
        let refused = call(DIFF, json!({ "id": id, "f": f, "t": t })).await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{f}..{t}");
    }

    // After an erasure, every past state reads as erased: the values are gone for good.
    call(
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 6, ground: OBJECTION) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let state = fields(&at(1).await.ok().body);
    assert_eq!(state["department"].as_deref(), Some("[erased]"));
    assert_eq!(state["firstName"].as_deref(), Some("[erased]"));
    let now = call(
        AS_OF,
        json!({ "id": id, "at": chrono::Utc::now().to_rfc3339() }),
    )
    .await
    .ok();
    assert_eq!(now.data("recordAsOf.version"), 7);
    assert_eq!(fields(&now.body)["erased"].as_deref(), Some("true"));

    // A hired applicant, as of after the hire.
    let applicant = app
        .graphql(Some(&admin.token), "mutation { createApplicant(input: { firstName: \"Hal\", lastName: \"Hire\", stage: OFFER }) { id } }", json!({}))
        .await
        .ok()
        .data("createApplicant.id")
        .as_str()
        .unwrap()
        .to_owned();
    let hired = call(
        "mutation($id: ID!) { hireApplicant(id: $id) { employee { id } } }",
        json!({ "id": applicant }),
    )
    .await
    .ok();
    let state = fields(
        &call(
            AS_OF,
            json!({ "id": applicant, "at": chrono::Utc::now().to_rfc3339() }),
        )
        .await
        .ok()
        .body,
    );
    assert_eq!(state["stage"].as_deref(), Some("hired"));
    assert_eq!(
        state["hiredAs"].as_deref(),
        hired.data("hireApplicant.employee.id").as_str()
    );

    // Without `history`: FORBIDDEN.
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let refused = app
        .graphql(
            Some(&reader.token),
            AS_OF,
            json!({ "id": applicant, "at": times[0] }),
        )
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
}
