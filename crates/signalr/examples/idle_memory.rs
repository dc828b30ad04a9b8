//! Measures the server's resident memory per idle WebSocket connection.
//!
//! `cargo run --release -p next-chat-signalr --example idle_memory [N]` starts a
//! server (an empty hub) in a child process on 127.0.0.1, opens N (default 2000)
//! WebSocket connections that complete the JSON handshake and then stay idle, and
//! prints the child's RSS growth divided by N.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use next_chat_signalr::Value;
use next_chat_signalr::server::{
    Connection, Hub, HubConfig, HubServer, Identity, Invoked, Refused,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct IdleHub;

impl Hub for IdleHub {
    type Session = Connection;

    async fn authenticate(&self, token: &str) -> Result<Identity, Refused> {
        Ok(token.to_owned().into())
    }

    async fn connected(&self, connection: Connection) -> Result<Connection, String> {
        Ok(connection)
    }

    async fn invoke(&self, _: &Connection, _: &str, _: Vec<Value>) -> Invoked {
        Invoked::Done(Ok(None))
    }

    async fn disconnected(&self, _: Connection) {}
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn serve() {
    let server = HubServer::new(Arc::new(IdleHub), HubConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().expect("address"));
    axum::serve(listener, server.router("/hub")).await.expect("serve");
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("serve") {
        serve().await;
        return;
    }
    let count: usize = first.and_then(|n| n.parse().ok()).unwrap_or(2000);
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server");
    let pid = child.id().expect("child pid");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines.next_line().await.expect("read").expect("the server address");

    // Warm up (first connection allocations, runtime threads), then measure.
    let mut sockets = Vec::with_capacity(count + 10);
    for _ in 0..10 {
        sockets.push(open(&addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    for _ in 0..count {
        sockets.push(open(&addr).await);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(pid);
    println!(
        "{count} idle WebSocket connections: server RSS {before} KiB -> {after} KiB, {:.1} KiB per connection",
        (after.saturating_sub(before)) as f64 / count as f64
    );
    drop(sockets);
    let _ = child.kill().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: &str) -> Ws {
    let mut request = format!("ws://{addr}/hub").into_client_request().expect("request");
    request.headers_mut().insert("Authorization", "idle".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
    ws.send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}")).await.expect("handshake");
    let _ = ws.next().await;
    ws
}
