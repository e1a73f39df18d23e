//! Record lists for frontends: filters with every operator combined by and/or/not, orders on
//! any field with creation order breaking ties, full-text search, and keyset cursors that
//! stay valid while records change.

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

const LIST: &str = "query($f: RecordFilter, $o: [RecordOrder!], $s: String, $first: Int, $after: String, $a: Boolean) {
    employees(filter: $f, orderBy: $o, search: $s, first: $first, after: $after, includeArchived: $a) {
        totalCount edges { cursor node { id lastName } } pageInfo { hasNextPage endCursor } } }";

async fn list(app: &TestApp, session: &Session, variables: Value) -> Response {
    app.graphql(Some(&session.token), LIST, variables).await
}

/// Last names of the employees a filter (etc.) selects, in the order answered.
async fn names(app: &TestApp, session: &Session, variables: Value) -> Vec<String> {
    let response = list(app, session, variables).await.ok();
    let edges = response.data("employees.edges").as_array().unwrap().clone();
    assert_eq!(
        response.data("employees.totalCount"),
        &json!(edges.len()),
        "totalCount counts the same matches"
    );
    edges
        .iter()
        .map(|e| e["node"]["lastName"].as_str().unwrap().to_owned())
        .collect()
}

async fn seed(app: &TestApp, admin: &Session) {
    for (last, department, start, kind, email, notes) in [
        (
            "Ames",
            Some("Sales"),
            Some("2020-01-15"),
            Some("FULL_TIME"),
            Some("ames@acme.example"),
            None,
        ),
        (
            "Baker",
            Some("Sales"),
            Some("2021-06-01"),
            Some("PART_TIME"),
            None,
            Some("Speaks Finnish"),
        ),
        (
            "carter",
            Some("Engineering"),
            Some("2019-03-10"),
            Some("FULL_TIME"),
            Some("c@acme.example"),
            None,
        ),
        (
            "Diaz",
            Some("Engineering"),
            None,
            Some("CONTRACTOR"),
            None,
            None,
        ),
        (
            "Evans",
            None,
            Some("2022-11-30"),
            None,
            Some("evans@other.example"),
            Some("50% remote"),
        ),
        (
            "Ames",
            Some("Support"),
            Some("2023-02-01"),
            None,
            None,
            None,
        ),
    ] {
        app.create_employee(
            &admin.token,
            json!({ "firstName": "F", "lastName": last, "department": department, "startDate": start,
                    "employmentType": kind, "email": email, "notes": notes }),
        )
        .await;
    }
}

#[tokio::test]
async fn filters_combine_every_operator() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("filters")).await;
    seed(&app, &admin).await;
    let by = |filter: Value| json!({ "f": filter });
    let cases = [
        (
            json!({ "field": "department", "eq": "Sales" }),
            vec!["Ames", "Baker"],
        ),
        // Records without a department are "not Sales" too.
        (
            json!({ "field": "department", "neq": "Sales" }),
            vec!["carter", "Diaz", "Evans", "Ames"],
        ),
        (
            json!({ "field": "department", "in": ["Support", "Engineering"] }),
            vec!["carter", "Diaz", "Ames"],
        ),
        (
            json!({ "field": "startDate", "gte": "2021-06-01", "lt": "2023-01-01" }),
            vec!["Baker", "Evans"],
        ),
        (
            json!({ "field": "startDate", "gt": "2022-11-30" }),
            vec!["Ames"],
        ),
        (
            json!({ "field": "startDate", "lte": "2019-03-10" }),
            vec!["carter"],
        ),
        (
            json!({ "field": "lastName", "contains": "AR" }),
            vec!["carter"],
        ),
        (
            json!({ "field": "lastName", "contains": "a" }),
            vec!["Ames", "Baker", "carter", "Diaz", "Evans", "Ames"],
        ),
        (
            json!({ "field": "lastName", "startsWith": "c" }),
            vec!["carter"],
        ),
        (
            json!({ "field": "notes", "contains": "50%" }),
            vec!["Evans"],
        ),
        (json!({ "field": "notes", "contains": "%" }), vec!["Evans"]),
        (
            json!({ "field": "department", "isNull": true }),
            vec!["Evans"],
        ),
        (
            json!({ "field": "email", "isNull": false }),
            vec!["Ames", "carter", "Evans"],
        ),
        (
            json!({ "field": "employmentType", "eq": "FULL_TIME" }),
            vec!["Ames", "carter"],
        ),
        (
            json!({ "field": "employmentType", "eq": "contractor" }),
            vec!["Diaz"],
        ),
        (
            json!({ "or": [{ "field": "department", "eq": "Support" }, { "field": "email", "contains": "other" }] }),
            vec!["Evans", "Ames"],
        ),
        (
            json!({ "field": "department", "eq": "Engineering", "not": { "field": "startDate", "isNull": true } }),
            vec!["carter"],
        ),
        (
            json!({ "not": { "field": "department", "eq": "Sales" } }),
            vec!["carter", "Diaz", "Evans", "Ames"],
        ),
        (
            json!({ "and": [{ "field": "lastName", "eq": "Ames" }, { "field": "createdAt", "gt": "2000-01-01T00:00:00Z" }] }),
            vec!["Ames", "Ames"],
        ),
        (
            json!({ "field": "createdAt", "lt": "2000-01-01T00:00:00Z" }),
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            names(&app, &admin, by(filter.clone())).await,
            expected,
            "{filter}"
        );
    }
}

