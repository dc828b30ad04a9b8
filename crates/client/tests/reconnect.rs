//! Automatic reconnect against a real server that restarts: the client says it
//! is disconnected, comes back, rejoins its groups, and delivers every message
//! sent while it was away exactly once and in order, also when more were missed
//! than the history on join holds.

mod support;

use std::time::Duration;

use next_chat_client::{Client, ClientOptions, Event, ReconnectPolicy};
use next_chat_testkit::TestServer;
use support::{WAIT, next_event, next_history, next_message};

/// More than the 100 messages a join's history carries, so catching up must
/// page forward with `GetMessagesAfter`.
const MISSED: usize = 150;

#[tokio::test]
async fn reconnects_after_a_restart_and_delivers_what_was_missed_once() {
    let mut server = TestServer::embedded().await;
    let mut options = ClientOptions::new(&server.url, "ann");
    // Long enough that the messages below are normally sent before ann is back
    // (exercising catch-up from history); the assertions hold either way.
    options.reconnect = Some(ReconnectPolicy {
        initial_delay: Duration::from_secs(4),
        max_delay: Duration::from_secs(4),
        max_attempts: None,
    });
    let (ann, mut events) = Client::connect(options).await.expect("ann connects");
    ann.join_group("g").await.expect("joins g");
    ann.join_group("quiet").await.expect("joins quiet");
    next_history(&mut events).await;
    next_history(&mut events).await;

    let (bob, _bob_events) = support::connect(&server.url, "bob").await;
    bob.join_group("g").await.expect("bob joins");
    bob.send_message("g", "before").await.expect("sends");
    assert_eq!(next_message(&mut events).await.text, "before");

    server.stop().await;
    assert!(
        matches!(next_event(&mut events).await, Event::Disconnected { .. }),
        "the client says it lost the connection"
    );
    assert!(!ann.is_connected());
    assert!(matches!(
        ann.send_message("g", "now?").await,
        Err(next_chat_client::ClientError::Disconnected)
    ));

    server.start_again().await;
    let (bob, _bob_events) = support::connect(&server.url, "bob").await;
    bob.join_group("g").await.expect("bob joins again");
    for i in 0..MISSED {
        bob.send_message("g", &format!("away {i}")).await.expect("sends");
    }

    let mut received = Vec::new();
    let mut caught_up = Vec::new();
    let mut reconnected = false;
    while received.len() < MISSED || !reconnected {
        match tokio::time::timeout(WAIT * 3, events.recv()).await {
            Ok(Some(Event::Message(message))) => received.push(message.text),
            Ok(Some(Event::CaughtUp { group, missed, complete })) => {
                assert!(complete);
                caught_up.push((group, missed));
            }
            Ok(Some(Event::Reconnected)) => reconnected = true,
            other => panic!("unexpected while catching up: {other:?}"),
        }
    }
    let expected: Vec<String> = (0..MISSED).map(|i| format!("away {i}")).collect();
    assert_eq!(received, expected, "every missed message once, in order");
    // Each rejoined group says how many it caught up on (those bob sent after
    // ann was back count as live, not missed).
    assert_eq!(caught_up.len(), 2, "{caught_up:?}");
    assert_eq!(caught_up[1], ("quiet".to_string(), 0));
    assert!(caught_up[0].0 == "g" && caught_up[0].1 <= MISSED, "{caught_up:?}");
    assert!(ann.is_connected());
    assert_eq!(ann.joined_groups(), ["g", "quiet"]);

    // Nothing is delivered twice later either: the next message is the new one.
    bob.send_message("g", "after").await.expect("sends");
    assert_eq!(next_message(&mut events).await.text, "after");
    ann.send_message("quiet", "ann is back").await.expect("rejoined quiet");
    let back = next_message(&mut events).await;
    assert_eq!((back.group_id.as_str(), back.text.as_str()), ("quiet", "ann is back"));
    ann.close().await;
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_closes_the_client() {
    let mut server = TestServer::embedded().await;
    let (ann, mut events) = support::connect(&server.url, "ann").await;
    server.kill().await;
    match next_event(&mut events).await {
        Event::Closed { error: Some(_) } => {}
        other => panic!("expected Closed with an error, got {other:?}"),
    }
    assert!(ann.is_closed());
    assert_eq!(ann.list_groups().await, Err(next_chat_client::ClientError::Closed));
}
