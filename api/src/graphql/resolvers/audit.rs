//! Tamper evidence for auditors: the signed tree heads, making one on demand, verifying the
//! whole event store, and the proofs an auditor keeps (an event's inclusion, one head's
//! consistency with a later one).

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use custos_domain::{Datasheet, ExportFormat};
use custos_projections::accesses::ReadVia;
use custos_projections::audit_log::{self, AuditFilter, AuditRow};
use uuid::Uuid;

use crate::auth::policy::{check, check_standing, rule};
use crate::error::ApiError;
use crate::graphql::arguments::{moment, parse_id};
use crate::graphql::consistency::passed_after;
use crate::graphql::context::{Cx, SubscriptionAuth};
use crate::graphql::pagination::{encode_sequence, page_size_within, sequence_after};
use crate::graphql::types::actor::Actor;
use crate::graphql::types::enums::{BreachKind, DatasheetKind, ExportFormatKind};
use crate::graphql::types::exports::{export_payload, ExportPayload};
use crate::graphql::types::history::FieldChange;
use crate::infra::integrity::proof::{ConsistencyProof, EventProof, ProvenEvent};
use crate::infra::integrity::tree_head::{key_id, TreeHead};
use crate::infra::integrity::verify::Report;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::audit::history::{record_history, role_history, user_history};
use crate::service::identity::RequestOrigin;
use crate::service::Services;

/// A signed tree head: the root of the organisation's Merkle log at a size (every event a
/// leaf, in commit order), signed with its Ed25519 key (derived from the master key, outside the
/// database). The signature covers `custos-tree-head/1`, tenant id, number, tree size,
/// streams, time (microseconds), root (hex) and key id, one per line (docs/audit.md).
#[derive(SimpleObject)]
#[graphql(name = "Checkpoint")]
pub(crate) struct CheckpointNode {
    number: i64,
    created_at: DateTime<Utc>,
    /// The organisation whose log it signs.
    tenant_id: ID,
    streams: i64,
    /// How many events the tree holds (the same as `treeSize`).
    events: i64,
    tree_size: i64,
    /// Hex Merkle root (RFC 9162 §2.1.1; leaves are SHA-256(0x00 || event hash)).
    root: String,
    /// The first 16 hex digits of SHA-256 over `publicKey`.
    key_id: String,
    /// Hex Ed25519 public key that verifies `signature`.
    public_key: String,
    signature: String,
    /// A hand-over: the hex public key that signs every later tree head (signed with the rest,
    /// as a last line `next <key id> <public key>`); none otherwise.
    next_public_key: Option<String>,
    next_key_id: Option<String>,
}

impl From<TreeHead> for CheckpointNode {
    fn from(h: TreeHead) -> Self {
        Self {
            number: h.number,
            created_at: h.created_at,
            tenant_id: ID(h.tenant_id.to_string()),
            streams: h.streams,
            events: h.tree_size,
            tree_size: h.tree_size,
            root: hex::encode(h.root),
            key_id: h.key_id,
            public_key: hex::encode(h.public_key),
            signature: hex::encode(h.signature),
            next_key_id: h.next_public_key.as_deref().map(key_id),
            next_public_key: h.next_public_key.map(hex::encode),
        }
    }
}

/// An event as stored: everything its hash covers.
#[derive(SimpleObject)]
#[graphql(name = "ProvenEvent")]
pub(crate) struct ProvenEventNode {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    /// The stored JSON text, byte for byte (sealed values as ciphertext).
    payload: String,
    metadata: String,
    /// When it was recorded, in microseconds since 1970.
    recorded_at_micros: i64,
    /// The previous event's hash in its stream, hex (none for the first).
    previous_hash: Option<String>,
    /// The event's chained hash, hex.
    hash: String,
}

