//! Abuse at the HTTP edge, against the real server binary: unfinished request
//! heads and idle keep-alive connections, too many TCP connections, too many
//! SignalR connections (in total, per user, per address), too many negotiated
//! connections never started, overlapping POSTs to one connection, and a long
//! poll with more queued than one response may carry. Each checks that the bound
//! holds with the documented status and text, and that everyone else is served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{RS, WAIT, http, json_hub, json_invoke};
use next_chat_testkit::{TestServer, eventually, eventually_ok, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn args(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().flat_map(|(flag, value)| [flag.to_string(), value.to_string()]).collect()
}

/// Raises this process's soft open-file limit to the hard one (the servers it
/// starts inherit it), so that thousands of sockets fit. Returns the soft limit.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct given here.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Waits until the server closes `stream` (end of stream or reset), at most
/// until `deadline`; returns whether it did.
async fn closed_by_server(stream: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar before the close is fine; keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// A WebSocket to the hub without negotiation, as `user`, from `source` (a
/// loopback address) when given; the HTTP refusal (status, body) when refused.
async fn try_websocket(
    server: &TestServer,
    user: &str,
    source: Option<&str>,
) -> Result<common::Socket, (u16, String)> {
    let mut request = server.ws_url().into_client_request().expect("a ws url");
    request.headers_mut().insert("Authorization", user.parse().expect("header value"));
    let socket = TcpSocket::new_v4().expect("a socket");
    if let Some(source) = source {
        socket.bind(format!("{source}:0").parse().expect("an address")).expect("bind the source");
    }
    let address: SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("an address");
    let stream = tokio::time::timeout(WAIT, socket.connect(address))
        .await
        .expect("connect in time")
        .expect("connect");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("an answer in time")
    {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            Err((response.status().as_u16(), body.to_string()))
        }
        Err(other) => panic!("the upgrade failed without an HTTP answer: {other}"),
    }
}

/// The refusal of a connection that must be refused.
fn refused(attempt: Result<common::Socket, (u16, String)>) -> (u16, String) {
    match attempt {
        Ok(_) => panic!("the connection was let in; it should have been refused"),
        Err(refusal) => refusal,
    }
}

/// Completes the JSON handshake on a socket that was let in.
async fn handshake(socket: &mut common::Socket) {
    common::send_text(socket, &format!("{{\"protocol\":\"json\",\"version\":1}}{RS}")).await;
    let reply = common::next_data(socket).await.expect("handshake reply");
    assert_eq!(String::from_utf8_lossy(&reply), format!("{{}}{RS}"));
}

/// `POST /next-chat/negotiate` as `user`: (status, body).
async fn negotiate(server: &TestServer, user: &str) -> (u16, String) {
    http(server.port, "POST", "/next-chat/negotiate?negotiateVersion=1", &[("Authorization", user)])
        .await
}

fn token(negotiate_body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(negotiate_body).expect("negotiate JSON");
    value["connectionToken"].as_str().expect("a connectionToken").to_owned()
}

/// One HTTP request with a body on a connection of its own: (status, body).
async fn request(port: u16, method: &str, path: &str, user: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = http::request(method, &url, &[("Authorization", user)], body.to_vec()).await;
    (response.status, response.body)
}

/// `GET path` on a raw socket: over the connection cap the server answers 503
/// and closes without reading the request, which an HTTP client reports as a
/// failed send rather than the answer.
async fn raw_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let (status, body) = read_response(&mut stream).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .expect("read the response");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .expect("a chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_request_heads_are_closed_within_the_header_timeout_while_others_are_served() {
    const SOCKETS: usize = 2000;
    let limit = raise_open_file_limit();
    assert!(limit > 2 * SOCKETS as u64 + 500, "open-file limit {limit} is too low for this test");
    // The per-address cap on unauthenticated connections would close most of
    // them at once (its own test is below): here they all get in, and wait.
    let server = TestServer::start(args(&[
        ("--http-header-timeout-secs", "2"),
        ("--max-unauthenticated-connections-per-ip", "5000"),
    ]))
    .await;

    let mut slow = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
        // A request head that never ends (no blank line).
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1").await.unwrap();
        slow.push(stream);
    }
    let started = Instant::now();

    // Everyone else is served meanwhile: plain HTTP and a hub connection.
    assert_eq!(http(server.port, "GET", "/healthz", &[]).await, (200, "ok\n".to_owned()));
    let mut socket = json_hub(&server.ws_url(), "normal-user").await;
    let joined = json_invoke(&mut socket, "1", "JoinGroup", serde_json::json!(["lobby"])).await;
    assert_eq!(joined["result"], 0, "{joined}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(2) + WAIT;
    let mut waits = JoinSet::new();
    for mut stream in slow {
        waits.spawn(async move { closed_by_server(&mut stream, deadline).await });
    }
    let mut still_open = 0;
    while let Some(closed) = waits.join_next().await {
        if !closed.expect("the wait task") {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "{still_open} of {SOCKETS} unfinished heads were still open");
    eprintln!("{SOCKETS} unfinished heads closed within {:?}", started.elapsed());

    // The hub connection outlived them all.
    let echo = json_invoke(&mut socket, "2", "ListGroups", serde_json::json!([])).await;
    assert!(echo["error"].is_null(), "{echo}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = TestServer::start(args(&[("--http-header-timeout-secs", "1")])).await;
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(read.is_ok(), "the kept-alive connection was still open after {WAIT:?}");
}

#[tokio::test]
async fn tcp_connections_over_the_cap_get_503_naming_the_setting() {
    let server = TestServer::start(args(&[
        ("--max-http-connections", "20"),
        ("--http-header-timeout-secs", "60"),
    ]))
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect"));
    }
    let (status, body) = raw_get(server.port, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_http_connections = 20"), "{body}");

    // A place freed is a place taken by the next client.
    held.pop();
    eventually_ok(WAIT, "served once a connection closed", || async {
        match http(server.port, "GET", "/healthz", &[]).await {
            (200, _) => Ok(()),
            refused => Err(refused),
        }
    })
    .await;
}

/// A TCP connection to the server from `source` (a loopback address).
async fn connect_from(port: u16, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(format!("{source}:0").parse().expect("an address")).expect("bind the source");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    tokio::time::timeout(WAIT, socket.connect(address)).await.expect("in time").expect("connect")
}

/// Reads one response with a `content-length` off a kept-alive connection.
async fn read_one_response(stream: &mut TcpStream) -> (u16, String) {
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response");
        response.extend_from_slice(&buffer[..n]);
        let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().expect("a length"));
        if response.len() >= split + 4 + length {
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
            return (status, String::from_utf8_lossy(&response[split + 4..]).to_string());
        }
    }
}

#[tokio::test]
async fn unauthenticated_connections_per_address_are_capped() {
    const CAP: usize = 64; // the default
    let server = TestServer::start(args(&[("--http-header-timeout-secs", "60")])).await;

    // A connection that authenticated (a negotiate, kept alive) no longer counts.
    let mut signed_in = connect_from(server.port, "127.0.0.1").await;
    signed_in
        .write_all(
            b"POST /next-chat/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\n\
              Authorization: ann\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut signed_in).await.0, 200);

    // One address holds the cap in half-sent heads: all of them are kept...
    let mut held = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        let mut stream = connect_from(server.port, "127.0.0.1").await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(stream);
    }
    // ...and the next one from it is closed at once, unanswered (the server
    // accepts in order, so it has counted the others by then).
    let mut over = connect_from(server.port, "127.0.0.1").await;
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(WAIT, over.read(&mut buffer)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection over the cap was answered: {read:?}");
    for stream in &held {
        assert!(!has_answer(stream).await, "a connection within the cap was closed or answered");
    }

    // Another address is served meanwhile, and the refusal is counted.
    let mut other = connect_from(server.port, "127.0.0.2").await;
    other.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (status, metrics) = read_one_response(&mut other).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("nextchat_unauthenticated_connections_refused_total 1\n"),
        "{metrics}"
    );

    // The authenticated connection goes on working: it was never counted.
    signed_in.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_one_response(&mut signed_in).await, (200, "ok\n".to_owned()));

    // A place freed is a place for the address's next connection.
    drop(held.pop());
    eventually(WAIT, "served again after a connection of its went away", || async {
        let mut stream = connect_from(server.port, "127.0.0.1").await;
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // Closed at once while the address is still at the cap: writing may fail.
        let _ = stream.write_all(request).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
        response.starts_with(b"HTTP/1.1 200")
    })
    .await;
}

