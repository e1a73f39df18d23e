//! Webhooks against a real HTTP endpoint (the harness's local receiver, reached by the
//! service's own client): each subscribed change arrives once, in commit order, signed as
//! Standard Webhooks specifies, carrying ids and never a value; a failing endpoint is retried
//! with the same message id and then disabled; bad registrations change nothing.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_tests::receiver::{Received, Receiver};
use custos_tests::{slug, Response, Session, TestApp};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// A service whose webhook worker looks every 100 ms and retries after 100 ms, doubled each
/// time, disabling a webhook after `max_failures`; deliveries may reach the receiver on
/// loopback.
async fn app_with(max_failures: u32) -> TestApp {
    TestApp::spawn_with(move |config| {
        config.webhooks.interval = Some(Duration::from_millis(100));
        config.webhooks.retry_base = Duration::from_millis(100);
        config.webhooks.max_failures = max_failures;
        config.webhooks.allow_private = true;
    })
    .await
}

const REGISTER: &str = "mutation($input: RegisterWebhookInput!) {
    registerWebhook(input: $input) { secret webhook { id url events description enabled } } }";

const WEBHOOKS: &str = "{ webhooks { id url events enabled disabledReason
    deliveries(first: 50) { totalCount edges { node { messageId eventType attempt statusCode error succeeded } } } } }";

