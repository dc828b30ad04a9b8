//! Writing history without making senders wait on the database, and without
//! losing what the database could not take.
//!
//! Every accepted message enters `HistoryWriter`'s unsaved set before it is
//! delivered. A background task stores the set in batches, oldest first, and
//! retries a batch that failed for a passing reason (the store is down, busy or
//! locked) until the store takes it; the store's `append` is idempotent, so a
//! retry never writes twice. A message the store refuses on its own merits is
//! set aside (logged and counted) so that everything after it is still stored:
//! see `append_or_set_aside`. A sender waits for its message to be stored for at
//! most `save_timeout`. Reads merge the unsaved set with the store, so history
//! includes every message whose send completed even while the store is down or
//! behind. The unsaved set is bounded in bytes: when it is full, `has_room`
//! refuses new messages rather than let an outage grow memory without end.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot};
use tracing::warn;

use crate::backend::HistoryStore;
use crate::defaults;
use crate::domain::{GroupId, Message, MessageId};
use crate::error::BackendError;

#[derive(Debug, Clone)]
pub struct HistoryWriterConfig {
    /// How long a send waits for its message to be stored before it completes anyway.
    pub save_timeout: Duration,
    /// Most messages in one `append`.
    pub batch_max: usize,
    /// Most bytes (as `unsaved_size` counts them) in one `append`, so one batch,
    /// its copy and a one-by-one retry of it stay small whatever the messages.
    /// A batch always takes at least one message.
    pub batch_max_bytes: usize,
    /// Most bytes of unsaved messages held in memory (as `unsaved_size` counts
    /// them); beyond it sends are refused, so a long database outage costs
    /// bounded memory and no accepted message.
    pub unsaved_max_bytes: usize,
    /// Under steady load, at most one `append` starts per this interval: the
    /// messages accepted meanwhile go into the next one. After a quiet spell
    /// the first message is appended at once. Storing five messages in one
    /// append costs about what one does (a round trip to the store's thread and
    /// a commit), so at everyday rates this saves most of the work per message;
    /// it delays a send's completion (not its delivery) by at most this much.
    pub batch_interval: Duration,
}

impl Default for HistoryWriterConfig {
    fn default() -> Self {
        HistoryWriterConfig {
            save_timeout: Duration::from_millis(defaults::SAVE_TIMEOUT_MS),
            batch_max: 500,
            batch_max_bytes: 4 * 1024 * 1024,
            unsaved_max_bytes: defaults::HISTORY_UNSAVED_MAX_BYTES,
            batch_interval: Duration::from_millis(defaults::HISTORY_BATCH_MS),
        }
    }
}

/// What one unsaved message costs in memory: its strings plus what the set's
/// maps and queue hold per entry (the `Message` itself, two copies of the key,
/// map and queue slots), rounded up. Counting the overhead makes the byte bound
/// also bound the number of tiny messages.
pub fn unsaved_size(message: &Message) -> usize {
    const PER_MESSAGE: usize = 256;
    message.text.as_str().len()
        + message.group.as_str().len()
        + message.author.as_str().len()
        + PER_MESSAGE
}

/// Told about every batch, for metrics and logs.
pub trait HistoryObserver: Send + Sync + 'static {
    fn batch_written(&self, rows: usize, elapsed: Duration);
    fn batch_failed(&self, rows: usize, error: &BackendError);
    /// The store refused this message on its own; it was set aside (and logged).
    fn message_refused(&self, _message: &Message, _error: &BackendError) {}
}

/// An observer that ignores everything (tests, tools).
pub struct NoObserver;

impl HistoryObserver for NoObserver {
    fn batch_written(&self, _: usize, _: Duration) {}
    fn batch_failed(&self, _: usize, _: &BackendError) {}
}

/// How far `append_or_set_aside` got.
#[derive(Debug, Default)]
pub struct Appended {
    /// How many of the messages, from the front, are done with: stored, or
    /// refused and set aside. The rest are to be appended again later.
    pub done: usize,
    /// The positions (in the messages given) of those refused and set aside.
    pub refused: Vec<usize>,
    /// The passing failure that stopped it before the end, if any.
    pub error: Option<BackendError>,
}

