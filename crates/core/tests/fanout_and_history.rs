//! The fan-out gate and the history writer, against an in-memory store that can
//! be switched off like a database that goes down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use next_chat_core::fanout::TooManyForUser;
use next_chat_core::history::unsaved_size;
use next_chat_core::{
    BackendError, ConnectionId, Delivery, GroupId, HistoryObserver, HistoryStore, HistoryWriter,
    HistoryWriterConfig, LocalFanout, Message, MessageId, MessageText, NoObserver, Recipient,
    UserId,
};

fn message(group: &str, millis: u64, text: &str) -> Message {
    Message {
        id: MessageId::new(millis, 0),
        author: UserId::from_trusted("ann"),
        group: GroupId::from_trusted(group),
        send_time: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        text: MessageText::from_trusted(text),
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    History(Vec<MessageId>),
    Message(MessageId),
}

struct Recorder {
    id: ConnectionId,
    user: String,
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    fn new(id: &str) -> Arc<Recorder> {
        Recorder::of_user(id, id)
    }
    fn of_user(id: &str, user: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            id: ConnectionId::new(id),
            user: user.to_owned(),
            seen: Mutex::new(Vec::new()),
        })
    }
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Recipient for Recorder {
    fn connection_id(&self) -> &ConnectionId {
        &self.id
    }

    fn user(&self) -> &str {
        &self.user
    }
    fn deliver(&self, delivery: &Delivery) {
        self.seen.lock().unwrap().push(Seen::Message(delivery.message.id));
    }
    fn deliver_history(&self, messages: &[Message]) {
        self.seen.lock().unwrap().push(Seen::History(messages.iter().map(|m| m.id).collect()));
    }
    fn encoded_size(&self, message: &Message) -> usize {
        message.text.as_str().len()
    }
}

#[test]
fn a_user_may_subscribe_at_most_the_given_number_of_connections_to_a_group() {
    let fanout = LocalFanout::new();
    let group = GroupId::from_trusted("g");
    let other = GroupId::from_trusted("h");
    let ann = [Recorder::of_user("a1", "ann"), Recorder::of_user("a2", "ann")];
    let third = Recorder::of_user("a3", "ann");
    for recorder in &ann {
        assert!(fanout.subscribe_at_most(&group, recorder.clone(), 2).unwrap().is_some());
    }
    assert_eq!(fanout.subscribe_at_most(&group, third.clone(), 2).err(), Some(TooManyForUser));
    // Already subscribed is not one more; other users and other groups do not count.
    assert!(fanout.subscribe_at_most(&group, ann[0].clone(), 2).unwrap().is_none());
    assert!(fanout.subscribe_at_most(&group, Recorder::of_user("b1", "bob"), 2).unwrap().is_some());
    assert!(fanout.subscribe_at_most(&other, third.clone(), 2).unwrap().is_some());
    // A place freed is a place taken again.
    fanout.unsubscribe(&group, &ConnectionId::new("a1"));
    assert!(fanout.subscribe_at_most(&group, third, 2).unwrap().is_some());
    assert_eq!(fanout.local_subscribers(&group), 3);
}

#[test]
fn joining_connection_gets_history_first_then_only_newer_messages_once() {
    let fanout = LocalFanout::new();
    let group = GroupId::from_trusted("g");
    let recorder = Recorder::new("c1");
    let pending = fanout.subscribe(&group, recorder.clone()).expect("first subscription");
    // Two messages arrive while the join reads history; the first is in it.
    assert_eq!(fanout.deliver(message("g", 1, "a")), 1);
    assert_eq!(fanout.deliver(message("g", 2, "b")), 1);
    assert!(recorder.take().is_empty(), "nothing is delivered before the history");
    pending.open(&[message("g", 1, "a")]);
    fanout.deliver(message("g", 3, "c"));
    assert_eq!(
        recorder.take(),
        vec![
            Seen::History(vec![MessageId::new(1, 0)]),
            Seen::Message(MessageId::new(2, 0)),
            Seen::Message(MessageId::new(3, 0)),
        ]
    );
}

