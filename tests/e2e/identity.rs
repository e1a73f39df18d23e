//! Sign-up, login, logout and sessions.

use custos_tests::{slug, TestApp, PASSWORD};
use serde_json::json;

const ME: &str = "{ me { id email name isAdmin } organization { id slug region } }";
const LOGIN: &str = "mutation($tenant: String!, $email: String!, $password: String!) {
    login(tenant: $tenant, email: $email, password: $password) { token user { id email } } }";

#[tokio::test]
async fn sign_up_creates_an_organisation_and_logs_its_administrator_in() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("acme")).await;

    let me = app.graphql(Some(&session.token), ME, json!({})).await.ok();

    assert_eq!(me.data("me.id"), &json!(session.user_id.to_string()));
    assert_eq!(me.data("me.email"), &json!(session.email));
    assert_eq!(me.data("me.isAdmin"), &json!(true));
    assert_eq!(me.data("organization.slug"), &json!(session.slug));
    assert_eq!(me.data("organization.region"), &json!("eu"));
}

#[tokio::test]
async fn login_is_case_insensitive_on_email_and_gives_a_new_working_token() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("login")).await;

    let login = app
        .graphql(None, LOGIN, json!({ "tenant": session.slug, "email": session.email.to_uppercase(), "password": PASSWORD }))
        .await
        .ok();
    let token = login.data("login.token").as_str().unwrap().to_owned();

    assert_ne!(token, session.token);
    assert_eq!(
        login.data("login.user.id"),
        &json!(session.user_id.to_string())
    );
    app.graphql(Some(&token), ME, json!({})).await.ok();
}

#[tokio::test]
async fn every_login_failure_answers_the_same() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("fail")).await;
    let attempts = [
        json!({ "tenant": session.slug, "email": session.email, "password": "not the password" }),
        json!({ "tenant": session.slug, "email": "nobody@example.org", "password": PASSWORD }),
        json!({ "tenant": "no-such-organisation", "email": session.email, "password": PASSWORD }),
        json!({ "tenant": "Not A Slug!", "email": session.email, "password": PASSWORD }),
    ];

    let mut answers = Vec::new();
    for attempt in attempts {
        let response = app.graphql(None, LOGIN, attempt).await;
        assert_eq!(
            response.code(),
            Some("UNAUTHENTICATED"),
            "{}",
            response.body
        );
        answers.push(response.body["errors"][0]["message"].clone());
    }

    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}

#[tokio::test]
async fn logins_and_failures_are_events_on_the_user_with_ip_and_user_agent() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("history")).await;
    app.graphql(
        None,
        LOGIN,
        json!({ "tenant": session.slug, "email": session.email, "password": "wrong password!" }),
    )
    .await;

    let mut db = app.tenant_admin(session.tenant_id).await;
    let events: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, payload::jsonb FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(session.user_id.to_string())
    .fetch_all(&mut db)
    .await
    .unwrap();

    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["UserRegistered", "LoginSucceeded", "LoginFailed"]);
    // Stored sealed with the user's key: the origin is personal data.
    let stored = events[2].1.to_string();
    assert!(
        !stored.contains("127.0.0.1") && !stored.contains("custos-tests"),
        "{stored}"
    );
    assert_eq!(
        events[2].1["clear"]["fields"],
        json!(["at", "origin", "reason"])
    );
    // Opened through the event store, the event is whole.
    let tenant = app.tenant(session.tenant_id).await;
    let opened = tenant
        .log
        .stream("user", &session.user_id.to_string())
        .await
        .unwrap();
    let failed = &opened[2].event.payload["LoginFailed"];
    assert_eq!(failed["reason"], json!("wrong_password"));
    assert_eq!(failed["origin"]["ip"], json!("127.0.0.1"));
    assert_eq!(failed["origin"]["user_agent"], json!("custos-tests/1.0"));
    for (_, payload) in &events {
        assert!(
            !payload.to_string().contains("wrong password!"),
            "the tried password is never stored"
        );
    }
    assert!(!opened[2]
        .event
        .payload
        .to_string()
        .contains("wrong password!"));
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("logout")).await;

    app.graphql(Some(&session.token), "mutation { logout }", json!({}))
        .await
        .ok();

    let me = app.graphql(Some(&session.token), ME, json!({})).await;
    assert_eq!(me.code(), Some("UNAUTHENTICATED"));
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("tokens")).await;
    let forged = format!("cus_{}_{}", session.tenant_id.simple(), "A".repeat(43));
    let foreign_tenant = format!("cus_{}_{}", uuid::Uuid::now_v7().simple(), "A".repeat(43));

    for token in [
        None,
        Some("garbage"),
        Some(forged.as_str()),
        Some(foreign_tenant.as_str()),
    ] {
        let me = app.graphql(token, ME, json!({})).await;
        assert_eq!(me.code(), Some("UNAUTHENTICATED"), "{token:?}: {}", me.body);
    }
}

