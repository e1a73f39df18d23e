//! Verification: every chain recomputed; the whole Merkle log recomputed from the events, with
//! every signed tree head (the database's and the witness file's) checked against it; and the
//! checkpoints signed before the Merkle log existed (their signatures, their chain, the file's
//! against the database's, and the newest one's accumulator against the events it covers).
//!
//! The events are read once, in position order (no sort in the database): each is checked
//! against the last event read of its stream (a 16-byte key and 40 bytes per stream), and a
//! stream where anything is amiss is read again in sequence order to name its first broken
//! link. Each event's place in the log (its commit order and leaf hash, 56 bytes) is kept,
//! sorted in memory into commit order and the tree built from it, compared leaf by leaf with
//! the stored leaves read in index order.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::Digest;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::chain::{check_stream, part, BrokenLink, Hashed, StoredRow};
use super::checkpoint::{checkpoints, Checkpoint, Heads};
use super::merkle::{leaf_hash, Frontier, Hash};
use super::tree::{stored_heads, StoredHead};
use super::tree_head::{key_id, TreeHead, Witness};

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
    // One snapshot for everything, so a checkpoint signed meanwhile (by a running service) is
    // either wholly seen or not at all.
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let report = verify_in(&mut tx, tenant_id, expected_key, witness).await?;
    tx.rollback().await?;
    Ok(report)
}

