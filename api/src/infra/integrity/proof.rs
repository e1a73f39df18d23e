//! Proofs an auditor keeps and checks without the server: an event's inclusion in a signed
//! tree head, and one tree head's consistency with a later one. Their JSON is exactly what the
//! `eventProof` and `consistencyProof` queries answer (field for field), so a saved GraphQL
//! response is a proof file; [`check_file`] is what `custos verify-proof` runs.

use chrono::DateTime;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::chain::Hashed;
use super::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash};
use super::tree_head::{verifying_key, TreeHead};

/// An event as stored: everything its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvenEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The stored JSON text, byte for byte (sealed values as ciphertext).
    pub payload: String,
    pub metadata: String,
    /// When it was recorded, in microseconds since 1970.
    pub recorded_at_micros: i64,
    /// The previous event's hash in its stream, hex (none for the first).
    pub previous_hash: Option<String>,
    /// The event's chained hash, hex.
    pub hash: String,
}

/// An event is leaf `leafIndex` of the tree of `treeSize` leaves that `treeHead` signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventProof {
    pub leaf_index: i64,
    pub tree_size: i64,
    /// The sibling hashes from the leaf up to the root, hex (RFC 9162 §2.1.3).
    pub audit_path: Vec<String>,
    pub event: ProvenEvent,
    pub tree_head: TreeHead,
    /// Every hand-over of the organisation's signing key, oldest first (none before the first
    /// rotation): followed from the key the proof is checked with, both ways.
    #[serde(default)]
    pub key_handovers: Vec<TreeHead>,
}

/// The tree `fromHead` signed is a prefix of the tree `toHead` signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyProof {
    pub from_size: i64,
    pub to_size: i64,
    /// RFC 9162 §2.1.4 consistency path, hex.
    pub path: Vec<String>,
    pub from_head: TreeHead,
    pub to_head: TreeHead,
    /// Every hand-over of the organisation's signing key, oldest first.
    #[serde(default)]
    pub key_handovers: Vec<TreeHead>,
}

/// Hex hashes as stored in a proof.
pub(crate) fn to_hex(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn hashes(hex_hashes: &[String], what: &str) -> Result<Vec<Hash>, String> {
    hex_hashes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| format!("{what}: `{h}` is not a hex SHA-256 hash"))
        })
        .collect()
}

fn root(head: &TreeHead) -> Result<Hash, String> {
    Hash::try_from(head.root.as_slice())
        .map_err(|_| format!("tree head {}: the root is not a SHA-256 hash", head.number))
}

/// Which keys may sign which tree-head numbers, as the supplied hand-overs show around the
/// trusted `key` (inclusive ranges). Backwards: a hand-over that names a trusted key and holds
/// its signature makes its signer trusted for the heads up to it, and no further — so a key
/// that leaked after it was rotated cannot sign later heads. Forwards: a hand-over the trusted
/// key signed makes the key it names trusted for the heads after it.
fn trusted_ranges(key: &VerifyingKey, handovers: &[TreeHead]) -> Vec<(VerifyingKey, i64, i64)> {
    let mut sorted: Vec<&TreeHead> = handovers.iter().collect();
    sorted.sort_by_key(|h| h.number);
    // Backwards: (key, the number of the hand-over into it), newest first.
    let mut chain: Vec<(VerifyingKey, Option<i64>)> = vec![(*key, None)];
    let mut upper = i64::MAX;
    for handover in sorted.iter().rev() {
        let current = chain.last().expect("never empty").0;
        let signer = verifying_key(&handover.public_key);
        if let (true, Some(signer)) = (
            handover.number < upper
                && handover.next_key() == Some(current)
                && handover.signature_holds(),
            signer,
        ) {
            chain.last_mut().expect("never empty").1 = Some(handover.number);
            chain.push((signer, None));
            upper = handover.number;
        }
    }
    let mut ranges = Vec::new();
    for pair in chain.windows(2) {
        let (older, into_older) = pair[1];
        let out_of_older = pair[0].1.expect("set when the older key was found");
        ranges.push((older, into_older.map_or(i64::MIN, |n| n + 1), out_of_older));
    }
    // Forwards from the trusted key.
    let (mut current, mut from) = (*key, chain[0].1.map_or(i64::MIN, |n| n + 1));
    for handover in &sorted {
        if handover.number < from {
            continue;
        }
        if let (true, Some(next)) = (handover.signed_by(&current), handover.next_key()) {
            ranges.push((current, from, handover.number));
            current = next;
            from = handover.number + 1;
        }
    }
    ranges.push((current, from, i64::MAX));
    ranges
}

