//! The chat rules, in one place: what each hub method means. The hub calls these
//! functions with raw arguments; they validate, apply the rules and talk to the
//! backends through their traits. Nothing here knows about sockets or codecs.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{instrument, warn};

use crate::backend::{Membership, Messaging};
use crate::defaults;
use crate::domain::{
    ConnectionId, GroupId, JoinOutcome, Limits, Message, MessageId, MessageText, NewMessage, UserId,
};
use crate::error::ChatError;
use crate::fanout::{LocalFanout, Recipient, TooManyForUser};
use crate::history::HistoryWriter;
use crate::rate::{Limited, Rate, ReadPermit, ReadRefused, UserLimits, UserRates, Users};

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub limits: Limits,
    /// Most distinct users in one group.
    pub max_members: usize,
    /// How many of the latest messages `OnHistory` carries on join.
    pub history_on_join: usize,
    /// Whether `SendMessage` requires the calling connection to have joined.
    pub require_join_to_send: bool,
    /// Whether `JoinGroup` creates a group that does not exist.
    pub auto_create_groups: bool,
    /// Most groups `ListGroups` returns, and the upper bound of `ListGroupsPage`'s `limit`.
    pub list_groups_max: usize,
    /// Upper bound of `GetHistory`'s `limit`.
    pub history_page_max: usize,
    /// Most bytes of messages in one `OnHistory` or `GetHistory` page, as the
    /// recipient measures them (`Recipient::encoded_size`).
    pub history_page_max_bytes: usize,
    /// Most groups one connection may have joined at once.
    pub max_groups_per_connection: usize,
    /// Most of one user's connections joined to one group, on this instance
    /// (membership across instances counts users, not connections).
    pub max_connections_per_user_in_group: usize,
    /// `SendMessage`s per second per user on this instance, and the burst.
    pub user_messages: Rate,
    /// Groups a user may create per minute on this instance, and the burst.
    pub groups_created: Rate,
    /// Most groups the server holds; creating one more is refused.
    pub max_groups: usize,
    /// Most existing groups one user may have created.
    pub max_groups_owned_per_user: usize,
    /// Bytes of history pages (`OnHistory`, `GetHistory`, `GetMessagesAfter`)
    /// per second per user on this instance, and the burst.
    pub history_read_bytes: Rate,
    /// Most history reads one user may have running at once on this instance.
    pub history_reads_in_flight_per_user: usize,
}

/// How long a read refused for the reads in flight is told to wait: about
/// one history read.
const READ_IN_FLIGHT_RETRY: Duration = Duration::from_millis(50);

/// Room a page's record takes around its messages (the invocation or
/// completion envelope), counted against `history_page_max_bytes`.
pub const PAGE_ENVELOPE_BYTES: usize = 1024;

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            limits: Limits::default(),
            max_members: defaults::MAX_MEMBERS,
            history_on_join: defaults::HISTORY_ON_JOIN,
            require_join_to_send: defaults::REQUIRE_JOIN_TO_SEND,
            auto_create_groups: defaults::AUTO_CREATE_GROUPS,
            list_groups_max: 1000,
            history_page_max: 500,
            history_page_max_bytes: defaults::HISTORY_PAGE_MAX_BYTES,
            max_groups_per_connection: defaults::MAX_GROUPS_PER_CONNECTION,
            max_connections_per_user_in_group: defaults::MAX_CONNECTIONS_PER_USER_IN_GROUP,
            user_messages: Rate::per_second(
                defaults::USER_MESSAGES_PER_SECOND,
                defaults::USER_MESSAGES_PER_SECOND * 2,
            ),
            groups_created: Rate::per_minute(
                defaults::GROUPS_CREATED_PER_MINUTE,
                defaults::GROUPS_CREATED_PER_MINUTE,
            ),
            max_groups: defaults::MAX_GROUPS,
            max_groups_owned_per_user: defaults::MAX_GROUPS_OWNED_PER_USER,
            history_read_bytes: Rate::per_second(
                defaults::HISTORY_READ_BYTES_PER_SECOND,
                defaults::HISTORY_READ_BURST_BYTES,
            ),
            history_reads_in_flight_per_user: defaults::HISTORY_READS_IN_FLIGHT_PER_USER,
        }
    }
}

