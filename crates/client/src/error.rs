//! Every way a client call or a connection attempt can fail, as one typed error.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The hub completed the call with an error; the text is the server's, meant
    /// for a person (it names the field and the limit).
    #[error("{0}")]
    Server(String),
    /// No completion arrived within the call timeout.
    #[error("{method} got no answer within {timeout:?}")]
    Timeout { method: &'static str, timeout: Duration },
    /// The URL or the user id cannot be used.
    #[error("{0}")]
    InvalidOptions(String),
    /// Could not reach the server or complete the WebSocket upgrade.
    #[error("cannot connect: {0}")]
    Connection(String),
    /// The server answered an HTTP request (negotiate or upgrade) with an error.
    #[error("the server answered {status}: {message}")]
    Http { status: u16, message: String },
    /// The server refused the hub handshake.
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The connection was lost (a call in flight may or may not have run), or the
    /// client is reconnecting and cannot take calls yet.
    #[error("disconnected from the server")]
    Disconnected,
    /// The client was closed, by [`crate::Client::close`] or for good by the server.
    #[error("the connection is closed")]
    Closed,
    /// The server sent something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}
