//! The chat rules of Next Chat and the seams to its backends.
//!
//! `service::ChatService` is what every hub method means. It talks to storage
//! only through the traits in `backend`, and to connections only through
//! `fanout::Recipient`. This crate knows nothing of sockets, wire formats or
//! databases.

pub mod backend;
pub mod defaults;
pub mod domain;
pub mod error;
pub mod fanout;
pub mod history;
pub mod rate;
pub mod service;

pub use backend::{HistoryStore, Membership, Messaging, OnAccepted};
pub use domain::{
    ConnectionId, GroupId, JoinOutcome, Limits, Message, MessageId, MessageText, NewMessage, UserId,
};
pub use error::{BackendError, ChatError};
pub use fanout::{Delivery, LocalFanout, Recipient};
pub use history::{HistoryObserver, HistoryWriter, HistoryWriterConfig, NoObserver};
pub use rate::Rate;
pub use service::{Accepted, ChatConfig, ChatService, PAGE_ENVELOPE_BYTES, Session};
