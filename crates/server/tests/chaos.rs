//! Chaos: two instances carry chat traffic while the test cuts, resets,
//! slows down and silences (half-open) their connections to Redis and
//! MariaDB and resets their clients' connections (the clients reconnect and
//! catch up by id), then kills one instance
//! during a history outage. Every message whose send completed must be
//! stored exactly once and must have reached every member that stayed joined.
//!
//! `CHAOS_SECS` sets how long the traffic and faults run (default 20 s, and
//! at least one round of each kind of fault);
//! `crates/bench/scripts/chaos-soak.sh` runs this test for an hour and reads
//! the `chaos:` lines it prints (RSS per round, lost and duplicated messages).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use next_chat_client::{Client, ClientOptions, Event, Events, JoinResult};
use next_chat_testkit::{
    MYSQL_ADDR, REDIS_ADDR, ScaleOut, TcpProxy, TestServer, eventually, mariadb,
};

const GROUP: &str = "chaos";
/// Members that stay joined on each instance, each also sending.
const STAYERS: usize = 3;
/// The kinds of fault, taken in turn (see the rounds below).
const FAULTS: usize = 7;

fn chaos_duration() -> Duration {
    let secs = std::env::var("CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    Duration::from_secs(secs)
}

/// Kilobytes of a server's resident memory; 0 once it is gone.
fn rss_kib(server: &TestServer) -> u64 {
    server.rss_kib().unwrap_or(0)
}

/// What one member received: each text with how many times.
type Received = Arc<Mutex<HashMap<String, usize>>>;

fn record(mut events: Events) -> Received {
    let received: Received = Arc::default();
    let into = Arc::clone(&received);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let messages = match event {
                Event::Message(message) => vec![message],
                Event::Closed { .. } => break,
                _ => continue,
            };
            let mut into = into.lock().unwrap();
            for message in messages {
                *into.entry(message.text).or_default() += 1;
            }
        }
    });
    received
}

