//! Tamper evidence. Every event carries a hash over the previous event of its stream and its
//! own stored bytes, computed by the database on insert (migration 0016). Signed checkpoints
//! commit to every stream's head as of a snapshot: an accumulator (SHA-256 over the heads in
//! byte order) signed with an Ed25519 key derived from the master key, stored in the
//! `checkpoints` table and appended to a file in the data directory, so rewriting history
//! inside the database — even recomputing every hash — does not match the file.
//!
//! [`verify`] recomputes every chain independently of the database's own functions and checks
//! the checkpoints' signatures, their chain, and the newest checkpoint's accumulator against
//! the events it covers.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::keys::MasterKey;

/// Advisory lock (transaction-scoped, in the tenant database) while a checkpoint is made.
const CHECKPOINT_LOCK: i64 = 0x6375_7374_6f73_0006;

/// One field of a hashed message: its length (4 bytes, big-endian), then its UTF-8 bytes.
fn part(hasher: &mut Sha256, value: &str) {
    hasher.update((value.len() as u32).to_be_bytes());
    hasher.update(value.as_bytes());
}

/// An event as stored, with what its hash covers.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The stored JSON text, byte for byte.
    pub payload: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Vec<u8>,
    /// Whether the event is covered by the checkpoint being checked.
    pub in_checkpoint: bool,
}

impl StoredRow {
    /// The hash this event would have at `sequence` after `previous` (the database's
    /// `custos_event_hash`, recomputed here).
    pub fn hash_at(&self, previous: Option<&[u8]>, sequence: i64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous.unwrap_or_default());
        part(&mut hasher, &self.aggregate_type);
        part(&mut hasher, &self.aggregate_id);
        part(&mut hasher, &sequence.to_string());
        part(&mut hasher, &self.event_type);
        part(&mut hasher, &self.event_version);
        part(&mut hasher, &self.payload);
        part(&mut hasher, &self.metadata);
        part(
            &mut hasher,
            &self.recorded_at.timestamp_micros().to_string(),
        );
        hasher.finalize().into()
    }
}

/// How a stream's chain is broken, as seen at its first broken link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Breach {
    /// The event's bytes no longer match its hash: changed after it was written.
    Edited,
    /// An event is missing here: removed, with or without renumbering the rest.
    Deleted,
    /// An event that was not part of the chain was put here.
    Inserted,
    /// The event was written at another place in its stream.
    Reordered,
}

/// The first broken link of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Where the chain breaks: the first sequence that is not as it was written.
    pub sequence: i64,
    pub breach: Breach,
}

/// The first broken link of one stream (its events in stored sequence order), if any.
pub fn check_stream(rows: &[StoredRow]) -> Option<BrokenLink> {
    let broken = |sequence, breach| {
        let first = rows.first()?;
        Some(BrokenLink {
            aggregate_type: first.aggregate_type.clone(),
            aggregate_id: first.aggregate_id.clone(),
            sequence,
            breach,
        })
    };
    let position: HashMap<&[u8], usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.hash.as_slice(), i))
        .collect();
    let mut previous: Option<&[u8]> = None;
    for (i, row) in rows.iter().enumerate() {
        let expected = i as i64 + 1;
        if row.sequence != expected {
            return broken(expected, Breach::Deleted);
        }
        let linked = row.prev_hash.as_deref() == previous;
        let intact = row.hash_at(row.prev_hash.as_deref(), row.sequence) == row.hash.as_slice();
        if linked && intact {
            previous = Some(&row.hash);
            continue;
        }
        // It links to an event further on: it was moved before that one.
        if let Some(&j) = row.prev_hash.as_deref().and_then(|p| position.get(p)) {
            if j > i {
                return broken(expected, Breach::Reordered);
            }
        }
        // The sequence it was hashed at, if its bytes are as written.
        let written_at = (1..=rows.len() as i64 + 1)
            .find(|s| row.hash_at(row.prev_hash.as_deref(), *s) == row.hash.as_slice());
        return match written_at {
            None => broken(expected, Breach::Edited),
            // Shifted up: something was put before it, from where it was.
            Some(s) if s < row.sequence => broken(s, Breach::Inserted),
            // Shifted down: something before it was removed.
            Some(s) if s > row.sequence => broken(expected, Breach::Deleted),
            // In place, but its predecessor is not the event it was chained to: that one was
            // rewritten (and re-hashed to look whole).
            Some(_) => broken(expected - 1, Breach::Edited),
        };
    }
    None
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub tenant_id: Uuid,
    pub number: i64,
    pub created_at: DateTime<Utc>,
    /// The PostgreSQL snapshot whose visible events it covers.
    pub snapshot: String,
    pub streams: i64,
    pub events: i64,
    #[serde(with = "hex::serde")]
    pub root: Vec<u8>,
    /// The previous checkpoint's signature (none for the first).
    #[serde(with = "hex::serde")]
    pub previous: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub public_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// What the signature covers.
    fn message(&self) -> Vec<u8> {
        format!(
            "custos-checkpoint/1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.tenant_id,
            self.number,
            self.created_at.timestamp_micros(),
            self.snapshot,
            self.streams,
            self.events,
            hex::encode(&self.root),
            hex::encode(&self.previous),
        )
        .into_bytes()
    }

    /// Whether the signature is good for the checkpoint's own public key.
    pub fn signature_holds(&self) -> bool {
        let (Ok(key), Ok(signature)) = (
            <[u8; 32]>::try_from(self.public_key.as_slice()),
            <[u8; 64]>::try_from(self.signature.as_slice()),
        ) else {
            return false;
        };
        VerifyingKey::from_bytes(&key).is_ok_and(|key| {
            key.verify(&self.message(), &Signature::from_bytes(&signature))
                .is_ok()
        })
    }
}