/// One connection's state in the chat: who it is and which groups it joined.
pub struct Session {
    user: UserId,
    /// Shared with the user's other connections on this instance.
    limits: Arc<UserLimits>,
    recipient: Arc<dyn Recipient>,
    /// Invocations of one connection run one at a time; the lock is never held
    /// across an await.
    joined: Mutex<HashSet<GroupId>>,
}

impl Session {
    pub fn user(&self) -> &UserId {
        &self.user
    }

    pub fn connection_id(&self) -> &ConnectionId {
        self.recipient.connection_id()
    }

    fn has_joined(&self, group: &GroupId) -> bool {
        self.joined.lock().contains(group)
    }

    fn set_joined(&self, group: &GroupId, joined: bool) -> bool {
        let mut groups = self.joined.lock();
        if joined { groups.insert(group.clone()) } else { groups.remove(group) }
    }

    fn joined_count(&self) -> usize {
        self.joined.lock().len()
    }
}

/// A message accepted for delivery and delivered to this instance's members.
pub struct Accepted {
    pub message: Message,
    /// Resolves once history has stored the message, or after the writer's
    /// `save_timeout` (the message then stays queued and is stored later).
    pub saved: Pin<Box<dyn Future<Output = ()> + Send>>,
}

pub struct ChatService {
    config: ChatConfig,
    messaging: Arc<dyn Messaging>,
    membership: Arc<dyn Membership>,
    history: HistoryWriter,
    fanout: Arc<LocalFanout>,
    users: Users,
}

fn limit_arg(field: &'static str, value: i64, max: usize) -> Result<usize, ChatError> {
    match usize::try_from(value) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ChatError::invalid(
            field,
            format!("{field} must be between 1 and {max}, not {value}"),
        )),
    }
}

/// The newest of `messages` (oldest first) whose sizes add up to at most
/// `budget`, and at least one.
fn newest_within(
    mut messages: Vec<Message>,
    budget: usize,
    size: impl Fn(&Message) -> usize,
) -> Vec<Message> {
    let keep = fitting(messages.iter().rev(), budget, size);
    messages.drain(..messages.len() - keep);
    messages
}

/// The oldest of `messages` (oldest first) whose sizes add up to at most
/// `budget`, and at least one: a forward page stays gap-free when cut short.
fn oldest_within(
    mut messages: Vec<Message>,
    budget: usize,
    size: impl Fn(&Message) -> usize,
) -> Vec<Message> {
    let keep = fitting(messages.iter(), budget, size);
    messages.truncate(keep);
    messages
}

/// How many of `messages`, taken in order, fit in `budget`; at least one when
/// there is one, so paging always makes progress.
fn fitting<'a>(
    messages: impl Iterator<Item = &'a Message>,
    budget: usize,
    size: impl Fn(&Message) -> usize,
) -> usize {
    let mut used = 0usize;
    let mut keep = 0;
    for message in messages {
        used = used.saturating_add(size(message));
        if used > budget && keep > 0 {
            break;
        }
        keep += 1;
    }
    keep
}

