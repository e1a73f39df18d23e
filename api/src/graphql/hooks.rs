//! The one schema extension every request passes through. async-graphql calls every installed
//! extension's `resolve` for every field of every answer, so the steps of the document limits
//! (`limits`), the field errors (`error`), the authorization policy (`authorization`),
//! read-your-writes (`consistency`) and the measurements (`observe`) are composed here, in that
//! order, into one extension: a field costs one hook instead of one per step (a
//! `recordHistory` of 1,000 events answers about 8,000 fields), and only root fields do more
//! than pass through.

use std::sync::Arc;

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
pub(crate) struct Hooks(pub(crate) Metrics);

impl ExtensionFactory for Hooks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestHooks {
            field_errors: FieldErrors::default(),
            observed: Observed::new(self.0.clone()),
        })
    }
}

/// The steps' state for one request.
struct RequestHooks {
    field_errors: FieldErrors,
    observed: Observed,
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
        limits::check(&mut request)?;
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
