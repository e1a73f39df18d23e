//! `POST /graphql` (parsed here, so a malformed request gets a GraphQL error and 400; a body
//! that is not `application/json` 415, one over the limit 413, each a GraphQL error with a
//! code; answered as `application/graphql-response+json` to clients that accept it).

use std::sync::Arc;

use async_graphql::{ErrorExtensionValues, ServerError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::request::{BearerToken, ClientOrigin};
use super::state::AppState;
use crate::auth::principal::Principal;
use crate::error::Code;
use crate::graphql::consistency::Consistency;
use crate::graphql::context::RequestContext;
use crate::graphql::loaders::Loaders;
use crate::infra::database::{went_down, Health};
use crate::infra::event_store::log::Position;
use crate::service::idempotency::{fingerprint, valid_key, Begun, Refusal};
use crate::service::identity::RequestOrigin;

/// The media type of a GraphQL response: GraphQL over HTTP's own when the client accepts it,
/// JSON otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    GraphqlResponse,
    Json,
}

impl Media {
    fn of(headers: &HeaderMap) -> Self {
        let accepted = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|range| range.split(';').next().unwrap_or_default().trim());
        if accepted
            .into_iter()
            .any(|range| range.eq_ignore_ascii_case(GRAPHQL_RESPONSE))
        {
            Media::GraphqlResponse
        } else {
            Media::Json
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Media::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
            Media::Json => "application/json",
        }
    }
}

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// The longest error message a request error carries: a long malformed document is not echoed.
const MESSAGE: usize = 300;

/// `message`, cut to [`MESSAGE`] bytes (on a character boundary).
fn clipped(message: &str) -> String {
    if message.len() <= MESSAGE {
        return message.to_owned();
    }
    let mut end = MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// A GraphQL response body (JSON text) in `media`.
fn reply(status: StatusCode, media: Media, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, media.content_type())], body).into_response()
}

/// A response holding only request-level errors (no `data`: nothing ran).
fn request_error(status: StatusCode, media: Media, code: Code, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code.as_str() } }],
    });
    reply(status, media, body.to_string())
}

/// Whether the request says its body is JSON (`application/json`, any parameters). Anything
/// else is refused: a browser sends other types across origins without asking first.
fn json_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) async fn graphql(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    BearerToken(token): BearerToken,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = Media::of(&headers);
    if !json_body(&headers) {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            media,
            Code::Validation,
            "send the request as application/json: {\"query\": ..., \"variables\": ...}",
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                media,
                Code::Validation,
                "the request body is larger than 1 MiB",
            )
        }
        Err(rejection) => {
            return request_error(
                rejection.status(),
                media,
                Code::Validation,
                "the request body could not be read",
            )
        }
    };
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(message) => {
            return request_error(StatusCode::BAD_REQUEST, media, Code::Validation, message)
        }
    };
    let after = match custos_after(&headers) {
        Ok(after) => after,
        Err(message) => {
            return request_error(StatusCode::BAD_REQUEST, media, Code::Validation, message)
        }
    };
    let (request, retry_safe) =
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Array(_)) => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    media,
                    Code::Validation,
                    "batched requests are not supported",
                )
            }
            Ok(value) => {
                // Only a keyed request keeps its variables as sent, for its fingerprint.
                let variables = key.as_ref().map(|_| {
                    value
                        .get("variables")
                        .cloned()
                        .unwrap_or(serde_json::Value::Null)
                });
                match serde_json::from_value::<async_graphql::Request>(value) {
                    Ok(request) => {
                        let retry_safe = key.zip(variables).map(|(key, variables)| RetrySafe {
                            fingerprint: fingerprint(
                                &request.query,
                                request.operation_name.as_deref(),
                                &variables,
                            ),
                            key,
                        });
                        (request, retry_safe)
                    }
                    Err(_) => return request_error(
                        StatusCode::BAD_REQUEST,
                        media,
                        Code::Validation,
                        "the body must be a GraphQL request: {\"query\": ..., \"variables\": ...}",
                    ),
                }
            }
            Err(_) => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    media,
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
            media,
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
        response = answer(&state, media, origin, token, (request, after), retry_safe, own_server.as_deref()) => response,
        () = database.went_down() => outcome_unknown(media),
        () = went_down(own_server.as_deref()) => outcome_unknown(media),
    }
}

/// The answer to a request the database went away under.
fn outcome_unknown(media: Media) -> Response {
    request_error(
        StatusCode::SERVICE_UNAVAILABLE,
        media,
        Code::Unavailable,
        "the database became unavailable while the request ran; a change it asked for may or \
         may not have been saved: retry with the same Idempotency-Key, or read it back before \
         trying again",
    )
}

/// A mutation's `Idempotency-Key` and what its request is.
struct RetrySafe {
    key: String,
    fingerprint: [u8; 32],
}

