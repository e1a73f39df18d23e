//! The Merkle log in the tenant database (migration 0019): extending it and signing a tree head
//! (a checkpoint), listing the signed heads, and reading what proofs are made of.
//!
//! A checkpoint extends the tree from the frontier stored with the last signed head, reading
//! only the events written since; before it signs, it checks that the stored frontier still
//! gives the last signed root, that the leaves end where that head says, and that the witness
//! file holds nothing newer — otherwise it signs nothing and raises an [`Alarm`].

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::audit_keys::{AuditKeys, InForce};
use super::merkle::{leaf_hash, Frontier, Hash, Node, ProofOf, STRIDE};
use super::tree_head::{append_witness, head_from_row, last_tree_head, TreeHead, HEAD_COLUMNS};
use crate::infra::event_store::log::HORIZON;

/// Advisory lock (transaction-scoped, in the tenant database) while a checkpoint is made.
const CHECKPOINT_LOCK: i64 = 0x6375_7374_6f73_0006;

/// Events read and added per round trip while extending the tree.
const BATCH: i64 = 10_000;

/// Held while a witness file is brought up to date: the schedule, `createCheckpoint` and
/// `eventProof` may all finish a checkpoint at once in one process.
static WITNESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why a checkpoint refused to sign: what it found does not agree with what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alarm(pub String);

/// What a checkpoint did.
#[derive(Debug)]
pub(crate) enum Checkpointed {
    /// Nothing was written since the last tree head, or another instance is signing one.
    Nothing,
    Signed(TreeHead),
    /// Signed nothing: the stored log does not agree with the last signed head.
    Refused(Alarm),
}

