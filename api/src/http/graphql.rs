//! `POST /graphql` (parsed here, so a malformed request gets a GraphQL error and 400) and
//! GraphiQL on `GET /graphql`.

use async_graphql::http::GraphiQLSource;
use async_graphql::{ErrorExtensionValues, ServerError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::request::{BearerToken, ClientOrigin};
use super::state::AppState;
use crate::error::Code;
use crate::graphql::context::RequestContext;
use crate::graphql::loaders::Loaders;
use crate::infra::database::Health;
use crate::service::identity::RequestOrigin;

pub(crate) async fn graphiql(State(state): State<AppState>) -> Response {
    if !state.graphiql {
        return StatusCode::NOT_FOUND.into_response();
    }
    Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response()
}

/// A response holding only request-level errors.
fn request_error(status: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": code.as_str() } }],
    });
    (status, Json(body)).into_response()
}

pub(crate) async fn graphql(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    BearerToken(token): BearerToken,
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
    // While the database is down every request would wait for the pool's connection attempts
    // to time out: it is answered at once instead, and so is one running when it goes down.
    let database = &state.services.database;
    if !database.is_up() {
        return request_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the database is unavailable; try again shortly",
        );
    }
    // The organisation's database may live on a region's server of its own: an outage of that
    // server ends the request at once too.
    let own_server = match &token {
        Some(token) => state.services.token_server(token).await,
        None => None,
    };
    tokio::select! {
        response = answer(&state, origin, token, request) => response,
        () = database.went_down() => outcome_unknown(),
        () = went_down(own_server.as_deref()) => outcome_unknown(),
    }
}

/// Completes when `server` goes down; never without one.
async fn went_down(server: Option<&Health>) {
    match server {
        Some(server) => server.went_down().await,
        None => std::future::pending().await,
    }
}

/// The answer to a request the database went away under.
fn outcome_unknown() -> Response {
    request_error(
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        "the database became unavailable while the request ran; a change it asked for may or \
         may not have been saved: read it back before trying again",
    )
}

/// Authenticates the request's session and executes it.
async fn answer(
    state: &AppState,
    origin: RequestOrigin,
    token: Option<String>,
    request: async_graphql::Request,
) -> Response {
    let principal = match token {
        Some(token) => match state.services.authenticate(&token, &origin).await {
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
        Loaders::new(principal).attach(&mut request.data);
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

pub(crate) fn set_code(error: &mut ServerError, code: Code) {
    let extensions = error
        .extensions
        .get_or_insert_with(ErrorExtensionValues::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code.as_str());
    }
}
