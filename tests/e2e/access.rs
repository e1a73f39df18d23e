//! Users, roles and permissions: administration, self-service, and what each user may do.

use custos_tests::{logs, slug, TestApp, PASSWORD};
use serde_json::json;

const EMPLOYEES: &str = "{ employees { totalCount } }";
const CREATE: &str =
    "mutation { createEmployee(input: { firstName: \"A\", lastName: \"B\" }) { id } }";

#[tokio::test]
async fn a_new_user_must_replace_the_temporary_password_before_anything_else() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("temp")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let created = app
        .graphql(
            Some(&admin.token),
            "mutation($i: CreateUserInput!) { createUser(input: $i) { id mustChangePassword roles { name } } }",
            json!({ "i": { "email": "new@example.org", "name": "New", "temporaryPassword": "temporary password 1", "roleIds": [viewer] } }),
        )
        .await
        .ok();
    assert_eq!(created.data("createUser.mustChangePassword"), &json!(true));
    assert_eq!(created.data("createUser.roles.0.name"), &json!("Viewer"));
    let token = app
        .login(&admin.slug, "new@example.org", "temporary password 1")
        .await
        .unwrap();

    let blocked = app.graphql(Some(&token), EMPLOYEES, json!({})).await;
    let me = app
        .graphql(Some(&token), "{ me { mustChangePassword } }", json!({}))
        .await
        .ok();
    let wrong = app
        .graphql(Some(&token), "mutation { changePassword(currentPassword: \"nope nope nope\", newPassword: \"my own password 1\") { id } }", json!({}))
        .await;
    app.graphql(
        Some(&token),
        "mutation { changePassword(currentPassword: \"temporary password 1\", newPassword: \"my own password 1\") { mustChangePassword } }",
        json!({}),
    )
    .await
    .ok();
    let allowed = app.graphql(Some(&token), EMPLOYEES, json!({})).await;

    assert_eq!(blocked.code(), Some("FORBIDDEN"));
    assert_eq!(me.data("me.mustChangePassword"), &json!(true));
    assert_eq!(wrong.code(), Some("VALIDATION"));
    assert_eq!(wrong.field(), Some("currentPassword"));
    allowed.ok();
    assert!(app
        .login(&admin.slug, "new@example.org", "temporary password 1")
        .await
        .is_err());
}

#[tokio::test]
async fn permissions_are_the_union_of_roles_and_changes_apply_on_the_next_request() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("union")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let creator = app
        .graphql(
            Some(&admin.token),
            "mutation { createRole(input: { name: \"Creator\", grants: [{ datasheet: EMPLOYEES, permission: CREATE }] }) { id grants { datasheet permission } } }",
            json!({}),
        )
        .await
        .ok();
    let creator = creator.data("createRole.id").as_str().unwrap().to_owned();
    let only_viewer = app
        .user_with_roles(&admin, std::slice::from_ref(&viewer))
        .await;
    let both = app
        .user_with_roles(&admin, &[viewer.clone(), creator.clone()])
        .await;

    // FORBIDDEN names the permission that is missing, in API names, for a form to show.
    let refused = app
        .graphql(Some(&only_viewer.token), CREATE, json!({}))
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    assert_eq!(
        refused.body["errors"][0]["extensions"]["permission"], "employees/create",
        "{}",
        refused.body
    );
    let refused = app
        .graphql(
            Some(&only_viewer.token),
            "mutation { createRole(input: { name: \"Mine\" }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    assert_eq!(
        refused.body["errors"][0]["extensions"]["permission"], "admin",
        "{}",
        refused.body
    );
    app.graphql(Some(&only_viewer.token), EMPLOYEES, json!({}))
        .await
        .ok();
    app.graphql(Some(&both.token), CREATE, json!({})).await.ok();
    app.graphql(Some(&both.token), EMPLOYEES, json!({}))
        .await
        .ok();

    app.graphql(
        Some(&admin.token),
        "mutation($r: ID!) { grantPermission(roleId: $r, grant: { datasheet: EMPLOYEES, permission: CREATE }) { id } }",
        json!({ "r": viewer }),
    )
    .await
    .ok();
    app.graphql(Some(&only_viewer.token), CREATE, json!({}))
        .await
        .ok();
    app.graphql(
        Some(&admin.token),
        "mutation($r: ID!) { revokePermission(roleId: $r, grant: { datasheet: EMPLOYEES, permission: READ }) { id } }",
        json!({ "r": viewer }),
    )
    .await
    .ok();
    assert_eq!(
        app.graphql(Some(&only_viewer.token), EMPLOYEES, json!({}))
            .await
            .code(),
        Some("FORBIDDEN")
    );
    // About a record given by id, the refusal does not say which datasheet the record is in.
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Hidden", "lastName": "Datasheet" }),
        )
        .await;
    let refused = app
        .graphql(
            Some(&only_viewer.token),
            "query($id: ID!) { consents(subjectId: $id) { subjectId } }",
            json!({ "id": employee["id"] }),
        )
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"), "{}", refused.body);
    assert!(
        refused.body["errors"][0]["extensions"]
            .get("permission")
            .is_none(),
        "{}",
        refused.body
    );
    let me = app
        .graphql(
            Some(&both.token),
            "{ me { permissions { datasheet permission } } }",
            json!({}),
        )
        .await
        .ok();
    // The Viewer still reads contacts and applicants; employees' read was revoked.
    assert_eq!(
        me.data("me.permissions"),
        &json!([
            { "datasheet": "EMPLOYEES", "permission": "CREATE" },
            { "datasheet": "CONTACTS", "permission": "READ" },
            { "datasheet": "APPLICANTS", "permission": "READ" },
        ])
    );
}

