//! `custos bench`: write and read throughput on one private cluster.

/// Flags of `custos bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
