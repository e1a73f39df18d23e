//! What every request carries: an id and a span (the middleware), and the extractors that
//! read where it came from and the bearer token it presents.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use crate::service::identity::RequestOrigin;

/// The id of one HTTP request: in its log span, in the `x-request-id` response header, and in
/// the metadata of every event it causes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId(pub(crate) Uuid);

/// A request path as logged: download links carry their token in the path, so it is cut.
fn logged_path(path: &str) -> &str {
    if path.starts_with("/exports/") {
        "/exports/{token}"
    } else {
        path
    }
}

/// Gives each request an id and a span, and logs its outcome (method, path, status, time:
/// never the query string, headers, body or a download token).
pub(crate) async fn request_span(mut request: Request, next: Next) -> Response {
    let id = Uuid::now_v7();
    request.extensions_mut().insert(RequestId(id));
    let span = tracing::info_span!(
        "request",
        request.id = %id,
        http.method = %request.method(),
        http.path = %logged_path(request.uri().path()),
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            http.status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Where a request came from — its id, the client's address and user agent — as recorded with
/// logins and in the metadata of the events it causes.
pub(crate) struct ClientOrigin(pub(crate) RequestOrigin);

impl<S: Send + Sync> FromRequestParts<S> for ClientOrigin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map_or_else(Uuid::now_v7, |id| id.0);
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self(RequestOrigin {
            request_id,
            ip,
            user_agent,
        }))
    }
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub(crate) struct BearerToken(pub(crate) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned());
        Ok(Self(token))
    }
}