#[tokio::test]
async fn orders_put_missing_values_last_and_break_ties_by_creation() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("orders")).await;
    seed(&app, &admin).await;
    let order = |o: Value| json!({ "o": o });
    assert_eq!(
        names(
            &app,
            &admin,
            order(json!([{ "field": "startDate", "direction": "DESC" }]))
        )
        .await,
        ["Ames", "Evans", "Baker", "Ames", "carter", "Diaz"]
    );
    assert_eq!(
        names(&app, &admin, order(json!([{ "field": "startDate" }]))).await,
        ["carter", "Ames", "Baker", "Evans", "Ames", "Diaz"]
    );
    assert_eq!(
        names(
            &app,
            &admin,
            order(
                json!([{ "field": "department" }, { "field": "startDate", "direction": "DESC" }])
            )
        )
        .await,
        ["carter", "Diaz", "Baker", "Ames", "Ames", "Evans"]
    );
    // Text orders ignore case: `carter` sorts between `Baker` and `Diaz`.
    assert_eq!(
        names(&app, &admin, order(json!([{ "field": "lastName" }]))).await,
        ["Ames", "Ames", "Baker", "carter", "Diaz", "Evans"]
    );
}

#[tokio::test]
async fn cursors_walk_an_ordered_list_once_while_records_change() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("cursors")).await;
    seed(&app, &admin).await;
    let order = json!([{ "field": "department" }, { "field": "lastName", "direction": "DESC" }]);
    let everything = names(&app, &admin, json!({ "o": order })).await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(
            &app,
            &admin,
            json!({ "o": order, "first": 2, "after": after }),
        )
        .await
        .ok();
        for edge in page.data("employees.edges").as_array().unwrap() {
            seen.push(edge["node"]["lastName"].as_str().unwrap().to_owned());
        }
        if seen.len() == 2 {
            // While the client pages, a record that sorts before the cursor appears: it does
            // not shift what the next pages return.
            app.create_employee(
                &admin.token,
                json!({ "firstName": "N", "lastName": "Aaron", "department": "Accounting" }),
            )
            .await;
        }
        if page.data("employees.pageInfo.hasNextPage") != &json!(true) {
            break;
        }
        after = page
            .data("employees.pageInfo.endCursor")
            .as_str()
            .map(str::to_owned);
    }
    assert_eq!(seen, everything, "every record once, in order");

    let foreign = list(
        &app,
        &admin,
        json!({ "o": [{ "field": "lastName" }], "first": 2,
                "after": list(&app, &admin, json!({ "o": order, "first": 1 })).await.ok()
                    .data("employees.pageInfo.endCursor").clone() }),
    )
    .await;
    assert_eq!(
        foreign.code(),
        Some("VALIDATION"),
        "a cursor belongs to its order"
    );
    assert_eq!(foreign.field(), Some("after"));
}

