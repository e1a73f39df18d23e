//! The three datasheets: complete employees (managers without loops), contacts with lists,
//! job applicants with a validated pipeline, hiring an applicant, and permissions that follow
//! each record's datasheet.

use custos_tests::{slug, Response, Session, TestApp};
use serde_json::{json, Value};

const CONTACT: &str =
    "id version firstName lastName company jobTitle emails phones address tags notes";
const APPLICANT: &str =
    "id version firstName lastName email position source stage appliedOn talentPoolUntil hiredAsId";

async fn call(app: &TestApp, session: &Session, document: &str, variables: Value) -> Response {
    app.graphql(Some(&session.token), document, variables).await
}

async fn create_applicant(app: &TestApp, session: &Session, input: Value) -> Value {
    call(
        app,
        session,
        &format!("mutation($i: CreateApplicantInput!) {{ createApplicant(input: $i) {{ {APPLICANT} }} }}"),
        json!({ "i": input }),
    )
    .await
    .ok()
    .data("createApplicant")
    .clone()
}

async fn move_applicant(app: &TestApp, session: &Session, id: &Value, stage: &str) -> Response {
    call(
        app,
        session,
        "mutation($id: ID!, $s: PipelineStage!) { updateApplicant(id: $id, input: { stage: $s }) { stage } }",
        json!({ "id": id, "s": stage }),
    )
    .await
}

#[tokio::test]
async fn contacts_keep_lists_without_duplicates() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("contacts")).await;
    let created = call(
        &app,
        &admin,
        &format!(
            "mutation($i: CreateContactInput!) {{ createContact(input: $i) {{ {CONTACT} }} }}"
        ),
        json!({ "i": {
            "firstName": "Lin", "lastName": "Supplier", "company": "Acme Parts",
            "emails": ["lin@acme.example", "LIN@acme.example", "sales@acme.example"],
            "phones": ["+44 20 7946 0958"], "tags": ["supplier", "Supplier", "emea"],
            "address": "1 High Street\nLondon", "notes": "Met at the fair",
        }}),
    )
    .await
    .ok();
    let contact = created.data("createContact");
    assert_eq!(
        contact["emails"],
        json!(["lin@acme.example", "sales@acme.example"])
    );
    assert_eq!(contact["phones"], json!(["+442079460958"]));
    assert_eq!(contact["tags"], json!(["supplier", "emea"]));
    assert_eq!(contact["address"], "1 High Street\nLondon");

    let update = "mutation($id: ID!, $i: UpdateContactInput!) { updateContact(id: $id, input: $i) { version emails tags company } }";
    let cleared = call(
        &app,
        &admin,
        update,
        json!({ "id": contact["id"], "i": { "tags": [], "company": null } }),
    )
    .await
    .ok();
    assert_eq!(cleared.data("updateContact.tags"), &json!([]));
    assert!(cleared.data("updateContact.company").is_null());
    assert_eq!(
        cleared.data("updateContact.emails"),
        &json!(["lin@acme.example", "sales@acme.example"])
    );

    let bad = call(
        &app,
        &admin,
        update,
        json!({ "id": contact["id"], "i": { "emails": ["not an email"] } }),
    )
    .await;
    assert_eq!(bad.code(), Some("VALIDATION"));
    assert_eq!(bad.field(), Some("emails"));
    let listed = call(
        &app,
        &admin,
        "{ contacts { totalCount edges { node { emails } } } }",
        json!({}),
    )
    .await
    .ok();
    assert_eq!(listed.data("contacts.totalCount"), &json!(1));
    assert_eq!(
        listed.data("contacts.edges.0.node.emails"),
        &json!(["lin@acme.example", "sales@acme.example"]),
        "a refused change changes nothing"
    );
    // A contact is not an employee: the employees fields do not find it.
    let as_employee = call(
        &app,
        &admin,
        "query($id: ID!) { employee(id: $id) { id } }",
        json!({ "id": contact["id"] }),
    )
    .await;
    assert_eq!(as_employee.code(), Some("NOT_FOUND"));
}

