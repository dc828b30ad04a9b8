//! Each stream shard's stored watermark: the entry id at or below which every
//! entry is in the history database, so trimming may remove it.
//!
//! Several instances append to one shard and each stores its own messages, in
//! its own time, so "stored" is recorded per entry and the watermark moves only
//! over an unbroken run of stored entries: a history writer reports the ids of
//! each batch it stored (`StoredMarks::mark`, through `MarkStoredHistory`), and
//! `scripts/mark_stored.lua` records them and moves the watermark. An entry no
//! live writer will report (its instance died, or history set it aside) holds
//! the watermark until the reconciler has checked it against the database and
//! reported it too. The publish script never trims above the watermark and
//! refuses a send once what is left fills the shard (see `messaging`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ::redis::Script;
use async_trait::async_trait;
use next_chat_core::{BackendError, GroupId, HistoryStore, Message, MessageId};
use tracing::debug;

use super::connection::{self, Connection, run};
use super::{BACKEND, RedisConfig};
use crate::health::Health;

const MARK_SCRIPT: &str = include_str!("scripts/mark_stored.lua");

/// Reports stored entries and reads the watermarks.
pub struct StoredMarks {
    config: Arc<RedisConfig>,
    connection: Connection,
    health: Health,
    script: Script,
}

impl StoredMarks {
    pub async fn connect(config: RedisConfig) -> Result<StoredMarks, BackendError> {
        let connection = connection::commands(&config).await?;
        Ok(StoredMarks {
            config: Arc::new(config),
            connection,
            health: Health::new("redis stored watermark"),
            script: Script::new(MARK_SCRIPT),
        })
    }

    /// Records that the history database holds these messages and moves each
    /// shard's watermark as far as that allows: one script call for all the
    /// shards of a bucket (every shard, with one Redis; a cluster's shards
    /// of one hash tag).
    pub async fn mark(&self, messages: &[Message]) -> Result<(), BackendError> {
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for message in messages {
            let shard = self.config.shard_of(&message.group);
            by_shard.entry(shard).or_default().push(message.id.to_string());
        }
        let mut by_bucket: BTreeMap<usize, Vec<(usize, Vec<String>)>> = BTreeMap::new();
        for (shard, ids) in by_shard {
            by_bucket.entry(self.config.bucket_of_shard(shard)).or_default().push((shard, ids));
        }
        for shards in by_bucket.into_values() {
            self.mark_shards(&shards).await?;
        }
        Ok(())
    }

    /// `mark` for ids of one shard's entries; returns the shard's watermark.
    pub async fn mark_ids(&self, shard: usize, ids: &[String]) -> Result<String, BackendError> {
        let marks = self.mark_shards(&[(shard, ids.to_vec())]).await?;
        marks
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::new(BACKEND, "mark stored: no watermark"))
    }

    /// One script call for shards of one bucket; their watermarks, in order.
    async fn mark_shards(
        &self,
        shards: &[(usize, Vec<String>)],
    ) -> Result<Vec<String>, BackendError> {
        let mut invocation = self.script.prepare_invoke();
        for (shard, ids) in shards {
            invocation
                .key(self.config.stream_key(*shard))
                .key(self.config.stored_key(*shard))
                .key(self.config.stored_ids_key(*shard));
            invocation.arg(ids.len());
            for id in ids {
                invocation.arg(id);
            }
        }
        let mut connection = self.connection.clone();
        run(&self.config, &self.health, "mark stored", async {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// The shard's watermark, if it has one.
    pub async fn watermark(&self, shard: usize) -> Result<Option<String>, BackendError> {
        let mut connection = self.connection.clone();
        run(&self.config, &self.health, "read stored watermark", async {
            ::redis::cmd("GET")
                .arg(self.config.stored_key(shard))
                .query_async(&mut connection)
                .await
        })
        .await
    }

    /// Sets the shard's watermark if it has none (an upgrade from a version
    /// that kept only the reconciler's).
    pub async fn start_at(&self, shard: usize, id: &str) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        run(&self.config, &self.health, "set stored watermark", async {
            ::redis::cmd("SET")
                .arg(self.config.stored_key(shard))
                .arg(id)
                .arg("NX")
                .query_async::<()>(&mut connection)
                .await
        })
        .await
    }
}

/// A history store that reports what it stored to the streams' watermarks,
/// so that the streams can let go of it.
pub struct MarkStoredHistory {
    store: Arc<dyn HistoryStore>,
    marks: StoredMarks,
}

impl MarkStoredHistory {
    pub fn new(store: Arc<dyn HistoryStore>, marks: StoredMarks) -> MarkStoredHistory {
        MarkStoredHistory { store, marks }
    }
}

#[async_trait]
impl HistoryStore for MarkStoredHistory {
    /// Stores, then reports. A report that fails leaves the messages stored:
    /// the watermark stays behind them until the reconciler reports them.
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError> {
        self.store.append(messages).await?;
        if let Err(error) = self.marks.mark(messages).await {
            debug!(%error, "stored messages not reported to the stream watermark");
        }
        Ok(())
    }

    async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.store.read(group, before, limit).await
    }

    async fn read_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.store.read_after(group, after, limit).await
    }

    async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError> {
        self.store.contains(group, id).await
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.store.check().await
    }
}
