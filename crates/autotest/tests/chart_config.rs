//! The Helm chart's configuration against the real binaries: renders the
//! chart (deploy/render.py, with deploy/helmlite.py standing in for helm),
//! runs the migration Job's script while the database is unreachable and
//! then reachable, starts next-chat-server with exactly the Deployment's
//! environment and the ConfigMap's config file (only the Secret's URLs, the
//! listen address and the Redis key prefix are this test's own), runs the
//! helm test's next-chat-autotest against it, checks the probe endpoints, and
//! stops it as Kubernetes would: SIGTERM after the preStop sleep, exit 0
//! within the rest of the grace period.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use next_chat_testkit::{ScaleOut, ServerOptions, TcpProxy, TestServer, binary, http, unique};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The rendered chart's files (see deploy/render.py --write-dir).
struct Rendered {
    dir: PathBuf,
}

impl Rendered {
    fn render(sets: &[&str]) -> Rendered {
        let root = repository();
        let python = root.join(".venv/bin/python");
        assert!(python.exists(), "{} is missing: scripts/test creates it", python.display());
        let dir = std::env::temp_dir().join(unique("next-chat-chart-"));
        let status = std::process::Command::new(python)
            .arg(root.join("deploy/render.py"))
            .arg("--write-dir")
            .arg(&dir)
            .args(sets.iter().flat_map(|set| ["--set", set]))
            .status()
            .expect("deploy/render.py runs");
        assert!(status.success(), "deploy/render.py failed");
        Rendered { dir }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// NAME=VALUE lines; a secret reference as `@secret:NAME:KEY`.
    fn env(&self, name: &str) -> BTreeMap<String, String> {
        self.read(name)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces each `@secret:NAME:KEY` value with what the release's Secret
/// would hold here.
fn resolve_secrets(env: &mut BTreeMap<String, String>, secrets: &BTreeMap<&str, String>) {
    for (name, value) in env.iter_mut() {
        if let Some(reference) = value.strip_prefix("@secret:") {
            let key = reference.rsplit(':').next().unwrap_or_default();
            *value = secrets
                .get(key)
                .unwrap_or_else(|| panic!("{name} reads the unknown secret key {key}"))
                .clone();
        }
    }
}

/// The directory of the workspace's binaries, put first on PATH as the image's
/// /usr/local/bin is.
fn bin_dir() -> PathBuf {
    binary("next-chat-server").parent().expect("a directory").to_path_buf()
}

fn path_with_binaries() -> String {
    format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default())
}

/// A server started with exactly `env` (the chart's, secrets resolved), in
/// the rendered chart's directory.
async fn server_with_env(rendered: &Rendered, env: BTreeMap<String, String>) -> TestServer {
    TestServer::start_with(ServerOptions {
        env: env.into_iter().collect(),
        current_dir: Some(rendered.dir.clone()),
        ..ServerOptions::default()
    })
    .await
}

/// The status of `GET {base_url}{path}`.
async fn status_of(base_url: &str, path: &str) -> u16 {
    http::get(&format!("{base_url}{path}")).await.status
}

#[tokio::test]
async fn a_server_configured_as_the_chart_does_passes_helm_test_and_drains_in_time() {
    // A member limit other than the server's default, so that the run below
    // passes only if the server reads the ConfigMap's file.
    let rendered = Rendered::render(&["config.max_members=5"]);
    let scale = ScaleOut::create();
    let mysql = TcpProxy::start("127.0.0.1:3306").await;
    let database_via_proxy = format!("mysql://root@127.0.0.1:{}/{}", mysql.port, scale.database);
    // The chart's default is JWT with an HS256 secret it generates into the
    // release's Secret (`jwt-secret`); here the test's own stands in for it.
    let secrets = BTreeMap::from([
        ("database-url", database_via_proxy),
        ("redis-url", scale.redis_url.clone()),
        ("jwt-secret", next_chat_testkit::identity::TEST_SECRET.to_owned()),
    ]);

    // The migration Job starts while the database cannot be reached yet and
    // must keep retrying until it can.
    mysql.cut();
    let mut migrate_env = rendered.env("migrate.env");
    resolve_secrets(&mut migrate_env, &secrets);
    migrate_env.insert("RETRY_SECONDS".into(), "1".into());
    let mut job = Command::new("/bin/sh")
        .args(["-c", &rendered.read("migrate.sh")])
        .envs(&migrate_env)
        .env("PATH", path_with_binaries())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the migration script starts");
    // Two failed attempts, each followed by the script's retry line: the Job
    // fails while the database is away and tries again instead of ending.
    let mut job_stderr = BufReader::new(job.stderr.take().expect("piped")).lines();
    let mut retries = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while retries < 2 {
            let line = job_stderr.next_line().await.expect("read the Job's stderr");
            let line = line.expect("the Job keeps running while the database is unreachable");
            if line.starts_with("migrate failed (is the database up yet?); retrying in 1 s") {
                retries += 1;
            }
        }
    })
    .await
    .expect("two failed attempts within 60 s");
    assert!(job.try_wait().expect("poll the job").is_none(), "migrate finished without a database");
    tokio::spawn(async move { while let Ok(Some(_)) = job_stderr.next_line().await {} });
    mysql.restore();
    let status = tokio::time::timeout(Duration::from_secs(60), job.wait())
        .await
        .expect("migrate finishes once the database is reachable")
        .expect("wait for the job");
    assert!(status.success(), "the migration Job failed: {status}");

