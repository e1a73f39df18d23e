//! Each organisation's life with the provider, as events in the catalog: the operator's
//! `custos tenant list|plan|suspend|resume|extend-trial|cancel|withdraw-cancellation`, a trial
//! that expires on schedule and comes back with a plan chosen, and organisations older than
//! their stream adopted at start.

use std::time::Duration;

use custos_tests::{slug, Session, TestApp, PASSWORD};
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

    // Suspended: not served, by this instance either (it rechecks its open organisations);
    // resumed: served again as it was.
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
    assert!(
        !until_login(&app, &admin, false).await,
        "a suspended organisation is not served"
    );
    let refused = app
        .graphql(Some(&admin.token), "{ me { id } }", json!({}))
        .await;
    assert!(refused.code().is_some(), "its sessions are refused too");
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
    assert!(until_login(&app, &admin, true).await);
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
        config.lifecycle.trial = Duration::from_secs(2);
        config.lifecycle.interval = Some(Duration::from_millis(200));
    })
    .await;
    let admin = app.sign_up(&slug("trial")).await;
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
    assert_eq!(
        kept_until.unwrap() - trial_ends_at.unwrap(),
        chrono::Duration::days(14),
        "kept for the grace period"
    );
    assert!(
        !until_login(&app, &admin, false).await,
        "an expired trial is not served"
    );
    assert_eq!(
        history(&app, &admin).await[1].1["actor"],
        "custos (schedule)"
    );

    assert!(
        app.custos(&["tenant", "plan", "--slug", &admin.slug, "--plan", "basic"])
            .await
    );
    assert!(until_login(&app, &admin, true).await);
    assert_eq!(employee_names(&app, &admin).await, ["Adopter"]);
    let (status, plan, _, _, kept_until) = row(&app, &admin).await;
    assert_eq!(
        (status.as_str(), plan.as_str(), kept_until),
        ("active", "basic", None)
    );
}
