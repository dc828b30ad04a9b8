//! Behaviour that a well-behaved server never shows, against a scripted fake:
//! the client pings when idle, takes a silent server for dead, times calls out,
//! reports a refused handshake and the server's Close message, and goes on
//! from the history when a server refuses `GetMessagesAfter` while catching up.

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

/// A message record as the server writes it.
fn message_json(id: &str) -> String {
    format!(
        "{{\"id\":\"{id}\",\"authorId\":\"bob\",\"groupId\":\"g\",\
         \"sendTime\":\"2026-11-28T06:17:54.123Z\",\"text\":\"m{id}\"}}"
    )
}

fn invocation_id(record: &str) -> String {
    let start = record.find("\"invocationId\":\"").expect("a call has an id") + 16;
    record[start..].split('"').next().expect("the id ends").to_string()
}

/// A server from before `GetMessagesAfter`: the first connection joins, gets
/// message 1-0 and is dropped; the second rejoins and gets a history that
/// does not reach back to 1-0, and catching up is refused.
async fn server_without_get_messages_after() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let port = listener.local_addr().expect("has an address").port();
    tokio::spawn(async move {
        for connection in 0..2 {
            let (stream, _) = listener.accept().await.expect("accepts");
            let mut socket = tokio_tungstenite::accept_async(stream).await.expect("upgrades");
            let Some(Ok(_handshake_request)) = socket.next().await else { return };
            socket.send(WsMessage::text("{}\u{1e}")).await.expect("answers the handshake");
            let mut hang_up = false;
            while let Some(Ok(frame)) = socket.next().await {
                let WsMessage::Text(text) = frame else { continue };
                for record in text.split('\u{1e}').filter(|r| r.contains("\"type\":1")) {
                    let id = invocation_id(record);
                    let replies = if record.contains("\"target\":\"JoinGroup\"") {
                        let history = if connection == 0 {
                            String::new()
                        } else {
                            format!("{},{}", message_json("5-0"), message_json("6-0"))
                        };
                        vec![
                            format!(
                                "{{\"type\":1,\"target\":\"OnHistory\",\"arguments\":[[{history}]]}}"
                            ),
                            format!("{{\"type\":3,\"invocationId\":\"{id}\",\"result\":0}}"),
                        ]
                    } else {
                        let error = "unknown hub method 'GetMessagesAfter'";
                        vec![format!(
                            "{{\"type\":3,\"invocationId\":\"{id}\",\"error\":\"{error}\"}}"
                        )]
                    };
                    for reply in replies {
                        socket.send(WsMessage::text(reply + "\u{1e}")).await.expect("sends");
                    }
                    if connection == 0 {
                        let live = format!(
                            "{{\"type\":1,\"target\":\"OnMessage\",\"arguments\":[{}]}}\u{1e}",
                            message_json("1-0")
                        );
                        socket.send(WsMessage::text(live)).await.expect("sends");
                        hang_up = true;
                    }
                }
                if hang_up {
                    // Gone, as a server that died: the socket drops.
                    break;
                }
            }
        }
    });
    format!("ws://127.0.0.1:{port}/next-chat")
}

#[tokio::test]
async fn a_refused_catch_up_goes_on_from_the_history_and_says_it_is_incomplete() {
    let url = server_without_get_messages_after().await;
    let mut options = options(&url);
    options.reconnect = Some(next_chat_client::ReconnectPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_attempts: Some(20),
    });
    let (client, mut events) = Client::connect(options).await.expect("connects");
    client.join_group("g").await.expect("joins");
    assert!(matches!(next_event(&mut events).await, Event::History { .. }));
    let message = |event: Event| match event {
        Event::Message(message) => message.id,
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(message(next_event(&mut events).await), "1-0");
    assert!(matches!(next_event(&mut events).await, Event::Disconnected { .. }));
    assert_eq!(message(next_event(&mut events).await), "5-0");
    assert_eq!(message(next_event(&mut events).await), "6-0");
    assert_eq!(
        next_event(&mut events).await,
        Event::CaughtUp { group: "g".into(), missed: 2, complete: false }
    );
    assert_eq!(next_event(&mut events).await, Event::Reconnected);
}
