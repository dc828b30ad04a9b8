//! Every hub call of the client against a real server, in both protocols, with
//! and without negotiation; and the typed errors the server's answers become.

mod support;

use next_chat_client::{Client, ClientError, Event, JoinResult, Protocol};
use next_chat_testkit::TestServer;
use support::{next_event, next_history, next_message, options, texts};

async fn every_call(protocol: Protocol, skip_negotiation: bool) {
    let server = TestServer::embedded().await;
    let url = if skip_negotiation { server.ws_url() } else { server.url.clone() };
    let connect = |user: &str| {
        let mut options = options(&url, user, protocol);
        options.skip_negotiation = skip_negotiation;
        Client::connect(options)
    };
    let (ann, mut ann_events) = connect("ann").await.expect("ann connects");
    let (bob, mut bob_events) = connect("bob").await.expect("bob connects");

    // create_group is idempotent; list_groups is sorted.
    for group in ["c", "a", "b", "a"] {
        ann.create_group(group).await.expect("creates");
    }
    assert_eq!(ann.list_groups().await.expect("lists"), ["a", "b", "c"]);
    assert_eq!(ann.list_groups_page(None, 2).await.expect("page 1"), ["a", "b"]);
    assert_eq!(ann.list_groups_page(Some("b"), 2).await.expect("page 2"), ["c"]);

    // join_group delivers the (empty) history first; messages reach every member,
    // the sender included, with the fields the server set.
    assert_eq!(ann.join_group("a").await.expect("joins"), JoinResult::Joined);
    assert_eq!(next_history(&mut ann_events).await, ("a".to_string(), Vec::new()));
    ann.send_message("a", "first").await.expect("sends");
    let first = next_message(&mut ann_events).await;
    assert_eq!((first.author_id.as_str(), first.group_id.as_str()), ("ann", "a"));
    assert_eq!(first.text, "first");
    let age = std::time::SystemTime::now().duration_since(first.send_time).unwrap_or_default();
    assert!(age.as_secs() < 60, "sendTime is the server's time of acceptance");

    // A later joiner gets it as history; then both see the next one.
    assert_eq!(bob.join_group("a").await.expect("joins"), JoinResult::Joined);
    let (group, history) = next_history(&mut bob_events).await;
    assert_eq!((group.as_str(), texts(&history)), ("a", vec!["first"]));
    assert_eq!(history[0], first);
    bob.send_message("a", "second, with ünïcode").await.expect("sends");
    for events in [&mut ann_events, &mut bob_events] {
        let message = next_message(events).await;
        assert_eq!(
            (message.author_id.as_str(), message.text.as_str()),
            ("bob", "second, with ünïcode")
        );
    }

    // get_history: latest first page, then older before a given id, oldest first.
    let all = ann.get_history("a", None, 10).await.expect("history");
    assert_eq!(texts(&all), ["first", "second, with ünïcode"]);
    let before = ann.get_history("a", Some(&all[1].id), 10).await.expect("older");
    assert_eq!(texts(&before), ["first"]);
    assert_eq!(
        texts(&ann.get_history("a", None, 1).await.expect("latest")),
        ["second, with ünïcode"]
    );

    // After leave_group, ann no longer receives a's messages: bob sends to a and
    // then to b, and the next thing ann sees is b's.
    ann.leave_group("a").await.expect("leaves");
    ann.leave_group("a").await.expect("leaving again is no error");
    assert_eq!(ann.joined_groups(), Vec::<String>::new());
    ann.join_group("b").await.expect("joins b");
    next_history(&mut ann_events).await;
    bob.join_group("b").await.expect("bob joins b");
    next_history(&mut bob_events).await;
    bob.send_message("a", "ann is gone").await.expect("sends");
    bob.send_message("b", "in b").await.expect("sends");
    let next = next_message(&mut ann_events).await;
    assert_eq!((next.group_id.as_str(), next.text.as_str()), ("b", "in b"));

    // Calls may be issued concurrently from several tasks.
    let calls = (0..20).map(|i| {
        let bob = bob.clone();
        tokio::spawn(async move { bob.send_message("b", &format!("c{i}")).await })
    });
    for call in calls {
        call.await.expect("task").expect("concurrent send");
    }
    let mut seen: Vec<String> = Vec::new();
    while seen.len() < 20 {
        seen.push(next_message(&mut ann_events).await.text);
    }
    seen.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);

    ann.close().await;
    assert_eq!(next_event(&mut ann_events).await, Event::Closed { error: None });
    assert!(ann_events.recv().await.is_none(), "nothing after Closed");
    assert!(bob.list_groups().await.is_ok(), "bob is unaffected");
    bob.close().await;
}

