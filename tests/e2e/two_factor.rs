//! Two-factor authentication: enrolment, the two-step login, replay and recovery codes, the
//! lock that wrong codes count toward, and the administrators' requirement and reset.

use custos_tests::{slug, Session, TestApp, PASSWORD};
use serde_json::json;
use totp_rs::TOTP;

const LOGIN: &str = "mutation($t: String!, $e: String!, $p: String!) {
    login(tenant: $t, email: $e, password: $p) { token secondFactorRequired challenge challengeExpiresAt user { id } } }";
const COMPLETE: &str = "mutation($c: String!, $code: String!) { completeLogin(challenge: $c, code: $code) { token user { id } } }";

/// An authenticator app: codes for the secret from an enrolment's otpauth URI.
pub(crate) struct Authenticator(TOTP);

impl Authenticator {
    /// The code of the time step `offset` steps from now. Waits for a fresh step first if the
    /// current one ends within 5 seconds, so a code cannot drift out of the accepted window
    /// between making and checking it.
    pub(crate) async fn code(&self, offset: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        if 30 - now % 30 < 5 {
            tokio::time::sleep(std::time::Duration::from_secs((30 - now % 30 + 1) as u64)).await;
        }
        let now = chrono::Utc::now().timestamp();
        self.0.generate((now + offset * 30) as u64)
    }
}

/// Enrols `session`'s user; returns their authenticator and recovery codes. Uses the
/// previous step's code, so the current and next steps stay free for logins.
pub(crate) async fn enrol(app: &TestApp, session: &Session) -> (Authenticator, Vec<String>) {
    let begun = app
        .graphql(
            Some(&session.token),
            "mutation { beginTwoFactorEnrolment { secret otpauthUri qrCodeSvg } }",
            json!({}),
        )
        .await
        .ok();
    let uri = begun
        .data("beginTwoFactorEnrolment.otpauthUri")
        .as_str()
        .unwrap();
    let secret = begun
        .data("beginTwoFactorEnrolment.secret")
        .as_str()
        .unwrap();
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(secret),
        "{uri}"
    );
    assert!(begun
        .data("beginTwoFactorEnrolment.qrCodeSvg")
        .as_str()
        .unwrap()
        .contains("<svg"));
    let authenticator = Authenticator(TOTP::from_url(uri).expect("a valid otpauth URI"));
    let code = authenticator.code(-1).await;
    let confirmed = app
        .graphql(
            Some(&session.token),
            "mutation($c: String!) { confirmTwoFactorEnrolment(code: $c) }",
            json!({ "c": code }),
        )
        .await
        .ok();
    let codes: Vec<String> = confirmed
        .data("confirmTwoFactorEnrolment")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (authenticator, codes)
}

pub(crate) async fn challenge(app: &TestApp, session: &Session) -> String {
    let login = app
        .graphql(
            None,
            LOGIN,
            json!({ "t": session.slug, "e": session.email, "p": PASSWORD }),
        )
        .await
        .ok();
    assert_eq!(login.data("login.secondFactorRequired"), &json!(true));
    assert!(
        login.data("login.token").is_null(),
        "no token before the second factor"
    );
    assert!(
        login.data("login.user").is_null(),
        "no user data before the second factor"
    );
    assert!(login.data("login.challengeExpiresAt").is_string());
    login.data("login.challenge").as_str().unwrap().to_owned()
}

pub(crate) async fn complete(app: &TestApp, challenge: &str, code: &str) -> custos_tests::Response {
    app.graphql(None, COMPLETE, json!({ "c": challenge, "code": code }))
        .await
}

async fn history(app: &TestApp, session: &Session) -> Vec<serde_json::Value> {
    app.graphql(
        Some(&session.token),
        "{ loginHistory(first: 50) { edges { node { eventType reason secondFactor } } } }",
        json!({}),
    )
    .await
    .ok()
    .data("loginHistory.edges")
    .as_array()
    .unwrap()
    .iter()
    .map(|e| e["node"].clone())
    .collect()
}

