//! GraphQL subscriptions over WebSocket at `/graphql/ws`: the `graphql-transport-ws` protocol
//! exactly as its specification (the `graphql-ws` project's PROTOCOL.md) says, with its close
//! codes, and the limits and session checks of this service.
//!
//! - The client offers the `graphql-transport-ws` subprotocol (4406 otherwise) and sends
//!   `connection_init` within the init timeout (4408), once (4429), with
//!   `{"authorization": "Bearer <token>"}` as its payload (4403 without a live session). The
//!   server answers `connection_ack`.
//! - `subscribe` before the ack is 4401; an id already running is 4409; a message that is not
//!   one of the protocol's is 4400. `ping` is answered with `pong`.
//! - Limits: operations at once per connection (more are answered with an `error` for that
//!   id), connections at once per organisation (more are closed with 4429).
//! - The session is checked again whenever a session, user, role or grant of its organisation
//!   changes (on any instance: the database announces it) and every half minute: an ended
//!   session closes the connection with 4403; a subscription its caller may no longer run ends
//!   with an `error` (`FORBIDDEN`).
//! - When the service stops, connections are closed with 1001; while the database is down,
//!   new ones are closed with 1013 (try again later).
//!
//! Close reasons are at most 123 bytes, as the WebSocket protocol requires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{Pos, ServerError};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll, SplitSink};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::graphql::set_code;
use super::request::ClientOrigin;
use super::sockets::SocketPlace;
use super::state::AppState;
use crate::auth::principal::Principal;
use crate::config::WebSocketLimits;
use crate::error::{ApiError, Code};
use crate::graphql::authorization::may_subscribe;
use crate::graphql::consistency::Consistency;
use crate::graphql::context::{RequestContext, SubscriptionAuth};
use crate::graphql::loaders::Loaders;
use crate::infra::event_store::log::Position;
use crate::service::identity::RequestOrigin;
use crate::telemetry::metrics::Tracked;

/// The one subprotocol served.
const PROTOCOL: &str = "graphql-transport-ws";

/// The protocol's close codes, and the WebSocket ones used here.
mod close {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const TRY_AGAIN_LATER: u16 = 1013;
    pub(super) const BAD_REQUEST: u16 = 4400;
    pub(super) const UNAUTHORIZED: u16 = 4401;
    pub(super) const FORBIDDEN: u16 = 4403;
    pub(super) const SUBPROTOCOL_NOT_ACCEPTABLE: u16 = 4406;
    pub(super) const INIT_TIMEOUT: u16 = 4408;
    pub(super) const SUBSCRIBER_EXISTS: u16 = 4409;
    pub(super) const TOO_MANY: u16 = 4429;
}

/// The longest a close reason may be (a close frame's payload is at most 125 bytes, two of
/// them the code).
const MAX_REASON: usize = 123;

/// The longest a message may take to reach the client (one that stops reading is let go).
const SEND: Duration = Duration::from_secs(10);

/// How often the session is checked again without any announced change (a bound for what an
/// announcement could miss, e.g. a session that expired).
const RECHECK: Duration = Duration::from_secs(30);

/// What a client sends.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: Box<async_graphql::Request>,
    },
    Complete {
        id: String,
    },
}

impl ClientMessage {
    /// What the protocol forbids that the message's shape allows: an empty id, a payload that
    /// is neither an object nor null.
    fn problem(&self) -> Option<&'static str> {
        let payload = match self {
            ClientMessage::ConnectionInit { payload }
            | ClientMessage::Ping { payload }
            | ClientMessage::Pong { payload } => payload.as_ref(),
            ClientMessage::Subscribe { id, .. } | ClientMessage::Complete { id } => {
                return id.is_empty().then_some("the id is empty");
            }
        };
        match payload {
            None | Some(Value::Null | Value::Object(_)) => None,
            Some(_) => Some("the payload is not an object"),
        }
    }
}

