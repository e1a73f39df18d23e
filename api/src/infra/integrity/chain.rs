//! The hash chain: every event carries a hash over the previous event of its stream and its
//! own stored bytes, computed by the database on insert (migration 0016). [`check_stream`]
//! recomputes a stream's chain independently of the database and names its first broken link.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One field of a hashed message: its length (4 bytes, big-endian), then its UTF-8 bytes.
pub(crate) fn part(hasher: &mut Sha256, value: &str) {
    part_bytes(hasher, value.as_bytes());
}

fn part_bytes(hasher: &mut Sha256, value: &[u8]) {
    hasher.update((value.len() as u32).to_be_bytes());
    hasher.update(value);
}

/// A number as a field: its decimal digits, written without allocating.
fn part_number(hasher: &mut Sha256, value: i64) {
    let mut digits = [0u8; 20];
    let mut n = value.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    part_bytes(hasher, &digits[at..]);
}

/// What an event's hash covers, borrowed from wherever it was read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a str,
    pub metadata: &'a str,
    pub recorded_at: DateTime<Utc>,
}

impl Hashed<'_> {
    /// The hash this event would have at `sequence` after `previous` (the database's
    /// `custos_event_hash`, recomputed here).
    pub(crate) fn hash_at(&self, previous: Option<&[u8]>, sequence: i64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous.unwrap_or_default());
        part(&mut hasher, self.aggregate_type);
        part(&mut hasher, self.aggregate_id);
        part_number(&mut hasher, sequence);
        part(&mut hasher, self.event_type);
        part(&mut hasher, self.event_version);
        part(&mut hasher, self.payload);
        part(&mut hasher, self.metadata);
        part_number(&mut hasher, self.recorded_at.timestamp_micros());
        hasher.finalize().into()
    }
}

/// An event as stored, with what its hash covers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRow {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The stored JSON text, byte for byte.
    pub payload: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Vec<u8>,
    /// Whether the event is covered by the checkpoint being checked.
    pub in_checkpoint: bool,
}

impl StoredRow {
    /// The hash this event would have at `sequence` after `previous` (the database's
    /// `custos_event_hash`, recomputed here).
    pub(crate) fn hash_at(&self, previous: Option<&[u8]>, sequence: i64) -> [u8; 32] {
        Hashed {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &self.metadata,
            recorded_at: self.recorded_at,
        }
        .hash_at(previous, sequence)
    }
}

/// How a stream's chain is broken, as seen at its first broken link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Breach {
    /// The event's bytes no longer match its hash: changed after it was written.
    Edited,
    /// An event is missing here: removed, with or without renumbering the rest.
    Deleted,
    /// An event that was not part of the chain was put here.
    Inserted,
    /// The event was written at another place in its stream.
    Reordered,
}

/// The first broken link of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Where the chain breaks: the first sequence that is not as it was written.
    pub sequence: i64,
    pub breach: Breach,
}

