//! One-time download links as a tenant database stores them (`export_downloads`): the hash of
//! the link's token and what the link stands for. Opening a link uses it up.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// What a new link stands for.
pub(crate) struct NewDownload<'a> {
    /// `records`, `audit_log`, `notification_list` or `subject_trail`.
    pub(crate) kind: &'static str,
    pub(crate) export_id: Uuid,
    pub(crate) format: &'a str,
    pub(crate) datasheet: Option<&'a str>,
    pub(crate) bom: bool,
    pub(crate) record_ids: &'a [Uuid],
    pub(crate) incident_id: Option<Uuid>,
    /// Who asked for it (id, kind): a subject trail is built for them when it is opened, and
    /// an organisation not served in full opens only its administrators' links.
    pub(crate) actor: Option<(Uuid, &'static str)>,
    pub(crate) request_id: Option<Uuid>,
    pub(crate) filter: Option<&'a Value>,
}

impl<'a> NewDownload<'a> {
    /// A link of `kind` to the export `export_id` in `format`, standing for nothing more yet:
    /// each producer fills in what its download needs.
    pub(crate) fn new(kind: &'static str, export_id: Uuid, format: &'a str) -> Self {
        Self {
            kind,
            export_id,
            format,
            datasheet: None,
            bom: false,
            record_ids: &[],
            incident_id: None,
            actor: None,
            request_id: None,
            filter: None,
        }
    }
}

/// Stores a link for `lifetime_seconds` from now; returns when it expires.
pub(crate) async fn insert(
    pool: &PgPool,
    token_hash: &[u8],
    link: &NewDownload<'_>,
    lifetime_seconds: f64,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO export_downloads (token_hash, export_id, kind, datasheet, format, bom,
                                       record_ids, incident_id, actor_id, actor_kind, request_id,
                                       filter, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 now() + $13 * interval '1 second')
         RETURNING expires_at",
    )
    .bind(token_hash)
    .bind(link.export_id)
    .bind(link.kind)
    .bind(link.datasheet)
    .bind(link.format)
    .bind(link.bom)
    .bind(link.record_ids)
    .bind(link.incident_id)
    .bind(link.actor.map(|(id, _)| id))
    .bind(link.actor.map(|(_, kind)| kind))
    .bind(link.request_id)
    .bind(link.filter)
    .bind(lifetime_seconds)
    .fetch_one(pool)
    .await
}

/// A download link as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct DownloadRow {
    pub(crate) kind: String,
    pub(crate) export_id: Uuid,
    pub(crate) datasheet: Option<String>,
    pub(crate) format: String,
    pub(crate) bom: bool,
    pub(crate) record_ids: Vec<Uuid>,
    pub(crate) actor_id: Option<Uuid>,
    pub(crate) actor_kind: Option<String>,
    pub(crate) request_id: Option<Uuid>,
    pub(crate) filter: Option<Value>,
}

/// Uses up the live link with this token hash; `None` when it is unknown, used or expired.
pub(crate) async fn take(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<DownloadRow>> {
    // An organisation archive's link keeps the archive key (sealed) until it is used: it goes
    // with the use, so no copy of the key outlives the download.
    sqlx::query_as(
        "UPDATE export_downloads d
         SET used_at = now(), filter = CASE WHEN d.kind = 'organization' THEN NULL ELSE d.filter END
         FROM (SELECT token_hash, filter FROM export_downloads WHERE token_hash = $1 FOR UPDATE) o
         WHERE d.token_hash = o.token_hash AND d.used_at IS NULL AND d.expires_at > now()
         RETURNING d.kind, d.export_id, d.datasheet, d.format, d.bom, d.record_ids, d.actor_id,
                   d.actor_kind, d.request_id, o.filter",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await
}
