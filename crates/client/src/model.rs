//! The typed values the hub exchanges with a client: messages, join results and
//! the events a connection delivers.

/// One chat message, as `OnMessage`, `OnHistory` and `GetHistory` carry it:
/// the contract's own type.
pub use next_chat_contract::Message;

/// What `JoinGroup` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinResult {
    /// Joined: the group's recent history arrived as [`Event::History`] first.
    Joined,
    /// The group already has its maximum number of distinct members.
    NoRoom,
}

/// Something that happened on the connection, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new message in a group this client has joined (`OnMessage`); after a
    /// reconnect, also each message missed while away, once, in order.
    Message(Message),
    /// The group's latest messages, oldest first, sent on `join_group`.
    History { group: String, messages: Vec<Message> },
    /// The connection was lost and the client is reconnecting.
    Disconnected { error: Option<String> },
    /// After a reconnect, a group could not be joined again (full, or an error);
    /// the client no longer receives its messages.
    RejoinFailed { group: String, error: String },
    /// After a reconnect, the messages of `group` missed while away have been
    /// delivered (as [`Event::Message`], before this): `missed` of them.
    /// `complete` is false when there were more than
    /// `ClientOptions::catch_up_max_messages`, or the server refused
    /// `GetMessagesAfter`, and the rest of the gap was skipped.
    CaughtUp { group: String, missed: usize, complete: bool },
    /// Connected again, groups rejoined and missed messages delivered.
    Reconnected,
    /// The client is finished: closed by the caller (`error: None`), or the
    /// connection was lost with no (more) reconnecting. The last event.
    Closed { error: Option<String> },
}
