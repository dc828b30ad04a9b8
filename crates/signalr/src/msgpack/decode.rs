//! Reading one record body: the hub message's array, then each value, bounded
//! in depth and in count, so a hostile record costs no more than its size.
//!
//! `rmp` classifies each marker ([`Marker`]) and reads the record's outer array
//! header; the value tree is built here because it must stay lenient (unknown
//! trailing elements, integer map keys, `nil` string arrays) and bounded.

use rmp::Marker;

use super::{RESULT_ERROR, RESULT_VALUE, RESULT_VOID, TIMESTAMP_EXT};
use crate::protocol::{HubMessage, Outcome, ProtocolError, message_type};
use crate::value::{Value, from_unix_parts};

/// Values nested deeper than this are refused, so a peer cannot exhaust our stack.
const MAX_DEPTH: usize = 64;

/// Decodes one record body holding at most `max_values` values (see
/// [`crate::protocol::BYTES_PER_VALUE`]).
pub fn decode_body_within(body: &[u8], max_values: usize) -> Result<HubMessage, ProtocolError> {
    let mut reader = Reader::new(body, max_values);
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
    let mut message = Fields { reader, len };
    match kind {
        message_type::INVOCATION | message_type::STREAM_INVOCATION => message.invocation(kind),
        message_type::STREAM_ITEM => {
            let invocation_id = message.after_headers(4, "StreamItem", "invocationId")?;
            let item = message.reader.read_value(0)?;
            Ok(HubMessage::StreamItem { invocation_id, item })
        }
        message_type::COMPLETION => message.completion(),
        message_type::CANCEL_INVOCATION => Ok(HubMessage::CancelInvocation {
            invocation_id: message.after_headers(3, "CancelInvocation", "invocationId")?,
        }),
        message_type::PING => Ok(HubMessage::Ping),
        message_type::CLOSE => message.close(),
        message_type::ACK | message_type::SEQUENCE => message.sequence(kind),
        other => Err(ProtocolError::UnknownMessageType(other)),
    }
}

fn invalid(message: &'static str, reason: &str) -> ProtocolError {
    ProtocolError::InvalidMessage { message, reason: reason.to_owned() }
}

/// The elements after the message type, and how many the array holds.
struct Fields<'a> {
    reader: Reader<'a>,
    len: usize,
}

impl Fields<'_> {
    fn needs(&self, min: usize, name: &'static str) -> Result<(), ProtocolError> {
        if self.len < min {
            let len = self.len;
            return Err(invalid(name, &format!("expected at least {min} elements, got {len}")));
        }
        Ok(())
    }

    /// Skips the headers map and reads the invocation id that follows it.
    fn after_headers(
        &mut self,
        min: usize,
        name: &'static str,
        field: &str,
    ) -> Result<String, ProtocolError> {
        self.needs(min, name)?;
        self.reader.skip_value()?;
        self.reader.read_str(name, field)
    }

    fn invocation(&mut self, kind: i64) -> Result<HubMessage, ProtocolError> {
        let streaming = kind == message_type::STREAM_INVOCATION;
        let name = if streaming { "StreamInvocation" } else { "Invocation" };
        self.needs(5, name)?;
        let reader = &mut self.reader;
        reader.skip_value()?; // headers
        let invocation_id = reader.read_optional_str(name, "invocationId")?;
        let target = reader.read_str(name, "target")?;
        let arguments = reader.read_array_of_values(name, "arguments")?;
        let stream_ids =
            if self.len >= 6 { reader.read_string_array(name, "streamIds")? } else { Vec::new() };
        if !streaming {
            return Ok(HubMessage::Invocation { invocation_id, target, arguments, stream_ids });
        }
        Ok(HubMessage::StreamInvocation {
            invocation_id: invocation_id.ok_or_else(|| invalid(name, "missing 'invocationId'"))?,
            target,
            arguments,
            stream_ids,
        })
    }

    fn completion(&mut self) -> Result<HubMessage, ProtocolError> {
        let invocation_id = self.after_headers(4, "Completion", "invocationId")?;
        let result_kind = self
            .reader
            .read_value(0)?
            .as_i64()
            .ok_or_else(|| invalid("Completion", "the result kind must be an integer"))?;
        let outcome = match u64::try_from(result_kind) {
            Ok(RESULT_VOID) => Outcome::Void,
            Ok(RESULT_ERROR) => {
                self.needs(5, "Completion")?;
                Outcome::Error(self.reader.read_str("Completion", "error")?)
            }
            Ok(RESULT_VALUE) => {
                self.needs(5, "Completion")?;
                Outcome::Result(self.reader.read_value(0)?)
            }
            _ => {
                let reason = format!("unknown result kind {result_kind}");
                return Err(invalid("Completion", &reason));
            }
        };
        Ok(HubMessage::Completion { invocation_id, outcome })
    }

    fn close(&mut self) -> Result<HubMessage, ProtocolError> {
        let error =
            if self.len >= 2 { self.reader.read_optional_str("Close", "error")? } else { None };
        let allow_reconnect = if self.len >= 3 {
            self.reader.read_value(0)?.as_bool().unwrap_or(false)
        } else {
            false
        };
        Ok(HubMessage::Close { error, allow_reconnect })
    }

    fn sequence(&mut self, kind: i64) -> Result<HubMessage, ProtocolError> {
        let name = if kind == message_type::ACK { "Ack" } else { "Sequence" };
        self.needs(2, name)?;
        let sequence_id = self
            .reader
            .read_value(0)?
            .as_i64()
            .ok_or_else(|| invalid(name, "'sequenceId' must be an integer"))?;
        Ok(if kind == message_type::ACK {
            HubMessage::Ack { sequence_id }
        } else {
            HubMessage::Sequence { sequence_id }
        })
    }
}