#[tokio::test]
async fn only_administrators_manage_users_and_roles_and_refusals_are_logged() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("admins")).await;
    let hr = app.role_id(&admin, "HR manager").await;
    let manager = app.user_with_roles(&admin, &[hr]).await;

    for query in [
        "{ users { totalCount } }",
        "{ roles { id } }",
        "mutation { createRole(input: { name: \"Sneaky\" }) { id } }",
        "mutation { createUser(input: { email: \"x@example.org\", name: \"X\", temporaryPassword: \"temporary password 1\" }) { id } }",
    ] {
        let response = app.graphql(Some(&manager.token), query, json!({})).await;
        assert_eq!(response.code(), Some("FORBIDDEN"), "{query}: {}", response.body);
    }
    assert!(
        logs().contains(&format!("actor.id=Some({})", manager.user_id)),
        "refusals are security log lines"
    );
    app.graphql(Some(&manager.token), CREATE, json!({}))
        .await
        .ok();
}

#[tokio::test]
async fn there_is_always_an_active_administrator_and_there_may_be_several() {
    let app = TestApp::spawn().await;
    let first = app.sign_up(&slug("last")).await;
    let me = first.user_id.to_string();

    for mutation in [
        "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
        "mutation($id: ID!) { setAdministrator(id: $id, administrator: false) { id } }",
    ] {
        let refused = app
            .graphql(Some(&first.token), mutation, json!({ "id": me }))
            .await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{}", refused.body);
    }

    let second = app.user_with_roles(&first, &[]).await;
    app.graphql(
        Some(&first.token),
        "mutation($id: ID!) { setAdministrator(id: $id, administrator: true) { isAdmin } }",
        json!({ "id": second.user_id.to_string() }),
    )
    .await
    .ok();
    app.graphql(Some(&second.token), "{ users { totalCount } }", json!({}))
        .await
        .ok();
    let demoted = app
        .graphql(
            Some(&second.token),
            "mutation($id: ID!) { setAdministrator(id: $id, administrator: false) { isAdmin } }",
            json!({ "id": me }),
        )
        .await
        .ok();
    assert_eq!(demoted.data("setAdministrator.isAdmin"), &json!(false));
    let refused = app
        .graphql(
            Some(&second.token),
            "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
            json!({ "id": second.user_id.to_string() }),
        )
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"));
}

#[tokio::test]
async fn deactivation_ends_sessions_and_blocks_login_until_reactivated() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("deact")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    let id = json!({ "id": user.user_id.to_string() });

    let deactivated = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { deactivateUser(id: $id) { active } }",
            id.clone(),
        )
        .await
        .ok();
    let me = app
        .graphql(Some(&user.token), "{ me { id } }", json!({}))
        .await;
    let login = app.login(&admin.slug, &user.email, PASSWORD).await;
    let twice = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { deactivateUser(id: $id) { active } }",
            id.clone(),
        )
        .await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { reactivateUser(id: $id) { active } }",
        id,
    )
    .await
    .ok();

    assert_eq!(deactivated.data("deactivateUser.active"), &json!(false));
    assert_eq!(me.code(), Some("UNAUTHENTICATED"));
    assert_eq!(login.unwrap_err().code(), Some("UNAUTHENTICATED"));
    assert_eq!(twice.code(), Some("VALIDATION"));
    app.login(&admin.slug, &user.email, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_password_reset_ends_sessions_and_requires_a_new_password() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("reset")).await;
    let user = app.user_with_roles(&admin, &[]).await;

    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { resetUserPassword(id: $id, temporaryPassword: \"another temporary 1\") { mustChangePassword } }",
        json!({ "id": user.user_id.to_string() }),
    )
    .await
    .ok();

    assert_eq!(
        app.graphql(Some(&user.token), "{ me { id } }", json!({}))
            .await
            .code(),
        Some("UNAUTHENTICATED")
    );
    assert!(app.login(&admin.slug, &user.email, PASSWORD).await.is_err());
    let token = app
        .login(&admin.slug, &user.email, "another temporary 1")
        .await
        .unwrap();
    let me = app
        .graphql(Some(&token), "{ me { mustChangePassword } }", json!({}))
        .await
        .ok();
    assert_eq!(me.data("me.mustChangePassword"), &json!(true));
}