#[tokio::test]
async fn signalr_connections_are_capped_in_total_and_per_user() {
    let server =
        TestServer::start(args(&[("--max-connections", "4"), ("--max-connections-per-user", "2")]))
            .await;
    let mut ann = Vec::new();
    for _ in 0..2 {
        ann.push(try_websocket(&server, "ann", None).await.expect("ann's first two connect"));
    }
    let (status, body) = refused(try_websocket(&server, "ann", None).await);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_connections_per_user = 2"), "{body}");
    // Negotiate says the same, before a connection id is handed out.
    let (status, body) = negotiate(&server, "ann").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_connections_per_user = 2"), "{body}");

    // Others still connect, up to the total.
    let mut bob = try_websocket(&server, "bob", None).await.expect("bob connects");
    handshake(&mut bob).await;
    let _cy = try_websocket(&server, "cy", None).await.expect("cy connects");
    let (status, body) = refused(try_websocket(&server, "dee", None).await);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_connections = 4"), "{body}");

    // A closed connection gives its place back.
    drop(ann.pop());
    let mut again =
        eventually_ok(WAIT, "ann let in again", || try_websocket(&server, "ann", None)).await;
    handshake(&mut again).await;
}

#[tokio::test]
async fn signalr_connections_per_address_are_capped_when_configured() {
    let server = TestServer::start(args(&[("--max-connections-per-ip", "2")])).await;
    let _a = try_websocket(&server, "ann", Some("127.0.0.1")).await.expect("first");
    let _b = try_websocket(&server, "bob", Some("127.0.0.1")).await.expect("second");
    let (status, body) = refused(try_websocket(&server, "cy", Some("127.0.0.1")).await);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_connections_per_ip = 2"), "{body}");
    // Another address is not affected.
    let mut other = try_websocket(&server, "cy", Some("127.0.0.2")).await.expect("other address");
    handshake(&mut other).await;
}

