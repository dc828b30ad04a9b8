//! Redis's own bounds: a `redis-server` of each test's own with a small
//! `maxmemory` (the machine's Redis is never squeezed), and the streams'
//! byte bound measured with `MEMORY USAGE`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use next_chat_core::{JoinOutcome, LocalFanout, Membership, MessageText, Messaging, NewMessage};
use next_chat_storage::{RedisConfig, RedisMembership, RedisMessaging};
use next_chat_testkit::{RedisServer, max_size_text};

/// "Never a hang": a refused write is answered within this.
const FAIL_FAST: Duration = Duration::from_secs(3);

/// A `redis-server` of the test's own (`noeviction`, so a full one refuses
/// writes) and a connection to it.
struct OwnRedis {
    url: String,
    connection: redis::aio::MultiplexedConnection,
    _server: RedisServer,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]).await;
        let url = server.url();
        let client = redis::Client::open(url.as_str()).unwrap();
        let connection = client.get_multiplexed_async_connection().await.unwrap();
        OwnRedis { url, connection, _server: server }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig {
            url: self.url.clone(),
            key_prefix: "limits:".into(),
            stream_shards: 2,
            command_timeout: Duration::from_secs(1),
            ..RedisConfig::default()
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self.connection.clone();
        command.query_async(&mut connection).await.unwrap()
    }

    async fn used_memory(&self) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("memory")).await;
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO memory has used_memory")
    }

    async fn set_maxmemory(&self, bytes: u64) {
        let _: () = self.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(bytes)).await;
    }

    /// Every stream's `MEMORY USAGE`, all nodes counted.
    async fn streams_memory(&self, config: &RedisConfig) -> u64 {
        let mut total = 0;
        for shard in 0..config.stream_shards {
            let key = format!("{}stream:{shard}", config.key_prefix);
            let usage: Option<u64> =
                self.query(redis::cmd("MEMORY").arg("USAGE").arg(&key).arg("SAMPLES").arg(0)).await;
            total += usage.unwrap_or(0);
        }
        total
    }
}