fn signed(
    head: &TreeHead,
    key: &VerifyingKey,
    handovers: &[TreeHead],
    which: &str,
) -> Result<(), String> {
    let trusted = trusted_ranges(key, handovers)
        .iter()
        .any(|(k, from, to)| (*from..=*to).contains(&head.number) && head.signed_by(k));
    if trusted {
        Ok(())
    } else {
        Err(format!(
            "{which} tree head {}: the signature does not verify with this public key (nor with a key the supplied hand-overs lead to or from, for its number)",
            head.number
        ))
    }
}

impl EventProof {
    /// Every check, in order; the first that fails, in words.
    pub fn check(&self, key: &VerifyingKey) -> Result<String, String> {
        let head = &self.tree_head;
        signed(head, key, &self.key_handovers, "the")?;
        if head.tree_size != self.tree_size {
            return Err(format!(
                "the proof is for a tree of {} events; its tree head signed {}",
                self.tree_size, head.tree_size
            ));
        }
        let event = &self.event;
        let previous = match &event.previous_hash {
            Some(h) => Some(hashes(std::slice::from_ref(h), "previousHash")?[0].to_vec()),
            None => None,
        };
        let recorded_at = DateTime::from_timestamp_micros(event.recorded_at_micros)
            .ok_or("recordedAtMicros is not a time")?;
        let fields = Hashed {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at,
        };
        let hash = fields.hash_at(previous.as_deref(), event.sequence);
        if hex::encode(hash) != event.hash.to_ascii_lowercase() {
            return Err(format!(
                "the event {}/{} sequence {} does not match its hash: it is not the event that was logged",
                event.aggregate_type, event.aggregate_id, event.sequence
            ));
        }
        let (Ok(index), Ok(size)) = (
            u64::try_from(self.leaf_index),
            u64::try_from(self.tree_size),
        ) else {
            return Err("leafIndex and treeSize must not be negative".into());
        };
        let path = hashes(&self.audit_path, "auditPath")?;
        if !verify_inclusion(index, size, &leaf_hash(&hash), &path, &root(head)?) {
            return Err(format!(
                "the audit path does not lead from leaf {index} to the root tree head {} signed",
                head.number
            ));
        }
        Ok(format!(
            "OK: {}/{} sequence {} is leaf {index} of the {size} events that tree head {} (organisation {}, key {}) signed at {}",
            event.aggregate_type,
            event.aggregate_id,
            event.sequence,
            head.number,
            head.tenant_id,
            head.key_id,
            head.created_at.to_rfc3339(),
        ))
    }
}

impl ConsistencyProof {
    /// Every check, in order; the first that fails, in words.
    pub fn check(&self, key: &VerifyingKey) -> Result<String, String> {
        signed(&self.from_head, key, &self.key_handovers, "the older")?;
        signed(&self.to_head, key, &self.key_handovers, "the newer")?;
        if self.from_head.tenant_id != self.to_head.tenant_id {
            return Err("the two tree heads belong to different organisations".into());
        }
        if self.from_head.tree_size != self.from_size || self.to_head.tree_size != self.to_size {
            return Err("the sizes do not match the tree heads'".into());
        }
        let (Ok(from), Ok(to)) = (u64::try_from(self.from_size), u64::try_from(self.to_size))
        else {
            return Err("fromSize and toSize must not be negative".into());
        };
        let path = hashes(&self.path, "path")?;
        if !verify_consistency(
            from,
            to,
            &root(&self.from_head)?,
            &root(&self.to_head)?,
            &path,
        ) {
            return Err(format!(
                "the path does not show tree head {} ({from} events) is a prefix of tree head {} ({to} events)",
                self.from_head.number, self.to_head.number
            ));
        }
        Ok(format!(
            "OK: tree head {} ({from} events) is a prefix of tree head {} ({to} events) of organisation {} (key {})",
            self.from_head.number, self.to_head.number, self.to_head.tenant_id, self.to_head.key_id
        ))
    }
}

