//! The service's Prometheus metrics: one registry per running service (tests run several in
//! one process), every series declared here once, with labels whose values come from closed
//! sets — routes, root fields of the schema, error codes, event types, projection names —
//! never from a tenant, a person, an address or anything a client typed.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Latency buckets (seconds) of requests and batches: 2.5 ms to 10 s.
const LATENCY: &[f64] = &[
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every series the service exports. Cloning shares them.
#[derive(Clone)]
pub struct Metrics(Arc<Series>);

/// The series, by what they measure (names without the `custos_` prefix).
pub struct Series {
    registry: Registry,
    /// HTTP requests by route (the router's pattern), method and status.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// GraphQL operations by operation type, root field and result code.
    pub graphql_requests: IntCounterVec,
    pub graphql_duration: HistogramVec,
    /// Password logins by outcome, and accounts locked by too many failures.
    pub logins: IntCounterVec,
    pub lockouts: IntCounter,
    /// Events committed, by aggregate type and event type.
    pub events: IntCounterVec,
    /// Projector batches (their time, events read, failures) and each read model's lag.
    pub projector_batch: HistogramVec,
    pub projector_events: IntCounter,
    pub projector_failures: IntCounter,
    pub projection_lag_events: IntGaugeVec,
    pub projection_lag_seconds: GaugeVec,
    pub websocket_connections: IntGauge,
    pub subscriptions: IntGauge,
    pub database_up: IntGaugeVec,
    /// Pool connections by pool (`catalog`, `tenants`) and state (`in_use`, `idle`), and the
    /// most each pool kind may open.
    pub pool_connections: IntGaugeVec,
    pub pool_max: IntGaugeVec,
    pub open_tenants: IntGauge,
    /// Signed checkpoints: when the last round finished with every open tenant checkpointed,
    /// tree heads signed, checkpoints that failed, organisations with an integrity alarm.
    pub checkpoint_round: Gauge,
    pub tree_heads_signed: IntCounter,
    pub checkpoint_failures: IntCounter,
    pub integrity_alarms: IntGauge,
    /// Backups: when the newest verified one was taken, and rounds that failed.
    pub backup_verified: Gauge,
    pub backup_failures: IntCounter,
}

impl std::ops::Deref for Metrics {
    type Target = Series;

    fn deref(&self) -> &Series {
        &self.0
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a metric in `registry` and returns it.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("each series is registered once, under a valid name");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
    )
}

fn histograms(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid histogram"),
    )
}

impl Metrics {
    /// A fresh registry holding every series (at zero; `custos_build_info` set).
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("custos".into()), None).expect("a valid prefix");
        let r = &registry;
        let build = gauges(
            r,
            "build_info",
            "The running build: always 1, labelled with its version.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let series = Series {
            http_requests: counters(
                r,
                "http_requests_total",
                "HTTP requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histograms(
                r,
                "http_request_duration_seconds",
                "Time to answer an HTTP request (for WebSocket: to upgrade it), by route.",
                &["route"],
            ),
            graphql_requests: counters(
                r,
                "graphql_requests_total",
                "GraphQL operations run over HTTP, by operation type, root field (`multiple` for \
                 several; type and field `none` when the document did not parse or validate, or \
                 selects only `__typename`) and result code (`OK` or the first error's code).",
                &["type", "field", "code"],
            ),
            graphql_duration: histograms(
                r,
                "graphql_request_duration_seconds",
                "Time to run a GraphQL operation, by operation type and root field.",
                &["type", "field"],
            ),
            logins: counters(
                r,
                "logins_total",
                "Password logins by outcome: signed_in, second_factor (a code is asked for), \
                 failed, rate_limited.",
                &["outcome"],
            ),
            lockouts: counter(
                r,
                "login_lockouts_total",
                "Accounts locked after too many failed attempts.",
            ),
            events: counters(
                r,
                "events_total",
                "Events committed by this process, by aggregate type and event type.",
                &["aggregate", "event"],
            ),
            projector_batch: histograms(
                r,
                "projector_batch_duration_seconds",
                "Time of one projector transaction (read, apply, move checkpoints), by outcome.",
                &["outcome"],
            ),
            projector_events: counter(
                r,
                "projector_events_total",
                "Events read by the projectors of every open organisation.",
            ),
            projector_failures: counter(
                r,
                "projector_failures_total",
                "Projector batches that failed (the database unreachable, or a read model's \
                 error).",
            ),
            projection_lag_events: gauges(
                r,
                "projection_lag_events",
                "Events a read model has not applied yet, in the organisation where it is most \
                 behind (open organisations, sampled every 15 s).",
                &["projection"],
            ),
            projection_lag_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "projection_lag_seconds",
                        "Age of the oldest event a read model has not applied yet, in the \
                         organisation where it is oldest (0 when up to date; sampled every 15 s).",
                    ),
                    &["projection"],
                )
                .expect("valid gauge"),
            ),
            websocket_connections: gauge(
                r,
                "websocket_connections",
                "Open WebSocket connections (subscriptions).",
            ),
            subscriptions: gauge(r, "subscriptions", "Running GraphQL subscriptions."),
            database_up: gauges(
                r,
                "database_up",
                "1 while the database server answers, 0 while it does not: the default server, \
                 and each region's on a server of its own.",
                &["server"],
            ),
            pool_connections: gauges(
                r,
                "db_pool_connections",
                "Connections of the catalog pool and of the open organisations' pools \
                 together, by state (in_use, idle).",
                &["pool", "state"],
            ),
            pool_max: gauges(
                r,
                "db_pool_max_connections",
                "The most connections each pool may open (tenants: per organisation).",
                &["pool"],
            ),
            open_tenants: gauge(
                r,
                "open_tenants",
                "Organisations with an open context (pool, projector) in this process.",
            ),
            checkpoint_round: register(
                r,
                Gauge::new(
                    "checkpoint_round_timestamp_seconds",
                    "When the last checkpoint round finished in which every open organisation's \
                     events were covered by a signed tree head (Unix time; 0: none yet).",
                )
                .expect("valid gauge"),
            ),
            tree_heads_signed: counter(r, "tree_heads_signed_total", "Tree heads signed."),
            checkpoint_failures: counter(
                r,
                "checkpoint_failures_total",
                "Scheduled checkpoints that failed or were refused (an integrity alarm).",
            ),
            integrity_alarms: gauge(
                r,
                "integrity_alarms",
                "Organisations whose event store does not agree with their last signed tree \
                 head.",
            ),
            backup_verified: register(
                r,
                Gauge::new(
                    "backup_verified_timestamp_seconds",
                    "When the newest verified backup was taken (Unix time; 0: none, or no \
                     backup directory configured).",
                )
                .expect("valid gauge"),
            ),
            backup_failures: counter(
                r,
                "backup_failures_total",
                "Backup rounds that failed or did not verify.",
            ),
            registry,
        };
        Self(Arc::new(series))
    }

    /// Every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        // Encoding into memory fails only on a malformed family, which registration rules out.
        let _ = TextEncoder::new().encode(&self.0.registry.gather(), &mut text);
        String::from_utf8(text).unwrap_or_default()
    }

    /// Counts one HTTP request.
    pub(crate) fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status_label(status);
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(seconds);
    }
}

