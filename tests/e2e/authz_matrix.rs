//! The authorization matrix: every root field of the schema (read from the schema itself) ×
//! every kind of principal × an object of the principal's own organisation and of another.
//! Each field has a row saying who may call it; a field without a row fails the test.

use std::collections::{BTreeMap, BTreeSet};

use custos_tests::{slug, Session, TestApp, PASSWORD};
use serde_json::json;

/// Who may call a field, as the product promises it (written here independently of the
/// service's own policy table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anyone,
    /// Signed in, even with a temporary password still to replace.
    Session,
    /// Signed in with a password of one's own.
    SignedIn,
    Admin,
    /// Holders of this permission on this datasheet (administrators hold every permission).
    Grant(&'static str, &'static str),
    /// Holders of all of these.
    AllOf(&'static [(&'static str, &'static str)]),
    /// Administrators; for anyone else signed in, another user's object answers NOT_FOUND.
    AdminElseNotFound,
}

/// One root field: who may call it, a document that calls it, and whether the document names
/// an object by id (so another organisation's object must be NOT_FOUND).
struct Row {
    who: Who,
    document: &'static str,
    by_id: bool,
}

fn rows() -> BTreeMap<(&'static str, &'static str), Row> {
    use Who::*;
    let row = |who, document, by_id| Row {
        who,
        document,
        by_id,
    };
    BTreeMap::from([
        (("Query", "me"), row(Session, "{ me { id } }", false)),
        (("Query", "organization"), row(SignedIn, "{ organization { id } }", false)),
        (("Query", "users"), row(Admin, "{ users { totalCount } }", false)),
        (("Query", "user"), row(Admin, "query($user: ID!) { user(id: $user) { id } }", true)),
        (("Query", "roles"), row(Admin, "{ roles { id } }", false)),
        // Without `userId`: the caller's own history, or the whole organisation's for administrators.
        (("Query", "loginHistory"), row(SignedIn, "{ loginHistory { totalCount } }", false)),
        (("Query", "sessions"), row(SignedIn, "{ sessions { id current } }", false)),
        (("Mutation", "endSession"), row(AdminElseNotFound, "mutation($session: ID!) { endSession(id: $session) }", true)),
        (("Query", "role"), row(Admin, "query($role: ID!) { role(id: $role) { id } }", true)),
        (("Query", "employees"), row(Grant("employees", "read"), "{ employees { totalCount } }", false)),
        (("Query", "employee"), row(Grant("employees", "read"), "query($employee: ID!) { employee(id: $employee) { id } }", true)),
        (("Query", "recordHistory"), row(Grant("employees", "history"), "query($employee: ID!) { recordHistory(id: $employee) { totalCount } }", true)),
        (("Mutation", "signUp"), row(Anyone, "mutation { signUp(input: { organization: \"M\", slug: \"matrix-signup\", region: \"eu\", adminEmail: \"m@example.org\", adminName: \"M\", password: \"correct horse battery\" }) { token } }", false)),
        (("Mutation", "login"), row(Anyone, "mutation($slug: String!, $loginEmail: String!, $password: String!) { login(tenant: $slug, email: $loginEmail, password: $password) { token } }", false)),
        (("Mutation", "changePassword"), row(Session, "mutation { changePassword(currentPassword: \"not the password\", newPassword: \"whatever password\") { id } }", false)),
        (("Mutation", "updateMe"), row(SignedIn, "mutation { updateMe(name: \"Same Name\") { id } }", false)),
        (("Mutation", "createUser"), row(Admin, "mutation { createUser(input: { email: \"made@example.org\", name: \"Made\", temporaryPassword: \"temporary password 1\" }) { id } }", false)),
        (("Mutation", "updateUser"), row(Admin, "mutation($user: ID!) { updateUser(id: $user, input: { name: \"Victim\" }) { id } }", true)),
        (("Mutation", "deactivateUser"), row(Admin, "mutation($user: ID!) { deactivateUser(id: $user) { id } }", true)),
        (("Mutation", "reactivateUser"), row(Admin, "mutation($user: ID!) { reactivateUser(id: $user) { id } }", true)),
        (("Mutation", "resetUserPassword"), row(Admin, "mutation($user: ID!) { resetUserPassword(id: $user, temporaryPassword: \"temporary password 2\") { id } }", true)),
        (("Mutation", "unlockUser"), row(Admin, "mutation($user: ID!) { unlockUser(id: $user) { id } }", true)),
        (("Mutation", "setAdministrator"), row(Admin, "mutation($user: ID!) { setAdministrator(id: $user, administrator: false) { id } }", true)),
        (("Mutation", "createRole"), row(Admin, "mutation { createRole(input: { name: \"Matrix role\" }) { id } }", false)),
        (("Mutation", "renameRole"), row(Admin, "mutation($role: ID!) { renameRole(id: $role, name: \"Victim role\") { id } }", true)),
        (("Mutation", "grantPermission"), row(Admin, "mutation($role: ID!) { grantPermission(roleId: $role, grant: { datasheet: EMPLOYEES, permission: REPORT }) { id } }", true)),
        (("Mutation", "revokePermission"), row(Admin, "mutation($role: ID!) { revokePermission(roleId: $role, grant: { datasheet: EMPLOYEES, permission: REPORT }) { id } }", true)),
        // The victim role is held, so deleting it without reassignment is refused (VALIDATION)
        // after authorization: repeatable, and it proves the caller got past the policy.
        (("Mutation", "deleteRole"), row(Admin, "mutation($role: ID!) { deleteRole(id: $role) }", true)),
        (("Mutation", "createEmployee"), row(Grant("employees", "create"), "mutation { createEmployee(input: { firstName: \"M\", lastName: \"X\" }) { id } }", false)),
        (("Mutation", "updateEmployee"), row(Grant("employees", "update"), "mutation($employee: ID!) { updateEmployee(id: $employee, input: { department: \"Matrix\" }) { id } }", true)),
        (("Query", "contacts"), row(Grant("contacts", "read"), "{ contacts { totalCount } }", false)),
        (("Query", "contact"), row(Grant("contacts", "read"), "query($contact: ID!) { contact(id: $contact) { id } }", true)),
        (("Mutation", "createContact"), row(Grant("contacts", "create"), "mutation { createContact(input: { firstName: \"M\", lastName: \"X\" }) { id } }", false)),
        (("Mutation", "updateContact"), row(Grant("contacts", "update"), "mutation($contact: ID!) { updateContact(id: $contact, input: { company: \"Matrix\" }) { id } }", true)),
        (("Query", "applicants"), row(Grant("applicants", "read"), "{ applicants { totalCount } }", false)),
        (("Query", "applicant"), row(Grant("applicants", "read"), "query($applicant: ID!) { applicant(id: $applicant) { id } }", true)),
        (("Mutation", "createApplicant"), row(Grant("applicants", "create"), "mutation { createApplicant(input: { firstName: \"M\", lastName: \"X\" }) { id } }", false)),
        (("Mutation", "updateApplicant"), row(Grant("applicants", "update"), "mutation($applicant: ID!) { updateApplicant(id: $applicant, input: { source: \"Matrix\" }) { id } }", true)),
        // The first allowed caller hires; later ones are refused (VALIDATION) past the policy.
        (("Mutation", "hireApplicant"), row(AllOf(&[("applicants", "update"), ("employees", "create")]), "mutation($applicant: ID!) { hireApplicant(id: $applicant) { employee { id } } }", true)),
        (("Query", "customFieldDefinitions"), row(Grant("employees", "read"), "{ customFieldDefinitions(datasheet: EMPLOYEES) { key } }", false)),
        // Adding the same key twice is refused (VALIDATION) past the policy, as are changes
        // to the field once a caller has retired it.
        (("Mutation", "addCustomField"), row(Admin, "mutation { addCustomField(datasheet: EMPLOYEES, input: { key: \"matrix\", label: \"Matrix\", type: TEXT }) { key } }", false)),
        (("Mutation", "updateCustomField"), row(Admin, "mutation { updateCustomField(datasheet: EMPLOYEES, key: \"victim\", input: { label: \"Changed\" }) { key } }", false)),
        (("Mutation", "retireCustomField"), row(Admin, "mutation { retireCustomField(datasheet: EMPLOYEES, key: \"victim\") { key } }", false)),
        (("Query", "findSubject"), row(Grant("employees", "read"), "{ findSubject(email: \"nobody@example.org\") { id } }", false)),
        (("Query", "report"), row(Grant("employees", "report"), "{ report(datasheet: EMPLOYEES, groupBy: \"department\") { total } }", false)),
        (("Query", "headcount"), row(Grant("employees", "report"), "{ headcount(asOf: \"2026-01-01T00:00:00Z\") { total } }", false)),
        (("Mutation", "importRecords"), row(Grant("employees", "create"), "mutation { importRecords(datasheet: EMPLOYEES, csv: \"First,Last\\nM,X\\n\", mapping: [{ column: \"First\", field: \"firstName\" }, { column: \"Last\", field: \"lastName\" }], dryRun: true) { rows } }", false)),
        // A version the record never has: refused (CONFLICT) past the policy, erasing nothing.
        (("Mutation", "eraseRecord"), row(Grant("employees", "erase"), "mutation($employee: ID!) { eraseRecord(id: $employee, expectedVersion: 999, ground: OBJECTION) { id } }", true)),
        // The first allowed caller restricts the record; lifting an unrestricted one, or
        // restricting again, is refused (VALIDATION) past the policy.
        (("Mutation", "restrictRecord"), row(Grant("employees", "erase"), "mutation($employee: ID!) { restrictRecord(id: $employee, reason: ACCURACY_CONTESTED) { id } }", true)),
        (("Mutation", "liftRestriction"), row(Grant("employees", "erase"), "mutation($employee: ID!) { liftRestriction(id: $employee) { id } }", true)),
        // A deactivated user of its own: the first caller erases them, later ones are refused
        // (VALIDATION) past the policy.
        (("Mutation", "eraseUser"), row(Admin, "mutation($erasable: ID!) { eraseUser(id: $erasable) { id } }", true)),
        (("Mutation", "exportRecords"), row(Grant("employees", "export"), "mutation { exportRecords(datasheet: EMPLOYEES, format: CSV) { count } }", false)),
        // A version the record never has: refused (VALIDATION) past the policy.
        (("Mutation", "cancelScheduledChange"), row(Grant("employees", "update"), "mutation($employee: ID!) { cancelScheduledChange(id: $employee, version: 999) { id } }", true)),
        (("Mutation", "archiveRecord"), row(Grant("employees", "archive"), "mutation($employee: ID!) { archiveRecord(id: $employee) { id } }", true)),
        (("Mutation", "restoreRecord"), row(Grant("employees", "archive"), "mutation($employee: ID!) { restoreRecord(id: $employee) { id } }", true)),
        (("Query", "apiTokens"), row(Admin, "{ apiTokens(includeInactive: true) { totalCount } }", false)),
        (("Mutation", "createApiToken"), row(Admin, "mutation($role: ID!) { createApiToken(input: { name: \"Matrix\", roleId: $role }) { token } }", true)),
        // Revoking twice is refused (VALIDATION) after authorization.
        (("Mutation", "revokeApiToken"), row(Admin, "mutation($token: ID!) { revokeApiToken(id: $token) { id } }", true)),
        // A made-up challenge is refused by the login itself, not by the policy.
        (("Mutation", "completeLogin"), row(Anyone, "mutation { completeLogin(challenge: \"cuc_made_up\", code: \"123456\") { token } }", false)),
        (("Mutation", "beginTwoFactorEnrolment"), row(Session, "mutation { beginTwoFactorEnrolment { otpauthUri } }", false)),
        // A code that can never match: refused (VALIDATION) after authorization.
        (("Mutation", "confirmTwoFactorEnrolment"), row(Session, "mutation { confirmTwoFactorEnrolment(code: \"abc\") }", false)),
        (("Mutation", "regenerateRecoveryCodes"), row(SignedIn, "mutation { regenerateRecoveryCodes(code: \"abc\") }", false)),
        (("Mutation", "disableTwoFactor"), row(SignedIn, "mutation { disableTwoFactor(password: \"not the password\") { id } }", false)),
        // The victim has no second factor: refused (VALIDATION) after authorization.
        (("Mutation", "resetTwoFactor"), row(Admin, "mutation($user: ID!) { resetTwoFactor(userId: $user) { id } }", true)),
        (("Mutation", "setTwoFactorRequired"), row(Admin, "mutation { setTwoFactorRequired(required: false) }", false)),
        // Last: these end the caller's sessions.
        (("Mutation", "logout"), row(Session, "mutation { logout }", false)),
        (("Mutation", "logoutEverywhere"), row(Session, "mutation { logoutEverywhere }", false)),
        (("Query", "recordAsOf"), row(Grant("employees", "history"), "query($employee: ID!) { recordAsOf(id: $employee, at: \"2099-01-01T00:00:00Z\") { version } }", true)),
        (("Query", "recordDiff"), row(Grant("employees", "history"), "query($employee: ID!) { recordDiff(id: $employee, fromVersion: 0, toVersion: 1) { field } }", true)),
        (("Query", "userHistory"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "query($user: ID!) { userHistory(id: $user) { totalCount } }", true)),
        (("Query", "roleHistory"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "query($role: ID!) { roleHistory(id: $role) { totalCount } }", true)),
        (("Query", "auditLog"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "{ auditLog(first: 1) { edges { cursor } } }", false)),
        (("Subscription", "recordChanged"), row(Grant("employees", "read"), "subscription { recordChanged(datasheet: EMPLOYEES) { id } }", false)),
        (("Subscription", "auditFeed"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "subscription { auditFeed { position } }", false)),
        (("Mutation", "exportAuditLog"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history"), ("employees", "export"), ("contacts", "export"), ("applicants", "export")]), "mutation { exportAuditLog(format: CSV) { count } }", false)),
        (("Query", "checkpoints"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "{ checkpoints { number } }", false)),
        (("Query", "verifyIntegrity"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "{ verifyIntegrity { ok } }", false)),
        (("Query", "eventProof"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "query($employee: ID!) { eventProof(aggregateType: \"record\", aggregateId: $employee, sequence: 1) { leafIndex } }", true)),
        // No tree head holds exactly one event: refused (VALIDATION) past the policy.
        (("Query", "consistencyProof"), row(AllOf(&[("employees", "history"), ("contacts", "history"), ("applicants", "history")]), "{ consistencyProof(fromSize: 1) { fromSize } }", false)),
        (("Mutation", "createCheckpoint"), row(Admin, "mutation { createCheckpoint { number } }", false)),
        // On a trial: cancelling is refused (VALIDATION) past the policy; the plan is chosen.
        (("Mutation", "cancelSubscription"), row(Admin, "mutation { cancelSubscription { status } }", false)),
        (("Mutation", "choosePlan"), row(Admin, "mutation { choosePlan(plan: STANDARD) { plan } }", false)),
        (("Mutation", "withdrawCancellation"), row(Admin, "mutation { withdrawCancellation { status } }", false)),
        (("Mutation", "exportOrganization"), row(Admin, "mutation { exportOrganization(passphrase: \"a long enough passphrase\") { count } }", false)),
        (("Query", "consents"), row(Grant("employees", "read"), "query($employee: ID!) { consents(subjectId: $employee) { current { purpose } } }", true)),
        (("Mutation", "giveConsent"), row(Grant("employees", "update"), "mutation($employee: ID!) { giveConsent(subjectId: $employee, input: { purpose: \"payroll\", legalBasis: CONTRACT }) { subjectId } }", true)),
        // Nothing was given for this purpose: refused (VALIDATION) past the policy.
        (("Mutation", "withdrawConsent"), row(Grant("employees", "update"), "mutation($employee: ID!) { withdrawConsent(subjectId: $employee, purpose: \"never_given\") { subjectId } }", true)),
        (("Mutation", "subjectTrail"), row(Grant("employees", "export"), "mutation($employee: ID!) { subjectTrail(subjectIds: [$employee]) { exportId } }", true)),
        (("Query", "retentionPolicies"), row(Admin, "{ retentionPolicies { id } }", false)),
        (("Query", "retentionSchedule"), row(Admin, "{ retentionSchedule { recordId } }", false)),
        (("Mutation", "defineRetentionPolicy"), row(Admin, "mutation { defineRetentionPolicy(input: { datasheet: CONTACTS, name: \"Matrix\", trigger: ARCHIVED, periodDays: 3650 }) { id } }", false)),
        // The first allowed caller removes it; later ones are refused (VALIDATION) past the policy.
        (("Mutation", "removeRetentionPolicy"), row(Admin, "mutation($policy: ID!) { removeRetentionPolicy(id: $policy) { id } }", true)),
        (("Mutation", "runRetention"), row(Admin, "mutation { runRetention { ran } }", false)),
        (("Query", "incidents"), row(Admin, "{ incidents { id } }", false)),
        (("Query", "incident"), row(Admin, "query($incident: ID!) { incident(id: $incident) { id } }", true)),
        (("Mutation", "recordIncident"), row(Admin, "mutation { recordIncident(input: { detectedAt: \"2026-01-02T00:00:00Z\", description: \"Matrix\", datasheets: [CONTACTS], windowFrom: \"2026-01-01T00:00:00Z\", windowTo: \"2026-01-02T00:00:00Z\" }) { id } }", false)),
        // Recorded by the first allowed caller; later ones are refused (VALIDATION) past the policy.
        (("Mutation", "recordAuthorityNotified"), row(Admin, "mutation($incident: ID!) { recordAuthorityNotified(id: $incident, at: \"2026-01-03T00:00:00Z\") { id } }", true)),
        (("Mutation", "recordSubjectsNotified"), row(Admin, "mutation($incident: ID!) { recordSubjectsNotified(id: $incident, at: \"2026-01-03T00:00:00Z\") { id } }", true)),
        (("Mutation", "exportNotificationList"), row(Admin, "mutation($incident: ID!) { exportNotificationList(id: $incident) { count } }", true)),
        (("Mutation", "notifySubjects"), row(Admin, "mutation($incident: ID!) { notifySubjects(id: $incident) { queued } }", true)),
        (("Query", "notifications"), row(Admin, "{ notifications { totalCount } }", false)),
        (("Query", "webhooks"), row(Admin, "{ webhooks { id } }", false)),
        (("Mutation", "registerWebhook"), row(Admin, "mutation { registerWebhook(input: { url: \"http://127.0.0.1:9/matrix\", events: [RECORD_CREATED] }) { secret } }", false)),
        (("Mutation", "updateWebhook"), row(Admin, "mutation($webhook: ID!) { updateWebhook(id: $webhook, input: { events: [RECORD_UPDATED] }) { id } }", true)),
        (("Mutation", "disableWebhook"), row(Admin, "mutation($webhook: ID!) { disableWebhook(id: $webhook) { id } }", true)),
        (("Mutation", "enableWebhook"), row(Admin, "mutation($webhook: ID!) { enableWebhook(id: $webhook) { id } }", true)),
        (("Mutation", "testWebhook"), row(Admin, "mutation($webhook: ID!) { testWebhook(id: $webhook) { succeeded } }", true)),
        // The first allowed caller removes it; later ones are refused (VALIDATION) past the policy.
        (("Mutation", "removeWebhook"), row(Admin, "mutation($webhook: ID!) { removeWebhook(id: $webhook) }", true)),
    ])
}

/// Objects a call can name: one of each kind per organisation, none of them a principal.
#[derive(Clone)]
struct Objects {
    employee: String,
    /// A deactivated user, for erasure.
    erasable: String,
    contact: String,
    applicant: String,
    user: String,
    session: String,
    role: String,
    api_token: String,
    incident: String,
    policy: String,
    webhook: String,
    slug: String,
    login_email: String,
}

async fn objects(app: &TestApp, admin: &Session) -> Objects {
    let employee = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Victim", "lastName": "Employee" }),
        )
        .await;
    let created = |document: &'static str, path: &'static str| async move {
        app.graphql(Some(&admin.token), document, json!({}))
            .await
            .ok()
            .data(path)
            .as_str()
            .unwrap()
            .to_owned()
    };
    created(
        "mutation { addCustomField(datasheet: EMPLOYEES, input: { key: \"victim\", label: \"Victim\", type: TEXT }) { key } }",
        "addCustomField.key",
    )
    .await;
    let contact = created(
        "mutation { createContact(input: { firstName: \"Victim\", lastName: \"Contact\" }) { id } }",
        "createContact.id",
    )
    .await;
    let applicant = created(
        "mutation { createApplicant(input: { firstName: \"Victim\", lastName: \"Applicant\", stage: OFFER }) { id } }",
        "createApplicant.id",
    )
    .await;
    let incident = created(
        "mutation { recordIncident(input: { detectedAt: \"2026-01-02T00:00:00Z\", description: \"Victim\", datasheets: [CONTACTS], windowFrom: \"2026-01-01T00:00:00Z\", windowTo: \"2026-01-02T00:00:00Z\" }) { id } }",
        "recordIncident.id",
    )
    .await;
    let policy = created(
        "mutation { defineRetentionPolicy(input: { datasheet: CONTACTS, name: \"Victim\", trigger: ARCHIVED, periodDays: 3650 }) { id } }",
        "defineRetentionPolicy.id",
    )
    .await;
    let webhook = created(
        "mutation { registerWebhook(input: { url: \"http://127.0.0.1:9/victim\", events: [RECORD_CREATED] }) { webhook { id } } }",
        "registerWebhook.webhook.id",
    )
    .await;
    let role = app
        .graphql(
            Some(&admin.token),
            "mutation { createRole(input: { name: \"Victim role\" }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createRole.id")
        .as_str()
        .unwrap()
        .to_owned();
    let victim = app
        .user_with_roles(admin, std::slice::from_ref(&role))
        .await;
    let login = app.user_with_roles(admin, &[]).await;
    let erasable = app.user_with_roles(admin, &[]).await.user_id.to_string();
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
        json!({ "id": erasable }),
    )
    .await
    .ok();
    let viewer = app.role_id(admin, "Viewer").await;
    let (_, api_token) = app.api_token(admin, "Victim token", &viewer).await;
    let sessions = app
        .graphql(
            Some(&admin.token),
            "query($u: ID) { sessions(userId: $u) { id } }",
            json!({ "u": victim.user_id.to_string() }),
        )
        .await
        .ok();
    Objects {
        employee: employee["id"].as_str().unwrap().to_owned(),
        erasable,
        contact,
        applicant,
        user: victim.user_id.to_string(),
        session: sessions.data("sessions.0.id").as_str().unwrap().to_owned(),
        role,
        api_token,
        incident,
        policy,
        webhook,
        slug: admin.slug.clone(),
        login_email: login.email,
    }
}

