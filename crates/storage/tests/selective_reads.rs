//! An instance reads only the stream shards of groups joined on it: what it
//! receives from Redis (`BusStats`) holds no entry of a shard it has no
//! member in, a join that starts a shard misses nothing sent after it
//! completed, and leaving the last group of a shard stops reading it. Each
//! test runs against one Redis and against a Redis Cluster.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use next_chat_core::{GroupId, LocalFanout, MessageText, Messaging, NewMessage};
use next_chat_storage::{RedisConfig, RedisMessaging};
use next_chat_testkit::{RedisCluster, eventually};

/// Where a test's instances meet: the machine's Redis under a prefix of the
/// test's own, or a cluster of the test's own.
struct Bus {
    names: ScaleOutNames,
    cluster: Option<RedisCluster>,
}

impl Bus {
    async fn single() -> Bus {
        Bus { names: ScaleOutNames::new(), cluster: None }
    }

    async fn cluster() -> Bus {
        Bus { names: ScaleOutNames::new(), cluster: Some(RedisCluster::start().await) }
    }

    /// A config for one more instance. Readers block long, so only a wake-up
    /// (not the block running out) can make them see a change in time.
    fn config(&self) -> RedisConfig {
        let config = RedisConfig {
            stream_shards: 8,
            read_block: Duration::from_secs(30),
            ..self.names.redis_config()
        };
        match &self.cluster {
            Some(cluster) => RedisConfig { url: cluster.url(), cluster: true, ..config },
            None => config,
        }
    }

    async fn instance(&self) -> (Arc<LocalFanout>, RedisMessaging) {
        let fanout = Arc::new(LocalFanout::new());
        let messaging = RedisMessaging::start(self.config(), Arc::clone(&fanout)).await.unwrap();
        (fanout, messaging)
    }

    /// Two groups on different shards.
    fn two_shards(&self) -> (GroupId, GroupId) {
        let config = self.config();
        let first = group("room-0");
        let second = (1..)
            .map(|i| group(&format!("room-{i}")))
            .find(|g| config.shard_of(g) != config.shard_of(&first))
            .expect("some group lands on another shard");
        (first, second)
    }
}

fn draft(group: &GroupId, text: &str) -> NewMessage {
    NewMessage {
        author: user("alice"),
        group: group.clone(),
        text: MessageText::from_trusted(text),
    }
}

async fn an_instance_receives_nothing_of_shards_it_has_no_member_in(bus: Bus) {
    let (mine, theirs) = bus.two_shards();
    let (fanout_a, a) = bus.instance().await;
    let (fanout_b, b) = bus.instance().await;
    let mut on_a = subscribe(&fanout_a, &a, &mine, "a").await;
    let mut on_b = subscribe(&fanout_b, &b, &theirs, "b").await;
    for i in 0..20 {
        a.publish(draft(&mine, &format!("mine {i}")), &|_| {}).await.unwrap();
        a.publish(draft(&theirs, &format!("theirs {i}")), &|_| {}).await.unwrap();
    }
    assert_eq!(receive(&mut on_a, 20).await.len(), 20);
    assert_eq!(receive(&mut on_b, 20).await.len(), 20);
    assert_eq!(a.stats().entries_received(), 20, "A read its own group's shard only");
    assert_eq!(b.stats().entries_received(), 20, "B read its own group's shard only");
    assert_eq!(a.stats().shards_read(), 1);
    assert!(a.stats().bytes_received() > 20 * "mine 10".len() as u64);
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_join_that_starts_a_shard_misses_nothing_sent_after_it(bus: Bus) {
    let (first, second) = bus.two_shards();
    let (fanout, reader) = bus.instance().await;
    let (_, sender) = bus.instance().await;
    let sender = Arc::new(sender);
    // The reader is busy with another shard, blocked in XREAD.
    let _busy = subscribe(&fanout, &reader, &first, "busy").await;
    // Messages go to the second shard all along; the join comes in between.
    let joined = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (sender, joined, second) = (Arc::clone(&sender), Arc::clone(&joined), second.clone());
        let sent = Arc::clone(&sent);
        async move {
            let mut after_join = Vec::new();
            let mut i = 0;
            while after_join.len() < 50 {
                let was_joined = joined.load(Ordering::SeqCst);
                let message = sender.publish(draft(&second, &format!("{i}")), &|_| {}).await;
                if was_joined {
                    after_join.push(message.unwrap());
                }
                i += 1;
                sent.store(i, Ordering::SeqCst);
            }
            after_join
        }
    });
    eventually(EVENT_TIMEOUT, "some sent before the join", || async {
        sent.load(Ordering::SeqCst) >= 5
    })
    .await;
    let mut received = subscribe(&fanout, &reader, &second, "joiner").await;
    joined.store(true, Ordering::SeqCst);
    let after_join = publisher.await.unwrap();
    // Everything sent after the join completed arrives, in order, once; what
    // came before it may or may not (it was sent before the join).
    let mut got = Vec::new();
    while got.last().map(|m: &next_chat_core::Message| m.id) != after_join.last().map(|m| m.id) {
        got.extend(receive(&mut received, 1).await);
    }
    let start = got.iter().position(|m| m.id == after_join[0].id).expect("the first one after");
    assert_eq!(got[start..], after_join[..], "every message after the join, in order");
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "none twice, in order");
    reader.shutdown().await;
    sender.shutdown().await;
}

async fn leaving_the_last_group_of_a_shard_stops_reading_it(bus: Bus) {
    let (kept, left) = bus.two_shards();
    let (fanout, reader) = bus.instance().await;
    let (_, sender) = bus.instance().await;
    let mut on_kept = subscribe(&fanout, &reader, &kept, "c1").await;
    let _on_left = subscribe(&fanout, &reader, &left, "c2").await;
    let stats = reader.stats();
    eventually(EVENT_TIMEOUT, "both shards read", || async { stats.shards_read() == 2 }).await;

    // The last local subscriber of `left` goes, as a leave does.
    assert!(fanout.unsubscribe(&left, &connection("c2")));
    reader.unfollow(&left);
    eventually(EVENT_TIMEOUT, "one shard read", || async { stats.shards_read() == 1 }).await;
    let before = stats.entries_received();
    for i in 0..10 {
        sender.publish(draft(&left, &format!("unread {i}")), &|_| {}).await.unwrap();
    }
    let last = sender.publish(draft(&kept, "read"), &|_| {}).await.unwrap();
    assert_eq!(receive(&mut on_kept, 1).await, vec![last]);
    assert_eq!(stats.entries_received() - before, 1, "nothing of the shard that was left");

    // Joining it again reads it from then on, not what was sent meanwhile.
    let mut again = subscribe(&fanout, &reader, &left, "c3").await;
    let after = sender.publish(draft(&left, "after rejoin"), &|_| {}).await.unwrap();
    assert_eq!(receive(&mut again, 1).await, vec![after]);
    expect_nothing(&mut again, Duration::from_millis(200)).await;
    reader.shutdown().await;
    sender.shutdown().await;
}

macro_rules! both_layouts {
    ($($test:ident),* $(,)?) => {
        mod single_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Bus::single().await).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Bus::cluster().await).await;
                }
            )*
        }
    };
}

both_layouts!(
    an_instance_receives_nothing_of_shards_it_has_no_member_in,
    a_join_that_starts_a_shard_misses_nothing_sent_after_it,
    leaving_the_last_group_of_a_shard_stops_reading_it,
);
