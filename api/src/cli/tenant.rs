//! `custos tenant create`: an organisation and its first administrator, from the command line;
//! `custos tenant rotate-audit-key`: a new key for its tree heads;
//! `custos tenant export` and `import`: an organisation leaving and arriving as an archive;
//! `custos tenant list|plan|suspend|resume|extend-trial|cancel|withdraw-cancellation|purge`:
//! the provider's side of each organisation's life.

use std::path::{Path, PathBuf};

use tokio::io::BufReader;
use uuid::Uuid;

use super::args::{
    admin_password, archive_passphrase, TenantCommand, TenantCreateArgs, TenantExportArgs,
    TenantImportArgs, TenantListArgs, TenantMoveArgs, TenantPurgeArgs, TenantRotateArgs,
};
use crate::config::Region;
use crate::infra::archive::format::{recipients, Opener, Protection};
use crate::infra::database::Database;
use crate::infra::tenancy::archives::Placement;
use crate::infra::tenancy::catalog::Tenancy;
use crate::infra::tenancy::lifecycle::SubscriptionRow;
use crate::infra::tenancy::tombstones::Tombstone;
use crate::service::identity::NewOrganization;
use crate::startup::{self, with_services};
use custos_domain::{Plan, SubscriptionCommand};

pub(crate) async fn create(args: TenantCreateArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let password = admin_password()?;
    let database = Database::open_or_attach(&config).await?;
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
    let protection = if args.recipients.is_empty() {
        Protection::Passphrase(archive_passphrase(args.passphrase_file.as_deref())?)
    } else {
        Protection::Recipients(recipients(&args.recipients).map_err(anyhow::Error::msg)?)
    };
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
                .export_archive(&tenant, protection, file, &config.data_dir)
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
    let opener = match &args.identity {
        Some(path) => Opener::Identities(identity_file(path)?),
        None => Opener::Passphrase(archive_passphrase(args.passphrase_file.as_deref())?),
    };
    let file = tokio::fs::File::open(&args.input)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", args.input.display()))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    // A wrong passphrase or identity, or a file that is no archive, is told before any
    // database is touched.
    let opened = Tenancy::open_archive(&mut reader, opener).await?;
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

/// The text of the age identity file at `path` (an identity file is a few lines; a larger file
/// is not one).
fn identity_file(path: &Path) -> anyhow::Result<secrecy::SecretString> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("opening the identity file {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("reading the identity file {}: {e}", path.display()))?;
    Ok(text.into())
}

pub(crate) async fn list(args: TenantListArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let (rows, purged) = with_services(&config, |services| async move {
        let rows = services.tenancy.subscriptions().await?;
        let purged = services.tenancy.tombstones().await?;
        Ok((rows, purged))
    })
    .await?;
    if rows.is_empty() {
        println!("no organisations");
    }
    for row in &rows {
        println!("{}", describe(row));
    }
    if !purged.is_empty() {
        println!("purged:");
    }
    for tombstone in &purged {
        println!("{}", describe_tombstone(tombstone));
    }
    Ok(())
}

/// A purged organisation on one line.
fn describe_tombstone(tombstone: &Tombstone) -> String {
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let mut line = format!(
        "{} ({}, {}): purged {} by {} ({}), region {}, since {}",
        tombstone.slug,
        tombstone.name,
        tombstone.id,
        day(tombstone.purged_at),
        tombstone.purged_by,
        tombstone.reason,
        tombstone.region,
        day(tombstone.created_at)
    );
    if let Some(head) = &tombstone.final_tree_head {
        line.push_str(&format!(
            ", final tree head {} over {} events, root {}, SHA-256 {}",
            head.number, head.tree_size, head.root, head.sha256
        ));
    }
    line
}

pub(crate) async fn purge(args: TenantPurgeArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let slug = args.slug;
    let early_reason = args.reason.filter(|_| args.now);
    let tombstone = with_services(&config, |services| async move {
        let tenancy = &services.tenancy;
        let id = match tenancy.row_by_slug(&slug).await? {
            Some(row) => row.id,
            None => match tenancy.tombstone_by_slug(&slug).await? {
                Some(tombstone) => return Ok(tombstone),
                None => anyhow::bail!("no organisation has the slug `{slug}`"),
            },
        };
        services
            .purge_organization(id, chrono::Utc::now(), early_reason.as_deref(), "operator")
            .await
            .map_err(|err| {
                err.report();
                anyhow::anyhow!("{}", err.message())
            })
    })
    .await?;
    println!("{}", describe_tombstone(&tombstone));
    Ok(())
}

/// One organisation on one line.
fn describe(row: &SubscriptionRow) -> String {
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let mut line = format!(
        "{} ({}, {}): {}, plan {}, region {}, since {}",
        row.slug,
        row.name,
        row.id,
        row.status,
        row.plan,
        row.region,
        day(row.created_at)
    );
    if let (Some(ends), "trial" | "expired") = (row.trial_ends_at, row.status.as_str()) {
        line.push_str(&format!(", trial ends {}", day(ends)));
    }
    if let Some(at) = row.cancellation_effective_at {
        line.push_str(&format!(", cancelled as of {}", day(at)));
    }
    if let Some(until) = row.kept_until {
        line.push_str(&format!(", kept until {}", day(until)));
    }
    line
}

/// `--until`: a date (the end of that day, UTC) or an RFC 3339 time.
fn until(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        let end = date
            .and_hms_opt(23, 59, 59)
            .ok_or_else(|| anyhow::anyhow!("--until `{text}` is not a date"))?;
        return Ok(end.and_utc());
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            anyhow::anyhow!("--until `{text}` is neither a date (2027-01-31) nor an RFC 3339 time")
        })
}