/// The position the request's `Custos-After` names, if it has one: its reads wait until the
/// read models show the change answered with it (`extensions.position`).
fn custos_after(headers: &HeaderMap) -> Result<Option<Position>, &'static str> {
    const MESSAGE: &str =
        "Custos-After must be one value: the extensions.position of an earlier response";
    let mut values = headers.get_all("custos-after").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(MESSAGE);
    }
    let position = value.to_str().ok().and_then(|text| text.parse().ok());
    position.map(Some).ok_or(MESSAGE)
}

/// The request's `Idempotency-Key`, if it has one; why it is not a key, if it is not.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let mut keys = headers.get_all("idempotency-key").iter();
    let Some(key) = keys.next() else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|key| valid_key(key) && keys.next().is_none())
        .ok_or("Idempotency-Key must be one value of 1 to 255 visible ASCII characters")?;
    Ok(Some(key.to_owned()))
}

/// Whether the operation the request runs is a mutation (`false` if its document does not
/// parse: it will not run at all). The document parsed here is the one the request runs.
fn is_mutation(request: &mut async_graphql::Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return false;
    };
    let operation = match (&document.operations, &operation_name) {
        (DocumentOperations::Single(operation), _) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name.as_str()),
        (DocumentOperations::Multiple(_), None) => None,
    };
    operation.is_some_and(|operation| operation.node.ty == OperationType::Mutation)
}

/// The answer when something the request needs first failed: its cause logged, 503.
fn unavailable(err: crate::error::ApiError, media: Media, message: &str) -> Response {
    err.report();
    request_error(
        StatusCode::SERVICE_UNAVAILABLE,
        media,
        Code::Unavailable,
        message,
    )
}

/// The first answer of a request, sent again to its retry.
fn replayed(status: u16, media: Media, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = reply(status, media, body);
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    response
}

/// Authenticates the request's session and executes it; a mutation with an
/// `Idempotency-Key` runs once, its retries get its answer.
async fn answer(
    state: &AppState,
    media: Media,
    origin: RequestOrigin,
    token: Option<String>,
    (mut request, after): (async_graphql::Request, Option<Position>),
    retry_safe: Option<RetrySafe>,
    own_server: Option<&Health>,
) -> Response {
    let principal = match token {
        Some(token) => match state.services.authenticate(&token, &origin).await {
            Ok(principal) => principal,
            Err(err) => return unavailable(err, media, "authentication is unavailable; try again"),
        },
        None => None,
    };
    // Keys are the caller's own: an anonymous mutation (signUp, login) runs without one.
    let mut holding = None;
    if let (Some(retry_safe), Some(principal)) = (&retry_safe, &principal) {
        if is_mutation(&mut request) {
            let begun = state
                .services
                .begin_idempotent(
                    principal,
                    &retry_safe.key,
                    &retry_safe.fingerprint,
                    origin.request_id,
                )
                .await;
            match begun {
                Ok(Begun::Run(held)) => holding = Some((held, principal.clone())),
                Ok(Begun::Replay { status, body }) => return replayed(status, media, body),
                Ok(Begun::Refused(refusal)) => {
                    let (status, code) = match refusal {
                        Refusal::OtherRequest => {
                            (StatusCode::UNPROCESSABLE_ENTITY, Code::Validation)
                        }
                        _ => (StatusCode::CONFLICT, Code::Conflict),
                    };
                    return request_error(status, media, code, refusal.message());
                }
                Err(err) => {
                    return unavailable(
                        err,
                        media,
                        "the Idempotency-Key could not be checked; nothing ran: try again with the same key",
                    )
                }
            }
        }
    }
    let Executed {
        status,
        body,
        internal,
        held_back,
    } = match &holding {
        Some((held, principal)) => {
            let run = execute(state, origin, Some(principal.clone()), request, after);
            state.services.while_holding(principal, held, run).await
        }
        None => execute(state, origin, principal, request, after).await,
    };
    // An internal error may be the database going away, met before its watcher saw it: then
    // the request is answered as if the outage had come first (its key, if any, kept as it is).
    if internal && outage_met(state, own_server).await {
        return outcome_unknown(media);
    }
    if let Some((held, principal)) = holding {
        // What did not run (a request error, or every field held back waiting for the read
        // models) lets the key go; what ran keeps its answer.
        let stored = if status == StatusCode::OK && !held_back {
            state
                .services
                .answered(&principal, held, status.as_u16(), &body)
                .await
        } else {
            state.services.not_run(&principal, held).await
        };
        if let Err(err) = stored {
            err.report();
        }
    }
    reply(status, media, body)
}

/// Whether the default database, or the organisation's own server, is down or found down
/// within one round of its watcher.
async fn outage_met(state: &AppState, own_server: Option<&Health>) -> bool {
    let default = state.services.database.down_within_a_probe();
    match own_server {
        Some(server) => {
            let (default, own) = tokio::join!(default, server.down_within_a_probe());
            default || own
        }
        None => default.await,
    }
}

