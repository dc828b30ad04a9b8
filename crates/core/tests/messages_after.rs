//! `ChatService::get_messages_after`: paging forward from a message id, capped
//! in count and bytes, with messages accepted but not yet stored included.
//! Runs the real service against in-test messaging, membership and a store
//! whose appends can be switched off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use next_chat_core::{
    BackendError, ChatConfig, ChatError, ChatService, ConnectionId, Delivery, GroupId,
    HistoryStore, HistoryWriter, HistoryWriterConfig, JoinOutcome, LocalFanout, Membership,
    Message, MessageId, Messaging, NewMessage, NoObserver, OnAccepted, PAGE_ENVELOPE_BYTES,
    Recipient, Session, UserId,
};

/// Hands out ids 1-0, 2-0, ... and delivers at once, as the in-process backend does.
struct Counter {
    fanout: Arc<LocalFanout>,
    next: Mutex<u64>,
    /// What `recent_after` finds in the log: messages another instance
    /// accepted and has not stored yet.
    elsewhere: Mutex<Vec<Message>>,
}

#[async_trait]
impl Messaging for Counter {
    async fn publish(
        &self,
        message: NewMessage,
        on_accepted: OnAccepted<'_>,
    ) -> Result<Message, BackendError> {
        let mut next = self.next.lock().unwrap();
        *next += 1;
        let accepted = Message {
            id: MessageId::new(*next, 0),
            author: message.author,
            group: message.group,
            send_time: SystemTime::UNIX_EPOCH,
            text: message.text,
        };
        on_accepted(&accepted);
        self.fanout.deliver(accepted.clone());
        Ok(accepted)
    }
    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn recent_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let elsewhere = self.elsewhere.lock().unwrap();
        let mut found: Vec<Message> =
            elsewhere.iter().filter(|m| &m.group == group && m.id > after).cloned().collect();
        found.sort_by_key(|m| m.id);
        found.truncate(limit);
        Ok(found)
    }
}

/// Every group exists and has room.
struct Open;

#[async_trait]
impl Membership for Open {
    async fn create_group(&self, _: &GroupId, _: Option<&UserId>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn groups_owned(&self, _: &UserId) -> Result<usize, BackendError> {
        Ok(0)
    }
    async fn group_owner(&self, _: &GroupId) -> Result<Option<UserId>, BackendError> {
        Ok(None)
    }
    async fn group_exists(&self, _: &GroupId) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn group_count(&self) -> Result<usize, BackendError> {
        Ok(1)
    }
    async fn list_groups(
        &self,
        _: Option<&GroupId>,
        _: usize,
    ) -> Result<Vec<GroupId>, BackendError> {
        Ok(Vec::new())
    }
    async fn join(
        &self,
        _: &GroupId,
        _: &UserId,
        _: &ConnectionId,
        _: usize,
    ) -> Result<JoinOutcome, BackendError> {
        Ok(JoinOutcome::Joined)
    }
    async fn leave(&self, _: &GroupId, _: &UserId, _: &ConnectionId) -> Result<(), BackendError> {
        Ok(())
    }
    async fn member_count(&self, _: &GroupId) -> Result<usize, BackendError> {
        Ok(0)
    }
    async fn members(&self, _: &GroupId) -> Result<Vec<UserId>, BackendError> {
        Ok(Vec::new())
    }
    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[derive(Default)]
struct Store {
    rows: Mutex<BTreeMap<(GroupId, MessageId), Message>>,
    appends_down: AtomicBool,
}

#[async_trait]
impl HistoryStore for Store {
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError> {
        if self.appends_down.load(Ordering::SeqCst) {
            return Err(BackendError::new("history", "appends switched off by the test"));
        }
        let mut rows = self.rows.lock().unwrap();
        for m in messages {
            rows.insert((m.group.clone(), m.id), m.clone());
        }
        Ok(())
    }
    async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let rows = self.rows.lock().unwrap();
        let mut out: Vec<Message> = rows
            .values()
            .filter(|m| &m.group == group && before.is_none_or(|b| m.id < b))
            .cloned()
            .collect();
        out.drain(..out.len().saturating_sub(limit));
        Ok(out)
    }
    async fn read_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .values()
            .filter(|m| &m.group == group && m.id > after)
            .take(limit)
            .cloned()
            .collect())
    }
    async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError> {
        Ok(self.rows.lock().unwrap().contains_key(&(group.clone(), id)))
    }
    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A connection that measures a message by its text alone.