#[test]
fn joins_while_messages_flow_get_history_first_then_every_later_message_once_in_order() {
    const MESSAGES: u64 = 3000;
    let fanout = Arc::new(LocalFanout::new());
    let group = GroupId::from_trusted("g");
    // Held by the sender around each delivery and by a join around
    // subscribing and reading "history" (every id delivered so far), so a
    // join's history and its subscription agree, as the chat rules arrange.
    let sent = Arc::new(Mutex::new(0u64));
    let sender = {
        let (fanout, sent) = (fanout.clone(), sent.clone());
        std::thread::spawn(move || {
            for millis in 1..=MESSAGES {
                let mut last = sent.lock().unwrap();
                fanout.deliver(message("g", millis, "m"));
                *last = millis;
            }
        })
    };
    let mut joined = Vec::new();
    for join in 0..20u64 {
        // Join at spread-out points of the flow.
        while *sent.lock().unwrap() < join * MESSAGES / 25 {
            std::thread::yield_now();
        }
        let recorder = Recorder::new(&format!("c{join}"));
        let (pending, history_upto) = {
            let last = sent.lock().unwrap();
            (fanout.subscribe(&group, recorder.clone()).expect("a new subscription"), *last)
        };
        // Opened while the sender goes on: live messages race the gate.
        let history: Vec<Message> = (1..=history_upto).map(|m| message("g", m, "m")).collect();
        pending.open(&history);
        joined.push((recorder, history_upto));
    }
    sender.join().expect("the sender");
    for (recorder, history_upto) in joined {
        let seen = recorder.take();
        let history: Vec<MessageId> = (1..=history_upto).map(|m| MessageId::new(m, 0)).collect();
        let live: Vec<Seen> =
            (history_upto + 1..=MESSAGES).map(|m| Seen::Message(MessageId::new(m, 0))).collect();
        assert_eq!(seen.first(), Some(&Seen::History(history)), "history first");
        assert!(seen[1..] == live[..], "{}: every later message once, in order", recorder.id);
    }
}

#[test]
fn subscribing_twice_keeps_one_subscription_and_unsubscribe_stops_delivery() {
    let fanout = LocalFanout::new();
    let group = GroupId::from_trusted("g");
    let recorder = Recorder::new("c1");
    fanout.subscribe(&group, recorder.clone()).unwrap().open(&[]);
    assert!(fanout.subscribe(&group, recorder.clone()).is_none());
    assert_eq!(fanout.local_subscribers(&group), 1);
    fanout.deliver(message("g", 1, "a"));
    fanout.unsubscribe(&group, &ConnectionId::new("c1"));
    assert_eq!(fanout.deliver(message("g", 2, "b")), 0);
    assert_eq!(recorder.take(), vec![Seen::History(vec![]), Seen::Message(MessageId::new(1, 0))]);
}

#[test]
fn a_message_is_encoded_once_for_all_recipients() {
    let delivery = Delivery::new(message("g", 1, "a"));
    let mut calls = 0;
    let first = delivery.encoded(0, |_| {
        calls += 1;
        bytes::Bytes::from_static(b"x")
    });
    let second = delivery.encoded(0, |_| unreachable!("encoded again"));
    assert_eq!(calls, 1);
    assert_eq!(first, second);
}

/// A history store in memory that can be made to fail.
#[derive(Default)]
struct FlakyStore {
    rows: Mutex<BTreeMap<(String, MessageId), Message>>,
    appends: Mutex<usize>,
    down: AtomicBool,
    /// Appends fail, reads still work: a store that is only behind.
    appends_down: AtomicBool,
    /// A batch holding a message with this text is refused on its merits.
    refuse_text: Mutex<Option<String>>,
    /// The size of every append, in messages.
    batch_sizes: Mutex<Vec<usize>>,
}

impl FlakyStore {
    fn check_up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::new("history", "switched off by the test"));
        }
        Ok(())
    }
}

#[async_trait]
impl HistoryStore for FlakyStore {
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError> {
        self.check_up()?;
        if self.appends_down.load(Ordering::SeqCst) {
            return Err(BackendError::new("history", "appends switched off by the test"));
        }
        if let Some(text) = self.refuse_text.lock().unwrap().as_deref()
            && messages.iter().any(|m| m.text.as_str() == text)
        {
            return Err(BackendError::refused("history", "value refused by the test"));
        }
        self.batch_sizes.lock().unwrap().push(messages.len());
        *self.appends.lock().unwrap() += 1;
        let mut rows = self.rows.lock().unwrap();
        for m in messages {
            rows.entry((m.group.to_string(), m.id)).or_insert_with(|| m.clone());
        }
        Ok(())
    }
    async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.check_up()?;
        let rows = self.rows.lock().unwrap();
        let mut out: Vec<Message> = rows
            .values()
            .filter(|m| &m.group == group && before.is_none_or(|b| m.id < b))
            .cloned()
            .collect();
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        Ok(out)
    }
    async fn read_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.check_up()?;
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .values()
            .filter(|m| &m.group == group && m.id > after)
            .take(limit)
            .cloned()
            .collect())
    }
    async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError> {
        self.check_up()?;
        Ok(self.rows.lock().unwrap().contains_key(&(group.to_string(), id)))
    }
    async fn check(&self) -> Result<(), BackendError> {
        self.check_up()
    }
}

