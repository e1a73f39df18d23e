//! What every suite shares: the flags, a fresh data directory for the benchmark's own private
//! cluster, and percentiles.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The process's resident set size in bytes (Linux): the service and the load generator, which
/// run in one process.
pub(crate) fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The bytes the program holds allocated now, by the allocator's own count (jemalloc's
/// `stats.allocated`, refreshed first): the live heap, without what the allocator keeps
/// mapped for later (which [`rss`] counts).
pub(crate) fn heap_allocated() -> u64 {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().map_or(0, |bytes| bytes as u64)
}

/// `custos projections rebuild records` on `tenant`, through a superuser connection (`admin`,
/// to any database) to the organisation's database: what the rebuild did, and how long it took.
pub(crate) async fn rebuild_records(
    admin: &sqlx::postgres::PgConnectOptions,
    tenant: &custos_api::testing::Tenant,
) -> anyhow::Result<(custos_api::testing::Rebuilt, Duration)> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&tenant.pool)
        .await?;
    let started = Instant::now();
    let ended = custos_api::testing::rebuild_read_model(
        &admin.clone().database(&database),
        &tenant.log,
        &custos_projections::records::RecordsProjection,
        std::future::pending(),
    )
    .await?;
    let custos_api::testing::RebuildEnded::Rebuilt(rebuilt) = ended else {
        anyhow::bail!("the rebuild stopped, which nothing asked it to");
    };
    Ok((rebuilt, started.elapsed()))
}

/// Where the process's resident memory is at one moment, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemorySplit {
    /// Resident pages mapped from files: the program's code and read-only data, and the
    /// shared libraries'.
    pub(crate) file: u64,
    /// Resident anonymous pages: the allocator's, thread stacks, and anything else mapped
    /// without a file.
    pub(crate) anonymous: u64,
    /// Of the anonymous, jemalloc's resident pages (`stats.resident`): what the program holds
    /// allocated, the allocator's own metadata, and pages freed but not yet given back.
    pub(crate) allocator: u64,
    /// Of the allocator's, what the program holds allocated (`stats.allocated`).
    pub(crate) allocated: u64,
    /// Of the allocator's, its own metadata (`stats.metadata`).
    pub(crate) metadata: u64,
}

impl MemorySplit {
    /// The split now, from `/proc/self/status` and jemalloc's statistics (refreshed first).
    pub(crate) fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        let _ = tikv_jemalloc_ctl::epoch::advance();
        let bytes = |read: tikv_jemalloc_ctl::Result<usize>| read.map_or(0, |b| b as u64);
        Self {
            file: kib("RssFile:"),
            anonymous: kib("RssAnon:"),
            allocator: bytes(tikv_jemalloc_ctl::stats::resident::read()),
            allocated: bytes(tikv_jemalloc_ctl::stats::allocated::read()),
            metadata: bytes(tikv_jemalloc_ctl::stats::metadata::read()),
        }
    }

    /// The row's value: file pages / anonymous; of the anonymous, the allocator's (allocated,
    /// metadata, freed and kept) / the rest, in MB.
    pub(crate) fn describe(&self) -> String {
        let mb = |bytes: u64| bytes as f64 / 1e6;
        format!(
            "{:.0} MB / {:.0} MB; {:.0} MB ({:.0} allocated, {:.0} metadata, {:.0} freed and kept) / {:.0} MB",
            mb(self.file),
            mb(self.anonymous),
            mb(self.allocator),
            mb(self.allocated),
            mb(self.metadata),
            mb(self
                .allocator
                .saturating_sub(self.allocated + self.metadata)),
            mb(self.anonymous.saturating_sub(self.allocator)),
        )
    }
}

/// The highest samples of a run of [`peak_memory_during`], in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PeakMemory {
    /// [`rss`]: what the process holds in memory.
    pub(crate) resident: u64,
    /// [`heap_allocated`]: of that, what the program holds allocated.
    pub(crate) allocated: u64,
    /// Where the resident memory was when it was highest.
    pub(crate) split: MemorySplit,
}