struct Quiet(ConnectionId);

impl Recipient for Quiet {
    fn connection_id(&self) -> &ConnectionId {
        &self.0
    }
    fn user(&self) -> &str {
        "ann"
    }
    fn deliver(&self, _: &Delivery) {}
    fn deliver_history(&self, _: &[Message]) {}
    fn encoded_size(&self, message: &Message) -> usize {
        message.text.as_str().len()
    }
}

struct Fixture {
    chat: ChatService,
    store: Arc<Store>,
    messaging: Arc<Counter>,
    ann: Session,
}

fn fixture(config: ChatConfig) -> Fixture {
    let fanout = Arc::new(LocalFanout::new());
    let store = Arc::new(Store::default());
    let writer_config =
        HistoryWriterConfig { save_timeout: Duration::from_secs(10), ..Default::default() };
    let history = HistoryWriter::start(store.clone(), writer_config, Arc::new(NoObserver));
    let messaging = Arc::new(Counter {
        fanout: fanout.clone(),
        next: Mutex::new(0),
        elsewhere: Mutex::new(Vec::new()),
    });
    let chat = ChatService::new(config, messaging.clone(), Arc::new(Open), history, fanout);
    let ann =
        chat.open_session(UserId::from_trusted("ann"), Arc::new(Quiet(ConnectionId::new("c1"))));
    Fixture { chat, store, messaging, ann }
}

impl Fixture {
    /// Sends `texts` to `g` and waits for each to be stored unless appends are off.
    async fn send(&self, texts: impl IntoIterator<Item = String>) {
        for text in texts {
            let accepted = self.chat.accept_message(&self.ann, "g", &text).await.unwrap();
            if !self.store.appends_down.load(Ordering::SeqCst) {
                accepted.saved.await;
            }
        }
    }

    async fn after(&self, after: &str, limit: i64) -> Result<Vec<String>, ChatError> {
        let page = self.chat.get_messages_after(&self.ann, "g", after, limit).await?;
        Ok(page.iter().map(|m| m.text.as_str().to_string()).collect())
    }
}

fn texts(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i:03}")).collect()
}

#[tokio::test]
async fn pages_forward_oldest_first_capped_by_limit_until_empty() {
    let f = fixture(ChatConfig { history_page_max: 50, ..ChatConfig::default() });
    f.chat.join_group(&f.ann, "g").await.unwrap();
    f.send(texts(1..121)).await;
    // Ids are 1-0 .. 120-0; page forward from 0-0 in pages of at most 50.
    let mut after = "0-0".to_string();
    let mut seen = Vec::new();
    loop {
        let page = f.chat.get_messages_after(&f.ann, "g", &after, 50).await.unwrap();
        assert!(page.len() <= 50);
        let Some(last) = page.last() else { break };
        after = last.id.to_string();
        seen.extend(page.iter().map(|m| m.text.as_str().to_string()));
    }
    assert_eq!(seen, texts(1..121), "every message once, in order");
    assert_eq!(f.after("117-0", 10).await.unwrap(), texts(118..121));
    assert_eq!(f.after("120-0", 10).await.unwrap(), Vec::<String>::new(), "current: empty");
    // A position past every id, or one between ids, is fine.
    assert_eq!(f.after("999-0", 10).await.unwrap(), Vec::<String>::new());
    assert_eq!(f.after("5-7", 2).await.unwrap(), texts(6..8));
}

