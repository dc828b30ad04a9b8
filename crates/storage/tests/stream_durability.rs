//! No entry that history lacks is trimmed: the stored watermark, the byte
//! bound that refuses sends instead of dropping them, and the reconciler
//! reporting what it stored.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use next_chat_core::{
    HistoryStore, LocalFanout, Message, MessageText, Messaging, NewMessage, NoObserver,
};
use next_chat_storage::{
    MarkStoredHistory, MySqlHistory, ReconcilerConfig, RedisConfig, RedisMessaging, StoredMarks,
    StreamHistoryReconciler, mysql,
};
use next_chat_testkit::{RedisServer, eventually, eventually_ok, max_size_text};

const SHARD_BYTES: u64 = 1024 * 1024;

fn draft(group_name: &str, text: &str) -> NewMessage {
    NewMessage {
        author: user("alice"),
        group: group(group_name),
        text: MessageText::from_trusted(text),
    }
}

/// One shard of 1 MiB that keeps what history lacks.
fn keeping(names: &ScaleOutNames) -> RedisConfig {
    RedisConfig {
        stream_shards: 1,
        stream_max_bytes: SHARD_BYTES,
        keep_unstored: true,
        ..names.redis_config()
    }
}

async fn stream_ids(config: &RedisConfig) -> Vec<String> {
    let client = redis::Client::open(config.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(config.stream_key(0))
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    range.ids.into_iter().map(|entry| entry.id).collect()
}

/// Publishes maximum-size messages until one is refused; returns those accepted.
async fn fill(messaging: &RedisMessaging, from: usize) -> (Vec<Message>, String) {
    let mut accepted = Vec::new();
    for i in from..from + 100 {
        match messaging.publish(draft("g", &max_size_text(i)), &|_| {}).await {
            Ok(message) => accepted.push(message),
            Err(error) => return (accepted, error.to_string()),
        }
    }
    panic!("100 maximum-size messages fit in a 1 MiB shard that nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_full_of_unstored_entries_refuses_sends_and_trims_none() {
    let names = ScaleOutNames::new();
    let config = keeping(&names);
    let messaging =
        RedisMessaging::start(config.clone(), Arc::new(LocalFanout::new())).await.unwrap();
    let (accepted, refusal) = fill(&messaging, 0).await;
    assert!(accepted.len() >= 8, "a 1 MiB shard takes several: {}", accepted.len());
    assert!(refusal.contains("limit redis_stream_max_bytes = 1.0 MiB per shard"), "{refusal}");
    assert!(refusal.contains("message bus full"), "{refusal}");
    let ids: Vec<String> = accepted.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(stream_ids(&config).await, ids, "every accepted entry is still there");

    // History stores the first half: those may go, and sends fit again.
    let marks = StoredMarks::connect(config.clone()).await.unwrap();
    let half = accepted.len() / 2;
    marks.mark(&accepted[..half]).await.unwrap();
    let (more, refusal) = fill(&messaging, 100).await;
    assert!(!more.is_empty(), "room again once history stored some");
    assert!(refusal.contains("redis_stream_max_bytes"), "{refusal}");
    let kept = stream_ids(&config).await;
    for message in &accepted[half..] {
        assert!(kept.contains(&message.id.to_string()), "unstored {} was kept", message.id);
    }
    messaging.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_moves_only_over_an_unbroken_run_of_stored_entries() {
    let names = ScaleOutNames::new();
    let config = keeping(&names);
    let messaging =
        RedisMessaging::start(config.clone(), Arc::new(LocalFanout::new())).await.unwrap();
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(messaging.publish(draft("g", &format!("m{i}")), &|_| {}).await.unwrap());
    }
    let id = |i: usize| published[i].id.to_string();
    let marks = StoredMarks::connect(config.clone()).await.unwrap();
    // Another instance stored 3..6 first; 0..3 are still being stored.
    assert_eq!(marks.mark_ids(0, &[id(3), id(4), id(5)]).await.unwrap(), "0-0");
    assert_eq!(marks.mark_ids(0, &[id(1), id(0)]).await.unwrap(), id(1));
    assert_eq!(marks.mark_ids(0, &[id(2)]).await.unwrap(), id(5));
    // Old news changes nothing; a gap still holds it.
    assert_eq!(marks.mark_ids(0, &[id(4), id(9)]).await.unwrap(), id(5));
    assert_eq!(marks.watermark(0).await.unwrap(), Some(id(5)));
    assert_eq!(marks.mark_ids(0, &[id(6), id(7), id(8)]).await.unwrap(), id(9));
    messaging.shutdown().await;
}

/// One report covers every shard a stored batch touched: each shard's
/// watermark moves to its own last stored entry, and a shard whose batch has a
/// gap stops before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_report_moves_the_watermark_of_every_shard_in_it() {
    let names = ScaleOutNames::new();
    let config =
        RedisConfig { stream_shards: 4, stream_max_bytes: 4 * SHARD_BYTES, ..keeping(&names) };
    let messaging =
        RedisMessaging::start(config.clone(), Arc::new(LocalFanout::new())).await.unwrap();
    // Three groups in three different shards.
    let mut groups: Vec<(String, usize)> = Vec::new();
    for i in 0.. {
        let name = format!("g{i}");
        let shard = config.shard_of(&group(&name));
        if groups.iter().all(|(_, s)| *s != shard) {
            groups.push((name, shard));
        }
        if groups.len() == 3 {
            break;
        }
    }
    let mut published: Vec<Vec<Message>> = vec![Vec::new(); 3];
    for round in 0..4 {
        for (g, (name, _)) in groups.iter().enumerate() {
            let text = format!("{name} {round}");
            published[g].push(messaging.publish(draft(name, &text), &|_| {}).await.unwrap());
        }
    }
    // All of the first two groups' messages, and the third's but its first.
    let mut batch: Vec<Message> = published[0].iter().chain(&published[1]).cloned().collect();
    batch.extend(published[2][1..].iter().cloned());
    let marks = StoredMarks::connect(config.clone()).await.unwrap();
    marks.mark(&batch).await.unwrap();
    for g in 0..2 {
        let last = published[g].last().unwrap().id.to_string();
        assert_eq!(marks.watermark(groups[g].1).await.unwrap(), Some(last), "group {g}");
    }
    assert_eq!(marks.watermark(groups[2].1).await.unwrap(), None, "its first is not stored");
    // The first one stored: the watermark moves over the three recorded after it.
    marks.mark(&published[2][..1]).await.unwrap();
    let last = published[2].last().unwrap().id.to_string();
    assert_eq!(marks.watermark(groups[2].1).await.unwrap(), Some(last));
    messaging.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_writer_and_the_reconciler_store_moves_the_watermark() {
    let names = ScaleOutNames::new();
    mysql::migrate(&names.mysql_url()).await.unwrap();
    let config = keeping(&names);
    let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), false).await.unwrap());
    let messaging =
        RedisMessaging::start(config.clone(), Arc::new(LocalFanout::new())).await.unwrap();
    let mut published = Vec::new();
    for i in 0..6 {
        published.push(messaging.publish(draft("g", &format!("m{i}")), &|_| {}).await.unwrap());
    }
    // This instance's writer stores 2..6; 0..2 were accepted by one that died.
    let marks = StoredMarks::connect(config.clone()).await.unwrap();
    let writer_store = MarkStoredHistory::new(history.clone(), marks);
    writer_store.append(&published[2..]).await.unwrap();
    let marks = StoredMarks::connect(config.clone()).await.unwrap();
    assert_eq!(marks.watermark(0).await.unwrap(), None, "held by the dead instance's");

    let reconciler = StreamHistoryReconciler::start(
        config.clone(),
        ReconcilerConfig {
            interval: Duration::from_secs(3600),
            settle: Duration::ZERO,
            ..ReconcilerConfig::default()
        },
        history.clone(),
        Arc::new(NoObserver),
    )
    .await
    .unwrap();
    let last = published[5].id.to_string();
    eventually(Duration::from_secs(5), "the reconciler moves the watermark", || async {
        if marks.watermark(0).await.unwrap().as_deref() == Some(last.as_str()) {
            return true;
        }
        reconciler.run_round().await.unwrap();
        false
    })
    .await;
    assert_eq!(history.read(&group("g"), None, 100).await.unwrap(), published);
    reconciler.shutdown();
    messaging.shutdown().await;
    history.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_starts_where_an_earlier_version_left_off() {
    let names = ScaleOutNames::new();
    mysql::migrate(&names.mysql_url()).await.unwrap();
    let config = keeping(&names);
    let client = redis::Client::open(config.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{}reconcile:watermark:0", config.key_prefix))
        .arg("1234-5")
        .query_async(&mut redis)
        .await
        .unwrap();
    let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), false).await.unwrap());
    let reconciler = StreamHistoryReconciler::start(
        config.clone(),
        ReconcilerConfig { interval: Duration::from_secs(3600), ..ReconcilerConfig::default() },
        history.clone(),
        Arc::new(NoObserver),
    )
    .await
    .unwrap();
    let marks = StoredMarks::connect(config).await.unwrap();
    assert_eq!(marks.watermark(0).await.unwrap().as_deref(), Some("1234-5"));
    reconciler.shutdown();
    history.close().await;
}

