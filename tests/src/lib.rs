//! Shared helpers for the end-to-end suite: one private PostgreSQL cluster per test run
//! (started by the same launcher as `custos serve`), and a [`TestApp`] per test with its own
//! catalog database, whose tenants are copies of the migrated template. Everything a test
//! creates is dropped when its `TestApp` is dropped.

pub mod feed;
pub mod receiver;
pub mod smtp;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use custos_api::testing::PrivateCluster;
use custos_api::testing::Services;
use custos_api::Application;
use custos_api::{Config, DatabaseConfig};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Every log line the services in this test process wrote, for tests that inspect logs.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Shared {
    cluster: PrivateCluster,
    logs: LogBuffer,
}

/// The cluster directory: one per user, reused across runs (initdb only once), under the
/// system temp directory so an unprivileged cluster user can reach it when tests run as root.
fn cluster_dir() -> PathBuf {
    std::env::temp_dir().join(format!("custos-test-{}", nix_uid()))
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let logs = LogBuffer::default();
        // A panic of the service (in any of its tasks) is written into the log the tests
        // read, as well as where Rust writes it. A test's own failed assertion is not: it
        // panics on the thread the test harness named after the test (`module::test` in the
        // suites with modules, as the e2e suite), and
        // would otherwise fail every other test that looks for panics in the shared log.
        let previous = std::panic::take_hook();
        let record = logs.clone();
        std::panic::set_hook(Box::new(move |info| {
            let test_thread = std::thread::current()
                .name()
                .is_some_and(|name| name.contains("::"));
            if !test_thread {
                let line = format!("panicked: {info}\n");
                let _ = std::io::Write::write_all(&mut record.clone(), line.as_bytes());
            }
            previous(info);
        }));
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,hyper_util=info,h2=info,reqwest=info,tower=info")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        // A service stopped by dropping its test may leave a connection half-way through
        // authentication; its backend would hold the catalog's DROP DATABASE for the default
        // minute.
        let settings = [
            ("max_connections", "500".to_owned()),
            ("fsync", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("authentication_timeout", "2s".to_owned()),
        ];
        let cluster =
            PrivateCluster::start(&cluster_dir(), &settings).expect("the test cluster starts");
        // Leftovers of an interrupted run, and a template built from older migrations.
        std::thread::spawn({
            let options = cluster.connect_options();
            move || block_on(drop_leftovers(options))
        })
        .join()
        .expect("cleanup thread");
        Shared { cluster, logs }
    })
}

/// The second server, for the `us` region of apps made with [`TestApp::spawn_two_regions`]:
/// a private cluster of its own (started on first use, reused across runs like the first).
static US: OnceLock<PrivateCluster> = OnceLock::new();

fn us_cluster() -> &'static PrivateCluster {
    US.get_or_init(|| {
        shared();
        let settings = [
            ("max_connections", "200".to_owned()),
            ("fsync", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("authentication_timeout", "2s".to_owned()),
        ];
        let dir = std::env::temp_dir().join(format!("custos-test-{}-us", nix_uid()));
        let cluster = PrivateCluster::start(&dir, &settings).expect("the us test cluster starts");
        std::thread::spawn({
            let options = cluster.connect_options();
            move || block_on(drop_leftovers(options))
        })
        .join()
        .expect("cleanup thread");
        cluster
    })
}

