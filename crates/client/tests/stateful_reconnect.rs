//! Stateful reconnect with this client: behind a proxy that resets its
//! connection five times while another user sends 300 messages at about 100 a
//! second, the client receives every one exactly once, in order, and never
//! sees its connection go (no `Disconnected`, no `Closed`); the server counts
//! one resumed connection per cut, so the cuts did land on this client's socket.

mod support;

use std::time::Duration;

use next_chat_client::{ClientOptions, Event, Protocol};
use next_chat_testkit::{TcpProxy, TestServer, connect_with, eventually};
use support::{WAIT, next_history};

const MESSAGES: usize = 300;
/// The proxy resets ann's connection after every 50 messages but the last 50.
const CUTS: usize = MESSAGES / 50 - 1;

async fn across_cuts(protocol: Protocol) {
    let server = TestServer::embedded().await;
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let mut options =
        ClientOptions::new(format!("http://127.0.0.1:{}/next-chat", proxy.port), "ann");
    options.protocol = protocol;
    assert!(options.stateful_reconnect, "on by default");
    let (ann, mut events) = connect_with(options).await;
    ann.join_group("g").await.expect("ann joins");
    next_history(&mut events).await;

    let (bob, _bob_events) = server.connect("bob").await;
    bob.join_group("g").await.expect("bob joins");
    let sender = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        for i in 1..=MESSAGES {
            bob.send_message("g", &format!("m{i}")).await.expect("bob sends");
            if i % 50 == 0 && i < MESSAGES {
                proxy.drop_connections();
            }
            // About 100 messages a second: the load's pace, not a wait for an event.
            tokio::time::sleep_until(started + Duration::from_millis(10 * i as u64)).await;
        }
        bob.send_message("g", "end").await.expect("bob sends the end marker");
        proxy
    });

    let mut received = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT * 3, events.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} messages", received.len()))
            .expect("the event stream goes on");
        match event {
            Event::Message(message) if message.text == "end" => break,
            Event::Message(message) => received.push(message.text),
            other => panic!("after {} messages: unexpected {other:?}", received.len()),
        }
    }
    let _proxy = sender.await.expect("the sender finished");
    let expected: Vec<String> = (1..=MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(received, expected, "every message exactly once, in order");
    assert!(ann.is_connected());
    // Each cut ended in a resume on the server (a new socket took over ann's
    // connection), not in a new connection: the counter is bumped once the
    // new socket has taken over, so it may trail the last message briefly.
    let resumed = |metrics: &next_chat_testkit::Metrics| {
        metrics.value_or_zero("nextchat_stateful_reconnects_total", &[("outcome", "resumed")])
    };
    eventually(WAIT, "a resume counted per cut", || async {
        resumed(&server.metrics().await) >= CUTS as f64
    })
    .await;
    let metrics = server.metrics().await;
    for outcome in ["expired", "overflowed"] {
        let n =
            metrics.value_or_zero("nextchat_stateful_reconnects_total", &[("outcome", outcome)]);
        assert_eq!(n, 0.0, "no connection {outcome}:\n{metrics}");
    }
    ann.close().await;
}

#[tokio::test]
async fn every_message_once_in_order_across_cuts_json() {
    across_cuts(Protocol::Json).await;
}

#[tokio::test]
async fn every_message_once_in_order_across_cuts_messagepack() {
    across_cuts(Protocol::MessagePack).await;
}
