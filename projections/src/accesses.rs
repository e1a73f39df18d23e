//! Who received or saw a person's data: `record_exports` (a read model of every export, one row
//! per exported record), `record_reads` (reads of one person's data, recorded by the service
//! as they happen) and `list_reads` (list pages: one row per request with the ids it showed). Ids and times only; a subject's trail and the breach register read
//! both.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{Actor, DataExport};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects DataExport events into `record_exports`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordExportsProjection;

#[async_trait]
impl Projection for RecordExportsProjection {
    fn name(&self) -> &'static str {
        "record_exports"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<DataExport as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("record_exports")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::DataExport(export) = &event.event else {
            return Ok(());
        };
        let kind = cqrs_es::DomainEvent::event_type(export);
        let actor = event.metadata.actor;
        sqlx::query(
            "INSERT INTO record_exports (record_id, export_id, kind, exported_at, actor_id, actor_kind)
             SELECT r, $2, $3, $4, $5, $6 FROM unnest($1::uuid[]) AS r
             ON CONFLICT DO NOTHING",
        )
        .bind(export.record_ids())
        .bind(event.aggregate_id)
        .bind(kind)
        .bind(event.recorded_at)
        .bind(actor.id())
        .bind(actor.kind())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM record_exports")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// How a read reached a person's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVia {
    /// The record was opened by its id.
    Record,
    /// The person was found by email or phone.
    FindSubject,
    /// The record's history or a past state was read (values included).
    History,
    /// The record was on a page of a datasheet's list.
    List,
    /// The record was counted in a report (`report`, `headcount`), whose groups show values.
    Report,
    /// The record was sent to a live subscriber (`recordChanged`).
    Subscription,
}

impl ReadVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadVia::Record => "record",
            ReadVia::FindSubject => "find_subject",
            ReadVia::History => "history",
            ReadVia::List => "list",
            ReadVia::Report => "report",
            ReadVia::Subscription => "subscription",
        }
    }
}

/// Records that `actor` saw the data of `records` at once within `request_id` (a list page, a
/// report): one row for all of them. Committed without waiting for the WAL flush (`synchronous_commit`
/// off for this statement only): a list page is a read, and making every one wait for the disk
/// cost about a third of the list's latency under load (docs/performance.md); a database crash
/// may lose the last fraction of a second of these rows, never leave them inconsistent.
pub async fn list_read<'e>(
    db: impl PgExecutor<'e>,
    records: &[Uuid],
    actor: Actor,
    request_id: Uuid,
    via: ReadVia,
) -> sqlx::Result<()> {
    insert_reads(
        db,
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
         INSERT INTO list_reads (record_ids, actor_id, actor_kind, request_id, via)
         SELECT $1, $2, $3, $4, $5 FROM relaxed",
        records,
        actor,
        request_id,
        via,
    )
    .await
}

/// Records that `actor` read the data of `records` within `request_id`.
pub async fn record_reads<'e>(
    db: impl PgExecutor<'e>,
    records: &[Uuid],
    actor: Actor,
    request_id: Uuid,
    via: ReadVia,
) -> sqlx::Result<()> {
    insert_reads(
        db,
        "INSERT INTO record_reads (record_id, actor_id, actor_kind, request_id, via)
         SELECT r, $2, $3, $4, $5 FROM unnest($1::uuid[]) AS r",
        records,
        actor,
        request_id,
        via,
    )
    .await
}

/// Runs `insert` with the records ($1), the actor ($2, $3), the request ($4) and how ($5);
/// nothing when there are no records.
async fn insert_reads<'e>(
    db: impl PgExecutor<'e>,
    insert: &'static str,
    records: &[Uuid],
    actor: Actor,
    request_id: Uuid,
    via: ReadVia,
) -> sqlx::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    sqlx::query(insert)
        .bind(records)
        .bind(actor.id())
        .bind(actor.kind())
        .bind(request_id)
        .bind(via.as_str())
        .execute(db)
        .await?;
    Ok(())
}

/// One export or recorded read of a record's data.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccessRow {
    pub record_id: Uuid,
    pub at: DateTime<Utc>,
    /// `export` or `read`.
    pub access: String,
    /// The export's event type, or how the read reached the data.
    pub kind: String,
    /// The export's id; `None` for reads.
    pub export_id: Option<Uuid>,
    pub actor_id: Uuid,
    pub actor_kind: String,
}

/// Every export and recorded read of `records`, oldest first.
pub async fn of_records<'e>(
    db: impl PgExecutor<'e>,
    records: &[Uuid],
) -> sqlx::Result<Vec<AccessRow>> {
    sqlx::query_as(
        "SELECT record_id, exported_at AS at, 'export' AS access, kind, export_id, actor_id, actor_kind
           FROM record_exports WHERE record_id = ANY($1)
         UNION ALL
         SELECT record_id, read_at, 'read', via, NULL, actor_id, actor_kind
           FROM record_reads WHERE record_id = ANY($1)
         UNION ALL
         SELECT shown.id, read_at, 'read', via, NULL, actor_id, actor_kind
           FROM list_reads CROSS JOIN LATERAL unnest(record_ids) AS shown (id)
          WHERE record_ids && $1 AND shown.id = ANY($1)
         ORDER BY at, record_id",
    )
    .bind(records)
    .fetch_all(db)
    .await
}