/// Proof that an event is leaf `leafIndex` of the tree `treeHead` signed: save the response
/// and check it offline with `custos verify-proof --public-key KEY FILE`.
#[derive(SimpleObject)]
#[graphql(name = "EventProof")]
pub(crate) struct EventProofNode {
    leaf_index: i64,
    tree_size: i64,
    /// Sibling hashes from the leaf up to the root, hex (RFC 9162 §2.1.3).
    audit_path: Vec<String>,
    event: ProvenEventNode,
    tree_head: CheckpointNode,
    /// Every hand-over of the organisation's signing key, oldest first (none before the first
    /// rotation): `custos verify-proof` follows them from the key it is given, both ways.
    key_handovers: Vec<CheckpointNode>,
}

impl From<EventProof> for EventProofNode {
    fn from(p: EventProof) -> Self {
        let ProvenEvent {
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            payload,
            metadata,
            recorded_at_micros,
            previous_hash,
            hash,
        } = p.event;
        Self {
            leaf_index: p.leaf_index,
            tree_size: p.tree_size,
            audit_path: p.audit_path,
            event: ProvenEventNode {
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                event_version,
                payload,
                metadata,
                recorded_at_micros,
                previous_hash,
                hash,
            },
            tree_head: p.tree_head.into(),
            key_handovers: p.key_handovers.into_iter().map(Into::into).collect(),
        }
    }
}

/// Proof that the tree `fromHead` signed is a prefix of the tree `toHead` signed: nothing
/// logged before was changed or removed. Check it offline with `custos verify-proof`.
#[derive(SimpleObject)]
#[graphql(name = "ConsistencyProof")]
pub(crate) struct ConsistencyProofNode {
    from_size: i64,
    to_size: i64,
    /// RFC 9162 §2.1.4 consistency path, hex.
    path: Vec<String>,
    from_head: CheckpointNode,
    to_head: CheckpointNode,
    /// Every hand-over of the organisation's signing key, oldest first.
    key_handovers: Vec<CheckpointNode>,
}

impl From<ConsistencyProof> for ConsistencyProofNode {
    fn from(p: ConsistencyProof) -> Self {
        Self {
            from_size: p.from_size,
            to_size: p.to_size,
            path: p.path,
            from_head: p.from_head.into(),
            to_head: p.to_head.into(),
            key_handovers: p.key_handovers.into_iter().map(Into::into).collect(),
        }
    }
}

/// The first broken link of one stream.
#[derive(SimpleObject)]
pub(crate) struct BrokenLinkNode {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    breach: BreachKind,
}

#[derive(SimpleObject)]
pub(crate) struct IntegrityReport {
    /// Every chain, the whole Merkle log and every signed tree head verified, and no
    /// integrity alarm raised.
    ok: bool,
    streams: i64,
    events: i64,
    /// The first broken link of each broken stream.
    broken: Vec<BrokenLinkNode>,
    /// Signed tree heads in the database.
    checkpoints: i64,
    /// The newest tree head held to the recomputed tree.
    checked_checkpoint: Option<i64>,
    /// What is wrong with the Merkle log and the tree heads, in words: the first event not as
    /// it was logged, each tree head that disagrees, a raised integrity alarm.
    checkpoint_problems: Vec<String>,
    /// Not failures: tree heads not yet in this instance's witness file, checkpoints from
    /// before the Merkle log.
    notes: Vec<String>,
}

impl From<Report> for IntegrityReport {
    fn from(report: Report) -> Self {
        Self {
            ok: report.ok(),
            streams: report.streams,
            events: report.events,
            broken: report
                .broken
                .into_iter()
                .map(|l| BrokenLinkNode {
                    aggregate_type: l.aggregate_type,
                    aggregate_id: l.aggregate_id,
                    sequence: l.sequence,
                    breach: l.breach.into(),
                })
                .collect(),
            checkpoints: report.checkpoints,
            checked_checkpoint: report.checked_checkpoint,
            checkpoint_problems: report.checkpoint_problems,
            notes: report.notes,
        }
    }
}

