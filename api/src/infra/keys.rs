//! The master key, which lives outside the database (environment or a key file in the data
//! directory), and the keys derived from it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use uuid::Uuid;

/// The file, inside the data directory, that holds the master key when `CUSTOS_MASTER_KEY`
/// is not set.
pub(crate) const KEY_FILE: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the master key must be 64 hexadecimal characters (32 bytes)")]
    Malformed,
    #[error("cannot read or create the master key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A 256-bit master key. Every other secret Custos needs is derived from it with HMAC-SHA256
/// and a purpose label, so it is the one secret to back up and protect.
pub struct MasterKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// Parses 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| KeyError::Malformed)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    /// `CUSTOS_MASTER_KEY` when given, else the key file in `data_dir`, created (mode 0600,
    /// 32 random bytes) on first start.
    pub fn load(explicit: Option<&SecretString>, data_dir: &Path) -> Result<Self, KeyError> {
        if let Some(key) = explicit {
            return Self::from_hex(key.expose_secret());
        }
        let path = data_dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => Self::from_hex(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(io)?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut file = OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(hex::encode(key).as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), "created a new master key; back it up with the data");
                Ok(Self(SecretBox::new(Box::new(key))))
            }
            Err(err) => Err(io(err)),
        }
    }

    /// The key as 64 hexadecimal digits (sealed into each backup, never written in clear
    /// beside it).
    pub(crate) fn to_hex(&self) -> SecretString {
        SecretString::from(hex::encode(self.0.expose_secret()))
    }

    /// A 32-byte key for `purpose`; the same inputs always give the same key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The password of a tenant's database login role. Derived, so never stored anywhere.
    pub fn tenant_db_password(&self, tenant_id: Uuid) -> SecretString {
        SecretString::from(hex::encode(
            self.derive(&format!("custos/tenant-db-password/{tenant_id}")),
        ))
    }
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / RFC 7677, 4096
/// iterations, random salt), in PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`
/// form. `CREATE ROLE ... PASSWORD '<verifier>'` then never carries the password itself, so
/// no server log line can contain it.
pub(crate) fn scram_sha256_verifier(password: &SecretString) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use sha2::Digest;
    const ITERATIONS: u32 = 4096;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        password.expose_secret().as_bytes(),
        &salt,
        ITERATIONS,
        &mut salted,
    );
    let hmac = |key: &[u8], message: &[u8]| {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(message);
        mac.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = MasterKey::load(None, dir.path()).unwrap();
        let second = MasterKey::load(None, dir.path()).unwrap();
        assert_eq!(first.derive("x"), second.derive("x"));
        use std::os::unix::fs::MetadataExt;
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_tenant() {
        let key = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        assert_ne!(key.derive("a"), key.derive("b"));
        let (t1, t2) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(
            key.tenant_db_password(t1).expose_secret(),
            key.tenant_db_password(t2).expose_secret()
        );
    }

    #[test]
    fn scram_verifiers_have_postgres_shape_and_never_contain_the_password() {
        let password = SecretString::from("0123456789abcdef".to_owned());
        let verifier = scram_sha256_verifier(&password);
        let rest = verifier.strip_prefix("SCRAM-SHA-256$4096:").unwrap();
        let (salt, keys) = rest.split_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!((salt.len(), stored.len(), server.len()), (24, 44, 44));
        assert!(!verifier.contains(password.expose_secret()));
        assert_ne!(
            verifier,
            scram_sha256_verifier(&password),
            "a fresh salt each time"
        );
    }

    #[test]
    fn malformed_keys_are_refused_and_never_printed() {
        assert!(matches!(
            MasterKey::from_hex("abc"),
            Err(KeyError::Malformed)
        ));
        let key = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(!format!("{key:?}").contains("ab"));
    }
}
