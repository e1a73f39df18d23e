//! Reading a tenant archive into a new, empty tenant database, in one transaction: every line
//! is parsed and placed; then the manifest is checked and the whole store verified — every
//! chain, the Merkle log against every signed tree head from the archive's anchor key — before
//! anything is committed. A damaged, altered or foreign archive commits nothing.
//!
//! Events keep every stored byte, hash and time. Their tenant-wide positions are renumbered in
//! the archive's (commit) order, and they carry the importing transaction's id: the order the
//! Merkle log signed is kept, and this server's projectors and checkpoints read them in it.

use std::collections::HashMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::export::TenantSecrets;
use super::format::{
    binding, ArchiveError, ArchiveKey, Entry, EventEntry, Header, Tally, FORMAT, VERSION,
};
use crate::infra::integrity::merkle::Frontier;
use crate::infra::integrity::tree::{insert_head, LogBatch};
use crate::infra::integrity::tree_head::verifying_key;
use crate::infra::integrity::verify::verify_in;
use crate::infra::subject_keys::seal;

/// The longest line an archive may have (a large event is far smaller).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Rows written per statement, and the most bytes (or listed ids) held before they are: what
/// waits in memory stays bounded whatever the archive's lines hold.
const BATCH: usize = 2_000;
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Reads one line (with its newline) into `buf`; false at the end of the file. A last line
/// without its newline is returned as it is (the caller sees it is cut short).
pub(crate) async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, ArchiveError> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(end) => {
                buf.extend_from_slice(&available[..=end]);
                reader.consume(end + 1);
                return Ok(true);
            }
            None => {
                let n = available.len();
                buf.extend_from_slice(available);
                reader.consume(n);
                if buf.len() > MAX_LINE {
                    return Err(ArchiveError::NotAnArchive(
                        "a line is longer than any Custos writes".into(),
                    ));
                }
            }
        }
    }
}

/// The header, from the first line: refused unless it is a Custos archive of a version this
/// build reads.
pub(crate) async fn read_header<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<(Header, Vec<u8>), ArchiveError> {
    let mut line = Vec::new();
    if !next_line(reader, &mut line).await? || !line.ends_with(b"\n") {
        return Err(ArchiveError::NotAnArchive("it has no header line".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(&line)
        .map_err(|_| ArchiveError::NotAnArchive("its first line is not JSON".into()))?;
    if value["format"] != FORMAT {
        return Err(ArchiveError::NotAnArchive(format!(
            "its first line does not say `\"format\": \"{FORMAT}\"`"
        )));
    }
    match value["version"].as_u64() {
        Some(v) if (1..=u64::from(VERSION)).contains(&v) => {}
        Some(v) if v > u64::from(VERSION) => {
            return Err(ArchiveError::NewerVersion(v.try_into().unwrap_or(u32::MAX)))
        }
        _ => {
            return Err(ArchiveError::NotAnArchive(
                "its version is not one Custos wrote".into(),
            ))
        }
    }
    let header: Header = serde_json::from_value(value).map_err(|e| ArchiveError::Malformed {
        line: 1,
        reason: e.to_string(),
    })?;
    header.lock()?;
    Ok((header, line))
}

/// What an import wrote.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub events: i64,
    pub tree_heads: i64,
    pub subject_keys: i64,
    pub erased_subjects: i64,
    /// SHA-256 of the whole archive.
    pub archive_sha256: Vec<u8>,
}

/// Events (and their leaves and nodes) waiting to be written.
#[derive(Default)]
struct Events {
    types: Vec<String>,
    ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<String>,
    metadata: Vec<String>,
    positions: Vec<i64>,
    recorded: Vec<chrono::DateTime<chrono::Utc>>,
    prev_hashes: Vec<Option<Vec<u8>>>,
    hashes: Vec<Vec<u8>>,
    /// The leaves (and nodes) of the events the archive's tree heads signed.
    log: LogBatch,
    bytes: usize,
}

impl Events {
    fn full(&self) -> bool {
        self.positions.len() >= BATCH || self.bytes >= BATCH_BYTES
    }

    fn push(&mut self, event: EventEntry, position: i64) {
        self.bytes += event.payload.len() + event.metadata.len() + event.aggregate_id.len();
        self.types.push(event.aggregate_type);
        self.ids.push(event.aggregate_id);
        self.sequences.push(event.sequence);
        self.event_types.push(event.event_type);
        self.versions.push(event.event_version);
        self.payloads.push(event.payload);
        self.metadata.push(event.metadata);
        self.positions.push(position);
        self.recorded.push(event.recorded_at);
        self.prev_hashes.push(event.prev_hash);
        self.hashes.push(event.hash);
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if !self.positions.is_empty() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, global_position,
                                     recorded_at, prev_hash, hash)
                 OVERRIDING SYSTEM VALUE
                 SELECT t, i, s, et, ev, p::json, m::json, g, r, ph, h
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::bigint[], $9::timestamptz[],
                             $10::bytea[], $11::bytea[])
                      AS e (t, i, s, et, ev, p, m, g, r, ph, h)",
            )
            .bind(&self.types)
            .bind(&self.ids)
            .bind(&self.sequences)
            .bind(&self.event_types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.positions)
            .bind(&self.recorded)
            .bind(&self.prev_hashes)
            .bind(&self.hashes)
            .execute(&mut *conn)
            .await?;
        }
        self.log.write(&mut *conn).await?;
        *self = Self::default();
        Ok(())
    }
}

