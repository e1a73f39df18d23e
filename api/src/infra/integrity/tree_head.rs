//! Signed tree heads: the Merkle log's root at a size, signed with the organisation's Ed25519
//! key, and the witness file in the data directory that keeps a copy of every one.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::checkpoint::Checkpoint;

/// A signed tree head (STH).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeHead {
    pub tenant_id: Uuid,
    /// 1, 2, 3… in the order they were signed.
    pub number: i64,
    /// How many events (leaves) the tree holds.
    pub tree_size: i64,
    /// How many streams those events belong to.
    pub streams: i64,
    pub created_at: DateTime<Utc>,
    /// The Merkle root, hex.
    #[serde(with = "hex::serde")]
    pub root: Vec<u8>,
    /// Names the signing key: the first 16 hex digits of SHA-256 over the public key.
    pub key_id: String,
    #[serde(with = "hex::serde")]
    pub public_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
    /// A hand-over: the public key that signs every later tree head (hex). Signed with the rest.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_option")]
    pub next_public_key: Option<Vec<u8>>,
}

/// `Option<Vec<u8>>` as an optional hex string.
pub(crate) mod hex_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| hex::decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The id of a public key.
pub(crate) fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

impl TreeHead {
    /// A tree head signed with `key`; a hand-over to `next` when given.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sign(
        key: &SigningKey,
        tenant_id: Uuid,
        number: i64,
        tree_size: i64,
        streams: i64,
        created_at: DateTime<Utc>,
        root: &[u8],
        next: Option<&VerifyingKey>,
    ) -> Self {
        let public_key = key.verifying_key().to_bytes().to_vec();
        let mut head = Self {
            tenant_id,
            number,
            tree_size,
            streams,
            created_at,
            root: root.to_vec(),
            key_id: key_id(&public_key),
            public_key,
            signature: Vec::new(),
            next_public_key: next.map(|k| k.to_bytes().to_vec()),
        };
        head.signature = key.sign(&head.message()).to_bytes().to_vec();
        head
    }

    /// What the signature covers (a hand-over adds a line naming the next key).
    fn message(&self) -> Vec<u8> {
        let mut message = format!(
            "custos-tree-head/1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.tenant_id,
            self.number,
            self.tree_size,
            self.streams,
            self.created_at.timestamp_micros(),
            hex::encode(&self.root),
            self.key_id,
        );
        if let Some(next) = &self.next_public_key {
            message.push_str(&format!("\nnext {} {}", key_id(next), hex::encode(next)));
        }
        message.into_bytes()
    }

    /// The key a hand-over names, if it is one (and the key is an Ed25519 key).
    pub fn next_key(&self) -> Option<VerifyingKey> {
        self.next_public_key.as_deref().and_then(verifying_key)
    }

    /// Whether `key` signed this tree head as it is.
    pub fn signed_by(&self, key: &VerifyingKey) -> bool {
        let Ok(signature) = <[u8; 64]>::try_from(self.signature.as_slice()) else {
            return false;
        };
        self.public_key == key.to_bytes()
            && self.key_id == key_id(&self.public_key)
            && key
                .verify(&self.message(), &Signature::from_bytes(&signature))
                .is_ok()
    }

    /// Whether the signature holds for the tree head's own public key.
    pub fn signature_holds(&self) -> bool {
        verifying_key(&self.public_key).is_some_and(|key| self.signed_by(&key))
    }
}

/// An Ed25519 public key from its 32 bytes, if they are one.
pub(crate) fn verifying_key(bytes: &[u8]) -> Option<VerifyingKey> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
}

/// The columns of `tree_heads` a [`TreeHead`] is read from ([`head_from_row`]).
pub(crate) const HEAD_COLUMNS: &str =
    "number, tree_size, streams, created_at, root, key_id, public_key, signature, next_public_key";

/// A tree head from a row holding [`HEAD_COLUMNS`].
pub(crate) fn head_from_row(
    tenant_id: Uuid,
    row: &sqlx::postgres::PgRow,
) -> sqlx::Result<TreeHead> {
    Ok(TreeHead {
        tenant_id,
        number: row.try_get("number")?,
        tree_size: row.try_get("tree_size")?,
        streams: row.try_get("streams")?,
        created_at: row.try_get("created_at")?,
        root: row.try_get("root")?,
        key_id: row.try_get("key_id")?,
        public_key: row.try_get("public_key")?,
        signature: row.try_get("signature")?,
        next_public_key: row.try_get("next_public_key")?,
    })
}

/// The hand-over heads before tree head `number`, oldest first: the chain from the first key
/// to the one that signed it.
pub(crate) async fn handovers_before(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    number: i64,
) -> sqlx::Result<Vec<TreeHead>> {
    let rows = sqlx::query(&format!(
        "SELECT {HEAD_COLUMNS} FROM tree_heads
         WHERE next_public_key IS NOT NULL AND number < $1 ORDER BY number"
    ))
    .bind(number)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| head_from_row(tenant_id, r)).collect()
}

/// What the witness file in the data directory holds: the checkpoints signed before the Merkle
/// log (their own line format) and every tree head since, in the order they were written.
#[derive(Debug, Default)]
pub struct Witness {
    pub(crate) checkpoints: Vec<Checkpoint>,
    pub(crate) tree_heads: Vec<TreeHead>,
}

/// Where a tenant's witness file is, under the data directory.
pub(crate) fn witness_file(data_dir: &Path, tenant_id: Uuid) -> PathBuf {
    data_dir
        .join("checkpoints")
        .join(format!("{tenant_id}.jsonl"))
}