#[tokio::test]
async fn applicants_move_through_the_pipeline_and_are_hired_as_employees() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("pipeline")).await;
    let applicant = create_applicant(
        &app,
        &admin,
        json!({ "firstName": "Grace", "lastName": "Hopper", "email": "grace@example.org",
                "position": "Compiler engineer", "source": "Referral", "appliedOn": "2026-10-01",
                "talentPoolUntil": "2027-10-01" }),
    )
    .await;
    let id = &applicant["id"];
    assert_eq!(applicant["stage"], "APPLIED");

    let skip = move_applicant(&app, &admin, id, "OFFER").await;
    assert_eq!(skip.code(), Some("VALIDATION"));
    assert_eq!(skip.field(), Some("stage"));
    let hire = "mutation($id: ID!, $i: HireApplicantInput) { hireApplicant(id: $id, input: $i) {
        applicant { stage hiredAsId hiredAs { id firstName } }
        employee { id firstName lastName email jobTitle department startDate employmentType hiredFromId } } }";
    let early = call(&app, &admin, hire, json!({ "id": id })).await;
    assert_eq!(early.code(), Some("VALIDATION"), "only an offer is hired");
    for stage in ["SCREENING", "INTERVIEW", "OFFER"] {
        move_applicant(&app, &admin, id, stage).await.ok();
    }
    let bad = call(
        &app,
        &admin,
        hire,
        json!({ "id": id, "i": { "startDate": "2026-13-01" } }),
    )
    .await;
    assert_eq!(bad.code(), Some("VALIDATION"));
    assert_eq!(bad.field(), Some("startDate"));
    let still = call(
        &app,
        &admin,
        "query($id: ID!) { applicant(id: $id) { stage } employees { totalCount } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    assert_eq!(
        still.data("applicant.stage"),
        &json!("OFFER"),
        "a refused hire writes nothing"
    );
    assert_eq!(still.data("employees.totalCount"), &json!(0));

    let hired = call(
        &app,
        &admin,
        hire,
        json!({ "id": id, "i": { "startDate": "2026-12-01", "department": "Tools", "employmentType": "FULL_TIME" } }),
    )
    .await
    .ok();
    let employee = hired.data("hireApplicant.employee");
    assert_eq!(employee["firstName"], "Grace");
    assert_eq!(employee["email"], "grace@example.org");
    assert_eq!(
        employee["jobTitle"], "Compiler engineer",
        "the position becomes the job title"
    );
    assert_eq!(employee["employmentType"], "FULL_TIME");
    assert_eq!(employee["hiredFromId"], *id);
    assert_eq!(hired.data("hireApplicant.applicant.stage"), &json!("HIRED"));
    assert_eq!(
        hired.data("hireApplicant.applicant.hiredAsId"),
        &employee["id"]
    );
    assert_eq!(
        hired.data("hireApplicant.applicant.hiredAs.firstName"),
        &json!("Grace")
    );

    // Hired is final; both streams record the link.
    assert_eq!(
        move_applicant(&app, &admin, id, "REJECTED").await.code(),
        Some("VALIDATION")
    );
    assert_eq!(
        call(&app, &admin, hire, json!({ "id": id })).await.code(),
        Some("VALIDATION")
    );
    let history = "query($id: ID!) { recordHistory(id: $id) { edges { node { eventType changes { field before after } } } } }";
    let applicant_history = call(&app, &admin, history, json!({ "id": id })).await.ok();
    let last = applicant_history
        .data("recordHistory.edges")
        .as_array()
        .unwrap()
        .last()
        .unwrap()["node"]
        .clone();
    assert_eq!(last["eventType"], "ApplicantHired");
    assert!(last["changes"]
        .as_array()
        .unwrap()
        .contains(&json!({ "field": "stage", "before": "offer", "after": "hired" })));
    let employee_history = call(&app, &admin, history, json!({ "id": employee["id"] }))
        .await
        .ok();
    assert!(employee_history
        .data("recordHistory.edges.0.node.changes")
        .as_array()
        .unwrap()
        .contains(&json!({ "field": "hiredFrom", "before": null, "after": id })));
}

#[tokio::test]
async fn applicants_cannot_start_hired_and_leave_only_from_open_stages() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("pipeline-bad")).await;
    let created = call(
        &app,
        &admin,
        "mutation { createApplicant(input: { firstName: \"A\", lastName: \"B\", stage: HIRED }) { id } }",
        json!({}),
    )
    .await;
    assert_eq!(created.code(), Some("VALIDATION"));
    assert_eq!(created.field(), Some("stage"));
    let applicant = create_applicant(
        &app,
        &admin,
        json!({ "firstName": "A", "lastName": "B", "stage": "INTERVIEW" }),
    )
    .await;
    move_applicant(&app, &admin, &applicant["id"], "WITHDRAWN")
        .await
        .ok();
    let reopen = move_applicant(&app, &admin, &applicant["id"], "INTERVIEW").await;
    assert_eq!(reopen.code(), Some("VALIDATION"));
    let cleared = call(
        &app,
        &admin,
        "mutation($id: ID!) { updateApplicant(id: $id, input: { stage: null }) { stage } }",
        json!({ "id": applicant["id"] }),
    )
    .await;
    assert_eq!(cleared.code(), Some("VALIDATION"));
}

