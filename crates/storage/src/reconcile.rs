//! Writes to history, from the Redis streams, what no instance stored: if an
//! instance dies while MySQL is down, the messages it accepted are still in the
//! streams, and this copies them into MySQL once it is back.
//!
//! Every `interval`, the one instance holding a Redis lock walks each stream
//! from its stored watermark (see `redis::stored`) up to entries older than
//! `settle` (younger ones are still being stored by their instance's history
//! writer), asks the store which of a batch it already has (one query per
//! batch), appends the rest through the idempotent `HistoryStore::append`, and
//! reports the batch stored, which moves the watermark over it. A message the
//! store refuses on its own is set aside as the history writer does
//! (`append_or_set_aside`: logged, counted, the rest stored), so it cannot hold
//! the watermark back. A passing failure leaves the watermark where it was, so
//! the next round retries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use ::redis::streams::StreamRangeReply;
use async_trait::async_trait;
use next_chat_core::history::append_or_set_aside;
use next_chat_core::{BackendError, GroupId, HistoryObserver, HistoryStore, Message, MessageId};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::health::Health;
use crate::redis::{Connection, RedisConfig, StoredMarks, connect, message_of_entry, run};

/// A history store that can say which of many messages it holds in one query.
#[async_trait]
pub trait ExistingMessages: HistoryStore {
    /// The subset of `keys` that is stored.
    async fn existing(
        &self,
        keys: &[(GroupId, MessageId)],
    ) -> Result<HashSet<(GroupId, MessageId)>, BackendError>;
}

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// How often a round runs.
    pub interval: Duration,
    /// Entries younger than this are left to the history writer of the
    /// instance that accepted them.
    pub settle: Duration,
    /// Entries read, looked up and appended at a time.
    pub batch: usize,
    /// Most batches per stream in one round, so a round fits well inside `lock_ttl`.
    pub max_batches_per_round: usize,
    /// How long the lock holds if its holder dies mid-round.
    pub lock_ttl: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            interval: Duration::from_secs(10),
            settle: Duration::from_secs(5),
            batch: 500,
            max_batches_per_round: 100,
            lock_ttl: Duration::from_secs(60),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// False when another instance held the lock.
    pub ran: bool,
    /// Stream entries looked at.
    pub scanned: usize,
    /// Messages that history lacked and that were appended.
    pub inserted: usize,
    /// Messages that history lacked and refused; set aside.
    pub refused: usize,
}

/// Deletes the lock only if this instance still holds it.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

struct Inner {
    redis: RedisConfig,
    config: ReconcilerConfig,
    connection: Connection,
    store: Arc<dyn ExistingMessages>,
    observer: Arc<dyn HistoryObserver>,
    health: Health,
    unlock: Script,
    marks: StoredMarks,
}

pub struct StreamHistoryReconciler {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl StreamHistoryReconciler {
    /// Connects to Redis and starts running a round every `config.interval`.
    /// `observer` hears of its appends and refusals as the history writer's does.
    pub async fn start(
        redis: RedisConfig,
        config: ReconcilerConfig,
        store: Arc<dyn ExistingMessages>,
        observer: Arc<dyn HistoryObserver>,
    ) -> Result<StreamHistoryReconciler, BackendError> {
        let connection = connect(&redis).await?;
        let marks = StoredMarks::connect(redis.clone()).await?;
        let inner = Arc::new(Inner {
            marks,
            redis,
            config,
            connection,
            store,
            observer,
            health: Health::new("history reconciler"),
            unlock: Script::new(UNLOCK_SCRIPT),
        });
        inner.adopt_old_watermarks().await;
        let task = tokio::spawn(round_loop(Arc::clone(&inner)));
        Ok(StreamHistoryReconciler { inner, task: Mutex::new(Some(task)) })
    }

    /// Runs one round now (the background task also runs them).
    pub async fn run_round(&self) -> Result<RoundReport, BackendError> {
        self.inner.round().await
    }

