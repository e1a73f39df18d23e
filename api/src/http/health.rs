//! Health (`/healthz`: the process serves; it also names a raised integrity alarm and, with
//! backups configured, when the newest verified backup was taken and whether WAL archiving
//! fails) and readiness (`/readyz`: the catalog database answers).

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
        // Base backups stream their own WAL and keep verifying while the archive fails.
        let failing: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
            "SELECT last_failed_time FROM pg_stat_archiver
             WHERE last_failed_time > coalesce(last_archived_time, '-infinity')",
        )
        .fetch_optional(state.services.tenancy.catalog())
        .await
        .ok()
        .flatten();
        if let Some(Some(since)) = failing {
            text.push_str(&format!(
                "\nWAL archiving failing: last failure {} (see postgres.log)",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
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