/// Subject keys and read records waiting to be written.
#[derive(Default)]
struct Rows {
    subjects: Vec<uuid::Uuid>,
    wrapped: Vec<Option<Vec<u8>>>,
    created: Vec<chrono::DateTime<chrono::Utc>>,
    erased: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    reads: Vec<super::format::RecordReadEntry>,
    list_reads: Vec<super::format::ListReadEntry>,
    listed_ids: usize,
}

impl Rows {
    fn full(&self) -> bool {
        self.subjects.len() + self.reads.len() + self.list_reads.len() >= BATCH
            || self.listed_ids >= BATCH_BYTES / 64
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if !self.subjects.is_empty() {
            sqlx::query(
                "INSERT INTO subject_keys (subject_id, wrapped_key, created_at, erased_at)
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::timestamptz[], $4::timestamptz[])",
            )
            .bind(&self.subjects)
            .bind(&self.wrapped)
            .bind(&self.created)
            .bind(&self.erased)
            .execute(&mut *conn)
            .await?;
        }
        if !self.reads.is_empty() {
            let r = &self.reads;
            sqlx::query(
                "INSERT INTO record_reads (record_id, read_at, actor_id, actor_kind, request_id, via)
                 SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[],
                                      $5::uuid[], $6::text[])",
            )
            .bind(r.iter().map(|r| r.record_id).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.read_at).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.actor_id).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.actor_kind.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.request_id).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.via.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.list_reads.is_empty() {
            let r = &self.list_reads;
            // One array per row: passed as array literals, since unnest flattens arrays of arrays.
            let ids: Vec<String> = r
                .iter()
                .map(|r| {
                    let ids: Vec<String> = r.record_ids.iter().map(|id| id.to_string()).collect();
                    format!("{{{}}}", ids.join(","))
                })
                .collect();
            sqlx::query(
                "INSERT INTO list_reads (read_at, actor_id, actor_kind, request_id, via, record_ids)
                 SELECT r, a, k, q, v, ids::uuid[]
                 FROM unnest($1::timestamptz[], $2::uuid[], $3::text[], $4::uuid[], $5::text[],
                             $6::text[]) AS l (r, a, k, q, v, ids)",
            )
            .bind(r.iter().map(|r| r.read_at).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.actor_id).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.actor_kind.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.request_id).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.via.clone()).collect::<Vec<_>>())
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        }
        *self = Self::default();
        Ok(())
    }
}

