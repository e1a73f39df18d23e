//! Notifications against a real mail server (the harness's local SMTP server, spoken to by
//! lettre): each lifecycle notice reaches every administrator once, the schedule's notices
//! come before a trial ends and before a deletion, the purge's notice after it, breach notices
//! reach the affected people at their record's address (never an erased person), a refusing
//! server is retried until a dead letter, and without a server notices wait, visible.

use std::time::Duration;

use chrono::Utc;
use custos_tests::smtp::{Mail, Mode, SmtpServer};
use custos_tests::{slug, Session, TestApp};
use serde_json::{json, Value};

/// A service sending through `smtp`, its worker looking every 100 ms and retrying after
/// 100 ms, doubled each time.
async fn app_with(smtp: Option<&SmtpServer>, max_attempts: u32) -> TestApp {
    let url = smtp.map(SmtpServer::url);
    TestApp::spawn_with(move |config| {
        config.notifications.smtp_url = url.map(Into::into);
        config.notifications.from = "Custos Test <custos@test.example>".to_owned();
        config.notifications.interval = Some(Duration::from_millis(100));
        config.notifications.retry_base = Duration::from_millis(100);
        config.notifications.max_attempts = max_attempts;
    })
    .await
}

const NOTIFICATIONS: &str =
    "query($status: NotificationStatus, $kind: NotificationKind, $incident: ID) {
    notifications(first: 100, status: $status, kind: $kind, incidentId: $incident) {
        totalCount
        edges { node { id kind channel recipientUserId recipientRecordId incidentId status attempts
                       nextAttemptAt lastError createdAt sentAt } } } }";

