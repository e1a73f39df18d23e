//! `GET /exports/<token>`: a one-time download link, streamed.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// Streams an export through its one-time link; a used, expired or unknown link is 404; 503 at
/// once while the database does not answer (the link stays usable).
pub(crate) async fn download(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    if !state.services.database.is_up() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let download = match state.services.open_download(&token).await {
        Ok(Some(download)) => download,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            err.report();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let headers = [
        (header::CONTENT_TYPE, download.content_type().to_owned()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", download.file_name()),
        ),
        (header::CACHE_CONTROL, "no-store".to_owned()),
    ];
    let chunks = download.stream();
    let body = futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| {
            (
                Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                chunks,
            )
        })
    });
    (headers, Body::from_stream(body)).into_response()
}
