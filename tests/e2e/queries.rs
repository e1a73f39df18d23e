//! Record lists for frontends: filters with every operator combined by and/or/not, orders on
//! any field with creation order breaking ties, full-text search, and keyset cursors that
//! stay valid while records change.

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

const LIST: &str = "query($f: EmployeeFilter, $o: [EmployeeOrder!], $s: String, $first: Int, $after: String, $last: Int, $before: String, $a: Boolean) {
    employees(filter: $f, orderBy: $o, search: $s, first: $first, after: $after, last: $last, before: $before, includeArchived: $a) {
        totalCount edges { cursor node { id lastName } } pageInfo { hasPreviousPage hasNextPage startCursor endCursor } } }";

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
            json!({ "department": { "eq": "Sales" } }),
            vec!["Ames", "Baker"],
        ),
        // Records without a department are "not Sales" too.
        (
            json!({ "department": { "neq": "Sales" } }),
            vec!["carter", "Diaz", "Evans", "Ames"],
        ),
        (
            json!({ "department": { "in": ["Support", "Engineering"] } }),
            vec!["carter", "Diaz", "Ames"],
        ),
        (
            json!({ "startDate": { "gte": "2021-06-01", "lt": "2023-01-01" } }),
            vec!["Baker", "Evans"],
        ),
        (json!({ "startDate": { "gt": "2022-11-30" } }), vec!["Ames"]),
        (
            json!({ "startDate": { "lte": "2019-03-10" } }),
            vec!["carter"],
        ),
        (json!({ "lastName": { "contains": "AR" } }), vec!["carter"]),
        (
            json!({ "lastName": { "contains": "a" } }),
            vec!["Ames", "Baker", "carter", "Diaz", "Evans", "Ames"],
        ),
        (json!({ "lastName": { "startsWith": "c" } }), vec!["carter"]),
        (json!({ "notes": { "contains": "50%" } }), vec!["Evans"]),
        (json!({ "notes": { "contains": "%" } }), vec!["Evans"]),
        (json!({ "department": { "isNull": true } }), vec!["Evans"]),
        (
            json!({ "email": { "isNull": false } }),
            vec!["Ames", "carter", "Evans"],
        ),
        (
            json!({ "employmentType": { "eq": "FULL_TIME" } }),
            vec!["Ames", "carter"],
        ),
        (
            json!({ "employmentType": { "in": ["CONTRACTOR", "PART_TIME"] } }),
            vec!["Baker", "Diaz"],
        ),
        (
            json!({ "employmentType": { "neq": "FULL_TIME" } }),
            vec!["Baker", "Diaz", "Evans", "Ames"],
        ),
        (
            json!({ "or": [{ "department": { "eq": "Support" } }, { "email": { "contains": "other" } }] }),
            vec!["Evans", "Ames"],
        ),
        (
            json!({ "department": { "eq": "Engineering" }, "not": { "startDate": { "isNull": true } } }),
            vec!["carter"],
        ),
        (
            json!({ "not": { "department": { "eq": "Sales" } } }),
            vec!["carter", "Diaz", "Evans", "Ames"],
        ),
        (
            json!({ "and": [{ "lastName": { "eq": "Ames" } }, { "createdAt": { "gt": "2000-01-01T00:00:00Z" } }] }),
            vec!["Ames", "Ames"],
        ),
        (
            json!({ "createdAt": { "lt": "2000-01-01T00:00:00Z" } }),
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
        names(&app, &admin, order(json!([{ "startDate": "DESC" }]))).await,
        ["Ames", "Evans", "Baker", "Ames", "carter", "Diaz"]
    );
    assert_eq!(
        names(&app, &admin, order(json!([{ "startDate": "ASC" }]))).await,
        ["carter", "Ames", "Baker", "Evans", "Ames", "Diaz"]
    );
    assert_eq!(
        names(
            &app,
            &admin,
            order(json!([{ "department": "ASC" }, { "startDate": "DESC" }]))
        )
        .await,
        ["carter", "Diaz", "Baker", "Ames", "Ames", "Evans"]
    );
    // Text orders ignore case: `carter` sorts between `Baker` and `Diaz`.
    assert_eq!(
        names(&app, &admin, order(json!([{ "lastName": "ASC" }]))).await,
        ["Ames", "Ames", "Baker", "carter", "Diaz", "Evans"]
    );
}

