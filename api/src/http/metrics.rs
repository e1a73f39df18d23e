//! `GET /metrics`: every series in the Prometheus text format. What is read when it is
//! scraped (the database's state, the pools, open organisations, alarms, backups) is read
//! here; the rest is counted where it happens. With `CUSTOS_METRICS_TOKEN` set, only a
//! request presenting that token as a bearer token is answered.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::health::backup_coverage;
use super::request::BearerToken;
use super::state::AppState;
use crate::telemetry::metrics::CONTENT_TYPE;

pub(crate) async fn metrics(
    State(state): State<AppState>,
    BearerToken(token): BearerToken,
) -> Response {
    if let Some(expected) = state.metrics_token.as_deref() {
        let given = token.unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    let services = &state.services;
    let metrics = &services.metrics;
    let database_up = services.database.is_up();
    metrics
        .database_up
        .with_label_values(&["default"])
        .set(i64::from(database_up));
    for (region, _, server) in services.tenancy.region_servers() {
        metrics
            .database_up
            .with_label_values(&[region.as_str()])
            .set(i64::from(server.is_up()));
    }
    let pools = services.tenancy.pool_usage().await;
    for (pool, usage) in [("catalog", pools.catalog), ("tenants", pools.tenants)] {
        let connections = &metrics.pool_connections;
        connections
            .with_label_values(&[pool, "in_use"])
            .set(i64::from(usage.in_use()));
        connections
            .with_label_values(&[pool, "idle"])
            .set(usage.idle as i64);
        metrics
            .pool_max
            .with_label_values(&[pool])
            .set(i64::from(usage.max));
    }
    metrics.open_tenants.set(pools.open as i64);
    metrics
        .integrity_alarms
        .set(services.integrity_alarm_count() as i64);
    match backup_coverage(services, database_up).await {
        Some(Ok(coverage)) => metrics
            .backup_verified
            .set(coverage.verified().map_or(0.0, |at| at.timestamp() as f64)),
        // Unknown for now: the last value read stands.
        Some(Err(_)) => {}
        None => metrics.backup_verified.set(0.0),
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response()
}
