//! Each organisation's life with the provider, as events in the catalog: the operator's
//! `custos tenant list|plan|suspend|resume|extend-trial|cancel|withdraw-cancellation|purge`,
//! what a suspended, expired or ended organisation still lets its administrators do (and
//! nobody else), a trial that expires on schedule and comes back with a plan its administrator
//! chose, a cancellation through its migration window to the purge and its tombstone, storage
//! measured against each plan's limit (a trial at its limit takes no new data; overage counted
//! in steps), and organisations older than their stream adopted at start.

use std::time::Duration;

use custos_tests::{slug, Response, Session, TestApp, PASSWORD};
use serde_json::{json, Value};

/// The catalog's row of the organisation: status, plan, trial end, cancellation, kept until.
async fn row(
    app: &TestApp,
    admin: &Session,
) -> (
    String,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    sqlx::query_as(
        "SELECT status, plan, trial_ends_at, cancellation_effective_at, kept_until
         FROM tenants WHERE id = $1",
    )
    .bind(admin.tenant_id)
    .fetch_one(app.services.tenancy.catalog())
    .await
    .unwrap()
}

/// The organisation's lifecycle events: type, actor, reason.
async fn history(app: &TestApp, admin: &Session) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT event_type, metadata::jsonb FROM subscription_events
         WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(admin.tenant_id.to_string())
    .fetch_all(app.services.tenancy.catalog())
    .await
    .unwrap()
}

