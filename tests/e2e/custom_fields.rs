//! Custom fields: administrators define them per datasheet; records are checked against them
//! at write; values show as typed entries, filter and order lists; changes and retirement are
//! history.

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

async fn call(app: &TestApp, session: &Session, document: &str, variables: Value) -> Response {
    app.graphql(Some(&session.token), document, variables).await
}

async fn add_field(app: &TestApp, admin: &Session, input: Value) -> Response {
    call(
        app,
        admin,
        "mutation($i: AddCustomFieldInput!) { addCustomField(datasheet: EMPLOYEES, input: $i) { key label type required options retired } }",
        json!({ "i": input }),
    )
    .await
}

const CREATE: &str = "mutation($i: CreateEmployeeInput!) { createEmployee(input: $i) { id customFields { key label type value } } }";

async fn define(app: &TestApp, admin: &Session) {
    for input in [
        json!({ "key": "shirt_size", "label": "Shirt size", "type": "SINGLE_CHOICE", "options": ["S", "M", "L"] }),
        json!({ "key": "badge", "label": "Badge number", "type": "NUMBER" }),
        json!({ "key": "remote", "label": "Remote", "type": "BOOLEAN" }),
        json!({ "key": "languages", "label": "Languages", "type": "MULTIPLE_CHOICE", "options": ["en", "fi", "de"] }),
        json!({ "key": "review_on", "label": "Review", "type": "DATE" }),
    ] {
        add_field(app, admin, input).await.ok();
    }
}

async fn employee(app: &TestApp, admin: &Session, last: &str, custom: Value) -> Response {
    call(
        app,
        admin,
        CREATE,
        json!({ "i": { "firstName": "F", "lastName": last, "customFields": custom } }),
    )
    .await
}

#[tokio::test]
async fn records_carry_typed_custom_values_checked_at_write() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("custom")).await;
    define(&app, &admin).await;
    let created = employee(
        &app,
        &admin,
        "Ames",
        json!([
            { "key": "shirt_size", "value": "M" },
            { "key": "badge", "value": 1042 },
            { "key": "remote", "value": true },
            { "key": "languages", "value": ["fi", "en", "fi"] },
        ]),
    )
    .await
    .ok();
    let values = created.data("createEmployee.customFields");
    assert_eq!(
        values,
        &json!([
            { "key": "shirt_size", "label": "Shirt size", "type": "SINGLE_CHOICE", "value": "M" },
            { "key": "badge", "label": "Badge number", "type": "NUMBER", "value": 1042.0 },
            { "key": "remote", "label": "Remote", "type": "BOOLEAN", "value": true },
            { "key": "languages", "label": "Languages", "type": "MULTIPLE_CHOICE", "value": ["fi", "en"] },
            { "key": "review_on", "label": "Review", "type": "DATE", "value": null },
        ])
    );

    for (custom, field) in [
        (json!([{ "key": "badge", "value": "1042" }]), "custom.badge"),
        (
            json!([{ "key": "shirt_size", "value": "XXL" }]),
            "custom.shirt_size",
        ),
        (
            json!([{ "key": "review_on", "value": "2026-02-30" }]),
            "custom.review_on",
        ),
        (
            json!([{ "key": "nickname", "value": "Al" }]),
            "custom.nickname",
        ),
        (
            json!([{ "key": "remote", "value": true }, { "key": "remote", "value": false }]),
            "customFields",
        ),
    ] {
        let refused = employee(&app, &admin, "Bad", custom.clone()).await;
        assert_eq!(
            refused.code(),
            Some("VALIDATION"),
            "{custom}: {:?}",
            refused.body
        );
        assert_eq!(refused.field(), Some(field), "{custom}");
    }
    let count = call(&app, &admin, "{ employees { totalCount } }", json!({}))
        .await
        .ok();
    assert_eq!(
        count.data("employees.totalCount"),
        &json!(1),
        "refused writes change nothing"
    );

    let id = created.data("createEmployee.id").clone();
    let updated = call(
        &app,
        &admin,
        "mutation($id: ID!, $i: UpdateEmployeeInput!) { updateEmployee(id: $id, input: $i) { customFields { key value } } }",
        json!({ "id": id, "i": { "customFields": [{ "key": "badge", "value": null }, { "key": "review_on", "value": "2027-01-31" }] } }),
    )
    .await
    .ok();
    let values = updated
        .data("updateEmployee.customFields")
        .as_array()
        .unwrap()
        .clone();
    assert!(values.contains(&json!({ "key": "badge", "value": null })));
    assert!(values.contains(&json!({ "key": "review_on", "value": "2027-01-31" })));
    assert!(
        values.contains(&json!({ "key": "shirt_size", "value": "M" })),
        "fields not listed stay as they are"
    );
}