/// The tenant's checkpoint signing key; derived from the master key, never stored.
pub fn signing_key(master: &MasterKey, tenant_id: Uuid) -> SigningKey {
    SigningKey::from_bytes(&master.derive(&format!("custos/checkpoint-signing/{tenant_id}")))
}

/// Where a tenant's checkpoints are appended, under the data directory.
pub fn checkpoint_file(data_dir: &Path, tenant_id: Uuid) -> PathBuf {
    data_dir
        .join("checkpoints")
        .join(format!("{tenant_id}.jsonl"))
}

/// The checkpoints in a file, in order.
pub fn read_checkpoint_file(path: &Path) -> anyhow::Result<Vec<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn append(path: &Path, checkpoint: &Checkpoint) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = serde_json::to_vec(checkpoint)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()?;
    Ok(())
}

/// The accumulator over stream heads, fed in byte order of (type, id).
#[derive(Default)]
struct Heads {
    hasher: Sha256,
    streams: i64,
}

impl Heads {
    fn add(&mut self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: &[u8]) {
        part(&mut self.hasher, aggregate_type);
        part(&mut self.hasher, aggregate_id);
        part(&mut self.hasher, &sequence.to_string());
        self.hasher.update(hash);
        self.streams += 1;
    }
}

fn checkpoint_from_row(tenant_id: Uuid, row: &sqlx::postgres::PgRow) -> sqlx::Result<Checkpoint> {
    Ok(Checkpoint {
        tenant_id,
        number: row.try_get("number")?,
        created_at: row.try_get("created_at")?,
        snapshot: row.try_get("snapshot")?,
        streams: row.try_get("streams")?,
        events: row.try_get("events")?,
        root: row.try_get("root")?,
        previous: row
            .try_get::<Option<Vec<u8>>, _>("previous")?
            .unwrap_or_default(),
        public_key: row.try_get("public_key")?,
        signature: row.try_get("signature")?,
    })
}

