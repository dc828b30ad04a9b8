//! Tests only the scale-out backends need: several instances sharing one Redis,
//! members of a dead instance expiring, the stream reader surviving a Redis
//! restart, MySQL's batched writes and index use, and the reconciler. They use
//! the machine's Redis and MariaDB under names of their own, except the restart
//! test, which runs a `redis-server` of its own on a free port.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use next_chat_core::{
    HistoryStore, JoinOutcome, LocalFanout, Membership, Message, MessageId, MessageText, Messaging,
    NewMessage, NoObserver,
};
use next_chat_storage::{
    ExistingMessages, MySqlHistory, ReconcilerConfig, RedisConfig, RedisMembership, RedisMessaging,
    StoredMarks, StreamHistoryReconciler, mysql,
};
use next_chat_testkit::{MYSQL_ADDR, REDIS_ADDR, RedisServer, TcpProxy, eventually, eventually_ok};
use sqlx::Row;

fn draft(group_name: &str, text: &str) -> NewMessage {
    NewMessage {
        author: user("alice"),
        group: group(group_name),
        text: MessageText::from_trusted(text),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_for_the_last_places_admit_exactly_the_maximum() {
    let names = ScaleOutNames::new();
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(Arc::new(RedisMembership::start(names.redis_config()).await.unwrap()));
    }
    let g = group("race");
    instances[0].create_group(&g, None).await.unwrap();
    // 17 places taken, 3 left, 12 users on 4 instances racing for them.
    for i in 0..17 {
        let outcome = instances[i % 4]
            .join(&g, &user(&format!("early{i}")), &connection(&format!("e{i}")), 20)
            .await;
        assert_eq!(outcome.unwrap(), JoinOutcome::Joined);
    }
    let mut tasks = Vec::new();
    for i in 0..12 {
        let instance = Arc::clone(&instances[i % 4]);
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            instance.join(&g, &user(&format!("late{i}")), &connection(&format!("l{i}")), 20).await
        }));
    }
    let mut joined = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == JoinOutcome::Joined {
            joined += 1;
        }
    }
    assert_eq!(joined, 3);
    assert_eq!(instances[1].member_count(&g).await.unwrap(), 20);
    // A user already in through one instance gets in through another.
    assert_eq!(
        instances[3].join(&g, &user("early0"), &connection("e0-bis"), 20).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(instances[2].member_count(&g).await.unwrap(), 20);
    for instance in &instances {
        instance.shutdown().await;
    }
    assert_eq!(instances[0].member_count(&g).await.unwrap(), 0, "shutdown frees the places");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_an_instance_that_stops_heart_beating_expire() {
    let names = ScaleOutNames::new();
    let short = RedisConfig {
        member_ttl: Duration::from_millis(1500),
        heartbeat_interval: Duration::from_millis(300),
        ..names.redis_config()
    };
    let doomed = RedisMembership::start(short.clone()).await.unwrap();
    let observer = RedisMembership::start(names.redis_config()).await.unwrap();
    let g = group("g");
    doomed.create_group(&g, None).await.unwrap();
    for i in 0..3 {
        let (u, c) = (user(&format!("u{i}")), connection(&format!("c{i}")));
        assert_eq!(doomed.join(&g, &u, &c, 20).await.unwrap(), JoinOutcome::Joined);
    }
    assert_eq!(
        observer.join(&g, &user("survivor"), &connection("s"), 20).await.unwrap(),
        JoinOutcome::Joined
    );
    // Heart-beating keeps the members well past their time to live.
    tokio::time::sleep(short.member_ttl * 2).await;
    assert_eq!(observer.member_count(&g).await.unwrap(), 4);

    // Dropping without shutdown stops the heartbeat and leaves the entries, as
    // a SIGKILL would.
    let stopped = Instant::now();
    drop(doomed);
    eventually(short.member_ttl * 3, "the dead instance's members expire", || async {
        observer.member_count(&g).await.unwrap() == 1
    })
    .await;
    assert!(stopped.elapsed() >= short.member_ttl - short.heartbeat_interval);
    // The freed places can be taken.
    assert_eq!(
        observer.join(&g, &user("u0"), &connection("c0-new"), 2).await.unwrap(),
        JoinOutcome::Joined
    );
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_every_message_in_one_order() {
    let names = ScaleOutNames::new();
    let fanouts = [Arc::new(LocalFanout::new()), Arc::new(LocalFanout::new())];
    let mut instances = Vec::new();
    for fanout in &fanouts {
        instances.push(Arc::new(
            RedisMessaging::start(names.redis_config(), Arc::clone(fanout)).await.unwrap(),
        ));
    }
    let g = group("shared");
    let mut on_a = subscribe(&fanouts[0], instances[0].as_ref(), &g, "a").await;
    let mut on_b = subscribe(&fanouts[1], instances[1].as_ref(), &g, "b").await;
    let mut tasks = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        let instance = Arc::clone(instance);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                instance.publish(draft("shared", &format!("{n}/{i}")), &|_| {}).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen_a = receive(&mut on_a, 100).await;
    let seen_b = receive(&mut on_b, 100).await;
    assert_eq!(seen_a, seen_b, "both instances see one order");
    assert!(seen_a.windows(2).all(|w| w[0].id < w[1].id));
    expect_nothing(&mut on_a, Duration::from_millis(200)).await;
    for instance in &instances {
        instance.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_resumes_after_redis_comes_back_and_publish_fails_fast_meanwhile() {
    let mut server = RedisServer::start().await;
    let config = RedisConfig {
        url: server.url(),
        key_prefix: "restart:".into(),
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        read_block: Duration::from_millis(500),
        reconnect_delay_max: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let fanout = Arc::new(LocalFanout::new());
    let messaging = RedisMessaging::start(config, Arc::clone(&fanout)).await.unwrap();
    let g = group("g");
    let mut received = subscribe(&fanout, &messaging, &g, "c").await;
    let before = messaging.publish(draft("g", "before"), &|_| {}).await.unwrap();
    assert_eq!(receive(&mut received, 1).await, vec![before.clone()]);

    server.kill().await;
    let started = Instant::now();
    let failed = messaging.publish(draft("g", "lost"), &|_| {}).await;
    let error = failed.expect_err("publish fails while Redis is away");
    assert_eq!(error.backend, "redis");
    assert!(started.elapsed() < Duration::from_secs(3), "failed fast: {:?}", started.elapsed());
    assert!(messaging.check().await.is_err());

    server.start_again().await;
    // Publish as soon as Redis takes it, likely before the reader is back: the
    // reader must still deliver it, from the id it stopped at.
    let first = eventually_ok(Duration::from_secs(10), "publish works again", || async {
        messaging.publish(draft("g", "after 0"), &|_| {}).await
    })
    .await;
    let mut after = vec![first];
    for i in 1..5 {
        after.push(messaging.publish(draft("g", &format!("after {i}")), &|_| {}).await.unwrap());
    }
    assert_eq!(receive(&mut received, 5).await, after, "nothing accepted was missed");
    assert!(after[0].id > before.id);
    eventually(Duration::from_secs(5), "check passes again", || async {
        messaging.check().await.is_ok()
    })
    .await;
    messaging.shutdown().await;
}

/// A Redis that goes silent (a dead NAT entry, a pulled cable: no reset, no
/// close) leaves every open connection hanging for good; the commands time
/// out, and once Redis answers again on new connections, commands and the
/// reader must be back on new ones rather than stuck on the silent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_the_reader_leave_a_silent_connection_for_a_new_one() {
    let names = ScaleOutNames::new();
    let proxy = TcpProxy::start(REDIS_ADDR).await;
    let config = RedisConfig {
        url: format!("redis://{}", proxy.addr()),
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        read_block: Duration::from_millis(500),
        reconnect_delay_max: Duration::from_millis(500),
        ..names.redis_config()
    };
    let fanout = Arc::new(LocalFanout::new());
    let messaging = RedisMessaging::start(config.clone(), Arc::clone(&fanout)).await.unwrap();
    let membership = RedisMembership::start(config).await.unwrap();
    let g = group("g");
    membership.create_group(&g, None).await.unwrap();
    let mut received = subscribe(&fanout, &messaging, &g, "c").await;
    let before = messaging.publish(draft("g", "before"), &|_| {}).await.unwrap();
    assert_eq!(receive(&mut received, 1).await, vec![before]);

    proxy.half_open();
    let started = Instant::now();
    let error = messaging.publish(draft("g", "unanswered"), &|_| {}).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{error:?} after {:?}", started.elapsed());
    assert!(membership.member_count(&g).await.is_err(), "membership gets no answer either");

    proxy.restore();
    let first = eventually_ok(Duration::from_secs(10), "publish works again", || async {
        messaging.publish(draft("g", "after"), &|_| {}).await
    })
    .await;
    eventually_ok(Duration::from_secs(10), "membership works again", || async {
        membership.member_count(&g).await
    })
    .await;
    // The "unanswered" publish may or may not have reached Redis: its
    // outcome was unknown to its sender. What came after arrives.
    let seen = receive(&mut received, 1).await;
    let seen =
        if seen[0].text.as_str() == "unanswered" { receive(&mut received, 1).await } else { seen };
    assert_eq!(seen, vec![first], "the reader is back too");
    messaging.shutdown().await;
    membership.shutdown().await;
}

fn message_at(group_name: &str, id: MessageId, text: &str) -> Message {
    let mut m = message(group_name, id.millis, id.seq, text);
    m.id = id;
    m
}

/// Appends cut off mid-query by a MariaDB gone silent (half-open: nothing
/// answers, nothing closes) must not hold their pool's connections for good:
/// once MariaDB answers again, appends work again on new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_cut_off_by_a_silent_mysql_leave_no_connection_stuck() {
    use sqlx::Connection;
    let names = ScaleOutNames::new();
    mysql::migrate(&names.mysql_url()).await.unwrap();
    let proxy = TcpProxy::start(MYSQL_ADDR).await;
    let via_proxy = names.mysql_url().replace(MYSQL_ADDR, &proxy.addr());
    let history = Arc::new(MySqlHistory::connect(&via_proxy, false).await.unwrap());
    history.append(&[message("g", 1, 0, "before")]).await.unwrap();

    // Every connection of the writer's pool busy with an append that MariaDB
    // holds (the table is locked), then silence: the answers never come.
    let mut lock = sqlx::MySqlConnection::connect(&names.mysql_url()).await.unwrap();
    sqlx::query("LOCK TABLES messages WRITE").execute(&mut lock).await.unwrap();
    let appends: Vec<_> = (0..8u64)
        .map(|i| {
            let history = Arc::clone(&history);
            tokio::spawn(async move { history.append(&[message("g", 10 + i, 0, "held")]).await })
        })
        .collect();
    let watch = sqlx::MySqlPool::connect(&names.mysql_url()).await.unwrap();
    eventually(Duration::from_secs(10), "the appends wait for the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE state LIKE '%lock%' AND info LIKE 'INSERT INTO messages%'",
        )
        .fetch_one(&watch)
        .await
        .unwrap();
        waiting >= 4
    })
    .await;
    proxy.half_open();
    sqlx::query("UNLOCK TABLES").execute(&mut lock).await.unwrap();
    for append in appends {
        assert!(append.await.unwrap().is_err(), "no answer reaches an append");
    }

    proxy.restore();
    eventually_ok(Duration::from_secs(15), "appends work again", || async {
        history.append(&[message("g", 100, 0, "after")]).await
    })
    .await;
    history.close().await;
    watch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_takes_large_batches_once_and_reads_by_the_primary_key() {
    let names = ScaleOutNames::new();
    let history = MySqlHistory::connect(&names.mysql_url(), true).await.unwrap();
    let batch: Vec<Message> = (0..1200u64)
        .map(|i| message_at("big", MessageId::new(1000 + i / 7, i % 7), &format!("m{i}")))
        .collect();
    let started = Instant::now();
    history.append(&batch).await.unwrap();
    let first = started.elapsed();
    history.append(&batch).await.unwrap();
    println!(
        "append of 1200 rows: {first:?}, again (all present): {:?}",
        started.elapsed() - first
    );
    assert_eq!(history.read(&group("big"), None, 5000).await.unwrap(), batch);

    let keys: Vec<_> = [batch[0].id, batch[1199].id, MessageId::new(1, 1)]
        .into_iter()
        .map(|id| (group("big"), id))
        .collect();
    let existing = history.existing(&keys).await.unwrap();
    assert_eq!(existing.len(), 2);
    assert!(!existing.contains(&(group("big"), MessageId::new(1, 1))));

    // Reads are range scans of the primary key, not sorts of the group.
    let mut connection = {
        use sqlx::Connection;
        sqlx::MySqlConnection::connect(&names.mysql_url()).await.unwrap()
    };
    let plan = sqlx::query(
        "EXPLAIN SELECT id_millis, id_seq, author_id, send_time_ms, text FROM messages \
         WHERE group_id = 'big' AND (id_millis < 1100 OR (id_millis = 1100 AND id_seq < 3)) \
         ORDER BY id_millis DESC, id_seq DESC LIMIT 100",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    let key: Option<String> = plan.try_get("key").unwrap();
    let extra: Option<String> = plan.try_get("Extra").unwrap();
    assert_eq!(key.as_deref(), Some("PRIMARY"));
    assert!(!extra.unwrap_or_default().contains("filesort"), "no sort");
    history.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_stores_what_history_lacks_once() {
    let names = ScaleOutNames::new();
    mysql::migrate(&names.mysql_url()).await.unwrap();
    let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), false).await.unwrap());
    // Messages accepted by an instance that died before storing them: in the
    // stream, and only some of them in MySQL.
    let messaging =
        RedisMessaging::start(names.redis_config(), Arc::new(LocalFanout::new())).await.unwrap();
    let mut published = Vec::new();
    for i in 0..30 {
        let g = if i % 2 == 0 { "even" } else { "odd" };
        published.push(messaging.publish(draft(g, &format!("m{i}")), &|_| {}).await.unwrap());
    }
    history.append(&published[..10]).await.unwrap();

    let config = ReconcilerConfig {
        interval: Duration::from_secs(3600),
        settle: Duration::ZERO,
        batch: 7,
        ..ReconcilerConfig::default()
    };
    let reconciler = StreamHistoryReconciler::start(
        names.redis_config(),
        config.clone(),
        history.clone(),
        Arc::new(NoObserver),
    )
    .await
    .unwrap();
    // Entries of the current millisecond wait for the next round, so rounds
    // repeat until everything older than now is in.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut inserted = 0;
    while inserted < 20 {
        assert!(Instant::now() < deadline, "the reconciler catches up within 5 s");
        let report = reconciler.run_round().await.unwrap();
        assert!(report.ran);
        inserted += report.inserted;
    }
    assert_eq!(inserted, 20);
    for g in ["even", "odd"] {
        let expected: Vec<Message> =
            published.iter().filter(|m| m.group.as_str() == g).cloned().collect();
        assert_eq!(history.read(&group(g), None, 100).await.unwrap(), expected);
    }
    // The watermark moved: a further round finds nothing new.
    let again = reconciler.run_round().await.unwrap();
    assert_eq!((again.scanned, again.inserted), (0, 0));

    // While another instance holds the lock, a round does nothing.
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{}reconcile:lock", names.key_prefix))
        .arg("someone else")
        .query_async(&mut redis)
        .await
        .unwrap();
    messaging.publish(draft("even", "late"), &|_| {}).await.unwrap();
    assert!(!reconciler.run_round().await.unwrap().ran);
    reconciler.shutdown();
    messaging.shutdown().await;
}

/// `recent_after` reads the group's messages above an id from the newest
/// `recent_scan_entries` entries of its shard, whichever instance published
/// them, oldest first; other groups sharing the shard are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_after_reads_the_groups_newest_entries_from_the_stream() {
    let names = ScaleOutNames::new();
    // One shard, so the two groups share the stream.
    let config =
        |scan| RedisConfig { stream_shards: 1, recent_scan_entries: scan, ..names.redis_config() };
    let a = RedisMessaging::start(config(5), Arc::new(LocalFanout::new())).await.unwrap();
    let b = RedisMessaging::start(config(5), Arc::new(LocalFanout::new())).await.unwrap();
    let mut published = Vec::new();
    for i in 0..4 {
        let on = if i % 2 == 0 { &a } else { &b };
        published.push(on.publish(draft("g", &format!("g{i}")), &|_| {}).await.unwrap());
        on.publish(draft("other", &format!("o{i}")), &|_| {}).await.unwrap();
    }
    let texts = |messages: Vec<Message>| -> Vec<String> {
        messages.into_iter().map(|m| m.text.as_str().to_string()).collect()
    };
    // The newest five entries: o1 g2 o2 g3 o3.
    assert_eq!(
        texts(b.recent_after(&group("g"), MessageId::MIN, 100).await.unwrap()),
        ["g2", "g3"]
    );
    assert_eq!(texts(a.recent_after(&group("g"), published[2].id, 100).await.unwrap()), ["g3"]);
    assert!(a.recent_after(&group("g"), published[3].id, 100).await.unwrap().is_empty());
    assert!(a.recent_after(&group("nobody"), MessageId::MIN, 100).await.unwrap().is_empty());
    let off = RedisMessaging::start(config(0), Arc::new(LocalFanout::new())).await.unwrap();
    assert!(
        off.recent_after(&group("g"), MessageId::MIN, 100).await.unwrap().is_empty(),
        "0 reads none"
    );
    let wide = RedisMessaging::start(config(100), Arc::new(LocalFanout::new())).await.unwrap();
    let all = wide.recent_after(&group("g"), MessageId::MIN, 100).await.unwrap();
    assert_eq!(all, published, "every one, oldest first, as published");
    for messaging in [a, b, off, wide] {
        messaging.shutdown().await;
    }
}