#[tokio::test]
async fn custom_fields_filter_and_order_lists() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("custom-lists")).await;
    define(&app, &admin).await;
    for (last, badge, remote, languages) in [
        ("Ames", 30, true, json!(["en"])),
        ("Baker", 4, false, json!(["fi", "de"])),
        ("Carter", 200, true, json!(["de"])),
    ] {
        employee(
            &app,
            &admin,
            last,
            json!([{ "key": "badge", "value": badge }, { "key": "remote", "value": remote }, { "key": "languages", "value": languages }]),
        )
        .await
        .ok();
    }
    employee(&app, &admin, "Diaz", json!([])).await.ok();
    let list = "query($f: EmployeeFilter, $o: [EmployeeOrder!]) { employees(filter: $f, orderBy: $o) { edges { node { lastName } } } }";
    let names = |response: Response| -> Vec<String> {
        response
            .ok()
            .data("employees.edges")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["lastName"].as_str().unwrap().to_owned())
            .collect()
    };
    // Numbers compare as numbers (4 < 30 < 200), not as text.
    assert_eq!(
        names(
            call(
                &app,
                &admin,
                list,
                json!({ "o": [{ "custom": { "key": "badge", "direction": "DESC" } }] })
            )
            .await
        ),
        ["Carter", "Ames", "Baker", "Diaz"]
    );
    assert_eq!(
        names(
            call(
                &app,
                &admin,
                list,
                json!({ "f": { "custom": [{ "key": "badge", "number": { "gt": 10 } }] } })
            )
            .await
        ),
        ["Ames", "Carter"]
    );
    assert_eq!(
        names(
            call(
                &app,
                &admin,
                list,
                json!({ "f": { "custom": [{ "key": "remote", "boolean": { "eq": true } }] } })
            )
            .await
        ),
        ["Ames", "Carter"]
    );
    assert_eq!(
        names(
            call(
                &app,
                &admin,
                list,
                json!({ "f": { "custom": [{ "key": "languages", "choices": { "eq": "de" } }] } })
            )
            .await
        ),
        ["Baker", "Carter"]
    );
    assert_eq!(
        names(
            call(
                &app,
                &admin,
                list,
                json!({ "f": { "custom": [{ "key": "badge", "number": { "isNull": true } }] } })
            )
            .await
        ),
        ["Diaz"]
    );
    for variables in [
        json!({ "f": { "custom": [{ "key": "badge", "number": { "gt": "ten" } }] } }),
        json!({ "f": { "custom": [{ "key": "badge", "text": { "eq": "30" } }] } }),
        json!({ "f": { "custom": [{ "key": "badge", "number": { "eq": 30 }, "text": { "eq": "30" } }] } }),
        json!({ "f": { "custom": [{ "key": "badge" }] } }),
        json!({ "f": { "custom": [{ "key": "nope", "text": { "eq": "x" } }] } }),
        json!({ "o": [{ "custom": { "key": "languages" } }] }),
    ] {
        let refused = call(&app, &admin, list, variables.clone()).await;
        assert_eq!(refused.code(), Some("VALIDATION"), "{variables}");
    }
}

