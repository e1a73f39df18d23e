//! Backups of the private cluster: a scheduled base backup verified by restoring it, the WAL
//! archive, `custos backup now|list|verify|restore`, and a point-in-time restore into a new
//! data directory that keeps an erasure made after the moment restored. With `DATABASE_URL`:
//! scheduled, verified archives of every organisation, and one organisation restored from
//! one, in place or after its database and catalog entry were lost.

use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_tests::{pg_dump_at, private_dir, slug, TestApp, PASSWORD};
use serde_json::{json, Value};

fn backups(dir: &Path) -> Vec<Value> {
    let mut list: Vec<Value> = std::fs::read_dir(dir.join("base"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("backup.json")).ok())
        .map(|bytes| serde_json::from_slice(&bytes).expect("backup.json is JSON"))
        .collect();
    list.sort_by_key(|b| b["finishedAt"].as_str().unwrap_or_default().to_owned());
    list
}

fn verified(backup: &Value) -> bool {
    let v = &backup["verification"];
    v["manifest"] == json!(true)
        && v["restored"] == json!(true)
        && v["problems"].as_array().is_some_and(|p| p.is_empty())
}

async fn healthz(app: &TestApp) -> String {
    reqwest::get(app.url("/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn employee(app: &TestApp, token: &str, first: &str, last: &str) -> String {
    app.create_employee(token, json!({ "firstName": first, "lastName": last }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_brings_back_that_moment_without_the_people_erased_since() {
    // A secret in this process's environment (as CUSTOS_MASTER_KEY would be).
    std::env::set_var("CUSTOS_TEST_SECRET", "must not reach PostgreSQL");
    let app = TestApp::spawn_private(private_dir(), |config| {
        let backups = config.backups.as_mut().unwrap();
        backups.interval = Some(Duration::from_secs(3600));
    })
    .await;
    let backup_dir: PathBuf = app.data_dir.path().join("backups");
    // PostgreSQL (another user's processes when Custos runs as root, and the shell of every
    // archive_command) inherits nothing of this process's environment, where the master key
    // and passphrases may be.
    assert!(std::env::vars().any(|(name, _)| name.starts_with("CARGO")));
    let pid =
        std::fs::read_to_string(app.data_dir.path().join("postgres/data/postmaster.pid")).unwrap();
    let environ = std::fs::read(format!(
        "/proc/{}/environ",
        pid.lines().next().unwrap().trim()
    ))
    .unwrap();
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|var| std::str::from_utf8(var).ok())
        .filter_map(|var| var.split('=').next().map(str::to_owned))
        .filter(|name| !name.is_empty())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("CARGO") || n.starts_with("CUSTOS")),
        "{names:?}"
    );
    // The schedule takes the first base backup at once (there is none), and verifies it by
    // restoring it; /healthz says when. The organisation is signed up after it, so every
    // restore from it below replays the organisation's creation from the WAL archive.
    let mut health = String::new();
    for _ in 0..600 {
        health = healthz(&app).await;
        if health.contains("last verified backup: 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        health.contains("last verified backup: 2"),
        "no verified backup within two minutes: {health}\n{}",
        custos_tests::logs()
            .lines()
            .filter(|l| l.contains("backup") && (l.contains("ERROR") || l.contains("WARN")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let first = backups(&backup_dir);
    assert_eq!(first.len(), 1);
    assert!(verified(&first[0]), "{:#}", first[0]);
    assert_eq!(first[0]["verification"]["organisations"], json!(0));
    let admin = app.sign_up(&slug("vault")).await;
    let erased = employee(&app, &admin.token, "Obliviana", "Eraseworth").await;
    employee(&app, &admin.token, "Constance", "Beforehand").await;
    app.settled(admin.tenant_id).await;
    // The master key is sealed in the backup, never in clear beside it.
    let key = std::fs::read_to_string(app.data_dir.path().join("master.key")).unwrap();
    let set = backup_dir
        .join("base")
        .join(first[0]["id"].as_str().unwrap());
    assert!(!std::fs::read_to_string(set.join("secrets.json"))
        .unwrap()
        .contains(key.trim()));

    // A WAL archive that cannot be written shows in /healthz, and stops showing once it can.
    let wal = backup_dir.join("wal");
    let superuser = {
        let dir = app.data_dir.path().join("postgres");
        let password = std::fs::read_to_string(dir.join("superuser.password")).unwrap();
        sqlx::postgres::PgConnectOptions::new()
            .socket(dir.join("run"))
            .port(5432)
            .username("custos")
            .password(password.trim())
            .database("postgres")
    };
    let switch = || async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&superuser).await.unwrap();
        sqlx::query("SELECT txid_current()")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    };
    let app_ref = &app;
    let health_until = |wanted: bool| async move {
        for _ in 0..300 {
            let health = healthz(app_ref).await;
            if health.contains("WAL archiving failing") == wanted {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("/healthz never said archiving failing = {wanted}");
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o500)).unwrap();
    switch().await;
    let health = health_until(true).await;
    assert!(health.contains("last verified backup: 2"), "{health}");
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o700)).unwrap();
    switch().await;
    health_until(false).await;

    // One more person after the WAL archive could not be written, the moment to restore, then
    // an erasure and a latecomer.
    employee(&app, &admin.token, "Annalise", "Afterward").await;
    app.settled(admin.tenant_id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moment = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
        json!({ "id": erased }),
    )
    .await
    .ok();
    employee(&app, &admin.token, "Lucius", "Latecomer").await;
    app.settled(admin.tenant_id).await;

    // `backup now` beside the running service: a second verified base backup.
    assert!(app.custos(&["backup", "now"]).await);
    assert!(app.custos(&["backup", "list"]).await);
    let both = backups(&backup_dir);
    assert_eq!(both.len(), 2);
    assert!(verified(&both[1]));
    assert_eq!(both[1]["verification"]["organisations"], json!(1));
    // The erasure ledger is copied into the backup directory, which survives the data
    // directory.
    let mirror = backup_dir
        .join("erasures")
        .join(format!("{}.jsonl", admin.tenant_id));
    assert!(std::fs::read_to_string(mirror).unwrap().contains(&erased));

    // Bad input changes nothing.
    let target = private_dir();
    let into = target.path().to_owned();
    let empty = |dir: &Path| std::fs::read_dir(dir).unwrap().next().is_none();
    let at = moment.to_rfc3339();
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for (args, expected) in [
        (vec!["--to", future.as_str()], "in the future"),
        (
            vec!["--to", "2020-01-01T00:00:00Z"],
            "no base backup finished before",
        ),
        (vec!["--to", "yesterday"], "not an RFC 3339 time"),
    ] {
        let mut argv = vec!["backup", "restore", "--into", into.to_str().unwrap()];
        argv.extend(args);
        let err = app.custos_result(&argv).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{err:#}");
        assert!(empty(&into), "nothing is written");
    }
    let wrong = app.data_dir.path().join("wrong.passphrase");
    std::fs::write(&wrong, "not the passphrase!").unwrap();
    let err = app
        .custos_result(&[
            "backup",
            "restore",
            "--to",
            &at,
            "--into",
            into.to_str().unwrap(),
            "--backup-passphrase-file",
            wrong.to_str().unwrap(),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err:#}");
    assert!(empty(&into), "nothing is written");

    // An interrupted restore left its marker and debris: nothing starts on it...
    std::fs::write(into.join("restore.incomplete"), "").unwrap();
    std::fs::write(into.join("debris"), "half a copy").unwrap();
    let mut config = custos_api::Config::new(into.clone(), custos_api::DatabaseConfig::Private);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let refused = custos_api::Application::build(config).await.err().unwrap();
    assert!(
        refused.to_string().contains("interrupted restore"),
        "{refused:#}"
    );
    // ...and a restore into it starts over. To the moment: the first backup and its WAL.
    assert!(
        app.custos(&[
            "backup",
            "restore",
            "--to",
            &at,
            "--into",
            into.to_str().unwrap()
        ])
        .await
    );
    assert!(!into.join("restore.incomplete").exists() && !into.join("debris").exists());
    let err = app
        .custos_result(&["backup", "restore", "--into", into.to_str().unwrap()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err:#}");
    // The backup directory as it is now, for the disaster below.
    let kept_dir = private_dir();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&backup_dir)
        .arg(kept_dir.path().join("backups"))
        .status()
        .unwrap();
    assert!(copied.success());

    // A third backup, keeping two: the first goes, with the WAL only it needed.
    assert!(app.custos(&["backup", "now", "--backup-keep", "2"]).await);
    let kept: Vec<Value> = backups(&backup_dir);
    assert_eq!(kept.len(), 2, "{kept:#?}");
    assert_eq!(kept[0]["id"], both[1]["id"]);
    let oldest_wal = std::fs::read_dir(backup_dir.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 27 && n.ends_with(".gz"))
        .min()
        .unwrap();
    assert_eq!(
        &oldest_wal[..24],
        kept[0]["startWal"].as_str().unwrap(),
        "the archive starts where the oldest kept backup does"
    );
    let database = app.tenant_database(admin.tenant_id).await;
    let original = app.stop().await;

    // The restored data directory serves everyone recorded by the moment but the person
    // erased after it, who stays erased; nothing from after the moment.
    let restored = TestApp::spawn_private(target, |config| config.backups = None).await;
    let token = restored
        .login(&admin.slug, &admin.email, PASSWORD)
        .await
        .expect("the administrator's password works on the restored service");
    let names = restored.employee_last_names(&token).await;
    assert!(names.contains(&"Beforehand".to_owned()), "{names:?}");
    assert!(
        names.contains(&"Afterward".to_owned()),
        "replayed from the WAL archive: {names:?}"
    );
    assert!(!names.contains(&"Latecomer".to_owned()), "{names:?}");
    assert!(!names.contains(&"Eraseworth".to_owned()), "{names:?}");
    let dump = pg_dump_at(&restored.data_dir.path().join("postgres"), &database);
    assert!(dump.contains("Beforehand") && dump.contains("Afterward"));
    assert!(
        !dump.contains("Eraseworth") && !dump.contains("Obliviana"),
        "the erasure made after the moment is replayed from the ledger"
    );
    assert!(restored.custos(&["verify"]).await);
    restored.stop().await;

    // Disaster: the data directory is gone; only the (copied) backup directory is left. From
    // the first base backup to the moment: the WAL replayed, and the person erased after the
    // moment erased again from the backup directory's copy of the ledger.
    drop(original);
    let backup_dir = kept_dir.path().join("backups");
    let lost = kept_dir.path().join("lost");
    let passphrase = kept_dir.path().join("backup.passphrase");
    std::fs::write(&passphrase, custos_tests::BACKUP_PASSPHRASE).unwrap();
    let operator = |args: &[&str]| {
        let mut argv = vec!["custos"];
        argv.extend_from_slice(args);
        argv.extend([
            "--data-dir",
            lost.to_str().unwrap(),
            "--backup-dir",
            backup_dir.to_str().unwrap(),
            "--backup-passphrase-file",
            passphrase.to_str().unwrap(),
        ]);
        <custos_api::Cli as clap::Parser>::try_parse_from(argv).unwrap()
    };
    let dump_of = |dir: tempfile::TempDir| async {
        let app = TestApp::spawn_private(dir, |config| config.backups = None).await;
        let dump = pg_dump_at(&app.data_dir.path().join("postgres"), &database);
        app.stop().await;
        dump
    };
    let first_id = first[0]["id"].as_str().unwrap().to_owned();
    let rebuilt = private_dir();
    let into = rebuilt.path().to_str().unwrap().to_owned();
    assert!(
        operator(&["backup", "restore", "--to", &at, "--backup", &first_id, "--into", &into])
            .run()
            .await
            .unwrap()
    );
    let dump = dump_of(rebuilt).await;
    assert!(dump.contains("Afterward") && !dump.contains("Latecomer"));
    assert!(
        !dump.contains("Eraseworth"),
        "the erasure is in the backup directory's copy of the ledger"
    );

    // A damaged base backup does not verify, no longer counts as verified, and is not chosen.
    let newest = backups(&backup_dir).pop().unwrap();
    let id = newest["id"].as_str().unwrap().to_owned();
    let version = backup_dir
        .join("base")
        .join(&id)
        .join("data")
        .join("PG_VERSION");
    std::fs::write(&version, "15\n\n").unwrap();
    assert!(!operator(&["backup", "verify", "--id", &id])
        .run()
        .await
        .unwrap());
    let damaged = backups(&backup_dir).pop().unwrap();
    assert!(!verified(&damaged));
    assert!(damaged["verification"]["problems"][0]
        .as_str()
        .unwrap()
        .contains("pg_verifybackup"));
    // The newest state, then: from the first backup, every archived change replayed.
    let rebuilt = private_dir();
    let into = rebuilt.path().to_str().unwrap().to_owned();
    assert!(operator(&["backup", "restore", "--into", &into])
        .run()
        .await
        .unwrap());
    let dump = dump_of(rebuilt).await;
    assert!(dump.contains("Latecomer") && !dump.contains("Eraseworth"));

    // A WAL segment missing from the middle of the archive: the newest state cannot be
    // restored, and the restore says which segment is missing instead of stopping early.
    let mut segments: Vec<String> = std::fs::read_dir(backup_dir.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.len() == 27
                && n.ends_with(".gz")
                && n.as_str() > first[0]["startWal"].as_str().unwrap()
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "{segments:?}");
    std::fs::remove_file(backup_dir.join("wal").join(&segments[0])).unwrap();
    let rebuilt = private_dir();
    let err = operator(&[
        "backup",
        "restore",
        "--into",
        rebuilt.path().to_str().unwrap(),
    ])
    .run()
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&segments[0][..24]), "{err:#}");
}

/// The archives of the organisation `tenant` in the backup directory, oldest first.
fn archives(dir: &Path, tenant: uuid::Uuid) -> Vec<Value> {
    let mut list: Vec<Value> = std::fs::read_dir(dir.join("archives").join(tenant.to_string()))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
        .map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap())
        .collect();
    list.sort_by_key(|a| a["takenAt"].as_str().unwrap_or_default().to_owned());
    list
}

fn archive_verified(archive: &Value) -> bool {
    let v = &archive["verification"];
    v["imported"] == json!(true) && v["problems"].as_array().is_some_and(|p| p.is_empty())
}

async fn last_names(app: &TestApp, slug: &str, email: &str) -> Vec<String> {
    let token = app
        .login(slug, email, PASSWORD)
        .await
        .expect("the administrator's password works");
    app.employee_last_names(&token).await
}

/// Waits (up to a minute) until the running service answers for `slug` with `check` true of
/// its employees' last names (empty while the login is refused): a restore beside it closes
/// its context within seconds.
async fn until_names(
    app: &TestApp,
    slug: &str,
    email: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let names = match app.login(slug, email, PASSWORD).await {
            Ok(_) => last_names(app, slug, email).await,
            Err(_) => Vec::new(),
        };
        if check(&names) || std::time::Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_database_url_every_organisation_is_archived_on_a_schedule_verified_and_restored() {
    let app = TestApp::spawn_archived(|config| {
        let backups = config.backups.as_mut().unwrap();
        backups.interval = Some(Duration::from_secs(4));
        backups.keep = 50;
        // Checkpoints all the while: the restore replaces the database under an open context.
        config.checkpoint_interval = Some(Duration::from_millis(300));
    })
    .await;
    let backup_dir: PathBuf = app.data_dir.path().join("backups");
    let org = slug("archived");
    let admin = app.sign_up(&org).await;
    employee(&app, &admin.token, "Bea", "Beforehand").await;
    let erased = employee(&app, &admin.token, "Obliviana", "Eraseworth").await;
    app.graphql(
        Some(&admin.token),
        "mutation { createCheckpoint { number } }",
        json!({}),
    )
    .await
    .ok();
    app.settled(admin.tenant_id).await;
    let recorded = chrono::Utc::now();

    // The schedule archives the organisation, and verifies it by importing it whole into a
    // scratch database; /healthz says when.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let first = loop {
        let found = archives(&backup_dir, admin.tenant_id)
            .into_iter()
            .find(|a| {
                archive_verified(a)
                    && a["takenAt"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t > recorded)
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no verified archive of the organisation was written on schedule: {:?}\n{}",
            archives(&backup_dir, admin.tenant_id),
            custos_tests::logs()
                .lines()
                .filter(|l| l.contains("backup") || l.contains("archive"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(first["events"].as_u64().map(|n| n > 0), Some(true));
    let health = reqwest::get(app.url("/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        health.contains("last verified backup: 20"),
        "/healthz names the last verified archive: {health}"
    );
    // Nothing of the scratch database is left, and the archive is not readable as text.
    let scratch: Vec<String> = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&custos_tests::admin_options("postgres"))
            .await
            .unwrap();
        let names = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'custos\\_v\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        names
    };
    let file = backup_dir
        .join("archives")
        .join(admin.tenant_id.to_string())
        .join(format!("{}.custos-archive", first["id"].as_str().unwrap()));
    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("Beforehand") && !text.contains("Obliviana"));
    // (another test's verification may run on the shared server meanwhile)
    assert!(
        scratch
            .iter()
            .all(|name| !std::fs::read_dir(backup_dir.join("scratch"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy() == name.as_str())),
        "a finished verification leaves no scratch database: {scratch:?}"
    );

    // After it: an erasure and a latecomer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moment = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { eraseRecord(id: $id, expectedVersion: 1, ground: OBJECTION) { id } }",
        json!({ "id": erased }),
    )
    .await
    .ok();
    employee(&app, &admin.token, "Lucius", "Latecomer").await;
    app.settled(admin.tenant_id).await;
    let mirror = backup_dir
        .join("erasures")
        .join(format!("{}.jsonl", admin.tenant_id));
    assert!(std::fs::read_to_string(mirror).unwrap().contains(&erased));

    // `backup now` for one organisation, `list`, `verify` (every organisation's newest).
    assert!(app.custos(&["backup", "now", "--slug", &org]).await);
    assert!(app.custos(&["backup", "list"]).await);
    assert!(app.custos(&["backup", "verify"]).await);

    // A tampered archive does not verify, and restoring it is refused with nothing changed.
    let tampered_id = format!("19990101T000000.000Z-{org}");
    let dir = file.parent().unwrap();
    let mut altered = bytes.clone();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'0' { b'1' } else { b'0' };
    std::fs::write(dir.join(format!("{tampered_id}.custos-archive")), &altered).unwrap();
    let mut description = first.clone();
    description["id"] = json!(tampered_id);
    description["takenAt"] = json!("1999-01-01T00:00:00Z");
    description["verification"] = Value::Null;
    std::fs::write(
        dir.join(format!("{tampered_id}.json")),
        serde_json::to_vec(&description).unwrap(),
    )
    .unwrap();
    assert!(
        !app.custos(&["backup", "verify", "--id", &tampered_id])
            .await,
        "a tampered archive does not verify"
    );
    let described: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{tampered_id}.json"))).unwrap())
            .unwrap();
    assert!(!archive_verified(&described), "{described}");
    let database = app.tenant_database(admin.tenant_id).await;
    let at = moment.to_rfc3339();
    let wrong = app.data_dir.path().join("wrong.passphrase");
    std::fs::write(&wrong, "not the backup passphrase at all").unwrap();
    let wrong = wrong.display().to_string();
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for (args, expected) in [
        (
            vec![
                "backup",
                "restore",
                "--slug",
                &org,
                "--backup",
                &tampered_id,
            ],
            "",
        ),
        (
            vec![
                "backup",
                "restore",
                "--slug",
                &org,
                "--backup-passphrase-file",
                &wrong,
            ],
            "passphrase",
        ),
        (
            vec!["backup", "restore", "--slug", &org, "--to", &future],
            "in the future",
        ),
        (
            vec![
                "backup",
                "restore",
                "--slug",
                &org,
                "--to",
                "1999-01-01T00:00:00Z",
            ],
            "no verified backup archive",
        ),
        (
            vec!["backup", "restore", "--slug", "no-such-org"],
            "no organisation",
        ),
        (vec!["backup", "restore"], "--slug"),
        (
            vec!["backup", "restore", "--slug", &org, "--into", "/tmp/x"],
            "--into",
        ),
    ] {
        let refused = app
            .custos_result(&args)
            .await
            .expect_err("a bad restore is refused");
        assert!(
            format!("{refused:#}").contains(expected),
            "{args:?}: {refused:#}"
        );
    }
    assert_eq!(app.tenant_database(admin.tenant_id).await, database);
    let names = last_names(&app, &org, &admin.email).await;
    assert!(names.contains(&"Latecomer".to_owned()), "{names:?}");

    // Restored to the moment: as the archive before it holds it, in place of its database,
    // the person erased since erased again; nothing from after it.
    assert!(
        app.custos(&["backup", "restore", "--slug", &org, "--to", &at])
            .await
    );
    let restored_database = app.tenant_database(admin.tenant_id).await;
    assert_ne!(restored_database, database);
    let names = until_names(&app, &org, &admin.email, |n| {
        !n.is_empty() && !n.contains(&"Latecomer".to_owned())
    })
    .await;

    assert!(names.contains(&"Beforehand".to_owned()), "{names:?}");
    assert!(!names.contains(&"Latecomer".to_owned()), "{names:?}");
    assert!(!names.contains(&"Eraseworth".to_owned()), "{names:?}");
    let dump = custos_tests::pg_dump(&restored_database);
    assert!(
        !dump.contains("Eraseworth") && !dump.contains("Obliviana"),
        "the erasure made after the archive is replayed from the ledger"
    );
    assert!(
        !databases_named(&database).await,
        "the replaced database is dropped"
    );
    // The history it replaced is kept beside the new witness file; the restored
    // organisation verifies against its own.
    let kept = std::fs::read_dir(app.data_dir.path().join("checkpoints"))
        .unwrap()
        .flatten()
        .any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&admin.tenant_id.to_string()) && name.contains(".replaced-")
        });
    assert!(kept, "the replaced witness file is kept");
    assert!(app.custos(&["verify"]).await);
    // The restored state is what the next archive holds.
    assert!(app.custos(&["backup", "now", "--slug", &org]).await);
    // The running service closed the context of the replaced database instead of failing its
    // checkpoints on it. (Its projectors may still log a failed batch on the fenced database
    // before then: issue 16.)
    let tenant = admin.tenant_id.to_string();
    let failures: Vec<String> = custos_tests::logs()
        .lines()
        .filter(|l| l.contains(&tenant) && l.contains("a checkpoint failed"))
        .map(str::to_owned)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");

    // Disaster: the organisation's database and catalog entry are gone. Restored from its
    // newest verified archive, created again under its own id and slug.
    {
        use sqlx::Connection;
        let mut catalog =
            sqlx::PgConnection::connect_with(&custos_tests::admin_options(&app.catalog))
                .await
                .unwrap();
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(admin.tenant_id)
            .execute(&mut catalog)
            .await
            .unwrap();
        catalog.close().await.unwrap();
        let mut admin_conn =
            sqlx::PgConnection::connect_with(&custos_tests::admin_options("postgres"))
                .await
                .unwrap();
        sqlx::query(&format!(
            "DROP DATABASE \"{restored_database}\" WITH (FORCE)"
        ))
        .execute(&mut admin_conn)
        .await
        .unwrap();
        admin_conn.close().await.unwrap();
    }
    assert!(app.custos(&["backup", "restore", "--slug", &org]).await);
    let names = until_names(&app, &org, &admin.email, |n| {
        n.contains(&"Beforehand".to_owned())
    })
    .await;
    assert!(names.contains(&"Beforehand".to_owned()), "{names:?}");
    assert!(!names.contains(&"Eraseworth".to_owned()), "{names:?}");
    assert!(app.custos(&["verify"]).await);
}

async fn databases_named(name: &str) -> bool {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&custos_tests::admin_options("postgres"))
        .await
        .unwrap();
    let found: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    found
}
