//! `custos-bench`: the benchmark suites of docs/performance.md, outside the service's own crate.
//! Each suite starts its own private cluster and service in a fresh data directory and prints
//! a Markdown report.

use clap::Parser;
use custos_api::telemetry;

mod backups;
mod baseline;
mod common;
mod datasheets;
mod foundation;
mod integrity;
mod lifecycle;
mod notifications;
mod portability;
mod privacy;
mod subscriptions;
mod webhooks;

/// jemalloc, not the C library's allocator: the service's requests allocate and free many
/// small blocks from several threads, which glibc's malloc served at a quarter to a third
/// of a request's CPU in profiles (docs/performance.md, "jemalloc as the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::BenchArgs::parse();
    let telemetry = telemetry::init(args.log_format.unwrap_or(telemetry::LogFormat::Text))?;
    let outcome = match args.suite.as_str() {
        "foundation" => foundation::run(args).await,
        "datasheets" => datasheets::run(args).await,
        "privacy" => privacy::run(args).await,
        "integrity" => integrity::run(args).await,
        "portability" => portability::run(args).await,
        "backups" => backups::run(args).await,
        "lifecycle" => lifecycle::run(args).await,
        "notifications" => notifications::run(args).await,
        "webhooks" => webhooks::run(args).await,
        "subscriptions" => subscriptions::run(args).await,
        other => anyhow::bail!(
            "unknown suite `{other}`: `foundation`, `datasheets`, `privacy`, `integrity`, `portability`, `backups`, `lifecycle`, `notifications`, `webhooks` or `subscriptions`"
        ),
    };
    telemetry.shutdown().await;
    outcome
}
