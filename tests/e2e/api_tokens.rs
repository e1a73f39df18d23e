//! API tokens: created by administrators for one role, shown once and stored hashed, acting
//! with that role's permissions only, attributed as themselves, their use recorded like a
//! login, and refused once revoked or expired.

use custos_tests::{slug, TestApp};
use serde_json::json;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn a_token_acts_with_its_role_and_is_attributed_as_itself() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("tokens")).await;
    let hr = app.role_id(&admin, "HR manager").await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let (hr_token, hr_id) = app.api_token(&admin, "Payroll sync", &hr).await;
    let (viewer_token, _) = app.api_token(&admin, "Reporting", &viewer).await;
    assert!(hr_token.starts_with("cua_"));

    let created = app
        .create_employee(
            &hr_token,
            json!({ "firstName": "Ida", "lastName": "Import" }),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let read = app
        .graphql(
            Some(&viewer_token),
            "query($id: ID!) { employee(id: $id) { createdBy { id kind name email } } recordHistory(id: $id) { edges { node { actor { kind name } } } } }",
            json!({ "id": id }),
        )
        .await;
    // The Viewer role has no `history` permission: the employee reads, the history does not.
    assert_eq!(read.code(), Some("FORBIDDEN"));
    assert_eq!(read.data("employee.createdBy.id"), &json!(hr_id));
    assert_eq!(read.data("employee.createdBy.kind"), &json!("API_TOKEN"));
    assert_eq!(read.data("employee.createdBy.name"), &json!("Payroll sync"));
    assert!(read.data("employee.createdBy.email").is_null());
    let history = app
        .graphql(
            Some(&hr_token),
            "query($id: ID!) { recordHistory(id: $id) { edges { node { actor { id kind } } } } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(
        history.data("recordHistory.edges.0.node.actor.kind"),
        &json!("API_TOKEN")
    );

    // Data only: no user, role or self-service field.
    for document in [
        "{ me { id } }",
        "{ users { totalCount } }",
        "{ organization { id } }",
        "mutation { logout }",
        "mutation { createUser(input: { email: \"x@example.org\", name: \"X\", temporaryPassword: \"temporary password 9\" }) { id } }",
    ] {
        let response = app.graphql(Some(&hr_token), document, json!({})).await;
        assert_eq!(response.code(), Some("FORBIDDEN"), "{document}: {:?}", response.body);
    }
    let write = app
        .graphql(
            Some(&viewer_token),
            "mutation { createEmployee(input: { firstName: \"No\", lastName: \"Way\" }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(write.code(), Some("FORBIDDEN"));
}

#[tokio::test]
async fn tokens_are_stored_hashed_listed_and_their_use_recorded() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("tokens-list")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let (token, id) = app.api_token(&admin, "Dashboard", &viewer).await;
    app.graphql(Some(&token), "{ employees { totalCount } }", json!({}))
        .await
        .ok();

    let mut db = app.tenant_admin(admin.tenant_id).await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM api_tokens WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(stored, Sha256::digest(token.as_bytes()).to_vec());
    // `cus_<tenant id>_<secret>`: the secret is base64url and may itself hold `_` (which is
    // also a LIKE wildcard), so it is everything after the tenant id, searched as plain text.
    let secret = token.splitn(3, '_').nth(2).unwrap();
    assert!(secret.len() >= 43, "{token}");
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE strpos(payload::text, $1) > 0 OR strpos(metadata::text, $1) > 0",
    )
    .bind(secret)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(leaks, 0, "the token itself is stored nowhere");

    app.settled(admin.tenant_id).await;
    let listed = app
        .graphql(
            Some(&admin.token),
            "{ apiTokens { totalCount edges { node { id name active lastUsedAt role { name } createdBy { id } } } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(listed.data("apiTokens.totalCount"), &json!(1));
    let node = listed.data("apiTokens.edges.0.node");
    assert_eq!(node["name"], "Dashboard");
    assert_eq!(node["active"], true);
    assert_eq!(node["role"]["name"], "Viewer");
    assert_eq!(node["createdBy"]["id"], json!(admin.user_id.to_string()));
    assert!(node["lastUsedAt"].is_string(), "{node}");
    let uses = app
        .graphql(
            Some(&admin.token),
            "query($t: ID) { loginHistory(apiTokenId: $t) { totalCount edges { node { eventType ip userAgent apiToken { name } user { id } } } } }",
            json!({ "t": id }),
        )
        .await
        .ok();
    assert_eq!(uses.data("loginHistory.totalCount"), &json!(1));
    let entry = uses.data("loginHistory.edges.0.node");
    assert_eq!(entry["eventType"], "ApiTokenUsed");
    assert_eq!(entry["apiToken"]["name"], "Dashboard");
    assert!(
        entry["ip"].is_string() && entry["user"].is_null(),
        "{entry}"
    );
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused_and_the_refusal_recorded() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("tokens-revoke")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let (token, id) = app.api_token(&admin, "Old sync", &viewer).await;
    let (expiring, expiring_id) = app.api_token(&admin, "Temporary sync", &viewer).await;

    // A live token blocks deleting its role: moving it elsewhere could widen its access.
    let blocked = app
        .graphql(
            Some(&admin.token),
            "mutation($r: ID!) { deleteRole(id: $r) }",
            json!({ "r": viewer }),
        )
        .await;
    assert_eq!(blocked.code(), Some("VALIDATION"));
    assert!(blocked.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("API token"));

    let revoked = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { revokeApiToken(id: $id) { active revokedAt } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(revoked.data("revokeApiToken.active"), &json!(false));
    let again = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { revokeApiToken(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(again.code(), Some("VALIDATION"));
    let refused = app
        .graphql(Some(&token), "{ employees { totalCount } }", json!({}))
        .await;
    assert_eq!(refused.code(), Some("UNAUTHENTICATED"));

    let mut db = app.tenant_admin(admin.tenant_id).await;
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&expiring_id)
    .execute(&mut db)
    .await
    .unwrap();
    let expired = app
        .graphql(Some(&expiring), "{ employees { totalCount } }", json!({}))
        .await;
    assert_eq!(expired.code(), Some("UNAUTHENTICATED"));

    app.settled(admin.tenant_id).await;
    let refusals = app
        .graphql(
            Some(&admin.token),
            "{ loginHistory { edges { node { eventType reason apiToken { id } } } } }",
            json!({}),
        )
        .await
        .ok();
    let reasons: Vec<(String, String)> = refusals
        .data("loginHistory.edges")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"]["eventType"] == "ApiTokenRefused")
        .map(|e| {
            (
                e["node"]["apiToken"]["id"].as_str().unwrap().to_owned(),
                e["node"]["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (expiring_id.clone(), "expired".to_owned()),
            (id.clone(), "revoked".to_owned())
        ]
    );
    let listed = app
        .graphql(
            Some(&admin.token),
            "{ active: apiTokens { totalCount } all: apiTokens(includeInactive: true) { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(listed.data("active.totalCount"), &json!(0));
    assert_eq!(listed.data("all.totalCount"), &json!(2));
}

#[tokio::test]
async fn bad_token_input_is_refused_with_a_clear_error() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("tokens-bad")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let create = "mutation($i: CreateApiTokenInput!) { createApiToken(input: $i) { token } }";
    for (input, code, field) in [
        (
            json!({ "name": " ", "roleId": viewer }),
            "VALIDATION",
            Some("name"),
        ),
        (
            json!({ "name": "x".repeat(101), "roleId": viewer }),
            "VALIDATION",
            Some("name"),
        ),
        (
            json!({ "name": "Past", "roleId": viewer, "expiresAt": "2001-01-01T00:00:00Z" }),
            "VALIDATION",
            Some("expiresAt"),
        ),
        (
            json!({ "name": "Ghost", "roleId": uuid::Uuid::now_v7().to_string() }),
            "NOT_FOUND",
            None,
        ),
        (
            json!({ "name": "Bad id", "roleId": "not-a-uuid" }),
            "VALIDATION",
            Some("roleId"),
        ),
    ] {
        let response = app
            .graphql(Some(&admin.token), create, json!({ "i": input }))
            .await;
        assert_eq!(response.code(), Some(code), "{input}: {:?}", response.body);
        assert_eq!(response.field(), field, "{input}");
    }
    let listed = app
        .graphql(
            Some(&admin.token),
            "{ apiTokens(includeInactive: true) { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        listed.data("apiTokens.totalCount"),
        &json!(0),
        "nothing was created"
    );
    for malformed in ["cua_", "cua_nothex_AAAA", "cus_0_x"] {
        let response = app
            .graphql(Some(malformed), "{ employees { totalCount } }", json!({}))
            .await;
        assert_eq!(response.code(), Some("UNAUTHENTICATED"), "{malformed}");
    }
}
