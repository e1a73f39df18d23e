//! The tenant archive's format (version 1): JSON lines, one entry per line, in a fixed order.
//!
//! 1. the header: format and version, the organisation, the public key its first tree heads
//!    were signed with, and how the archive key is derived from the passphrase (Argon2id);
//! 2. the checkpoints from before the Merkle log, the signed tree heads (with their frontiers)
//!    and the private key in force, sealed under the archive key;
//! 3. every event exactly as stored — payload and metadata as their stored JSON text, hashes,
//!    time — in the commit order the Merkle log signed, with its transaction and position;
//! 4. every subject key (sealed under the archive key; an erased subject's entry has no key),
//!    two-factor secrets (sealed), recovery-code hashes, and the record of who read whom;
//! 5. the manifest: per kind of entry, how many and the SHA-256 of their lines, authenticated
//!    with an HMAC under the archive key.
//!
//! Read models, sessions and download links are not in it: they are rebuilt or start anew.

use std::collections::BTreeMap;

use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::infra::integrity::checkpoint::Checkpoint;
use crate::infra::integrity::tree_head::{hex_option, TreeHead};
use crate::infra::subject_keys::{open, seal};

pub(crate) const FORMAT: &str = "custos-tenant-archive";
pub(crate) const VERSION: u32 = 1;
/// The shortest passphrase an archive is written with.
pub(crate) const MIN_PASSPHRASE_CHARS: usize = 12;

/// Why an archive cannot be written or read. Nothing is created when reading fails.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a Custos tenant archive: {0}")]
    NotAnArchive(String),
    #[error("the archive is format version {0}; this Custos reads version {VERSION} only")]
    NewerVersion(u32),
    #[error("the passphrase does not open this archive")]
    WrongPassphrase,
    #[error("the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters long")]
    WeakPassphrase,
    #[error("the archive is truncated: it ends at line {0} without its manifest")]
    Truncated(u64),
    #[error("line {line} of the archive: {reason}")]
    Malformed { line: u64, reason: String },
    #[error("the archive was altered: {0}")]
    Altered(String),
    #[error("the archive does not verify: {}", .0.join("; "))]
    DoesNotVerify(Vec<String>),
    #[error("an organisation with the slug `{0}` already exists here")]
    SlugTaken(String),
    #[error("this organisation ({0}) already exists here")]
    IdTaken(Uuid),
    #[error("{0}")]
    Refused(String),
    #[error("reading or writing the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    pub format: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    /// The Custos version that wrote it.
    pub written_by: String,
    pub organization: OrganizationEntry,
    /// Generation 0 of the organisation's signing key: where its hand-overs start.
    #[serde(with = "hex::serde")]
    pub audit_anchor: Vec<u8>,
    pub kdf: Kdf,
    /// HMAC under the archive key: tells a wrong passphrase before anything is read.
    #[serde(with = "hex::serde")]
    pub key_check: Vec<u8>,
}

/// The organisation as the catalog lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrganizationEntry {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub region: String,
    pub status: String,
    pub plan: String,
    pub trial_ends_at: Option<DateTime<Utc>>,
}

/// How the archive key is derived from the passphrase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Kdf {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    #[serde(with = "hex::serde")]
    pub salt: Vec<u8>,
}

impl Kdf {
    /// Argon2id with 64 MiB, 3 passes (RFC 9106's second recommended setting, one lane) and
    /// a random salt.
    pub(crate) fn new() -> Self {
        let mut salt = vec![0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        Self {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt,
        }
    }

    /// The settings as Argon2 parameters, refused outside sane bounds (an archive must not be
    /// able to make its reader spend gigabytes or minutes).
    fn params(&self) -> Result<Params, ArchiveError> {
        let sane = self.algorithm == "argon2id"
            && (8 * 1024..=1024 * 1024).contains(&self.memory_kib)
            && (1..=16).contains(&self.iterations)
            && (1..=8).contains(&self.parallelism)
            && (16..=64).contains(&self.salt.len());
        if !sane {
            return Err(ArchiveError::NotAnArchive(
                "its key derivation settings are not ones Custos writes".into(),
            ));
        }
        Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| ArchiveError::NotAnArchive(format!("key derivation: {e}")))
    }
}

