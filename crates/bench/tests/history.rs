//! `load-history` on a small count, then `probe-history` through a real server
//! on what it wrote: the loader's rows must be the server's schema (the server
//! opens the database, joins serve the loaded history, pages go back, the
//! groups are listed), in SQLite and in MySQL with the groups in Redis.

use next_chat_testkit::{ScaleOut, TestServer, binary};
use serde_json::Value;

async fn bench(args: &[&str]) -> Value {
    let output = tokio::process::Command::new(binary("next-chat-bench"))
        .args(args)
        .output()
        .await
        .expect("next-chat-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "next-chat-bench {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// 30 groups, 3000 messages in the first 10 (300 each), 80 characters each.
const LOAD: [&str; 9] =
    ["--groups", "30", "--messages", "3000", "--history-groups", "10", "--length", "80", "--quiet"];

async fn probe(server: &TestServer) -> Value {
    // A join's OnHistory holds 100; two pages of 50 back stay within 300.
    let probed = bench(&[
        "probe-history",
        "--url",
        &server.url,
        "--groups",
        "30",
        "--probe-groups",
        "10",
        "--samples",
        "6",
        "--warmup",
        "1",
        "--pages",
        "2",
        "--page-size",
        "50",
    ])
    .await;
    assert_eq!(probed["on_history_messages"], 100, "{probed}");
    assert_eq!(probed["join_ms"]["count"], 6, "{probed}");
    // Every page held messages: 6 joins × 2 pages.
    assert_eq!(probed["get_history_ms"]["count"], 12, "{probed}");
    assert_eq!(probed["list_groups_page_ms"]["count"], 6, "{probed}");
    probed
}

fn assert_loaded(loaded: &Value, database: &str) {
    assert_eq!(loaded["database"], database, "{loaded}");
    assert_eq!(loaded["messages"], 3000, "{loaded}");
    assert_eq!(loaded["groups"], 30, "{loaded}");
    // At least the text of each message is on disk.
    assert!(loaded["bytes_per_message"].as_f64().expect("a size") > 80.0, "{loaded}");
}

#[tokio::test]
async fn loaded_sqlite_history_is_served() {
    let dir = tempfile::tempdir().expect("a directory");
    let url = format!("sqlite://{}", dir.path().join("h.db").display());
    let loaded = bench(&[&["load-history", "--database", &url][..], &LOAD].concat()).await;
    assert_loaded(&loaded, "sqlite");
    let server = TestServer::start(vec!["--database".into(), url]).await;
    probe(&server).await;
}

#[tokio::test]
async fn loaded_mysql_history_is_served() {
    let scale_out = ScaleOut::create();
    let loaded = bench(
        &[
            &[
                "load-history",
                "--database",
                &scale_out.mysql_url,
                "--redis",
                &scale_out.redis_url,
                "--redis-key-prefix",
                &scale_out.key_prefix,
            ][..],
            &LOAD,
        ]
        .concat(),
    )
    .await;
    assert_loaded(&loaded, "mysql");
    let server = TestServer::start(scale_out.args()).await;
    probe(&server).await;
}

#[tokio::test]
async fn a_probe_of_groups_without_history_says_so() {
    let dir = tempfile::tempdir().expect("a directory");
    let url = format!("sqlite://{}", dir.path().join("h.db").display());
    bench(&[&["load-history", "--database", &url][..], &LOAD].concat()).await;
    let server = TestServer::start(vec!["--database".into(), url]).await;
    let output = tokio::process::Command::new(binary("next-chat-bench"))
        .args(["probe-history", "--url", &server.url, "--groups", "30", "--probe-groups", "30"])
        .args(["--samples", "40", "--warmup", "0"])
        .output()
        .await
        .expect("next-chat-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("empty OnHistory") && stderr.contains("--probe-groups"), "{stderr}");
}
