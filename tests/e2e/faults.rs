//! Faults of the database server: a killed postmaster is started again by the service itself;
//! while the server is down every request is answered at once with `UNAVAILABLE`, and service
//! resumes by itself when it is back; a cluster that cannot be started again ends the service
//! with an error (a process supervisor takes over).

use std::time::{Duration, Instant};

use custos_api::testing::PrivateCluster;
use custos_tests::{feed, private_dir, Response, TestApp};
use serde_json::json;

const EMPLOYEES: &str = "{ employees(first: 10) { edges { node { lastName } } } }";

fn employee(last_name: &str) -> serde_json::Value {
    json!({ "firstName": "Fay", "lastName": last_name, "startDate": "2024-01-15" })
}

/// The postmaster's process id, from its `postmaster.pid`.
fn postmaster_pid(data_dir: &std::path::Path) -> String {
    written_postmaster_pid(data_dir).expect("a postmaster.pid with a pid line")
}

/// The process id in `postmaster.pid`, if the file is there with its first line (a starting
/// postmaster may be writing it).
fn written_postmaster_pid(data_dir: &std::path::Path) -> Option<String> {
    let file = std::fs::read_to_string(data_dir.join("postgres/data/postmaster.pid")).ok()?;
    let pid = file.lines().next()?.trim();
    (!pid.is_empty()).then(|| pid.to_owned())
}

