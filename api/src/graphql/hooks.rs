//! The one schema extension every request passes through. async-graphql calls every installed
//! extension's `resolve` for every field of every answer, so the steps of the document limits
//! (`limits`), the field errors (`error`), the authorization policy (`authorization`),
//! read-your-writes (`consistency`) and the measurements (`observe`) are composed here, in that
//! order, into one extension: a field costs one hook instead of one per step (a
//! `recordHistory` of 1,000 events answers about 8,000 fields), and only root fields do more
//! than pass through. Documents parsed are kept (`Documents`) and handed to the limits and to
//! async-graphql instead of parsing the text again: a client sends the same few again and again,
//! and parsing one took about 6 % of the process's CPU per `updateEmployee` in a profile.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextRequest, NextResolve, NextSubscribe, NextValidation, ResolveInfo,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};
use futures::stream::BoxStream;

use super::error::{split_each, FieldErrors};
use super::observe::Observed;
use super::{authorization, consistency, limits};
use crate::telemetry::metrics::Metrics;

/// Installs the steps for every request, measuring into the metrics.
pub(crate) struct Hooks {
    metrics: Metrics,
    documents: Arc<Documents>,
}

impl Hooks {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            documents: Arc::new(Documents::new()),
        }
    }
}

impl ExtensionFactory for Hooks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestHooks {
            field_errors: FieldErrors::default(),
            observed: Observed::new(self.metrics.clone()),
            documents: self.documents.clone(),
        })
    }
}

/// The steps' state for one request.
struct RequestHooks {
    field_errors: FieldErrors,
    observed: Observed,
    documents: Arc<Documents>,
}

/// The documents parsed most recently, by their text: a parse is a pure function of the text,
/// and validation still runs on every request. Bounded in count and in the length of a text
/// kept (longer ones are parsed every time), so at most a few megabytes. A text with a string
/// in it (a name, an email, a record's id: what a client passes as a variable) is parsed every
/// time and never kept, so no one's data stays in memory past the request that carried it.
struct Documents(Mutex<lru::LruCache<Box<str>, Arc<ExecutableDocument>>>);

impl Documents {
    /// How many documents are kept.
    const KEPT: usize = 128;
    /// The longest text kept, in bytes.
    const LONGEST: usize = 4_096;

    fn new() -> Self {
        Self(Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(Self::KEPT).expect("the capacity is not zero"),
        )))
    }

    fn get(&self, query: &str) -> Option<ExecutableDocument> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(query)
            .cloned()?;
        Some(ExecutableDocument::clone(&kept))
    }

    /// Whether a document of this text is kept.
    fn keeps(query: &str) -> bool {
        query.len() <= Self::LONGEST && !query.contains('"')
    }

    fn keep(&self, query: &str, document: &ExecutableDocument) {
        if Self::keeps(query) {
            let document = Arc::new(document.clone());
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(query.into(), document);
        }
    }
}

#[async_trait::async_trait]
impl Extension for RequestHooks {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        self.observed.measure(next.run(ctx)).await
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        split_each(self.observed.track(next.run(ctx, stream)))
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // The document is parsed once, here, for the limits; async-graphql takes it from the
        // request. A kept one is handed over instead, and one parsed now is kept once it
        // passed them.
        let kept = match self.documents.get(&request.query) {
            Some(document) => {
                request.set_parsed_query(document);
                true
            }
            None => false,
        };
        limits::check(&mut request)?;
        if !kept && Documents::keeps(&request.query) {
            let query = request.query.clone();
            if let Ok(document) = request.parsed_query() {
                self.documents.keep(&query, document);
            }
        }
        self.observed.prepared(&request);
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        self.field_errors.parsed(query, variables);
        self.observed.parsed(&document);
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await;
        self.observed.validated(result.is_ok());
        result.map_err(|errors| self.field_errors.refused(&ctx.schema_env.registry, errors))
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        self.field_errors.executed(&mut response);
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.path_node.parent.is_none() {
            authorization::authorize(ctx, &info)?;
            consistency::wait(ctx, &info).await?;
        }
        next.run(ctx, info).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphql::limits::MAX_ALIASES;