/// The organisation's notifications as its administrator lists them.
async fn notifications(app: &TestApp, admin: &Session, variables: Value) -> Vec<Value> {
    app.graphql(Some(&admin.token), NOTIFICATIONS, variables)
        .await
        .ok()
        .data("notifications.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// Waits (up to 30 s) until the organisation's notifications matching `variables` satisfy
/// `done`, and returns them as they are then.
async fn until_listed(
    app: &TestApp,
    admin: &Session,
    variables: Value,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = notifications(app, admin, variables.clone()).await;
        if done(&listed) || std::time::Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A moment of the organisation's catalog row (`trial_ends_at`, `kept_until`, …).
async fn moment(app: &TestApp, admin: &Session, column: &str) -> chrono::DateTime<Utc> {
    sqlx::query_scalar(&format!("SELECT {column} FROM tenants WHERE id = $1"))
        .bind(admin.tenant_id)
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap()
}

/// The administrator cancels the subscription.
async fn cancel(app: &TestApp, admin: &Session) {
    app.graphql(
        Some(&admin.token),
        "mutation { cancelSubscription { status } }",
        json!({}),
    )
    .await
    .ok();
}

/// `custos tenant <verb> --slug S --reason R`, as the provider runs it.
async fn operator(app: &TestApp, verb: &str, admin: &Session, reason: &str) {
    assert!(
        app.custos(&["tenant", verb, "--slug", &admin.slug, "--reason", reason])
            .await
    );
}

/// Waits (up to 20 s) until the messages to `to` whose subject contains `subject` number
/// `count`, and a little longer to see that no more come.
async fn exactly(smtp: &SmtpServer, to: &str, subject: &str, count: usize) -> Vec<Mail> {
    let matching = |mails: &[Mail]| {
        mails
            .iter()
            .filter(|m| m.to.iter().any(|t| t == to) && m.subject().contains(subject))
            .cloned()
            .collect::<Vec<_>>()
    };
    smtp.until(Duration::from_secs(20), |mails| {
        matching(mails).len() >= count
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found = matching(&smtp.mails());
    assert_eq!(
        found.len(),
        count,
        "messages to {to} about {subject:?}: {:#?}",
        smtp.mails()
            .iter()
            .map(|m| (m.to.clone(), m.subject()))
            .collect::<Vec<_>>()
    );
    found
}

async fn second_admin(app: &TestApp, admin: &Session) -> Session {
    let other = app.user_with_roles(admin, &[]).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { setAdministrator(id: $id, administrator: true) { id } }",
        json!({ "id": other.user_id.to_string() }),
    )
    .await
    .ok();
    other
}

#[tokio::test]
async fn each_lifecycle_notice_reaches_every_administrator_once() {
    let smtp = SmtpServer::start().await;
    let app = app_with(Some(&smtp), 5).await;
    let admin = app.sign_up(&slug("notices")).await;
    let other = second_admin(&app, &admin).await;
    let name = app
        .graphql(Some(&admin.token), "{ organization { name } }", json!({}))
        .await
        .ok()
        .data("organization.name")
        .as_str()
        .unwrap()
        .to_owned();

    operator(&app, "suspend", &admin, "late payment").await;
    for to in [&admin.email, &other.email] {
        let mails = exactly(&smtp, to, "is suspended", 1).await;
        let mail = &mails[0];
        assert_eq!(mail.from, "custos@test.example");
        assert!(mail.subject().contains(&name), "{}", mail.subject());
        assert!(mail.body().contains("late payment"), "{}", mail.body());
        assert!(mail.header("Message-ID").unwrap().ends_with("@custos>"));
    }
    operator(&app, "resume", &admin, "paid").await;
    exactly(&smtp, &admin.email, "is resumed", 1).await;

    // An administrator's own choice: the plan, with the storage it includes.
    let chosen = app
        .graphql(
            Some(&admin.token),
            "mutation { choosePlan(plan: STANDARD) { plan } }",
            json!({}),
        )
        .await;
    // Other processes see the resumption at their next check of the catalog (5 s).
    let chosen = if chosen.code().is_some() {
        tokio::time::sleep(Duration::from_secs(6)).await;
        app.graphql(
            Some(&admin.token),
            "mutation { choosePlan(plan: STANDARD) { plan } }",
            json!({}),
        )
        .await
    } else {
        chosen
    };
    chosen.ok();
    let plan = exactly(&smtp, &other.email, "Standard plan", 1).await;
    assert!(plan[0].body().contains("50 GB"), "{}", plan[0].body());
    cancel(&app, &admin).await;
    exactly(&smtp, &admin.email, "is cancelled", 1).await;

    // Delivering again sends nothing twice.
    app.services.deliver_notifications().await.unwrap();
    exactly(&smtp, &admin.email, "is suspended", 1).await;

    // The administrators see each one and how it went: to whom (an id, never an address).
    let listed = notifications(&app, &admin, json!({})).await;
    let kinds: Vec<&str> = listed.iter().map(|n| n["kind"].as_str().unwrap()).collect();
    for kind in [
        "SUSPENDED",
        "RESUMED",
        "PLAN_CHOSEN",
        "CANCELLATION_SCHEDULED",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            2,
            "{kind}: {listed:#?}"
        );
    }
    for notification in &listed {
        assert_eq!(notification["status"], "SENT", "{notification:#}");
        assert_eq!(notification["channel"], "email");
        assert_eq!(notification["attempts"], 1);
        assert!(notification["sentAt"].is_string());
        assert!(notification["nextAttemptAt"].is_null());
        let to = notification["recipientUserId"].as_str().unwrap();
        assert!(to == admin.user_id.to_string() || to == other.user_id.to_string());
    }
    let only = notifications(&app, &admin, json!({ "kind": "RESUMED" })).await;
    assert_eq!(only.len(), 2);
    assert!(!serde_json::to_string(&listed)
        .unwrap()
        .contains(&admin.email));
}

#[tokio::test]
async fn a_trial_is_told_before_it_ends_and_when_its_data_is_deleted() {
    let smtp = SmtpServer::start().await;
    let app = app_with(Some(&smtp), 5).await;
    let admin = app.sign_up(&slug("trialmail")).await;
    let catalog = app.services.tenancy.catalog();
    let trial_ends_at = moment(&app, &admin, "trial_ends_at").await;
    let services = &app.services;

    // A week before, then a day before: each notice once, however often the schedule runs.
    services
        .lifecycle_round(trial_ends_at - chrono::Duration::days(6))
        .await
        .unwrap();
    services
        .lifecycle_round(trial_ends_at - chrono::Duration::days(5))
        .await
        .unwrap();
    services
        .lifecycle_round(trial_ends_at - chrono::Duration::hours(12))
        .await
        .unwrap();
    let ending = exactly(&smtp, &admin.email, "The trial of", 2).await;
    assert!(ending.iter().all(|m| m.subject().contains("ends on")));

    // Ended: the deletion date; a week before it, again; then the purge, told after it.
    let ended = trial_ends_at + chrono::Duration::seconds(1);
    services.lifecycle_round(ended).await.unwrap();
    let told = exactly(&smtp, &admin.email, "has ended", 1).await;
    assert!(
        told[0].body().contains("will be deleted on"),
        "{}",
        told[0].body()
    );
    let kept_until = moment(&app, &admin, "kept_until").await;
    services
        .lifecycle_round(kept_until - chrono::Duration::days(3))
        .await
        .unwrap();
    exactly(&smtp, &admin.email, "will be deleted on", 1).await;
    services
        .lifecycle_round(kept_until + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let purged = exactly(&smtp, &admin.email, "has been deleted", 1).await;
    assert!(purged[0].body().contains("were deleted on"));

    // What is left in the catalog: the purge notice alone, its address gone once sent.
    let left: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT kind, status, address FROM notifications WHERE tenant_id = $1")
            .bind(admin.tenant_id)
            .fetch_all(catalog)
            .await
            .unwrap();
    assert_eq!(left, vec![("purged".to_owned(), "sent".to_owned(), None)]);
}

#[tokio::test]
async fn breach_notices_reach_the_affected_people_but_never_the_erased() {
    let smtp = SmtpServer::start().await;
    let app = app_with(Some(&smtp), 5).await;
    let admin = app.sign_up(&slug("breachmail")).await;
    let start = Utc::now() - chrono::Duration::minutes(1);
    let create = |input: Value| {
        let app = &app;
        let admin = &admin;
        async move {
            app.graphql(
                Some(&admin.token),
                "mutation($i: CreateContactInput!) { createContact(input: $i) { id version } }",
                json!({ "i": input }),
            )
            .await
            .ok()
            .data("createContact")
            .clone()
        }
    };
    let reached = create(json!({ "firstName": "Rhea", "lastName": "Reached",
                                 "emails": ["rhea.reached@people.example"] }))
    .await;
    let erased = create(json!({ "firstName": "Edda", "lastName": "Erased",
                                "emails": ["edda.erased@people.example"] }))
    .await;
    let silent = create(json!({ "firstName": "Nils", "lastName": "Noaddress" })).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!, $v: Int!) { eraseRecord(id: $id, expectedVersion: $v, ground: CONSENT_WITHDRAWN) { id } }",
        json!({ "id": erased["id"], "v": erased["version"] }),
    )
    .await
    .ok();
    let incident = app
        .graphql(
            Some(&admin.token),
            "mutation($i: IncidentInput!) { recordIncident(input: $i) { id } }",
            json!({ "i": { "detectedAt": Utc::now().to_rfc3339(),
                           "description": "A backup disk was lost in transit.",
                           "datasheets": ["CONTACTS"], "windowFrom": start.to_rfc3339(),
                           "windowTo": (Utc::now() + chrono::Duration::seconds(1)).to_rfc3339() } }),
        )
        .await
        .ok()
        .data("recordIncident.id")
        .as_str()
        .unwrap()
        .to_owned();

    const NOTIFY: &str = "mutation($id: ID!) { notifySubjects(id: $id) {
        queued alreadyQueued incident { subjectsNotifiedAt } } }";
    let issued = app
        .graphql(Some(&admin.token), NOTIFY, json!({ "id": incident }))
        .await
        .ok();
    assert_eq!(issued.data("notifySubjects.queued"), 3);
    assert_eq!(issued.data("notifySubjects.alreadyQueued"), 0);
    assert!(issued
        .data("notifySubjects.incident.subjectsNotifiedAt")
        .is_string());

    let mails = exactly(
        &smtp,
        "rhea.reached@people.example",
        "personal-data breach",
        1,
    )
    .await;
    assert!(mails[0]
        .body()
        .contains("A backup disk was lost in transit."));
    // Asked again: nothing new is written, nothing is sent twice.
    let again = app
        .graphql(Some(&admin.token), NOTIFY, json!({ "id": incident }))
        .await
        .ok();
    assert_eq!(again.data("notifySubjects.queued"), 0);
    assert_eq!(again.data("notifySubjects.alreadyQueued"), 3);
    exactly(
        &smtp,
        "rhea.reached@people.example",
        "personal-data breach",
        1,
    )
    .await;

    // Each delivery as the administrators see it.
    let listed = notifications(&app, &admin, json!({ "incident": incident })).await;
    let status_of = |record: &Value| {
        listed
            .iter()
            .find(|n| n["recipientRecordId"] == record["id"])
            .map(|n| (n["status"].clone(), n["lastError"].clone()))
            .unwrap()
    };
    assert_eq!(status_of(&reached).0, "SENT");
    assert_eq!(
        status_of(&erased),
        (json!("CANCELLED"), json!("the person was erased"))
    );
    assert_eq!(
        status_of(&silent),
        (json!("CANCELLED"), json!("the record has no email address"))
    );
    assert!(listed
        .iter()
        .all(|n| n["kind"] == "BREACH" && n["incidentId"] == incident));
    // The erased person's address never reached the mail server.
    assert!(smtp
        .mails()
        .iter()
        .all(|m| !m.data.contains("edda.erased@people.example")));
    let sent = notifications(&app, &admin, json!({ "status": "SENT" })).await;
    assert_eq!(sent.len(), 1);
}

