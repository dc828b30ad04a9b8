//! A `redis-server` of one test's own, on a free port and without persistence,
//! for tests that stop and restart Redis, squeeze its memory or replicate it:
//! the machine's shared Redis is never touched. Restarting it on the same port
//! loses every key, as a Redis without persistence does.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long `redis-server` may take to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub port: u16,
    /// More `redis-server` flags, given again on every start.
    args: Vec<String>,
    child: Option<Child>,
    /// Its working directory, where a replica's full sync writes its RDB.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// The same with more flags, e.g. `["--maxmemory-policy", "noeviction"]`
    /// or `["--replicaof", "127.0.0.1", "PORT"]`.
    pub async fn start_with(args: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: crate::free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            dir: tempfile::tempdir().expect("a directory for redis-server"),
        };
        server.start_again().await;
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then waits for the process to be gone: every client sees its
    /// connection reset and new connections refused.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server on port {} is already running", self.port);
        let dir = self.dir.path().to_str().expect("a UTF-8 path");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", dir])
            .args(&self.args)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is on PATH");
        self.child = Some(child);
        let port = self.port;
        let what = format!("redis-server on port {port} answers");
        crate::eventually(START_TIMEOUT, &what, || answers_ping(port)).await;
    }
}

async fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await;
    matches!(read, Ok(Ok(_))) && &reply == b"+PONG\r\n"
}
