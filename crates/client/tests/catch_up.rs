//! Catching up by id after a full reconnect: a client cut off (through a
//! test-owned TCP proxy) while more messages are sent than a join's history
//! holds comes back, pages forward with `GetMessagesAfter` from the last id it
//! saw, and delivers every message exactly once and in order, merged with the
//! live ones that arrive meanwhile; also when it comes back to another
//! instance (Redis + MariaDB scale-out), and bounded by `catch_up_max_messages`.

mod support;

use std::time::Duration;

use next_chat_client::{Client, ClientOptions, Event, Events, Protocol, ReconnectPolicy};
use next_chat_testkit::{ScaleOut, TcpProxy, TestServer};
use support::{WAIT, next_event, next_history, next_message};

/// More than the 100 messages a join's history carries, and than one 100-page.
const MISSED: usize = 250;

fn through(proxy: &TcpProxy, user: &str, protocol: Protocol) -> ClientOptions {
    let mut options =
        ClientOptions::new(format!("http://127.0.0.1:{}/next-chat", proxy.port), user);
    options.protocol = protocol;
    options.reconnect = Some(ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_attempts: None,
    });
    options
}

/// What came after a reconnect: the messages' texts, and the `CaughtUp` counts.
#[derive(Default)]
struct Back {
    texts: Vec<String>,
    caught_up: Vec<(String, usize, bool)>,
    reconnected: bool,
}

/// Collects events until `total` messages, a `CaughtUp` and `Reconnected` came.
async fn collect(events: &mut Events, total: usize) -> Back {
    let mut back = Back::default();
    while back.texts.len() < total || !back.reconnected || back.caught_up.is_empty() {
        match tokio::time::timeout(WAIT * 3, events.recv()).await {
            Ok(Some(Event::Message(message))) => back.texts.push(message.text),
            Ok(Some(Event::CaughtUp { group, missed, complete })) => {
                back.caught_up.push((group, missed, complete))
            }
            Ok(Some(Event::Reconnected)) => back.reconnected = true,
            other => panic!("unexpected after {} messages: {other:?}", back.texts.len()),
        }
    }
    back
}

