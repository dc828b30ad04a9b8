//! Writing history without making senders wait on the database, and without
//! losing what the database could not take.
//!
//! Every accepted message enters `HistoryWriter`'s unsaved set before it is
//! delivered. A background task stores the set in batches, oldest first, and
//! retries a failed batch until the store takes it; the store's `append` is
//! idempotent, so a retry never writes twice. A sender waits for its message to
//! be stored for at most `save_timeout`. Reads merge the unsaved set with the
//! store, so history includes every message whose send completed even while the
//! store is down or behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::backend::HistoryStore;
use crate::domain::{GroupId, Message, MessageId};
use crate::error::BackendError;

#[derive(Debug, Clone)]
pub struct HistoryWriterConfig {
    /// How long a send waits for its message to be stored before it completes anyway.
    pub save_timeout: Duration,
    /// Most messages in one `append`.
    pub batch_max: usize,
    /// Most unsaved messages held in memory; beyond it sends are refused, so a
    /// long database outage costs bounded memory and no accepted message.
    pub unsaved_max: usize,
}

impl Default for HistoryWriterConfig {
    fn default() -> Self {
        HistoryWriterConfig {
            save_timeout: Duration::from_millis(500),
            batch_max: 500,
            unsaved_max: 1_000_000,
        }
    }
}

/// Told about every batch, for metrics and logs.
pub trait HistoryObserver: Send + Sync + 'static {
    fn batch_written(&self, rows: usize, elapsed: Duration);
    fn batch_failed(&self, rows: usize, error: &BackendError);
}

/// An observer that ignores everything (tests, tools).
pub struct NoObserver;

impl HistoryObserver for NoObserver {
    fn batch_written(&self, _: usize, _: Duration) {}
    fn batch_failed(&self, _: usize, _: &BackendError) {}
}

type Key = (GroupId, MessageId);

#[derive(Default)]
struct Unsaved {
    by_group: HashMap<GroupId, BTreeMap<MessageId, Message>>,
    /// Write order: the order messages were accepted.
    queue: VecDeque<Key>,
    waiters: HashMap<Key, Vec<oneshot::Sender<()>>>,
    closing: bool,
}

struct Shared {
    store: Arc<dyn HistoryStore>,
    config: HistoryWriterConfig,
    observer: Arc<dyn HistoryObserver>,
    unsaved: Mutex<Unsaved>,
    /// Wakes the writer when the queue gains work.
    work: Notify,
    /// Wakes `flush` when the queue shrinks.
    progress: Notify,
}

pub struct HistoryWriter {
    shared: Arc<Shared>,
}

impl HistoryWriter {
    /// Starts the background writer on the current Tokio runtime.
    pub fn start(
        store: Arc<dyn HistoryStore>,
        config: HistoryWriterConfig,
        observer: Arc<dyn HistoryObserver>,
    ) -> HistoryWriter {
        let shared = Arc::new(Shared {
            store,
            config,
            observer,
            unsaved: Mutex::new(Unsaved::default()),
            work: Notify::new(),
            progress: Notify::new(),
        });
        tokio::spawn(write_loop(Arc::clone(&shared)));
        HistoryWriter { shared }
    }