#[tokio::test]
async fn a_page_is_capped_in_bytes_keeping_the_oldest_and_at_least_one() {
    // Room for three 100-byte texts in a page.
    let max_bytes = PAGE_ENVELOPE_BYTES + 350;
    let f = fixture(ChatConfig { history_page_max_bytes: max_bytes, ..ChatConfig::default() });
    f.chat.join_group(&f.ann, "g").await.unwrap();
    let long = |i: usize| format!("{i:03}{}", "x".repeat(97));
    f.send((1..=5).map(long)).await;
    assert_eq!(f.after("0-0", 500).await.unwrap(), (1..=3).map(long).collect::<Vec<_>>());
    assert_eq!(f.after("3-0", 500).await.unwrap(), (4..=5).map(long).collect::<Vec<_>>());
    // One message bigger than the page still comes alone, so paging goes on.
    f.send([format!("big{}", "y".repeat(1000))]).await;
    f.send([long(7)]).await;
    let page = f.after("5-0", 500).await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(page[0].starts_with("big"));
    assert_eq!(f.after("6-0", 500).await.unwrap(), vec![long(7)]);
}

#[tokio::test]
async fn messages_not_yet_stored_are_included_in_order() {
    let f = fixture(ChatConfig::default());
    f.chat.join_group(&f.ann, "g").await.unwrap();
    f.send(texts(1..4)).await;
    f.store.appends_down.store(true, Ordering::SeqCst);
    f.send(texts(4..7)).await;
    assert!(f.chat.history().unsaved_len() >= 3, "the last three wait to be stored");
    assert_eq!(f.after("0-0", 500).await.unwrap(), texts(1..7));
    assert_eq!(f.after("2-0", 3).await.unwrap(), texts(3..6), "the limit spans both");
    assert_eq!(f.after("4-0", 500).await.unwrap(), texts(5..7));
}

#[tokio::test]
async fn messages_another_instance_has_not_stored_yet_are_found_in_the_log() {
    let f = fixture(ChatConfig::default());
    f.chat.join_group(&f.ann, "g").await.unwrap();
    f.send(texts(1..6)).await;
    let from_c = |group: &str, millis, seq, text: &str| Message {
        id: MessageId::new(millis, seq),
        author: UserId::from_trusted("cy"),
        group: GroupId::from_trusted(group),
        send_time: SystemTime::UNIX_EPOCH,
        text: next_chat_core::MessageText::from_trusted(text),
    };
    // Accepted on another instance between 3-0 and 4-0, and one after the
    // last; the log also holds one already stored here, and another group's.
    *f.messaging.elsewhere.lock().unwrap() = vec![
        from_c("g", 3, 1, "from C"),
        from_c("g", 5, 0, "m005"),
        from_c("h", 5, 1, "other group"),
        from_c("g", 9, 0, "late from C"),
    ];
    let mut all = texts(1..6);
    all.insert(3, "from C".into());
    all.push("late from C".into());
    assert_eq!(f.after("0-0", 500).await.unwrap(), all, "merged by id, each once");
    assert_eq!(f.after("0-0", 3).await.unwrap(), all[..3], "the limit applies to the merge");
    assert_eq!(f.after("3-0", 2).await.unwrap(), all[3..5]);
    assert_eq!(f.after("5-0", 500).await.unwrap(), ["late from C"]);
}

/// A 100-byte text, numbered.
fn long(i: usize) -> String {
    format!("{i:03}{}", "x".repeat(97))
}

impl Fixture {
    /// Pages forward from the start until a page is empty: five `long`
    /// texts, then "late", each once, in order.
    async fn assert_pages_hold_five_long_then_late(&self) {
        let mut after = "0-0".to_string();
        let mut seen = Vec::new();
        loop {
            let page = self.chat.get_messages_after(&self.ann, "g", &after, 500).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.id.to_string();
            seen.extend(page.iter().map(|m| m.text.as_str().to_string()));
        }
        let mut all: Vec<String> = (1..=5).map(long).collect();
        all.push("late".into());
        assert_eq!(seen, all, "every message once, in order, across the byte-cut pages");
    }
}

