//! The `json` hub protocol: records are UTF-8 JSON objects each followed by the
//! record separator 0x1e.
//!
//! Output is written field by field in the order ASP.NET Core's `JsonHubProtocol`
//! writes it (`type` first, camelCase, optional fields left out); input is read
//! leniently (unknown fields ignored, missing optional fields defaulted).

use bytes::Bytes;
use serde_json::Value as Json;

use crate::protocol::{HubMessage, InputBuffer, Outcome, ProtocolError, message_type};
use crate::value::{Value, base64_standard, format_rfc3339_millis};

/// Ends every JSON record (and the handshake, in both protocols).
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// Encodes one message as a whole record, separator included.
pub fn encode(message: &HubMessage) -> Bytes {
    let mut out = Vec::with_capacity(64);
    write_message(&mut out, message);
    out.push(RECORD_SEPARATOR);
    Bytes::from(out)
}

/// Decodes one record, given without its separator.
pub fn decode_record(record: &[u8]) -> Result<HubMessage, ProtocolError> {
    decode_record_within(record, usize::MAX)
}

/// Decodes one record holding at most `max_values` values (see
/// [`crate::protocol::BYTES_PER_VALUE`]).
pub fn decode_record_within(record: &[u8], max_values: usize) -> Result<HubMessage, ProtocolError> {
    let json: Json =
        serde_json::from_slice(record).map_err(|e| ProtocolError::MalformedJson(e.to_string()))?;
    if !within_values(&json, &mut max_values.saturating_add(1)) {
        return Err(ProtocolError::TooManyValues { limit: max_values });
    }
    let Json::Object(fields) = json else {
        return Err(ProtocolError::MalformedJson("a hub message must be a JSON object".into()));
    };
    let field = |name: &str| fields.get(name).filter(|v| !v.is_null());
    let kind = match fields.get("type") {
        Some(t) => t.as_i64().ok_or_else(|| ProtocolError::InvalidMessage {
            message: "hub",
            reason: "'type' must be an integer".into(),
        })?,
        None => {
            return Err(ProtocolError::InvalidMessage {
                message: "hub",
                reason: "missing 'type'".into(),
            });
        }
    };
    let required_str = |message: &'static str, name: &str| -> Result<String, ProtocolError> {
        match field(name) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(invalid(message, format!("'{name}' must be a string"))),
            None => Err(invalid(message, format!("missing '{name}'"))),
        }
    };
    let optional_str =
        |message: &'static str, name: &str| -> Result<Option<String>, ProtocolError> {
            match field(name) {
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(message, format!("'{name}' must be a string"))),
                None => Ok(None),
            }
        };
    let arguments = |message: &'static str| -> Result<Vec<Value>, ProtocolError> {
        match field("arguments") {
            Some(Json::Array(items)) => Ok(items.iter().map(from_json).collect()),
            Some(_) => Err(invalid(message, "'arguments' must be an array".into())),
            None => Ok(Vec::new()),
        }
    };
    let stream_ids = |message: &'static str| -> Result<Vec<String>, ProtocolError> {
        match field("streamIds") {
            Some(Json::Array(items)) => items
                .iter()
                .map(|id| {
                    id.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(message, "'streamIds' must hold strings".into()))
                })
                .collect(),
            Some(_) => Err(invalid(message, "'streamIds' must be an array".into())),
            None => Ok(Vec::new()),
        }
    };
    let sequence_id = |message: &'static str| -> Result<i64, ProtocolError> {
        field("sequenceId")
            .and_then(Json::as_i64)
            .ok_or_else(|| invalid(message, "'sequenceId' must be an integer".into()))
    };
    Ok(match kind {
        message_type::INVOCATION => HubMessage::Invocation {
            invocation_id: optional_str("Invocation", "invocationId")?,
            target: required_str("Invocation", "target")?,
            arguments: arguments("Invocation")?,
            stream_ids: stream_ids("Invocation")?,
        },
        message_type::STREAM_ITEM => HubMessage::StreamItem {
            invocation_id: required_str("StreamItem", "invocationId")?,
            item: fields.get("item").map(from_json).unwrap_or(Value::Null),
        },
        message_type::COMPLETION => {
            let invocation_id = required_str("Completion", "invocationId")?;
            let outcome = if let Some(error) = optional_str("Completion", "error")? {
                Outcome::Error(error)
            } else if let Some(result) = fields.get("result") {
                Outcome::Result(from_json(result))
            } else {
                Outcome::Void
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        message_type::STREAM_INVOCATION => HubMessage::StreamInvocation {
            invocation_id: required_str("StreamInvocation", "invocationId")?,
            target: required_str("StreamInvocation", "target")?,
            arguments: arguments("StreamInvocation")?,
            stream_ids: stream_ids("StreamInvocation")?,
        },
        message_type::CANCEL_INVOCATION => HubMessage::CancelInvocation {
            invocation_id: required_str("CancelInvocation", "invocationId")?,
        },
        message_type::PING => HubMessage::Ping,
        message_type::CLOSE => HubMessage::Close {
            error: optional_str("Close", "error")?,
            allow_reconnect: field("allowReconnect").and_then(Json::as_bool).unwrap_or(false),
        },
        message_type::ACK => HubMessage::Ack { sequence_id: sequence_id("Ack")? },
        message_type::SEQUENCE => HubMessage::Sequence { sequence_id: sequence_id("Sequence")? },
        other => return Err(ProtocolError::UnknownMessageType(other)),
    })
}

/// Whether `json` holds no more than `budget` values (the record itself included);
/// stops counting as soon as it is over.
fn within_values(json: &Json, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match json {
        Json::Array(items) => items.iter().all(|item| within_values(item, budget)),
        Json::Object(map) => map.values().all(|value| within_values(value, budget)),
        _ => true,
    }
}

fn invalid(message: &'static str, reason: String) -> ProtocolError {
    ProtocolError::InvalidMessage { message, reason }
}

/// Converts parsed JSON to a hub value. Strings stay strings (no date sniffing).
pub fn from_json(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        Json::Object(map) => {
            Value::Map(map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    }
}

/// Incremental JSON record splitter and decoder.
#[derive(Debug)]
pub struct JsonDecoder {
    input: InputBuffer,
    /// The largest record accepted, so a peer cannot make us buffer without bound.
    max_message_size: usize,
    /// Bytes of `input` already searched for a separator: each byte is searched
    /// once, however the records are split into chunks.
    scanned: usize,
    /// Bytes searched in all, for the test that the search is linear.
    #[cfg(test)]
    examined: usize,
}

impl JsonDecoder {
    pub fn new(max_message_size: usize) -> Self {
        Self {
            input: InputBuffer::default(),
            max_message_size,
            scanned: 0,
            #[cfg(test)]
            examined: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.input.push(chunk);
    }

    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// The next whole record's message; `Ok(None)` until a separator arrives.
    pub fn next_message(&mut self) -> Result<Option<HubMessage>, ProtocolError> {
        let unread = self.input.unread();
        let found = unread[self.scanned..].iter().position(|b| *b == RECORD_SEPARATOR);
        #[cfg(test)]
        {
            self.examined += found.map_or(unread.len() - self.scanned, |offset| offset + 1);
        }
        let Some(offset) = found else {
            self.scanned = unread.len();
            if unread.len() > self.max_message_size {
                return Err(ProtocolError::MessageTooLarge {
                    size: unread.len(),
                    limit: self.max_message_size,
                });
            }
            return Ok(None);
        };
        let end = self.scanned + offset;
        if end > self.max_message_size {
            return Err(ProtocolError::MessageTooLarge { size: end, limit: self.max_message_size });
        }
        let message = decode_record_within(
            &unread[..end],
            crate::protocol::max_values(self.max_message_size),
        );
        self.input.consume(end + 1);
        self.scanned = 0;
        message.map(Some)
    }
}

fn write_message(out: &mut Vec<u8>, message: &HubMessage) {
    let write_type = |out: &mut Vec<u8>, kind: i64| {
        out.extend_from_slice(b"{\"type\":");
        out.extend_from_slice(kind.to_string().as_bytes());
    };
    match message {
        HubMessage::Invocation { invocation_id, target, arguments, stream_ids } => {
            write_type(out, message_type::INVOCATION);
            if let Some(id) = invocation_id {
                write_field(out, "invocationId");
                write_str(out, id);
            }
            write_call(out, target, arguments, stream_ids);
        }
        HubMessage::StreamItem { invocation_id, item } => {
            write_type(out, message_type::STREAM_ITEM);
            write_field(out, "invocationId");
            write_str(out, invocation_id);
            write_field(out, "item");
            write_value(out, item);
        }
        HubMessage::Completion { invocation_id, outcome } => {
            write_type(out, message_type::COMPLETION);
            write_field(out, "invocationId");
            write_str(out, invocation_id);
            match outcome {
                Outcome::Void => {}
                Outcome::Result(value) => {
                    write_field(out, "result");
                    write_value(out, value);
                }
                Outcome::Error(error) => {
                    write_field(out, "error");
                    write_str(out, error);
                }
            }
        }
        HubMessage::StreamInvocation { invocation_id, target, arguments, stream_ids } => {
            write_type(out, message_type::STREAM_INVOCATION);
            write_field(out, "invocationId");
            write_str(out, invocation_id);
            write_call(out, target, arguments, stream_ids);
        }
        HubMessage::CancelInvocation { invocation_id } => {
            write_type(out, message_type::CANCEL_INVOCATION);
            write_field(out, "invocationId");
            write_str(out, invocation_id);
        }
        HubMessage::Ping => write_type(out, message_type::PING),
        HubMessage::Close { error, allow_reconnect } => {
            write_type(out, message_type::CLOSE);
            if let Some(error) = error {
                write_field(out, "error");
                write_str(out, error);
            }
            if *allow_reconnect {
                write_field(out, "allowReconnect");
                out.extend_from_slice(b"true");
            }
        }
        HubMessage::Ack { sequence_id } => {
            write_type(out, message_type::ACK);
            write_field(out, "sequenceId");
            out.extend_from_slice(sequence_id.to_string().as_bytes());
        }
        HubMessage::Sequence { sequence_id } => {
            write_type(out, message_type::SEQUENCE);
            write_field(out, "sequenceId");
            out.extend_from_slice(sequence_id.to_string().as_bytes());
        }
    }
    out.push(b'}');
}

fn write_call(out: &mut Vec<u8>, target: &str, arguments: &[Value], stream_ids: &[String]) {
    write_field(out, "target");
    write_str(out, target);
    write_field(out, "arguments");
    write_array(out, arguments.iter(), write_value);
    if !stream_ids.is_empty() {
        write_field(out, "streamIds");
        write_array(out, stream_ids.iter(), |out, id| write_str(out, id));
    }
}

/// Writes `,"name":` (every field but `type` follows another).
fn write_field(out: &mut Vec<u8>, name: &str) {
    out.push(b',');
    write_str(out, name);
    out.push(b':');
}

fn write_array<T>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// Writes one hub value as JSON.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Float(f) if f.is_finite() => out.extend_from_slice(format!("{f:?}").as_bytes()),
        // JSON has no NaN or infinity; System.Text.Json refuses them, we write null.
        Value::Float(_) => out.extend_from_slice(b"null"),
        Value::Str(s) => write_str(out, s),
        Value::Bin(bytes) => write_str(out, &base64_standard(bytes)),
        Value::Array(items) => write_array(out, items.iter(), write_value),
        Value::Map(entries) => {
            out.push(b'{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, value);
            }
            out.push(b'}');
        }
        Value::Timestamp(t) => write_str(out, &format_rfc3339_millis(*t)),
    }
}

/// Writes a JSON string. Every control character is escaped, so the record
/// separator 0x1e can never appear inside a record.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut clean_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = i + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn text(message: &HubMessage) -> String {
        String::from_utf8(encode(message).to_vec()).expect("JSON output is UTF-8")
    }

    #[test]
    fn writes_messages_as_aspnet_does() {
        let invocation = HubMessage::Invocation {
            invocation_id: None,
            target: "OnMessage".into(),
            arguments: vec![Value::Map(vec![
                ("id".into(), "1-0".into()),
                (
                    "sendTime".into(),
                    Value::Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_846_674_123)),
                ),
            ])],
            stream_ids: vec![],
        };
        assert_eq!(
            text(&invocation),
            "{\"type\":1,\"target\":\"OnMessage\",\"arguments\":[{\"id\":\"1-0\",\"sendTime\":\"2026-11-28T06:17:54.123Z\"}]}\u{1e}"
        );
        let with_id = HubMessage::Invocation {
            invocation_id: Some("7".into()),
            target: "Send".into(),
            arguments: vec![Value::Int(1), Value::Float(2.5), Value::Null, Value::Bool(true)],
            stream_ids: vec!["s1".into()],
        };
        assert_eq!(
            text(&with_id),
            "{\"type\":1,\"invocationId\":\"7\",\"target\":\"Send\",\"arguments\":[1,2.5,null,true],\"streamIds\":[\"s1\"]}\u{1e}"
        );
        let cases = [
            (
                HubMessage::Completion { invocation_id: "1".into(), outcome: Outcome::Void },
                "{\"type\":3,\"invocationId\":\"1\"}\u{1e}",
            ),
            (
                HubMessage::Completion {
                    invocation_id: "1".into(),
                    outcome: Outcome::Result(Value::Int(42)),
                },
                "{\"type\":3,\"invocationId\":\"1\",\"result\":42}\u{1e}",
            ),
            (
                HubMessage::Completion {
                    invocation_id: "1".into(),
                    outcome: Outcome::Error("boom \"x\"".into()),
                },
                "{\"type\":3,\"invocationId\":\"1\",\"error\":\"boom \\\"x\\\"\"}\u{1e}",
            ),
            (HubMessage::Ping, "{\"type\":6}\u{1e}"),
            (HubMessage::Close { error: None, allow_reconnect: false }, "{\"type\":7}\u{1e}"),
            (
                HubMessage::Close { error: Some("bye".into()), allow_reconnect: true },
                "{\"type\":7,\"error\":\"bye\",\"allowReconnect\":true}\u{1e}",
            ),
            (
                HubMessage::StreamItem { invocation_id: "2".into(), item: "x".into() },
                "{\"type\":2,\"invocationId\":\"2\",\"item\":\"x\"}\u{1e}",
            ),
            (
                HubMessage::CancelInvocation { invocation_id: "2".into() },
                "{\"type\":5,\"invocationId\":\"2\"}\u{1e}",
            ),
            (HubMessage::Ack { sequence_id: 3 }, "{\"type\":8,\"sequenceId\":3}\u{1e}"),
            (HubMessage::Sequence { sequence_id: 4 }, "{\"type\":9,\"sequenceId\":4}\u{1e}"),
        ];
        for (message, expected) in cases {
            assert_eq!(text(&message), expected);
        }
    }

    #[test]
    fn every_message_type_round_trips() {
        let messages = [
            HubMessage::Invocation {
                invocation_id: Some("1".into()),
                target: "Echo".into(),
                arguments: vec![
                    Value::Str("é\u{1e}\n".into()),
                    Value::Array(vec![Value::Int(-5), Value::Float(0.25)]),
                    Value::Map(vec![("a".into(), Value::Null)]),
                ],
                stream_ids: vec![],
            },
            HubMessage::StreamItem { invocation_id: "1".into(), item: Value::Int(1) },
            HubMessage::Completion {
                invocation_id: "1".into(),
                outcome: Outcome::Result(Value::Null),
            },
            HubMessage::StreamInvocation {
                invocation_id: "1".into(),
                target: "Counter".into(),
                arguments: vec![],
                stream_ids: vec!["a".into()],
            },
            HubMessage::CancelInvocation { invocation_id: "1".into() },
            HubMessage::Ping,
            HubMessage::Close { error: Some("x".into()), allow_reconnect: true },
            HubMessage::Ack { sequence_id: 1 },
            HubMessage::Sequence { sequence_id: 2 },
        ];
        for message in messages {
            let record = encode(&message);
            assert_eq!(record.last(), Some(&RECORD_SEPARATOR));
            assert_eq!(decode_record(&record[..record.len() - 1]), Ok(message.clone()));
        }
    }

    #[test]
    fn reads_leniently() {
        let message = decode_record(
            br#"{"type":1,"headers":{"a":"b"},"extra":[1,2],"target":"Send","arguments":["x"],"invocationId":null}"#,
        );
        assert_eq!(
            message,
            Ok(HubMessage::Invocation {
                invocation_id: None,
                target: "Send".into(),
                arguments: vec!["x".into()],
                stream_ids: vec![],
            })
        );
        assert_eq!(
            decode_record(br#"{"type":7}"#),
            Ok(HubMessage::Close { error: None, allow_reconnect: false })
        );
    }

    #[test]
    fn reports_bad_records() {
        assert!(matches!(decode_record(b"{\"type\":1,"), Err(ProtocolError::MalformedJson(_))));
        assert_eq!(decode_record(br#"{"type":42}"#), Err(ProtocolError::UnknownMessageType(42)));
        assert!(matches!(
            decode_record(br#"{"type":1,"arguments":[]}"#),
            Err(ProtocolError::InvalidMessage { .. })
        ));
        assert!(matches!(decode_record(br#"[1]"#), Err(ProtocolError::MalformedJson(_))));
    }

    #[test]
    fn decoder_joins_split_records_and_splits_batched_ones() {
        let mut decoder = JsonDecoder::new(1024);
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode(&HubMessage::Ping));
        stream.extend_from_slice(&encode(&HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Echo".into(),
            arguments: vec!["hi".into()],
            stream_ids: vec![],
        }));
        stream.extend_from_slice(&encode(&HubMessage::Ping));
        let mut decoded = Vec::new();
        // One byte at a time: every record is split.
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(message) = decoder.next_message().expect("valid stream") {
                decoded.push(message);
            }
        }
        assert_eq!(decoded.len(), 3);
        // All at once: records are batched in one chunk.
        decoder.push(&stream);
        let mut batched = Vec::new();
        while let Some(message) = decoder.next_message().expect("valid stream") {
            batched.push(message);
        }
        assert_eq!(batched, decoded);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn decoder_refuses_oversized_records() {
        let mut decoder = JsonDecoder::new(16);
        decoder.push(&[b' '; 17]);
        assert_eq!(
            decoder.next_message(),
            Err(ProtocolError::MessageTooLarge { size: 17, limit: 16 })
        );
        let mut decoder = JsonDecoder::new(8);
        decoder.push(b"{\"type\":6}\x1e");
        assert!(matches!(decoder.next_message(), Err(ProtocolError::MessageTooLarge { .. })));
    }

    /// A record split into many chunks: `Ok(None)` for each, and each byte is
    /// searched once (rescanning would examine ~n²/2 bytes for n one-byte chunks).
    #[test]
    fn decoder_search_is_linear_in_bytes_received() {
        let record = encode(&HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Echo".into(),
            arguments: vec!["x".repeat(20_000).into()],
            stream_ids: vec![],
        });
        let mut decoder = JsonDecoder::new(128 * 1024);
        let mut decoded = 0;
        for _ in 0..3 {
            for byte in record.iter() {
                decoder.push(std::slice::from_ref(byte));
                while decoder.next_message().expect("valid").is_some() {
                    decoded += 1;
                }
            }
        }
        assert_eq!(decoded, 3);
        assert!(
            decoder.examined <= 3 * record.len(),
            "examined {} bytes for {} received",
            decoder.examined,
            3 * record.len()
        );
    }

    /// Chunks that each end part-way through a record (the issue's finding): the
    /// buffer holds one partial record plus one chunk, not everything received.
    #[test]
    fn decoder_buffer_does_not_grow_with_partial_chunks() {
        let record = encode(&HubMessage::Invocation {
            invocation_id: None,
            target: "Echo".into(),
            arguments: vec!["y".repeat(1000).into()],
            stream_ids: vec![],
        });
        let mut stream = Vec::new();
        for _ in 0..2000 {
            stream.extend_from_slice(&record);
        }
        let mut decoder = JsonDecoder::new(4096);
        let mut decoded = 0;
        // Half a record, then chunks of one record: every chunk ends inside one.
        let half = record.len() / 2;
        decoder.push(&stream[..half]);
        for chunk in stream[half..].chunks(record.len()) {
            decoder.push(chunk);
            while decoder.next_message().expect("valid").is_some() {
                decoded += 1;
            }
            assert!(
                decoder.input.capacity() <= 4 * record.len() + 4096,
                "buffer capacity {} after {decoded} records",
                decoder.input.capacity()
            );
        }
        assert_eq!(decoded, 2000);
    }

    #[test]
    fn decoder_refuses_records_of_too_many_values() {
        let limit = crate::protocol::max_values(4096);
        let many =
            format!("{{\"type\":1,\"target\":\"T\",\"arguments\":[{}0]}}\x1e", "0,".repeat(limit));
        let mut decoder = JsonDecoder::new(4096);
        decoder.push(many.as_bytes());
        assert_eq!(decoder.next_message(), Err(ProtocolError::TooManyValues { limit }));
        let few = format!(
            "{{\"type\":1,\"target\":\"T\",\"arguments\":[{}0]}}\x1e",
            "0,".repeat(limit - 10)
        );
        let mut decoder = JsonDecoder::new(4096);
        decoder.push(few.as_bytes());
        assert!(matches!(decoder.next_message(), Ok(Some(HubMessage::Invocation { .. }))));
    }
}
