//! No password, token or personal value ever reaches the logs.

use custos_api::testing::MasterKey;
use custos_tests::{cluster_log, logs, slug, TestApp};
use secrecy::ExposeSecret;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn a_full_session_logs_no_personal_value_password_or_token() {
    let app = TestApp::spawn().await;
    let marker = Uuid::now_v7().simple().to_string();
    let session = app.sign_up(&slug("logs")).await;
    let first = format!("Firstname{}", &marker[20..]);
    let last = format!("Lastname{}", &marker[20..]);
    let email = format!("person.{}@private.example.org", &marker[20..]);
    let phone = format!("+4420{:07}", Uuid::now_v7().as_u128() % 10_000_000);
    let created = app
        .create_employee(&session.token, json!({ "firstName": first, "lastName": last, "email": email, "phone": phone, "department": format!("Dept{}", &marker[24..]) }))
        .await;
    app.graphql(
        Some(&session.token),
        "mutation($id: ID!) { updateEmployee(id: $id, input: { jobTitle: \"Secret Title\" }) { id } }",
        json!({ "id": created["id"] }),
    )
    .await
    .ok();
    app.graphql(
        Some(&session.token),
        "query($id: ID!) { recordHistory(id: $id) { totalCount } }",
        json!({ "id": created["id"] }),
    )
    .await
    .ok();
    let wrong = format!("wrong-password-{}", &marker[16..]);
    app.graphql(
        None,
        "mutation($t: String!, $e: String!, $p: String!) { login(tenant: $t, email: $e, password: $p) { token } }",
        json!({ "t": session.slug, "e": session.email, "p": wrong }),
    )
    .await;
    app.graphql(Some(&session.token), "mutation { logout }", json!({}))
        .await
        .ok();

    let logs = logs().to_lowercase();
    let server_log = cluster_log().to_lowercase();
    let db_password = MasterKey::load(None, app.data_dir.path())
        .unwrap()
        .tenant_db_password(session.tenant_id)
        .expose_secret()
        .to_owned();

    assert!(
        logs.contains("request finished"),
        "the test sees the service's logs"
    );
    let normalized_phone = created["phone"].as_str().unwrap().to_owned();
    for secret in [
        first.as_str(),
        last.as_str(),
        email.as_str(),
        normalized_phone.as_str(),
        "secret title",
        session.email.as_str(),
        session.password.as_str(),
        wrong.as_str(),
        session.token.as_str(),
        db_password.as_str(),
    ] {
        let secret = secret.to_lowercase();
        assert!(
            !logs.contains(&secret),
            "the service's logs contain a seeded value"
        );
        assert!(
            !server_log.contains(&secret),
            "PostgreSQL's log contains a seeded value"
        );
    }
}
