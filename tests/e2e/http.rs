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
    // A manager's manager's … manager: real fields, one level too many.
    let nested = (0..custos_api::testing::MAX_DEPTH - 3)
        .fold("id".to_owned(), |inner, _| format!("manager {{ {inner} }}"));
    let over = format!("{{ employees(first: 1) {{ edges {{ node {{ {nested} }} }} }} }}");
    let response = app.graphql(Some(&session.token), &over, json!({})).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.code(), Some("VALIDATION"));
    assert!(
        response
            .body
            .to_string()
            .contains("nested too deep: 13 levels"),
        "{}",
        response.body
    );
    // One level less runs.
    let nested = (0..custos_api::testing::MAX_DEPTH - 4)
        .fold("id".to_owned(), |inner, _| format!("manager {{ {inner} }}"));
    let within = format!("{{ employees(first: 1) {{ edges {{ node {{ {nested} }} }} }} }}");
    let response = app.graphql(Some(&session.token), &within, json!({})).await;
    assert_eq!(response.status, 200, "{}", response.body);
}

#[tokio::test]
async fn fragments_that_multiply_or_spread_themselves_are_refused_before_anything_walks_them() {
    let app = TestApp::spawn().await;
    // Each fragment spreads the next twice: 2^30 selections once inlined, within
    // async-graphql's own recursion limit (32), whose check (and validation after it) would
    // walk every one of them.
    let mut doubling = String::from("{ me { ...F0 } }");
    for i in 0..30 {
        doubling.push_str(&format!(
            " fragment F{i} on User {{ ...F{} ...F{} }}",
            i + 1,
            i + 1
        ));
    }
    doubling.push_str(" fragment F30 on User { id }");
    let response = app.graphql(None, &doubling, json!({})).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.code(), Some("VALIDATION"), "{}", response.body);
    assert!(
        response.body.to_string().contains("selections"),
        "{}",
        response.body
    );
    let cycle = "{ me { ...F } } fragment F on User { ...G ...G } fragment G on User { ...F ...F }";
    let response = app.graphql(None, cycle, json!({})).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(
        response.body.to_string().contains("spreads itself"),
        "{}",
        response.body
    );
}

/// graphql-js 16's standard introspection query, as GraphiQL, GraphQL Code Generator and
/// schemathesis send it (13 levels deep: introspection is measured by its own rule).
const STANDARD_INTROSPECTION: &str = include_str!("../../api/src/graphql/introspection.graphql");

#[tokio::test]
async fn the_standard_introspection_query_is_answered_and_nested_introspection_is_not() {
    let app = TestApp::spawn().await;
    let response = app.graphql(None, STANDARD_INTROSPECTION, json!({})).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.data("__schema.queryType.name"), "Query");
    let types = response.data("__schema.types");
    let employee = types
        .as_array()
        .expect("types is a list")
        .iter()
        .find(|t| t["name"] == "Employee")
        .expect("Employee is described");
    assert!(employee["fields"].as_array().is_some_and(|f| f.len() > 10));
    // Lists of fields inside the types of fields inside the types of fields: an answer that
    // grows with the cube of the schema.
    let abusive =
        "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
    let response = app.graphql(None, abusive, json!({})).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.code(), Some("VALIDATION"));
    assert!(
        response.body.to_string().contains("introspection"),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused_with_413_as_a_graphql_error() {
    let app = TestApp::spawn().await;
    let body = format!("{{\"query\": \"{}\"}}", "x".repeat(1024 * 1024 + 1));
    let response = app.post_raw(None, body).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.code(), Some("VALIDATION"), "{}", response.body);
}

const SIGN_UP: &str = "mutation($input: SignUpInput!) { signUp(input: $input) { token } }";

fn sign_up_body(slug: &str) -> String {
    json!({ "query": SIGN_UP, "variables": { "input": {
        "organization": "Media Types", "slug": slug, "region": "eu",
        "adminEmail": format!("ada@{slug}.example.org"), "adminName": "Ada Admin",
        "password": "correct horse battery",
    } } })
    .to_string()
}

