//! An organisation leaving with everything and arriving on another Custos: the tenant archive
//! written with `custos tenant export`, read with `custos tenant import` into a separate
//! service (its own catalog, data directory and master key), verified against the original
//! signed heads; and archives that are wrong in every way refused with nothing created.

use std::path::{Path, PathBuf};

use custos_tests::{pg_dump, slug, Session, TestApp, PASSWORD};
use serde_json::{json, Value};

use crate::two_factor::{challenge, complete, enrol};

const PASSPHRASE: &str = "seven mangoes under the bridge";

fn passphrase_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join(format!("passphrase-{}", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

/// `custos tenant export` of `slug` on `app` into a new file.
async fn export(app: &TestApp, slug: &str) -> PathBuf {
    let dir = app.data_dir.path();
    let out = dir.join(format!("{slug}.custos-archive"));
    let pass = passphrase_file(dir, PASSPHRASE);
    assert!(
        app.custos(&[
            "tenant",
            "export",
            "--slug",
            slug,
            "--out",
            out.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
        .await
    );
    assert!(out.exists() && !dir.join(format!("{slug}.custos-archive.partial")).exists());
    out
}

/// `custos tenant import` of `archive` into `app`, with `extra` arguments; the error if any.
async fn import(
    app: &TestApp,
    archive: &Path,
    passphrase: &str,
    extra: &[&str],
) -> Result<(), String> {
    let pass = passphrase_file(app.data_dir.path(), passphrase);
    let mut args = vec!["--passphrase-file", pass.to_str().unwrap()];
    args.extend_from_slice(extra);
    import_with(app, archive, &args).await
}

/// `custos tenant import` of `archive` into `app` with `args`; the error if any.
async fn import_with(app: &TestApp, archive: &Path, args: &[&str]) -> Result<(), String> {
    let mut argv = vec!["tenant", "import", "--in", archive.to_str().unwrap()];
    argv.extend_from_slice(args);
    match app.custos_result(&argv).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("exited 1".into()),
        Err(err) => Err(format!("{err:#}")),
    }
}

async fn login(
    app: &TestApp,
    admin: &Session,
    email: &str,
) -> Result<String, custos_tests::Response> {
    app.login(&admin.slug, email, PASSWORD).await
}

/// A Custos with an organisation (slug from `prefix`) holding one employee, `first` `last`.
async fn with_an_employee(prefix: &str, first: &str, last: &str) -> (TestApp, String, Session) {
    let app = TestApp::spawn().await;
    let org = slug(prefix);
    let admin = app.sign_up(&org).await;
    app.create_employee(
        &admin.token,
        json!({ "firstName": first, "lastName": last }),
    )
    .await;
    (app, org, admin)
}

/// How many organisations `app`'s catalog holds, in any state.
async fn tenants(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap()
}

/// The bytes behind `exportOrganization`'s download link in `started`.
async fn download(app: &TestApp, started: &custos_tests::Response) -> reqwest::Response {
    let url = app.url(
        started
            .data("exportOrganization.downloadUrl")
            .as_str()
            .unwrap(),
    );
    reqwest::get(&url).await.unwrap()
}

/// The first name of the first employee `admin` (logging in with their password) sees on
/// `app`, where the organisation arrived; and `custos verify` of it passes there.
async fn arrived_first_name(app: &TestApp, admin: &Session, org: &str) -> Value {
    let token = login(app, admin, &admin.email).await.expect("logs in");
    let listed = app
        .graphql(
            Some(&token),
            "{ employees(first: 5) { nodes { firstName } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(app.custos(&["verify", "--tenant", org]).await);
    listed.data("employees.nodes.0.firstName").clone()
}

/// What an auditor compares between the two servers: every record's history and as-of view,
/// the audit log (positions aside: they are renumbered in commit order), counts.
async fn observed(app: &TestApp, token: &str, ids: &[String]) -> Value {
    let mut records = Vec::new();
    for id in ids {
        let history = app
            .graphql(
                Some(token),
                "query($id: ID!) { recordHistory(id: $id) { edges { node { sequence eventType recordedAt actor { kind name } changes { field before after } } } } }",
                json!({ "id": id }),
            )
            .await
            .ok();
        let as_of = app
            .graphql(
                Some(token),
                "query($id: ID!, $at: DateTime!) { recordAsOf(id: $id, at: $at) { version fields { field value } } }",
                json!({ "id": id, "at": chrono::Utc::now().to_rfc3339() }),
            )
            .await;
        records.push(json!({ "history": history.body["data"], "asOf": as_of.body }));
    }
    let audit = app
        .graphql(
            Some(token),
            "{ auditLog(first: 500) { edges { node { eventType aggregateType aggregateId datasheet subjectIds fields actor { kind name } changes { field before after } } } } }",
            json!({}),
        )
        .await
        .ok();
    let counts = app
        .graphql(
            Some(token),
            "{ employees(first: 1) { totalCount } contacts(first: 1) { totalCount } applicants(first: 1) { totalCount } users(first: 50) { totalCount edges { node { email roles { name } } } } roles { name } customFieldDefinitions(datasheet: EMPLOYEES) { key label type } }",
            json!({}),
        )
        .await
        .ok();
    json!({ "records": records, "audit": audit.body["data"], "counts": counts.body["data"] })
}

#[tokio::test]
async fn an_organisation_moves_to_another_custos_whole_and_verified() {
    let source = TestApp::spawn().await;
    let org = slug("leaving");
    let admin = source.sign_up(&org).await;
    let token = admin.token.as_str();
    let app = &source;
    let call = |query: &'static str, variables: Value| async move {
        app.graphql(Some(token), query, variables).await.ok()
    };
    call(
        "mutation { addCustomField(datasheet: EMPLOYEES, input: { key: \"shoe_size\", label: \"Shoe size\", type: NUMBER }) { key } }",
        json!({}),
    )
    .await;
    let kept = source
        .create_employee(
            token,
            json!({ "firstName": "Keira", "lastName": "Kept", "email": "keira@example.com", "department": "R&D", "customFields": [{ "key": "shoe_size", "value": 38 }] }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        "mutation($id: ID!) { updateEmployee(id: $id, input: { department: \"Support\" }) { id } }",
        json!({ "id": kept }),
    )
    .await;
    let contact = call(
        "mutation { createContact(input: { firstName: \"Conny\", lastName: \"Contact\", company: \"Acme\" }) { id } }",
        json!({}),
    )
    .await
    .data("createContact.id")
    .as_str()
    .unwrap()
    .to_owned();
    call(
        "mutation($id: ID!) { giveConsent(subjectId: $id, input: { purpose: \"newsletter\", legalBasis: CONSENT }) { subjectId } }",
        json!({ "id": contact }),
    )
    .await;
    let applicant = call(
        "mutation { createApplicant(input: { firstName: \"Abe\", lastName: \"Applicant\", stage: OFFER }) { id } }",
        json!({}),
    )
    .await
    .data("createApplicant.id")
    .as_str()
    .unwrap()
    .to_owned();
    call(
        "mutation($id: ID!) { restrictRecord(id: $id, reason: LEGAL_CLAIMS) { id } }",
        json!({ "id": applicant }),
    )
    .await;
    let erased = source
        .create_employee(
            token,
            json!({ "firstName": "Ernestine", "lastName": "Vanishwood", "email": "ernestine.vanishwood@example.com" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
        json!({ "id": erased }),
    )
    .await;
    let role = call(
        "mutation { createRole(input: { name: \"Reader\", grants: [{ datasheet: EMPLOYEES, permission: READ }] }) { id } }",
        json!({}),
    )
    .await
    .data("createRole.id")
    .as_str()
    .unwrap()
    .to_owned();
    let colleague = source.user_with_roles(&admin, &[role]).await;
    let (authenticator, _codes) = enrol(&source, &colleague).await;
    // Signed heads, one of them handed over to a rotated key, and events after the last head.
    call("mutation { createCheckpoint { number } }", json!({})).await;
    assert!(
        source
            .custos(&["tenant", "rotate-audit-key", "--slug", &org])
            .await
    );
    source
        .create_employee(token, json!({ "firstName": "Late", "lastName": "Comer" }))
        .await;
    let auditor_key = call(
        "{ organization { auditKey auditKeys { publicKey } } }",
        json!({}),
    )
    .await
    .data("organization.auditKeys")
    .clone();
    let ids = vec![
        kept.clone(),
        contact.clone(),
        applicant.clone(),
        erased.clone(),
    ];
    source.settled(admin.tenant_id).await;
    let before = observed(&source, token, &ids).await;

    let archive = export(&source, &org).await;
    let text = std::fs::read_to_string(&archive).unwrap();
    assert!(
        !text.contains("Vanishwood") && !text.contains("Keira"),
        "no personal value in clear"
    );
    assert!(!text.contains(PASSPHRASE));

    // The export handed the source over to a fresh key (the one the archive carries) and, once
    // its snapshot was fixed, on to another: the keys that signed the archived history never
    // left the source.
    let source_keys = call("{ organization { auditKeys { publicKey } } }", json!({}))
        .await
        .data("organization.auditKeys")
        .clone();
    let source_keys = source_keys.as_array().unwrap();
    let pinned = auditor_key.as_array().unwrap();
    assert_eq!(source_keys.len(), pinned.len() + 2);
    let first = pinned[0]["publicKey"].as_str().unwrap();

    let target = TestApp::spawn().await;
    let wrong = import(
        &target,
        &archive,
        PASSPHRASE,
        &["--expect-key", &"ab".repeat(32)],
    )
    .await;
    assert!(wrong.unwrap_err().contains("not the expected"));
    import(&target, &archive, PASSPHRASE, &["--expect-key", first])
        .await
        .unwrap();

    // The same people log in with the same passwords, and the same second factor.
    let token = login(&target, &admin, &admin.email)
        .await
        .expect("the administrator logs in");
    let pending = challenge(&target, &colleague).await;
    complete(&target, &pending, &authenticator.code(0).await)
        .await
        .ok();
    target.settled(admin.tenant_id).await;
    let mut after = observed(&target, &token, &ids).await;
    // The logins just made here are the only new entries of the audit log (newest first).
    let entries = after["audit"]["auditLog"]["edges"].as_array_mut().unwrap();
    let new = entries.len()
        - before["audit"]["auditLog"]["edges"]
            .as_array()
            .unwrap()
            .len();
    for entry in entries.drain(..new) {
        let event = entry["node"]["eventType"].as_str().unwrap();
        assert!(event.starts_with("Login"), "{entry}");
    }
    assert!(new >= 2);
    assert_eq!(
        before, after,
        "histories, as-of views, audit log and counts are identical"
    );

    // Verified against the original heads, and the keys an auditor pinned still lead to the
    // key in force: the import handed over from the archived key to one only this server has.
    assert!(target.custos(&["verify", "--tenant", &org]).await);
    let keys = target
        .graphql(
            Some(&token),
            "{ organization { auditKeys { publicKey handedOverAt } } }",
            json!({}),
        )
        .await
        .ok()
        .data("organization.auditKeys")
        .clone();
    let keys = keys.as_array().unwrap();
    // The pinned keys, the key the archive carried (the source's too), then the target's own.
    assert_eq!(keys.len(), pinned.len() + 2);
    for (old, new) in source_keys.iter().zip(keys).take(pinned.len() + 1) {
        assert_eq!(old["publicKey"], new["publicKey"]);
    }
    assert_ne!(
        keys.last().unwrap()["publicKey"],
        source_keys.last().unwrap()["publicKey"]
    );
    let _ = target
        .graphql(
            Some(&token),
            "mutation { createCheckpoint { number } }",
            json!({}),
        )
        .await
        .ok();
    assert!(
        target
            .custos(&["verify", "--tenant", &org, "--read-models"])
            .await
    );

    // The erased person is still erased, and nothing of theirs is on the new server.
    let gone = target
        .graphql(
            Some(&token),
            "query($id: ID!) { employee(id: $id) { firstName email erasedAt } }",
            json!({ "id": erased }),
        )
        .await
        .ok();
    assert!(
        gone.data("employee.erasedAt").is_string(),
        "{:?}",
        gone.body
    );
    assert_ne!(gone.data("employee.firstName"), "Ernestine");
    assert!(gone.data("employee.email").is_null());
    let database = target.tenant_database(admin.tenant_id).await;
    let dump = pg_dump(&database);
    assert!(
        dump.contains("Keira"),
        "the dump holds the people kept, so its search means something"
    );
    assert!(!dump.contains("Vanishwood") && !dump.contains("ernestine"));

    // The indexes the import built at the end (rather than row by row) are all there, as the
    // source has them.
    let source_database = source.tenant_database(admin.tenant_id).await;
    assert_eq!(indexes(&database).await, indexes(&source_database).await);
    // The import analysed the events it wrote and the read models it filled: they are planned
    // with statistics from the start, not once autovacuum comes by.
    assert_eq!(
        never_analysed(
            &database,
            &["events", "records", "record_versions", "audit_log"]
        )
        .await,
        Vec::<String>::new()
    );

    // The same archive cannot come in twice.
    let again = import(&target, &archive, PASSPHRASE, &["--slug", &slug("copy")]).await;
    assert!(again.unwrap_err().contains("already exists here"));
}

/// Rewrites line `n` (1-based) of an archive through `change`.
fn edit(archive: &Path, n: usize, change: impl FnOnce(&mut Value)) -> PathBuf {
    let text = std::fs::read_to_string(archive).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut value: Value = serde_json::from_str(&lines[n - 1]).unwrap();
    change(&mut value);
    lines[n - 1] = value.to_string();
    let path = archive.with_extension(format!("edited-{}", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test]
async fn damaged_altered_or_foreign_archives_are_refused_with_nothing_created() {
    let source = TestApp::spawn().await;
    let org = slug("refused");
    let admin = source.sign_up(&org).await;
    for name in ["Ada", "Bea", "Cy"] {
        source
            .create_employee(
                &admin.token,
                json!({ "firstName": name, "lastName": "Lovelace" }),
            )
            .await;
    }
    source
        .graphql(
            Some(&admin.token),
            "mutation { createCheckpoint { number } }",
            json!({}),
        )
        .await
        .ok();
    let archive = export(&source, &org).await;
    let text = std::fs::read_to_string(&archive).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first_event = lines
        .iter()
        .position(|l| l.contains("\"type\":\"event\""))
        .unwrap()
        + 1;
    let employee_event = lines
        .iter()
        .position(|l| {
            l.contains("\"type\":\"event\"") && l.contains("\"aggregate_type\":\"record\"")
        })
        .unwrap()
        + 1;
    let employee_id = serde_json::from_str::<Value>(lines[employee_event - 1]).unwrap()
        ["aggregate_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let target = TestApp::spawn().await;
    let count = tenants(&target).await;

    let wrong = import(&target, &archive, "not the passphrase at all", &[]).await;
    assert!(wrong.unwrap_err().contains("passphrase does not open"));

    let truncated = archive.with_extension("truncated");
    std::fs::write(&truncated, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let refused = import(&target, &truncated, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(refused.contains("truncated"), "{refused}");

    let cut = archive.with_extension("cut");
    std::fs::write(&cut, &text[..text.len() - 40]).unwrap();
    let refused = import(&target, &cut, PASSPHRASE, &[]).await.unwrap_err();
    assert!(refused.contains("truncated"), "{refused}");

    // An event's stored bytes changed: the first altered event is named.
    let altered = edit(&archive, employee_event, |event| {
        let metadata = event["metadata"]
            .as_str()
            .unwrap()
            .replace("\"actor", "\"actor_");
        event["metadata"] = Value::String(metadata);
    });
    let refused = import(&target, &altered, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(
        refused.contains(&employee_id) && refused.contains("does not verify"),
        "{refused}"
    );

    // An event removed: the signed root no longer holds.
    let removed = archive.with_extension("removed");
    let mut kept_lines: Vec<&str> = lines.clone();
    kept_lines.remove(first_event - 1);
    std::fs::write(&removed, kept_lines.join("\n") + "\n").unwrap();
    let refused = import(&target, &removed, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(refused.contains("does not verify"), "{refused}");

    // The manifest's counts changed to match: its authentication code fails.
    let forged = edit(&archive, lines.len(), |manifest| {
        manifest["counts"]["event"] = json!(0);
    });
    let refused = import(&target, &forged, PASSPHRASE, &[]).await.unwrap_err();
    assert!(refused.contains("altered"), "{refused}");

    let newer = edit(&archive, 1, |header| header["version"] = json!(3));
    let refused = import(&target, &newer, PASSPHRASE, &[]).await.unwrap_err();
    assert!(refused.contains("format version 3"), "{refused}");
    // Version 2 keeps its key encrypted to age recipients, not derived from a passphrase.
    let mislabelled = edit(&archive, 1, |header| header["version"] = json!(2));
    let refused = import(&target, &mislabelled, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(refused.contains("how its key is kept"), "{refused}");

    let not_archive = archive.with_extension("txt");
    std::fs::write(&not_archive, "hello\n").unwrap();
    let refused = import(&target, &not_archive, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(refused.contains("not a Custos tenant archive"), "{refused}");

    // A slug taken here.
    target.sign_up(&org).await;
    let count = count + 1;
    let refused = import(&target, &archive, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(refused.contains("already exists here"), "{refused}");

    assert_eq!(
        tenants(&target).await,
        count,
        "no failed import left a tenant behind"
    );
    let provisioning: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenants WHERE status = 'provisioning'")
            .fetch_one(target.services.tenancy.catalog())
            .await
            .unwrap();
    assert_eq!(provisioning, 0);

    // The right archive under another slug comes in, and verifies.
    let arrived = slug("arrived");
    import(&target, &archive, PASSPHRASE, &["--slug", &arrived])
        .await
        .unwrap();
    assert!(target.custos(&["verify", "--tenant", &arrived]).await);
    // Its first signing key is kept in the catalog with an HMAC only the master key makes:
    // swapped there, it is refused.
    sqlx::query("UPDATE tenants SET audit_anchor = $2 WHERE id = $1")
        .bind(admin.tenant_id)
        .bind(vec![7u8; 32])
        .execute(target.services.tenancy.catalog())
        .await
        .unwrap();
    let swapped = target
        .custos_result(&["verify", "--tenant", &arrived])
        .await
        .unwrap_err();
    assert!(format!("{swapped:#}").contains("does not verify with the master key"));
    let weak = source
        .custos_result(&[
            "tenant",
            "export",
            "--slug",
            &org,
            "--out",
            "/tmp/never",
            "--passphrase-file",
            passphrase_file(source.data_dir.path(), "short")
                .to_str()
                .unwrap(),
        ])
        .await
        .unwrap_err();
    assert!(format!("{weak:#}").contains("at least 12 characters"));
}

/// Those of `tables` that nothing has run `ANALYZE` on in `database` (autovacuum's analyses
/// not counted).
async fn never_analysed(database: &str, tables: &[&str]) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&custos_tests::admin_options(database))
        .await
        .unwrap();
    let never = sqlx::query_scalar(
        "SELECT t.name FROM unnest($1::text[]) AS t(name)
         LEFT JOIN pg_stat_user_tables AS s ON s.schemaname = 'public' AND s.relname = t.name
         WHERE s.last_analyze IS NULL ORDER BY 1",
    )
    .bind(tables)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    never
}

/// Every index of a database's public schema, by name, with its definition.
async fn indexes(database: &str) -> Vec<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&custos_tests::admin_options(database))
        .await
        .unwrap();
    let indexes = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    indexes
}

async fn databases(options: sqlx::postgres::PgConnectOptions) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let names = sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    names
}

#[tokio::test]
async fn an_organisation_moves_between_regions_and_lives_only_on_the_second_server() {
    let app = TestApp::spawn_two_regions().await;
    let org = slug("mover");
    let admin = app.sign_up(&org).await;
    let mut ids = Vec::new();
    for name in ["Mona", "Milo"] {
        let created = app
            .create_employee(
                &admin.token,
                json!({ "firstName": name, "lastName": "Mover" }),
            )
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    app.graphql(
        Some(&admin.token),
        "mutation { createCheckpoint { number } }",
        json!({}),
    )
    .await
    .ok();
    let old = app.tenant_database(admin.tenant_id).await;
    assert!(databases(custos_tests::admin_options("postgres"))
        .await
        .contains(&old));

    assert!(
        app.custos(&["tenant", "move", "--slug", &org, "--region", "us"])
            .await
    );

    let new = app.tenant_database(admin.tenant_id).await;
    assert_ne!(new, old);
    let eu = databases(custos_tests::admin_options("postgres")).await;
    let us = databases(custos_tests::us_admin_options("postgres")).await;
    assert!(us.contains(&new), "the new database is on the us server");
    assert!(
        !eu.contains(&old) && !eu.contains(&new),
        "nothing of it is left on the eu server"
    );
    let region: String = sqlx::query_scalar("SELECT region FROM tenants WHERE id = $1")
        .bind(admin.tenant_id)
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(region, "us");

    // Sessions do not move; the same password does. (The running service notices the move
    // within five seconds: it checks its open contexts against the catalog.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let token = loop {
        match login(&app, &admin, &admin.email).await {
            Ok(token) => break token,
            Err(refused) if std::time::Instant::now() < deadline => {
                let _ = refused;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(refused) => panic!("no login on the new server: {refused:?}"),
        }
    };
    let listed = app
        .graphql(
            Some(&token),
            "{ employees(first: 10) { totalCount } organization { region } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(listed.data("employees.totalCount"), 2);
    assert_eq!(listed.data("organization.region"), "us");
    assert!(app.custos(&["verify", "--tenant", &org]).await);
    let refused = app
        .custos_result(&["tenant", "move", "--slug", &org, "--region", "us"])
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("already in region us"));

    // A move that cannot verify what it copies (an event altered on the server) is refused,
    // and the organisation stays where it was, working.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&custos_tests::us_admin_options(&new))
            .await
            .unwrap();
        for statement in [
            "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete",
            "UPDATE events SET metadata = (metadata::text || ' ')::json WHERE global_position = 3",
            "ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete",
        ] {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let refused = app
        .custos_result(&["tenant", "move", "--slug", &org, "--region", "eu"])
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("does not verify"),
        "{refused:#}"
    );
    assert_eq!(app.tenant_database(admin.tenant_id).await, new);
    // Other tests create databases on the eu server meanwhile: none of the new ones holds ours.
    for database in databases(custos_tests::admin_options("postgres")).await {
        if eu.contains(&database) || !database.starts_with("custos_t_") {
            continue;
        }
        use sqlx::Connection;
        let Ok(mut conn) =
            sqlx::PgConnection::connect_with(&custos_tests::admin_options(&database)).await
        else {
            continue;
        };
        let ours: Option<i64> =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
                .bind(&ids[0])
                .fetch_one(&mut conn)
                .await
                .ok();
        assert_ne!(
            ours,
            Some(1),
            "the failed move's new database {database} was left"
        );
        let _ = conn.close().await;
    }
    let moving: Option<Value> = sqlx::query_scalar("SELECT move FROM tenants WHERE id = $1")
        .bind(admin.tenant_id)
        .fetch_one(app.services.tenancy.catalog())
        .await
        .unwrap();
    assert_eq!(moving, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let token = loop {
        match login(&app, &admin, &admin.email).await {
            Ok(token) => break token,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(refused) => panic!("not served where it was: {refused:?}"),
        }
    };
    app.graphql(
        Some(&token),
        "{ employees(first: 10) { totalCount } }",
        json!({}),
    )
    .await
    .ok();
}

#[tokio::test]
async fn administrators_download_the_organisation_archive_once_and_it_imports() {
    let (source, org, admin) = with_an_employee("self-export", "Dora", "Download").await;
    let reader = source.user_with_roles(&admin, &[]).await;
    let mutation = "mutation($p: String!) { exportOrganization(passphrase: $p) { exportId count downloadUrl expiresAt } }";

    let refused = source
        .graphql(Some(&reader.token), mutation, json!({ "p": PASSPHRASE }))
        .await;
    assert_eq!(refused.code(), Some("FORBIDDEN"));
    let weak = source
        .graphql(Some(&admin.token), mutation, json!({ "p": "short" }))
        .await;
    assert_eq!(weak.code(), Some("VALIDATION"));
    assert_eq!(weak.field(), Some("passphrase"));

    let started = source
        .graphql(Some(&admin.token), mutation, json!({ "p": PASSPHRASE }))
        .await
        .ok();
    assert_eq!(started.data("exportOrganization.count"), 1);
    let response = download(&source, &started).await;
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .contains(".custos-archive"));
    let bytes = response.bytes().await.unwrap();
    assert_eq!(
        download(&source, &started).await.status(),
        404,
        "the link works once"
    );
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.starts_with("{\"format\":\"custos-tenant-archive\""));
    assert!(!text.contains("Dora") && !text.contains(PASSPHRASE));

    // Recorded before the link was handed out, without any personal value.
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrganizationExported'")
            .fetch_one(&mut source.tenant_admin(admin.tenant_id).await)
            .await
            .unwrap();
    assert_eq!(recorded, 1);

    let archive = source.data_dir.path().join("downloaded.custos-archive");
    std::fs::write(&archive, &bytes).unwrap();
    let target = TestApp::spawn().await;
    import(&target, &archive, PASSPHRASE, &[]).await.unwrap();
    assert_eq!(arrived_first_name(&target, &admin, &org).await, "Dora");
}

/// A new age identity: its recipient (`age1…`) and its identity file, as `age-keygen -o FILE`
/// writes it.
fn age_identity(dir: &Path) -> (String, PathBuf) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let path = dir.join(format!("age-{}.txt", uuid::Uuid::now_v7().simple()));
    std::fs::write(
        &path,
        format!(
            "# created: {}\n# public key: {recipient}\n{}\n",
            chrono::Utc::now().to_rfc3339(),
            identity.to_string().expose_secret()
        ),
    )
    .unwrap();
    (recipient, path)
}

#[tokio::test]
async fn an_archive_encrypted_to_age_recipients_opens_only_with_their_identities() {
    let (source, org, admin) = with_an_employee("age-export", "Agatha", "Keyholder").await;
    let dir = source.data_dir.path();
    let (alice, alice_key) = age_identity(dir);
    let (bob, bob_key) = age_identity(dir);
    let (_, stranger_key) = age_identity(dir);

    // `custos tenant export` to two recipients: no passphrase is asked for.
    let archive = dir.join(format!("{org}.custos-archive"));
    assert!(
        source
            .custos(&[
                "tenant",
                "export",
                "--slug",
                &org,
                "--out",
                archive.to_str().unwrap(),
                "--recipient",
                &alice,
                "--recipient",
                &bob,
            ])
            .await
    );
    let text = std::fs::read_to_string(&archive).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header.get("kdf").is_none());
    assert!(header["age_wrapped_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
    assert!(!text.contains("Agatha"));
    let not_a_recipient = source
        .custos_result(&[
            "tenant",
            "export",
            "--slug",
            &org,
            "--out",
            dir.join("never.custos-archive").to_str().unwrap(),
            "--recipient",
            &alice,
            "--recipient",
            "age1notakey",
        ])
        .await
        .unwrap_err();
    assert!(
        format!("{not_a_recipient:#}").contains("recipient 2 is not an age X25519 recipient"),
        "{not_a_recipient:#}"
    );
    assert!(!dir.join("never.custos-archive").exists());

    // Opened with anything but one of the recipients' identities: refused, nothing created.
    let target = TestApp::spawn().await;
    let count = tenants(&target).await;
    let stranger = import_with(
        &target,
        &archive,
        &["--identity", stranger_key.to_str().unwrap()],
    )
    .await
    .unwrap_err();
    assert!(
        stranger.contains("none of the age identities"),
        "{stranger}"
    );
    let by_passphrase = import(&target, &archive, PASSPHRASE, &[])
        .await
        .unwrap_err();
    assert!(
        by_passphrase.contains("locked to age recipients"),
        "{by_passphrase}"
    );
    // A passphrase file given as the identity: told, without its text.
    let pass = passphrase_file(dir, PASSPHRASE);
    let not_an_identity = import_with(&target, &archive, &["--identity", pass.to_str().unwrap()])
        .await
        .unwrap_err();
    assert!(
        not_an_identity.contains("not an age identity file")
            && !not_an_identity.contains(PASSPHRASE),
        "{not_an_identity}"
    );
    assert_eq!(tenants(&target).await, count, "nothing was created");

    // Either recipient's identity opens it.
    import_with(
        &target,
        &archive,
        &["--identity", bob_key.to_str().unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(arrived_first_name(&target, &admin, &org).await, "Agatha");

    // `exportOrganization` to a recipient: checked, recorded with it, and downloaded.
    let mutation = "mutation($p: String, $r: [String!]) { exportOrganization(passphrase: $p, recipients: $r) { downloadUrl } }";
    let wrong = source
        .graphql(
            Some(&admin.token),
            mutation,
            json!({ "r": [alice, "age1notakey"] }),
        )
        .await;
    assert_eq!(wrong.code(), Some("VALIDATION"));
    assert_eq!(wrong.field(), Some("recipients"));
    let both = source
        .graphql(
            Some(&admin.token),
            mutation,
            json!({ "p": PASSPHRASE, "r": [alice] }),
        )
        .await;
    assert_eq!(both.code(), Some("VALIDATION"));
    let neither = source
        .graphql(Some(&admin.token), mutation, json!({ "r": [] }))
        .await;
    assert_eq!(neither.code(), Some("VALIDATION"));
    assert_eq!(neither.field(), Some("passphrase"));
    let started = source
        .graphql(Some(&admin.token), mutation, json!({ "r": [alice] }))
        .await
        .ok();
    let recorded: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE event_type = 'OrganizationExported'",
    )
    .fetch_all(&mut source.tenant_admin(admin.tenant_id).await)
    .await
    .unwrap();
    assert_eq!(recorded.len(), 1, "the refused exports were not recorded");
    assert!(recorded[0].contains(&alice), "{}", recorded[0]);
    let bytes = download(&source, &started).await.bytes().await.unwrap();
    let downloaded = source.data_dir.path().join("downloaded-age.custos-archive");
    std::fs::write(&downloaded, &bytes).unwrap();
    let third = TestApp::spawn().await;
    let refused = import_with(
        &third,
        &downloaded,
        &["--identity", bob_key.to_str().unwrap()],
    )
    .await
    .unwrap_err();
    assert!(refused.contains("none of the age identities"), "{refused}");
    import_with(
        &third,
        &downloaded,
        &["--identity", alice_key.to_str().unwrap()],
    )
    .await
    .unwrap();
    assert!(third.custos(&["verify", "--tenant", &org]).await);
}

#[tokio::test]
async fn an_erasure_survives_restoring_a_backup_taken_before_it() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("phoenix")).await;
    let person = app
        .create_employee(
            &admin.token,
            json!({ "firstName": "Resurrecta", "lastName": "Phoenixhall", "email": "resurrecta@example.com" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.create_employee(
        &admin.token,
        json!({ "firstName": "Stella", "lastName": "Stays" }),
    )
    .await;
    app.settled(admin.tenant_id).await;
    let database = app.tenant_database(admin.tenant_id).await;

    // A backup with PostgreSQL's own tools, taken before the erasure.
    let backup = app.data_dir.path().join("before-erasure.dump");
    custos_tests::pg_client(
        "pg_dump",
        &[
            "--format",
            "custom",
            "--file",
            backup.to_str().unwrap(),
            &database,
        ],
    );
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
        json!({ "id": person }),
    )
    .await
    .ok();
    assert!(!pg_dump(&database).contains("Phoenixhall"));

    // Disaster: the database is restored from that backup. The person is back in it.
    {
        use sqlx::Connection;
        let mut admin_conn =
            sqlx::PgConnection::connect_with(&custos_tests::admin_options("postgres"))
                .await
                .unwrap();
        sqlx::query(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
            .execute(&mut admin_conn)
            .await
            .unwrap();
        admin_conn.close().await.unwrap();
    }
    custos_tests::pg_client(
        "pg_restore",
        &["--create", "--dbname", "postgres", backup.to_str().unwrap()],
    );
    assert!(
        pg_dump(&database).contains("Phoenixhall"),
        "the restored backup holds the person"
    );

    // The next start of Custos (here `custos migrate`) replays the erasure ledger before
    // anything is served: the key is destroyed again and the read models rebuilt without it.
    assert!(app.custos(&["migrate"]).await);
    let dump = pg_dump(&database);
    assert!(!dump.contains("Phoenixhall") && !dump.contains("resurrecta"));
    assert!(dump.contains("Stays"), "everyone else is still there");
    let key: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped_key FROM subject_keys WHERE subject_id = $1::uuid")
            .bind(&person)
            .fetch_one(&mut app.tenant_admin(admin.tenant_id).await)
            .await
            .unwrap();
    assert_eq!(key, None);
    let ledger = std::fs::read_to_string(
        app.data_dir
            .path()
            .join("erasures")
            .join(format!("{}.jsonl", admin.tenant_id)),
    )
    .unwrap();
    assert!(ledger.contains(&person) && !ledger.contains("Phoenixhall"));
}
