//! The keys that sign an organisation's tree heads, by generation (migration 0021).
//!
//! Generation 0 is derived from the master key and never stored (unless the database holds a
//! generation 0 of its own). Rotating writes a hand-over tree head signed by the key in force
//! that names a new random key, and stores that key sealed with a key derived from the master
//! key, bound to the organisation and generation; from then on the new key signs. The signed
//! hand-overs, not this table, are what `custos verify` and `custos verify-proof` trust.

use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretBox};
use sqlx::PgConnection;
use uuid::Uuid;

use super::tree_head::key_id;
use crate::infra::keys::MasterKey;
use crate::infra::subject_keys::{open, seal};

/// One generation of an organisation's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyGeneration {
    pub generation: i32,
    pub public_key: Vec<u8>,
    pub key_id: String,
    /// When it was made (none for a derived generation 0).
    pub created_at: Option<DateTime<Utc>>,
    /// The tree head that handed over to it (none for generation 0).
    pub handed_over_at: Option<i64>,
}

/// An organisation's signing keys.
pub(crate) struct AuditKeys {
    tenant_id: Uuid,
    /// Generation 0, unless the database holds one.
    derived: SigningKey,
    /// Seals the private keys of later generations.
    sealing: SecretBox<[u8; 32]>,
}

impl AuditKeys {
    pub(crate) fn new(master: &MasterKey, tenant_id: Uuid) -> Self {
        Self {
            tenant_id,
            derived: SigningKey::from_bytes(
                &master.derive(&format!("custos/checkpoint-signing/{tenant_id}")),
            ),
            sealing: SecretBox::new(Box::new(
                master.derive(&format!("custos/audit-key-sealing/{tenant_id}")),
            )),
        }
    }

    fn binding(&self, generation: i32) -> Vec<u8> {
        format!("custos/audit-key/{}/{generation}", self.tenant_id).into_bytes()
    }

    /// Generation 0 derived from the master key: the key the organisation's first tree heads
    /// (and its checkpoints from before the Merkle log) were signed with, unless the database
    /// holds a generation 0 of its own.
    pub(crate) fn derived(&self) -> VerifyingKey {
        self.derived.verifying_key()
    }

    /// Every generation, oldest first.
    pub(crate) async fn generations(
        &self,
        conn: &mut PgConnection,
    ) -> sqlx::Result<Vec<KeyGeneration>> {
        generations(conn, &self.derived()).await
    }
}

/// Every generation of the keys whose generation 0, unless stored, is `derived`; oldest first.
pub(crate) async fn generations(
    conn: &mut PgConnection,
    derived: &VerifyingKey,
) -> sqlx::Result<Vec<KeyGeneration>> {
    type Row = (i32, Vec<u8>, DateTime<Utc>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT generation, public_key, created_at, handed_over_at FROM audit_keys
         ORDER BY generation",
    )
    .fetch_all(conn)
    .await?;
    let mut generations: Vec<KeyGeneration> = rows
        .into_iter()
        .map(
            |(generation, public_key, created_at, handed_over_at)| KeyGeneration {
                generation,
                key_id: key_id(&public_key),
                public_key,
                created_at: Some(created_at),
                handed_over_at,
            },
        )
        .collect();
    if generations.first().is_none_or(|g| g.generation != 0) {
        let public_key = derived.to_bytes().to_vec();
        generations.insert(
            0,
            KeyGeneration {
                generation: 0,
                key_id: key_id(&public_key),
                public_key,
                created_at: None,
                handed_over_at: None,
            },
        );
    }
    Ok(generations)
}

impl AuditKeys {
    /// The first key: what verification starts from.
    pub(crate) async fn anchor(&self, conn: &mut PgConnection) -> anyhow::Result<VerifyingKey> {
        let first = self.generations(conn).await?.remove(0);
        verifying_key(&first.public_key)
            .ok_or_else(|| anyhow::anyhow!("audit key generation 0 is not an Ed25519 key"))
    }

    /// The key in force (the newest generation) and its generation.
    pub(crate) async fn current(
        &self,
        conn: &mut PgConnection,
    ) -> anyhow::Result<(i32, SigningKey)> {
        let row: Option<(i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT generation, public_key, sealed_secret FROM audit_keys
             ORDER BY generation DESC LIMIT 1",
        )
        .fetch_optional(conn)
        .await?;
        let Some((generation, public_key, sealed)) = row else {
            return Ok((0, self.derived.clone()));
        };
        let secret = open(self.sealing.expose_secret(), &sealed, &self.binding(generation))
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "audit key generation {generation} does not open: the master key differs or the key was altered"
                )
            })?;
        let key = SigningKey::from_bytes(&secret);
        anyhow::ensure!(
            key.verifying_key().to_bytes().as_slice() == public_key.as_slice(),
            "audit key generation {generation}: the stored public key is not its own"
        );
        Ok((generation, key))
    }

    /// A new random key for `generation`, and its private key sealed for storage.
    pub(crate) fn create(&self, generation: i32) -> (SigningKey, Vec<u8>) {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let key = SigningKey::from_bytes(&secret);
        let sealed = seal(
            self.sealing.expose_secret(),
            key.as_bytes(),
            &self.binding(generation),
        );
        (key, sealed)
    }
}

/// An Ed25519 public key from its bytes.
pub(crate) fn verifying_key(bytes: &[u8]) -> Option<VerifyingKey> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
}
