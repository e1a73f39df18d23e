//! HTTP behaviour: malformed requests, body limits, health, readiness, request ids, GraphiQL.

use custos_tests::{slug, TestApp};
use serde_json::json;

#[tokio::test]
async fn malformed_json_is_a_400_graphql_error() {
    let app = TestApp::spawn().await;
    for body in [
        "not json",
        "{\"query\": 42}",
        "[{\"query\": \"{ me { id } }\"}]",
        "",
    ] {
        let response = app.post_raw(None, body).await;
        assert_eq!(response.status, 400, "{body}: {}", response.body);
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{body}: {}",
            response.body
        );
    }
}

#[tokio::test]
async fn malformed_graphql_is_a_400_graphql_error() {
    let app = TestApp::spawn().await;
    for query in [
        "{ me { id ",
        "{ noSuchField }",
        "mutation { createEmployee { id } }",
    ] {
        let response = app.graphql(None, query, json!({})).await;
        assert_eq!(response.status, 400, "{query}: {}", response.body);
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{query}: {}",
            response.body
        );
    }
}

#[tokio::test]
async fn too_deep_queries_are_refused_before_they_run() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("deep")).await;
    let nested = (0..custos_api::testing::MAX_DEPTH).fold("name".to_owned(), |inner, _| {
        format!("ofType {{ {inner} }}")
    });
    let query = format!("{{ __schema {{ types {{ fields {{ type {{ {nested} }} }} }} }} }}");
    let response = app.graphql(Some(&session.token), &query, json!({})).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.code(), Some("VALIDATION"));
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused_with_413() {
    let app = TestApp::spawn().await;
    let body = format!("{{\"query\": \"{}\"}}", "x".repeat(1024 * 1024 + 1));
    let response = app.post_raw(None, body).await;
    assert_eq!(response.status, 413);
}

#[tokio::test]
async fn health_readiness_request_ids_and_graphiql() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();

    let health = client.get(app.url("/healthz")).send().await.unwrap();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    let graphiql = client.get(app.url("/graphql")).send().await.unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    assert!(health.headers().get("x-request-id").is_some());
    assert_eq!(graphiql.status(), 200);
    assert!(graphiql.text().await.unwrap().contains("graphiql"));
}

#[tokio::test]
async fn graphiql_can_be_switched_off() {
    let app = TestApp::spawn_with(|config| config.graphiql = false).await;
    let response = reqwest::get(app.url("/graphql")).await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn values_of_the_wrong_type_get_a_validation_code() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("types")).await;
    let response = app
        .graphql(
            Some(&session.token),
            "query($n: Int) { employees(first: $n) { totalCount } }",
            json!({ "n": "many" }),
        )
        .await;
    assert_eq!(response.code(), Some("VALIDATION"), "{}", response.body);
}

#[tokio::test]
async fn too_many_aliases_are_refused_before_anything_runs() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("aliases")).await;
    let fields: String = (0..=custos_api::testing::MAX_ALIASES)
        .map(|i| format!("a{i}: me {{ id }} "))
        .collect();
    let response = app
        .graphql(Some(&session.token), &format!("{{ {fields} }}"), json!({}))
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.code(), Some("VALIDATION"));
    let logins: String = (0..=custos_api::testing::MAX_ALIASES)
        .map(|i| format!("l{i}: login(tenant: \"x\", email: \"x@example.org\", password: \"p\") {{ token }} "))
        .collect();
    let response = app
        .graphql(None, &format!("mutation {{ {logins} }}"), json!({}))
        .await;
    assert_eq!(
        response.status, 400,
        "an aliased login burst is refused whole: {}",
        response.body
    );
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let app = TestApp::spawn_with(|config| config.introspection = false).await;
    let query = "{ __schema { queryType { name } } }";
    let off = app.graphql(None, query, json!({})).await;
    let on = TestApp::spawn()
        .await
        .graphql(None, query, json!({}))
        .await
        .ok();
    assert_eq!(
        off.data("__schema"),
        &serde_json::Value::Null,
        "nothing is disclosed: {}",
        off.body
    );
    assert_eq!(on.data("__schema.queryType.name"), &json!("Query"));
}