    /// Stops the background rounds.
    pub fn shutdown(&self) {
        let task = self.task.lock().take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for StreamHistoryReconciler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn round_loop(inner: Arc<Inner>) {
    // The first round one interval after start: instances starting together
    // need not all race for the lock at once.
    let first = tokio::time::Instant::now() + inner.config.interval;
    let mut ticks = tokio::time::interval_at(first, inner.config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match inner.round().await {
            Ok(report) if report.inserted > 0 || report.refused > 0 => {
                info!(
                    inserted = report.inserted,
                    refused = report.refused,
                    "stored messages that history lacked"
                );
            }
            Ok(_) => {}
            // Logged once per outage by `Health`; this line says what failed.
            Err(error) if !inner.health.is_down() => warn!(%error, "reconciler round failed"),
            Err(_) => {}
        }
    }
}

impl Inner {
    fn lock_key(&self) -> String {
        format!("{}reconcile:lock", self.redis.key_prefix)
    }

    /// Where versions before the stored watermark kept the reconciler's.
    fn old_watermark_key(&self, shard: usize) -> String {
        format!("{}reconcile:watermark:{}", self.redis.key_prefix, shard)
    }

    /// A shard without a stored watermark starts at the reconciler's old one,
    /// if any: everything up to it was stored. Without either, the walk
    /// starts at the stream's beginning. Best effort: a failure here only
    /// means a longer first walk.
    async fn adopt_old_watermarks(&self) {
        let mut connection = self.connection.clone();
        for shard in 0..self.redis.stream_shards {
            if !matches!(self.marks.watermark(shard).await, Ok(None)) {
                continue;
            }
            let key = self.old_watermark_key(shard);
            let old: Result<Option<String>, _> =
                run(&self.redis, &self.health, "read old watermark", async {
                    ::redis::cmd("GET").arg(&key).query_async(&mut connection).await
                })
                .await;
            if let Ok(Some(old)) = old {
                let _ = self.marks.start_at(shard, &old).await;
            }
        }
    }

    async fn round(&self) -> Result<RoundReport, BackendError> {
        let mut connection = self.connection.clone();
        let lock_key = self.lock_key();
        let me = &self.redis.instance_id;
        let locked: Option<String> = run(&self.redis, &self.health, "take reconcile lock", async {
            ::redis::cmd("SET")
                .arg(&lock_key)
                .arg(me)
                .arg("NX")
                .arg("PX")
                .arg(self.config.lock_ttl.as_millis() as u64)
                .query_async(&mut connection)
                .await
        })
        .await?;
        if locked.is_none() {
            return Ok(RoundReport::default());
        }
        let result = self.walk_streams(&mut connection).await;
        let mut invocation = self.unlock.prepare_invoke();
        invocation.key(&lock_key).arg(me);
        let _ = run(&self.redis, &self.health, "release reconcile lock", async {
            invocation.invoke_async::<i64>(&mut connection).await
        })
        .await;
        result
    }

    async fn walk_streams(&self, connection: &mut Connection) -> Result<RoundReport, BackendError> {
        let (seconds, micros): (u64, u64) = run(&self.redis, &self.health, "read time", async {
            ::redis::cmd("TIME").query_async(connection).await
        })
        .await?;
        // Redis's clock, the one stream ids come from.
        let now_ms = seconds * 1000 + micros / 1000;
        let cutoff = now_ms.saturating_sub(self.config.settle.as_millis() as u64);
        let mut report = RoundReport { ran: true, ..RoundReport::default() };
        for shard in 0..self.redis.stream_shards {
            self.walk_stream(connection, shard, cutoff, &mut report).await?;
        }
        Ok(report)
    }

    async fn walk_stream(
        &self,
        connection: &mut Connection,
        shard: usize,
        cutoff: u64,
        report: &mut RoundReport,
    ) -> Result<(), BackendError> {
        let stream = self.redis.stream_key(shard);
        let watermark = self.marks.watermark(shard).await?;
        let mut start = match watermark {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        for _ in 0..self.config.max_batches_per_round {
            let range: StreamRangeReply = run(&self.redis, &self.health, "read stream", async {
                ::redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(self.config.batch)
                    .query_async(connection)
                    .await
            })
            .await?;
            let fetched = range.ids.len();
            let mut taken: Vec<String> = Vec::with_capacity(fetched);
            let mut messages: Vec<Message> = Vec::with_capacity(fetched);
            for entry in &range.ids {
                let Ok(id) = entry.id.parse::<MessageId>() else { continue };
                if id.millis >= cutoff {
                    break;
                }
                taken.push(entry.id.clone());
                if let Some(message) = message_of_entry(&entry.id, &entry.map) {
                    messages.push(message);
                }
            }
            let Some(last_taken) = taken.last().cloned() else { break };
            report.scanned += messages.len();
            let keys: Vec<(GroupId, MessageId)> =
                messages.iter().map(|m| (m.group.clone(), m.id)).collect();
            let stored = self.store.existing(&keys).await?;
            let missing: Vec<Message> = messages
                .into_iter()
                .filter(|m| !stored.contains(&(m.group.clone(), m.id)))
                .collect();
            if !missing.is_empty() {
                let store: &dyn HistoryStore = self.store.as_ref();
                let appended = append_or_set_aside(store, &missing, self.observer.as_ref()).await;
                report.inserted += appended.done - appended.refused.len();
                report.refused += appended.refused.len();
                if let Some(error) = appended.error {
                    return Err(error);
                }
            }
            // Every entry taken is stored now (or set aside): the watermark
            // moves over them, and over what writers stored after them.
            self.marks.mark_ids(shard, &taken).await?;
            start = format!("({last_taken}");
            if fetched < self.config.batch {
                break;
            }
        }
        Ok(())
    }
}
