//! What the service keeps in memory between requests — sessions with their grants, subject
//! keys, custom field schemas — is dropped as soon as anyone changes it: this instance's own
//! changes before they are answered, any other writer's (another instance, its projector, an
//! operator) when the tenant database announces them.

use std::time::{Duration, Instant};

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};
use sqlx::PgConnection;

const ME: &str = "{ me { id } }";
const EMPLOYEES: &str = "{ employees { totalCount } }";

/// Well below the ten seconds a cached session is used for: a change seen within this came
/// through the announcement, not through the copy growing old.
const AT_ONCE: Duration = Duration::from_secs(3);

async fn call(app: &TestApp, session: &Session, document: &str, variables: Value) -> Response {
    app.graphql(Some(&session.token), document, variables).await
}

/// Asks until `done` holds of the answer, for at most [`AT_ONCE`].
async fn until(
    app: &TestApp,
    session: &Session,
    document: &str,
    variables: Value,
    done: impl Fn(&Response) -> bool,
) -> Response {
    let started = Instant::now();
    loop {
        let answer = call(app, session, document, variables.clone()).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < AT_ONCE,
            "still not seen after {AT_ONCE:?}: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new organisation, the id of its Viewer role, and a user holding it whose session and
/// grants the service has in memory (the user listed employees once).
async fn viewer_in_memory(prefix: &str) -> (TestApp, Session, String, Session) {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug(prefix)).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let user = app
        .user_with_roles(&admin, std::slice::from_ref(&viewer))
        .await;
    call(&app, &user, EMPLOYEES, json!({})).await.ok();
    (app, admin, viewer, user)
}

async fn execute(db: &mut PgConnection, statement: &str) {
    sqlx::query(statement)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// An administrator's session in the service's memory, then revoked in the database with its
/// announcement turned off: still answered from memory. The admin connection is returned.
async fn silently_revoked(app: &TestApp, prefix: &str) -> (Session, PgConnection) {
    let admin = app.sign_up(&slug(prefix)).await;
    // The sign-up's own announcements (its user, its roles) are heard before the session is
    // cached, or they would drop it below.
    app.settled(admin.tenant_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(app, &admin, ME, json!({})).await.ok();

    let mut db = app.tenant_admin(admin.tenant_id).await;
    execute(
        &mut db,
        "ALTER TABLE sessions DISABLE TRIGGER sessions_announce_revocation",
    )
    .await;
    execute(&mut db, "UPDATE sessions SET revoked_at = now()").await;
    execute(
        &mut db,
        "ALTER TABLE sessions ENABLE TRIGGER sessions_announce_revocation",
    )
    .await;
    call(app, &admin, ME, json!({})).await.ok();
    (admin, db)
}

#[tokio::test]
async fn a_session_is_used_from_memory_until_the_database_announces_a_change() {
    let app = TestApp::spawn().await;
    // A revocation nobody announces (its trigger off) is not seen: the copy in memory answers.
    let (admin, mut db) = silently_revoked(&app, "memory").await;

    // The announcement drops it.
    execute(&mut db, "NOTIFY custos_cache, 'sessions'").await;
    until(&app, &admin, ME, json!({}), |answer| {
        answer.code() == Some("UNAUTHENTICATED")
    })
    .await;
}

#[tokio::test]
async fn a_session_or_permission_ended_by_another_writer_is_refused_at_once() {
    let (app, admin, viewer, user) = viewer_in_memory("elsewhere").await;
    call(&app, &admin, ME, json!({})).await.ok();

    // What another instance's projector writes when the role loses a permission.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query("DELETE FROM role_grants WHERE role_id = $1::uuid AND datasheet = 'employees'")
        .bind(&viewer)
        .execute(&mut db)
        .await
        .unwrap();
    until(&app, &user, EMPLOYEES, json!({}), |answer| {
        answer.code() == Some("FORBIDDEN")
    })
    .await;

    // What another instance writes when its user logs out.
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE user_id = $1")
        .bind(admin.user_id)
        .execute(&mut db)
        .await
        .unwrap();
    until(&app, &admin, ME, json!({}), |answer| {
        answer.code() == Some("UNAUTHENTICATED")
    })
    .await;
    call(&app, &user, ME, json!({})).await.ok();
}

#[tokio::test]
async fn a_subject_erased_by_another_writer_is_unreadable_here_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("erased-there")).await;
    let created = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Wilhelmina", "lastName": "Q" }),
        )
        .await;
    let history =
        "query($id: ID!) { recordHistory(id: $id) { edges { node { changes { field after } } } } }";
    let first_name = |answer: &Response| {
        answer
            .data("recordHistory.edges.0.node.changes")
            .as_array()
            .expect("changes")
            .iter()
            .find(|change| change["field"] == "firstName")
            .map(|change| change["after"].clone())
    };
    let read = call(&app, &admin, history, json!({ "id": created["id"] }))
        .await
        .ok();
    assert_eq!(first_name(&read), Some(json!("Wilhelmina")));

    // Another instance destroys the subject's key.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query(
        "UPDATE subject_keys SET wrapped_key = NULL, erased_at = now() WHERE subject_id = $1::uuid",
    )
    .bind(created["id"].as_str().unwrap())
    .execute(&mut db)
    .await
    .unwrap();
    until(
        &app,
        &admin,
        history,
        json!({ "id": created["id"] }),
        |answer| first_name(answer) == Some(json!("[erased]")),
    )
    .await;
}

