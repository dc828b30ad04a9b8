//! The `messagepack` hub protocol: each record is a varint length prefix followed by
//! one MessagePack array.
//!
//! Output matches ASP.NET Core's `MessagePackHubProtocol` byte for byte: an empty
//! headers map, an Invocation always of 6 elements (an empty `streamIds` array
//! last), integers in their smallest form, doubles as float64, timestamps as
//! extension -1 in the 32-, 64- or 96-bit form MessagePack-CSharp picks. Input is
//! read leniently: 5-element invocations, `[7, nil]` closes, headers skipped, extra
//! trailing elements ignored.

use std::time::SystemTime;

use bytes::Bytes;

use crate::protocol::{HubMessage, InputBuffer, Outcome, ProtocolError, message_type};
use crate::value::{Value, from_unix_parts, unix_parts};

/// A varint length prefix never needs more than 5 bytes (ASP.NET caps records at 2 GiB).
const MAX_PREFIX_BYTES: usize = 5;

/// Values nested deeper than this are refused, so a peer cannot exhaust our stack.
const MAX_DEPTH: usize = 64;

/// The MessagePack timestamp extension type.
const TIMESTAMP_EXT: i8 = -1;

/// Completion result kinds.
const RESULT_ERROR: u64 = 1;
const RESULT_VOID: u64 = 2;
const RESULT_VALUE: u64 = 3;