/// The first broken link of one stream (its events in stored sequence order), if any.
pub(crate) fn check_stream(rows: &[StoredRow]) -> Option<BrokenLink> {
    let broken = |sequence, breach| {
        let first = rows.first()?;
        Some(BrokenLink {
            aggregate_type: first.aggregate_type.clone(),
            aggregate_id: first.aggregate_id.clone(),
            sequence,
            breach,
        })
    };
    let mut previous: Option<&[u8]> = None;
    for (i, row) in rows.iter().enumerate() {
        let expected = i as i64 + 1;
        if row.sequence != expected {
            return broken(expected, Breach::Deleted);
        }
        let linked = row.prev_hash.as_deref() == previous;
        let intact = row.hash_at(row.prev_hash.as_deref(), row.sequence) == row.hash.as_slice();
        if linked && intact {
            previous = Some(&row.hash);
            continue;
        }
        // It links to an event further on: it was moved before that one. (Built only here:
        // most streams are whole, most of them one event long.)
        let position: HashMap<&[u8], usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.hash.as_slice(), i))
            .collect();
        if let Some(&j) = row.prev_hash.as_deref().and_then(|p| position.get(p)) {
            if j > i {
                return broken(expected, Breach::Reordered);
            }
        }
        // The sequence it was hashed at, if its bytes are as written.
        let written_at = (1..=rows.len() as i64 + 1)
            .find(|s| row.hash_at(row.prev_hash.as_deref(), *s) == row.hash.as_slice());
        return match written_at {
            None => broken(expected, Breach::Edited),
            // Shifted up: something was put before it, from where it was.
            Some(s) if s < row.sequence => broken(s, Breach::Inserted),
            // Shifted down: something before it was removed.
            Some(s) if s > row.sequence => broken(expected, Breach::Deleted),
            // In place, but its predecessor is not the event it was chained to: that one was
            // rewritten (and re-hashed to look whole).
            Some(_) => broken(expected - 1, Breach::Edited),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: i64) -> Vec<StoredRow> {
        let mut rows: Vec<StoredRow> = Vec::new();
        for sequence in 1..=n {
            let mut row = StoredRow {
                aggregate_type: "record".into(),
                aggregate_id: "a".into(),
                sequence,
                event_type: "RecordUpdated".into(),
                event_version: "1".into(),
                payload: format!("{{\"n\":{sequence}}}"),
                metadata: "{}".into(),
                recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + sequence)
                    .unwrap(),
                prev_hash: rows.last().map(|r| r.hash.clone()),
                hash: Vec::new(),
                in_checkpoint: true,
            };
            row.hash = row.hash_at(row.prev_hash.as_deref(), sequence).to_vec();
            rows.push(row);
        }
        rows
    }

    fn at(link: Option<BrokenLink>) -> Option<(i64, Breach)> {
        link.map(|l| (l.sequence, l.breach))
    }

    #[test]
    fn numbers_are_hashed_as_their_decimal_digits() {
        for n in [0, 7, 10, 1_700_000_000_000_000, -5, i64::MAX, i64::MIN] {
            let mut ours = Sha256::new();
            part_number(&mut ours, n);
            let mut plain = Sha256::new();
            part(&mut plain, &n.to_string());
            assert_eq!(ours.finalize(), plain.finalize(), "{n}");
        }
    }

    #[test]
    fn an_intact_stream_verifies() {
        assert_eq!(check_stream(&stream(5)), None);
    }

    #[test]
    fn each_kind_of_tampering_is_found_where_it_happened() {
        let mut edited = stream(5);
        edited[2].payload = "{\"n\":99}".into();
        assert_eq!(at(check_stream(&edited)), Some((3, Breach::Edited)));

        let mut deleted = stream(5);
        deleted.remove(2);
        assert_eq!(at(check_stream(&deleted)), Some((3, Breach::Deleted)));
        // Renumbered after the deletion.
        for row in deleted.iter_mut().skip(2) {
            row.sequence -= 1;
        }
        assert_eq!(at(check_stream(&deleted)), Some((3, Breach::Deleted)));

        let mut reordered = stream(5);
        reordered.swap(1, 2);
        reordered[1].sequence = 2;
        reordered[2].sequence = 3;
        assert_eq!(at(check_stream(&reordered)), Some((2, Breach::Reordered)));

        // An event slipped in at 3, hashed properly onto 2; the rest renumbered.
        let mut inserted = stream(5);
        let mut extra = inserted[2].clone();
        extra.payload = "{\"forged\":true}".into();
        extra.prev_hash = Some(inserted[1].hash.clone());
        extra.hash = extra.hash_at(extra.prev_hash.as_deref(), 3).to_vec();
        inserted.insert(2, extra);
        for row in inserted.iter_mut().skip(3) {
            row.sequence += 1;
        }
        assert_eq!(at(check_stream(&inserted)), Some((3, Breach::Inserted)));
    }
}
