//! Raw-socket helpers for the tests that must speak bytes the client library
//! would never send: bad input, plain HTTP endpoints.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);
pub const RS: char = '\u{1e}';

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A plain HTTP/1.1 request; returns (status, body).
pub async fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A WebSocket to the hub without negotiation, as `user`.
pub async fn websocket(ws_url: &str, user: &str) -> Socket {
    let mut request = ws_url.into_client_request().expect("a ws url");
    request.headers_mut().insert("Authorization", user.parse().expect("header value"));
    let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    socket
}

/// The next text or binary frame's payload; None when the socket closed.
pub async fn next_data(socket: &mut Socket) -> Option<Vec<u8>> {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(Frame::Text(text))) => return Some(text.as_bytes().to_vec()),
            Some(Ok(Frame::Binary(bytes))) => return Some(bytes.to_vec()),
            Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends a JSON-protocol text frame.
pub async fn send_text(socket: &mut Socket, text: &str) {
    socket.send(Frame::text(text.to_string())).await.expect("send text frame");
}

/// Opens a JSON hub connection and completes the handshake.
pub async fn json_hub(ws_url: &str, user: &str) -> Socket {
    let mut socket = websocket(ws_url, user).await;
    send_text(&mut socket, &format!("{{\"protocol\":\"json\",\"version\":1}}{RS}")).await;
    let reply = next_data(&mut socket).await.expect("handshake reply");
    assert_eq!(String::from_utf8_lossy(&reply), format!("{{}}{RS}"));
    socket
}

/// Reads JSON records until one satisfies `pick`; pings are skipped.
pub async fn json_until(
    socket: &mut Socket,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let data = next_data(socket).await.expect("the connection stays open");
        for record in String::from_utf8_lossy(&data).split(RS).filter(|r| !r.is_empty()) {
            let value: serde_json::Value = serde_json::from_str(record).expect("server sends JSON");
            if pick(&value) {
                return value;
            }
        }
    }
}

/// Invokes a method over a raw JSON connection and returns its completion.
pub async fn json_invoke(
    socket: &mut Socket,
    id: &str,
    target: &str,
    args: serde_json::Value,
) -> serde_json::Value {
    let invocation =
        serde_json::json!({"type": 1, "invocationId": id, "target": target, "arguments": args});
    send_text(socket, &format!("{invocation}{RS}")).await;
    json_until(socket, |v| v["type"] == 3 && v["invocationId"] == id).await
}

/// Reads until the server's Close message and returns it; then the socket must close.
pub async fn expect_close(socket: &mut Socket) -> serde_json::Value {
    let close = json_until(socket, |v| v["type"] == 7).await;
    assert!(next_data(socket).await.is_none(), "the socket closes after the Close message");
    close
}
