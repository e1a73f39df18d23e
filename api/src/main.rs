//! The `custos` binary: telemetry, configuration, then the chosen command.

use clap::Parser;
use custos_api::cli::{admin_password, Cli, Command, RetentionCommand, TenantCommand};
use custos_api::service::NewOrganization;
use custos_api::{app, telemetry, Application};
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format.unwrap_or(telemetry::LogFormat::Text));
    match cli.command {
        Command::Serve(args) => {
            let application = Application::build(args.config()?).await?;
            application.run_until(shutdown_signal()).await
        }
        Command::Migrate(args) => {
            let config = args.config()?;
            let database = app::Database::open(&config).await?;
            // Opening the services migrates the catalog, the template and every tenant.
            let result = app::services(&config, &database).await;
            if let Ok(services) = &result {
                services.tenancy.close().await;
                tracing::info!("migrations applied");
            }
            database.stop().await?;
            result.map(|_| ())
        }
        Command::Tenant(TenantCommand::Create(args)) => {
            let config = args.common.config()?;
            let password = admin_password()?;
            let database = app::Database::open(&config).await?;
            let result = async {
                let services = app::services(&config, &database).await?;
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
        Command::Retention(RetentionCommand::Run(args)) => {
            let config = args.common.config()?;
            let database = app::Database::open(&config).await?;
            let result = async {
                let services = app::services(&config, &database).await?;
                let runs =
                    custos_api::service::retention::run_tenants(&services, args.tenant.as_deref())
                        .await;
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
        Command::Verify(args) => {
            if custos_api::integrity::run_cli(args).await? {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
        Command::Bench(args) => custos_api::bench::run(args).await,
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down");
}
