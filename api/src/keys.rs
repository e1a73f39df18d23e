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
pub const KEY_FILE: &str = "master.key";

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
    fn malformed_keys_are_refused_and_never_printed() {
        assert!(matches!(
            MasterKey::from_hex("abc"),
            Err(KeyError::Malformed)
        ));
        let key = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(!format!("{key:?}").contains("ab"));
    }
}