#[tokio::test]
async fn changing_your_password_ends_your_other_sessions() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("change")).await;
    let other = app
        .login(&admin.slug, &admin.email, PASSWORD)
        .await
        .unwrap();

    app.graphql(
        Some(&admin.token),
        "mutation($c: String!) { changePassword(currentPassword: $c, newPassword: \"a brand new password\") { id } }",
        json!({ "c": PASSWORD }),
    )
    .await
    .ok();

    app.graphql(Some(&admin.token), "{ me { id } }", json!({}))
        .await
        .ok();
    assert_eq!(
        app.graphql(Some(&other), "{ me { id } }", json!({}))
            .await
            .code(),
        Some("UNAUTHENTICATED")
    );
    let weak = app
        .graphql(Some(&admin.token), "mutation { changePassword(currentPassword: \"a brand new password\", newPassword: \"short\") { id } }", json!({}))
        .await;
    assert_eq!(weak.code(), Some("VALIDATION"));
    assert_eq!(weak.field(), Some("newPassword"), "the argument's own name");
}

#[tokio::test]
async fn user_management_rejects_bad_input_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("bad")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    let create = "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }";
    let cases = [
        (
            json!({ "email": admin.email.to_uppercase(), "name": "Dup", "temporaryPassword": "temporary password 1" }),
            "email",
        ),
        (
            json!({ "email": "fresh@example.org", "name": "Weak", "temporaryPassword": "short" }),
            "temporaryPassword",
        ),
        (
            json!({ "email": "fresh@example.org", "name": " ", "temporaryPassword": "temporary password 1" }),
            "name",
        ),
        (
            json!({ "email": "fresh@example.org", "name": "R", "temporaryPassword": "temporary password 1", "roleIds": [uuid::Uuid::now_v7().to_string()] }),
            "roleIds",
        ),
    ];
    for (input, field) in cases {
        let response = app
            .graphql(Some(&admin.token), create, json!({ "i": input }))
            .await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{field}: {}",
            response.body
        );
        assert_eq!(response.field(), Some(field), "{}", response.body);
    }
    // More roles than a user may hold are refused before any is looked up.
    let roles: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let too_many = app
        .graphql(
            Some(&admin.token),
            create,
            json!({ "i": { "email": "fresh@example.org", "name": "R",
                           "temporaryPassword": "temporary password 1", "roleIds": roles } }),
        )
        .await;
    assert_eq!(too_many.field(), Some("roleIds"), "{}", too_many.body);
    assert!(
        too_many.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 100 roles")),
        "{}",
        too_many.body
    );
    let several = app
        .graphql(
            Some(&admin.token),
            create,
            json!({ "i": { "email": admin.email, "name": " ", "temporaryPassword": "short",
                           "roleIds": [uuid::Uuid::now_v7().to_string()] } }),
        )
        .await;
    assert_eq!(
        several.invalid_fields(),
        ["email", "name", "roleIds", "temporaryPassword"],
        "every problem at once: {}",
        several.body
    );
    let duplicate = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!, $e: String) { updateUser(id: $id, input: { name: \"Renamed\", email: $e }) { id } }",
            json!({ "id": user.user_id.to_string(), "e": admin.email }),
        )
        .await;
    assert_eq!(duplicate.code(), Some("VALIDATION"));

    let users = app
        .graphql(
            Some(&admin.token),
            "{ users { totalCount edges { node { name } } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(users.data("users.totalCount"), &json!(2));
    assert_eq!(
        users.data("users.edges.1.node.name"),
        &json!("Una User"),
        "the rename was not applied either"
    );
    let missing = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
            json!({ "id": uuid::Uuid::now_v7().to_string() }),
        )
        .await;
    assert_eq!(missing.code(), Some("NOT_FOUND"));
}

#[tokio::test]
async fn roles_are_renamed_and_deleted_only_with_reassignment_while_held() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("roles")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let hr = app.role_id(&admin, "HR manager").await;
    let user = app
        .user_with_roles(&admin, std::slice::from_ref(&viewer))
        .await;

    let taken = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { renameRole(id: $id, name: \"hr MANAGER\") { id } }",
            json!({ "id": viewer }),
        )
        .await;
    let refused = app
        .graphql(
            Some(&admin.token),
            "mutation($id: ID!) { deleteRole(id: $id) }",
            json!({ "id": viewer }),
        )
        .await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { renameRole(id: $id, name: \"Reader\") { name } }",
        json!({ "id": viewer }),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!, $to: ID) { deleteRole(id: $id, reassignTo: $to) }",
        json!({ "id": viewer, "to": hr }),
    )
    .await
    .ok();

    assert_eq!(taken.code(), Some("VALIDATION"));
    assert_eq!(refused.code(), Some("VALIDATION"));
    assert_eq!(refused.field(), Some("reassignTo"));
    let roles = app
        .graphql(Some(&admin.token), "{ roles { name } }", json!({}))
        .await
        .ok();
    assert_eq!(roles.data("roles"), &json!([{ "name": "HR manager" }]));
    let moved = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { user(id: $id) { roles { name } } }",
            json!({ "id": user.user_id.to_string() }),
        )
        .await
        .ok();
    assert_eq!(moved.data("user.roles"), &json!([{ "name": "HR manager" }]));
    app.graphql(Some(&user.token), CREATE, json!({})).await.ok();
}