#[tokio::test]
async fn cursors_walk_an_ordered_list_once_while_records_change() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("cursors")).await;
    seed(&app, &admin).await;
    let order = json!([{ "department": "ASC" }, { "lastName": "DESC" }]);
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
        json!({ "o": [{ "lastName": "ASC" }], "first": 2,
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
            "query($f: ContactFilter, $s: String) { contacts(filter: $f, search: $s) { totalCount } }",
            json!({ "s": "nordic", "f": { "tags": { "eq": "supplier" } } }),
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
            "query($f: ContactFilter) { contacts(filter: $f) { totalCount } }",
            json!({ "f": { "emails": { "contains": "PARTS" } } }),
        )
        .await
        .ok();
    assert_eq!(by_email.data("contacts.totalCount"), &json!(1));
}

/// `{"order":"created_at:asc","keys":["x"],"id":"00000000-…"}`: the shape of a cursor of a
/// `createdAt` order, with a key that is not a time.
const FORGED: &str = "eyJvcmRlciI6ImNyZWF0ZWRfYXQ6YXNjIiwia2V5cyI6WyJ4Il0sImlkIjoiMDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwIn0";

#[tokio::test]
async fn bad_list_arguments_are_validation_errors() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("bad-lists")).await;
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    // Values of the wrong type are refused by GraphQL's own validation of the typed inputs,
    // naming what is wrong; the rest by the list itself, naming its argument.
    for (variables, field) in [
        (json!({ "f": { "salary": { "eq": "1" } } }), Some("salary")),
        (
            json!({ "f": { "startDate": { "contains": "2020" } } }),
            Some("contains"),
        ),
        (json!({ "f": { "startDate": { "eq": "yesterday" } } }), None),
        (
            json!({ "f": { "createdAt": { "gt": "2020-01-01" } } }),
            None,
        ),
        (json!({ "f": { "employmentType": { "eq": "GIG" } } }), None),
        (
            json!({ "f": { "department": { "in": many } } }),
            Some("filter"),
        ),
        (
            json!({ "f": { "managerId": { "eq": "not-an-id" } } }),
            Some("filter"),
        ),
        (
            json!({ "f": { "custom": [{ "key": "shoe_size", "number": { "eq": 42 } }] } }),
            Some("filter"),
        ),
        (
            json!({ "o": [{ "custom": { "key": "shoe_size" } }] }),
            Some("orderBy"),
        ),
        (
            json!({ "o": [{ "lastName": "ASC", "firstName": "ASC" }] }),
            None,
        ),
        (
            json!({ "o": [{ "lastName": "ASC" }, { "firstName": "ASC" }, { "email": "ASC" }, { "phone": "ASC" }] }),
            Some("orderBy"),
        ),
        // Beyond the years the database stores: refused, not a database error.
        (
            json!({ "f": { "createdAt": { "gt": "0000-01-01T00:00:00Z" } } }),
            Some("filter"),
        ),
        // A forged cursor whose key is not a time for a time order.
        (
            json!({ "o": [{ "createdAt": "ASC" }], "after": FORGED }),
            Some("after"),
        ),
        (
            json!({ "o": [{ "createdAt": "ASC" }], "before": FORGED }),
            Some("before"),
        ),
        (json!({ "after": "not-a-cursor" }), Some("after")),
        (json!({ "before": "not-a-cursor" }), Some("before")),
        (json!({ "first": 0 }), Some("first")),
        (json!({ "last": 101 }), Some("last")),
        (json!({ "first": 2, "last": 2 }), Some("first")),
        (json!({ "after": "x", "before": "y" }), Some("after")),
        (json!({ "s": "x".repeat(201) }), Some("search")),
    ] {
        let response = list(&app, &admin, variables.clone()).await;
        assert_eq!(
            response.code(),
            Some("VALIDATION"),
            "{variables}: {:?}",
            response.body
        );
        if let Some(field) = field {
            assert_eq!(
                response.field(),
                Some(field),
                "{variables}: {:?}",
                response.body
            );
        }
    }
    for (variables, what) in [
        (json!({ "o": [{ "tags": "ASC" }] }), "lists cannot order"),
        (
            json!({ "f": { "tags": { "neq": "x" } } }),
            "lists have no neq",
        ),
    ] {
        let contacts = app
            .graphql(
                Some(&admin.token),
                "query($f: ContactFilter, $o: [ContactOrder!]) { contacts(filter: $f, orderBy: $o) { totalCount } }",
                variables,
            )
            .await;
        assert_eq!(contacts.code(), Some("VALIDATION"), "{what}");
    }
    // One bad argument repeated: every problem of the first few, never more than 100 errors.
    let repeated = format!(
        "query($f: EmployeeFilter) {{ employees({}) {{ totalCount }} }}",
        vec!["filter: $f"; 30].join(", ")
    );
    let response = app
        .graphql(
            Some(&admin.token),
            &repeated,
            json!({ "f": { "a": 1, "b": 1, "c": 1, "d": 1, "e": 1 } }),
        )
        .await;
    let errors = response.body["errors"].as_array().unwrap().len();
    assert!((31..=100).contains(&errors), "{errors} errors");
    // A deep filter is refused, not run.
    let mut deep = json!({ "lastName": { "eq": "x" } });
    for _ in 0..10 {
        deep = json!({ "not": deep });
    }
    let response = list(&app, &admin, json!({ "f": deep })).await;
    assert_eq!(response.code(), Some("VALIDATION"), "{:?}", response.body);
    assert_eq!(response.field(), Some("filter"));
}

