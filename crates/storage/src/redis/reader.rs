//! Reading the streams: which shards this instance reads (those of groups its
//! connections have joined), and the readers that hand their entries to the
//! `LocalFanout`.
//!
//! Starting to read a shard must not lose a message sent after the join that
//! started it: `RedisMessaging::follow` notes where the shard's stream ends
//! (one XREVRANGE) before the join completes, and the reader starts after that
//! id, however late it gets round to it. Every reader also blocks on a wake-up
//! stream of this instance's, which `follow` and `unfollow` append to, so a
//! reader blocked in XREAD picks up a changed set of shards at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::streams::StreamReadReply;
use ::redis::{FromRedisValue, Value};
use next_chat_core::{GroupId, LocalFanout};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use tracing::warn;

use super::RedisConfig;
use super::connection;
use super::messaging::message_of_entry;
use crate::health::Health;

/// What the stream readers took from Redis, for metrics.
#[derive(Debug, Default)]
pub struct BusStats {
    entries: AtomicU64,
    bytes: AtomicU64,
    shards: AtomicU64,
}

impl BusStats {
    /// Stream entries read (every instance reads each entry of a shard it reads).
    pub fn entries_received(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Bytes of the XREAD replies, as Redis's protocol encodes them.
    pub fn bytes_received(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stream shards the readers read now.
    pub fn shards_read(&self) -> u64 {
        self.shards.load(Ordering::Relaxed)
    }
}

/// Where a reader starts reading a shard. `epoch` tells a reader that still
/// has a position from an earlier time the shard was read that it must start
/// again from `after` (what it missed meanwhile had no subscriber here).
#[derive(Debug, Clone)]
struct Start {
    epoch: u64,
    after: String,
}

#[derive(Default)]
struct FollowState {
    /// Per shard: the groups with local subscribers that `follow` was told of.
    groups: Vec<HashSet<GroupId>>,
    /// Per shard: where to start reading, while it is read.
    reading: Vec<Option<Start>>,
    next_epoch: u64,
}

/// Which shards this instance reads, shared by `RedisMessaging` and its readers.
pub(crate) struct Follows {
    state: Mutex<FollowState>,
    fanout: Arc<LocalFanout>,
}

impl Follows {
    pub(crate) fn new(shards: usize, fanout: Arc<LocalFanout>) -> Follows {
        let state = FollowState {
            groups: vec![HashSet::new(); shards],
            reading: vec![None; shards],
            next_epoch: 0,
        };
        Follows { state: Mutex::new(state), fanout }
    }

    fn state(&self) -> MutexGuard<'_, FollowState> {
        self.state.lock()
    }

    pub(crate) fn fanout(&self) -> &Arc<LocalFanout> {
        &self.fanout
    }

    /// Notes the group when its shard is read already; false when it is not
    /// (the caller then finds where the stream ends and calls `start`).
    pub(crate) fn add_if_read(&self, shard: usize, group: &GroupId) -> bool {
        let mut state = self.state();
        if state.reading[shard].is_none() {
            return false;
        }
        state.groups[shard].insert(group.clone());
        true
    }

    /// Notes the group and starts reading its shard after `after`, unless
    /// another join started it meanwhile (its start is no later than any
    /// message sent after this join completes, so it stays). True when it started.
    pub(crate) fn start(&self, shard: usize, group: &GroupId, after: String) -> bool {
        let mut state = self.state();
        state.groups[shard].insert(group.clone());
        if state.reading[shard].is_some() {
            return false;
        }
        let epoch = state.next_epoch;
        state.next_epoch += 1;
        state.reading[shard] = Some(Start { epoch, after });
        true
    }

    /// Forgets the group unless it has local subscribers again; true when
    /// that left its shard without groups, so it is no longer read.
    pub(crate) fn remove(&self, shard: usize, group: &GroupId) -> bool {
        let mut state = self.state();
        // Under this lock: a join subscribes before it calls `follow`, so a
        // subscriber seen here keeps the group.
        if self.fanout.local_subscribers(group) > 0 {
            return false;
        }
        if !state.groups[shard].remove(group) || !state.groups[shard].is_empty() {
            return false;
        }
        state.reading[shard] = None;
        true
    }

    /// The shards of `shards` being read now, with where each starts.
    fn reading(&self, shards: &[usize]) -> Vec<(usize, Start)> {
        let state = self.state();
        shards
            .iter()
            .filter_map(|&shard| state.reading[shard].clone().map(|start| (shard, start)))
            .collect()
    }
}

/// What one reader (one bucket of shards) needs.
pub(crate) struct Reader {
    pub(crate) config: Arc<RedisConfig>,
    pub(crate) follows: Arc<Follows>,
    pub(crate) stats: Arc<BusStats>,
    pub(crate) health: Arc<Health>,
    pub(crate) bucket: usize,
}

/// The shard a reader is reading: where it is, and since which start.
struct Position {
    epoch: u64,
    last: String,
}

/// One reader's streams: its bucket's shards and its wake-up stream, and how
/// far it read each.
struct Streams {
    shards: Vec<usize>,
    shard_of_key: HashMap<String, usize>,
    wake_key: String,
    wake_after: String,
    positions: HashMap<usize, Position>,
}

/// Why a reader stopped reading on a connection.
enum ReadEnd {
    /// Shutdown.
    Stopped,
    /// The connection failed (recorded in health): connect again.
    Failed,
}

/// How long a reader waits before connecting again after a failure, at first.
const RETRY_MIN: Duration = Duration::from_millis(50);

impl Reader {
    /// Reads the bucket's followed shards and delivers each entry, reconnecting
    /// (and resuming from the last delivered id) whenever Redis goes away.
    pub(crate) async fn run(self, mut stopped: watch::Receiver<bool>) {
        let config = &self.config;
        let shards: Vec<usize> = (0..config.stream_shards)
            .filter(|&shard| config.bucket_of_shard(shard) == self.bucket)
            .collect();
        let mut streams = Streams {
            shard_of_key: shards.iter().map(|&shard| (config.stream_key(shard), shard)).collect(),
            shards,
            wake_key: config.wake_key(self.bucket),
            wake_after: "0-0".to_string(),
            positions: HashMap::new(),
        };
        let mut retry = RETRY_MIN;
        while !*stopped.borrow() {
            let mut connection = match connection::blocking(config).await {
                Ok(connection) => connection,
                Err(error) => {
                    self.health.failed(&error.detail);
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stopped.changed() => break,
                    }
                    retry = (retry * 2).min(config.reconnect_delay_max);
                    continue;
                }
            };
            let read = self.read(&mut connection, &mut streams, &mut stopped, &mut retry);
            if let ReadEnd::Stopped = read.await {
                break;
            }
        }
        let count = streams.positions.len() as u64;
        self.stats.shards.fetch_sub(count, Ordering::Relaxed);
    }