/// The keys of one archive, derived from its passphrase.
pub(crate) struct ArchiveKey {
    seal: SecretBox<[u8; 32]>,
    mac: SecretBox<[u8; 32]>,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl ArchiveKey {
    /// Derives the archive key (Argon2id: about a second of one core, on purpose; run it off
    /// the async threads).
    pub(crate) fn derive(passphrase: &SecretString, kdf: &Kdf) -> Result<Self, ArchiveError> {
        let params = kdf.params()?;
        let mut root = SecretBox::new(Box::new([0u8; 32]));
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(
                passphrase.expose_secret().as_bytes(),
                &kdf.salt,
                root.expose_secret_mut(),
            )
            .map_err(|e| ArchiveError::NotAnArchive(format!("key derivation: {e}")))?;
        let root = root.expose_secret();
        Ok(Self {
            seal: SecretBox::new(Box::new(hmac(root, b"custos-archive/seal"))),
            mac: SecretBox::new(Box::new(hmac(root, b"custos-archive/mac"))),
        })
    }

    /// The key's two halves (sealing, authenticating), to be kept sealed until a download
    /// link is opened.
    pub(crate) fn to_parts(&self) -> [u8; 64] {
        let mut parts = [0u8; 64];
        parts[..32].copy_from_slice(self.seal.expose_secret());
        parts[32..].copy_from_slice(self.mac.expose_secret());
        parts
    }

    /// The key from [`ArchiveKey::to_parts`].
    pub(crate) fn from_parts(parts: &[u8]) -> Option<Self> {
        let seal: [u8; 32] = parts.get(..32)?.try_into().ok()?;
        let mac: [u8; 32] = parts.get(32..64)?.try_into().ok()?;
        (parts.len() == 64).then(|| Self {
            seal: SecretBox::new(Box::new(seal)),
            mac: SecretBox::new(Box::new(mac)),
        })
    }

    /// What the header carries to tell a wrong passphrase, bound to the organisation.
    pub(crate) fn key_check(&self, organization: Uuid) -> Vec<u8> {
        hmac(
            self.mac.expose_secret(),
            format!("custos-archive/key-check/{organization}").as_bytes(),
        )
        .to_vec()
    }

    /// Whether `tag` is [`ArchiveKey::key_check`] (in constant time).
    pub(crate) fn checks(&self, organization: Uuid, tag: &[u8]) -> bool {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.mac.expose_secret())
            .expect("HMAC takes any key");
        mac.update(format!("custos-archive/key-check/{organization}").as_bytes());
        mac.verify_slice(tag).is_ok()
    }

    /// Seals a secret for the archive, bound to what it is.
    pub(crate) fn seal(&self, plain: &[u8], binding: &str) -> Vec<u8> {
        seal(self.seal.expose_secret(), plain, binding.as_bytes())
    }

    /// Opens what [`ArchiveKey::seal`] sealed with the same binding.
    pub(crate) fn open(&self, sealed: &[u8], binding: &str) -> Option<Vec<u8>> {
        open(self.seal.expose_secret(), sealed, binding.as_bytes())
    }

    fn manifest_mac(&self, body: &ManifestBody) -> Vec<u8> {
        let bytes = serde_json::to_vec(body).expect("a manifest serialises");
        hmac(self.mac.expose_secret(), &bytes).to_vec()
    }
}

/// Binding of a sealed secret in the archive: what it is, of which organisation.
pub(crate) fn binding(organization: Uuid, what: &str, id: impl std::fmt::Display) -> String {
    format!("custos-archive/{organization}/{what}/{id}")
}

/// Every line after the header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    LegacyCheckpoint(Checkpoint),
    TreeHead(HeadEntry),
    AuditKey(AuditKeyEntry),
    Event(EventEntry),
    SubjectKey(SubjectKeyEntry),
    TwoFactorSecret(TwoFactorEntry),
    RecoveryCode(RecoveryCodeEntry),
    RecordRead(RecordReadEntry),
    ListRead(ListReadEntry),
    Manifest(Manifest),
}