/// `GET /graphql/ws`: upgrades to a WebSocket speaking `graphql-transport-ws`.
pub(crate) async fn graphql_ws(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim() == PROTOCOL);
    upgrade.protocols([PROTOCOL]).on_upgrade(move |socket| {
        let open = Tracked::new(&state.services.metrics.websocket_connections);
        async move {
            let (sink, incoming) = socket.split();
            let mut connection = Connection {
                state,
                origin,
                sink,
                session: None,
                initialised: false,
                operations: HashMap::new(),
                outputs: SelectAll::new(),
                started: 0,
            };
            if offered {
                connection.run(incoming).await;
            } else {
                connection
                    .close(
                        close::SUBPROTOCOL_NOT_ACCEPTABLE,
                        "Subprotocol not acceptable",
                    )
                    .await;
            }
            drop(open);
        }
    })
}

/// The live session a connection was acknowledged with.
struct Session {
    token: String,
    principal: Principal,
    changes: tokio::sync::watch::Receiver<u64>,
    _place: SocketPlace,
}

/// A running operation: which one it is (an id may be used again once it ended), how to stop
/// it, and its root field (for a subscription, checked again when the session changes).
struct Operation {
    started: u64,
    stop: AbortHandle,
    field: Option<String>,
}

/// What an operation sends: its id and start, then each response, then `None` when it ends.
type Output = (String, u64, Option<async_graphql::Response>);

/// What to do after a message.
enum Flow {
    Continue,
    Close(u16, String),
}

struct Connection {
    state: AppState,
    origin: RequestOrigin,
    sink: SplitSink<WebSocket, Message>,
    session: Option<Session>,
    initialised: bool,
    operations: HashMap<String, Operation>,
    outputs: SelectAll<BoxStream<'static, Output>>,
    started: u64,
}