/// Registers a webhook for `events` at `url`; its id and secret.
async fn register(app: &TestApp, admin: &Session, url: &str, events: &[&str]) -> (String, String) {
    let registered = call(
        app,
        admin,
        REGISTER,
        json!({ "input": { "url": url, "events": events, "description": "CRM sync" } }),
    )
    .await;
    (
        registered
            .data("registerWebhook.webhook.id")
            .as_str()
            .unwrap()
            .to_owned(),
        registered
            .data("registerWebhook.secret")
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// An administrator's call that must succeed.
async fn call(app: &TestApp, admin: &Session, document: &str, variables: Value) -> Response {
    app.graphql(Some(&admin.token), document, variables)
        .await
        .ok()
}

async fn webhooks(app: &TestApp, admin: &Session) -> Vec<Value> {
    app.graphql(Some(&admin.token), WEBHOOKS, json!({}))
        .await
        .ok()
        .data("webhooks")
        .as_array()
        .unwrap()
        .clone()
}

/// Checks a delivery's signature as a receiver would: HMAC-SHA256 under the secret's key
/// over `id.timestamp.body`, compared with one of the `v1,` signatures in the header.
fn signed_with(received: &Received, secret: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(received.header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(received.header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    received
        .header("webhook-signature")
        .split(' ')
        .any(|signature| signature == expected)
}

#[tokio::test]
async fn each_subscribed_change_arrives_once_in_order_signed_and_without_values() {
    let receiver = Receiver::start().await;
    let app = app_with(5).await;
    let admin = app.sign_up(&slug("hooks")).await;
    let (id, secret) = register(
        &app,
        &admin,
        &receiver.url("/custos"),
        &["RECORD_CREATED", "RECORD_UPDATED", "USER_CHANGED"],
    )
    .await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.org" }),
        )
        .await;
    let record_id = employee["id"].as_str().unwrap().to_owned();
    call(
        &app,
        &admin,
        "mutation($id: ID!) { updateEmployee(id: $id, input: { jobTitle: \"Analyst\" }) { id } }",
        json!({ "id": record_id }),
    )
    .await;
    // Not subscribed: an archive and a role; a user is.
    call(
        &app,
        &admin,
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
        json!({ "id": record_id }),
    )
    .await;
    call(
        &app,
        &admin,
        "mutation { createRole(input: { name: \"Payroll\" }) { id } }",
        json!({}),
    )
    .await;
    let member = app.user_with_roles(&admin, &[]).await;

    receiver
        .until(|r| r.iter().any(|r| r.json()["type"] == "user.changed"))
        .await;
    // Nothing more arrives (the archive and the role are not subscribed to).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    let types: Vec<String> = received
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["record.created", "record.updated", "user.changed"],
        "in commit order, once each"
    );
    let now = chrono::Utc::now().timestamp();
    for delivery in &received {
        assert_eq!(delivery.path, "/custos");
        assert_eq!(delivery.header("content-type"), "application/json");
        assert!(signed_with(delivery, &secret), "{:?}", delivery.headers);
        let timestamp: i64 = delivery.header("webhook-timestamp").parse().unwrap();
        assert!((now - timestamp).abs() < 300, "a current timestamp");
        assert!(delivery.header("webhook-id").starts_with("msg_"));
        assert_eq!(delivery.json()["id"], delivery.header("webhook-id"));
        let body = String::from_utf8(delivery.body.clone()).unwrap();
        for value in [
            "Ada",
            "Lovelace",
            "ada@example.org",
            "Analyst",
            &member.email,
        ] {
            assert!(!body.contains(value), "no value leaves: {body}");
        }
        assert_eq!(delivery.json()["organization"], admin.tenant_id.to_string());
    }
    let created = received[0].json();
    assert_eq!(created["data"]["recordId"], record_id);
    assert_eq!(created["data"]["datasheet"], "employees");
    assert_eq!(created["data"]["change"], "RecordCreated");
    assert_eq!(created["data"]["version"], 1);
    assert_eq!(received[1].json()["data"]["version"], 2);
    assert_eq!(
        received[2].json()["data"]["userId"],
        member.user_id.to_string()
    );
    assert_ne!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );

    // The deliveries are listed with the webhook.
    let listed = webhooks(&app, &admin).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["deliveries"]["totalCount"], 3);
    let delivered = &listed[0]["deliveries"]["edges"];
    assert_eq!(delivered[0]["node"]["eventType"], "user.changed");
    assert_eq!(delivered[0]["node"]["statusCode"], 204);
    assert_eq!(delivered[0]["node"]["succeeded"], true);

    // A test message, on request.
    let tested = call(
        &app,
        &admin,
        "mutation($id: ID!) { testWebhook(id: $id) { succeeded statusCode error } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(tested.data("testWebhook.succeeded"), true);
    assert_eq!(tested.data("testWebhook.statusCode"), 204);
    let last = receiver.received().pop().unwrap();
    assert_eq!(last.json()["type"], "webhook.test");
    assert!(signed_with(&last, &secret));

    // Removed: nothing more arrives, and it is no longer listed.
    let removed = call(
        &app,
        &admin,
        "mutation($id: ID!) { removeWebhook(id: $id) }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(removed.data("removeWebhook"), id.as_str());
    let before = receiver.received().len();
    app.create_employee(
        &admin.token,
        json!({ "firstName": "After", "lastName": "Removal" }),
    )
    .await;
    receiver.stays_at(before, "nothing more").await;
    assert!(webhooks(&app, &admin).await.is_empty());
    let again = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { removeWebhook(id: $id) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(again.code(), Some("VALIDATION"), "{:?}", again.body);
}

#[tokio::test]
async fn a_scheduled_change_and_its_cancellation_are_each_a_record_update() {
    let receiver = Receiver::start().await;
    let app = app_with(5).await;
    let admin = app.sign_up(&slug("hooks-scheduled")).await;
    register(&app, &admin, &receiver.url("/custos"), &["RECORD_UPDATED"]).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Sched", "lastName": "Uled" }),
        )
        .await;
    let id = employee["id"].as_str().unwrap().to_owned();
    let on = chrono::Utc::now().date_naive() + chrono::Duration::days(40);
    call(
        &app,
        &admin,
        "mutation($id: ID!, $on: NaiveDate) {
            updateEmployee(id: $id, input: { jobTitle: \"Lead\" }, effectiveFrom: $on) { id } }",
        json!({ "id": id, "on": on }),
    )
    .await
    .ok();
    call(
        &app,
        &admin,
        "mutation($id: ID!) { cancelScheduledChange(id: $id, version: 2) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();

    receiver.until(|r| r.len() >= 2).await;
    let changes: Vec<(String, i64)> = receiver
        .received()
        .iter()
        .map(|r| {
            let data = &r.json()["data"];
            (
                data["change"].as_str().unwrap().to_owned(),
                data["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("RecordUpdated".to_owned(), 2),
            ("ScheduledChangeCancelled".to_owned(), 3)
        ]
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_the_same_id_then_disabled() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let app = app_with(3).await;
    let admin = app.sign_up(&slug("failing")).await;
    let (id, _) = register(&app, &admin, &receiver.url("/in"), &["RECORD_CREATED"]).await;

    app.create_employee(
        &admin.token,
        json!({ "firstName": "Never", "lastName": "Delivered" }),
    )
    .await;
    let attempts = receiver.until(|r| r.len() >= 3).await;
    let ids: Vec<&str> = attempts.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "one message: {ids:?}");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[1] > gaps[0] / 2 && gaps[0] >= Duration::from_millis(90),
        "retried after a backoff: {gaps:?}"
    );

    // After three failures in a row, Custos disables it, and says why.
    let disabled = loop {
        let listed = webhooks(&app, &admin).await;
        if listed[0]["enabled"] == false {
            break listed[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = disabled["disabledReason"].as_str().unwrap();
    assert!(
        reason.contains("3 failed deliveries") && reason.contains("503"),
        "{reason}"
    );
    let deliveries = &disabled["deliveries"]["edges"];
    assert_eq!(deliveries[0]["node"]["attempt"], 3);
    assert_eq!(deliveries[0]["node"]["statusCode"], 503);
    assert_eq!(deliveries[0]["node"]["succeeded"], false);
    receiver.stays_at(3, "no attempt after disabling").await;

    // Enabled again, once the endpoint works: only what comes after is delivered.
    receiver.answer(204);
    let enabled = call(
        &app,
        &admin,
        "mutation($id: ID!) { enableWebhook(id: $id) { enabled disabledReason } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(enabled.data("enableWebhook.enabled"), true);
    let later = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Later", "lastName": "Delivered" }),
        )
        .await;
    let received = receiver.until(|r| r.len() >= 4).await;
    assert_eq!(
        received[3].json()["data"]["recordId"],
        later["id"].as_str().unwrap()
    );
    receiver.stays_at(4, "nothing more").await;
}

#[tokio::test]
async fn bad_registrations_are_refused_by_field_and_change_nothing() {
    let app = app_with(5).await;
    let admin = app.sign_up(&slug("refused")).await;
    let own = format!("http://127.0.0.1:{}/graphql", app.address.port());
    let long = format!("https://hooks.example.org/{}", "a".repeat(2_048));
    for (url, events, field) in [
        (
            "ftp://hooks.example.org/in",
            json!(["RECORD_CREATED"]),
            "url",
        ),
        ("not a url", json!(["RECORD_CREATED"]), "url"),
        (
            "https://user:pw@hooks.example.org/",
            json!(["RECORD_CREATED"]),
            "url",
        ),
        (
            "http://169.254.169.254/latest",
            json!(["RECORD_CREATED"]),
            "url",
        ),
        (own.as_str(), json!(["RECORD_CREATED"]), "url"),
        (long.as_str(), json!(["RECORD_CREATED"]), "url"),
        ("https://hooks.example.org/in", json!([]), "events"),
    ] {
        let response = app
            .graphql(
                Some(&admin.token),
                REGISTER,
                json!({ "input": { "url": url, "events": events } }),
            )
            .await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{url}: {:?}",
            response.body
        );
        assert_eq!(
            response.body["errors"][0]["extensions"]["field"], field,
            "{url}: {:?}",
            response.body
        );
    }
    let member = app.user_with_roles(&admin, &[]).await;
    let refused = app
        .graphql(
            Some(&member.token),
            REGISTER,
            json!({ "input": { "url": "https://hooks.example.org/in", "events": ["RECORD_CREATED"] } }),
        )
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    assert!(
        webhooks(&app, &admin).await.is_empty(),
        "nothing was registered"
    );
    let missing = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { disableWebhook(id: $id) { id } }",
            json!({ "id": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(missing.code(), Some("NOT_FOUND"));
}

#[tokio::test]
async fn a_moved_organisation_s_webhooks_go_on_without_telling_anything_twice() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_two_regions_with(|config| {
        config.webhooks.interval = Some(Duration::from_millis(100));
        config.webhooks.retry_base = Duration::from_millis(100);
        config.webhooks.allow_private = true;
    })
    .await;
    let org = slug("hookmove");
    let admin = app.sign_up(&org).await;
    let (_, secret) = register(&app, &admin, &receiver.url("/moved"), &["RECORD_CREATED"]).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Before", "lastName": "Move" }),
    )
    .await;
    receiver.until(|r| r.len() == 1).await;

    assert!(
        app.custos(&["tenant", "move", "--slug", &org, "--region", "us"])
            .await
    );
    // The running service notices the move within seconds; the same password signs in there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let token = loop {
        match app.login(&org, &admin.email, &admin.password).await {
            Ok(token) => break token,
            Err(refused) => {
                assert!(std::time::Instant::now() < deadline, "{refused:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let after = app
        .create_employee(&token, json!({ "firstName": "After", "lastName": "Move" }))
        .await;
    receiver.until(|r| r.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let received = receiver.received();
    assert_eq!(
        received.len(),
        2,
        "nothing delivered before the move came again"
    );
    assert_eq!(
        received[1].json()["data"]["recordId"],
        after["id"].as_str().unwrap()
    );
    assert!(signed_with(&received[1], &secret), "the same secret");
}

#[tokio::test]
async fn a_webhook_held_by_a_worker_that_died_is_delivered_once_its_lease_runs_out() {
    let receiver = Receiver::start().await;
    let app = app_with(5).await;
    let admin = app.sign_up(&slug("leased")).await;
    let (id, _) = register(&app, &admin, &receiver.url("/leased"), &["RECORD_CREATED"]).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "First", "lastName": "Change" }),
    )
    .await;
    receiver.until(|r| r.len() == 1).await;

    // Another instance took the webhook and died: its lease holds for a while.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query(
        "UPDATE webhook_cursors SET claim = gen_random_uuid(), claimed_until = now() + interval '1 hour'
         WHERE webhook_id = $1::uuid",
    )
    .bind(&id)
    .execute(&mut db)
    .await
    .unwrap();
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Second", "lastName": "Change" }),
    )
    .await;
    receiver
        .stays_at(1, "not while another worker holds it")
        .await;

    sqlx::query("UPDATE webhook_cursors SET claimed_until = now() - interval '1 second' WHERE webhook_id = $1::uuid")
        .bind(&id)
        .execute(&mut db)
        .await
        .unwrap();
    let received = receiver.until(|r| r.len() >= 2).await;
    assert_eq!(received[1].json()["type"], "record.created");
    receiver.stays_at(2, "once").await;
}

#[tokio::test]
async fn the_organisation_s_lifecycle_changes_are_delivered_to_webhooks_that_chose_them() {
    let receiver = Receiver::start().await;
    let app = app_with(5).await;
    let admin = app.sign_up(&slug("hooklife")).await;
    let (_, secret) = register(&app, &admin, &receiver.url("/life"), &["LIFECYCLE_CHANGED"]).await;
    // Another webhook, for records only, is told nothing of it.
    let records = Receiver::start().await;
    register(&app, &admin, &records.url("/records"), &["RECORD_CREATED"]).await;

    for args in [
        vec![
            "tenant",
            "plan",
            "--slug",
            &admin.slug,
            "--plan",
            "standard",
        ],
        vec![
            "tenant",
            "suspend",
            "--slug",
            &admin.slug,
            "--reason",
            "late payment",
        ],
        vec![
            "tenant",
            "resume",
            "--slug",
            &admin.slug,
            "--reason",
            "paid",
        ],
    ] {
        assert!(app.custos(&args).await, "{args:?}");
    }
    let received = receiver.until(|r| r.len() >= 3).await;
    let changes: Vec<Value> = received
        .iter()
        .map(|r| {
            assert!(signed_with(r, &secret));
            assert_eq!(r.json()["type"], "organization.lifecycle_changed");
            r.json()["data"]["change"].clone()
        })
        .collect();
    assert_eq!(changes, ["PlanChosen", "Suspended", "Resumed"]);
    let sequences: Vec<i64> = received
        .iter()
        .map(|r| r.json()["data"]["sequence"].as_i64().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    let body = String::from_utf8(received[1].body.clone()).unwrap();
    assert!(
        !body.contains("late payment"),
        "the operator's reason stays: {body}"
    );
    receiver.stays_at(3, "once each").await;
    assert!(records.received().is_empty());
}

#[tokio::test]
async fn private_addresses_are_not_reached_unless_the_provider_allows_them() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(|config| {
        config.webhooks.interval = Some(Duration::from_millis(100));
    })
    .await;
    let admin = app.sign_up(&slug("public")).await;
    for url in ["http://10.0.0.5/in", "http://[::ffff:127.0.0.1]:8080/in"] {
        let response = app
            .graphql(
                Some(&admin.token),
                REGISTER,
                json!({ "input": { "url": url, "events": ["RECORD_CREATED"] } }),
            )
            .await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{url}: {:?}",
            response.body
        );
        assert_eq!(response.body["errors"][0]["extensions"]["field"], "url");
    }
    // A name is checked on the addresses it resolves to, when a delivery is made.
    let url = format!("http://localhost:{}/in", receiver.addr.port());
    let (id, _) = register(&app, &admin, &url, &["RECORD_CREATED"]).await;
    let tested = call(
        &app,
        &admin,
        "mutation($id: ID!) { testWebhook(id: $id) { succeeded statusCode error } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(tested.data("testWebhook.succeeded"), false);
    assert!(tested.data("testWebhook.statusCode").is_null());
    assert_eq!(
        tested.data("testWebhook.error"),
        "the endpoint's address is not public"
    );
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Not", "lastName": "Sent" }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(receiver.received().is_empty(), "nothing reached it");
}

#[tokio::test]
async fn a_backlog_follows_the_endpoint_as_it_is_now_and_a_disabled_webhook_gets_none() {
    let first = Receiver::start().await;
    first.answer(503);
    let second = Receiver::start().await;
    let app = app_with(50).await;
    let admin = app.sign_up(&slug("backlog")).await;
    let (id, _) = register(&app, &admin, &first.url("/old"), &["RECORD_CREATED"]).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Waiting", "lastName": "Change" }),
    )
    .await;
    first.until(|r| r.len() >= 2).await;

    // Pointed elsewhere (the old endpoint compromised, say): the waiting change goes there.
    call(&app, &admin, "mutation($id: ID!, $url: String!) { updateWebhook(id: $id, input: { url: $url }) { url } }", json!({ "id": id, "url": second.url("/new") })).await;
    let moved = second.until(|r| !r.is_empty()).await;
    assert_eq!(moved[0].json()["type"], "record.created");
    let tried = first.received().len();
    first
        .stays_at(tried, "nothing more to the old endpoint")
        .await;

    // Failing again, then disabled by an administrator: its backlog is dropped.
    second.answer(503);
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Dropped", "lastName": "Change" }),
    )
    .await;
    second.until(|r| r.len() >= 2).await;
    call(
        &app,
        &admin,
        "mutation($id: ID!) { disableWebhook(id: $id) { enabled } }",
        json!({ "id": id }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after_disabling = second.received().len();
    second
        .stays_at(after_disabling, "no retry once disabled")
        .await;
    second.answer(204);
    call(
        &app,
        &admin,
        "mutation($id: ID!) { enableWebhook(id: $id) { enabled } }",
        json!({ "id": id }),
    )
    .await;
    second
        .stays_at(after_disabling, "the dropped change never came")
        .await;
}
