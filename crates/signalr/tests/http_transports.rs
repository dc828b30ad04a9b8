//! Negotiate, Server-Sent Events and Long Polling end to end, over raw HTTP/1.1 on
//! a real socket, as the stock clients drive them.

mod common;

use std::time::Duration;

use common::*;
use next_chat_signalr::server::HubConfig;

const HANDSHAKE_JSON: &[u8] = b"{\"protocol\":\"json\",\"version\":1}\x1e";

async fn post(test: &TestServer, token: &str, user: Option<&str>, body: &[u8]) -> HttpResponse {
    let authorization = user.map(auth);
    let mut headers = vec![("Content-Type", "text/plain;charset=UTF-8")];
    if let Some(a) = &authorization {
        headers.push(("Authorization", a.as_str()));
    }
    http(test.addr, "POST", &format!("{PATH}?id={token}"), &headers, body).await
}

async fn poll(test: &TestServer, token: &str, user: &str) -> HttpResponse {
    let authorization = auth(user);
    http(
        test.addr,
        "GET",
        &format!("{PATH}?id={token}&_=1"),
        &[("Authorization", authorization.as_str())],
        b"",
    )
    .await
}

/// Polls until a poll returns data (idle polls return 200 empty).
async fn poll_data(test: &TestServer, token: &str, user: &str) -> Vec<u8> {
    loop {
        let response = poll(test, token, user).await;
        assert_eq!(response.status, 200, "{}", response.text());
        if !response.body.is_empty() {
            return response.body;
        }
    }
}

