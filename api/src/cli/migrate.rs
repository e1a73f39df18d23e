//! `custos migrate`: applies the migrations to the catalog, the tenant template and every
//! tenant, then exits.

use super::args::CommonArgs;
use crate::infra::database::Database;
use crate::startup;

pub(crate) async fn run(args: CommonArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let database = Database::open(&config).await?;
    // Opening the services migrates the catalog, the template and every tenant.
    let result = startup::services(&config, &database).await;
    if let Ok(services) = &result {
        services.tenancy.close().await;
        tracing::info!("migrations applied");
    }
    database.stop().await?;
    result.map(|_| ())
}