/// Encodes one message as a whole record: varint length prefix, then the body.
pub fn encode(message: &HubMessage) -> Bytes {
    let mut body = Vec::with_capacity(64);
    write_message(&mut body, message);
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

/// Decodes one record body holding at most `max_values` values (see
/// [`crate::protocol::BYTES_PER_VALUE`]).
pub fn decode_body_within(body: &[u8], max_values: usize) -> Result<HubMessage, ProtocolError> {
    let mut reader = Reader { bytes: body, pos: 0, values_left: max_values, max_values };
    let len = reader.read_array_len()?;
    if len == 0 {
        return Err(ProtocolError::MalformedMessagePack(
            "a hub message must be a non-empty array".into(),
        ));
    }
    let kind = reader
        .read_value(0)?
        .as_i64()
        .ok_or_else(|| invalid("hub", "the message type must be an integer"))?;
    let needs = |min: usize, name: &'static str| {
        if len < min {
            Err(invalid(name, &format!("expected at least {min} elements, got {len}")))
        } else {
            Ok(())
        }
    };
    let message = match kind {
        message_type::INVOCATION | message_type::STREAM_INVOCATION => {
            let name =
                if kind == message_type::INVOCATION { "Invocation" } else { "StreamInvocation" };
            needs(5, name)?;
            reader.skip_value()?; // headers
            let invocation_id = reader.read_optional_str(name, "invocationId")?;
            let target = reader.read_str(name, "target")?;
            let arguments = reader.read_array_of_values(name, "arguments")?;
            let stream_ids =
                if len >= 6 { reader.read_string_array(name, "streamIds")? } else { Vec::new() };
            if kind == message_type::INVOCATION {
                HubMessage::Invocation { invocation_id, target, arguments, stream_ids }
            } else {
                HubMessage::StreamInvocation {
                    invocation_id: invocation_id
                        .ok_or_else(|| invalid(name, "missing 'invocationId'"))?,
                    target,
                    arguments,
                    stream_ids,
                }
            }
        }
        message_type::STREAM_ITEM => {
            needs(4, "StreamItem")?;
            reader.skip_value()?;
            HubMessage::StreamItem {
                invocation_id: reader.read_str("StreamItem", "invocationId")?,
                item: reader.read_value(0)?,
            }
        }
        message_type::COMPLETION => {
            needs(4, "Completion")?;
            reader.skip_value()?;
            let invocation_id = reader.read_str("Completion", "invocationId")?;
            let result_kind = reader
                .read_value(0)?
                .as_i64()
                .ok_or_else(|| invalid("Completion", "the result kind must be an integer"))?;
            let outcome = match u64::try_from(result_kind) {
                Ok(RESULT_VOID) => Outcome::Void,
                Ok(RESULT_ERROR) => {
                    needs(5, "Completion")?;
                    Outcome::Error(reader.read_str("Completion", "error")?)
                }
                Ok(RESULT_VALUE) => {
                    needs(5, "Completion")?;
                    Outcome::Result(reader.read_value(0)?)
                }
                _ => {
                    return Err(invalid(
                        "Completion",
                        &format!("unknown result kind {result_kind}"),
                    ));
                }
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        message_type::CANCEL_INVOCATION => {
            needs(3, "CancelInvocation")?;
            reader.skip_value()?;
            HubMessage::CancelInvocation {
                invocation_id: reader.read_str("CancelInvocation", "invocationId")?,
            }
        }
        message_type::PING => HubMessage::Ping,
        message_type::CLOSE => {
            let error = if len >= 2 { reader.read_optional_str("Close", "error")? } else { None };
            let allow_reconnect =
                if len >= 3 { reader.read_value(0)?.as_bool().unwrap_or(false) } else { false };
            HubMessage::Close { error, allow_reconnect }
        }
        message_type::ACK | message_type::SEQUENCE => {
            let name = if kind == message_type::ACK { "Ack" } else { "Sequence" };
            needs(2, name)?;
            let sequence_id = reader
                .read_value(0)?
                .as_i64()
                .ok_or_else(|| invalid(name, "'sequenceId' must be an integer"))?;
            if kind == message_type::ACK {
                HubMessage::Ack { sequence_id }
            } else {
                HubMessage::Sequence { sequence_id }
            }
        }
        other => return Err(ProtocolError::UnknownMessageType(other)),
    };
    Ok(message)
}

fn invalid(message: &'static str, reason: &str) -> ProtocolError {
    ProtocolError::InvalidMessage { message, reason: reason.to_owned() }
}

/// A bounds-checked cursor over one record body.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Values still allowed in this record, so a record of many tiny values cannot
    /// decode to a tree many times its size.
    values_left: usize,
    max_values: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => Err(ProtocolError::Truncated(format!(
                "needed {n} more bytes at offset {} of a {}-byte record",
                self.pos,
                self.bytes.len()
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn uint(&mut self, width: usize) -> Result<u64, ProtocolError> {
        Ok(match width {
            1 => u64::from(self.u8()?),
            2 => u64::from(u16::from_be_bytes(self.be()?)),
            4 => u64::from(u32::from_be_bytes(self.be()?)),
            _ => u64::from_be_bytes(self.be()?),
        })
    }

    fn len(&mut self, width: usize) -> Result<usize, ProtocolError> {
        usize::try_from(self.uint(width)?)
            .map_err(|_| ProtocolError::MalformedMessagePack("length does not fit".into()))
    }

    fn read_array_len(&mut self) -> Result<usize, ProtocolError> {
        match self.u8()? {
            m @ 0x90..=0x9f => Ok(usize::from(m & 0x0f)),
            0xdc => self.len(2),
            0xdd => self.len(4),
            m => Err(ProtocolError::MalformedMessagePack(format!(
                "expected an array, found marker 0x{m:02x}"
            ))),
        }
    }

    fn read_str(&mut self, message: &'static str, field: &str) -> Result<String, ProtocolError> {
        match self.read_value(0)? {
            Value::Str(s) => Ok(s),
            _ => Err(invalid(message, &format!("'{field}' must be a string"))),
        }
    }

    fn read_optional_str(
        &mut self,
        message: &'static str,
        field: &str,
    ) -> Result<Option<String>, ProtocolError> {
        match self.read_value(0)? {
            Value::Str(s) => Ok(Some(s)),
            Value::Null => Ok(None),
            _ => Err(invalid(message, &format!("'{field}' must be a string or nil"))),
        }
    }

    fn read_array_of_values(
        &mut self,
        message: &'static str,
        field: &str,
    ) -> Result<Vec<Value>, ProtocolError> {
        match self.read_value(0)? {
            Value::Array(items) => Ok(items),
            _ => Err(invalid(message, &format!("'{field}' must be an array"))),
        }
    }

    fn read_string_array(
        &mut self,
        message: &'static str,
        field: &str,
    ) -> Result<Vec<String>, ProtocolError> {
        match self.read_value(0)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Str(s) => Ok(s),
                    _ => Err(invalid(message, &format!("'{field}' must hold strings"))),
                })
                .collect(),
            Value::Null => Ok(Vec::new()),
            _ => Err(invalid(message, &format!("'{field}' must be an array"))),
        }
    }

    fn skip_value(&mut self) -> Result<(), ProtocolError> {
        self.read_value(0).map(drop)
    }

    fn read_string_of(&mut self, len: usize) -> Result<String, ProtocolError> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ProtocolError::MalformedMessagePack("string is not UTF-8".into()))
    }

    fn read_values(&mut self, n: usize, depth: usize) -> Result<Vec<Value>, ProtocolError> {
        // Each element takes at least one byte: never pre-allocate past the input.
        let mut items = Vec::with_capacity(n.min(self.bytes.len() - self.pos));
        for _ in 0..n {
            items.push(self.read_value(depth + 1)?);
        }
        Ok(items)
    }

    fn read_map(&mut self, n: usize, depth: usize) -> Result<Value, ProtocolError> {
        let mut entries = Vec::with_capacity(n.min((self.bytes.len() - self.pos) / 2));
        for _ in 0..n {
            let key = match self.read_value(depth + 1)? {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                _ => {
                    return Err(ProtocolError::MalformedMessagePack(
                        "map keys must be strings".into(),
                    ));
                }
            };
            let value = self.read_value(depth + 1)?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }

    fn read_ext(&mut self, len: usize) -> Result<Value, ProtocolError> {
        let ext_type = self.u8()? as i8;
        let data = self.take(len)?;
        if ext_type != TIMESTAMP_EXT {
            return Err(ProtocolError::MalformedMessagePack(format!(
                "unsupported extension type {ext_type}"
            )));
        }
        let (secs, nanos) = match data.len() {
            4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                (i64::from(u32::from_be_bytes(b)), 0)
            }
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                let v = u64::from_be_bytes(b);
                ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
            }
            12 => {
                let mut n = [0u8; 4];
                n.copy_from_slice(&data[..4]);
                let mut s = [0u8; 8];
                s.copy_from_slice(&data[4..]);
                (i64::from_be_bytes(s), u32::from_be_bytes(n))
            }
            other => {
                return Err(ProtocolError::MalformedMessagePack(format!(
                    "timestamp of {other} bytes"
                )));
            }
        };
        from_unix_parts(secs, nanos)
            .map(Value::Timestamp)
            .ok_or_else(|| ProtocolError::MalformedMessagePack("timestamp out of range".into()))
    }

    fn read_value(&mut self, depth: usize) -> Result<Value, ProtocolError> {
        if depth > MAX_DEPTH {
            return Err(ProtocolError::MalformedMessagePack(format!(
                "values nested deeper than {MAX_DEPTH}"
            )));
        }
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(ProtocolError::TooManyValues { limit: self.max_values })?;
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7f => Value::Int(i64::from(marker)),
            0x80..=0x8f => self.read_map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => Value::Array(self.read_values(usize::from(marker & 0x0f), depth)?),
            0xa0..=0xbf => Value::Str(self.read_string_of(usize::from(marker & 0x1f))?),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let len = self.len(1 << (marker - 0xc4))?;
                Value::Bin(self.take(len)?.to_vec())
            }
            0xc7..=0xc9 => {
                let len = self.len(1 << (marker - 0xc7))?;
                self.read_ext(len)?
            }
            0xca => Value::Float(f64::from(f32::from_be_bytes(self.be()?))),
            0xcb => Value::Float(f64::from_be_bytes(self.be()?)),
            0xcc..=0xcf => {
                let v = self.uint(1 << (marker - 0xcc))?;
                match i64::try_from(v) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Float(v as f64),
                }
            }
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(self.be()?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.be()?)),
            0xd4..=0xd8 => self.read_ext(1 << (marker - 0xd4))?,
            0xd9..=0xdb => {
                let len = self.len(1 << (marker - 0xd9))?;
                Value::Str(self.read_string_of(len)?)
            }
            0xdc | 0xdd => {
                let len = self.len(if marker == 0xdc { 2 } else { 4 })?;
                Value::Array(self.read_values(len, depth)?)
            }
            0xde | 0xdf => {
                let len = self.len(if marker == 0xde { 2 } else { 4 })?;
                self.read_map(len, depth)?
            }
            0xe0..=0xff => Value::Int(i64::from(marker as i8)),
            0xc1 => {
                return Err(ProtocolError::MalformedMessagePack(
                    "marker 0xc1 is never used".into(),
                ));
            }
        })
    }
}

