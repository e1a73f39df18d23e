//! What measures each operation (steps of [`super::hooks`]): a span (`graphql`, inside the
//! request's) and its count and time in the metrics, labelled by operation type, root field and
//! result code — names the schema defines, never the client's operation name, a value or a
//! variable; and the running subscriptions' gauge. The root fields are read from the parsed
//! document and used only once it has passed validation (so every name is one of the
//! schema's), which costs nothing per resolved field.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{Request, Response, ServerError, Value};
use futures::stream::{BoxStream, StreamExt};
use tracing::Instrument;

use crate::error::Code;
use crate::telemetry::metrics::{Metrics, Tracked};

/// The root fields an operation selects.
#[derive(Debug, Clone, Default, PartialEq)]
enum Root {
    #[default]
    None,
    One(&'static str, String),
    Several(&'static str),
}

impl Root {
    /// The type and field labels.
    fn labels(&self) -> (&'static str, &str) {
        match self {
            Root::None => ("none", "none"),
            Root::One(kind, field) => (kind, field),
            Root::Several(kind) => (kind, "multiple"),
        }
    }
}

/// The operation type as a label.
fn kind(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

/// How deep fragments spread into each other at the root are followed (validation refuses
/// cycles, but this runs before it).
const FRAGMENT_DEPTH: usize = 8;

/// Adds the root field names `set` selects (through fragments) to `names`.
fn root_fields(
    document: &ExecutableDocument,
    set: &SelectionSet,
    depth: usize,
    names: &mut Vec<String>,
) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                if name != "__typename" && !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            Selection::InlineFragment(fragment) if depth < FRAGMENT_DEPTH => root_fields(
                document,
                &fragment.node.selection_set.node,
                depth + 1,
                names,
            ),
            Selection::FragmentSpread(spread) if depth < FRAGMENT_DEPTH => {
                if let Some(fragment) = document.fragments.get(&spread.node.fragment_name.node) {
                    root_fields(
                        document,
                        &fragment.node.selection_set.node,
                        depth + 1,
                        names,
                    )
                }
            }
            _ => {}
        }
    }
}

/// The root fields of the operation a request runs (`operation`: its name, if it gave one).
fn root_of(document: &ExecutableDocument, operation: Option<&str>) -> Root {
    let operation = match (&document.operations, operation) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => {
            match operations.iter().find(|(n, _)| n.as_str() == name) {
                Some((_, operation)) => operation,
                None => return Root::None,
            }
        }
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            match operations.values().next() {
                Some(operation) => operation,
                None => return Root::None,
            }
        }
        (DocumentOperations::Multiple(_), None) => return Root::None,
    };
    let kind = kind(operation.node.ty);
    let mut names = Vec::new();
    root_fields(document, &operation.node.selection_set.node, 0, &mut names);
    match names.len() {
        0 => Root::None,
        1 => Root::One(kind, names.swap_remove(0)),
        _ => Root::Several(kind),
    }
}

/// The code an error is counted under: its `extensions.code`, or VALIDATION for those that
/// have none (syntax, validation, input coercion), as the response will say.
fn code_of(error: &ServerError) -> &'static str {
    let code = error
        .extensions
        .as_ref()
        .and_then(|extensions| extensions.get("code"))
        .map(|code| match code {
            Value::String(code) => Code::parse(code).map_or("OTHER", Code::as_str),
            _ => "OTHER",
        });
    code.unwrap_or(Code::Validation.as_str())
}

/// Measures one operation into the metrics ([`super::hooks`] steps, one value per request).
pub(crate) struct Observed {
    metrics: Metrics,
    state: Mutex<State>,
}

/// What one request's measurement learns as the request goes on.
#[derive(Default)]
struct State {
    /// The operation the client named, if any (to find it in the document; never a label).
    operation: Option<String>,
    /// The root fields the document selects, before validation vouches for them.
    selected: Root,
    /// The same, once the document passed validation.
    root: Root,
}

