//! `custos verify`: every stream's hash chain and the whole Merkle log of every organisation
//! (or one), against every signed tree head in the database and the witness files; exits 1
//! when anything does not verify. Works beside a running service, starting no cluster of its
//! own then.

use std::path::Path;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::args::VerifyArgs;
use crate::infra::database::Database;
use crate::infra::integrity::read_models::{compare, ReadModelReport};
use crate::infra::integrity::verify::Report;
use crate::infra::keys::MasterKey;
use crate::infra::tenancy::tenant::Reading;
use crate::infra::tenancy::verification::{verify_organisations, Scope};

/// Verifies every organisation (or one) of the data directory's database, printing a report
/// per organisation; false when anything does not verify.
pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let config = args.common.config()?;
    let database = Database::open_or_attach(&config).await?;
    let result = async {
        let master = MasterKey::load(config.master_key.as_ref(), &config.data_dir)?;
        let scope = Scope {
            server: &database.options,
            catalog: &config.catalog_database,
            regions: &config.regions,
            default_server_only: false,
            master: &master,
            data_dir: &config.data_dir,
        };
        let verified =
            verify_organisations(&scope, args.tenant.as_deref(), args.checkpoints.as_deref())
                .await?;
        let mut all_ok = true;
        for organisation in verified {
            let (row, report) = (&organisation.row, &organisation.report);
            print_report(&row.slug, row.id, &organisation.witness, report);
            all_ok &= report.ok();
            if args.read_models {
                let database = organisation.server.clone().database(&row.database_name);
                let mut conn = PgConnection::connect_with(&database).await?;
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with(database)
                    .await?;
                let reading = Reading::new(&pool, &master, row.id);
                let models = compare(&mut conn, &reading.log, &reading.read_models).await?;
                pool.close().await;
                conn.close().await?;
                print_read_models(&row.slug, &models);
                all_ok &= models.differences.is_empty();
            }
        }
        Ok::<_, anyhow::Error>(all_ok)
    }
    .await;
    database.stop().await?;
    result
}

fn print_read_models(slug: &str, report: &ReadModelReport) {
    let verdict = if report.differences.is_empty() {
        "OK"
    } else {
        "FAILED"
    };
    println!(
        "{slug} read models: {verdict} — {} read models ({} tables) rebuilt from {} events",
        report.projections, report.tables, report.events
    );
    for difference in &report.differences {
        println!(
            "  {} ({}): {} row(s) the events give are not in the live table, {} live row(s) the events do not give; e.g. {}",
            difference.table,
            difference.projection,
            difference.only_rebuilt,
            difference.only_live,
            difference.examples.join(", ")
        );
    }
}

pub(super) fn print_report(slug: &str, id: Uuid, file: &Path, report: &Report) {
    let verdict = if report.ok() { "OK" } else { "FAILED" };
    println!(
        "{slug} ({id}): {verdict} — {} events in {} streams; {} signed tree head(s){}",
        report.events,
        report.streams,
        report.checkpoints,
        report
            .checked_checkpoint
            .map(|n| format!(
                ", the tree recomputed up to tree head {n}, witness file {}",
                file.display()
            ))
            .unwrap_or_default()
    );
    for link in &report.broken {
        println!(
            "  {}/{}: {:?} at sequence {}",
            link.aggregate_type, link.aggregate_id, link.breach, link.sequence
        );
    }
    for problem in &report.checkpoint_problems {
        println!("  {problem}");
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
}
