//! `/metrics` as Prometheus scrapes it, read with a parser nobody here wrote
//! (`prometheus-parse`): the series operators alert on, counted as requests, logins,
//! lockouts, commits, projector batches and subscriptions happen; labels only from closed sets;
//! nothing personal; a token when one is configured. And the request id a caller gives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use custos_tests::{feed, slug, TestApp};
use prometheus_parse::{Scrape, Value};
use serde_json::json;

/// A scrape of the service's `/metrics`, parsed.
async fn scrape(app: &TestApp) -> (Scrape, String) {
    let response = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    (Scrape::parse(lines).expect("valid Prometheus text"), text)
}

/// The value of the sample `name` whose labels include `labels` (counters and gauges); `None`
/// when there is no such sample.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

/// Scrapes until `name{labels}` satisfies `done` (the read side catches up, a socket closes).
async fn until(
    app: &TestApp,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (scrape, _) = scrape(app).await;
        if value(&scrape, name, labels).is_some_and(&done) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never got there: {:?}",
            value(&scrape, name, labels)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_count_what_operators_watch_with_bounded_labels_and_nothing_personal() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("metrics")).await;

    // Logins: one that works, one with a wrong password, one for nobody.
    app.login(&admin.slug, &admin.email, &admin.password)
        .await
        .expect("a login");
    let wrong = app
        .login(&admin.slug, &admin.email, "not the password at all")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some("UNAUTHENTICATED"));
    app.login(&admin.slug, "nobody.personal@example.net", "whatever it is")
        .await
        .unwrap_err();
    // A change with personal values, and a document the client named and misspelled.
    let personal = ["Wilhelmina", "Personalvalue", "wilhelmina.p@example.net"];
    app.create_employee(
        &admin.token,
        json!({ "firstName": personal[0], "lastName": personal[1], "email": personal[2],
                "startDate": "2024-03-01" }),
    )
    .await;
    let invalid = app
        .graphql(
            Some(&admin.token),
            "query clientChosenName { clientTypedField }",
            json!({}),
        )
        .await;
    assert_eq!(invalid.status, 400);
    // A subscription, open while the service is scraped.
    let (socket, ack) = feed::subscribe(&app.address.to_string(), &admin.token).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");

    let scrape = until(&app, "custos_subscriptions", &[], |n| n == 1.0).await;
    let (_, text) = self::scrape(&app).await;
    let at = |name: &str, labels: &[(&str, &str)]| {
        value(&scrape, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(at("custos_websocket_connections", &[]), 1.0);
    assert_eq!(at("custos_database_up", &[("server", "default")]), 1.0);
    assert_eq!(at("custos_build_info", &[]), 1.0);
    assert!(
        at(
            "custos_http_requests_total",
            &[("route", "/graphql"), ("method", "POST"), ("status", "200")]
        ) >= 5.0
    );
    assert_eq!(
        at(
            "custos_http_requests_total",
            &[("route", "/graphql"), ("method", "POST"), ("status", "400")]
        ),
        1.0
    );
    assert!(
        at(
            "custos_http_request_duration_seconds",
            &[("route", "/graphql")]
        ) >= 6.0
    );
    let graphql = |field: &str, code: &str| {
        value(
            &scrape,
            "custos_graphql_requests_total",
            &[("field", field), ("code", code)],
        )
    };
    assert_eq!(graphql("signUp", "OK"), Some(1.0));
    assert_eq!(graphql("login", "OK"), Some(1.0));
    assert_eq!(graphql("login", "UNAUTHENTICATED"), Some(2.0));
    assert_eq!(graphql("createEmployee", "OK"), Some(1.0));
    assert_eq!(
        graphql("none", "VALIDATION"),
        Some(1.0),
        "refused before it ran"
    );
    assert_eq!(
        value(
            &scrape,
            "custos_graphql_requests_total",
            &[("type", "mutation"), ("field", "createEmployee")]
        ),
        Some(1.0)
    );
    assert!(
        at(
            "custos_graphql_request_duration_seconds",
            &[("type", "mutation"), ("field", "createEmployee")]
        ) == 1.0
    );
    // Sign-up opens the first session; then one login.
    assert_eq!(at("custos_logins_total", &[("outcome", "signed_in")]), 2.0);
    assert_eq!(at("custos_logins_total", &[("outcome", "failed")]), 2.0);
    assert_eq!(
        at(
            "custos_events_total",
            &[("aggregate", "record"), ("event", "RecordCreated")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "custos_events_total",
            &[("aggregate", "user"), ("event", "LoginFailed")]
        ),
        1.0
    );
    assert!(at("custos_projector_events_total", &[]) >= 1.0);
    assert!(
        at(
            "custos_projector_batch_duration_seconds",
            &[("outcome", "applied")]
        ) >= 1.0
    );
    assert_eq!(at("custos_open_tenants", &[]), 1.0);
    assert!(at("custos_db_pool_max_connections", &[("pool", "tenants")]) >= 1.0);
    assert!(at("custos_db_pool_max_connections", &[("pool", "catalog")]) >= 1.0);
    assert!(
        at(
            "custos_db_pool_connections",
            &[("pool", "catalog"), ("state", "idle")]
        ) >= 0.0
    );
    assert!(
        at(
            "custos_db_pool_connections",
            &[("pool", "tenants"), ("state", "in_use")]
        ) >= 0.0
    );
    for projection in custos_projections::all() {
        let name = [("projection", projection.name())];
        assert!(at("custos_projection_lag_events", &name) >= 0.0);
        assert!(at("custos_projection_lag_seconds", &name) >= 0.0);
    }
    assert_eq!(at("custos_integrity_alarms", &[]), 0.0);
    assert_eq!(at("custos_backup_verified_timestamp_seconds", &[]), 0.0);

    // Every label value comes from a closed set: nothing a client typed, nothing personal,
    // no tenant or person.
    let typed = ["clientChosenName", "clientTypedField", "nobody.personal"];
    for value in personal.iter().chain(&typed).chain(&[
        admin.email.as_str(),
        admin.slug.as_str(),
        admin.token.as_str(),
    ]) {
        assert!(!text.contains(value), "{value} is in /metrics");
    }
    assert!(!text.contains(&admin.tenant_id.to_string()));
    let labels: HashMap<&str, usize> = scrape.samples.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.metric.as_str()).or_default() += 1;
        m
    });
    assert!(
        labels.values().all(|series| *series < 100),
        "a family grew beyond its closed label sets: {labels:?}"
    );

    // The socket closes: both gauges come back down.
    drop(socket);
    until(&app, "custos_subscriptions", &[], |n| n == 0.0).await;
    until(&app, "custos_websocket_connections", &[], |n| n == 0.0).await;
}

