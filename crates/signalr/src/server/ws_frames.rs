//! WebSocket messages and records, for both ends of a WebSocket connection:
//! a record as one message (text for JSON, binary for MessagePack), a read
//! error's text, and the limits of a write.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use tracing::warn;

use super::inbound::{Inbound, too_large};
use crate::protocol::Protocol;

pub(crate) type WsSink = SplitSink<WebSocket, Message>;
pub(crate) type WsStream = SplitStream<WebSocket>;

/// At most this many bytes of queued records are written with one flush.
pub(crate) const MAX_WRITE_BATCH_BYTES: usize = 16 * 1024;

/// How long a write may take once the connection is being torn down.
pub(crate) const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A record as a WebSocket message: binary for MessagePack, text for JSON.
pub(crate) fn message_for(protocol: Protocol, record: Bytes) -> Option<Message> {
    match protocol {
        Protocol::MessagePack => Some(Message::Binary(record)),
        Protocol::Json => match Utf8Bytes::try_from(record) {
            Ok(text) => Some(Message::Text(text)),
            Err(error) => {
                warn!(%error, "dropped a record that is not UTF-8 on a JSON connection");
                None
            }
        },
    }
}

/// The WebSocket close frame the writer ends with.
pub(crate) fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: Utf8Bytes::from_static(""),
    }))
}

/// A WebSocket message from the client as the session's input: `None` for
/// control frames, which are no sign of life at the hub level.
pub(crate) fn inbound_data(message: Message) -> Option<Inbound> {
    match message {
        Message::Text(text) => Some(Inbound::Data(Message::Text(text).into_data())),
        Message::Binary(data) => Some(Inbound::Data(data)),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

/// Whether a read failed because a frame or message was over the size limit.
pub(crate) fn is_too_large(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("too long") || text.contains("limit exceeded")
}

/// The text for a read error: oversized frames name the limit.
pub(crate) fn read_error(error: &axum::Error, limit: usize) -> String {
    if is_too_large(error) {
        too_large(None, limit)
    } else {
        format!("WebSocket read failed: {error}")
    }
}
