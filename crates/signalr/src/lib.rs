//! The ASP.NET Core SignalR hub protocol, server side, knowing nothing of chat.
//!
//! The codec half ([`value`], [`protocol`], [`json`], [`msgpack`], [`handshake`],
//! [`negotiate`]) and stateful reconnect's bookkeeping ([`sequence`]) are usable
//! on their own, by clients too. The [`server`] half serves a
//! [`server::Hub`] over WebSockets, Server-Sent Events and Long Polling as stock
//! SignalR clients expect.

pub mod handshake;
pub mod json;
pub mod msgpack;
pub mod negotiate;
pub mod protocol;
pub mod sequence;
pub mod server;
pub mod value;

pub use negotiate::Transport;
pub use protocol::{Decoder, HubMessage, Outcome, Protocol, ProtocolError};
pub use value::Value;
