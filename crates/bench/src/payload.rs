//! The text of a bench message: a header that identifies the message and when it
//! was sent, padded to the requested length.
//!
//! `#m.1f.2a.17b3c.xxxx…`: `#`, the phase (`w` warm-up, `m` measured), then the
//! sender's index, the sequence number and the send time (nanoseconds since the
//! bench started) in hexadecimal, each followed by `.`, then `x` up to the length.
//! Everything is ASCII, so characters are bytes and JSON needs no escapes: a
//! receiver can read the header straight out of the record.

use std::fmt::Write;

/// Whether a message counts in the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sent during the warm-up: delivered and checked, but not counted.
    Warmup,
    Measured,
}

/// What a receiver reads out of a bench message's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub phase: Phase,
    /// The sending connection's index.
    pub sender: u32,
    /// The sender's sequence number, from 0, warm-up included.
    pub seq: u64,
    /// Nanoseconds since the bench's clock started, when it was sent.
    pub sent_at: u64,
}

/// Writes the text of length `length` (at least the header) into `out`.
pub fn write(out: &mut String, header: Header, length: usize) {
    out.clear();
    let phase = match header.phase {
        Phase::Warmup => 'w',
        Phase::Measured => 'm',
    };
    // Writing to a String cannot fail.
    let _ = write!(out, "#{phase}.{:x}.{:x}.{:x}.", header.sender, header.seq, header.sent_at);
    let padding = length.saturating_sub(out.len());
    out.extend(std::iter::repeat_n('x', padding));
}

/// Reads the header at the start of `text`; `None` when it is not a bench message.
pub fn parse(text: &[u8]) -> Option<Header> {
    let phase = match text.get(..3)? {
        b"#w." => Phase::Warmup,
        b"#m." => Phase::Measured,
        _ => return None,
    };
    let mut rest = &text[3..];
    let mut field = || -> Option<u64> {
        let end = rest.iter().take(17).position(|b| *b == b'.')?;
        let mut value: u64 = 0;
        for &b in &rest[..end] {
            let digit = (b as char).to_digit(16)?;
            value = value.checked_mul(16)?.checked_add(u64::from(digit))?;
        }
        if end == 0 {
            return None;
        }
        rest = &rest[end + 1..];
        Some(value)
    };
    let sender = u32::try_from(field()?).ok()?;
    let seq = field()?;
    let sent_at = field()?;
    Some(Header { phase, sender, seq, sent_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads_to_the_length() {
        let header = Header { phase: Phase::Measured, sender: 31, seq: 42, sent_at: 97_084 };
        let mut text = String::new();
        write(&mut text, header, 40);
        assert_eq!(text.len(), 40);
        assert!(text.starts_with("#m.1f.2a.17b3c.xxx"));
        assert_eq!(parse(text.as_bytes()), Some(header));
    }

    #[test]
    fn a_short_length_keeps_the_whole_header() {
        let header = Header { phase: Phase::Warmup, sender: 0, seq: 0, sent_at: 0 };
        let mut text = String::new();
        write(&mut text, header, 1);
        assert_eq!(text, "#w.0.0.0.");
        assert_eq!(parse(text.as_bytes()), Some(header));
    }

    #[test]
    fn other_texts_are_not_bench_messages() {
        for text in ["hi", "#m.", "#m.1.2.", "#x.1.2.3.", "#m.g.2.3.", "#m..2.3."] {
            assert_eq!(parse(text.as_bytes()), None, "{text}");
        }
    }
}
