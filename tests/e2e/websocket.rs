//! `graphql-transport-ws` to the letter, with raw frames over a real WebSocket: every close
//! code of the protocol, ping and pong, the limits, and sessions that end while connected.

use std::time::Duration;

use custos_tests::feed::{next, send, Socket};
use custos_tests::{slug, Session, TestApp};
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const FEED: &str = "subscription { auditFeed { eventType aggregateId } }";

/// A WebSocket to `/graphql/ws`, offering `protocol` if given.
async fn connect(app: &TestApp, protocol: Option<&str>) -> Socket {
    let mut request = format!("ws://{}/graphql/ws", app.address)
        .into_client_request()
        .unwrap();
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// A connection acknowledged for `token`.
async fn acknowledged(app: &TestApp, token: &str) -> Socket {
    let mut socket = connect(app, Some("graphql-transport-ws")).await;
    init(&mut socket, token).await;
    let ack = next(&mut socket, Duration::from_secs(5)).await;
    assert_eq!(
        ack.as_ref().map(|a| a["type"].clone()),
        Some(json!("connection_ack")),
        "{ack:?}"
    );
    socket
}

async fn init(socket: &mut Socket, token: &str) {
    let payload = json!({ "authorization": format!("Bearer {token}") });
    send(
        socket,
        json!({ "type": "connection_init", "payload": payload }),
    )
    .await;
}

async fn subscribe(socket: &mut Socket, id: &str, query: &str) {
    send(
        socket,
        json!({ "id": id, "type": "subscribe", "payload": { "query": query } }),
    )
    .await;
}

/// The close frame the server sends next (code and reason), skipping anything else.
async fn closed(socket: &mut Socket, wait: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(message) = next(socket, deadline - tokio::time::Instant::now()).await {
        if message["type"] == "closed" {
            let code = message["code"].as_u64().expect("a close code") as u16;
            let reason = message["reason"].as_str().unwrap_or_default().to_owned();
            assert!(
                reason.len() <= 123,
                "a close reason of {} bytes",
                reason.len()
            );
            return (code, reason);
        }
    }
    panic!("not closed within {wait:?}");
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn every_protocol_violation_closes_with_its_code() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("wsclose")).await;

    // No subprotocol offered: 4406.
    let mut socket = connect(&app, None).await;
    assert_eq!(closed(&mut socket, SOON).await.0, 4406);

    // No token, or one that is not a session: 4403.
    let mut socket = connect(&app, Some("graphql-transport-ws")).await;
    send(&mut socket, json!({ "type": "connection_init" })).await;
    assert_eq!(closed(&mut socket, SOON).await.0, 4403);
    let mut socket = connect(&app, Some("graphql-transport-ws")).await;
    init(&mut socket, "cus_not_a_token").await;
    assert_eq!(closed(&mut socket, SOON).await.0, 4403);

    // Subscribe before the ack: 4401.
    let mut socket = connect(&app, Some("graphql-transport-ws")).await;
    subscribe(&mut socket, "1", FEED).await;
    assert_eq!(
        closed(&mut socket, SOON).await,
        (4401, "Unauthorized".to_owned())
    );

    // A second connection_init: 4429.
    let mut socket = acknowledged(&app, &admin.token).await;
    init(&mut socket, &admin.token).await;
    assert_eq!(closed(&mut socket, SOON).await.0, 4429);

    // A second subscriber under a running id: 4409.
    let mut socket = acknowledged(&app, &admin.token).await;
    subscribe(&mut socket, "same", FEED).await;
    subscribe(&mut socket, "same", FEED).await;
    let (code, reason) = closed(&mut socket, SOON).await;
    assert_eq!(
        (code, reason.as_str()),
        (4409, "Subscriber for same already exists")
    );

    // Messages that are not the protocol's: 4400, with a reason that fits a close frame even
    // when the message is long.
    let long_type = "x".repeat(500);
    for bad in [
        Message::Text("not json".into()),
        Message::Text(json!({ "type": long_type }).to_string().into()),
        Message::Text(
            json!({ "type": "subscribe", "id": "", "payload": { "query": FEED } })
                .to_string()
                .into(),
        ),
        Message::Text(json!({ "type": "subscribe", "id": "1" }).to_string().into()),
        Message::Text(json!({ "type": "ping", "payload": 42 }).to_string().into()),
        Message::Binary(vec![1, 2, 3].into()),
    ] {
        let mut socket = acknowledged(&app, &admin.token).await;
        socket.send(bad.clone()).await.unwrap();
        let (code, reason) = closed(&mut socket, SOON).await;
        assert_eq!(code, 4400, "{bad:?}: {reason}");
        assert!(reason.starts_with("Invalid message received"), "{reason}");
    }
}

