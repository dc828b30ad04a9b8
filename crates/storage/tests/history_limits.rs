//! History never stalls: the SQL stores split a batch by bytes (a batch of the
//! longest messages bigger than MySQL's packet limit is stored), say whether a
//! failure is a refusal of the rows or a passing outage (a locked table, a lost
//! connection, a busy SQLite file), and a refused message is set aside by the
//! writer and the reconciler while everything after it is stored. MySQL and
//! Redis tests use names of their own; SQLite tests a temporary file.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use next_chat_core::history::append_or_set_aside;
use next_chat_core::{
    BackendError, GroupId, HistoryObserver, HistoryStore, HistoryWriter, HistoryWriterConfig,
    LocalFanout, Message, MessageId, MessageText, Messaging, NewMessage,
};
use next_chat_storage::{
    MySqlHistory, ReconcilerConfig, RedisMessaging, SqliteStore, StreamHistoryReconciler,
};
use next_chat_testkit::{MYSQL_ADDR, TcpProxy, eventually_ok};
use sqlx::Connection;

/// 16,384 emoji: the longest text, 64 KiB of UTF-8.
fn longest_text() -> String {
    "\u{1F600}".repeat(16_384)
}

/// A group id longer than MySQL's `VARCHAR(255)`: the database refuses the
/// row on its own (data too long), whatever else is in the batch.
fn too_long_group() -> String {
    "g".repeat(300)
}

/// Records refusals.
#[derive(Default)]
struct Refusals(Mutex<Vec<MessageId>>);

impl HistoryObserver for Refusals {
    fn batch_written(&self, _: usize, _: Duration) {}
    fn batch_failed(&self, _: usize, _: &BackendError) {}
    fn message_refused(&self, message: &Message, error: &BackendError) {
        assert!(error.refused, "only refusals are set aside: {error}");
        self.0.lock().unwrap().push(message.id);
    }
}

