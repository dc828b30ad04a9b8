//! Backend URLs at start: a malformed one is a configuration error naming the
//! setting (not an outage retried until the startup timeout), and no line the
//! server writes holds a password, whether the URL is malformed or well-formed
//! and unreachable.

use std::time::{Duration, Instant};

use next_chat_testkit::binary;

const PASSWORD: &str = "s3cr3t-pw";

/// Runs the server with `args` until it gives up: (exit code, stderr, time taken).
fn run(args: &[&str]) -> (Option<i32>, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = std::process::Command::new(binary("next-chat-server"))
        .args(["--listen", "127.0.0.1:0", "--startup-timeout-secs", "2"])
        .args(args)
        // Every level, the dependencies' included: none may print a password.
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .output()
        .expect("run next-chat-server");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains(PASSWORD), "stdout holds the password: {stdout}");
    (output.status.code(), stderr, started.elapsed())
}

#[test]
fn a_malformed_backend_url_stops_the_server_at_once_naming_the_setting() {
    let redis = format!("redis://user:{PASSWORD}@[bad:1/0");
    let cluster = format!("redis://127.0.0.1:7000,redis://user:{PASSWORD}@[bad:1/0");
    let mysql = format!("mysql://user:{PASSWORD}@[bad:3306/chat");
    let cases: [(&[&str], &str); 3] = [
        (&["--redis", &redis], "configuration: redis: "),
        (&["--redis", &cluster, "--redis-cluster"], "configuration: redis: "),
        (&["--redis", "redis://127.0.0.1:6379", "--database", &mysql], "configuration: database: "),
    ];
    for (args, setting) in cases {
        let (code, stderr, took) = run(args);
        assert_eq!(code, Some(2), "{args:?}: a configuration error: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(setting), "{args:?}: the first line names the setting: {stderr}");
        assert!(first.contains("user:***@[bad"), "{args:?}: the URL, redacted: {first}");
        assert!(!stderr.contains(PASSWORD), "{args:?}: the password in stderr: {stderr}");
        assert!(!stderr.contains("not reachable"), "{args:?}: retried as an outage: {stderr}");
        assert!(took < Duration::from_secs(2), "{args:?}: not at once: {took:?}");
    }
}

#[test]
fn an_unreachable_backend_with_a_password_never_shows_it() {
    let redis = format!("redis://user:{PASSWORD}@127.0.0.1:1");
    let mysql = format!("mysql://user:{PASSWORD}@127.0.0.1:1/chat");
    let cases: [&[&str]; 2] =
        [&["--redis", &redis], &["--redis", "redis://127.0.0.1:6379", "--database", &mysql]];
    for args in cases {
        // (MySQL's connect waits out the whole startup timeout: one attempt.)
        let (code, stderr, _) = run(args);
        assert_eq!(code, Some(1), "{args:?}: gives up after the startup timeout: {stderr}");
        assert!(stderr.contains("user:***@127.0.0.1:1"), "{args:?}: names it, redacted: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{args:?}: the password in stderr: {stderr}");
    }
}
