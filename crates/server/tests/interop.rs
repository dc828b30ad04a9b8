//! Interop with stock SignalR clients, unchanged: the official JavaScript client
//! (`@microsoft/signalr`, tests/interop/js) and the Python client (`signalrcore`,
//! tests/interop/python), each against a real server in embedded mode and in
//! Redis/MySQL mode. The suites are scripts in their own languages; this file
//! starts the server, runs a suite against it and fails with the suite's output,
//! so that their results are part of the test summary.
//!
//! The suites' dependencies (tests/interop/js/node_modules, .venv) are installed
//! by scripts/test. Without them these tests fail, saying so: a missing client
//! must never look like a passing interop test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use next_chat_testkit::{ScaleOut, TestServer};
use tokio::process::Command;

/// A whole suite run. The JavaScript suite idles connections for 40 s on purpose
/// (keep-alive checks) and each step has its own 15 s deadline, so this only
/// stops a suite that hangs outright.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy)]
enum Suite {
    JavaScript,
    /// tests/interop/js/auth.js: `--auth jwt` with an accessTokenFactory.
    JavaScriptAuth,
    Python,
}

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

impl Suite {
    /// The program and arguments that run this suite against `url`, after checking
    /// that scripts/test installed what it needs.
    fn command(self, root: &Path, url: &str) -> (PathBuf, Vec<String>) {
        match self {
            Suite::JavaScript | Suite::JavaScriptAuth => {
                let installed =
                    root.join("tests/interop/js/node_modules/@microsoft/signalr/package.json");
                assert!(
                    installed.exists(),
                    "the JavaScript interop suite's packages are not installed ({} is missing): \
                     run scripts/test, which runs `npm ci` in tests/interop/js",
                    installed.display()
                );
                let script = root.join(match self {
                    Suite::JavaScriptAuth => "tests/interop/js/auth.js",
                    _ => "tests/interop/js/interop.js",
                });
                (PathBuf::from("node"), vec![script.display().to_string(), url.to_string()])
            }
            Suite::Python => {
                let python = root.join(".venv/bin/python");
                assert!(
                    python.exists(),
                    "the Python interop suite's virtualenv is missing ({}): run scripts/test, which \
                     creates .venv and installs tests/requirements.txt",
                    python.display()
                );
                let script = root.join("tests/interop/python/interop.py");
                (python, vec![script.display().to_string(), url.to_string()])
            }
        }
    }
}

/// Runs `suite` against the server at `url` and fails with its output unless it exits 0.
async fn run_suite(suite: Suite, url: &str) {
    run_suite_with(suite, url, &[]).await;
}

/// The same, with these environment variables set for the suite.
async fn run_suite_with(suite: Suite, url: &str, envs: &[(&str, String)]) {
    let root = repo_root();
    let (program, args) = suite.command(&root, url);
    let child = Command::new(&program)
        .args(&args)
        .envs(envs.iter().map(|(name, value)| (name, value)))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (run scripts/test to install the interop suites): {e}",
                program.display()
            )
        });
    let output = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("{} {args:?} did not finish within {SUITE_TIMEOUT:?}", program.display())
        })
        .expect("wait for the interop suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown by the test runner on failure, and with --no-capture on success.
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        println!("stderr:\n{stderr}");
    }
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{stdout}\nstderr:\n{stderr}",
        program.display(),
        output.status
    );
}

#[tokio::test]
async fn js_embedded() {
    let server = TestServer::embedded().await;
    run_suite(Suite::JavaScript, &server.url).await;
}

#[tokio::test]
async fn js_scaleout() {
    let scale = ScaleOut::create();
    let server = TestServer::start(scale.args()).await;
    run_suite(Suite::JavaScript, &server.url).await;
}

#[tokio::test]
async fn python_embedded() {
    let server = TestServer::embedded().await;
    run_suite(Suite::Python, &server.url).await;
}