async fn expect_disconnected(events: &mut Events) {
    match next_event(events).await {
        Event::Disconnected { .. } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

async fn send_all(client: &Client, texts: &[String]) {
    for text in texts {
        client.send_message("g", text).await.unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_gets_every_missed_message_once_in_order_merged_with_live_ones() {
    let server = TestServer::embedded().await;
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let (ann, mut events) =
        Client::connect(through(&proxy, "ann", Protocol::Json)).await.expect("ann connects");
    ann.join_group("g").await.expect("ann joins");
    next_history(&mut events).await;
    let (bob, _bob_events) = support::connect(&server.url, "bob").await;
    bob.join_group("g").await.expect("bob joins");
    send_all(&bob, &numbered("before", 0..3)).await;
    for text in numbered("before", 0..3) {
        assert_eq!(next_message(&mut events).await.text, text);
    }

    // Cut off, and kept off while bob sends more than a join's history holds.
    proxy.cut();
    expect_disconnected(&mut events).await;
    let away = numbered("away", 0..MISSED);
    send_all(&bob, &away).await;

    // Back, while bob goes on sending: these race with the catch-up.
    proxy.restore();
    let live = numbered("live", 0..100);
    let sender = {
        let bob = bob.clone();
        let live = live.clone();
        tokio::spawn(async move { send_all(&bob, &live).await })
    };
    let back = collect(&mut events, MISSED + live.len()).await;
    sender.await.expect("bob sent");
    let expected: Vec<String> = away.iter().chain(&live).cloned().collect();
    assert_eq!(back.texts, expected, "every message once, in order");
    let [(group, missed, complete)] = back.caught_up.as_slice() else {
        panic!("one CaughtUp: {:?}", back.caught_up)
    };
    assert_eq!((group.as_str(), *complete), ("g", true));
    // The live ones sent before the catch-up read them count as caught up too.
    assert!((MISSED..=MISSED + live.len()).contains(missed), "caught up on {missed}");
    eprintln!("caught up on {missed} messages; {} dropped as duplicates", ann.duplicates_dropped());

    // Nothing more, nothing twice: the next message is the next one.
    bob.send_message("g", "after").await.expect("sends");
    assert_eq!(next_message(&mut events).await.text, "after");
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_stops_at_catch_up_max_messages_and_says_so() {
    let server = TestServer::embedded().await;
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let mut options = through(&proxy, "ann", Protocol::MessagePack);
    options.catch_up_max_messages = 120;
    let (ann, mut events) = Client::connect(options).await.expect("ann connects");
    ann.join_group("g").await.expect("ann joins");
    next_history(&mut events).await;
    let (bob, _bob_events) = support::connect(&server.url, "bob").await;
    bob.join_group("g").await.expect("bob joins");
    bob.send_message("g", "seen").await.expect("sends");
    assert_eq!(next_message(&mut events).await.text, "seen");

    proxy.cut();
    expect_disconnected(&mut events).await;
    send_all(&bob, &numbered("away", 0..MISSED)).await;
    proxy.restore();

    // The first 120 after the last one seen, then the latest 100 (the join's
    // history); the 30 between are skipped, and CaughtUp says so.
    let back = collect(&mut events, 220).await;
    let expected: Vec<String> =
        numbered("away", 0..120).into_iter().chain(numbered("away", 150..MISSED)).collect();
    assert_eq!(back.texts, expected);
    assert_eq!(back.caught_up, [("g".to_string(), 220, false)]);
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moved_to_another_instance_after_the_first_died_misses_nothing() {
    let scale = ScaleOut::create();
    let mut a = TestServer::start(scale.args()).await;
    let b = TestServer::start(scale.args()).await;
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", a.port)).await;
    let (ann, mut events) =
        Client::connect(through(&proxy, "ann", Protocol::MessagePack)).await.expect("connects");
    ann.join_group("g").await.expect("ann joins on A");
    next_history(&mut events).await;
    let (bob_a, _bob_a_events) = support::connect(&a.url, "bob").await;
    bob_a.join_group("g").await.expect("bob joins on A");
    let (cy_b, _cy_b_events) = support::connect(&b.url, "cy").await;
    cy_b.join_group("g").await.expect("cy joins on B");
    send_all(&bob_a, &numbered("before", 0..2)).await;
    for text in numbered("before", 0..2) {
        assert_eq!(next_message(&mut events).await.text, text);
    }

    // ann's connection breaks; A takes messages, then dies; B takes more;
    // the balancer sends ann to B.
    proxy.cut();
    expect_disconnected(&mut events).await;
    let on_a = numbered("on A", 0..150);
    send_all(&bob_a, &on_a).await;
    a.kill().await;
    let on_b = numbered("on B", 0..150);
    send_all(&cy_b, &on_b).await;
    proxy.retarget(&format!("127.0.0.1:{}", b.port));
    proxy.restore();
    // And B goes on taking messages while ann comes back.
    let live = numbered("live", 0..50);
    let sender = {
        let cy_b = cy_b.clone();
        let live = live.clone();
        tokio::spawn(async move { send_all(&cy_b, &live).await })
    };

    let back = collect(&mut events, on_a.len() + on_b.len() + live.len()).await;
    sender.await.expect("cy sent");
    let expected: Vec<String> = on_a.iter().chain(&on_b).chain(&live).cloned().collect();
    assert_eq!(back.texts, expected, "every message sent on A and B once, in order");
    let [(group, missed, complete)] = back.caught_up.as_slice() else {
        panic!("one CaughtUp: {:?}", back.caught_up)
    };
    assert_eq!((group.as_str(), *complete), ("g", true));
    assert!((300..=350).contains(missed), "caught up on {missed}");
    cy_b.send_message("g", "after").await.expect("sends");
    assert_eq!(next_message(&mut events).await.text, "after");
    ann.close().await;
}
