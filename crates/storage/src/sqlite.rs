//! Groups and history in one SQLite file, for the embedded mode.
//!
//! `SqliteStore::open` creates the file if it is missing, switches it to WAL (so
//! history reads do not wait for the history writer) and applies the migrations
//! embedded in the binary. Every read uses the primary key: a group's messages
//! are one range of `(group_id, id_millis, id_seq)`. Text columns use SQLite's
//! BINARY collation, which orders UTF-8 by code point and is case-sensitive.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use next_chat_core::{
    BackendError, GroupId, HistoryStore, Message, MessageId, MessageText, UserId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::clock::{millis_of, time_of};

const BACKEND: &str = "sqlite";

/// Rows per INSERT statement: 6 parameters each stays far below SQLite's limit
/// of 32766 bound parameters.
const ROWS_PER_INSERT: usize = 500;

/// How long a statement waits for another connection's write lock before it
/// fails; the history writer retries after that.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Groups and history in SQLite. Cheap to clone: clones share the pools.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for the history writer's appends. Always the same
    /// connection, so its page cache stays valid: SQLite drops a connection's
    /// cache whenever another connection has written, and a pool hands out its
    /// connections in turn, which made every append re-read the index pages.
    writer: SqlitePool,
}

fn error(context: &str, error: impl std::fmt::Display) -> BackendError {
    BackendError::new(BACKEND, format!("{context}: {error}"))
}

