//! Every organisation of a server verified at once: each stream's hash chain and the Merkle
//! log against the signed tree heads and the witness files — for `custos verify`, and for a
//! restored backup before anyone relies on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::catalog::list_tenants;
use super::tenant::TenantRow;
use crate::config::Region;
use crate::infra::integrity::tree_head::{read_witness, witness_file};
use crate::infra::integrity::verify::{verify, Report};
use crate::infra::keys::MasterKey;

/// Where the organisations are and what to check them against.
pub(crate) struct Scope<'a> {
    /// The default server (superuser) and its catalog database.
    pub server: &'a PgConnectOptions,
    pub catalog: &'a str,
    /// Regions on servers of their own.
    pub regions: &'a HashMap<Region, PgConnectOptions>,
    /// Only the organisations whose databases are on the default server (a backup of it
    /// holds no other).
    pub default_server_only: bool,
    pub master: &'a MasterKey,
    /// The directory whose `checkpoints/` holds the witness files.
    pub data_dir: &'a Path,
}

/// One organisation's verification.
pub(crate) struct Verified {
    pub row: TenantRow,
    /// Superuser options for the organisation's server.
    pub server: PgConnectOptions,
    pub witness: PathBuf,
    pub report: Report,
}

/// The organisations of the default server's catalog (or the one with the slug `only`), oldest
/// first, each with superuser options for its own server (its region's, or the default one).
pub(crate) async fn organisation_servers(
    server: &PgConnectOptions,
    catalog: &str,
    regions: &HashMap<Region, PgConnectOptions>,
    only: Option<&str>,
) -> anyhow::Result<Vec<(TenantRow, Option<PgConnectOptions>)>> {
    let mut conn = PgConnection::connect_with(&server.clone().database(catalog)).await?;
    let tenants = list_tenants(&mut conn).await?;
    conn.close().await?;
    if let Some(slug) = only {
        if !tenants.iter().any(|t| t.slug == *slug) {
            anyhow::bail!("no organisation has the slug `{slug}`");
        }
    }
    Ok(tenants
        .into_iter()
        .filter(|row| only.is_none_or(|slug| slug == row.slug))
        .map(|row| {
            let own_server = row
                .region
                .parse::<Region>()
                .ok()
                .and_then(|region| regions.get(&region).cloned());
            (row, own_server)
        })
        .collect())
}

/// Verifies every organisation of the scope (or the one with the slug `only`, checked against
/// the witness file `witness` when given), oldest first.
pub(crate) async fn verify_organisations(
    scope: &Scope<'_>,
    only: Option<&str>,
    witness: Option<&Path>,
) -> anyhow::Result<Vec<Verified>> {
    let tenants = organisation_servers(scope.server, scope.catalog, scope.regions, only).await?;
    let mut verified = Vec::new();
    for (row, own_server) in tenants {
        if scope.default_server_only && own_server.is_some() {
            continue;
        }
        let server = own_server.unwrap_or_else(|| scope.server.clone());
        let path = match (witness, only) {
            (Some(path), Some(_)) => path.to_owned(),
            _ => witness_file(scope.data_dir, row.id),
        };
        let file = read_witness(&path)?;
        let mut conn =
            PgConnection::connect_with(&server.clone().database(&row.database_name)).await?;
        let expected = row.audit_keys(scope.master)?.anchor();
        let report = verify(&mut conn, row.id, Some(expected), Some(&file)).await?;
        conn.close().await?;
        verified.push(Verified {
            row,
            server,
            witness: path,
            report,
        });
    }
    Ok(verified)
}
