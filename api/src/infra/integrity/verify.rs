//! Verification: every chain recomputed; the whole Merkle log recomputed from the events, with
//! every signed tree head (the database's and the witness file's) checked against it; and the
//! checkpoints signed before the Merkle log existed (their signatures, their chain, the file's
//! against the database's, and the newest one's accumulator against the events it covers).

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::Digest;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::chain::{check_stream, BrokenLink, StoredRow};
use super::checkpoint::{checkpoints, Checkpoint, Heads};
use super::merkle::{leaf_hash, Frontier};
use super::tree::{stored_heads, StoredHead};
use super::tree_head::{TreeHead, Witness};

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub streams: i64,
    pub events: i64,
    /// The first broken link of each broken stream.
    pub broken: Vec<BrokenLink>,
    /// Signed tree heads in the database.
    pub checkpoints: i64,
    /// The newest tree head checked against the recomputed tree, if any.
    pub checked_checkpoint: Option<i64>,
    /// What is wrong with the Merkle log and the signed heads, in words: the first event that
    /// differs from when it was logged, each head that disagrees.
    pub checkpoint_problems: Vec<String>,
    /// Heads in the database that the witness file does not have (signed by another instance,
    /// or the service stopped between storing and appending), and the checkpoints from before
    /// the Merkle log: not failures.
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.broken.is_empty() && self.checkpoint_problems.is_empty()
    }
}

/// Verifies every chain of the tenant database `conn` reaches and its Merkle log against every
/// signed tree head (the database's and, when given, the witness file's), with
/// `expected_key`, when given, as the only acceptable signing key; and the checkpoints from
/// before the Merkle log.
pub async fn verify(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    witness: Option<&Witness>,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // One snapshot for everything, so a checkpoint signed meanwhile (by a running service) is
    // either wholly seen or not at all.
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    legacy_and_chains(
        &mut tx,
        tenant_id,
        expected_key,
        witness.map(|w| w.checkpoints.as_slice()),
        &mut report,
    )
    .await?;
    merkle_log(
        &mut tx,
        tenant_id,
        expected_key,
        witness.map(|w| w.tree_heads.as_slice()),
        &mut report,
    )
    .await?;
    tx.rollback().await?;
    Ok(report)
}

