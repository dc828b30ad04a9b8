//! Helpers shared by the client's end-to-end tests: connecting, and waiting
//! for events with a timeout instead of sleeping.

#![allow(dead_code)]

use std::time::Duration;

use next_chat_client::{Client, ClientOptions, Event, Events, Message, Protocol};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn options(url: &str, user: &str, protocol: Protocol) -> ClientOptions {
    let mut options = ClientOptions::new(url, user);
    options.protocol = protocol;
    options
}

pub async fn connect(url: &str, user: &str) -> (Client, Events) {
    next_chat_testkit::connect(url, user).await
}

/// The next event, failing the test if none comes within `WAIT`.
pub async fn next_event(events: &mut Events) -> Event {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

pub async fn next_message(events: &mut Events) -> Message {
    match next_event(events).await {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

pub async fn next_history(events: &mut Events) -> (String, Vec<Message>) {
    match next_event(events).await {
        Event::History { group, messages } => (group, messages),
        other => panic!("expected history, got {other:?}"),
    }
}

pub fn texts(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}