/// What executing a request gave.
struct Executed {
    status: StatusCode,
    body: String,
    /// Whether an error of the response is `INTERNAL`.
    internal: bool,
    /// Whether nothing ran: every root field was held back waiting for the read models.
    held_back: bool,
}

/// Executes the request for `principal`.
async fn execute(
    state: &AppState,
    origin: RequestOrigin,
    principal: Option<Principal>,
    request: async_graphql::Request,
    after: Option<Position>,
) -> Executed {
    let mut request = request;
    if let Some(principal) = &principal {
        Loaders::new(principal).attach(&mut request.data);
    }
    let consistency = Arc::new(Consistency::after(after));
    request = request
        .data(RequestContext { origin, principal })
        .data(consistency.clone());

    let mut response = state.schema.execute(request).await;
    // A change answered before the read models showed it: where it landed, for the client to
    // pass back in `Custos-After` to another instance.
    if let Some(written) = consistency.written() {
        response.extensions.insert(
            "position".to_owned(),
            async_graphql::Value::String(written.to_string()),
        );
    }
    // Errors without a path are about the request itself (syntax, validation, limits): HTTP
    // 400. Resolver errors carry their code already; the only others are async-graphql's
    // input coercion errors (a value of the wrong type), which are VALIDATION too.
    let mut status = StatusCode::OK;
    for error in &mut response.errors {
        if error.path.is_empty() {
            status = StatusCode::BAD_REQUEST;
            error.message = clipped(&error.message);
        }
        set_code(error, Code::Validation);
    }
    // A request that failed before it ran has no `data` at all (GraphQL's rule); any other
    // response is written as it is.
    if status == StatusCode::BAD_REQUEST && response.data == async_graphql::Value::Null {
        let mut body = serde_json::to_value(&response).unwrap_or_default();
        if let Some(body) = body.as_object_mut() {
            body.remove("data");
        }
        return Executed {
            status,
            body: body.to_string(),
            internal: false,
            held_back: false,
        };
    }
    let internal = response.errors.iter().any(|error| {
        error
            .extensions
            .as_ref()
            .and_then(|extensions| extensions.get("code"))
            .is_some_and(|code| *code == async_graphql::Value::from(Code::Internal.as_str()))
    });
    Executed {
        status,
        body: serde_json::to_string(&response).unwrap_or_default(),
        internal,
        held_back: consistency.held_back_entirely(),
    }
}

/// Sets `extensions.code` where a resolver did not, and `extensions.field` on GraphQL's own
/// errors about an argument's value (a wrong enum value, a required input field left out, an
/// unknown one), so that a form can mark the field they are about.
pub(crate) fn set_code(error: &mut ServerError, code: Code) {
    let field = input_field(&error.message);
    let extensions = error
        .extensions
        .get_or_insert_with(ErrorExtensionValues::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code.as_str());
    }
    if let Some(field) = field {
        if extensions.get("field").is_none() {
            extensions.set("field", field);
        }
    }
}

/// The input field an argument-value error of async-graphql's validation is about, read from
/// its message: `Invalid value for argument "input.employmentType", enumeration type …`
/// (`employmentType`), `… "input", field "lastName" of type "String!" is required but not
/// provided` (`lastName`), `… "input", unknown field "x" of type …` (`x`); the argument itself
/// when the value is wrong as a whole.
fn input_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Invalid value for argument \"")?;
    let (path, reason) = rest.split_once("\", ")?;
    let quoted = |after: &str| {
        reason
            .strip_prefix(after)
            .and_then(|r| r.split_once('"'))
            .map(|(name, _)| name.to_owned())
    };
    quoted("field \"")
        .filter(|_| reason.ends_with("is required but not provided"))
        .or_else(|| quoted("unknown field \""))
        .or_else(|| {
            path.rsplit('.')
                .find(|segment| segment.parse::<usize>().is_err())
                .map(str::to_owned)
        })
}

#[cfg(test)]
mod tests {
    use super::input_field;

    #[test]
    fn graphql_s_own_argument_errors_name_their_field() {
        assert_eq!(
            input_field(r#"Invalid value for argument "input.employmentType", enumeration type "EmploymentType" does not contain the value "BOGUS""#).as_deref(),
            Some("employmentType")
        );
        assert_eq!(
            input_field(r#"Invalid value for argument "input", field "lastName" of type "String!" is required but not provided"#).as_deref(),
            Some("lastName")
        );
        assert_eq!(
            input_field(r#"Invalid value for argument "input", unknown field "nickname" of type "CreateEmployeeInput""#).as_deref(),
            Some("nickname")
        );
        assert_eq!(
            input_field(r#"Invalid value for argument "input.emails.1", expected type "String""#)
                .as_deref(),
            Some("emails")
        );
        assert_eq!(input_field(r#"Unknown field "x" on type "Query"."#), None);
    }
}