/// Every stream's chain, and the checkpoints signed before the Merkle log.
async fn legacy_and_chains(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    file: Option<&[Checkpoint]>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stored = checkpoints(conn, tenant_id).await?;
    if !stored.is_empty() {
        report.notes.push(format!(
            "{} checkpoint(s) from before the Merkle log checked too",
            stored.len()
        ));
    }
    let by_number: HashMap<i64, &Checkpoint> = stored.iter().map(|c| (c.number, c)).collect();
    // `linked`: each must follow the one before it in `list` (the database's list is complete;
    // a file may lack checkpoints another instance made, so its links are checked through the
    // database's copies instead).
    let check_chain =
        |list: &[Checkpoint], source: &str, linked: bool, problems: &mut Vec<String>| {
            let mut previous: Vec<u8> = Vec::new();
            for checkpoint in list {
                if checkpoint.tenant_id != tenant_id {
                    problems.push(format!(
                        "{source} checkpoint {} belongs to another organisation",
                        checkpoint.number
                    ));
                }
                if !checkpoint.signature_holds() {
                    problems.push(format!(
                        "{source} checkpoint {}: the signature does not verify",
                        checkpoint.number
                    ));
                }
                if let Some(key) = expected_key {
                    if checkpoint.public_key != key.to_bytes() {
                        problems.push(format!(
                            "{source} checkpoint {}: signed with another key",
                            checkpoint.number
                        ));
                    }
                }
                if linked && checkpoint.previous != previous {
                    problems.push(format!(
                        "{source} checkpoint {}: does not follow the previous checkpoint",
                        checkpoint.number
                    ));
                }
                previous = checkpoint.signature.clone();
            }
        };
    check_chain(&stored, "database", true, &mut report.checkpoint_problems);
    let newest = match file {
        Some(file) => {
            check_chain(file, "file", false, &mut report.checkpoint_problems);
            for checkpoint in file {
                match by_number.get(&checkpoint.number) {
                    Some(row) if *row == checkpoint => {}
                    Some(_) => report.checkpoint_problems.push(format!(
                        "checkpoint {} in the database differs from the file",
                        checkpoint.number
                    )),
                    None => report.checkpoint_problems.push(format!(
                        "checkpoint {} of the file is missing from the database",
                        checkpoint.number
                    )),
                }
            }
            let in_file: std::collections::HashSet<i64> = file.iter().map(|c| c.number).collect();
            let missing = stored
                .iter()
                .filter(|c| !in_file.contains(&c.number))
                .count();
            if missing > 0 {
                report.notes.push(format!(
                    "{missing} checkpoint(s) of the database are not in the file"
                ));
            }
            file.last().or(stored.last())
        }
        None => stored.last(),
    };
    let snapshot = newest.map(|c| c.snapshot.clone());

    let mut rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload, metadata::text AS metadata, recorded_at, prev_hash, hash,
                coalesce(pg_visible_in_snapshot(transaction_id, $1::text::pg_snapshot), false) AS covered
         FROM events
         ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\", sequence",
    )
    .bind(&snapshot)
    .fetch(conn);
    let mut heads = Heads::default();
    let mut covered_events = 0i64;
    let mut stream: Vec<StoredRow> = Vec::new();
    let finish = |stream: &mut Vec<StoredRow>, report: &mut Report, heads: &mut Heads| {
        if stream.is_empty() {
            return;
        }
        report.streams += 1;
        report.events += stream.len() as i64;
        if let Some(link) = check_stream(stream) {
            report.broken.push(link);
        }
        if let Some(head) = stream.iter().rev().find(|r| r.in_checkpoint) {
            heads.add(
                &head.aggregate_type,
                &head.aggregate_id,
                head.sequence,
                &head.hash,
            );
        }
        stream.clear();
    };
    while let Some(row) = rows.try_next().await? {
        let event = StoredRow {
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            recorded_at: row.try_get("recorded_at")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
            in_checkpoint: row.try_get("covered")?,
        };
        if event.in_checkpoint {
            covered_events += 1;
        }
        let same = stream.last().is_some_and(|last| {
            last.aggregate_type == event.aggregate_type && last.aggregate_id == event.aggregate_id
        });
        if !same {
            finish(&mut stream, report, &mut heads);
        }
        stream.push(event);
    }
    finish(&mut stream, report, &mut heads);
    if let Some(checkpoint) = newest {
        let streams = heads.streams;
        let root: [u8; 32] = heads.hasher.finalize().into();
        if root.as_slice() != checkpoint.root.as_slice() {
            report.checkpoint_problems.push(format!(
                "checkpoint {}: the events it covers were changed, removed or added since (it covered {} events in {} streams; {} events in {} streams are there now)",
                checkpoint.number, checkpoint.events, checkpoint.streams, covered_events, streams
            ));
        }
    }
    Ok(())
}