#[tokio::test]
async fn this_instances_own_changes_are_seen_by_the_next_request_without_waiting() {
    let (app, admin, viewer, user) = viewer_in_memory("own-changes").await;
    call(
        &app,
        &admin,
        "mutation($r: ID!) { revokePermission(roleId: $r, grant: { datasheet: EMPLOYEES, permission: READ }) { id } }",
        json!({ "r": viewer }),
    )
    .await
    .ok();
    assert_eq!(
        call(&app, &user, EMPLOYEES, json!({})).await.code(),
        Some("FORBIDDEN")
    );

    // A custom field is usable by the very next write after it was added.
    let create = "mutation($i: CreateEmployeeInput!) { createEmployee(input: $i) { id customFields { key value } } }";
    call(
        &app,
        &admin,
        create,
        json!({ "i": { "firstName": "F", "lastName": "Before" } }),
    )
    .await
    .ok();
    call(
        &app,
        &admin,
        "mutation { addCustomField(datasheet: EMPLOYEES, input: { key: \"badge\", label: \"Badge\", type: NUMBER }) { key } }",
        json!({}),
    )
    .await
    .ok();
    let after = call(
        &app,
        &admin,
        create,
        json!({ "i": { "firstName": "F", "lastName": "After", "customFields": [{ "key": "badge", "value": 7 }] } }),
    )
    .await
    .ok();
    assert_eq!(
        after.data("createEmployee.customFields"),
        &json!([{ "key": "badge", "value": 7.0 }])
    );

    // A deactivated user's session ends with the deactivation.
    call(&app, &user, ME, json!({})).await.ok();
    call(
        &app,
        &admin,
        "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
        json!({ "id": user.user_id }),
    )
    .await
    .ok();
    assert_eq!(
        call(&app, &user, ME, json!({})).await.code(),
        Some("UNAUTHENTICATED")
    );
}

#[tokio::test]
async fn losing_the_listening_connection_drops_every_copy() {
    let app = TestApp::spawn().await;
    let (admin, mut db) = silently_revoked(&app, "deaf").await;

    // Its listening connection ends: announcements may be lost from now on, so nothing kept
    // is trusted, and the revocation nobody announced is seen.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(ended, [true], "one listening connection");
    until(&app, &admin, ME, json!({}), |answer| {
        answer.code() == Some("UNAUTHENTICATED")
    })
    .await;
}
