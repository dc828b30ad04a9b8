//! The handshake that opens every hub connection.
//!
//! The client's first record names the hub protocol and version
//! (`{"protocol":"json","version":1}` + 0x1e); the server answers `{}` + 0x1e, or
//! `{"error":"..."}` + 0x1e and closes. Both records are JSON text whatever protocol
//! is chosen. Bytes after the request in the same frame already belong to the chosen
//! protocol.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::json::{RECORD_SEPARATOR, write_str};
use crate::protocol::{Protocol, quote_untrusted};

/// The highest hub protocol version accepted, as ASP.NET Core (the JS and .NET
/// clients send 2; Python `signalrcore` sends 0 or 1).
pub const MAX_PROTOCOL_VERSION: i64 = 2;

/// The client's handshake request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    pub protocol: String,
    pub version: i64,
}

/// Why a handshake is refused; the text goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the handshake request is not valid: {0}")]
    Malformed(String),
    #[error("the handshake request exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("The protocol '{0}' is not supported.")]
    UnsupportedProtocol(String),
    #[error("The server does not support version {version} of the '{protocol}' protocol.")]
    UnsupportedVersion { protocol: String, version: i64 },
    #[error("The '{protocol}' protocol cannot be used over {transport}, which carries text only.")]
    TextOnlyTransport { protocol: String, transport: String },
    #[error("no handshake request within {seconds} s")]
    TimedOut { seconds: u64 },
}

impl HandshakeRequest {
    pub fn new(protocol: Protocol, version: i64) -> Self {
        Self { protocol: protocol.name().to_owned(), version }
    }

    /// Parses a request record (without its separator). Unknown fields are ignored.
    pub fn parse(record: &[u8]) -> Result<Self, HandshakeError> {
        #[derive(Deserialize)]
        struct Wire {
            protocol: Option<String>,
            version: Option<i64>,
        }
        let wire: Wire =
            serde_json::from_slice(record).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        match (wire.protocol, wire.version) {
            (Some(protocol), Some(version)) => Ok(Self { protocol, version }),
            (None, _) => Err(HandshakeError::Malformed("missing 'protocol'".into())),
            (_, None) => Err(HandshakeError::Malformed("missing 'version'".into())),
        }
    }

    /// The protocol this server will speak for this request.
    pub fn select_protocol(&self) -> Result<Protocol, HandshakeError> {
        let protocol = Protocol::from_name(&self.protocol)
            .ok_or_else(|| HandshakeError::UnsupportedProtocol(quote_untrusted(&self.protocol)))?;
        if (0..=MAX_PROTOCOL_VERSION).contains(&self.version) {
            Ok(protocol)
        } else {
            Err(HandshakeError::UnsupportedVersion {
                protocol: quote_untrusted(&self.protocol),
                version: self.version,
            })
        }
    }

    /// The request as a record (a client sends this first).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(b"{\"protocol\":");
        write_str(&mut out, &self.protocol);
        out.extend_from_slice(format!(",\"version\":{}}}", self.version).as_bytes());
        out.push(RECORD_SEPARATOR);
        Bytes::from(out)
    }
}

/// The position of the separator that ends the handshake record in `buffer`.
pub fn find_record_end(buffer: &[u8]) -> Option<usize> {
    buffer.iter().position(|b| *b == RECORD_SEPARATOR)
}

/// Collects the handshake request as chunks arrive. It remembers how far it has
/// searched for the separator, so a request split into many small chunks is
/// searched once in all, not once per chunk (which would be quadratic).
#[derive(Debug, Default)]
pub struct HandshakeBuffer {
    bytes: Vec<u8>,
    scanned: usize,
    /// Bytes searched in all, for the test that the search is linear.
    #[cfg(test)]
    examined: usize,
}

impl HandshakeBuffer {
    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The position of the separator ending the request, once it has arrived.
    pub fn record_end(&mut self) -> Option<usize> {
        let found = find_record_end(&self.bytes[self.scanned..]);
        #[cfg(test)]
        {
            self.examined += found.map_or(self.bytes.len() - self.scanned, |offset| offset + 1);
        }
        match found {
            Some(offset) => Some(self.scanned + offset),
            None => {
                self.scanned = self.bytes.len();
                None
            }
        }
    }