/// A proof file: the proof itself, or a GraphQL response holding one.
#[derive(Debug)]
enum ProofFile {
    Event(EventProof),
    Consistency(ConsistencyProof),
}

fn parse(text: &str) -> Result<ProofFile, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the file is not JSON: {e}"))?;
    let inner = value.get("data").unwrap_or(&value);
    let (kind, proof) = if let Some(p) = inner.get("eventProof") {
        ("event", p)
    } else if let Some(p) = inner.get("consistencyProof") {
        ("consistency", p)
    } else if inner.get("leafIndex").is_some() {
        ("event", inner)
    } else if inner.get("fromSize").is_some() {
        ("consistency", inner)
    } else {
        return Err("the file holds neither an eventProof nor a consistencyProof".into());
    };
    let bad = |e: serde_json::Error| format!("the {kind} proof is incomplete or malformed: {e}");
    Ok(match kind {
        "event" => ProofFile::Event(serde_json::from_value(proof.clone()).map_err(bad)?),
        _ => ProofFile::Consistency(serde_json::from_value(proof.clone()).map_err(bad)?),
    })
}

/// Checks a proof file with the organisation's public key (64 hex digits): one line saying
/// what holds, or which check failed.
pub fn check_file(text: &str, public_key: &str) -> Result<String, String> {
    let key = hex::decode(public_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or("the public key is not 64 hex digits of an Ed25519 key")?;
    match parse(text)? {
        ProofFile::Event(proof) => proof.check(&key),
        ProofFile::Consistency(proof) => proof.check(&key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use ed25519_dalek::SigningKey;
    use uuid::Uuid;

    fn head(key: &SigningKey, number: i64, next: Option<&SigningKey>) -> TreeHead {
        TreeHead::sign(
            key,
            Uuid::nil(),
            number,
            number * 10,
            1,
            DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            &[number as u8; 32],
            next.map(|k| k.verifying_key()).as_ref(),
        )
    }

    #[test]
    fn hand_overs_lead_forwards_and_backwards_and_a_rotated_key_signs_nothing_after() {
        let (first, second, third) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        );
        // 1 signed by the first key; 2 hands over to the second; 3 signed by it; 4 hands over
        // to the third; 5 signed by it.
        let handovers = vec![
            head(&first, 2, Some(&second)),
            head(&second, 4, Some(&third)),
        ];
        let heads = [
            (1, &first),
            (2, &first),
            (3, &second),
            (4, &second),
            (5, &third),
        ];
        for pinned in [&first, &second, &third] {
            for (number, signer) in heads {
                let h = head(signer, number, None);
                assert!(
                    signed(&h, &pinned.verifying_key(), &handovers, "the").is_ok(),
                    "head {number} with key {:?} pinned",
                    pinned.verifying_key()
                );
            }
        }
        // The first key, leaked after its rotation, signs head 5: refused with the newest key
        // pinned, and with the first key pinned when the hand-overs are shown.
        let forged = head(&first, 5, None);
        for pinned in [&first, &second, &third] {
            assert!(signed(&forged, &pinned.verifying_key(), &handovers, "the").is_err());
        }
        // Without hand-overs only the pinned key's own heads verify.
        assert!(signed(&head(&second, 3, None), &first.verifying_key(), &[], "the").is_err());
        // A forged hand-over (not signed by the key in force) leads nowhere.
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let forged_handover = vec![head(&stranger, 2, Some(&second))];
        assert!(signed(
            &head(&second, 3, None),
            &first.verifying_key(),
            &forged_handover,
            "the"
        )
        .is_err());
    }
}
