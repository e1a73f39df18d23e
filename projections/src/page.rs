//! Keyset pagination shared by the list queries: opaque cursors and pages.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

/// The largest page a client may ask for.
pub const MAX_PAGE: i64 = 100;

/// A position in a list ordered by id: opaque to clients (base64url of the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub Uuid);

impl Cursor {
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// `None` for anything that is not a cursor this service issued.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        Uuid::from_slice(&bytes).ok().map(Cursor)
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_next_page: bool,
    pub total_count: i64,
}

impl<T> Page<T> {
    /// The page of `first` items from a query that asked for `first + 1` (one more says that
    /// a next page exists).
    pub fn cut(mut items: Vec<T>, first: i64, total_count: i64) -> Self {
        let has_next_page = items.len() as i64 > first;
        items.truncate(usize::try_from(first).unwrap_or(0));
        Self {
            items,
            has_next_page,
            total_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor(Uuid::now_v7());
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode("AAAA"), None);
    }
}
