//! An [`ApiError`] as GraphQL sees it: its message, and `extensions.code` (with `field` and
//! `reason` where they apply). This is where an internal error is logged, once.

use async_graphql::ErrorExtensions;

use crate::error::ApiError;

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        err.report();
        let code = err.code();
        let field = match &err {
            ApiError::Validation { field, .. } => field.clone(),
            _ => None,
        };
        let restricted = matches!(err, ApiError::Restricted);
        async_graphql::Error::new(err.message()).extend_with(|_, ext| {
            ext.set("code", code.as_str());
            if restricted {
                ext.set("reason", "RESTRICTED");
            }
            if let Some(field) = &field {
                ext.set("field", field.as_str());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_returned_without_detail() {
        let err: async_graphql::Error = ApiError::internal(anyhow::anyhow!("secret detail")).into();
        assert_eq!(err.message, "internal error");
    }
}