/// The lifecycle commands: one change of one organisation's subscription, as the operator.
pub(crate) async fn lifecycle(command: TenantCommand) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let (common, slug, change, reason) = match command {
        TenantCommand::Plan(args) => {
            let plan = Plan::parse(&args.plan)?;
            (
                args.common,
                args.slug,
                SubscriptionCommand::ChoosePlan { plan },
                None,
            )
        }
        TenantCommand::Suspend(args) => {
            let change = SubscriptionCommand::Suspend {
                reason: args.reason.clone(),
            };
            (args.common, args.slug, change, Some(args.reason))
        }
        TenantCommand::Resume(args) => {
            let change = SubscriptionCommand::Resume {
                reason: args.reason.clone(),
            };
            (args.common, args.slug, change, Some(args.reason))
        }
        TenantCommand::ExtendTrial(args) => {
            let change = SubscriptionCommand::ExtendTrial {
                until: until(&args.until)?,
                at: now,
            };
            (args.common, args.slug, change, None)
        }
        TenantCommand::Cancel(args) => (
            args.common,
            args.slug,
            SubscriptionCommand::Cancel { at: now },
            None,
        ),
        TenantCommand::WithdrawCancellation(args) => (
            args.common,
            args.slug,
            SubscriptionCommand::WithdrawCancellation,
            None,
        ),
        other => anyhow::bail!("not a lifecycle command: {other:?}"),
    };
    let config = common.config()?;
    let changed = with_services(&config, |services| async move {
        let tenancy = &services.tenancy;
        let row = tenancy
            .subscription_by_slug(&slug)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no organisation has the slug `{slug}`"))?;
        tenancy
            .change_subscription(row.id, change, "operator", reason.as_deref())
            .await?;
        // Not served any more, or served again: this process's context goes either way;
        // other instances notice within seconds.
        tenancy.close_tenant(row.id).await;
        tenancy
            .subscription_by_slug(&slug)
            .await?
            .ok_or_else(|| anyhow::anyhow!("`{slug}` vanished"))
    })
    .await?;
    println!("{}", describe(&changed));
    Ok(())
}