/// Publishes `n` small messages; the mean time of one publish.
async fn mean_publish(messaging: &RedisMessaging, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        messaging.publish(draft("g", &format!("m{i}")), &|_| {}).await.unwrap();
    }
    started.elapsed() / n as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_completed_publish_is_on_the_replica() {
    let master = RedisServer::start().await;
    // Its directory (where the full sync writes its RDB) is a temporary one.
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]).await;
    let replica_client = redis::Client::open(replica.url()).unwrap();
    let mut on_replica = replica_client.get_multiplexed_async_connection().await.unwrap();
    let base = RedisConfig {
        url: master.url(),
        key_prefix: "wait:".into(),
        stream_shards: 1,
        ..RedisConfig::default()
    };
    // Wait for the replica to be in sync before measuring.
    let fanout = Arc::new(LocalFanout::new());
    let waiting = RedisConfig { wait_replicas: 1, ..base.clone() };
    let messaging = RedisMessaging::start(waiting.clone(), Arc::clone(&fanout)).await.unwrap();
    eventually_ok(Duration::from_secs(15), "the replica syncs", || {
        messaging.publish(draft("g", "sync"), &|_| {})
    })
    .await;
    for i in 0..50 {
        let published = messaging.publish(draft("g", &format!("w{i}")), &|_| {}).await.unwrap();
        // Acknowledged means on the replica already, with no wait of the test's.
        let there: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(waiting.stream_key(0))
            .arg(published.id.to_string())
            .arg(published.id.to_string())
            .query_async(&mut on_replica)
            .await
            .unwrap();
        assert_eq!(there.ids.len(), 1, "message {i} is on the replica once its publish completed");
    }
    let with_wait = mean_publish(&messaging, 500).await;
    messaging.shutdown().await;

    let plain = RedisMessaging::start(base.clone(), Arc::clone(&fanout)).await.unwrap();
    let without = mean_publish(&plain, 500).await;
    plain.shutdown().await;
    println!("one publish: {without:?} without WAIT, {with_wait:?} with WAIT 1 (one replica)");

    // Two replicas asked for, one there: the send fails, naming the setting.
    let short = RedisConfig { wait_replicas: 2, wait_timeout: Duration::from_millis(200), ..base };
    let messaging = RedisMessaging::start(short, fanout).await.unwrap();
    let error = messaging.publish(draft("g", "short"), &|_| {}).await.unwrap_err();
    assert!(error.detail.contains("1 of 2 Redis replicas acknowledged"), "{}", error.detail);
    assert!(error.detail.contains("redis_wait_replicas"), "{}", error.detail);
    messaging.shutdown().await;
}