/// Runs `work`, sampling [`rss`] and [`heap_allocated`] every 20 ms meanwhile: its output and
/// the highest samples, with where the memory was at the highest resident sample.
pub(crate) async fn peak_memory_during<T>(work: impl Future<Output = T>) -> (T, PeakMemory) {
    let highest = std::sync::Mutex::new((rss(), MemorySplit::now()));
    let allocated = AtomicU64::new(heap_allocated());
    let sample = || {
        let resident = rss();
        let mut highest = highest.lock().unwrap_or_else(|e| e.into_inner());
        if resident > highest.0 {
            *highest = (resident, MemorySplit::now());
        }
        drop(highest);
        allocated.fetch_max(heap_allocated(), Ordering::Relaxed);
    };
    let sampling = async {
        loop {
            sample();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let output = tokio::select! {
        output = work => output,
        never = sampling => never,
    };
    sample();
    let (resident, split) = *highest.lock().unwrap_or_else(|e| e.into_inner());
    let peak = PeakMemory {
        resident,
        allocated: allocated.load(Ordering::Relaxed),
        split,
    };
    (output, peak)
}

/// The fields of a `/proc/<pid>/stat` line after the command name (which may hold spaces,
/// in parentheses): state, parent pid, ...
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect())
}

/// CPU seconds (user and system) a process has used, from its stat fields: its own, and with
/// `children` those of its children it has waited for (which have exited).
fn cpu_of(fields: &[&str], children: bool) -> f64 {
    // utime, stime, cutime, cstime, in USER_HZ (100 a second on Linux).
    let ticks: f64 = fields
        .iter()
        .skip(11)
        .take(if children { 4 } else { 2 })
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// CPU seconds used so far by this process (the service and the load generator, which run in
/// one) and by the benchmark's PostgreSQL cluster: its postmaster, whose pid `postmaster.pid`
/// in the cluster's data directory names, its live children, and the children it has reaped
/// (so a connection that closed between two samples still counts). Between two samples with
/// [`CpuTime::since`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTime {
    pub(crate) own: f64,
    pub(crate) cluster: f64,
    at: Option<Instant>,
    wall: Duration,
}

impl CpuTime {
    pub(crate) fn now(cluster_dir: &Path) -> Self {
        let own = std::fs::read_to_string("/proc/self/stat")
            .map_or(0.0, |s| cpu_of(&stat_fields(&s), false));
        let postmaster: Option<u32> = std::fs::read_to_string(cluster_dir.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        let mut cluster = 0.0;
        if let (Some(postmaster), Ok(entries)) = (postmaster, std::fs::read_dir("/proc")) {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                let fields = stat_fields(&stat);
                let parent: Option<u32> = fields.get(1).and_then(|p| p.parse().ok());
                if pid == postmaster {
                    cluster += cpu_of(&fields, true);
                } else if parent == Some(postmaster) {
                    cluster += cpu_of(&fields, false);
                }
            }
        }
        Self {
            own,
            cluster,
            at: Some(Instant::now()),
            wall: Duration::ZERO,
        }
    }

    /// The CPU used between `before` and this sample, and the time between them.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            own: self.own - before.own,
            cluster: self.cluster - before.cluster,
            at: None,
            wall: match (self.at, before.at) {
                (Some(now), Some(then)) => now.duration_since(then),
                _ => Duration::ZERO,
            },
        }
    }

    /// Shares of one core over the time between the samples: this process, the cluster.
    pub(crate) fn cores(&self) -> (f64, f64) {
        let wall = self.wall.as_secs_f64().max(f64::EPSILON);
        (self.own / wall, self.cluster / wall)
    }

    /// The time between the samples, in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        self.wall.as_secs_f64()
    }

    /// A row's value for the CPU `operations` used between the samples: the milliseconds of
    /// CPU each took in this process and in PostgreSQL, and how busy both were meanwhile (two
    /// cores are 2.0).
    pub(crate) fn per_operation(&self, operations: f64) -> String {
        let (own, cluster) = self.cores();
        let operations = operations.max(f64::EPSILON);
        format!(
            "{:.3} ms / {:.3} ms ({:.2} cores busy)",
            self.own / operations * 1_000.0,
            self.cluster / operations * 1_000.0,
            own + cluster
        )
    }
}

/// Runs `work` and samples [`CpuTime`] around it: its output and the CPU it took.
pub(crate) async fn cpu_during<T>(
    cluster_dir: &Path,
    work: impl Future<Output = T>,
) -> (T, CpuTime) {
    let before = CpuTime::now(cluster_dir);
    let output = work.await;
    (output, CpuTime::now(cluster_dir).since(before))
}

/// The password of the benchmark's users.
pub(crate) const PASSWORD: &str = "benchmark password 1";

