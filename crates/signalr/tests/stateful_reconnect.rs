//! Stateful reconnect against a real server with the echo hub: negotiate, the
//! resend and de-duplication across a new socket, and the two ways it ends a
//! connection (the window passes; the buffer overflows while the socket is down).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use next_chat_signalr::server::HubConfig;
use next_chat_signalr::{HubMessage, Outcome, Protocol, Value};
use tokio::time::Instant;

const STATEFUL: &str = "?negotiateVersion=1&useStatefulReconnect=true";

/// Negotiates stateful reconnect as `user`; returns (connection id, token).
async fn negotiate_stateful(server: &TestServer, user: &str) -> (String, String) {
    let (status, body) = negotiate(server.addr, STATEFUL, Some(user)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["useStatefulReconnect"], true, "{body}");
    let id = body["connectionId"].as_str().expect("connectionId").to_owned();
    let token = body["connectionToken"].as_str().expect("connectionToken").to_owned();
    (id, token)
}

/// Opens the connection's WebSocket and does the handshake at `version`.
async fn open(server: &TestServer, token: &str, user: &str, version: i64) -> Ws {
    let mut ws =
        ws_connect(server.addr, &format!("?id={token}"), Some(user)).await.expect("upgrade");
    ws_send_text(&mut ws, &format!("{{\"protocol\":\"json\",\"version\":{version}}}\u{1e}")).await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some(&b"{}\x1e"[..]));
    ws
}

async fn send(ws: &mut Ws, message: &HubMessage) {
    let record = Protocol::Json.encode(message);
    ws_send_text(ws, std::str::from_utf8(&record).expect("JSON is text")).await;
}

fn call(id: &str, target: &str, argument: &str) -> HubMessage {
    HubMessage::Invocation {
        invocation_id: Some(id.to_owned()),
        target: target.to_owned(),
        arguments: vec![Value::Str(argument.to_owned())],
        stream_ids: Vec::new(),
    }
}

/// The next hub message other than a Ping.
async fn next(ws: &mut Ws) -> HubMessage {
    loop {
        let bytes = ws_next(ws).await.expect("the socket is open");
        let mut messages = decode_all(Protocol::Json, &bytes);
        assert_eq!(messages.len(), 1, "one record per WebSocket message");
        match messages.remove(0) {
            HubMessage::Ping => continue,
            message => return message,
        }
    }
}

fn completion(id: &str, outcome: Outcome) -> HubMessage {
    HubMessage::Completion { invocation_id: id.to_owned(), outcome }
}

fn text(value: &str) -> Outcome {
    Outcome::Result(Value::Str(value.to_owned()))
}

#[tokio::test]
async fn negotiate_offers_stateful_reconnect_only_when_asked_and_enabled() {
    let server = spawn(HubConfig::default()).await;
    let (_, body) = negotiate(server.addr, "?negotiateVersion=1", Some("alice")).await;
    assert!(body.get("useStatefulReconnect").is_none(), "not asked: {body}");
    negotiate_stateful(&server, "alice").await;

    let off = spawn(HubConfig { stateful_reconnect: false, ..HubConfig::default() }).await;
    let (_, body) = negotiate(off.addr, STATEFUL, Some("alice")).await;
    assert!(body.get("useStatefulReconnect").is_none(), "disabled: {body}");
}

