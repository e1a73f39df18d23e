//! Personal data at rest: the personal content of every record's and user's events is sealed
//! with the subject's own key; the log keeps in clear only what auditors need.

use custos_tests::{slug, TestApp};
use serde_json::json;

#[tokio::test]
async fn events_hold_no_personal_value_in_clear() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("sealed")).await;
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Zebedee", "lastName": "Quuxworth", "email": "zebedee.q@sealed.example",
                    "phone": "+44 20 7946 0123", "department": "Cryptography" }),
        )
        .await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { updateEmployee(id: $id, input: { notes: \"Prefers Xylophone music\" }) { id } }",
        json!({ "id": employee["id"] }),
    )
    .await
    .ok();
    app.graphql(
        Some(&admin.token),
        "mutation { createUser(input: { email: \"yolanda.v@sealed.example\", name: \"Yolanda Vexley\", temporaryPassword: \"temporary passphrase 9\" }) { id } }",
        json!({}),
    )
    .await
    .ok();

    let mut db = app.tenant_admin(admin.tenant_id).await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let log = stored.join("\n").to_lowercase();
    for value in [
        "zebedee",
        "quuxworth",
        "zebedee.q@sealed.example",
        "442079460123",
        "cryptography",
        "xylophone",
        "yolanda",
        "vexley",
        "argon2id",
    ] {
        assert!(
            !log.contains(value),
            "`{value}` is in the event log in clear"
        );
    }
    // What auditors need stays readable: the datasheet and the names of the fields.
    let created: serde_json::Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(employee["id"].as_str().unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(created["clear"]["datasheet"], "employees");
    assert_eq!(
        created["clear"]["fields"],
        json!(["department", "email", "first_name", "last_name", "phone"])
    );
    // One key per subject (the employee, the two users), stored wrapped.
    let keys: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped_key FROM subject_keys ORDER BY created_at")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k.len() == 24 + 32 + 16),
        "nonce, key and tag"
    );

    // Through the service everything reads as before: the read model and the history.
    let history = app
        .graphql(
            Some(&admin.token),
            "query($id: ID!) { recordHistory(id: $id) { edges { node { changes { field after } } } } }",
            json!({ "id": employee["id"] }),
        )
        .await
        .ok();
    assert!(history.body.to_string().contains("Xylophone"));
}