fn write_message(out: &mut Vec<u8>, message: &HubMessage) {
    match message {
        HubMessage::Invocation { invocation_id, target, arguments, stream_ids } => {
            write_array_len(out, 6);
            write_int(out, message_type::INVOCATION);
            write_map_len(out, 0);
            match invocation_id {
                Some(id) => write_str(out, id),
                None => out.push(0xc0),
            }
            write_call(out, target, arguments, stream_ids);
        }
        HubMessage::StreamInvocation { invocation_id, target, arguments, stream_ids } => {
            write_array_len(out, 6);
            write_int(out, message_type::STREAM_INVOCATION);
            write_map_len(out, 0);
            write_str(out, invocation_id);
            write_call(out, target, arguments, stream_ids);
        }
        HubMessage::StreamItem { invocation_id, item } => {
            write_array_len(out, 4);
            write_int(out, message_type::STREAM_ITEM);
            write_map_len(out, 0);
            write_str(out, invocation_id);
            write_value(out, item);
        }
        HubMessage::Completion { invocation_id, outcome } => {
            write_array_len(out, if matches!(outcome, Outcome::Void) { 4 } else { 5 });
            write_int(out, message_type::COMPLETION);
            write_map_len(out, 0);
            write_str(out, invocation_id);
            match outcome {
                Outcome::Void => write_int(out, RESULT_VOID as i64),
                Outcome::Error(error) => {
                    write_int(out, RESULT_ERROR as i64);
                    write_str(out, error);
                }
                Outcome::Result(value) => {
                    write_int(out, RESULT_VALUE as i64);
                    write_value(out, value);
                }
            }
        }
        HubMessage::CancelInvocation { invocation_id } => {
            write_array_len(out, 3);
            write_int(out, message_type::CANCEL_INVOCATION);
            write_map_len(out, 0);
            write_str(out, invocation_id);
        }
        HubMessage::Ping => {
            write_array_len(out, 1);
            write_int(out, message_type::PING);
        }
        HubMessage::Close { error, allow_reconnect } => {
            write_array_len(out, 3);
            write_int(out, message_type::CLOSE);
            match error {
                Some(error) => write_str(out, error),
                None => out.push(0xc0),
            }
            out.push(if *allow_reconnect { 0xc3 } else { 0xc2 });
        }
        HubMessage::Ack { sequence_id } => {
            write_array_len(out, 2);
            write_int(out, message_type::ACK);
            write_int(out, *sequence_id);
        }
        HubMessage::Sequence { sequence_id } => {
            write_array_len(out, 2);
            write_int(out, message_type::SEQUENCE);
            write_int(out, *sequence_id);
        }
    }
}