impl ChatService {
    /// `fanout` must be the one `messaging` delivers to.
    pub fn new(
        config: ChatConfig,
        messaging: Arc<dyn Messaging>,
        membership: Arc<dyn Membership>,
        history: HistoryWriter,
        fanout: Arc<LocalFanout>,
    ) -> ChatService {
        let users = Users::new(UserRates {
            messages: config.user_messages,
            creations: config.groups_created,
            history_bytes: config.history_read_bytes,
            history_reads_in_flight: config.history_reads_in_flight_per_user,
        });
        ChatService { config, messaging, membership, history, fanout, users }
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    pub fn history(&self) -> &HistoryWriter {
        &self.history
    }

    pub fn membership(&self) -> &Arc<dyn Membership> {
        &self.membership
    }

    pub fn messaging(&self) -> &Arc<dyn Messaging> {
        &self.messaging
    }

    /// Validates the user id a transport authenticated.
    pub fn parse_user(&self, user: &str) -> Result<UserId, ChatError> {
        UserId::parse(user, &self.config.limits)
    }

    /// Pair with `close_session`: the user's rate limits here live until its
    /// last session closes.
    pub fn open_session(&self, user: UserId, recipient: Arc<dyn Recipient>) -> Session {
        let limits = self.users.connected(&user);
        Session { user, limits, recipient, joined: Mutex::new(HashSet::new()) }
    }

    /// Leaves every group the connection joined. Called once, on disconnect.
    pub async fn close_session(&self, session: &Session) {
        let groups: Vec<GroupId> = session.joined.lock().drain().collect();
        for group in groups {
            self.unsubscribe(&group, session);
            if let Err(error) =
                self.membership.leave(&group, &session.user, session.connection_id()).await
            {
                warn!(?group, user = ?session.user, ?error, "could not free a place on disconnect");
            }
        }
        self.users.disconnected(&session.user);
    }

    /// Stops delivering the group to the connection; the messaging backend
    /// may stop reading the group when that was its last local subscriber.
    fn unsubscribe(&self, group: &GroupId, session: &Session) {
        if self.fanout.unsubscribe(group, session.connection_id()) {
            self.messaging.unfollow(group);
        }
    }

    /// Takes one of the user's tokens for `what`, or says when to retry.
    fn take_token(&self, session: &Session, what: Limited) -> Result<(), ChatError> {
        let (rate, description) = match what {
            Limited::Messages => (self.users.messages(), "messages per second"),
            Limited::GroupCreations => (self.users.creations(), "groups created per minute"),
        };
        session.limits.take(what).map_err(|retry_after| ChatError::RateLimited {
            what: description,
            limit: rate.per_period,
            user: session.user.clone(),
            retry_after,
        })
    }

    /// Takes one token for `what` from the user's bucket that every instance
    /// shares (scale-out), after the one here (`take_token`): reconnecting
    /// to another instance starts where the user left off.
    async fn take_shared_token(&self, session: &Session, what: Limited) -> Result<(), ChatError> {
        let (bucket, rate, description) = match what {
            Limited::Messages => ("messages", self.users.messages(), "messages per second"),
            Limited::GroupCreations => {
                ("creations", self.users.creations(), "groups created per minute")
            }
        };
        match self.membership.take_shared_token(bucket, &session.user, rate).await? {
            None => Ok(()),
            Some(retry_after) => Err(ChatError::RateLimited {
                what: description,
                limit: rate.per_period,
                user: session.user.clone(),
                retry_after,
            }),
        }
    }

    /// Lets one of the user's history reads start, or says when to retry.
    fn start_read<'a>(&self, session: &'a Session) -> Result<ReadPermit<'a>, ChatError> {
        let rates = self.users.rates();
        session.limits.start_read(rates, Instant::now()).map_err(|refused| match refused {
            ReadRefused::Bytes(retry_after) => ChatError::RateLimited {
                what: "bytes of history per second",
                limit: rates.history_bytes.per_period,
                user: session.user.clone(),
                retry_after,
            },
            ReadRefused::InFlight => ChatError::RateLimited {
                what: "history reads at once",
                limit: u32::try_from(rates.history_reads_in_flight).unwrap_or(u32::MAX),
                user: session.user.clone(),
                retry_after: READ_IN_FLIGHT_RETRY,
            },
        })
    }

    /// Charges a page read to the user's history budget, by its size on the wire.
    fn charge_read(&self, session: &Session, page: &[Message]) {
        let bytes = page.iter().map(|m| session.recipient.encoded_size(m)).sum();
        session.limits.charge_read(self.users.rates(), Instant::now(), bytes);
    }

    /// Makes sure the group exists: creates it if `create` (charged to the
    /// user's group-creation rate and refused beyond `max_groups`), else
    /// `GroupNotFound`. A group that exists costs nothing.
    async fn ensure_group(
        &self,
        session: &Session,
        group: &GroupId,
        create: bool,
    ) -> Result<(), ChatError> {
        if self.membership.group_exists(group).await? {
            return Ok(());
        }
        if !create {
            return Err(ChatError::GroupNotFound(group.clone()));
        }
        self.take_token(session, Limited::GroupCreations)?;
        self.take_shared_token(session, Limited::GroupCreations).await?;
        // Counted before creating, so concurrent creations on several
        // instances may overshoot by a few: bounds, not exact quotas (the
        // shared creation rate keeps one user's few).
        let limit = self.config.max_groups_owned_per_user;
        if self.membership.groups_owned(&session.user).await? >= limit {
            return Err(ChatError::TooManyGroupsOwned { user: session.user.clone(), limit });
        }
        if self.membership.group_count().await? >= self.config.max_groups {
            return Err(ChatError::TooManyGroups { limit: self.config.max_groups });
        }
        self.membership.create_group(group, Some(&session.user)).await?;
        Ok(())
    }

    /// The newest of `messages` (oldest first) whose encoded size fits in one
    /// page, and always at least one, so paging back with the oldest id
    /// always makes progress.
    fn fit_page(&self, session: &Session, messages: Vec<Message>) -> Vec<Message> {
        newest_within(messages, self.page_budget(), |m| session.recipient.encoded_size(m))
    }

    /// Bytes of messages one page may carry. History reads are cut to this
    /// many bytes of text in the store's query already: a message takes at
    /// least its text's bytes on the wire, so the page cut from what they
    /// return by encoded size is the same as if they had returned everything.
    fn page_budget(&self) -> usize {
        self.config.history_page_max_bytes.saturating_sub(PAGE_ENVELOPE_BYTES)
    }

    /// The longest text a message may have, in bytes: how far short of a
    /// page's byte budget a history read may stop.
    fn longest(&self) -> usize {
        self.config.limits.text_max_chars.saturating_mul(4)
    }

    fn group(&self, value: &str) -> Result<GroupId, ChatError> {
        GroupId::parse(value, &self.config.limits)
    }

    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn create_group(&self, session: &Session, group: &str) -> Result<(), ChatError> {
        let group = self.group(group)?;
        self.ensure_group(session, &group, true).await
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupId>, ChatError> {
        Ok(self.membership.list_groups(None, self.config.list_groups_max).await?)
    }

    pub async fn list_groups_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<GroupId>, ChatError> {
        let limit = limit_arg("limit", limit, self.config.list_groups_max)?;
        // `after` is a position, not a group: any string sorts somewhere, but one
        // that could never be a group id is more likely a mistake worth naming.
        let after = match after {
            Some(after) => {
                Some(GroupId::parse(after, &self.config.limits).map_err(|e| match e {
                    ChatError::Invalid { message, .. } => {
                        ChatError::invalid("after", message.replacen("groupId", "after", 1))
                    }
                    other => other,
                })?)
            }
            None => None,
        };
        Ok(self.membership.list_groups(after.as_ref(), limit).await?)
    }

    /// Joins the connection to the group. On `Joined` the connection has been
    /// sent `OnHistory` (before this returns) and receives the group's messages
    /// from now on.
    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn join_group(
        &self,
        session: &Session,
        group: &str,
    ) -> Result<JoinOutcome, ChatError> {
        let group = self.group(group)?;
        // Checked first: a join that could not read its history does nothing.
        let _read = self.start_read(session)?;
        let rejoin = session.has_joined(&group);
        let max_groups = self.config.max_groups_per_connection;
        if !rejoin && session.joined_count() >= max_groups {
            return Err(ChatError::TooManyGroupsJoined { limit: max_groups });
        }
        // Subscribe first, before the group's place and its history: a message
        // sent meanwhile is then either in the history or delivered after it,
        // never both (`PendingJoin::open`); and the count of the user's
        // connections in the group is checked and taken in one step.
        let max_connections = self.config.max_connections_per_user_in_group;
        let pending = self
            .fanout
            .subscribe_at_most(&group, Arc::clone(&session.recipient), max_connections)
            .map_err(|TooManyForUser| ChatError::TooManyConnectionsInGroup {
                user: session.user.clone(),
                group: group.clone(),
                limit: max_connections,
            })?;
        // The messaging backend reads the group from now on (before the join
        // completes, so nothing sent after it is missed).
        if pending.is_some()
            && let Err(error) = self.messaging.follow(&group).await
        {
            self.unsubscribe(&group, session);
            return Err(error.into());
        }
        // Joining again (`pending` is `None`) only sends the history again.
        let joined = self.take_place(session, &group).await;
        let history = match joined {
            Ok(JoinOutcome::Joined) => {
                session.set_joined(&group, true);
                let (limit, budget) = (self.config.history_on_join, self.page_budget());
                self.history.read(&group, None, limit, budget, self.longest()).await
            }
            Ok(JoinOutcome::NoRoom) => {
                if pending.is_some() {
                    self.unsubscribe(&group, session);
                }
                return Ok(JoinOutcome::NoRoom);
            }
            Err(error) => {
                if pending.is_some() {
                    self.unsubscribe(&group, session);
                }
                return Err(error);
            }
        };
        let history = match history {
            Ok(history) => {
                let page = self.fit_page(session, history);
                self.charge_read(session, &page);
                page
            }
            Err(error) => {
                if pending.is_some() {
                    self.unsubscribe(&group, session);
                    session.set_joined(&group, false);
                    let _ =
                        self.membership.leave(&group, &session.user, session.connection_id()).await;
                }
                return Err(error.into());
            }
        };
        match pending {
            Some(pending) => pending.open(&history),
            // Already joined: the subscription is live; send the history again.
            None => session.recipient.deliver_history(&history),
        }
        Ok(JoinOutcome::Joined)
    }

    /// The group's place for the connection (created first if allowed).
    async fn take_place(
        &self,
        session: &Session,
        group: &GroupId,
    ) -> Result<JoinOutcome, ChatError> {
        self.ensure_group(session, group, self.config.auto_create_groups).await?;
        Ok(self
            .membership
            .join(group, &session.user, session.connection_id(), self.config.max_members)
            .await?)
    }

    /// The group's members now (distinct users, on every instance), in `str`
    /// order. The connection must have joined the group.
    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn list_members(
        &self,
        session: &Session,
        group: &str,
    ) -> Result<Vec<UserId>, ChatError> {
        let group = self.group(group)?;
        if !session.has_joined(&group) {
            return Err(ChatError::NotJoined(group));
        }
        Ok(self.membership.members(&group).await?)
    }

    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn leave_group(&self, session: &Session, group: &str) -> Result<(), ChatError> {
        let group = self.group(group)?;
        if session.set_joined(&group, false) {
            self.unsubscribe(&group, session);
            self.membership.leave(&group, &session.user, session.connection_id()).await?;
        }
        Ok(())
    }

    /// `SendMessage` up to delivery: validates, publishes and delivers to every
    /// member. The send completes when `saved` resolves (history stored the
    /// message, or the save timeout passed); a caller may go on to the
    /// connection's next invocation meanwhile, as the message's place in the
    /// group's order is already fixed.
    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn accept_message(
        &self,
        session: &Session,
        group: &str,
        text: &str,
    ) -> Result<Accepted, ChatError> {
        let group = self.group(group)?;
        let text = MessageText::parse(text, &self.config.limits)?;
        if !session.has_joined(&group) {
            if self.config.require_join_to_send {
                return Err(ChatError::NotJoined(group));
            }
            if !self.membership.group_exists(&group).await? {
                return Err(ChatError::GroupNotFound(group));
            }
        }
        self.history.has_room()?;
        self.take_token(session, Limited::Messages)?;
        let draft = NewMessage { author: session.user.clone(), group, text };
        let message = self.messaging.publish(draft, &|m: &Message| self.history.accept(m)).await?;
        let stored = self.history.wait_saved(&message.group, message.id);
        let id = message.id;
        let started = Instant::now();
        let saved = Box::pin(async move {
            if !stored.await {
                warn!(
                    %id,
                    waited = ?started.elapsed(),
                    "history did not store the message in time; it stays queued"
                );
            }
        });
        Ok(Accepted { message, saved })
    }

    /// Up to `limit` messages older than `before` (the latest if `None`), oldest first.
    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn get_history(
        &self,
        session: &Session,
        group: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Message>, ChatError> {
        let group = self.group(group)?;
        let limit = limit_arg("limit", limit, self.config.history_page_max)?;
        if !session.has_joined(&group) {
            return Err(ChatError::NotJoined(group));
        }
        let _read = self.start_read(session)?;
        let before = match before {
            Some(text) => {
                let id: MessageId = text.parse()?;
                if !self.history.contains(&group, id).await? {
                    return Err(ChatError::UnknownMessage { group, id });
                }
                Some(id)
            }
            None => None,
        };
        let page =
            self.history.read(&group, before, limit, self.page_budget(), self.longest()).await?;
        let page = self.fit_page(session, page);
        self.charge_read(session, &page);
        Ok(page)
    }

    /// `GetMessagesAfter`: up to `limit` of the group's messages after `after`,
    /// oldest first, as many as fit in one page (at least one); those another
    /// instance accepted and has not stored yet included, as far as
    /// `Messaging::recent_after` reaches. For a client
    /// catching up after a reconnect: it pages on from the last id it got
    /// until a page is empty. `after` is a position, not necessarily a message
    /// this instance knows yet (the client may have seen it on another
    /// instance whose writer has not stored it), so any well-formed id is taken.
    #[instrument(level = "debug", skip_all, fields(user = ?session.user, group = ?group))]
    pub async fn get_messages_after(
        &self,
        session: &Session,
        group: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Message>, ChatError> {
        let group = self.group(group)?;
        let limit = limit_arg("limit", limit, self.config.history_page_max)?;
        if !session.has_joined(&group) {
            return Err(ChatError::NotJoined(group));
        }
        let after: MessageId = after.parse().map_err(|e| match e {
            ChatError::Invalid { message, .. } => {
                ChatError::invalid("afterId", format!("afterId: {message}"))
            }
            other => other,
        })?;
        let _read = self.start_read(session)?;
        // The log first, for what other instances accepted and have not
        // stored yet, then history (stored, and this instance's unsaved):
        // a message the log no longer held as unstored when it was read had
        // been stored, so the history read after it has it. Messages accepted
        // after the log was read reach the caller live (it has joined), so
        // neither read needs to see them. Merged by id, the page ends where
        // either read may have stopped short.
        let recent = self.messaging.recent_after(&group, after, limit).await?;
        let (stored, stored_to) = self
            .history
            .read_after(&group, after, limit, self.page_budget(), self.longest())
            .await?;
        let page = if recent.is_empty() {
            stored
        } else {
            let recent_to = match recent.last() {
                Some(last) if recent.len() >= limit => last.id,
                _ => MessageId::MAX,
            };
            let until = recent_to.min(stored_to);
            let mut merged: BTreeMap<MessageId, Message> =
                stored.into_iter().map(|m| (m.id, m)).collect();
            merged.extend(
                recent.into_iter().filter(|m| m.id > after && m.group == group).map(|m| (m.id, m)),
            );
            merged.into_values().take_while(|m| m.id <= until).take(limit).collect()
        };
        let page = oldest_within(page, self.page_budget(), |m| session.recipient.encoded_size(m));
        self.charge_read(session, &page);
        Ok(page)
    }

    /// Stores what history has not yet stored, for at most `timeout`; returns
    /// how many messages were left unsaved.
    pub async fn flush_history(&self, timeout: Duration) -> usize {
        self.history.flush(Instant::now() + timeout).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn messages(sizes: &[usize]) -> Vec<Message> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Message {
                id: MessageId::new(1, i as u64),
                author: UserId::from_trusted("ann"),
                group: GroupId::from_trusted("g"),
                send_time: SystemTime::UNIX_EPOCH,
                text: MessageText::from_trusted(&"x".repeat(n)),
            })
            .collect()
    }

    fn ids(page: &[Message]) -> Vec<u64> {
        page.iter().map(|m| m.id.seq).collect()
    }

    #[test]
    fn a_page_keeps_the_newest_messages_that_fit() {
        let size = |m: &Message| m.text.as_str().len();
        assert_eq!(ids(&newest_within(messages(&[10, 10, 10, 10]), 25, size)), [2, 3]);
        assert_eq!(ids(&newest_within(messages(&[10, 10, 10, 10]), 40, size)), [0, 1, 2, 3]);
        assert_eq!(ids(&newest_within(messages(&[5, 30, 10]), 25, size)), [2]);
        // One message larger than the page still goes out, so paging goes on.
        assert_eq!(ids(&newest_within(messages(&[10, 100]), 25, size)), [1]);
        assert!(newest_within(Vec::new(), 25, size).is_empty());
    }

    #[test]
    fn a_forward_page_keeps_the_oldest_messages_that_fit() {
        let size = |m: &Message| m.text.as_str().len();
        assert_eq!(ids(&oldest_within(messages(&[10, 10, 10, 10]), 25, size)), [0, 1]);
        assert_eq!(ids(&oldest_within(messages(&[10, 10, 10, 10]), 40, size)), [0, 1, 2, 3]);
        assert_eq!(ids(&oldest_within(messages(&[5, 30, 10]), 25, size)), [0]);
        // One message larger than the page still goes out, so paging goes on.
        assert_eq!(ids(&oldest_within(messages(&[100, 10]), 25, size)), [0]);
        assert!(oldest_within(Vec::new(), 25, size).is_empty());
    }
}