/// Waits (up to 20 s: other instances recheck their open organisations every 5 s) until a
/// login succeeds (`true`) or is refused (`false`).
async fn until_login(app: &TestApp, admin: &Session, works: bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ok = app.login(&admin.slug, &admin.email, PASSWORD).await.is_ok();
        if ok == works || std::time::Instant::now() > deadline {
            return ok;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to 20 s, as above) until `query` with `token` answers the error `code` (`None`:
/// no error), and returns the response.
async fn until_code(app: &TestApp, token: &str, query: &str, code: Option<&str>) -> Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = app.graphql(Some(token), query, json!({})).await;
        if response.code() == code || std::time::Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The code a login of `user` is refused with (`None`: it works).
async fn login_refusal(app: &TestApp, user: &Session) -> Option<String> {
    match app.login(&user.slug, &user.email, &user.password).await {
        Ok(_) => None,
        Err(response) => response.code().map(str::to_owned),
    }
}

const EXPORT: &str =
    "mutation { exportOrganization(passphrase: \"a long enough passphrase\") { count } }";
const CREATE: &str =
    "mutation { createEmployee(input: { firstName: \"Not\", lastName: \"Written\" }) { id } }";
const EMPLOYEES: &str = "{ employees { totalCount } }";
const STANDING: &str = "{ organization { status plan trialEndsAt cancellationEffectiveAt migrationAccessUntil deletionScheduledAt } }";

async fn employee_names(app: &TestApp, admin: &Session) -> Vec<String> {
    let token = app
        .login(&admin.slug, &admin.email, PASSWORD)
        .await
        .expect("the login works");
    app.employee_last_names(&token).await
}

#[tokio::test]
async fn the_operator_moves_an_organisation_through_its_life_and_every_step_is_recorded() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("life")).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Kept", "lastName": "Throughout" }),
    )
    .await;
    let (status, plan, trial_ends_at, ..) = row(&app, &admin).await;
    assert_eq!((status.as_str(), plan.as_str()), ("trial", "trial"));
    let ends = trial_ends_at.expect("a trial has an end");
    let days = (ends - chrono::Utc::now()).num_days();
    assert!((29..=30).contains(&days), "a 30-day trial: {days}");
    assert!(app.custos(&["tenant", "list"]).await);

    // Bad input changes nothing.
    for (args, expected) in [
        (
            vec!["tenant", "plan", "--slug", &admin.slug, "--plan", "gold"],
            "unknown plan",
        ),
        (
            vec![
                "tenant",
                "resume",
                "--slug",
                &admin.slug,
                "--reason",
                "paid",
            ],
            "cannot be resumed",
        ),
        (
            vec!["tenant", "suspend", "--slug", &admin.slug, "--reason", "  "],
            "reason is required",
        ),
        (
            vec!["tenant", "cancel", "--slug", &admin.slug],
            "cannot be cancelled",
        ),
        (
            vec![
                "tenant",
                "extend-trial",
                "--slug",
                &admin.slug,
                "--until",
                "2001-01-01",
            ],
            "not later",
        ),
        (
            vec![
                "tenant",
                "extend-trial",
                "--slug",
                &admin.slug,
                "--until",
                "soon",
            ],
            "neither a date",
        ),
        (
            vec![
                "tenant",
                "suspend",
                "--slug",
                "no-such-org",
                "--reason",
                "x",
            ],
            "no organisation",
        ),
    ] {
        let refused = app.custos_result(&args).await.expect_err("refused");
        assert!(
            format!("{refused:#}").contains(expected),
            "{args:?}: {refused:#}"
        );
    }
    assert_eq!(row(&app, &admin).await.0, "trial");
    assert_eq!(history(&app, &admin).await.len(), 1);

    // The trial extended, then a plan chosen: every record kept.
    assert!(
        app.custos(&[
            "tenant",
            "extend-trial",
            "--slug",
            &admin.slug,
            "--until",
            "2099-12-31"
        ])
        .await
    );
    let (_, _, trial_ends_at, ..) = row(&app, &admin).await;
    assert_eq!(
        trial_ends_at.unwrap().to_rfc3339(),
        "2099-12-31T23:59:59+00:00"
    );
    assert!(
        app.custos(&[
            "tenant",
            "plan",
            "--slug",
            &admin.slug,
            "--plan",
            "Standard"
        ])
        .await
    );
    let (status, plan, trial_ends_at, ..) = row(&app, &admin).await;
    assert_eq!(
        (status.as_str(), plan.as_str(), trial_ends_at),
        ("active", "standard", None)
    );
    assert_eq!(employee_names(&app, &admin).await, ["Throughout"]);

    // Suspended: by this instance too (it rechecks its open organisations), everyone but the
    // administrators is refused; they may read the status and export, nothing else. Resumed:
    // served again as it was. A download link the member got before is used up, unanswered.
    let hr = app.role_id(&admin, "HR manager").await;
    let member = app.user_with_roles(&admin, &[hr]).await;
    let link = app
        .graphql(
            Some(&member.token),
            "mutation { exportRecords(datasheet: EMPLOYEES, format: CSV) { downloadUrl } }",
            json!({}),
        )
        .await
        .ok();
    let link = app.url(link.data("exportRecords.downloadUrl").as_str().unwrap());
    assert!(
        app.custos(&[
            "tenant",
            "suspend",
            "--slug",
            &admin.slug,
            "--reason",
            "late payment"
        ])
        .await
    );
    assert_eq!(row(&app, &admin).await.0, "suspended");
    let refused = until_code(&app, &admin.token, EMPLOYEES, Some("SUSPENDED")).await;
    assert_eq!(refused.code(), Some("SUSPENDED"), "{:?}", refused.body);
    assert_eq!(reqwest::get(&link).await.unwrap().status(), 404);
    assert_eq!(
        login_refusal(&app, &member).await.as_deref(),
        Some("SUSPENDED")
    );
    let token = app
        .login(&admin.slug, &admin.email, PASSWORD)
        .await
        .expect("administrators sign in");
    let standing = app.graphql(Some(&token), STANDING, json!({})).await.ok();
    assert_eq!(standing.data("organization.status"), "SUSPENDED");
    assert_eq!(standing.data("organization.plan"), "STANDARD");
    for refused in [CREATE, EMPLOYEES, "{ users { totalCount } }"] {
        let response = app.graphql(Some(&token), refused, json!({})).await;
        assert_eq!(
            response.code(),
            Some("SUSPENDED"),
            "{refused}: {:?}",
            response.body
        );
    }
    // Nor may they start a subscription (whose root fields are checked by their resolvers).
    for document in [
        "subscription { auditFeed { eventType } }",
        "subscription { recordChanged { id } }",
    ] {
        let (mut socket, ack) =
            custos_tests::feed::open(&app.address.to_string(), Some(&token), document).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        let answer = custos_tests::feed::next(&mut socket, Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_eq!(answer["type"], "error", "{document}: {answer}");
        assert_eq!(
            answer["payload"][0]["extensions"]["code"], "SUSPENDED",
            "{document}: {answer}"
        );
    }
    let exported = app.graphql(Some(&token), EXPORT, json!({})).await.ok();
    assert_eq!(exported.data("exportOrganization.count"), 1);
    assert!(
        app.custos(&[
            "tenant",
            "resume",
            "--slug",
            &admin.slug,
            "--reason",
            "paid"
        ])
        .await
    );
    assert_eq!(row(&app, &admin).await.0, "active");
    until_code(&app, &admin.token, EMPLOYEES, None).await.ok();
    // The refused sign-in is in the member's login history, by its class (read once
    // resumed: a suspended organisation shows its administrators only its status).
    app.settled(admin.tenant_id).await;
    let logins = app
        .graphql(
            Some(&admin.token),
            "query($u: ID) { loginHistory(userId: $u) { edges { node { eventType reason } } } }",
            json!({ "u": member.user_id.to_string() }),
        )
        .await
        .ok();
    assert_eq!(
        logins.data("loginHistory.edges")[0]["node"],
        json!({ "eventType": "LoginFailed", "reason": "organization_restricted" })
    );
    assert_eq!(login_refusal(&app, &member).await, None);
    assert_eq!(employee_names(&app, &admin).await, ["Throughout"]);

    // Cancelled: served until a month's notice from the first of next month is over.
    assert!(
        app.custos(&["tenant", "cancel", "--slug", &admin.slug])
            .await
    );
    let (status, _, _, effective, _) = row(&app, &admin).await;
    assert_eq!(status, "cancelling");
    let effective = effective.expect("when the cancellation takes effect");
    assert_eq!(
        effective,
        custos_domain::subscription::cancellation_effective_at(chrono::Utc::now())
    );
    assert!(effective > chrono::Utc::now() + chrono::Duration::days(28));
    assert!(
        until_login(&app, &admin, true).await,
        "served during the notice period"
    );
    assert!(
        app.custos(&["tenant", "withdraw-cancellation", "--slug", &admin.slug])
            .await
    );
    let (status, _, _, effective, _) = row(&app, &admin).await;
    assert_eq!((status.as_str(), effective), ("active", None));

    // Every change is an event with its actor and, for the provider's, its reason.
    let events = history(&app, &admin).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "SubscriptionOpened",
            "TrialExtended",
            "PlanChosen",
            "Suspended",
            "Resumed",
            "CancellationScheduled",
            "CancellationWithdrawn"
        ]
    );
    assert_eq!(events[0].1["actor"], "sign-up");
    assert_eq!(events[3].1["actor"], "operator");
    assert_eq!(events[3].1["reason"], "late payment");

    // An organisation older than the stream is adopted at the next start, as its row says.
    sqlx::query("DELETE FROM subscription_events WHERE aggregate_id = $1")
        .bind(admin.tenant_id.to_string())
        .execute(app.services.tenancy.catalog())
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET lifecycle_sequence = 0 WHERE id = $1")
        .bind(admin.tenant_id)
        .execute(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert!(app.custos(&["tenant", "list"]).await);
    let events = history(&app, &admin).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "SubscriptionOpened");
    assert_eq!(events[0].1["actor"], "custos (adopted at start)");
    let (status, plan, ..) = row(&app, &admin).await;
    assert_eq!((status.as_str(), plan.as_str()), ("active", "standard"));
}