#[tokio::test]
async fn sessions_expire_after_their_idle_timeout() {
    let app = TestApp::spawn_with(|config| {
        config.sessions.idle_timeout = std::time::Duration::from_secs(1)
    })
    .await;
    let session = app.sign_up(&slug("idle")).await;

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let me = app.graphql(Some(&session.token), ME, json!({})).await;
    assert_eq!(me.code(), Some("UNAUTHENTICATED"));
}

#[tokio::test]
async fn sign_up_rejects_bad_input_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let taken = app.sign_up(&slug("taken")).await;
    let valid = json!({
        "organization": "Org", "slug": slug("fresh"), "region": "eu",
        "adminEmail": "ada@example.org", "adminName": "Ada", "password": PASSWORD,
    });
    let cases = [
        ("slug", json!(taken.slug)),
        ("slug", json!("Bad Slug")),
        ("region", json!("mars")),
        ("adminEmail", json!("not-an-email")),
        ("adminName", json!("  ")),
        ("password", json!("short")),
        ("password", json!("password1234")),
        ("organization", json!("")),
    ];
    for (field, value) in cases {
        let mut input = valid.clone();
        input[field] = value;

        let response = app
            .graphql(
                None,
                "mutation($input: SignUpInput!) { signUp(input: $input) { token } }",
                json!({ "input": input }),
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
    // A form with several bad fields learns of all of them at once.
    let several = app
        .graphql(
            None,
            "mutation($input: SignUpInput!) { signUp(input: $input) { token } }",
            json!({ "input": { "organization": "", "slug": "Bad Slug", "region": "mars",
                               "adminEmail": "not-an-email", "adminName": " ", "password": "short" } }),
        )
        .await;
    assert_eq!(
        several.invalid_fields(),
        [
            "adminEmail",
            "adminName",
            "organization",
            "password",
            "region",
            "slug"
        ],
        "{}",
        several.body
    );
    let weak = app
        .graphql(
            None,
            "mutation($input: SignUpInput!) { signUp(input: $input) { token } }",
            json!({ "input": { "organization": "Org", "slug": slug("weak"), "region": "eu", "adminEmail": "ada@example.org", "adminName": "Ada", "password": "ada@example.org" } }),
        )
        .await;
    assert!(
        weak.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too easy to guess"),
        "{}",
        weak.body
    );
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(tenants, 1, "only the first organisation exists");
}

#[tokio::test]
async fn sessions_end_at_their_absolute_lifetime_however_active() {
    let app = TestApp::spawn_with(|config| {
        config.sessions.absolute_lifetime = std::time::Duration::from_secs(2)
    })
    .await;
    let session = app.sign_up(&slug("absolute")).await;

    for _ in 0..3 {
        app.graphql(Some(&session.token), ME, json!({})).await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;

    let me = app.graphql(Some(&session.token), ME, json!({})).await;
    assert_eq!(me.code(), Some("UNAUTHENTICATED"));
}

#[tokio::test]
async fn a_burst_of_failed_logins_answers_alike_is_recorded_and_locks_the_account() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("burst")).await;

    let attempts = (0..12).map(|i| {
        let (app, session) = (&app, &session);
        async move {
            app.graphql(None, LOGIN, json!({ "tenant": session.slug, "email": session.email, "password": format!("wrong password {i}") }))
                .await
        }
    });
    let responses = futures::future::join_all(attempts).await;
    let locked_out = app.login(&session.slug, &session.email, PASSWORD).await;

    for response in &responses {
        assert_eq!(
            response.code(),
            Some("UNAUTHENTICATED"),
            "{}",
            response.body
        );
    }
    assert_eq!(
        locked_out.unwrap_err().body["errors"][0]["message"],
        responses[0].body["errors"][0]["message"],
        "a locked account answers like a wrong password"
    );
    let mut db = app.tenant_admin(session.tenant_id).await;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM events WHERE event_type IN ('LoginFailed', 'LoginLocked') GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        counts,
        [
            ("LoginFailed".to_owned(), 13),
            ("LoginLocked".to_owned(), 1)
        ],
        "every attempt is in the history"
    );
}

