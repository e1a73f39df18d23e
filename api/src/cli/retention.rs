//! `custos retention run`: every organisation's retention policies (or one's), now.

use super::args::RetentionRunArgs;
use crate::infra::database::Database;
use crate::service::privacy::retention::run_tenants;
use crate::startup;

pub(crate) async fn run(args: RetentionRunArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let database = Database::open_or_attach(&config).await?;
    let result = async {
        let services = startup::services(&config, &database).await?;
        let runs = run_tenants(&services, args.tenant.as_deref()).await;
        services.tenancy.close().await;
        for (tenant, run) in runs? {
            if !run.ran {
                println!(
                    "{}: skipped (another instance is running its retention)",
                    tenant.slug
                );
            }
            for policy in run.policies {
                println!(
                    "{}: policy {} erased {} record(s), left {} for the next run",
                    tenant.slug,
                    policy.policy_id,
                    policy.erased.len(),
                    policy.skipped
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}
