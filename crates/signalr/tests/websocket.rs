//! WebSocket transport end to end: a real server on 127.0.0.1:0, a real client.

mod common;

use std::time::Duration;

use common::*;
use next_chat_signalr::server::HubConfig;
use next_chat_signalr::{HubMessage, Outcome, Protocol, Value};

#[tokio::test]
async fn json_invocation_completes_with_the_result() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"hi\"]}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"1\",\"result\":\"hi\"}\x1e"[..])
    );
    // `type` last, unknown fields and headers ignored (JS and Python clients).
    ws_send_text(
        &mut ws,
        "{\"target\":\"WhoAmI\",\"headers\":{\"Authorization\":\"x\"},\"arguments\":[],\"invocationId\":\"2\",\"extra\":1,\"type\":1}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"2\",\"result\":\"alice\"}\x1e"[..])
    );
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"3\",\"target\":\"Void\",\"arguments\":[]}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"3\"}\x1e"[..])
    );
}

#[tokio::test]
async fn completion_error_keeps_the_connection_usable() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"1\",\"target\":\"Fail\",\"arguments\":[]}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"1\",\"error\":\"failed on purpose\"}\x1e"[..])
    );
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"2\",\"target\":\"Echo\",\"arguments\":[7]}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"2\",\"result\":7}\x1e"[..])
    );
}

#[tokio::test]
async fn records_split_across_frames_and_batched_in_one_frame() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    // One record in two WebSocket messages.
    ws_send_text(&mut ws, "{\"type\":1,\"invocationId\":\"1\",\"tar").await;
    ws_send_text(&mut ws, "get\":\"Echo\",\"arguments\":[\"a\"]}\u{1e}").await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"1\",\"result\":\"a\"}\x1e"[..])
    );
    // Three records in one message (the JS client batches), answered in order, each
    // completion in its own message.
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"2\",\"target\":\"Echo\",\"arguments\":[\"b\"]}\u{1e}{\"type\":6}\u{1e}{\"type\":1,\"invocationId\":\"3\",\"target\":\"Echo\",\"arguments\":[\"c\"]}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"2\",\"result\":\"b\"}\x1e"[..])
    );
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"3\",\"result\":\"c\"}\x1e"[..])
    );
}

#[tokio::test]
async fn handshake_and_first_invocation_in_one_frame() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_connect(test.addr, "", Some("alice")).await.expect("upgrade");
    ws_send_text(
        &mut ws,
        "{\"protocol\":\"json\",\"version\":1}\u{1e}{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[1]}\u{1e}",
    )
    .await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some(&b"{}\x1e"[..]));
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"1\",\"result\":1}\x1e"[..])
    );
}

#[tokio::test]
async fn non_blocking_invocation_gets_no_completion() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    ws_send_text(&mut ws, "{\"type\":1,\"target\":\"Notify\",\"arguments\":[\"x\"]}\u{1e}").await;
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"9\",\"target\":\"Echo\",\"arguments\":[\"after\"]}\u{1e}",
    )
    .await;
    // The callback, then straight the completion of the second call: nothing for
    // the first one.
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":1,\"target\":\"Notified\",\"arguments\":[\"x\"]}\x1e"[..])
    );
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"9\",\"result\":\"after\"}\x1e"[..])
    );
}

