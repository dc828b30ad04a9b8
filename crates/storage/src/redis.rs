//! The scale-out messaging and membership, shared by every instance through Redis.
//!
//! Messaging uses Redis Streams, not pub/sub: an accepted message is appended
//! by a script that also trims the stream to its share of `stream_max_bytes`
//! and to `stream_maxlen` entries, and every instance reads new entries
//! with a blocking XREAD on a connection of its own and hands them to its
//! `LocalFanout`. The stream entry id is the message id, so all members
//! everywhere see one order. Groups are spread over `stream_shards` streams by a
//! stable hash; one XREAD reads them all. When Redis goes away the reader
//! reconnects and resumes after the last id it delivered, so nothing accepted
//! meanwhile is missed.
//!
//! Membership keeps the group list in a sorted set (ZRANGEBYLEX orders by bytes,
//! which for UTF-8 is code-point order) and each group's members in a sorted set
//! of `user \x1f instance` scored by expiry time (Redis's clock). Each instance
//! refreshes its own entries on a heartbeat, so the members of an instance that
//! died are dropped within `member_ttl`; the heartbeat also lists their groups
//! again, so a Redis that restarted empty (no persistence) gets back every group
//! someone is in, not only its members. The room check is a Lua script, so two
//! instances racing for the last place cannot both win.
//!
//! Keys, all under `key_prefix`:
//! - `groups`: sorted set of group ids, all scored 0.
//! - `members:<group>`: sorted set of `<user>\x1f<instance>`, scored by expiry (ms
//!   of Redis's clock); the key itself expires with its longest-lived entry, so
//!   groups whose instances all died leave nothing behind.
//! - `stream:<shard>`: stream of messages with fields `g` (group), `a` (author), `t` (text).
//! - `stream-bytes:<shard>`: what the entries of `stream:<shard>` cost, by `entry_cost`
//!   in `PUBLISH_SCRIPT`; only that script changes it, together with the stream.
//! - `reconcile:lock`, `reconcile:watermark:<shard>`: see `reconcile`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::streams::{StreamRangeReply, StreamReadReply};
use ::redis::{AsyncConnectionConfig, Client, FromRedisValue, Script, Value};
use async_trait::async_trait;
use next_chat_core::{
    BackendError, ConnectionId, GroupId, JoinOutcome, LocalFanout, Membership, Message, MessageId,
    MessageText, Messaging, NewMessage, OnAccepted, UserId,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::clock::time_of;
use crate::health::Health;

const BACKEND: &str = "redis";

/// Separates user and instance in a member entry; neither may contain control
/// characters, so the split is unambiguous.
const MEMBER_SEPARATOR: char = '\u{1f}';

/// The least byte budget of one stream shard: a dozen of the largest entries
/// (16,384 four-byte characters cost about 81 KiB by `entry_cost`), so a new
/// entry never has to push out everything before it.
const MIN_SHARD_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379`.
    pub url: String,
    /// Put before every key, so several deployments (or tests) share one Redis.
    pub key_prefix: String,
    /// How many streams the groups are spread over.
    pub stream_shards: usize,
    /// Most entries each stream keeps. The streams only need to hold what
    /// readers and the reconciler have not yet caught up with.
    pub stream_maxlen: usize,
    /// Most bytes all streams together may cost Redis, split evenly over the
    /// shards; each publish drops a shard's oldest entries to stay within it.
    /// Entry counts alone bound nothing: an entry may be 16 bytes or 80 KiB.
    pub stream_max_bytes: u64,
    /// How long a member entry lives without a heartbeat: the most a crashed
    /// instance's members keep their places.
    pub member_ttl: Duration,
    /// How often an instance refreshes its members' expiry; well below `member_ttl`.
    pub heartbeat_interval: Duration,
    /// The longest any command may take before it fails, so nothing hangs
    /// while Redis is away.
    pub command_timeout: Duration,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one blocking XREAD waits for new entries.
    pub read_block: Duration,
    /// Most entries one XREAD returns.
    pub read_batch: usize,
    /// How many of a stream's newest entries `recent_after` reads
    /// (`GetMessagesAfter`), for messages other instances accepted but have
    /// not stored yet; 0 reads none. Each entry may be up to a message's size.
    pub recent_scan_entries: usize,
    /// The longest pause between reconnection attempts of the stream reader.
    pub reconnect_delay_max: Duration,
    /// Names this instance in member entries; unique per running instance.
    pub instance_id: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "nc:".into(),
            stream_shards: 1,
            stream_maxlen: 100_000,
            stream_max_bytes: 256 * 1024 * 1024,
            member_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            read_block: Duration::from_secs(5),
            read_batch: 1000,
            recent_scan_entries: 200,
            reconnect_delay_max: Duration::from_secs(1),
            instance_id: default_instance_id(),
        }
    }
}

/// The process id and start time: unique enough among running instances.
fn default_instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{:x}", std::process::id(), nanos)
}

impl RedisConfig {
    pub(crate) fn groups_key(&self) -> String {
        format!("{}groups", self.key_prefix)
    }

    pub(crate) fn members_key(&self, group: &GroupId) -> String {
        format!("{}members:{}", self.key_prefix, group.as_str())
    }

    pub(crate) fn stream_key(&self, shard: usize) -> String {
        format!("{}stream:{}", self.key_prefix, shard)
    }

    pub(crate) fn stream_keys(&self) -> Vec<String> {
        (0..self.stream_shards).map(|shard| self.stream_key(shard)).collect()
    }

    fn stream_bytes_key(&self, shard: usize) -> String {
        format!("{}stream-bytes:{}", self.key_prefix, shard)
    }

    /// Each shard's share of `stream_max_bytes`.
    fn shard_max_bytes(&self) -> u64 {
        self.stream_max_bytes / self.stream_shards as u64
    }

    /// The shard of a group: FNV-1a of its bytes, stable across processes and
    /// versions (std's hasher is neither).
    pub(crate) fn shard_of(&self, group: &GroupId) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in group.as_str().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % self.stream_shards as u64) as usize
    }

    fn validate(&self) -> Result<(), BackendError> {
        if self.stream_shards == 0 {
            return Err(BackendError::new(BACKEND, "stream_shards must be at least 1"));
        }
        if self.shard_max_bytes() < MIN_SHARD_BYTES {
            return Err(BackendError::new(
                BACKEND,
                format!(
                    "stream_max_bytes must allow at least {MIN_SHARD_BYTES} bytes per stream shard \
                     ({} shards), so a shard holds several of the largest messages",
                    self.stream_shards
                ),
            ));
        }
        if self.heartbeat_interval >= self.member_ttl {
            return Err(BackendError::new(
                BACKEND,
                "heartbeat_interval must be shorter than member_ttl",
            ));
        }
        Ok(())
    }

    pub(crate) fn client(&self) -> Result<Client, BackendError> {
        Client::open(self.url.as_str())
            .map_err(|e| BackendError::new(BACKEND, format!("bad url '{}': {e}", self.url)))
    }

    /// A self-healing connection for ordinary commands. Reconnection is tried
    /// once per failed command, so a command fails fast while Redis is away.
    pub(crate) async fn manager(&self) -> Result<ConnectionManager, BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.command_timeout)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let client = self.client()?;
        let connecting = client.get_connection_manager_with_config(config);
        match tokio::time::timeout(self.connect_timeout + self.command_timeout, connecting).await {
            Ok(Ok(manager)) => Ok(manager),
            Ok(Err(e)) => Err(BackendError::new(BACKEND, format!("cannot connect: {e}"))),
            Err(_) => Err(BackendError::new(BACKEND, "cannot connect: timed out")),
        }
    }
}

/// Runs a command with the configured timeout, turning every failure into a
/// `BackendError` and recording the backend's health.
pub(crate) async fn run<T: FromRedisValue>(
    config: &RedisConfig,
    health: &Health,
    what: &str,
    command: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    let result = match tokio::time::timeout(config.command_timeout, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if is_out_of_memory(&e) => Err(BackendError::new(
            BACKEND,
            format!("message bus full: Redis is out of memory (maxmemory); {what} refused"),
        )),
        Ok(Err(e)) => Err(BackendError::new(BACKEND, format!("{what}: {e}"))),
        Err(_) => Err(BackendError::new(
            BACKEND,
            format!("{what}: no answer within {:?}", config.command_timeout),
        )),
    };
    match &result {
        Ok(_) => health.succeeded(),
        Err(error) => health.failed(&error.detail),
    }
    result
}

/// Redis refused a write because `used_memory` is over `maxmemory` and the
/// policy (`noeviction`) frees nothing. Reads and deletes still work, so the
/// streams drain as readers and trimming move on.
fn is_out_of_memory(error: &::redis::RedisError) -> bool {
    error.code() == Some("OOM")
}

// ------------------------------------------------------------------ messaging

/// KEYS[1] the stream, KEYS[2] its byte count; ARGV: max bytes, max entries,
/// group, author, text. Appends the entry, then drops the oldest entries until
/// the stream is within both bounds, and returns the new entry's id. One
/// script, so the count and the stream never disagree, whichever instance
/// writes. Redis has no byte-based trimming; the cost of an entry is its bytes
/// plus a quarter (jemalloc's size classes round up by at most that much) plus
/// 64 for the listpack and id overhead (plus a node's overhead for an entry
/// that fills one), which measured `MEMORY USAGE` stays below for every entry
/// size (0.46 to 0.99 of it, 1 to 65,536 bytes of text). Trimming by MINID removes whole entries; a
/// partly trimmed listpack node (at most 4 KiB, `stream-node-max-bytes`) is
/// freed once its last entry goes.
const PUBLISH_SCRIPT: &str = r"
local function entry_cost(fields)
  local bytes = 0
  for i = 2, #fields, 2 do
    bytes = bytes + #fields[i]
  end
  -- An entry over 2 KiB fills a listpack node of its own: add the node's keep.
  local node = 0
  if bytes > 2048 then node = 1024 end
  return bytes + math.ceil(bytes / 4) + 64 + node
end
local added = entry_cost({'g', ARGV[3], 'a', ARGV[4], 't', ARGV[5]})
local id = redis.call('XADD', KEYS[1], '*', 'g', ARGV[3], 'a', ARGV[4], 't', ARGV[5])
local bytes = redis.call('INCRBY', KEYS[2], added)
local entries = redis.call('XLEN', KEYS[1])
if bytes == added and entries > 1 then
  -- The count is missing (a stream written before counting began, or the key
  -- was deleted): count the stream once.
  bytes = 0
  local from = '-'
  repeat
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1000)
    for _, entry in ipairs(batch) do
      bytes = bytes + entry_cost(entry[2])
      from = '(' .. entry[1]
    end
  until #batch < 1000
  redis.call('SET', KEYS[2], bytes)
end
local max_bytes = tonumber(ARGV[1])
local max_entries = tonumber(ARGV[2])
if bytes > max_bytes or entries > max_entries then
  -- Trim a sixty-fourth below the bounds, so trimming (a Lua loop and an
  -- exact XTRIM, about 60 us) runs once per many publishes, not on each.
  local target_bytes = max_bytes - math.floor(max_bytes / 64)
  local target_entries = max_entries - math.floor(max_entries / 64)
  local freed, removed, keep = 0, 0, nil
  local from, count = '-', 1
  while not keep do
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if bytes - freed <= target_bytes and entries - removed <= target_entries then
        keep = entry[1]
        break
      end
      freed = freed + entry_cost(entry[2])
      removed = removed + 1
      from = '(' .. entry[1]
    end
    count = math.min(count * 2, 512)
  end
  if keep then
    redis.call('XTRIM', KEYS[1], 'MINID', keep)
    redis.call('DECRBY', KEYS[2], freed)
  end
end
return id
";

pub struct RedisMessaging {
    config: Arc<RedisConfig>,
    /// Per shard: the stream and its byte count, named once rather than per message.
    shard_keys: Vec<(String, String)>,
    publish_script: Script,
    connection: ConnectionManager,
    health: Health,
    reader_health: Arc<Health>,
    stop: watch::Sender<bool>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl RedisMessaging {
    /// Connects, notes where each stream ends now, and starts the reader that
    /// delivers every later entry to `fanout`.
    pub async fn start(
        config: RedisConfig,
        fanout: Arc<LocalFanout>,
    ) -> Result<RedisMessaging, BackendError> {
        config.validate()?;
        let config = Arc::new(config);
        let health = Health::new("redis messaging");
        let mut connection = config.manager().await?;
        // Start after the current last entries, and before `start` returns, so a
        // message published once we return is always read.
        let mut last_ids = Vec::with_capacity(config.stream_shards);
        for key in config.stream_keys() {
            let newest: Value = run(&config, &health, "read stream end", async {
                ::redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
            last_ids.push(first_entry_id(&newest).unwrap_or_else(|| "0-0".to_string()));
        }
        let reader_health = Arc::new(Health::new("redis stream reader"));
        let (stop, stopped) = watch::channel(false);
        let reader = tokio::spawn(read_loop(
            Arc::clone(&config),
            fanout,
            last_ids,
            Arc::clone(&reader_health),
            stopped,
        ));
        let shard_keys = (0..config.stream_shards)
            .map(|shard| (config.stream_key(shard), config.stream_bytes_key(shard)))
            .collect();
        Ok(RedisMessaging {
            config,
            shard_keys,
            publish_script: Script::new(PUBLISH_SCRIPT),
            connection,
            health,
            reader_health,
            stop,
            reader: Mutex::new(Some(reader)),
        })
    }
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
        let (stream, bytes) = &self.shard_keys[self.config.shard_of(&message.group)];
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(stream)
            .key(bytes)
            .arg(self.config.shard_max_bytes())
            .arg(self.config.stream_maxlen)
            .arg(message.group.as_str())
            .arg(message.author.as_str())
            .arg(message.text.as_str());
        let mut connection = self.connection.clone();
        let id: String = run(&self.config, &self.health, "publish", async {
            invocation.invoke_async(&mut connection).await
        })
        .await?;
        let id: MessageId = id
            .parse()
            .map_err(|_| BackendError::new(BACKEND, format!("XADD returned a bad id '{id}'")))?;
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
        Ok(accepted)
    }

    async fn check(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        // PING answers even when Redis is out of memory, and so does a small
        // write when only the largest messages no longer fit (their own
        // bytes count while Redis reads them): compare the numbers instead.
        let info: String = run(&self.config, &self.health, "read memory", async {
            ::redis::cmd("INFO").arg("memory").query_async(&mut connection).await
        })
        .await?;
        if let Some(short) = memory_short(&info) {
            return Err(BackendError::new(BACKEND, short));
        }
        if self.reader_health.is_down() {
            return Err(BackendError::new(BACKEND, "the stream reader is reconnecting"));
        }
        Ok(())
    }

    /// The newest `recent_scan_entries` entries of the group's shard above
    /// `after` (one XREVRANGE), the group's among them. A message another
    /// instance accepted is there from the moment it has its id, while its
    /// writer stores it within milliseconds, or `save_timeout` when the
    /// database is slow; the scan covers that as long as the shard takes
    /// fewer than `recent_scan_entries` messages in that time.
    async fn recent_after(
        &self,
        group: &GroupId,
        after: MessageId,
    ) -> Result<Vec<Message>, BackendError> {
        let count = self.config.recent_scan_entries;
        if count == 0 {
            return Ok(Vec::new());
        }
        let (stream, _) = &self.shard_keys[self.config.shard_of(group)];
        let mut connection = self.connection.clone();
        let range: StreamRangeReply = run(&self.config, &self.health, "read recent", async {
            ::redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg(format!("({after}"))
                .arg("COUNT")
                .arg(count)
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
        Ok(messages)
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let reader = self.reader.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
    }
}

impl Drop for RedisMessaging {
    fn drop(&mut self) {
        let reader = self.reader.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        if let Some(reader) = reader {
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

async fn reader_connection(config: &RedisConfig) -> Result<MultiplexedConnection, String> {
    let client = config.client().map_err(|e| e.detail)?;
    // The response timeout must outlast the blocking read itself.
    let options = AsyncConnectionConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.read_block + config.command_timeout);
    match tokio::time::timeout(
        config.connect_timeout + config.command_timeout,
        client.get_multiplexed_async_connection_with_config(&options),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err("cannot connect: timed out".into()),
    }
}

/// Reads every stream from `last_ids` on and delivers each entry, reconnecting
/// (and resuming from the last delivered id) whenever Redis goes away.
async fn read_loop(
    config: Arc<RedisConfig>,
    fanout: Arc<LocalFanout>,
    mut last_ids: Vec<String>,
    health: Arc<Health>,
    mut stopped: watch::Receiver<bool>,
) {
    const RETRY_MIN: Duration = Duration::from_millis(50);
    let keys = config.stream_keys();
    let block_ms = config.read_block.as_millis() as u64;
    let mut retry = RETRY_MIN;
    'connect: loop {
        if *stopped.borrow() {
            return;
        }
        let mut connection = match reader_connection(&config).await {
            Ok(connection) => connection,
            Err(error) => {
                health.failed(&error);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stopped.changed() => return,
                }
                retry = (retry * 2).min(config.reconnect_delay_max);
                continue 'connect;
            }
        };
        loop {
            let mut read = ::redis::cmd("XREAD");
            read.arg("COUNT").arg(config.read_batch).arg("BLOCK").arg(block_ms).arg("STREAMS");
            read.arg(&keys).arg(&last_ids);
            let reply = tokio::select! {
                reply = tokio::time::timeout(
                    config.read_block + config.command_timeout,
                    read.query_async::<Option<StreamReadReply>>(&mut connection),
                ) => reply,
                _ = stopped.changed() => return,
            };
            let reply = match reply {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    health.failed(&format!("read: {e}"));
                    continue 'connect;
                }
                Err(_) => {
                    health.failed(&"read: no answer in time");
                    continue 'connect;
                }
            };
            health.succeeded();
            retry = RETRY_MIN;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(shard) = keys.iter().position(|k| *k == stream.key) else { continue };
                for entry in stream.ids {
                    match message_of_entry(&entry.id, &entry.map) {
                        Some(message) => {
                            fanout.deliver(message);
                        }
                        None => {
                            warn!(stream = %stream.key, id = %entry.id, "skipping a malformed stream entry")
                        }
                    }
                    last_ids[shard] = entry.id;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ membership

/// The first line of the membership scripts (Redis 7): they run even when
/// Redis is out of memory. Members cost a few bytes each and are bounded by
/// the member limit, and a heartbeat refused for a while would drop every
/// member of this instance; a full message bus must not also empty the groups.
/// What grows with use (messages, new groups) is still refused.
macro_rules! allow_oom {
    () => {
        "#!lua flags=allow-oom\n"
    };
}

/// The start of the membership scripts after `allow_oom`: drops the expired entries of the
/// members set KEYS[1] and defines `live_users(user)`, which counts the distinct
/// users left and says whether `user` is one of them. Entries are
/// `user<US>instance`.
macro_rules! members_prelude {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function live_users(user)
  local seen = {}
  local count = 0
  local member = false
  for _, entry in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local cut = string.find(entry, '\31', 1, true)
    if cut then
      local name = string.sub(entry, 1, cut - 1)
      if name == user then
        member = true
      end
      if not seen[name] then
        seen[name] = true
        count = count + 1
      end
    end
  end
  return count, member
end
"
    };
}

/// KEYS[1] members set; ARGV: user, instance, max members, ttl ms, and "1" when
/// this instance already counts the user as a member (then no room check: a
/// member always gets back in, even if its entry expired during an outage).
const JOIN_SCRIPT: &str = concat!(
    allow_oom!(),
    members_prelude!(),
    r"
local ttl = tonumber(ARGV[4])
if ARGV[5] ~= '1' then
  local count, member = live_users(ARGV[1])
  if not member and count >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1] .. '\31' .. ARGV[2])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(latest[2])) + 1)
return 1
"
);

/// KEYS[1] members set; returns the distinct users whose entries live.
const COUNT_SCRIPT: &str = concat!(
    allow_oom!(),
    members_prelude!(),
    r"
local count = live_users(nil)
return count
"
);

/// KEYS[1] members set; returns the distinct users whose entries live.
const MEMBERS_SCRIPT: &str = concat!(
    allow_oom!(),
    members_prelude!(),
    r"
local users = {}
local seen = {}
for _, entry in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local cut = string.find(entry, '\31', 1, true)
  if cut then
    local name = string.sub(entry, 1, cut - 1)
    if not seen[name] then
      seen[name] = true
      users[#users + 1] = name
    end
  end
end
return users
"
);

/// KEYS[1] the groups set, then members sets; ARGV: ttl ms, instance, then
/// per members set its group, a count of users and those users. Pushes the
/// expiry of this instance's entries and lists their groups again (if Redis
/// lost its data, this puts back the groups in use).
const HEARTBEAT_SCRIPT: &str = concat!(
    allow_oom!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local i = 3
for k = 2, #KEYS do
  redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[i])
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    redis.call('ZADD', KEYS[k], now + ttl, ARGV[i] .. '\31' .. ARGV[2])
    i = i + 1
  end
  local latest = redis.call('ZRANGE', KEYS[k], -1, -1, 'WITHSCORES')
  if latest[2] then
    redis.call('PEXPIREAT', KEYS[k], math.floor(tonumber(latest[2])) + 1)
  end
end
return 0
"
);

/// Groups per heartbeat script call: bounds the size of one call.
const HEARTBEAT_GROUPS_PER_CALL: usize = 200;

/// Joins and leaves of one (group, user) on this instance are serialized, so
/// a leave's ZREM cannot overtake a later join's ZADD. Striped to bound memory.
const MEMBER_LOCK_STRIPES: usize = 64;

type LocalMembers = HashMap<GroupId, HashMap<UserId, HashSet<ConnectionId>>>;

struct MembershipInner {
    config: RedisConfig,
    connection: ConnectionManager,
    health: Health,
    /// This instance's connections per group and user: what the heartbeat
    /// refreshes and what `shutdown` removes.
    local: Mutex<LocalMembers>,
    /// Groups known to exist (groups are never deleted), to save a round trip
    /// on every join.
    known_groups: Mutex<HashSet<GroupId>>,
    member_locks: Vec<tokio::sync::Mutex<()>>,
    join_script: Script,
    count_script: Script,
    members_script: Script,
    heartbeat_script: Script,
}

pub struct RedisMembership {
    inner: Arc<MembershipInner>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

impl RedisMembership {
    /// Connects and starts the heartbeat that keeps this instance's members alive.
    pub async fn start(config: RedisConfig) -> Result<RedisMembership, BackendError> {
        config.validate()?;
        let connection = config.manager().await?;
        let inner = Arc::new(MembershipInner {
            connection,
            health: Health::new("redis membership"),
            local: Mutex::new(HashMap::new()),
            known_groups: Mutex::new(HashSet::new()),
            member_locks: (0..MEMBER_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            join_script: Script::new(JOIN_SCRIPT),
            count_script: Script::new(COUNT_SCRIPT),
            members_script: Script::new(MEMBERS_SCRIPT),
            heartbeat_script: Script::new(HEARTBEAT_SCRIPT),
            config,
        });
        let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&inner)));
        Ok(RedisMembership { inner, heartbeat: Mutex::new(Some(heartbeat)) })
    }

    /// Refreshes the expiry of this instance's members now (the heartbeat does
    /// this every `heartbeat_interval`).
    pub async fn heartbeat(&self) -> Result<(), BackendError> {
        self.inner.heartbeat().await
    }

    fn stop_heartbeat(&self) {
        let heartbeat = self.heartbeat.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        if let Some(heartbeat) = heartbeat {
            heartbeat.abort();
        }
    }
}

impl Drop for RedisMembership {
    /// Stops heart-beating without removing the members, as a crash would;
    /// `shutdown` is the orderly way out.
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

fn member_entry(user: &UserId, instance: &str) -> String {
    format!("{}{MEMBER_SEPARATOR}{instance}", user.as_str())
}

impl MembershipInner {
    fn local(&self) -> std::sync::MutexGuard<'_, LocalMembers> {
        self.local.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn member_lock(&self, group: &GroupId, user: &UserId) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((group, user));
        &self.member_locks[(hash % MEMBER_LOCK_STRIPES as u64) as usize]
    }

    fn is_known(&self, group: &GroupId) -> bool {
        self.known_groups.lock().unwrap_or_else(|poison| poison.into_inner()).contains(group)
    }

    fn remember(&self, group: &GroupId) {
        self.known_groups.lock().unwrap_or_else(|poison| poison.into_inner()).insert(group.clone());
    }

    async fn heartbeat(&self) -> Result<(), BackendError> {
        let snapshot: Vec<(GroupId, Vec<String>)> = self
            .local()
            .iter()
            .map(|(group, users)| {
                (group.clone(), users.keys().map(|u| u.as_str().to_string()).collect())
            })
            .collect();
        let ttl_ms = self.config.member_ttl.as_millis() as u64;
        for chunk in snapshot.chunks(HEARTBEAT_GROUPS_PER_CALL) {
            let mut invocation = self.heartbeat_script.prepare_invoke();
            invocation.key(self.config.groups_key());
            invocation.arg(ttl_ms).arg(&self.config.instance_id);
            for (group, users) in chunk {
                invocation
                    .key(self.config.members_key(group))
                    .arg(group.as_str())
                    .arg(users.len())
                    .arg(users);
            }
            let mut connection = self.connection.clone();
            run(&self.config, &self.health, "heartbeat", async {
                invocation.invoke_async::<i64>(&mut connection).await
            })
            .await?;
        }
        Ok(())
    }
}

async fn heartbeat_loop(inner: Arc<MembershipInner>) {
    let mut ticks = tokio::time::interval(inner.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A failure is logged once by `Health`; the next tick tries again.
        let _ = inner.heartbeat().await;
    }
}

#[async_trait]
impl Membership for RedisMembership {
    async fn create_group(&self, group: &GroupId) -> Result<(), BackendError> {
        let inner = &self.inner;
        if inner.is_known(group) {
            return Ok(());
        }
        let mut connection = inner.connection.clone();
        run(&inner.config, &inner.health, "create group", async {
            ::redis::cmd("ZADD")
                .arg(inner.config.groups_key())
                .arg("NX")
                .arg(0)
                .arg(group.as_str())
                .query_async::<i64>(&mut connection)
                .await
        })
        .await?;
        inner.remember(group);
        Ok(())
    }

    async fn group_exists(&self, group: &GroupId) -> Result<bool, BackendError> {
        let inner = &self.inner;
        if inner.is_known(group) {
            return Ok(true);
        }
        let mut connection = inner.connection.clone();
        let score: Option<f64> = run(&inner.config, &inner.health, "read group", async {
            ::redis::cmd("ZSCORE")
                .arg(inner.config.groups_key())
                .arg(group.as_str())
                .query_async(&mut connection)
                .await
        })
        .await?;
        if score.is_some() {
            inner.remember(group);
        }
        Ok(score.is_some())
    }

    async fn group_count(&self) -> Result<usize, BackendError> {
        let inner = &self.inner;
        let mut connection = inner.connection.clone();
        run(&inner.config, &inner.health, "count groups", async {
            ::redis::cmd("ZCARD").arg(inner.config.groups_key()).query_async(&mut connection).await
        })
        .await
    }

    async fn list_groups(
        &self,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<GroupId>, BackendError> {
        let inner = &self.inner;
        let start = match after {
            Some(after) => format!("({}", after.as_str()),
            None => "-".to_string(),
        };
        let mut connection = inner.connection.clone();
        let groups: Vec<String> = run(&inner.config, &inner.health, "list groups", async {
            ::redis::cmd("ZRANGEBYLEX")
                .arg(inner.config.groups_key())
                .arg(&start)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(groups.iter().map(|g| GroupId::from_trusted(g)).collect())
    }

    async fn join(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
        max_members: usize,
    ) -> Result<JoinOutcome, BackendError> {
        let inner = &self.inner;
        let _serial = inner.member_lock(group, user).lock().await;
        let already_member = inner.local().get(group).is_some_and(|users| users.contains_key(user));
        let mut redis = inner.connection.clone();
        let mut invocation = inner.join_script.prepare_invoke();
        invocation
            .key(inner.config.members_key(group))
            .arg(user.as_str())
            .arg(&inner.config.instance_id)
            .arg(max_members)
            .arg(inner.config.member_ttl.as_millis() as u64)
            .arg(if already_member { "1" } else { "0" });
        let admitted: i64 = run(&inner.config, &inner.health, "join", async {
            invocation.invoke_async(&mut redis).await
        })
        .await?;
        if admitted != 1 {
            return Ok(JoinOutcome::NoRoom);
        }
        inner
            .local()
            .entry(group.clone())
            .or_default()
            .entry(user.clone())
            .or_default()
            .insert(connection.clone());
        Ok(JoinOutcome::Joined)
    }

    async fn leave(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let _serial = inner.member_lock(group, user).lock().await;
        let last_connection = {
            let mut local = inner.local();
            let Some(users) = local.get_mut(group) else { return Ok(()) };
            let Some(connections) = users.get_mut(user) else { return Ok(()) };
            if !connections.remove(connection) || !connections.is_empty() {
                return Ok(());
            }
            users.remove(user);
            if users.is_empty() {
                local.remove(group);
            }
            true
        };
        if last_connection {
            // If this fails the entry is no longer refreshed and expires.
            let mut redis = inner.connection.clone();
            run(&inner.config, &inner.health, "leave", async {
                ::redis::cmd("ZREM")
                    .arg(inner.config.members_key(group))
                    .arg(member_entry(user, &inner.config.instance_id))
                    .query_async::<i64>(&mut redis)
                    .await
            })
            .await?;
        }
        Ok(())
    }

    async fn member_count(&self, group: &GroupId) -> Result<usize, BackendError> {
        let inner = &self.inner;
        let mut redis = inner.connection.clone();
        let mut invocation = inner.count_script.prepare_invoke();
        invocation.key(inner.config.members_key(group));
        let count: i64 = run(&inner.config, &inner.health, "count members", async {
            invocation.invoke_async(&mut redis).await
        })
        .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, BackendError> {
        let inner = &self.inner;
        let mut redis = inner.connection.clone();
        let mut invocation = inner.members_script.prepare_invoke();
        invocation.key(inner.config.members_key(group));
        let names: Vec<String> = run(&inner.config, &inner.health, "list members", async {
            invocation.invoke_async(&mut redis).await
        })
        .await?;
        let mut users: Vec<UserId> = names.iter().map(|name| UserId::from_trusted(name)).collect();
        users.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(users)
    }

    async fn check(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        let mut connection = inner.connection.clone();
        run(&inner.config, &inner.health, "ping", async {
            ::redis::cmd("PING").query_async::<String>(&mut connection).await
        })
        .await?;
        Ok(())
    }

    async fn shutdown(&self) {
        self.stop_heartbeat();
        let inner = &self.inner;
        let local = std::mem::take(&mut *inner.local());
        if local.is_empty() {
            return;
        }
        let mut pipe = ::redis::pipe();
        for (group, users) in &local {
            let entries: Vec<String> =
                users.keys().map(|u| member_entry(u, &inner.config.instance_id)).collect();
            pipe.cmd("ZREM").arg(inner.config.members_key(group)).arg(entries).ignore();
        }
        let mut connection = inner.connection.clone();
        let removed = run(&inner.config, &inner.health, "free places at shutdown", async {
            pipe.query_async::<()>(&mut connection).await
        })
        .await;
        if let Err(error) = removed {
            warn!(%error, "could not free this instance's places; they expire on their own");
        }
    }
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

    #[test]
    fn shards_are_stable_and_in_range() {
        let config = RedisConfig { stream_shards: 4, ..RedisConfig::default() };
        let group = GroupId::from_trusted("off-topic");
        let shard = config.shard_of(&group);
        assert!(shard < 4);
        assert_eq!(shard, config.shard_of(&GroupId::from_trusted("off-topic")));
        // FNV-1a is fixed, so this value never changes between versions.
        assert_eq!(RedisConfig { stream_shards: 1000, ..config }.shard_of(&group), {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in b"off-topic" {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            (hash % 1000) as usize
        });
    }
}
