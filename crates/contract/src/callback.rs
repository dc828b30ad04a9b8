//! The callbacks: what the server invokes on a client, and with what.

/// A client callback (a server-to-client invocation's target). Targets are
/// written exactly as [`Callback::name`] spells them; clients may match them
/// case-insensitively ([`Callback::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Callback {
    /// A new message in a group the connection has joined.
    OnMessage,
    /// A group's latest messages, sent on `JoinGroup` before its completion.
    OnHistory,
}

/// The one argument a callback carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackArgument {
    /// One `Message`.
    Message,
    /// `Message[]`, oldest first.
    Messages,
}

impl CallbackArgument {
    /// How docs/PROTOCOL.md names the shape.
    pub const fn doc_name(self) -> &'static str {
        match self {
            CallbackArgument::Message => "Message",
            CallbackArgument::Messages => "Message[]",
        }
    }
}

impl Callback {
    pub const ALL: [Callback; 2] = [Callback::OnMessage, Callback::OnHistory];

    /// The target, exactly as the server writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Callback::OnMessage => "OnMessage",
            Callback::OnHistory => "OnHistory",
        }
    }

    /// The callback `target` names, in any case.
    pub fn parse(target: &str) -> Option<Callback> {
        Callback::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(target))
    }

    pub const fn argument(self) -> CallbackArgument {
        match self {
            Callback::OnMessage => CallbackArgument::Message,
            Callback::OnHistory => CallbackArgument::Messages,
        }
    }
}