/// Which audit entries to show; every part optional, all given parts must match.
#[derive(InputObject, Default)]
pub(crate) struct AuditLogFilter {
    /// Caused by this user, API token or retention policy.
    actor_id: Option<ID>,
    datasheet: Option<DatasheetKind>,
    /// About this record, user, role or API token.
    subject_id: Option<ID>,
    /// Of these event types (`RecordUpdated`, `LoginFailed`, `RecordsExported`, ...).
    event_types: Option<Vec<String>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl AuditLogFilter {
    fn parse(self) -> Result<AuditFilter, ApiError> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if to < from {
                return Err(ApiError::validation("to", "`to` is before `from`"));
            }
        }
        Ok(AuditFilter {
            actor: self
                .actor_id
                .map(|id| parse_id("actorId", &id))
                .transpose()?,
            datasheet: self
                .datasheet
                .map(|d| Datasheet::from(d).as_str().to_owned()),
            subject: self
                .subject_id
                .map(|id| parse_id("subjectId", &id))
                .transpose()?,
            event_types: self.event_types,
            from: self.from.map(|at| moment("from", at)).transpose()?,
            to: self.to.map(|at| moment("to", at)).transpose()?,
        })
    }
}

/// One entry of the audit log: an event of any stream.
pub(crate) struct AuditEntry(pub(crate) AuditRow);