/// [`verify`] inside the transaction `tx` is in (an import checks what it wrote before it
/// commits).
pub(crate) async fn verify_in(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    witness: Option<&Witness>,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let legacy = legacy_checkpoints(
        &mut *tx,
        tenant_id,
        expected_key,
        witness.map(|w| w.checkpoints.as_slice()),
        &mut report,
    )
    .await?;
    let logged = chains(&mut *tx, legacy.as_ref(), &mut report).await?;
    merkle_log(
        &mut *tx,
        tenant_id,
        expected_key,
        witness.map(|w| w.tree_heads.as_slice()),
        logged,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Which events the newest checkpoint from before the Merkle log covers: those its snapshot
/// shows, or, in an organisation imported from another server (whose transactions the
/// snapshot names), each stream's last covered event by position, kept by the import.
pub(crate) async fn legacy_coverage(
    conn: &mut PgConnection,
    legacy: Option<&Checkpoint>,
) -> sqlx::Result<(Option<String>, Vec<i64>)> {
    let Some(legacy) = legacy else {
        return Ok((None, Vec::new()));
    };
    let imported: Option<Vec<i64>> = sqlx::query_scalar("SELECT legacy_heads FROM imports LIMIT 1")
        .fetch_optional(conn)
        .await?;
    Ok(match imported {
        Some(heads) => (None, heads),
        None => (Some(legacy.snapshot.clone()), Vec::new()),
    })
}

/// The SQL that says whether an event is covered by the legacy checkpoint, given
/// [`legacy_coverage`] as `$1` and `$2`.
pub(crate) const LEGACY_COVERED: &str =
    "(coalesce(pg_visible_in_snapshot(transaction_id, $1::text::pg_snapshot), false)
     OR global_position = ANY($2::bigint[]))";

/// An event's place in the Merkle log, kept from the chain pass for the tree.
struct Logged {
    transaction_id: i64,
    global_position: i64,
    leaf: Hash,
    /// The first event of its stream.
    first: bool,
}

/// The checkpoints signed before the Merkle log: their signatures and links, the file's against
/// the database's; the newest, whose accumulator [`chains`] checks.
async fn legacy_checkpoints(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    file: Option<&[Checkpoint]>,
    report: &mut Report,
) -> anyhow::Result<Option<Checkpoint>> {
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
    Ok(newest.cloned())
}

/// What the chain pass keeps of one stream while it reads events in position order.
#[derive(Default)]
struct StreamState {
    /// The last event read: its sequence and hash.
    last: Option<(i64, [u8; 32])>,
    /// The last event the legacy checkpoint covered.
    covered: Option<(i64, [u8; 32])>,
    /// Not as written somewhere: checked again in sequence order at the end.
    suspect: bool,
    /// Type and id, kept when the legacy accumulator needs them.
    name: Option<Box<(String, String)>>,
}

/// A stream's key in the chain pass: 16 bytes of SHA-256 over its type and id.
fn stream_key(aggregate_type: &str, aggregate_id: &str) -> [u8; 16] {
    let mut hasher = sha2::Sha256::new();
    part(&mut hasher, aggregate_type);
    part(&mut hasher, aggregate_id);
    let digest: [u8; 32] = hasher.finalize().into();
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// Every stream's chain, and the accumulator of `legacy`, the newest checkpoint from before
/// the Merkle log; each event's place in the log, in no particular order.
///
/// The events are read in position order (no sort: a stream's events are written in sequence
/// order, so they come in that order), each checked against the last one read of its stream.
/// A stream where anything is not as written is read again in sequence order and its first
/// broken link named by [`check_stream`].
async fn chains(
    conn: &mut PgConnection,
    legacy: Option<&Checkpoint>,
    report: &mut Report,
) -> anyhow::Result<Vec<Logged>> {
    let (snapshot, heads) = legacy_coverage(&mut *conn, legacy).await?;
    let query = format!(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload, metadata::text AS metadata, recorded_at, prev_hash, hash,
                transaction_id::text::bigint AS transaction_id, global_position,
                {LEGACY_COVERED} AS covered
         FROM events
         ORDER BY global_position"
    );
    let mut rows = sqlx::query(&query)
        .bind(&snapshot)
        .bind(&heads)
        .fetch(&mut *conn);
    let mut logged = Vec::new();
    let mut streams: HashMap<[u8; 16], StreamState> = HashMap::new();
    let mut suspects: Vec<(String, String)> = Vec::new();
    let mut covered_events = 0i64;
    while let Some(row) = rows.try_next().await? {
        // By position, not name: this loop runs once per event of the store.
        let aggregate_type: &str = row.try_get(0)?;
        let aggregate_id: &str = row.try_get(1)?;
        let sequence: i64 = row.try_get(2)?;
        let prev_hash: Option<&[u8]> = row.try_get(8)?;
        let stored_hash: &[u8] = row.try_get(9)?;
        let covered: bool = row.try_get(12)?;
        let hash: Option<[u8; 32]> = stored_hash.try_into().ok();
        let state = streams
            .entry(stream_key(aggregate_type, aggregate_id))
            .or_default();
        if legacy.is_some() && state.name.is_none() {
            state.name = Some(Box::new((
                aggregate_type.to_owned(),
                aggregate_id.to_owned(),
            )));
        }
        if !state.suspect {
            let (last_sequence, last_hash) = match &state.last {
                Some((s, h)) => (*s, Some(h.as_slice())),
                None => (0, None),
            };
            let fields = Hashed {
                aggregate_type,
                aggregate_id,
                event_type: row.try_get(3)?,
                event_version: row.try_get(4)?,
                payload: row.try_get(5)?,
                metadata: row.try_get(6)?,
                recorded_at: row.try_get(7)?,
            };
            let intact = sequence == last_sequence + 1
                && prev_hash == last_hash
                && hash.is_some_and(|hash| fields.hash_at(prev_hash, sequence) == hash);
            if !intact {
                state.suspect = true;
                suspects.push((aggregate_type.to_owned(), aggregate_id.to_owned()));
            }
        }
        let hash = hash.unwrap_or_default();
        state.last = Some((sequence, hash));
        if covered {
            state.covered = Some((sequence, hash));
            covered_events += 1;
        }
        report.events += 1;
        logged.push(Logged {
            transaction_id: row.try_get(10)?,
            global_position: row.try_get(11)?,
            leaf: leaf_hash(stored_hash),
            first: sequence == 1,
        });
    }
    drop(rows);
    report.streams = streams.len() as i64;
    // The suspect streams, read again in sequence order, in the order of their names.
    suspects.sort();
    for (aggregate_type, aggregate_id) in suspects {
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload::text AS payload, metadata::text AS metadata, recorded_at, prev_hash,
                    hash
             FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(&aggregate_type)
        .bind(&aggregate_id)
        .fetch_all(&mut *conn)
        .await?;
        let stream = rows
            .iter()
            .map(|row| {
                Ok(StoredRow {
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
                    in_checkpoint: false,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        if let Some(link) = check_stream(&stream) {
            report.broken.push(link);
        }
    }
    if let Some(checkpoint) = legacy {
        // The accumulator over the covered heads, fed in byte order of (type, id).
        let mut covered: Vec<(&(String, String), i64, [u8; 32])> = streams
            .values()
            .filter_map(|s| {
                let (sequence, hash) = s.covered?;
                Some((s.name.as_deref()?, sequence, hash))
            })
            .collect();
        covered.sort_by(|a, b| a.0.cmp(b.0));
        let mut heads = Heads::default();
        for ((aggregate_type, aggregate_id), sequence, hash) in covered {
            heads.add(aggregate_type, aggregate_id, sequence, &hash);
        }
        let streams = heads.streams;
        let root: [u8; 32] = heads.hasher.finalize().into();
        if root.as_slice() != checkpoint.root.as_slice() {
            report.checkpoint_problems.push(format!(
                "checkpoint {}: the events it covers were changed, removed or added since (it covered {} events in {} streams; {} events in {} streams are there now)",
                checkpoint.number, checkpoint.events, checkpoint.streams, covered_events, streams
            ));
        }
    }
    Ok(logged)
}

/// The whole Merkle log recomputed from the events (`logged`, put in commit order here),
/// compared leaf by leaf with the stored log, and checked against every signed head: the
/// database's (with its stored frontier) and the witness file's.
async fn merkle_log(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    expected_key: Option<VerifyingKey>,
    file: Option<&[TreeHead]>,
    mut logged: Vec<Logged>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stored = stored_heads(conn, tenant_id).await?;
    report.checkpoints = stored.len() as i64;
    let problems = &mut report.checkpoint_problems;
    // Each head is signed by the key in force at it: `expected_key` (or the first head's key)
    // until a hand-over, signed by the key in force, names the next.
    let mut in_force: Option<Vec<u8>> = expected_key.map(|k| k.to_bytes().to_vec());
    let mut known_keys: Vec<Vec<u8>> = in_force.iter().cloned().collect();
    let mut handovers = 0;
    let mut previous: Option<&TreeHead> = None;
    for StoredHead { head, .. } in &stored {
        let number = head.number;
        if head.tenant_id != tenant_id {
            problems.push(format!(
                "database tree head {number} belongs to another organisation"
            ));
        }
        let key = in_force.get_or_insert_with(|| head.public_key.clone());
        if head.public_key != *key || !head.signature_holds() {
            problems.push(format!(
                "database tree head {number}: the signature does not verify with the organisation's key in force (key {})",
                key_id(key)
            ));
        }
        if let Some(next) = &head.next_public_key {
            if head.next_key().is_none() {
                problems.push(format!(
                    "database tree head {number} hands over to something that is not an Ed25519 key"
                ));
            }
            *key = next.clone();
            known_keys.push(next.clone());
            handovers += 1;
        }
        if let Some(previous) = previous {
            let grows = head.tree_size > previous.tree_size
                || (head.tree_size == previous.tree_size && head.next_public_key.is_some());
            if head.number != previous.number + 1 || !grows {
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
    if handovers > 0 {
        report.notes.push(format!(
            "{handovers} key hand-over(s) followed; the key in force is {}",
            in_force.as_deref().map(key_id).unwrap_or_default()
        ));
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
            let number = head.number;
            if head.tenant_id != tenant_id {
                problems.push(format!(
                    "witness file tree head {number} belongs to another organisation"
                ));
            }
            // Signed by a key of the organisation's: the first, or one a hand-over named.
            let known = expected_key.is_none() || known_keys.contains(&head.public_key);
            if !known || !head.signature_holds() {
                problems.push(format!(
                    "witness file tree head {number}: the signature does not verify with the organisation's key"
                ));
            } else if let Some(next) = &head.next_public_key {
                known_keys.push(next.clone());
            }
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

    // The events in commit order, each against the stored leaf at its index: the first that
    // differs is named.
    logged.sort_unstable_by_key(|l| (l.transaction_id, l.global_position));
    let mut stored_leaves = sqlx::query_as::<_, (i64, i64, Vec<u8>)>(
        "SELECT leaf_index, global_position, hash FROM merkle_leaves ORDER BY leaf_index",
    )
    .fetch(&mut *conn);
    let mut frontier = Frontier::default();
    let mut streams = 0i64;
    let mut first_altered: Option<(u64, i64, Altered)> = None;
    let mut next = targets.iter().peekable();
    let mut head_problems = Vec::new();
    let mut leaves = 0u64;
    let mut leaves_left = true;
    for event in &logged {
        let index = frontier.size();
        let stored = if leaves_left {
            stored_leaves.try_next().await?
        } else {
            None
        };
        leaves_left = stored.is_some();
        if let Some((leaf_index, position, hash)) = stored {
            leaves += 1;
            let altered = if leaf_index as u64 != index {
                Some(if position == event.global_position {
                    Altered::LoggedAs(leaf_index)
                } else {
                    Altered::Missing
                })
            } else if position != event.global_position {
                Some(Altered::Moved(position))
            } else if hash != event.leaf {
                Some(Altered::Changed)
            } else {
                None
            };
            if let (None, Some(altered)) = (&first_altered, altered) {
                first_altered = Some((index, event.global_position, altered));
            }
        }
        if event.first {
            streams += 1;
        }
        frontier.push(event.leaf, |_, _| {});
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
    // Leaves for which no event is left.
    if leaves_left {
        while stored_leaves.try_next().await?.is_some() {
            leaves += 1;
        }
    }
    drop(stored_leaves);
    let first_altered = match first_altered {
        Some((index, position, altered)) => {
            let event = name_event(conn, position).await?;
            Some(match altered {
                Altered::Changed => format!("leaf {index} of the log: {event} is not as it was logged"),
                Altered::Moved(logged_position) => format!(
                    "leaf {index} of the log: {event} was not logged there (the event at position {logged_position} was): events before it were removed, added or moved"
                ),
                Altered::Missing => format!(
                    "leaf {index} of the log, where {event} is, was removed from the log"
                ),
                Altered::LoggedAs(logged_index) => format!(
                    "leaf {index} of the log: {event} was logged as leaf {logged_index}: events before it were removed, and their leaves with them"
                ),
            })
        }
        None if leaves > logged.len() as u64 => Some(format!(
            "the log holds {leaves} leaves for {} events: logged events were removed",
            logged.len()
        )),
        None => None,
    };
    problems.extend(first_altered);
    problems.extend(head_problems);
    Ok(())
}

/// How the stored log differs from the events at a leaf.
enum Altered {
    /// The event's leaf hash is not the stored one: it was changed since it was logged.
    Changed,
    /// Another event (at this position) was logged here.
    Moved(i64),
    /// The stored log has no leaf at this index.
    Missing,
    /// The event was logged at a later index: the events and leaves before it were removed.
    LoggedAs(i64),
}

/// "type/id sequence n (position p)" of the event at `position`.
async fn name_event(conn: &mut PgConnection, position: i64) -> sqlx::Result<String> {
    let (aggregate_type, aggregate_id, sequence): (String, String, i64) = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence FROM events WHERE global_position = $1",
    )
    .bind(position)
    .fetch_one(conn)
    .await?;
    Ok(format!(
        "{aggregate_type}/{aggregate_id} sequence {sequence} (position {position})"
    ))
}