    // The server, with the Deployment's environment and the ConfigMap's file.
    let mut env = rendered.env("server.env");
    resolve_secrets(&mut env, &secrets);
    assert_eq!(env.get("NEXT_CHAT_MIGRATE").map(String::as_str), Some("false"));
    let config_mount =
        Path::new(&env["NEXT_CHAT_CONFIG"]).file_name().expect("a file name").to_owned();
    env.insert("NEXT_CHAT_CONFIG".into(), rendered.dir.join(config_mount).display().to_string());
    env.insert("NEXT_CHAT_LISTEN".into(), "127.0.0.1:0".into());
    // The only setting not from the chart: a Redis key prefix of this test's own.
    env.insert("NEXT_CHAT_REDIS_KEY_PREFIX".into(), scale.key_prefix.clone());
    let mut server = server_with_env(&rendered, env).await;
    let address = format!("127.0.0.1:{}", server.port);

    // The probes.
    assert_eq!(status_of(&server.base_url, "/readyz").await, 200, "readiness probe");
    assert_eq!(status_of(&server.base_url, "/healthz").await, 200, "liveness probe");

    // helm test: the chart's test Pod runs next-chat-autotest --url ... --max-members.
    let config = rendered.read("config.yaml");
    let max_members = config
        .lines()
        .find_map(|l| l.strip_prefix("max_members: "))
        .expect("config.yaml has max_members");
    assert_eq!(max_members, "5");
    // The test Pod's environment: with the chart's default JWT auth, the
    // release's secret, which the autotest mints its users' tokens with.
    let mut autotest_env = rendered.env("autotest.env");
    resolve_secrets(&mut autotest_env, &secrets);
    let report = Command::new(env!("CARGO_BIN_EXE_next-chat-autotest"))
        .args(["--url", &format!("http://{address}/next-chat"), "--max-members", max_members])
        .arg("--skip-load")
        .envs(&autotest_env)
        .output()
        .await
        .expect("next-chat-autotest runs");
    let stdout = String::from_utf8_lossy(&report.stdout);
    print!("{stdout}");
    assert!(report.status.success(), "next-chat-autotest failed:\n{stdout}");

    // Pod deletion: preStop sleeps, then SIGTERM; the kubelet kills the
    // container at the end of the grace period, so the server must be done
    // before then.
    let timing = rendered.env("timing.env");
    let pre_stop: u64 = timing["PRE_STOP_SECONDS"].parse().expect("a number");
    let grace: u64 = timing["GRACE_SECONDS"].parse().expect("a number");
    let stopping = Instant::now();
    let status = server.stop().await;
    assert!(status.success(), "the server exited with {status} after SIGTERM");
    assert!(
        stopping.elapsed() <= Duration::from_secs(grace - pre_stop),
        "the server did not exit within {} s of SIGTERM",
        grace - pre_stop
    );
    println!("drained in {:?}", stopping.elapsed());
}

/// `auth.mode: jwt` with an HS256 secret in a Secret of the operator's: the
/// server gets the key and the claims to check from the Deployment's
/// environment, and the helm test Pod gets the same Secret and mints each test
/// user's token with it, so `helm test` passes against a JWT release.
#[tokio::test]
async fn a_jwt_release_passes_helm_test_with_tokens_the_test_pod_mints() {
    use next_chat_testkit::identity::TEST_SECRET;
    let rendered = Rendered::render(&[
        "auth.mode=jwt",
        "auth.jwt.existingSecret=chat-auth",
        "auth.jwt.issuer=https://idp.test",
        "auth.jwt.audience=next-chat",
        "replicaCount=1",
        "redis.enabled=false",
        "mysql.enabled=false",
        "migrations.enabled=false",
        "externalDatabase.url=sqlite://chart-jwt.db",
    ]);
    let secrets = BTreeMap::from([
        ("database-url", format!("sqlite://{}", rendered.dir.join("chart.db").display())),
        ("jwt-secret", TEST_SECRET.to_owned()),
    ]);
    let mut env = rendered.env("server.env");
    resolve_secrets(&mut env, &secrets);
    assert_eq!(env.get("NEXT_CHAT_AUTH").map(String::as_str), Some("jwt"));
    let config_mount =
        Path::new(&env["NEXT_CHAT_CONFIG"]).file_name().expect("a file name").to_owned();
    env.insert("NEXT_CHAT_CONFIG".into(), rendered.dir.join(config_mount).display().to_string());
    env.insert("NEXT_CHAT_LISTEN".into(), "127.0.0.1:0".into());
    // The chart turned the migration Job off: the server applies the schema.
    env.insert("NEXT_CHAT_MIGRATE".into(), "true".into());
    let mut server = server_with_env(&rendered, env).await;
    let address = format!("127.0.0.1:{}", server.port);

    // The test Pod's own environment and arguments, the Service URL replaced
    // by this server's address.
    let mut autotest_env = rendered.env("autotest.env");
    resolve_secrets(&mut autotest_env, &secrets);
    let args: Vec<String> = rendered
        .read("autotest.args")
        .lines()
        .map(|arg| {
            if arg.starts_with("http://") {
                format!("http://{address}/next-chat")
            } else {
                arg.to_owned()
            }
        })
        .collect();
    let report = Command::new(env!("CARGO_BIN_EXE_next-chat-autotest"))
        .args(&args)
        .arg("--skip-load")
        .env_clear()
        .envs(&autotest_env)
        .output()
        .await
        .expect("next-chat-autotest runs");
    let stdout = String::from_utf8_lossy(&report.stdout);
    print!("{stdout}");
    assert!(report.status.success(), "next-chat-autotest failed:\n{stdout}");
    server.kill().await;
}
