//! Test support: a tiny echo hub served on 127.0.0.1:0, a minimal HTTP/1.1 client
//! over raw TCP (negotiate, long polling, SSE), and WebSocket helpers.

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use next_chat_signalr::server::{
    Connection, Hub, HubConfig, HubServer, Identity, Invoked, Refused,
};
use next_chat_signalr::{HubMessage, Protocol, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long any test waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// Echoes, fails, or calls back; knows nothing of chat.
pub struct EchoHub {
    disconnected: mpsc::UnboundedSender<String>,
    /// Connection id and how it ended: `expired`, `overflowed`, `slow` or `other`.
    ends: mpsc::UnboundedSender<(String, &'static str)>,
    /// Open connections by id, so a test can send to one whatever its socket does.
    connections: std::sync::Mutex<std::collections::HashMap<String, Connection>>,
    /// Stateful reconnects that resumed a connection.
    pub resumes: std::sync::atomic::AtomicUsize,
}

impl EchoHub {
    /// The open connection with this id.
    pub fn connection(&self, id: &str) -> Option<Connection> {
        self.connections.lock().expect("not poisoned").get(id).cloned()
    }

    /// The ids of the open connections.
    pub fn connection_ids(&self) -> Vec<String> {
        self.connections.lock().expect("not poisoned").keys().cloned().collect()
    }
}

pub struct EchoSession {
    connection: Connection,
    /// `Hold` finishes once `Release` is invoked.
    gate: Arc<Notify>,
}

impl Hub for EchoHub {
    type Session = EchoSession;

    /// `USER~MS`: `USER`, whose credential expires in `MS` milliseconds;
    /// `challenged` is refused with a `WWW-Authenticate` challenge.
    async fn authenticate(&self, token: &str) -> Result<Identity, Refused> {
        if token == "challenged" {
            return Err(Refused {
                reason: "the token is no good".to_owned(),
                challenge: Some("Bearer error=\"invalid_token\"".to_owned()),
            });
        }
        if token.is_empty() || token == "invalid" {
            return Err(format!("invalid user '{token}'").into());
        }
        match token.split_once('~') {
            Some((user, ms)) => Ok(Identity {
                user: user.to_owned(),
                expires_at: Some(
                    std::time::SystemTime::now()
                        + std::time::Duration::from_millis(
                            ms.parse()
                                .map_err(|_| Refused::from(format!("bad expiry in '{token}'")))?,
                        ),
                ),
            }),
            None => Ok(token.to_owned().into()),
        }
    }

    async fn connected(&self, connection: Connection) -> Result<EchoSession, String> {
        self.connections
            .lock()
            .expect("not poisoned")
            .insert(connection.id().to_owned(), connection.clone());
        Ok(EchoSession { connection, gate: Arc::new(Notify::new()) })
    }

    async fn invoke(&self, session: &EchoSession, target: &str, arguments: Vec<Value>) -> Invoked {
        match target.to_ascii_lowercase().as_str() {
            "hold" => {
                let gate = Arc::clone(&session.gate);
                Invoked::Finishing(Box::pin(async move {
                    gate.notified().await;
                    Ok(Some(Value::Str("released".into())))
                }))
            }
            "release" => {
                session.gate.notify_one();
                Invoked::Done(Ok(None))
            }
            _ => echo(session, target, arguments).into(),
        }
    }

    fn resumed(&self, _session: &EchoSession) {
        self.resumes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn disconnected(&self, session: EchoSession) {
        let connection = &session.connection;
        self.connections.lock().expect("not poisoned").remove(connection.id());
        let end = if connection.closed_as_reconnect_expired() {
            "expired"
        } else if connection.closed_as_reconnect_overflow() {
            "overflowed"
        } else if connection.closed_as_slow_consumer() {
            "slow"
        } else {
            "other"
        };
        let _ = self.ends.send((connection.id().to_owned(), end));
        let _ = self.disconnected.send(connection.id().to_owned());
    }
}

fn echo(
    session: &EchoSession,
    target: &str,
    arguments: Vec<Value>,
) -> Result<Option<Value>, String> {
    match target.to_ascii_lowercase().as_str() {
        "echo" => Ok(arguments.into_iter().next()),
        "void" => Ok(None),
        "fail" => Err("failed on purpose".to_owned()),
        "whoami" => Ok(Some(Value::Str(session.connection.user().to_owned()))),
        "notify" => {
            session.connection.send_invocation("Notified", arguments).map_err(|e| e.to_string())?;
            Ok(None)
        }
        _ => Err(format!("unknown method '{target}'")),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: HubServer<EchoHub>,
    pub hub: Arc<EchoHub>,
    pub ends: mpsc::UnboundedReceiver<(String, &'static str)>,
    /// Connection ids as the hub's `disconnected` sees them.
    pub disconnected: mpsc::UnboundedReceiver<String>,
}

pub const PATH: &str = "/hub";

pub async fn spawn(config: HubConfig) -> TestServer {
    let (tx, disconnected) = mpsc::unbounded_channel();
    let (ends_tx, ends) = mpsc::unbounded_channel();
    let hub = Arc::new(EchoHub {
        disconnected: tx,
        ends: ends_tx,
        connections: Default::default(),
        resumes: Default::default(),
    });
    let server = HubServer::new(Arc::clone(&hub), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let app = server.router(PATH);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer { addr, server, hub, ends, disconnected }
}

impl TestServer {
    /// The next connection to end, and how (see [`EchoHub`]'s `ends`).
    pub async fn next_end(&mut self) -> (String, &'static str) {
        tokio::time::timeout(WAIT, self.ends.recv())
            .await
            .expect("a connection ended in time")
            .expect("hub alive")
    }

    pub async fn next_disconnected(&mut self) -> String {
        tokio::time::timeout(WAIT, self.disconnected.recv())
            .await
            .expect("disconnected in time")
            .expect("hub alive")
    }
}

// ---------- HTTP over raw TCP ----------

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut all_headers = headers.to_vec();
    all_headers.push(("Connection", "close"));
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&request_bytes(method, target, &all_headers, body))
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let (status, headers, head_len) = parse_head(&raw).expect("a complete response head");
    let rest = &raw[head_len..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut decoder = Dechunker::default();
        decoder.push(rest);
        decoder.take()
    } else {
        rest.to_vec()
    };
    HttpResponse { status, headers, body }
}

type Headers = Vec<(String, String)>;

/// Status, headers and the length of the head, once the head is complete.
fn parse_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some((status, headers, end))
}

/// Incremental `Transfer-Encoding: chunked` decoder.
#[derive(Default)]
struct Dechunker {
    raw: Vec<u8>,
    out: Vec<u8>,
    /// The last (empty) chunk arrived: the body is complete.
    ended: bool,
}

impl Dechunker {
    fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let Ok(size) =
                usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            else {
                return;
            };
            if size == 0 {
                self.ended = true;
                return;
            }
            let needed = line_end + 2 + size + 2;
            if self.raw.len() < needed {
                return;
            }
            self.out.extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..needed);
        }
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

pub fn auth(user: &str) -> String {
    format!("Bearer {user}")
}

/// POST {PATH}/negotiate; returns (status, parsed JSON body).
pub async fn negotiate(
    addr: SocketAddr,
    query: &str,
    user: Option<&str>,
) -> (u16, serde_json::Value) {
    let authorization = user.map(auth);
    let mut headers = Vec::new();
    if let Some(a) = &authorization {
        headers.push(("Authorization", a.as_str()));
    }
    let response = http(addr, "POST", &format!("{PATH}/negotiate{query}"), &headers, b"").await;
    let json = serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
    (response.status, json)
}

/// Negotiates version 1 as `user` and returns the connection token.
pub async fn negotiate_token(addr: SocketAddr, user: &str) -> String {
    let (status, body) = negotiate(addr, "?negotiateVersion=1", Some(user)).await;
    assert_eq!(status, 200);
    body["connectionToken"].as_str().expect("a connectionToken").to_owned()
}

/// An open SSE response being read.
pub struct SseStream {
    stream: TcpStream,
    dechunker: Dechunker,
    text: Vec<u8>,
    pub status: u16,
}

impl SseStream {
    pub async fn open(addr: SocketAddr, target: &str) -> SseStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&request_bytes("GET", target, &[("Accept", "text/event-stream")], b""))
            .await
            .expect("write request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (status, head_len) = loop {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("response head in time")
                .expect("read");
            assert!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&buf[..n]);
            if let Some((status, _, len)) = parse_head(&raw) {
                break (status, len);
            }
        };
        let mut sse =
            SseStream { stream, dechunker: Dechunker::default(), text: Vec::new(), status };
        sse.dechunker.push(&raw[head_len..]);
        sse.text.extend(sse.dechunker.take());
        sse
    }

    /// Reads until `text` holds `len` bytes or the stream ends.
    async fn fill(&mut self, predicate: impl Fn(&[u8]) -> bool) -> bool {
        let mut buf = [0u8; 4096];
        while !predicate(&self.text) {
            if self.dechunker.ended {
                return false;
            }
            let n = match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("no SSE data in time"),
            };
            if n == 0 {
                return false;
            }
            self.dechunker.push(&buf[..n]);
            self.text.extend(self.dechunker.take());
        }
        true
    }

    /// The raw bytes up to and including `marker` (e.g. the ":\r\n" preamble).
    pub async fn expect_prefix(&mut self, marker: &[u8]) {
        assert!(self.fill(|t| t.len() >= marker.len()).await, "stream ended early");
        assert_eq!(&self.text[..marker.len()], marker);
        self.text.drain(..marker.len());
    }

    /// The data of the next event, or `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Vec<u8>> {
        if !self.fill(|t| t.windows(4).any(|w| w == b"\r\n\r\n")).await {
            return None;
        }
        let end = self.text.windows(4).position(|w| w == b"\r\n\r\n")?;
        let event: Vec<u8> = self.text.drain(..end + 4).collect();
        let mut data = Vec::new();
        for line in event[..end].split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data: ") {
                data.extend_from_slice(rest);
            }
        }
        Some(data)
    }
}

