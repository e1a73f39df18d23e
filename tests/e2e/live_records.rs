//! Live records (`recordChanged`) over a real WebSocket: every kind of change, once the read
//! model shows it, only what the subscriber may read, never an erased value, narrowed by
//! datasheet and ids, one organisation never seeing another's.

use std::time::Duration;

use custos_tests::feed::{next, open_with, Socket};
use custos_tests::{slug, Session, TestApp};
use serde_json::{json, Value};

const CHANGES: &str = "subscription($d: Datasheet, $ids: [ID!]) { recordChanged(datasheet: $d, ids: $ids) { id datasheet change version record { id ... on Employee { firstName } ... on Contact { firstName } } } }";

const SOON: Duration = Duration::from_secs(10);

/// A subscription to `recordChanged` with `variables`, acknowledged.
async fn live(app: &TestApp, token: &str, variables: Value) -> Socket {
    let (socket, ack) = open_with(&app.address.to_string(), Some(token), CHANGES, variables).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
}

/// The next `recordChanged` this socket is sent, within `wait`.
async fn change(socket: &mut Socket, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = next(socket, deadline - tokio::time::Instant::now()).await?;
        if message["id"] == "1" && message["type"] == "next" {
            return Some(message["payload"]["data"]["recordChanged"].clone());
        }
        if message["id"] == "1" {
            return Some(message);
        }
    }
}

async fn create_employee(app: &TestApp, session: &Session, first_name: &str) -> (String, i64) {
    let created = app
        .graphql(
            Some(&session.token),
            "mutation($f: String!) { createEmployee(input: { firstName: $f, lastName: \"Live\" }) { id version } }",
            json!({ "f": first_name }),
        )
        .await
        .ok();
    (
        created
            .data("createEmployee.id")
            .as_str()
            .unwrap()
            .to_owned(),
        created.data("createEmployee.version").as_i64().unwrap(),
    )
}

async fn run(app: &TestApp, session: &Session, query: &str, variables: Value) -> Value {
    app.graphql(Some(&session.token), query, variables)
        .await
        .ok()
        .body
}

#[tokio::test]
async fn every_change_of_a_readable_record_is_sent_once_the_read_model_shows_it() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("live")).await;
    let mut all = live(&app, &admin.token, json!({})).await;
    // Give the subscription a moment to be in place before the first change.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (id, _) = create_employee(&app, &admin, "Lina").await;
    let created = change(&mut all, SOON).await.expect("created");
    assert_eq!(created["change"], "CREATED", "{created}");
    assert_eq!(
        (created["id"].as_str(), created["datasheet"].as_str()),
        (Some(id.as_str()), Some("EMPLOYEES"))
    );
    assert_eq!(created["version"], 1);
    assert_eq!(created["record"]["firstName"], "Lina", "{created}");

    run(
        &app,
        &admin,
        "mutation($id: ID!) { updateEmployee(id: $id, input: { firstName: \"Lena\" }) { id } }",
        json!({ "id": id }),
    )
    .await;
    let updated = change(&mut all, SOON).await.expect("updated");
    assert_eq!(
        (updated["change"].as_str(), updated["version"].as_i64()),
        (Some("UPDATED"), Some(2)),
        "{updated}"
    );
    assert_eq!(
        updated["record"]["firstName"], "Lena",
        "the state the change made"
    );

    for (mutation, kind) in [
        (
            "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
            "ARCHIVED",
        ),
        (
            "mutation($id: ID!) { restoreRecord(id: $id) { id } }",
            "RESTORED",
        ),
        (
            "mutation($id: ID!) { restrictRecord(id: $id, reason: ACCURACY_CONTESTED) { id } }",
            "RESTRICTED",
        ),
        (
            "mutation($id: ID!) { liftRestriction(id: $id) { id } }",
            "RESTRICTION_LIFTED",
        ),
    ] {
        run(&app, &admin, mutation, json!({ "id": id })).await;
        let got = change(&mut all, SOON).await.expect(kind);
        assert_eq!(got["change"], kind, "{got}");
        assert_eq!(got["id"], id.as_str());
    }

    // Erased: told so, and nothing of the person is sent.
    let version = run(
        &app,
        &admin,
        "query($id: ID!) { employee(id: $id) { version } }",
        json!({ "id": id }),
    )
    .await["data"]["employee"]["version"]
        .clone();
    run(
        &app,
        &admin,
        "mutation($id: ID!, $v: Int!) { eraseRecord(id: $id, expectedVersion: $v, ground: CONSENT_WITHDRAWN) { id } }",
        json!({ "id": id, "v": version }),
    )
    .await;
    let erased = change(&mut all, SOON).await.expect("erased");
    assert_eq!(erased["change"], "ERASED", "{erased}");
    assert!(erased["record"].is_null(), "{erased}");
    assert!(!erased.to_string().contains("Lena") && !erased.to_string().contains("Lina"));

    // What a subscriber was sent with values is recorded as a read of the record.
    let tenant = app.tenant(admin.tenant_id).await;
    let reads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM record_reads WHERE record_id = $1::uuid AND via = 'subscription'",
    )
    .bind(&id)
    .fetch_one(&tenant.pool)
    .await
    .unwrap();
    assert!(reads >= 2, "{reads} reads recorded");
}