/// The whole Merkle log recomputed from the events in commit order, and checked against every
/// signed head: the database's (with its stored frontier) and the witness file's.
async fn merkle_log(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    file: Option<&[TreeHead]>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stored = stored_heads(conn, tenant_id).await?;
    report.checkpoints = stored.len() as i64;
    let problems = &mut report.checkpoint_problems;
    let check_head = |head: &TreeHead, source: &str, problems: &mut Vec<String>| {
        let number = head.number;
        if head.tenant_id != tenant_id {
            problems.push(format!(
                "{source} tree head {number} belongs to another organisation"
            ));
        }
        let signed = match expected_key {
            Some(key) => head.signed_by(&key),
            None => head.signature_holds(),
        };
        if !signed {
            problems.push(format!(
                "{source} tree head {number}: the signature does not verify with the organisation's key"
            ));
        }
    };
    let mut previous: Option<&TreeHead> = None;
    for StoredHead { head, .. } in &stored {
        check_head(head, "database", problems);
        if let Some(previous) = previous {
            if head.number != previous.number + 1 || head.tree_size <= previous.tree_size {
                problems.push(format!(
                    "database tree head {} does not follow tree head {} (sizes {} then {})",
                    head.number, previous.number, previous.tree_size, head.tree_size
                ));
            }
        } else if head.number != 1 {
            problems.push(format!(
                "the database's tree heads start at {}, not 1",
                head.number
            ));
        }
        previous = Some(head);
    }
    // Every head to hold the tree to, by size: the database's, and any of the file's the
    // database has lost.
    let by_number: HashMap<i64, &TreeHead> =
        stored.iter().map(|s| (s.head.number, &s.head)).collect();
    let mut targets: Vec<(&TreeHead, Option<&[u8]>)> = stored
        .iter()
        .map(|s| (&s.head, Some(s.frontier.as_slice())))
        .collect();
    if let Some(file) = file {
        for head in file {
            check_head(head, "witness file", problems);
            match by_number.get(&head.number) {
                Some(row) if *row == head => {}
                Some(_) => problems.push(format!(
                    "tree head {} in the database differs from the witness file's",
                    head.number
                )),
                None => {
                    problems.push(format!(
                        "tree head {} of the witness file is missing from the database",
                        head.number
                    ));
                    targets.push((head, None));
                }
            }
        }
        let in_file: std::collections::HashSet<i64> = file.iter().map(|h| h.number).collect();
        let missing = stored
            .iter()
            .filter(|s| !in_file.contains(&s.head.number))
            .count();
        if missing > 0 {
            report.notes.push(format!(
                "{missing} tree head(s) of the database are not in the witness file yet"
            ));
        }
    }
    targets.sort_by_key(|(head, _)| (head.tree_size, head.number));
    report.checked_checkpoint = targets.iter().map(|(h, _)| h.number).max();

    // The leaves, in the order they were logged; the stored leaf of each, to name the first
    // event that is not as it was logged.
    let leaves: i64 = sqlx::query_scalar("SELECT count(*) FROM merkle_leaves")
        .fetch_one(&mut *conn)
        .await?;
    let mut rows = sqlx::query(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.global_position, e.hash,
                l.leaf_index, l.hash AS leaf
         FROM events e LEFT JOIN merkle_leaves l ON l.global_position = e.global_position
         ORDER BY e.transaction_id, e.global_position",
    )
    .fetch(&mut *conn);
    let mut frontier = Frontier::default();
    let mut streams = 0i64;
    let mut first_altered: Option<String> = None;
    let mut next = targets.iter().peekable();
    let mut head_problems = Vec::new();
    let mut logged = 0u64;
    while let Some(row) = rows.try_next().await? {
        let index = frontier.size();
        let leaf = leaf_hash(row.try_get::<&[u8], _>("hash")?);
        let stored_index: Option<i64> = row.try_get("leaf_index")?;
        let stored_leaf: Option<&[u8]> = row.try_get("leaf")?;
        if stored_index.is_some() {
            logged += 1;
        }
        let as_logged = match (stored_index, stored_leaf) {
            (Some(i), Some(hash)) => i as u64 == index && hash == leaf.as_slice(),
            // Not logged yet: only events after every logged one may be.
            _ => index >= leaves as u64,
        };
        if !as_logged && first_altered.is_none() {
            let event = format!(
                "{}/{} sequence {} (position {})",
                row.try_get::<&str, _>("aggregate_type")?,
                row.try_get::<&str, _>("aggregate_id")?,
                row.try_get::<i64, _>("sequence")?,
                row.try_get::<i64, _>("global_position")?,
            );
            first_altered = Some(match stored_index {
                Some(i) if i as u64 != index => format!(
                    "leaf {index} of the log: {event} was logged as leaf {i}: events before it were removed, added or moved"
                ),
                Some(_) => format!("leaf {index} of the log: {event} is not as it was logged"),
                None => format!("leaf {index} of the log: {event} was never logged there"),
            });
        }
        if row.try_get::<i64, _>("sequence")? == 1 {
            streams += 1;
        }
        frontier.push(leaf, |_, _| {});
        while let Some((head, stored_frontier)) =
            next.next_if(|(h, _)| h.tree_size as u64 == frontier.size())
        {
            if frontier.root().as_slice() != head.root.as_slice() {
                head_problems.push(format!(
                    "tree head {} (size {}): the events do not give its signed root — they were changed, removed, added or moved since it was signed",
                    head.number, head.tree_size
                ));
            } else if head.streams != streams {
                head_problems.push(format!(
                    "tree head {} (size {}): it signed {} streams; the events hold {streams}",
                    head.number, head.tree_size, head.streams
                ));
            }
            if let Some(stored_frontier) = stored_frontier {
                if *stored_frontier != frontier.encode().as_slice() {
                    head_problems.push(format!(
                        "tree head {}: its stored frontier was changed",
                        head.number
                    ));
                }
            }
        }
    }
    for (head, _) in next {
        head_problems.push(format!(
            "tree head {} signed {} events; the log holds only {} — events were removed",
            head.number,
            head.tree_size,
            frontier.size()
        ));
    }
    drop(rows);
    if leaves as u64 != logged && first_altered.is_none() {
        first_altered = Some(format!(
            "the log holds {leaves} leaves for {logged} of the events: logged events were removed"
        ));
    }
    problems.extend(first_altered);
    problems.extend(head_problems);
    Ok(())
}
