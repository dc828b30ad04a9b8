//! The bench's side of the hub protocol: the records it sends, and a lean
//! reading of the ones it receives.
//!
//! At 100k+ deliveries a second the receive path must cost far less than the
//! server's, so an `OnMessage` record is not decoded into values: the bench
//! only needs its text's header (see `payload`), which it reads in place. A
//! JSON `OnMessage` is found by its `"target":"OnMessage"` and `"text":"` keys
//! (an unescaped `"` cannot occur inside a JSON string, so these only match
//! keys); a MessagePack one is walked without copying. Every other record, and
//! any `OnMessage` that does not have the expected shape, goes through the full
//! decoder of `next-chat-signalr`.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem;
use next_chat_contract::{Callback, Method, keys};
use next_chat_signalr::json::{self, RECORD_SEPARATOR};
use next_chat_signalr::msgpack;
use next_chat_signalr::{HubMessage, Outcome, Protocol, Value};
use rmp::Marker;

use crate::payload::{self, Header};

/// What one received record means to the bench.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An `OnMessage` carrying a bench message.
    Bench(Header),
    /// An `OnMessage` whose text is not a bench message (someone else's).
    Foreign,
    Completion(Completion),
    /// The server closed the connection, with its error if it gave one.
    Close(Option<String>),
    /// Pings, `OnHistory`, anything else: nothing to count.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub invocation_id: String,
    /// The server's error text, for a failed call.
    pub error: Option<String>,
    /// An integer result (`JoinGroup`'s `0`/`1`).
    pub result: Option<i64>,
}

/// A hub invocation that expects a completion, as one record.
pub fn invocation(
    protocol: Protocol,
    invocation_id: String,
    method: Method,
    args: Vec<Value>,
) -> Bytes {
    protocol.encode(&HubMessage::Invocation {
        invocation_id: Some(invocation_id),
        target: method.name().to_string(),
        arguments: args,
        stream_ids: Vec::new(),
    })
}

pub fn ping(protocol: Protocol) -> Bytes {
    protocol.encode(&HubMessage::Ping)
}

/// Splits the received byte stream into records. A WebSocket message holds
/// whole records, so the partial buffer is normally unused; it is there so
/// that a server that splits records still gets read correctly.
pub struct Records {
    protocol: Protocol,
    partial: Vec<u8>,
    /// Largest record accepted before the bench calls the stream broken.
    max_record: usize,
}

impl Records {
    pub fn new(protocol: Protocol) -> Records {
        Records { protocol, partial: Vec::new(), max_record: 64 << 20 }
    }

    /// Feeds one WebSocket message's bytes, calling `each` for every whole record.
    pub fn feed(&mut self, data: &[u8], mut each: impl FnMut(Record)) -> Result<(), String> {
        if self.partial.is_empty() {
            let used = split(self.protocol, data, &mut each)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            self.partial.extend_from_slice(data);
            let partial = std::mem::take(&mut self.partial);
            let used = split(self.protocol, &partial, &mut each)?;
            self.partial = partial[used..].to_vec();
        }
        if self.partial.len() > self.max_record {
            return Err(format!("a record of over {} bytes", self.max_record));
        }
        Ok(())
    }
}

/// Reads whole records from `data`; returns how many bytes they took.
fn split(protocol: Protocol, data: &[u8], each: &mut impl FnMut(Record)) -> Result<usize, String> {
    let mut used = 0;
    match protocol {
        Protocol::Json => {
            while let Some(end) = memchr::memchr(RECORD_SEPARATOR, &data[used..]) {
                each(read_json(&data[used..used + end])?);
                used += end + 1;
            }
        }
        Protocol::MessagePack => loop {
            let rest = &data[used..];
            let Some((length, prefix)) =
                msgpack::read_length_prefix(rest).map_err(|e| e.to_string())?
            else {
                break;
            };
            if rest.len() < prefix + length {
                break;
            }
            each(read_msgpack(&rest[prefix..prefix + length])?);
            used += prefix + length;
        },
    }
    Ok(used)
}

/// The JSON keys the lean path looks for, spelled from the contract once:
/// `"target":"OnMessage"` and `"text":"`.
struct JsonNeedles {
    on_message: memmem::Finder<'static>,
    text: memmem::Finder<'static>,
}

