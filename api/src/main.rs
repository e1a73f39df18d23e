//! The `custos` binary: telemetry, then the chosen command.

use clap::Parser;
use custos_api::{telemetry, Cli};

/// jemalloc, not the C library's allocator: the service's requests allocate and free many
/// small blocks from several threads, which glibc's malloc served at a quarter to a third
/// of a request's CPU in profiles (docs/performance.md, "jemalloc as the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format.unwrap_or(telemetry::LogFormat::Text))?;
    let outcome = cli.run().await;
    telemetry.shutdown().await;
    if outcome? {
        Ok(())
    } else {
        std::process::exit(1);
    }
}
