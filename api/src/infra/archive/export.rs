//! Writing a tenant archive from one consistent snapshot of the tenant database, streamed: the
//! events are read in commit order and written as they come, so memory does not grow with the
//! organisation.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretBox};
use sqlx::{PgConnection, Row};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use uuid::Uuid;

use super::format::{
    binding, line, ArchiveError, ArchiveKey, AuditKeyEntry, Entry, EventEntry, HeadEntry, Header,
    KeyLock, ListReadEntry, OrganizationEntry, RecordReadEntry, RecoveryCodeEntry, SubjectKeyEntry,
    Tally, TwoFactorEntry, FORMAT,
};
use crate::infra::integrity::audit_keys::AuditKeys;
use crate::infra::integrity::checkpoint::checkpoints;
use crate::infra::integrity::tree::stored_heads;
use crate::infra::integrity::verify::{legacy_coverage, LEGACY_COVERED};
use crate::infra::subject_keys::{open, SubjectKeys};

/// What opens a tenant's secrets (export) or seals them (import).
pub(crate) struct TenantSecrets<'a> {
    pub subject_keys: &'a SubjectKeys,
    pub two_factor_key: &'a SecretBox<[u8; 32]>,
    pub audit_keys: &'a AuditKeys,
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    pub events: u64,
    pub tree_heads: u64,
    pub subject_keys: u64,
    pub erased_subjects: u64,
    pub bytes: u64,
}

/// Counts what goes through to the writer.
struct Out<W> {
    writer: BufWriter<W>,
    tally: Tally,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    async fn entry(&mut self, entry: &Entry) -> std::io::Result<()> {
        let bytes = line(entry);
        self.tally.line(entry.kind(), &bytes);
        self.bytes += bytes.len() as u64;
        self.writer.write_all(&bytes).await
    }
}

