//! `custos tenant create`: an organisation and its first administrator, from the command line.

use uuid::Uuid;

use super::args::{admin_password, TenantCreateArgs};
use crate::infra::database::Database;
use crate::service::identity::NewOrganization;
use crate::startup;

pub(crate) async fn create(args: TenantCreateArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let password = admin_password()?;
    let database = Database::open(&config).await?;
    let result = async {
        let services = startup::services(&config, &database).await?;
        let organization = NewOrganization {
            name: args.name,
            slug: args.slug,
            region: args.region,
            admin_email: args.admin_email,
            admin_name: args.admin_name,
            password,
        };
        let created = services
            .create_organization(organization, Uuid::now_v7())
            .await;
        services.tenancy.close().await;
        let (tenant, user) = created.map_err(|err| {
            err.report();
            anyhow::anyhow!("{}", err.message())
        })?;
        println!(
            "created organisation {} ({}) with administrator {}",
            tenant.slug, tenant.id, user.id
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}
