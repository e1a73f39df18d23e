//! Health (`/healthz`: the process serves; it also names a raised integrity alarm) and
//! readiness (`/readyz`: the catalog database answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// `ok`, or — still 200: the process serves — `ok` and a second line when a checkpoint refused
/// to sign for some organisation (details in the log and in its `verifyIntegrity`).
pub(crate) async fn healthz(State(state): State<AppState>) -> String {
    match state.services.integrity_alarm_count() {
        0 => "ok".to_owned(),
        n => format!("ok\nintegrity alarm: {n} organisation(s)"),
    }
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1")
        .execute(state.services.tenancy.catalog())
        .await
    {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "not ready: the catalog database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}