#[tokio::test]
async fn a_scheduled_change_is_sent_when_cancelled_and_when_it_takes_effect_on_its_day() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("live-scheduled")).await;
    let (id, _) = create_employee(&app, &admin, "Nell").await;
    let mut mine = live(&app, &admin.token, json!({ "ids": [id] })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let today = chrono::Utc::now().date_naive();
    let next_month = today + chrono::Duration::days(31);
    let schedule = "mutation($id: ID!, $name: String, $on: NaiveDate) {
        updateEmployee(id: $id, input: { firstName: $name }, effectiveFrom: $on) { version } }";

    run(
        &app,
        &admin,
        schedule,
        json!({ "id": id, "name": "Nora", "on": next_month }),
    )
    .await;
    let scheduled = change(&mut mine, SOON).await.expect("scheduled");
    assert_eq!(
        (scheduled["change"].as_str(), scheduled["version"].as_i64()),
        (Some("UPDATED"), Some(2)),
        "{scheduled}"
    );
    assert_eq!(scheduled["record"]["firstName"], "Nell", "not in force yet");
    run(
        &app,
        &admin,
        schedule,
        json!({ "id": id, "name": "Nina", "on": next_month + chrono::Duration::days(1) }),
    )
    .await;
    assert_eq!(change(&mut mine, SOON).await.expect("second")["version"], 3);
    run(
        &app,
        &admin,
        "mutation($id: ID!) { cancelScheduledChange(id: $id, version: 3) { version } }",
        json!({ "id": id }),
    )
    .await;
    let cancelled = change(&mut mine, SOON).await.expect("cancelled");
    assert_eq!(
        (cancelled["change"].as_str(), cancelled["version"].as_i64()),
        (Some("SCHEDULED_CHANGE_CANCELLED"), Some(4)),
        "{cancelled}"
    );

    // The day comes: no event, but the record changed, and the subscriber is told which
    // pending change took effect.
    let tenant = app.tenant(admin.tenant_id).await;
    let took = app
        .services
        .scheduled_changes_take_effect(&tenant, next_month)
        .await
        .unwrap();
    assert_eq!(took, 1);
    let effect = change(&mut mine, SOON).await.expect("took effect");
    assert_eq!(
        (effect["change"].as_str(), effect["version"].as_i64()),
        (Some("SCHEDULED_CHANGE_TOOK_EFFECT"), Some(2)),
        "{effect}"
    );
    assert_eq!(effect["id"], id.as_str());
    assert_eq!(
        effect["record"]["firstName"], "Nora",
        "the value in force now"
    );
    assert!(
        change(&mut mine, Duration::from_millis(500))
            .await
            .is_none(),
        "once"
    );
}