#[tokio::test]
async fn negotiate_answers_v0_and_v1_shapes() {
    let test = spawn(HubConfig::default()).await;
    let (status, v0) = negotiate(test.addr, "", Some("alice")).await;
    assert_eq!(status, 200);
    assert_eq!(v0["negotiateVersion"], 0);
    assert_eq!(v0["connectionId"].as_str().map(str::len), Some(22));
    for absent in ["connectionToken", "url", "accessToken", "error", "useStatefulReconnect"] {
        assert!(v0.get(absent).is_none(), "{absent} must be absent: {v0}");
    }
    assert_eq!(
        v0["availableTransports"],
        serde_json::json!([
            {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
            {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
            {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
        ])
    );
    let (status, v1) = negotiate(test.addr, "?negotiateVersion=1", Some("alice")).await;
    assert_eq!(status, 200);
    assert_eq!(v1["negotiateVersion"], 1);
    let token = v1["connectionToken"].as_str().expect("a token");
    assert_ne!(Some(token), v1["connectionId"].as_str());
    assert_eq!(negotiate(test.addr, "", None).await.0, 401);
    assert_eq!(negotiate(test.addr, "", Some("invalid")).await.0, 401);
}

#[tokio::test]
async fn negotiate_v0_id_is_what_transports_carry() {
    let test = spawn(HubConfig::default()).await;
    let (_, v0) = negotiate(test.addr, "", Some("alice")).await;
    let id = v0["connectionId"].as_str().expect("an id");
    let first = poll(&test, id, "alice").await;
    assert_eq!(first.status, 200);
    assert!(first.body.is_empty());
}

#[tokio::test]
async fn server_sent_events_round_trip() {
    let mut test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    // EventSource puts the identity in the query; POSTs use the header.
    let mut events =
        SseStream::open(test.addr, &format!("{PATH}?id={token}&access_token=alice")).await;
    assert_eq!(events.status, 200);
    events.expect_prefix(b":\r\n").await;
    assert_eq!(post(&test, &token, Some("alice"), HANDSHAKE_JSON).await.status, 200);
    assert_eq!(events.next_event().await.as_deref(), Some(&b"{}\x1e"[..]));
    let response = post(
        &test,
        &token,
        Some("alice"),
        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"sse\"]}\x1e{\"type\":1,\"invocationId\":\"2\",\"target\":\"Fail\",\"arguments\":[]}\x1e",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        events.next_event().await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"1\",\"result\":\"sse\"}\x1e"[..])
    );
    assert_eq!(
        events.next_event().await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"2\",\"error\":\"failed on purpose\"}\x1e"[..])
    );
    // The client stops: a Close message by POST ends the stream.
    post(&test, &token, Some("alice"), b"{\"type\":7}\x1e").await;
    assert_eq!(events.next_event().await, None);
    test.next_disconnected().await;
}

#[tokio::test]
async fn server_sent_events_refuse_messagepack() {
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    let mut events =
        SseStream::open(test.addr, &format!("{PATH}?id={token}&access_token=alice")).await;
    events.expect_prefix(b":\r\n").await;
    post(&test, &token, Some("alice"), b"{\"protocol\":\"messagepack\",\"version\":1}\x1e").await;
    let answer = String::from_utf8(events.next_event().await.expect("an answer")).expect("text");
    assert!(
        answer.starts_with(
            "{\"error\":\"The 'messagepack' protocol cannot be used over ServerSentEvents"
        ),
        "{answer}"
    );
    assert_eq!(events.next_event().await, None);
}

#[tokio::test]
async fn server_sent_events_check_identity() {
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    let other = SseStream::open(test.addr, &format!("{PATH}?id={token}&access_token=bob")).await;
    assert_eq!(other.status, 403);
    let anonymous = SseStream::open(test.addr, &format!("{PATH}?id={token}")).await;
    assert_eq!(anonymous.status, 401);
    let mut events =
        SseStream::open(test.addr, &format!("{PATH}?id={token}&access_token=alice")).await;
    assert_eq!(events.status, 200);
    events.expect_prefix(b":\r\n").await;
    assert_eq!(post(&test, &token, None, HANDSHAKE_JSON).await.status, 401);
    assert_eq!(post(&test, &token, Some("bob"), HANDSHAKE_JSON).await.status, 403);
    assert_eq!(post(&test, "nope", Some("alice"), HANDSHAKE_JSON).await.status, 404);
    assert_eq!(post(&test, &token, Some("alice"), HANDSHAKE_JSON).await.status, 200);
    assert_eq!(events.next_event().await.as_deref(), Some(&b"{}\x1e"[..]));
}

#[tokio::test]
async fn long_polling_json_round_trip() {
    let mut test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    // The first poll starts the connection and returns at once, empty.
    let first = poll(&test, &token, "alice").await;
    assert_eq!(first.status, 200);
    assert!(first.body.is_empty());
    assert_eq!(post(&test, &token, Some("alice"), HANDSHAKE_JSON).await.status, 200);
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    post(
        &test,
        &token,
        Some("alice"),
        b"{\"type\":1,\"target\":\"Notify\",\"arguments\":[1]}\x1e{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"lp\"]}\x1e",
    )
    .await;
    let mut received = Vec::new();
    let expected: &[u8] = b"{\"type\":1,\"target\":\"Notified\",\"arguments\":[1]}\x1e{\"type\":3,\"invocationId\":\"1\",\"result\":\"lp\"}\x1e";
    while received.len() < expected.len() {
        received.extend(poll_data(&test, &token, "alice").await);
    }
    assert_eq!(received, expected);
    // Another user may not poll or stop it.
    assert_eq!(poll(&test, &token, "bob").await.status, 403);
    let stop = http(
        test.addr,
        "DELETE",
        &format!("{PATH}?id={token}"),
        &[("Authorization", "Bearer alice")],
        b"",
    )
    .await;
    assert_eq!(stop.status, 202);
    test.next_disconnected().await;
    let after = poll(&test, &token, "alice").await;
    assert!(matches!(after.status, 204 | 404), "{}", after.status);
}

#[tokio::test]
async fn long_polling_carries_messagepack() {
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    assert_eq!(poll(&test, &token, "alice").await.status, 200);
    post(&test, &token, Some("alice"), b"{\"protocol\":\"messagepack\",\"version\":1}\x1e").await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    let mut body = vec![0x95, 0x01, 0x80, 0xa1, b'1', 0xa4];
    body.extend_from_slice(b"Echo");
    body.extend_from_slice(&[0x91, 0xc3]);
    let mut record = vec![body.len() as u8];
    record.extend_from_slice(&body);
    let authorization = auth("alice");
    let sent = http(
        test.addr,
        "POST",
        &format!("{PATH}?id={token}"),
        &[("Content-Type", "application/octet-stream"), ("Authorization", authorization.as_str())],
        &record,
    )
    .await;
    assert_eq!(sent.status, 200);
    let reply = poll(&test, &token, "alice").await;
    assert_eq!(reply.header("content-type"), Some("application/octet-stream"));
    assert_eq!(reply.body, vec![0x07, 0x95, 0x03, 0x80, 0xa1, b'1', 0x03, 0xc3]);
}

#[tokio::test]
async fn long_polling_has_no_client_timeout_while_polling() {
    let test =
        spawn(HubConfig { long_poll_timeout: Duration::from_millis(100), ..quick_config() }).await;
    let token = negotiate_token(test.addr, "alice").await;
    poll(&test, &token, "alice").await;
    post(&test, &token, Some("alice"), HANDSHAKE_JSON).await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    // Idle polls (200, empty; no Pings over long polling) for longer than the
    // client timeout: the connection must stay open.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let idle = poll(&test, &token, "alice").await;
        assert_eq!(idle.status, 200);
        assert!(idle.body.is_empty(), "{}", idle.text());
    }
    post(
        &test,
        &token,
        Some("alice"),
        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Void\",\"arguments\":[]}\x1e",
    )
    .await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{\"type\":3,\"invocationId\":\"1\"}\x1e");
}

#[tokio::test]
async fn long_polling_client_that_stops_polling_is_disconnected() {
    let mut test = spawn(HubConfig {
        long_poll_disconnect_timeout: Duration::from_millis(300),
        ..HubConfig::default()
    })
    .await;
    let token = negotiate_token(test.addr, "alice").await;
    poll(&test, &token, "alice").await;
    post(&test, &token, Some("alice"), HANDSHAKE_JSON).await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    test.next_disconnected().await;
}

