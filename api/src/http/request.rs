//! What every request carries: an id, a span and its count in the metrics (the middleware),
//! and the extractors that read where it came from and the bearer token it presents.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use super::state::AppState;
use crate::service::identity::RequestOrigin;
use crate::telemetry::metrics::method_label;
use crate::telemetry::traces::continue_trace;

/// The id of one HTTP request: in its log span, in the `x-request-id` response header, and in
/// the metadata of every event it causes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId(pub(crate) Uuid);

/// The id a caller gave its request in `x-request-id`, if it is a UUID (any of its forms; a
/// proxy's 32 hex digits are one): kept, so the caller's and the service's logs meet.
fn callers_request_id(request: &Request) -> Option<Uuid> {
    let value = request.headers().get("x-request-id")?.to_str().ok()?;
    Uuid::try_parse(value.trim()).ok().filter(|id| !id.is_nil())
}

/// Gives each request an id (the caller's, or a new one: always a new one with an
/// `Idempotency-Key`) and a span (continuing the caller's
/// trace), logs its outcome and counts it in the metrics: method, route, status and time —
/// never the path as sent, the query string, headers, body or a download token. The route is
/// the router's pattern (`/exports/{token}`), or `unmatched`.
pub(crate) async fn request_span(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // A request with an Idempotency-Key is found in the events by its id when it never
    // answered, so its id is always the server's own: the caller's (often sent again with a
    // retry) stays in the span as `request.caller_id`.
    let callers = callers_request_id(&request);
    let keyed = request.headers().contains_key("idempotency-key");
    let id = match callers {
        Some(callers) if !keyed => callers,
        _ => Uuid::now_v7(),
    };
    request.extensions_mut().insert(RequestId(id));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = method_label(request.method());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        request.id = %id,
        request.caller_id = tracing::field::Empty,
        trace.id = tracing::field::Empty,
        http.method = method,
        http.route = %route,
        http.status = tracing::field::Empty,
    );
    if let Some(callers) = callers.filter(|callers| *callers != id) {
        span.record("request.caller_id", tracing::field::display(callers));
    }
    if let Some(trace_id) = continue_trace(&span, request.headers()) {
        span.record("trace.id", trace_id);
    }
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    let elapsed = started.elapsed().as_secs_f64();
    span.record("http.status", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| {
        tracing::info!(
            http.status = status.as_u16(),
            elapsed_ms = elapsed * 1000.0,
            "request finished"
        )
    });
    state
        .services
        .metrics
        .http_request(&route, method, status.as_u16(), elapsed);
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
