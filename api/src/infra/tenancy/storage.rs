//! Each organisation's storage: its database's size (which holds its stored exports too),
//! measured with one query per server and written to the catalog with its plan's limit, so
//! the API shows it and an open context knows when a trial has reached its limit.

use std::collections::HashMap;

use custos_domain::Plan;
use uuid::Uuid;

use super::catalog::{Tenancy, LIVE};
use crate::config::Region;

/// One organisation's storage as just measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub id: Uuid,
    pub used_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// How far its storage had gone as its subscription stream last recorded.
    pub recorded_level: u64,
}

/// A live organisation as the measurement reads it.
type Row = (Uuid, String, String, String, i64);

impl Tenancy {
    /// Measures every live organisation's database and writes its size, with the limit of
    /// its plan (`limit`), to the catalog; open contexts learn at once whether they have
    /// reached it.
    pub(crate) async fn measure_storage(
        &self,
        limit: impl Fn(Option<Plan>) -> Option<u64>,
    ) -> anyhow::Result<Vec<Measured>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT id, region, database_name, plan, storage_level FROM tenants
             WHERE status IN {LIVE} AND move IS NULL"
        ))
        .fetch_all(self.catalog())
        .await?;
        let mut by_region: HashMap<String, Vec<String>> = HashMap::new();
        for (_, region, database, ..) in &rows {
            by_region
                .entry(region.clone())
                .or_default()
                .push(database.clone());
        }
        let mut sizes: HashMap<String, i64> = HashMap::new();
        for (region, databases) in by_region {
            let region: Region = region
                .parse()
                .map_err(|()| anyhow::anyhow!("unknown region `{region}` in the catalog"))?;
            sizes.extend(self.database_sizes(region, &databases).await?);
        }
        let mut measured = Vec::with_capacity(rows.len());
        for (id, _, database, plan, level) in rows {
            // Dropped meanwhile (a move, a purge): measured next time.
            let Some(&size) = sizes.get(&database) else {
                continue;
            };
            measured.push(Measured {
                id,
                used_bytes: u64::try_from(size).unwrap_or(0),
                limit_bytes: limit(Plan::parse(&plan).ok()),
                recorded_level: u64::try_from(level).unwrap_or(0),
            });
        }
        let ids: Vec<Uuid> = measured.iter().map(|m| m.id).collect();
        let used: Vec<i64> = measured
            .iter()
            .map(|m| i64::try_from(m.used_bytes).unwrap_or(i64::MAX))
            .collect();
        let limits: Vec<Option<i64>> = measured
            .iter()
            .map(|m| m.limit_bytes.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
            .collect();
        sqlx::query(
            "UPDATE tenants SET storage_used_bytes = m.used, storage_limit_bytes = m.lim,
                    storage_measured_at = now()
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS m(id, used, lim)
             WHERE tenants.id = m.id",
        )
        .bind(&ids)
        .bind(&used)
        .bind(&limits)
        .execute(self.catalog())
        .await?;
        for m in &measured {
            if let Some(tenant) = self.opened(m.id).await {
                tenant.set_over_storage_limit(m.limit_bytes.is_some_and(|l| m.used_bytes >= l));
            }
        }
        Ok(measured)
    }
}
