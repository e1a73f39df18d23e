//! Health (`/healthz`: the process serves) and readiness (`/readyz`: the catalog database
//! answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::state::AppState;

pub(crate) async fn healthz() -> &'static str {
    "ok"
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
