//! Per-subject data keys (crypto-shredding): every record and every user has a random 256-bit
//! key that encrypts the personal content of its events. Keys are stored in the tenant
//! database wrapped by the tenant's key (derived from the master key, never stored), bound to
//! the subject's id. Destroying a subject's key makes its events unreadable everywhere at once.

use std::collections::HashMap;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use sqlx::PgPool;
use uuid::Uuid;

use crate::infra::caches::{Cache, Hearing, Ticket};

/// How many unwrapped keys a tenant's context keeps, and for how long each at most (the
/// announcement of an erasure is what really drops one).
const CACHED_KEYS: usize = 8_192;
const KEY_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// A subject's data key, in memory while events are sealed or opened, and in its tenant's
/// cache until the subject is erased.
pub(crate) type DataKey = SecretBox<[u8; 32]>;

const NONCE: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("a wrapped data key does not open: the master key differs or the key was altered")]
    Unwrap,
    #[error("the data subject was erased")]
    Erased,
}

/// Seals `plain` under `key`, bound to `aad`: nonce followed by ciphertext and tag.
pub(crate) fn seal(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
    let sealed = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 encrypts any message of this size");
    [nonce.as_slice(), &sealed].concat()
}

/// Opens what [`seal`] made; `None` if the key, the binding or the bytes differ.
pub(crate) fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// A second copy of a key (each copy is wiped when dropped).
fn copy(key: &DataKey) -> DataKey {
    SecretBox::new(Box::new(*key.expose_secret()))
}

/// A new key for a subject whose first events are being appended, wrapped for storage: the
/// statement that appends the events stores it, and appends nothing if the subject has a key
/// already ([`SubjectKeys::offer`]).
pub(crate) struct OfferedKey {
    pub(crate) subject: Uuid,
    pub(crate) wrapped: Vec<u8>,
    key: DataKey,
}

/// Keys for sealing the first events of new subjects: the cached ones, and a new one offered
/// for each subject none is cached for.
pub(crate) struct Offer {
    pub(crate) keys: HashMap<Uuid, DataKey>,
    pub(crate) offered: Vec<OfferedKey>,
    ticket: Ticket,
}

/// The subject keys of one tenant.
pub struct SubjectKeys {
    pool: PgPool,
    /// The tenant's key-encryption key.
    kek: SecretBox<[u8; 32]>,
    /// Keys unwrapped before, until their subject is erased (by any instance: see
    /// [`crate::infra::caches`]); used only in a context that hears its database.
    cache: Cache<Uuid, Arc<DataKey>>,
}

fn wrap_binding(subject: Uuid) -> Vec<u8> {
    [b"custos/subject-key/".as_slice(), subject.as_bytes()].concat()
}

impl SubjectKeys {
    pub(crate) fn new(pool: PgPool, kek: SecretBox<[u8; 32]>, hearing: Arc<Hearing>) -> Self {
        Self {
            pool,
            kek,
            cache: Cache::new(CACHED_KEYS, hearing),
        }
    }

    /// Drops every cached key (an erasure was announced, or the context stopped hearing).
    pub fn forget_cached(&self) {
        self.cache.clear();
    }

    /// Wraps a subject's key for storage under this tenant's key (an imported key).
    pub(crate) fn wrap(&self, subject: Uuid, key: &[u8; 32]) -> Vec<u8> {
        seal(self.kek.expose_secret(), key, &wrap_binding(subject))
    }

    pub(crate) fn unwrap_key(&self, subject: Uuid, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let plain = open(self.kek.expose_secret(), wrapped, &wrap_binding(subject))
            .ok_or(KeyError::Unwrap)?;
        let key: [u8; 32] = plain.try_into().map_err(|_| KeyError::Unwrap)?;
        Ok(SecretBox::new(Box::new(key)))
    }

    /// The cached keys of `subjects`, and the subjects whose key is not cached.
    fn cached(&self, subjects: &[Uuid]) -> (HashMap<Uuid, DataKey>, Vec<Uuid>) {
        let mut keys = HashMap::with_capacity(subjects.len());
        let mut missing = Vec::new();
        for subject in subjects {
            match self.cache.get(subject) {
                Some(key) => {
                    keys.insert(*subject, copy(&key));
                }
                None => missing.push(*subject),
            }
        }
        (keys, missing)
    }

    /// The keys of `subjects` that exist and are not erased.
    pub async fn for_reading(&self, subjects: &[Uuid]) -> Result<HashMap<Uuid, DataKey>, KeyError> {
        let mut conn = self.pool.acquire().await?;
        self.for_reading_on(&mut conn, subjects).await
    }