fn draft(group_name: &str, text: &str) -> NewMessage {
    NewMessage {
        author: user("alice"),
        group: group(group_name),
        text: MessageText::from_trusted(text),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_writes_fast_and_clearly_then_recovers() {
    let redis = OwnRedis::start().await;
    let config = redis.config();
    let fanout = Arc::new(LocalFanout::new());
    let messaging = RedisMessaging::start(config.clone(), Arc::clone(&fanout)).await.unwrap();
    let membership = RedisMembership::start(config).await.unwrap();
    messaging.check().await.expect("ready before Redis fills up");

    redis.set_maxmemory(redis.used_memory().await + 2 * 1024 * 1024).await;
    let mut refused = None;
    for i in 0..200 {
        let started = Instant::now();
        let published = messaging.publish(draft("g", &max_size_text(i)), &|_| {}).await;
        assert!(
            started.elapsed() < FAIL_FAST,
            "publish {i} answered fast: {:?}",
            started.elapsed()
        );
        if let Err(error) = published {
            refused = Some(error);
            break;
        }
    }
    let error = refused.expect("a publish is refused once Redis is out of memory");
    assert_eq!(error.backend, "redis");
    assert!(
        error.detail.contains("message bus full: Redis is out of memory (maxmemory)"),
        "{}",
        error.detail
    );

    let not_ready = messaging.check().await.expect_err("the check fails while Redis is full");
    assert!(not_ready.detail.contains("out of memory"), "{}", not_ready.detail);
    // Small writes fit in what a large message leaves. With Redis entirely
    // out of memory, what grows with use is refused as clearly, but members
    // (bounded, a few bytes each) keep their places: a refused heartbeat
    // would drop them all.
    redis.set_maxmemory(redis.used_memory().await / 2).await;
    let started = Instant::now();
    let create = membership.create_group(&group("new"), None).await;
    let create_error = create.expect_err("creating a group needs memory");
    assert!(create_error.detail.contains("out of memory (maxmemory)"), "{}", create_error.detail);
    let published = messaging.publish(draft("g", "small"), &|_| {}).await;
    assert!(published.expect_err("even a small message").detail.contains("message bus full"));
    assert!(started.elapsed() < FAIL_FAST, "refused fast: {:?}", started.elapsed());
    let joined = membership.join(&group("g"), &user("bob"), &connection("b"), 10).await;
    assert_eq!(joined.expect("joins still work"), JoinOutcome::Joined);
    membership.heartbeat().await.expect("heartbeats still work");
    assert_eq!(membership.member_count(&group("g")).await.unwrap(), 1);

    redis.set_maxmemory(0).await;
    messaging.check().await.expect("ready again once memory frees");
    messaging.publish(draft("g", "room again"), &|_| {}).await.expect("publish works again");
    membership.create_group(&group("new"), None).await.expect("and creating groups");
    membership.shutdown().await;
    messaging.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_stay_under_their_byte_bound_and_keep_the_newest() {
    const BOUND: u64 = 2 * 1024 * 1024;
    let redis = OwnRedis::start().await;
    let config = RedisConfig { stream_max_bytes: BOUND, ..redis.config() };
    let fanout = Arc::new(LocalFanout::new());
    let messaging = RedisMessaging::start(config.clone(), Arc::clone(&fanout)).await.unwrap();
    let mut received = subscribe(&fanout, &messaging, &group("a"), "reader").await;
    let mut last = None;
    // 100 messages of 64 KiB, over three times the bound, then small ones.
    for i in 0..100 {
        let name = if i % 2 == 0 { "a" } else { "b" };
        last = Some(messaging.publish(draft(name, &max_size_text(i)), &|_| {}).await.unwrap());
    }
    let memory = redis.streams_memory(&config).await;
    assert!(memory <= BOUND, "the streams hold {memory} bytes, more than {BOUND}");
    for i in 0..2000 {
        messaging.publish(draft("a", &format!("small {i}")), &|_| {}).await.unwrap();
    }
    let memory = redis.streams_memory(&config).await;
    assert!(memory <= BOUND, "after small ones: {memory} bytes, more than {BOUND}");

    // Readers still get everything (trimming only drops what they read).
    assert_eq!(receive(&mut received, 50 + 2000).await.len(), 2050);
    let last = last.unwrap();
    let mut kept = 0;
    for shard in 0..config.stream_shards {
        let key = format!("{}stream:{shard}", config.key_prefix);
        let entries: Vec<redis::Value> =
            redis.query(redis::cmd("XRANGE").arg(&key).arg(last.id.to_string()).arg("+")).await;
        kept += entries.len();
    }
    assert!(kept >= 1, "the newest big message is kept");
    messaging.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_count_bound_still_holds() {
    let redis = OwnRedis::start().await;
    let config = RedisConfig { stream_shards: 1, stream_maxlen: 50, ..redis.config() };
    let fanout = Arc::new(LocalFanout::new());
    let messaging = RedisMessaging::start(config.clone(), Arc::clone(&fanout)).await.unwrap();
    for i in 0..500 {
        messaging.publish(draft("g", &format!("m{i}")), &|_| {}).await.unwrap();
    }
    let length: u64 =
        redis.query(redis::cmd("XLEN").arg(format!("{}stream:0", config.key_prefix))).await;
    assert!(length <= 50, "{length} entries, more than 50");
    assert!(length >= 40, "trimming keeps close to the bound, not far below: {length}");
    messaging.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_before_counting_began_are_counted_and_trimmed() {
    const BOUND: u64 = 2 * 1024 * 1024;
    let redis = OwnRedis::start().await;
    let config = RedisConfig { stream_shards: 1, stream_max_bytes: BOUND, ..redis.config() };
    // As a version that trimmed by count only left them: no byte count.
    let key = format!("{}stream:0", config.key_prefix);
    for i in 0..60 {
        let mut add = redis::cmd("XADD");
        add.arg(&key).arg("*").arg("g").arg("g").arg("a").arg("alice");
        let _: String = redis.query(add.arg("t").arg(max_size_text(i))).await;
    }
    assert!(redis.streams_memory(&config).await > 2 * BOUND, "the old entries are over the bound");
    let fanout = Arc::new(LocalFanout::new());
    let messaging = RedisMessaging::start(config.clone(), Arc::clone(&fanout)).await.unwrap();
    messaging.publish(draft("g", "first counted"), &|_| {}).await.unwrap();
    let memory = redis.streams_memory(&config).await;
    assert!(memory <= BOUND, "counted and trimmed: {memory} bytes, more than {BOUND}");
    messaging.shutdown().await;
}
