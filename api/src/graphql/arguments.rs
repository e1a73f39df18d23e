//! Arguments clients give that need checking before a use case sees them: ids, moments and
//! expected versions.

use async_graphql::ID;
use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

use crate::error::ApiError;

/// An `ID!` argument that must be a UUID, or `VALIDATION` on `field`.
pub(crate) fn parse_id(field: &str, id: &ID) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id.as_str())
        .map_err(|_| ApiError::validation(field, format!("`{field}` is not a valid id")))
}

/// A list of `ID!`s that must each be a UUID.
pub(crate) fn parse_ids(field: &str, raw: &[ID]) -> Result<Vec<Uuid>, ApiError> {
    raw.iter().map(|id| parse_id(field, id)).collect()
}

/// A moment a client gave, within years 1 to 9999 (what the database stores; the scalar
/// accepts far more), or `VALIDATION` on `field`.
pub(crate) fn moment(field: &str, at: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if (1..=9999).contains(&at.year()) {
        Ok(at)
    } else {
        Err(ApiError::validation(
            field,
            format!("`{field}` must be within the years 1 to 9999"),
        ))
    }
}

/// An `expectedVersion` argument: a record's version, never negative.
pub(crate) fn parse_version(version: Option<i64>) -> Result<Option<u64>, ApiError> {
    version
        .map(|v| {
            u64::try_from(v).map_err(|_| {
                ApiError::validation("expectedVersion", "the version must not be negative")
            })
        })
        .transpose()
}
