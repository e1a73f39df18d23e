//! Verification: every chain recomputed, and the checkpoints' signatures, their chain, the
//! file's against the database's, and the newest one's accumulator against the events it
//! covers.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::Digest;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::chain::{check_stream, BrokenLink, StoredRow};
use super::checkpoint::{checkpoints, Checkpoint, Heads};

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub streams: i64,
    pub events: i64,
    /// The first broken link of each broken stream.
    pub broken: Vec<BrokenLink>,
    pub checkpoints: i64,
    /// The checkpoint whose accumulator was recomputed, if any.
    pub checked_checkpoint: Option<i64>,
    /// What is wrong with the checkpoints, in words.
    pub checkpoint_problems: Vec<String>,
    /// Checkpoints in the database that the file does not have (made by another instance, or
    /// the service stopped between storing and appending): not a failure.
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.broken.is_empty() && self.checkpoint_problems.is_empty()
    }
}

/// Verifies every chain of the tenant database `conn` reaches, and its checkpoints: their
/// signatures (with `expected_key`, when given, as the only acceptable key), their chain, the
/// file's against the database's, and the newest one's accumulator against the events.
pub async fn verify(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    file: Option<&[Checkpoint]>,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let stored = checkpoints(conn, tenant_id).await?;
    report.checkpoints = stored.len() as i64;
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
    report.checked_checkpoint = newest.map(|c| c.number);

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
            finish(&mut stream, &mut report, &mut heads);
        }
        stream.push(event);
    }
    finish(&mut stream, &mut report, &mut heads);
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
    Ok(report)
}