/// Superuser options for the `us` region's cluster (started if it is not yet).
pub fn us_admin_options(database: &str) -> PgConnectOptions {
    us_cluster()
        .connect_options()
        .database(database)
        .disable_statement_logging()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

async fn drop_leftovers(options: PgConnectOptions) {
    let mut admin = PgConnection::connect_with(&options.disable_statement_logging())
        .await
        .expect("admin connection");
    let databases: Vec<String> = sqlx::query_scalar(
        r"SELECT datname FROM pg_database WHERE datname LIKE 'custos\_t\_%' OR datname LIKE 'custos\_v\_%' OR datname LIKE 'custos\_test\_%' OR datname = 'custos_tenant_template'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("list databases");
    for db in databases {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    let roles: Vec<String> =
        sqlx::query_scalar(r"SELECT rolname FROM pg_roles WHERE rolname LIKE 'custos\_t\_%' OR rolname LIKE 'custos\_v\_%'")
            .fetch_all(&mut admin)
            .await
            .expect("list roles");
    for role in roles {
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\""))
            .execute(&mut admin)
            .await;
    }
}

/// The logs of every service in this test process so far.
pub fn logs() -> String {
    shared().logs.contents()
}

/// The shared cluster's own server log.
pub fn cluster_log() -> String {
    shared();
    std::fs::read_to_string(cluster_dir().join("postgres.log")).unwrap_or_default()
}

/// The shared cluster's superuser password, for programs that connect on their own.
fn superuser_password() -> String {
    shared();
    std::fs::read_to_string(cluster_dir().join("superuser.password"))
        .expect("the test cluster's password")
        .trim()
        .to_owned()
}

/// A plain-text `pg_dump` of a database of the shared cluster, as a superuser sees it.
pub fn pg_dump(database: &str) -> String {
    shared();
    pg_dump_at(&cluster_dir(), database)
}

/// A plain-text `pg_dump` of a database of the private cluster in `dir`
/// (`<data-dir>/postgres`), as a superuser sees it.
pub fn pg_dump_at(dir: &std::path::Path, database: &str) -> String {
    let bin = custos_api::testing::find_bin_dir().expect("PostgreSQL binaries");
    let password = std::fs::read_to_string(dir.join("superuser.password"))
        .expect("the cluster's password")
        .trim()
        .to_owned();
    // The server's own directory when it has pg_dump; some installs keep only the server
    // programs there and pg_dump on PATH.
    let program = Some(bin.join("pg_dump"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pg_dump".into());
    let output = std::process::Command::new(program)
        .args([
            "--host",
            &dir.join("run").display().to_string(),
            "--port",
            "5432",
        ])
        .args(["--username", "custos", "--no-password", database])
        .env("PGPASSWORD", password)
        .output()
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a PostgreSQL client program (`pg_dump`, `pg_restore`) against the shared cluster as
/// its superuser; panics with its stderr if it fails.
pub fn pg_client(program: &str, args: &[&str]) {
    shared();
    let bin = custos_api::testing::find_bin_dir().expect("PostgreSQL binaries");
    let program = Some(bin.join(program))
        .filter(|p| p.exists())
        .unwrap_or_else(|| program.into());
    let dir = cluster_dir();
    let output = std::process::Command::new(&program)
        .args([
            "--host",
            &dir.join("run").display().to_string(),
            "--port",
            "5432",
        ])
        .args(["--username", "custos", "--no-password"])
        .args(args)
        .env("PGPASSWORD", superuser_password())
        .output()
        .expect("the PostgreSQL client runs");
    assert!(
        output.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Superuser options for the shared cluster (to inspect or tamper with databases).
pub fn admin_options(database: &str) -> PgConnectOptions {
    shared()
        .cluster
        .connect_options()
        .database(database)
        .disable_statement_logging()
}

/// A GraphQL response: the HTTP status and the JSON body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub request_id: Option<String>,
}

impl Response {
    /// `data` at a dotted path, e.g. `"createEmployee.id"`.
    pub fn data(&self, path: &str) -> &Value {
        path.split('.')
            .fold(&self.body["data"], |v, key| match key.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[key],
            })
    }

    /// The first error's `extensions.code`, if any.
    pub fn code(&self) -> Option<&str> {
        self.body["errors"][0]["extensions"]["code"].as_str()
    }

    /// The first error's `extensions.field`, if any.
    pub fn field(&self) -> Option<&str> {
        self.body["errors"][0]["extensions"]["field"].as_str()
    }

    /// Every error's `extensions.field`, sorted, after checking that each error is
    /// `VALIDATION` and names a field.
    pub fn invalid_fields(&self) -> Vec<String> {
        let errors = self.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("expected errors: {}", self.body));
        let mut fields: Vec<String> = errors
            .iter()
            .map(|error| {
                assert_eq!(error["extensions"]["code"], "VALIDATION", "{error}");
                error["extensions"]["field"]
                    .as_str()
                    .unwrap_or_else(|| panic!("an error without a field: {error}"))
                    .to_owned()
            })
            .collect();
        fields.sort_unstable();
        fields
    }

    /// Panics with the body unless the request succeeded without errors.
    pub fn ok(self) -> Self {
        assert!(
            self.status == 200 && self.body.get("errors").is_none(),
            "expected success, got {}: {}",
            self.status,
            self.body
        );
        self
    }
}

/// A signed-up organisation and its administrator's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub tenant_id: Uuid,
    pub slug: String,
    pub user_id: Uuid,
    pub email: String,
    pub password: String,
}

/// A running Custos with its own catalog, on the shared cluster.
pub struct TestApp {
    pub address: SocketAddr,
    pub services: Arc<Services>,
    pub catalog: String,
    pub data_dir: tempfile::TempDir,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    /// The service's task (it ends once the service has stopped, its cluster too).
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The `us` region is on the second cluster.
    two_regions: bool,
    /// On a private cluster of its own (stopped with it: nothing to clean on the shared one).
    private: bool,
    /// Its backups go into this directory.
    backup_dir: Option<PathBuf>,
}

/// The passphrase of the backups of [`TestApp::spawn_private`].
pub const BACKUP_PASSPHRASE: &str = "a passphrase for the test backups";

/// A new data directory for a private cluster: as root the cluster runs as an unprivileged
/// user, who must be able to pass through it.
pub fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("custos-private-")
        .tempdir()
        .expect("a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the temp dir");
    dir
}

pub const PASSWORD: &str = "correct horse battery staple";

/// A test service's configuration: any free port, small pools and password hashing, and a
/// login limit no test reaches (every test logs in from 127.0.0.1; the limiter's own test
/// sets a low one).
fn test_config(data_dir: &std::path::Path, database: DatabaseConfig) -> Config {
    let mut config = Config::new(data_dir.to_owned(), database);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.tenant_pool_size = 4;
    config.password_hash_concurrency = 2;
    config.login_attempts_per_minute = 10_000;
    config
}

impl TestApp {
    /// Starts a service on a random port with a fresh catalog.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A service whose `us` region lives on a second PostgreSQL server (its own private
    /// cluster); `eu` stays on the shared one.
    pub async fn spawn_two_regions() -> Self {
        Self::spawn_two_regions_with(|_| {}).await
    }

    /// Like [`TestApp::spawn_two_regions`], adjusting the configuration first.
    pub async fn spawn_two_regions_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let us = us_cluster().connect_options();
        let mut app = Self::spawn_with(move |config| {
            config.regions.insert(custos_api::Region::Us, us);
            adjust(config);
        })
        .await;
        app.two_regions = true;
        app
    }

    /// Like [`TestApp::spawn`], adjusting the configuration first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let shared = shared();
        let data_dir = tempfile::tempdir().expect("a temp dir");
        let catalog = format!("custos_test_{}", Uuid::now_v7().simple());
        let options = shared.cluster.connect_options();
        let mut config = test_config(data_dir.path(), DatabaseConfig::External(Box::new(options)));
        config.catalog_database = catalog.clone();
        adjust(&mut config);
        let application = Application::build(config)
            .await
            .expect("the application builds");
        Self::run(application, catalog, data_dir, false, None)
    }

    /// Like [`TestApp::spawn_with`] (on `DATABASE_URL`), backing up into
    /// `<data_dir>/backups` — archives of every organisation, only on demand unless `adjust`
    /// sets an interval — under [`BACKUP_PASSPHRASE`].
    pub async fn spawn_archived(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut app = Self::spawn_with(|config| {
            let mut backups = custos_api::BackupConfig::new(config.data_dir.join("backups"));
            backups.passphrase = Some(BACKUP_PASSPHRASE.to_owned().into());
            config.backups = Some(backups);
            adjust(config);
        })
        .await;
        std::fs::write(
            app.data_dir.path().join("backup.passphrase"),
            BACKUP_PASSPHRASE,
        )
        .expect("the passphrase file");
        app.backup_dir = Some(app.data_dir.path().join("backups"));
        app
    }

    fn run(
        application: Application,
        catalog: String,
        data_dir: tempfile::TempDir,
        private: bool,
        backup_dir: Option<PathBuf>,
    ) -> Self {
        let address = application.local_addr().expect("a bound address");
        let services = application.services();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(application.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            services,
            catalog,
            data_dir,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            running: Some(running),
            two_regions: false,
            private,
            backup_dir,
        }
    }

    /// A service on a private cluster of its own under `data_dir` (as `custos serve` runs
    /// without DATABASE_URL), backing up into `<data_dir>/backups` (base backups only on
    /// demand unless `adjust` sets an interval). Stop it with [`TestApp::stop`].
    pub async fn spawn_private(
        data_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        shared();
        let backup_dir = data_dir.path().join("backups");
        std::fs::write(data_dir.path().join("backup.passphrase"), BACKUP_PASSPHRASE)
            .expect("the passphrase file");
        let mut config = test_config(data_dir.path(), DatabaseConfig::Private);
        config.cluster_settings = vec![
            ("max_connections", "100".to_owned()),
            ("fsync", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
        ];
        let mut backups = custos_api::BackupConfig::new(backup_dir.clone());
        backups.passphrase = Some(BACKUP_PASSPHRASE.to_owned().into());
        config.backups = Some(backups);
        adjust(&mut config);
        let backup_dir = config.backups.as_ref().map(|b| b.dir.clone());
        let application = Application::build(config)
            .await
            .expect("the application builds");
        let catalog = "custos".to_owned();
        Self::run(application, catalog, data_dir, true, backup_dir)
    }

    /// A service on the PostgreSQL server `options` name (as with `DATABASE_URL`), a server of
    /// the test's own: nothing is cleaned on the shared one.
    pub async fn spawn_external(options: PgConnectOptions) -> Self {
        shared();
        let data_dir = tempfile::tempdir().expect("a temp dir");
        let config = test_config(data_dir.path(), DatabaseConfig::External(Box::new(options)));
        let application = Application::build(config)
            .await
            .expect("the application builds");
        Self::run(application, "custos".to_owned(), data_dir, true, None)
    }

    /// Stops the service and waits until it has (its private cluster stopped too); the data
    /// directory is then handed back.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(running) = self.running.take() {
            running
                .await
                .expect("the service task")
                .expect("the service stops cleanly");
        }
        let placeholder = tempfile::tempdir().expect("a temp dir");
        std::mem::replace(&mut self.data_dir, placeholder)
    }

    /// Waits until the service stops by itself, and returns how it ended.
    pub async fn wait_stopped(mut self) -> anyhow::Result<()> {
        let running = self.running.take().expect("the service is running");
        running.await.expect("the service task")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// Posts a raw body to `/graphql`.
    pub async fn post_raw(&self, token: Option<&str>, body: impl Into<reqwest::Body>) -> Response {
        self.post_with(token, body, &[]).await
    }

    /// Runs a GraphQL document with the extra request `headers`.
    pub async fn graphql_with(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
        headers: &[(&str, &str)],
    ) -> Response {
        let body = json!({ "query": query, "variables": variables }).to_string();
        self.post_with(token, body, headers).await
    }

    /// Posts a raw body to `/graphql` with the extra request `headers`.
    async fn post_with(
        &self,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = self
            .client
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .header("user-agent", "custos-tests/1.0")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the request is sent");
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Response {
            status,
            body,
            request_id,
        }
    }

    /// Runs a GraphQL document, as `token`'s session when given.
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: Value) -> Response {
        let body = json!({ "query": query, "variables": variables }).to_string();
        self.post_raw(token, body).await
    }

    /// Signs up an organisation `slug` with a unique administrator email.
    pub async fn sign_up(&self, slug: &str) -> Session {
        self.sign_up_in(slug, "eu").await
    }

    /// Signs up an organisation `slug` in `region` (`eu` or `us`).
    pub async fn sign_up_in(&self, slug: &str, region: &str) -> Session {
        let email = format!("admin-{}@{slug}.example.org", Uuid::now_v7().simple());
        let response = self
            .graphql(
                None,
                "mutation($input: SignUpInput!) { signUp(input: $input) { token tenant { id slug } user { id email } } }",
                json!({ "input": {
                    "organization": format!("Org {slug}"),
                    "slug": slug,
                    "region": region,
                    "adminEmail": email,
                    "adminName": "Ada Admin",
                    "password": PASSWORD,
                }}),
            )
            .await
            .ok();
        let id = |path: &str| {
            Uuid::parse_str(response.data(path).as_str().expect("an id")).expect("a uuid")
        };
        Session {
            token: response
                .data("signUp.token")
                .as_str()
                .expect("a token")
                .to_owned(),
            tenant_id: id("signUp.tenant.id"),
            slug: slug.to_owned(),
            user_id: id("signUp.user.id"),
            email,
            password: PASSWORD.to_owned(),
        }
    }

    /// Logs in; the token, or the failed response.
    pub async fn login(&self, slug: &str, email: &str, password: &str) -> Result<String, Response> {
        let response = self
            .graphql(
                None,
                "mutation($t: String!, $e: String!, $p: String!) { login(tenant: $t, email: $e, password: $p) { token } }",
                json!({ "t": slug, "e": email, "p": password }),
            )
            .await;
        match response.data("login.token").as_str() {
            Some(token) => Ok(token.to_owned()),
            None => Err(response),
        }
    }

    /// How many employees `session` sees (`employees { totalCount }`).
    pub async fn employee_count(&self, session: &Session) -> i64 {
        self.graphql(
            Some(&session.token),
            "{ employees { totalCount } }",
            json!({}),
        )
        .await
        .ok()
        .data("employees.totalCount")
        .as_i64()
        .expect("a count")
    }

    /// The id of the organisation's role called `name` (e.g. a seeded "Viewer").
    pub async fn role_id(&self, admin: &Session, name: &str) -> String {
        let roles = self
            .graphql(Some(&admin.token), "{ roles { id name } }", json!({}))
            .await
            .ok();
        roles
            .data("roles")
            .as_array()
            .expect("a list of roles")
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["id"].as_str().expect("an id").to_owned())
            .unwrap_or_else(|| panic!("no role {name}"))
    }

    /// Creates a user holding `roles` (ids) and returns a session of theirs with their own
    /// password already set (the temporary one replaced).
    pub async fn user_with_roles(&self, admin: &Session, roles: &[String]) -> Session {
        let email = format!(
            "user-{}@{}.example.org",
            Uuid::now_v7().simple(),
            admin.slug
        );
        let temporary = "temporary password 1";
        let created = self
            .graphql(
                Some(&admin.token),
                "mutation($i: CreateUserInput!) { createUser(input: $i) { id mustChangePassword } }",
                json!({ "i": { "email": email, "name": "Una User", "temporaryPassword": temporary, "roleIds": roles } }),
            )
            .await
            .ok();
        let user_id = Uuid::parse_str(created.data("createUser.id").as_str().expect("an id"))
            .expect("a uuid");
        let token = self
            .login(&admin.slug, &email, temporary)
            .await
            .expect("the temporary password works");
        self.graphql(
            Some(&token),
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { id } }",
            json!({ "c": temporary, "n": PASSWORD }),
        )
        .await
        .ok();
        Session {
            token,
            tenant_id: admin.tenant_id,
            slug: admin.slug.clone(),
            user_id,
            email,
            password: PASSWORD.to_owned(),
        }
    }

    /// Waits until every read model of the tenant has applied every event written so far
    /// (for what the service records without waiting, such as API token uses).
    pub async fn settled(&self, tenant_id: Uuid) {
        let tenant = self
            .services
            .tenancy
            .get(tenant_id)
            .await
            .expect("the catalog answers")
            .expect("the tenant exists");
        for aggregate in ["user", "role", "record", "organization", "api_token"] {
            if let Some(latest) = tenant.log.latest(aggregate).await.expect("the log answers") {
                tenant
                    .projectors
                    .wait_for(aggregate, latest, std::time::Duration::from_secs(10))
                    .await
                    .expect("the read models catch up");
            }
        }
    }

    /// Creates an API token with the role `role_id`: the bearer token and the token's id.
    pub async fn api_token(&self, admin: &Session, name: &str, role_id: &str) -> (String, String) {
        let created = self
            .graphql(
                Some(&admin.token),
                "mutation($i: CreateApiTokenInput!) { createApiToken(input: $i) { token apiToken { id } } }",
                json!({ "i": { "name": name, "roleId": role_id } }),
            )
            .await
            .ok();
        (
            created
                .data("createApiToken.token")
                .as_str()
                .expect("a token")
                .to_owned(),
            created
                .data("createApiToken.apiToken.id")
                .as_str()
                .expect("an id")
                .to_owned(),
        )
    }

    /// The last names of the employees (the first 50) the session `token` sees.
    pub async fn employee_last_names(&self, token: &str) -> Vec<String> {
        self.graphql(
            Some(token),
            "{ employees(first: 50) { edges { node { lastName } } } }",
            json!({}),
        )
        .await
        .ok()
        .data("employees.edges")
        .as_array()
        .expect("a list of employees")
        .iter()
        .filter_map(|e| e["node"]["lastName"].as_str().map(str::to_owned))
        .collect()
    }

    /// Creates an employee from `input` and returns the created node.
    pub async fn create_employee(&self, token: &str, input: Value) -> Value {
        self.graphql(
            Some(token),
            "mutation($input: CreateEmployeeInput!) { createEmployee(input: $input) { id version firstName lastName email phone jobTitle department startDate archived } }",
            json!({ "input": input }),
        )
        .await
        .ok()
        .data("createEmployee")
        .clone()
    }

    /// The service's open context for a tenant (its pool, event log, projectors).
    pub async fn tenant(&self, tenant_id: Uuid) -> Arc<custos_api::testing::Tenant> {
        self.services
            .tenancy
            .get(tenant_id)
            .await
            .expect("the catalog answers")
            .expect("the tenant exists")
    }

    /// The database name of a tenant, from the catalog.
    pub async fn tenant_database(&self, tenant_id: Uuid) -> String {
        sqlx::query_scalar("SELECT database_name FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_one(self.services.tenancy.catalog())
            .await
            .expect("the tenant is in the catalog")
    }

    /// A superuser connection to a tenant's database.
    pub async fn tenant_admin(&self, tenant_id: Uuid) -> PgConnection {
        let db = self.tenant_database(tenant_id).await;
        PgConnection::connect_with(&admin_options(&db))
            .await
            .expect("superuser connection")
    }

    /// Runs a `custos` command (`args` after the program name) in this process, as an
    /// operator would on this service's data directory and database (`--data-dir`,
    /// `--database-url` added): its exit status as `custos` would give it (true for 0).
    pub async fn custos(&self, args: &[&str]) -> bool {
        self.custos_result(args)
            .await
            .unwrap_or_else(|err| panic!("custos failed: {err:?}"))
    }

    /// [`TestApp::custos`], with the error a failing command reports.
    pub async fn custos_result(&self, args: &[&str]) -> anyhow::Result<bool> {
        use clap::Parser;
        let socket = shared().cluster.socket_dir().display().to_string();
        let url = format!(
            "postgres://custos:{}@localhost:5432/{}?host={socket}",
            superuser_password(),
            self.catalog
        );
        let data_dir = self.data_dir.path().display().to_string();
        let mut argv = vec!["custos"];
        argv.extend_from_slice(args);
        argv.extend(["--data-dir", &data_dir]);
        let (backup_dir, passphrase_file);
        if let Some(dir) = &self.backup_dir {
            backup_dir = dir.display().to_string();
            passphrase_file = self
                .data_dir
                .path()
                .join("backup.passphrase")
                .display()
                .to_string();
            argv.extend(["--backup-dir", &backup_dir]);
            if !args.contains(&"--backup-passphrase-file") {
                argv.extend(["--backup-passphrase-file", &passphrase_file]);
            }
        }
        if !self.private {
            argv.extend(["--database-url", &url]);
        }
        let us_url;
        if self.two_regions {
            let dir = std::env::temp_dir().join(format!("custos-test-{}-us", nix_uid()));
            let password = std::fs::read_to_string(dir.join("superuser.password"))
                .expect("the us cluster's password");
            us_url = format!(
                "postgres://custos:{}@localhost:5432/postgres?host={}",
                password.trim(),
                us_cluster().socket_dir().display()
            );
            argv.extend(["--region-us-url", &us_url]);
        }
        let cli = custos_api::Cli::try_parse_from(argv).expect("the command parses");
        cli.run().await
    }
}