#[tokio::test]
async fn an_administrator_lifts_a_lock() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("unlock")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    for i in 0..10 {
        assert!(app
            .login(&admin.slug, &user.email, &format!("wrong guess number {i}"))
            .await
            .is_err());
    }
    assert!(
        app.login(&admin.slug, &user.email, PASSWORD).await.is_err(),
        "locked after ten failures"
    );

    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { unlockUser(id: $id) { id } }",
        json!({ "id": user.user_id.to_string() }),
    )
    .await
    .ok();

    app.login(&admin.slug, &user.email, PASSWORD).await.unwrap();
    let history = app
        .graphql(Some(&admin.token), "query($u: ID) { loginHistory(userId: $u, first: 3) { edges { node { eventType reason } } } }", json!({ "u": user.user_id.to_string() }))
        .await
        .ok();
    let types: Vec<&str> = history
        .data("loginHistory.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["LoginSucceeded", "LoginUnlocked", "LoginFailed"]);
    assert_eq!(
        history.data("loginHistory.edges.2.node.reason"),
        &json!("locked")
    );
}

#[tokio::test]
async fn login_attempts_are_limited_per_client_address() {
    let app = TestApp::spawn_with(|config| config.login_attempts_per_minute = 3).await;
    let session = app.sign_up(&slug("ratelimit")).await;
    for _ in 0..3 {
        app.login(&session.slug, &session.email, PASSWORD)
            .await
            .unwrap();
    }
    let limited = app
        .login(&session.slug, &session.email, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Some("UNAVAILABLE"), "{}", limited.body);
    // Aliased logins in one request count one attempt each.
    let app = TestApp::spawn_with(|config| config.login_attempts_per_minute = 3).await;
    let session = app.sign_up(&slug("aliased")).await;
    let aliased: String = (0..4)
        .map(|i| {
            format!(
                "l{i}: login(tenant: \"{}\", email: \"{}\", password: \"{PASSWORD}\") {{ token }} ",
                session.slug, session.email
            )
        })
        .collect();
    let response = app
        .graphql(None, &format!("mutation {{ {aliased} }}"), json!({}))
        .await;
    let codes: Vec<_> = response.body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["extensions"]["code"].clone())
        .collect();
    assert_eq!(codes, [json!("UNAVAILABLE")], "{}", response.body);
}

#[tokio::test]
async fn login_history_is_the_organisations_for_administrators_and_ones_own_for_others() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("loginhist")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    assert!(app
        .login(&admin.slug, &user.email, "definitely not it")
        .await
        .is_err());
    let query = "query($u: ID) { loginHistory(userId: $u) { totalCount edges { node { eventType reason ip userAgent user { id } } } } }";

    let everyone = app.graphql(Some(&admin.token), query, json!({})).await.ok();
    let own = app.graphql(Some(&user.token), query, json!({})).await.ok();
    let other = app
        .graphql(
            Some(&user.token),
            query,
            json!({ "u": admin.user_id.to_string() }),
        )
        .await;

    let users: std::collections::BTreeSet<String> = everyone
        .data("loginHistory.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["user"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users.len(), 2, "administrators see everyone's logins");
    let own_edges = own.data("loginHistory.edges").as_array().unwrap();
    assert!(own_edges
        .iter()
        .all(|e| e["node"]["user"]["id"] == json!(user.user_id.to_string())));
    assert_eq!(own_edges[0]["node"]["eventType"], json!("LoginFailed"));
    assert_eq!(own_edges[0]["node"]["reason"], json!("wrong_password"));
    assert_eq!(own_edges[0]["node"]["ip"], json!("127.0.0.1"));
    assert_eq!(own_edges[0]["node"]["userAgent"], json!("custos-tests/1.0"));
    assert_eq!(other.code(), Some("FORBIDDEN"));
}

#[tokio::test]
async fn activity_keeps_a_session_alive_past_its_idle_timeout() {
    let app = TestApp::spawn_with(|config| {
        config.sessions.idle_timeout = std::time::Duration::from_secs(2)
    })
    .await;
    let session = app.sign_up(&slug("active")).await;

    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        app.graphql(Some(&session.token), ME, json!({})).await.ok();
    }
}
