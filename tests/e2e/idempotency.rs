//! Retry-safe mutations: an `Idempotency-Key` makes a retry return the first answer and append
//! nothing.

use custos_tests::{slug, Session, TestApp};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const CREATE: &str =
    "mutation($i: CreateEmployeeInput!) { createEmployee(input: $i) { id firstName version } }";

struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

async fn post(
    app: &TestApp,
    token: &str,
    key: Option<&str>,
    query: &str,
    variables: Value,
) -> Answer {
    let mut request = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body = response.json().await.unwrap();
    Answer {
        status,
        replayed,
        body,
    }
}

async fn create(app: &TestApp, session: &Session, key: &str, first_name: &str) -> Answer {
    post(
        app,
        &session.token,
        Some(key),
        CREATE,
        json!({ "i": { "firstName": first_name, "lastName": "Retry" } }),
    )
    .await
}

/// Events of the organisation so far.
async fn events(app: &TestApp, session: &Session) -> i64 {
    let tenant = app.tenant(session.tenant_id).await;
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&tenant.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idem")).await;
    let key = Uuid::new_v4().to_string();
    let first = create(&app, &admin, &key, "Ida").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!first.replayed);
    let before = events(&app, &admin).await;

    let retry = create(&app, &admin, &key, "Ida").await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed, "the retry is marked as a replay");
    assert_eq!(retry.body, first.body);
    assert_eq!(
        events(&app, &admin).await,
        before,
        "the retry appended nothing"
    );
    assert_eq!(app.employee_count(&admin).await, 1);

    // The same key for another request: refused, nothing runs.
    let other = create(&app, &admin, &key, "Someone Else").await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["errors"][0]["extensions"]["code"], "VALIDATION");
    assert!(other.body.get("data").is_none());
    assert_eq!(app.employee_count(&admin).await, 1);

    // Keys are each caller's own: another user's request with the same key runs.
    let editor = app.role_id(&admin, "HR manager").await;
    let colleague = app.user_with_roles(&admin, &[editor]).await;
    let theirs = create(&app, &colleague, &key, "Ida").await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert!(!theirs.replayed);
    assert_ne!(theirs.body, first.body);
    assert_eq!(app.employee_count(&admin).await, 2);

    // A query with a key is just a query; a key that is not one is refused.
    let query = post(&app, &admin.token, Some(&key), "{ me { id } }", json!({})).await;
    assert_eq!(query.status, 200, "{}", query.body);
    let bad = post(
        &app,
        &admin.token,
        Some(&"k".repeat(256)),
        "{ me { id } }",
        json!({}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["errors"][0]["extensions"]["code"], "VALIDATION");
}

#[tokio::test]
async fn concurrent_requests_with_one_key_apply_once() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idemrace")).await;
    let key = Uuid::new_v4().to_string();
    let answers =
        futures::future::join_all((0..8).map(|_| create(&app, &admin, &key, "Rae"))).await;
    let ids: Vec<&Value> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, 200, "{}", answer.body);
            &answer.body["data"]["createEmployee"]["id"]
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert_eq!(app.employee_count(&admin).await, 1);
}

#[tokio::test]
async fn a_request_that_did_not_run_lets_its_key_go() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idemfree")).await;
    let key = Uuid::new_v4().to_string();
    // Does not validate (no input): nothing ran, the key is free for the corrected request.
    let wrong = post(
        &app,
        &admin.token,
        Some(&key),
        "mutation { createEmployee { id } }",
        json!({}),
    )
    .await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    let right = create(&app, &admin, &key, "Ria").await;
    assert_eq!(right.status, 200, "{}", right.body);
    assert!(!right.replayed);
    assert_eq!(app.employee_count(&admin).await, 1);
}