/// A unique slug for one test.
pub fn slug(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::now_v7().simple().to_string()[20..])
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if self.private {
            // Its own cluster, stopped with it; nothing on the shared one.
            return;
        }
        let catalog = self.catalog.clone();
        let options = shared()
            .cluster
            .connect_options()
            .disable_statement_logging();
        let us = US
            .get()
            .map(|c| c.connect_options().disable_statement_logging());
        let cleanup = std::thread::spawn(move || block_on(drop_catalog(options, us, catalog)));
        let _ = cleanup.join();
    }
}

async fn drop_catalog(options: PgConnectOptions, us: Option<PgConnectOptions>, catalog: String) {
    let Ok(mut admin) = PgConnection::connect_with(&options).await else {
        return;
    };
    let mut us_admin = match &us {
        Some(us) => PgConnection::connect_with(us).await.ok(),
        None => None,
    };
    let tenants: Vec<(String, String)> =
        match PgConnection::connect_with(&options.clone().database(&catalog)).await {
            Ok(mut conn) => {
                let rows = sqlx::query_as("SELECT database_name, role_name FROM tenants")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
                let _ = conn.close().await;
                rows
            }
            Err(_) => Vec::new(),
        };
    for (db, role) in tenants {
        for admin in std::iter::once(&mut admin).chain(us_admin.as_mut()) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
            let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\""))
                .execute(&mut *admin)
                .await;
        }
    }
    if let Some(us_admin) = us_admin {
        let _ = us_admin.close().await;
    }
    let _ = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{catalog}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
}

/// An employee created with `fields`, as `createEmployee` commands it (for tests and the bench
/// that send commands in process).
pub fn employee_created(fields: custos_domain::record::Fields) -> custos_domain::RecordCommand {
    custos_domain::RecordCommand::Create {
        datasheet: custos_domain::Datasheet::Employees,
        fields,
        hired_from: None,
        schema: Default::default(),
        effective_from: None,
        today: custos_projections::records::today(),
    }
}