    /// Reads and delivers on one connection until it fails or the reader stops.
    async fn read(
        &self,
        connection: &mut connection::Connection,
        streams: &mut Streams,
        stopped: &mut watch::Receiver<bool>,
        retry: &mut Duration,
    ) -> ReadEnd {
        let config = &self.config;
        loop {
            self.sync(&streams.shards, &mut streams.positions);
            let read = xread(config, streams);
            let reply = tokio::select! {
                reply = tokio::time::timeout(
                    config.read_block + config.command_timeout,
                    read.query_async::<Value>(connection),
                ) => reply,
                _ = stopped.changed() => return ReadEnd::Stopped,
            };
            let reply = match reply {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    self.health.failed(&format!("read: {e}"));
                    return ReadEnd::Failed;
                }
                Err(_) => {
                    self.health.failed(&"read: no answer in time");
                    return ReadEnd::Failed;
                }
            };
            self.health.succeeded();
            *retry = RETRY_MIN;
            self.stats.bytes.fetch_add(resp_size(&reply), Ordering::Relaxed);
            self.deliver(&reply, streams);
        }
    }

    /// Hands every entry of an XREAD reply to the fan-out, in stream order,
    /// and moves the positions past them.
    fn deliver(&self, reply: &Value, streams: &mut Streams) {
        let replied = match Option::<StreamReadReply>::from_redis_value(reply) {
            Ok(replied) => replied.map(|r| r.keys).unwrap_or_default(),
            Err(e) => {
                warn!(error = %e, "skipping an XREAD reply that is not streams");
                return;
            }
        };
        for stream in replied {
            if stream.key == streams.wake_key {
                if let Some(last) = stream.ids.last() {
                    streams.wake_after = last.id.clone();
                }
                continue;
            }
            let Some(position) =
                streams.shard_of_key.get(&stream.key).and_then(|s| streams.positions.get_mut(s))
            else {
                continue;
            };
            self.stats.entries.fetch_add(stream.ids.len() as u64, Ordering::Relaxed);
            for entry in stream.ids {
                match message_of_entry(&entry.id, &entry.map) {
                    Some(message) => {
                        self.follows.fanout().deliver(message);
                    }
                    None => {
                        warn!(stream = %stream.key, id = %entry.id, "skipping a malformed stream entry")
                    }
                }
                position.last = entry.id;
            }
        }
    }

    /// Brings the reader's positions in line with the followed shards: a shard
    /// started (again) begins at its start, one no longer followed is dropped.
    fn sync(&self, shards: &[usize], positions: &mut HashMap<usize, Position>) {
        let before = positions.len() as u64;
        let reading = self.follows.reading(shards);
        positions.retain(|shard, _| reading.iter().any(|(s, _)| s == shard));
        for (shard, start) in reading {
            match positions.get(&shard) {
                Some(position) if position.epoch == start.epoch => {}
                _ => {
                    positions.insert(shard, Position { epoch: start.epoch, last: start.after });
                }
            }
        }
        let after = positions.len() as u64;
        if after > before {
            self.stats.shards.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.stats.shards.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// One blocking XREAD of the wake-up stream and every shard being read, each
/// from where the reader is.
fn xread(config: &RedisConfig, streams: &Streams) -> ::redis::Cmd {
    let mut read = ::redis::cmd("XREAD");
    let block_ms = config.read_block.as_millis() as u64;
    read.arg("COUNT").arg(config.read_batch).arg("BLOCK").arg(block_ms);
    read.arg("STREAMS").arg(&streams.wake_key);
    let mut reading: Vec<(&usize, &Position)> = streams.positions.iter().collect();
    reading.sort_unstable_by_key(|(shard, _)| **shard);
    for (shard, _) in &reading {
        read.arg(config.stream_key(**shard));
    }
    read.arg(&streams.wake_after);
    for (_, position) in &reading {
        read.arg(&position.last);
    }
    read
}

/// How many bytes Redis's protocol (RESP) takes for `value`: what the reader
/// received for it. Kinds an XREAD reply never holds count as nothing.
fn resp_size(value: &Value) -> u64 {
    fn header(length: usize) -> u64 {
        // A type byte, the length in digits, CRLF.
        1 + length.to_string().len() as u64 + 2
    }
    match value {
        Value::Nil => 5,
        Value::Int(n) => 3 + n.to_string().len() as u64,
        Value::SimpleString(s) => 3 + s.len() as u64,
        Value::Okay => 5,
        Value::BulkString(bytes) => header(bytes.len()) + bytes.len() as u64 + 2,
        Value::Array(items) | Value::Set(items) => {
            header(items.len()) + items.iter().map(resp_size).sum::<u64>()
        }
        Value::Map(pairs) => {
            header(pairs.len())
                + pairs.iter().map(|(k, v)| resp_size(k) + resp_size(v)).sum::<u64>()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_sizes_are_what_resp_sends() {
        // *2\r\n $1\r\na\r\n $3\r\nbcd\r\n
        let reply = Value::Array(vec![
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"bcd".to_vec()),
        ]);
        assert_eq!(resp_size(&reply), 4 + 7 + 9);
        assert_eq!(resp_size(&Value::Nil), "$-1\r\n".len() as u64);
        let long = Value::BulkString(vec![b'x'; 1000]);
        assert_eq!(resp_size(&long), "$1000\r\n".len() as u64 + 1000 + 2);
    }

    #[test]
    fn a_shard_is_read_from_its_first_start_until_its_last_group_goes() {
        let fanout = Arc::new(LocalFanout::new());
        let follows = Follows::new(4, Arc::clone(&fanout));
        let room = GroupId::from_trusted("room");
        let hall = GroupId::from_trusted("hall");
        assert!(!follows.add_if_read(2, &room), "not read yet: the caller must find the end");
        assert!(follows.start(2, &room, "5-0".into()));
        assert!(!follows.start(2, &hall, "9-0".into()), "a second join keeps the first start");
        let reading = follows.reading(&[0, 1, 2, 3]);
        assert_eq!(reading.len(), 1);
        assert_eq!((reading[0].0, reading[0].1.after.as_str()), (2, "5-0"));
        assert!(!follows.remove(2, &room), "hall still needs the shard");
        assert!(follows.remove(2, &hall));
        assert!(follows.reading(&[2]).is_empty());
        // Started again: a new epoch, so a reader that kept its old position restarts.
        assert!(follows.start(2, &room, "12-0".into()));
        assert_eq!(follows.reading(&[2])[0].1.epoch, 1);
    }
}