#[tokio::test]
async fn a_new_socket_gets_what_was_not_acked_and_duplicates_are_dropped() {
    let server = spawn(HubConfig::default()).await;
    let (_, token) = negotiate_stateful(&server, "alice").await;
    let mut ws = open(&server, &token, "alice", 2).await;

    // Server ids: 1 the first completion, 2 Notified, 3 its completion, 4 the last.
    send(&mut ws, &call("1", "Echo", "a")).await;
    assert_eq!(next(&mut ws).await, completion("1", text("a")));
    send(&mut ws, &call("2", "Notify", "n")).await;
    assert!(
        matches!(next(&mut ws).await, HubMessage::Invocation { target, .. } if target == "Notified")
    );
    assert_eq!(next(&mut ws).await, completion("2", Outcome::Void));
    send(&mut ws, &HubMessage::Ack { sequence_id: 1 }).await;
    // The session handles messages in order: once this completes, the Ack is in.
    send(&mut ws, &call("3", "Echo", "sync")).await;
    assert_eq!(next(&mut ws).await, completion("3", text("sync")));
    drop(ws);

    let mut ws = ws_connect(server.addr, &format!("?id={token}"), Some("alice"))
        .await
        .expect("the same token takes the connection over");
    // No handshake: the server starts with where its resend starts.
    assert_eq!(next(&mut ws).await, HubMessage::Sequence { sequence_id: 2 });
    assert!(
        matches!(next(&mut ws).await, HubMessage::Invocation { target, .. } if target == "Notified")
    );
    assert_eq!(next(&mut ws).await, completion("2", Outcome::Void));
    assert_eq!(next(&mut ws).await, completion("3", text("sync")));

    // The client resends its third message (the server has it) and a new one.
    send(&mut ws, &HubMessage::Sequence { sequence_id: 3 }).await;
    send(&mut ws, &call("3", "Echo", "sync")).await;
    send(&mut ws, &call("4", "Echo", "b")).await;
    assert_eq!(next(&mut ws).await, completion("4", text("b")), "the duplicate is not run again");
    // The server acknowledges all four within its Ack interval.
    assert_eq!(next(&mut ws).await, HubMessage::Ack { sequence_id: 4 });
    assert_eq!(server.hub.resumes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_connection_ends_when_no_reconnect_comes_within_the_window() {
    let window = Duration::from_millis(300);
    let mut server =
        spawn(HubConfig { stateful_reconnect_window: window, ..HubConfig::default() }).await;
    let (id, token) = negotiate_stateful(&server, "alice").await;
    let ws = open(&server, &token, "alice", 2).await;
    let dropped = Instant::now();
    drop(ws);
    assert_eq!(server.next_end().await, (id, "expired"));
    assert!(dropped.elapsed() >= window, "kept for the window: {:?}", dropped.elapsed());
    let again = ws_connect(server.addr, &format!("?id={token}"), Some("alice")).await;
    assert!(again.is_err(), "a reconnect after the window is refused");
}

#[tokio::test]
async fn a_buffer_overflow_while_the_socket_is_down_ends_the_connection() {
    let mut server =
        spawn(HubConfig { stateful_reconnect_buffer_bytes: 1000, ..HubConfig::default() }).await;
    let (id, token) = negotiate_stateful(&server, "alice").await;
    let ws = open(&server, &token, "alice", 2).await;
    let connection = server.hub.connection(&id).expect("connected");
    drop(ws);
    // 100 records of 100+ bytes for a client that is away: the buffer holds 1000.
    let payload = "x".repeat(100);
    for _ in 0..100 {
        if connection.send_invocation("Later", vec![Value::Str(payload.clone())]).is_err() {
            break;
        }
    }
    assert_eq!(server.next_end().await, (id, "overflowed"));
}

#[tokio::test]
async fn a_version_1_handshake_gets_a_plain_connection() {
    let mut server = spawn(HubConfig::default()).await;
    let (id, token) = negotiate_stateful(&server, "alice").await;
    let ws = open(&server, &token, "alice", 1).await;
    drop(ws);
    // Ends with the socket, not after the window.
    assert_eq!(server.next_end().await, (id, "other"));
}

#[tokio::test]
async fn another_user_cannot_take_a_connection_over() {
    let server = spawn(HubConfig::default()).await;
    let (_, token) = negotiate_stateful(&server, "alice").await;
    let _ws = open(&server, &token, "alice", 2).await;
    let refused = ws_connect(server.addr, &format!("?id={token}"), Some("mallory")).await;
    assert_eq!(refused.err(), Some(403));
}

#[tokio::test]
async fn a_client_that_never_acks_is_closed_as_a_slow_consumer() {
    // Socket up, buffer full: the writer waits for an Ack, the outbound queue
    // fills behind it, and its bound closes the connection, Close message included.
    let mut server = spawn(HubConfig {
        stateful_reconnect_buffer_bytes: 1000,
        outbound_queue_capacity: 8,
        ..HubConfig::default()
    })
    .await;
    let (id, token) = negotiate_stateful(&server, "alice").await;
    let mut ws = open(&server, &token, "alice", 2).await;
    let connection = server.hub.connection(&id).expect("connected");
    let payload = "x".repeat(100);
    let mut sent = 0;
    while connection.send_invocation("Later", vec![Value::Str(payload.clone())]).is_ok() {
        sent += 1;
        assert!(sent < 100, "the queue bound applies");
    }
    let mut received = 0;
    let close = loop {
        match next(&mut ws).await {
            HubMessage::Invocation { .. } => received += 1,
            HubMessage::Close { error, .. } => break error,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(close.is_some_and(|e| e.contains("outbound queue full")));
    assert!(received < sent, "not everything went out without an Ack: {received} of {sent}");
    assert_eq!(server.next_end().await, (id, "slow"));
}

#[tokio::test]
async fn shutdown_still_sends_the_close_message() {
    let mut server = spawn(HubConfig::default()).await;
    let (id, token) = negotiate_stateful(&server, "alice").await;
    let mut ws = open(&server, &token, "alice", 2).await;
    let hub_server = server.server.clone();
    let shutdown = tokio::spawn(async move { hub_server.shutdown(Duration::from_secs(5)).await });
    assert_eq!(next(&mut ws).await, HubMessage::Close { error: None, allow_reconnect: true });
    assert_eq!(ws_next(&mut ws).await, None);
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown returns").expect("no panic");
    assert_eq!(server.next_end().await, (id, "other"));
}
