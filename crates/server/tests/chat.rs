//! Every hub method and every error case of the contract, end to end: the real
//! server binary on a free port, driven by the project's client library.

use std::time::Duration;

use next_chat_client::{
    Client, ClientError, ClientOptions, Event, Events, JoinResult, Message, Protocol,
};
use next_chat_testkit::{TestServer, eventually};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(server: &TestServer, user: &str) -> (Client, Events) {
    server.connect(user).await
}

/// The next `Event::Message` (history and other events are skipped).
async fn next_message(events: &mut Events) -> Message {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time") {
            Some(Event::Message(message)) => return message,
            Some(_) => continue,
            None => panic!("the event stream ended"),
        }
    }
}

/// The next `Event::History`.
async fn next_history(events: &mut Events) -> Vec<Message> {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time") {
            Some(Event::History { messages, .. }) => return messages,
            Some(_) => continue,
            None => panic!("the event stream ended"),
        }
    }
}

fn server_error(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Server(message)) => message,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn every_method_round_trips() {
    let server = TestServer::embedded().await;
    let (ann, mut ann_events) = connect(&server, "ann").await;
    let (bob, mut bob_events) = connect(&server, "bob").await;

    ann.create_group("off-topic").await.unwrap();
    ann.create_group("off-topic").await.expect("creating an existing group is fine");
    assert_eq!(bob.list_groups().await.unwrap(), vec!["off-topic"]);
    assert_eq!(bob.list_groups_page(None, 1).await.unwrap(), vec!["off-topic"]);
    assert!(bob.list_groups_page(Some("off-topic"), 10).await.unwrap().is_empty());

    assert_eq!(ann.join_group("off-topic").await.unwrap(), JoinResult::Joined);
    assert!(next_history(&mut ann_events).await.is_empty());
    assert_eq!(bob.join_group("off-topic").await.unwrap(), JoinResult::Joined);
    assert!(next_history(&mut bob_events).await.is_empty());
    assert_eq!(bob.list_members("off-topic").await.unwrap(), vec!["ann", "bob"]);

    ann.send_message("off-topic", "héllo 👋").await.unwrap();
    let to_ann = next_message(&mut ann_events).await;
    let to_bob = next_message(&mut bob_events).await;
    assert_eq!(to_ann, to_bob, "the sender's own connection receives it too");
    assert_eq!(to_bob.author_id, "ann");
    assert_eq!(to_bob.group_id, "off-topic");
    assert_eq!(to_bob.text, "héllo 👋");
    let age =
        std::time::SystemTime::now().duration_since(to_bob.send_time).expect("sent in the past");
    assert!(age < Duration::from_secs(60), "sendTime is the server's time now: {age:?}");

    let history = bob.get_history("off-topic", None, 10).await.unwrap();
    assert_eq!(history, vec![to_bob.clone()]);

    ann.send_message("off-topic", "second").await.unwrap();
    ann.send_message("off-topic", "third").await.unwrap();
    let second = next_message(&mut bob_events).await;
    let third = next_message(&mut bob_events).await;
    assert_eq!((second.text.as_str(), third.text.as_str()), ("second", "third"));
    let after_first = bob.get_messages_after("off-topic", &to_bob.id, 10).await.unwrap();
    assert_eq!(
        after_first,
        vec![second.clone(), third.clone()],
        "the messages after, oldest first"
    );
    let page = bob.get_messages_after("off-topic", &to_bob.id, 1).await.unwrap();
    assert_eq!(page, vec![second], "at most `limit`, the oldest first");
    assert!(bob.get_messages_after("off-topic", &third.id, 10).await.unwrap().is_empty());

    bob.leave_group("off-topic").await.unwrap();
    assert_eq!(ann.list_members("off-topic").await.unwrap(), vec!["ann"], "bob has left");
    bob.leave_group("off-topic").await.expect("leaving twice is fine");
    bob.leave_group("never-joined").await.expect("leaving a group one is not in is fine");
    // Bob stays in a second group; a message there marks that the first one was not delivered.
    bob.join_group("marker").await.unwrap();
    ann.join_group("marker").await.unwrap();
    ann.send_message("off-topic", "bob has left").await.unwrap();
    ann.send_message("marker", "marker").await.unwrap();
    let next = next_message(&mut bob_events).await;
    assert_eq!(next.text, "marker", "after LeaveGroup bob gets nothing from off-topic");
    assert_eq!(ann.duplicates_dropped() + bob.duplicates_dropped(), 0, "nothing arrived twice");
}

#[tokio::test]
async fn messagepack_carries_the_same_messages() {
    let server = TestServer::embedded().await;
    let mut options = ClientOptions::new(server.url.clone(), "ann");
    options.protocol = Protocol::MessagePack;
    let (ann, mut ann_events) = Client::connect(options).await.unwrap();
    let (bob, mut bob_events) = connect(&server, "bob").await;
    ann.join_group("g").await.unwrap();
    bob.join_group("g").await.unwrap();
    ann.send_message("g", "über").await.unwrap();
    let over_msgpack = next_message(&mut ann_events).await;
    let over_json = next_message(&mut bob_events).await;
    assert_eq!(over_msgpack, over_json, "both encodings carry the same message, sendTime included");
}

