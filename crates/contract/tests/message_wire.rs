//! The `Message` mapping against the exact bytes the server writes for an
//! `OnMessage`, in JSON and in MessagePack (key order included), and back.

use std::time::{Duration, UNIX_EPOCH};

use next_chat_contract::{Callback, Message};
use next_chat_signalr::{HubMessage, Protocol};

fn message() -> Message {
    Message {
        id: "1732776000000-0".into(),
        author_id: "alice".into(),
        group_id: "off-topic".into(),
        send_time: UNIX_EPOCH + Duration::from_millis(1_795_846_674_123),
        text: "hi".into(),
    }
}

/// The record the server's hub sends for `message()`.
fn on_message(protocol: Protocol) -> Vec<u8> {
    protocol
        .encode(&HubMessage::Invocation {
            invocation_id: None,
            target: Callback::OnMessage.name().into(),
            arguments: vec![message().into_value()],
            stream_ids: Vec::new(),
        })
        .to_vec()
}

const JSON: &str = "{\"type\":1,\"target\":\"OnMessage\",\"arguments\":[{\
    \"id\":\"1732776000000-0\",\"authorId\":\"alice\",\"groupId\":\"off-topic\",\
    \"sendTime\":\"2026-11-28T06:17:54.123Z\",\"text\":\"hi\"}]}\u{1e}";

/// MessagePack: a fixstr header (0xa0 | length) and the bytes.
fn fixstr(s: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

fn messagepack() -> Vec<u8> {
    let mut body = vec![0x96, 0x01, 0x80, 0xc0]; // [1, {}, nil,
    body.extend(fixstr("OnMessage"));
    body.extend([0x91, 0x85]); // [ {five entries:
    for (key, value) in [("id", "1732776000000-0"), ("authorId", "alice"), ("groupId", "off-topic")]
    {
        body.extend(fixstr(key));
        body.extend(fixstr(value));
    }
    body.extend(fixstr("sendTime"));
    // timestamp 64: 123,000,000 ns in 30 bits, then 1,795,846,674 s in 34.
    body.extend([0xd7, 0xff, 0x1d, 0x53, 0x53, 0x00, 0x6b, 0x0a, 0x72, 0x12]);
    body.extend(fixstr("text"));
    body.extend(fixstr("hi"));
    body.push(0x90); // }], streamIds []]
    let mut record = vec![body.len() as u8]; // the varint length prefix (< 128)
    record.extend(body);
    record
}

#[test]
fn on_message_is_byte_for_byte_what_the_server_writes() {
    assert_eq!(String::from_utf8(on_message(Protocol::Json)).expect("UTF-8"), JSON);
    assert_eq!(on_message(Protocol::MessagePack), messagepack());
}

#[test]
fn a_message_decodes_back_from_both_protocols() {
    for (protocol, bytes) in
        [(Protocol::Json, JSON.as_bytes().to_vec()), (Protocol::MessagePack, messagepack())]
    {
        let mut decoder = protocol.decoder(usize::MAX);
        decoder.push(&bytes);
        let Ok(Some(HubMessage::Invocation { target, arguments, .. })) = decoder.next_message()
        else {
            panic!("{protocol:?}: not an invocation");
        };
        assert_eq!(Callback::parse(&target), Some(Callback::OnMessage));
        assert_eq!(arguments.len(), 1, "{protocol:?}");
        assert_eq!(Message::from_value(&arguments[0]), Ok(message()), "{protocol:?}");
    }
}