#[tokio::test]
async fn subscribers_get_only_what_they_may_read_and_asked_for() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("livenarrow")).await;
    let other = app.sign_up(&slug("liveother")).await;
    // A role that reads employees only.
    let role = run(
        &app,
        &admin,
        "mutation { createRole(input: { name: \"Employees reader\", grants: [{ datasheet: EMPLOYEES, permission: READ }] }) { id } }",
        json!({}),
    )
    .await["data"]["createRole"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reader = app
        .user_with_roles(&admin, std::slice::from_ref(&role))
        .await;

    // Asking for a datasheet one may not read is refused at once.
    let mut refused = live(&app, &reader.token, json!({ "d": "CONTACTS" })).await;
    let error = change(&mut refused, SOON).await.expect("an error");
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(
        error["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{error}"
    );

    let (known, _) = create_employee(&app, &admin, "Known").await;
    let mut readers = live(&app, &reader.token, json!({})).await;
    let mut one = live(&app, &admin.token, json!({ "ids": [known] })).await;
    let mut contacts_only = live(&app, &admin.token, json!({ "d": "CONTACTS" })).await;
    let mut theirs = live(&app, &other.token, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    run(
        &app,
        &admin,
        "mutation { createContact(input: { firstName: \"Cora\", lastName: \"Live\" }) { id } }",
        json!({}),
    )
    .await;
    let (fresh, _) = create_employee(&app, &admin, "Fresh").await;
    run(
        &app,
        &admin,
        "mutation($id: ID!) { updateEmployee(id: $id, input: { firstName: \"Knew\" }) { id } }",
        json!({ "id": known }),
    )
    .await;

    // The employees reader: the two employee changes, not the contact.
    let first = change(&mut readers, SOON).await.expect("a change");
    assert_eq!(
        (first["id"].as_str(), first["datasheet"].as_str()),
        (Some(fresh.as_str()), Some("EMPLOYEES")),
        "{first}"
    );
    let second = change(&mut readers, SOON).await.expect("a change");
    assert_eq!(second["id"], known.as_str(), "{second}");
    // By id: only that record.
    let only = change(&mut one, SOON).await.expect("a change");
    assert_eq!(
        (only["id"].as_str(), only["change"].as_str()),
        (Some(known.as_str()), Some("UPDATED"))
    );
    assert_eq!(change(&mut one, Duration::from_millis(500)).await, None);
    // By datasheet: the contact only.
    let contact = change(&mut contacts_only, SOON).await.expect("a change");
    assert_eq!(contact["datasheet"], "CONTACTS", "{contact}");
    assert_eq!(contact["record"]["firstName"], "Cora");
    assert_eq!(
        change(&mut contacts_only, Duration::from_millis(500)).await,
        None
    );
    // Another organisation: nothing.
    assert_eq!(change(&mut theirs, Duration::from_millis(500)).await, None);

    // The reader's role loses employees: nothing more of them is sent (the subscription,
    // which it may no longer run, ends with an error).
    run(
        &app,
        &admin,
        "mutation($r: ID!) { revokePermission(roleId: $r, grant: { datasheet: EMPLOYEES, permission: READ }) { id } }",
        json!({ "r": role }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    create_employee(&app, &admin, "Hidden").await;
    let after = change(&mut readers, Duration::from_secs(2)).await;
    if let Some(after) = after {
        assert_ne!(after["type"], "next", "nothing but the end: {after}");
    }
}

#[tokio::test]
async fn bad_arguments_are_refused_before_anything_is_sent() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("livebad")).await;
    let too_many: Vec<String> = (0..101).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for variables in [json!({ "ids": ["not-an-id"] }), json!({ "ids": too_many })] {
        let mut socket = live(&app, &admin.token, variables).await;
        let error = change(&mut socket, SOON).await.expect("an error");
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(
            error["payload"][0]["extensions"]["code"], "VALIDATION",
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_subscription_starts_after_the_changes_answered_before_it() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("live-after")).await;
    // Another instance's projector holds the read models: a creation answered with its
    // version alone is written and not yet projected.
    let mut held = app.tenant_admin(admin.tenant_id).await;
    for statement in ["BEGIN", "SELECT 1 FROM projection_checkpoints FOR UPDATE"] {
        sqlx::query(statement).execute(&mut held).await.unwrap();
    }
    let (before, _) = create_employee(&app, &admin, "Before").await;
    let mut feed = live(&app, &admin.token, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    // The subscription started once the read models showed the earlier creation, so the
    // first change it is sent is the one after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, _) = create_employee(&app, &admin, "After").await;
    let first = change(&mut feed, SOON).await.expect("a change");
    assert_eq!(
        first["id"].as_str(),
        Some(after.as_str()),
        "{first} (before: {before})"
    );
}
