//! The `custos` binary as a new user runs it: its own private cluster in a fresh data
//! directory, `tenant create` with the password on stdin, `serve`, a graceful stop, and
//! recovery after the service was killed.
//!
//! These live with the crate that owns the binary (not in the `tests/` suite) because only
//! there does Cargo build the binary for the tests and tell them where it is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// The test harness's HTTP receiver and SMTP server (the `tests/` suite's), for the webhook
// and notification workers; these tests use only part of them.
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/feed.rs"]
mod feed;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/receiver.rs"]
mod receiver;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/smtp.rs"]
mod smtp;

/// The binary under test, built by Cargo for this integration test.
fn custos() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_custos"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn data_dir() -> tempfile::TempDir {
    // Under the system temp dir: reachable by an unprivileged cluster user when run as root.
    let dir = tempfile::Builder::new()
        .prefix("custos-cli-")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn serve(dir: &Path, port: u16) -> Child {
    serve_with(dir, port, &[])
}

/// `custos serve` with these environment variables set.
fn serve_with(dir: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    Command::new(custos())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `custos tenant create` for `slug` with the administrator `email`, the password on stdin.
fn create_tenant(dir: &Path, slug: &str, email: &str, extra: &[&str]) -> std::process::Output {
    let mut create = Command::new(custos())
        .args(extra)
        .args([
            "tenant", "create", "--slug", slug, "--name", "CLI Org", "--region", "eu",
        ])
        .args([
            "--admin-email",
            email,
            "--admin-name",
            "Cli Admin",
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("DATABASE_URL")
        .env_remove("CUSTOS_ADMIN_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    create
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long cli password\n")
        .unwrap();
    create.wait_with_output().unwrap()
}

async fn wait_ready(port: u16) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if response.status() == 200 {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("custos serve did not become ready");
}

async fn graphql_as(port: u16, token: &str, query: &str) -> Value {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn graphql(port: u16, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A session token of a user `tenant create` made (the password these tests give it).
async fn login(port: u16, slug: &str, email: &str) -> String {
    graphql(
        port,
        "mutation($t: String!, $e: String!) { login(tenant: $t, email: $e, password: \"a long cli password\") { token } }",
        json!({ "t": slug, "e": email }),
    )
    .await["data"]["login"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "custos serve exits cleanly on SIGTERM: {status}"
    );
}

fn postgres_running_in(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("postgres/data/postmaster.pid"))
        .ok()
        .and_then(|pid| {
            pid.lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
        })
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

#[tokio::test]
async fn a_new_user_creates_a_tenant_serves_and_logs_in() {
    let dir = data_dir();
    let output = create_tenant(
        dir.path(),
        "cli-org",
        "cli@example.org",
        &["--log-format", "json"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created organisation cli-org"));
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.lines().count() > 0);
    for line in logs.lines() {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            parsed.get("level").is_some() && parsed.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(
        !postgres_running_in(dir.path()),
        "one-shot commands stop the cluster they started"
    );

    let port = free_port();
    let child = serve(dir.path(), port);
    let ready_after = wait_ready(port).await;
    let login = graphql(
        port,
        "mutation { login(tenant: \"cli-org\", email: \"cli@example.org\", password: \"a long cli password\") { token } }",
        json!({}),
    )
    .await;
    let token = login["data"]["login"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Something for retention to do: an archived contact under a policy of no delay.
    let prepared = graphql_as(
        port,
        &token,
        "mutation { defineRetentionPolicy(input: { datasheet: CONTACTS, name: \"Archived\", trigger: ARCHIVED, periodDays: 0 }) { id } }",
    )
    .await;
    let contact = graphql_as(
        port,
        &token,
        "mutation { createContact(input: { firstName: \"Cli\", lastName: \"Contact\" }) { id } }",
    )
    .await;
    let archived = graphql_as(
        port,
        &token,
        &format!(
            "mutation {{ archiveRecord(id: \"{}\") {{ id }} }}",
            contact["data"]["createContact"]["id"]
                .as_str()
                .unwrap_or_default()
        ),
    )
    .await;
    // Verification works beside the running service (on its cluster)...
    let verify = || {
        Command::new(custos())
            .args(["verify", "--data-dir"])
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    // So does the read models' status.
    let status = || {
        Command::new(custos())
            .args(["projections", "status", "--tenant", "cli-org", "--data-dir"])
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    // And a read model rebuilt and swapped in beside it.
    let rebuild = Command::new(custos())
        .args([
            "projections",
            "rebuild",
            "records",
            "--tenant",
            "cli-org",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let running = verify();
    let running_status = status();
    stop(child);
    let rebuilt = String::from_utf8_lossy(&rebuild.stdout);
    assert!(
        rebuild.status.success()
            && rebuilt.contains("cli-org: records rebuilt from")
            && rebuilt.contains("; it stood still for")
            && rebuilt.contains(" s while its tables were swapped"),
        "{rebuilt} {}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    // ...and without it (starting the cluster itself).
    let stopped = verify();
    let stopped_status = status();
    for output in [&running, &stopped] {
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && printed.contains("cli-org") && printed.contains("OK"),
            "{printed} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for output in [&running_status, &stopped_status] {
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success()
                && printed.contains("cli-org: 14 read models")
                && ["records", "audit_log", "users", "webhooks"]
                    .iter()
                    .all(|name| printed.contains(&format!("  {name} "))),
            "{printed} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Every change above waited for its read models, and nothing wrote since.
    let printed = String::from_utf8_lossy(&stopped_status.stdout);
    assert!(
        printed.contains("cli-org: 14 read models, all up to date"),
        "{printed}"
    );

    assert!(login["data"]["login"]["token"].is_string(), "{login}");
    assert!(
        prepared["errors"].is_null() && archived["errors"].is_null(),
        "{prepared} {archived}"
    );
    let run = |tenant: &str| {
        Command::new(custos())
            .args(["retention", "run", "--tenant", tenant, "--data-dir"])
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let output = run("cli-org");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("erased 1 record(s)"), "{printed}");
    let unknown = run("no-such-org");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no organisation has the slug"));
    assert!(
        ready_after < Duration::from_secs(30),
        "ready after {ready_after:?}"
    );
    assert!(
        !postgres_running_in(dir.path()),
        "SIGTERM stops the private cluster"
    );
}

#[tokio::test]
async fn a_killed_service_leaves_nothing_that_blocks_the_next_start() {
    let dir = data_dir();
    let port = free_port();
    let mut first = serve(dir.path(), port);
    wait_ready(port).await;

    first.kill().unwrap();
    first.wait().unwrap();
    // The watchdog stops PostgreSQL; a postmaster.pid may be left behind either way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres_running_in(dir.path()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !postgres_running_in(dir.path()),
        "the watchdog stopped the orphaned cluster"
    );
    std::fs::write(dir.path().join("postgres/data/postmaster.pid"), "999999\n").ok();

    let port = free_port();
    let second = serve(dir.path(), port);
    wait_ready(port).await;
    stop(second);
}

/// A notification whose delivery the worker was killed in the middle of (the mail server had
/// its data but had not answered): the next start sends it once its lease ran out, and the
/// mail server has it exactly once.
#[tokio::test]
async fn a_notice_cut_off_by_a_killed_worker_arrives_exactly_once() {
    let dir = data_dir();
    let output = create_tenant(dir.path(), "mail-org", "mail@example.org", &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let suspend = Command::new(custos())
        .args([
            "tenant",
            "suspend",
            "--slug",
            "mail-org",
            "--reason",
            "late payment",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        suspend.status.success(),
        "{}",
        String::from_utf8_lossy(&suspend.stderr)
    );

    let smtp = smtp::SmtpServer::start().await;
    smtp.set_mode(smtp::Mode::Hold);
    let url = smtp.url();
    let env = [
        ("CUSTOS_SMTP_URL", url.as_str()),
        ("CUSTOS_NOTIFICATION_LEASE_SECONDS", "2"),
    ];
    let port = free_port();
    let mut first = serve_with(dir.path(), port, &env);
    wait_ready(port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.held() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(smtp.held(), 1, "the notice reached the mail server");
    first.kill().unwrap();
    first.wait().unwrap();
    // Killed before the server answered: the server sees the connection go, nothing delivered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while smtp.abandoned() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(smtp.abandoned(), 1);
    smtp.set_mode(smtp::Mode::Accept);
    assert!(smtp.mails().is_empty(), "{:#?}", smtp.mails());
    // The watchdog stops the killed service's cluster before the next start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres_running_in(dir.path()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let port = free_port();
    let second = serve_with(dir.path(), port, &env);
    wait_ready(port).await;
    smtp.until(Duration::from_secs(30), |mails| !mails.is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0].to, vec!["mail@example.org".to_owned()]);
    assert!(mails[0].subject().contains("is suspended"));
    let token = login(port, "mail-org", "mail@example.org").await;
    let listed = graphql_as(
        port,
        &token,
        "{ notifications { edges { node { id kind status attempts } } } }",
    )
    .await;
    let node = &listed["data"]["notifications"]["edges"][0]["node"];
    assert_eq!(node["kind"], "SUSPENDED", "{listed}");
    assert_eq!(node["status"], "SENT", "{listed}");
    assert_eq!(node["attempts"], 2, "{listed}");
    let message_id = mails[0].header("Message-ID").unwrap();
    assert_eq!(
        message_id,
        format!("<{}@custos>", node["id"].as_str().unwrap())
    );
    stop(second);
}

#[tokio::test]
async fn a_webhook_cut_off_by_a_killed_worker_is_answered_once_with_one_id() {
    let dir = data_dir();
    let output = create_tenant(dir.path(), "hook-org", "hook@example.org", &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let receiver = receiver::Receiver::start().await;
    let env = [
        ("CUSTOS_WEBHOOK_LEASE_SECONDS", "16"),
        ("CUSTOS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true"),
    ];
    let port = free_port();
    let mut first = serve_with(dir.path(), port, &env);
    wait_ready(port).await;
    let token = login(port, "hook-org", "hook@example.org").await;
    let registered = graphql_as(
        port,
        &token,
        &format!(
            "mutation {{ registerWebhook(input: {{ url: \"{}\", events: [RECORD_CREATED] }}) {{ webhook {{ id }} }} }}",
            receiver.url("/killed")
        ),
    )
    .await;
    assert!(registered["errors"].is_null(), "{registered}");
    receiver.hold();
    let created = graphql_as(
        port,
        &token,
        "mutation { createContact(input: { firstName: \"Held\", lastName: \"Delivery\" }) { id } }",
    )
    .await;
    assert!(created["errors"].is_null(), "{created}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.held().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        receiver.held().len(),
        1,
        "the delivery reached the endpoint"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // Killed before the endpoint answered: the held request is let go (answered 503).
    receiver.answer(204);
    assert!(receiver.received().is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres_running_in(dir.path()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let port = free_port();
    let second = serve_with(dir.path(), port, &env);
    wait_ready(port).await;
    // Sent again once the killed worker's lease (16 s) ran out.
    let received = receiver.until(|r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.received().len(), 1, "answered once");
    let held = &receiver.held()[0];
    assert_eq!(received[0].header("webhook-id"), held.header("webhook-id"));
    assert_eq!(received[0].body, held.body, "the same message");
    assert_eq!(
        received[0].json()["data"]["recordId"],
        created["data"]["createContact"]["id"]
    );
    stop(second);
}

#[test]
fn help_is_available_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["tenant", "create", "--help"],
        vec!["retention", "run", "--help"],
        vec!["verify", "--help"],
        vec!["projections", "status", "--help"],
        vec!["projections", "rebuild", "--help"],
    ] {
        let output = Command::new(custos()).args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let output = Command::new(custos())
        .args(["tenant", "create", "--help"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("--password"),
        "passwords are never flags"
    );
}

/// When the suite runs as root (as CI does), also run `custos serve` as an ordinary user: the
/// cluster then runs as that user directly. (Run as an ordinary user, the other tests in this
/// module already cover that path.)
#[tokio::test]
async fn serves_as_an_ordinary_user() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user");
    let dir = data_dir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    // A copy of the binary the unprivileged user can surely execute, wherever the checkout is.
    let binary = dir.path().join("custos");
    std::fs::copy(custos(), &binary).unwrap();
    let port = free_port();
    let log = dir.path().join("serve.log");
    use std::os::unix::process::CommandExt;
    let child = Command::new(&binary)
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("DATABASE_URL")
        .current_dir(dir.path())
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(data.join("postgres/data")).unwrap(),
    );
    stop(child);

    assert_eq!(
        owner,
        user.uid.as_raw(),
        "the cluster belongs to the user who started it"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!logs.is_empty());
    for line in logs.lines() {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
}

/// `custos serve` writing its log (JSON lines) to `log`.
fn serve_logging(dir: &Path, port: u16, log: &Path) -> Child {
    Command::new(custos())
        .args(["--log-format", "json", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// `custos ARGS --data-dir DIR` (on its private cluster, or the running service's), to its end.
fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(custos())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

/// The lines of a JSON log at level ERROR.
fn error_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line).map_or(true, |line| line["level"] == "ERROR")
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_stop_closes_subscriptions_with_going_away_and_logs_no_error() {
    let dir = data_dir();
    let email = "stopper@example.org";
    let created = create_tenant(dir.path(), "stopper", email, &[]);
    assert!(created.status.success());
    let port = free_port();
    let log = dir.path().join("serve.log");
    let service = serve_logging(dir.path(), port, &log);
    wait_ready(port).await;
    let token = login(port, "stopper", email).await;

    let (mut socket, ack) = feed::subscribe(&format!("127.0.0.1:{port}"), &token).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");

    let stopping = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || stop(service));
    let closed = loop {
        match feed::next(&mut socket, Duration::from_secs(30)).await {
            Some(message) if message["type"] == "closed" => break message,
            Some(_) => continue,
            None => panic!("the subscription was not closed"),
        }
    };
    assert_eq!(closed["code"], 1001, "going away: {closed}");
    stopped.await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(30));
    assert!(
        !postgres_running_in(dir.path()),
        "the cluster stopped with the service"
    );
    assert_eq!(
        error_lines(&log),
        Vec::<String>::new(),
        "a clean stop logs no error"
    );
}

/// Every employee's last name, page after page.
async fn all_last_names(port: u16, token: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = Value::Null;
    loop {
        let page: Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/graphql"))
            .bearer_auth(token)
            .json(&json!({
                "query": "query($after: String) { employees(first: 100, after: $after) { pageInfo { hasNextPage endCursor } edges { node { lastName } } } }",
                "variables": { "after": after },
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let employees = &page["data"]["employees"];
        let edges = employees["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"));
        names.extend(
            edges
                .iter()
                .map(|edge| edge["node"]["lastName"].as_str().unwrap().to_owned()),
        );
        if employees["pageInfo"]["hasNextPage"] != true {
            return names;
        }
        after = employees["pageInfo"]["endCursor"].clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_killed_under_eight_writers_loses_no_acknowledged_write() {
    let dir = data_dir();
    let email = "writers@example.org";
    let created = create_tenant(dir.path(), "writers", email, &[]);
    assert!(created.status.success());
    let port = free_port();
    let mut service = serve(dir.path(), port);
    wait_ready(port).await;
    let token = login(port, "writers", email).await;

    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let token = token.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    let name = format!("Writer{writer}x{n}");
                    let sent = client
                        .post(format!("http://127.0.0.1:{port}/graphql"))
                        .bearer_auth(&token)
                        .json(&json!({
                            "query": "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
                            "variables": { "input": { "firstName": "Kim", "lastName": name, "startDate": "2024-02-01" } },
                        }))
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    let Ok(body) = response.json::<Value>().await else { break };
                    if body["data"]["createEmployee"]["id"].is_string() {
                        acknowledged.push(name);
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    service.kill().unwrap();
    service.wait().unwrap();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() >= 8,
        "the writers wrote before the kill: {}",
        acknowledged.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres_running_in(dir.path()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let port = free_port();
    let service = serve(dir.path(), port);
    wait_ready(port).await;
    let names = all_last_names(port, &token).await;
    let mut seen = std::collections::HashSet::new();
    let duplicates: Vec<&String> = names.iter().filter(|name| !seen.insert(*name)).collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|name| !seen.contains(name))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // At most one write per writer was saved without its answer arriving.
    assert!(
        names.len() <= acknowledged.len() + 8,
        "{} saved",
        names.len()
    );
    stop(service);

    // No gap, no broken chain, and read models equal to history.
    let verified = run_in(dir.path(), &["verify", "--read-models"]);
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[tokio::test]
async fn commands_that_need_the_data_directory_run_beside_the_service() {
    let dir = data_dir();
    let port = free_port();
    let service = serve(dir.path(), port);
    wait_ready(port).await;

    // An organisation created beside the running service serves at once.
    let created = create_tenant(dir.path(), "beside", "beside@example.org", &[]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = login(port, "beside", "beside@example.org").await;
    assert!(!token.is_empty(), "the new administrator logs in");
    // Retention runs beside it too (no policy yet: nothing to erase).
    let retention = run_in(dir.path(), &["retention", "run"]);
    assert!(
        retention.status.success(),
        "{}",
        String::from_utf8_lossy(&retention.stderr)
    );
    let listed = run_in(dir.path(), &["tenant", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("beside"));
    // The commands left the service's cluster running, and the service serving.
    assert!(postgres_running_in(dir.path()));
    let me = graphql_as(port, &token, "{ me { email } }").await;
    assert_eq!(me["data"]["me"]["email"], "beside@example.org", "{me}");
    stop(service);
}

/// Every span in the OTLP/HTTP JSON export requests `received` got.
fn exported_spans(received: &[receiver::Received]) -> Vec<Value> {
    received
        .iter()
        .filter(|request| request.path == "/v1/traces")
        .flat_map(|request| {
            let body = request.json();
            let mut spans = Vec::new();
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    spans.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                }
            }
            spans
        })
        .collect()
}

/// A span attribute's value, as text.
fn attribute(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|attribute| attribute["key"] == key)
        .map(|attribute| {
            let value = &attribute["value"];
            value["stringValue"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string())
        })
}

#[tokio::test]
async fn traces_reach_an_otlp_collector_in_the_callers_trace_without_personal_values() {
    let collector = receiver::Receiver::start().await;
    let dir = data_dir();
    let email = "tracer.admin@example.org";
    let created = create_tenant(dir.path(), "tracer", email, &[]);
    assert!(created.status.success());
    let port = free_port();
    let endpoint = format!("http://{}", collector.addr);
    let service = serve_with(
        dir.path(),
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    wait_ready(port).await;
    let token = login(port, "tracer", email).await;

    // The caller's trace, and its own request id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let request_id = "0193a0b4-7c1e-7d2a-9f00-5a1b2c3d4e5f";
    let personal = ["Zebulon", "Quixotically", "zebulon.q@example.net"];
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("x-request-id", request_id)
        .json(&json!({
            "query": "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id } }",
            "variables": { "input": {
                "firstName": personal[0], "lastName": personal[1], "email": personal[2],
                "startDate": "2024-02-01",
            } },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        request_id,
        "the caller's request id is kept"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["data"]["createEmployee"]["id"].is_string(), "{body}");

    let received = collector
        .until(|received| {
            exported_spans(received)
                .iter()
                .filter(|span| span["traceId"] == trace_id)
                .count()
                >= 2
        })
        .await;
    let spans = exported_spans(&received);
    let in_trace: Vec<&Value> = spans.iter().filter(|s| s["traceId"] == trace_id).collect();
    let server = in_trace
        .iter()
        .find(|span| span["name"] == "POST /graphql")
        .unwrap_or_else(|| panic!("no request span in {in_trace:?}"));
    assert_eq!(
        server["parentSpanId"], caller_span,
        "a child of the caller's span"
    );
    assert_eq!(attribute(server, "request.id").as_deref(), Some(request_id));
    assert_eq!(attribute(server, "http.route").as_deref(), Some("/graphql"));
    let operation = in_trace
        .iter()
        .find(|span| span["name"] == "graphql")
        .unwrap_or_else(|| panic!("no operation span in {in_trace:?}"));
    assert_eq!(operation["parentSpanId"], server["spanId"]);
    assert_eq!(
        attribute(operation, "graphql.operation.type").as_deref(),
        Some("mutation")
    );
    assert_eq!(
        attribute(operation, "graphql.field").as_deref(),
        Some("createEmployee")
    );
    assert_eq!(attribute(operation, "graphql.code").as_deref(), Some("OK"));

    // Nothing personal, secret or typed by the client in any export.
    let everything: String = received
        .iter()
        .map(|request| String::from_utf8_lossy(&request.body).into_owned())
        .collect();
    for value in personal
        .iter()
        .chain(&[email, "a long cli password", token.as_str()])
    {
        assert!(!everything.contains(value), "{value} was exported");
    }
    stop(service);
}

/// The `sh` blocks of the README's section `heading`, in order.
fn readme_blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with(heading))
        .unwrap_or_else(|| panic!("the README has a section {heading:?}"));
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

/// Runs `script` with bash (failing on any error) and returns each JSON document it printed.
fn run_printed(script: &str) -> Vec<Value> {
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}\nfailed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .map(|document| document.unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}")))
        .collect()
}

#[tokio::test]
async fn the_readmes_first_session_runs_as_printed() {
    let dir = data_dir();
    let port = free_port();
    let service = serve(dir.path(), port);
    wait_ready(port).await;
    // As printed, but on this test's port, with the token and id the earlier steps answered
    // where the README says to put them.
    let on_port = |block: &str| block.replace("localhost:8080", &format!("localhost:{port}"));
    let blocks = readme_blocks("A first session with curl");
    assert_eq!(blocks.len(), 3, "{blocks:?}");

    let signed_up = run_printed(&on_port(&blocks[0]));
    assert!(signed_up[0].get("errors").is_none(), "{signed_up:?}");
    let token = signed_up[0]["data"]["signUp"]["token"].as_str().unwrap();

    let given = |block: &str, name: &str, value: &str| {
        let lines: Vec<String> = block
            .lines()
            .map(|line| {
                if line.starts_with(&format!("{name}=")) {
                    format!("{name}={value}")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        assert!(lines.iter().any(|line| line == &format!("{name}={value}")));
        lines.join("\n")
    };
    let created = run_printed(&given(&on_port(&blocks[1]), "TOKEN", token));
    assert!(created[0].get("errors").is_none(), "{created:?}");
    let id = created[0]["data"]["createEmployee"]["id"].as_str().unwrap();

    // The same shell as the step before: TOKEN is still set.
    let script = format!("TOKEN={token}\n{}", given(&on_port(&blocks[2]), "ID", id));
    let history = run_printed(&script);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        history[0]["data"]["updateEmployee"]["version"], 2,
        "{history:?}"
    );
    let entries = history[1]["data"]["recordHistory"]["edges"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 2, "{history:?}");
    stop(service);
}
