//! The values the methods and callbacks carry: `Message` and `Group`, as maps
//! with camelCase keys. JSON writes `sendTime` as RFC 3339 and MessagePack as
//! its timestamp extension; that choice is the codec's (`Value::Timestamp`).

use std::fmt;
use std::time::SystemTime;

use next_chat_signalr::Value;

/// The map keys, as written on the wire.
pub mod keys {
    pub const ID: &str = "id";
    pub const AUTHOR_ID: &str = "authorId";
    pub const GROUP_ID: &str = "groupId";
    pub const SEND_TIME: &str = "sendTime";
    pub const TEXT: &str = "text";

    /// A `Message`'s keys in the order the server writes them.
    pub const MESSAGE: [&str; 5] = [ID, AUTHOR_ID, GROUP_ID, SEND_TIME, TEXT];
    /// A `Group`'s keys.
    pub const GROUP: [&str; 1] = [GROUP_ID];
}

/// One chat message, as `OnMessage`, `OnHistory`, `GetHistory` and
/// `GetMessagesAfter` carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Opaque; unique within the group and increasing in delivery order.
    pub id: String,
    pub author_id: String,
    pub group_id: String,
    /// The server's time when it accepted the message.
    pub send_time: SystemTime,
    pub text: String,
}

/// A value that is not the shape the contract says, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Message {
    /// The message as its map, keys in [`keys::MESSAGE`] order.
    pub fn into_value(self) -> Value {
        Value::Map(vec![
            (keys::ID.into(), Value::Str(self.id)),
            (keys::AUTHOR_ID.into(), Value::Str(self.author_id)),
            (keys::GROUP_ID.into(), Value::Str(self.group_id)),
            (keys::SEND_TIME.into(), Value::Timestamp(self.send_time)),
            (keys::TEXT.into(), Value::Str(self.text)),
        ])
    }

    /// Reads a message map. Lenient as a reader should be: keys in any order
    /// and, failing the exact key, in any case (other servers' PascalCase);
    /// `sendTime` as a timestamp or an RFC 3339 string.
    pub fn from_value(value: &Value) -> Result<Message, DecodeError> {
        let text = |key: &str| {
            field(value, key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| DecodeError(format!("a message without {key}: {value:?}")))
        };
        let send_time = field(value, keys::SEND_TIME)
            .and_then(Value::as_timestamp)
            .ok_or_else(|| DecodeError(format!("a message without a valid sendTime: {value:?}")))?;
        Ok(Message {
            id: text(keys::ID)?,
            author_id: text(keys::AUTHOR_ID)?,
            group_id: text(keys::GROUP_ID)?,
            send_time,
            text: text(keys::TEXT)?,
        })
    }

    /// Reads a `Message[]`.
    pub fn list_from_value(value: &Value) -> Result<Vec<Message>, DecodeError> {
        value
            .as_array()
            .ok_or_else(|| DecodeError(format!("expected a list of messages, got {value:?}")))?
            .iter()
            .map(Message::from_value)
            .collect()
    }
}

/// A `Group`: `{"groupId": ...}`.
pub fn group_value(group_id: &str) -> Value {
    Value::Map(vec![(keys::GROUP_ID.into(), Value::Str(group_id.into()))])
}

/// A `Group[]`, in the order given.
pub fn groups_value<'a>(group_ids: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(group_ids.into_iter().map(group_value).collect())
}

/// Reads a `Group[]`: the group ids, in order.
pub fn group_ids(value: &Value) -> Result<Vec<String>, DecodeError> {
    let items = value
        .as_array()
        .ok_or_else(|| DecodeError(format!("expected a list of groups, got {value:?}")))?;
    items
        .iter()
        .map(|group| {
            field(group, keys::GROUP_ID)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| DecodeError(format!("a group without groupId: {group:?}")))
        })
        .collect()
}

/// A map entry by its key, or failing that by the same key in any case.
fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key).or_else(|| {
        value.as_map()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
    })
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
            let m = Message::from_value(&value).expect("a valid message");
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
    fn a_message_without_text_is_refused_naming_the_key() {
        let value = map(&[
            ("id", "1-0".into()),
            ("authorId", "alice".into()),
            ("groupId", "g".into()),
            ("sendTime", "2026-11-28T06:17:54.123Z".into()),
        ]);
        let error = Message::from_value(&value).expect_err("no text");
        assert!(error.0.starts_with("a message without text"), "{error}");
    }

    #[test]
    fn groups_round_trip_and_pascal_case_is_read() {
        let groups = groups_value(["a", "b"]);
        assert_eq!(group_ids(&groups), Ok(vec!["a".to_string(), "b".to_string()]));
        let pascal = Value::Array(vec![map(&[("GroupId", "c".into())])]);
        assert_eq!(group_ids(&pascal), Ok(vec!["c".to_string()]));
        assert!(group_ids(&Value::Array(vec![map(&[("id", "c".into())])])).is_err());
    }
}
