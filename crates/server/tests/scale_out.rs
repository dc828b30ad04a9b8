//! Several real `next-chat-server` processes sharing Redis and MariaDB, as a
//! scaled-out deployment runs them: messages cross instances exactly once and
//! in one order, the member limit holds across instances, a killed instance's
//! places free up, and the instances ride out a MariaDB outage and a Redis
//! restart. Each test has its own key prefix and database (`ScaleOut`); the
//! outage tests cut MariaDB through a proxy of their own and restart a Redis of
//! their own, so every test runs in parallel with the others and can rerun.
//! The chat tests run twice: on the machine's Redis, and on a Redis Cluster
//! of their own (three masters, three replicas), where a master is also
//! killed mid-chat.
//!
//! The client library drops a message id it has already delivered, so
//! "exactly once" is checked where that cannot hide anything: each client's
//! `duplicates_dropped()` must stay 0, and the sum of
//! `nextchat_messages_delivered_total` over the instances must be exactly
//! messages × members.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use next_chat_client::{
    Client, ClientError, ClientOptions, Event, Events, JoinResult, Message, Protocol,
};
use next_chat_testkit::{
    MYSQL_ADDR, RedisCluster, RedisServer, ScaleOut, TcpProxy, TestServer, eventually,
    eventually_ok, mariadb,
};

/// How long messages may take to reach a member.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a member waits to make sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(500);

/// The contract: a member whose server died is dropped within about 30 s.
const PLACES_FREED_WITHIN: Duration = Duration::from_secs(35);

/// "Fail fast": a send while Redis is down must fail within this.
const FAIL_FAST: Duration = Duration::from_secs(5);

const GROUP: &str = "scale-out";

/// Starts `n` instances with the same flags, one after another (each applies
/// the migrations first, which is idempotent).
/// One user's connection to one instance.
struct Member {
    user: String,
    /// The port of the instance it is connected to.
    port: u16,
    client: Client,
    events: Events,
}

async fn connect(server: &TestServer, user: &str) -> Member {
    connect_with(server, user, Protocol::Json).await
}

async fn connect_with(server: &TestServer, user: &str, protocol: Protocol) -> Member {
    let mut options = ClientOptions::new(&server.url, user);
    options.protocol = protocol;
    let (client, events) = next_chat_testkit::connect_with(options).await;
    Member { user: user.to_string(), port: server.port, client, events }
}

/// Connects and joins `GROUP`, which must have room.
async fn join(server: &TestServer, user: &str) -> Member {
    let member = connect(server, user).await;
    let joined = member.client.join_group(GROUP).await;
    assert_eq!(joined, Ok(JoinResult::Joined), "{user} joins through {}", server.url);
    member
}

/// The next `n` messages of a member (history events skipped), failing the
/// test if they do not all come within `DELIVERY_TIMEOUT`.
async fn receive(member: &mut Member, n: usize) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        match tokio::time::timeout_at(deadline, member.events.recv()).await {
            Ok(Some(Event::Message(message))) => messages.push(message),
            Ok(Some(Event::History { .. })) => {}
            Ok(Some(other)) => {
                panic!("{}: {other:?} after {} of {n} messages", member.user, messages.len())
            }
            Ok(None) => {
                panic!("{}: events ended after {} of {n} messages", member.user, messages.len())
            }
            Err(_) => panic!(
                "{}: only {} of {n} messages within {DELIVERY_TIMEOUT:?}",
                member.user,
                messages.len()
            ),
        }
    }
    messages
}

/// Receives `n` messages on every member at once.
async fn receive_all(members: &mut [Member], n: usize) -> Vec<Vec<Message>> {
    join_all(members.iter_mut().map(|member| receive(member, n))).await
}

