//! Test support shared by every crate's end-to-end tests: start a real
//! `next-chat-server` process on a free port, with its own SQLite file, or its
//! own Redis key prefix and MariaDB database, and clean up afterwards.
//!
//! The binaries are built before the tests run (the README's test command runs
//! `cargo build --workspace --bins` first); `binary` finds them next to the test
//! executable. Each server prints `listening on http://ADDR` (`https://` with
//! TLS) on stdout once it
//! accepts connections, which is what `TestServer::start` waits for.
//!
//! For failure tests: `TcpProxy` takes a backend away from one test's servers
//! (MariaDB, through a port of the test's own), `RedisServer` is a Redis of the
//! test's own that it can kill and start again, `RedisCluster` a Redis Cluster
//! of three masters and three replicas whose masters it can kill. `identity` mints JWTs and
//! generates a certificate authority for the tests of `--auth jwt` and TLS.
//!
//! And the small things every end-to-end test needs: `connect` a chat client,
//! `mariadb` to look into a test's database, `rss_kib` of a process,
//! `max_size_text` for the largest message,
//! `scrape_metrics` (or `TestServer::metrics`) for one sample by name and
//! labels, `http` requests with a real client, and `eventually` for state that
//! changes on the server's own schedule.

pub mod http;
pub mod identity;
mod metrics;
mod proxy;
mod redis_cluster;
mod redis_server;

pub use metrics::{Metrics, Sample, scrape_metrics};
pub use proxy::TcpProxy;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use next_chat_client::{Client, ClientOptions, Events};
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where the machine's shared services are; tests never use them without a
/// prefix or database of their own.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const MYSQL_ROOT_URL: &str = "mysql://root@127.0.0.1:3306";
/// MariaDB's and Redis's addresses, for a `TcpProxy` in front of them.
pub const MYSQL_ADDR: &str = "127.0.0.1:3306";
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a workspace binary, e.g. `binary("next-chat-server")`.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("NEXT_CHAT_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe.parent().expect("the test executable is in a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (the README's test command does)",
        path.display()
    );
    path
}

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}{n:016x}")
}

/// How often `eventually` looks again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `condition` every 50 ms until it holds, and returns how long that
/// took; panics naming `what` when `within` passes first. For state that
/// changes on a server's own schedule (a history writer, expiry, reconnection),
/// where there is no event to wait on from outside the process; never to wait
/// out a race.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    eventually_ok(within, what, || {
        let holds = condition();
        async move { if holds.await { Ok(()) } else { Err("not yet") } }
    })
    .await;
    started.elapsed()
}

