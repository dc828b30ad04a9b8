//! The negotiate exchange (`POST {path}/negotiate`) and the transport names.
//!
//! Version 0 answers a `connectionId` that the transport requests then carry as
//! `?id=`; version 1 adds a secret `connectionToken` that they carry instead, so the
//! public id can be shared without letting others post on the connection.

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;
use crate::value::base64_url;

/// The highest negotiate version this server speaks.
pub const MAX_NEGOTIATE_VERSION: u32 = 1;

/// A transport, named as in the negotiate response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSockets,
    ServerSentEvents,
    LongPolling,
}

impl Transport {
    pub const ALL: [Transport; 3] =
        [Transport::WebSockets, Transport::ServerSentEvents, Transport::LongPolling];

    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSockets => "WebSockets",
            Transport::ServerSentEvents => "ServerSentEvents",
            Transport::LongPolling => "LongPolling",
        }
    }

    pub fn from_name(name: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The transfer formats it carries: SSE is text only.
    pub fn transfer_formats(self) -> &'static [&'static str] {
        match self {
            Transport::ServerSentEvents => &["Text"],
            Transport::WebSockets | Transport::LongPolling => &["Text", "Binary"],
        }
    }

    /// Whether it can carry this hub protocol.
    pub fn supports(self, protocol: Protocol) -> bool {
        !(self == Transport::ServerSentEvents && protocol.is_binary())
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of `availableTransports`. Kept as strings so a client can read a
/// server that offers transports this crate does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailableTransport {
    pub transport: String,
    pub transfer_formats: Vec<String>,
}

impl From<Transport> for AvailableTransport {
    fn from(transport: Transport) -> Self {
        Self {
            transport: transport.name().to_owned(),
            transfer_formats: transport
                .transfer_formats()
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
        }
    }
}

/// The negotiate response body, fields in the order ASP.NET Core writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NegotiateResponse {
    /// Absent in an error response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negotiate_version: Option<u32>,
    /// Redirect to another server (Azure SignalR); never written by this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// Version 1 only: what the transport requests carry as `?id=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_transports: Option<Vec<AvailableTransport>>,
    /// Stateful reconnect is on for this connection (only when the client asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_stateful_reconnect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NegotiateResponse {
    /// A version 0 response: transport requests carry `?id=<connection_id>`.
    pub fn v0(connection_id: impl Into<String>, transports: &[Transport]) -> Self {
        Self {
            negotiate_version: Some(0),
            connection_id: Some(connection_id.into()),
            available_transports: Some(transports.iter().map(|t| (*t).into()).collect()),
            ..Self::default()
        }
    }

    /// A version 1 response: transport requests carry `?id=<connection_token>`.
    pub fn v1(
        connection_id: impl Into<String>,
        connection_token: impl Into<String>,
        transports: &[Transport],
    ) -> Self {
        Self {
            negotiate_version: Some(1),
            connection_token: Some(connection_token.into()),
            ..Self::v0(connection_id, transports)
        }
    }

    /// An error response (the stock clients show `error` and stop).
    pub fn error(text: impl Into<String>) -> Self {
        Self { error: Some(text.into()), ..Self::default() }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, integers and vectors always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// What the transport requests must carry as `?id=`.
    pub fn transport_id(&self) -> Option<&str> {
        self.connection_token.as_deref().or(self.connection_id.as_deref())
    }
}

/// A new connection id or token: 16 random bytes from a CSPRNG, base64url without
/// padding (22 characters), as ASP.NET Core makes them. 128 random bits keep ids
/// unique across server instances without coordination.
pub fn new_random_id() -> String {
    base64_url(&rand::random::<[u8; 16]>())
}

/// The negotiate version to answer for the `negotiateVersion` query value the client
/// sent (`None` when it sent none: version 0, as `signalrcore` expects).
pub fn answer_version(requested: Option<&str>) -> Result<u32, String> {
    match requested {
        None => Ok(0),
        Some(text) => match text.trim().parse::<i64>() {
            Ok(v) if v < 0 => Err(format!(
                "The client requested version '{v}', but the server does not support this version."
            )),
            Ok(v) => Ok(v.min(i64::from(MAX_NEGOTIATE_VERSION)) as u32),
            Err(_) => Err("The client requested a non-integer protocol version.".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_v0_like_aspnet() {
        let json = NegotiateResponse::v0("abc", &Transport::ALL).to_json();
        assert_eq!(
            json,
            r#"{"negotiateVersion":0,"connectionId":"abc","availableTransports":[{"transport":"WebSockets","transferFormats":["Text","Binary"]},{"transport":"ServerSentEvents","transferFormats":["Text"]},{"transport":"LongPolling","transferFormats":["Text","Binary"]}]}"#
        );
    }

    #[test]
    fn writes_v1_with_token() {
        let json = NegotiateResponse::v1("abc", "secret", &[Transport::WebSockets]).to_json();
        assert_eq!(
            json,
            r#"{"negotiateVersion":1,"connectionId":"abc","connectionToken":"secret","availableTransports":[{"transport":"WebSockets","transferFormats":["Text","Binary"]}]}"#
        );
        let parsed = NegotiateResponse::parse(json.as_bytes()).expect("valid JSON");
        assert_eq!(parsed.transport_id(), Some("secret"));
    }

    #[test]
    fn writes_use_stateful_reconnect_last_when_set() {
        let mut response = NegotiateResponse::v1("abc", "secret", &[Transport::WebSockets]);
        response.use_stateful_reconnect = Some(true);
        assert_eq!(
            response.to_json(),
            r#"{"negotiateVersion":1,"connectionId":"abc","connectionToken":"secret","availableTransports":[{"transport":"WebSockets","transferFormats":["Text","Binary"]}],"useStatefulReconnect":true}"#
        );
        let parsed = NegotiateResponse::parse(response.to_json().as_bytes()).expect("valid JSON");
        assert_eq!(parsed.use_stateful_reconnect, Some(true));
    }

    #[test]
    fn writes_errors() {
        assert_eq!(NegotiateResponse::error("nope").to_json(), r#"{"error":"nope"}"#);
    }

    #[test]
    fn answers_the_version_asked_for() {
        assert_eq!(answer_version(None), Ok(0));
        assert_eq!(answer_version(Some("1")), Ok(1));
        assert_eq!(answer_version(Some("5")), Ok(1));
        assert!(answer_version(Some("x")).is_err());
        assert!(answer_version(Some("-1")).is_err());
    }

    #[test]
    fn random_ids_are_22_url_safe_characters() {
        let a = new_random_id();
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, new_random_id());
    }

    #[test]
    fn sse_is_text_only() {
        assert!(!Transport::ServerSentEvents.supports(Protocol::MessagePack));
        assert!(Transport::LongPolling.supports(Protocol::MessagePack));
        assert_eq!(Transport::from_name("LongPolling"), Some(Transport::LongPolling));
    }
}
