//! What can go wrong in the chat rules, as values. The hub turns a `ChatError`
//! into a completion error (its `Display` is the text the client sees); nothing
//! else maps errors to the outside world.

use std::time::Duration;

use thiserror::Error;

use crate::domain::{GroupId, MessageId, UserId};

#[derive(Debug, Error)]
pub enum ChatError {
    /// An argument broke a rule; the message names the field and the limit.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },

    #[error("join group '{0}' before sending to it, reading its history or listing its members")]
    NotJoined(GroupId),

    #[error("group '{0}' does not exist (automatic creation is off: call CreateGroup first)")]
    GroupNotFound(GroupId),

    #[error("before: message '{id}' is not a message of group '{group}'")]
    UnknownMessage { group: GroupId, id: MessageId },

    #[error(
        "this connection has joined {limit} groups, the limit (max_groups_per_connection); \
         leave one before joining another"
    )]
    TooManyGroupsJoined { limit: usize },

    #[error(
        "user '{user}' already has {limit} connections joined to group '{group}' on this \
         server, the limit (max_connections_per_user_in_group)"
    )]
    TooManyConnectionsInGroup { user: UserId, group: GroupId, limit: usize },

    #[error("the server holds {limit} groups, the limit (max_groups); join an existing group")]
    TooManyGroups { limit: usize },

    #[error(
        "user '{user}' created {limit} groups that still exist, the limit \
         (max_groups_owned_per_user); join an existing group"
    )]
    TooManyGroupsOwned { user: UserId, limit: usize },

    /// The user called faster than a rate limit allows; nothing was done.
    #[error("rate limited: more than {limit} {what} for user {user}; retry in {} ms", retry_ms(*.retry_after))]
    RateLimited { what: &'static str, limit: u32, user: UserId, retry_after: Duration },

    /// A backend did not answer; the request may succeed later.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Whole milliseconds, rounded up so that retrying after them succeeds.
fn retry_ms(wait: Duration) -> u128 {
    wait.as_nanos().div_ceil(1_000_000).max(1)
}

impl ChatError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> ChatError {
        ChatError::Invalid { field, message: message.into() }
    }
}

/// A backend (messaging, membership or history) failed. `backend` names it for
/// the client's error and for `/readyz`; `detail` is for the log.
#[derive(Debug, Error)]
#[error("{backend} is unavailable, try again shortly ({detail})")]
pub struct BackendError {
    pub backend: &'static str,
    pub detail: String,
    /// The backend refused the request on its merits (a value too long, a
    /// constraint, a statement too large): the same request will fail again.
    /// Otherwise the failure is taken as transient and the request may be retried.
    pub refused: bool,
}

impl BackendError {
    /// A failure that may pass (the backend is down, busy or locked).
    pub fn new(backend: &'static str, detail: impl std::fmt::Display) -> BackendError {
        BackendError { backend, detail: detail.to_string(), refused: false }
    }

    /// A refusal that repeating the same request cannot change.
    pub fn refused(backend: &'static str, detail: impl std::fmt::Display) -> BackendError {
        BackendError { backend, detail: detail.to_string(), refused: true }
    }
}