/// With a history database the instances share (`keep_unstored`),
/// `recent_after` reads forward from the later of the position and the
/// shard's stored watermark, `recent_scan_entries` at a time, however many of
/// other groups' entries came since: every message not known stored is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_after_reads_forward_from_the_stored_watermark() {
    let names = ScaleOutNames::new();
    let config = RedisConfig {
        stream_shards: 1,
        recent_scan_entries: 5,
        keep_unstored: true,
        ..names.redis_config()
    };
    let messaging = RedisMessaging::start(config.clone(), Arc::new(LocalFanout::new())).await;
    let messaging = messaging.unwrap();
    let mut in_g = Vec::new();
    for i in 0..6 {
        in_g.push(messaging.publish(draft("g", &format!("g{i}")), &|_| {}).await.unwrap());
        for j in 0..7 {
            messaging.publish(draft("other", &format!("o{i}-{j}")), &|_| {}).await.unwrap();
        }
    }
    let recent = |after: MessageId, limit: usize| {
        let messaging = &messaging;
        async move {
            let found = messaging.recent_after(&group("g"), after, limit).await.unwrap();
            found.into_iter().map(|m| m.text.as_str().to_string()).collect::<Vec<_>>()
        }
    };
    // Nothing stored yet: all six, though 42 entries of the other group follow the first.
    assert_eq!(recent(MessageId::MIN, 100).await, ["g0", "g1", "g2", "g3", "g4", "g5"]);
    assert_eq!(recent(MessageId::MIN, 2).await, ["g0", "g1"], "the oldest `limit`");
    assert_eq!(recent(in_g[3].id, 100).await, ["g4", "g5"]);
    // Everything up to g2 stored: the read starts there.
    let marks = StoredMarks::connect(config).await.unwrap();
    marks.start_at(0, &in_g[2].id.to_string()).await.unwrap();
    assert_eq!(recent(MessageId::MIN, 100).await, ["g3", "g4", "g5"]);
    assert_eq!(recent(in_g[4].id, 100).await, ["g5"]);
    assert!(recent(in_g[5].id, 100).await.is_empty());
    messaging.shutdown().await;
}
