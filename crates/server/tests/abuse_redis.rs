//! Abuse tests for Redis (issue 10, item 5), against a real server process on a
//! `redis-server` of the test's own, so its `maxmemory` can be squeezed and its
//! memory measured without touching the machine's shared Redis.
//!
//! - A Redis that is out of memory (`maxmemory` with `noeviction`) makes a send
//!   fail fast with a clear error and `/readyz` answer 503 naming Redis and
//!   memory, while the server keeps serving other calls; both recover once
//!   memory frees up.
//! - The streams are bounded in bytes: after many maximum-size messages the
//!   streams' `MEMORY USAGE` stays under `redis_stream_max_bytes`.

mod common;

use std::time::{Duration, Instant};

use common::http;
use next_chat_client::{Client, ClientError, Events, JoinResult};
use next_chat_testkit::{RedisServer, TestServer, eventually_ok, max_size_text, unique};

/// A send against a full Redis must be answered within this: "never a hang".
const FAIL_FAST: Duration = Duration::from_secs(5);

async fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli runs");
    assert!(output.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn used_memory(port: u16) -> u64 {
    let info = redis_cli(port, &["INFO", "memory"]).await;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

async fn connect(server: &TestServer, user: &str) -> (Client, Events) {
    server.connect(user).await
}

async fn server_on(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--redis".to_string(),
        redis.url(),
        "--redis-key-prefix".to_string(),
        unique("abuse-redis-") + ":",
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    TestServer::start(args).await
}

/// Polls `/readyz` until its status is `want`; returns the body.
async fn readyz_becomes(server: &TestServer, want: u16, within: Duration) -> String {
    eventually_ok(within, &format!("/readyz answers {want}"), || async {
        match http(server.port, "GET", "/readyz", &[]).await {
            (status, body) if status == want => Ok(body),
            other => Err(other),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_fails_sends_clearly_and_readyz_until_memory_frees() {
    let redis = RedisServer::start().await;
    let server = server_on(&redis, &[]).await;
    let (alice, _alice_events) = connect(&server, "alice").await;
    assert_eq!(alice.join_group("full").await, Ok(JoinResult::Joined));
    let (status, _) = http(server.port, "GET", "/readyz", &[]).await;
    assert_eq!(status, 200, "ready before Redis fills up");

    // Leave room for about 40 maximum-size messages, then fill it.
    let limit = used_memory(redis.port).await + 4 * 1024 * 1024;
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", &limit.to_string()]).await;
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
    let mut refusal = None;
    for i in 0..400 {
        let started = Instant::now();
        let sent = tokio::time::timeout(FAIL_FAST, alice.send_message("full", &max_size_text(i)))
            .await
            .unwrap_or_else(|_| panic!("send {i} got no answer within {FAIL_FAST:?}"));
        if let Err(error) = sent {
            refusal = Some((error, started.elapsed()));
            break;
        }
    }
    let (error, took) = refusal.expect("a send is refused once Redis is out of memory");
    let ClientError::Server(text) = &error else { panic!("a hub error, not {error:?}") };
    assert!(
        text.contains("message bus full") && text.contains("out of memory (maxmemory)"),
        "the error says the bus is full: {text}"
    );
    assert!(took < FAIL_FAST, "refused fast: {took:?}");

    let body = readyz_becomes(&server, 503, Duration::from_secs(5)).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("readyz answers JSON");
    assert_eq!(body["backend"], "redis", "{body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("out of memory"), "{body}");

    // Everyone else is still served: a new connection, a read, the same
    // connection's next call.
    let (bob, _bob_events) = connect(&server, "bob").await;
    let groups = bob.list_groups().await.expect("ListGroups works while Redis is full");
    assert!(groups.contains(&"full".to_string()), "{groups:?}");
    // (The same connection's next send may already pass: a publish first trims
    // the stream up to what history has stored, and that frees memory. Whether
    // it does depends on how far history got, so it is not asserted here.)
    let _ = alice.send_message("full", "still full?").await;

    // Memory frees up (here: the operator raises maxmemory): both recover.
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "0"]).await;
    readyz_becomes(&server, 200, Duration::from_secs(5)).await;
    alice.send_message("full", "room again").await.expect("sends work once memory frees");
}

/// Sum of `MEMORY USAGE` (every node counted) over the server's stream keys.
async fn streams_memory(port: u16) -> (u64, usize) {
    let keys = redis_cli(port, &["--scan", "--pattern", "*stream:*"]).await;
    let mut total = 0;
    let mut streams = 0;
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let usage = redis_cli(port, &["MEMORY", "USAGE", key, "SAMPLES", "0"]).await;
        total += usage.parse::<u64>().unwrap_or_else(|_| panic!("MEMORY USAGE {key}: {usage}"));
        streams += 1;
    }
    (total, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_stay_under_their_byte_bound() {
    const BOUND: u64 = 4 * 1024 * 1024;
    let redis = RedisServer::start().await;
    let server = server_on(
        &redis,
        &["--redis-stream-shards", "2", "--redis-stream-max-bytes", &BOUND.to_string()],
    )
    .await;
    let (alice, _events) = connect(&server, "alice").await;
    let groups = ["bound-a", "bound-b", "bound-c", "bound-d"];
    for group in groups {
        assert_eq!(alice.join_group(group).await, Ok(JoinResult::Joined));
    }
    // 200 messages of 64 KiB: about 13 MB of text, three times the bound.
    for i in 0..200 {
        let group = groups[i % groups.len()];
        alice.send_message(group, &max_size_text(i)).await.expect("sends are accepted");
    }
    let (memory, streams) = streams_memory(redis.port).await;
    assert!(streams >= 1, "the messages went through streams");
    assert!(memory <= BOUND, "the streams hold {memory} bytes, more than the bound {BOUND}");
    // Trimming drops the oldest and keeps the newest.
    let keys = redis_cli(redis.port, &["--scan", "--pattern", "*stream:*"]).await;
    let mut newest = String::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        newest += &redis_cli(redis.port, &["XREVRANGE", key, "+", "-", "COUNT", "1"]).await;
    }
    assert!(newest.contains("00199"), "the last message is still in a stream");
}