/// Reads the rest of the archive (after `header`, read by [`read_header`] as `header_line`)
/// into the empty tenant database `conn` is connected to as its owner, sealing its secrets
/// with `secrets`; commits only if the manifest holds and everything verifies from the
/// archive's anchor key.
pub(crate) async fn import<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    header: &Header,
    header_line: &[u8],
    key: &ArchiveKey,
    conn: &mut PgConnection,
    secrets: TenantSecrets<'_>,
) -> Result<Imported, ArchiveError> {
    let id = header.organization.id;
    let anchor: VerifyingKey =
        verifying_key(&header.audit_anchor).ok_or_else(|| ArchiveError::Malformed {
            line: 1,
            reason: "its audit anchor is not an Ed25519 public key".into(),
        })?;
    let mut tx = sqlx::Connection::begin(conn).await?;
    // The stored hashes are written as they are and checked by verification before commit;
    // the trigger would compute them again, row by row. DDL is transactional: a failed import
    // leaves the trigger as it was.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_hash_chain")
        .execute(&mut *tx)
        .await?;
    let import_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let reading = std::time::Instant::now();
    // Time spent waiting for the database to write the batches, within the reading.
    let mut writing = std::time::Duration::ZERO;
    let mut tally = Tally::default();
    tally.header(header_line);
    let mut whole = Sha256::new();
    whole.update(header_line);
    let mut imported = Imported::default();
    let mut buf = Vec::new();
    let mut line_no = 1u64;
    let mut rank = 0u8;
    let mut manifest = None;
    let mut logged_size = 0i64;
    let mut frontier = Frontier::default();
    let mut events = Events::default();
    let mut rows = Rows::default();
    // Per stream, the covered event with the highest sequence: (sequence, position).
    let mut legacy_heads: HashMap<(String, String), (i64, i64)> = HashMap::new();
    let mut audit_key = false;
    while next_line(reader, &mut buf).await? {
        line_no += 1;
        if !buf.ends_with(b"\n") {
            return Err(ArchiveError::Truncated(line_no));
        }
        if manifest.is_some() {
            return Err(ArchiveError::Malformed {
                line: line_no,
                reason: "something follows the manifest".into(),
            });
        }
        whole.update(&buf);
        let malformed = |reason: String| ArchiveError::Malformed {
            line: line_no,
            reason,
        };
        let entry: Entry = serde_json::from_slice(&buf).map_err(|e| malformed(e.to_string()))?;
        if entry.rank() < rank {
            return Err(malformed(format!(
                "a `{}` entry after the entries that follow its kind",
                entry.kind()
            )));
        }
        rank = entry.rank();
        if !matches!(entry, Entry::Manifest(_)) {
            tally.line(entry.kind(), &buf);
        }
        match entry {
            Entry::Manifest(m) => manifest = Some(m),
            Entry::LegacyCheckpoint(c) => {
                if c.tenant_id != id {
                    return Err(malformed("a checkpoint of another organisation".into()));
                }
                sqlx::query(
                    "INSERT INTO checkpoints (number, created_at, snapshot, streams, events, root,
                                              previous, public_key, signature)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(c.number)
                .bind(c.created_at)
                .bind(&c.snapshot)
                .bind(c.streams)
                .bind(c.events)
                .bind(&c.root)
                .bind((!c.previous.is_empty()).then_some(&c.previous))
                .bind(&c.public_key)
                .bind(&c.signature)
                .execute(&mut *tx)
                .await?;
            }
            Entry::TreeHead(h) => {
                let head = h.head;
                if head.tenant_id != id {
                    return Err(malformed("a tree head of another organisation".into()));
                }
                // The head's last event is the one at position `tree_size` here, written by
                // this transaction.
                insert_head(&mut tx, &head, &h.frontier, (import_xid, head.tree_size)).await?;
                logged_size = logged_size.max(head.tree_size);
                imported.tree_heads += 1;
            }
            Entry::AuditKey(k) => {
                let secret = key
                    .open(&k.sealed_secret, &binding(id, "audit-key", k.generation))
                    .and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok())
                    .ok_or_else(|| {
                        ArchiveError::Altered(format!(
                            "line {line_no}: the signing key does not open"
                        ))
                    })?;
                let signing = SigningKey::from_bytes(&secret);
                if signing.verifying_key().to_bytes().as_slice() != k.public_key {
                    return Err(ArchiveError::Altered(format!(
                        "line {line_no}: the signing key is not the one its public key names"
                    )));
                }
                sqlx::query(
                    "INSERT INTO audit_keys (generation, public_key, sealed_secret) VALUES ($1, $2, $3)",
                )
                .bind(k.generation)
                .bind(&k.public_key)
                .bind(secrets.audit_keys.seal(k.generation, &signing))
                .execute(&mut *tx)
                .await?;
                audit_key = true;
            }
            Entry::Event(e) => {
                imported.events += 1;
                let position = imported.events;
                if e.legacy_covered {
                    let head = legacy_heads
                        .entry((e.aggregate_type.clone(), e.aggregate_id.clone()))
                        .or_insert((e.sequence, position));
                    if e.sequence >= head.0 {
                        *head = (e.sequence, position);
                    }
                }
                if position <= logged_size {
                    events.log.push(&mut frontier, position, &e.hash);
                }
                events.push(e, position);
                if events.full() {
                    let flushing = std::time::Instant::now();
                    events.flush(&mut tx).await?;
                    writing += flushing.elapsed();
                }
            }
            Entry::SubjectKey(s) => {
                let wrapped = match (&s.sealed_key, s.erased_at) {
                    (Some(sealed), None) => {
                        let data_key = key
                            .open(sealed, &binding(id, "subject-key", s.subject))
                            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
                            .ok_or_else(|| {
                                ArchiveError::Altered(format!(
                                    "line {line_no}: the data key of subject {} does not open",
                                    s.subject
                                ))
                            })?;
                        imported.subject_keys += 1;
                        Some(secrets.subject_keys.wrap(s.subject, &data_key))
                    }
                    (None, Some(_)) => {
                        imported.erased_subjects += 1;
                        None
                    }
                    _ => {
                        return Err(malformed(
                            "a subject key must have either a key or an erasure time".into(),
                        ))
                    }
                };
                rows.subjects.push(s.subject);
                rows.wrapped.push(wrapped);
                rows.created.push(s.created_at);
                rows.erased.push(s.erased_at);
            }
            Entry::TwoFactorSecret(t) => {
                let secret = key
                    .open(&t.sealed_secret, &binding(id, "two-factor", t.user))
                    .ok_or_else(|| {
                        ArchiveError::Altered(format!(
                            "line {line_no}: the two-factor secret of user {} does not open",
                            t.user
                        ))
                    })?;
                let sealed = seal(
                    secrets.two_factor_key.expose_secret(),
                    &secret,
                    t.user.as_bytes(),
                );
                sqlx::query(
                    "INSERT INTO two_factor_secrets (user_id, secret, last_step, created_at)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(t.user)
                .bind(sealed)
                .bind(t.last_step)
                .bind(t.created_at)
                .execute(&mut *tx)
                .await?;
            }
            Entry::RecoveryCode(r) => {
                sqlx::query(
                    "INSERT INTO recovery_codes (user_id, code_hash, used_at) VALUES ($1, $2, $3)",
                )
                .bind(r.user)
                .bind(&r.code_hash)
                .bind(r.used_at)
                .execute(&mut *tx)
                .await?;
            }
            Entry::RecordRead(r) => rows.reads.push(r),
            Entry::ListRead(r) => {
                rows.listed_ids += r.record_ids.len();
                rows.list_reads.push(r);
            }
        }
        if rows.full() {
            let flushing = std::time::Instant::now();
            rows.flush(&mut tx).await?;
            writing += flushing.elapsed();
        }
    }
    let Some(manifest) = manifest else {
        return Err(ArchiveError::Truncated(line_no));
    };
    if !audit_key {
        return Err(ArchiveError::Altered(
            "the archive holds no signing key".into(),
        ));
    }
    let flushing = std::time::Instant::now();
    events.flush(&mut tx).await?;
    rows.flush(&mut tx).await?;
    writing += flushing.elapsed();
    tracing::debug!(
        events = imported.events,
        seconds = reading.elapsed().as_secs_f64(),
        writing = writing.as_secs_f64(),
        "import: archive read and written (writing: waiting for the batches' statements)"
    );
    if imported.events > 0 {
        sqlx::query("SELECT setval(pg_get_serial_sequence('events', 'global_position'), $1)")
            .bind(imported.events)
            .execute(&mut *tx)
            .await?;
    }
    imported.archive_sha256 = whole.finalize().to_vec();
    let heads: Vec<i64> = legacy_heads
        .into_values()
        .map(|(_, position)| position)
        .collect();
    sqlx::query(
        "INSERT INTO imports (archive_sha256, archive_created_at, events, legacy_heads)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&imported.archive_sha256)
    .bind(header.created_at)
    .bind(imported.events)
    .bind(&heads)
    .execute(&mut *tx)
    .await?;
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_hash_chain")
        .execute(&mut *tx)
        .await?;
    // Verification names the first event that is not as signed; the manifest says which kind
    // of entry was altered, added or removed.
    let manifest_holds = tally.check(&manifest, key);
    let verifying = std::time::Instant::now();
    let report = verify_in(&mut tx, id, Some(anchor), None).await?;
    tracing::debug!(
        seconds = verifying.elapsed().as_secs_f64(),
        "import: verified before commit"
    );
    if !report.ok() {
        let mut problems: Vec<String> = report
            .broken
            .iter()
            .map(|b| {
                format!(
                    "{}/{}: {:?} at sequence {}",
                    b.aggregate_type, b.aggregate_id, b.breach, b.sequence
                )
            })
            .collect();
        problems.extend(report.checkpoint_problems);
        if let Err(err) = manifest_holds {
            problems.push(err.to_string());
        }
        return Err(ArchiveError::DoesNotVerify(problems));
    }
    manifest_holds?;
    tx.commit().await?;
    Ok(imported)
}
