//! Signed checkpoints: an accumulator over every stream's head as of a snapshot (SHA-256 over
//! the heads in byte order), signed with an Ed25519 key derived from the master key, stored in
//! the `checkpoints` table and appended to a file in the data directory, so rewriting history
//! inside the database — even recomputing every hash — does not match the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::chain::part;
use crate::infra::keys::MasterKey;

/// Advisory lock (transaction-scoped, in the tenant database) while a checkpoint is made.
const CHECKPOINT_LOCK: i64 = 0x6375_7374_6f73_0006;

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
pub(crate) fn signing_key(master: &MasterKey, tenant_id: Uuid) -> SigningKey {
    SigningKey::from_bytes(&master.derive(&format!("custos/checkpoint-signing/{tenant_id}")))
}

/// Where a tenant's checkpoints are appended, under the data directory.
pub(crate) fn checkpoint_file(data_dir: &Path, tenant_id: Uuid) -> PathBuf {
    data_dir
        .join("checkpoints")
        .join(format!("{tenant_id}.jsonl"))
}

/// The checkpoints in a file, in order.
pub(crate) fn read_checkpoint_file(path: &Path) -> anyhow::Result<Vec<Checkpoint>> {
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
pub(crate) struct Heads {
    pub(crate) hasher: Sha256,
    pub(crate) streams: i64,
}

impl Heads {
    pub(crate) fn add(
        &mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        hash: &[u8],
    ) {
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
pub(crate) async fn checkpoints(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> sqlx::Result<Vec<Checkpoint>> {
    latest_checkpoints(conn, tenant_id, i64::MAX).await
}

/// The newest `limit` checkpoints, oldest first.
pub(crate) async fn latest_checkpoints(
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
pub(crate) async fn create_checkpoint(
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

#[cfg(test)]
mod tests {
    use super::*;

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