static JSON_NEEDLES: LazyLock<JsonNeedles> = LazyLock::new(|| {
    let finder = |needle: String| memmem::Finder::new(needle.as_bytes()).into_owned();
    JsonNeedles {
        on_message: finder(format!("\"target\":\"{}\"", Callback::OnMessage.name())),
        text: finder(format!("\"{}\":\"", keys::TEXT)),
    }
});

fn read_json(record: &[u8]) -> Result<Record, String> {
    let needles = &*JSON_NEEDLES;
    if record.starts_with(b"{\"type\":1,")
        && needles.on_message.find(record).is_some()
        && let Some(at) = needles.text.find(record)
    {
        return Ok(bench_or_foreign(&record[at + needles.text.needle().len()..]));
    }
    json::decode_record(record).map(from_message).map_err(|e| e.to_string())
}

fn read_msgpack(body: &[u8]) -> Result<Record, String> {
    if let Some(record) = msgpack_on_message_text(body) {
        return Ok(record);
    }
    msgpack::decode_body(body).map(from_message).map_err(|e| e.to_string())
}

fn bench_or_foreign(text: &[u8]) -> Record {
    payload::parse(text).map_or(Record::Foreign, Record::Bench)
}

/// The fully decoded message, for everything the lean paths do not take.
fn from_message(message: HubMessage) -> Record {
    match message {
        HubMessage::Invocation { target, arguments, .. }
            if target == Callback::OnMessage.name() =>
        {
            let text = arguments.first().and_then(|m| m.get(keys::TEXT)).and_then(Value::as_str);
            text.map_or(Record::Foreign, |t| bench_or_foreign(t.as_bytes()))
        }
        HubMessage::Completion { invocation_id, outcome } => {
            let (error, result) = match outcome {
                Outcome::Void => (None, None),
                Outcome::Result(value) => (None, value.as_i64()),
                Outcome::Error(error) => (Some(error), None),
            };
            Record::Completion(Completion { invocation_id, error, result })
        }
        HubMessage::Close { error, .. } => Record::Close(error),
        _ => Record::Other,
    }
}

/// `[1, headers, invocationId, "OnMessage", [{..., "text": T, ...}], ...]`:
/// the record for `T`, read in place; `None` for any other shape.
fn msgpack_on_message_text(body: &[u8]) -> Option<Record> {
    let mut r = Cursor { rest: body };
    if r.array_len()? < 5 || rmp::decode::read_pfix(&mut r.rest).ok()? != 0x01 {
        return None;
    }
    r.skip()?; // headers
    r.skip()?; // invocation id (nil)
    if r.str()? != Callback::OnMessage.name().as_bytes() || r.array_len()? < 1 {
        return None;
    }
    for _ in 0..r.map_len()? {
        if r.str()? == keys::TEXT.as_bytes() {
            return Some(bench_or_foreign(r.str()?));
        }
        r.skip()?;
    }
    None
}

