//! The handshake as a server reads it: arbitrary bytes in arbitrary chunks until
//! the first record separator, the request parsed and a protocol chosen, then the
//! bytes after it decoded by that protocol (they may share the handshake's frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use next_chat_fuzz::{Stream, decode};
use next_chat_signalr::handshake::{
    HandshakeRequest, HandshakeResponse, MAX_PROTOCOL_VERSION, find_record_end,
};

fuzz_target!(|data: &[u8]| {
    let Some(stream) = Stream::split(data) else {
        return;
    };
    let limit = stream.max_message_size;
    let mut buffer = Vec::new();
    let mut end = None;
    for chunk in &stream.chunks {
        buffer.extend_from_slice(chunk);
        end = find_record_end(&buffer);
        if end.is_some() || buffer.len() > limit {
            break;
        }
    }
    let expected = stream.bytes.iter().position(|&b| b == 0x1e);
    let Some(end) = end else {
        assert!(expected.is_none() || buffer.len() > limit, "the separator was missed");
        return;
    };
    assert_eq!(Some(end), expected, "not the first separator");
    let record = &buffer[..end];

    // A client reads the server's answer with the same rules.
    if let Ok(response) = HandshakeResponse::parse(record) {
        let encoded = response.encode();
        let again = HandshakeResponse::parse(&encoded[..encoded.len() - 1]);
        assert_eq!(again.as_ref(), Ok(&response), "handshake response round trip");
    }

    let Ok(request) = HandshakeRequest::parse(record) else {
        return;
    };
    let encoded = request.encode();
    assert_eq!(encoded.last(), Some(&0x1e));
    let again = HandshakeRequest::parse(&encoded[..encoded.len() - 1]);
    assert_eq!(again.as_ref(), Ok(&request), "handshake request round trip");

    let Ok(protocol) = request.select_protocol() else {
        return;
    };
    assert_eq!(protocol.name(), request.protocol);
    assert!((0..=MAX_PROTOCOL_VERSION).contains(&request.version));
    let leftover = &stream.bytes[end + 1..];
    decode(protocol, limit, [leftover]);
});