#[tokio::test]
async fn negotiated_connections_never_started_are_capped_in_total_and_per_user() {
    let server = TestServer::start(args(&[
        ("--max-pending-negotiations", "5"),
        ("--max-pending-negotiations-per-user", "3"),
    ]))
    .await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (status, body) = negotiate(&server, "ann").await;
        assert_eq!(status, 200, "{body}");
        tokens.push(token(&body));
    }
    let (status, body) = negotiate(&server, "ann").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_pending_negotiations_per_user = 3"), "{body}");
    for _ in 0..2 {
        assert_eq!(negotiate(&server, "bob").await.0, 200);
    }
    let (status, body) = negotiate(&server, "cy").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_pending_negotiations = 5"), "{body}");

    // Connections that skip negotiation are served meanwhile.
    let _direct = json_hub(&server.ws_url(), "cy").await;

    // Starting a negotiated connection frees its pending place.
    let url = format!("{}?id={}", server.ws_url(), tokens[0]);
    let mut started = common::websocket(&url, "ann").await;
    handshake(&mut started).await;
    assert_eq!(negotiate(&server, "cy").await.0, 200);
}

/// Negotiates a long-polling connection for `user` and sends its handshake.
async fn long_polling(server: &TestServer, user: &str) -> String {
    let (status, body) = negotiate(server, user).await;
    assert_eq!(status, 200, "{body}");
    let token = token(&body);
    let path = format!("/next-chat?id={token}");
    assert_eq!(request(server.port, "GET", &path, user, b"").await.0, 200, "the first poll");
    let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
    assert_eq!(request(server.port, "POST", &path, user, handshake.as_bytes()).await.0, 200);
    let (status, reply) = request(server.port, "GET", &path, user, b"").await;
    assert_eq!((status, reply), (200, format!("{{}}{RS}").into_bytes()));
    token
}

/// A POST as ann of `record` whose head and first three bytes are sent.
async fn start_post(port: u16, path: &str, record: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: ann\r\nContent-Length: {}\r\n\r\n",
        record.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&record.as_bytes()[..3]).await.unwrap();
    stream
}

/// Whether the server has answered (or closed) `stream` yet, without waiting.
async fn has_answer(stream: &TcpStream) -> bool {
    std::future::poll_fn(|cx| {
        let mut byte = [0u8; 1];
        let mut buffer = tokio::io::ReadBuf::new(&mut byte);
        std::task::Poll::Ready(stream.poll_peek(cx, &mut buffer).is_ready())
    })
    .await
}