/// Writes the archive of the organisation `organization` whose database `conn` is connected
/// to, its secrets opened with `secrets` and sealed under `key` (kept as `lock` says); tells
/// `snapshot_taken` once the snapshot it reads is fixed.
pub(crate) async fn export<W: AsyncWrite + Unpin>(
    conn: &mut PgConnection,
    organization: OrganizationEntry,
    secrets: TenantSecrets<'_>,
    key: &ArchiveKey,
    lock: KeyLock,
    writer: W,
    snapshot_taken: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Exported, ArchiveError> {
    let id = organization.id;
    let mut tx = sqlx::Connection::begin(conn).await?;
    // One snapshot: the archive is the organisation at one moment, whatever is written meanwhile.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let in_force = secrets
        .audit_keys
        .in_force(&mut tx)
        .await?
        .map_err(|reason| {
            ArchiveError::Refused(format!(
                "the organisation's signing key in force cannot be had, so its archive could not be continued elsewhere: {reason}"
            ))
        })?;
    // The snapshot is taken: whatever is signed from now on is not in the archive.
    if let Some(taken) = snapshot_taken {
        let _ = taken.send(());
    }
    let (version, kdf, age_wrapped_key) = Header::key_fields(lock);
    let header = Header {
        format: FORMAT.into(),
        version,
        created_at: Utc::now(),
        written_by: format!("custos {}", env!("CARGO_PKG_VERSION")),
        key_check: key.key_check(id),
        organization,
        audit_anchor: secrets.audit_keys.anchor().to_bytes().to_vec(),
        kdf,
        age_wrapped_key,
    };
    let mut out = Out {
        writer: BufWriter::with_capacity(256 * 1024, writer),
        tally: Tally::default(),
        bytes: 0,
    };
    let header_line = line(&header);
    out.tally.header(&header_line);
    out.bytes += header_line.len() as u64;
    out.writer.write_all(&header_line).await?;
    let mut exported = Exported::default();

    let legacy = checkpoints(&mut tx, id).await?;
    for checkpoint in &legacy {
        out.entry(&Entry::LegacyCheckpoint(checkpoint.clone()))
            .await?;
    }
    for stored in stored_heads(&mut tx, id).await? {
        out.entry(&Entry::TreeHead(HeadEntry {
            head: stored.head,
            frontier: stored.frontier,
        }))
        .await?;
        exported.tree_heads += 1;
    }
    let generation = in_force.generation;
    out.entry(&Entry::AuditKey(AuditKeyEntry {
        generation,
        public_key: in_force.key.verifying_key().to_bytes().to_vec(),
        sealed_secret: key.seal(
            in_force.key.as_bytes(),
            &binding(id, "audit-key", generation),
        ),
    }))
    .await?;

    // The events in the commit order the Merkle log signed.
    let (snapshot, heads) = legacy_coverage(&mut tx, legacy.last()).await?;
    let query = format!(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text, metadata::text, recorded_at, prev_hash, hash,
                transaction_id::text::bigint, global_position, {LEGACY_COVERED}
         FROM events ORDER BY transaction_id, global_position"
    );
    {
        let mut rows = sqlx::query(&query)
            .bind(&snapshot)
            .bind(&heads)
            .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let entry = EventEntry {
                aggregate_type: row.try_get(0)?,
                aggregate_id: row.try_get(1)?,
                sequence: row.try_get(2)?,
                event_type: row.try_get(3)?,
                event_version: row.try_get(4)?,
                payload: row.try_get(5)?,
                metadata: row.try_get(6)?,
                recorded_at: row.try_get(7)?,
                prev_hash: row.try_get(8)?,
                hash: row.try_get(9)?,
                transaction_id: row.try_get(10)?,
                position: row.try_get(11)?,
                legacy_covered: row.try_get(12)?,
            };
            out.entry(&Entry::Event(entry)).await?;
            exported.events += 1;
        }
    }

    {
        let mut rows = sqlx::query_as::<_, (Uuid, Option<Vec<u8>>, DateTime<Utc>, Option<DateTime<Utc>>)>(
            "SELECT subject_id, wrapped_key, created_at, erased_at FROM subject_keys ORDER BY subject_id",
        )
        .fetch(&mut *tx);
        while let Some((subject, wrapped, created_at, erased_at)) = rows.try_next().await? {
            let sealed_key = match wrapped {
                Some(wrapped) => {
                    let key_bytes = secrets
                        .subject_keys
                        .unwrap_key(subject, &wrapped)
                        .map_err(|_| {
                            ArchiveError::Refused(format!(
                                "the data key of subject {subject} does not open with this server's master key"
                            ))
                        })?;
                    exported.subject_keys += 1;
                    Some(key.seal(
                        key_bytes.expose_secret(),
                        &binding(id, "subject-key", subject),
                    ))
                }
                None => {
                    exported.erased_subjects += 1;
                    None
                }
            };
            out.entry(&Entry::SubjectKey(SubjectKeyEntry {
                subject,
                sealed_key,
                created_at,
                erased_at,
            }))
            .await?;
        }
    }

    {
        let mut rows = sqlx::query_as::<_, (Uuid, Vec<u8>, i64, DateTime<Utc>)>(
            "SELECT user_id, secret, last_step, created_at FROM two_factor_secrets ORDER BY user_id",
        )
        .fetch(&mut *tx);
        while let Some((user, sealed, last_step, created_at)) = rows.try_next().await? {
            let secret = open(
                secrets.two_factor_key.expose_secret(),
                &sealed,
                user.as_bytes(),
            )
            .ok_or_else(|| {
                ArchiveError::Refused(format!(
                    "the two-factor secret of user {user} does not open with this server's master key"
                ))
            })?;
            out.entry(&Entry::TwoFactorSecret(TwoFactorEntry {
                user,
                sealed_secret: key.seal(&secret, &binding(id, "two-factor", user)),
                last_step,
                created_at,
            }))
            .await?;
        }
    }

    // Recovery-code hashes and the record of who read whom go as they are stored.
    {
        let mut rows = sqlx::query_as::<_, RecoveryCodeEntry>(
            "SELECT user_id, code_hash, used_at FROM recovery_codes ORDER BY user_id, code_hash",
        )
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            out.entry(&Entry::RecoveryCode(row)).await?;
        }
    }
    {
        let mut rows = sqlx::query_as::<_, RecordReadEntry>(
            "SELECT record_id, read_at, actor_id, actor_kind, request_id, via FROM record_reads
             ORDER BY read_at, record_id",
        )
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            out.entry(&Entry::RecordRead(row)).await?;
        }
    }
    {
        let mut rows = sqlx::query_as::<_, ListReadEntry>(
            "SELECT read_at, actor_id, actor_kind, request_id, via, record_ids FROM list_reads
             ORDER BY read_at, request_id",
        )
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            out.entry(&Entry::ListRead(row)).await?;
        }
    }
    tx.rollback().await?;

    let manifest = out.tally.manifest(key);
    let manifest_line = line(&Entry::Manifest(manifest));
    out.bytes += manifest_line.len() as u64;
    out.writer.write_all(&manifest_line).await?;
    out.writer.flush().await?;
    exported.bytes = out.bytes;
    Ok(exported)
}