async fn mysql_count(url: &str, sql: &str) -> i64 {
    let mut connection = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut connection).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_stores_a_batch_bigger_than_max_allowed_packet_once() {
    let names = ScaleOutNames::new();
    let history = MySqlHistory::connect(&names.mysql_url(), true).await.unwrap();
    let mut server = sqlx::MySqlConnection::connect(&names.mysql_url()).await.unwrap();
    let packet: u64 =
        sqlx::query_scalar("SELECT @@max_allowed_packet").fetch_one(&mut server).await.unwrap();
    assert_eq!(history.statement_bytes() as u64, (packet / 2).min(8 * 1024 * 1024));
    // 300 x 64 KiB = 19 MiB of text, more than the default 16 MiB packet.
    let text = longest_text();
    let batch: Vec<Message> = (0..300).map(|i| message("big", 1000 + i, 0, &text)).collect();
    assert!(300 * text.len() as u64 > packet.min(16 * 1024 * 1024));
    history.append(&batch).await.expect("a batch over the packet limit is split and stored");
    // Again: idempotent, nothing stored twice.
    history.append(&batch).await.unwrap();
    let url = names.mysql_url();
    assert_eq!(mysql_count(&url, "SELECT COUNT(*) FROM messages").await, 300);
    assert_eq!(
        mysql_count(&url, "SELECT COUNT(*) FROM messages WHERE LENGTH(text) = 65536").await,
        300
    );
    assert_eq!(history.read(&group("big"), None, 500).await.unwrap(), batch);
    history.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_refuses_a_too_long_row_and_the_rest_of_the_batch_is_stored() {
    let names = ScaleOutNames::new();
    let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), true).await.unwrap());
    let bad = message(&too_long_group(), 2, 0, "refused");
    let batch = vec![message("g", 1, 0, "before"), bad.clone(), message("g", 3, 0, "after")];
    let error = history.append(&batch).await.expect_err("the batch is refused");
    assert!(error.refused, "data too long is a refusal: {error}");
    assert_eq!(mysql_count(&names.mysql_url(), "SELECT COUNT(*) FROM messages").await, 0);

    // The history writer sets the refused row aside and stores the others.
    let refusals = Arc::new(Refusals::default());
    let writer =
        HistoryWriter::start(history.clone(), HistoryWriterConfig::default(), refusals.clone());
    for m in &batch {
        writer.accept(m);
    }
    assert_eq!(writer.flush(Instant::now() + EVENT_TIMEOUT).await, 0, "nothing left unsaved");
    assert_eq!(*refusals.0.lock().unwrap(), vec![bad.id]);
    let stored = history.read(&group("g"), None, 10).await.unwrap();
    assert_eq!(stored, vec![batch[0].clone(), batch[2].clone()]);
    history.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_write_locked_table_is_a_passing_failure() {
    let names = ScaleOutNames::new();
    let history = MySqlHistory::connect(&names.mysql_url(), true).await.unwrap();
    let mut locker = sqlx::MySqlConnection::connect(&names.mysql_url()).await.unwrap();
    sqlx::query("LOCK TABLES messages READ").execute(&mut locker).await.unwrap();
    let batch = vec![message("g", 1, 0, "a"), message("g", 2, 0, "b")];
    let error = history.append(&batch).await.expect_err("the table is locked");
    assert!(!error.refused, "a locked table passes: {error}");
    let observer = Refusals::default();
    let appended = append_or_set_aside(&history, &batch, &observer).await;
    assert_eq!(appended.done, 0, "nothing is set aside for a passing failure");
    assert!(appended.error.is_some_and(|e| !e.refused));
    sqlx::query("UNLOCK TABLES").execute(&mut locker).await.unwrap();
    history.append(&batch).await.expect("stored once the lock is gone");
    assert_eq!(history.read(&group("g"), None, 10).await.unwrap(), batch);
    history.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_lost_connection_is_a_passing_failure() {
    let names = ScaleOutNames::new();
    next_chat_storage::mysql::migrate(&names.mysql_url()).await.unwrap();
    let proxy = TcpProxy::start(MYSQL_ADDR).await;
    let url = format!("mysql://root@127.0.0.1:{}/{}", proxy.port, names.database);
    let history = MySqlHistory::connect(&url, false).await.unwrap();
    history.append(&[message("g", 1, 0, "a")]).await.unwrap();
    proxy.cut();
    let error = history.append(&[message("g", 2, 0, "b")]).await.expect_err("MySQL is cut off");
    assert!(!error.refused, "a lost connection passes: {error}");
    proxy.restore();
    eventually_ok(EVENT_TIMEOUT, "appends work again once MySQL is back", || async {
        history.append(&[message("g", 2, 0, "b")]).await
    })
    .await;
    assert_eq!(history.read(&group("g"), None, 10).await.unwrap().len(), 2);
    history.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_sets_aside_what_mysql_refuses_and_moves_its_watermark_on() {
    let names = ScaleOutNames::new();
    let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), true).await.unwrap());
    let messaging =
        RedisMessaging::start(names.redis_config(), Arc::new(LocalFanout::new())).await.unwrap();
    // An instance died before storing these: only the streams have them, and
    // MySQL refuses the second one on its own.
    let draft = |g: &str, text: &str| NewMessage {
        author: user("alice"),
        group: GroupId::from_trusted(g),
        text: MessageText::from_trusted(text),
    };
    let text = longest_text();
    let mut published = Vec::new();
    published.push(messaging.publish(draft("g", &text), &|_| {}).await.unwrap());
    let bad = messaging.publish(draft(&too_long_group(), "refused"), &|_| {}).await.unwrap();
    for _ in 0..200 {
        published.push(messaging.publish(draft("g", &text), &|_| {}).await.unwrap());
    }
    let refusals = Arc::new(Refusals::default());
    let config = ReconcilerConfig {
        interval: Duration::from_secs(3600),
        settle: Duration::ZERO,
        ..ReconcilerConfig::default()
    };
    let reconciler = StreamHistoryReconciler::start(
        names.redis_config(),
        config,
        history.clone(),
        refusals.clone(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let (mut inserted, mut refused) = (0, 0);
    while inserted < published.len() {
        assert!(Instant::now() < deadline, "the reconciler stores the rest: {inserted}");
        let report = reconciler.run_round().await.expect("no round fails");
        inserted += report.inserted;
        refused += report.refused;
    }
    assert_eq!((inserted, refused), (published.len(), 1));
    assert_eq!(*refusals.0.lock().unwrap(), vec![bad.id]);
    assert_eq!(history.read(&group("g"), None, 500).await.unwrap(), published);
    // The watermark moved past the refused entry: the next round has nothing to do.
    let again = reconciler.run_round().await.unwrap();
    assert_eq!((again.scanned, again.inserted, again.refused), (0, 0, 0));
    reconciler.shutdown();
    messaging.shutdown().await;
    history.close().await;
}

async fn sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("h.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn sqlite_stores_a_batch_of_the_longest_messages_in_bounded_statements() {
    let (_dir, store) = sqlite().await;
    let text = longest_text();
    let batch: Vec<Message> = (0..300).map(|i| message("big", 1000 + i, 0, &text)).collect();
    store.append(&batch).await.unwrap();
    store.append(&batch).await.unwrap();
    assert_eq!(store.read(&group("big"), None, 500).await.unwrap(), batch);
}

#[tokio::test]
async fn sqlite_refuses_an_id_it_cannot_hold_and_the_rest_is_stored() {
    let (_dir, store) = sqlite().await;
    // Ids beyond SQLite's signed 64-bit integers cannot be stored, ever.
    let mut bad = message("g", 2, 0, "refused");
    bad.id = MessageId::new(u64::MAX, 0);
    let batch = vec![message("g", 1, 0, "before"), bad.clone(), message("g", 3, 0, "after")];
    let error = store.append(&batch).await.expect_err("the batch is refused");
    assert!(error.refused, "{error}");
    let refusals = Refusals::default();
    let appended = append_or_set_aside(&store, &batch, &refusals).await;
    assert_eq!((appended.done, appended.refused.as_slice()), (3, &[1][..]));
    assert!(appended.error.is_none());
    assert_eq!(*refusals.0.lock().unwrap(), vec![bad.id]);
    let stored = store.read(&group("g"), None, 10).await.unwrap();
    assert_eq!(stored, vec![batch[0].clone(), batch[2].clone()]);
}

#[tokio::test]
async fn sqlite_a_busy_database_is_a_passing_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let store = SqliteStore::open(&format!("sqlite://{}", path.display())).await.unwrap();
    // Another connection holds the write lock (as another process could).
    let mut other =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut other).await.unwrap();
    let batch = vec![message("g", 1, 0, "a")];
    let error = store.append(&batch).await.expect_err("the file is locked");
    assert!(!error.refused, "busy passes: {error}");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    store.append(&batch).await.expect("stored once the lock is gone");
    assert_eq!(store.read(&group("g"), None, 10).await.unwrap(), batch);
}