/// A history page cut short by the byte budget ends the merged page too: a
/// later message from the log would move the caller's position past stored
/// messages it has not been given.
#[tokio::test]
async fn a_page_cut_in_bytes_does_not_skip_to_a_later_message_from_the_log() {
    // Room for three 100-byte texts in a page.
    let max_bytes = PAGE_ENVELOPE_BYTES + 350;
    let f = fixture(ChatConfig { history_page_max_bytes: max_bytes, ..ChatConfig::default() });
    f.chat.join_group(&f.ann, "g").await.unwrap();
    f.send((1..=5).map(long)).await;
    *f.messaging.elsewhere.lock().unwrap() = vec![Message {
        id: MessageId::new(9, 0),
        author: UserId::from_trusted("cy"),
        group: GroupId::from_trusted("g"),
        send_time: SystemTime::UNIX_EPOCH,
        text: next_chat_core::MessageText::from_trusted("late"),
    }];
    f.assert_pages_hold_five_long_then_late().await;
}

/// The same with a message this instance has not stored yet: the store's page
/// cut in bytes ends the page, and the unsaved message comes after the stored
/// ones it follows.
#[tokio::test]
async fn a_page_cut_in_bytes_does_not_skip_to_a_later_unsaved_message() {
    let max_bytes = PAGE_ENVELOPE_BYTES + 350;
    let f = fixture(ChatConfig { history_page_max_bytes: max_bytes, ..ChatConfig::default() });
    f.chat.join_group(&f.ann, "g").await.unwrap();
    f.send((1..=5).map(long)).await;
    f.store.appends_down.store(true, Ordering::SeqCst);
    f.send(["late".to_string()]).await;
    f.assert_pages_hold_five_long_then_late().await;
}

#[tokio::test]
async fn bad_arguments_name_the_field_and_the_limit() {
    let f = fixture(ChatConfig::default());
    let not_joined = f.after("0-0", 10).await.unwrap_err().to_string();
    assert!(not_joined.contains("join group 'g'"), "{not_joined}");
    f.chat.join_group(&f.ann, "g").await.unwrap();
    assert_eq!(
        f.after("0-0", 0).await.unwrap_err().to_string(),
        "limit must be between 1 and 500, not 0"
    );
    assert_eq!(
        f.after("0-0", 501).await.unwrap_err().to_string(),
        "limit must be between 1 and 500, not 501"
    );
    assert_eq!(
        f.after("yesterday", 10).await.unwrap_err().to_string(),
        "afterId: 'yesterday' is not a message id"
    );
}

#[tokio::test]
async fn history_reads_past_the_users_byte_budget_are_refused_with_the_wait() {
    // 1000 bytes per second, 500 at once: a page of 800 bytes passes, as a
    // read starts while the user is not over its budget.
    let f = fixture(ChatConfig {
        history_read_bytes: next_chat_core::Rate::per_second(1000, 500),
        ..ChatConfig::default()
    });
    f.chat.join_group(&f.ann, "g").await.unwrap();
    f.send((0..8).map(|i| format!("{i}{}", "x".repeat(99)))).await;
    let page = f.chat.get_history(&f.ann, "g", None, 500).await.unwrap();
    assert_eq!(page.len(), 8);
    // The 800 bytes read put the user in debt: the next read waits for it.
    let error = f.chat.get_history(&f.ann, "g", None, 500).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(
            "rate limited: more than 1000 bytes of history per second for user ann; retry in "
        ),
        "{text}"
    );
    assert!(f.chat.get_messages_after(&f.ann, "g", "0-0", 10).await.is_err());
}