/// The same for a condition that says what it saw: `Ok(value)` once it holds
/// (returned), `Err(seen)` while it does not; the panic shows the last `seen`
/// (a screen, a response, an error).
pub async fn eventually_ok<T, E, F, Fut>(within: Duration, what: &str, mut condition: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(seen) => {
                assert!(
                    started.elapsed() < within,
                    "{what}: not within {within:?}; last: {seen:?}"
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A chat client connected to `url` (`TestServer::url`) as `user`; panics,
/// naming both, when it cannot connect.
pub async fn connect(url: &str, user: &str) -> (Client, Events) {
    connect_with(ClientOptions::new(url, user)).await
}

/// The same with options of the test's own (protocol, reconnect policy, ...).
pub async fn connect_with(options: ClientOptions) -> (Client, Events) {
    let (url, user) = (options.url.clone(), options.user.clone());
    Client::connect(options).await.unwrap_or_else(|e| panic!("{user} connects to {url}: {e}"))
}

/// The longest message text the server accepts by default: 16,384
/// characters of four UTF-8 bytes each, starting with `i` in five digits.
pub fn max_size_text(i: usize) -> String {
    let mut text = format!("{i:05}");
    text.extend(std::iter::repeat_n('😀', 16_384 - text.chars().count()));
    text
}

/// Kilobytes of resident memory (`VmRSS`) of a running process, from /proc;
/// `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// A port nothing listens on right now (another process may take it later).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a bound socket has an address").port()
}

/// A MariaDB database and a Redis key prefix of this test's own, removed on drop.
pub struct ScaleOut {
    pub redis_url: String,
    /// `redis_url` is a Redis Cluster's seed list (`--redis-cluster`).
    pub cluster: bool,
    pub key_prefix: String,
    pub database: String,
    pub mysql_url: String,
}

impl ScaleOut {
    /// Creates an empty database `nc_test_<random>` and picks a fresh key prefix.
    pub fn create() -> ScaleOut {
        let database = unique("nc_test_");
        run_mariadb(&format!("CREATE DATABASE {database}"));
        ScaleOut {
            redis_url: REDIS_URL.to_string(),
            cluster: false,
            key_prefix: unique("nc-test-") + ":",
            mysql_url: format!("{MYSQL_ROOT_URL}/{database}"),
            database,
        }
    }

    /// The same, but with `cluster` for messaging and membership.
    pub fn create_on(cluster: &RedisCluster) -> ScaleOut {
        let mut scale = ScaleOut::create();
        scale.redis_url = cluster.url();
        scale.cluster = true;
        scale
    }

    /// The server flags that select these backends.
    pub fn args(&self) -> Vec<String> {
        self.args_via(None, None)
    }

    /// The same flags, but reaching Redis at `redis_url` (say a `RedisServer`
    /// of the test's own) and MariaDB through `127.0.0.1:mysql_port` (say a
    /// `TcpProxy`); `None` keeps the machine's.
    pub fn args_via(&self, redis_url: Option<&str>, mysql_port: Option<u16>) -> Vec<String> {
        let mysql_url = match mysql_port {
            Some(port) => format!("mysql://root@127.0.0.1:{port}/{}", self.database),
            None => self.mysql_url.clone(),
        };
        let mut args = vec![
            "--redis".into(),
            redis_url.unwrap_or(&self.redis_url).to_string(),
            "--redis-key-prefix".into(),
            self.key_prefix.clone(),
            "--database".into(),
            mysql_url,
            "--migrate".into(),
        ];
        if self.cluster {
            args.push("--redis-cluster".into());
        }
        args
    }
}

impl Drop for ScaleOut {
    fn drop(&mut self) {
        run_mariadb(&format!("DROP DATABASE IF EXISTS {}", self.database));
        delete_redis_keys("127.0.0.1", 6379, &self.key_prefix);
    }
}

/// Runs SQL in `database` with the `mariadb` client (as root, on the
/// machine's MariaDB); the output rows, tab-separated, without headers.
pub async fn mariadb(database: &str, sql: &str) -> String {
    let output = Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-P3306", "-N", "-B", database, "-e", sql])
        .output()
        .await
        .expect("the mariadb client runs");
    assert!(output.status.success(), "mariadb: {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn run_mariadb(sql: &str) {
    let status = std::process::Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-P3306", "-e", sql])
        .status()
        .expect("the mariadb client runs");
    assert!(status.success(), "mariadb failed: {sql}");
}

/// Deletes every key under `prefix` (best effort: used in cleanup).
pub fn delete_redis_keys(host: &str, port: u16, prefix: &str) {
    let port = port.to_string();
    let script =
        "for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0";
    let pattern = format!("{prefix}*");
    let _ = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", &port, "EVAL", script, "0", &pattern])
        .stdout(Stdio::null())
        .status();
}

/// How to start a `next-chat-server` beyond its flags.
#[derive(Default, Clone)]
pub struct ServerOptions {
    pub args: Vec<String>,
    /// Environment variables on top of this process's (`NEXT_CHAT_*` settings).
    pub env: Vec<(String, String)>,
    /// The working directory; a temporary directory of the server's own when
    /// `None`.
    pub current_dir: Option<PathBuf>,
}

/// A running `next-chat-server`.
pub struct TestServer {
    /// `http://127.0.0.1:PORT/next-chat` (`https://` over TLS), what clients connect to.
    pub url: String,
    /// `http://127.0.0.1:PORT` (`https://` over TLS).
    pub base_url: String,
    pub port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    current_dir: Option<PathBuf>,
    child: Option<Child>,
    /// Holds the SQLite file (embedded mode) for the server's whole life, restarts included.
    dir: tempfile::TempDir,
}

impl TestServer {
    /// A server in embedded mode with a fresh SQLite file.
    pub async fn embedded() -> TestServer {
        TestServer::start(Vec::new()).await
    }

    /// `n` servers with the same flags (say `ScaleOut::args`: instances of
    /// one deployment), started one after another.
    pub async fn start_instances(args: &[String], n: usize) -> Vec<TestServer> {
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            servers.push(TestServer::start(args.to_vec()).await);
        }
        servers
    }

    /// A server with extra flags. Unless the flags name a `--database`, it gets
    /// a fresh SQLite file of its own.
    pub async fn start(args: Vec<String>) -> TestServer {
        TestServer::start_with(ServerOptions { args, ..ServerOptions::default() }).await
    }

    /// A server with extra flags and environment. Unless the flags name a
    /// `--database` or the environment a `NEXT_CHAT_DATABASE`, it gets a fresh
    /// SQLite file of its own.
    pub async fn start_with(options: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ServerOptions { mut args, env, current_dir } = options;
        let has_database = args.iter().any(|a| a == "--database" || a.starts_with("--database="))
            || env.iter().any(|(name, _)| name == "NEXT_CHAT_DATABASE");
        if !has_database {
            let db = dir.path().join("next-chat.db");
            args.extend(["--database".to_string(), format!("sqlite://{}", db.display())]);
        }
        let mut server = TestServer {
            url: String::new(),
            base_url: String::new(),
            port: 0,
            args,
            env,
            current_dir,
            child: None,
            dir,
        };
        server.spawn("127.0.0.1:0").await;
        server
    }

    async fn spawn(&mut self, listen: &str) {
        let mut child = Command::new(binary("next-chat-server"))
            .args(&self.args)
            .args(["--listen", listen])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.current_dir.as_deref().unwrap_or(self.dir.path()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("next-chat-server starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.strip_prefix("listening on ") {
                    return Some(address.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("next-chat-server {:?} did not start listening", self.args));
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.port = address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        // `http://ADDR`, or `https://ADDR` when the server serves TLS.
        self.base_url = address;
        self.url = format!("{}/next-chat", self.base_url);
        self.child = Some(child);
    }

    /// `ws://127.0.0.1:PORT/next-chat` (`wss://` over TLS).
    pub fn ws_url(&self) -> String {
        self.url.replacen("http", "ws", 1)
    }

    /// One scrape of this server's `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        scrape_metrics(&self.base_url).await
    }

    /// A chat client connected to this server as `user`.
    pub async fn connect(&self, user: &str) -> (Client, Events) {
        connect(&self.url, user).await
    }

    /// The working directory the server runs in.
    pub fn dir(&self) -> &Path {
        self.current_dir.as_deref().unwrap_or(self.dir.path())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Kilobytes of the server's resident memory, while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    /// SIGTERM, then waits (at most 20 s) for the process to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(status) => status.expect("wait for next-chat-server"),
            Err(_) => {
                let _ = child.kill().await;
                panic!("next-chat-server did not exit within 20 s of SIGTERM");
            }
        }
    }

    /// SIGKILL: the process dies without any shutdown.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops the server (SIGTERM) and starts it again on the same port with the
    /// same storage.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.start_again().await;
    }

    /// Starts a stopped or killed server again on the same port.
    pub async fn start_again(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        self.spawn(&listen).await;
    }
}