/// The newest `limit` tree heads, oldest first.
pub(crate) async fn latest_tree_heads(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<TreeHead>> {
    let rows = sqlx::query(&format!(
        "SELECT * FROM (SELECT {HEAD_COLUMNS} FROM tree_heads ORDER BY number DESC LIMIT $1) AS newest
         ORDER BY number"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| head_from_row(tenant_id, r)).collect()
}

/// A tree head with its stored frontier (all of them: `custos verify` checks each).
pub(crate) struct StoredHead {
    pub head: TreeHead,
    pub frontier: Vec<u8>,
}

/// Every tree head in the database with its stored frontier, oldest first.
pub(crate) async fn stored_heads(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> sqlx::Result<Vec<StoredHead>> {
    let rows = sqlx::query(&format!(
        "SELECT {HEAD_COLUMNS}, frontier FROM tree_heads ORDER BY number"
    ))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredHead {
                head: head_from_row(tenant_id, r)?,
                frontier: r.try_get("frontier")?,
            })
        })
        .collect()
}

/// The newest tree head of exactly `tree_size` leaves (a hand-over may repeat the size of the
/// head before it), if one was signed.
pub(crate) async fn tree_head_of_size(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    tree_size: i64,
) -> sqlx::Result<Option<TreeHead>> {
    let row = sqlx::query(&format!(
        "SELECT {HEAD_COLUMNS} FROM tree_heads WHERE tree_size = $1 ORDER BY number DESC LIMIT 1"
    ))
    .bind(tree_size)
    .fetch_optional(conn)
    .await?;
    row.map(|r| head_from_row(tenant_id, &r)).transpose()
}

/// The newest tree head.
pub(crate) async fn newest_tree_head(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> sqlx::Result<Option<TreeHead>> {
    Ok(latest_tree_heads(conn, tenant_id, 1).await?.pop())
}

/// Extends the tree with every event committed since the last tree head and signs a new one
/// with the key in force; stored, then appended to the witness file `file` (with any head the
/// file lacks). With `rotate`, the head is a hand-over to a new key (even with nothing new to
/// log), which signs every later head.
pub(crate) async fn checkpoint(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    keys: &AuditKeys,
    file: &Path,
    rotate: bool,
) -> anyhow::Result<Checkpointed> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(CHECKPOINT_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !taken {
        return Ok(Checkpointed::Nothing);
    }
    // The key in force, as the signed hand-overs say: without its private half nothing can
    // be signed, and that is an alarm, not an error.
    let in_force = match keys.in_force(&mut tx).await? {
        Ok(in_force) => in_force,
        Err(reason) => return Ok(Checkpointed::Refused(Alarm(reason))),
    };
    let (generation, key) = (in_force.generation, &in_force.key);
    let last = sqlx::query(&format!(
        "SELECT {HEAD_COLUMNS}, frontier, last_transaction_id::text::bigint AS last_transaction_id,
                last_global_position
         FROM tree_heads ORDER BY number DESC LIMIT 1"
    ))
    .fetch_optional(&mut *tx)
    .await?;
    let witnessed = last_tree_head(file)?;
    let (mut frontier, mut after, number, mut streams) = match &last {
        Some(row) => {
            let head = head_from_row(tenant_id, row)?;
            let frontier: Vec<u8> = row.try_get("frontier")?;
            let after = (
                row.try_get::<i64, _>("last_transaction_id")?,
                row.try_get::<i64, _>("last_global_position")?,
            );
            let checked = check_last(
                &mut tx,
                &head,
                &frontier,
                after,
                &in_force,
                witnessed.as_ref(),
            )
            .await?;
            if let Some(alarm) = checked {
                return Ok(Checkpointed::Refused(alarm));
            }
            (
                Frontier::decode(head.tree_size as u64, &frontier).expect("checked"),
                after,
                head.number + 1,
                head.streams,
            )
        }
        None => {
            if let Some(witnessed) = witnessed {
                return Ok(Checkpointed::Refused(Alarm(format!(
                    "the witness file holds tree head {} but the database has none",
                    witnessed.number
                ))));
            }
            let leaves: i64 = sqlx::query_scalar("SELECT count(*) FROM merkle_leaves")
                .fetch_one(&mut *tx)
                .await?;
            if leaves > 0 {
                return Ok(Checkpointed::Refused(Alarm(format!(
                    "the log holds {leaves} leaves but no tree head signed them"
                ))));
            }
            (Frontier::default(), (0, 0), 1, 0)
        }
    };
    // Every transaction below the horizon has ended: no event can later appear before it.
    let horizon: i64 = sqlx::query_scalar(&format!("SELECT {HORIZON}"))
        .fetch_one(&mut *tx)
        .await?;
    let first_new = frontier.size();
    loop {
        let rows = sqlx::query(
            "SELECT transaction_id::text::bigint AS transaction_id, global_position, sequence, hash
             FROM events
             WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
               AND transaction_id < $3::text::xid8
             ORDER BY transaction_id, global_position
             LIMIT $4",
        )
        .bind(after.0.to_string())
        .bind(after.1)
        .bind(horizon.to_string())
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let mut batch = LogBatch::default();
        for row in &rows {
            let position: i64 = row.try_get("global_position")?;
            if row.try_get::<i64, _>("sequence")? == 1 {
                streams += 1;
            }
            batch.push(&mut frontier, position, row.try_get::<&[u8], _>("hash")?);
            after = (row.try_get("transaction_id")?, position);
        }
        batch.write(&mut tx).await?;
        if (rows.len() as i64) < BATCH {
            break;
        }
    }
    let handover = rotate.then(|| keys.create(generation + 1));
    if (frontier.size() == first_new && handover.is_none()) || frontier.size() == 0 {
        // Nothing new (or, for a hand-over, nothing logged at all); the witness file may still
        // lack heads (a crash after a commit).
        tx.rollback().await?;
        catch_up_witness(conn, tenant_id, file).await?;
        return Ok(Checkpointed::Nothing);
    }
    let next = handover.as_ref().map(|(key, _)| key.verifying_key());
    let created_at: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('milliseconds', now())")
        .fetch_one(&mut *tx)
        .await?;
    let head = TreeHead::sign(
        key,
        tenant_id,
        number,
        frontier.size() as i64,
        streams,
        created_at,
        &frontier.root(),
        next.as_ref(),
    );
    insert_head(&mut tx, &head, &frontier.encode(), after).await?;
    if let Some((new_key, sealed)) = &handover {
        sqlx::query(
            "INSERT INTO audit_keys (generation, public_key, sealed_secret) VALUES ($1, $2, $3)",
        )
        .bind(generation + 1)
        .bind(new_key.verifying_key().to_bytes().as_slice())
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    catch_up_witness(conn, tenant_id, file).await?;
    Ok(Checkpointed::Signed(head))
}

/// Stores a signed tree head with its frontier and the (transaction, position) of its last
/// event, where the next checkpoint starts.
pub(crate) async fn insert_head(
    conn: &mut PgConnection,
    head: &TreeHead,
    frontier: &[u8],
    last: (i64, i64),
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tree_heads (number, tree_size, streams, created_at, root, key_id, public_key,
                                 signature, frontier, last_transaction_id, last_global_position,
                                 next_public_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::xid8, $11, $12)",
    )
    .bind(head.number)
    .bind(head.tree_size)
    .bind(head.streams)
    .bind(head.created_at)
    .bind(&head.root)
    .bind(&head.key_id)
    .bind(&head.public_key)
    .bind(&head.signature)
    .bind(frontier)
    .bind(last.0.to_string())
    .bind(last.1)
    .bind(&head.next_public_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Leaves added to the log, with the stored nodes they complete, waiting to be written.
#[derive(Default)]
pub(crate) struct LogBatch {
    leaf_indexes: Vec<i64>,
    positions: Vec<i64>,
    leaves: Vec<Vec<u8>>,
    levels: Vec<i16>,
    indexes: Vec<i64>,
    nodes: Vec<Vec<u8>>,
}

impl LogBatch {
    /// Adds the event at `position` with hash `event_hash` as the next leaf of `frontier`.
    pub(crate) fn push(&mut self, frontier: &mut Frontier, position: i64, event_hash: &[u8]) {
        let leaf = leaf_hash(event_hash);
        self.leaf_indexes.push(frontier.size() as i64);
        self.positions.push(position);
        self.leaves.push(leaf.to_vec());
        let (levels, indexes, nodes) = (&mut self.levels, &mut self.indexes, &mut self.nodes);
        frontier.push(leaf, |node, hash| {
            if node.level.is_multiple_of(STRIDE) {
                levels.push(node.level as i16);
                indexes.push(node.index as i64);
                nodes.push(hash.to_vec());
            }
        });
    }

    /// Writes the leaves and nodes and empties the batch.
    pub(crate) async fn write(&mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if !self.leaves.is_empty() {
            sqlx::query(
                "INSERT INTO merkle_leaves (leaf_index, global_position, hash)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            )
            .bind(&self.leaf_indexes)
            .bind(&self.positions)
            .bind(&self.leaves)
            .execute(&mut *conn)
            .await?;
        }
        if !self.nodes.is_empty() {
            sqlx::query(
                "INSERT INTO merkle_nodes (level, index, hash)
                 SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
            )
            .bind(&self.levels)
            .bind(&self.indexes)
            .bind(&self.nodes)
            .execute(&mut *conn)
            .await?;
        }
        *self = Self::default();
        Ok(())
    }
}

/// A hand-over to a new key ([`checkpoint`] with `rotate`), retried for up to ten seconds
/// while another checkpoint holds the lock; `Nothing` only if it still could not sign.
pub(crate) async fn hand_over(
    pool: &sqlx::PgPool,
    tenant_id: Uuid,
    keys: &AuditKeys,
    file: &Path,
) -> anyhow::Result<Checkpointed> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut conn = pool.acquire().await?;
        let outcome = checkpoint(&mut conn, tenant_id, keys, file, true).await?;
        drop(conn);
        match outcome {
            Checkpointed::Nothing if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            outcome => return Ok(outcome),
        }
    }
}

/// Whether the last signed head still holds: signed by the key in force (or the very
/// hand-over, validly signed, that made it the key in force), its stored frontier giving its root, the leaves ending where
/// it says (at the event it names as its last), and the witness file holding nothing newer.
async fn check_last(
    tx: &mut PgConnection,
    head: &TreeHead,
    frontier: &[u8],
    after: (i64, i64),
    signer: &InForce,
    witnessed: Option<&TreeHead>,
) -> anyhow::Result<Option<Alarm>> {
    let number = head.number;
    let signed = match &head.next_public_key {
        None => head.signed_by(&signer.key.verifying_key()),
        Some(_) => signer.handed_over_at == Some(number),
    };
    if !signed {
        return Ok(Some(Alarm(format!(
            "tree head {number} in the database is not signed by this organisation's key in force (generation {})",
            signer.generation
        ))));
    }
    match Frontier::decode(head.tree_size as u64, frontier) {
        Some(frontier) if frontier.root().as_slice() == head.root.as_slice() => {}
        _ => {
            return Ok(Some(Alarm(format!(
                "the stored frontier of tree head {number} does not give its signed root"
            ))))
        }
    }
    let leaves: i64 =
        sqlx::query_scalar("SELECT coalesce(max(leaf_index) + 1, 0) FROM merkle_leaves")
            .fetch_one(&mut *tx)
            .await?;
    if leaves != head.tree_size {
        return Ok(Some(Alarm(format!(
            "the log holds {leaves} leaves; tree head {number} signed {}",
            head.tree_size
        ))));
    }
    // The next checkpoint starts after the last leaf's event: it must be that event.
    let last_leaf: Option<(i64, i64)> = sqlx::query_as(
        "SELECT e.transaction_id::text::bigint, e.global_position
         FROM merkle_leaves l JOIN events e ON e.global_position = l.global_position
         WHERE l.leaf_index = $1",
    )
    .bind(head.tree_size - 1)
    .fetch_optional(&mut *tx)
    .await?;
    if last_leaf != Some(after) {
        return Ok(Some(Alarm(format!(
            "tree head {number} says its last event is at position {}; its last leaf is not that event",
            after.1
        ))));
    }
    if let Some(witnessed) = witnessed {
        if witnessed.number > number {
            return Ok(Some(Alarm(format!(
                "the witness file holds tree head {}; the database's newest is {number}",
                witnessed.number
            ))));
        }
        if witnessed.number == number && witnessed != head {
            return Ok(Some(Alarm(format!(
                "tree head {number} in the database differs from the witness file's"
            ))));
        }
    }
    Ok(None)
}

/// Appends to the witness file the heads the database has after its newest (one just signed,
/// or one whose append a crash prevented), each checked to be signed as it claims.
async fn catch_up_witness(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    file: &Path,
) -> anyhow::Result<()> {
    let _appending = WITNESS.lock().await;
    let since = last_tree_head(file)?.map_or(0, |h| h.number);
    let rows = sqlx::query(&format!(
        "SELECT {HEAD_COLUMNS} FROM tree_heads WHERE number > $1 ORDER BY number"
    ))
    .bind(since)
    .fetch_all(conn)
    .await?;
    let heads = rows
        .iter()
        .map(|r| head_from_row(tenant_id, r))
        .collect::<sqlx::Result<Vec<_>>>()?;
    let good: Vec<TreeHead> = heads
        .into_iter()
        .take_while(TreeHead::signature_holds)
        .collect();
    append_witness(file, &good)
}

/// The leaf of the event at `global_position`, if it is in the tree yet.
pub(crate) async fn leaf_of_event(
    conn: &mut PgConnection,
    global_position: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT leaf_index FROM merkle_leaves WHERE global_position = $1")
        .bind(global_position)
        .fetch_optional(conn)
        .await
}

/// A proof's hashes, from the stored leaves and nodes (one round trip); `None` when the
/// stored log lacks something the proof needs.
pub(crate) async fn proof(conn: &mut PgConnection, of: ProofOf) -> sqlx::Result<Option<Vec<Hash>>> {
    let (needed, fetch) = of.needs();
    let leaves: Vec<i64> = fetch.leaves.iter().map(|&i| i as i64).collect();
    let levels: Vec<i16> = fetch.nodes.iter().map(|n| n.level as i16).collect();
    let indexes: Vec<i64> = fetch.nodes.iter().map(|n| n.index as i64).collect();
    let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT 0::smallint, leaf_index, hash FROM merkle_leaves WHERE leaf_index = ANY($1)
         UNION ALL
         SELECT n.level, n.index, n.hash
         FROM unnest($2::smallint[], $3::bigint[]) AS wanted (level, index)
         JOIN merkle_nodes n USING (level, index)",
    )
    .bind(&leaves)
    .bind(&levels)
    .bind(&indexes)
    .fetch_all(&mut *conn)
    .await?;
    let fetched: HashMap<Node, Hash> = rows
        .into_iter()
        .filter_map(|(level, index, hash)| {
            let hash = <Hash>::try_from(hash.as_slice()).ok()?;
            let node = Node {
                level: level as u32,
                index: index as u64,
            };
            Some((node, hash))
        })
        .collect();
    Ok(of.build(&needed, &fetched))
}