    /// [`Self::for_reading`] on a connection the caller holds (a projector's transaction: taking
    /// a second pooled connection there could exhaust the pool with every projector waiting).
    pub async fn for_reading_on(
        &self,
        conn: &mut sqlx::PgConnection,
        subjects: &[Uuid],
    ) -> Result<HashMap<Uuid, DataKey>, KeyError> {
        let cache = &self.cache;
        let (mut keys, missing) = self.cached(subjects);
        if missing.is_empty() {
            return Ok(keys);
        }
        let ticket = cache.ticket();
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT subject_id, wrapped_key FROM subject_keys
             WHERE subject_id = ANY($1) AND wrapped_key IS NOT NULL",
        )
        .bind(&missing)
        .fetch_all(conn)
        .await?;
        for (subject, wrapped) in rows {
            let key = self.unwrap_key(subject, &wrapped)?;
            cache.put(ticket, subject, Arc::new(copy(&key)), KEY_FRESH_FOR);
            keys.insert(subject, key);
        }
        Ok(keys)
    }

    /// Destroys a subject's key: its sealed events can never be opened again. False if it had
    /// no key left (erased before, or never written).
    pub async fn erase(&self, subject: Uuid) -> Result<bool, KeyError> {
        let erased = sqlx::query(
            "UPDATE subject_keys SET wrapped_key = NULL, erased_at = now()
             WHERE subject_id = $1 AND wrapped_key IS NOT NULL",
        )
        .bind(subject)
        .execute(&self.pool)
        .await?;
        self.cache.forget(&subject);
        Ok(erased.rows_affected() == 1)
    }

    /// A new key for `subject`, and the same wrapped for storage.
    fn new_key(&self, subject: Uuid) -> (DataKey, Vec<u8>) {
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        rand::rngs::OsRng.fill_bytes(key.expose_secret_mut());
        let wrapped = seal(
            self.kek.expose_secret(),
            key.expose_secret(),
            &wrap_binding(subject),
        );
        (key, wrapped)
    }

    /// Keys to seal the first events of new `subjects` with, without a statement: a cached
    /// key where there is one, else a new key offered. Whoever stores an offered key must
    /// store the events sealed with it in the same statement, and only if the key is stored
    /// (a subject that turns out to have a key already, or another writer's new one, keeps
    /// it; the events are then sealed again with [`Self::for_writing`]), and then hand the
    /// offer back to [`Self::kept`].
    pub(crate) fn offer(&self, subjects: &[Uuid]) -> Offer {
        let ticket = self.cache.ticket();
        let (mut keys, missing) = self.cached(subjects);
        let offered = missing
            .into_iter()
            .map(|subject| {
                let (key, wrapped) = self.new_key(subject);
                keys.insert(subject, copy(&key));
                OfferedKey {
                    subject,
                    wrapped,
                    key,
                }
            })
            .collect();
        Offer {
            keys,
            offered,
            ticket,
        }
    }

    /// Caches the keys of an [`Offer`] once the statement that stored them has committed.
    pub(crate) fn kept(&self, offer: Offer) {
        for offered in offer.offered {
            self.cache.put(
                offer.ticket,
                offered.subject,
                Arc::new(offered.key),
                KEY_FRESH_FOR,
            );
        }
    }

    /// The keys of `subjects`, created for those that have none; `Erased` if any was erased.
    ///
    /// Keys not cached are created and read in one statement: a new key is offered for each,
    /// kept where the subject has none, and the stored key answered where it has one (a new
    /// record's key costs one statement, not a read, an insert and a read again).
    pub async fn for_writing(&self, subjects: &[Uuid]) -> Result<HashMap<Uuid, DataKey>, KeyError> {
        let (mut keys, missing) = self.cached(subjects);
        if missing.is_empty() {
            return Ok(keys);
        }
        let wrapped: Vec<Vec<u8>> = missing
            .iter()
            .map(|subject| self.new_key(*subject).1)
            .collect();
        let ticket = self.cache.ticket();
        // The second half reads the statement's snapshot, which holds no row the first half
        // inserted: each subject is answered once, or not at all if another writer's new key
        // is not in that snapshot (read again below). An erased subject answers no key.
        let rows: Vec<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "WITH created AS (
                 INSERT INTO subject_keys (subject_id, wrapped_key)
                 SELECT * FROM unnest($1::uuid[], $2::bytea[])
                 ON CONFLICT (subject_id) DO NOTHING
                 RETURNING subject_id, wrapped_key)
             SELECT subject_id, wrapped_key FROM created
             UNION ALL
             SELECT subject_id, wrapped_key FROM subject_keys WHERE subject_id = ANY($1)",
        )
        .bind(&missing)
        .bind(&wrapped)
        .fetch_all(&self.pool)
        .await?;
        for (subject, wrapped) in rows {
            let Some(wrapped) = wrapped else {
                return Err(KeyError::Erased);
            };
            let key = self.unwrap_key(subject, &wrapped)?;
            self.cache
                .put(ticket, subject, Arc::new(copy(&key)), KEY_FRESH_FOR);
            keys.insert(subject, key);
        }
        let unanswered: Vec<Uuid> = missing
            .into_iter()
            .filter(|s| !keys.contains_key(s))
            .collect();
        if !unanswered.is_empty() {
            let created = self.for_reading(&unanswered).await?;
            if created.len() != unanswered.len() {
                return Err(KeyError::Erased);
            }
            keys.extend(created);
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_key_and_binding() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"Ada Lovelace", b"record/1/1");
        assert_eq!(
            open(&key, &sealed, b"record/1/1").as_deref(),
            Some(&b"Ada Lovelace"[..])
        );
        assert_eq!(
            open(&key, &sealed, b"record/1/2"),
            None,
            "moved to another event"
        );
        assert_eq!(
            open(&[8u8; 32], &sealed, b"record/1/1"),
            None,
            "another key"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, &tampered, b"record/1/1"), None);
    }
}