// ---------- WebSockets ----------

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `{PATH}{query}` with an optional Authorization header;
/// `Err(status)` when the upgrade is refused.
pub async fn ws_connect(addr: SocketAddr, query: &str, user: Option<&str>) -> Result<Ws, u16> {
    let mut request =
        format!("ws://{addr}{PATH}{query}").into_client_request().expect("valid request");
    if let Some(user) = user {
        request.headers_mut().insert("Authorization", auth(user).parse().expect("valid header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("WebSocket connect failed: {other}"),
    }
}

/// The next data message's bytes, or `None` once the server closed the socket.
/// Fails on WebSocket ping frames: the server must send none.
pub async fn ws_next(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        let message =
            tokio::time::timeout(WAIT, ws.next()).await.expect("a WebSocket message in time");
        match message {
            Some(Ok(Message::Text(text))) => return Some(text.as_bytes().to_vec()),
            Some(Ok(Message::Binary(data))) => return Some(data.to_vec()),
            Some(Ok(Message::Ping(_))) => panic!("the server sent a WebSocket ping frame"),
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
        }
    }
}

pub async fn ws_send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send text");
}

pub async fn ws_send_binary(ws: &mut Ws, data: Vec<u8>) {
    ws.send(Message::binary(data)).await.expect("send binary");
}

