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