async fn member(url: &str, user: &str) -> (Client, Received) {
    let (client, events) = Client::connect(ClientOptions::new(url, user)).await.unwrap();
    let received = record(events);
    assert_eq!(client.join_group(GROUP).await, Ok(JoinResult::Joined), "{user} joins");
    (client, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_under_backend_and_client_faults_loses_and_repeats_nothing() {
    let scale = ScaleOut::create();
    let redis = TcpProxy::start(REDIS_ADDR).await;
    let mysql = TcpProxy::start(MYSQL_ADDR).await;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let mut args = scale.args_via(Some(&redis_url), Some(mysql.port));
    args.extend(["--redis-stream-shards", "2"].map(String::from));
    let mut servers = TestServer::start_instances(&args, 2).await;
    // The survivor's clients go through a proxy too, so their connections can be reset.
    let front = TcpProxy::start(&format!("127.0.0.1:{}", servers[0].port)).await;
    let urls = [format!("http://127.0.0.1:{}/next-chat", front.port), servers[1].url.clone()];

    let mut stayers = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        for j in 0..STAYERS {
            stayers.push((i, member(url, &format!("stay-{i}-{j}")).await));
        }
    }
    let completed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let churns = Arc::new(AtomicUsize::new(0));
    // Each stayer's completed sends, to see every one of them get through again.
    let progress: Vec<Arc<AtomicUsize>> = stayers.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for ((instance, (client, _)), progress) in stayers.iter().zip(&progress) {
        let (client, completed, stop) = (client.clone(), completed.clone(), stop.clone());
        let (instance, progress) = (*instance, progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("{} {instance} {n}", client.user());
                n += 1;
                // A send that fails (a backend cut) is simply not expected anywhere.
                if client.send_message(GROUP, &text).await.is_ok() {
                    completed.lock().unwrap().insert(text);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Churn: users connect, join, leave and disconnect on both instances.
    for (i, url) in urls.iter().enumerate() {
        let (url, stop, churns) = (url.clone(), stop.clone(), churns.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("churn-{i}-{}", n % 4);
                n += 1;
                let Ok((client, _events)) = Client::connect(ClientOptions::new(&url, &user)).await
                else {
                    continue;
                };
                if client.join_group(GROUP).await.is_ok() {
                    let _ = client.leave_group(GROUP).await;
                }
                client.close().await;
                churns.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Faults, one after another, until the time is up.
    let started = Instant::now();
    let mut round = 0;
    // Every kind of fault at least once, however short the run.
    while round < FAULTS || started.elapsed() < chaos_duration() {
        match round % FAULTS {
            0 => redis.drop_connections(),
            1 => {
                mysql.cut();
                tokio::time::sleep(Duration::from_secs(2)).await;
                mysql.restore();
            }
            2 => {
                // Redis answers nothing and closes nothing; the connections
                // the servers had stay silent after it comes back.
                redis.half_open();
                tokio::time::sleep(Duration::from_secs(3)).await;
                redis.restore();
            }
            3 => front.drop_connections(),
            4 => {
                // A slow network to both backends, slower each round.
                let latency = Duration::from_millis(50 + (round as u64 * 37) % 150);
                redis.set_latency(latency);
                mysql.set_latency(latency);
                tokio::time::sleep(Duration::from_secs(3)).await;
                redis.set_latency(Duration::ZERO);
                mysql.set_latency(Duration::ZERO);
            }
            5 => {
                redis.cut();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                redis.restore();
            }
            _ => {
                mysql.half_open();
                tokio::time::sleep(Duration::from_secs(3)).await;
                mysql.restore();
            }
        }
        // Go on only once chat works again: every stayer, on both instances,
        // completes two sends after the fault (the second begun after it).
        let fault_ended = Instant::now();
        let before: Vec<usize> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        eventually(Duration::from_secs(30), "every stayer's sends complete after a fault", || {
            let progressed =
                progress.iter().zip(&before).all(|(p, b)| p.load(Ordering::Relaxed) >= b + 2);
            async move { progressed }
        })
        .await;
        println!(
            "chaos: fault {} recovered in {:.1} s",
            round % FAULTS,
            fault_ended.elapsed().as_secs_f64()
        );
        println!(
            "chaos: round {round} at {:.0} s: {} sends completed, {} churns, rss_kib {} {}",
            started.elapsed().as_secs_f64(),
            completed.lock().unwrap().len(),
            churns.load(Ordering::Relaxed),
            rss_kib(&servers[0]),
            rss_kib(&servers[1]),
        );
        round += 1;
    }

    // The double fault: history goes away, instance 1 dies with what it
    // accepted unstored, history comes back.
    mysql.cut();
    let in_outage = completed.lock().unwrap().len();
    let progressed = completed.clone();
    eventually(Duration::from_secs(30), "sends complete during the history outage", || {
        let progressed = progressed.clone();
        async move { progressed.lock().unwrap().len() > in_outage + 2 * STAYERS }
    })
    .await;
    // Sending stops first, so no send is left waiting on a dead instance;
    // what instance 1 accepted since the cut is still unstored when it dies.
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    servers[1].kill().await;
    mysql.restore();
    let completed: HashSet<String> = completed.lock().unwrap().clone();

    // Stored exactly once: every completed send, and no other sender's text twice.
    let database = scale.database.clone();
    let expected = completed.len();
    let stored_sql = format!("SELECT text FROM messages WHERE group_id = '{GROUP}'");
    let took = eventually(Duration::from_secs(60), "every completed send is stored", || {
        let (database, sql, completed) = (database.clone(), stored_sql.clone(), &completed);
        async move {
            let stored = mariadb(&database, &sql).await;
            let stored: HashSet<&str> = stored.lines().collect();
            completed.iter().all(|text| stored.contains(text.as_str()))
        }
    })
    .await;
    let counts = mariadb(
        &database,
        &format!("SELECT COUNT(*), COUNT(DISTINCT text) FROM messages WHERE group_id = '{GROUP}'"),
    )
    .await;
    let (rows, distinct) = counts.split_once('\t').expect("two columns");
    assert_eq!(rows, distinct, "no message stored twice");

    // Every stayer on the surviving instance got every completed send once.
    let mut lost = 0;
    let mut duplicated = 0;
    for (instance, (client, received)) in &stayers {
        if *instance != 0 {
            continue;
        }
        let user = client.user().to_string();
        let received = received.clone();
        let completed = &completed;
        eventually(Duration::from_secs(30), "every completed send reaches the stayers", || {
            let received = received.clone();
            async move {
                let received = received.lock().unwrap();
                completed.iter().all(|text| received.contains_key(text))
            }
        })
        .await;
        let received = received.lock().unwrap();
        lost += completed.iter().filter(|text| !received.contains_key(*text)).count();
        duplicated += received.values().filter(|n| **n > 1).count();
        assert_eq!(client.duplicates_dropped(), 0, "{user} was sent a duplicate");
    }
    println!(
        "chaos: done: {expected} sends completed, stored {took:?} after the outage, lost {lost}, \
         duplicated {duplicated}, rss_kib {}",
        rss_kib(&servers[0])
    );
    assert_eq!((lost, duplicated), (0, 0));
}
