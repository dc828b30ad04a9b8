//! The hub protocol's messages and the choice between its two encodings.
//!
//! [`HubMessage`] is every message of the SignalR hub protocol (HubProtocol.md),
//! independent of encoding. [`Protocol`] names an encoding (`json` or
//! `messagepack`) and encodes one whole record; [`Decoder`] turns arbitrary chunks of
//! a byte stream back into messages. Both the server and a client use this module.

use bytes::Bytes;

use crate::value::Value;
use crate::{json, msgpack};

/// Message type numbers of the hub protocol.
pub(crate) mod message_type {
    pub const INVOCATION: i64 = 1;
    pub const STREAM_ITEM: i64 = 2;
    pub const COMPLETION: i64 = 3;
    pub const STREAM_INVOCATION: i64 = 4;
    pub const CANCEL_INVOCATION: i64 = 5;
    pub const PING: i64 = 6;
    pub const CLOSE: i64 = 7;
    pub const ACK: i64 = 8;
    pub const SEQUENCE: i64 = 9;
}

/// One hub protocol message. Headers are accepted on input and never written.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// A call of `target`. Without an `invocation_id` no completion is expected.
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Value>,
        stream_ids: Vec<String>,
    },
    StreamItem {
        invocation_id: String,
        item: Value,
    },
    Completion {
        invocation_id: String,
        outcome: Outcome,
    },
    StreamInvocation {
        invocation_id: String,
        target: String,
        arguments: Vec<Value>,
        stream_ids: Vec<String>,
    },
    CancelInvocation {
        invocation_id: String,
    },
    Ping,
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
    /// Stateful reconnect: the peer has received everything up to `sequence_id`.
    Ack {
        sequence_id: i64,
    },
    /// Stateful reconnect: the next message carries `sequence_id`.
    Sequence {
        sequence_id: i64,
    },
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Completed with no result (a `void` method).
    Void,
    /// Completed with a result (which may be `Value::Null`).
    Result(Value),
    /// Failed; the text is for a person.
    Error(String),
}

/// A hub protocol encoding, chosen by the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Json,
    MessagePack,
}

impl Protocol {
    /// Both protocols, in [`Protocol::slot`] order.
    pub const ALL: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

    /// The handshake name: `json` or `messagepack`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    /// The protocol with this handshake name (exact, as ASP.NET compares it).
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "json" => Some(Protocol::Json),
            "messagepack" => Some(Protocol::MessagePack),
            _ => None,
        }
    }

    /// Whether records travel as binary (WebSocket binary frames; SSE impossible).
    pub fn is_binary(self) -> bool {
        matches!(self, Protocol::MessagePack)
    }

    /// A dense index (0 json, 1 messagepack) for caching one encoding per protocol.
    pub fn slot(self) -> usize {
        match self {
            Protocol::Json => 0,
            Protocol::MessagePack => 1,
        }
    }

    /// The highest hub protocol version this server speaks for this encoding.
    pub fn version(self) -> i64 {
        2
    }

    /// One whole record: JSON followed by 0x1e, or a varint length then MessagePack.
    pub fn encode(self, message: &HubMessage) -> Bytes {
        match self {
            Protocol::Json => json::encode(message),
            Protocol::MessagePack => msgpack::encode(message),
        }
    }

    /// A fresh incremental decoder that refuses records over `max_message_size`.
    pub fn decoder(self, max_message_size: usize) -> Decoder {
        match self {
            Protocol::Json => Decoder::Json(json::JsonDecoder::new(max_message_size)),
            Protocol::MessagePack => {
                Decoder::MessagePack(msgpack::MessagePackDecoder::new(max_message_size))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(quote_untrusted("json"), "json");
        assert_eq!(
            quote_untrusted("json\n2026-12-02 WARN forged\u{1b}[31m\"x\""),
            "json\\n2026-12-02 WARN forged\\u{1b}[31m\\\"x\\\""
        );
        let long = "a".repeat(QUOTED_CHARS + 5);
        assert_eq!(
            quote_untrusted(&long),
            format!("{}…(5 more characters)", "a".repeat(QUOTED_CHARS))
        );
        assert!(!quote_untrusted("a\r\nb").contains(['\r', '\n']));
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes from a peer are not a valid hub message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("malformed MessagePack: {0}")]
    MalformedMessagePack(String),
    #[error("MessagePack record truncated: {0}")]
    Truncated(String),
    #[error("unknown hub message type {0}")]
    UnknownMessageType(i64),
    #[error("invalid {message} message: {reason}")]
    InvalidMessage { message: &'static str, reason: String },
    #[error(
        "message holds more than {limit} values (one per {BYTES_PER_VALUE} bytes of the message size limit)"
    )]
    TooManyValues { limit: usize },
}