#[tokio::test]
async fn answers_lost_or_erased_are_never_run_again() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idemlost")).await;
    let tenant = app.tenant(admin.tenant_id).await;

    // A request that appended its events but never answered (the service stopped): once its
    // lease lapsed, a retry is told so and runs nothing.
    let key = Uuid::new_v4().to_string();
    assert_eq!(create(&app, &admin, &key, "Lou").await.status, 200);
    sqlx::query("UPDATE idempotent_requests SET running_until = now() - interval '1 second', status = NULL, answer = NULL")
        .execute(&tenant.pool)
        .await
        .unwrap();
    let retry = create(&app, &admin, &key, "Lou").await;
    assert_eq!(retry.status, 409, "{}", retry.body);
    assert_eq!(retry.body["errors"][0]["extensions"]["code"], "CONFLICT");
    assert!(
        retry.body.to_string().contains("answer was lost"),
        "{}",
        retry.body
    );
    assert_eq!(app.employee_count(&admin).await, 1);

    // One that appended nothing before it stopped: the retry runs it.
    let key = Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO idempotent_requests (actor_id, key, fingerprint, request_id, after_position, running_until)
         VALUES ($1, $2, $3, $4, (SELECT max(global_position) FROM events), now() - interval '1 second')",
    )
    .bind(admin.user_id)
    .bind(&key)
    .bind(fingerprint_of("Nia"))
    .bind(Uuid::new_v4())
    .execute(&tenant.pool)
    .await
    .unwrap();
    let retry = create(&app, &admin, &key, "Nia").await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(app.employee_count(&admin).await, 2);

    // An erasure drops every stored answer: a retry is told it was applied, and runs nothing.
    let key = Uuid::new_v4().to_string();
    let first = create(&app, &admin, &key, "Eve").await;
    let created = &first.body["data"]["createEmployee"];
    let erased = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!, $v: Int!) { eraseRecord(id: $id, expectedVersion: $v, ground: CONSENT_WITHDRAWN) { id } }",
            json!({ "id": created["id"], "v": created["version"] }),
        )
        .await;
    assert!(erased.body["errors"].is_null(), "{}", erased.body);
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT answer FROM idempotent_requests WHERE key = $1")
            .bind(&key)
            .fetch_one(&tenant.pool)
            .await
            .unwrap();
    assert!(stored.is_none(), "the answer naming Eve is gone");
    let retry = create(&app, &admin, &key, "Eve").await;
    assert_eq!(retry.status, 409, "{}", retry.body);
    assert!(
        retry.body.to_string().contains("no longer kept"),
        "{}",
        retry.body
    );
    assert!(!retry.body.to_string().contains("Eve"));
}

