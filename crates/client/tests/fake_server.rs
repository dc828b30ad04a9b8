//! Behaviour that a well-behaved server never shows, against a scripted fake:
//! the client pings when idle, takes a silent server for dead, times calls out,
//! and reports a refused handshake and the server's Close message.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use next_chat_client::{Client, ClientError, ClientOptions, Event};
use support::next_event;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A one-connection WebSocket server: answers the handshake with `handshake`,
/// sends `then` right after, reports every later frame's text, and otherwise
/// stays silent until the client goes.
async fn fake_server(
    handshake: &'static str,
    then: Option<&'static str>,
) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let port = listener.local_addr().expect("has an address").port();
    let (frames, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        let mut socket = tokio_tungstenite::accept_async(stream).await.expect("upgrades");
        let Some(Ok(_handshake_request)) = socket.next().await else { return };
        socket.send(WsMessage::text(handshake)).await.expect("answers the handshake");
        if let Some(message) = then {
            socket.send(WsMessage::text(message)).await.expect("sends");
        }
        while let Some(Ok(frame)) = socket.next().await {
            if let WsMessage::Text(text) = frame {
                let _ = frames.send(text.to_string());
            }
        }
    });
    (format!("ws://127.0.0.1:{port}/next-chat"), received)
}

fn options(url: &str) -> ClientOptions {
    let mut options = ClientOptions::new(url, "ann");
    options.skip_negotiation = true;
    options
}

#[tokio::test]
async fn pings_when_idle_and_takes_a_silent_server_for_dead() {
    let (url, mut frames) = fake_server("{}\u{1e}", None).await;
    let mut options = options(&url);
    options.keep_alive_interval = Duration::from_millis(200);
    options.server_timeout = Duration::from_secs(1);
    let (_client, mut events) = Client::connect(options).await.expect("connects");

    let ping = tokio::time::timeout(Duration::from_secs(5), frames.recv()).await;
    assert_eq!(ping, Ok(Some("{\"type\":6}\u{1e}".to_string())), "a hub Ping when idle");

    match next_event(&mut events).await {
        Event::Closed { error: Some(error) } => {
            assert!(error.contains("sent nothing"), "says why: {error}")
        }
        other => panic!("expected Closed for a silent server, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_without_completion_times_out() {
    let (url, _frames) = fake_server("{}\u{1e}", None).await;
    let mut options = options(&url);
    options.call_timeout = Duration::from_millis(300);
    let (client, _events) = Client::connect(options).await.expect("connects");
    assert_eq!(
        client.list_groups().await,
        Err(ClientError::Timeout { method: "ListGroups", timeout: Duration::from_millis(300) })
    );
}

#[tokio::test]
async fn a_refused_handshake_is_an_error_with_the_servers_text() {
    let (url, _frames) = fake_server("{\"error\":\"no such protocol\"}\u{1e}", None).await;
    let result = Client::connect(options(&url)).await;
    assert_eq!(result.err(), Some(ClientError::Handshake("no such protocol".into())));
}

#[tokio::test]
async fn the_servers_close_message_ends_the_client_with_its_error() {
    let close = "{\"type\":7,\"error\":\"server shutting down\",\"allowReconnect\":false}\u{1e}";
    let (url, _frames) = fake_server("{}\u{1e}", Some(close)).await;
    let mut options = options(&url);
    // The server said not to reconnect, so even a reconnecting client stops.
    options.reconnect = Some(Default::default());
    let (_client, mut events) = Client::connect(options).await.expect("connects");
    assert_eq!(
        next_event(&mut events).await,
        Event::Closed { error: Some("server shutting down".into()) }
    );
}