fn writer(store: &Arc<FlakyStore>, save_timeout: Duration) -> HistoryWriter {
    let config =
        HistoryWriterConfig { save_timeout, batch_max: 10, ..HistoryWriterConfig::default() };
    HistoryWriter::start(store.clone(), config, Arc::new(NoObserver))
}

#[tokio::test]
async fn accepted_messages_are_stored_and_the_sender_waits_for_it() {
    let store = Arc::new(FlakyStore::default());
    let history = writer(&store, Duration::from_secs(10));
    let m = message("g", 1, "a");
    history.accept(&m);
    assert!(history.wait_saved(&m.group, m.id).await);
    assert_eq!(store.rows.lock().unwrap().len(), 1);
    assert_eq!(history.unsaved_len(), 0);
}

#[tokio::test]
async fn while_the_store_is_down_sends_time_out_reads_fail_and_nothing_is_lost() {
    let store = Arc::new(FlakyStore::default());
    store.down.store(true, Ordering::SeqCst);
    let history = writer(&store, Duration::from_millis(50));
    let group = GroupId::from_trusted("g");
    for i in 1..=25 {
        history.accept(&message("g", i, "x"));
    }
    assert!(!history.wait_saved(&group, MessageId::new(25, 0)).await, "the wait is bounded");
    assert!(history.read(&group, None, 100, usize::MAX, 0).await.is_err());
    assert!(history.contains(&group, MessageId::new(3, 0)).await.unwrap(), "unsaved counts");

    store.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(history.flush(deadline).await, 0, "everything is stored once the store is back");
    let rows = store.rows.lock().unwrap();
    assert_eq!(rows.len(), 25);
    assert!(*store.appends.lock().unwrap() >= 3, "batches of at most 10");
}

#[tokio::test]
async fn reads_merge_unsaved_messages_in_order() {
    let store = Arc::new(FlakyStore::default());
    let history = writer(&store, Duration::from_secs(10));
    let group = GroupId::from_trusted("g");
    for i in 1..=3 {
        let m = message("g", i, "stored");
        history.accept(&m);
        assert!(history.wait_saved(&group, m.id).await);
    }
    // Appends fail so the next messages stay unsaved, but reads still work.
    store.appends_down.store(true, Ordering::SeqCst);
    history.accept(&message("g", 4, "unsaved"));
    history.accept(&message("g", 5, "unsaved"));
    assert_eq!(history.unsaved_len(), 2);
    let all = history.read(&group, None, 4, usize::MAX, 0).await.unwrap();
    let ids: Vec<u64> = all.iter().map(|m| m.id.millis).collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert_eq!(*ids.last().unwrap(), 5);
    let before = history.read(&group, Some(MessageId::new(3, 0)), 10, usize::MAX, 0).await.unwrap();
    assert_eq!(before.iter().map(|m| m.id.millis).collect::<Vec<_>>(), vec![1, 2]);
}

/// Counts what the writer reports.
#[derive(Default)]
struct Counting {
    refused: Mutex<Vec<MessageId>>,
    failed: AtomicUsize,
}

impl HistoryObserver for Counting {
    fn batch_written(&self, _: usize, _: Duration) {}
    fn batch_failed(&self, _: usize, _: &BackendError) {
        self.failed.fetch_add(1, Ordering::SeqCst);
    }
    fn message_refused(&self, message: &Message, error: &BackendError) {
        assert!(error.refused);
        self.refused.lock().unwrap().push(message.id);
    }
}