#[tokio::test]
async fn a_connection_without_init_is_closed_after_the_configured_timeout() {
    let app = TestApp::spawn_with(|config| {
        config.websockets.init_timeout = Duration::from_millis(300);
    })
    .await;
    let mut socket = connect(&app, Some("graphql-transport-ws")).await;
    let (code, reason) = closed(&mut socket, SOON).await;
    assert_eq!(
        (code, reason.as_str()),
        (4408, "Connection initialisation timeout")
    );
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_let_go() {
    let app = TestApp::spawn_with(|config| {
        config.websockets.keepalive = Duration::from_millis(300);
    })
    .await;
    let admin = app.sign_up(&slug("wsalive")).await;
    // One that reads (its client library answers the pings) stays through several rounds.
    let mut reading = acknowledged(&app, &admin.token).await;
    assert_eq!(next(&mut reading, Duration::from_millis(1500)).await, None);
    send(&mut reading, json!({ "type": "ping" })).await;
    let pong = next(&mut reading, SOON).await.expect("still open");
    assert_eq!(pong["type"], "pong", "{pong}");
    // One that reads nothing sends no pong: let go by the second ping.
    let mut silent = acknowledged(&app, &admin.token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = tokio::time::timeout(SOON, async {
        loop {
            match futures::StreamExt::next(&mut silent).await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(other)) => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection is still open");
}

#[tokio::test]
async fn ping_pong_results_completion_and_ids_used_again() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("wsflow")).await;
    let mut socket = acknowledged(&app, &admin.token).await;

    send(&mut socket, json!({ "type": "ping" })).await;
    let pong = next(&mut socket, SOON).await.expect("a pong");
    assert_eq!(pong["type"], "pong", "{pong}");

    // A document that does not validate: `error` for its id, and the connection stays.
    subscribe(&mut socket, "bad", "subscription { noSuchFeed }").await;
    let error = next(&mut socket, SOON).await.expect("an error");
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("bad")),
        "{error}"
    );
    assert_eq!(
        error["payload"][0]["extensions"]["code"], "VALIDATION",
        "{error}"
    );

    // A subscription delivers `next`; `complete` from the client stops it; the id can be used
    // again.
    for round in 0..2 {
        subscribe(&mut socket, "feed", FEED).await;
        let first = created_and_seen(&app, &admin, &mut socket, "feed").await;
        assert_eq!(first["type"], "next", "round {round}: {first}");
        send(&mut socket, json!({ "type": "complete", "id": "feed" })).await;
        // Nothing more arrives for it (a pong proves the connection still answers).
        app.create_employee(
            &admin.token,
            json!({ "firstName": "After", "lastName": "Complete" }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        send(&mut socket, json!({ "type": "ping" })).await;
        let answer = next(&mut socket, SOON).await.expect("an answer");
        assert_eq!(answer["type"], "pong", "round {round}: {answer}");
    }
}

/// Creates employees until the subscription `id` reports one; its first message.
async fn created_and_seen(app: &TestApp, admin: &Session, socket: &mut Socket, id: &str) -> Value {
    for _ in 0..20 {
        app.create_employee(
            &admin.token,
            json!({ "firstName": "Live", "lastName": "Feed" }),
        )
        .await;
        if let Some(message) = next(socket, Duration::from_millis(1500)).await {
            assert_eq!(message["id"], id, "{message}");
            return message;
        }
    }
    panic!("the subscription {id} delivered nothing");
}

#[tokio::test]
async fn operations_per_connection_and_connections_per_organisation_are_limited() {
    let app = TestApp::spawn_with(|config| {
        config.websockets.max_operations = 2;
        config.websockets.max_connections_per_organization = 2;
    })
    .await;
    let admin = app.sign_up(&slug("wslimits")).await;
    let other = app.sign_up(&slug("wslimitso")).await;
    let mut socket = acknowledged(&app, &admin.token).await;
    subscribe(&mut socket, "1", FEED).await;
    subscribe(&mut socket, "2", FEED).await;
    subscribe(&mut socket, "3", FEED).await;
    let refused = next(&mut socket, SOON)
        .await
        .expect("an error for the third");
    assert_eq!(
        (refused["type"].as_str(), refused["id"].as_str()),
        (Some("error"), Some("3")),
        "{refused}"
    );
    assert!(
        refused["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{refused}"
    );
    // One stopped leaves room for another.
    send(&mut socket, json!({ "type": "complete", "id": "1" })).await;
    subscribe(&mut socket, "4", FEED).await;
    send(&mut socket, json!({ "type": "ping" })).await;
    let answer = next(&mut socket, SOON).await.expect("a pong");
    assert_eq!(answer["type"], "pong", "{answer}");

    let _second = acknowledged(&app, &admin.token).await;
    let mut third = connect(&app, Some("graphql-transport-ws")).await;
    init(&mut third, &admin.token).await;
    let (code, reason) = closed(&mut third, SOON).await;
    assert_eq!(code, 4429, "{reason}");
    // Another organisation has its own share.
    let _theirs = acknowledged(&app, &other.token).await;
    // A closed connection gives its place back.
    drop(_second);
    let mut again = None;
    for _ in 0..20 {
        let mut socket = connect(&app, Some("graphql-transport-ws")).await;
        init(&mut socket, &admin.token).await;
        match next(&mut socket, SOON).await {
            Some(answer) if answer["type"] == "connection_ack" => {
                again = Some(socket);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        again.is_some(),
        "the place of a closed connection is given back"
    );
}

/// Within this the server acts on a session change it is told about (the periodic check is 30
/// s: passing within this shows the announcement did it).
const TOLD: Duration = Duration::from_secs(5);

#[tokio::test]
async fn ending_a_session_closes_its_connections_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("wsend")).await;

    // Logout.
    let session = app
        .login(&admin.slug, &admin.email, &admin.password)
        .await
        .unwrap();
    let mut socket = acknowledged(&app, &session).await;
    subscribe(&mut socket, "1", FEED).await;
    app.graphql(Some(&session), "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(closed(&mut socket, TOLD).await.0, 4403);

    // Deactivation by an administrator.
    let viewer = app.role_id(&admin, "Viewer").await;
    let user = app.user_with_roles(&admin, &[viewer]).await;
    let mut socket = acknowledged(&app, &user.token).await;
    app.graphql(
        Some(&admin.token),
        "mutation($id: ID!) { deactivateUser(id: $id) { id } }",
        json!({ "id": user.user_id }),
    )
    .await
    .ok();
    assert_eq!(closed(&mut socket, TOLD).await.0, 4403);

    // A password change ends the user's other sessions.
    let other = app
        .login(&admin.slug, &admin.email, &admin.password)
        .await
        .unwrap();
    let mut socket = acknowledged(&app, &other).await;
    app.graphql(
        Some(&admin.token),
        "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { id } }",
        json!({ "c": admin.password, "n": "another correct horse battery" }),
    )
    .await
    .ok();
    assert_eq!(closed(&mut socket, TOLD).await.0, 4403);
}

#[tokio::test]
async fn a_subscription_whose_permission_is_revoked_ends_and_the_connection_stays() {
    let app = TestApp::spawn().await;
    let admin = app.sign_up(&slug("wsgrant")).await;
    let grants: Vec<Value> = ["EMPLOYEES", "CONTACTS", "APPLICANTS"]
        .iter()
        .map(|datasheet| json!({ "datasheet": datasheet, "permission": "HISTORY" }))
        .collect();
    let role = app
        .graphql(
            Some(&admin.token),
            "mutation($i: CreateRoleInput!) { createRole(input: $i) { id } }",
            json!({ "i": { "name": "Auditor", "grants": grants } }),
        )
        .await
        .ok();
    let role_id = role.data("createRole.id").as_str().unwrap().to_owned();
    let auditor = app
        .user_with_roles(&admin, std::slice::from_ref(&role_id))
        .await;
    let mut socket = acknowledged(&app, &auditor.token).await;
    subscribe(&mut socket, "feed", FEED).await;
    let first = created_and_seen(&app, &admin, &mut socket, "feed").await;
    assert_eq!(first["type"], "next", "{first}");
    while next(&mut socket, Duration::from_millis(300))
        .await
        .is_some()
    {}

    app.graphql(
        Some(&admin.token),
        "mutation($r: ID!, $g: GrantInput!) { revokePermission(roleId: $r, grant: $g) { id } }",
        json!({ "r": role_id, "g": { "datasheet": "CONTACTS", "permission": "HISTORY" } }),
    )
    .await
    .ok();
    let ended = next(&mut socket, TOLD)
        .await
        .expect("the subscription ends");
    assert_eq!(
        (ended["type"].as_str(), ended["id"].as_str()),
        (Some("error"), Some("feed")),
        "{ended}"
    );
    assert_eq!(
        ended["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{ended}"
    );
    send(&mut socket, json!({ "type": "ping" })).await;
    let pong = next(&mut socket, SOON)
        .await
        .expect("the connection answers");
    assert_eq!(pong["type"], "pong", "{pong}");
}