#[tokio::test]
async fn a_trial_expires_on_schedule_and_a_plan_chosen_in_its_grace_period_keeps_everything() {
    let app = TestApp::spawn_with(|config| {
        config.lifecycle.trial = Duration::from_secs(6);
        config.lifecycle.interval = Some(Duration::from_millis(200));
    })
    .await;
    let admin = app.sign_up(&slug("trial")).await;
    let member = app.user_with_roles(&admin, &[]).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Early", "lastName": "Adopter" }),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (status, _, trial_ends_at, _, kept_until) = loop {
        let row = row(&app, &admin).await;
        if row.0 != "trial" || std::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, "expired");
    let kept = kept_until.unwrap() - trial_ends_at.unwrap();
    assert!(
        kept >= chrono::Duration::days(14)
            && kept < chrono::Duration::days(14) + chrono::Duration::minutes(1),
        "kept for the grace period from when the schedule acted: {kept}"
    );
    // Ended: its administrators may read the organisation, export and choose a plan; others
    // are refused, and so is everything else.
    assert_eq!(
        login_refusal(&app, &member).await.as_deref(),
        Some("TRIAL_ENDED")
    );
    assert!(
        until_login(&app, &admin, true).await,
        "administrators sign in"
    );
    let token = app
        .login(&admin.slug, &admin.email, PASSWORD)
        .await
        .unwrap();
    for refused in [CREATE, EMPLOYEES] {
        let response = app.graphql(Some(&token), refused, json!({})).await;
        assert_eq!(
            response.code(),
            Some("TRIAL_ENDED"),
            "{refused}: {:?}",
            response.body
        );
    }
    let standing = app.graphql(Some(&token), STANDING, json!({})).await.ok();
    assert_eq!(standing.data("organization.status"), "EXPIRED");
    assert_eq!(standing.data("organization.plan"), &Value::Null);
    assert_eq!(
        standing
            .data("organization.deletionScheduledAt")
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        kept_until
    );
    assert_eq!(
        history(&app, &admin).await[1].1["actor"],
        "custos (schedule)"
    );
    let exported = app.graphql(Some(&token), EXPORT, json!({})).await.ok();
    assert_eq!(exported.data("exportOrganization.count"), 1);

    // Bad input changes nothing: an unknown plan, a plan chosen by someone else.
    let unknown = app
        .graphql(
            Some(&token),
            "mutation { choosePlan(plan: GOLD) { status } }",
            json!({}),
        )
        .await;
    assert_eq!(unknown.code(), Some("VALIDATION"));
    let chosen = app
        .graphql(
            Some(&token),
            "mutation { choosePlan(plan: BASIC) { status plan trialEndsAt deletionScheduledAt } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(chosen.data("choosePlan.status"), "ACTIVE");
    assert_eq!(chosen.data("choosePlan.plan"), "BASIC");
    assert_eq!(chosen.data("choosePlan.trialEndsAt"), &Value::Null);
    assert_eq!(chosen.data("choosePlan.deletionScheduledAt"), &Value::Null);
    assert_eq!(employee_names(&app, &admin).await, ["Adopter"]);
    assert_eq!(login_refusal(&app, &member).await, None);
    let (status, plan, _, _, kept_until) = row(&app, &admin).await;
    assert_eq!(
        (status.as_str(), plan.as_str(), kept_until),
        ("active", "basic", None)
    );
    let member_token = app
        .login(&member.slug, &member.email, PASSWORD)
        .await
        .unwrap();
    let forbidden = app
        .graphql(
            Some(&member_token),
            "mutation { choosePlan(plan: MAXI) { status } }",
            json!({}),
        )
        .await;
    assert_eq!(forbidden.code(), Some("FORBIDDEN"));
    let events = history(&app, &admin).await;
    assert_eq!(events.last().unwrap().0, "PlanChosen");
    assert_eq!(
        events.last().unwrap().1["actor"],
        format!("user:{}", admin.user_id)
    );
}

