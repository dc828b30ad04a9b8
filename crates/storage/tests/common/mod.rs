//! Test support shared by the storage test binaries: a `Recipient` that records
//! into channels, message builders, and waiting with timeouts.

#![allow(dead_code)] // each test binary uses its own part of this

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use next_chat_core::{
    ConnectionId, Delivery, GroupId, LocalFanout, Message, MessageId, MessageText, Messaging,
    Recipient, UserId,
};
use tokio::sync::mpsc;

/// How long a test waits for an event that should come promptly.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn group(name: &str) -> GroupId {
    GroupId::from_trusted(name)
}

pub fn user(name: &str) -> UserId {
    UserId::from_trusted(name)
}

pub fn connection(name: &str) -> ConnectionId {
    ConnectionId::new(name)
}

/// A stored message with a millisecond-precision send time, as stores keep it.
pub fn message(group_name: &str, millis: u64, seq: u64, text: &str) -> Message {
    Message {
        id: MessageId::new(millis, seq),
        author: user("alice"),
        group: group(group_name),
        send_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + millis),
        text: MessageText::from_trusted(text),
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Records what fan-out hands it, in order.
pub struct RecordingRecipient {
    id: ConnectionId,
    messages: mpsc::UnboundedSender<Message>,
}

impl Recipient for RecordingRecipient {
    fn connection_id(&self) -> &ConnectionId {
        &self.id
    }

    fn user(&self) -> &str {
        self.id.as_str()
    }

    fn deliver(&self, delivery: &Delivery) {
        let _ = self.messages.send(delivery.message.clone());
    }

    fn deliver_history(&self, _messages: &[Message]) {}

    fn encoded_size(&self, message: &Message) -> usize {
        message.text.as_str().len()
    }
}

/// Subscribes a recording recipient to `group` on `fanout`, has `messaging`
/// follow the group (as a join does) and opens it with an empty history;
/// returns the receiving end.
pub async fn subscribe(
    fanout: &LocalFanout,
    messaging: &dyn Messaging,
    group: &GroupId,
    name: &str,
) -> mpsc::UnboundedReceiver<Message> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let recipient = Arc::new(RecordingRecipient { id: connection(name), messages: sender });
    let pending = fanout.subscribe(group, recipient);
    messaging.follow(group).await.expect("the messaging backend follows the group");
    if let Some(pending) = pending {
        pending.open(&[]);
    }
    receiver
}

/// The next `n` messages, failing the test if they do not come in time.
pub async fn receive(receiver: &mut mpsc::UnboundedReceiver<Message>, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(EVENT_TIMEOUT, receiver.recv()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("recipient channel closed after {} of {n} messages", out.len()),
            Err(_) => panic!("timed out after {} of {n} messages", out.len()),
        }
    }
    out
}

/// Fails if a message arrives within `quiet` (to check that nothing extra came).
pub async fn expect_nothing(receiver: &mut mpsc::UnboundedReceiver<Message>, quiet: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(quiet, receiver.recv()).await {
        panic!("unexpected message {m:?}");
    }
}

/// The machine's shared services; tests use them only under names of their own.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const MYSQL_SERVER_URL: &str = "mysql://root@127.0.0.1:3306";

/// A Redis key prefix and a MariaDB database of one test's own, removed when
/// dropped (even when the test fails), so tests run in parallel and rerun.
pub struct ScaleOutNames {
    pub key_prefix: String,
    pub database: String,
    pub redis_url: String,
}

impl ScaleOutNames {
    pub fn new() -> ScaleOutNames {
        ScaleOutNames {
            key_prefix: unique("nc_test:") + ":",
            database: unique("nc_test_"),
            redis_url: REDIS_URL.to_string(),
        }
    }

    pub fn mysql_url(&self) -> String {
        format!("{MYSQL_SERVER_URL}/{}", self.database)
    }

    pub fn redis_config(&self) -> next_chat_storage::RedisConfig {
        next_chat_storage::RedisConfig {
            url: self.redis_url.clone(),
            key_prefix: self.key_prefix.clone(),
            stream_shards: 2,
            instance_id: unique("instance-"),
            ..Default::default()
        }
    }
}

impl Drop for ScaleOutNames {
    fn drop(&mut self) {
        let prefix = self.key_prefix.clone();
        let database = self.database.clone();
        let redis_url = self.redis_url.clone();
        // Drop cannot await; clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                if let Ok(client) = redis::Client::open(redis_url.as_str())
                    && let Ok(mut redis) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query_async(&mut redis)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
                    }
                }
                use sqlx::Connection;
                if let Ok(mut mysql) = sqlx::MySqlConnection::connect(MYSQL_SERVER_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
                        .execute(&mut mysql)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
