//! Bulk loading in the server's own schema, for tools: the bench's
//! `load-history` fills a database with millions of messages far faster than
//! sending them. The schema comes from the stores' migrations, the INSERTs are
//! the stores' own, and the group set is where `RedisConfig` puts it; what a
//! load adds is batching into big transactions and, for SQLite, one exclusive
//! connection without a journal, its secondary indexes dropped for the load
//! and made again afterwards from their own SQL, in one sort.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use next_chat_core::{BackendError, GroupId};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous,
};
use sqlx::{Connection as _, Executor as _, QueryBuilder, Sqlite};

use crate::redis::RedisConfig;
use backon::{ConstantBuilder, Retryable};

/// Groups per INSERT (SQLite) or ZADD (Redis).
const GROUPS_PER_STATEMENT: usize = 500;
/// The SQLite page cache while loading, KiB (as `PRAGMA cache_size` takes it, negated).
const SQLITE_LOAD_CACHE_KIB: i64 = 1 << 20;
/// How often, and how long apart, opening the SQLite file for the load is
/// tried again while another connection still holds it (SQLITE_BUSY).
const SQLITE_OPEN_ATTEMPTS: u32 = 7;
const SQLITE_OPEN_RETRY: Duration = Duration::from_millis(500);

/// One row of the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow<'a> {
    pub group_id: &'a str,
    pub id_millis: u64,
    pub id_seq: u64,
    pub author_id: &'a str,
    pub send_time_ms: u64,
    pub text: Cow<'a, str>,
}

/// How a load cuts its rows into statements and transactions.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Rows per INSERT: SQLite binds at most 32766 values (6 per row); MySQL's
    /// statement must stay below `max_allowed_packet`.
    pub rows_per_insert: usize,
    /// Rows per transaction.
    pub rows_per_transaction: u64,
}

fn error(backend: &'static str, context: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::new(backend, format!("{context}: {e}"))
}

/// Fills the SQLite database at `url` (created with the server's schema if
/// missing): `groups`, then `rows` in the table's primary-key order (each
/// insert then lands at the end of its B-tree). Calls `progress` with the rows
/// written so far after each INSERT. Leaves the file in WAL mode, as the
/// server opens it.
pub async fn load_sqlite<'a>(
    url: &str,
    groups: &[String],
    rows: impl Iterator<Item = HistoryRow<'a>>,
    batching: Batching,
    mut progress: impl FnMut(u64),
) -> Result<(), BackendError> {
    let fail = |context: &str, e: &dyn std::fmt::Display| error("sqlite", context, e);
    // The server's schema, by its own migrations; then one exclusive
    // connection without a journal or fsync, for the load only.
    let store = crate::SqliteStore::open(url).await?;
    store.close().await;
    let mut db = open_for_load(url).await?;
    let mut tx = db.begin().await.map_err(|e| fail("begin", &e))?;
    for chunk in groups.chunks(GROUPS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT OR IGNORE INTO chat_groups (group_id) ");
        insert.push_values(chunk, |mut b, name| {
            b.push_bind(name.as_str());
        });
        insert.build().execute(&mut *tx).await.map_err(|e| fail("insert groups", &e))?;
    }
    tx.commit().await.map_err(|e| fail("commit", &e))?;
    // Secondary indexes, as the migrations made them: dropped for the load,
    // made again from their own SQL after it.
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master \
         WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL",
    )
    .fetch_all(&mut db)
    .await
    .map_err(|e| fail("read the schema", &e))?;
    for (name, _) in &indexes {
        let drop = format!("DROP INDEX \"{}\"", name.replace('"', "\"\""));
        db.execute(drop.as_str()).await.map_err(|e| fail("drop index", &e))?;
    }
    let mut rows = rows.peekable();
    let mut done = 0u64;
    let mut batch: Vec<HistoryRow> = Vec::with_capacity(batching.rows_per_insert);
    while rows.peek().is_some() {
        let mut tx = db.begin().await.map_err(|e| fail("begin", &e))?;
        let mut in_transaction = 0;
        while in_transaction < batching.rows_per_transaction && rows.peek().is_some() {
            batch.clear();
            batch.extend(rows.by_ref().take(batching.rows_per_insert));
            let mut bound = Vec::with_capacity(batch.len());
            for row in &batch {
                bound.push((
                    row.group_id,
                    crate::sqlite::to_i64(row.id_millis, "id")?,
                    crate::sqlite::to_i64(row.id_seq, "id")?,
                    row.author_id,
                    crate::sqlite::to_i64(row.send_time_ms, "send time")?,
                    row.text.as_ref(),
                ));
            }
            crate::sqlite::insert_rows(&bound)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| fail("insert messages", &e))?;
            in_transaction += batch.len() as u64;
            done += batch.len() as u64;
            progress(done);
        }
        tx.commit().await.map_err(|e| fail("commit", &e))?;
    }
    for (_, sql) in &indexes {
        db.execute(sql.as_str()).await.map_err(|e| fail("create index", &e))?;
    }
    // Back to what the server opens: WAL.
    db.execute("PRAGMA journal_mode = WAL").await.map_err(|e| fail("set WAL", &e))?;
    db.close().await.map_err(|e| fail("close", &e))
}