/// Appends `messages` in order, and sets aside any message the store refuses on
/// its own. A batch refused as a whole is appended again one message at a time,
/// so the refusal is pinned to the messages that cause it; each of those is
/// logged (its id and group escaped) and reported to `observer`, and the rest
/// are stored. A passing failure stops at the first message not yet stored.
///
/// Refusals are rare, so the one-at-a-time retry costs one round trip per
/// message of one batch, only when it happens.
pub async fn append_or_set_aside(
    store: &dyn HistoryStore,
    messages: &[Message],
    observer: &dyn HistoryObserver,
) -> Appended {
    let started = Instant::now();
    let error = match store.append(messages).await {
        Ok(()) => {
            observer.batch_written(messages.len(), started.elapsed());
            return Appended { done: messages.len(), ..Appended::default() };
        }
        Err(error) => error,
    };
    observer.batch_failed(messages.len(), &error);
    if !error.refused {
        return Appended { error: Some(error), ..Appended::default() };
    }
    let mut appended = Appended::default();
    for (position, message) in messages.iter().enumerate() {
        let started = Instant::now();
        match store.append(std::slice::from_ref(message)).await {
            Ok(()) => observer.batch_written(1, started.elapsed()),
            Err(error) if error.refused => {
                warn!(
                    group = ?message.group.as_str(),
                    id = %message.id,
                    backend = error.backend,
                    error = ?error.detail,
                    "history refused a message; it is set aside and the messages after it are stored"
                );
                observer.message_refused(message, &error);
                appended.refused.push(position);
            }
            Err(error) => {
                observer.batch_failed(1, &error);
                appended.error = Some(error);
                return appended;
            }
        }
        appended.done += 1;
    }
    appended
}

type Key = (GroupId, MessageId);

#[derive(Default)]
struct Unsaved {
    by_group: HashMap<GroupId, BTreeMap<MessageId, Message>>,
    /// Write order: the order messages were accepted.
    queue: VecDeque<Key>,
    /// What the unsaved messages cost, as `unsaved_size` counts it.
    bytes: usize,
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

