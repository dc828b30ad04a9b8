//! Groups and history in one SQLite file, for the embedded mode.
//!
//! `SqliteStore::open` creates the file if it is missing, switches it to WAL (so
//! history reads do not wait for the history writer) and applies the migrations
//! embedded in the binary. Every read uses the primary key: a group's messages
//! are one range of `(group_id, id_millis, id_seq)`. Text columns use SQLite's
//! BINARY collation, which orders UTF-8 by code point and is case-sensitive.
//!
//! Appends are bounded per statement in bytes as well as rows (`STATEMENT_MAX_BYTES`),
//! and their errors say whether SQLite refused the rows on their merits
//! (`BackendError::refused`, see `refuses_on_merits`) or failed for a passing
//! reason (busy, locked, disk full), so the history writer knows what to retry.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use next_chat_core::backend::rows_within;
use next_chat_core::{
    BackendError, GroupId, HistoryStore, Message, MessageId, MessageText, UserId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::clock::{millis_of, time_of};
use crate::split;

const BACKEND: &str = "sqlite";

/// Rows per INSERT statement: 6 parameters each stays far below SQLite's limit
/// of 32766 bound parameters.
const ROWS_PER_INSERT: usize = 500;

/// Most bytes of bound values in one INSERT. SQLite has no packet to fit in:
/// its own limits are 1e9 bytes per value and per row (`SQLITE_MAX_LENGTH`, far
/// above a message), and bound values do not count towards its SQL length limit.
/// The bound keeps one statement's copies of a batch of long messages small, as
/// for MySQL; at 4 MiB it still holds 60 rows of the longest messages.
const STATEMENT_MAX_BYTES: usize = 4 * 1024 * 1024;

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

/// Whether SQLite refused a statement on its merits (by its extended result
/// code), so that running it again cannot succeed: a string or row too big
/// (SQLITE_TOOBIG), a constraint (SQLITE_CONSTRAINT and its extended codes), a
/// datatype mismatch (SQLITE_MISMATCH), a bound parameter out of range
/// (SQLITE_RANGE). Busy, locked, read-only, I/O errors and a full disk pass, and
/// so does anything not known here (see `mysql::refuses_on_merits`).
pub fn refuses_on_merits(extended_code: i32) -> bool {
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    const RANGE: i32 = 25;
    matches!(extended_code & 0xff, TOOBIG | CONSTRAINT | MISMATCH | RANGE)
}

/// `error` as a `BackendError` that says whether it was a refusal.
fn classified(context: &str, error: sqlx::Error) -> BackendError {
    crate::sql_error::classified(BACKEND, context, error, |database| {
        database.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(refuses_on_merits)
    })
}

/// SQLite integers are signed 64-bit; ids and times beyond that cannot be
/// stored, which no retry changes.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, BackendError> {
    i64::try_from(value).map_err(|_| {
        BackendError::refused(BACKEND, format!("{what}: {value} does not fit in SQLite"))
    })
}

fn to_u64(value: i64, what: &str) -> Result<u64, BackendError> {
    u64::try_from(value).map_err(|_| error(what, format!("stored value {value} is negative")))
}

/// One history row as bound: group, id millis, id sequence, author, send time, text.
pub(crate) type HistoryRow<'a> = (&'a str, i64, i64, &'a str, i64, &'a str);