#[tokio::test]
async fn a_keyed_request_has_an_id_of_the_servers_own_in_its_events() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idemid")).await;
    let tenant = app.tenant(admin.tenant_id).await;
    // A caller's id is kept without a key, and replaced with one: the retry of a request
    // often sends its id again, and a lost answer is looked for in the events by that id.
    let callers = Uuid::new_v4().to_string();
    let send = |key: Option<String>| {
        let mut request = reqwest::Client::new()
            .post(app.url("/graphql"))
            .bearer_auth(&admin.token)
            .header("x-request-id", &callers)
            .json(&json!({ "query": CREATE, "variables": { "i": { "firstName": "Ian", "lastName": "Retry" } } }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(send(None).await, callers);
    let key = Uuid::new_v4().to_string();
    let servers = send(Some(key.clone())).await;
    assert_ne!(servers, callers);
    let holder: Uuid =
        sqlx::query_scalar("SELECT request_id FROM idempotent_requests WHERE key = $1")
            .bind(&key)
            .fetch_one(&tenant.pool)
            .await
            .unwrap();
    assert_eq!(holder.to_string(), servers);
    let appended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata->>'request_id' = $1")
            .bind(&servers)
            .fetch_one(&tenant.pool)
            .await
            .unwrap();
    assert!(
        appended > 0,
        "the keyed request's events carry the server's id"
    );
}

#[tokio::test]
async fn a_long_request_keeps_its_key_and_an_erasure_meanwhile_drops_its_answer() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idemlong")).await;
    let tenant = app.tenant(admin.tenant_id).await;
    let other = create(&app, &admin, &Uuid::new_v4().to_string(), "Ola").await;
    let other_id: Uuid = other.body["data"]["createEmployee"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Appending waits while the test holds the event log: the keyed request runs for as long.
    let database = app.tenant_database(admin.tenant_id).await;
    let mut blocker = PgConnection::connect_with(&custos_tests::admin_options(&database))
        .await
        .unwrap();
    let mut blocker = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let key = Uuid::new_v4().to_string();
    let running = {
        let app = &app;
        let admin = &admin;
        let key = key.clone();
        async move { create(app, admin, &key, "Lena").await }
    };
    let watch = async {
        let lease = |pool: sqlx::PgPool, key: String| async move {
            sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
                "SELECT running_until FROM idempotent_requests WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
        };
        let mut first = None;
        while first.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            first = lease(tenant.pool.clone(), key.clone()).await;
        }
        // An erasure while it runs (any change to a subject's key counts as one).
        sqlx::query("UPDATE subject_keys SET wrapped_key = wrapped_key WHERE subject_id = $1")
            .bind(other_id)
            .execute(&tenant.pool)
            .await
            .unwrap();
        // The request renews its lease while it runs (every 20 s).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let now = lease(tenant.pool.clone(), key.clone()).await;
            if now > first {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease was not renewed"
            );
        }
        blocker.commit().await.unwrap();
    };
    let (answer, ()) = tokio::join!(running, watch);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["data"]["createEmployee"]["firstName"], "Lena");
    let (status, stored): (Option<i16>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT status, answer FROM idempotent_requests WHERE key = $1")
            .bind(&key)
            .fetch_one(&tenant.pool)
            .await
            .unwrap();
    assert_eq!(status, Some(200));
    assert!(
        stored.is_none(),
        "an answer computed before the erasure is not kept"
    );
    let retry = create(&app, &admin, &key, "Lena").await;
    assert_eq!(retry.status, 409, "{}", retry.body);
    assert!(
        retry.body.to_string().contains("no longer kept"),
        "{}",
        retry.body
    );
    assert_eq!(app.employee_count(&admin).await, 2);
}

#[tokio::test]
async fn the_sweep_keeps_keys_whose_request_still_runs() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("idemsweep")).await;
    let tenant = app.tenant(admin.tenant_id).await;
    for (key, running) in [("old-answered", false), ("old-running", true)] {
        sqlx::query(
            "INSERT INTO idempotent_requests
                    (actor_id, key, fingerprint, request_id, after_position, running_until, status,
                     created_at)
             VALUES ($1, $2, $3, $4, 0, CASE WHEN $5 THEN now() + interval '1 minute' END,
                     CASE WHEN $5 THEN NULL ELSE 200 END, now() - interval '25 hours')",
        )
        .bind(admin.user_id)
        .bind(key)
        .bind(fingerprint_of("Sam"))
        .bind(Uuid::new_v4())
        .bind(running)
        .execute(&tenant.pool)
        .await
        .unwrap();
    }
    let swept = custos_api::testing::sweep_idempotency_keys(&tenant.pool)
        .await
        .unwrap();
    assert_eq!(swept, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotent_requests")
        .fetch_all(&tenant.pool)
        .await
        .unwrap();
    assert_eq!(left, ["old-running"]);
    // A retry of the running one waits for it rather than running it again beside it.
    let retry = create(&app, &admin, "old-running", "Sam").await;
    assert_eq!(retry.status, 409, "{}", retry.body);
    assert!(
        retry.body.to_string().contains("still running"),
        "{}",
        retry.body
    );
    assert_eq!(app.employee_count(&admin).await, 0);
}

/// The fingerprint the service computes for `create(.., first_name)`.
fn fingerprint_of(first_name: &str) -> Vec<u8> {
    use sha2::Digest;
    let variables = json!({ "i": { "firstName": first_name, "lastName": "Retry" } });
    let canonical = json!([CREATE, Value::Null, variables]).to_string();
    sha2::Sha256::digest(canonical.as_bytes()).to_vec()
}