#[tokio::test]
async fn definitions_change_and_retire_as_history() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("custom-schema")).await;
    define(&app, &admin).await;
    for (input, field) in [
        (
            json!({ "key": "Bad Key", "label": "X", "type": "TEXT" }),
            "key",
        ),
        (
            json!({ "key": "shirt_size", "label": "Again", "type": "TEXT" }),
            "key",
        ),
        (
            json!({ "key": "colour", "label": "Colour", "type": "SINGLE_CHOICE" }),
            "options",
        ),
        (
            json!({ "key": "colour", "label": "Colour", "type": "TEXT", "options": ["red"] }),
            "options",
        ),
        (
            json!({ "key": "colour", "label": " ", "type": "TEXT" }),
            "label",
        ),
    ] {
        let refused = add_field(&app, &admin, input.clone()).await;
        assert_eq!(
            refused.code(),
            Some("VALIDATION"),
            "{input}: {:?}",
            refused.body
        );
        assert_eq!(refused.field(), Some(field), "{input}");
    }
    // Every problem of a definition at once.
    let several = add_field(
        &app,
        &admin,
        json!({ "key": "Bad Key", "label": " ", "type": "SINGLE_CHOICE" }),
    )
    .await;
    assert_eq!(
        several.invalid_fields(),
        ["key", "label", "options"],
        "{}",
        several.body
    );

    let made = employee(
        &app,
        &admin,
        "Ames",
        json!([{ "key": "shirt_size", "value": "S" }]),
    )
    .await
    .ok();
    let id = made.data("createEmployee.id").clone();
    // New choices: the stored value stays; new values must be among the new choices.
    let changed = call(
        &app,
        &admin,
        "mutation { updateCustomField(datasheet: EMPLOYEES, key: \"shirt_size\", input: { options: [\"M\", \"L\", \"XL\"], required: true }) { options required } }",
        json!({}),
    )
    .await
    .ok();
    assert_eq!(
        changed.data("updateCustomField.options"),
        &json!(["M", "L", "XL"])
    );
    let set = "mutation($id: ID!, $v: JSON) { updateEmployee(id: $id, input: { customFields: [{ key: \"shirt_size\", value: $v }] }) { version } }";
    assert_eq!(
        call(&app, &admin, set, json!({ "id": id, "v": "S" }))
            .await
            .code(),
        Some("VALIDATION")
    );
    assert_eq!(
        call(&app, &admin, set, json!({ "id": id, "v": null }))
            .await
            .code(),
        Some("VALIDATION"),
        "a required field cannot be cleared"
    );
    let missing = employee(&app, &admin, "Baker", json!([])).await;
    assert_eq!(missing.code(), Some("VALIDATION"));
    assert_eq!(missing.field(), Some("custom.shirt_size"));
    call(&app, &admin, set, json!({ "id": id, "v": "XL" }))
        .await
        .ok();

    call(
        &app,
        &admin,
        "mutation { retireCustomField(datasheet: EMPLOYEES, key: \"shirt_size\") { retired } }",
        json!({}),
    )
    .await
    .ok();
    let read = call(
        &app,
        &admin,
        "query($id: ID!) { employee(id: $id) { customFields { key } } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    assert!(!read
        .data("employee.customFields")
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["key"] == "shirt_size"));
    assert_eq!(
        call(&app, &admin, set, json!({ "id": id, "v": "M" }))
            .await
            .code(),
        Some("VALIDATION")
    );
    employee(&app, &admin, "Baker", json!([])).await.ok();
    let definitions = call(
        &app,
        &admin,
        "{ live: customFieldDefinitions(datasheet: EMPLOYEES) { key } all: customFieldDefinitions(datasheet: EMPLOYEES, includeRetired: true) { key retired } }",
        json!({}),
    )
    .await
    .ok();
    assert_eq!(definitions.data("live").as_array().unwrap().len(), 4);
    assert_eq!(
        definitions.data("all.0"),
        &json!({ "key": "shirt_size", "retired": true })
    );

    // The record's history keeps the retired field's values.
    let history = call(
        &app,
        &admin,
        "query($id: ID!) { recordHistory(id: $id) { edges { node { changes { field before after } } } } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let changes: Vec<Value> = history
        .data("recordHistory.edges")
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["node"]["changes"].as_array().unwrap().clone())
        .collect();
    assert!(
        changes.contains(&json!({ "field": "custom.shirt_size", "before": "S", "after": "XL" }))
    );
    // And the schema's own history is events on its stream.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'field_schema' ORDER BY global_position",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(types.len(), 7);
    assert_eq!(&types[5..], ["CustomFieldChanged", "CustomFieldRetired"]);
}
