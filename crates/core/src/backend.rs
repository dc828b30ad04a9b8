//! The seams between the chat rules and storage. Each trait has an embedded
//! implementation (in process, SQLite) and a scale-out one (Redis, MySQL) in
//! `next-chat-storage`; the chat rules never know which they have.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{ConnectionId, GroupId, JoinOutcome, Message, MessageId, NewMessage, UserId};
use crate::error::BackendError;
use crate::rate::Rate;

/// Called by `Messaging::publish` once a message has its id, before any
/// instance delivers it (see `Messaging::publish`).
pub type OnAccepted<'a> = &'a (dyn Fn(&Message) + Send + Sync);

/// Fan-out between instances: one ordered log per group.
///
/// An implementation is built with the instance's `LocalFanout` and hands every
/// message of every group to it, this instance's own messages included, in id
/// order per group. That is the only way a message reaches a connection: the
/// sender's instance does not short-cut its own messages.
#[async_trait]
pub trait Messaging: Send + Sync + 'static {
    /// Appends the message to its group's log, which gives it its id and send
    /// time, and returns once it is accepted for delivery everywhere.
    ///
    /// `on_accepted` runs after the id is assigned and, where the implementation
    /// can arrange it, before this instance delivers the message, so history on
    /// join can include a message that is delivered but not yet stored.
    /// It must not block.
    async fn publish(
        &self,
        message: NewMessage,
        on_accepted: OnAccepted<'_>,
    ) -> Result<Message, BackendError>;

    /// Whether the backend answers now (for `/readyz`).
    async fn check(&self) -> Result<(), BackendError>;

    /// Up to `limit` of the group's messages above `after` that the log holds
    /// and history may not have yet, oldest first: a message another instance
    /// accepted is in the log at once but in history only once that
    /// instance's writer stored it. Returning `limit` messages means there may
    /// be more after the last; fewer means none other was in the log when it
    /// was read (within the implementation's bound, which it documents). One
    /// instance's own unsaved messages are in its `HistoryWriter` already, so
    /// the default, for a log no other instance writes to, has none.
    async fn recent_after(
        &self,
        _group: &GroupId,
        _after: MessageId,
        _limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        Ok(Vec::new())
    }

    /// Makes sure the group's messages published from now on reach this
    /// instance's `LocalFanout`. A join calls it after subscribing and before
    /// it completes, so every message sent after the join completed is
    /// delivered; a backend that reads only some of the log (the Redis
    /// streams of groups joined here) starts reading the group's part here.
    /// The default, for a log delivered whole, has nothing to do.
    async fn follow(&self, _group: &GroupId) -> Result<(), BackendError> {
        Ok(())
    }

    /// The group has no local subscriber left (the last one left or
    /// disconnected): the backend may stop reading its part of the log. A
    /// group that has a subscriber again by then stays followed. Never waits.
    fn unfollow(&self, _group: &GroupId) {}

    /// Stops background readers; called once at shutdown, after the last publish.
    async fn shutdown(&self) {}
}

/// Groups, and who is in them. Counted per user: a user is a member while at
/// least one of its connections (on any instance) has joined.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Creates the group, recording `owner` as the user who created it (a
    /// tool loading groups in bulk has none); creating one that exists is
    /// not an error and changes nothing.
    async fn create_group(
        &self,
        group: &GroupId,
        owner: Option<&UserId>,
    ) -> Result<(), BackendError>;

    /// How many existing groups `owner` created (for `max_groups_owned_per_user`).
    async fn groups_owned(&self, owner: &UserId) -> Result<usize, BackendError>;

    /// The user who created the group, if it exists and one is recorded.
    async fn group_owner(&self, group: &GroupId) -> Result<Option<UserId>, BackendError>;

    /// Takes one token from `user`'s bucket `bucket` that every instance
    /// shares, at `rate`: `None` when taken, else how long until one is
    /// there. A backend whose state no other instance shares returns `None`
    /// always: the in-process buckets (`UserLimits`) are then the whole truth.
    async fn take_shared_token(
        &self,
        _bucket: &str,
        _user: &UserId,
        _rate: &Rate,
    ) -> Result<Option<Duration>, BackendError> {
        Ok(None)
    }

    async fn group_exists(&self, group: &GroupId) -> Result<bool, BackendError>;

    /// How many groups exist (for the `max_groups` bound).
    async fn group_count(&self) -> Result<usize, BackendError>;

    /// Groups after `after` (all if `None`) in `str` order, at most `limit`.
    async fn list_groups(
        &self,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<GroupId>, BackendError>;

    /// Records that `connection` of `user` joined `group`, which must exist.
    /// Atomic across instances: the user gets in if it is already a member or
    /// the group has fewer than `max_members` distinct users; otherwise `NoRoom`
    /// and nothing changes.
    async fn join(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
        max_members: usize,
    ) -> Result<JoinOutcome, BackendError>;

    /// Removes the connection from the group; the user stops being a member
    /// when its last connection leaves. Leaving a group one is not in is fine.
    async fn leave(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
    ) -> Result<(), BackendError>;

    /// Distinct users in the group now.
    async fn member_count(&self, group: &GroupId) -> Result<usize, BackendError>;

    /// The distinct users in the group now (on every instance), in `str` order.
    /// At most the group's `max_members` of them, so a page of its own.
    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, BackendError>;

    async fn check(&self) -> Result<(), BackendError>;

    /// Stops background work (heartbeats) and, where it can, frees this
    /// instance's places; called once at shutdown.
    async fn shutdown(&self) {}
}

/// Every accepted message, kept.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Stores the messages in one batch. Idempotent: a message whose id the
    /// group already has is skipped, so a retry never writes twice.
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError>;

    /// The group's latest `limit` messages with ids below `before` (the latest
    /// of all if `None`), oldest first.
    async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError>;

    /// The group's first `limit` messages with ids above `after`, oldest
    /// first: paging forward from a message a client saw last. `after` need
    /// not be a stored message's id; it is a position.
    async fn read_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError>;

    /// As `read`, but bounded in bytes as well: the newest of those messages
    /// whose texts add up to at most `max_bytes` UTF-8 bytes, and at least
    /// one (so paging back always makes progress). A page measured on the
    /// wire (where a message takes at least its text's bytes) is cut from
    /// these without missing any. An implementation cuts in its query, so a
    /// page of long messages never fetches `limit` rows; the default fetches
    /// them and cuts after.
    async fn read_within(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let mut page = self.read(group, before, limit).await?;
        let keep = rows_within(page.iter().rev().map(|m| m.text.as_str().len()), max_bytes);
        page.drain(..page.len() - keep);
        Ok(page)
    }

    /// As `read_after`, bounded in bytes as `read_within` is: the oldest of
    /// those messages whose texts add up to at most `max_bytes`, at least one.
    async fn read_after_within(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let mut page = self.read_after(group, after, limit).await?;
        let keep = rows_within(page.iter().map(|m| m.text.as_str().len()), max_bytes);
        page.truncate(keep);
        Ok(page)
    }

    /// Whether `id` is one of the group's stored messages.
    async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError>;

    async fn check(&self) -> Result<(), BackendError>;
}

/// How many of `sizes`, taken in order, add up to at most `max_bytes`; at
/// least one when there is one. For the byte-bounded history reads.
pub fn rows_within(sizes: impl IntoIterator<Item = usize>, max_bytes: usize) -> usize {
    let mut used = 0usize;
    let mut rows = 0;
    for size in sizes {
        used = used.saturating_add(size);
        if used > max_bytes && rows > 0 {
            break;
        }
        rows += 1;
    }
    rows
}
