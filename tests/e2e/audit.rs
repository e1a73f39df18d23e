//! An auditor's view of one record: as it was at any moment, and what changed between two
//! versions — replayed from the event store, for archived, restored, restricted, hired and
//! erased records.

use custos_tests::feed;
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

const AUDIT: &str = "query($f: AuditLogFilter, $first: Int, $after: String) { auditLog(filter: $f, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { position eventType aggregateType aggregateId datasheet subjectIds fields actor { kind name } changes { field before after } } } } }";

fn nodes(response: &custos_tests::Response) -> Vec<Value> {
    response
        .data("auditLog.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test]
async fn the_audit_log_shows_everything_filters_and_exports_without_values() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("auditlog")).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Audra", "lastName": "Logg", "department": "Sales" }),
        )
        .await;
    let id = employee["id"].as_str().unwrap().to_owned();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Ledger\" }) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        "mutation { createRole(input: { name: \"Auditors\" }) { id } }",
        json!({}),
    )
    .await
    .ok();
    let failed = app
        .login(&admin.slug, &admin.email, "not the password")
        .await;
    assert!(failed.is_err());
    app.graphql(
        Some(&admin.token),
        "mutation { exportRecords(datasheet: EMPLOYEES, format: CSV) { count } }",
        json!({}),
    )
    .await
    .ok();
    app.settled(admin.tenant_id).await;

    // Everything, newest first: data, roles, logins, exports.
    let all = app
        .graphql(Some(&admin.token), AUDIT, json!({ "first": 100 }))
        .await
        .ok();
    let types: Vec<String> = nodes(&all)
        .iter()
        .map(|n| n["eventType"].as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "RecordsExported",
        "LoginFailed",
        "RoleCreated",
        "RecordUpdated",
        "RecordCreated",
        "UserRegistered",
        "LoginSucceeded",
    ] {
        assert!(
            types.contains(&expected.to_owned()),
            "{expected} missing from {types:?}"
        );
    }
    let positions: Vec<i64> = nodes(&all)
        .iter()
        .map(|n| n["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "newest first");

    // By subject, with the values read from the event when shown.
    let about = app
        .graphql(
            Some(&admin.token),
            AUDIT,
            json!({ "f": { "subjectId": id } }),
        )
        .await
        .ok();
    let about = nodes(&about);
    let kinds: Vec<&str> = about
        .iter()
        .map(|n| n["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["RecordsExported", "RecordUpdated", "RecordCreated"]);
    assert_eq!(about[1]["fields"], json!(["department"]));
    assert_eq!(
        about[1]["changes"],
        json!([{ "field": "department", "before": "Sales", "after": "Ledger" }])
    );
    assert_eq!(about[1]["datasheet"], "EMPLOYEES");
    assert_eq!(about[1]["actor"]["kind"], "USER");
    // By type and page by page.
    let page = app
        .graphql(
            Some(&admin.token),
            AUDIT,
            json!({ "f": { "eventTypes": ["RecordCreated", "RecordUpdated"] }, "first": 1 }),
        )
        .await
        .ok();
    assert_eq!(page.data("auditLog.pageInfo.hasNextPage"), true);
    let next = app
        .graphql(
            Some(&admin.token),
            AUDIT,
            json!({ "f": { "eventTypes": ["RecordCreated", "RecordUpdated"] }, "first": 1, "after": page.data("auditLog.pageInfo.endCursor") }),
        )
        .await
        .ok();
    assert_eq!(nodes(&page)[0]["eventType"], "RecordUpdated");
    assert_eq!(nodes(&next)[0]["eventType"], "RecordCreated");
    // By actor: nothing by someone else.
    let nobody = app
        .graphql(
            Some(&admin.token),
            AUDIT,
            json!({ "f": { "actorId": uuid::Uuid::now_v7().to_string() } }),
        )
        .await
        .ok();
    assert!(nodes(&nobody).is_empty());
    for bad in [
        json!({ "first": 0 }),
        json!({ "after": "not a cursor" }),
        json!({ "f": { "from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z" } }),
    ] {
        let refused = app.graphql(Some(&admin.token), AUDIT, bad.clone()).await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{bad}");
    }

    // The read model holds no value.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT row_to_json(a)::text FROM audit_log a")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let stored = stored.join("\n");
    for value in ["Audra", "Logg", "Sales", "Ledger"] {
        assert!(
            !stored.contains(value),
            "`{value}` is in the audit log read model"
        );
    }

    // The export: recorded, then streamed.
    let export = app
        .graphql(
            Some(&admin.token),
            "mutation($f: AuditLogFilter) { exportAuditLog(filter: $f, format: CSV) { exportId count downloadUrl } }",
            json!({ "f": { "subjectId": id } }),
        )
        .await
        .ok();
    assert_eq!(export.data("exportAuditLog.count"), 3);
    let csv = reqwest::get(format!(
        "http://{}{}",
        app.address,
        export.data("exportAuditLog.downloadUrl").as_str().unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("position,recorded_at,aggregate_type"));
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[1].contains("RecordsExported") && lines[3].contains("RecordCreated"));
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AuditLogExported'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(recorded, 1);

    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    assert_eq!(
        app.graphql(Some(&reader.token), AUDIT, json!({}))
            .await
            .code(),
        Some("FORBIDDEN")
    );
}

#[tokio::test]
async fn the_live_feed_streams_new_entries_of_one_organisation_only() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("feed")).await;
    let other = app.sign_up(&slug("elsewhere")).await;
    let address = app.address.to_string();
    let (mut mine, ack) = feed::subscribe(&address, &admin.token).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let (mut theirs, _) = feed::subscribe(&address, &other.token).await;

    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Fiona", "lastName": "Feed" }),
        )
        .await;
    let id = employee["id"].as_str().unwrap();
    let mut seen = Vec::new();
    while let Some(message) = feed::next(&mut mine, std::time::Duration::from_secs(10)).await {
        assert_eq!(message["type"], "next", "{message}");
        let entry = &message["payload"]["data"]["auditFeed"];
        seen.push(entry.clone());
        if entry["aggregateId"] == id {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| e["eventType"] == "RecordCreated" && e["aggregateId"] == id),
        "{seen:?}"
    );
    // The other organisation's subscriber sees nothing of it.
    if let Some(message) = feed::next(&mut theirs, std::time::Duration::from_secs(2)).await {
        assert_ne!(
            message["payload"]["data"]["auditFeed"]["aggregateId"], id,
            "{message}"
        );
    }

    // A WebSocket connection serves subscriptions only.
    let (mut querying, _) =
        feed::open(&address, Some(&admin.token), "{ employees { totalCount } }").await;
    let answer = feed::next(&mut querying, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        answer.to_string().contains("only subscriptions"),
        "{answer}"
    );

    // Without a token, or without `history`, no feed.
    let (mut anonymous, refused) = feed::subscribe(&address, "cus_not_a_token").await;
    assert_ne!(refused["type"], "connection_ack", "{refused}");
    let _ = feed::next(&mut anonymous, std::time::Duration::from_millis(200)).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    let (mut reading, ack) = feed::subscribe(&address, &reader.token).await;
    assert_eq!(ack["type"], "connection_ack");
    let answer = feed::next(&mut reading, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        answer["payload"]["data"].is_null() || answer["type"] == "error",
        "{answer}"
    );
    assert!(answer.to_string().contains("FORBIDDEN"), "{answer}");
}
