//! What the fuzz targets share: how one input becomes a stream of chunks and a
//! message limit, and the checks every hub protocol decoder must pass.

use next_chat_signalr::{HubMessage, Outcome, Protocol, Value};

/// The first two bytes of a decoder input choose how the rest is cut into chunks
/// and the message limit, so the fuzzer explores both and the rest stays the
/// stream itself (seeds are a two-byte prefix and real records).
pub struct Stream<'a> {
    pub chunks: Vec<&'a [u8]>,
    pub max_message_size: usize,
    pub bytes: &'a [u8],
}

impl<'a> Stream<'a> {
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let (&[split, limit], bytes) = data.split_first_chunk::<2>()?;
        // 16..=4096: small enough that the fuzzer meets the limit with short inputs.
        let max_message_size = 16 * (usize::from(limit) + 1);
        let mut chunks = Vec::new();
        let mut rest = bytes;
        // A cheap generator seeded by the first byte: chunk lengths 1..=split+1
        // varying per chunk, so a record's end falls anywhere in a chunk.
        let mut state = u32::from(split) | 0x100;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let len = (state as usize % (usize::from(split) + 1) + 1).min(rest.len());
            let (chunk, tail) = rest.split_at(len);
            chunks.push(chunk);
            rest = tail;
        }
        Some(Self { chunks, max_message_size, bytes })
    }
}

/// What a decoder made of a stream: the messages, then whether it stopped on an
/// error (after which the stream is unusable and nothing more is read).
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub messages: Vec<HubMessage>,
    pub failed: bool,
}

/// Decodes the stream pushed in `chunks`, taking every whole message after each push,
/// as a connection does. Checks that the decoder never holds more than it was given.
pub fn decode<'a>(
    protocol: Protocol,
    max_message_size: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Decoded {
    let mut decoder = protocol.decoder(max_message_size);
    let mut messages = Vec::new();
    let mut pushed = 0;
    for chunk in chunks {
        decoder.push(chunk);
        pushed += chunk.len();
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(_) => return Decoded { messages, failed: true },
            }
        }
        assert!(decoder.buffered() <= pushed, "buffered more bytes than were pushed");
    }
    Decoded { messages, failed: false }
}

/// The properties every decoder must have, on any input:
/// - no panic, no allocation beyond libFuzzer's limits (checked by libFuzzer);
/// - cutting the stream into other chunks changes nothing;
/// - every decoded message encodes to a record that decodes to the same message.
pub fn check_decoder(protocol: Protocol, data: &[u8]) {
    let Some(stream) = Stream::split(data) else {
        return;
    };
    let limit = stream.max_message_size;
    let chunked = decode(protocol, limit, stream.chunks.iter().copied());
    let whole = decode(protocol, limit, [stream.bytes]);
    // Debug text, so that a NaN compares equal to itself.
    assert_eq!(
        format!("{chunked:?}"),
        format!("{whole:?}"),
        "the chunking changed what was decoded"
    );
    for message in &chunked.messages {
        if !round_trips(message) {
            continue;
        }
        let record = protocol.encode(message);
        // The message was at most `limit` bytes on the wire, but its re-encoding may
        // be longer (JSON escapes, a float's shortest form): no limit here.
        let again = decode(protocol, usize::MAX, [&record[..]]);
        assert!(!again.failed, "{protocol} could not decode its own encoding of {message:?}");
        assert_eq!(
            again.messages,
            std::slice::from_ref(message),
            "{protocol} round trip changed the message"
        );
    }
}

/// Whether a decoded message is expected to survive encode → decode unchanged.
/// NaN never equals itself, and JSON has no NaN or infinity (written as null).
/// Finite JSON floats do round-trip: the workspace enables serde_json's
/// `float_roundtrip`, whose parser is correctly rounded (its default one could
/// read `-3e50`, written back in its shortest form, one unit in the last place off).
fn round_trips(message: &HubMessage) -> bool {
    let exact = |value: &Value| {
        values(value).all(|v| match v {
            Value::Float(f) => f.is_finite(),
            _ => true,
        })
    };
    match message {
        HubMessage::Invocation { arguments, .. }
        | HubMessage::StreamInvocation { arguments, .. } => arguments.iter().all(exact),
        HubMessage::StreamItem { item, .. } => exact(item),
        HubMessage::Completion { outcome: Outcome::Result(result), .. } => exact(result),
        _ => true,
    }
}

/// A value and everything nested in it.
fn values(value: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    let nested: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter().flat_map(values)),
        Value::Map(entries) => Box::new(entries.iter().flat_map(|(_, v)| values(v))),
        _ => Box::new(std::iter::empty()),
    };
    Box::new(std::iter::once(value).chain(nested))
}
