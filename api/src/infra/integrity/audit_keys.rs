//! The keys that sign an organisation's tree heads, by generation (migration 0021).
//!
//! Generation 0 is derived from the master key and never stored — except for an organisation
//! imported from another server (migration 0022): its generation 0 is the anchor the catalog
//! keeps, and its private half, while it is in force, is stored sealed like a later
//! generation's. Rotating writes a hand-over
//! tree head, signed by the key in force, that names a new random key; the new key's private
//! half is stored in `audit_keys` sealed with a key derived from the master key, bound to the
//! organisation and generation. Which key is in force is decided by the signed hand-overs
//! alone, followed from generation 0: the table is only where private keys are looked up (by
//! public key, and only if they open and match), so a row slipped into it is never used.

use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretBox};
use sqlx::PgConnection;
use uuid::Uuid;

use super::tree_head::{handovers_before, key_id, TreeHead};
use crate::infra::keys::MasterKey;
use crate::infra::subject_keys::{open, seal};

/// One generation of an organisation's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyGeneration {
    pub generation: i32,
    pub public_key: Vec<u8>,
    pub key_id: String,
    /// When its hand-over was signed (none for generation 0).
    pub created_at: Option<DateTime<Utc>>,
    /// The tree head that handed over to it, signed by the key before it (none for 0).
    pub handed_over_at: Option<i64>,
}

/// Every generation, oldest first, as the signed hand-overs among `handovers` (oldest first)
/// show them from `derived`: a hand-over counts only if the key in force signed it.
pub(crate) fn follow(derived: &VerifyingKey, handovers: &[TreeHead]) -> Vec<KeyGeneration> {
    let public_key = derived.to_bytes().to_vec();
    let mut generations = vec![KeyGeneration {
        generation: 0,
        key_id: key_id(&public_key),
        public_key,
        created_at: None,
        handed_over_at: None,
    }];
    let mut in_force = *derived;
    for handover in handovers {
        let Some(next) = handover.next_key() else {
            continue;
        };
        if !handover.signed_by(&in_force) {
            continue;
        }
        in_force = next;
        let public_key = next.to_bytes().to_vec();
        generations.push(KeyGeneration {
            generation: generations.len() as i32,
            key_id: key_id(&public_key),
            public_key,
            created_at: Some(handover.created_at),
            handed_over_at: Some(handover.number),
        });
    }
    generations
}

/// The key in force, with its private half.
pub(crate) struct InForce {
    pub generation: i32,
    pub key: SigningKey,
    /// The tree head that handed over to it (none for generation 0).
    pub handed_over_at: Option<i64>,
}

/// Generation 0 of an organisation's key.
enum Anchor {
    /// Derived from this server's master key.
    Derived(SigningKey),
    /// Brought from the server an imported organisation came from (the catalog's
    /// `audit_anchor`); its private half, if any, is in `audit_keys`.
    Imported(VerifyingKey),
}

/// An organisation's signing keys.
pub(crate) struct AuditKeys {
    tenant_id: Uuid,
    anchor: Anchor,
    /// Seals the private keys of later generations.
    sealing: SecretBox<[u8; 32]>,
}

impl AuditKeys {
    /// The keys of an organisation created here (`imported_anchor` none) or imported with
    /// that generation-0 public key.
    pub(crate) fn new(
        master: &MasterKey,
        tenant_id: Uuid,
        imported_anchor: Option<VerifyingKey>,
    ) -> Self {
        let anchor = match imported_anchor {
            Some(key) => Anchor::Imported(key),
            None => Anchor::Derived(SigningKey::from_bytes(
                &master.derive(&format!("custos/checkpoint-signing/{tenant_id}")),
            )),
        };
        Self {
            tenant_id,
            anchor,
            sealing: SecretBox::new(Box::new(
                master.derive(&format!("custos/audit-key-sealing/{tenant_id}")),
            )),
        }
    }

    fn binding(&self, generation: i32) -> Vec<u8> {
        format!("custos/audit-key/{}/{generation}", self.tenant_id).into_bytes()
    }

    /// Generation 0: the key the organisation's first tree heads (and its checkpoints from
    /// before the Merkle log) were signed with, and where verification starts.
    pub(crate) fn anchor(&self) -> VerifyingKey {
        match &self.anchor {
            Anchor::Derived(key) => key.verifying_key(),
            Anchor::Imported(key) => *key,
        }
    }

    /// Generation 0's private half when it is derived here.
    pub(crate) fn derived_secret(&self) -> Option<&SigningKey> {
        match &self.anchor {
            Anchor::Derived(key) => Some(key),
            Anchor::Imported(_) => None,
        }
    }

    /// Every generation, oldest first, from the signed hand-overs.
    pub(crate) async fn generations(
        &self,
        conn: &mut PgConnection,
    ) -> sqlx::Result<Vec<KeyGeneration>> {
        let handovers = handovers_before(conn, self.tenant_id, i64::MAX).await?;
        Ok(follow(&self.anchor(), &handovers))
    }

    /// The key in force — the last generation the signed hand-overs lead to — with its
    /// private half: derived for a derived generation 0, else from `audit_keys`, where it must
    /// open and match. `Err` with the reason when it cannot be had.
    pub(crate) async fn in_force(
        &self,
        conn: &mut PgConnection,
    ) -> anyhow::Result<Result<InForce, String>> {
        let generations = self.generations(&mut *conn).await?;
        let last = generations.last().expect("generation 0 is always there");
        if let (0, Some(derived)) = (last.generation, self.derived_secret()) {
            return Ok(Ok(InForce {
                generation: 0,
                key: derived.clone(),
                handed_over_at: None,
            }));
        }
        let sealed: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT sealed_secret FROM audit_keys WHERE generation = $1 AND public_key = $2",
        )
        .bind(last.generation)
        .bind(&last.public_key)
        .fetch_optional(&mut *conn)
        .await?;
        let opened = sealed
            .and_then(|sealed| {
                open(
                    self.sealing.expose_secret(),
                    &sealed,
                    &self.binding(last.generation),
                )
            })
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .map(|secret| SigningKey::from_bytes(&secret))
            .filter(|key| key.verifying_key().to_bytes().as_slice() == last.public_key);
        Ok(match opened {
            Some(key) => Ok(InForce {
                generation: last.generation,
                key,
                handed_over_at: last.handed_over_at,
            }),
            None => Err(format!(
                "the private key of audit key generation {} (key {}), which tree head {} handed over to, is missing or does not open",
                last.generation,
                last.key_id,
                last.handed_over_at.unwrap_or_default()
            )),
        })
    }

    /// A new random key for `generation`, and its private key sealed for storage.
    pub(crate) fn create(&self, generation: i32) -> (SigningKey, Vec<u8>) {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let key = SigningKey::from_bytes(&secret);
        let sealed = self.seal(generation, &key);
        (key, sealed)
    }

    /// `key`'s private half sealed for storage as `generation` (an imported key in force).
    pub(crate) fn seal(&self, generation: i32, key: &SigningKey) -> Vec<u8> {
        seal(
            self.sealing.expose_secret(),
            key.as_bytes(),
            &self.binding(generation),
        )
    }
}