#[tokio::test]
async fn users_change_their_own_name() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("me")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    let renamed = app
        .graphql(
            Some(&user.token),
            "mutation { updateMe(name: \"Una Renamed\") { name } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(renamed.data("updateMe.name"), &json!("Una Renamed"));
    let empty = app
        .graphql(
            Some(&user.token),
            "mutation { updateMe(name: \"\") { name } }",
            json!({}),
        )
        .await;
    assert_eq!(empty.code(), Some("VALIDATION"));
}

#[tokio::test]
async fn sessions_are_listed_and_ended_by_their_user_or_an_administrator() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("sessions")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    let second = app.login(&admin.slug, &user.email, PASSWORD).await.unwrap();
    let uid = json!({ "u": user.user_id.to_string() });

    let own = app
        .graphql(Some(&user.token), "{ sessions { id current } }", json!({}))
        .await
        .ok();
    let listed = app
        .graphql(
            Some(&admin.token),
            "query($u: ID) { sessions(userId: $u) { id } }",
            uid.clone(),
        )
        .await
        .ok();
    let snooping = app
        .graphql(
            Some(&user.token),
            "query($u: ID) { sessions(userId: $u) { id } }",
            json!({ "u": admin.user_id.to_string() }),
        )
        .await;
    let admin_session = app
        .graphql(Some(&admin.token), "{ sessions { id } }", json!({}))
        .await
        .ok();
    let not_theirs = app
        .graphql(
            Some(&user.token),
            "mutation($s: ID!) { endSession(id: $s) }",
            json!({ "s": admin_session.data("sessions.0.id") }),
        )
        .await;

    assert_eq!(own.data("sessions").as_array().unwrap().len(), 2);
    assert_eq!(
        own.data("sessions")
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["current"] == json!(true))
            .count(),
        1
    );
    assert_eq!(listed.data("sessions").as_array().unwrap().len(), 2);
    assert_eq!(snooping.code(), Some("FORBIDDEN"));
    assert_eq!(not_theirs.code(), Some("NOT_FOUND"));

    let newest = listed.data("sessions.0.id").clone();
    app.graphql(
        Some(&admin.token),
        "mutation($s: ID!) { endSession(id: $s) }",
        json!({ "s": newest }),
    )
    .await
    .ok();
    assert_eq!(
        app.graphql(Some(&second), "{ me { id } }", json!({}))
            .await
            .code(),
        Some("UNAUTHENTICATED")
    );
    app.graphql(Some(&user.token), "{ me { id } }", json!({}))
        .await
        .ok();
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user_only() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("everywhere")).await;
    let other = app
        .login(&admin.slug, &admin.email, PASSWORD)
        .await
        .unwrap();
    let user = app.user_with_roles(&admin, &[]).await;

    let ended = app
        .graphql(
            Some(&admin.token),
            "mutation { logoutEverywhere }",
            json!({}),
        )
        .await
        .ok();

    assert_eq!(ended.data("logoutEverywhere"), &json!(2));
    for token in [&admin.token, &other] {
        assert_eq!(
            app.graphql(Some(token), "{ me { id } }", json!({}))
                .await
                .code(),
            Some("UNAUTHENTICATED")
        );
    }
    app.graphql(Some(&user.token), "{ me { id } }", json!({}))
        .await
        .ok();
}