/// A minimal MessagePack reader over `rmp`: lengths, strings borrowed in place,
/// and skipping any value.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    fn array_len(&mut self) -> Option<usize> {
        rmp::decode::read_array_len(&mut self.rest).ok().map(|len| len as usize)
    }

    fn map_len(&mut self) -> Option<usize> {
        rmp::decode::read_map_len(&mut self.rest).ok().map(|len| len as usize)
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let len = rmp::decode::read_str_len(&mut self.rest).ok()?;
        self.take(len as usize)
    }

    /// A length of `width` big-endian bytes.
    fn len(&mut self, width: usize) -> Option<usize> {
        let bytes = self.take(width)?;
        Some(bytes.iter().fold(0, |len, b| len << 8 | usize::from(*b)))
    }

    /// Skips one value of any type (nesting bounded by the record's length).
    fn skip(&mut self) -> Option<()> {
        let marker = rmp::decode::read_marker(&mut self.rest).ok()?;
        let (skip, items) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::FixMap(n) => (0, 2 * usize::from(n)),
            Marker::FixArray(n) => (0, usize::from(n)),
            Marker::FixStr(n) => (usize::from(n), 0),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::Str8 | Marker::Bin8 => (self.len(1)?, 0),
            Marker::Str16 | Marker::Bin16 => (self.len(2)?, 0),
            Marker::Str32 | Marker::Bin32 => (self.len(4)?, 0),
            // Extensions: the type byte, then the data.
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (self.len(1)? + 1, 0),
            Marker::Ext16 => (self.len(2)? + 1, 0),
            Marker::Ext32 => (self.len(4)? + 1, 0),
            Marker::Array16 => (0, self.len(2)?),
            Marker::Array32 => (0, self.len(4)?),
            Marker::Map16 => (0, 2 * self.len(2)?),
            Marker::Map32 => (0, 2 * self.len(4)?),
            Marker::Reserved => return None,
        };
        self.take(skip)?;
        for _ in 0..items {
            self.skip()?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::payload::Phase;

    fn on_message(text: &str) -> HubMessage {
        let message = next_chat_contract::Message {
            id: "1732776000000-0".into(),
            author_id: "bench-0".into(),
            group_id: "g".into(),
            send_time: UNIX_EPOCH + Duration::from_millis(5),
            text: text.into(),
        };
        HubMessage::Invocation {
            invocation_id: None,
            target: Callback::OnMessage.name().into(),
            arguments: vec![message.into_value()],
            stream_ids: Vec::new(),
        }
    }

    fn read_all(protocol: Protocol, chunks: &[&[u8]]) -> Vec<Record> {
        let mut records = Records::new(protocol);
        let mut out = Vec::new();
        for chunk in chunks {
            records.feed(chunk, |r| out.push(r)).expect("valid records");
        }
        out
    }

    #[test]
    fn reads_on_message_headers_in_both_protocols_across_chunks() {
        let header = Header { phase: Phase::Measured, sender: 3, seq: 9, sent_at: 77 };
        let mut text = String::new();
        payload::write(&mut text, header, 50);
        for protocol in Protocol::ALL {
            let mut stream = Vec::new();
            stream.extend_from_slice(&protocol.encode(&on_message(&text)));
            stream.extend_from_slice(&protocol.encode(&on_message("hello")));
            stream.extend_from_slice(&protocol.encode(&HubMessage::Completion {
                invocation_id: "j".into(),
                outcome: Outcome::Result(Value::Int(1)),
            }));
            stream.extend_from_slice(&protocol.encode(&HubMessage::Ping));
            let (a, b) = stream.split_at(30);
            let expected = vec![
                Record::Bench(header),
                Record::Foreign,
                Record::Completion(Completion {
                    invocation_id: "j".into(),
                    error: None,
                    result: Some(1),
                }),
                Record::Other,
            ];
            assert_eq!(read_all(protocol, &[&stream]), expected, "{protocol} whole");
            assert_eq!(read_all(protocol, &[a, b]), expected, "{protocol} split");
        }
    }

    #[test]
    fn the_lean_path_agrees_with_the_full_decoder() {
        let header = Header { phase: Phase::Warmup, sender: 0, seq: 0, sent_at: 1 };
        let mut text = String::new();
        payload::write(&mut text, header, 300);
        let record = msgpack::encode(&on_message(&text));
        let (_, prefix) = msgpack::read_length_prefix(&record).ok().flatten().expect("a prefix");
        assert_eq!(msgpack_on_message_text(&record[prefix..]), Some(Record::Bench(header)));
        let full = msgpack::decode_body(&record[prefix..]).map(from_message);
        assert_eq!(full, Ok(Record::Bench(header)));
    }

    #[test]
    fn errors_and_closes_are_read() {
        for protocol in Protocol::ALL {
            let mut stream = Vec::new();
            stream.extend_from_slice(&protocol.encode(&HubMessage::Completion {
                invocation_id: "7".into(),
                outcome: Outcome::Error("join first".into()),
            }));
            stream.extend_from_slice(
                &protocol.encode(&HubMessage::Close {
                    error: Some("bye".into()),
                    allow_reconnect: true,
                }),
            );
            assert_eq!(
                read_all(protocol, &[&stream]),
                vec![
                    Record::Completion(Completion {
                        invocation_id: "7".into(),
                        error: Some("join first".into()),
                        result: None,
                    }),
                    Record::Close(Some("bye".into())),
                ]
            );
        }
    }
}