#[tokio::test]
async fn a_refusing_mail_server_is_retried_until_a_dead_letter() {
    let smtp = SmtpServer::start().await;
    smtp.set_mode(Mode::Refuse);
    let app = app_with(Some(&smtp), 4).await;
    let admin = app.sign_up(&slug("deadletter")).await;
    operator(&app, "suspend", &admin, "unpaid").await;
    let dead = until_listed(&app, &admin, json!({ "status": "DEAD" }), |l| !l.is_empty()).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["attempts"], 4);
    assert!(
        dead[0]["lastError"].as_str().unwrap().contains("451"),
        "{dead:#?}"
    );
    assert!(smtp.mails().is_empty());

    // A server that refuses for a while: the next attempt after it answers again succeeds.
    operator(&app, "resume", &admin, "paid").await;
    // A failed attempt recorded (an attempt under way counts before it is over).
    let listed = until_listed(&app, &admin, json!({ "kind": "RESUMED" }), |l| {
        l.first().is_some_and(|n| n["lastError"].is_string())
    })
    .await;
    assert_eq!(listed[0]["status"], "PENDING", "{listed:#?}");
    assert!(listed[0]["nextAttemptAt"].is_string());
    smtp.set_mode(Mode::Accept);
    exactly(&smtp, &admin.email, "is resumed", 1).await;
    let resumed = notifications(&app, &admin, json!({ "kind": "RESUMED" })).await;
    assert_eq!(resumed[0]["status"], "SENT");
    assert!(resumed[0]["attempts"].as_i64().unwrap() >= 2);
    assert!(resumed[0]["lastError"].is_null());
}