/// Flags of `custos-bench`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "custos-bench",
    about = "Measure Custos's write and read throughput on this machine (see docs/performance.md)"
)]
pub(crate) struct BenchArgs {
    /// How log lines are written: text (the default) or json.
    #[arg(long, env = "CUSTOS_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<custos_api::telemetry::LogFormat>,
    /// Data directory for the benchmark's own private cluster (default: a fresh temporary one).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Concurrent connections / HTTP clients for (a) and (b).
    #[arg(long, default_value_t = 16)]
    pub(crate) clients: usize,
    /// Seconds each throughput phase runs.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Employees in the tenant for the read phase (c).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) employees: usize,
    /// Requests measured in the read phase (c).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) reads: usize,
    /// Events in the store of the integrity and portability suites, and in the privacy
    /// suite's large tenant (the portability suite fills at most what is asked; 100,000 is a
    /// good size for it).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: usize,
    /// `foundation` (the phases above), `datasheets` (lists, search, reports, export and
    /// import with `--employees` employees), `privacy` (sealing's cost on writes, a
    /// person's trail with 10,000 and 1,000,000 events in the tenant, erasure latency) or
    /// `integrity` (checkpoints, proofs and verification on a store of `--events` events),
    /// `portability` (a tenant archive of `--events` events exported and imported),
    /// `backups` (a verified base backup of that store and a point-in-time restore),
    /// `lifecycle` (a storage sweep over `--organizations` organisations), `notifications`
    /// (`--notices` breach notices delivered to a local SMTP server), `webhooks` (`--rate`
    /// changes a second for `--seconds`, each delivered to a local HTTP receiver) or
    /// `subscriptions` (`--subscribers` live record subscriptions idle, then sent `--rate`
    /// changes a second for `--seconds`).
    #[arg(long, default_value = "foundation")]
    pub(crate) suite: String,
    /// Organisations in the store of the lifecycle suite.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) organizations: usize,
    /// Notices (people, each with an email address) of the notifications suite.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) notices: usize,
    /// Changes per second offered in the webhooks and subscriptions suites.
    #[arg(long, default_value_t = 100)]
    pub(crate) rate: usize,
    /// Live record subscriptions (each on a WebSocket of its own) of the subscriptions suite.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) subscribers: usize,
    /// Foundation suite: also print the N statements PostgreSQL spent the most time in
    /// during (b), (b, read back), (e) and (r), from pg_stat_statements, which this loads into
    /// the cluster. It costs some speed: the figures of such a run are not for the record.
    #[arg(long, default_value_t = 0)]
    pub(crate) statements: usize,
}