/// How many characters of a client's text an error or log line quotes.
pub const QUOTED_CHARS: usize = 64;

/// Client-supplied text made safe to quote in a log line or an error: control
/// characters (newlines included) and quotes escaped as Rust writes them
/// (`\n`, `\u{1b}`), and cut to [`QUOTED_CHARS`] characters, so a client can
/// neither forge log lines nor make ours long.
pub fn quote_untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(QUOTED_CHARS) + 8);
    let mut chars = text.chars();
    for c in chars.by_ref().take(QUOTED_CHARS) {
        out.extend(c.escape_debug());
    }
    let rest = chars.count();
    if rest > 0 {
        out.push_str(&format!("…({rest} more characters)"));
    }
    out
}

/// A decoded value costs far more memory than its encoding (a one-byte MessagePack
/// integer becomes a 32-byte [`Value`]), so a record may hold at most one value per
/// this many bytes of the message size limit: whatever it holds, a record's decoded
/// tree stays within a small multiple of that limit.
pub const BYTES_PER_VALUE: usize = 8;

/// The most values a record may hold under `max_message_size` (see [`BYTES_PER_VALUE`]).
pub fn max_values(max_message_size: usize) -> usize {
    (max_message_size / BYTES_PER_VALUE).max(64)
}

/// An incremental decoder for either protocol: push chunks as they arrive, then take
/// whole messages. A record may span chunks and a chunk may hold several records.
#[derive(Debug)]
pub enum Decoder {
    Json(json::JsonDecoder),
    MessagePack(msgpack::MessagePackDecoder),
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        match self {
            Decoder::Json(d) => d.push(chunk),
            Decoder::MessagePack(d) => d.push(chunk),
        }
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. After an error
    /// the stream is unusable (record boundaries are lost or the peer is broken).
    pub fn next_message(&mut self) -> Result<Option<HubMessage>, ProtocolError> {
        match self {
            Decoder::Json(d) => d.next_message(),
            Decoder::MessagePack(d) => d.next_message(),
        }
    }

    /// Bytes received but not yet decoded (the start of an incomplete record).
    pub fn buffered(&self) -> usize {
        match self {
            Decoder::Json(d) => d.buffered(),
            Decoder::MessagePack(d) => d.buffered(),
        }
    }
}

/// A byte buffer for incremental decoders: appends at the end, consumes from the
/// front without shifting on every record, and gives memory back when it drains.
///
/// Consumed bytes are dropped (the unread tail moved to the front) on the next
/// push, so the buffer holds no more than the unread bytes plus one chunk: a peer
/// whose chunks each end part-way through a record cannot make it grow. A decoder
/// pushes only after decoding all it could, so the tail moved is the start of one
/// incomplete record, and each byte is moved at most once: linear in bytes received.
#[derive(Debug, Default)]
pub(crate) struct InputBuffer {
    bytes: Vec<u8>,
    start: usize,
}

/// An idle connection should not keep a large buffer alive.
const RETAINED_CAPACITY: usize = 4 * 1024;

impl InputBuffer {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
            if self.bytes.capacity() > RETAINED_CAPACITY
                && self.bytes.len() + chunk.len() < self.bytes.capacity() / 4
            {
                self.bytes.shrink_to(self.bytes.len() + chunk.len());
            }
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// Bytes allocated, for the tests of the bound.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    pub(crate) fn unread(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.bytes.len());
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
            if self.bytes.capacity() > RETAINED_CAPACITY {
                self.bytes = Vec::new();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }
}