#[tokio::test]
async fn a_finishing_invocation_lets_the_next_start_and_completions_keep_their_order() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    let call = |id: u32, target: &str, args: &str| {
        format!(
            "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"{target}\",\"arguments\":[{args}]}}\u{1e}"
        )
    };
    // `Hold` finishes only when `Release` runs, so if invocations waited for the
    // previous one to finish, `Release` would never start.
    ws_send_text(&mut ws, &call(1, "Hold", "")).await;
    ws_send_text(&mut ws, &call(2, "Echo", "\"second\"")).await;
    ws_send_text(&mut ws, "{\"type\":1,\"target\":\"Notify\",\"arguments\":[\"third\"]}\u{1e}")
        .await;
    // The callback goes out while `Hold` is still finishing.
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"type\":1,\"target\":\"Notified\",\"arguments\":[\"third\"]}\x1e"[..])
    );
    ws_send_text(&mut ws, &call(4, "Release", "")).await;
    // Completions in invocation order, though `Echo` was done long before `Hold`.
    let mut completions = Vec::new();
    while completions.len() < 3 {
        let frame = ws_next(&mut ws).await.expect("a completion");
        for message in decode_all(Protocol::Json, &frame) {
            match message {
                HubMessage::Completion { invocation_id, .. } => completions.push(invocation_id),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(completions, ["1", "2", "4"]);
}

#[tokio::test]
async fn messagepack_over_a_negotiated_connection() {
    let test = spawn(HubConfig::default()).await;
    let token = negotiate_token(test.addr, "alice").await;
    let mut ws =
        ws_connect(test.addr, &format!("?id={token}"), Some("alice")).await.expect("upgrade");
    // signalrcore sends the messagepack handshake in a binary frame.
    ws_send_binary(&mut ws, b"{\"protocol\":\"messagepack\",\"version\":1}\x1e".to_vec()).await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some(&b"{}\x1e"[..]));
    // A 5-element invocation, as the JS client sends: [1, {}, "1", "Echo", [42]].
    let mut body = vec![0x95, 0x01, 0x80, 0xa1, b'1', 0xa4];
    body.extend_from_slice(b"Echo");
    body.extend_from_slice(&[0x91, 0x2a]);
    let mut record = vec![body.len() as u8];
    record.extend_from_slice(&body);
    ws_send_binary(&mut ws, record).await;
    // [3, {}, "1", 3, 42] exactly.
    assert_eq!(ws_next(&mut ws).await, Some(vec![0x07, 0x95, 0x03, 0x80, 0xa1, b'1', 0x03, 0x2a]));
    // A callback is a 6-element invocation with an empty streamIds array.
    let notify = Protocol::MessagePack.encode(&HubMessage::Invocation {
        invocation_id: None,
        target: "Notify".into(),
        arguments: vec![Value::Int(1)],
        stream_ids: vec![],
    });
    ws_send_binary(&mut ws, notify.to_vec()).await;
    let callback = ws_next(&mut ws).await.expect("the callback");
    let mut expected = vec![0x96, 0x01, 0x80, 0xc0, 0xa8];
    expected.extend_from_slice(b"Notified");
    expected.extend_from_slice(&[0x91, 0x01, 0x90]);
    assert_eq!(&callback[1..], &expected[..]);
    // Close as [7, nil] ends the connection, with no Close message back.
    ws_send_binary(&mut ws, vec![0x03, 0x92, 0x07, 0xc0]).await;
    assert_eq!(ws_next(&mut ws).await, None);
    let mut test = test;
    test.next_disconnected().await;
}

#[tokio::test]
async fn handshake_errors_are_answered_then_the_connection_closes() {
    let mut test = spawn(HubConfig::default()).await;
    let mut ws = ws_connect(test.addr, "", Some("alice")).await.expect("upgrade");
    ws_send_text(&mut ws, "{\"protocol\":\"xml\",\"version\":1}\u{1e}").await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(&b"{\"error\":\"The protocol 'xml' is not supported.\"}\x1e"[..])
    );
    assert_eq!(ws_next(&mut ws).await, None);

    let mut ws = ws_connect(test.addr, "", Some("alice")).await.expect("upgrade");
    ws_send_text(&mut ws, "{\"protocol\":\"json\",\"version\":3}\u{1e}").await;
    let answer = String::from_utf8(ws_next(&mut ws).await.expect("an answer")).expect("text");
    assert!(answer.starts_with("{\"error\":\"The server does not support version 3"), "{answer}");
    assert_eq!(ws_next(&mut ws).await, None);

    // Neither connection reached the hub.
    assert!(test.disconnected.try_recv().is_err());
}

#[tokio::test]
async fn a_missing_handshake_times_out() {
    let test = spawn(quick_config()).await;
    let mut ws = ws_connect(test.addr, "", Some("alice")).await.expect("upgrade");
    let answer = String::from_utf8(ws_next(&mut ws).await.expect("an answer")).expect("text");
    assert!(answer.contains("no handshake request"), "{answer}");
    assert_eq!(ws_next(&mut ws).await, None);
}

