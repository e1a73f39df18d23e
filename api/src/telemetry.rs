//! Logs, metrics and traces. Logs: `tracing` to stderr, human-readable or JSON, filtered by
//! `RUST_LOG`. Metrics: [`metrics::Metrics`], served at `/metrics`. Traces: the same spans,
//! exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set ([`traces`]).
//!
//! What is logged, counted or traced is ids, event types, timings and error classes. Personal
//! values, passwords, tokens and database passwords are never passed to a log macro or a span;
//! sqlx's statement logging is switched off on every connection because SQL text can carry
//! secrets (`CREATE ROLE ... PASSWORD`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub mod metrics;
pub mod traces;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// What [`init`] installed that must be told when the process ends.
#[must_use = "call `shutdown` before the process exits, or the last spans are lost"]
pub struct Telemetry {
    traces: Option<traces::Exporting>,
}

impl Telemetry {
    /// Sends the spans not exported yet (waiting up to five seconds).
    pub async fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

/// Installs the global subscriber: logs, and trace export when configured. Call once, first
/// thing in `main`, inside the Tokio runtime. A trace export configuration that cannot work
/// (an unsupported protocol, a malformed endpoint) is an error.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let exporting = traces::from_env()?;
    let spans = exporting.as_ref().map(traces::Exporting::layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .init();
    if let Some(exporting) = &exporting {
        tracing::info!(
            protocol = exporting.protocol(),
            "traces are exported over OTLP"
        );
    }
    Ok(Telemetry { traces: exporting })
}
