//! Trace export over OTLP/HTTP: the service's spans (each request, the GraphQL operation in
//! it) go to the collector named by the standard OpenTelemetry variables, and a caller's W3C
//! `traceparent` makes them part of the caller's trace.
//!
//! Configured by the environment, as every OpenTelemetry SDK is: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) switches export on; `OTEL_EXPORTER_OTLP_PROTOCOL`
//! is `http/protobuf` (the default) or `http/json`; `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default `custos`),
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER` are read by the SDK. gRPC is not
//! built in: a collector takes OTLP/HTTP on port 4318.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// The variables that switch export on.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOL_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
/// The longest one export request may take (the SDK's default too).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last spans are waited for when the process ends.
const FLUSH: Duration = Duration::from_secs(5);

/// A running trace export.
pub(crate) struct Exporting {
    provider: SdkTracerProvider,
    protocol: &'static str,
}

/// The value of the first of `names` that is set and not empty.
fn variable(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// The export the environment asks for, if any. Must run inside the Tokio runtime: exports
/// are sent by tasks on it.
pub(crate) fn from_env() -> anyhow::Result<Option<Exporting>> {
    let Some(endpoint) = variable(&ENDPOINT_VARIABLES) else {
        return Ok(None);
    };
    let (protocol, name) = match variable(&PROTOCOL_VARIABLES).as_deref().map(str::trim) {
        None | Some("http/protobuf") => (Protocol::HttpBinary, "http/protobuf"),
        Some("http/json") => (Protocol::HttpJson, "http/json"),
        Some(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use http/protobuf or \
             http/json (a collector takes OTLP/HTTP on port 4318)"
        ),
    };
    url::Url::parse(&endpoint)
        .map_err(|err| anyhow::anyhow!("the OTLP endpoint {endpoint:?} is not a URL: {err}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(Client::new()?)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("custos");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(Some(Exporting {
        provider,
        protocol: name,
    }))
}

impl Exporting {
    /// The subscriber layer that turns spans into OpenTelemetry spans.
    pub(crate) fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("custos"))
            .with_threads(false)
    }

    pub(crate) fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// Exports what is buffered and stops. The SDK blocks while it flushes, and the export
    /// requests run on the runtime: so the wait happens on a blocking thread.
    pub(crate) async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH)).await;
        if let Ok(Err(err)) = flushed {
            eprintln!("custos: the last traces could not be exported: {err}");
        }
    }
}

/// Makes `span` (not entered yet) a child of the caller's span named by the W3C `traceparent`
/// (and `tracestate`) headers, if they are valid; returns the trace id the span is part of
/// (the caller's, or a new one), when traces are exported.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) -> Option<String> {
    let caller = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if caller.span().span_context().is_valid() {
        // Without the export layer there is nothing to continue: this fails, harmlessly.
        let _ = span.set_parent(caller);
    }
    let context = span.context();
    let ours = context.span().span_context().clone();
    ours.is_valid().then(|| ours.trace_id().to_string())
}

/// The exporter's HTTP client: the service's `reqwest` (rustls, no redirects), with each
/// request sent by a task on the runtime. The SDK's batch processor calls it from a thread
/// of its own, outside the runtime.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl Client {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(EXPORT_TIMEOUT)
                .build()?,
            runtime: tokio::runtime::Handle::try_current().map_err(|_| {
                anyhow::anyhow!("trace export needs to be started inside the Tokio runtime")
            })?,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let (status, headers, body) = self
            .runtime
            .spawn(async move {
                let response = http.execute(request).await?;
                let (status, headers) = (response.status(), response.headers().clone());
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