#[tokio::test]
async fn every_error_names_the_field_and_the_connection_stays_usable() {
    let server = TestServer::embedded().await;
    let (ann, _events) = connect(&server, "ann").await;
    ann.join_group("g").await.unwrap();
    ann.send_message("g", "first").await.unwrap();
    let long_group = "é".repeat(65);
    let long_text = "x".repeat(16385);
    let cases: Vec<(&str, Result<(), ClientError>, &str)> = vec![
        ("empty groupId", ann.create_group("").await, "groupId must not be empty"),
        (
            "long groupId",
            ann.create_group(&long_group).await,
            "groupId is 65 characters long; the limit is 64",
        ),
        ("blank groupId", ann.create_group("   ").await, "groupId must not be blank"),
        (
            "control groupId",
            ann.create_group("a\u{7}b").await,
            "groupId must not contain control characters",
        ),
        ("join empty", ann.join_group("").await.map(|_| ()), "groupId must not be empty"),
        (
            "send not joined",
            ann.send_message("other", "hi").await,
            "join group 'other' before sending",
        ),
        ("empty text", ann.send_message("g", "").await, "text must not be empty"),
        (
            "long text",
            ann.send_message("g", &long_text).await,
            "text is 16385 characters long; the limit is 16384",
        ),
        (
            "page limit 0",
            ann.list_groups_page(None, 0).await.map(|_| ()),
            "limit must be between 1 and 1000, not 0",
        ),
        (
            "page limit 1001",
            ann.list_groups_page(None, 1001).await.map(|_| ()),
            "limit must be between 1 and 1000",
        ),
        (
            "history limit 0",
            ann.get_history("g", None, 0).await.map(|_| ()),
            "limit must be between 1 and 500, not 0",
        ),
        (
            "history limit 501",
            ann.get_history("g", None, 501).await.map(|_| ()),
            "limit must be between 1 and 500",
        ),
        (
            "history not joined",
            ann.get_history("other", None, 10).await.map(|_| ()),
            "join group 'other'",
        ),
        (
            "history bad id",
            ann.get_history("g", Some("yesterday"), 10).await.map(|_| ()),
            "'yesterday' is not a message id",
        ),
        (
            "history unknown id",
            ann.get_history("g", Some("1-0"), 10).await.map(|_| ()),
            "message '1-0' is not a message of group 'g'",
        ),
        (
            "after limit 0",
            ann.get_messages_after("g", "0-0", 0).await.map(|_| ()),
            "limit must be between 1 and 500, not 0",
        ),
        (
            "after limit 501",
            ann.get_messages_after("g", "0-0", 501).await.map(|_| ()),
            "limit must be between 1 and 500, not 501",
        ),
        (
            "after not joined",
            ann.get_messages_after("other", "0-0", 10).await.map(|_| ()),
            "join group 'other'",
        ),
        (
            "after bad id",
            ann.get_messages_after("g", "yesterday", 10).await.map(|_| ()),
            "afterId: 'yesterday' is not a message id",
        ),
    ];
    for (case, result, expected) in cases {
        let error = server_error(result);
        assert!(error.contains(expected), "{case}: `{error}` should contain `{expected}`");
        // The same connection goes on serving.
        assert_eq!(ann.list_groups().await.unwrap(), vec!["g"], "{case}");
    }
}

#[tokio::test]
async fn history_on_join_has_the_latest_100_oldest_first_including_the_last_send() {
    let server = TestServer::embedded().await;
    let (ann, _ann_events) = connect(&server, "ann").await;
    ann.join_group("busy").await.unwrap();
    for i in 0..130 {
        ann.send_message("busy", &format!("m{i}")).await.unwrap();
    }
    let (bob, mut bob_events) = connect(&server, "bob").await;
    assert_eq!(bob.join_group("busy").await.unwrap(), JoinResult::Joined);
    let history = next_history(&mut bob_events).await;
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    let expected: Vec<String> = (30..130).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "the latest 100, oldest first, the last send included");

    // JoinGroup again sends the history again.
    assert_eq!(bob.join_group("busy").await.unwrap(), JoinResult::Joined);
    assert_eq!(next_history(&mut bob_events).await, history);
    assert_eq!(bob.duplicates_dropped(), 0, "no live message repeated the history");
}

#[tokio::test]
async fn get_history_pages_backwards_without_gaps_or_repeats() {
    let server = TestServer::embedded().await;
    let (ann, _events) = connect(&server, "ann").await;
    ann.join_group("paged").await.unwrap();
    for i in 0..250 {
        ann.send_message("paged", &format!("m{i}")).await.unwrap();
    }
    let mut collected: Vec<Message> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = ann.get_history("paged", before.as_deref(), 100).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 100);
        before = Some(page[0].id.clone());
        let mut page = page;
        page.append(&mut collected);
        collected = page;
    }
    let texts: Vec<String> = collected.iter().map(|m| m.text.clone()).collect();
    let expected: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
}