#[tokio::test]
async fn without_a_mail_server_notices_wait_unsent_and_visible() {
    let app = app_with(None, 5).await;
    let admin = app.sign_up(&slug("nomail")).await;
    operator(&app, "suspend", &admin, "unpaid").await;
    let listed = until_listed(&app, &admin, json!({}), |l| {
        l.first().is_some_and(|n| !n["lastError"].is_null())
    })
    .await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["status"], "PENDING");
    assert_eq!(listed[0]["attempts"], 0);
    assert_eq!(
        listed[0]["lastError"],
        "no mail server is configured (CUSTOS_SMTP_URL)"
    );
    assert_eq!(listed[0]["recipientUserId"], admin.user_id.to_string());

    // A cursor PostgreSQL could not compare with is bad input, not an internal error.
    use base64::Engine;
    let far = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("-8000000000000000000:{}", uuid::Uuid::nil()));
    let refused = app
        .graphql(
            Some(&admin.token),
            "query($after: String) { notifications(after: $after) { totalCount } }",
            json!({ "after": far }),
        )
        .await;
    assert_eq!(refused.code(), Some("VALIDATION"));
    assert_eq!(refused.field(), Some("after"));
}

#[tokio::test]
async fn storage_crossings_and_a_cancellation_to_the_purge_are_told_once_each() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let app = TestApp::spawn_with(move |config| {
        config.notifications.smtp_url = Some(url.into());
        config.notifications.interval = Some(Duration::from_millis(100));
        // Every database is beyond a trial's 1-byte limit; overage in 1 GB steps.
        config.storage.trial = 1;
        config.storage.step = 1_000_000_000;
    })
    .await;
    let admin = app.sign_up(&slug("endmail")).await;
    let services = &app.services;
    assert_eq!(services.measure_storage().await.unwrap(), 1);
    let reached = exactly(&smtp, &admin.email, "reached its storage limit", 1).await;
    assert!(reached[0].body().contains("takes no new data"));
    exactly(&smtp, &admin.email, "beyond its storage limit", 1).await;
    // Measured again at the same level: nothing new to tell.
    assert_eq!(services.measure_storage().await.unwrap(), 0);
    exactly(&smtp, &admin.email, "storage limit", 2).await;

    app.graphql(
        Some(&admin.token),
        "mutation { choosePlan(plan: MAXI) { plan } }",
        json!({}),
    )
    .await
    .ok();
    let plan = exactly(&smtp, &admin.email, "Maxi plan", 1).await;
    assert!(plan[0].body().contains("80 GB"), "{}", plan[0].body());
    cancel(&app, &admin).await;
    exactly(&smtp, &admin.email, "is cancelled", 1).await;

    let effective = moment(&app, &admin, "cancellation_effective_at").await;
    services
        .lifecycle_round(effective + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let ended = exactly(&smtp, &admin.email, "subscription of", 2).await;
    assert!(ended
        .iter()
        .any(|m| m.subject().contains("has ended") && m.body().contains("until")));
    let kept_until = moment(&app, &admin, "kept_until").await;
    for days in [6, 4, 1] {
        services
            .lifecycle_round(kept_until - chrono::Duration::days(days))
            .await
            .unwrap();
    }
    exactly(&smtp, &admin.email, "will be deleted on", 1).await;
    services
        .lifecycle_round(kept_until + chrono::Duration::seconds(1))
        .await
        .unwrap();
    exactly(&smtp, &admin.email, "has been deleted", 1).await;
    // Every message went to the one administrator, and none twice.
    let mails = smtp.mails();
    let mut ids: Vec<String> = mails
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), mails.len());
    assert!(mails.iter().all(|m| m.to == vec![admin.email.clone()]));
}