/// Counts events as they are committed (registered with every aggregate's framework), and
/// the lockouts among them.
#[async_trait::async_trait]
impl<A: cqrs_es::Aggregate> cqrs_es::Query<A> for Metrics {
    async fn dispatch(&self, _aggregate_id: &str, events: &[cqrs_es::EventEnvelope<A>]) {
        use cqrs_es::DomainEvent;
        for envelope in events {
            let event = envelope.payload.event_type();
            self.events.with_label_values(&[A::TYPE, &event]).inc();
            if A::TYPE == <custos_domain::User as cqrs_es::Aggregate>::TYPE && event == LOCKED {
                self.lockouts.inc();
            }
        }
    }
}

/// The event type of a lockout (`UserEvent::LoginLocked`).
const LOCKED: &str = "LoginLocked";

/// Holds a gauge one higher for as long as it lives (a connection, a subscription).
pub(crate) struct Tracked(IntGauge);

impl Tracked {
    pub(crate) fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The statuses this service answers, each its own label value.
const STATUSES: [&str; 19] = [
    "101", "200", "204", "304", "400", "401", "403", "404", "405", "406", "408", "409", "410",
    "413", "415", "422", "429", "500", "503",
];

/// An HTTP status as a label: the statuses this service answers; anything else by class.
fn status_label(status: u16) -> &'static str {
    let text = status.to_string();
    if let Some(known) = STATUSES.iter().find(|known| **known == text) {
        return known;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// An HTTP method as a label: the standard ones; anything else is `other`.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_renders_with_its_prefix_and_help() {
        let metrics = Metrics::new();
        metrics.http_request("/graphql", "POST", 200, 0.003);
        metrics.http_request("/graphql", "POST", 299, 0.003);
        let text = metrics.render();
        assert!(text.contains("custos_build_info{version=\""));
        assert!(text.contains(
            "custos_http_requests_total{method=\"POST\",route=\"/graphql\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "custos_http_requests_total{method=\"POST\",route=\"/graphql\",status=\"2xx\"} 1"
        ));
        assert!(text.contains("# HELP custos_login_lockouts_total "));
        assert!(text.contains(
            "custos_http_request_duration_seconds_bucket{route=\"/graphql\",le=\"0.005\"} 2"
        ));
    }

    #[test]
    fn the_lockout_event_type_is_the_domains() {
        let locked = custos_domain::UserEvent::LoginLocked {
            until: chrono::Utc::now(),
        };
        assert_eq!(cqrs_es::DomainEvent::event_type(&locked), LOCKED);
    }

    #[test]
    fn two_services_in_one_process_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.lockouts.inc();
        assert_eq!(a.lockouts.get(), 1);
        assert_eq!(b.lockouts.get(), 0);
    }
}