#[tokio::test]
async fn records_under_the_limit_batched_over_it_are_accepted() {
    // Stock clients put every record queued during a send into one message.
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    let text = "🎉".repeat(16384);
    let record = |id: u32| {
        format!(
            "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"Echo\",\"arguments\":[\"{text}\"]}}\u{1e}"
        )
    };
    let batch = format!("{}{}", record(1), record(2));
    assert!(batch.len() > 128 * 1024 && record(1).len() < 128 * 1024);
    ws_send_text(&mut ws, &batch).await;
    for id in ["1", "2"] {
        let reply = String::from_utf8(ws_next(&mut ws).await.expect("a completion")).expect("text");
        assert!(reply.contains(&format!("\"invocationId\":\"{id}\"")), "{}", &reply[..80]);
        assert!(!reply.contains("\"type\":7"), "not closed");
    }
}

#[tokio::test]
async fn an_oversized_message_closes_only_its_connection() {
    let mut test = spawn(HubConfig::default()).await;
    let mut victim = ws_json(test.addr, "alice").await;
    let mut bystander = ws_json(test.addr, "bob").await;
    let big = format!(
        "{{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"{}\"]}}\u{1e}",
        "x".repeat(200 * 1024)
    );
    ws_send_text(&mut victim, &big).await;
    let close =
        String::from_utf8(ws_next(&mut victim).await.expect("a Close message")).expect("text");
    assert!(close.starts_with("{\"type\":7,\"error\":\""), "{close}");
    assert!(close.contains("131072"), "the error names the limit: {close}");
    assert_eq!(ws_next(&mut victim).await, None);
    test.next_disconnected().await;

    ws_send_text(
        &mut bystander,
        "{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"still here\"]}\u{1e}",
    )
    .await;
    assert_eq!(
        ws_next(&mut bystander).await.as_deref(),
        Some(&b"{\"type\":3,\"invocationId\":\"1\",\"result\":\"still here\"}\x1e"[..])
    );
}

#[tokio::test]
async fn malformed_input_closes_with_a_clear_error() {
    let test = spawn(HubConfig::default()).await;
    for (input, expected) in [
        ("{\"type\":1,\u{1e}", "malformed JSON"),
        ("{\"type\":99}\u{1e}", "unknown hub message type 99"),
    ] {
        let mut ws = ws_json(test.addr, "alice").await;
        ws_send_text(&mut ws, input).await;
        let close =
            String::from_utf8(ws_next(&mut ws).await.expect("a Close message")).expect("text");
        assert!(close.starts_with("{\"type\":7,\"error\":\""), "{close}");
        assert!(close.contains(expected), "{close}");
        assert_eq!(ws_next(&mut ws).await, None);
    }
    // Truncated MessagePack: a record whose body ends inside the target string.
    let mut ws = ws_connect(test.addr, "", Some("alice")).await.expect("upgrade");
    ws_send_binary(&mut ws, b"{\"protocol\":\"messagepack\",\"version\":1}\x1e".to_vec()).await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some(&b"{}\x1e"[..]));
    ws_send_binary(&mut ws, vec![0x05, 0x96, 0x01, 0x80, 0xc0, 0xa4]).await;
    let close = ws_next(&mut ws).await.expect("a Close message");
    match &decode_all(Protocol::MessagePack, &close)[..] {
        [HubMessage::Close { error: Some(error), .. }] => {
            assert!(error.contains("truncated"), "{error}")
        }
        other => panic!("expected a Close, got {other:?}"),
    }
}

#[tokio::test]
async fn keep_alive_pings_are_hub_messages() {
    let test = spawn(HubConfig {
        keep_alive_interval: Duration::from_millis(100),
        ..HubConfig::default()
    })
    .await;
    let mut ws = ws_json(test.addr, "alice").await;
    // ws_next fails on a WebSocket ping frame; two hub Pings in a row.
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some(&b"{\"type\":6}\x1e"[..]));
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some(&b"{\"type\":6}\x1e"[..]));
}

