//! The `custos` binary: telemetry, then the chosen command.

use clap::Parser;
use custos_api::{telemetry, Cli};

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