impl Entry {
    /// The entry's kind, as the manifest counts it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::LegacyCheckpoint(_) => "legacy_checkpoint",
            Self::TreeHead(_) => "tree_head",
            Self::AuditKey(_) => "audit_key",
            Self::Event(_) => "event",
            Self::SubjectKey(_) => "subject_key",
            Self::TwoFactorSecret(_) => "two_factor_secret",
            Self::RecoveryCode(_) => "recovery_code",
            Self::RecordRead(_) => "record_read",
            Self::ListRead(_) => "list_read",
            Self::Manifest(_) => "manifest",
        }
    }

    /// Where its kind comes in the file: entries never go back to an earlier kind.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Self::LegacyCheckpoint(_) => 0,
            Self::TreeHead(_) => 1,
            Self::AuditKey(_) => 2,
            Self::Event(_) => 3,
            Self::SubjectKey(_) => 4,
            Self::TwoFactorSecret(_) => 5,
            Self::RecoveryCode(_) => 6,
            Self::RecordRead(_) => 7,
            Self::ListRead(_) => 8,
            Self::Manifest(_) => 9,
        }
    }
}

/// A signed tree head and the frontier stored with it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HeadEntry {
    #[serde(flatten)]
    pub head: TreeHead,
    #[serde(with = "hex::serde")]
    pub frontier: Vec<u8>,
}

/// The private key in force, sealed under the archive key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuditKeyEntry {
    pub generation: i32,
    #[serde(with = "hex::serde")]
    pub public_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub sealed_secret: Vec<u8>,
}

/// An event exactly as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EventEntry {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The stored JSON text, byte for byte (the hash covers it).
    pub payload: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_option")]
    pub prev_hash: Option<Vec<u8>>,
    #[serde(with = "hex::serde")]
    pub hash: Vec<u8>,
    /// Where it was: the writing transaction and the position (their order is the line order).
    pub transaction_id: i64,
    pub position: i64,
    /// Covered by the newest checkpoint from before the Merkle log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_covered: bool,
}

/// A subject's data key, sealed under the archive key; none for an erased subject.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SubjectKeyEntry {
    pub subject: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_option")]
    pub sealed_key: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<DateTime<Utc>>,
}

