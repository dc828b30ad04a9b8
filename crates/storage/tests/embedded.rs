//! Tests only the embedded backends need: state that survives a restart (ids,
//! groups) and reads that use the primary key.

mod common;

use std::sync::Arc;

use common::*;
use next_chat_core::{
    HistoryStore, LocalFanout, Membership, MessageId, MessageText, Messaging, NewMessage,
};
use next_chat_storage::{EmbeddedMembership, InProcessMessaging, SqliteStore};
use sqlx::Row;

#[tokio::test]
async fn ids_and_groups_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    // A message stored with an id ahead of the clock, as after the clock went back.
    let ahead = now_millis() + 3_600_000;
    {
        let store = SqliteStore::open(&url).await.unwrap();
        store.append(&[message("g", ahead, 7, "from the future")]).await.unwrap();
        EmbeddedMembership::new(store.clone()).create_group(&group("kept"), None).await.unwrap();
        store.close().await;
    }
    let store = SqliteStore::open(&url).await.unwrap();
    let floor = store.latest_id().await.unwrap().unwrap();
    assert_eq!(floor, MessageId::new(ahead, 7));
    let messaging = InProcessMessaging::new(Arc::new(LocalFanout::new()), floor);
    let draft = NewMessage {
        author: user("alice"),
        group: group("g"),
        text: MessageText::from_trusted("after restart"),
    };
    let message = messaging.publish(draft, &|_| {}).await.unwrap();
    assert_eq!(message.id, MessageId::new(ahead, 8), "ids continue above the floor");
    assert!(EmbeddedMembership::new(store.clone()).group_exists(&group("kept")).await.unwrap());
}

#[tokio::test]
async fn history_reads_search_the_primary_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.append(&[message("g", 1, 0, "x")]).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    for sql in [
        "EXPLAIN QUERY PLAN SELECT id_millis, id_seq FROM messages WHERE group_id = 'g' \
         AND (id_millis, id_seq) < (5, 0) ORDER BY id_millis DESC, id_seq DESC LIMIT 10",
        "EXPLAIN QUERY PLAN SELECT id_millis, id_seq FROM messages WHERE group_id = 'g' \
         ORDER BY id_millis DESC, id_seq DESC LIMIT 10",
    ] {
        let plan: Vec<String> = sqlx::query(sql)
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        let plan = plan.join("; ");
        assert!(plan.contains("SEARCH messages USING PRIMARY KEY"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }
}