#[tokio::test]
async fn ten_failed_logins_lock_the_account_and_count_one_lockout() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("lockout")).await;
    for _ in 0..custos_domain::user::MAX_FAILURES {
        app.login(&admin.slug, &admin.email, "a wrong password, again")
            .await
            .unwrap_err();
    }
    let (scrape, _) = scrape(&app).await;
    assert_eq!(
        value(&scrape, "custos_login_lockouts_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "custos_logins_total", &[("outcome", "failed")]),
        Some(custos_domain::user::MAX_FAILURES as f64)
    );
}

#[tokio::test]
async fn with_a_token_configured_metrics_answer_only_its_bearer() {
    let app = TestApp::spawn_with(|config| {
        config.metrics_token = Some("a metrics token for the scraper".to_owned().into());
    })
    .await;
    let client = reqwest::Client::new();
    let denied = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    let wrong = client
        .get(app.url("/metrics"))
        .bearer_auth("a metrics token for the scrapeR")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = client
        .get(app.url("/metrics"))
        .bearer_auth("a metrics token for the scraper")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed
        .text()
        .await
        .unwrap()
        .contains("custos_database_up{server=\"default\"} 1"));
}

#[tokio::test]
async fn a_callers_request_id_is_kept_when_it_is_a_uuid() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let ask = |id: &'static str| {
        client
            .get(app.url("/healthz"))
            .header("x-request-id", id)
            .send()
    };
    let kept = ask("0193a0b4-7c1e-7d2a-9f00-5a1b2c3d4e5f").await.unwrap();
    assert_eq!(
        kept.headers()["x-request-id"],
        "0193a0b4-7c1e-7d2a-9f00-5a1b2c3d4e5f"
    );
    // A proxy's 32 hex digits are a UUID too, written as the service writes them.
    let hex = ask("0193a0b47c1e7d2a9f005a1b2c3d4e5f").await.unwrap();
    assert_eq!(
        hex.headers()["x-request-id"],
        "0193a0b4-7c1e-7d2a-9f00-5a1b2c3d4e5f"
    );
    const LONG: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    for not_an_id in ["<script>", "00000000-0000-0000-0000-000000000000", LONG] {
        let replaced = ask(not_an_id).await.unwrap();
        let given = replaced.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(given, not_an_id);
        assert!(uuid::Uuid::parse_str(given).is_ok());
    }
}
