//! The organisation's signing key, and the checkpoints signed before the Merkle log (migration
//! 0019): an accumulator over every stream's head as of a snapshot, signed with that key,
//! stored in the `checkpoints` table and the witness file. None are made any more (the Merkle
//! log's tree heads took their place, `tree`); those that exist are still verified.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::chain::part;

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
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
    pub(crate) fn signature_holds(&self) -> bool {
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
    let rows = sqlx::query(
        "SELECT number, created_at, snapshot, streams, events, root, previous, public_key, signature
         FROM checkpoints ORDER BY number",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| checkpoint_from_row(tenant_id, r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;
    use ed25519_dalek::SigningKey;

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
