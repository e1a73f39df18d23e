//! The tenant archive's format (version 1): JSON lines, one entry per line, in a fixed order.
//!
//! 1. the header: format and version, the organisation, the public key its first tree heads
//!    were signed with, and how the archive key is kept: derived from a passphrase (Argon2id,
//!    version 1) or random and encrypted to the caller's age recipients (version 2, an
//!    ASCII-armored age file in the header: the server never holds what opens it);
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

use age::armor::{ArmoredReader, ArmoredWriter, Format};
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
/// The newest format version this build reads: an archive is written as the lowest version
/// that holds its key (so a passphrase archive is still read by builds that know version 1).
pub(crate) const VERSION: u32 = RECIPIENTS_VERSION;
/// The version of an archive whose key is derived from a passphrase.
const PASSPHRASE_VERSION: u32 = 1;
/// The version of an archive whose key is encrypted to age recipients.
const RECIPIENTS_VERSION: u32 = 2;
/// The most recipients an archive is encrypted to.
pub(crate) const MAX_RECIPIENTS: usize = 20;
/// The shortest passphrase an archive is written with.
pub(crate) const MIN_PASSPHRASE_CHARS: usize = 12;

/// Why an archive cannot be written or read. Nothing is created when reading fails.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a Custos tenant archive: {0}")]
    NotAnArchive(String),
    #[error("the archive is format version {0}; this Custos reads versions up to {VERSION}")]
    NewerVersion(u32),
    #[error("the passphrase does not open this archive")]
    WrongPassphrase,
    #[error(
        "none of the age identities given opens this archive: it is encrypted to other recipients"
    )]
    WrongIdentity,
    #[error("the identity file: {0}")]
    BadIdentity(String),
    #[error("{0}")]
    OpenedWrongly(&'static str),
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
    /// Version 1: how the archive key is derived from the passphrase …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<Kdf>,
    /// … version 2: the archive key encrypted to the caller's age recipients, as an
    /// ASCII-armored age file (`age --decrypt -i KEY` opens it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_wrapped_key: Option<String>,
    /// HMAC under the archive key: tells a wrong passphrase before anything is read.
    #[serde(with = "hex::serde")]
    pub key_check: Vec<u8>,
}

impl Header {
    /// A header's version and key fields for `lock`.
    pub(crate) fn key_fields(lock: KeyLock) -> (u32, Option<Kdf>, Option<String>) {
        match lock {
            KeyLock::Passphrase(kdf) => (PASSPHRASE_VERSION, Some(kdf), None),
            KeyLock::Recipients(wrapped) => (RECIPIENTS_VERSION, None, Some(wrapped)),
        }
    }

    /// How the archive's key is kept, as its version says.
    pub(crate) fn lock(&self) -> Result<KeyLock, ArchiveError> {
        match (self.version, &self.kdf, &self.age_wrapped_key) {
            (PASSPHRASE_VERSION, Some(kdf), None) => Ok(KeyLock::Passphrase(kdf.clone())),
            (RECIPIENTS_VERSION, None, Some(wrapped)) => Ok(KeyLock::Recipients(wrapped.clone())),
            _ => Err(ArchiveError::NotAnArchive(
                "its header does not say how its key is kept, as its version has it".into(),
            )),
        }
    }
}

/// How an archive's key is kept in its header (and with a download link until it is opened).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyLock {
    /// Derived from a passphrase with these settings.
    Passphrase(Kdf),
    /// Random, encrypted to age recipients: an ASCII-armored age file.
    Recipients(String),
}

/// Who can open an archive about to be written.
pub enum Protection {
    /// Whoever knows the passphrase (at least [`MIN_PASSPHRASE_CHARS`] characters).
    Passphrase(SecretString),
    /// Whoever holds the identity of one of these age X25519 recipients (`age1…`, as
    /// `age-keygen` prints them): the server never has it.
    Recipients(Vec<age::x25519::Recipient>),
}