#[tokio::test]
async fn python_scaleout() {
    let scale = ScaleOut::create();
    let server = TestServer::start(scale.args()).await;
    run_suite(Suite::Python, &server.url).await;
}

/// The stock JavaScript client over HTTPS/WSS (the test's CA given to node by
/// NODE_EXTRA_CA_CERTS) against `--auth jwt`, its accessTokenFactory minting
/// 2-second tokens: the server closes each connection as its token expires and
/// the client comes back with a new one.
#[tokio::test]
async fn js_jwt_over_tls() {
    use next_chat_testkit::identity::{TEST_SECRET, TestCa, secret_file};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path(), "js");
    let mut args = ca.server_args();
    args.extend(["--auth", "jwt", "--jwt-leeway-secs", "0", "--jwt-secret-file"].map(String::from));
    args.push(secret_file(dir.path(), TEST_SECRET).display().to_string());
    let server = TestServer::start(args).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let envs = [
        ("NEXT_CHAT_JWT_SECRET", TEST_SECRET.to_owned()),
        ("NODE_EXTRA_CA_CERTS", ca.ca_file.display().to_string()),
    ];
    run_suite_with(Suite::JavaScriptAuth, &server.url, &envs).await;
}

/// The Python client against `--auth jwt`: each connection's credential a JWT
/// (by header and by `access_token_factory`), its `sub` the author of what it sends.
#[tokio::test]
async fn python_jwt() {
    use next_chat_testkit::identity::{TEST_SECRET, secret_file};
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--auth".to_owned(), "jwt".to_owned(), "--jwt-secret-file".to_owned()];
    args.push(secret_file(dir.path(), TEST_SECRET).display().to_string());
    let server = TestServer::start(args).await;
    run_suite_with(Suite::Python, &server.url, &[("NEXT_CHAT_JWT_SECRET", TEST_SECRET.to_owned())])
        .await;
}

/// Stateful reconnect with the stock JavaScript client: a receiver built with
/// `.withStatefulReconnect()` behind a proxy that resets its connection five
/// times while a sender sends 300 messages at ~100/s gets each exactly once, in
/// order, and its connection never closes (tests/interop/js/stateful.js).
async fn js_stateful_reconnect(protocol: &str) {
    use next_chat_testkit::TcpProxy;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let server = TestServer::embedded().await;
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let proxied = format!("http://127.0.0.1:{}/next-chat", proxy.port);
    let root = repo_root();
    assert!(
        root.join("tests/interop/js/node_modules/@microsoft/signalr/package.json").exists(),
        "the JavaScript interop suite's packages are not installed: run scripts/test"
    );
    let script = root.join("tests/interop/js/stateful.js");
    let mut child = Command::new("node")
        .args([script.display().to_string(), proxied, server.url.clone(), "300".into()])
        .arg(protocol)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut output = Vec::new();
    let mut cuts = 0;
    let read = tokio::time::timeout(SUITE_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            // Cut while messages flow: after every 50 sent but the last 50.
            if line.starts_with("sent ") && line != "sent 300" {
                proxy.drop_connections();
                cuts += 1;
            }
            output.push(line);
        }
    })
    .await;
    assert!(read.is_ok(), "stateful.js did not finish: {output:#?}");
    let status = child.wait().await.expect("node exits");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    let output = output.join("\n");
    println!("{output}");
    assert!(status.success(), "stateful.js failed ({status}):\n{output}\nstderr:\n{stderr}");
    assert_eq!(cuts, 5, "the proxy cut the receiver's connection five times:\n{output}");
    let metrics = server.metrics().await;
    let resumed =
        metrics.value_or_zero("nextchat_stateful_reconnects_total", &[("outcome", "resumed")]);
    assert!(resumed >= 5.0, "five cuts, {resumed} resumes counted:\n{metrics}");
}

#[tokio::test]
async fn js_stateful_reconnect_json() {
    js_stateful_reconnect("json").await;
}

#[tokio::test]
async fn js_stateful_reconnect_messagepack() {
    js_stateful_reconnect("messagepack").await;
}