#[tokio::test]
async fn a_silent_client_times_out_and_is_disconnected() {
    let mut test = spawn(quick_config()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    let close = loop {
        let record = ws_next(&mut ws).await.expect("records until the close");
        if record != b"{\"type\":6}\x1e" {
            break String::from_utf8(record).expect("text");
        }
    };
    assert!(close.starts_with("{\"type\":7,\"error\":\"client timeout"), "{close}");
    assert_eq!(ws_next(&mut ws).await, None);
    test.next_disconnected().await;
}

#[tokio::test]
async fn pings_from_the_client_keep_it_alive() {
    let test = spawn(quick_config()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    // Ping for well over the client timeout, answering every server ping.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let record = ws_next(&mut ws).await.expect("still open");
        assert_eq!(record, b"{\"type\":6}\x1e");
        ws_send_text(&mut ws, "{\"type\":6}\u{1e}").await;
    }
    ws_send_text(
        &mut ws,
        "{\"type\":1,\"invocationId\":\"1\",\"target\":\"Void\",\"arguments\":[]}\u{1e}",
    )
    .await;
    loop {
        let record = ws_next(&mut ws).await.expect("still open");
        if record != b"{\"type\":6}\x1e" {
            assert_eq!(record, b"{\"type\":3,\"invocationId\":\"1\"}\x1e");
            break;
        }
    }
}

#[tokio::test]
async fn shutdown_sends_close_with_allow_reconnect() {
    let mut test = spawn(HubConfig::default()).await;
    let mut a = ws_json(test.addr, "alice").await;
    let mut b = ws_json(test.addr, "bob").await;
    assert_eq!(test.server.connection_count(), 2);
    let server = test.server.clone();
    let shutdown = tokio::spawn(async move { server.shutdown(Duration::from_secs(5)).await });
    for ws in [&mut a, &mut b] {
        assert_eq!(
            ws_next(ws).await.as_deref(),
            Some(&b"{\"type\":7,\"allowReconnect\":true}\x1e"[..])
        );
        assert_eq!(ws_next(ws).await, None);
    }
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown returns").expect("no panic");
    test.next_disconnected().await;
    test.next_disconnected().await;
    assert_eq!(test.server.connection_count(), 0);
    // New connections are refused.
    assert_eq!(ws_connect(test.addr, "", Some("alice")).await.err(), Some(503));
}

#[tokio::test]
async fn identity_is_required_and_must_match_the_negotiation() {
    let test = spawn(HubConfig::default()).await;
    assert_eq!(ws_connect(test.addr, "", None).await.err(), Some(401));
    assert_eq!(ws_connect(test.addr, "", Some("invalid")).await.err(), Some(401));
    let token = negotiate_token(test.addr, "alice").await;
    assert_eq!(ws_connect(test.addr, &format!("?id={token}"), Some("bob")).await.err(), Some(403));
    assert_eq!(ws_connect(test.addr, "?id=unknown", Some("alice")).await.err(), Some(404));
    // The browser way: access_token in the query.
    let mut ws = ws_connect(test.addr, &format!("?id={token}&access_token=alice"), None)
        .await
        .expect("upgrade");
    ws_json_handshake(&mut ws).await;
    // A second transport request for the same connection is a conflict.
    assert_eq!(
        ws_connect(test.addr, &format!("?id={token}"), Some("alice")).await.err(),
        Some(409)
    );
}

#[tokio::test]
async fn hub_outcome_values_round_trip_in_messagepack() {
    // A sanity check of decode_all against the outcome shapes used above.
    let record = Protocol::MessagePack
        .encode(&HubMessage::Completion { invocation_id: "1".into(), outcome: Outcome::Void });
    assert_eq!(
        decode_all(Protocol::MessagePack, &record),
        vec![HubMessage::Completion { invocation_id: "1".into(), outcome: Outcome::Void }]
    );
}

#[tokio::test]
async fn a_refusal_with_a_challenge_answers_401_with_www_authenticate() {
    let test = spawn(HubConfig::default()).await;
    let response = http(
        test.addr,
        "POST",
        "/hub/negotiate?negotiateVersion=1",
        &[("Authorization", "Bearer challenged")],
        b"",
    )
    .await;
    assert_eq!(response.status, 401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
    assert_eq!(response.text(), "the token is no good");
    assert_eq!(ws_connect(test.addr, "", Some("challenged")).await.err(), Some(401));
}

#[tokio::test]
async fn an_expiring_credential_closes_the_connection_with_allow_reconnect() {
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice~300").await;
    let close = ws_next(&mut ws).await.expect("a Close message");
    assert_eq!(
        decode_all(Protocol::Json, &close),
        vec![HubMessage::Close {
            error: Some(next_chat_signalr::server::CREDENTIAL_EXPIRED.to_owned()),
            allow_reconnect: true,
        }]
    );
    assert_eq!(ws_next(&mut ws).await, None, "then the socket closes");
}

/// The argument `Seq` invocations carry: their sequence number.
fn sequence_numbers(bytes: &[u8]) -> Vec<i64> {
    decode_all(Protocol::Json, bytes)
        .into_iter()
        .filter_map(|message| match message {
            HubMessage::Invocation { target, arguments, .. } if target == "Seq" => {
                match arguments.first() {
                    Some(Value::Int(n)) => Some(*n),
                    other => panic!("Seq without a number: {other:?}"),
                }
            }
            _ => None,
        })
        .collect()
}

/// Waits until the hub knows the connection: an invocation's completion
/// follows `connected`.
async fn connection_of(test: &TestServer, ws: &mut Ws) -> next_chat_signalr::server::Connection {
    ws_send_text(
        ws,
        "{\"type\":1,\"invocationId\":\"c\",\"target\":\"Void\",\"arguments\":[]}\u{1e}",
    )
    .await;
    assert_eq!(ws_next(ws).await.as_deref(), Some(&b"{\"type\":3,\"invocationId\":\"c\"}\x1e"[..]));
    let ids = test.hub.connection_ids();
    assert_eq!(ids.len(), 1);
    test.hub.connection(&ids[0]).expect("connected")
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_a_prefix_in_order_then_is_closed_as_slow() {
    // A record sent while the writer is idle goes straight to the socket; once
    // the socket's buffers are full, records queue behind what it has not
    // written, and the queue's bound closes the connection.
    let mut test = spawn(HubConfig { outbound_queue_capacity: 8, ..HubConfig::default() }).await;
    let mut ws = ws_json(test.addr, "alice").await;
    let connection = connection_of(&test, &mut ws).await;
    let payload = Value::Str("x".repeat(16 * 1024));
    let mut sent = 0;
    let refused = loop {
        // No await in this loop, and this test's runtime has one thread: the
        // writer task cannot run, so only direct writes get past 8 records.
        match connection.send_invocation("Seq", vec![Value::Int(sent), payload.clone()]) {
            Ok(()) => sent += 1,
            Err(error) => break error,
        }
        assert!(sent < 100_000, "the socket's buffers and the queue are bounded");
    };
    assert_eq!(refused, next_chat_signalr::server::SendError::QueueFull);
    assert!(sent > 8, "records went straight to the socket, not only into the queue of 8");
    let mut received = Vec::new();
    while let Some(bytes) = ws_next(&mut ws).await {
        received.extend(sequence_numbers(&bytes));
    }
    let expected: Vec<i64> = (0..received.len() as i64).collect();
    assert_eq!(received, expected, "a prefix of what was sent, in order, nothing skipped");
    assert!(!received.is_empty() && received.len() as i64 <= sent);
    assert_eq!(test.next_end().await.1, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_and_queued_records_keep_their_order_with_a_slow_reader() {
    // The sender runs ahead of the reader by up to WINDOW records, so the
    // socket's buffers fill and drain again and again: records go out directly,
    // queue behind an unfinished write, and go out directly again once the
    // writer has caught up. Whatever the path, they arrive in order.
    const TOTAL: i64 = 3000;
    const WINDOW: i64 = 300;
    let test = spawn(HubConfig::default()).await;
    let mut ws = ws_json(test.addr, "alice").await;
    let connection = connection_of(&test, &mut ws).await;
    let read = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let progress = std::sync::Arc::new(tokio::sync::Notify::new());
    let sender = {
        let (read, progress) = (read.clone(), progress.clone());
        tokio::spawn(async move {
            let payload = Value::Str("y".repeat(8 * 1024));
            for n in 0..TOTAL {
                while n - read.load(std::sync::atomic::Ordering::Acquire) >= WINDOW {
                    let notified = progress.notified();
                    if n - read.load(std::sync::atomic::Ordering::Acquire) < WINDOW {
                        break;
                    }
                    notified.await;
                }
                connection
                    .send_invocation("Seq", vec![Value::Int(n), payload.clone()])
                    .expect("the window keeps the queue from filling");
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut next = 0;
    while next < TOTAL {
        let bytes = ws_next(&mut ws).await.expect("the connection stays open");
        for n in sequence_numbers(&bytes) {
            assert_eq!(n, next, "records arrive in the order they were sent");
            next += 1;
        }
        read.store(next, std::sync::atomic::Ordering::Release);
        progress.notify_one();
    }
    tokio::time::timeout(WAIT, sender).await.expect("the sender finishes").expect("no panic");
}
