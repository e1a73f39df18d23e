//! Tenancy: each organisation has its own database and login role, and nothing crosses.

use custos_api::testing::MasterKey;
use custos_tests::{admin_options, slug, TestApp};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection};

#[tokio::test]
async fn another_tenants_record_is_not_found_exactly_like_a_missing_one() {
    let app = TestApp::spawn().await;
    let ours = app.sign_up(&slug("ours")).await;
    let theirs = app.sign_up(&slug("theirs")).await;
    let secret = app
        .create_employee(
            &theirs.token,
            json!({ "firstName": "Their", "lastName": "Secret" }),
        )
        .await;
    let missing = uuid::Uuid::now_v7().to_string();

    let foreign = app
        .graphql(
            Some(&ours.token),
            "query($id: ID!) { employee(id: $id) { id } }",
            json!({ "id": secret["id"] }),
        )
        .await;
    let absent = app
        .graphql(
            Some(&ours.token),
            "query($id: ID!) { employee(id: $id) { id } }",
            json!({ "id": missing }),
        )
        .await;

    assert_eq!(foreign.code(), Some("NOT_FOUND"));
    assert_eq!(
        foreign.body["errors"][0]["message"],
        absent.body["errors"][0]["message"]
    );
    for mutation in [
        "mutation($id: ID!) { updateEmployee(id: $id, input: { firstName: \"X\" }) { id } }",
        "mutation($id: ID!) { archiveRecord(id: $id) { id } }",
    ] {
        let response = app
            .graphql(Some(&ours.token), mutation, json!({ "id": secret["id"] }))
            .await;
        assert_eq!(response.code(), Some("NOT_FOUND"), "{}", response.body);
    }
    let history = app
        .graphql(
            Some(&ours.token),
            "query($id: ID!) { recordHistory(id: $id) { totalCount } }",
            json!({ "id": secret["id"] }),
        )
        .await;
    assert_eq!(history.code(), Some("NOT_FOUND"));
    let list = app
        .graphql(Some(&ours.token), "{ employees { totalCount } }", json!({}))
        .await
        .ok();
    assert_eq!(list.data("employees.totalCount"), &json!(0));
    let theirs_after = app
        .graphql(
            Some(&theirs.token),
            "query($id: ID!) { employee(id: $id) { version firstName } }",
            json!({ "id": secret["id"] }),
        )
        .await
        .ok();
    assert_eq!(theirs_after.data("employee.version"), &json!(1));
}

#[tokio::test]
async fn each_tenant_has_its_own_database_that_only_its_role_can_open() {
    let app = TestApp::spawn().await;
    let a = app.sign_up(&slug("tenant-a")).await;
    let b = app.sign_up(&slug("tenant-b")).await;
    let db_a = app.tenant_database(a.tenant_id).await;
    let db_b = app.tenant_database(b.tenant_id).await;
    assert_ne!(db_a, db_b);
    let key = MasterKey::load(None, app.data_dir.path()).unwrap();
    let as_role = |role: &str, password: String, db: &str| {
        admin_options(db)
            .username(role)
            .password(&password)
            .disable_statement_logging()
    };

    let own = PgConnection::connect_with(&as_role(
        &db_a,
        key.tenant_db_password(a.tenant_id)
            .expose_secret()
            .to_owned(),
        &db_a,
    ))
    .await;
    let cross = PgConnection::connect_with(&as_role(
        &db_a,
        key.tenant_db_password(a.tenant_id)
            .expose_secret()
            .to_owned(),
        &db_b,
    ))
    .await;

    let mut own = own.expect("a tenant's role opens its own database");
    let err = cross.expect_err("a tenant's role cannot open another tenant's database");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let public_connect: bool =
        sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
            .bind(&db_b)
            .fetch_one(&mut own)
            .await
            .unwrap();
    assert!(!public_connect, "CONNECT is revoked from PUBLIC");
    own.close().await.unwrap();
}

#[tokio::test]
async fn regions_map_to_the_default_server_without_configuration() {
    let app = TestApp::spawn().await;
    let response = app
        .graphql(
            None,
            "mutation($input: SignUpInput!) { signUp(input: $input) { token tenant { region } } }",
            json!({ "input": { "organization": "US Org", "slug": slug("us"), "region": "us",
                               "adminEmail": "us@example.org", "adminName": "Sam", "password": custos_tests::PASSWORD } }),
        )
        .await
        .ok();
    assert_eq!(response.data("signUp.tenant.region"), &json!("us"));
    let token = response.data("signUp.token").as_str().unwrap().to_owned();
    app.create_employee(&token, json!({ "firstName": "Uma", "lastName": "S" }))
        .await;
}

#[tokio::test]
async fn idle_tenant_contexts_are_closed_and_reopen_on_use() {
    let app =
        TestApp::spawn_with(|config| config.tenant_idle = std::time::Duration::from_millis(400))
            .await;
    let session = app.sign_up(&slug("idle-ctx")).await;
    app.create_employee(
        &session.token,
        json!({ "firstName": "Ida", "lastName": "Idle" }),
    )
    .await;
    assert_eq!(app.services.tenancy.open_count().await, 1);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.services.tenancy.open_count().await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.services.tenancy.open_count().await,
        0,
        "the idle context was closed"
    );

    let list = app
        .graphql(
            Some(&session.token),
            "{ employees { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(list.data("employees.totalCount"), &json!(1));
    app.create_employee(
        &session.token,
        json!({ "firstName": "Ira", "lastName": "Awake" }),
    )
    .await;
    assert_eq!(app.services.tenancy.open_count().await, 1);
}

#[tokio::test]
async fn a_sign_up_abandoned_half_way_is_cleaned_up_at_the_next_start() {
    let first = TestApp::spawn().await;
    let id = uuid::Uuid::now_v7();
    let name = format!("custos_t_{}", id.simple());
    let abandoned = slug("abandoned");
    sqlx::query(
        "INSERT INTO tenants (id, slug, name, region, status, database_name, role_name, created_at)
         VALUES ($1, $2, 'Abandoned', 'eu', 'provisioning', $3, $3, now() - interval '1 hour')",
    )
    .bind(id)
    .bind(&abandoned)
    .bind(&name)
    .execute(first.services.tenancy.catalog())
    .await
    .unwrap();

    let catalog = first.catalog.clone();
    let second = TestApp::spawn_with(|config| config.catalog_database = catalog).await;

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_one(second.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(left, 0);
    second.sign_up(&abandoned).await;
}