    /// Everything received: the request, then bytes of the chosen protocol.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The server's answer: success, or an error for the client to show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    pub error: Option<String>,
}

impl HandshakeResponse {
    pub fn ok() -> Self {
        Self { error: None }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self { error: Some(text.into()) }
    }

    /// `{}` + 0x1e, or `{"error":"..."}` + 0x1e.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16);
        match &self.error {
            None => out.extend_from_slice(b"{}"),
            Some(error) => {
                out.extend_from_slice(b"{\"error\":");
                write_str(&mut out, error);
                out.push(b'}');
            }
        }
        out.push(RECORD_SEPARATOR);
        Bytes::from(out)
    }

    /// Parses a response record (without its separator); a client uses this.
    pub fn parse(record: &[u8]) -> Result<Self, HandshakeError> {
        #[derive(Deserialize)]
        struct Wire {
            error: Option<String>,
        }
        let wire: Wire =
            serde_json::from_slice(record).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        Ok(Self { error: wire.error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_of_every_client() {
        for (record, protocol, version) in [
            (&br#"{"protocol":"json","version":1}"#[..], "json", 1),
            (br#"{"protocol":"messagepack","version":2}"#, "messagepack", 2),
            (br#"{"version":0,"protocol":"json","extra":true}"#, "json", 0),
        ] {
            let request = HandshakeRequest::parse(record).expect("valid request");
            assert_eq!(request.protocol, protocol);
            assert_eq!(request.version, version);
            assert!(request.select_protocol().is_ok());
        }
    }

    #[test]
    fn refuses_bad_requests() {
        assert!(matches!(
            HandshakeRequest::parse(b"{\"protocol\":"),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            HandshakeRequest::parse(br#"{"version":1}"#),
            Err(HandshakeError::Malformed(_))
        ));
        let unknown =
            HandshakeRequest::parse(br#"{"protocol":"xml","version":1}"#).expect("well formed");
        assert_eq!(
            unknown.select_protocol(),
            Err(HandshakeError::UnsupportedProtocol("xml".into()))
        );
        let future = HandshakeRequest::new(Protocol::Json, 3);
        assert!(matches!(
            future.select_protocol(),
            Err(HandshakeError::UnsupportedVersion { version: 3, .. })
        ));
    }

    #[test]
    fn encodes_records() {
        assert_eq!(&HandshakeResponse::ok().encode()[..], b"{}\x1e");
        assert_eq!(
            &HandshakeResponse::error("The protocol 'xml' is not supported.").encode()[..],
            b"{\"error\":\"The protocol 'xml' is not supported.\"}\x1e"
        );
        assert_eq!(
            &HandshakeRequest::new(Protocol::MessagePack, 1).encode()[..],
            b"{\"protocol\":\"messagepack\",\"version\":1}\x1e"
        );
        assert_eq!(
            HandshakeResponse::parse(br#"{"error":"x"}"#),
            Ok(HandshakeResponse::error("x"))
        );
        assert_eq!(find_record_end(b"{}\x1e{"), Some(2));
    }

    /// One byte at a time, a request of n bytes is searched n times in all, not
    /// n²/2 (what searching the whole buffer on every chunk costs).
    #[test]
    fn handshake_search_is_linear_in_bytes_received() {
        let padding = " ".repeat(50_000);
        let request =
            format!("{{\"protocol\":\"json\",{padding}\"version\":1}}\x1e{{\"type\":6}}\x1e");
        let mut buffer = HandshakeBuffer::default();
        let mut end = None;
        for byte in request.as_bytes() {
            buffer.push(std::slice::from_ref(byte));
            end = buffer.record_end();
            if end.is_some() {
                break;
            }
        }
        let end = end.expect("the separator is found");
        assert_eq!(&buffer.as_bytes()[end + 1..], b"");
        assert_eq!(end + 1, request.find('\x1e').expect("separator") + 1);
        assert!(buffer.examined <= end + 1, "examined {} bytes for {}", buffer.examined, end + 1);
        let parsed = HandshakeRequest::parse(&buffer.as_bytes()[..end]).expect("valid");
        assert_eq!(parsed.protocol, "json");
    }
}
