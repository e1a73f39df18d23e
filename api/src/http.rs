//! HTTP: the router, `POST /graphql` (with our own request parsing, so malformed requests get
//! a GraphQL error and 400), GraphiQL, health and readiness, request ids and body limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_graphql::http::GraphiQLSource;
use async_graphql::{ErrorExtensionValues, ServerError};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::Code;
use crate::graphql::{loaders, CustosSchema, RequestContext};
use crate::service::{RequestOrigin, Services};

/// The largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub schema: CustosSchema,
    pub services: Arc<Services>,
    pub graphiql: bool,
}

/// The id of one HTTP request: in its log span, in the `x-request-id` response header, and in
/// the metadata of every event it causes.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/exports/{token}", get(download))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

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
async fn request_span(mut request: Request, next: Next) -> Response {
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

async fn graphiql(State(state): State<AppState>) -> Response {
    if !state.graphiql {
        return StatusCode::NOT_FOUND.into_response();
    }
    Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response()
}

/// Streams an export through its one-time link; a used, expired or unknown link is 404.
async fn download(State(state): State<AppState>, Path(token): Path<String>) -> Response {
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

async fn readyz(State(state): State<AppState>) -> Response {
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

/// A response holding only request-level errors.
fn request_error(status: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": code.as_str() } }],
    });
    (status, Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn graphql(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(_)) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                Code::Validation,
                "batched requests are not supported",
            )
        }
        Ok(value) => match serde_json::from_value(value) {
            Ok(request) => request,
            Err(_) => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    Code::Validation,
                    "the body must be a GraphQL request: {\"query\": ..., \"variables\": ...}",
                )
            }
        },
        Err(_) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                Code::Validation,
                "the body is not valid JSON",
            )
        }
    };

    let origin = RequestOrigin {
        request_id,
        ip: connect_info.map(|Extension(ConnectInfo(addr))| addr.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let principal = match bearer(&headers) {
        Some(token) => match state.services.authenticate(token, &origin).await {
            Ok(principal) => principal,
            Err(err) => {
                err.report();
                return request_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::Unavailable,
                    "authentication is unavailable; try again",
                );
            }
        },
        None => None,
    };
    let mut request = request;
    if let Some(principal) = &principal {
        let loaders = loaders(principal);
        request = request
            .data(loaders.users)
            .data(loaders.api_tokens)
            .data(loaders.schemas);
    }
    request = request.data(RequestContext { origin, principal });

    let mut response = state.schema.execute(request).await;
    // Errors without a path are about the request itself (syntax, validation, limits): HTTP
    // 400. Resolver errors carry their code already; the only others are async-graphql's
    // input coercion errors (a value of the wrong type), which are VALIDATION too.
    let mut status = StatusCode::OK;
    for error in &mut response.errors {
        if error.path.is_empty() {
            status = StatusCode::BAD_REQUEST;
        }
        set_code(error, Code::Validation);
    }
    (status, Json(response)).into_response()
}

/// GraphQL subscriptions over WebSocket (`graphql-transport-ws`, or the older
/// `graphql-ws`). The connection is authenticated by its `connection_init` payload,
/// `{"authorization": "Bearer <token>"}`; without a valid token it is refused.
async fn graphql_ws(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    protocol: async_graphql_axum::GraphQLProtocol,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let origin = RequestOrigin {
        request_id,
        ip: connect_info.map(|Extension(ConnectInfo(addr))| addr.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let (schema, services) = (state.schema.clone(), state.services.clone());
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            async_graphql_axum::GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let token = payload
                        .get("authorization")
                        .and_then(|v| v.as_str())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(str::trim)
                        .map(str::to_owned);
                    let principal = match &token {
                        Some(token) => {
                            services.authenticate(token, &origin).await.map_err(|err| {
                                err.report();
                                async_graphql::Error::new(
                                    "authentication is unavailable; try again",
                                )
                            })?
                        }
                        None => None,
                    };
                    let (Some(principal), Some(token)) = (principal, token) else {
                        return Err(async_graphql::Error::new(
                            "authentication required: give {\"authorization\": \"Bearer <token>\"}",
                        ));
                    };
                    let loaders = loaders(&principal);
                    let mut data = async_graphql::Data::default();
                    data.insert(loaders.users);
                    data.insert(loaders.api_tokens);
                    data.insert(loaders.schemas);
                    data.insert(crate::graphql::audit::SubscriptionAuth {
                        token,
                        origin: origin.clone(),
                    });
                    data.insert(RequestContext {
                        origin,
                        principal: Some(principal),
                    });
                    Ok(data)
                })
                .serve()
        })
}

fn set_code(error: &mut ServerError, code: Code) {
    let extensions = error
        .extensions
        .get_or_insert_with(ErrorExtensionValues::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code.as_str());
    }
}
