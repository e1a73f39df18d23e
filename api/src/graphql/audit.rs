//! Tamper evidence for auditors: the signed checkpoints, making one on demand, and verifying
//! the whole event store.

use async_graphql::{Context, Enum, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::{principal, services};
use crate::integrity::{Breach, Checkpoint, Report};

/// A signed checkpoint: an accumulator over every stream's head, signed with the
/// organisation's Ed25519 key (derived from the master key, outside the database).
#[derive(SimpleObject)]
#[graphql(name = "Checkpoint")]
pub struct CheckpointNode {
    number: i64,
    created_at: DateTime<Utc>,
    streams: i64,
    events: i64,
    /// Hex SHA-256 over the heads of every stream.
    root: String,
    /// Hex Ed25519 public key that verifies `signature`.
    public_key: String,
    signature: String,
}

impl From<Checkpoint> for CheckpointNode {
    fn from(c: Checkpoint) -> Self {
        Self {
            number: c.number,
            created_at: c.created_at,
            streams: c.streams,
            events: c.events,
            root: hex::encode(c.root),
            public_key: hex::encode(c.public_key),
            signature: hex::encode(c.signature),
        }
    }
}

/// How a stream's chain is broken.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum BreachKind {
    /// The event's bytes no longer match its hash.
    Edited,
    /// An event is missing here.
    Deleted,
    /// An event that was not part of the chain was put here.
    Inserted,
    /// The event was written at another place in its stream.
    Reordered,
}

/// The first broken link of one stream.
#[derive(SimpleObject)]
pub struct BrokenLinkNode {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    breach: BreachKind,
}

#[derive(SimpleObject)]
pub struct IntegrityReport {
    /// Every chain and checkpoint verified.
    ok: bool,
    streams: i64,
    events: i64,
    broken: Vec<BrokenLinkNode>,
    checkpoints: i64,
    /// The checkpoint whose accumulator was recomputed against the events.
    checked_checkpoint: Option<i64>,
    checkpoint_problems: Vec<String>,
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
                    breach: match l.breach {
                        Breach::Edited => BreachKind::Edited,
                        Breach::Deleted => BreachKind::Deleted,
                        Breach::Inserted => BreachKind::Inserted,
                        Breach::Reordered => BreachKind::Reordered,
                    },
                })
                .collect(),
            checkpoints: report.checkpoints,
            checked_checkpoint: report.checked_checkpoint,
            checkpoint_problems: report.checkpoint_problems,
            notes: report.notes,
        }
    }
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The organisation's signed checkpoints, oldest first (`history` on every datasheet).
    async fn checkpoints(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<CheckpointNode>> {
        let tenant = &principal(ctx)?.tenant;
        let list = services(ctx)?.checkpoints(tenant).await?;
        Ok(list.into_iter().map(CheckpointNode::from).collect())
    }

    /// Recomputes every stream's hash chain and checks the checkpoints (signatures, their
    /// chain, this instance's checkpoint file, and the newest one's accumulator against the
    /// events). Reads the whole event store: seconds for a million events. `history` on every
    /// datasheet.
    async fn verify_integrity(&self, ctx: &Context<'_>) -> async_graphql::Result<IntegrityReport> {
        let tenant = &principal(ctx)?.tenant;
        Ok(services(ctx)?.verify_integrity(tenant).await?.into())
    }
}

#[derive(Default)]
pub struct AuditMutation;

#[Object]
impl AuditMutation {
    /// Signs a checkpoint now rather than at the next scheduled one (administrators); `null`
    /// when nothing was written since the last.
    async fn create_checkpoint(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<CheckpointNode>> {
        let tenant = &principal(ctx)?.tenant;
        Ok(services(ctx)?
            .create_checkpoint(tenant)
            .await?
            .map(CheckpointNode::from))
    }
}