/// Whether the cluster answers `query` (about `name`) with true.
async fn exists(query: &str, name: &str) -> bool {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect_with(&custos_tests::admin_options("postgres"))
        .await
        .unwrap();
    sqlx::query_scalar::<_, bool>(query)
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// Every file under `dir`, as paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path.display().to_string());
            }
        }
    }
    files
}

#[tokio::test]
async fn a_cancelled_organisation_keeps_its_migration_window_then_is_purged_leaving_a_tombstone() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("leaving")).await;
    let member = app.user_with_roles(&admin, &[]).await;
    let unique = format!("Vanishing{}", &admin.slug[8..]);
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Gone", "lastName": unique }),
    )
    .await;
    let database = app.tenant_database(admin.tenant_id).await;
    let role: String = sqlx::query_scalar("SELECT role_name FROM tenants WHERE id = $1")
        .bind(admin.tenant_id)
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap();

    // The administrator chooses a plan, cancels, withdraws and cancels again; a member may not.
    let member_token = app
        .login(&member.slug, &member.email, PASSWORD)
        .await
        .unwrap();
    for mutation in [
        "mutation { cancelSubscription { status } }",
        "mutation { withdrawCancellation { status } }",
    ] {
        let forbidden = app.graphql(Some(&member_token), mutation, json!({})).await;
        assert_eq!(forbidden.code(), Some("FORBIDDEN"), "{mutation}");
    }
    let on_trial = app
        .graphql(
            Some(&admin.token),
            "mutation { cancelSubscription { status } }",
            json!({}),
        )
        .await;
    assert_eq!(
        on_trial.code(),
        Some("VALIDATION"),
        "a trial is not cancelled: it ends"
    );
    app.graphql(
        Some(&admin.token),
        "mutation { choosePlan(plan: MAXI) { plan } }",
        json!({}),
    )
    .await
    .ok();
    let cancelled = app
        .graphql(
            Some(&admin.token),
            "mutation { cancelSubscription { status cancellationEffectiveAt } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(cancelled.data("cancelSubscription.status"), "CANCELLING");
    let withdrawn = app
        .graphql(
            Some(&admin.token),
            "mutation { withdrawCancellation { status cancellationEffectiveAt } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(withdrawn.data("withdrawCancellation.status"), "ACTIVE");
    assert_eq!(
        withdrawn.data("withdrawCancellation.cancellationEffectiveAt"),
        &Value::Null
    );
    let cancelled = app
        .graphql(
            Some(&admin.token),
            "mutation { cancelSubscription { status cancellationEffectiveAt } }",
            json!({}),
        )
        .await
        .ok();
    let effective: chrono::DateTime<chrono::Utc> = cancelled
        .data("cancelSubscription.cancellationEffectiveAt")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        effective,
        custos_domain::subscription::cancellation_effective_at(chrono::Utc::now())
    );
    // Served in full during the notice.
    app.graphql(Some(&member_token), "{ me { id } }", json!({}))
        .await
        .ok();

    // The schedule, run as of the day the cancellation takes effect: the migration window
    // opens. Administrators read and export; nothing changes; nobody else signs in.
    app.services
        .lifecycle_round(effective + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let standing = app
        .graphql(Some(&admin.token), STANDING, json!({}))
        .await
        .ok();
    assert_eq!(standing.data("organization.status"), "MIGRATION");
    let until: chrono::DateTime<chrono::Utc> = standing
        .data("organization.migrationAccessUntil")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        until,
        effective + chrono::Duration::seconds(1) + chrono::Duration::days(30),
        "the window runs from when the schedule acted"
    );
    assert_eq!(
        standing.data("organization.deletionScheduledAt"),
        standing.data("organization.migrationAccessUntil")
    );
    assert_eq!(employee_names(&app, &admin).await, [unique.as_str()]);
    let refused = app.graphql(Some(&admin.token), CREATE, json!({})).await;
    assert_eq!(
        refused.code(),
        Some("SUBSCRIPTION_ENDED"),
        "{:?}",
        refused.body
    );
    let exported = app
        .graphql(
            Some(&admin.token),
            "mutation { exportOrganization(passphrase: \"a long enough passphrase\") { downloadUrl } }",
            json!({}),
        )
        .await
        .ok();
    let url = app.url(
        exported
            .data("exportOrganization.downloadUrl")
            .as_str()
            .unwrap(),
    );
    let archive_bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let archive = app.data_dir.path().join("taken-away.custos-archive");
    std::fs::write(&archive, &archive_bytes).unwrap();
    assert_eq!(
        login_refusal(&app, &member).await.as_deref(),
        Some("SUBSCRIPTION_ENDED")
    );
    let refused = app
        .graphql(Some(&member_token), "{ me { id } }", json!({}))
        .await;
    assert_eq!(
        refused.code(),
        Some("SUBSCRIPTION_ENDED"),
        "an open session is refused too"
    );

    // Not purged before the window closes (without --now and a reason).
    let early = app
        .custos_result(&["tenant", "purge", "--slug", &admin.slug])
        .await
        .expect_err("refused");
    assert!(format!("{early:#}").contains("kept until"), "{early:#}");

    // The window closes: purged on schedule, leaving a tombstone and nothing else.
    app.services
        .lifecycle_round(until + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let left: Option<String> = sqlx::query_scalar("SELECT status FROM tenants WHERE id = $1")
        .bind(admin.tenant_id)
        .fetch_optional(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(left, None, "the catalog row is gone");
    let (purged_by, reason, head): (String, String, Value) =
        sqlx::query_as("SELECT purged_by, reason, final_tree_head FROM tombstones WHERE id = $1")
            .bind(admin.tenant_id)
            .fetch_one(app.services.tenancy.catalog())
            .await
            .unwrap();
    assert_eq!(purged_by, "custos (schedule)");
    assert!(reason.contains("migration window closed"), "{reason}");
    assert!(head["tree_size"].as_i64().unwrap() > 0, "{head}");
    assert_eq!(head["sha256"].as_str().unwrap().len(), 64);
    let events = history(&app, &admin).await;
    assert_eq!(events.last().unwrap().0, "Purged");
    assert!(
        !exists(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &database
        )
        .await,
        "its database is dropped"
    );
    assert!(
        !exists(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &role
        )
        .await,
        "its role is dropped"
    );
    let dump = custos_tests::pg_dump(&app.catalog);
    assert!(
        !dump.contains(&unique),
        "no value of it is left in the catalog"
    );
    assert!(dump.contains(&admin.slug), "its tombstone is");
    let files = walk(app.data_dir.path());
    assert!(
        !files
            .iter()
            .any(|f| f.contains(&admin.tenant_id.to_string())),
        "no file of it is left: {files:?}"
    );
    assert!(
        matches!(
            login_refusal(&app, &admin).await.as_deref(),
            Some("UNAUTHENTICATED")
        ),
        "nobody signs in"
    );
    let refused = app
        .graphql(Some(&admin.token), "{ me { id } }", json!({}))
        .await;
    assert_eq!(refused.code(), Some("UNAUTHENTICATED"));

    // Its archive does not bring it back here under its id (nothing is created).
    let passphrase = app.data_dir.path().join("archive.passphrase");
    std::fs::write(&passphrase, "a long enough passphrase").unwrap();
    let refused = app
        .custos_result(&[
            "tenant",
            "import",
            "--in",
            archive.to_str().unwrap(),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ])
        .await
        .expect_err("a purged organisation's id is not taken again");
    assert!(format!("{refused:#}").contains("was purged"), "{refused:#}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = $1")
        .bind(admin.tenant_id)
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(&passphrase).unwrap();

    // Purging again is done already; the list shows the tombstone; the slug is free.
    assert!(
        app.custos(&["tenant", "purge", "--slug", &admin.slug])
            .await
    );
    assert!(app.custos(&["tenant", "list"]).await);
    let again = app.sign_up(&admin.slug).await;
    assert_ne!(again.tenant_id, admin.tenant_id);
}

#[tokio::test]
async fn the_operator_purges_an_ended_trial_early_only_with_a_reason() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("early")).await;
    let refused = app
        .custos_result(&[
            "tenant",
            "purge",
            "--slug",
            &admin.slug,
            "--now",
            "--reason",
            "asked",
        ])
        .await
        .expect_err("an organisation on trial is not purged");
    assert!(
        format!("{refused:#}").contains("cannot be purged"),
        "{refused:#}"
    );
    let (_, _, trial_ends_at, ..) = row(&app, &admin).await;
    app.services
        .lifecycle_round(trial_ends_at.unwrap() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(row(&app, &admin).await.0, "expired");
    let missing = <custos_api::Cli as clap::Parser>::try_parse_from([
        "custos",
        "tenant",
        "purge",
        "--slug",
        &admin.slug,
        "--now",
        "--data-dir",
        "/nonexistent",
    ]);
    assert!(missing.is_err(), "--now needs a reason");
    // A purge cut short (here: a file it cannot remove, after the database is dropped) leaves
    // the organisation purged, not served, and is finished by running it again.
    let blocker = app
        .data_dir
        .path()
        .join("checkpoints")
        .join(format!("{}.jsonl.replaced-blocker", admin.tenant_id));
    std::fs::create_dir_all(blocker.join("inside")).unwrap();
    let cut = app
        .custos_result(&[
            "tenant",
            "purge",
            "--slug",
            &admin.slug,
            "--now",
            "--reason",
            "the client asked for deletion",
        ])
        .await;
    assert!(cut.is_err(), "the purge is cut short");
    assert_eq!(row(&app, &admin).await.0, "purged");
    assert!(
        !until_login(&app, &admin, false).await,
        "a purged organisation is not served"
    );
    std::fs::remove_dir_all(&blocker).unwrap();
    assert!(
        app.custos(&["tenant", "purge", "--slug", &admin.slug])
            .await
    );
    let (purged_by, reason): (String, String) =
        sqlx::query_as("SELECT purged_by, reason FROM tombstones WHERE id = $1")
            .bind(admin.tenant_id)
            .fetch_one(app.services.tenancy.catalog())
            .await
            .unwrap();
    assert_eq!(purged_by, "operator");
    assert_eq!(reason, "purged early: the client asked for deletion");
    let events = history(&app, &admin).await;
    assert_eq!(
        events.last().unwrap().1["reason"],
        "the client asked for deletion"
    );
}

#[tokio::test]
async fn a_trial_at_its_storage_limit_takes_no_new_data_and_a_plan_beyond_its_limit_counts_overage()
{
    const STEP: u64 = 1_000_000;
    let app = TestApp::spawn_with(|config| {
        // Every database is beyond a 1-byte limit; the overage counts in 1 MB steps.
        config.storage.trial = 1;
        config.storage.standard = 1;
        config.storage.maxi = 1_000_000_000_000;
        config.storage.step = STEP;
    })
    .await;
    let admin = app.sign_up(&slug("quota")).await;
    let member = app.user_with_roles(&admin, &[]).await;
    let created = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Before", "lastName": "Measured" }),
        )
        .await;
    let storage = "{ organization { storageUsedBytes storageLimitBytes storageMeasuredAt } }";
    let before = app
        .graphql(Some(&member.token), storage, json!({}))
        .await
        .ok();
    assert_eq!(
        before.data("organization.storageUsedBytes"),
        &Value::Null,
        "not measured yet"
    );
    assert_eq!(before.data("organization.storageLimitBytes"), 1.0);

    assert_eq!(
        app.services.measure_storage().await.unwrap(),
        1,
        "one crossing"
    );
    let after = app
        .graphql(Some(&admin.token), storage, json!({}))
        .await
        .ok();
    let used = after
        .data("organization.storageUsedBytes")
        .as_f64()
        .unwrap() as u64;
    assert!(used > STEP, "a database holds megabytes: {used}");
    assert!(after.data("organization.storageMeasuredAt").is_string());
    let events = history(&app, &admin).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "SubscriptionOpened",
            "StorageLimitReached",
            "StorageOverage"
        ]
    );
    assert_eq!(events[2].1["actor"], "custos (storage measurement)");
    let payload: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM subscription_events WHERE aggregate_id = $1 AND event_type = 'StorageOverage'",
    )
    .bind(admin.tenant_id.to_string())
    .fetch_one(app.services.tenancy.catalog())
    .await
    .unwrap();
    assert_eq!(
        payload["StorageOverage"]["steps"].as_u64().unwrap(),
        (used - 1).div_ceil(STEP),
        "each begun step beyond the limit, billable: {payload}"
    );

    // The trial takes no new data, from anyone; reading, exporting and archiving go on.
    for (token, mutation) in [
        (&admin.token, CREATE),
        (
            &member.token,
            "mutation { updateMe(name: \"Renamed Member\") { id } }",
        ),
    ] {
        let refused = app.graphql(Some(token), mutation, json!({})).await;
        assert_eq!(refused.code(), Some("QUOTA_EXCEEDED"), "{:?}", refused.body);
    }
    assert_eq!(employee_names(&app, &admin).await, ["Measured"]);
    let exported = app
        .graphql(Some(&admin.token), EXPORT, json!({}))
        .await
        .ok();
    assert_eq!(exported.data("exportOrganization.count"), 1);
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { archiveRecord(id: $id) { archived } }",
        json!({ "id": created["id"] }),
    )
    .await
    .ok();

    // Measured again, nothing new crossed: nothing recorded.
    assert_eq!(app.services.measure_storage().await.unwrap(), 0);
    assert_eq!(history(&app, &admin).await.len(), 3);

    // A paid plan beyond its limit keeps working (the overage is billed); a larger plan
    // brings it back below every level.
    app.graphql(
        Some(&admin.token),
        "mutation { choosePlan(plan: STANDARD) { plan } }",
        json!({}),
    )
    .await
    .ok();
    app.graphql(Some(&admin.token), CREATE, json!({}))
        .await
        .ok();
    app.graphql(
        Some(&admin.token),
        "mutation { choosePlan(plan: MAXI) { plan } }",
        json!({}),
    )
    .await
    .ok();
    assert_eq!(app.services.measure_storage().await.unwrap(), 1);
    let events = history(&app, &admin).await;
    assert_eq!(events.last().unwrap().0, "StorageBelowLevel");
    let level: i64 = sqlx::query_scalar("SELECT storage_level FROM tenants WHERE id = $1")
        .bind(admin.tenant_id)
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(level, 0);
    let limit = app
        .graphql(Some(&admin.token), storage, json!({}))
        .await
        .ok();
    assert_eq!(limit.data("organization.storageLimitBytes"), 1e12);
}