/// Every checkpoint in the database, oldest first.
pub async fn checkpoints(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> sqlx::Result<Vec<Checkpoint>> {
    latest_checkpoints(conn, tenant_id, i64::MAX).await
}

/// The newest `limit` checkpoints, oldest first.
pub async fn latest_checkpoints(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Checkpoint>> {
    let rows = sqlx::query(
        "SELECT * FROM (
             SELECT number, created_at, snapshot, streams, events, root, previous, public_key, signature
             FROM checkpoints ORDER BY number DESC LIMIT $1
         ) AS newest ORDER BY number",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| checkpoint_from_row(tenant_id, r))
        .collect()
}

/// Makes a checkpoint of every stream's head now, unless nothing was written since the last
/// one or another instance is making one. Stored, then appended to `file`.
pub async fn create_checkpoint(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    key: &SigningKey,
    file: &Path,
) -> anyhow::Result<Option<Checkpoint>> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(CHECKPOINT_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !taken {
        return Ok(None);
    }
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await?;
    let mut heads = Heads::default();
    let mut events = 0i64;
    {
        let mut rows = sqlx::query(
            "SELECT DISTINCT ON (aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\")
                    aggregate_type, aggregate_id, sequence, hash
             FROM events
             ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\", sequence DESC",
        )
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let sequence: i64 = row.try_get("sequence")?;
            events += sequence;
            heads.add(
                row.try_get("aggregate_type")?,
                row.try_get("aggregate_id")?,
                sequence,
                row.try_get::<&[u8], _>("hash")?,
            );
        }
    }
    let root: [u8; 32] = heads.hasher.finalize().into();
    let last =
        sqlx::query("SELECT number, root, signature FROM checkpoints ORDER BY number DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (number, previous) = match &last {
        Some(row) => {
            let last_root: Vec<u8> = row.try_get("root")?;
            if last_root == root {
                return Ok(None);
            }
            (
                row.try_get::<i64, _>("number")? + 1,
                row.try_get("signature")?,
            )
        }
        None => (1, Vec::new()),
    };
    let created_at: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('milliseconds', now())")
        .fetch_one(&mut *tx)
        .await?;
    let mut checkpoint = Checkpoint {
        tenant_id,
        number,
        created_at,
        snapshot,
        streams: heads.streams,
        events,
        root: root.to_vec(),
        previous,
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: Vec::new(),
    };
    checkpoint.signature = key.sign(&checkpoint.message()).to_bytes().to_vec();
    sqlx::query(
        "INSERT INTO checkpoints (number, created_at, snapshot, streams, events, root, previous, public_key, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(checkpoint.number)
    .bind(checkpoint.created_at)
    .bind(&checkpoint.snapshot)
    .bind(checkpoint.streams)
    .bind(checkpoint.events)
    .bind(&checkpoint.root)
    .bind((!checkpoint.previous.is_empty()).then_some(&checkpoint.previous))
    .bind(&checkpoint.public_key)
    .bind(&checkpoint.signature)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    append(file, &checkpoint)?;
    Ok(Some(checkpoint))
}

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

/// `custos verify`: verifies every organisation (or one) of the data directory's database,
/// printing a report per organisation; false when anything does not verify.
pub async fn run_cli(args: crate::cli::VerifyArgs) -> anyhow::Result<bool> {
    use sqlx::Connection;
    let config = args.common.config()?;
    let database = crate::app::Database::open_or_attach(&config).await?;
    let result = async {
        let master = MasterKey::load(config.master_key.as_ref(), &config.data_dir)?;
        let mut catalog = PgConnection::connect_with(
            &database.options.clone().database(&config.catalog_database),
        )
        .await?;
        let tenants: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, slug, database_name FROM tenants WHERE status <> 'provisioning' ORDER BY created_at",
        )
        .fetch_all(&mut catalog)
        .await?;
        catalog.close().await?;
        if let Some(slug) = &args.tenant {
            if !tenants.iter().any(|(_, s, _)| s == slug) {
                anyhow::bail!("no organisation has the slug `{slug}`");
            }
        }
        let mut all_ok = true;
        for (id, slug, database_name) in tenants {
            if args.tenant.as_ref().is_some_and(|s| *s != slug) {
                continue;
            }
            let path = match (&args.checkpoints, &args.tenant) {
                (Some(path), Some(_)) => path.clone(),
                _ => checkpoint_file(&config.data_dir, id),
            };
            let file = read_checkpoint_file(&path)?;
            let mut conn =
                PgConnection::connect_with(&database.options.clone().database(&database_name))
                    .await?;
            let expected = signing_key(&master, id).verifying_key();
            let report = verify(&mut conn, id, Some(expected), Some(&file)).await?;
            conn.close().await?;
            print_report(&slug, id, &path, &report);
            all_ok &= report.ok();
        }
        Ok::<_, anyhow::Error>(all_ok)
    }
    .await;
    database.stop().await?;
    result
}

fn print_report(slug: &str, id: Uuid, file: &Path, report: &Report) {
    let verdict = if report.ok() { "OK" } else { "FAILED" };
    println!(
        "{slug} ({id}): {verdict} — {} events in {} streams; {} checkpoint(s){}",
        report.events,
        report.streams,
        report.checkpoints,
        report
            .checked_checkpoint
            .map(|n| format!(", checkpoint {n} recomputed against {}", file.display()))
            .unwrap_or_default()
    );
    for link in &report.broken {
        println!(
            "  {}/{}: {:?} at sequence {}",
            link.aggregate_type, link.aggregate_id, link.breach, link.sequence
        );
    }
    for problem in &report.checkpoint_problems {
        println!("  {problem}");
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: i64) -> Vec<StoredRow> {
        let mut rows: Vec<StoredRow> = Vec::new();
        for sequence in 1..=n {
            let mut row = StoredRow {
                aggregate_type: "record".into(),
                aggregate_id: "a".into(),
                sequence,
                event_type: "RecordUpdated".into(),
                event_version: "1".into(),
                payload: format!("{{\"n\":{sequence}}}"),
                metadata: "{}".into(),
                recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + sequence)
                    .unwrap(),
                prev_hash: rows.last().map(|r| r.hash.clone()),
                hash: Vec::new(),
                in_checkpoint: true,
            };
            row.hash = row.hash_at(row.prev_hash.as_deref(), sequence).to_vec();
            rows.push(row);
        }
        rows
    }

    fn at(link: Option<BrokenLink>) -> Option<(i64, Breach)> {
        link.map(|l| (l.sequence, l.breach))
    }

    #[test]
    fn an_intact_stream_verifies() {
        assert_eq!(check_stream(&stream(5)), None);
    }

    #[test]
    fn each_kind_of_tampering_is_found_where_it_happened() {
        let mut edited = stream(5);
        edited[2].payload = "{\"n\":99}".into();
        assert_eq!(at(check_stream(&edited)), Some((3, Breach::Edited)));

        let mut deleted = stream(5);
        deleted.remove(2);
        assert_eq!(at(check_stream(&deleted)), Some((3, Breach::Deleted)));
        // Renumbered after the deletion.
        for row in deleted.iter_mut().skip(2) {
            row.sequence -= 1;
        }
        assert_eq!(at(check_stream(&deleted)), Some((3, Breach::Deleted)));

        let mut reordered = stream(5);
        reordered.swap(1, 2);
        reordered[1].sequence = 2;
        reordered[2].sequence = 3;
        assert_eq!(at(check_stream(&reordered)), Some((2, Breach::Reordered)));

        // An event slipped in at 3, hashed properly onto 2; the rest renumbered.
        let mut inserted = stream(5);
        let mut extra = inserted[2].clone();
        extra.payload = "{\"forged\":true}".into();
        extra.prev_hash = Some(inserted[1].hash.clone());
        extra.hash = extra.hash_at(extra.prev_hash.as_deref(), 3).to_vec();
        inserted.insert(2, extra);
        for row in inserted.iter_mut().skip(3) {
            row.sequence += 1;
        }
        assert_eq!(at(check_stream(&inserted)), Some((3, Breach::Inserted)));
    }

    #[test]
    fn checkpoints_are_signed_and_their_signature_covers_every_field() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut checkpoint = Checkpoint {
            tenant_id: Uuid::now_v7(),
            number: 1,
            created_at: Utc::now(),
            snapshot: "10:10:".into(),
            streams: 2,
            events: 3,
            root: vec![1; 32],
            previous: Vec::new(),
            public_key: key.verifying_key().to_bytes().to_vec(),
            signature: Vec::new(),
        };
        checkpoint.signature = key.sign(&checkpoint.message()).to_bytes().to_vec();
        assert!(checkpoint.signature_holds());
        let mut forged = checkpoint.clone();
        forged.events = 4;
        assert!(!forged.signature_holds());
        let line = serde_json::to_string(&checkpoint).unwrap();
        assert_eq!(
            serde_json::from_str::<Checkpoint>(&line).unwrap(),
            checkpoint
        );
    }
}
