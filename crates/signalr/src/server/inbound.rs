//! What a transport hands its connection's session: [`Inbound`] frames, and
//! the text that closes a connection whose frame is over the size limit.

use bytes::Bytes;

use crate::protocol::ProtocolError;

/// One frame from the transport.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A whole WebSocket message or POST body: zero or more records, possibly partial.
    Data(Bytes),
    /// The transport failed (the text says how); the connection ends with an error.
    Failed(String),
    /// Stateful reconnect: the socket dropped (the text says how); the connection
    /// waits for a new one.
    Lost(String),
    /// Stateful reconnect: a new socket took over.
    Resumed,
}

/// The error text when an incoming frame or record is over the limit.
pub(crate) fn too_large(size: Option<usize>, limit: usize) -> String {
    match size {
        Some(size) => ProtocolError::MessageTooLarge { size, limit }.to_string(),
        None => format!("message exceeds the limit of {limit} bytes"),
    }
}
