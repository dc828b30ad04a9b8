//! The Next Chat hub contract, written once: every hub method a client may
//! invoke (its name, its arguments and what it returns), every callback the
//! server invokes on a client, and the wire shape of a `Message` and a `Group`
//! as `next_chat_signalr::Value`s.
//!
//! The server's hub dispatches on [`Method`], the client library, the bench and
//! the autotest name their calls and read their callbacks through it, and the
//! tests of this crate hold `web/` and `docs/PROTOCOL.md` to it. Adding a hub
//! method starts here.
//!
//! What it deliberately does not hold: the chat rules (core) and the SignalR
//! protocol itself (signalr). It knows keys and shapes, not what a group is.

mod callback;
mod message;
mod method;

pub use callback::{Callback, CallbackArgument};
pub use message::{DecodeError, Message, group_ids, group_value, groups_value, keys};
pub use method::{ArgKind, Argument, JoinResult, Method, Returns};