#[Object]
impl AuditEntry {
    /// The event's position in the organisation's log.
    async fn position(&self) -> i64 {
        self.0.global_position
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
    /// `record`, `user`, `role`, `api_token`, `consent`, `data_export`, `retention_policy`,
    /// `incident`, `organization` or `field_schema`.
    async fn aggregate_type(&self) -> &str {
        &self.0.aggregate_type
    }
    async fn aggregate_id(&self) -> &str {
        &self.0.aggregate_id
    }
    async fn sequence(&self) -> i64 {
        self.0.sequence
    }
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn actor(&self) -> Actor {
        let known = custos_domain::Actor::from_parts(&self.0.actor_kind, self.0.actor_id);
        Actor::new(self.0.actor_id, known)
    }
    async fn request_id(&self) -> ID {
        ID(self.0.request_id.to_string())
    }
    async fn datasheet(&self) -> Option<DatasheetKind> {
        self.0
            .datasheet
            .as_deref()
            .and_then(Datasheet::parse)
            .map(DatasheetKind::from)
    }
    /// The records, users, roles or tokens the event is about.
    async fn subject_ids(&self) -> Vec<ID> {
        self.0.subjects.iter().map(|s| ID(s.to_string())).collect()
    }
    /// The names of the fields it changed.
    async fn fields(&self) -> &[String] {
        &self.0.fields
    }
    /// Each field's value before and after, read (and decrypted) from the event store when
    /// asked: for records, users and roles; erased values read `[erased]`.
    async fn changes(&self, ctx: &Context<'_>) -> Result<Vec<FieldChange>, ApiError> {
        let cx = Cx::new(ctx)?;
        let log = &cx.tenant().log;
        let Ok(id) = Uuid::try_parse(&self.0.aggregate_id) else {
            return Ok(Vec::new());
        };
        let entries = match self.0.aggregate_type.as_str() {
            "record" => {
                cx.record_reads(&[id], ReadVia::History).await?;
                record_history(log, id).await
            }
            "user" => user_history(log, id).await,
            "role" => role_history(log, id).await,
            _ => return Ok(Vec::new()),
        }
        .map_err(ApiError::internal)?;
        Ok(entries
            .into_iter()
            .find(|e| e.sequence == self.0.sequence)
            .map(|e| e.changes.into_iter().map(FieldChange::from).collect())
            .unwrap_or_default())
    }
}

pub(crate) type AuditConnection = Connection<String, AuditEntry, EmptyFields, EmptyFields>;

#[derive(Default)]
pub(crate) struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Everything that happened in the organisation, newest first: data changes, user and
    /// role changes, logins and lockouts, exports, erasures, retention runs, consent changes.
    /// Entries hold no values; `changes` reads them from the event. `history` on every
    /// datasheet.
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        #[graphql(desc = "Page size, 1 to 500 (default 50).")] first: Option<i32>,
        after: Option<String>,
    ) -> Result<AuditConnection, ApiError> {
        let cx = Cx::new(ctx)?;
        let first = page_size_within("first", first, 50, 500)?;
        let before = sequence_after(after)?;
        let filter = filter.unwrap_or_default().parse()?;
        let tenant = cx.tenant();
        let mut rows = audit_log::entries(&tenant.pool, &filter, before, first + 1).await?;
        let more = rows.len() > first as usize;
        rows.truncate(first as usize);
        let mut connection = Connection::new(before.is_some(), more);
        connection.edges.extend(
            rows.into_iter()
                .map(|row| Edge::new(encode_sequence(row.global_position), AuditEntry(row))),
        );
        Ok(connection)
    }

    /// The organisation's newest signed tree heads, oldest first (`history` on every
    /// datasheet).
    async fn checkpoints(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many of the newest, 1 to 1000 (default 100).")] last: Option<i32>,
    ) -> Result<Vec<CheckpointNode>, ApiError> {
        let cx = Cx::new(ctx)?;
        let last = page_size_within("last", last, 100, 1000)?;
        let tenant = cx.tenant();
        let list = cx.services.checkpoints(tenant, last).await?;
        Ok(list.into_iter().map(CheckpointNode::from).collect())
    }

    /// Recomputes every stream's hash chain and the whole Merkle log, and checks every signed
    /// tree head against it (their signatures, their order, this instance's witness file);
    /// names the first event that is not as it was logged. Reads the whole event store:
    /// seconds for a million events. `history` on every datasheet.
    async fn verify_integrity(&self, ctx: &Context<'_>) -> Result<IntegrityReport, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        Ok(cx.services.verify_integrity(tenant).await?.into())
    }

    /// Proof that an event (by stream and sequence) is in the Merkle log: its leaf, the audit
    /// path and the signed tree head (the newest, or the one of `treeSize` events). An event
    /// written since the last tree head gets one first. `history` on every datasheet.
    async fn event_proof(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: ID,
        sequence: i64,
        tree_size: Option<i64>,
    ) -> Result<EventProofNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        Ok(cx
            .services
            .event_proof(tenant, &aggregate_type, &aggregate_id, sequence, tree_size)
            .await?
            .into())
    }

    /// Proof that the tree of `fromSize` events is a prefix of the tree of `toSize` (the
    /// newest by default): both are sizes of signed tree heads. `history` on every datasheet.
    async fn consistency_proof(
        &self,
        ctx: &Context<'_>,
        from_size: i64,
        to_size: Option<i64>,
    ) -> Result<ConsistencyProofNode, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        Ok(cx
            .services
            .consistency_proof(tenant, from_size, to_size)
            .await?
            .into())
    }
}

#[derive(Default)]
pub(crate) struct AuditMutation;

#[Object]
impl AuditMutation {
    /// Exports the audit log entries the filter selects (as they stand now), as CSV or JSON:
    /// recorded as an `AuditLogExported` event (who, the filter, how many) before the link is
    /// handed out. `history` and `export` on every datasheet.
    async fn export_audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        format: ExportFormatKind,
    ) -> Result<ExportPayload, ApiError> {
        let cx = Cx::new(ctx)?;
        let filter = filter.unwrap_or_default().parse()?;
        let format = ExportFormat::from(format);
        let ticket = cx
            .services
            .start_audit_export(cx.caller, filter, format, cx.request_id)
            .await?;
        export_payload(ticket)
    }

    /// Extends the Merkle log and signs a tree head now rather than at the next scheduled
    /// checkpoint; `null` when nothing was written since the last. `CONFLICT` (and nothing
    /// signed) when the stored log no longer agrees with the last signed head.
    async fn create_checkpoint(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<CheckpointNode>, ApiError> {
        let cx = Cx::new(ctx)?;
        let tenant = cx.tenant();
        Ok(cx
            .services
            .create_checkpoint(tenant)
            .await?
            .map(CheckpointNode::from))
    }
}