fn parse_line(line: &str) -> anyhow::Result<Result<TreeHead, Checkpoint>> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    Ok(if value.get("treeSize").is_some() {
        Ok(serde_json::from_value(value)?)
    } else {
        Err(serde_json::from_value(value)?)
    })
}

/// The text up to its last line break: a line cut short by a crash while it was appended is
/// not part of the file (the next append removes it).
fn complete_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |end| &text[..=end])
}

/// Everything in a witness file (empty when there is none).
pub(crate) fn read_witness(path: &Path) -> anyhow::Result<Witness> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Witness::default()),
        Err(err) => return Err(err.into()),
    };
    let mut witness = Witness::default();
    for (n, line) in complete_lines(&text).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))? {
            Ok(head) => witness.tree_heads.push(head),
            Err(checkpoint) => witness.checkpoints.push(checkpoint),
        }
    }
    Ok(witness)
}

/// The newest tree head in a witness file, read from its end (the file grows by one line a
/// checkpoint; a checkpoint reads only its tail).
pub(crate) fn last_tree_head(path: &Path) -> anyhow::Result<Option<TreeHead>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let length = file.metadata()?.len();
    let mut window = 4096u64;
    loop {
        let start = length.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = String::new();
        Read::by_ref(&mut file)
            .take(window)
            .read_to_string(&mut tail)?;
        // Lines wholly inside the window (the first may be cut by it).
        let mut lines: Vec<&str> = complete_lines(&tail).lines().collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        if let Some(line) = lines.iter().rev().find(|l| !l.trim().is_empty()) {
            // A checkpoint from before the Merkle log last: no tree head in the file.
            return Ok(parse_line(line)?.ok());
        }
        if start == 0 {
            return Ok(None);
        }
        window *= 4;
    }
}

/// Appends lines to a witness file, durably.
pub(crate) fn append_witness<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // A line a crash cut short is removed before the next one is written.
    let length = file.metadata()?.len();
    if length > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(length - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            let mut text = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut text)?;
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)?;
        }
    }
    let mut lines = Vec::new();
    for item in items {
        serde_json::to_writer(&mut lines, item)?;
        lines.push(b'\n');
    }
    file.write_all(&lines)?;
    file.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(key: &SigningKey, number: i64) -> TreeHead {
        TreeHead::sign(
            key,
            Uuid::nil(),
            number,
            number * 10,
            number,
            DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            &[number as u8; 32],
            None,
        )
    }

    #[test]
    fn tree_heads_are_signed_over_every_field_and_only_their_key_verifies_them() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let signed = head(&key, 1);
        assert!(signed.signature_holds());
        assert!(signed.signed_by(&key.verifying_key()));
        assert!(!signed.signed_by(&other.verifying_key()));
        for forge in [
            |h: &mut TreeHead| h.tree_size += 1,
            |h: &mut TreeHead| h.streams += 1,
            |h: &mut TreeHead| h.number += 1,
            |h: &mut TreeHead| h.root[0] ^= 1,
            |h: &mut TreeHead| h.tenant_id = Uuid::max(),
            |h: &mut TreeHead| h.created_at += chrono::Duration::milliseconds(1),
            |h: &mut TreeHead| h.next_public_key = Some(vec![9; 32]),
        ] {
            let mut forged = signed.clone();
            forge(&mut forged);
            assert!(!forged.signature_holds());
        }
        // A hand-over names its next key under the signature.
        let next = other.verifying_key();
        let handover = TreeHead::sign(
            &key,
            Uuid::nil(),
            2,
            10,
            1,
            DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            &[2; 32],
            Some(&next),
        );
        assert!(handover.signed_by(&key.verifying_key()));
        assert_eq!(handover.next_key(), Some(next));
        let mut swapped = handover.clone();
        swapped.next_public_key = Some(
            SigningKey::from_bytes(&[9; 32])
                .verifying_key()
                .to_bytes()
                .to_vec(),
        );
        assert!(!swapped.signature_holds());
        // It round-trips through its JSON; a head without one has no `nextPublicKey` there.
        let json = serde_json::to_string(&handover).unwrap();
        assert_eq!(serde_json::from_str::<TreeHead>(&json).unwrap(), handover);
        assert!(!serde_json::to_string(&signed)
            .unwrap()
            .contains("nextPublicKey"));
    }

    #[test]
    fn the_witness_file_keeps_old_checkpoints_and_tree_heads_and_its_tail_is_the_newest_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        assert_eq!(last_tree_head(&path).unwrap(), None);
        let key = SigningKey::from_bytes(&[7; 32]);
        // A file from before the Merkle log: checkpoints only.
        let legacy = r#"{"tenant_id":"00000000-0000-0000-0000-000000000000","number":1,"created_at":"2026-01-01T00:00:00Z","snapshot":"1:1:","streams":1,"events":1,"root":"00","previous":"","public_key":"00","signature":"00"}"#;
        std::fs::write(&path, format!("{legacy}\n")).unwrap();
        assert_eq!(last_tree_head(&path).unwrap(), None);
        let heads: Vec<TreeHead> = (1..=40).map(|n| head(&key, n)).collect();
        append_witness(&path, &heads[..39]).unwrap();
        // A crash cut the last line short: it is not read, and the next append removes it.
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        torn.write_all(br#"{"tenantId":"00000"#).unwrap();
        assert_eq!(last_tree_head(&path).unwrap(), heads.get(38).cloned());
        append_witness(&path, &heads[39..]).unwrap();
        assert_eq!(last_tree_head(&path).unwrap(), heads.last().cloned());
        let witness = read_witness(&path).unwrap();
        assert_eq!(witness.checkpoints.len(), 1);
        assert_eq!(witness.tree_heads, heads);
    }
}
