//! `custos projections status`: where each read model of every organisation (or one) stands;
//! `custos projections rebuild`: one read model rebuilt from the events and swapped in. Both
//! work beside a running service, starting no cluster of their own then.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::args::{ProjectionsRebuildArgs, ProjectionsStatusArgs};
use crate::config::Config;
use crate::infra::database::Database;
use crate::infra::integrity::read_models::{rebuild_unless, Ended};
use crate::infra::keys::MasterKey;
use crate::infra::projector::{standings, Standing};
use crate::infra::tenancy::tenant::{Reading, TenantRow};
use crate::infra::tenancy::verification::organisation_servers;

/// Every organisation of the catalog (or the one with the slug `only`), each with the options
/// that reach its database on its region's server.
async fn organisations(
    database: &Database,
    config: &Config,
    only: Option<&str>,
) -> anyhow::Result<Vec<(TenantRow, PgConnectOptions)>> {
    let organisations = organisation_servers(
        &database.options,
        &config.catalog_database,
        &config.regions,
        only,
    )
    .await?;
    Ok(organisations
        .into_iter()
        .map(|(row, own_server)| {
            let server = own_server.unwrap_or_else(|| database.options.clone());
            let options = server.database(&row.database_name);
            (row, options)
        })
        .collect())
}

/// Prints, per organisation, each read model's standing.
pub(crate) async fn status(args: ProjectionsStatusArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let database = Database::open_or_attach(&config).await?;
    let result = async {
        let now = chrono::Utc::now();
        for (row, options) in organisations(&database, &config, args.tenant.as_deref()).await? {
            let mut conn = PgConnection::connect_with(&options).await?;
            let read_models = standings(&mut conn, &custos_projections::all()).await?;
            conn.close().await?;
            let behind: i64 = read_models.iter().map(|r| r.behind).sum();
            println!(
                "{}: {} read models, {}",
                row.slug,
                read_models.len(),
                if behind == 0 {
                    "all up to date".to_owned()
                } else {
                    format!("{behind} event(s) not applied yet")
                }
            );
            for read_model in &read_models {
                println!("  {}", line(read_model, now));
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}

/// Rebuilds one read model of every organisation (or one), printing what each rebuild did. An
/// unknown name is refused before any organisation is touched.
pub(crate) async fn rebuild(args: ProjectionsRebuildArgs) -> anyhow::Result<()> {
    let config = args.common.config()?;
    let database = Database::open_or_attach(&config).await?;
    let result = async {
        let master = MasterKey::load(config.master_key.as_ref(), &config.data_dir)?;
        // Ctrl-C or SIGTERM stops the rebuild running and removes what it had built; the
        // organisations rebuilt before stay rebuilt.
        let mut stop = Box::pin(super::serve::shutdown_signal());
        for (row, options) in organisations(&database, &config, args.tenant.as_deref()).await? {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_lazy_with(options.clone());
            let reading = Reading::new(&pool, &master, row.id);
            let Some(projection) = reading
                .read_models
                .iter()
                .find(|projection| projection.name() == args.name)
            else {
                let mut names: Vec<&str> = reading.read_models.iter().map(|p| p.name()).collect();
                names.sort_unstable();
                anyhow::bail!(
                    "there is no read model `{}`; the read models are: {}",
                    args.name,
                    names.join(", ")
                );
            };
            let ended = rebuild_unless(
                &options,
                &reading.log,
                projection.as_ref(),
                &mut stop,
            )
            .await;
            pool.close().await;
            // Stopped: the organisations after this one are left as they are (and the signal
            // future, done, is not polled again).
            let rebuilt = match ended? {
                Ended::Rebuilt(rebuilt) => rebuilt,
                Ended::Stopped { swapped: false } => anyhow::bail!(
                    "interrupted: the rebuild of {} for {} stopped before its swap and what it had built was removed; nothing of it was replaced",
                    projection.name(),
                    row.slug
                ),
                Ended::Stopped { swapped: true } => anyhow::bail!(
                    "interrupted: the rebuild of {} for {} was stopped after its swap, so it is done; no organisation after it was rebuilt",
                    projection.name(),
                    row.slug
                ),
            };
            println!(
                "{}: {} rebuilt from {} events and swapped in ({} rows), at position {}; it stood still for {:.2} s while its tables were swapped",
                row.slug,
                projection.name(),
                rebuilt.events,
                rebuilt.rows,
                rebuilt.at.global_position,
                rebuilt.held.as_secs_f64()
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.stop().await?;
    result
}

/// `name  moved <time>  up to date` or `… N behind, the oldest written S s ago`.
fn line(read_model: &Standing, now: chrono::DateTime<chrono::Utc>) -> String {
    let state = match read_model.oldest_behind {
        Some(oldest) if read_model.behind > 0 => format!(
            "{} event(s) behind, the oldest written {:.1} s ago",
            read_model.behind,
            (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
        ),
        _ => "up to date".to_owned(),
    };
    format!(
        "{:<20} checkpoint moved {}  {state}",
        read_model.name,
        read_model.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_how_far_behind_a_read_model_is() {
        let now = chrono::Utc::now();
        let mut standing = Standing {
            name: "records",
            updated_at: now,
            behind: 0,
            oldest_behind: None,
        };
        assert!(line(&standing, now).ends_with("up to date"));
        standing.behind = 3;
        standing.oldest_behind = Some(now - chrono::Duration::milliseconds(2_500));
        assert!(
            line(&standing, now).ends_with("3 event(s) behind, the oldest written 2.5 s ago"),
            "{}",
            line(&standing, now)
        );
    }
}