#[tokio::test]
async fn an_oversized_record_in_a_post_closes_the_connection_naming_the_limit() {
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    poll(&test, &token, "alice").await;
    post(&test, &token, Some("alice"), HANDSHAKE_JSON).await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    let big = vec![b' '; 200 * 1024];
    post(&test, &token, Some("alice"), &big).await;
    let close = String::from_utf8(poll_data(&test, &token, "alice").await).expect("text");
    assert!(close.starts_with("{\"type\":7,\"error\":\""), "{close}");
    assert!(close.contains("131072"), "{close}");
    assert_eq!(poll(&test, &token, "alice").await.status, 204);
}

#[tokio::test]
async fn a_post_over_the_batch_limit_is_refused_with_413() {
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    poll(&test, &token, "alice").await;
    post(&test, &token, Some("alice"), HANDSHAKE_JSON).await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    let big = vec![b' '; 1024 * 1024 + 1];
    let refused = post(&test, &token, Some("alice"), &big).await;
    assert_eq!(refused.status, 413);
    let close = String::from_utf8(poll_data(&test, &token, "alice").await).expect("text");
    assert!(close.contains("1048576"), "{close}");
}

#[tokio::test]
async fn shutdown_reaches_long_polling_clients() {
    let mut test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    poll(&test, &token, "alice").await;
    post(&test, &token, Some("alice"), HANDSHAKE_JSON).await;
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");
    let server = test.server.clone();
    let shutdown = tokio::spawn(async move { server.shutdown(Duration::from_secs(5)).await });
    assert_eq!(
        poll_data(&test, &token, "alice").await,
        b"{\"type\":7,\"allowReconnect\":true}\x1e"
    );
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown returns").expect("no panic");
    test.next_disconnected().await;
    assert_eq!(test.server.connection_count(), 0);
}

/// Negotiates until `pick` accepts the status, at most for `WAIT`.
async fn negotiate_until(test: &TestServer, user: &str, pick: impl Fn(u16) -> bool) -> u16 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _) = negotiate(test.addr, "?negotiateVersion=1", Some(user)).await;
        if pick(status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "negotiate still answers {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unclaimed_negotiation_gives_its_pending_place_back_when_forgotten() {
    let test = spawn(HubConfig {
        negotiate_timeout: Duration::from_millis(200),
        max_pending_negotiations_per_user: Some(1),
        ..HubConfig::default()
    })
    .await;
    negotiate_token(test.addr, "alice").await;
    let (status, body) = negotiate(test.addr, "?negotiateVersion=1", Some("alice")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(test.server.pending_negotiations(), 1);
    // Another user is not affected.
    negotiate_token(test.addr, "bob").await;
    // Once forgotten (negotiate_timeout), alice's place is free again.
    negotiate_until(&test, "alice", |status| status == 200).await;
}

#[tokio::test]
async fn a_long_polling_connection_holds_its_place_until_it_ends() {
    let test = spawn(HubConfig { max_connections_per_user: Some(1), ..HubConfig::default() }).await;
    let token = negotiate_token(test.addr, "alice").await;
    assert_eq!(poll(&test, &token, "alice").await.status, 200, "the first poll starts it");
    // Negotiate refuses at once: the connection could not start.
    let (status, _) = negotiate(test.addr, "?negotiateVersion=1", Some("alice")).await;
    assert_eq!(status, 429);
    let authorization = auth("alice");
    let deleted = http(
        test.addr,
        "DELETE",
        &format!("{PATH}?id={token}"),
        &[("Authorization", authorization.as_str())],
        b"",
    )
    .await;
    assert_eq!(deleted.status, 202);
    negotiate_until(&test, "alice", |status| status == 200).await;
}

#[tokio::test]
async fn a_post_the_client_breaks_off_is_dropped_and_the_connection_goes_on() {
    use tokio::io::AsyncWriteExt;
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    assert_eq!(poll(&test, &token, "alice").await.status, 200);
    assert_eq!(post(&test, &token, Some("alice"), HANDSHAKE_JSON).await.status, 200);
    assert_eq!(poll_data(&test, &token, "alice").await, b"{}\x1e");

    // Half a body, then the client goes away.
    let mut broken = tokio::net::TcpStream::connect(test.addr).await.expect("connect");
    let head = format!(
        "POST {PATH}?id={token} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\nContent-Length: 100\r\n\r\n{{\"type\":1,"
    );
    broken.write_all(head.as_bytes()).await.expect("write");
    drop(broken);

    // The connection is still there and serves the next call (POSTs may be
    // refused with 409 until the server has seen the broken one end).
    let call =
        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"on\"]}\x1e";
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = post(&test, &token, Some("alice"), call).await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 409);
        assert!(std::time::Instant::now() < deadline, "POSTs still refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        poll_data(&test, &token, "alice").await,
        b"{\"type\":3,\"invocationId\":\"1\",\"result\":\"on\"}\x1e"
    );
}