impl Observed {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            state: Mutex::default(),
        }
    }

    /// Runs the request (`response`) in the `graphql` span, then counts and times it.
    pub(crate) async fn measure(&self, response: impl Future<Output = Response>) -> Response {
        let span = tracing::info_span!(
            "graphql",
            graphql.operation.type = tracing::field::Empty,
            graphql.field = tracing::field::Empty,
            graphql.code = tracing::field::Empty,
        );
        let started = Instant::now();
        let response = response.instrument(span.clone()).await;
        let elapsed = started.elapsed().as_secs_f64();
        let root = self
            .state
            .lock()
            .map(|state| state.root.clone())
            .unwrap_or_default();
        let (kind, field) = root.labels();
        let code = response.errors.first().map_or("OK", code_of);
        span.record("graphql.operation.type", kind);
        span.record("graphql.field", field);
        span.record("graphql.code", code);
        let metrics = &self.metrics;
        metrics
            .graphql_requests
            .with_label_values(&[kind, field, code])
            .inc();
        metrics
            .graphql_duration
            .with_label_values(&[kind, field])
            .observe(elapsed);
        response
    }

    /// Before the request is prepared: the operation the client named.
    pub(crate) fn prepared(&self, request: &Request) {
        if let Ok(mut state) = self.state.lock() {
            state.operation = request.operation_name.clone();
        }
    }

    /// After the document parsed: the root fields it selects.
    pub(crate) fn parsed(&self, document: &ExecutableDocument) {
        if let Ok(mut state) = self.state.lock() {
            state.selected = root_of(document, state.operation.as_deref());
        }
    }

    /// After validation: the root fields become labels once the document passed.
    pub(crate) fn validated(&self, valid: bool) {
        if valid {
            if let Ok(mut state) = self.state.lock() {
                state.root = std::mem::take(&mut state.selected);
            }
        }
    }

    /// A subscription's answers, counted as running in the gauge until the stream ends.
    pub(crate) fn track<'s>(&self, stream: BoxStream<'s, Response>) -> BoxStream<'s, Response> {
        let running = Tracked::new(&self.metrics.subscriptions);
        stream
            .map(move |response| {
                let _running = &running;
                response
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(query: &str, operation: Option<&str>) -> Root {
        let document = async_graphql::parser::parse_query(query).expect("a document");
        root_of(&document, operation)
    }

    #[test]
    fn the_root_fields_are_read_through_fragments_and_named_operations() {
        assert_eq!(
            root("{ me { id } __typename }", None),
            Root::One("query", "me".into())
        );
        assert_eq!(
            root("mutation { a: login { token } b: login { token } }", None),
            Root::One("mutation", "login".into())
        );
        assert_eq!(
            root("{ me { id } employees { id } }", None),
            Root::Several("query")
        );
        assert_eq!(
            root(
                "query { ...F } fragment F on Query { ... on Query { me { id } } }",
                None
            ),
            Root::One("query", "me".into())
        );
        let two = "query A { me { id } } mutation B { logout }";
        assert_eq!(root(two, Some("B")), Root::One("mutation", "logout".into()));
        assert_eq!(root(two, None), Root::None);
        assert_eq!(root(two, Some("C")), Root::None);
        // A cycle of fragments (refused by validation later) is followed only so far.
        assert_eq!(
            root(
                "{ ...F } fragment F on Query { ...G } fragment G on Query { ...F }",
                None
            ),
            Root::None
        );
    }

    #[test]
    fn codes_are_the_known_ones_or_other() {
        let mut error = ServerError::new("x", None);
        assert_eq!(code_of(&error), "VALIDATION");
        let mut extensions = async_graphql::ErrorExtensionValues::default();
        extensions.set("code", "NOT_FOUND");
        error.extensions = Some(extensions);
        assert_eq!(code_of(&error), "NOT_FOUND");
        let mut extensions = async_graphql::ErrorExtensionValues::default();
        extensions.set("code", "anything a resolver made up");
        error.extensions = Some(extensions);
        assert_eq!(code_of(&error), "OTHER");
    }
}