    fn lock(&self) -> MutexGuard<'_, Unsaved> {
        self.shared.unsaved.lock()
    }

    /// Whether another message may be accepted: the unsaved set is below
    /// `unsaved_max_bytes`. Checked before the message is published, so the
    /// sends in flight at that moment may take the set past the bound by at
    /// most one message each.
    pub fn has_room(&self) -> Result<(), BackendError> {
        let bytes = self.lock().bytes;
        let max = self.shared.config.unsaved_max_bytes;
        if bytes >= max {
            return Err(BackendError::new(
                "history",
                format!(
                    "{} of messages wait to be stored (limit history_unsaved_max_bytes = {})",
                    mib(bytes),
                    mib(max)
                ),
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
            unsaved.bytes += unsaved_size(message);
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
    /// the store and the unsaved set together; from each, no more than its
    /// newest `max_bytes` of text (see `HistoryStore::read_within`). Where one
    /// of the two reads may have stopped short (at `limit`, or within
    /// `longest`, the longest text, of `max_bytes`), the page starts no
    /// earlier than it did, so that paging back from the page's oldest
    /// message skips nothing the other read went past.
    pub async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
        max_bytes: usize,
        longest: usize,
    ) -> Result<Vec<Message>, BackendError> {
        // Unsaved first, store second: a message the writer stores in between is
        // then in one or the other, never in neither.
        let (unsaved, unsaved_cut) = {
            let unsaved = self.lock();
            match unsaved.by_group.get(group) {
                Some(messages) => {
                    let upper = before.unwrap_or(MessageId::MAX);
                    let newest: Vec<&Message> =
                        messages.range(..upper).rev().take(limit).map(|(_, m)| m).collect();
                    let kept = within_bytes(newest.iter().copied(), max_bytes);
                    let cut = kept.len() < newest.len() || newest.len() >= limit;
                    (kept, cut)
                }
                None => (Vec::new(), false),
            }
        };
        let stored = self.shared.store.read_within(group, before, limit, max_bytes).await?;
        if unsaved.is_empty() {
            return Ok(stored);
        }
        let oldest = |page: &[Message]| page.iter().map(|m| m.id).min();
        let mut from = MessageId::MIN;
        if may_be_cut(&stored, limit, max_bytes, longest) {
            from = from.max(oldest(&stored).unwrap_or(MessageId::MIN));
        }
        if unsaved_cut {
            from = from.max(oldest(&unsaved).unwrap_or(MessageId::MIN));
        }
        let mut merged: BTreeMap<MessageId, Message> =
            stored.into_iter().map(|m| (m.id, m)).collect();
        merged.extend(unsaved.into_iter().map(|m| (m.id, m)));
        let merged: Vec<Message> = merged.into_values().filter(|m| m.id >= from).collect();
        let skip = merged.len().saturating_sub(limit);
        Ok(merged.into_iter().skip(skip).collect())
    }

    /// The group's first `limit` messages above `after`, oldest first, from
    /// the store and the unsaved set together (a message delivered but not yet
    /// stored is found too), and the id up to which the page is complete:
    /// where either read may have stopped short (see `read`), the page ends
    /// where it did, so that paging on from the page's last message skips
    /// nothing; `MessageId::MAX` when neither did.
    pub async fn read_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
        max_bytes: usize,
        longest: usize,
    ) -> Result<(Vec<Message>, MessageId), BackendError> {
        // Unsaved first, store second, as in `read`.
        let (unsaved, unsaved_cut) = {
            let unsaved = self.lock();
            match unsaved.by_group.get(group) {
                Some(messages) => {
                    let oldest: Vec<&Message> = messages
                        .range((Bound::Excluded(after), Bound::Unbounded))
                        .take(limit)
                        .map(|(_, m)| m)
                        .collect();
                    let kept = within_bytes(oldest.iter().copied(), max_bytes);
                    let cut = kept.len() < oldest.len() || oldest.len() >= limit;
                    (kept, cut)
                }
                None => (Vec::new(), false),
            }
        };
        let stored = self.shared.store.read_after_within(group, after, limit, max_bytes).await?;
        let mut until = MessageId::MAX;
        if may_be_cut(&stored, limit, max_bytes, longest) {
            until = until.min(stored.last().map_or(MessageId::MAX, |m| m.id));
        }
        if unsaved_cut {
            until = until.min(unsaved.last().map_or(MessageId::MAX, |m| m.id));
        }
        if unsaved.is_empty() {
            return Ok((stored, until));
        }
        let mut merged: BTreeMap<MessageId, Message> =
            stored.into_iter().map(|m| (m.id, m)).collect();
        merged.extend(unsaved.into_iter().map(|m| (m.id, m)));
        let page = merged.into_values().take_while(|m| m.id <= until).take(limit).collect();
        Ok((page, until))
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

    /// What the messages accepted but not yet stored cost, as `unsaved_size` counts it.
    pub fn unsaved_bytes(&self) -> usize {
        self.lock().bytes
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

/// `bytes` in MiB with one decimal, for people.
/// Copies of the first of `messages` whose texts add up to at most
/// `max_bytes`, at least one: only what a page can use is cloned.
/// Whether a store's read of at most `limit` messages and `max_bytes` of text
/// may have left out messages after those it returned: it returned `limit`, or
/// what it returned is within one `longest` text of `max_bytes`.
fn may_be_cut(page: &[Message], limit: usize, max_bytes: usize, longest: usize) -> bool {
    let bytes: usize = page.iter().map(|m| m.text.as_str().len()).sum();
    !page.is_empty() && (page.len() >= limit || bytes > max_bytes.saturating_sub(longest))
}

fn within_bytes<'a>(messages: impl Iterator<Item = &'a Message>, max_bytes: usize) -> Vec<Message> {
    let mut used = 0usize;
    let mut page = Vec::new();
    for message in messages {
        used = used.saturating_add(message.text.as_str().len());
        if used > max_bytes && !page.is_empty() {
            break;
        }
        page.push(message.clone());
    }
    page
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// What the writer does next.
enum Next {
    /// `flush` is done: the writer stops.
    Stop,
    /// Nothing to store: wait for work.
    Idle,
    /// The previous append started less than `batch_interval` ago: gather
    /// what arrives until then.
    GatherUntil(Instant),
    /// Store these, oldest first.
    Append(Vec<Message>),
}

/// Stores the unsaved set, oldest first, in batches bounded in messages and
/// bytes; retries a passing failure with backoff, sets aside what the store
/// refuses (`append_or_set_aside`).
async fn write_loop(shared: Arc<Shared>) {
    const RETRY_MIN: Duration = Duration::from_millis(50);
    const RETRY_MAX: Duration = Duration::from_secs(2);
    let mut retry = RETRY_MIN;
    let mut last_append: Option<Instant> = None;
    loop {
        let work = shared.work.notified();
        let batch = match next_batch(&shared, last_append) {
            Next::Stop => return,
            Next::Idle => {
                work.await;
                continue;
            }
            Next::GatherUntil(until) => {
                tokio::time::sleep_until(until.into()).await;
                last_append = None;
                continue;
            }
            Next::Append(batch) => batch,
        };
        last_append = Some(Instant::now());
        let appended =
            append_or_set_aside(shared.store.as_ref(), &batch, shared.observer.as_ref()).await;
        if appended.done > 0 {
            forget_stored(&shared, &batch, &appended);
            shared.progress.notify_waiters();
        }
        match appended.error {
            None => retry = RETRY_MIN,
            Some(_) => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The next batch from the front of the queue, bounded by `batch_max` and
/// `batch_max_bytes`, unless the writer is to stop, idle or gather first.
fn next_batch(shared: &Shared, last_append: Option<Instant>) -> Next {
    let unsaved = shared.unsaved.lock();
    if unsaved.closing {
        return Next::Stop;
    }
    let config = &shared.config;
    // The previous append started less than an interval ago: wait out the
    // rest of it, gathering what arrives meanwhile (unless there is a full
    // batch already).
    if let Some(due) = last_append.map(|at: Instant| at + config.batch_interval)
        && !unsaved.queue.is_empty()
        && unsaved.queue.len() < config.batch_max
        && due > Instant::now()
    {
        return Next::GatherUntil(due);
    }
    let mut bytes = 0;
    let mut batch = Vec::new();
    for (group, id) in unsaved.queue.iter().take(config.batch_max) {
        let Some(message) = unsaved.by_group.get(group).and_then(|m| m.get(id)) else {
            continue;
        };
        bytes += unsaved_size(message);
        if !batch.is_empty() && bytes > config.batch_max_bytes {
            break;
        }
        batch.push(message.clone());
    }
    if batch.is_empty() { Next::Idle } else { Next::Append(batch) }
}

/// Takes the first `appended.done` messages of `batch` out of the unsaved
/// set and answers their waiters (those set aside are dropped unanswered).
fn forget_stored(shared: &Shared, batch: &[Message], appended: &Appended) {
    let mut guard = shared.unsaved.lock();
    let unsaved = &mut *guard;
    for (position, message) in batch[..appended.done].iter().enumerate() {
        let key = (message.group.clone(), message.id);
        if let Some(messages) = unsaved.by_group.get_mut(&key.0) {
            if messages.remove(&key.1).is_some() {
                unsaved.bytes = unsaved.bytes.saturating_sub(unsaved_size(message));
            }
            if messages.is_empty() {
                unsaved.by_group.remove(&key.0);
            }
        }
        // A message set aside drops its waiters unanswered: its send
        // completes as after a save timeout, not as stored.
        let waiters = unsaved.waiters.remove(&key).into_iter().flatten();
        if !appended.refused.contains(&position) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        // Only this task removes from the queue, and the batch was taken
        // from its front in order (skipping nothing but stale keys).
        while let Some(front) = unsaved.queue.pop_front() {
            if front == key {
                break;
            }
        }
    }
}