#[tokio::test]
async fn who_changed_a_record_shows_name_and_email_only() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("userref")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let reader = app.user_with_roles(&admin, &[viewer]).await;
    app.create_employee(&admin.token, json!({ "firstName": "A", "lastName": "B" }))
        .await;

    let names = app
        .graphql(
            Some(&reader.token),
            "{ employees { edges { node { createdBy { id name email } } } } }",
            json!({}),
        )
        .await
        .ok();
    let roles = app
        .graphql(
            Some(&reader.token),
            "{ employees { edges { node { createdBy { isAdmin roles { name } } } } } }",
            json!({}),
        )
        .await;

    assert_eq!(
        names.data("employees.edges.0.node.createdBy.email"),
        &json!(admin.email)
    );
    assert_eq!(
        roles.code(),
        Some("VALIDATION"),
        "account details are not reachable from records: {}",
        roles.body
    );
}

#[tokio::test]
async fn wrong_current_passwords_count_toward_the_lock() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("oracle")).await;
    let user = app.user_with_roles(&admin, &[]).await;
    let change = "mutation($c: String!) { changePassword(currentPassword: $c, newPassword: \"a fresh passphrase 9\") { id } }";

    let same = app
        .graphql(
            Some(&user.token),
            "mutation($c: String!) { changePassword(currentPassword: $c, newPassword: $c) { id } }",
            json!({ "c": PASSWORD }),
        )
        .await;
    for i in 0..10 {
        let wrong = app
            .graphql(
                Some(&user.token),
                change,
                json!({ "c": format!("guess number {i}") }),
            )
            .await;
        assert_eq!(wrong.field(), Some("currentPassword"));
    }
    let right_but_locked = app
        .graphql(Some(&user.token), change, json!({ "c": PASSWORD }))
        .await;

    assert_eq!(same.code(), Some("VALIDATION"));
    assert_eq!(same.field(), Some("newPassword"));
    assert_eq!(
        right_but_locked.field(),
        Some("currentPassword"),
        "{}",
        right_but_locked.body
    );
    assert!(
        app.login(&admin.slug, &user.email, PASSWORD).await.is_err(),
        "the account is locked"
    );
}

#[tokio::test]
async fn an_unknown_user_id_is_not_found_for_administrators() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("unknownid")).await;
    let other = app.sign_up(&slug("otherorg")).await;
    for query in [
        "query($u: ID) { sessions(userId: $u) { id } }",
        "query($u: ID) { loginHistory(userId: $u) { totalCount } }",
    ] {
        for id in [uuid::Uuid::now_v7(), other.user_id] {
            let response = app
                .graphql(Some(&admin.token), query, json!({ "u": id.to_string() }))
                .await;
            assert_eq!(
                response.code(),
                Some("NOT_FOUND"),
                "{query}: {}",
                response.body
            );
        }
    }
}

#[tokio::test]
async fn two_administrators_demoting_each_other_at_once_leave_one() {
    let app = TestApp::spawn().await;
    let first = app.sign_up(&slug("race-admins")).await;
    let second = app.user_with_roles(&first, &[]).await;
    app.graphql(
        Some(&first.token),
        "mutation($id: ID!) { setAdministrator(id: $id, administrator: true) { id } }",
        json!({ "id": second.user_id.to_string() }),
    )
    .await
    .ok();
    let demote =
        "mutation($id: ID!) { setAdministrator(id: $id, administrator: false) { isAdmin } }";

    let (a, b) = tokio::join!(
        app.graphql(
            Some(&first.token),
            demote,
            json!({ "id": second.user_id.to_string() })
        ),
        app.graphql(
            Some(&second.token),
            demote,
            json!({ "id": first.user_id.to_string() })
        ),
    );

    let succeeded = [&a, &b].iter().filter(|r| r.code().is_none()).count();
    assert_eq!(succeeded, 1, "{} / {}", a.body, b.body);
    let users = app
        .graphql(
            Some(if a.code().is_none() {
                &first.token
            } else {
                &second.token
            }),
            "{ users { edges { node { isAdmin active } } } }",
            json!({}),
        )
        .await
        .ok();
    let admins = users
        .data("users.edges")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"]["isAdmin"] == json!(true))
        .count();
    assert_eq!(admins, 1);
}
