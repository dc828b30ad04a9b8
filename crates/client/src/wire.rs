//! The seam to the SignalR codec in `next-chat-signalr` and the hub contract in
//! `next-chat-contract`: builds the hub messages this client sends and reads
//! the typed values out of the ones it receives. Nothing here knows JSON or
//! MessagePack (the codec does) or the shapes' keys (the contract does).

use next_chat_contract as contract;
use next_chat_contract::Method;
use next_chat_signalr::protocol::{HubMessage, Outcome, Protocol as WireProtocol};
use next_chat_signalr::value::Value;

use crate::error::ClientError;
use crate::model::{JoinResult, Message};
use crate::options::Protocol;

pub(crate) fn wire_protocol(protocol: Protocol) -> WireProtocol {
    match protocol {
        Protocol::Json => WireProtocol::Json,
        Protocol::MessagePack => WireProtocol::MessagePack,
    }
}

/// The hub protocol version this client asks for in the handshake. Version 1 is
/// what every server speaks; the client needs nothing from version 2.
pub(crate) const HUB_PROTOCOL_VERSION: i64 = 1;

pub(crate) fn invocation(id: String, method: Method, arguments: Vec<Value>) -> HubMessage {
    HubMessage::Invocation {
        invocation_id: Some(id),
        target: method.name().to_string(),
        arguments,
        stream_ids: Vec::new(),
    }
}

pub(crate) fn optional_str(value: Option<&str>) -> Value {
    value.map_or(Value::Null, Value::from)
}

/// The result of a call that returns nothing; a server error becomes `Server`.
pub(crate) fn expect_void(outcome: Outcome) -> Result<(), ClientError> {
    match outcome {
        Outcome::Void | Outcome::Result(_) => Ok(()),
        Outcome::Error(error) => Err(ClientError::Server(error)),
    }
}

/// The result value of a call that returns one (a missing result is an error).
pub(crate) fn expect_result(method: Method, outcome: Outcome) -> Result<Value, ClientError> {
    match outcome {
        Outcome::Result(value) => Ok(value),
        Outcome::Void => {
            Err(ClientError::Protocol(format!("{} completed without a result", method.name())))
        }
        Outcome::Error(error) => Err(ClientError::Server(error)),
    }
}

pub(crate) fn join_result(value: &Value) -> Result<JoinResult, ClientError> {
    match value.as_i64().and_then(contract::JoinResult::from_wire) {
        Some(contract::JoinResult::Ok) => Ok(JoinResult::Joined),
        Some(contract::JoinResult::NoRoom) => Ok(JoinResult::NoRoom),
        None => Err(ClientError::Protocol(format!("JoinGroup returned {value:?}, not 0 or 1"))),
    }
}

/// `Group[]`: the group ids, in the server's order.
pub(crate) fn group_ids(value: &Value) -> Result<Vec<String>, ClientError> {
    contract::group_ids(value).map_err(protocol_error)
}

pub(crate) fn strings(value: &Value, what: &str) -> Result<Vec<String>, ClientError> {
    let items = value.as_array().ok_or_else(|| {
        ClientError::Protocol(format!("expected a list of {what}, got {value:?}"))
    })?;
    items
        .iter()
        .map(|item| {
            item.as_str().map(str::to_string).ok_or_else(|| {
                ClientError::Protocol(format!("expected {what} as strings, got {item:?}"))
            })
        })
        .collect()
}

pub(crate) fn messages(value: &Value) -> Result<Vec<Message>, ClientError> {
    Message::list_from_value(value).map_err(protocol_error)
}

pub(crate) fn message(value: &Value) -> Result<Message, ClientError> {
    Message::from_value(value).map_err(protocol_error)
}

fn protocol_error(error: contract::DecodeError) -> ClientError {
    ClientError::Protocol(error.0)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn reads_a_message_from_json_and_messagepack_shapes() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_846_674_123);
        for send_time in [Value::from("2026-11-28T06:17:54.123Z"), Value::Timestamp(t)] {
            let value = map(&[
                ("id", "1-0".into()),
                ("authorId", "alice".into()),
                ("groupId", "g".into()),
                ("sendTime", send_time),
                ("text", "hi".into()),
            ]);
            let m = message(&value).expect("a valid message");
            assert_eq!(
                m,
                Message {
                    id: "1-0".into(),
                    author_id: "alice".into(),
                    group_id: "g".into(),
                    send_time: t,
                    text: "hi".into()
                }
            );
        }
    }

    #[test]
    fn a_message_without_text_is_a_protocol_error() {
        let value = map(&[
            ("id", "1-0".into()),
            ("authorId", "alice".into()),
            ("groupId", "g".into()),
            ("sendTime", "2026-11-28T06:17:54.123Z".into()),
        ]);
        assert!(matches!(message(&value), Err(ClientError::Protocol(e)) if e.contains("text")));
    }

    #[test]
    fn reads_join_results_and_group_lists() {
        assert_eq!(join_result(&Value::Int(0)), Ok(JoinResult::Joined));
        assert_eq!(join_result(&Value::Int(1)), Ok(JoinResult::NoRoom));
        assert!(join_result(&Value::Int(2)).is_err());
        let groups =
            Value::Array(vec![map(&[("groupId", "a".into())]), map(&[("GroupId", "b".into())])]);
        assert_eq!(group_ids(&groups), Ok(vec!["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn a_server_error_keeps_its_text() {
        let outcome = Outcome::Error("groupId must not be blank".into());
        assert_eq!(
            expect_void(outcome),
            Err(ClientError::Server("groupId must not be blank".into()))
        );
    }
}