/// Pages walked backward from the end with `last`/`before`, each key's direction and missing
/// values included, give the forward order reversed.
#[tokio::test]
async fn last_and_before_walk_any_order_backward() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("backward")).await;
    seed(&app, &admin).await;
    for order in [
        json!(null),
        json!([{ "startDate": "ASC" }]),
        json!([{ "startDate": "DESC" }]),
        json!([{ "department": "ASC" }, { "lastName": "DESC" }]),
        json!([{ "department": "DESC" }, { "startDate": "ASC" }]),
    ] {
        let forward = names(&app, &admin, json!({ "o": order })).await;
        for size in [1, 2, 4] {
            let mut seen: Vec<String> = Vec::new();
            let mut before: Option<String> = None;
            loop {
                let page = list(
                    &app,
                    &admin,
                    json!({ "o": order, "last": size, "before": before }),
                )
                .await
                .ok();
                let names: Vec<String> = page
                    .data("employees.edges")
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["node"]["lastName"].as_str().unwrap().to_owned())
                    .collect();
                assert!(names.len() <= size, "{order} last {size}: {names:?}");
                assert_eq!(
                    page.data("employees.pageInfo.hasNextPage"),
                    &json!(before.is_some()),
                    "{order} last {size}"
                );
                seen.splice(0..0, names);
                if page.data("employees.pageInfo.hasPreviousPage") != &json!(true) {
                    break;
                }
                before = page
                    .data("employees.pageInfo.startCursor")
                    .as_str()
                    .map(str::to_owned);
            }
            assert_eq!(seen, forward, "{order} walked back {size} at a time");
        }
    }
    // A cursor from a forward page leads back the other way: the page before the third
    // record is the first two.
    let order = json!([{ "startDate": "DESC" }]);
    let third = list(&app, &admin, json!({ "o": order, "first": 3 }))
        .await
        .ok();
    let cursor = third.data("employees.edges").as_array().unwrap()[2]["cursor"].clone();
    let back = list(
        &app,
        &admin,
        json!({ "o": order, "last": 5, "before": cursor }),
    )
    .await
    .ok();
    let everything = names(&app, &admin, json!({ "o": order })).await;
    let back: Vec<&str> = back
        .data("employees.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["lastName"].as_str().unwrap())
        .collect();
    assert_eq!(back, everything[..2]);
    assert_eq!(
        list(
            &app,
            &admin,
            json!({ "o": order, "last": 5, "before": cursor })
        )
        .await
        .ok()
        .data("employees.pageInfo.hasPreviousPage"),
        &json!(false)
    );
}