/// How often the feed looks for new entries, and re-checks its session.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(300);
const FEED_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// `auditFeed` (a root field of `graphql::Subscription`): new audit entries as they are
/// recorded.
pub(crate) async fn audit_feed(
    ctx: &Context<'_>,
) -> async_graphql::Result<impl futures::Stream<Item = AuditEntry>> {
    let cx = Cx::new(ctx)?;
    // A subscription's root field is not resolved through the authorization extension: its
    // rule and the organisation's standing are checked here.
    check(rule("Subscription", "auditFeed"), Some(cx.caller))?;
    check_standing("Subscription", "auditFeed", cx.caller)?;
    let auth = ctx
        .data::<SubscriptionAuth>()
        .map_err(|_| ApiError::Unauthenticated)?;
    let services = cx.services.clone();
    let tenant = cx.tenant().clone();
    // The feed starts after what the audit log shows, once it shows every change answered
    // before, here and at the position the client passed (the consistency extension leaves
    // subscriptions alone).
    services
        .wait_for_deferred(&tenant, passed_after(ctx))
        .await?;
    // This resolver answers `async_graphql::Result` (a subscription's stream): errors pass
    // through `ApiError` explicitly, so they carry their code and internal causes stay logged.
    let head = audit_log::feed_head(&tenant.pool)
        .await
        .map_err(ApiError::from)?;
    struct Feed {
        services: std::sync::Arc<Services>,
        tenant: std::sync::Arc<Tenant>,
        token: String,
        origin: RequestOrigin,
        /// The position of the event of the last entry given.
        last: Option<i64>,
        /// Since when that entry has been missing from the audit log.
        lost: Option<tokio::time::Instant>,
        checked: tokio::time::Instant,
        queue: std::collections::VecDeque<AuditRow>,
    }
    let feed = Feed {
        services,
        tenant,
        token: auth.token.clone(),
        origin: auth.origin.clone(),
        last: head,
        lost: None,
        checked: tokio::time::Instant::now(),
        queue: Default::default(),
    };
    Ok(futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(row) = feed.queue.pop_front() {
                return Some((AuditEntry(row), feed));
            }
            tokio::time::sleep(FEED_POLL).await;
            if feed.checked.elapsed() >= FEED_RECHECK {
                match feed.services.authenticate(&feed.token, &feed.origin).await {
                    Ok(Some(principal))
                        if principal.tenant.id == feed.tenant.id
                            && check(rule("Subscription", "auditFeed"), Some(&principal))
                                .is_ok()
                            && check_standing("Subscription", "auditFeed", &principal).is_ok() => {}
                    _ => return None,
                }
                feed.checked = tokio::time::Instant::now();
            }
            let added = match feed.tenant.pool.acquire().await {
                Ok(mut conn) => audit_log::added_after(&mut conn, feed.last, 100).await,
                Err(err) => Err(err),
            };
            match added {
                Ok(Some(rows)) => {
                    feed.lost = None;
                    if let Some(row) = rows.last() {
                        feed.last = Some(row.global_position);
                    }
                    feed.queue.extend(rows);
                }
                // The audit log is being filled again (reset) and comes back to the place; a
                // place gone for longer (a rebuild by a projection that no longer writes that
                // entry) ends the feed, and the client subscribes again from the newest.
                Ok(None) => {
                    let lost = *feed.lost.get_or_insert_with(tokio::time::Instant::now);
                    if lost.elapsed() >= FEED_RECHECK {
                        tracing::warn!(tenant.id = %feed.tenant.id, "the audit feed ended: its place in the audit log was gone for a minute");
                        return None;
                    }
                }
                Err(err) => {
                    tracing::warn!(tenant.id = %feed.tenant.id, error = %crate::error::redacted(&err.into()), "the audit feed stopped");
                    return None;
                }
            }
        }
    }))
}