fn kill(signal: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The last 40 error and warning lines of the tests' shared log.
fn errors_logged() -> String {
    let logs = custos_tests::logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(" ERROR ") || line.contains(" WARN "))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Asserts a request made while the database is down: answered with `UNAVAILABLE` (never
/// `INTERNAL`, never a hang) within a second.
fn assert_unavailable(response: &Response, took: Duration) {
    assert!(
        took < Duration::from_secs(1),
        "answered in {took:?}: {}",
        response.body
    );
    assert_eq!(response.code(), Some("UNAVAILABLE"), "{}", response.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postmaster_is_started_again_and_the_service_serves_within_five_seconds() {
    let app = TestApp::spawn_private(private_dir(), |config| {
        config.backups = None;
        // As the service runs by default: a commit is answered once its WAL is written (the
        // test clusters skip that for speed, and a killed server would lose such commits).
        config
            .cluster_settings
            .retain(|(name, _)| *name != "synchronous_commit");
    })
    .await;
    let session = app.sign_up("phoenix").await;
    app.create_employee(&session.token, employee("Beforehand"))
        .await;

    let pid = postmaster_pid(app.data_dir.path());
    kill("-KILL", &pid);
    let killed = Instant::now();
    // Requests during the outage are answered at once, and it ends by itself: a new
    // postmaster serves. (For a moment a backend of the killed one may still answer a pooled
    // connection's query: PostgreSQL's backends end once they notice their postmaster gone.)
    loop {
        let asked = Instant::now();
        let response = app
            .graphql(Some(&session.token), EMPLOYEES, json!({}))
            .await;
        let served = response.status == 200 && response.body.get("errors").is_none();
        let restarted =
            written_postmaster_pid(app.data_dir.path()).is_some_and(|serving| serving != pid);
        if served && restarted {
            break;
        }
        if !served {
            assert_unavailable(&response, asked.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no new postmaster serving 5 s after the old one was killed: {}",
            response.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing acknowledged was lost (crash recovery replayed the WAL), and writes work again.
    assert_eq!(
        app.employee_last_names(&session.token).await,
        ["Beforehand"]
    );
    app.create_employee(&session.token, employee("Afterward"))
        .await;
    let mut names = app.employee_last_names(&session.token).await;
    names.sort();
    assert_eq!(names, ["Afterward", "Beforehand"]);
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // The service still stops cleanly, its cluster with it.
    let data_dir = app.stop().await;
    assert!(!data_dir
        .path()
        .join("postgres/data/postmaster.pid")
        .exists());
}

/// A PostgreSQL server of the test's own under `dir`, which the test may stop and kill.
async fn own_server(dir: &tempfile::TempDir) -> PrivateCluster {
    let settings = [
        ("fsync", "off".to_owned()),
        ("max_connections", "100".to_owned()),
    ];
    let postgres = dir.path().join("postgres");
    tokio::task::spawn_blocking(move || PrivateCluster::start(&postgres, &settings))
        .await
        .unwrap()
        .expect("the test's own server starts")
}

/// A service whose `us` region is on a server of the test's own in `dir` (which the test
/// stops or kills); `eu` and the catalog on the shared one.
async fn us_on_own_server(dir: &tempfile::TempDir) -> (PrivateCluster, TestApp) {
    let cluster = own_server(dir).await;
    let us_server = cluster.connect_options();
    let app = TestApp::spawn_with(move |config| {
        config.regions.insert(custos_api::Region::Us, us_server);
    })
    .await;
    (cluster, app)
}

async fn stop_own_server(cluster: PrivateCluster) {
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .expect("the test's server stops");
}

/// Asks for a list, for a change, and for readiness and health every 200 ms for `length`:
/// each answered at once, as an outage.
async fn outage(app: &TestApp, token: &str, length: Duration) {
    let began = Instant::now();
    let mut asked = 0;
    while began.elapsed() < length {
        let started = Instant::now();
        let query = app.graphql(Some(token), EMPLOYEES, json!({})).await;
        assert_unavailable(&query, started.elapsed());
        let started = Instant::now();
        let write = app
            .graphql(
                Some(token),
                "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
                json!({ "input": employee("Meanwhile") }),
            )
            .await;
        assert_unavailable(&write, started.elapsed());
        let started = Instant::now();
        let ready = reqwest::get(app.url("/readyz")).await.unwrap().status();
        let health = reqwest::get(app.url("/healthz")).await.unwrap();
        assert_eq!(health.status(), 200, "the process itself can serve");
        let health = health.text().await.unwrap();
        // The service's watcher asks the server four times a second.
        if began.elapsed() > Duration::from_secs(1) {
            assert_eq!(ready, 503);
            assert!(health.contains("database: unavailable"), "{health}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "health answers at once"
        );
        // Once the watcher knows, a subscription's init is refused at once too.
        if began.elapsed() > Duration::from_secs(1) {
            let started = Instant::now();
            let (_, answer) = feed::subscribe(&app.address.to_string(), token).await;
            assert!(started.elapsed() < Duration::from_secs(1), "{answer}");
            assert_ne!(answer["type"], "connection_ack", "{answer}");
        }
        asked += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(asked >= 5, "{asked} rounds of requests during the outage");
}

/// Starts the server again and waits until the service serves: within 2 s.
async fn resume(app: &TestApp, token: &str, server: &custos_api::testing::Supervisor) {
    let starting = server.clone();
    tokio::task::spawn_blocking(move || starting.restart())
        .await
        .unwrap()
        .expect("the server starts again");
    let returned = Instant::now();
    loop {
        let response = app.graphql(Some(token), EMPLOYEES, json!({})).await;
        if response.status == 200 && response.body.get("errors").is_none() {
            break;
        }
        assert_eq!(response.code(), Some("UNAVAILABLE"), "{}", response.body);
        assert!(
            returned.elapsed() < Duration::from_secs(2),
            "not serving 2 s after the database returned: {}",
            response.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_every_request_is_answered_at_once_and_service_resumes() {
    let dir = private_dir();
    let cluster = own_server(&dir).await;
    // The service sees it as a server named by DATABASE_URL: it is not the service's to
    // restart; the test does.
    let server = cluster.supervisor();
    let app = TestApp::spawn_external(cluster.connect_options()).await;
    let session = app.sign_up("outage").await;
    app.create_employee(&session.token, employee("Steady"))
        .await;

    // Stopped cleanly: its socket is gone, and connections are refused at once.
    let stopping = server.clone();
    tokio::task::spawn_blocking(move || stopping.stop_server())
        .await
        .unwrap()
        .expect("the server stops");
    outage(&app, &session.token, Duration::from_secs(5)).await;
    resume(&app, &session.token, &server).await;
    app.create_employee(&session.token, employee("Between"))
        .await;

    // Killed: its socket file stays behind, and a connection attempt is refused over and over
    // until the pool's time-out, unless the service knows the server is down.
    kill("-KILL", &postmaster_pid(dir.path()));
    outage(&app, &session.token, Duration::from_secs(5)).await;
    resume(&app, &session.token, &server).await;

    // The session survived; no write of the outages was saved; writes work again.
    app.create_employee(&session.token, employee("Again")).await;
    let mut names = app.employee_last_names(&session.token).await;
    names.sort();
    assert_eq!(names, ["Again", "Between", "Steady"]);
    app.stop().await;
    stop_own_server(cluster).await;
    assert!(
        !custos_tests::logs().contains("panicked"),
        "no panic in the service's logs"
    );
}

/// Asks as both organisations every 200 ms for 4 s while the `us` server is down: the `us`
/// one is refused at once (from the first second on, when the watcher knows), the `eu` one
/// served.
async fn region_outage(app: &TestApp, us: &custos_tests::Session, eu: &custos_tests::Session) {
    let began = Instant::now();
    let mut rounds = 0;
    while began.elapsed() < Duration::from_secs(4) {
        // The watcher asks four times a second: from the first second on, it knows. A request
        // already running when it finds out is answered then.
        let knows = began.elapsed() > Duration::from_secs(1);
        let started = Instant::now();
        let query = app.graphql(Some(&us.token), EMPLOYEES, json!({})).await;
        if !knows {
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "{}",
                query.body
            );
        } else {
            assert_unavailable(&query, started.elapsed());
            let started = Instant::now();
            let login = app.login(&us.slug, &us.email, &us.password).await;
            let refused = login.expect_err("no login while its server is down");
            assert_unavailable(&refused, started.elapsed());
            let health = reqwest::get(app.url("/healthz")).await.unwrap();
            let health = health.text().await.unwrap();
            assert!(health.contains("database (us): unavailable"), "{health}");
            assert!(!health.contains("database: unavailable"), "{health}");
            let metrics = reqwest::get(app.url("/metrics")).await.unwrap();
            let metrics = metrics.text().await.unwrap();
            assert!(metrics.contains("custos_database_up{server=\"us\"} 0"));
            assert!(metrics.contains("custos_database_up{server=\"default\"} 1"));
        }
        // The other region's organisations do not notice.
        app.graphql(Some(&eu.token), EMPLOYEES, json!({}))
            .await
            .ok();
        let ready = reqwest::get(app.url("/readyz")).await.unwrap().status();
        assert_eq!(ready, 200, "the service serves the other regions");
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rounds >= 5, "{rounds} rounds during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_a_regions_own_server_refuses_its_organisations_at_once_and_no_other() {
    let dir = private_dir();
    let (cluster, app) = us_on_own_server(&dir).await;
    let server = cluster.supervisor();
    let eu = app.sign_up(&custos_tests::slug("outage-eu")).await;
    let us = app.sign_up_in(&custos_tests::slug("outage-us"), "us").await;
    app.create_employee(&us.token, employee("Before")).await;

    // Stopped cleanly (connections are refused at once), then killed (its socket file stays
    // behind, and connecting is refused over and over until the pool's time-out, unless the
    // service knows the server is down).
    let stopping = server.clone();
    tokio::task::spawn_blocking(move || stopping.stop_server())
        .await
        .unwrap()
        .expect("the server stops");
    region_outage(&app, &us, &eu).await;
    resume(&app, &us.token, &server).await;
    // Killed while a login runs (its password hash takes a while): the login is answered as
    // soon as the watcher knows, not after the pool's time-out.
    let logging_in = app.login(&us.slug, &us.email, &us.password);
    let killing = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        kill("-KILL", &postmaster_pid(dir.path()));
    };
    let started = Instant::now();
    let (login, ()) = tokio::join!(logging_in, killing);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a login cut off by the outage answered in {:?}",
        started.elapsed()
    );
    if let Err(refused) = login {
        // Once seen INTERNAL under the whole suite's load: its cause, if it comes back.
        assert_eq!(
            refused.code(),
            Some("UNAVAILABLE"),
            "{}\nthe service's last errors:\n{}",
            refused.body,
            errors_logged()
        );
    }
    region_outage(&app, &us, &eu).await;
    resume(&app, &us.token, &server).await;
    app.create_employee(&us.token, employee("After")).await;
    let mut names = app.employee_last_names(&us.token).await;
    names.sort();
    assert_eq!(names, ["After", "Before"]);
    app.stop().await;
    stop_own_server(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_met_as_a_regions_server_goes_away_is_answered_as_the_outage() {
    use sqlx::{Connection, Executor};
    let dir = private_dir();
    let (cluster, app) = us_on_own_server(&dir).await;
    let server = cluster.supervisor();
    let us = app.sign_up_in(&custos_tests::slug("cut-off"), "us").await;
    app.create_employee(&us.token, employee("Before")).await;
    let database = app.tenant_database(us.tenant_id).await;
    let admin = || async {
        sqlx::PgConnection::connect_with(&cluster.connect_options().database(&database))
            .await
            .expect("a superuser connection to the organisation's database")
    };
    let rename = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");

    // A fault of the database's own, the server up: INTERNAL, as it is.
    let mut conn = admin().await;
    conn.execute(rename("records", "records_away").as_str())
        .await
        .unwrap();
    let broken = app.graphql(Some(&us.token), EMPLOYEES, json!({})).await;
    assert_eq!(broken.code(), Some("INTERNAL"), "{}", broken.body);
    conn.execute(rename("records_away", "records").as_str())
        .await
        .unwrap();

    // The same faults met by a list and a login just before the server goes away: the two
    // wait on the tables an uncommitted rename holds; the rename is committed, and the server
    // killed right after, when each has failed and before the watcher has looked.
    let mut tx = conn.begin().await.unwrap();
    tx.execute(rename("records", "records_away").as_str())
        .await
        .unwrap();
    tx.execute(rename("users", "users_away").as_str())
        .await
        .unwrap();
    let listing = app.graphql(Some(&us.token), EMPLOYEES, json!({}));
    let logging_in = app.login(&us.slug, &us.email, &us.password);
    let cutting = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.commit().await.expect("the rename commits");
        tokio::time::sleep(Duration::from_millis(20)).await;
        kill("-KILL", &postmaster_pid(dir.path()));
        Instant::now()
    };
    let (list, login, cut) = tokio::join!(listing, logging_in, cutting);
    assert!(cut.elapsed() < Duration::from_secs(2));
    assert_eq!(list.code(), Some("UNAVAILABLE"), "{}", list.body);
    let refused = login.expect_err("no login as its server goes away");
    assert_eq!(refused.code(), Some("UNAVAILABLE"), "{}", refused.body);
    drop(conn);

    let starting = server.clone();
    tokio::task::spawn_blocking(move || starting.restart())
        .await
        .unwrap()
        .expect("the server starts again");
    let mut conn = admin().await;
    conn.execute(rename("records_away", "records").as_str())
        .await
        .unwrap();
    conn.execute(rename("users_away", "users").as_str())
        .await
        .unwrap();
    let returned = Instant::now();
    while app
        .graphql(Some(&us.token), EMPLOYEES, json!({}))
        .await
        .code()
        == Some("UNAVAILABLE")
    {
        assert!(returned.elapsed() < Duration::from_secs(5), "serving again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.employee_last_names(&us.token).await, ["Before"]);
    app.login(&us.slug, &us.email, &us.password)
        .await
        .expect("the login works again");
    app.stop().await;
    stop_own_server(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_new_connections_is_an_outage_though_old_ones_answer() {
    let dir = private_dir();
    let (cluster, app) = us_on_own_server(&dir).await;
    let server = cluster.supervisor();
    let us = app
        .sign_up_in(&custos_tests::slug("smart-stop"), "us")
        .await;
    app.create_employee(&us.token, employee("Before")).await;
    // A smart shutdown (SIGTERM): the connections open, the watcher's among them, are served
    // until their clients leave; new ones are refused.
    kill("-TERM", &postmaster_pid(dir.path()));
    let began = Instant::now();
    loop {
        let health = reqwest::get(app.url("/healthz")).await.unwrap();
        let health = health.text().await.unwrap();
        if health.contains("database (us): unavailable") {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "still taken as up: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let query = app.graphql(Some(&us.token), EMPLOYEES, json!({})).await;
    assert_unavailable(&query, started.elapsed());
    // Stopped for good and started again: served as before.
    let stopping = server.clone();
    tokio::task::spawn_blocking(move || stopping.stop_server())
        .await
        .unwrap()
        .expect("the server stops");
    resume(&app, &us.token, &server).await;
    assert_eq!(app.employee_last_names(&us.token).await, ["Before"]);
    app.stop().await;
    stop_own_server(cluster).await;
}

#[test]
fn a_cluster_found_stopping_as_the_service_starts_is_started_again() {
    // A service that went away leaves its server to its watchdog, which stops it while the
    // next service may already be starting on the same directory and stopping it too. Each
    // round lets the watchdog begin (the cluster dropped, as by the process's exit) a little
    // longer before the next start, so that in some rounds the server is gone between the
    // start's look at it and its own stop.
    let dir = private_dir();
    let postgres = dir.path().join("postgres");
    let settings = [("fsync", "off".to_owned())];
    let mut cluster = PrivateCluster::start(&postgres, &settings).expect("the server starts");
    for round in 0..24u64 {
        drop(cluster);
        std::thread::sleep(Duration::from_millis(round * 2));
        cluster = PrivateCluster::start(&postgres, &settings)
            .unwrap_or_else(|err| panic!("round {round}: the server starts again: {err}"));
    }
    cluster.stop().expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_cannot_start_again_ends_the_service_with_an_error() {
    let app = TestApp::spawn_private(private_dir(), |config| config.backups = None).await;
    let pgdata = app.data_dir.path().join("postgres/data");
    // A setting PostgreSQL refuses: every restart fails.
    std::fs::OpenOptions::new()
        .append(true)
        .open(pgdata.join("postgresql.conf"))
        .and_then(|mut conf| std::io::Write::write_all(&mut conf, b"\nshared_buffers = 'a lot'\n"))
        .expect("the configuration is broken");
    kill("-KILL", &postmaster_pid(app.data_dir.path()));
    let error = tokio::time::timeout(Duration::from_secs(60), app.wait_stopped())
        .await
        .expect("the service gives up within a minute")
        .expect_err("the service ends with an error");
    assert!(
        format!("{error:#}").contains("did not start again"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_changing_one_record_with_expected_versions_lose_no_update() {
    const READ: &str = "query($id: ID!) { employee(id: $id) { version jobTitle } }";
    const WRITE: &str = "mutation($id: ID!, $v: Int, $input: UpdateEmployeeInput!) {
        updateEmployee(id: $id, expectedVersion: $v, input: $input) { version } }";
    let app = TestApp::spawn().await;
    let session = app.sign_up("race32").await;
    let created = app
        .create_employee(&session.token, employee("Contested"))
        .await;
    let id = created["id"].clone();
    // Each client adds its own mark to the job title, read-modify-write, retrying on CONFLICT.
    let clients = (0..32).map(|client| {
        let (app, token, id) = (&app, session.token.clone(), id.clone());
        async move {
            let mark = format!("m{client:02}");
            let mut conflicts = 0;
            loop {
                let read = app
                    .graphql(Some(&token), READ, json!({ "id": id }))
                    .await
                    .ok();
                let version = read.data("employee.version").as_i64().unwrap();
                let title = read.data("employee.jobTitle").as_str().unwrap_or("");
                let written = app
                    .graphql(
                        Some(&token),
                        WRITE,
                        json!({ "id": id, "v": version,
                                "input": { "jobTitle": format!("{title} {mark}").trim() } }),
                    )
                    .await;
                match written.code() {
                    None => return conflicts,
                    Some("CONFLICT") => conflicts += 1,
                    Some(other) => panic!("{other}: {}", written.body),
                }
            }
        }
    });
    let conflicts: i32 = futures::future::join_all(clients).await.into_iter().sum();
    let read = app
        .graphql(Some(&session.token), READ, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(
        read.data("employee.version"),
        &json!(33),
        "one event per client"
    );
    let title = read.data("employee.jobTitle").as_str().unwrap();
    let mut marks: Vec<&str> = title.split(' ').collect();
    marks.sort_unstable();
    let expected: Vec<String> = (0..32).map(|client| format!("m{client:02}")).collect();
    assert_eq!(marks, expected, "every client's change is there, once");
    assert!(conflicts > 0, "the clients did race");
}