#[tokio::test]
async fn every_call_json_negotiated() {
    every_call(Protocol::Json, false).await;
}

#[tokio::test]
async fn every_call_messagepack_negotiated() {
    every_call(Protocol::MessagePack, false).await;
}

#[tokio::test]
async fn every_call_json_without_negotiation() {
    every_call(Protocol::Json, true).await;
}

#[tokio::test]
async fn every_call_messagepack_without_negotiation() {
    every_call(Protocol::MessagePack, true).await;
}

#[tokio::test]
async fn server_errors_carry_the_servers_text_and_leave_the_connection_usable() {
    let server = TestServer::embedded().await;
    let (ann, _events) = support::connect(&server.url, "ann").await;

    let not_joined = ann.send_message("g", "hi").await;
    let Err(ClientError::Server(text)) = not_joined else {
        panic!("sending to a group not joined must fail with the server's text: {not_joined:?}");
    };
    assert!(text.to_lowercase().contains("join"), "tells the caller to join first: {text}");

    for (call, field) in [
        (ann.create_group("   ").await, "groupId"),
        (ann.create_group(&"x".repeat(65)).await, "groupId"),
        (ann.list_groups_page(None, 0).await.map(|_| ()), "limit"),
    ] {
        match call {
            Err(ClientError::Server(text)) => {
                assert!(text.contains(field), "the error names {field}: {text}")
            }
            other => panic!("expected a server error naming {field}, got {other:?}"),
        }
    }
    ann.join_group("g").await.expect("joins");
    let long = "x".repeat(16385);
    assert!(
        matches!(ann.send_message("g", &long).await, Err(ClientError::Server(t)) if t.contains("text"))
    );
    assert!(matches!(
        ann.get_history("g", Some("no-such-id"), 10).await,
        Err(ClientError::Server(_))
    ));
    assert!(matches!(ann.get_history("other", None, 10).await, Err(ClientError::Server(_))));

    // Still usable.
    ann.send_message("g", "still here").await.expect("the connection stays usable");
}

#[tokio::test]
async fn a_full_group_answers_no_room_and_sends_no_history() {
    let server = TestServer::embedded().await;
    let mut members = Vec::new();
    for i in 0..20 {
        let (client, events) = support::connect(&server.url, &format!("user{i}")).await;
        assert_eq!(client.join_group("full").await.expect("joins"), JoinResult::Joined);
        members.push((client, events));
    }
    let (late, mut late_events) = support::connect(&server.url, "late").await;
    assert_eq!(late.join_group("full").await.expect("answers"), JoinResult::NoRoom);
    assert_eq!(late.joined_groups(), Vec::<String>::new());

    // A member's second connection still gets in.
    let (again, mut again_events) = support::connect(&server.url, "user0").await;
    assert_eq!(again.join_group("full").await.expect("joins"), JoinResult::Joined);
    next_history(&mut again_events).await;

    // `late` got no history: the first thing it sees is a group it could join.
    late.join_group("open").await.expect("joins");
    let (group, _) = next_history(&mut late_events).await;
    assert_eq!(group, "open");
}

#[tokio::test]
async fn connecting_fails_with_typed_errors() {
    // A socket bound but not listening: its port refuses connections, and no
    // other test can take it while it is held.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind("127.0.0.1:0".parse().expect("an address")).expect("binds");
    let port = socket.local_addr().expect("bound").port();
    let url = format!("http://127.0.0.1:{port}/next-chat");
    let refused = Client::connect(next_chat_client::ClientOptions::new(&url, "ann")).await;
    assert!(matches!(refused, Err(ClientError::Connection(_))), "{:?}", refused.err());

    let empty_user = Client::connect(next_chat_client::ClientOptions::new(&url, "")).await;
    assert!(matches!(empty_user, Err(ClientError::InvalidOptions(_))), "{:?}", empty_user.err());
    let bad_url = Client::connect(next_chat_client::ClientOptions::new("ftp://x/y", "ann")).await;
    assert!(matches!(bad_url, Err(ClientError::InvalidOptions(_))), "{:?}", bad_url.err());
}

#[tokio::test]
async fn an_identity_the_server_refuses_is_an_http_error() {
    let server = TestServer::embedded().await;
    // 65 characters: over the contract's 64.
    let result =
        Client::connect(next_chat_client::ClientOptions::new(&server.url, "u".repeat(65))).await;
    assert!(matches!(result, Err(ClientError::Http { status: 401, .. })), "{:?}", result.err());
}