#[tokio::test]
async fn a_message_the_store_refuses_is_set_aside_and_the_rest_are_stored() {
    let store = Arc::new(FlakyStore::default());
    *store.refuse_text.lock().unwrap() = Some("poison".into());
    let observer = Arc::new(Counting::default());
    let config = HistoryWriterConfig {
        save_timeout: Duration::from_secs(10),
        batch_max: 10,
        ..HistoryWriterConfig::default()
    };
    store.appends_down.store(true, Ordering::SeqCst);
    let history = HistoryWriter::start(store.clone(), config, observer.clone());
    let group = GroupId::from_trusted("g");
    for i in 1..=25 {
        history.accept(&message("g", i, if i == 7 { "poison" } else { "fine" }));
    }
    // Both wait: one is stored, the other is set aside and never reported stored.
    let stored = history.wait_saved(&group, MessageId::new(8, 0));
    let refused = history.wait_saved(&group, MessageId::new(7, 0));
    store.appends_down.store(false, Ordering::SeqCst);
    assert!(stored.await);
    assert!(!refused.await, "a message set aside is not reported as stored");
    assert_eq!(history.flush(Instant::now() + Duration::from_secs(10)).await, 0);
    let rows = store.rows.lock().unwrap();
    assert_eq!(rows.len(), 24, "every message but the refused one is stored");
    assert!(!rows.contains_key(&("g".to_string(), MessageId::new(7, 0))));
    assert_eq!(*observer.refused.lock().unwrap(), vec![MessageId::new(7, 0)]);
    assert_eq!(history.unsaved_bytes(), 0, "a message set aside frees its bytes");
}

#[tokio::test]
async fn a_passing_failure_is_retried_and_sets_nothing_aside() {
    let store = Arc::new(FlakyStore::default());
    let observer = Arc::new(Counting::default());
    store.appends_down.store(true, Ordering::SeqCst);
    let history =
        HistoryWriter::start(store.clone(), HistoryWriterConfig::default(), observer.clone());
    for i in 1..=5 {
        history.accept(&message("g", i, "x"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.failed.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the writer retries");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(history.unsaved_len(), 5, "nothing is dropped while the store fails");
    store.appends_down.store(false, Ordering::SeqCst);
    assert_eq!(history.flush(Instant::now() + Duration::from_secs(10)).await, 0);
    assert_eq!(store.rows.lock().unwrap().len(), 5);
    assert!(observer.refused.lock().unwrap().is_empty());
}

#[tokio::test]
async fn batches_are_bounded_in_bytes() {
    let store = Arc::new(FlakyStore::default());
    store.appends_down.store(true, Ordering::SeqCst);
    let long = "x".repeat(10_000);
    let config = HistoryWriterConfig {
        batch_max: 500,
        // Room for three of these messages, not four.
        batch_max_bytes: 3 * unsaved_size(&message("g", 1, &long)) + 10,
        ..HistoryWriterConfig::default()
    };
    let history = HistoryWriter::start(store.clone(), config, Arc::new(NoObserver));
    for i in 1..=10 {
        history.accept(&message("g", i, &long));
    }
    store.appends_down.store(false, Ordering::SeqCst);
    assert_eq!(history.flush(Instant::now() + Duration::from_secs(10)).await, 0);
    let sizes = store.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 10);
    assert!(sizes.iter().all(|&n| n <= 3), "batches of at most 3: {sizes:?}");
}

#[tokio::test]
async fn a_full_unsaved_set_refuses_new_messages_with_the_setting_named() {
    let store = Arc::new(FlakyStore::default());
    store.appends_down.store(true, Ordering::SeqCst);
    let text = "y".repeat(100_000);
    let one = unsaved_size(&message("g", 1, &text));
    let config =
        HistoryWriterConfig { unsaved_max_bytes: 3 * one, ..HistoryWriterConfig::default() };
    let history = HistoryWriter::start(store.clone(), config, Arc::new(NoObserver));
    for i in 1..=3 {
        history.has_room().unwrap();
        history.accept(&message("g", i, &text));
    }
    assert_eq!(history.unsaved_bytes(), 3 * one);
    let full = history.has_room().unwrap_err();
    let text_seen = full.to_string();
    assert_eq!(full.backend, "history");
    assert!(!full.refused, "full is a passing state");
    assert!(text_seen.contains("history is unavailable"), "{text_seen}");
    assert!(text_seen.contains("limit history_unsaved_max_bytes = 0.3 MiB"), "{text_seen}");
    store.appends_down.store(false, Ordering::SeqCst);
    assert_eq!(history.flush(Instant::now() + Duration::from_secs(10)).await, 0);
    assert_eq!(history.unsaved_bytes(), 0);
    assert!(history.has_room().is_ok(), "room again once stored");
}