#[tokio::test]
async fn managers_are_active_employees_and_never_make_a_loop() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("managers")).await;
    let ceo = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Ceo", "lastName": "One" }),
        )
        .await;
    let cto = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Cto", "lastName": "Two", "managerId": ceo["id"] }),
        )
        .await;
    let dev = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Dev", "lastName": "Three", "managerId": cto["id"] }),
        )
        .await;
    let read = call(
        &app,
        &admin,
        "query($id: ID!) { employee(id: $id) { manager { firstName manager { firstName } } } }",
        json!({ "id": dev["id"] }),
    )
    .await
    .ok();
    assert_eq!(read.data("employee.manager.firstName"), &json!("Cto"));
    assert_eq!(
        read.data("employee.manager.manager.firstName"),
        &json!("Ceo")
    );

    let set_manager = "mutation($id: ID!, $m: ID) { updateEmployee(id: $id, input: { managerId: $m }) { version } }";
    let contact = call(
        &app,
        &admin,
        "mutation { createContact(input: { firstName: \"C\", lastName: \"D\" }) { id } }",
        json!({}),
    )
    .await
    .ok()
    .data("createContact.id")
    .clone();
    for (employee, manager) in [
        (&ceo["id"], &dev["id"]), // a loop through two levels
        (&ceo["id"], &ceo["id"]), // oneself
        (&dev["id"], &contact),   // not an employee
        (&dev["id"], &json!(uuid::Uuid::now_v7().to_string())), // nobody
    ] {
        let refused = call(
            &app,
            &admin,
            set_manager,
            json!({ "id": employee, "m": manager }),
        )
        .await;
        assert_eq!(
            refused.code(),
            Some("VALIDATION"),
            "{manager} for {employee}: {:?}",
            refused.body
        );
        assert_eq!(refused.field(), Some("managerId"));
    }
    let malformed = call(
        &app,
        &admin,
        set_manager,
        json!({ "id": dev["id"], "m": "not-an-id" }),
    )
    .await;
    assert_eq!(malformed.code(), Some("VALIDATION"));
    assert_eq!(malformed.field(), Some("managerId"));

    call(
        &app,
        &admin,
        "mutation($id: ID!) { archiveRecord(id: $id) { archived } }",
        json!({ "id": cto["id"] }),
    )
    .await
    .ok();
    let archived = call(
        &app,
        &admin,
        set_manager,
        json!({ "id": ceo["id"], "m": cto["id"] }),
    )
    .await;
    assert_eq!(
        archived.code(),
        Some("VALIDATION"),
        "an archived employee manages nobody new"
    );
    call(
        &app,
        &admin,
        set_manager,
        json!({ "id": dev["id"], "m": null }),
    )
    .await
    .ok();

    let dates = call(
        &app,
        &admin,
        "mutation($id: ID!) { updateEmployee(id: $id, input: { startDate: \"2026-05-01\", endDate: \"2026-04-30\" }) { id } }",
        json!({ "id": dev["id"] }),
    )
    .await;
    assert_eq!(dates.code(), Some("VALIDATION"));
    assert_eq!(dates.field(), Some("endDate"));
}

#[tokio::test]
async fn permissions_follow_each_record_s_datasheet() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("sheets")).await;
    let hr = app.role_id(&admin, "HR manager").await;
    let manager = app.user_with_roles(&admin, &[hr]).await;
    let contact = call(
        &app,
        &admin,
        "mutation { createContact(input: { firstName: \"C\", lastName: \"D\" }) { id } }",
        json!({}),
    )
    .await
    .ok()
    .data("createContact.id")
    .clone();
    let applicant =
        create_applicant(&app, &admin, json!({ "firstName": "A", "lastName": "B" })).await;

    // The HR manager archives applicants (and employees) but not contacts: the same field,
    // decided by the record's datasheet.
    let archive = "mutation($id: ID!) { archiveRecord(id: $id) { id archived } }";
    let refused = call(&app, &manager, archive, json!({ "id": contact })).await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    let archived = call(&app, &manager, archive, json!({ "id": applicant["id"] }))
        .await
        .ok();
    assert_eq!(archived.data("archiveRecord.archived"), &json!(true));
    let history = "query($id: ID!) { recordHistory(id: $id) { totalCount } }";
    assert_eq!(
        call(&app, &manager, history, json!({ "id": contact }))
            .await
            .code(),
        Some("FORBIDDEN")
    );
    call(&app, &manager, history, json!({ "id": applicant["id"] }))
        .await
        .ok();
    assert_eq!(
        call(&app, &manager, "{ contacts { totalCount } }", json!({}))
            .await
            .code(),
        Some("FORBIDDEN")
    );

    // An archived applicant is read-only and hidden from the default list.
    let moved = move_applicant(&app, &manager, &applicant["id"], "SCREENING").await;
    assert_eq!(moved.code(), Some("VALIDATION"));
    let lists = call(&app, &manager, "{ active: applicants { totalCount } all: applicants(includeArchived: true) { totalCount } }", json!({}))
        .await
        .ok();
    assert_eq!(lists.data("active.totalCount"), &json!(0));
    assert_eq!(lists.data("all.totalCount"), &json!(1));
}
