//! Scaling out over Redis: the servers, the key prefix and the streams
//! messages travel on.

use super::{ConfigError, Values, bad, redact_url};

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub cluster: bool,
    pub key_prefix: String,
    pub stream_shards: usize,
    pub stream_maxlen: usize,
    pub recent_scan_entries: usize,
    /// `redis_wait_replicas`: replicas a publish waits for (`WAIT`); 0 for none.
    pub wait_replicas: usize,
}

/// Streams the groups are spread over by default. An instance reads only the
/// shards of groups joined on it, so more shards read less where instances
/// serve different groups; each shard costs its reader one more key per
/// XREAD and needs 1 MiB of `redis_stream_max_bytes` (256 MiB / 64 = 4 MiB).
pub const DEFAULT_STREAM_SHARDS: usize = 64;

/// The most stream entries one `GetMessagesAfter` may read from Redis: each
/// may be as large as a message (64 KiB of text at most), so this bounds the
/// call's cost there.
pub(super) const RECENT_SCAN_ENTRIES_MAX: usize = 10_000;

/// The storage's least shard budget: a dozen of the largest messages.
const MIN_BYTES_PER_SHARD: u64 = 1024 * 1024;

pub(super) fn redis(v: &Values) -> Result<Option<RedisSettings>, ConfigError> {
    let Some(url) = &v.redis else { return Ok(None) };
    let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
    for node in &nodes {
        if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
            return Err(bad(
                "redis",
                format!("'{}' must start with redis:// or rediss://", redact_url(node)),
            ));
        }
        next_chat_storage::check_redis_url(node).map_err(|error| {
            bad("redis", format!("'{}' is not a valid URL: {error}", redact_url(node)))
        })?;
    }
    if nodes.len() > 1 && !v.redis_cluster {
        return Err(bad(
            "redis",
            "names several servers: that is a Redis Cluster's seed list; set redis_cluster",
        ));
    }
    let key_prefix = &v.redis_key_prefix;
    if v.redis_cluster && (key_prefix.contains('{') || key_prefix.contains('}')) {
        return Err(bad(
            "redis_key_prefix",
            "must not contain '{' or '}' with redis_cluster (they make hash tags)",
        ));
    }
    Ok(Some(RedisSettings {
        url: nodes.join(","),
        cluster: v.redis_cluster,
        key_prefix: key_prefix.clone(),
        stream_shards: v.redis_stream_shards,
        stream_maxlen: v.redis_stream_maxlen,
        recent_scan_entries: v.redis_recent_scan_entries,
        wait_replicas: v.redis_wait_replicas,
    }))
}

/// `redis_stream_max_bytes`, which must leave each shard its least budget.
pub(super) fn stream_max_bytes(v: &Values) -> Result<u64, ConfigError> {
    let bytes = v.redis_stream_max_bytes;
    let shards = v.redis_stream_shards as u64;
    if bytes / shards < MIN_BYTES_PER_SHARD {
        return Err(bad(
            "redis_stream_max_bytes",
            format!(
                "must be at least {} ({MIN_BYTES_PER_SHARD} bytes for each of the \
                 {shards} stream shards)",
                MIN_BYTES_PER_SHARD * shards
            ),
        ));
    }
    Ok(bytes)
}
