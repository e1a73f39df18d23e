//! The schema extension that measures each operation: a span (`graphql`, inside the request's)
//! and its count and time in the metrics, labelled by operation type, root field and result
//! code — names the schema defines, never the client's operation name, a value or a variable;
//! and the running subscriptions' gauge.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextResolve, NextSubscribe,
    ResolveInfo,
};
use async_graphql::{Response, ServerError, ServerResult, Value};
use futures::stream::{BoxStream, StreamExt};
use tracing::Instrument;

use crate::error::Code;
use crate::telemetry::metrics::{Metrics, Tracked};

/// Measures every operation into `metrics`.
pub(crate) struct Observe(pub(crate) Metrics);

impl ExtensionFactory for Observe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Observed {
            metrics: self.0.clone(),
            root: Mutex::new(Root::None),
        })
    }
}

/// The root fields an operation ran.
#[derive(Debug, Clone, PartialEq)]
enum Root {
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

/// The operation type of a root type.
fn kind(root_type: &str) -> &'static str {
    match root_type {
        "Query" => "query",
        "Mutation" => "mutation",
        "Subscription" => "subscription",
        _ => "other",
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

struct Observed {
    metrics: Metrics,
    root: Mutex<Root>,
}

#[async_trait::async_trait]
impl Extension for Observed {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let span = tracing::info_span!(
            "graphql",
            graphql.operation.type = tracing::field::Empty,
            graphql.field = tracing::field::Empty,
            graphql.code = tracing::field::Empty,
        );
        let started = Instant::now();
        let response = next.run(ctx).instrument(span.clone()).await;
        let elapsed = started.elapsed().as_secs_f64();
        let root = self.root.lock().map(|r| r.clone()).unwrap_or(Root::None);
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

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.path_node.parent.is_none() {
            if let Ok(mut root) = self.root.lock() {
                let kind = kind(info.parent_type);
                *root = match &*root {
                    Root::None => Root::One(kind, info.name.to_owned()),
                    Root::One(_, field) if field == info.name => root.clone(),
                    Root::One(..) | Root::Several(_) => Root::Several(kind),
                };
            }
        }
        next.run(ctx, info).await
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let running = Tracked::new(&self.metrics.subscriptions);
        next.run(ctx, stream)
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