#[tokio::test]
async fn a_post_that_is_not_json_is_refused_with_415_and_runs_nothing() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let slug = slug("mediatype");
    // A form a browser may send across origins without asking first, and no type at all.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = client.post(app.url("/graphql")).body(sign_up_body(&slug));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "VALIDATION",
            "{body}"
        );
    }
    // Nothing ran: the slug is still free.
    let signed_up = app.post_raw(None, sign_up_body(&slug)).await.ok();
    assert!(signed_up.data("signUp.token").is_string());
    // Parameters of the JSON type are fine.
    let response = client
        .post(app.url("/graphql"))
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({ "query": "{ __typename }" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_graphql_response_media_type_is_answered_to_clients_that_accept_it() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let ask = |accept: &'static str, query: &'static str| {
        client
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(json!({ "query": query }).to_string())
            .send()
    };
    let modern = ask(
        "application/graphql-response+json, application/json;q=0.9",
        "{ __typename }",
    )
    .await
    .unwrap();
    assert_eq!(modern.status(), 200);
    assert_eq!(
        modern.headers()["content-type"],
        "application/graphql-response+json; charset=utf-8"
    );
    let legacy = ask("application/json", "{ __typename }").await.unwrap();
    assert_eq!(legacy.headers()["content-type"], "application/json");
    // A document that cannot run: 400, and no `data` at all (nothing ran).
    for query in ["{ __typename ", "{ noSuchField }"] {
        let refused = ask("application/graphql-response+json", query)
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(body.get("data").is_none(), "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION");
    }
}

#[tokio::test]
async fn a_long_malformed_document_is_not_echoed_back() {
    let app = TestApp::spawn().await;
    let query = format!("{{ {} ", "x".repeat(900 * 1024));
    let response = app.graphql(None, &query, json!({})).await;
    assert_eq!(response.status, 400);
    let message = response.body["errors"][0]["message"].as_str().unwrap();
    assert!(message.len() < 400, "{} bytes", message.len());
    assert!(response.body.to_string().len() < 2_000);
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let app = TestApp::spawn_with(|config| {
        config.cors_origins = vec!["https://app.example.com".to_owned()];
    })
    .await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // The request itself, from the allowed origin: the request id can be read.
    let response = client
        .post(app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));

    // None by default.
    let closed = TestApp::spawn().await;
    let response = client
        .post(closed.url("/graphql"))
        .header("origin", "https://app.example.com")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn health_readiness_and_request_ids() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();

    let health = client.get(app.url("/healthz")).send().await.unwrap();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    assert!(health.headers().get("x-request-id").is_some());
}

/// The `src` and `href` addresses a page loads.
fn loaded_addresses(page: &str) -> Vec<String> {
    page.split(['<', '>'])
        .filter(|tag| tag.starts_with("script") || tag.starts_with("link"))
        .flat_map(|tag| {
            tag.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|attribute| {
            let value = attribute
                .strip_prefix("src=")
                .or_else(|| attribute.strip_prefix("href="))?;
            Some(value.trim_matches('"').to_owned())
        })
        .collect()
}

#[tokio::test]
async fn graphiql_and_everything_it_loads_come_from_the_service() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let page = client.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let page = page.text().await.unwrap();
    let addresses = loaded_addresses(&page);
    assert!(addresses.len() >= 5, "{addresses:?}");
    for address in addresses {
        assert!(!address.contains("//"), "{address} is outside the service");
        // Relative to the page at /graphql.
        let response = client
            .get(app.url(&format!("/{address}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{address}");
        let media = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let expected = if address.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(media.starts_with(expected), "{address}: {media}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{address}");
    }
    let unknown = client
        .get(app.url("/graphiql/vendor.sh"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn graphiql_can_be_switched_off() {
    let app = TestApp::spawn_with(|config| config.graphiql = false).await;
    let response = reqwest::get(app.url("/graphql")).await.unwrap();
    assert_eq!(response.status(), 404);
    let response = reqwest::get(app.url("/graphiql/start.js")).await.unwrap();
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
    // Nor do suggestions give field names away.
    let near = app.graphql(None, "{ employe { id } }", json!({})).await;
    assert_eq!(near.status, 400);
    let message = near.body["errors"][0]["message"].as_str().unwrap();
    assert!(!message.contains("employee"), "{message}");
    let suggested = TestApp::spawn()
        .await
        .graphql(None, "{ employe { id } }", json!({}))
        .await;
    let message = suggested.body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("Did you mean"), "{message}");
}