/// A user's TOTP secret, sealed under the archive key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TwoFactorEntry {
    pub user: Uuid,
    #[serde(with = "hex::serde")]
    pub sealed_secret: Vec<u8>,
    pub last_step: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub(crate) struct RecoveryCodeEntry {
    #[sqlx(rename = "user_id")]
    pub user: Uuid,
    #[serde(with = "hex::serde")]
    pub code_hash: Vec<u8>,
    pub used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub(crate) struct RecordReadEntry {
    pub record_id: Uuid,
    pub read_at: DateTime<Utc>,
    pub actor_id: Uuid,
    pub actor_kind: String,
    pub request_id: Uuid,
    pub via: String,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub(crate) struct ListReadEntry {
    pub read_at: DateTime<Utc>,
    pub actor_id: Uuid,
    pub actor_kind: String,
    pub request_id: Uuid,
    pub via: String,
    pub record_ids: Vec<Uuid>,
}

/// The last line: per kind, how many entries and the SHA-256 of their lines; authenticated.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    #[serde(flatten)]
    pub body: ManifestBody,
    #[serde(with = "hex::serde")]
    pub mac: Vec<u8>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestBody {
    #[serde(with = "hex::serde")]
    pub header_sha256: Vec<u8>,
    pub counts: BTreeMap<String, u64>,
    pub sha256: BTreeMap<String, String>,
}

/// Keeps the manifest while lines are written or read.
#[derive(Default)]
pub(crate) struct Tally {
    header: Option<[u8; 32]>,
    kinds: BTreeMap<&'static str, (u64, Sha256)>,
}

impl Tally {
    pub(crate) fn header(&mut self, line: &[u8]) {
        self.header = Some(Sha256::digest(line).into());
    }

    pub(crate) fn line(&mut self, kind: &'static str, line: &[u8]) {
        let (count, hasher) = self.kinds.entry(kind).or_default();
        *count += 1;
        hasher.update(line);
    }

    pub(crate) fn body(&self) -> ManifestBody {
        ManifestBody {
            header_sha256: self.header.map(|h| h.to_vec()).unwrap_or_default(),
            counts: self
                .kinds
                .iter()
                .map(|(kind, (count, _))| ((*kind).to_owned(), *count))
                .collect(),
            sha256: self
                .kinds
                .iter()
                .map(|(kind, (_, hasher))| {
                    ((*kind).to_owned(), hex::encode(hasher.clone().finalize()))
                })
                .collect(),
        }
    }

    /// The manifest line's entry for what was tallied.
    pub(crate) fn manifest(&self, key: &ArchiveKey) -> Manifest {
        let body = self.body();
        let mac = key.manifest_mac(&body);
        Manifest { body, mac }
    }

    /// Checks a read manifest against what was read: its MAC first (an altered manifest), then
    /// every kind's count and digest (altered, added or removed lines).
    pub(crate) fn check(&self, manifest: &Manifest, key: &ArchiveKey) -> Result<(), ArchiveError> {
        let expected = key.manifest_mac(&manifest.body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            manifest.mac.as_slice(),
        )) {
            return Err(ArchiveError::Altered(
                "the manifest's authentication code does not verify".into(),
            ));
        }
        let read = self.body();
        if read.header_sha256 != manifest.body.header_sha256 {
            return Err(ArchiveError::Altered("the header was changed".into()));
        }
        let kinds: std::collections::BTreeSet<&String> = read
            .counts
            .keys()
            .chain(manifest.body.counts.keys())
            .collect();
        for kind in kinds {
            let (count, listed) = (read.counts.get(kind), manifest.body.counts.get(kind));
            if count != listed {
                return Err(ArchiveError::Altered(format!(
                    "the manifest lists {} `{kind}` entries; the archive holds {}",
                    listed.copied().unwrap_or(0),
                    count.copied().unwrap_or(0)
                )));
            }
            if read.sha256.get(kind) != manifest.body.sha256.get(kind) {
                return Err(ArchiveError::Altered(format!(
                    "the `{kind}` entries are not the ones the manifest lists"
                )));
            }
        }
        Ok(())
    }
}

/// One line of JSON with its newline.
pub(crate) fn line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("archive entries serialise");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick_kdf() -> Kdf {
        Kdf {
            memory_kib: 8 * 1024,
            iterations: 1,
            ..Kdf::new()
        }
    }

    #[test]
    fn the_key_check_tells_a_wrong_passphrase() {
        let kdf = quick_kdf();
        let organization = Uuid::now_v7();
        let right = ArchiveKey::derive(&SecretString::from("a long passphrase"), &kdf).unwrap();
        let wrong = ArchiveKey::derive(&SecretString::from("another passphrase"), &kdf).unwrap();
        let check = right.key_check(organization);
        assert!(right.checks(organization, &check));
        assert!(!wrong.checks(organization, &check));
        assert!(
            !right.checks(Uuid::now_v7(), &check),
            "bound to the organisation"
        );
        let sealed = right.seal(b"secret", "a");
        assert_eq!(right.open(&sealed, "a").as_deref(), Some(&b"secret"[..]));
        assert_eq!(right.open(&sealed, "b"), None);
        assert_eq!(wrong.open(&sealed, "a"), None);
    }

    #[test]
    fn the_manifest_notices_a_changed_added_or_removed_line() {
        let kdf = quick_kdf();
        let key = ArchiveKey::derive(&SecretString::from("a long passphrase"), &kdf).unwrap();
        let mut written = Tally::default();
        written.header(b"header\n");
        written.line("event", b"one\n");
        written.line("event", b"two\n");
        let manifest = written.manifest(&key);
        let read = |lines: &[&[u8]]| {
            let mut tally = Tally::default();
            tally.header(b"header\n");
            for l in lines {
                tally.line("event", l);
            }
            tally.check(&manifest, &key)
        };
        assert!(read(&[b"one\n", b"two\n"]).is_ok());
        assert!(read(&[b"one\n", b"tw0\n"]).is_err());
        assert!(read(&[b"one\n"]).is_err());
        assert!(read(&[b"one\n", b"two\n", b"three\n"]).is_err());
        let mut forged = Manifest {
            body: manifest.body.clone(),
            mac: manifest.mac.clone(),
        };
        forged.body.counts.insert("event".into(), 3);
        let other = Tally::default();
        assert!(matches!(
            other.check(&forged, &key),
            Err(ArchiveError::Altered(reason)) if reason.contains("authentication code")
        ));
    }
}
