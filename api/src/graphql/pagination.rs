//! Relay connections: the validated page size every list takes, cursors, and the shape of a
//! page of a list ordered by id.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::OutputType;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custos_projections::page::MAX_PAGE;
use custos_projections::{Cursor, Page};
use uuid::Uuid;

use crate::error::ApiError;

/// The extra field every connection has.
#[derive(async_graphql::SimpleObject)]
pub(crate) struct ConnectionTotal {
    /// How many items match, over all pages.
    pub(crate) total_count: i64,
}

/// A validated `first` argument (or `last`, named by `field`): 1 to `max`, `default` when
/// omitted.
pub(crate) fn page_size_within(
    field: &str,
    value: Option<i32>,
    default: i32,
    max: i32,
) -> Result<i64, ApiError> {
    let value = value.unwrap_or(default);
    if !(1..=max).contains(&value) {
        return Err(ApiError::validation(
            field,
            format!("`{field}` must be between 1 and {max}"),
        ));
    }
    Ok(value.into())
}

/// A validated `first` argument of a list: 1 to [`MAX_PAGE`], 20 when omitted.
pub(crate) fn page_size(first: Option<i32>) -> Result<i64, ApiError> {
    page_size_within("first", first, 20, MAX_PAGE as i32)
}

/// Validated `first` / `after` arguments of a list ordered by id.
pub(crate) fn page_args(
    first: Option<i32>,
    after: Option<String>,
) -> Result<(i64, Option<Cursor>), ApiError> {
    let first = page_size(first)?;
    let after = after
        .map(|raw| {
            Cursor::decode(&raw)
                .ok_or_else(|| ApiError::validation("after", "`after` is not a valid cursor"))
        })
        .transpose()?;
    Ok((first, after))
}

/// A page as a Relay connection: its edges (cursor and node), whether pages come before and
/// after it, and how many items match in all.
pub(crate) fn connection<N: OutputType>(
    has_previous: bool,
    has_next: bool,
    total_count: i64,
    edges: impl IntoIterator<Item = (String, N)>,
) -> Connection<String, N, ConnectionTotal, EmptyFields> {
    let mut connection =
        Connection::with_additional_fields(has_previous, has_next, ConnectionTotal { total_count });
    connection.edges.extend(
        edges
            .into_iter()
            .map(|(cursor, node)| Edge::new(cursor, node)),
    );
    connection
}

/// A page of a list ordered by id, as a Relay connection of `node`s.
pub(crate) fn id_connection<T, N: OutputType>(
    page: Page<T>,
    after: Option<Cursor>,
    id: impl Fn(&T) -> Uuid,
    node: impl Fn(T) -> N,
) -> Connection<String, N, ConnectionTotal, EmptyFields> {
    let edges = page
        .items
        .into_iter()
        .map(|item| (Cursor(id(&item)).encode(), node(item)));
    connection(after.is_some(), page.has_next_page, page.total_count, edges)
}

/// An opaque cursor for a position in an integer-ordered list.
pub(crate) fn encode_sequence(sequence: i64) -> String {
    URL_SAFE_NO_PAD.encode(sequence.to_be_bytes())
}

/// The position an [`encode_sequence`] cursor stands for.
pub(crate) fn decode_sequence(raw: &str) -> Option<i64> {
    let bytes: [u8; 8] = URL_SAFE_NO_PAD.decode(raw).ok()?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// A validated `after` argument of an integer-ordered list.
pub(crate) fn sequence_after(after: Option<String>) -> Result<Option<i64>, ApiError> {
    after
        .map(|raw| {
            decode_sequence(&raw)
                .ok_or_else(|| ApiError::validation("after", "`after` is not a valid cursor"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_bounded_and_named() {
        assert_eq!(page_size(None).unwrap(), 20);
        assert_eq!(page_size(Some(100)).unwrap(), 100);
        let err = page_size(Some(101)).unwrap_err();
        assert_eq!(err.message(), "`first` must be between 1 and 100");
        let err = page_size_within("last", Some(0), 100, 1000).unwrap_err();
        assert_eq!(err.message(), "`last` must be between 1 and 1000");
    }

    #[test]
    fn sequence_cursors_round_trip() {
        assert_eq!(decode_sequence(&encode_sequence(42)), Some(42));
        assert!(sequence_after(Some("not a cursor".into())).is_err());
    }
}