impl Protection {
    /// Whether an archive can be written under it: a passphrase long enough, or at least one
    /// recipient.
    pub(crate) fn check(&self) -> Result<(), ArchiveError> {
        match self {
            Self::Passphrase(passphrase) if passphrase_chars(passphrase) < MIN_PASSPHRASE_CHARS => {
                Err(ArchiveError::WeakPassphrase)
            }
            Self::Recipients(recipients) if recipients.is_empty() => Err(ArchiveError::Refused(
                "an archive needs a passphrase or at least one recipient".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// How many characters a passphrase has.
pub(crate) fn passphrase_chars(passphrase: &SecretString) -> usize {
    passphrase.expose_secret().chars().count()
}

/// What opens an archive.
pub enum Opener {
    Passphrase(SecretString),
    /// The text of an age identity file: `AGE-SECRET-KEY-1…` lines, as `age-keygen` writes it.
    Identities(SecretString),
}

/// The age X25519 recipients (`age1…`) in `texts`; else what is wrong, naming the first
/// recipient that is not one by its place (1 for the first).
pub(crate) fn recipients(texts: &[String]) -> Result<Vec<age::x25519::Recipient>, String> {
    if texts.len() > MAX_RECIPIENTS {
        return Err(format!(
            "an archive is encrypted to at most {MAX_RECIPIENTS} recipients"
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.trim().parse().map_err(|_| {
                format!(
                    "recipient {} is not an age X25519 recipient (age1…, as age-keygen prints it)",
                    i + 1
                )
            })
        })
        .collect()
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
    /// The sealing and authenticating keys of the archive key `root`.
    fn from_root(root: &[u8; 32]) -> Self {
        Self {
            seal: SecretBox::new(Box::new(hmac(root, b"custos-archive/seal"))),
            mac: SecretBox::new(Box::new(hmac(root, b"custos-archive/mac"))),
        }
    }

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
        Ok(Self::from_root(root.expose_secret()))
    }

    /// A random archive key and its lock: the key encrypted to `recipients` (at least one).
    pub(crate) fn for_recipients(
        recipients: &[age::x25519::Recipient],
    ) -> Result<(Self, KeyLock), ArchiveError> {
        use std::io::Write;
        let mut root = SecretBox::new(Box::new([0u8; 32]));
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, root.expose_secret_mut());
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| ArchiveError::Refused(format!("encrypting the archive key: {e}")))?;
        let mut armored = Vec::new();
        let armor = ArmoredWriter::wrap_output(&mut armored, Format::AsciiArmor)?;
        let mut writer = encryptor.wrap_output(armor)?;
        writer.write_all(root.expose_secret())?;
        writer.finish()?.finish()?;
        let armored = String::from_utf8(armored)
            .map_err(|_| ArchiveError::Refused("age's armor is not text".into()))?;
        Ok((
            Self::from_root(root.expose_secret()),
            KeyLock::Recipients(armored),
        ))
    }

    /// The key `lock` keeps, opened with `opener` (a passphrase's key derivation takes about a
    /// second of a core: run it off the async threads).
    pub(crate) fn unlock(lock: &KeyLock, opener: &Opener) -> Result<Self, ArchiveError> {
        match (lock, opener) {
            (KeyLock::Passphrase(kdf), Opener::Passphrase(passphrase)) => {
                Self::derive(passphrase, kdf)
            }
            (KeyLock::Recipients(wrapped), Opener::Identities(file)) => {
                Self::unwrap(wrapped, file)
            }
            (KeyLock::Passphrase(_), Opener::Identities(_)) => Err(ArchiveError::OpenedWrongly(
                "this archive is locked with a passphrase, not to age recipients: give its passphrase",
            )),
            (KeyLock::Recipients(_), Opener::Passphrase(_)) => Err(ArchiveError::OpenedWrongly(
                "this archive is locked to age recipients, not with a passphrase: give one of their identities (--identity FILE)",
            )),
        }
    }

    /// The key in `wrapped` (an armored age file), decrypted with an identity of
    /// `identity_file`. Nothing of the file's text goes into an error.
    fn unwrap(wrapped: &str, identity_file: &SecretString) -> Result<Self, ArchiveError> {
        use std::io::Read;
        let identities = age::IdentityFile::from_buffer(identity_file.expose_secret().as_bytes())
            .ok()
            .and_then(|file| file.into_identities().ok())
            .ok_or_else(|| {
                ArchiveError::BadIdentity(
                    "it is not an age identity file (AGE-SECRET-KEY-1… lines, as age-keygen writes them)".into(),
                )
            })?;
        if identities.is_empty() {
            return Err(ArchiveError::BadIdentity("it holds no identity".into()));
        }
        let not_a_key =
            |e: &dyn std::fmt::Display| ArchiveError::NotAnArchive(format!("its key: {e}"));
        let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(wrapped.as_bytes()))
            .map_err(|e| not_a_key(&e))?;
        let mut reader = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref()))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => ArchiveError::WrongIdentity,
                other => not_a_key(&other),
            })?;
        let mut root = SecretBox::new(Box::new([0u8; 32]));
        reader
            .read_exact(root.expose_secret_mut())
            .map_err(|e| not_a_key(&e))?;
        let mut rest = [0u8; 1];
        if reader.read(&mut rest).map_err(|e| not_a_key(&e))? != 0 {
            return Err(not_a_key(&"it is longer than a key"));
        }
        Ok(Self::from_root(root.expose_secret()))
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

    /// `identity`'s file, as `age-keygen -o FILE` writes it.
    fn identity_file(identity: &age::x25519::Identity) -> Opener {
        Opener::Identities(SecretString::from(format!(
            "# created: 2026-12-06T19:00:00+00:00\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        )))
    }

    #[test]
    fn a_key_encrypted_to_recipients_opens_with_any_of_their_identities_only() {
        let [alice, bob, eve] = [(); 3].map(|()| age::x25519::Identity::generate());
        let organization = Uuid::now_v7();
        let (key, lock) =
            ArchiveKey::for_recipients(&[alice.to_public(), bob.to_public()]).unwrap();
        let check = key.key_check(organization);
        for identity in [&alice, &bob] {
            let opened = ArchiveKey::unlock(&lock, &identity_file(identity)).unwrap();
            assert!(opened.checks(organization, &check));
            let sealed = key.seal(b"secret", "a");
            assert_eq!(opened.open(&sealed, "a").as_deref(), Some(&b"secret"[..]));
        }
        assert!(matches!(
            ArchiveKey::unlock(&lock, &identity_file(&eve)),
            Err(ArchiveError::WrongIdentity)
        ));
        assert!(matches!(
            ArchiveKey::unlock(&lock, &Opener::Passphrase("a long passphrase".into())),
            Err(ArchiveError::OpenedWrongly(_))
        ));
        // Not an identity file: told without a word of it.
        let Err(err) = ArchiveKey::unlock(&lock, &Opener::Identities("a long passphrase\n".into()))
        else {
            panic!("a passphrase opened an archive encrypted to recipients");
        };
        assert!(matches!(err, ArchiveError::BadIdentity(_)));
        assert!(!err.to_string().contains("passphrase"), "{err}");
        // Every archive has a key of its own.
        let (other, _) = ArchiveKey::for_recipients(&[alice.to_public()]).unwrap();
        assert!(!other.checks(organization, &check));
        // A passphrase archive is not opened by an identity.
        assert!(matches!(
            ArchiveKey::unlock(&KeyLock::Passphrase(quick_kdf()), &identity_file(&alice)),
            Err(ArchiveError::OpenedWrongly(_))
        ));
    }

    #[test]
    fn a_header_keeps_its_key_as_its_version_says() {
        let header = |version, kdf: Option<Kdf>, wrapped: Option<&str>| Header {
            format: FORMAT.into(),
            version,
            created_at: Utc::now(),
            written_by: "custos test".into(),
            organization: OrganizationEntry {
                id: Uuid::now_v7(),
                slug: "acme".into(),
                name: "Acme".into(),
                region: "eu".into(),
                status: "active".into(),
                plan: "basic".into(),
                trial_ends_at: None,
            },
            audit_anchor: vec![0; 32],
            kdf,
            age_wrapped_key: wrapped.map(str::to_owned),
            key_check: vec![],
        };
        let (_, lock) =
            ArchiveKey::for_recipients(&[age::x25519::Identity::generate().to_public()]).unwrap();
        for lock in [KeyLock::Passphrase(quick_kdf()), lock] {
            let (version, kdf, wrapped) = Header::key_fields(lock.clone());
            let read = header(version, kdf, wrapped.as_deref()).lock().unwrap();
            assert_eq!(
                serde_json::to_value(&read).unwrap(),
                serde_json::to_value(&lock).unwrap()
            );
        }
        for (version, kdf, wrapped) in [
            (1, None, Some("-----BEGIN AGE ENCRYPTED FILE-----")),
            (2, Some(quick_kdf()), None),
            (
                1,
                Some(quick_kdf()),
                Some("-----BEGIN AGE ENCRYPTED FILE-----"),
            ),
            (2, None, None),
        ] {
            assert!(matches!(
                header(version, kdf, wrapped).lock(),
                Err(ArchiveError::NotAnArchive(_))
            ));
        }
    }

    #[test]
    fn recipients_are_checked_and_a_wrong_one_named_by_its_place() {
        let one = age::x25519::Identity::generate().to_public().to_string();
        assert_eq!(recipients(&[format!(" {one}\n")]).unwrap().len(), 1);
        let wrong = recipients(&[one.clone(), "age1notakey".into()]).unwrap_err();
        assert!(wrong.contains("recipient 2 "), "{wrong}");
        assert!(recipients(&vec![one; MAX_RECIPIENTS + 1])
            .unwrap_err()
            .contains("at most"));
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