/// Sends the JSON handshake and checks the `{}` answer.
pub async fn ws_json_handshake(ws: &mut Ws) {
    ws_send_text(ws, "{\"protocol\":\"json\",\"version\":1}\u{1e}").await;
    assert_eq!(ws_next(ws).await.as_deref(), Some(&b"{}\x1e"[..]));
}

/// Connects straight to the hub (skipNegotiation) as `user` and does the JSON
/// handshake.
pub async fn ws_json(addr: SocketAddr, user: &str) -> Ws {
    let mut ws = ws_connect(addr, "", Some(user)).await.expect("upgrade");
    ws_json_handshake(&mut ws).await;
    ws
}

/// Decodes every message in `bytes` with the crate's own decoder.
pub fn decode_all(protocol: Protocol, bytes: &[u8]) -> Vec<HubMessage> {
    let mut decoder = protocol.decoder(usize::MAX);
    decoder.push(bytes);
    let mut out = Vec::new();
    while let Some(message) = decoder.next_message().expect("valid records") {
        out.push(message);
    }
    out
}

/// A short-timer configuration for tests of keep-alive and timeouts.
pub fn quick_config() -> HubConfig {
    HubConfig {
        keep_alive_interval: Duration::from_millis(200),
        client_timeout: Duration::from_millis(600),
        handshake_timeout: Duration::from_millis(600),
        ..HubConfig::default()
    }
}
