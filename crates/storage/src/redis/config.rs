//! What the Redis backends are told, and where their keys live: one layout for
//! a single Redis (the key names of earlier versions, so an upgrade keeps the
//! group list) and one for a Redis Cluster, where every key a script or a
//! blocking read touches together shares a hash tag.

use std::time::Duration;

use next_chat_core::{BackendError, GroupId, UserId};

use super::BACKEND;

/// The least byte budget of one stream shard: a dozen of the largest entries
/// (16,384 four-byte characters cost about 81 KiB by `entry_cost`), so a new
/// entry never has to push out everything before it.
const MIN_SHARD_BYTES: u64 = 1024 * 1024;

/// In a Redis Cluster the shards are read in this many hash-tagged buckets:
/// one XREAD can only name keys of one hash slot, so each bucket has a reader
/// (and a connection) of its own, and the buckets' slots spread the streams
/// over the masters. A single Redis reads every shard in one XREAD.
const CLUSTER_READ_BUCKETS: usize = 16;

/// In a Redis Cluster the group list is split into this many sorted sets (each
/// its own slot), so it spreads over the masters too; a page of groups merges
/// a page from each.
const CLUSTER_GROUP_LIST_PARTS: usize = 16;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379`; with `cluster`, one or more seed nodes
    /// separated by commas.
    pub url: String,
    /// Talk to a Redis Cluster: keys carry hash tags, commands follow the
    /// cluster's `MOVED`/`ASK` redirections and its failovers.
    pub cluster: bool,
    /// Put before every key, so several deployments (or tests) share one Redis.
    pub key_prefix: String,
    /// How many streams the groups are spread over. An instance reads only
    /// the shards of groups its connections have joined.
    pub stream_shards: usize,
    /// Most entries each stream keeps. The streams only need to hold what
    /// readers and the reconciler have not yet caught up with.
    pub stream_maxlen: usize,
    /// Most bytes all streams together may cost Redis, split evenly over the
    /// shards; each publish drops a shard's oldest entries to stay within it.
    /// Entry counts alone bound nothing: an entry may be 16 bytes or 80 KiB.
    pub stream_max_bytes: u64,
    /// Trim only entries the history database holds (at or below the shard's
    /// stored watermark, see `stored`), and refuse a publish when the rest
    /// fills the shard's bounds: set when a shared history database and the
    /// reconciler stand behind the streams (MySQL). Otherwise the oldest
    /// entries are dropped to make room.
    pub keep_unstored: bool,
    /// After each publish, wait for this many replicas to acknowledge the
    /// write (`WAIT`), so an acknowledged message survives a failover; 0 waits
    /// for none.
    pub wait_replicas: usize,
    /// The longest `WAIT` blocks; below `command_timeout`.
    pub wait_timeout: Duration,
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
    /// Names this instance in member entries and its wake-up keys; unique per
    /// running instance.
    pub instance_id: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            key_prefix: "nc:".into(),
            stream_shards: 1,
            stream_maxlen: 100_000,
            stream_max_bytes: 256 * 1024 * 1024,
            keep_unstored: false,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
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

/// FNV-1a of a group id: stable across processes and versions (std's hasher
/// is neither), so every instance puts a group in the same place.
fn fnv1a(group: &GroupId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in group.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl RedisConfig {
    /// The seed nodes `url` names.
    pub(crate) fn urls(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    /// The sorted set that lists `group` (public for tools that list groups
    /// in bulk, see `bulk::create_redis_groups`).
    pub fn group_list_key(&self, group: &GroupId) -> String {
        if self.cluster {
            let part = fnv1a(group) % CLUSTER_GROUP_LIST_PARTS as u64;
            format!("{}groups:{part}", self.key_prefix)
        } else {
            format!("{}groups", self.key_prefix)
        }
    }

    /// Every sorted set of the group list.
    pub(crate) fn group_list_keys(&self) -> Vec<String> {
        if self.cluster {
            (0..CLUSTER_GROUP_LIST_PARTS)
                .map(|part| format!("{}groups:{part}", self.key_prefix))
                .collect()
        } else {
            vec![format!("{}groups", self.key_prefix)]
        }
    }

    /// Who created each group (a hash, group to user).
    pub(crate) fn owners_key(&self) -> String {
        format!("{}group-owners", self.key_prefix)
    }

    /// The existing groups a user created (a set).
    pub(crate) fn owned_key(&self, user: &UserId) -> String {
        format!("{}owned:{}", self.key_prefix, user.as_str())
    }

    /// A user's rate bucket of one kind, shared by every instance.
    pub(crate) fn rate_key(&self, bucket: &str, user: &UserId) -> String {
        format!("{}rate:{bucket}:{}", self.key_prefix, user.as_str())
    }

    pub(crate) fn members_key(&self, group: &GroupId) -> String {
        format!("{}members:{}", self.key_prefix, group.as_str())
    }

    /// How many readers the shards are split over: one per hash-tagged bucket.
    pub(crate) fn read_buckets(&self) -> usize {
        if self.cluster { self.stream_shards.min(CLUSTER_READ_BUCKETS) } else { 1 }
    }

    pub(crate) fn bucket_of_shard(&self, shard: usize) -> usize {
        shard % self.read_buckets()
    }

    /// What every key read together with a shard's stream starts with: its
    /// bucket's hash tag in a cluster.
    fn bus_prefix(&self, bucket: usize) -> String {
        if self.cluster {
            format!("{}{{bus-{bucket}}}:", self.key_prefix)
        } else {
            self.key_prefix.clone()
        }
    }

    /// The stream of a shard (`shard_of`): for tools and tests.
    pub fn stream_key(&self, shard: usize) -> String {
        format!("{}stream:{shard}", self.bus_prefix(self.bucket_of_shard(shard)))
    }

    pub(crate) fn stream_bytes_key(&self, shard: usize) -> String {
        format!("{}stream-bytes:{shard}", self.bus_prefix(self.bucket_of_shard(shard)))
    }

    /// The id at or below which every entry of the shard's stream is in the
    /// history database (`scripts/mark_stored.lua`).
    pub(crate) fn stored_key(&self, shard: usize) -> String {
        format!("{}stream-stored:{shard}", self.bus_prefix(self.bucket_of_shard(shard)))
    }

    /// The shard's entries stored above its watermark, waiting for the ones
    /// before them.
    pub(crate) fn stored_ids_key(&self, shard: usize) -> String {
        format!("{}stream-stored-ids:{shard}", self.bus_prefix(self.bucket_of_shard(shard)))
    }

    /// A stream of this instance's that its reader of `bucket` also blocks on,
    /// so that starting or stopping to read a shard wakes it at once.
    pub(crate) fn wake_key(&self, bucket: usize) -> String {
        format!("{}wake:{}", self.bus_prefix(bucket), self.instance_id)
    }

    /// Each shard's share of `stream_max_bytes`.
    pub(crate) fn shard_max_bytes(&self) -> u64 {
        self.stream_max_bytes / self.stream_shards as u64
    }

    /// The shard of a group.
    pub fn shard_of(&self, group: &GroupId) -> usize {
        (fnv1a(group) % self.stream_shards as u64) as usize
    }

    pub(crate) fn validate(&self) -> Result<(), BackendError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(BackendError::new(BACKEND, "url must name a Redis server"));
        }
        if !self.cluster && urls.len() > 1 {
            return Err(BackendError::new(
                BACKEND,
                "url names several servers: that is a Redis Cluster's seed list, set cluster",
            ));
        }
        if self.cluster && (self.key_prefix.contains('{') || self.key_prefix.contains('}')) {
            return Err(BackendError::new(
                BACKEND,
                "key_prefix must not contain '{' or '}' with a Redis Cluster (they make hash tags)",
            ));
        }
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
        if self.wait_replicas > 0 && self.wait_timeout >= self.command_timeout {
            return Err(BackendError::new(
                BACKEND,
                "wait_timeout must be shorter than command_timeout",
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_single_redis_keeps_the_key_names_of_earlier_versions() {
        let config = RedisConfig { stream_shards: 64, ..RedisConfig::default() };
        let group = GroupId::from_trusted("room");
        assert_eq!(config.group_list_key(&group), "nc:groups");
        assert_eq!(config.group_list_keys(), vec!["nc:groups"]);
        assert_eq!(config.members_key(&group), "nc:members:room");
        assert_eq!(config.stream_key(17), "nc:stream:17");
        assert_eq!(config.stream_bytes_key(17), "nc:stream-bytes:17");
        assert_eq!(config.read_buckets(), 1);
    }

    #[test]
    fn a_cluster_tags_what_is_read_or_scripted_together() {
        let config = RedisConfig { stream_shards: 64, cluster: true, ..RedisConfig::default() };
        // A shard's stream and byte count share a slot (the publish script
        // touches both), and so do its bucket's streams and wake-up key.
        assert_eq!(config.stream_key(17), "nc:{bus-1}:stream:17");
        assert_eq!(config.stream_bytes_key(17), "nc:{bus-1}:stream-bytes:17");
        assert_eq!(config.stored_key(17), "nc:{bus-1}:stream-stored:17");
        assert_eq!(config.stored_ids_key(17), "nc:{bus-1}:stream-stored-ids:17");
        assert_eq!(config.stream_key(33), "nc:{bus-1}:stream:33");
        assert!(config.wake_key(1).starts_with("nc:{bus-1}:wake:"));
        assert_eq!(config.read_buckets(), 16);
        assert_eq!(RedisConfig { stream_shards: 4, ..config.clone() }.read_buckets(), 4);
        // The group list is spread over sorted sets of their own.
        let keys = config.group_list_keys();
        assert_eq!(keys.len(), 16);
        assert!(keys.contains(&config.group_list_key(&GroupId::from_trusted("room"))));
    }

    #[test]
    fn bad_settings_are_named() {
        let several = RedisConfig { url: "redis://a:1,redis://b:2".into(), ..Default::default() };
        assert!(several.validate().unwrap_err().detail.contains("set cluster"));
        assert!(RedisConfig { cluster: true, ..several }.validate().is_ok());
        let braces =
            RedisConfig { cluster: true, key_prefix: "{x}:".into(), ..RedisConfig::default() };
        assert!(braces.validate().unwrap_err().detail.contains("key_prefix"));
        let empty = RedisConfig { url: " , ".into(), ..RedisConfig::default() };
        assert!(empty.validate().unwrap_err().detail.contains("url"));
    }
}
