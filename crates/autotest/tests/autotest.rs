//! Runs the `next-chat-autotest` binary, as `helm test` does, against real
//! servers started here: every scenario and the load phase must pass in
//! embedded mode and in Redis/MySQL mode, and a failing scenario or an
//! unreachable server must fail the run with a non-zero exit status.

use std::process::ExitStatus;

use next_chat_testkit::{ScaleOut, TestServer};

const SCENARIOS: usize = 5;
/// What `--peer-url` adds.
const CROSS_INSTANCE_SCENARIOS: usize = 3;

struct Report {
    status: ExitStatus,
    stdout: String,
}

impl Report {
    /// The closing `N passed, N failed` line.
    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

async fn autotest(url: &str, extra: &[&str]) -> Report {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_next-chat-autotest"))
        .args(["--url", url])
        .args(extra)
        .output()
        .await
        .expect("next-chat-autotest runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // Shown when a test fails.
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    Report { status: output.status, stdout }
}

#[tokio::test]
async fn every_scenario_and_the_load_phase_pass_against_an_embedded_server() {
    let server = TestServer::embedded().await;
    let report = autotest(&server.url, &[]).await;
    assert_eq!(report.summary(), format!("{} passed, 0 failed", SCENARIOS + 1));
    assert!(report.status.success(), "exit status {}", report.status);
}

#[tokio::test]
async fn every_scenario_and_the_load_phase_pass_against_a_redis_mysql_server() {
    let scale = ScaleOut::create();
    let server = TestServer::start(scale.args()).await;
    let report = autotest(&server.url, &[]).await;
    assert_eq!(report.summary(), format!("{} passed, 0 failed", SCENARIOS + 1));
    assert!(report.status.success(), "exit status {}", report.status);
}

/// `--peer-url`: two instances sharing Redis and MariaDB pass the
/// cross-instance scenarios (users of one group on both instances).
#[tokio::test]
async fn cross_instance_scenarios_pass_against_two_scale_out_servers() {
    let scale = ScaleOut::create();
    let first = TestServer::start(scale.args()).await;
    let second = TestServer::start(scale.args()).await;
    let report = autotest(&first.url, &["--skip-load", "--peer-url", &second.url]).await;
    assert_eq!(
        report.summary(),
        format!("{} passed, 0 failed", SCENARIOS + CROSS_INSTANCE_SCENARIOS)
    );
    assert!(report.status.success(), "exit status {}", report.status);
}

/// Two embedded servers share nothing: every cross-instance scenario fails
/// (the checks can tell a deployment whose instances do not talk).
#[tokio::test]
async fn cross_instance_scenarios_fail_against_two_unconnected_servers() {
    let first = TestServer::embedded().await;
    let second = TestServer::embedded().await;
    let report = autotest(&first.url, &["--skip-load", "--peer-url", &second.url]).await;
    assert_eq!(report.summary(), format!("{SCENARIOS} passed, {CROSS_INSTANCE_SCENARIOS} failed"));
    assert_eq!(report.status.code(), Some(1));
}

/// As `helm test` runs it against a chart with `auth.mode: jwt` and TLS: every
/// scenario user's token minted with the server's secret, the test CA trusted.
#[tokio::test]
async fn scenarios_pass_against_a_jwt_server_over_tls() {
    use next_chat_testkit::identity::{TEST_SECRET, TestCa, secret_file};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path(), "autotest");
    let secret = secret_file(dir.path(), TEST_SECRET);
    let secret = secret.to_str().unwrap();
    let mut args = ca.server_args();
    args.extend(
        ["--auth", "jwt", "--jwt-secret-file", secret, "--jwt-audience", "next-chat"]
            .map(String::from),
    );
    let server = TestServer::start(args).await;
    let ca_file = ca.ca_file.to_str().unwrap();
    let flags = ["--skip-load", "--ca-file", ca_file, "--jwt-secret-file", secret];
    let report =
        autotest(&server.url, &[&flags[..], &["--jwt-audience", "next-chat"]].concat()).await;
    assert_eq!(report.summary(), format!("{SCENARIOS} passed, 0 failed"));
    assert!(report.status.success(), "exit status {}", report.status);
    // With an audience the server does not accept, every connection is refused.
    let report =
        autotest(&server.url, &[&flags[..], &["--jwt-audience", "other-app"]].concat()).await;
    assert!(!report.status.success());
    assert!(report.stdout.contains("wrong audience"), "{}", report.stdout);
}

#[tokio::test]
async fn scenarios_pass_over_messagepack() {
    let server = TestServer::embedded().await;
    let report = autotest(&server.url, &["--protocol", "messagepack", "--skip-load"]).await;
    assert_eq!(report.summary(), format!("{SCENARIOS} passed, 0 failed"));
    assert!(report.status.success(), "exit status {}", report.status);
}

#[tokio::test]
async fn a_failing_scenario_fails_the_run() {
    // The server admits 3 members; the runner expects the 21st to be refused,
    // so the 4th already gets NoRoom and that scenario fails.
    let server = TestServer::start(vec!["--max-members".into(), "3".into()]).await;
    let report = autotest(&server.url, &["--skip-load"]).await;
    assert_eq!(report.summary(), format!("{} passed, 1 failed", SCENARIOS - 1));
    assert!(report.stdout.contains("FAIL  user 21 of a group gets NoRoom"), "{}", report.stdout);
    assert_eq!(report.status.code(), Some(1));
}

#[tokio::test]
async fn the_matching_max_members_passes() {
    let server = TestServer::start(vec!["--max-members".into(), "3".into()]).await;
    let report = autotest(&server.url, &["--skip-load", "--max-members", "3"]).await;
    assert_eq!(report.summary(), format!("{SCENARIOS} passed, 0 failed"));
    assert!(report.status.success());
}

#[tokio::test]
async fn an_unreachable_server_fails_every_scenario() {
    // A port this test holds bound but never listens on: connections are
    // refused, and no other test can take the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
    let port = socket.local_addr().expect("a bound address").port();
    let report = autotest(&format!("http://127.0.0.1:{port}/next-chat"), &[]).await;
    assert_eq!(report.summary(), format!("0 passed, {} failed", SCENARIOS + 1));
    assert_eq!(report.status.code(), Some(1));
}
