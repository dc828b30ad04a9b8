//! Messaging over Redis Streams: publishing (a script that appends and trims
//! by bytes), the newest entries for `GetMessagesAfter`, and following the
//! groups this instance's connections have joined (see `reader`).

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::streams::StreamRangeReply;
use ::redis::{FromRedisValue, Script, Value};
use async_trait::async_trait;
use next_chat_core::{
    BackendError, GroupId, LocalFanout, Message, MessageId, MessageText, Messaging, NewMessage,
    OnAccepted, UserId,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::connection::{self, Connection, run};
use super::reader::{BusStats, Follows, Reader};
use super::{BACKEND, RedisConfig};
use crate::clock::time_of;
use crate::health::Health;

/// KEYS[1] the stream, KEYS[2] its byte count, KEYS[3] its stored watermark;
/// ARGV: max bytes, max entries, group, author, text, keep unstored. Drops the
/// oldest entries until the new one fits within both bounds, never one above
/// the stored watermark with `keep_unstored`; appends it and returns its id,
/// or, when what may not be dropped leaves no room, appends nothing and says
/// which bound is full. One script, so the count and the stream never
/// disagree, whichever instance writes. Redis has no byte-based trimming; the cost of an entry is its bytes
/// plus a quarter (jemalloc's size classes round up by at most that much) plus
/// 64 for the listpack and id overhead (plus a node's overhead for an entry
/// that fills one), which measured `MEMORY USAGE` stays below for every entry
/// size (0.46 to 0.99 of it, 1 to 65,536 bytes of text). Trimming by MINID removes whole entries; a
/// partly trimmed listpack node (at most 4 KiB, `stream-node-max-bytes`) is
/// freed once its last entry goes.
const PUBLISH_SCRIPT: &str = include_str!("scripts/publish.lua");

/// How long this instance's wake-up streams live after their last use, so
/// an instance that died leaves nothing behind for long.
const WAKE_KEY_TTL_MS: u64 = 24 * 60 * 60 * 1000;

pub struct RedisMessaging {
    config: Arc<RedisConfig>,
    /// Per shard: the stream, its byte count and its stored watermark, named
    /// once rather than per message.
    shard_keys: Vec<[String; 3]>,
    publish_script: Script,
    connection: Connection,
    health: Health,
    follows: Arc<Follows>,
    stats: Arc<BusStats>,
    reader_health: Vec<Arc<Health>>,
    stop: watch::Sender<bool>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisMessaging {
    /// Connects and starts the readers (one for a single Redis, one per
    /// bucket of shards in a cluster). They read nothing until `follow` is
    /// told of a group.
    pub async fn start(
        config: RedisConfig,
        fanout: Arc<LocalFanout>,
    ) -> Result<RedisMessaging, BackendError> {
        config.validate()?;
        let config = Arc::new(config);
        let health = Health::new("redis messaging");
        let connection = connection::commands(&config).await?;
        let follows = Arc::new(Follows::new(config.stream_shards, fanout));
        let stats = Arc::new(BusStats::default());
        let (stop, stopped) = watch::channel(false);
        let mut reader_health = Vec::new();
        let mut readers = Vec::new();
        for bucket in 0..config.read_buckets() {
            let health = Arc::new(Health::new("redis stream reader"));
            reader_health.push(Arc::clone(&health));
            let reader = Reader {
                config: Arc::clone(&config),
                follows: Arc::clone(&follows),
                stats: Arc::clone(&stats),
                health,
                bucket,
            };
            readers.push(tokio::spawn(reader.run(stopped.clone())));
        }
        let shard_keys = (0..config.stream_shards)
            .map(|shard| {
                [config.stream_key(shard), config.stream_bytes_key(shard), config.stored_key(shard)]
            })
            .collect();
        Ok(RedisMessaging {
            config,
            shard_keys,
            publish_script: Script::new(PUBLISH_SCRIPT),
            connection,
            health,
            follows,
            stats,
            reader_health,
            stop,
            readers: Mutex::new(readers),
        })
    }

    /// What the readers took from Redis so far.
    pub fn stats(&self) -> Arc<BusStats> {
        Arc::clone(&self.stats)
    }

    /// The id of the shard's newest entry ("0-0" when it has none): a reader
    /// starting after it gets every entry appended from now on.
    async fn stream_end(&self, shard: usize) -> Result<String, BackendError> {
        let [stream, ..] = &self.shard_keys[shard];
        let mut connection = self.connection.clone();
        let newest: Value = run(&self.config, &self.health, "read stream end", async {
            ::redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(first_entry_id(&newest).unwrap_or_else(|| "0-0".to_string()))
    }
}

impl RedisMessaging {
    /// The group's messages above `after` among the shard's newest
    /// `recent_scan_entries` entries (one XREVRANGE), the first `limit`.
    async fn newest_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let [stream, ..] = &self.shard_keys[self.config.shard_of(group)];
        let mut connection = self.connection.clone();
        let range: StreamRangeReply = run(&self.config, &self.health, "read recent", async {
            ::redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg(format!("({after}"))
                .arg("COUNT")
                .arg(self.config.recent_scan_entries)
                .query_async(&mut connection)
                .await
        })
        .await?;
        let mut messages: Vec<Message> = range
            .ids
            .iter()
            .filter_map(|entry| message_of_entry(&entry.id, &entry.map))
            .filter(|message| &message.group == group)
            .collect();
        messages.reverse();
        messages.truncate(limit);
        Ok(messages)
    }

    /// `WAIT wait_replicas`: the publish is acknowledged only once that many
    /// replicas hold it, so a failover to one of them keeps it. Fewer in
    /// `wait_timeout` fail the send; the message may still be delivered and
    /// stored (the completion's error says only that it is not known safe).
    async fn wait_for_replicas(&self, connection: &mut Connection) -> Result<(), BackendError> {
        let wanted = self.config.wait_replicas;
        let timeout_ms = self.config.wait_timeout.as_millis() as u64;
        let acknowledged: usize = run(&self.config, &self.health, "wait for replicas", async {
            ::redis::cmd("WAIT").arg(wanted).arg(timeout_ms).query_async(connection).await
        })
        .await?;
        if acknowledged < wanted {
            return Err(BackendError::new(
                BACKEND,
                format!(
                    "{acknowledged} of {wanted} Redis replicas acknowledged the message within \
                     {timeout_ms} ms (redis_wait_replicas); it may still be delivered"
                ),
            ));
        }
        Ok(())
    }
}

/// Appends to the reader's wake-up stream (keeping one entry), so a reader
/// blocked in XREAD returns and reads the shards followed now.
async fn wake(config: &RedisConfig, connection: &mut Connection, health: &Health, bucket: usize) {
    let key = config.wake_key(bucket);
    let mut pipe = ::redis::pipe();
    pipe.cmd("XADD").arg(&key).arg("MAXLEN").arg(1).arg("*").arg("w").arg(1).ignore();
    pipe.cmd("PEXPIRE").arg(&key).arg(WAKE_KEY_TTL_MS).ignore();
    // If this fails the reader still sees the change when its XREAD returns
    // (after `read_block` at most).
    let _ = run(config, health, "wake the stream reader", async {
        pipe.query_async::<()>(connection).await
    })
    .await;
}

/// Free memory Redis must have for a send to be sure to fit: the largest
/// message is read into a query buffer (66 KiB) and then stored (81 KiB).
const WRITE_HEADROOM: u64 = 256 * 1024;

/// Why Redis would refuse a send now, from `INFO memory`: `maxmemory` is set,
/// the policy evicts nothing, and less than `WRITE_HEADROOM` is left. A
/// Redis that does not report these fields is taken to have room.
fn memory_short(info: &str) -> Option<String> {
    let field = |name: &str| {
        info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    };
    let used: u64 = field("used_memory")?.parse().ok()?;
    let max: u64 = field("maxmemory")?.parse().ok()?;
    if max == 0 || field("maxmemory_policy")? != "noeviction" || used + WRITE_HEADROOM < max {
        return None;
    }
    Some(format!(
        "message bus full: Redis is out of memory (maxmemory): {used} bytes used of {max}, \
         sends are refused until memory frees up"
    ))
}

/// The new entry's id from the publish script's reply, or why it appended nothing.
fn published_id(config: &RedisConfig, reply: &Value) -> Result<MessageId, BackendError> {
    if let Value::Array(full) = reply {
        let number = |at: usize| full.get(at).and_then(|v| i64::from_redis_value(v).ok());
        let (bytes, entries) = (number(1).unwrap_or(0), number(2).unwrap_or(0));
        let which = full.first().and_then(|v| String::from_redis_value(v).ok());
        let detail = if which.as_deref() == Some("entries") {
            format!(
                "message bus full: {entries} messages of this stream shard wait to be stored \
                 (limit redis_stream_maxlen = {} per shard); sends are refused until history \
                 stores them",
                config.stream_maxlen
            )
        } else {
            format!(
                "message bus full: {} of messages in this stream shard wait to be stored \
                 (limit redis_stream_max_bytes = {} per shard of {}); sends are refused until \
                 history stores them",
                mib(bytes.max(0) as u64),
                mib(config.shard_max_bytes()),
                config.stream_shards
            )
        };
        return Err(BackendError::new(BACKEND, detail));
    }
    let id = String::from_redis_value(reply)
        .map_err(|_| BackendError::new(BACKEND, format!("publish returned {reply:?}")))?;
    id.parse().map_err(|_| BackendError::new(BACKEND, format!("XADD returned a bad id '{id}'")))
}

/// `bytes` in MiB with one decimal, for people.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The id of the first entry of an XRANGE/XREVRANGE reply, if any.
fn first_entry_id(reply: &Value) -> Option<String> {
    let Value::Array(entries) = reply else { return None };
    let Value::Array(entry) = entries.first()? else { return None };
    String::from_redis_value(entry.first()?).ok()
}

#[async_trait]
impl Messaging for RedisMessaging {
    async fn publish(
        &self,
        message: NewMessage,
        on_accepted: OnAccepted<'_>,
    ) -> Result<Message, BackendError> {
        let [stream, bytes, stored] = &self.shard_keys[self.config.shard_of(&message.group)];
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(stream)
            .key(bytes)
            .key(stored)
            .arg(self.config.shard_max_bytes())
            .arg(self.config.stream_maxlen)
            .arg(message.group.as_str())
            .arg(message.author.as_str())
            .arg(message.text.as_str())
            .arg(if self.config.keep_unstored { "1" } else { "0" });
        let mut connection = self.connection.clone();
        let reply: Value = run(&self.config, &self.health, "publish", async {
            invocation.invoke_async(&mut connection).await
        })
        .await?;
        let id = published_id(&self.config, &reply)?;
        let accepted = Message {
            id,
            author: message.author,
            group: message.group,
            // The entry id's millisecond is Redis's clock when it accepted the
            // message, the same on every instance that reads it.
            send_time: time_of(id.millis),
            text: message.text,
        };
        on_accepted(&accepted);
        if self.config.wait_replicas > 0 {
            self.wait_for_replicas(&mut connection).await?;
        }
        Ok(accepted)
    }

    async fn check(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        // PING answers even when Redis is out of memory, and so does a small
        // write when only the largest messages no longer fit (their own
        // bytes count while Redis reads them): compare the numbers instead.
        let info: Value = run(&self.config, &self.health, "read memory", async {
            ::redis::cmd("INFO").arg("memory").query_async(&mut connection).await
        })
        .await?;
        // A cluster answers for each master, by address; each refuses writes
        // to its own slots when it is full.
        let infos = match info {
            Value::Map(by_node) => by_node.into_iter().map(|(_, info)| info).collect(),
            info => vec![info],
        };
        for info in infos {
            let info = String::from_redis_value(&info).unwrap_or_default();
            if let Some(short) = memory_short(&info) {
                return Err(BackendError::new(BACKEND, short));
            }
        }
        if self.reader_health.iter().any(|health| health.is_down()) {
            return Err(BackendError::new(BACKEND, "the stream reader is reconnecting"));
        }
        Ok(())
    }

    /// Reads the group's shard from its end now on, unless it is read already.
    async fn follow(&self, group: &GroupId) -> Result<(), BackendError> {
        let shard = self.config.shard_of(group);
        if self.follows.add_if_read(shard, group) {
            return Ok(());
        }
        let end = self.stream_end(shard).await?;
        if self.follows.start(shard, group, end) {
            let mut connection = self.connection.clone();
            let bucket = self.config.bucket_of_shard(shard);
            wake(&self.config, &mut connection, &self.health, bucket).await;
        }
        Ok(())
    }

    /// Stops reading the group's shard when no other followed group is in it.
    fn unfollow(&self, group: &GroupId) {
        let shard = self.config.shard_of(group);
        if !self.follows.remove(shard, group) {
            return;
        }
        let config = Arc::clone(&self.config);
        let mut connection = self.connection.clone();
        let bucket = config.bucket_of_shard(shard);
        // Called from synchronous code; a reader that is not woken drops the
        // shard when its XREAD next returns anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let health = Health::new("redis messaging");
                wake(&config, &mut connection, &health, bucket).await;
            });
        }
    }

    /// The group's messages above `after` that the stream holds above its
    /// stored watermark (at most `limit`, oldest first): with a history
    /// database shared by the instances (`keep_unstored`), every message not
    /// yet stored is there, however long its writer takes, since nothing above
    /// the watermark is trimmed. Reads forward from the later of `after` and
    /// the watermark, `recent_scan_entries` entries per XRANGE, until `limit`
    /// of the group's or the stream's end; what it reads is bounded by the
    /// entries not yet stored, which the stream's own bounds cap. Without a
    /// shared history database there is no watermark: the newest
    /// `recent_scan_entries` entries are read (one XREVRANGE).
    async fn recent_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let chunk = self.config.recent_scan_entries;
        if chunk == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        if !self.config.keep_unstored {
            return self.newest_after(group, after, limit).await;
        }
        let [stream, _, stored] = &self.shard_keys[self.config.shard_of(group)];
        let mut connection = self.connection.clone();
        let watermark: Option<String> = run(&self.config, &self.health, "read recent", async {
            ::redis::cmd("GET").arg(stored).query_async(&mut connection).await
        })
        .await?;
        let watermark = watermark.and_then(|id| id.parse::<MessageId>().ok());
        let mut from = watermark.map_or(after, |stored| stored.max(after));
        let mut messages = Vec::new();
        loop {
            let range: StreamRangeReply = run(&self.config, &self.health, "read recent", async {
                ::redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(format!("({from}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(chunk)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
            for entry in &range.ids {
                from = entry.id.parse().unwrap_or(from);
                let Some(message) = message_of_entry(&entry.id, &entry.map) else { continue };
                if &message.group == group {
                    messages.push(message);
                    if messages.len() == limit {
                        return Ok(messages);
                    }
                }
            }
            if range.ids.len() < chunk {
                return Ok(messages);
            }
        }
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let readers = std::mem::take(&mut *self.readers.lock());
        for reader in readers {
            let _ = reader.await;
        }
    }
}

impl Drop for RedisMessaging {
    fn drop(&mut self) {
        let readers = self.readers.get_mut();
        for reader in readers.drain(..) {
            reader.abort();
        }
    }
}

/// A message from a stream entry. Entries are written only by `publish`, but a
/// malformed one is skipped with a warning rather than stopping the reader.
pub(crate) fn message_of_entry(id: &str, fields: &HashMap<String, Value>) -> Option<Message> {
    let text_field = |name: &str| fields.get(name).and_then(|v| String::from_redis_value(v).ok());
    let id: MessageId = id.parse().ok()?;
    Some(Message {
        id,
        author: UserId::from_trusted(&text_field("a")?),
        group: GroupId::from_trusted(&text_field("g")?),
        send_time: time_of(id.millis),
        text: MessageText::from_trusted(&text_field("t")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_short_only_near_maxmemory_without_eviction() {
        let info = |used: u64, max: u64, policy: &str| {
            format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\nmaxmemory:{max}\r\nmaxmemory_human:0B\r\nmaxmemory_policy:{policy}\r\n"
            )
        };
        assert_eq!(memory_short(&info(1 << 20, 0, "noeviction")), None, "no maxmemory");
        assert_eq!(memory_short(&info(1 << 20, 8 << 20, "noeviction")), None, "room");
        assert_eq!(memory_short(&info(8 << 20, 8 << 20, "allkeys-lru")), None, "evicts");
        let short = memory_short(&info((8 << 20) - 1000, 8 << 20, "noeviction"));
        assert!(short.is_some_and(|s| s.contains("out of memory (maxmemory)")));
        assert_eq!(memory_short("garbage"), None);
    }
}
