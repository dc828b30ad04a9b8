//! The web page in a real browser: tests/web/page.test.js drives Debian's
//! Chromium with playwright-core against a real server that this test starts,
//! fills (a full group, a long history, with the Rust client) and restarts when
//! the script asks. scripts/test installs Chromium and the script's packages;
//! without them this test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use next_chat_client::{Client, Events, JoinResult};
use next_chat_testkit::identity::{TEST_SECRET, hs256_token, secret_file};
use next_chat_testkit::{TestServer, unique};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The whole browser suite; each of its steps has its own 15 s deadline.
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);
const LONG_HISTORY: usize = 250;

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

async fn connect(server: &TestServer, user: &str) -> (Client, Events) {
    server.connect(user).await
}

/// Chromium, after checking that it and playwright-core are installed.
fn chromium(root: &Path) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is not installed ({chromium} is missing): run scripts/test, which installs Debian's chromium"
    );
    assert!(
        root.join("tests/web/node_modules/playwright-core/package.json").exists(),
        "playwright-core is not installed: run scripts/test, which runs `npm ci` in tests/web"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_signs_in_with_a_token_in_jwt_mode() {
    let root = repo_root();
    let chromium = chromium(&root);
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), TEST_SECRET);
    let server = TestServer::start(vec![
        "--auth".into(),
        "jwt".into(),
        "--jwt-secret-file".into(),
        secret.display().to_string(),
    ])
    .await;
    let user = unique("tina-");
    let token = hs256_token(TEST_SECRET, &user, 600);
    let output = tokio::time::timeout(
        SUITE_TIMEOUT,
        Command::new("node")
            .arg(root.join("tests/web/page.test.js"))
            .args(["--jwt", &server.base_url, &token, &user])
            .env("CHROMIUM", &chromium)
            .current_dir(&root)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser suite finishes")
    .expect("node runs tests/web/page.test.js");
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    assert!(output.status.success(), "the browser suite failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_works_in_chromium() {
    let root = repo_root();
    let chromium = chromium(&root);
    let mut server = TestServer::embedded().await;

    // A group of 20 members, and one with a long history.
    let full = unique("full-");
    let mut members = Vec::new();
    for i in 0..20 {
        let (client, events) = connect(&server, &format!("member{i}")).await;
        assert_eq!(client.join_group(&full).await.unwrap(), JoinResult::Joined);
        members.push((client, events));
    }
    let long = unique("long-");
    let (writer, _writer_events) = connect(&server, "historian").await;
    assert_eq!(writer.join_group(&long).await.unwrap(), JoinResult::Joined);
    for i in 1..=LONG_HISTORY {
        writer.send_message(&long, &format!("message {i}")).await.unwrap();
    }

    let mut child = Command::new("node")
        .arg(root.join("tests/web/page.test.js"))
        .args([&server.base_url, &full, &long, &LONG_HISTORY.to_string()])
        .env("CHROMIUM", &chromium)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs tests/web/page.test.js");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut output = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read the suite's output") {
            println!("{line}");
            let answer = match line.strip_prefix("REQUEST ") {
                Some("stop-server") => {
                    server.stop().await;
                    "OK".to_string()
                }
                Some(request) if request.starts_with("start-server-and-send ") => {
                    let mut words = request.split(' ').skip(1);
                    let (group, text) = (words.next().unwrap(), words.next().unwrap());
                    let count: usize = words.next().unwrap().parse().unwrap();
                    server.start_again().await;
                    let (other, _events) = connect(&server, "dave").await;
                    assert_eq!(other.join_group(group).await.unwrap(), JoinResult::Joined);
                    for i in 1..=count {
                        other.send_message(group, &format!("{text} {i}")).await.unwrap();
                    }
                    other.close().await;
                    "OK".to_string()
                }
                Some(other) => format!("unknown request {other}"),
                None => {
                    output.push(line);
                    continue;
                }
            };
            stdin.write_all(format!("{answer}\n").as_bytes()).await.expect("answer the suite");
        }
        child.wait().await.expect("wait for node")
    };
    let status = tokio::time::timeout(SUITE_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("the browser suite did not finish within {SUITE_TIMEOUT:?}"));
    assert!(status.success(), "the browser suite failed:\n{}", output.join("\n"));
    drop(members);
}