fn write_call(out: &mut Vec<u8>, target: &str, arguments: &[Value], stream_ids: &[String]) {
    write_str(out, target);
    write_array_len(out, arguments.len());
    for argument in arguments {
        write_value(out, argument);
    }
    write_array_len(out, stream_ids.len());
    for id in stream_ids {
        write_str(out, id);
    }
}

/// Writes one hub value in MessagePack's smallest form, as MessagePack-CSharp does.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => write_int(out, *i),
        Value::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => write_str(out, s),
        Value::Bin(bytes) => {
            write_len(out, bytes.len(), None, [0xc4, 0xc5, 0xc6]);
            out.extend_from_slice(bytes);
        }
        Value::Array(items) => {
            write_array_len(out, items.len());
            for item in items {
                write_value(out, item);
            }
        }
        Value::Map(entries) => {
            write_map_len(out, entries.len());
            for (key, value) in entries {
                write_str(out, key);
                write_value(out, value);
            }
        }
        Value::Timestamp(t) => write_timestamp(out, *t),
    }
}

fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = unix_parts(t);
    if secs >> 34 == 0 {
        let data = (u64::from(nanos) << 34) | secs as u64;
        if data >> 32 == 0 {
            out.extend_from_slice(&[0xd6, TIMESTAMP_EXT as u8]);
            out.extend_from_slice(&(data as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&[0xd7, TIMESTAMP_EXT as u8]);
            out.extend_from_slice(&data.to_be_bytes());
        }
    } else {
        out.extend_from_slice(&[0xc7, 12, TIMESTAMP_EXT as u8]);
        out.extend_from_slice(&nanos.to_be_bytes());
        out.extend_from_slice(&secs.to_be_bytes());
    }
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if i >= 0 {
        let u = i as u64;
        if u < 0x80 {
            out.push(u as u8);
        } else if u <= u64::from(u8::MAX) {
            out.extend_from_slice(&[0xcc, u as u8]);
        } else if u <= u64::from(u16::MAX) {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u <= u64::from(u32::MAX) {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    } else if i >= -32 {
        out.push(i as u8);
    } else if i >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, i as u8]);
    } else if i >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_len(out, s.len(), Some((0xa0, 32)), [0xd9, 0xda, 0xdb]);
    out.extend_from_slice(s.as_bytes());
}

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, Some((0x90, 16)), [0, 0xdc, 0xdd]);
}

fn write_map_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, Some((0x80, 16)), [0, 0xde, 0xdf]);
}

/// Writes a length in the smallest form: `fix` = (marker base, exclusive bound),
/// then 8-, 16- and 32-bit markers (0 where that width does not exist).
fn write_len(out: &mut Vec<u8>, len: usize, fix: Option<(u8, usize)>, markers: [u8; 3]) {
    match fix {
        Some((base, bound)) if len < bound => out.push(base | len as u8),
        _ if len <= usize::from(u8::MAX) && markers[0] != 0 => {
            out.extend_from_slice(&[markers[0], len as u8]);
        }
        _ if len <= usize::from(u16::MAX) => {
            out.push(markers[1]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(markers[2]);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

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
            let mut reader =
                Reader { bytes: &out, pos: 0, values_left: usize::MAX, max_values: usize::MAX };
            assert_eq!(reader.read_value(0), Ok(value));
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