#[tokio::test]
async fn a_second_post_while_one_is_in_flight_is_refused_with_409() {
    let server = TestServer::embedded().await;
    let token = long_polling(&server, "ann").await;
    let path = format!("/next-chat?id={token}");
    let record = format!("{{\"type\":6}}{RS}");

    // A POST whose body is still arriving.
    let mut first = start_post(server.port, &path, &record).await;

    // Once the server is reading it, another POST to the same connection is
    // refused. (It may get in first, before the server has read the first head.)
    let deadline = Instant::now() + WAIT;
    let refusal = loop {
        let (status, body) = request(server.port, "POST", &path, "ann", record.as_bytes()).await;
        if status == 409 {
            break String::from_utf8_lossy(&body).to_string();
        }
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        // The first POST's head may have reached the server while one of these
        // held the connection: then it was the one refused, and nothing is left
        // to overlap. Start it again.
        if has_answer(&first).await {
            let (status, body) = read_response(&mut first).await;
            assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
            first = start_post(server.port, &path, &record).await;
        }
        assert!(Instant::now() < deadline, "a POST during another was never refused");
        tokio::task::yield_now().await;
    };
    assert!(refusal.contains("another POST to this connection is still in progress"), "{refusal}");

    // The first completes normally, and POSTs one at a time go on working.
    first.write_all(&record.as_bytes()[3..]).await.unwrap();
    assert_eq!(read_response(&mut first).await.0, 200);
    assert_eq!(request(server.port, "POST", &path, "ann", record.as_bytes()).await.0, 200);
}

#[tokio::test]
async fn a_long_poll_response_stays_under_the_byte_cap() {
    const CAP: usize = 2500;
    const MESSAGES: usize = 20;
    let server =
        TestServer::start(args(&[("--long-poll-max-response-bytes", &CAP.to_string())])).await;
    let token = long_polling(&server, "ann").await;
    let path = format!("/next-chat?id={token}");
    let join = format!(
        "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"JoinGroup\",\"arguments\":[\"big\"]}}{RS}"
    );
    assert_eq!(request(server.port, "POST", &path, "ann", join.as_bytes()).await.0, 200);

    // ann's records: OnHistory, the join's completion, then the messages.
    let mut records: Vec<String> = Vec::new();
    let take = |records: &mut Vec<String>, status: u16, body: Vec<u8>| {
        assert_eq!(status, 200);
        let text = String::from_utf8(body).expect("JSON records");
        let count = text.split(RS).filter(|r| !r.is_empty()).count();
        assert!(
            text.len() <= CAP || count == 1,
            "a poll carried {} bytes in {count} records; the cap is {CAP}",
            text.len()
        );
        records.extend(text.split(RS).filter(|r| !r.is_empty()).map(str::to_owned));
    };
    while !records.iter().any(|r| r.contains("\"invocationId\":\"1\"")) {
        let (status, body) = request(server.port, "GET", &path, "ann", b"").await;
        take(&mut records, status, body);
    }

    let mut bob = json_hub(&server.ws_url(), "bob").await;
    assert_eq!(
        json_invoke(&mut bob, "1", "JoinGroup", serde_json::json!(["big"])).await["result"],
        0
    );
    let text = "x".repeat(1000);
    for i in 0..MESSAGES {
        let id = format!("m{i}");
        let done =
            json_invoke(&mut bob, &id, "SendMessage", serde_json::json!(["big", text])).await;
        assert!(done["error"].is_null(), "{done}");
    }
    // Every message is queued for ann by now (each send completed after its
    // delivery); she takes them a few per poll.
    let deadline = Instant::now() + WAIT;
    let mut polls = 0;
    while records.iter().filter(|r| r.contains("\"OnMessage\"")).count() < MESSAGES {
        assert!(Instant::now() < deadline, "ann did not get all {MESSAGES} messages");
        let (status, body) = request(server.port, "GET", &path, "ann", b"").await;
        take(&mut records, status, body);
        polls += 1;
    }
    // About 1.1 KB per message and 2500 bytes per response: two per poll.
    assert!(polls >= MESSAGES / 2, "{MESSAGES} messages came in only {polls} polls");
}