/// `reads` requests made by `request`, one after another: their latencies, sorted.
pub(crate) async fn latencies<F, Fut>(reads: usize, mut request: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut latencies = Vec::with_capacity(reads);
    for _ in 0..reads {
        let started = Instant::now();
        request().await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The heading of the table in docs/performance.md that holds the last recorded foundation
/// figures, in the rows `custos-bench` prints.
const LAST_RECORDED: &str = "## Latest foundation figures";

/// The last recorded foundation figures, by measure: the rows of the table under
/// [`LAST_RECORDED`] in docs/performance.md (none when the file is not there, e.g. the binary
/// was copied elsewhere).
pub(crate) fn last_recorded() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/performance.md");
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.split(LAST_RECORDED)
        .nth(1)
        .into_iter()
        .flat_map(|section| section.lines().skip(1))
        .take_while(|line| !line.starts_with("## "))
        .filter_map(cells)
        .collect()
}

/// The measure and value of a Markdown table row `| measure | value | ... |`.
fn cells(row: &str) -> Option<(String, String)> {
    let mut cells = row.trim().strip_prefix('|')?.split(" | ");
    let measure = cells.next()?.trim().to_owned();
    let value = cells.next()?.trim().trim_end_matches('|').trim().to_owned();
    (!measure.is_empty() && measure != "measure" && !measure.starts_with("---"))
        .then_some((measure, value))
}

/// The first number in a value (`553 mutations/s`, `10.5 s (956/s)`, `4.78 ms / 15.07 ms`).
fn first_number(value: &str) -> Option<f64> {
    let start = value.find(|c: char| c.is_ascii_digit())?;
    let number: String = value[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

/// `rows` (each `| measure | value |`) as a Markdown table with the value last recorded for
/// the same measure and the ratio now / then of their first numbers.
pub(crate) fn compared(rows: &[String], recorded: &[(String, String)]) -> String {
    let mut table =
        String::from("| measure | value | last recorded | now / then |\n|---|---|---|---|\n");
    for row in rows {
        let Some((measure, value)) = cells(row) else {
            continue;
        };
        let then = recorded
            .iter()
            .find(|(m, _)| *m == measure)
            .map(|(_, v)| v.as_str());
        let ratio = match (first_number(&value), then.and_then(first_number)) {
            (Some(now), Some(then)) if then > 0.0 => format!("{:.2}", now / then),
            _ => String::new(),
        };
        table.push_str(&format!(
            "| {measure} | {value} | {} | {ratio} |\n",
            then.unwrap_or("")
        ));
    }
    table
}

/// Where a benchmark's cluster lives: `--data-dir`, or a fresh temporary directory (kept
/// while the returned guard lives; readable by the unprivileged cluster user).
pub(crate) fn data_dir(args: &BenchArgs) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    if let Some(dir) = &args.data_dir {
        return Ok((None, dir.clone()));
    }
    let temp = tempfile::Builder::new()
        .prefix("custos-bench-")
        .tempdir_in(std::env::temp_dir())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
    let path = temp.path().to_owned();
    Ok((Some(temp), path))
}

/// Posts one GraphQL request (as `token` when given); the future owns the request, so it can
/// outlive the borrow of its arguments. Fails on any GraphQL error.
pub(crate) fn graphql(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> impl Future<Output = anyhow::Result<Value>> + Send + 'static {
    let mut request = client
        .post(url)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    async move {
        let body: Value = request.send().await?.json().await?;
        anyhow::ensure!(
            body.get("errors").is_none(),
            "request failed: {}",
            body["errors"]
        );
        Ok(body)
    }
}

/// Signs up the benchmark's organisation; the answer's `signUp` (token, tenant and user ids).
pub(crate) async fn sign_up(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let body = graphql(
        client,
        url,
        None,
        "mutation($i: SignUpInput!) { signUp(input: $i) { token tenant { id } user { id } } }",
        json!({ "i": { "organization": "Bench", "slug": "bench", "region": "eu",
                       "adminEmail": "bench@example.org", "adminName": "Bench",
                       "password": PASSWORD } }),
    )
    .await?;
    Ok(body["data"]["signUp"].clone())
}

/// The organisation `slug` of a reusable bench store, signed up (with `email` as its
/// administrator) when the store is new, and the event metadata of that administrator.
pub(crate) async fn bench_tenant(
    services: &custos_api::testing::Services,
    slug: &str,
    name: &str,
    email: &str,
) -> anyhow::Result<(
    std::sync::Arc<custos_api::testing::Tenant>,
    custos_domain::EventMetadata,
)> {
    use custos_domain::{Actor, EventMetadata};
    use uuid::Uuid;
    let tenant = match services.tenancy.by_slug(slug).await? {
        Some(tenant) => tenant,
        None => {
            let organization = custos_api::testing::NewOrganization {
                name: name.into(),
                slug: slug.into(),
                region: "eu".into(),
                admin_email: email.into(),
                admin_name: "Bench".into(),
                password: PASSWORD.to_owned().into(),
            };
            let (row, _) = services
                .create_organization(organization, Uuid::now_v7())
                .await
                .map_err(|e| anyhow::anyhow!("sign-up failed: {}", e.message()))?;
            services
                .tenancy
                .get(row.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("bench tenant vanished"))?
        }
    };
    let user: Uuid = sqlx::query_scalar("SELECT id FROM users ORDER BY email LIMIT 1")
        .fetch_one(&tenant.pool)
        .await?;
    Ok((
        tenant,
        EventMetadata::new(Actor::User(user), Uuid::now_v7()),
    ))
}

/// Runs `clients` closed loops of `op(client, n)` for `duration`; returns operations per second.
pub(crate) async fn closed_loop<F, Fut>(
    clients: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<f64>
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let loops = (0..clients).map(|client| {
        let (op, done) = (&op, &done);
        async move {
            let mut n = 0usize;
            while started.elapsed() < duration {
                n += 1;
                op(client, n).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for result in futures::future::join_all(loops).await {
        result?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Changes per second one employee gets at most in an open-loop run (so that no two changes
/// of one record race).
const PER_RECORD: usize = 5;

/// The employees an open-loop run of `rate` changes a second cycles over, created now (at
/// least 16): their ids.
pub(crate) async fn open_loop_employees(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    rate: usize,
    last_name: &str,
) -> anyhow::Result<Vec<String>> {
    let count = (rate / PER_RECORD).max(16);
    let mut records = Vec::with_capacity(count);
    for n in 0..count {
        let created = graphql(
            client,
            url,
            Some(token),
            "mutation($i: CreateEmployeeInput!) { createEmployee(input: $i) { id } }",
            json!({ "i": { "firstName": "Bench", "lastName": format!("{last_name} {n}") } }),
        )
        .await?;
        records.push(
            created["data"]["createEmployee"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    Ok(records)
}

/// What an open-loop run sent: when each change was sent, by (record, version after it), and
/// how long offering them all took.
pub(crate) struct OpenLoop {
    pub(crate) sent: std::collections::HashMap<(String, i64), Instant>,
    pub(crate) offered: Duration,
}

/// Open loop: one `updateEmployee` every 1/`rate` seconds for `seconds`, each on the next of
/// `records` (all at version 1), without waiting for the previous ones; returns once every
/// request was answered.
pub(crate) async fn open_loop_updates(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    records: &[String],
    rate: usize,
    seconds: u64,
) -> anyhow::Result<OpenLoop> {
    let total = rate * seconds as usize;
    let mut sent = std::collections::HashMap::with_capacity(total);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut versions = vec![1_i64; records.len()];
    let mut requests = Vec::with_capacity(total);
    let started = Instant::now();
    for n in 0..total {
        ticks.tick().await;
        let slot = n % records.len();
        versions[slot] += 1;
        let record = records[slot].clone();
        sent.insert((record.clone(), versions[slot]), Instant::now());
        let (client, url, token) = (client.clone(), url.to_owned(), token.to_owned());
        requests.push(tokio::spawn(async move {
            graphql(
                &client,
                &url,
                Some(&token),
                "mutation($id: ID!, $t: String!) { updateEmployee(id: $id, input: { jobTitle: $t }) { version } }",
                json!({ "id": record, "t": format!("Title {n}") }),
            )
            .await
        }));
    }
    let offered = started.elapsed();
    for request in requests {
        request.await??;
    }
    Ok(OpenLoop { sent, offered })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_figure_is_shown_beside_the_last_recorded_one() {
        let recorded = vec![
            ("(b) updates".to_owned(), "500 mutations/s".to_owned()),
            ("seeding".to_owned(), "10.0 s (1000/s)".to_owned()),
        ];
        let rows = [
            "| (b) updates | 550 mutations/s |".to_owned(),
            "| seeding | 12.5 s (800/s) |".to_owned(),
            "| (z) new | 7 ms |".to_owned(),
        ];
        assert_eq!(
            compared(&rows, &recorded),
            "| measure | value | last recorded | now / then |\n|---|---|---|---|\n\
             | (b) updates | 550 mutations/s | 500 mutations/s | 1.10 |\n\
             | seeding | 12.5 s (800/s) | 10.0 s (1000/s) | 1.25 |\n\
             | (z) new | 7 ms |  |  |\n"
        );
    }

    #[test]
    fn cpu_is_read_from_a_stat_line_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...; the name may hold spaces and parentheses.
        let stat = "4242 (postgres: a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 1000 200 20 0 1 0 123 456 789";
        let fields = stat_fields(stat);
        assert_eq!(fields[1], "1", "the parent pid");
        assert_eq!(cpu_of(&fields, false), 3.0);
        assert_eq!(cpu_of(&fields, true), 15.0);
        assert_eq!(cpu_of(&stat_fields("garbage"), true), 0.0);
        let after = CpuTime {
            own: 4.0,
            cluster: 1.0,
            wall: Duration::from_secs(2),
            ..CpuTime::default()
        };
        assert_eq!(after.cores(), (2.0, 0.5));
        assert_eq!(
            after.per_operation(1_000.0),
            "4.000 ms / 1.000 ms (2.50 cores busy)"
        );
    }

    #[test]
    fn the_docs_hold_the_last_recorded_foundation_figures() {
        let recorded = last_recorded();
        assert!(
            recorded
                .iter()
                .any(|(measure, _)| measure.starts_with("(b) `updateEmployee`")),
            "{recorded:?}"
        );
    }
}
