//! Raw-socket helpers for the tests that must speak bytes the client library
//! would never send (bad input), and plain HTTP requests to the endpoints.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);
pub const RS: char = '\u{1e}';

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A plain HTTP request to `127.0.0.1:port` (no body); returns (status, body).
pub async fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = next_chat_testkit::http::request(method, &url, headers, Vec::new()).await;
    (response.status, response.text())
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