/// A bounds-checked cursor over one record body.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Values still allowed in this record, so a record of many tiny values cannot
    /// decode to a tree many times its size.
    values_left: usize,
    max_values: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], max_values: usize) -> Self {
        Reader { bytes, pos: 0, values_left: max_values, max_values }
    }

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

    /// A length of 1, 2 or 4 big-endian bytes.
    fn len(&mut self, width: usize) -> Result<usize, ProtocolError> {
        let len = match width {
            1 => u32::from(self.u8()?),
            2 => u32::from(u16::from_be_bytes(self.be()?)),
            _ => u32::from_be_bytes(self.be()?),
        };
        usize::try_from(len)
            .map_err(|_| ProtocolError::MalformedMessagePack("length does not fit".into()))
    }

    /// The record's outer array header, read by `rmp`.
    fn read_array_len(&mut self) -> Result<usize, ProtocolError> {
        let mut rest = &self.bytes[self.pos..];
        let before = rest.len();
        let len = rmp::decode::read_array_len(&mut rest).map_err(|e| match e {
            rmp::decode::ValueReadError::TypeMismatch(marker) => {
                ProtocolError::MalformedMessagePack(format!(
                    "expected an array, found marker 0x{:02x}",
                    marker.to_u8()
                ))
            }
            _ => ProtocolError::Truncated("the record ends inside its array header".into()),
        })?;
        self.pos += before - rest.len();
        usize::try_from(len)
            .map_err(|_| ProtocolError::MalformedMessagePack("length does not fit".into()))
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

    /// An extension's type and data; only the timestamp (-1) is understood, in its
    /// 32-, 64- and 96-bit forms.
    fn read_ext(&mut self, len: usize) -> Result<Value, ProtocolError> {
        let ext_type = self.u8()? as i8;
        let data = self.take(len)?;
        if ext_type != TIMESTAMP_EXT {
            return Err(ProtocolError::MalformedMessagePack(format!(
                "unsupported extension type {ext_type}"
            )));
        }
        let (secs, nanos) = match *data {
            [a, b, c, d] => (i64::from(u32::from_be_bytes([a, b, c, d])), 0),
            [a, b, c, d, e, f, g, h] => {
                let v = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
                ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
            }
            [n0, n1, n2, n3, s0, s1, s2, s3, s4, s5, s6, s7] => (
                i64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
                u32::from_be_bytes([n0, n1, n2, n3]),
            ),
            _ => {
                return Err(ProtocolError::MalformedMessagePack(format!(
                    "timestamp of {len} bytes"
                )));
            }
        };
        from_unix_parts(secs, nanos)
            .map(Value::Timestamp)
            .ok_or_else(|| ProtocolError::MalformedMessagePack("timestamp out of range".into()))
    }

    pub(super) fn read_value(&mut self, depth: usize) -> Result<Value, ProtocolError> {
        if depth > MAX_DEPTH {
            return Err(ProtocolError::MalformedMessagePack(format!(
                "values nested deeper than {MAX_DEPTH}"
            )));
        }
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(ProtocolError::TooManyValues { limit: self.max_values })?;
        Ok(match Marker::from_u8(self.u8()?) {
            Marker::FixPos(n) => Value::Int(i64::from(n)),
            Marker::FixNeg(n) => Value::Int(i64::from(n)),
            Marker::Null => Value::Null,
            Marker::False => Value::Bool(false),
            Marker::True => Value::Bool(true),
            Marker::U8 => Value::Int(i64::from(self.u8()?)),
            Marker::U16 => Value::Int(i64::from(u16::from_be_bytes(self.be()?))),
            Marker::U32 => Value::Int(i64::from(u32::from_be_bytes(self.be()?))),
            Marker::U64 => {
                let v = u64::from_be_bytes(self.be()?);
                i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
            }
            Marker::I8 => Value::Int(i64::from(i8::from_be_bytes(self.be()?))),
            Marker::I16 => Value::Int(i64::from(i16::from_be_bytes(self.be()?))),
            Marker::I32 => Value::Int(i64::from(i32::from_be_bytes(self.be()?))),
            Marker::I64 => Value::Int(i64::from_be_bytes(self.be()?)),
            Marker::F32 => Value::Float(f64::from(f32::from_be_bytes(self.be()?))),
            Marker::F64 => Value::Float(f64::from_be_bytes(self.be()?)),
            Marker::FixStr(n) => Value::Str(self.read_string_of(usize::from(n))?),
            Marker::Str8 => Value::Str(self.read_string_with_len(1)?),
            Marker::Str16 => Value::Str(self.read_string_with_len(2)?),
            Marker::Str32 => Value::Str(self.read_string_with_len(4)?),
            Marker::Bin8 => Value::Bin(self.read_bin(1)?),
            Marker::Bin16 => Value::Bin(self.read_bin(2)?),
            Marker::Bin32 => Value::Bin(self.read_bin(4)?),
            Marker::FixArray(n) => Value::Array(self.read_values(usize::from(n), depth)?),
            Marker::Array16 => Value::Array(self.read_values_with_len(2, depth)?),
            Marker::Array32 => Value::Array(self.read_values_with_len(4, depth)?),
            Marker::FixMap(n) => self.read_map(usize::from(n), depth)?,
            Marker::Map16 => self.read_map_with_len(2, depth)?,
            Marker::Map32 => self.read_map_with_len(4, depth)?,
            Marker::FixExt1 => self.read_ext(1)?,
            Marker::FixExt2 => self.read_ext(2)?,
            Marker::FixExt4 => self.read_ext(4)?,
            Marker::FixExt8 => self.read_ext(8)?,
            Marker::FixExt16 => self.read_ext(16)?,
            Marker::Ext8 => self.read_ext_with_len(1)?,
            Marker::Ext16 => self.read_ext_with_len(2)?,
            Marker::Ext32 => self.read_ext_with_len(4)?,
            Marker::Reserved => {
                return Err(ProtocolError::MalformedMessagePack(
                    "marker 0xc1 is never used".into(),
                ));
            }
        })
    }

    fn read_string_with_len(&mut self, width: usize) -> Result<String, ProtocolError> {
        let len = self.len(width)?;
        self.read_string_of(len)
    }

    fn read_bin(&mut self, width: usize) -> Result<Vec<u8>, ProtocolError> {
        let len = self.len(width)?;
        Ok(self.take(len)?.to_vec())
    }

    fn read_values_with_len(
        &mut self,
        width: usize,
        depth: usize,
    ) -> Result<Vec<Value>, ProtocolError> {
        let len = self.len(width)?;
        self.read_values(len, depth)
    }

    fn read_map_with_len(&mut self, width: usize, depth: usize) -> Result<Value, ProtocolError> {
        let len = self.len(width)?;
        self.read_map(len, depth)
    }

    fn read_ext_with_len(&mut self, width: usize) -> Result<Value, ProtocolError> {
        let len = self.len(width)?;
        self.read_ext(len)
    }
}