    pub fn store(&self) -> &Arc<dyn HistoryStore> {
        &self.shared.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Unsaved> {
        self.shared.unsaved.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether another message may be accepted (the unsaved set is not full).
    pub fn has_room(&self) -> Result<(), BackendError> {
        let unsaved = self.lock();
        if unsaved.queue.len() >= self.shared.config.unsaved_max {
            return Err(BackendError::new(
                "history",
                format!("{} messages wait to be stored", unsaved.queue.len()),
            ));
        }
        Ok(())
    }

    /// Records an accepted message; it is stored in the background. Never blocks.
    pub fn accept(&self, message: &Message) {
        let key = (message.group.clone(), message.id);
        {
            let mut unsaved = self.lock();
            unsaved.by_group.entry(key.0.clone()).or_default().insert(key.1, message.clone());
            unsaved.queue.push_back(key);
        }
        self.shared.work.notify_one();
    }

    /// Waits until the message is stored, for at most `save_timeout`. Resolves to
    /// whether it was stored in that time; if not, it stays queued. The wait is
    /// registered now, so the future borrows nothing and may outlive the call.
    pub fn wait_saved(
        &self,
        group: &GroupId,
        id: MessageId,
    ) -> impl Future<Output = bool> + Send + 'static {
        let receiver = {
            let mut unsaved = self.lock();
            let pending = unsaved.by_group.get(group).is_some_and(|m| m.contains_key(&id));
            pending.then(|| {
                let (sender, receiver) = oneshot::channel();
                unsaved.waiters.entry((group.clone(), id)).or_default().push(sender);
                receiver
            })
        };
        let timeout = self.shared.config.save_timeout;
        async move {
            match receiver {
                None => true,
                Some(receiver) => {
                    matches!(tokio::time::timeout(timeout, receiver).await, Ok(Ok(())))
                }
            }
        }
    }

    /// The group's latest `limit` messages below `before`, oldest first, from
    /// the store and the unsaved set together.
    pub async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        // Unsaved first, store second: a message the writer stores in between is
        // then in one or the other, never in neither.
        let unsaved: Vec<Message> = {
            let unsaved = self.lock();
            match unsaved.by_group.get(group) {
                Some(messages) => {
                    let upper = before.unwrap_or(MessageId { millis: u64::MAX, seq: u64::MAX });
                    messages.range(..upper).rev().take(limit).map(|(_, m)| m.clone()).collect()
                }
                None => Vec::new(),
            }
        };
        let stored = self.shared.store.read(group, before, limit).await?;
        if unsaved.is_empty() {
            return Ok(stored);
        }
        let mut merged: BTreeMap<MessageId, Message> =
            stored.into_iter().map(|m| (m.id, m)).collect();
        merged.extend(unsaved.into_iter().map(|m| (m.id, m)));
        let skip = merged.len().saturating_sub(limit);
        Ok(merged.into_values().skip(skip).collect())
    }

    /// Whether `id` is one of the group's messages, stored or not.
    pub async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError> {
        let unsaved = self.lock().by_group.get(group).is_some_and(|m| m.contains_key(&id));
        if unsaved {
            return Ok(true);
        }
        self.shared.store.contains(group, id).await
    }

    /// Messages accepted but not yet stored.
    pub fn unsaved_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Waits until every accepted message is stored or `deadline` passes, then
    /// stops the writer. Returns how many messages were left unsaved.
    pub async fn flush(&self, deadline: Instant) -> usize {
        loop {
            let progressed = self.shared.progress.notified();
            let left = self.unsaved_len();
            if left == 0 || Instant::now() >= deadline {
                self.lock().closing = true;
                self.shared.work.notify_one();
                return left;
            }
            let _ = tokio::time::timeout_at(deadline.into(), progressed).await;
        }
    }
}

/// Stores the unsaved set, oldest first, in batches; retries with backoff.
async fn write_loop(shared: Arc<Shared>) {
    const RETRY_MIN: Duration = Duration::from_millis(50);
    const RETRY_MAX: Duration = Duration::from_secs(2);
    let mut retry = RETRY_MIN;
    loop {
        let work = shared.work.notified();
        let (taken, batch): (usize, Vec<Message>) = {
            let unsaved = shared.unsaved.lock().unwrap_or_else(|poison| poison.into_inner());
            if unsaved.closing {
                return;
            }
            let taken = unsaved.queue.len().min(shared.config.batch_max);
            let batch = unsaved
                .queue
                .iter()
                .take(taken)
                .filter_map(|(group, id)| unsaved.by_group.get(group)?.get(id).cloned())
                .collect();
            (taken, batch)
        };
        if taken == 0 {
            work.await;
            continue;
        }
        let started = Instant::now();
        match shared.store.append(&batch).await {
            Ok(()) => {
                shared.observer.batch_written(batch.len(), started.elapsed());
                retry = RETRY_MIN;
                let mut unsaved =
                    shared.unsaved.lock().unwrap_or_else(|poison| poison.into_inner());
                for message in &batch {
                    let key = (message.group.clone(), message.id);
                    if let Some(messages) = unsaved.by_group.get_mut(&key.0) {
                        messages.remove(&key.1);
                        if messages.is_empty() {
                            unsaved.by_group.remove(&key.0);
                        }
                    }
                    for waiter in unsaved.waiters.remove(&key).into_iter().flatten() {
                        let _ = waiter.send(());
                    }
                }
                // Only this task removes from the queue, so its front is still the batch.
                unsaved.queue.drain(..taken);
                drop(unsaved);
                shared.progress.notify_waiters();
            }
            Err(error) => {
                shared.observer.batch_failed(batch.len(), &error);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
