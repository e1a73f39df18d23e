//! An [`ApiError`] as GraphQL sees it: its message, and `extensions.code` (with `field`,
//! `reason` and `permission` where they apply); several field errors told at once become one
//! GraphQL error each ([`FieldErrors`]). This is where an internal error is logged, once.

use std::sync::Mutex;

use async_graphql::{ErrorExtensionValues, ErrorExtensions, Response, ServerError, Variables};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::error::{ApiError, Code};

/// The extension key under which an error carries several field errors until
/// [`FieldErrors`] makes one error of each.
const FIELD_ERRORS: &str = "fieldErrors";

/// `err` as the error of the root field `info` resolves, before its resolver ran: at the
/// field's place and path.
pub(crate) fn root_field_error(
    info: &async_graphql::extensions::ResolveInfo<'_>,
    err: ApiError,
) -> ServerError {
    let mut error = async_graphql::Error::from(err).into_server_error(info.field.name.pos);
    error.path = vec![async_graphql::PathSegment::Field(
        info.alias.unwrap_or(info.name).to_owned(),
    )];
    error
}

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        err.report();
        if let ApiError::Invalid(problems) = &err {
            let listed: Vec<async_graphql::Value> = problems
                .iter()
                .map(|(field, message)| {
                    let mut one = async_graphql::indexmap::IndexMap::new();
                    one.insert(
                        async_graphql::Name::new("message"),
                        async_graphql::Value::from(message.as_str()),
                    );
                    if let Some(field) = field {
                        one.insert(
                            async_graphql::Name::new("field"),
                            async_graphql::Value::from(field.as_str()),
                        );
                    }
                    async_graphql::Value::Object(one)
                })
                .collect();
            return async_graphql::Error::new(err.message()).extend_with(|_, ext| {
                ext.set("code", err.code().as_str());
                ext.set(FIELD_ERRORS, async_graphql::Value::List(listed.clone()));
            });
        }
        let code = err.code();
        let field = match &err {
            ApiError::Validation { field, .. } => field.clone(),
            _ => None,
        };
        let restricted = matches!(err, ApiError::Restricted);
        let permission = match &err {
            ApiError::Denied(permission) => Some(permission.clone()),
            _ => None,
        };
        async_graphql::Error::new(err.message()).extend_with(|_, ext| {
            ext.set("code", code.as_str());
            if let Some(permission) = &permission {
                ext.set("permission", permission.as_str());
            }
            if restricted {
                ext.set("reason", "RESTRICTED");
            }
            if let Some(field) = &field {
                ext.set("field", field.as_str());
            }
        })
    }
}

/// Makes one GraphQL error of each field error a resolver told at once ([`ApiError::Invalid`]),
/// each with `extensions.code` and `extensions.field`, at the place of the one: a form shows
/// every invalid field after one request ([`super::hooks`] steps, one value per request).
///
/// GraphQL's own validation of an argument's value tells its first problem only: a refused
/// argument is walked again for every problem ([`super::input_errors`]), from the document
/// and variables kept here until validation has passed.
#[derive(Default)]
pub(crate) struct FieldErrors {
    /// The document's text and the variables, until validation has passed.
    request: Mutex<Option<(String, Variables)>>,
}

/// The longest document kept for [`super::input_errors`].
const KEPT_QUERY: usize = 16 * 1024;

/// The most values (of any depth) in the variables kept for [`super::input_errors`].
const KEPT_VALUES: usize = 2_000;

/// Whether the variables hold at most [`KEPT_VALUES`] values (counting stops there).
fn small(variables: &Variables) -> bool {
    fn count(value: &async_graphql::Value, budget: &mut usize) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match value {
            async_graphql::Value::List(items) => items.iter().all(|v| count(v, budget)),
            async_graphql::Value::Object(map) => map.values().all(|v| count(v, budget)),
            _ => true,
        }
    }
    let mut budget = KEPT_VALUES;
    variables.values().all(|v| count(v, &mut budget))
}

impl FieldErrors {
    /// After the document parsed: keeps its text and the variables for validation.
    pub(crate) fn parsed(&self, query: &str, variables: &Variables) {
        // A large request (an import's rows) is not copied: a refusal of it keeps
        // async-graphql's first problem per argument.
        if query.len() <= KEPT_QUERY && small(variables) {
            if let Ok(mut request) = self.request.lock() {
                *request = Some((query.to_owned(), variables.clone()));
            }
        }
    }

    /// After validation refused the document: each refused argument's every problem.
    pub(crate) fn refused(
        &self,
        registry: &async_graphql::registry::Registry,
        mut errors: Vec<ServerError>,
    ) -> Vec<ServerError> {
        let request = self.request.lock().ok().and_then(|mut r| r.take());
        if let Some((query, variables)) = request {
            if errors
                .iter()
                .any(|e| e.message.starts_with(super::input_errors::ARGUMENT_ERROR))
            {
                super::input_errors::expand(registry, &query, &variables, &mut errors);
            }
        }
        errors
    }

    /// After the operation ran: arguments that did not parse named, and field errors told
    /// at once split into one error each. (A valid request's text stays until here.)
    pub(crate) fn executed(&self, response: &mut Response) {
        let request = self.request.lock().ok().and_then(|mut r| r.take());
        if let Some((query, _)) = request {
            super::input_errors::name_unparsed_arguments(&query, &mut response.errors);
        }
        split(&mut response.errors);
    }
}

/// A subscription's answers with their field errors split, as [`FieldErrors::executed`] does.
pub(crate) fn split_each(stream: BoxStream<'_, Response>) -> BoxStream<'_, Response> {
    stream
        .map(|mut response| {
            split(&mut response.errors);
            response
        })
        .boxed()
}

/// Replaces each error carrying [`FIELD_ERRORS`] with one error per field error.
fn split(errors: &mut Vec<ServerError>) {
    let carries = |error: &ServerError| {
        error
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get(FIELD_ERRORS).is_some())
    };
    if !errors.iter().any(carries) {
        return;
    }
    let mut split = Vec::with_capacity(errors.len());
    for error in errors.drain(..) {
        let listed = match error
            .extensions
            .as_ref()
            .and_then(|ext| ext.get(FIELD_ERRORS))
        {
            Some(async_graphql::Value::List(listed)) => listed.clone(),
            _ => {
                split.push(error);
                continue;
            }
        };
        for one in listed {
            let async_graphql::Value::Object(one) = one else {
                continue;
            };
            let text = |key: &str| match one.get(key) {
                Some(async_graphql::Value::String(text)) => Some(text.clone()),
                _ => None,
            };
            let mut extensions = ErrorExtensionValues::default();
            extensions.set("code", Code::Validation.as_str());
            if let Some(field) = text("field") {
                extensions.set("field", field);
            }
            let mut each = ServerError::new(text("message").unwrap_or_default(), None);
            each.locations = error.locations.clone();
            each.path = error.path.clone();
            each.extensions = Some(extensions);
            split.push(each);
        }
    }
    *errors = split;
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