#[tokio::test]
async fn search_finds_words_in_names_emails_company_and_notes() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("search")).await;
    seed(&app, &admin).await;
    let search = |s: &str| json!({ "s": s });
    assert_eq!(names(&app, &admin, search("finn")).await, ["Baker"]);
    assert_eq!(
        names(&app, &admin, search("acme")).await,
        ["Ames", "carter"]
    );
    assert_eq!(names(&app, &admin, search("am acme")).await, ["Ames"]);
    assert_eq!(names(&app, &admin, search("CART")).await, ["carter"]);
    assert_eq!(
        names(&app, &admin, search("nobody")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        names(&app, &admin, search("  ")).await.len(),
        6,
        "an empty search is no search"
    );
    let company = app
        .graphql(
            Some(&admin.token),
            "mutation { createContact(input: { firstName: \"Lin\", lastName: \"Supplier\", company: \"Nordic Parts\", tags: [\"Supplier\"], emails: [\"lin@parts.example\"] }) { id } }",
            json!({}),
        )
        .await
        .ok();
    let contacts = app
        .graphql(
            Some(&admin.token),
            "query($f: RecordFilter, $s: String) { contacts(filter: $f, search: $s) { totalCount } }",
            json!({ "s": "nordic", "f": { "field": "tags", "eq": "supplier" } }),
        )
        .await
        .ok();
    assert_eq!(
        contacts.data("contacts.totalCount"),
        &json!(1),
        "{:?}",
        company.body
    );
    let by_email = app
        .graphql(
            Some(&admin.token),
            "query($f: RecordFilter) { contacts(filter: $f) { totalCount } }",
            json!({ "f": { "field": "emails", "contains": "PARTS" } }),
        )
        .await
        .ok();
    assert_eq!(by_email.data("contacts.totalCount"), &json!(1));
}

#[tokio::test]
async fn bad_list_arguments_are_validation_errors() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("bad-lists")).await;
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    for (variables, field) in [
        (json!({ "f": { "field": "salary", "eq": "1" } }), "filter"),
        (
            json!({ "f": { "field": "startDate", "contains": "2020" } }),
            "filter",
        ),
        (
            json!({ "f": { "field": "startDate", "eq": "yesterday" } }),
            "filter",
        ),
        (
            json!({ "f": { "field": "createdAt", "gt": "2020-01-01" } }),
            "filter",
        ),
        (
            json!({ "f": { "field": "employmentType", "eq": "GIG" } }),
            "filter",
        ),
        (json!({ "f": { "field": "department" } }), "filter"),
        (json!({ "f": { "eq": "Sales" } }), "filter"),
        (
            json!({ "f": { "field": "department", "in": many } }),
            "filter",
        ),
        (json!({ "o": [{ "field": "shoeSize" }] }), "orderBy"),
        (
            json!({ "o": [{ "field": "lastName" }, { "field": "firstName" }, { "field": "email" }, { "field": "phone" }] }),
            "orderBy",
        ),
        (json!({ "after": "not-a-cursor" }), "after"),
        (json!({ "first": 0 }), "first"),
        (json!({ "s": "x".repeat(201) }), "search"),
    ] {
        let response = list(&app, &admin, variables.clone()).await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{variables}: {:?}",
            response.body
        );
        assert_eq!(response.field(), Some(field), "{variables}");
    }
    let contacts = app
        .graphql(
            Some(&admin.token),
            "query($f: RecordFilter, $o: [RecordOrder!]) { contacts(filter: $f, orderBy: $o) { totalCount } }",
            json!({ "o": [{ "field": "tags" }] }),
        )
        .await;
    assert_eq!(contacts.code(), Some("VALIDATION"), "lists cannot order");
    let neq_list = app
        .graphql(
            Some(&admin.token),
            "query($f: RecordFilter) { contacts(filter: $f) { totalCount } }",
            json!({ "f": { "field": "tags", "neq": "x" } }),
        )
        .await;
    assert_eq!(neq_list.code(), Some("VALIDATION"));
    // A deep filter is refused, not run.
    let mut deep = json!({ "field": "lastName", "eq": "x" });
    for _ in 0..10 {
        deep = json!({ "not": deep });
    }
    let response = list(&app, &admin, json!({ "f": deep })).await;
    assert_eq!(response.code(), Some("VALIDATION"), "{:?}", response.body);
}