/// Waits for the session's next change (forever without a session).
async fn changed(session: Option<&mut Session>) -> bool {
    match session {
        Some(session) => session.changes.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Connection {
    fn limits(&self) -> &WebSocketLimits {
        &self.state.websockets
    }

    async fn run(&mut self, mut incoming: futures::stream::SplitStream<WebSocket>) {
        let closing = self.state.services.closing.clone();
        let init_timeout = tokio::time::sleep(self.limits().init_timeout);
        let mut init_timeout = std::pin::pin!(init_timeout);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        // A WebSocket ping every `keepalive`, so a connection whose client vanished is found:
        // one that sent nothing, not even the pong, by the next ping is let go.
        let every = self.limits().keepalive;
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Whether anything came from the client since the last ping.
        let mut heard = true;
        loop {
            let flow = tokio::select! {
                message = incoming.next() => match message {
                    Some(Ok(message)) => {
                        heard = true;
                        self.receive(message).await
                    }
                    // The client went away.
                    Some(Err(_)) | None => return,
                },
                () = &mut init_timeout, if !self.initialised => Flow::Close(
                    close::INIT_TIMEOUT,
                    "Connection initialisation timeout".to_owned(),
                ),
                Some(output) = self.outputs.next(), if !self.outputs.is_empty() => {
                    self.deliver(output).await
                }
                alive = changed(self.session.as_mut()) => {
                    if alive { self.recheck().await } else { Flow::Continue }
                }
                _ = recheck.tick() => self.recheck().await,
                _ = keepalive.tick() => {
                    // Not even the last ping's pong: the client is gone.
                    if !heard {
                        return;
                    }
                    heard = false;
                    if self.send(Message::Ping(Vec::new().into())).await {
                        Flow::Continue
                    } else {
                        return;
                    }
                }
                () = closing.cancelled() => Flow::Close(
                    close::GOING_AWAY,
                    "the service is stopping".to_owned(),
                ),
            };
            if let Flow::Close(code, reason) = flow {
                self.close(code, &reason).await;
                return;
            }
        }
    }

    async fn receive(&mut self, message: Message) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return Flow::Close(
                    close::BAD_REQUEST,
                    "Invalid message received: messages are JSON text".to_owned(),
                )
            }
            // WebSocket pings are answered by the socket itself.
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => return Flow::Close(1000, String::new()),
        };
        let message = match serde_json::from_str::<ClientMessage>(text.as_str()) {
            Ok(message) => message,
            Err(err) => {
                return Flow::Close(
                    close::BAD_REQUEST,
                    format!("Invalid message received: {err}"),
                )
            }
        };
        if let Some(problem) = message.problem() {
            return Flow::Close(
                close::BAD_REQUEST,
                format!("Invalid message received: {problem}"),
            );
        }
        match message {
            ClientMessage::ConnectionInit { payload } => self.initialise(payload).await,
            ClientMessage::Ping { .. } => self.reply(json!({ "type": "pong" })).await,
            ClientMessage::Pong { .. } => Flow::Continue,
            ClientMessage::Subscribe { id, payload } => self.subscribe(id, *payload).await,
            ClientMessage::Complete { id } => {
                if let Some(operation) = self.operations.remove(&id) {
                    operation.stop.abort();
                }
                Flow::Continue
            }
        }
    }

    /// `connection_init`: authenticates the session its payload names.
    async fn initialise(&mut self, payload: Option<Value>) -> Flow {
        if self.initialised {
            return Flow::Close(
                close::TOO_MANY,
                "Too many initialisation requests".to_owned(),
            );
        }
        self.initialised = true;
        let services = self.state.services.clone();
        if !services.database.is_up() {
            return Flow::Close(
                close::TRY_AGAIN_LATER,
                "the database is unavailable; try again shortly".to_owned(),
            );
        }
        let token = payload
            .as_ref()
            .and_then(|payload| payload.get("authorization"))
            .and_then(Value::as_str)
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_owned);
        let Some(token) = token else {
            return Flow::Close(
                close::FORBIDDEN,
                "Forbidden: give {\"authorization\": \"Bearer <token>\"} in connection_init"
                    .to_owned(),
            );
        };
        let principal = match services.authenticate(&token, &self.origin).await {
            Ok(Some(principal)) => principal,
            Ok(None) => {
                return Flow::Close(
                    close::FORBIDDEN,
                    "Forbidden: the token is not a live session".to_owned(),
                )
            }
            Err(err) => {
                err.report();
                return Flow::Close(
                    close::TRY_AGAIN_LATER,
                    "authentication is unavailable; try again shortly".to_owned(),
                );
            }
        };
        let max = self.limits().max_connections_per_organization;
        let Some(place) = self.state.sockets.take(principal.tenant.id, max) else {
            return Flow::Close(
                close::TOO_MANY,
                format!("Too many connections: at most {max} per organisation"),
            );
        };
        // A change between the authentication above and this subscription to changes would
        // be missed: the session is checked once more, at once.
        let mut changes = principal.tenant.caches.session_changes();
        changes.mark_changed();
        self.session = Some(Session {
            token,
            changes,
            principal,
            _place: place,
        });
        self.reply(json!({ "type": "connection_ack" })).await
    }

    /// `subscribe`: starts an operation (over WebSocket, only subscriptions run).
    async fn subscribe(&mut self, id: String, request: async_graphql::Request) -> Flow {
        let Some(session) = &self.session else {
            return Flow::Close(close::UNAUTHORIZED, "Unauthorized".to_owned());
        };
        if self.operations.contains_key(&id) {
            return Flow::Close(
                close::SUBSCRIBER_EXISTS,
                format!("Subscriber for {id} already exists"),
            );
        }
        let max = self.limits().max_operations;
        if self.operations.len() >= max {
            let error = ServerError::new(
                format!("at most {max} operations may run at once on one connection"),
                None,
            );
            return self.refuse(&id, error, Code::Validation).await;
        }
        // What `Custos-After` is to a request over HTTP: the subscription starts once the read
        // models show the change another instance answered with this position.
        let after = match custos_after(&request.extensions) {
            Ok(after) => after,
            Err(message) => {
                return self
                    .refuse(&id, ServerError::new(message, None), Code::Validation)
                    .await
            }
        };
        let mut request = request;
        let field = subscription_field(&mut request);
        let principal = session.principal.clone();
        Loaders::new(&principal).attach(&mut request.data);
        let request = request
            .data(SubscriptionAuth {
                token: session.token.clone(),
                origin: self.origin.clone(),
            })
            .data(RequestContext {
                origin: self.origin.clone(),
                principal: Some(principal),
            })
            .data(Arc::new(Consistency::after(after)));
        self.started += 1;
        let started = self.started;
        let (stop, registration) = AbortHandle::new_pair();
        let responses = Abortable::new(self.state.schema.execute_stream(request), registration);
        let tagged = id.clone();
        let ended = id.clone();
        let output = responses
            .map(move |response| (tagged.clone(), started, Some(response)))
            .chain(futures::stream::once(async move { (ended, started, None) }));
        self.outputs.push(output.boxed());
        self.operations.insert(
            id,
            Operation {
                started,
                stop,
                field,
            },
        );
        Flow::Continue
    }

    /// Sends what an operation produced: `next` for each response (`error` for one that
    /// failed before it ran), `complete` at its end.
    async fn deliver(&mut self, (id, started, response): Output) -> Flow {
        // A stopped operation, or an earlier one under the same id, sends nothing more.
        if self
            .operations
            .get(&id)
            .is_none_or(|operation| operation.started != started)
        {
            return Flow::Continue;
        }
        let Some(mut response) = response else {
            self.operations.remove(&id);
            return self.reply(json!({ "type": "complete", "id": id })).await;
        };
        for error in &mut response.errors {
            set_code(error, Code::Validation);
        }
        if response.data == async_graphql::Value::Null && !response.errors.is_empty() {
            // It did not run (or its stream failed): the protocol's `error`, and nothing after.
            if let Some(operation) = self.operations.remove(&id) {
                operation.stop.abort();
            }
            return self
                .reply(json!({ "type": "error", "id": id, "payload": response.errors }))
                .await;
        }
        self.reply(json!({ "type": "next", "id": id, "payload": response }))
            .await
    }

    /// Answers `id` with an `error` carrying one error with `code`.
    async fn refuse(&mut self, id: &str, mut error: ServerError, code: Code) -> Flow {
        set_code(&mut error, code);
        self.reply(json!({ "type": "error", "id": id, "payload": [error] }))
            .await
    }

    /// Checks the session again: an ended one closes the connection; a subscription its caller
    /// may no longer run ends with an error.
    async fn recheck(&mut self) -> Flow {
        let Some(session) = &self.session else {
            return Flow::Continue;
        };
        let services = self.state.services.clone();
        let principal = match services.authenticate(&session.token, &self.origin).await {
            Ok(Some(principal)) if principal.tenant.id == session.principal.tenant.id => principal,
            Ok(_) => {
                return Flow::Close(close::FORBIDDEN, "Forbidden: the session ended".to_owned())
            }
            // Checked again at the next change or round.
            Err(_) => return Flow::Continue,
        };
        let refused: Vec<(String, ApiError)> = self
            .operations
            .iter()
            .filter_map(|(id, operation)| {
                let field = operation.field.as_deref()?;
                may_subscribe(field, &principal)
                    .err()
                    .map(|err| (id.clone(), err))
            })
            .collect();
        if let Some(session) = &mut self.session {
            if !Arc::ptr_eq(&session.principal.tenant, &principal.tenant) {
                session.changes = principal.tenant.caches.session_changes();
            }
            session.principal = principal;
        }
        for (id, err) in refused {
            if let Some(operation) = self.operations.remove(&id) {
                operation.stop.abort();
            }
            let error = async_graphql::Error::from(err).into_server_error(Pos::default());
            if let Flow::Close(code, reason) = self.refuse(&id, error, Code::Forbidden).await {
                return Flow::Close(code, reason);
            }
        }
        Flow::Continue
    }

    /// Sends a protocol message; a client that does not take it is let go.
    async fn reply(&mut self, message: Value) -> Flow {
        if self.send(Message::Text(message.to_string().into())).await {
            Flow::Continue
        } else {
            Flow::Close(1000, String::new())
        }
    }

    /// Sends one message; `false` when the client is gone or does not take it in time.
    async fn send(&mut self, message: Message) -> bool {
        matches!(
            tokio::time::timeout(SEND, self.sink.send(message)).await,
            Ok(Ok(()))
        )
    }

    /// Closes with `code` and `reason` (cut to what a close frame holds), stopping every
    /// operation.
    async fn close(&mut self, code: u16, reason: &str) {
        for (_, operation) in self.operations.drain() {
            operation.stop.abort();
        }
        let frame = CloseFrame {
            code,
            reason: clip(reason).into(),
        };
        if self.send(Message::Close(Some(frame))).await {
            let _ = tokio::time::timeout(SEND, self.sink.close()).await;
        }
    }
}