/// One connection to `url` for a load: no journal, no fsync, exclusive.
async fn open_for_load(url: &str) -> Result<SqliteConnection, BackendError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| error("sqlite", "not a database URL", e))?
        .journal_mode(SqliteJournalMode::Off)
        .synchronous(SqliteSynchronous::Off)
        .locking_mode(SqliteLockingMode::Exclusive)
        .pragma("cache_size", (-SQLITE_LOAD_CACHE_KIB).to_string())
        .pragma("temp_store", "memory");
    // Leaving WAL mode needs the file to itself. The store's connections are
    // closed, but on a loaded machine SQLite's worker threads may release the
    // file late (a CI run failed once with "database is locked" after the
    // 5 s busy timeout): try for a few seconds more.
    let busy_retries = ConstantBuilder::new()
        .with_delay(SQLITE_OPEN_RETRY)
        .with_max_times(SQLITE_OPEN_ATTEMPTS as usize - 1);
    (|| SqliteConnection::connect_with(&options))
        .retry(busy_retries)
        // SQLITE_BUSY is code 5.
        .when(|e| e.as_database_error().and_then(|d| d.code()).as_deref() == Some("5"))
        .await
        .map_err(|e| error("sqlite", "cannot open", e))
}

/// Fills the MySQL/MariaDB database at `url` (created, with the server's
/// schema, if missing) with `rows`, in primary-key order. Calls `progress`
/// with the rows written so far after each INSERT. Returns the table's data
/// and index length once analyzed, in bytes.
pub async fn load_mysql<'a>(
    url: &str,
    rows: impl Iterator<Item = HistoryRow<'a>>,
    batching: Batching,
    mut progress: impl FnMut(u64),
) -> Result<u64, BackendError> {
    let fail = |context: &str, e: &dyn std::fmt::Display| error("mysql", context, e);
    crate::mysql::migrate(url).await?;
    let options = MySqlConnectOptions::from_str(url).map_err(|e| fail("not a database URL", &e))?;
    let mut db =
        MySqlConnection::connect_with(&options).await.map_err(|e| fail("cannot connect", &e))?;
    db.execute("SET SESSION unique_checks = 0").await.map_err(|e| fail("set", &e))?;
    let mut done = 0u64;
    let mut in_transaction = 0u64;
    let mut batch: Vec<HistoryRow> = Vec::with_capacity(batching.rows_per_insert);
    let mut rows = rows.peekable();
    db.execute("BEGIN").await.map_err(|e| fail("begin", &e))?;
    while rows.peek().is_some() {
        batch.clear();
        batch.extend(rows.by_ref().take(batching.rows_per_insert));
        let bound: Vec<crate::mysql::HistoryRow> = batch
            .iter()
            .map(|row| {
                (
                    row.group_id,
                    row.id_millis,
                    row.id_seq,
                    row.author_id,
                    row.send_time_ms as i64,
                    row.text.as_ref(),
                )
            })
            .collect();
        crate::mysql::insert_rows(&bound)
            .build()
            .execute(&mut db)
            .await
            .map_err(|e| fail("insert", &e))?;
        done += batch.len() as u64;
        in_transaction += batch.len() as u64;
        if in_transaction >= batching.rows_per_transaction {
            db.execute("COMMIT").await.map_err(|e| fail("commit", &e))?;
            db.execute("BEGIN").await.map_err(|e| fail("begin", &e))?;
            in_transaction = 0;
        }
        progress(done);
    }
    db.execute("COMMIT").await.map_err(|e| fail("commit", &e))?;
    db.execute("ANALYZE TABLE messages").await.map_err(|e| fail("analyze", &e))?;
    let (bytes,): (u64,) = sqlx::query_as(
        "SELECT CAST(data_length + index_length AS UNSIGNED) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'messages'",
    )
    .fetch_one(&mut db)
    .await
    .map_err(|e| fail("table size", &e))?;
    db.close().await.map_err(|e| fail("close", &e))?;
    Ok(bytes)
}

/// Lists `groups` in the scale-out group set (every score 0, as
/// `RedisMembership::create_group` lists a group), where `config` puts it.
pub async fn create_redis_groups(
    config: &RedisConfig,
    groups: &[String],
) -> Result<(), BackendError> {
    let mut connection = crate::redis::connect(config).await?;
    let mut by_key: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for group in groups {
        let key = config.group_list_key(&GroupId::from_trusted(group));
        by_key.entry(key).or_default().push(group);
    }
    for (key, groups) in &by_key {
        for chunk in groups.chunks(GROUPS_PER_STATEMENT) {
            let mut zadd = ::redis::cmd("ZADD");
            zadd.arg(key).arg("NX");
            for group in chunk {
                zadd.arg(0).arg(group);
            }
            zadd.query_async::<()>(&mut connection).await.map_err(|e| error("redis", "ZADD", e))?;
        }
    }
    Ok(())
}
