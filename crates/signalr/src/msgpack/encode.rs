//! Writing one record body as ASP.NET Core's `MessagePackHubProtocol` does:
//! an empty headers map, an Invocation always of 6 elements, integers in their
//! smallest form, doubles as float64, timestamps as extension -1.
//!
//! The primitives are `rmp`'s, which pick the same smallest forms as
//! MessagePack-CSharp (positive integers as unsigned, `str8` for 32 to 255
//! bytes). Writing to a `Vec` cannot fail, so their `io::Error` results are
//! dropped in one place ([`infallible`]).

use std::time::SystemTime;

use rmp::encode as rmp_write;

use super::{RESULT_ERROR, RESULT_VALUE, RESULT_VOID, TIMESTAMP_EXT};
use crate::protocol::{HubMessage, Outcome, message_type};
use crate::value::{Value, unix_parts};

/// Drops the result of a write to a `Vec`, whose `io::Write` never fails.
#[inline]
fn infallible<T, E>(_written: Result<T, E>) {}

pub(super) fn write_message(out: &mut Vec<u8>, message: &HubMessage) {
    match message {
        HubMessage::Invocation { invocation_id, target, arguments, stream_ids } => {
            write_header(out, 6, message_type::INVOCATION);
            match invocation_id {
                Some(id) => write_str(out, id),
                None => infallible(rmp_write::write_nil(out)),
            }
            write_call(out, target, arguments, stream_ids);
        }
        HubMessage::StreamInvocation { invocation_id, target, arguments, stream_ids } => {
            write_header(out, 6, message_type::STREAM_INVOCATION);
            write_str(out, invocation_id);
            write_call(out, target, arguments, stream_ids);
        }
        HubMessage::StreamItem { invocation_id, item } => {
            write_header(out, 4, message_type::STREAM_ITEM);
            write_str(out, invocation_id);
            write_value(out, item);
        }
        HubMessage::Completion { invocation_id, outcome } => {
            let len = if matches!(outcome, Outcome::Void) { 4 } else { 5 };
            write_header(out, len, message_type::COMPLETION);
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
            write_header(out, 3, message_type::CANCEL_INVOCATION);
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
                None => infallible(rmp_write::write_nil(out)),
            }
            infallible(rmp_write::write_bool(out, *allow_reconnect));
        }
        HubMessage::Ack { sequence_id } | HubMessage::Sequence { sequence_id } => {
            let kind = if matches!(message, HubMessage::Ack { .. }) {
                message_type::ACK
            } else {
                message_type::SEQUENCE
            };
            write_array_len(out, 2);
            write_int(out, kind);
            write_int(out, *sequence_id);
        }
    }
}

/// The array of `len` elements, the message type and an empty headers map.
fn write_header(out: &mut Vec<u8>, len: usize, kind: i64) {
    write_array_len(out, len);
    write_int(out, kind);
    infallible(rmp_write::write_map_len(out, 0));
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
        Value::Null => infallible(rmp_write::write_nil(out)),
        Value::Bool(b) => infallible(rmp_write::write_bool(out, *b)),
        Value::Int(i) => write_int(out, *i),
        Value::Float(f) => infallible(rmp_write::write_f64(out, *f)),
        Value::Str(s) => write_str(out, s),
        Value::Bin(bytes) => infallible(rmp_write::write_bin(out, bytes)),
        Value::Array(items) => {
            write_array_len(out, items.len());
            for item in items {
                write_value(out, item);
            }
        }
        Value::Map(entries) => {
            infallible(rmp_write::write_map_len(out, len_u32(entries.len())));
            for (key, value) in entries {
                write_str(out, key);
                write_value(out, value);
            }
        }
        Value::Timestamp(t) => write_timestamp(out, *t),
    }
}

/// The timestamp extension in the 32-, 64- or 96-bit form, the smallest that holds it.
fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = unix_parts(t);
    if secs >> 34 == 0 {
        let data = (u64::from(nanos) << 34) | secs as u64;
        if data >> 32 == 0 {
            infallible(rmp_write::write_ext_meta(out, 4, TIMESTAMP_EXT));
            out.extend_from_slice(&(data as u32).to_be_bytes());
        } else {
            infallible(rmp_write::write_ext_meta(out, 8, TIMESTAMP_EXT));
            out.extend_from_slice(&data.to_be_bytes());
        }
    } else {
        infallible(rmp_write::write_ext_meta(out, 12, TIMESTAMP_EXT));
        out.extend_from_slice(&nanos.to_be_bytes());
        out.extend_from_slice(&secs.to_be_bytes());
    }
}

/// Non-negative integers as unsigned, negative ones signed, smallest form first.
fn write_int(out: &mut Vec<u8>, i: i64) {
    infallible(rmp_write::write_sint(out, i));
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    infallible(rmp_write::write_str(out, s));
}

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    infallible(rmp_write::write_array_len(out, len_u32(len)));
}

/// MessagePack lengths are 32-bit; a record is capped far below that (the
/// length prefix allows 2 GiB), so a longer collection cannot be sent anyway.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// The hand-written writer this module had before it used `rmp`, kept as the
    /// oracle the new output is compared with byte for byte.
    mod hand_written {
        use std::time::SystemTime;

        use super::super::TIMESTAMP_EXT;
        use crate::value::{Value, unix_parts};

        pub(super) fn write_value(out: &mut Vec<u8>, value: &Value) {
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
    }

    /// Integers at and around every boundary of MessagePack's forms, strings,
    /// binaries, arrays and maps at their length boundaries, and timestamps in
    /// each extension form.
    fn edge_values() -> Vec<Value> {
        let mut values = vec![Value::Null, Value::Bool(true), Value::Bool(false)];
        for bound in [0i64, 32, 128, 256, 32_768, 65_536, 1 << 31, 1 << 32, 1 << 62] {
            for i in [bound - 1, bound, bound + 1] {
                values.extend([Value::Int(i), Value::Int(-i)]);
            }
        }
        values.extend([Value::Int(i64::MIN), Value::Int(i64::MAX)]);
        values
            .extend([0.0, -0.0, 1.5, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE].map(Value::Float));
        for len in [0usize, 1, 15, 16, 31, 32, 255, 256, 65_535, 65_536] {
            values.push(Value::Str("é".repeat(len / 2) + &"x".repeat(len % 2)));
            values.push(Value::Str("x".repeat(len)));
            values.push(Value::Bin(vec![7; len]));
            values.push(Value::Array(vec![Value::Null; len]));
            values.push(Value::Map((0..len).map(|i| (i.to_string(), Value::Int(1))).collect()));
        }
        for (secs, nanos) in [
            (0, 0),
            (1, 0),
            ((1 << 32) - 1, 0),
            (1 << 32, 0),
            (1, 1),
            ((1 << 34) - 1, 999_999_999),
            (1 << 34, 0),
        ] {
            values.push(Value::Timestamp(UNIX_EPOCH + Duration::new(secs, nanos)));
        }
        values.push(Value::Timestamp(UNIX_EPOCH - Duration::new(1, 1)));
        values
    }

    #[test]
    fn writes_what_the_hand_written_code_wrote() {
        let values = edge_values();
        for value in &values {
            let (mut new, mut old) = (Vec::new(), Vec::new());
            write_value(&mut new, value);
            hand_written::write_value(&mut old, value);
            assert_eq!(new, old, "{value:?}");
        }
        let (mut new, mut old) = (Vec::new(), Vec::new());
        write_value(&mut new, &Value::Array(values.clone()));
        hand_written::write_value(&mut old, &Value::Array(values));
        assert_eq!(new, old);
    }
}
