//! `custos tenant create`: an organisation and its first administrator, from the command line;
//! `custos tenant rotate-audit-key`: a new key for its tree heads.

use uuid::Uuid;

use super::args::{admin_password, TenantCreateArgs, TenantRotateArgs};
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

pub(crate) async fn rotate_audit_key(args: TenantRotateArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let database = Database::open(&config).await?;
    let result = async {
        let services = startup::services(&config, &database).await?;
        let rotated = async {
            let tenant =
                services.tenancy.by_slug(&args.slug).await?.ok_or_else(|| {
                    anyhow::anyhow!("no organisation has the slug `{}`", args.slug)
                })?;
            services.rotate_audit_key(&tenant).await.map_err(|err| {
                err.report();
                anyhow::anyhow!("{}", err.message())
            })
        }
        .await;
        services.tenancy.close().await;
        let head = rotated?;
        println!(
            "tree head {} (key {}) hands over to key {}: it signs every later tree head",
            head.number,
            head.key_id,
            head.next_public_key
                .as_deref()
                .map(crate::infra::integrity::tree_head::key_id)
                .unwrap_or_default()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}