/// `reason` cut at a character boundary to at most [`MAX_REASON`] bytes.
fn clip(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The position a subscription's `extensions.custosAfter` names, if it has one (the
/// `extensions.position` of an earlier response, as `Custos-After` takes it over HTTP).
fn custos_after(extensions: &async_graphql::Extensions) -> Result<Option<Position>, &'static str> {
    match extensions.0.get("custosAfter") {
        None | Some(async_graphql::Value::Null) => Ok(None),
        Some(async_graphql::Value::String(text)) => text.parse().map(Some).map_err(|_| AFTER),
        Some(_) => Err(AFTER),
    }
}

const AFTER: &str = "extensions.custosAfter must be the extensions.position of an earlier response";

/// The root field of a subscription document's operation (the one named, or the only one),
/// if the request is a subscription, found through fragments as well (validation refuses
/// more than one root field). The document parsed here is the one the request runs.
fn subscription_field(request: &mut async_graphql::Request) -> Option<String> {
    let operation_name = request.operation_name.clone();
    let document = request.parsed_query().ok()?;
    let operation = match (&document.operations, &operation_name) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name.as_str())?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    if operation.node.ty != OperationType::Subscription {
        return None;
    }
    first_field(document, &operation.node.selection_set.node, 0)
}

/// The first field of a selection set, looking into fragments at most 8 deep (this runs before
/// the document limits, which refuse a fragment that spreads itself, so a cycle must end here).
fn first_field(document: &ExecutableDocument, set: &SelectionSet, depth: usize) -> Option<String> {
    if depth > 8 {
        return None;
    }
    set.items.iter().find_map(|item| match &item.node {
        Selection::Field(field) => Some(field.node.name.node.to_string()),
        Selection::InlineFragment(fragment) => {
            first_field(document, &fragment.node.selection_set.node, depth + 1)
        }
        Selection::FragmentSpread(spread) => document
            .fragments
            .get(&spread.node.fragment_name.node)
            .and_then(|fragment| {
                first_field(document, &fragment.node.selection_set.node, depth + 1)
            }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        assert!(clip(&long).len() <= MAX_REASON);
        assert_eq!(clip(&long).len(), 122);
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn the_subscription_field_is_read_from_the_named_operation() {
        let mut request = async_graphql::Request::new(
            "query A { me { id } } subscription B { auditFeed { eventType } }",
        )
        .operation_name("B");
        assert_eq!(
            subscription_field(&mut request).as_deref(),
            Some("auditFeed")
        );
        let mut request = async_graphql::Request::new("{ me { id } }");
        assert_eq!(subscription_field(&mut request), None);
        // Through a fragment spread and an inline fragment.
        let mut request = async_graphql::Request::new(
            "subscription { ...F } fragment F on Subscription { ... on Subscription { auditFeed { eventType } } }",
        );
        assert_eq!(
            subscription_field(&mut request).as_deref(),
            Some("auditFeed")
        );
    }
}