/// One multi-row INSERT of `rows` (at most `ROWS_PER_INSERT` here; a bulk
/// load picks its own count, within SQLite's 32766 bound values).
pub(crate) fn insert_rows<'a>(rows: &'a [HistoryRow<'a>]) -> QueryBuilder<'a, Sqlite> {
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

    pub async fn create_group(
        &self,
        group: &GroupId,
        owner: Option<&UserId>,
    ) -> Result<(), BackendError> {
        sqlx::query("INSERT OR IGNORE INTO chat_groups (group_id, owner_id) VALUES (?, ?)")
            .bind(group.as_str())
            .bind(owner.map(UserId::as_str))
            .execute(&self.pool)
            .await
            .map_err(|e| error("create group", e))?;
        Ok(())
    }

    pub async fn groups_owned(&self, owner: &UserId) -> Result<usize, BackendError> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM chat_groups WHERE owner_id = ?")
                .bind(owner.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| error("count owned groups", e))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    pub async fn group_owner(&self, group: &GroupId) -> Result<Option<UserId>, BackendError> {
        let owner: Option<(Option<String>,)> =
            sqlx::query_as("SELECT owner_id FROM chat_groups WHERE group_id = ?")
                .bind(group.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| error("read group owner", e))?;
        Ok(owner.and_then(|(owner,)| owner).map(|owner| UserId::from_trusted(&owner)))
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

/// Which of a group's messages a history read pages through.
#[derive(Clone, Copy)]
enum Page {
    /// The newest below the id (of all if `None`), read newest first.
    Before(Option<MessageId>),
    /// The oldest above the id, read oldest first.
    After(MessageId),
}

impl SqliteStore {
    /// Up to `limit` rows of `columns` of the group's messages in `page`, in
    /// the order the page reads them. A row-value comparison keeps this one
    /// range scan of the primary key.
    async fn page_rows(
        &self,
        columns: &str,
        group: &GroupId,
        page: Page,
        limit: usize,
    ) -> Result<Vec<SqliteRow>, BackendError> {
        let limit = to_i64(limit as u64, "limit")?;
        let (range, order, bound) = match page {
            Page::Before(None) => ("", "DESC", None),
            Page::Before(Some(id)) => ("AND (id_millis, id_seq) < (?, ?)", "DESC", Some(id)),
            Page::After(id) => ("AND (id_millis, id_seq) > (?, ?)", "", Some(id)),
        };
        let sql = format!(
            "SELECT {columns} FROM messages WHERE group_id = ? {range} \
             ORDER BY id_millis {order}, id_seq {order} LIMIT ?"
        );
        let mut query = sqlx::query(&sql).bind(group.as_str());
        if let Some(id) = bound {
            query = query.bind(to_i64(id.millis, "id")?).bind(to_i64(id.seq, "id")?);
        }
        query.bind(limit).fetch_all(&self.pool).await.map_err(|e| error("read history", e))
    }

    /// The page's messages, oldest first.
    async fn page(
        &self,
        group: &GroupId,
        page: Page,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        const COLUMNS: &str = "id_millis, id_seq, author_id, send_time_ms, text";
        let rows = self.page_rows(COLUMNS, group, page, limit).await?;
        let mut messages =
            rows.iter().map(|row| message_from_row(group, row)).collect::<Result<Vec<_>, _>>()?;
        if let Page::Before(_) = page {
            messages.reverse();
        }
        Ok(messages)
    }

    /// The page's messages whose texts fit in `max_bytes` (at least one):
    /// their lengths first (`octet_length` reads a text's size from the
    /// record header, not the text), then only the rows that fit.
    async fn page_within(
        &self,
        group: &GroupId,
        page: Page,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let rows = self.page_rows("octet_length(text) AS bytes", group, page, limit).await?;
        let lengths = rows
            .iter()
            .map(|row| row.try_get::<i64, _>("bytes").map_err(|e| error("read", e)))
            .collect::<Result<Vec<i64>, _>>()?;
        let fit = rows_within(lengths.iter().map(|&n| usize::try_from(n).unwrap_or(0)), max_bytes);
        if fit == 0 {
            return Ok(Vec::new());
        }
        self.page(group, page, fit).await
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
        // Bound values: the three strings and three 8-byte integers.
        let sizes = rows.iter().map(|row| row.0.len() + row.3.len() + row.5.len() + 3 * 8);
        let statements = split::by_size(sizes, ROWS_PER_INSERT, STATEMENT_MAX_BYTES);
        if let [only] = statements.as_slice() {
            // One statement is its own transaction, all or nothing: no BEGIN and
            // COMMIT round trips to the connection's thread.
            insert_rows(&rows[only.clone()])
                .build()
                .execute(&self.writer)
                .await
                .map_err(|e| classified("append", e))?;
            return Ok(());
        }
        // One transaction for the batch: one fsync, and all or nothing.
        let mut tx = self.writer.begin().await.map_err(|e| classified("append", e))?;
        for range in statements {
            insert_rows(&rows[range])
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| classified("append", e))?;
        }
        tx.commit().await.map_err(|e| classified("append", e))?;
        Ok(())
    }

    async fn read(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.page(group, Page::Before(before), limit).await
    }

    async fn read_within(
        &self,
        group: &GroupId,
        before: Option<MessageId>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.page_within(group, Page::Before(before), limit, max_bytes).await
    }

    async fn read_after(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.page(group, Page::After(after), limit).await
    }

    async fn read_after_within(
        &self,
        group: &GroupId,
        after: MessageId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.page_within(group, Page::After(after), limit, max_bytes).await
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

#[cfg(test)]
mod tests {
    use super::refuses_on_merits;

    #[test]
    fn too_big_constraint_and_mismatch_are_refusals_busy_and_locked_pass() {
        // Extended result codes as sqlx reports them.
        for code in [18, 19, 1555, 2067, 275, 20, 25] {
            assert!(refuses_on_merits(code), "{code}");
        }
        // BUSY, BUSY_SNAPSHOT, LOCKED, READONLY, IOERR, IOERR_WRITE, FULL, CANTOPEN.
        for code in [5, 517, 6, 8, 10, 778, 13, 14] {
            assert!(!refuses_on_merits(code), "{code}");
        }
    }
}
