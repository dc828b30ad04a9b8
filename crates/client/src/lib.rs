//! A Rust client for Next Chat: connects to the hub over WebSockets with the
//! JSON or MessagePack hub protocol and offers its methods as typed async
//! calls, with incoming messages as a stream of [`Event`]s.
//!
//! ```no_run
//! # async fn example() -> Result<(), next_chat_client::ClientError> {
//! use next_chat_client::{Client, ClientOptions, Event};
//!
//! let (client, mut events) =
//!     Client::connect(ClientOptions::new("http://127.0.0.1:5000/next-chat", "ann")).await?;
//! client.join_group("off-topic").await?;
//! client.send_message("off-topic", "hi").await?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(message) = event {
//!         println!("{}: {}", message.author_id, message.text);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Module map: `options` (what to connect to and how), `transport` (negotiate,
//! WebSocket, handshake), `tls` (the roots `https://` is checked against), `connection` (one live WebSocket: calls, pings,
//! callbacks), `stateful` (SignalR stateful reconnect: numbering, acks, resend
//! across a new WebSocket), `delivery` (each message once, in order), `client`
//! (the handle, reconnecting), `wire` (the seam to the codec in `next-chat-signalr`).

mod client;
mod connection;
mod delivery;
mod error;
mod model;
mod options;
mod stateful;
mod tls;
mod transport;
mod wire;

pub use client::{Client, Events};
pub use error::ClientError;
pub use model::{Event, JoinResult, Message};
pub use options::{ClientOptions, Protocol, ReconnectPolicy};
pub use tls::client_config as tls_client_config;