/// What a principal is, for the expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anonymous,
    Admin,
    /// A user whose roles hold these (datasheet, permission) grants.
    Holder(&'static [(&'static str, &'static str)]),
    Deactivated,
    Expired,
    OtherTenantAdmin,
    /// Signed in with a temporary password not yet replaced.
    Temporary,
    /// Signed in without the second factor the organisation requires.
    Unenrolled,
    /// An API token whose role holds these (datasheet, permission) grants.
    Token(&'static [(&'static str, &'static str)]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// INTERNAL or UNAVAILABLE: never expected.
    Failed,
    Unauthenticated,
    Forbidden,
    NotFound,
}

fn expected(kind: Kind, row: &Row, foreign: bool) -> Outcome {
    let allowed = match (kind, row.who) {
        (_, Who::Anyone) => true,
        (Kind::Anonymous | Kind::Deactivated | Kind::Expired, _) => {
            return Outcome::Unauthenticated
        }
        // Integrations use data, nothing else.
        (Kind::Token(held), Who::Grant(d, p)) => held.contains(&(d, p)),
        (Kind::Token(held), Who::AllOf(all)) => all.iter().all(|g| held.contains(g)),
        (Kind::Token(_), _) => false,
        (_, Who::Session) => true,
        (Kind::Temporary | Kind::Unenrolled, _) => false,
        (Kind::Admin | Kind::OtherTenantAdmin, _) => true,
        (Kind::Holder(_), Who::SignedIn) => true,
        (Kind::Holder(_), Who::Admin) => false,
        // Another user's session is not theirs to see: it answers like a missing one.
        (Kind::Holder(_), Who::AdminElseNotFound) => return Outcome::NotFound,
        (Kind::Holder(held), Who::Grant(d, p)) => held.contains(&(d, p)),
        (Kind::Holder(held), Who::AllOf(all)) => all.iter().all(|g| held.contains(g)),
    };
    match (allowed, foreign && row.by_id) {
        (false, _) => Outcome::Forbidden,
        (true, true) => Outcome::NotFound,
        (true, false) => Outcome::Allowed,
    }
}

fn outcome(response: &custos_tests::Response) -> Outcome {
    let message = response.body["errors"][0]["message"].as_str().unwrap_or("");
    match response.code() {
        // The policy's refusal; a login refusing a wrong code was let in.
        Some("UNAUTHENTICATED") if message.starts_with("authentication required") => {
            Outcome::Unauthenticated
        }
        Some("FORBIDDEN") => Outcome::Forbidden,
        Some("NOT_FOUND") => Outcome::NotFound,
        Some("INTERNAL" | "UNAVAILABLE") => Outcome::Failed,
        // Success, or a refusal past authorization (VALIDATION, CONFLICT): the call was let in.
        _ => Outcome::Allowed,
    }
}

/// A subscription over WebSocket, answered like a query: refused at the connection (no valid
/// token) as UNAUTHENTICATED, refused by the policy with its error, otherwise let in.
async fn subscription_call(
    app: &TestApp,
    token: Option<&str>,
    document: &str,
) -> custos_tests::Response {
    use custos_tests::feed;
    let (mut socket, ack) = feed::open(&app.address.to_string(), token, document).await;
    let body = if ack["type"] != "connection_ack" {
        json!({ "errors": [{ "message": "authentication required", "extensions": { "code": "UNAUTHENTICATED" } }] })
    } else {
        match feed::next(&mut socket, std::time::Duration::from_millis(500)).await {
            Some(answer) if answer["type"] == "error" => json!({ "errors": answer["payload"] }),
            // A resolver's refusal arrives as a result with errors.
            Some(answer) if answer["payload"]["errors"].is_array() => {
                json!({ "errors": answer["payload"]["errors"] })
            }
            _ => json!({ "data": {} }),
        }
    };
    custos_tests::Response {
        status: 200,
        body,
        request_id: None,
    }
}

async fn root_fields(app: &TestApp) -> BTreeSet<(String, String)> {
    let schema = app
        .graphql(
            None,
            "{ __schema { queryType { fields { name } } mutationType { fields { name } } subscriptionType { fields { name } } } }",
            json!({}),
        )
        .await
        .ok();
    let mut fields = BTreeSet::new();
    for (kind, key) in [
        ("Query", "queryType"),
        ("Mutation", "mutationType"),
        ("Subscription", "subscriptionType"),
    ] {
        for field in schema
            .data(&format!("__schema.{key}.fields"))
            .as_array()
            .into_iter()
            .flatten()
        {
            fields.insert((kind.to_owned(), field["name"].as_str().unwrap().to_owned()));
        }
    }
    fields
}

#[tokio::test]
async fn every_root_field_admits_exactly_who_it_should() {
    // Webhooks point at loopback (nothing listens there: a test delivery fails at once).
    let app = TestApp::spawn_with(|config| config.webhooks.allow_private = true).await;
    let rows = rows();

    // A new field without a row fails here, and so does a row for a field that is gone.
    let in_schema = root_fields(&app).await;
    let in_table: BTreeSet<(String, String)> = rows
        .keys()
        .map(|(k, f)| (k.to_string(), f.to_string()))
        .collect();
    let missing: Vec<_> = in_schema.difference(&in_table).collect();
    let stale: Vec<_> = in_table.difference(&in_schema).collect();
    assert!(
        missing.is_empty(),
        "root fields without a row in the matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "matrix rows for fields the schema no longer has: {stale:?}"
    );

    let a = app.sign_up(&slug("matrix-a")).await;
    let b = app.sign_up(&slug("matrix-b")).await;
    // An organisation that requires a second factor its administrator has not enrolled.
    let c = app.sign_up(&slug("matrix-c")).await;
    let (own_a, own_b) = (objects(&app, &a).await, objects(&app, &b).await);
    let own_c = objects(&app, &c).await;
    app.graphql(
        Some(&c.token),
        "mutation { setTwoFactorRequired(required: true) }",
        json!({}),
    )
    .await
    .ok();
    let hr = app.role_id(&a, "HR manager").await;
    let viewer = app.role_id(&a, "Viewer").await;
    let nothing = app
        .graphql(
            Some(&a.token),
            "mutation { createRole(input: { name: \"Nothing\" }) { id } }",
            json!({}),
        )
        .await
        .ok()
        .data("createRole.id")
        .as_str()
        .unwrap()
        .to_owned();
    let hr_user = app.user_with_roles(&a, &[hr]).await;
    let viewer_user = app.user_with_roles(&a, std::slice::from_ref(&viewer)).await;
    let nothing_user = app.user_with_roles(&a, &[nothing]).await;
    let deactivated = app.user_with_roles(&a, std::slice::from_ref(&viewer)).await;
    app.graphql(
        Some(&a.token),
        "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
        json!({ "id": deactivated.user_id.to_string() }),
    )
    .await
    .ok();
    let expired = app.user_with_roles(&a, std::slice::from_ref(&viewer)).await;
    let (viewer_token, _) = app.api_token(&a, "Matrix viewer", &viewer).await;
    let (revoked_token, revoked_id) = app.api_token(&a, "Matrix revoked", &viewer).await;
    app.graphql(
        Some(&a.token),
        "mutation($id: ID!) { revokeApiToken(id: $id) { id } }",
        json!({ "id": revoked_id }),
    )
    .await
    .ok();
    app.graphql(
        Some(&a.token),
        "mutation { createUser(input: { email: \"temp@example.org\", name: \"Temp\", temporaryPassword: \"temporary passphrase 5\", administrator: true }) { id } }",
        json!({}),
    )
    .await
    .ok();
    let temporary = app
        .login(&a.slug, "temp@example.org", "temporary passphrase 5")
        .await
        .unwrap();
    let mut db = app.tenant_admin(a.tenant_id).await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1")
        .bind(expired.user_id)
        .execute(&mut db)
        .await
        .unwrap();

    // The seeded roles: an HR manager does everything with employees and applicants, a
    // Viewer reads every datasheet.
    const HR: &[(&str, &str)] = &[
        ("employees", "read"),
        ("employees", "create"),
        ("employees", "update"),
        ("employees", "archive"),
        ("employees", "erase"),
        ("employees", "export"),
        ("employees", "history"),
        ("employees", "report"),
        ("applicants", "read"),
        ("applicants", "create"),
        ("applicants", "update"),
        ("applicants", "archive"),
        ("applicants", "erase"),
        ("applicants", "export"),
        ("applicants", "history"),
        ("applicants", "report"),
    ];
    const VIEWER: &[(&str, &str)] = &[
        ("employees", "read"),
        ("contacts", "read"),
        ("applicants", "read"),
    ];
    // The principals who can log in again, for calls that end sessions.
    let login = |session: &Session| {
        (
            session.slug.clone(),
            session.email.clone(),
            PASSWORD.to_owned(),
        )
    };
    let sessions: BTreeMap<&str, (String, String, String)> = BTreeMap::from([
        ("administrator", login(&a)),
        ("HR manager", login(&hr_user)),
        ("Viewer", login(&viewer_user)),
        ("role with nothing", login(&nothing_user)),
        (
            "temporary password",
            (
                a.slug.clone(),
                "temp@example.org".to_owned(),
                "temporary passphrase 5".to_owned(),
            ),
        ),
        ("another tenant's administrator", login(&b)),
        ("administrator without a required second factor", login(&c)),
    ]);
    let principals: Vec<(&str, Kind, Option<String>, &Objects, &Objects)> = vec![
        ("anonymous", Kind::Anonymous, None, &own_a, &own_b),
        (
            "administrator",
            Kind::Admin,
            Some(a.token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "HR manager",
            Kind::Holder(HR),
            Some(hr_user.token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "Viewer",
            Kind::Holder(VIEWER),
            Some(viewer_user.token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "role with nothing",
            Kind::Holder(&[]),
            Some(nothing_user.token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "deactivated user",
            Kind::Deactivated,
            Some(deactivated.token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "expired session",
            Kind::Expired,
            Some(expired.token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "temporary password",
            Kind::Temporary,
            Some(temporary.clone()),
            &own_a,
            &own_b,
        ),
        (
            "another tenant's administrator",
            Kind::OtherTenantAdmin,
            Some(b.token.clone()),
            &own_b,
            &own_a,
        ),
        (
            "administrator without a required second factor",
            Kind::Unenrolled,
            Some(c.token.clone()),
            &own_c,
            &own_a,
        ),
        (
            "API token with the Viewer role",
            Kind::Token(VIEWER),
            Some(viewer_token.clone()),
            &own_a,
            &own_b,
        ),
        (
            "revoked API token",
            Kind::Expired,
            Some(revoked_token.clone()),
            &own_a,
            &own_b,
        ),
    ];

    let mut wrong = Vec::new();
    let mut calls = 0;
    // Calls that end the caller's sessions go last.
    let ends_sessions = |field: &str| field == "logout" || field == "logoutEverywhere";
    let mut ordered: Vec<_> = rows
        .iter()
        .filter(|((_, f), _)| !ends_sessions(f))
        .collect();
    ordered.extend(rows.iter().filter(|((_, f), _)| ends_sessions(f)));
    for ((kind_name, field), row) in ordered {
        for (name, kind, token, own, foreign) in &principals {
            for (is_foreign, objects) in [(false, *own), (true, *foreign)] {
                if ends_sessions(field) && is_foreign {
                    continue;
                }
                let variables = json!({
                    "employee": objects.employee, "erasable": objects.erasable, "contact": objects.contact, "applicant": objects.applicant, "user": objects.user, "role": objects.role, "session": objects.session, "incident": objects.incident, "policy": objects.policy,
                    "token": objects.api_token, "webhook": objects.webhook,
                    "slug": objects.slug, "loginEmail": objects.login_email, "password": PASSWORD,
                });
                // Each session-ending call gets a session of its own, where the principal can log in.
                let fresh = match (ends_sessions(field), sessions.get(name)) {
                    (true, Some((slug, email, password))) => {
                        Some(app.login(slug, email, password).await.unwrap())
                    }
                    _ => None,
                };
                let token = fresh.as_deref().or(token.as_deref());
                let response = if *kind_name == "Subscription" {
                    subscription_call(&app, token, row.document).await
                } else {
                    app.graphql(token, row.document, variables).await
                };
                calls += 1;
                let (want, got) = (expected(*kind, row, is_foreign), outcome(&response));
                if want != got {
                    wrong.push(format!(
                        "{kind_name}.{field} as {name} on {} object: expected {want:?}, got {got:?}: {}",
                        if is_foreign { "a foreign" } else { "its own" },
                        response.body
                    ));
                }
            }
        }
    }

    assert!(calls > 400, "the matrix ran ({calls} calls)");
    assert!(
        wrong.is_empty(),
        "{} unexpected outcomes:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