#[tokio::test]
async fn get_messages_after_pages_forward_without_gaps_or_repeats() {
    let server = TestServer::embedded().await;
    let (ann, _events) = connect(&server, "ann").await;
    ann.join_group("paged").await.unwrap();
    for i in 0..250 {
        ann.send_message("paged", &format!("m{i}")).await.unwrap();
    }
    let first = ann.get_history("paged", None, 500).await.unwrap()[0].clone();
    let mut collected = vec![first.clone()];
    let mut after = first.id.clone();
    loop {
        let page = ann.get_messages_after("paged", &after, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 100);
        after = last.id.clone();
        collected.extend(page);
    }
    let texts: Vec<String> = collected.iter().map(|m| m.text.clone()).collect();
    let expected: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
    // A position, not a message: before every id gives the first ones.
    let start = ann.get_messages_after("paged", "0-0", 2).await.unwrap();
    assert_eq!(start, collected[..2]);
}

#[tokio::test]
async fn list_groups_page_walks_every_group_in_code_point_order() {
    let server = TestServer::embedded().await;
    let (ann, _events) = connect(&server, "ann").await;
    let mut names: Vec<String> = (0..23).map(|i| format!("g{i:02}")).collect();
    names.extend(["Zebra", "apple", "Äpfel", "日本", "😀"].map(String::from));
    for name in &names {
        ann.create_group(name).await.unwrap();
    }
    names.sort();
    assert_eq!(ann.list_groups().await.unwrap(), names, "sorted by code point");
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ann.list_groups_page(after.as_deref(), 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        walked.extend(page);
    }
    assert_eq!(walked, names);
}

#[tokio::test]
async fn a_group_holds_20_distinct_users_and_freed_places_are_taken_again() {
    let server = TestServer::embedded().await;
    let mut members = Vec::new();
    for i in 0..20 {
        let (client, events) = connect(&server, &format!("user{i}")).await;
        assert_eq!(client.join_group("full").await.unwrap(), JoinResult::Joined, "user{i}");
        members.push((client, events));
    }
    let (late, _late_events) = connect(&server, "late").await;
    assert_eq!(late.join_group("full").await.unwrap(), JoinResult::NoRoom);
    assert_eq!(
        server_error(late.send_message("full", "let me in").await),
        "join group 'full' before sending to it, reading its history or listing its members"
    );

    // A member's second connection is not a new member.
    let (again, _again_events) = connect(&server, "user0").await;
    assert_eq!(again.join_group("full").await.unwrap(), JoinResult::Joined);
    let mut expected: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    expected.sort();
    assert_eq!(again.list_members("full").await.unwrap(), expected, "20 members, listed once each");
    assert_eq!(
        server_error(late.list_members("full").await),
        "join group 'full' before sending to it, reading its history or listing its members"
    );

    // user1 leaves: its place is free.
    members[1].0.leave_group("full").await.unwrap();
    assert_eq!(late.join_group("full").await.unwrap(), JoinResult::Joined);

    // user2 disconnects: its place is freed too.
    let (user2, _) = members.remove(2);
    user2.close().await;
    let (later, _later_events) = connect(&server, "later").await;
    // The server frees the place when it sees the socket close.
    eventually(WAIT, "a disconnect frees the place", || async {
        later.join_group("full").await.unwrap() == JoinResult::Joined
    })
    .await;
    let (last, _last_events) = connect(&server, "last").await;
    assert_eq!(last.join_group("full").await.unwrap(), JoinResult::NoRoom);
}

#[tokio::test]
async fn with_auto_create_off_joining_a_missing_group_is_an_error_naming_it() {
    let server = TestServer::start(vec!["--auto-create-groups".into(), "false".into()]).await;
    let (ann, _events) = connect(&server, "ann").await;
    let error = server_error(ann.join_group("nowhere").await);
    assert!(error.contains("group 'nowhere' does not exist"), "{error}");
    ann.create_group("somewhere").await.unwrap();
    assert_eq!(ann.join_group("somewhere").await.unwrap(), JoinResult::Joined);
}

#[tokio::test]
async fn with_join_not_required_anyone_may_send_to_an_existing_group() {
    let server = TestServer::start(vec!["--require-join-to-send".into(), "false".into()]).await;
    let (ann, mut ann_events) = connect(&server, "ann").await;
    let (bob, _bob_events) = connect(&server, "bob").await;
    ann.join_group("open").await.unwrap();
    bob.send_message("open", "from outside").await.unwrap();
    assert_eq!(next_message(&mut ann_events).await.text, "from outside");
    let error = server_error(bob.send_message("missing", "hi").await);
    assert!(error.contains("group 'missing' does not exist"), "{error}");
}