#[tokio::test]
async fn an_enrolled_user_logs_in_with_a_code_each_accepted_once() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("totp")).await;
    let wrong = app
        .graphql(
            Some(&session.token),
            "mutation { beginTwoFactorEnrolment { secret } confirmTwoFactorEnrolment(code: \"000000x\") }",
            json!({}),
        )
        .await;
    assert_eq!(wrong.code(), Some("VALIDATION"), "{:?}", wrong.body);
    assert_eq!(wrong.field(), Some("code"));

    let (authenticator, recovery) = enrol(&app, &session).await;
    assert_eq!(recovery.len(), 10);
    let me = app
        .graphql(
            Some(&session.token),
            "{ me { twoFactorEnabled } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(me.data("me.twoFactorEnabled"), &json!(true));

    let first = challenge(&app, &session).await;
    let refused = complete(&app, &first, "12345").await;
    assert_eq!(refused.code(), Some("UNAUTHENTICATED"));
    let code = authenticator.code(0).await;
    let signed_in = complete(&app, &first, &code).await.ok();
    let token = signed_in.data("completeLogin.token").as_str().unwrap();
    assert_eq!(
        signed_in.data("completeLogin.user.id"),
        &json!(session.user_id.to_string())
    );
    app.graphql(Some(token), "{ me { id } }", json!({}))
        .await
        .ok();

    // The same code, or the same challenge, never opens a second session.
    assert_eq!(
        complete(&app, &first, &code).await.code(),
        Some("UNAUTHENTICATED")
    );
    let second = challenge(&app, &session).await;
    assert_eq!(
        complete(&app, &second, &code).await.code(),
        Some("UNAUTHENTICATED")
    );
    let next = authenticator.code(1).await;
    complete(&app, &second, &next).await.ok();

    let entries = history(&app, &session).await;
    assert_eq!(entries[0]["eventType"], "LoginSucceeded");
    assert_eq!(entries[0]["secondFactor"], "totp");
    assert!(entries
        .iter()
        .any(|e| e["reason"] == "wrong_second_factor" && e["eventType"] == "LoginFailed"));
}

#[tokio::test]
async fn recovery_codes_work_once_and_regenerating_voids_the_old_ones() {
    let app = TestApp::spawn().await;
    let session = app.sign_up(&slug("recovery")).await;
    let (authenticator, recovery) = enrol(&app, &session).await;

    let typed = recovery[0].to_lowercase().replace('-', " ");
    complete(&app, &challenge(&app, &session).await, &typed)
        .await
        .ok();
    let again = complete(&app, &challenge(&app, &session).await, &recovery[0]).await;
    assert_eq!(
        again.code(),
        Some("UNAUTHENTICATED"),
        "a recovery code works once"
    );
    assert_eq!(
        history(&app, &session).await[1]["secondFactor"],
        "recovery_code"
    );

    let wrong = app
        .graphql(
            Some(&session.token),
            "mutation { regenerateRecoveryCodes(code: \"000000\") }",
            json!({}),
        )
        .await;
    assert_eq!(wrong.code(), Some("VALIDATION"));
    let code = authenticator.code(0).await;
    let fresh = app
        .graphql(
            Some(&session.token),
            "mutation($c: String!) { regenerateRecoveryCodes(code: $c) }",
            json!({ "c": code }),
        )
        .await
        .ok();
    let fresh: Vec<&str> = fresh
        .data("regenerateRecoveryCodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(fresh.len(), 10);
    let old = complete(&app, &challenge(&app, &session).await, &recovery[1]).await;
    assert_eq!(
        old.code(),
        Some("UNAUTHENTICATED"),
        "old codes stop working"
    );
    complete(&app, &challenge(&app, &session).await, fresh[0])
        .await
        .ok();
}

#[tokio::test]
async fn wrong_codes_count_toward_the_lock_and_a_challenge_survives_five() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("totp-lock")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let user = app.user_with_roles(&admin, &[viewer]).await;
    let (authenticator, _) = enrol(&app, &user).await;

    let first = challenge(&app, &user).await;
    for _ in 0..5 {
        assert_eq!(
            complete(&app, &first, "000000").await.code(),
            Some("UNAUTHENTICATED")
        );
    }
    let code = authenticator.code(0).await;
    assert_eq!(
        complete(&app, &first, &code).await.code(),
        Some("UNAUTHENTICATED"),
        "five wrong codes end the challenge"
    );
    let second = challenge(&app, &user).await;
    let third = challenge(&app, &user).await;
    for _ in 0..5 {
        complete(&app, &second, "000000").await;
    }
    // Locked: a code on a challenge from before the lock is not even checked, and the
    // attempt does not count toward the next lock (it is recorded as `locked`).
    assert_eq!(
        complete(&app, &third, "000000").await.code(),
        Some("UNAUTHENTICATED")
    );
    // Ten wrong codes: the account is locked; the password alone gets nowhere now.
    let locked = app
        .graphql(
            None,
            LOGIN,
            json!({ "t": user.slug, "e": user.email, "p": PASSWORD }),
        )
        .await;
    assert_eq!(locked.code(), Some("UNAUTHENTICATED"));
    let entries = history(&app, &admin).await;
    assert!(
        entries.iter().any(|e| e["eventType"] == "LoginLocked"),
        "{entries:?}"
    );
    let wrong_codes = entries
        .iter()
        .filter(|e| e["reason"] == "wrong_second_factor")
        .count();
    assert_eq!(wrong_codes, 10);
    assert!(entries
        .iter()
        .any(|e| e["eventType"] == "LoginFailed" && e["reason"] == "locked"));
}

