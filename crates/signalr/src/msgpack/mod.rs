//! The `messagepack` hub protocol: each record is a varint length prefix followed by
//! one MessagePack array.
//!
//! Output matches ASP.NET Core's `MessagePackHubProtocol` byte for byte: an empty
//! headers map, an Invocation always of 6 elements (an empty `streamIds` array
//! last), integers in their smallest form, doubles as float64, timestamps as
//! extension -1 in the 32-, 64- or 96-bit form MessagePack-CSharp picks. Input is
//! read leniently: 5-element invocations, `[7, nil]` closes, headers skipped, extra
//! trailing elements ignored.

mod decode;
mod encode;

use bytes::Bytes;

pub use self::decode::decode_body_within;
pub use self::encode::write_value;
use crate::protocol::{HubMessage, InputBuffer, ProtocolError};

/// A varint length prefix never needs more than 5 bytes (ASP.NET caps records at 2 GiB).
const MAX_PREFIX_BYTES: usize = 5;

/// The MessagePack timestamp extension type.
const TIMESTAMP_EXT: i8 = -1;

/// Completion result kinds.
const RESULT_ERROR: u64 = 1;
const RESULT_VOID: u64 = 2;
const RESULT_VALUE: u64 = 3;

/// Encodes one message as a whole record: varint length prefix, then the body.
pub fn encode(message: &HubMessage) -> Bytes {
    let mut body = Vec::with_capacity(64);
    encode::write_message(&mut body, message);
    let mut out = Vec::with_capacity(body.len() + MAX_PREFIX_BYTES);
    write_length_prefix(&mut out, body.len());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Writes the varint length prefix: 7 bits a byte, least significant first.
pub fn write_length_prefix(out: &mut Vec<u8>, mut length: usize) {
    loop {
        let low = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Reads a varint length prefix: `Ok(Some((length, prefix_bytes)))`, `Ok(None)` when
/// more bytes are needed.
pub fn read_length_prefix(bytes: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut length: usize = 0;
    for (i, byte) in bytes.iter().take(MAX_PREFIX_BYTES).enumerate() {
        if i == MAX_PREFIX_BYTES - 1 && *byte > 0x07 {
            return Err(ProtocolError::MalformedMessagePack("length prefix exceeds 2 GiB".into()));
        }
        length |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((length, i + 1)));
        }
    }
    Ok(None)
}

/// Incremental MessagePack record splitter and decoder.
#[derive(Debug)]
pub struct MessagePackDecoder {
    input: InputBuffer,
    /// The largest record body accepted, checked as soon as the prefix is read.
    max_message_size: usize,
}

impl MessagePackDecoder {
    pub fn new(max_message_size: usize) -> Self {
        Self { input: InputBuffer::default(), max_message_size }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.input.push(chunk);
    }

    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    pub fn next_message(&mut self) -> Result<Option<HubMessage>, ProtocolError> {
        let unread = self.input.unread();
        let Some((length, prefix)) = read_length_prefix(unread)? else {
            return Ok(None);
        };
        if length > self.max_message_size {
            return Err(ProtocolError::MessageTooLarge {
                size: length,
                limit: self.max_message_size,
            });
        }
        if unread.len() < prefix + length {
            return Ok(None);
        }
        let body = &unread[prefix..prefix + length];
        let message = decode_body_within(body, crate::protocol::max_values(self.max_message_size));
        self.input.consume(prefix + length);
        message.map(Some)
    }
}

/// Decodes one record body (without its length prefix).
pub fn decode_body(body: &[u8]) -> Result<HubMessage, ProtocolError> {
    decode_body_within(body, usize::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::protocol::Outcome;
    use crate::value::Value;

    fn body(message: &HubMessage) -> Vec<u8> {
        let record = encode(message);
        let (len, prefix) =
            read_length_prefix(&record).expect("valid prefix").expect("complete prefix");
        assert_eq!(record.len(), prefix + len);
        record[prefix..].to_vec()
    }

    #[test]
    fn varint_prefix_round_trips() {
        for (length, bytes) in [
            (0usize, vec![0x00]),
            (0x7f, vec![0x7f]),
            (0x80, vec![0x80, 0x01]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (0x7fff_ffff, vec![0xff, 0xff, 0xff, 0xff, 0x07]),
        ] {
            let mut out = Vec::new();
            write_length_prefix(&mut out, length);
            assert_eq!(out, bytes);
            assert_eq!(read_length_prefix(&bytes), Ok(Some((length, bytes.len()))));
        }
        assert_eq!(read_length_prefix(&[0x80, 0x80]), Ok(None));
        assert!(read_length_prefix(&[0xff, 0xff, 0xff, 0xff, 0x08]).is_err());
    }

    #[test]
    fn writes_exactly_what_aspnet_writes() {
        // [6] with prefix 2 (HubProtocol.md).
        assert_eq!(encode(&HubMessage::Ping).to_vec(), vec![0x02, 0x91, 0x06]);
        // [1, {}, nil, "OnMessage", ["hi"], []]
        let invocation = HubMessage::Invocation {
            invocation_id: None,
            target: "OnMessage".into(),
            arguments: vec!["hi".into()],
            stream_ids: vec![],
        };
        let mut expected = vec![0x96, 0x01, 0x80, 0xc0, 0xa9];
        expected.extend_from_slice(b"OnMessage");
        expected.extend_from_slice(&[0x91, 0xa2, b'h', b'i', 0x90]);
        assert_eq!(body(&invocation), expected);
        // [3, {}, "1", 3, 42] and [3, {}, "1", 2] and [3, {}, "1", 1, "e"]
        let completion = |outcome| HubMessage::Completion { invocation_id: "1".into(), outcome };
        assert_eq!(
            body(&completion(Outcome::Result(Value::Int(42)))),
            vec![0x95, 0x03, 0x80, 0xa1, b'1', 0x03, 0x2a]
        );
        assert_eq!(body(&completion(Outcome::Void)), vec![0x94, 0x03, 0x80, 0xa1, b'1', 0x02]);
        assert_eq!(
            body(&completion(Outcome::Error("e".into()))),
            vec![0x95, 0x03, 0x80, 0xa1, b'1', 0x01, 0xa1, b'e']
        );
        // [7, nil, true]
        assert_eq!(
            body(&HubMessage::Close { error: None, allow_reconnect: true }),
            vec![0x93, 0x07, 0xc0, 0xc3]
        );
    }

    #[test]
    fn writes_values_in_smallest_form() {
        let cases: Vec<(Value, Vec<u8>)> = vec![
            (Value::Int(0), vec![0x00]),
            (Value::Int(127), vec![0x7f]),
            (Value::Int(128), vec![0xcc, 0x80]),
            (Value::Int(65_535), vec![0xcd, 0xff, 0xff]),
            (Value::Int(65_536), vec![0xce, 0, 1, 0, 0]),
            (Value::Int(-1), vec![0xff]),
            (Value::Int(-32), vec![0xe0]),
            (Value::Int(-33), vec![0xd0, 0xdf]),
            (Value::Int(-129), vec![0xd1, 0xff, 0x7f]),
            (Value::Float(1.5), vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
            (Value::Bin(vec![1, 2]), vec![0xc4, 2, 1, 2]),
            (Value::Map(vec![("a".into(), Value::Null)]), vec![0x81, 0xa1, b'a', 0xc0]),
            // Whole seconds before 2106: timestamp 32.
            (Value::Timestamp(UNIX_EPOCH + Duration::from_secs(1)), vec![0xd6, 0xff, 0, 0, 0, 1]),
            // Milliseconds: timestamp 64, nanoseconds in the top 30 bits.
            (Value::Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_846_674_123)), {
                let data: u64 = (123_000_000u64 << 34) | 1_795_846_674;
                let mut v = vec![0xd7, 0xff];
                v.extend_from_slice(&data.to_be_bytes());
                v
            }),
            // Before 1970: timestamp 96.
            (
                Value::Timestamp(UNIX_EPOCH - Duration::from_secs(1)),
                vec![0xc7, 12, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (value, expected) in cases {
            let mut out = Vec::new();
            write_value(&mut out, &value);
            assert_eq!(out, expected, "{value:?}");
            assert_eq!(decode::Reader::new(&out, usize::MAX).read_value(0), Ok(value));
        }
        let long = "x".repeat(40);
        let mut out = Vec::new();
        write_value(&mut out, &Value::Str(long.clone()));
        assert_eq!(&out[..2], &[0xd9, 40]);
    }

    #[test]
    fn every_message_type_round_trips() {
        let messages = [
            HubMessage::Invocation {
                invocation_id: Some("1".into()),
                target: "Echo".into(),
                arguments: vec![
                    Value::Str("é".into()),
                    Value::Array(vec![Value::Int(-5), Value::Float(0.25)]),
                    Value::Map(vec![("a".into(), Value::Bin(vec![0, 1]))]),
                    Value::Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_846_674_123)),
                ],
                stream_ids: vec!["s".into()],
            },
            HubMessage::StreamItem { invocation_id: "1".into(), item: Value::Int(1) },
            HubMessage::Completion {
                invocation_id: "1".into(),
                outcome: Outcome::Result(Value::Null),
            },
            HubMessage::Completion { invocation_id: "1".into(), outcome: Outcome::Void },
            HubMessage::Completion {
                invocation_id: "1".into(),
                outcome: Outcome::Error("no".into()),
            },
            HubMessage::StreamInvocation {
                invocation_id: "1".into(),
                target: "Counter".into(),
                arguments: vec![],
                stream_ids: vec![],
            },
            HubMessage::CancelInvocation { invocation_id: "1".into() },
            HubMessage::Ping,
            HubMessage::Close { error: Some("x".into()), allow_reconnect: false },
            HubMessage::Ack { sequence_id: 1 },
            HubMessage::Sequence { sequence_id: 300 },
        ];
        for message in messages {
            assert_eq!(decode_body(&body(&message)), Ok(message.clone()));
        }
    }

    #[test]
    fn writes_ack_and_sequence_as_aspnet() {
        // [8, 1] and [9, 300], integers in their shortest form, length-prefixed.
        assert_eq!(&encode(&HubMessage::Ack { sequence_id: 1 })[..], &[0x03, 0x92, 0x08, 0x01]);
        assert_eq!(
            &encode(&HubMessage::Sequence { sequence_id: 300 })[..],
            &[0x05, 0x92, 0x09, 0xcd, 0x01, 0x2c]
        );
        assert!(decode_body(&[0x92, 0x08, 0xa1, b'x']).is_err(), "a sequenceId must be an integer");
    }

    #[test]
    fn reads_leniently() {
        // A 5-element invocation with a header and no streamIds.
        let mut five = vec![0x95, 0x01, 0x81, 0xa1, b'k', 0xa1, b'v', 0xa1, b'1', 0xa4];
        five.extend_from_slice(b"Echo");
        five.extend_from_slice(&[0x91, 0x2a]);
        assert_eq!(
            decode_body(&five),
            Ok(HubMessage::Invocation {
                invocation_id: Some("1".into()),
                target: "Echo".into(),
                arguments: vec![Value::Int(42)],
                stream_ids: vec![],
            })
        );
        // [7, nil]
        assert_eq!(
            decode_body(&[0x92, 0x07, 0xc0]),
            Ok(HubMessage::Close { error: None, allow_reconnect: false })
        );
    }

    #[test]
    fn reports_bad_records() {
        assert!(matches!(
            decode_body(&[0x96, 0x01, 0x80, 0xc0, 0xa4, b'E']),
            Err(ProtocolError::Truncated(_))
        ));
        assert_eq!(decode_body(&[0x91, 0x2a]), Err(ProtocolError::UnknownMessageType(42)));
        assert!(matches!(decode_body(&[0x2a]), Err(ProtocolError::MalformedMessagePack(_))));
        // Deep nesting is refused, not a stack overflow.
        let mut deep = vec![0x92, 0x02, 0x80];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        assert!(decode_body(&deep).is_err());
        // An array claiming 2^32-1 elements in a tiny record does not allocate them.
        assert!(matches!(
            decode_body(&[0x94, 0x02, 0x80, 0xa1, b'1', 0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::Truncated(_))
        ));
    }

    #[test]
    fn decoder_joins_split_records_and_splits_batched_ones() {
        let mut stream = Vec::new();
        let invocation = HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Echo".into(),
            arguments: vec![Value::Str("y".repeat(300))],
            stream_ids: vec![],
        };
        stream.extend_from_slice(&encode(&HubMessage::Ping));
        stream.extend_from_slice(&encode(&invocation));
        stream.extend_from_slice(&encode(&HubMessage::Ping));
        let mut decoder = MessagePackDecoder::new(1024);
        let mut decoded = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(message) = decoder.next_message().expect("valid stream") {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, vec![HubMessage::Ping, invocation, HubMessage::Ping]);
        decoder.push(&stream);
        let mut batched = Vec::new();
        while let Some(message) = decoder.next_message().expect("valid stream") {
            batched.push(message);
        }
        assert_eq!(batched, decoded);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn decoder_refuses_oversized_records_from_the_prefix() {
        let mut decoder = MessagePackDecoder::new(100);
        decoder.push(&[0x80, 0x01]); // 128 bytes announced, none sent yet
        assert_eq!(
            decoder.next_message(),
            Err(ProtocolError::MessageTooLarge { size: 128, limit: 100 })
        );
    }

    /// 100k one-byte integers would decode to ~3 MB of values from a 100 KB record.
    #[test]
    fn decoder_refuses_records_of_too_many_values() {
        let max_message_size = 128 * 1024;
        let limit = crate::protocol::max_values(max_message_size);
        let record = |elements: usize| {
            let mut body = vec![0x96, 0x01, 0x80, 0xc0, 0xa1, b'T'];
            body.push(0xdd);
            body.extend_from_slice(&(elements as u32).to_be_bytes());
            body.resize(body.len() + elements, 0x00);
            body.push(0x90);
            let mut out = Vec::new();
            write_length_prefix(&mut out, body.len());
            out.extend_from_slice(&body);
            out
        };
        let mut decoder = MessagePackDecoder::new(max_message_size);
        decoder.push(&record(100_000));
        assert_eq!(decoder.next_message(), Err(ProtocolError::TooManyValues { limit }));
        let mut decoder = MessagePackDecoder::new(max_message_size);
        decoder.push(&record(limit - 10));
        assert!(matches!(decoder.next_message(), Ok(Some(HubMessage::Invocation { .. }))));
    }
}
