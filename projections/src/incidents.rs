//! The `incidents` read model (the breach register), and the subjects an incident affected:
//! computed from the data in its scope and from the reads, exports and changes in its window.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{Incident, IncidentEvent};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects Incident events into `incidents`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IncidentsProjection;

#[async_trait]
impl Projection for IncidentsProjection {
    fn name(&self) -> &'static str {
        "incidents"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Incident as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("incidents")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Incident(incident) = &event.event else {
            return Ok(());
        };
        match incident {
            IncidentEvent::IncidentRecorded {
                detected_at,
                description,
                scope,
            } => {
                let datasheets: Vec<&str> = scope.datasheets.iter().map(|d| d.as_str()).collect();
                sqlx::query(
                    "INSERT INTO incidents (id, detected_at, description, datasheets, window_from,
                                            window_to, actors, recorded_at, recorded_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.aggregate_id)
                .bind(detected_at)
                .bind(description)
                .bind(datasheets)
                .bind(scope.window_from)
                .bind(scope.window_to)
                .bind(&scope.actors)
                .bind(event.recorded_at)
                .bind(event.metadata.actor.id())
                .execute(conn)
                .await?;
            }
            IncidentEvent::AuthorityNotified { at, reference } => {
                sqlx::query(
                    "UPDATE incidents SET authority_notified_at = $2, authority_reference = $3 WHERE id = $1",
                )
                .bind(event.aggregate_id)
                .bind(at)
                .bind(reference)
                .execute(conn)
                .await?;
            }
            IncidentEvent::SubjectsNotified { at } => {
                sqlx::query("UPDATE incidents SET subjects_notified_at = $2 WHERE id = $1")
                    .bind(event.aggregate_id)
                    .bind(at)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM incidents").execute(conn).await?;
        Ok(())
    }
}

/// One entry of the breach register.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct IncidentRow {
    pub id: Uuid,
    pub detected_at: DateTime<Utc>,
    pub description: String,
    pub datasheets: Vec<String>,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub actors: Vec<Uuid>,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: Uuid,
    pub authority_notified_at: Option<DateTime<Utc>>,
    pub authority_reference: Option<String>,
    pub subjects_notified_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, detected_at, description, datasheets, window_from, window_to, actors, \
     recorded_at, recorded_by, authority_notified_at, authority_reference, subjects_notified_at";

/// The register, newest detection first.
pub async fn incidents<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<Vec<IncidentRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM incidents ORDER BY detected_at DESC, id"
    ))
    .fetch_all(db)
    .await
}

pub async fn incident<'e>(db: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<IncidentRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM incidents WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A record an incident affected, and how its data was reached.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AffectedRow {
    pub record_id: Uuid,
    /// `held` (in the scope's datasheets during the window), or `read`, `exported` or
    /// `changed` by one of the scope's actors during the window.
    pub reasons: Vec<String>,
}

/// The records `incident` affected, by id. Without actors: every record of its datasheets
/// that existed during the window (erased ones included: they were held then). With actors:
/// the records of its datasheets those actors read, exported or changed during the window.
pub async fn affected<'e>(
    db: impl PgExecutor<'e>,
    incident: &IncidentRow,
) -> sqlx::Result<Vec<AffectedRow>> {
    sqlx::query_as(
        "WITH reached AS (
             SELECT id AS record_id, 'held' AS reason FROM records
              WHERE cardinality($4::uuid[]) = 0 AND datasheet = ANY($1)
                AND created_at <= $3 AND (erased_at IS NULL OR erased_at >= $2)
             UNION ALL
             SELECT record_id, 'read' FROM record_reads
              WHERE actor_id = ANY($4) AND read_at BETWEEN $2 AND $3
             UNION ALL
             SELECT unnest(record_ids), 'read' FROM list_reads
              WHERE actor_id = ANY($4) AND read_at BETWEEN $2 AND $3
             UNION ALL
             SELECT record_id, 'exported' FROM record_exports
              WHERE actor_id = ANY($4) AND exported_at BETWEEN $2 AND $3
             UNION ALL
             SELECT DISTINCT aggregate_id::uuid, 'changed' FROM events
              WHERE aggregate_type = 'record' AND recorded_at BETWEEN $2 AND $3
                AND metadata->>'actor_id' = ANY($5)
         )
         SELECT a.record_id, array_agg(DISTINCT a.reason ORDER BY a.reason) AS reasons
         FROM reached a JOIN records r ON r.id = a.record_id
         WHERE r.datasheet = ANY($1)
         GROUP BY a.record_id ORDER BY a.record_id",
    )
    .bind(&incident.datasheets)
    .bind(incident.window_from)
    .bind(incident.window_to)
    .bind(&incident.actors)
    .bind(
        incident
            .actors
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>(),
    )
    .fetch_all(db)
    .await
}