#[tokio::test]
async fn administrators_require_two_factor_and_reset_a_lost_device() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("totp-admin")).await;
    let viewer = app.role_id(&admin, "Viewer").await;
    let user = app.user_with_roles(&admin, &[viewer]).await;
    enrol(&app, &admin).await;

    let required = app
        .graphql(
            Some(&admin.token),
            "mutation { setTwoFactorRequired(required: true) }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(required.data("setTwoFactorRequired"), &json!(true));
    let organization = app
        .graphql(
            Some(&admin.token),
            "{ organization { twoFactorRequired } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        organization.data("organization.twoFactorRequired"),
        &json!(true)
    );

    // Without a second factor, the user can only enrol (and see themselves, log out).
    let blocked = app
        .graphql(Some(&user.token), "{ employees { totalCount } }", json!({}))
        .await;
    assert_eq!(blocked.code(), Some("FORBIDDEN"));
    assert!(blocked.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("two-factor"));
    app.graphql(Some(&user.token), "{ me { id } }", json!({}))
        .await
        .ok();
    enrol(&app, &user).await;
    app.graphql(Some(&user.token), "{ employees { totalCount } }", json!({}))
        .await
        .ok();
    let off = app
        .graphql(
            Some(&user.token),
            "mutation($p: String!) { disableTwoFactor(password: $p) { id } }",
            json!({ "p": PASSWORD }),
        )
        .await;
    assert_eq!(
        off.code(),
        Some("VALIDATION"),
        "required: it cannot be turned off"
    );

    // A lost device: the administrator resets it; the password alone logs in again, into a
    // session that can only enrol.
    let reset = app
        .graphql(
            Some(&admin.token),
            "mutation($u: ID!) { resetTwoFactor(userId: $u) { twoFactorEnabled } }",
            json!({ "u": user.user_id.to_string() }),
        )
        .await
        .ok();
    assert_eq!(reset.data("resetTwoFactor.twoFactorEnabled"), &json!(false));
    let login = app
        .graphql(
            None,
            "mutation($t: String!, $e: String!, $p: String!) { login(tenant: $t, email: $e, password: $p) { token tenant { twoFactorRequired } } }",
            json!({ "t": user.slug, "e": user.email, "p": PASSWORD }),
        )
        .await
        .ok();
    assert_eq!(login.data("login.tenant.twoFactorRequired"), &json!(true));
    let token = login
        .data("login.token")
        .as_str()
        .expect("one-step login after a reset")
        .to_owned();
    let blocked = app
        .graphql(Some(&token), "{ employees { totalCount } }", json!({}))
        .await;
    assert_eq!(blocked.code(), Some("FORBIDDEN"));

    // Optional again: the user may turn it off with their password (not with a wrong one).
    app.graphql(
        Some(&admin.token),
        "mutation { setTwoFactorRequired(required: false) }",
        json!({}),
    )
    .await
    .ok();
    let session = Session {
        token,
        ..user.clone()
    };
    enrol(&app, &session).await;
    let wrong = app
        .graphql(
            Some(&session.token),
            "mutation { disableTwoFactor(password: \"not the password\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(wrong.code(), Some("VALIDATION"));
    app.graphql(
        Some(&session.token),
        "mutation($p: String!) { disableTwoFactor(password: $p) { twoFactorEnabled } }",
        json!({ "p": PASSWORD }),
    )
    .await
    .ok();
    app.login(&user.slug, &user.email, PASSWORD)
        .await
        .expect("one-step login once it is off");

    // Each change is an event on the user's stream, by its actor.
    let mut db = app.tenant_admin(admin.tenant_id).await;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 AND event_type LIKE 'TwoFactor%' ORDER BY sequence",
    )
    .bind(user.user_id.to_string())
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        types,
        [
            "TwoFactorEnabled",
            "TwoFactorReset",
            "TwoFactorEnabled",
            "TwoFactorDisabled"
        ]
    );
    let secrets: i64 =
        sqlx::query_scalar("SELECT count(*) FROM two_factor_secrets WHERE user_id = $1")
            .bind(user.user_id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(secrets, 0, "turning it off removes the secret");
}