    fn parsed(query: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(query).expect("a valid document")
    }

    #[test]
    fn a_kept_document_is_the_one_its_text_parses_to_and_the_oldest_goes_first() {
        let documents = Documents::new();
        let query = "mutation($id: ID!) { updateEmployee(id: $id, input: {}) { id version } }";
        assert!(documents.get(query).is_none());
        documents.keep(query, &parsed(query));
        assert_eq!(
            format!("{:?}", documents.get(query).expect("kept")),
            format!("{:?}", parsed(query))
        );
        // Another text is another document, even when it parses alike.
        assert!(documents.get(&format!("{query} ")).is_none());

        for n in 0..Documents::KEPT {
            let other = format!("{{ me {{ id a{n}: id }} }}");
            documents.keep(&other, &parsed(&other));
        }
        assert!(
            documents.get(query).is_none(),
            "at most {} kept",
            Documents::KEPT
        );
        assert!(documents.get("{ me { id a0: id } }").is_some());
    }

    struct Root;

    #[async_graphql::Object]
    impl Root {
        async fn answer(&self) -> i32 {
            42
        }
    }

    #[tokio::test]
    async fn a_request_s_document_is_kept_once_within_the_limits_and_answers_alike() {
        let hooks = Hooks::new(Metrics::default());
        let documents = hooks.documents.clone();
        let schema = async_graphql::Schema::build(
            Root,
            async_graphql::EmptyMutation,
            async_graphql::EmptySubscription,
        )
        .extension(hooks)
        .finish();
        // (The policy knows no field `answer`: it is refused either way.)
        let query = "{ answer }";
        let first = schema.execute(query).await;
        assert!(documents.get(query).is_some());
        let again = schema.execute(query).await;
        assert_eq!(format!("{:?}", again.errors), format!("{:?}", first.errors));
        // A document over the limits is refused and not kept.
        let aliases: Vec<String> = (0..=MAX_ALIASES).map(|n| format!("a{n}: answer")).collect();
        let refused = format!("{{ {} }}", aliases.join(" "));
        let answer = schema.execute(refused.as_str()).await;
        assert!(
            answer.errors[0].message.contains("aliases"),
            "{:?}",
            answer.errors
        );
        assert!(documents.get(&refused).is_none());
        // The kept document is what the limits and async-graphql read: the text is not parsed
        // again (kept under another text, the refused document is refused for it).
        let other = "{ other: answer }";
        documents.keep(other, &parsed(&refused));
        let answer = schema.execute(other).await;
        assert!(
            answer.errors[0].message.contains("aliases"),
            "{:?}",
            answer.errors
        );
    }

    #[test]
    fn a_text_with_a_string_in_it_is_parsed_every_time() {
        let documents = Documents::new();
        for query in [
            r#"mutation { createEmployee(input: { firstName: "Alice", lastName: "Example" }) { id } }"#,
            r#"query($id: ID = "0193") { record(id: $id) { id } }"#,
            "{ me { id @include(if: true) } } # \"quoted\" in a comment",
        ] {
            documents.keep(query, &parsed(query));
            assert!(documents.get(query).is_none(), "{query}");
        }
        let numbers = "{ employees(first: 50) { totalCount } }";
        documents.keep(numbers, &parsed(numbers));
        assert!(documents.get(numbers).is_some());
    }

    #[test]
    fn a_long_text_is_parsed_every_time() {
        let documents = Documents::new();
        let long = format!("{{ me {{ id }} }}{}", " ".repeat(Documents::LONGEST));
        documents.keep(&long, &parsed(&long));
        assert!(documents.get(&long).is_none());
        let fits = format!("{{ me {{ id }} }}{}", " ".repeat(Documents::LONGEST - 20));
        documents.keep(&fits, &parsed(&fits));
        assert!(documents.get(&fits).is_some());
    }
}