/// Fails if any member gets another message within `QUIET`, or if its client
/// dropped a message id it had already delivered (a duplicate from the server).
async fn expect_quiet(members: &mut [Member]) {
    join_all(members.iter_mut().map(|member| async move {
        if let Ok(Some(Event::Message(extra))) =
            tokio::time::timeout(QUIET, member.events.recv()).await
        {
            panic!("{} got an extra message: {extra:?}", member.user);
        }
        assert_eq!(member.client.duplicates_dropped(), 0, "{} was sent a duplicate", member.user);
    }))
    .await;
}

/// A message id as (milliseconds, sequence), to compare them.
fn id_key(message: &Message) -> (u64, u64) {
    let (millis, seq) = message.id.split_once('-').expect("an id is MILLIS-SEQ");
    (millis.parse().expect("millis"), seq.parse().expect("seq"))
}

fn texts(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

fn assert_strictly_increasing(messages: &[Message]) {
    for pair in messages.windows(2) {
        assert!(
            id_key(&pair[0]) < id_key(&pair[1]),
            "ids out of order: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
}

/// `/readyz` as (status, body).
async fn readyz(server: &TestServer) -> (u16, String) {
    common::http(server.port, "GET", "/readyz", &[]).await
}

/// `nextchat_messages_delivered_total` of one instance.
async fn delivered_total(server: &TestServer) -> u64 {
    metric(server, "nextchat_messages_delivered_total").await
}

async fn delivered_everywhere(servers: &[TestServer]) -> u64 {
    join_all(servers.iter().map(delivered_total)).await.into_iter().sum()
}

/// A counter or gauge of one instance's `/metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    server.metrics().await.value(name, &[]) as u64
}

async fn messages_cross_instances_exactly_once_and_in_one_order(scale: &ScaleOut) {
    let servers = TestServer::start_instances(&scale.args(), 3).await;
    // Both hub protocols on every instance.
    let mut members = Vec::new();
    for i in 0..6 {
        let protocol = if i < 3 { Protocol::Json } else { Protocol::MessagePack };
        let member = connect_with(&servers[i % 3], &format!("user{i}"), protocol).await;
        assert_eq!(member.client.join_group(GROUP).await, Ok(JoinResult::Joined));
        members.push(member);
    }

    // Every member sends 10 messages, all members at once, so the instances'
    // publishes interleave.
    const PER_SENDER: usize = 10;
    let sends = members.iter().map(|member| {
        let client = member.client.clone();
        async move {
            for j in 0..PER_SENDER {
                let text = format!("{} {j}", client.user());
                client.send_message(GROUP, &text).await.unwrap_or_else(|e| panic!("{text}: {e}"));
            }
        }
    });
    join_all(sends).await;
    let total = members.len() * PER_SENDER;

    let received = receive_all(&mut members, total).await;
    expect_quiet(&mut members).await;
    let order = &received[0];
    for (member, seen) in members.iter().zip(&received) {
        assert_eq!(
            seen, order,
            "{} sees the same messages in the same order as user0",
            member.user
        );
    }
    assert_strictly_increasing(order);
    for member in &members {
        let own: Vec<&str> =
            order.iter().filter(|m| m.author_id == member.user).map(|m| m.text.as_str()).collect();
        let sent: Vec<String> = (0..PER_SENDER).map(|j| format!("{} {j}", member.user)).collect();
        assert_eq!(own, sent, "{}'s messages arrive once each, in the order sent", member.user);
    }
    assert_eq!(
        delivered_everywhere(&servers).await,
        (total * members.len()) as u64,
        "the instances queued each message once per member"
    );

    // History, read through any instance, is that same sequence.
    for member in [&members[1], &members[5]] {
        let history = member.client.get_history(GROUP, None, 500).await.expect("history");
        assert_eq!(&history, order, "history through {}'s instance", member.user);
    }
}

async fn thirty_users_racing_from_three_instances_get_exactly_twenty_places(scale: &ScaleOut) {
    let servers = TestServer::start_instances(&scale.args(), 3).await;
    let mut racers = Vec::new();
    for i in 0..30 {
        racers.push(connect(&servers[i % 3], &format!("racer{i}")).await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(racers.len()));
    let joins = racers.iter().map(|racer| {
        let client = racer.client.clone();
        let start = Arc::clone(&start);
        async move {
            start.wait().await;
            client.join_group(GROUP).await
        }
    });
    let results = join_all(joins).await;
    let (mut joined, mut refused) = (Vec::new(), Vec::new());
    for (racer, result) in racers.into_iter().zip(results) {
        match result {
            Ok(JoinResult::Joined) => joined.push(racer),
            Ok(JoinResult::NoRoom) => refused.push(racer),
            Err(e) => panic!("{}: {e}", racer.user),
        }
    }
    assert_eq!((joined.len(), refused.len()), (20, 10), "exactly 20 Ok and 10 NoRoom");

    // A member already in gets back in through another instance, full or not.
    let again = &joined[0];
    let on_other = servers.iter().find(|s| s.port != again.port).expect("another instance");
    let second = connect(on_other, &again.user).await;
    assert_eq!(second.client.join_group(GROUP).await, Ok(JoinResult::Joined));
    drop(second);

    // The 20 receive a message; the 10 refused neither receive nor may send.
    joined[0].client.send_message(GROUP, "twenty of us").await.expect("send");
    for seen in receive_all(&mut joined, 1).await {
        assert_eq!(texts(&seen), ["twenty of us"]);
    }
    expect_quiet(&mut refused).await;
    let refused_send = refused[0].client.send_message(GROUP, "let me in").await;
    assert!(
        matches!(&refused_send, Err(ClientError::Server(text)) if text.contains("join")),
        "a refused user cannot send: {refused_send:?}"
    );
}

async fn a_killed_instance_frees_its_places_and_the_others_keep_chatting(scale: &ScaleOut) {
    let mut servers = TestServer::start_instances(&scale.args(), 3).await;
    // 7 + 7 members on the instances that live, 6 on the one that dies.
    let mut survivors = Vec::new();
    let mut doomed = Vec::new();
    for i in 0..20 {
        let member = join(&servers[i % 3], &format!("member{i}")).await;
        if i % 3 == 2 { doomed.push(member) } else { survivors.push(member) }
    }
    let mut newcomers = Vec::new();
    for i in 0..7 {
        newcomers.push(connect(&servers[i % 2], &format!("newcomer{i}")).await);
    }
    assert_eq!(
        newcomers[0].client.join_group(GROUP).await,
        Ok(JoinResult::NoRoom),
        "the group is full"
    );

    servers[2].kill().await;
    let killed = Instant::now();
    drop(doomed);

    // The others keep chatting at once, across the two instances left.
    survivors[0].client.send_message(GROUP, "still here").await.expect("send after the kill");
    survivors[1].client.send_message(GROUP, "me too").await.expect("send after the kill");
    for seen in receive_all(&mut survivors, 2).await {
        assert_eq!(texts(&seen), ["still here", "me too"]);
    }

    // The dead instance's six places free up (each 30 s after its last
    // refresh, so not all at the same moment); each newcomer keeps trying.
    let late = newcomers.pop().expect("seven newcomers");
    let mut admitted = newcomers;
    let mut first_freed = None;
    for newcomer in &admitted {
        let left = PLACES_FREED_WITHIN.saturating_sub(killed.elapsed());
        eventually(left, "the killed instance's places free up", || async {
            newcomer.client.join_group(GROUP).await.expect("join") == JoinResult::Joined
        })
        .await;
        first_freed.get_or_insert_with(|| killed.elapsed());
    }
    let all_freed = killed.elapsed();
    println!(
        "after SIGKILL the killed instance's first place was free in {:?}, all six in {all_freed:?}",
        first_freed.unwrap_or_default()
    );
    assert_eq!(
        late.client.join_group(GROUP).await,
        Ok(JoinResult::NoRoom),
        "exactly the six places of the killed instance were freed"
    );

    // And the 20 now in the group chat across both instances.
    admitted[5].client.send_message(GROUP, "hello from a newcomer").await.expect("send");
    survivors[13].client.send_message(GROUP, "welcome").await.expect("send");
    let mut everyone: Vec<Member> = survivors.into_iter().chain(admitted.drain(..)).collect();
    let received = receive_all(&mut everyone, 2).await;
    for (member, seen) in everyone.iter().zip(&received) {
        assert_eq!(texts(seen), texts(&received[0]), "{} sees one order", member.user);
        let mut sorted = texts(seen);
        sorted.sort_unstable();
        assert_eq!(sorted, ["hello from a newcomer", "welcome"], "{}", member.user);
    }
    expect_quiet(&mut everyone).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_mariadb_outage_loses_no_delivery_and_no_history() {
    const OUTAGE: Duration = Duration::from_secs(10);
    const SENDERS: usize = 10;
    const PER_SENDER: usize = 10;
    let scale = ScaleOut::create();
    let proxy = TcpProxy::start(MYSQL_ADDR).await;
    let servers = TestServer::start_instances(&scale.args_via(None, Some(proxy.port)), 2).await;
    let mut members = Vec::new();
    for i in 0..SENDERS {
        members.push(join(&servers[i % 2], &format!("writer{i}")).await);
    }

    proxy.cut();
    let cut = Instant::now();
    for server in &servers {
        eventually(Duration::from_secs(8), "readyz reports mysql down", || async {
            let (status, body) = readyz(server).await;
            status == 503 && body.contains("mysql")
        })
        .await;
    }

    // 100 messages, ten senders at once, all sent and delivered while the
    // database is away.
    let sends = members.iter().map(|member| {
        let client = member.client.clone();
        async move {
            for j in 0..PER_SENDER {
                let text = format!("{} {j}", client.user());
                let started = Instant::now();
                client.send_message(GROUP, &text).await.unwrap_or_else(|e| panic!("{text}: {e}"));
                // The send waits at most the save timeout (500 ms) for history.
                let took = started.elapsed();
                assert!(took < Duration::from_secs(3), "{text} took {took:?}");
            }
        }
    });
    join_all(sends).await;
    let total = SENDERS * PER_SENDER;
    let received = receive_all(&mut members, total).await;
    println!("{total} messages sent and delivered {:?} into the MariaDB outage", cut.elapsed());
    expect_quiet(&mut members).await;
    for (member, seen) in members.iter().zip(&received) {
        assert_eq!(texts(seen), texts(&received[0]), "{} sees one order", member.user);
    }
    let order = &received[0];
    assert_strictly_increasing(order);
    assert_eq!(order.iter().map(|m| &m.text).collect::<HashSet<_>>().len(), total);

    // The database stays away for the whole outage, and at least until every
    // message was delivered (on a slow machine that can take longer).
    tokio::time::sleep_until((cut + OUTAGE).into()).await;
    proxy.restore();
    let restored = Instant::now();
    let database = scale.database.clone();
    let count_sql = format!("SELECT COUNT(*) FROM messages WHERE group_id = '{GROUP}'");
    let stored_after = eventually(Duration::from_secs(30), "history stores all 100", || {
        let (database, sql) = (database.clone(), count_sql.clone());
        async move { mariadb(&database, &sql).await == total.to_string() }
    })
    .await;
    for server in &servers {
        eventually(Duration::from_secs(10), "readyz is 200 again", || async {
            readyz(server).await.0 == 200
        })
        .await;
    }
    println!(
        "after MariaDB came back: all {total} stored in {stored_after:?}, instances ready in {:?}",
        restored.elapsed()
    );

    // Stored once each, and history through either instance is what was delivered.
    let distinct = mariadb(
        &database,
        &format!("SELECT COUNT(*), COUNT(DISTINCT text), COUNT(DISTINCT id_millis, id_seq) FROM messages WHERE group_id = '{GROUP}'"),
    )
    .await;
    assert_eq!(distinct, format!("{total}\t{total}\t{total}"), "none stored twice");
    for member in [&members[0], &members[1]] {
        let history = member.client.get_history(GROUP, None, 500).await.expect("history");
        assert_eq!(&history, order, "history through {}'s instance", member.user);
    }
    assert_eq!(delivered_everywhere(&servers).await, (total * members.len()) as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_ride_out_a_redis_restart_and_miss_nothing_accepted_after_it() {
    let scale = ScaleOut::create();
    let mut redis = RedisServer::start().await;
    let servers = TestServer::start_instances(&scale.args_via(Some(&redis.url()), None), 3).await;
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(join(&servers[i % 3], &format!("talker{i}")).await);
    }
    for (i, member) in members[..3].iter().enumerate() {
        member.client.send_message(GROUP, &format!("before {i}")).await.expect("send");
    }
    for seen in receive_all(&mut members, 3).await {
        let mut sorted = texts(&seen);
        sorted.sort_unstable();
        assert_eq!(sorted, ["before 0", "before 1", "before 2"]);
    }

    redis.kill().await;
    for server in &servers {
        eventually(Duration::from_secs(8), "readyz reports redis down", || async {
            let (status, body) = readyz(server).await;
            status == 503 && body.contains("redis")
        })
        .await;
    }
    // A send while Redis is away fails fast, with an error naming Redis.
    for member in &members[..3] {
        let started = Instant::now();
        let failed = member.client.send_message(GROUP, "into the void").await;
        let took = started.elapsed();
        assert!(
            matches!(&failed, Err(ClientError::Server(text)) if text.contains("redis")),
            "a send while Redis is down fails with an error naming it: {failed:?}"
        );
        assert!(took < FAIL_FAST, "the failed send took {took:?}");
        println!("a send while Redis was down failed in {took:?}: {}", failed.unwrap_err());
    }

    redis.start_again().await;
    let restarted = Instant::now();
    // Send from every instance as soon as each takes it, likely before their
    // stream readers are back: those must still deliver them.
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut first_accepted = None;
    for i in 0..12 {
        let text = format!("after {i}");
        let sender = &members[i % members.len()].client;
        loop {
            match sender.send_message(GROUP, &text).await {
                Ok(()) => break,
                Err(ClientError::Server(_)) if restarted.elapsed() < Duration::from_secs(20) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{text} after the restart: {e}"),
            }
        }
        first_accepted.get_or_insert_with(|| restarted.elapsed());
        accepted.push(text);
    }
    println!(
        "after the Redis restart: first send accepted in {:?} ({refused} refused before)",
        first_accepted.unwrap_or_default()
    );

    let received = receive_all(&mut members, accepted.len()).await;
    expect_quiet(&mut members).await;
    for (member, seen) in members.iter().zip(&received) {
        assert_eq!(
            texts(seen),
            accepted,
            "{} receives every accepted message once, in order",
            member.user
        );
    }
    assert_strictly_increasing(&received[0]);

    for server in &servers {
        eventually(Duration::from_secs(20), "readyz is 200 again", || async {
            readyz(server).await.0 == 200
        })
        .await;
    }
    println!("all instances ready {:?} after the Redis restart", restarted.elapsed());

    // The restarted Redis came back empty: the instances put back the group
    // their members are in (at their next heartbeat, within 10 s).
    for member in &members[..3] {
        eventually(Duration::from_secs(15), "the group is listed again", || async {
            member
                .client
                .list_groups()
                .await
                .is_ok_and(|groups| groups.contains(&GROUP.to_string()))
        })
        .await;
    }
    println!("the group was listed again {:?} after the Redis restart", restarted.elapsed());

    // History holds the messages from both sides of the restart, in order.
    let history = members[4].client.get_history(GROUP, None, 500).await.expect("history");
    let mut expected: Vec<String> = (0..3).map(|i| format!("before {i}")).collect();
    let before: HashSet<&str> = texts(&history[..3]).into_iter().collect();
    assert_eq!(before, expected.iter().map(String::as_str).collect::<HashSet<_>>());
    expected.splice(0..3, texts(&history[..3]).into_iter().map(str::to_string));
    expected.extend(accepted);
    assert_eq!(texts(&history), expected);
    assert_strictly_increasing(&history);
}

/// `SendMessage` completes only once history stored the message (or the save
/// timeout passed), but the connection's next call does not wait for that:
/// with MariaDB away and a long save timeout, a sender's two messages are both
/// delivered while neither send has completed, and both complete once MariaDB
/// is back. Were calls run strictly one after another, the second message would
/// wait for the first send's two-minute save timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_send_waiting_for_history_does_not_hold_up_the_next_call() {
    let scale = ScaleOut::create();
    let proxy = TcpProxy::start(MYSQL_ADDR).await;
    let mut args = scale.args_via(None, Some(proxy.port));
    args.extend(["--save-timeout-ms".to_string(), "120000".to_string()]);
    let server = TestServer::start(args).await;
    // The sends below outlast the client's default call timeout of 10 s.
    let mut options = ClientOptions::new(&server.url, "writer");
    options.call_timeout = Duration::from_secs(90);
    let (writer, _writer_events) = next_chat_testkit::connect_with(options).await;
    assert_eq!(writer.join_group(GROUP).await, Ok(JoinResult::Joined));
    let mut reader = join(&server, "reader").await;

    proxy.cut();
    eventually(Duration::from_secs(8), "readyz reports mysql down", || async {
        let (status, body) = readyz(&server).await;
        status == 503 && body.contains("mysql")
    })
    .await;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for text in ["first", "second"] {
        let (client, done) = (writer.clone(), done_tx.clone());
        tokio::spawn(async move {
            let _ = done.send((text, client.send_message(GROUP, text).await));
        });
    }
    let delivered = receive(&mut reader, 2).await;
    let mut delivered_texts = texts(&delivered);
    delivered_texts.sort();
    assert_eq!(delivered_texts, ["first", "second"]);
    assert!(done_rx.try_recv().is_err(), "no send completes before its message is stored");

    proxy.restore();
    for _ in 0..2 {
        let (text, result) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
            .await
            .expect("both sends complete once MariaDB is back")
            .expect("the send tasks report");
        result.unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let count_sql = format!("SELECT COUNT(*) FROM messages WHERE group_id = '{GROUP}'");
    assert_eq!(mariadb(&scale.database, &count_sql).await, "2", "both stored when they completed");
}

async fn an_instance_reads_only_what_its_members_need(scale: &ScaleOut) {
    let servers = TestServer::start_instances(&scale.args(), 2).await;
    let mut members = vec![join(&servers[0], "near").await, join(&servers[0], "far").await];
    // An instance with connections but no member in the group.
    let _bystander = connect(&servers[1], "bystander").await;
    for i in 0..10 {
        members[0].client.send_message(GROUP, &format!("m{i}")).await.expect("send");
    }
    receive_all(&mut members, 10).await;
    assert_eq!(metric(&servers[0], "nextchat_bus_entries_received_total").await, 10);
    assert_eq!(metric(&servers[0], "nextchat_bus_shards_read").await, 1);
    assert!(metric(&servers[0], "nextchat_bus_bytes_received_total").await > 10 * 20);
    assert_eq!(
        metric(&servers[1], "nextchat_bus_entries_received_total").await,
        0,
        "the instance without members read none of the group's messages"
    );
    assert_eq!(metric(&servers[1], "nextchat_bus_shards_read").await, 0);
}

/// Sends `text` until an instance accepts it (a send fails while the cluster
/// fails over); panics if none did `within`.
async fn send_until_accepted(member: &Member, text: &str, within: Duration) {
    let what = format!("{}: {text} accepted", member.user);
    eventually_ok(within, &what, || async {
        match member.client.send_message(GROUP, text).await {
            Ok(()) => Ok(()),
            Err(ClientError::Server(refused)) => Err(refused),
            Err(error) => panic!("{}: {text}: {error}", member.user),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_resumes_after_the_master_of_its_stream_fails_over() {
    let mut cluster = RedisCluster::start().await;
    let scale = ScaleOut::create_on(&cluster);
    let servers = TestServer::start_instances(&scale.args(), 2).await;
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(join(&servers[i % 2], &format!("member{i}")).await);
    }
    members[0].client.send_message(GROUP, "before").await.expect("send before the failover");
    for seen in receive_all(&mut members, 1).await {
        assert_eq!(texts(&seen), ["before"]);
    }

    // Kill the master that holds the group's stream, as a crash would.
    let config = next_chat_storage::RedisConfig {
        cluster: true,
        key_prefix: scale.key_prefix.clone(),
        stream_shards: next_chat_server::config::DEFAULT_STREAM_SHARDS,
        ..Default::default()
    };
    let group = next_chat_core::GroupId::from_trusted(GROUP);
    let stream = config.stream_key(config.shard_of(&group));
    let master = cluster.master_of(&stream).await;
    cluster.kill(master).await;
    let killed = Instant::now();

    // Each member keeps sending until its message is accepted: what is
    // accepted after the kill reaches everyone, in one order.
    let sends = members.iter().map(|member| {
        let text = format!("after from {}", member.user);
        async move { send_until_accepted(member, &text, Duration::from_secs(30)).await }
    });
    join_all(sends).await;
    println!("every member's send was accepted {:?} after the kill", killed.elapsed());
    cluster.wait_for_failover(master).await;
    members[3].client.send_message(GROUP, "after the failover").await.expect("send");
    let received = receive_all(&mut members, 5).await;
    for (member, seen) in members.iter().zip(&received) {
        assert_eq!(texts(seen), texts(&received[0]), "{} sees one order", member.user);
        assert_strictly_increasing(seen);
        let mut sorted = texts(seen);
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "after from member0",
                "after from member1",
                "after from member2",
                "after from member3",
                "after the failover"
            ],
            "{}",
            member.user
        );
    }
    expect_quiet(&mut members).await;
}

/// The chat tests, on one Redis and on a Redis Cluster of the test's own.
/// Per-user limits hold across reconnects and instances: one user connecting
/// to either instance in turn creates at most `groups_created_per_minute`
/// groups in the minute; another user is not held up by it.
#[tokio::test(flavor = "multi_thread")]
async fn one_users_group_creation_rate_holds_across_reconnects_and_instances() {
    let scale = ScaleOut::create();
    let mut args = scale.args();
    args.extend(["--groups-created-per-minute", "3"].map(String::from));
    let servers = TestServer::start_instances(&args, 2).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let server = &servers[i % 2];
        let (client, _events) =
            Client::connect(ClientOptions::new(&server.url, "ann")).await.unwrap();
        for j in 0..2 {
            let name = format!("r{i}-{j}");
            match client.create_group(&name).await {
                Ok(()) => created.push(name),
                Err(error) => {
                    let error = error.to_string();
                    assert!(
                        error.contains("more than 3 groups created per minute for user ann"),
                        "{error}"
                    );
                }
            }
        }
        client.close().await;
    }
    assert_eq!(created, ["r0-0", "r0-1", "r1-0"], "three in the minute, on either instance");
    let (bob, _events) = Client::connect(ClientOptions::new(&servers[1].url, "bob")).await.unwrap();
    bob.create_group("bobs").await.expect("bob has a bucket of his own");
}

macro_rules! single_and_cluster {
    ($($test:ident),* $(,)?) => {
        mod single_redis {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    super::$test(&super::ScaleOut::create()).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let cluster = super::RedisCluster::start().await;
                    super::$test(&super::ScaleOut::create_on(&cluster)).await;
                }
            )*
        }
    };
}

single_and_cluster!(
    messages_cross_instances_exactly_once_and_in_one_order,
    thirty_users_racing_from_three_instances_get_exactly_twenty_places,
    a_killed_instance_frees_its_places_and_the_others_keep_chatting,
    an_instance_reads_only_what_its_members_need,
);
