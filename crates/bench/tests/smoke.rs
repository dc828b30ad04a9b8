//! A short run of the real bench against a real server: the report's counts
//! must add up, and a healthy server loses and duplicates nothing. No timing
//! is asserted: this machine's speed is not the test's business.

use next_chat_testkit::{TestServer, binary};
use serde_json::Value;

async fn bench(server: &TestServer, extra: &[&str]) -> Value {
    let pid = server.pid().expect("the server runs").to_string();
    let output = tokio::process::Command::new(binary("next-chat-bench"))
        .args(["--url", &server.url, "--connections", "12", "--group-size", "5"])
        .args(["--rate", "50", "--duration", "2", "--warmup", "0.5", "--length", "120"])
        .args(["--server-pid", &pid, "--json", "--quiet", "--create"])
        .args(extra)
        .output()
        .await
        .expect("next-chat-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "next-chat-bench failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn count(report: &Value, field: &str) -> u64 {
    report["load"][field].as_u64().unwrap_or_else(|| panic!("no load.{field} in {report}"))
}

fn assert_counts_add_up(report: &Value) {
    let (expected, delivered, lost) =
        (count(report, "expected"), count(report, "delivered"), count(report, "lost"));
    assert_eq!(delivered + lost, expected, "{report}");
    assert_eq!(lost, 0, "{report}");
    assert_eq!(count(report, "duplicated"), 0, "{report}");
    assert_eq!(count(report, "out_of_order"), 0, "{report}");
    // 12 connections in groups of 5: groups of 5, 5 and 2, one sender each.
    let accepted = count(report, "accepted");
    assert!(accepted > 0, "{report}");
    assert!(expected >= accepted * 2 && expected <= accepted * 5, "{report}");
    assert!(report["server"]["cpu_s"].as_f64().is_some(), "{report}");
}

#[tokio::test]
async fn json_run_counts_add_up() {
    let server = TestServer::embedded().await;
    assert_counts_add_up(&bench(&server, &[]).await);
}

#[tokio::test]
async fn messagepack_run_counts_add_up() {
    let server = TestServer::embedded().await;
    assert_counts_add_up(&bench(&server, &["--protocol", "messagepack"]).await);
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/next-chat");
    let output = tokio::process::Command::new(binary("next-chat-bench"))
        .args(["--url", &url, "--connections", "2", "--duration", "1", "--quiet"])
        .output()
        .await
        .expect("next-chat-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot reach") && stderr.contains("running"), "{stderr}");
}

/// Over `wss://` with `--auth jwt`: each connection's token minted with the
/// server's secret, the test CA trusted by `--ca-file`.
#[tokio::test]
async fn a_run_over_tls_with_jwt_counts_add_up() {
    use next_chat_testkit::identity::{TEST_SECRET, TestCa, secret_file};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path(), "bench");
    let secret = secret_file(dir.path(), TEST_SECRET);
    let secret = secret.to_str().unwrap();
    let mut args = ca.server_args();
    args.extend(["--auth", "jwt", "--jwt-secret-file", secret].map(String::from));
    let server = TestServer::start(args).await;
    assert!(server.url.starts_with("https://"));
    let flags = ["--ca-file", ca.ca_file.to_str().unwrap(), "--jwt-secret-file", secret];
    assert_counts_add_up(&bench(&server, &flags).await);
}

/// `--ready-file` appears once every connection has joined, and the load
/// waits for `--go-file`: nothing is sent before it exists.
#[tokio::test]
async fn the_load_waits_for_the_go_file() {
    let server = TestServer::embedded().await;
    let dir = tempfile::tempdir().expect("a directory");
    let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
    let mut bench = tokio::process::Command::new(binary("next-chat-bench"))
        .args(["--url", &server.url, "--connections", "4", "--group-size", "2"])
        .args(["--rate", "20", "--duration", "1", "--warmup", "0", "--quiet", "--json"])
        .arg("--ready-file")
        .arg(&ready)
        .arg("--go-file")
        .arg(&go)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("next-chat-bench runs");
    next_chat_testkit::eventually(std::time::Duration::from_secs(20), "the ready file", || {
        let ready = ready.clone();
        async move { ready.exists() }
    })
    .await;
    // Without the barrier a 1 s load would be over 1.6 s after the joins; held
    // at it, the bench is still waiting 3 s later.
    let waited = tokio::time::timeout(std::time::Duration::from_secs(3), bench.wait()).await;
    assert!(waited.is_err(), "the bench did not wait for --go-file: {waited:?}");
    std::fs::write(&go, b"").expect("the go file");
    let output = bench.wait_with_output().await.expect("the bench finishes");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert!(count(&report, "accepted") > 0, "{report}");
    assert_eq!(count(&report, "lost"), 0, "{report}");
}
