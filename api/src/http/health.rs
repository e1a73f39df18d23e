//! Health (`/healthz`: the process serves; it also names a raised integrity alarm and, with
//! backups configured, when the newest verified backup was taken) and readiness (`/readyz`:
//! the catalog database answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// `ok` (always 200: the process serves), then a line when a checkpoint refused to sign for
/// some organisation (details in the log and in its `verifyIntegrity`), and with backups a
/// line saying when the newest verified one was taken.
pub(crate) async fn healthz(State(state): State<AppState>) -> String {
    let mut text = "ok".to_owned();
    match state.services.integrity_alarm_count() {
        0 => {}
        n => text.push_str(&format!("\nintegrity alarm: {n} organisation(s)")),
    }
    if let Some(backups) = &state.services.backups {
        match backups.last_verified() {
            Some(at) => text.push_str(&format!(
                "\nlast verified backup: {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            None => text.push_str("\nlast verified backup: none yet"),
        }
    }
    text
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
