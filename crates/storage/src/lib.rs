//! Backends for Next Chat: every implementation of the `next-chat-core` traits.
//!
//! Embedded mode needs no external service: `memory::InProcessMessaging` hands
//! messages straight to this instance's `LocalFanout`, `sqlite::SqliteStore`
//! keeps groups and history in one SQLite file, and `embedded::EmbeddedMembership`
//! keeps groups in SQLite and members in memory. Scale-out mode shares state
//! between instances: `redis::RedisMessaging` (Redis Streams), `redis::RedisMembership`
//! (sorted sets and a Lua join script), `mysql::MySqlHistory` (MySQL/MariaDB), and
//! `reconcile::StreamHistoryReconciler`, which copies from the streams into MySQL
//! what an instance that died could not store.

pub mod backend_url;
pub mod bulk;
mod clock;
pub mod embedded;
mod health;
pub mod memory;
pub mod mysql;
pub mod reconcile;
pub mod redis;
mod split;
mod sql_error;
pub mod sqlite;

pub use backend_url::{check_mysql_url, check_redis_url, redact_url};
pub use embedded::EmbeddedMembership;
pub use memory::InProcessMessaging;
pub use mysql::MySqlHistory;
pub use reconcile::{ExistingMessages, ReconcilerConfig, RoundReport, StreamHistoryReconciler};
pub use redis::{
    BusStats, MarkStoredHistory, RedisConfig, RedisMembership, RedisMessaging, StoredMarks,
};
pub use sqlite::SqliteStore;
