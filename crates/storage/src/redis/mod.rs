//! The scale-out messaging and membership, shared by every instance through
//! one Redis or a Redis Cluster.
//!
//! Messaging uses Redis Streams, not pub/sub: an accepted message is appended
//! by a script that also trims the stream to its share of `stream_max_bytes`
//! and to `stream_maxlen` entries (`messaging`). The stream entry id is the
//! message id, so all members everywhere see one order. Groups are spread over
//! `stream_shards` streams by a stable hash, and an instance reads only the
//! shards of groups its connections have joined, with a blocking XREAD on a
//! connection of its own, starting a shard where its stream ends when the
//! first such join happens and stopping when the last such group is left
//! (`reader`). When Redis goes away a reader reconnects and resumes after the
//! last id it delivered, so nothing accepted meanwhile is missed.
//!
//! Membership keeps the group list in sorted sets (ZRANGEBYLEX orders by bytes,
//! which for UTF-8 is code-point order) and each group's members in a sorted set
//! of `user \x1f instance` scored by expiry time (Redis's clock). Each instance
//! refreshes its own entries on a heartbeat, so the members of an instance that
//! died are dropped within `member_ttl`; the heartbeat also lists their groups
//! again, so a Redis that restarted empty (no persistence) gets back every group
//! someone is in, not only its members (`membership`).
//!
//! In a Redis Cluster (`cluster`), a shard's stream, byte count and stored
//! watermark share a hash tag (the publish and mark scripts touch them together), and so do the streams one reader
//! reads together: the shards are read in up to 16 buckets, each its own hash
//! slot and reader. The group list is split over 16 sorted sets. The `redis`
//! crate follows `MOVED`/`ASK` and finds a failed master's replica.
//!
//! Keys, all under `key_prefix` (`config` has the cluster's hash tags):
//! - `groups` (a cluster: `groups:<0-15>`): sorted sets of group ids, all scored 0.
//! - `members:<group>`: sorted set of `<user>\x1f<instance>`, scored by expiry (ms
//!   of Redis's clock); the key itself expires with its longest-lived entry, so
//!   groups whose instances all died leave nothing behind.
//! - `stream:<shard>`: stream of messages with fields `g` (group), `a` (author), `t` (text).
//! - `stream-bytes:<shard>`: what the entries of `stream:<shard>` cost, by `entry_cost`
//!   in `scripts/publish.lua`; only that script changes it, together with the stream.
//! - `wake:<instance>`: a one-entry stream an instance appends to so that its
//!   blocked reader looks again at which shards to read; expires a day after use.
//! - `stream-stored:<shard>`: the stored watermark, the id at or below which every
//!   entry of `stream:<shard>` is in the history database; `stream-stored-ids:<shard>`:
//!   a sorted set of entries stored above it (see `stored`). With `keep_unstored`
//!   the publish script trims nothing above the watermark.
//! - `reconcile:lock`: see `reconcile`. (`reconcile:watermark:<shard>`, what
//!   earlier versions kept instead of `stream-stored`, is read once at start.)

mod config;
mod connection;
mod membership;
mod messaging;
mod reader;
mod stored;

pub use config::RedisConfig;
pub(crate) use connection::{Connection, commands as connect, run};
pub use membership::RedisMembership;
pub use messaging::RedisMessaging;
pub(crate) use messaging::message_of_entry;
pub use reader::BusStats;
pub use stored::{MarkStoredHistory, StoredMarks};

const BACKEND: &str = "redis";
