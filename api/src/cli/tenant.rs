//! `custos tenant create`: an organisation and its first administrator, from the command line;
//! `custos tenant rotate-audit-key`: a new key for its tree heads;
//! `custos tenant export` and `import`: an organisation leaving and arriving as an archive.

use std::path::{Path, PathBuf};

use tokio::io::BufReader;
use uuid::Uuid;

use super::args::{
    admin_password, archive_passphrase, TenantCreateArgs, TenantExportArgs, TenantImportArgs,
    TenantMoveArgs, TenantRotateArgs,
};
use crate::config::Region;
use crate::infra::database::Database;
use crate::infra::tenancy::archives::Placement;
use crate::infra::tenancy::catalog::Tenancy;
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

/// A region from its name.
fn region(name: &str) -> anyhow::Result<Region> {
    name.parse()
        .map_err(|()| anyhow::anyhow!("unknown region `{name}` (eu or us)"))
}

pub(crate) async fn move_tenant(args: TenantMoveArgs) -> anyhow::Result<()> {
    let to = region(&args.region)?;
    let config = args.common.config()?;
    let database = Database::open(&config).await?;
    let result = async {
        let services = startup::services(&config, &database).await?;
        let moved = services
            .tenancy
            .move_tenant(&args.slug, to, &config.data_dir)
            .await;
        services.tenancy.close().await;
        let moved = moved?;
        println!(
            "moved organisation {} ({}) from {} to {}: {} events verified on the new server in {:.1} s; tree head {} hands its signing over to a new key; read models rebuilt in {:.1} s; the old database is dropped",
            moved.arrived.row.slug,
            moved.arrived.row.id,
            moved.from,
            moved.to,
            moved.arrived.imported.events,
            moved.arrived.loaded.as_secs_f64(),
            moved.arrived.handover,
            moved.arrived.rebuilt.as_secs_f64(),
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}

/// The file an export writes before it is complete; renamed to the archive's name at the end,
/// so an interrupted export never leaves a file that looks like an archive.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    path.with_file_name(name)
}

pub(crate) async fn export(args: TenantExportArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        anyhow::bail!(
            "{} exists: choose a new file for the archive",
            args.out.display()
        );
    }
    let passphrase = archive_passphrase(args.passphrase_file.as_deref())?;
    let config = args.common.config()?;
    let database = Database::open_or_attach(&config).await?;
    let result = async {
        let services = startup::services(&config, &database).await?;
        let exported = async {
            let tenant = services
                .tenancy
                .by_slug(&args.slug)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no organisation in service has the slug `{}`", args.slug))?;
            let temporary = partial(&args.out);
            // Readable by its owner only: it holds who read whom and sealed secrets.
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)
                .await
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", temporary.display()))?;
            let written = services
                .tenancy
                .export_archive(&tenant, passphrase, file, &config.data_dir)
                .await;
            let renamed = match written {
                Ok(exported) => tokio::fs::rename(&temporary, &args.out)
                    .await
                    .map(|()| exported)
                    .map_err(anyhow::Error::from),
                Err(err) => Err(err.into()),
            };
            if renamed.is_err() {
                let _ = tokio::fs::remove_file(&temporary).await;
            }
            renamed
        }
        .await;
        services.tenancy.close().await;
        let exported = exported?;
        println!(
            "wrote {} ({} bytes): {} events, {} signed tree heads, {} subject keys, {} erased subjects",
            args.out.display(),
            exported.bytes,
            exported.events,
            exported.tree_heads,
            exported.subject_keys,
            exported.erased_subjects
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}

pub(crate) async fn import(args: TenantImportArgs) -> anyhow::Result<()> {
    let region: Option<Region> = args
        .region
        .as_deref()
        .map(|r| {
            r.parse()
                .map_err(|()| anyhow::anyhow!("unknown region `{r}` (eu or us)"))
        })
        .transpose()?;
    let passphrase = archive_passphrase(args.passphrase_file.as_deref())?;
    let file = tokio::fs::File::open(&args.input)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", args.input.display()))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    // A wrong passphrase or a file that is no archive is told before any database is touched.
    let opened = Tenancy::open_archive(&mut reader, passphrase).await?;
    let anchor = hex::encode(opened.anchor());
    println!(
        "{}; its history starts at signing key {} ({})",
        opened.describe(),
        crate::infra::integrity::tree_head::key_id(opened.anchor()),
        anchor
    );
    match &args.expect_key {
        Some(expected) if !expected.trim().eq_ignore_ascii_case(&anchor) => anyhow::bail!(
            "the archive's history starts at signing key {anchor}, not the expected {}: it is not the organisation's history, or the key given is not its first (generation 0)",
            expected.trim()
        ),
        Some(_) => println!("the first signing key is the expected one"),
        None => println!(
            "note: without --expect-key, compare that key with the organisation's generation 0 key as its auditors know it"
        ),
    }
    let config = args.common.config()?;
    let database = Database::open(&config).await?;
    let result = async {
        let services = startup::services(&config, &database).await?;
        let placement = Placement {
            slug: args.slug,
            region,
        };
        let arrived = services
            .tenancy
            .import_archive(&mut reader, opened, placement, &config.data_dir)
            .await;
        // An organisation coming back to a server that erased people of it since the archive
        // was written: they stay erased.
        let replayed = match &arrived {
            Ok(arrived) => services.replay_erasure_ledger(arrived.row.id).await.map(Some),
            Err(_) => Ok(None),
        };
        services.tenancy.close().await;
        let arrived = arrived?;
        if let Some(n) = replayed? {
            if n > 0 {
                println!("{n} people erased on this server since the archive was written were erased again");
            }
        }
        println!(
            "imported organisation {} ({}) into region {}: {} events, {} signed tree heads, {} subject keys, {} erased subjects; verified in {:.1} s; tree head {} hands its signing over to a new key; read models rebuilt in {:.1} s; archive SHA-256 {}",
            arrived.row.slug,
            arrived.row.id,
            arrived.row.region,
            arrived.imported.events,
            arrived.imported.tree_heads,
            arrived.imported.subject_keys,
            arrived.imported.erased_subjects,
            arrived.loaded.as_secs_f64(),
            arrived.handover,
            arrived.rebuilt.as_secs_f64(),
            hex::encode(&arrived.imported.archive_sha256)
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}