/// SQLite integers are signed 64-bit; ids and times beyond that cannot be stored.
fn to_i64(value: u64, what: &str) -> Result<i64, BackendError> {
    i64::try_from(value).map_err(|_| error(what, format!("{value} does not fit in SQLite")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, BackendError> {
    u64::try_from(value).map_err(|_| error(what, format!("stored value {value} is negative")))
}

/// One history row as bound: group, id millis, id sequence, author, send time, text.
type HistoryRow<'a> = (&'a str, i64, i64, &'a str, i64, &'a str);

/// One multi-row INSERT of `rows` (at most `ROWS_PER_INSERT`).
fn insert_rows<'a>(rows: &'a [HistoryRow<'a>]) -> QueryBuilder<'a, Sqlite> {
    let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT OR IGNORE INTO messages \
         (group_id, id_millis, id_seq, author_id, send_time_ms, text) ",
    );
    insert.push_values(rows, |mut b, row| {
        b.push_bind(row.0)
            .push_bind(row.1)
            .push_bind(row.2)
            .push_bind(row.3)
            .push_bind(row.4)
            .push_bind(row.5);
    });
    insert
}

fn message_from_row(group: &GroupId, row: &SqliteRow) -> Result<Message, BackendError> {
    let get_i64 = |column: &str| row.try_get::<i64, _>(column).map_err(|e| error("read", e));
    let author: String = row.try_get("author_id").map_err(|e| error("read", e))?;
    let text: String = row.try_get("text").map_err(|e| error("read", e))?;
    Ok(Message {
        id: MessageId::new(to_u64(get_i64("id_millis")?, "id")?, to_u64(get_i64("id_seq")?, "id")?),
        author: UserId::from_trusted(&author),
        group: group.clone(),
        send_time: time_of(to_u64(get_i64("send_time_ms")?, "send time")?),
        text: MessageText::from_trusted(&text),
    })
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, e.g. `sqlite://chat.db`
    /// or `sqlite::memory:`, and applies the embedded migrations.
    pub async fn open(url: &str) -> Result<SqliteStore, BackendError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| error(&format!("bad database url '{url}'"), e))?
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            // WAL with NORMAL is durable across a process crash; only an OS
            // crash can lose the last transactions, which is the usual trade.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        // Each connection to an in-memory database is a database of its own, so
        // that case gets exactly one connection, kept forever.
        let pool_options = if in_memory {
            SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        };
        let pool = pool_options
            .connect_with(options.clone())
            .await
            .map_err(|e| error(&format!("cannot open '{url}'"), e))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| error("cannot apply migrations", e))?;
        let writer = if in_memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .connect_with(options)
                .await
                .map_err(|e| error(&format!("cannot open '{url}'"), e))?
        };
        Ok(SqliteStore { pool, writer })
    }

    /// The highest message id of any group, the floor for new ids after a restart.
    pub async fn latest_id(&self) -> Result<Option<MessageId>, BackendError> {
        let row = sqlx::query(
            "SELECT id_millis, id_seq FROM messages ORDER BY id_millis DESC, id_seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| error("read latest id", e))?;
        let Some(row) = row else { return Ok(None) };
        let millis: i64 = row.try_get("id_millis").map_err(|e| error("read", e))?;
        let seq: i64 = row.try_get("id_seq").map_err(|e| error("read", e))?;
        Ok(Some(MessageId::new(to_u64(millis, "id")?, to_u64(seq, "id")?)))
    }

    pub async fn create_group(&self, group: &GroupId) -> Result<(), BackendError> {
        sqlx::query("INSERT OR IGNORE INTO chat_groups (group_id) VALUES (?)")
            .bind(group.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| error("create group", e))?;
        Ok(())
    }

    pub async fn group_count(&self) -> Result<usize, BackendError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chat_groups")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| error("count groups", e))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    pub async fn group_exists(&self, group: &GroupId) -> Result<bool, BackendError> {
        let row = sqlx::query("SELECT 1 FROM chat_groups WHERE group_id = ?")
            .bind(group.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| error("read group", e))?;
        Ok(row.is_some())
    }

    /// Groups after `after` in code-point order, at most `limit`.
    pub async fn list_groups(
        &self,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<GroupId>, BackendError> {
        let limit = to_i64(limit as u64, "limit")?;
        let query = match after {
            Some(after) => sqlx::query(
                "SELECT group_id FROM chat_groups WHERE group_id > ? ORDER BY group_id LIMIT ?",
            )
            .bind(after.as_str()),
            None => sqlx::query("SELECT group_id FROM chat_groups ORDER BY group_id LIMIT ?"),
        };
        let rows =
            query.bind(limit).fetch_all(&self.pool).await.map_err(|e| error("list groups", e))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("group_id").map_err(|e| error("read", e))?;
                Ok(GroupId::from_trusted(&id))
            })
            .collect()
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), BackendError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(|e| error("check", e))?;
        Ok(())
    }

    /// Closes the pool (at shutdown, after the last write).
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(messages.len());
        for m in messages {
            rows.push((
                m.group.as_str(),
                to_i64(m.id.millis, "id")?,
                to_i64(m.id.seq, "id")?,
                m.author.as_str(),
                to_i64(millis_of(m.send_time), "send time")?,
                m.text.as_str(),
            ));
        }
        if rows.len() <= ROWS_PER_INSERT {
            // One statement is its own transaction, all or nothing: no BEGIN and
            // COMMIT round trips to the connection's thread.
            insert_rows(&rows)
                .build()
                .execute(&self.writer)
                .await
                .map_err(|e| error("append", e))?;
            return Ok(());
        }
        // One transaction for the batch: one fsync, and all or nothing.
        let mut tx = self.writer.begin().await.map_err(|e| error("append", e))?;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            insert_rows(chunk).build().execute(&mut *tx).await.map_err(|e| error("append", e))?;
        }
        tx.commit().await.map_err(|e| error("append", e))?;
        Ok(())
    }

    async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let limit = to_i64(limit as u64, "limit")?;
        const COLUMNS: &str =
            "SELECT id_millis, id_seq, author_id, send_time_ms, text FROM messages";
        // A row-value comparison keeps this one range scan of the primary key.
        let rows = match before {
            Some(before) => {
                sqlx::query(&format!(
                    "{COLUMNS} WHERE group_id = ? AND (id_millis, id_seq) < (?, ?) \
                     ORDER BY id_millis DESC, id_seq DESC LIMIT ?"
                ))
                .bind(group.as_str())
                .bind(to_i64(before.millis, "id")?)
                .bind(to_i64(before.seq, "id")?)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(&format!(
                    "{COLUMNS} WHERE group_id = ? ORDER BY id_millis DESC, id_seq DESC LIMIT ?"
                ))
                .bind(group.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(|e| error("read history", e))?;
        let mut messages =
            rows.iter().map(|row| message_from_row(group, row)).collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError> {
        let row = sqlx::query(
            "SELECT 1 FROM messages WHERE group_id = ? AND id_millis = ? AND id_seq = ?",
        )
        .bind(group.as_str())
        .bind(to_i64(id.millis, "id")?)
        .bind(to_i64(id.seq, "id")?)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| error("read history", e))?;
        Ok(row.is_some())
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.ping().await
    }
}
