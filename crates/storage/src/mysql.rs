//! History in MySQL/MariaDB for the scale-out mode.
//!
//! The schema is embedded in the binary (`migrations/mysql`) and applied by
//! `migrate` (the server's `migrate` subcommand) or by `MySqlHistory::connect`
//! when asked. Appends are batched multi-row inserts that skip rows whose key
//! `(group_id, id_millis, id_seq)` exists, so a retried batch never writes twice;
//! reads are range scans of that primary key. `group_id` uses utf8mb4_bin, so
//! comparisons are case-sensitive and ordinal. Every query has a deadline, so a
//! database that went away fails requests quickly instead of hanging them.
//!
//! Each INSERT is bounded in bytes as well as rows, against the server's
//! `max_allowed_packet` read at connect (see `statement_max_bytes`): a batch of
//! long messages becomes several statements in one transaction rather than one
//! packet the server refuses every time. Errors say whether the database refused
//! the statement on its merits (`BackendError::refused`, see `refuses_on_merits`)
//! or failed for a passing reason, so the history writer knows what to retry.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use next_chat_core::backend::rows_within;
use next_chat_core::{
    BackendError, GroupId, HistoryStore, Message, MessageId, MessageText, UserId,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Connection, MySql, QueryBuilder, Row};

use crate::backend_url::redact_in;
use crate::clock::{millis_of, time_of};
use crate::health::Health;
use crate::reconcile::ExistingMessages;
use crate::split;

const BACKEND: &str = "mysql";

/// Rows per INSERT at most: 6 parameters each stays far below MySQL's 65535.
const ROWS_PER_INSERT: usize = 500;

/// The longest one query (or waiting for a pooled connection) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections for appends: the history writer stores one batch at a time,
/// and the reconciler copies what it finds missing.
const WRITE_CONNECTIONS: u32 = 4;

/// Connections for history reads, apart from the writer's: reads wait for one
/// of these (at most `ACQUIRE_TIMEOUT`), never for the writer's.
const READ_CONNECTIONS: u32 = 8;

/// The most bytes one INSERT may take, as `row_size` counts them, however large
/// the server's packet limit.
const STATEMENT_MAX_BYTES_CAP: usize = 8 * 1024 * 1024;

/// What the INSERT's own text and the packet header add to its rows.
const INSERT_OVERHEAD: usize = 256;

fn error(context: &str, error: impl std::fmt::Display) -> BackendError {
    BackendError::new(BACKEND, format!("{context}: {error}"))
}

/// Whether MySQL/MariaDB refused a statement on its merits, so that sending it
/// again cannot succeed: a value too long, out of range or not valid in its
/// column (SQLSTATE class 22), a key or constraint (class 23), a packet over
/// `max_allowed_packet`. Everything else (a lost connection, the server gone or
/// shutting down, a lock wait timeout, a deadlock, read-only or locked tables,
/// too many connections) passes, and so does any error not known here: retrying
/// an error that would have passed costs time, setting aside a message that a
/// retry would have stored loses it.
pub fn refuses_on_merits(number: u16, sqlstate: Option<&str>) -> bool {
    const PACKET_TOO_LARGE: u16 = 1153;
    const VALUE_OVER_PACKET: u16 = 1301;
    matches!(number, PACKET_TOO_LARGE | VALUE_OVER_PACKET)
        || sqlstate.is_some_and(|state| state.starts_with("22") || state.starts_with("23"))
}

/// `error` as a `BackendError` that says whether it was a refusal.
fn classified(context: &str, error: sqlx::Error) -> BackendError {
    crate::sql_error::classified(BACKEND, context, error, |database| {
        database
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| refuses_on_merits(e.number(), e.code()))
    })
}

/// An upper bound on the bytes one row adds to an INSERT: the row as the
/// statement would read with its values written out as literals and every
/// string byte escaped (two bytes each, the worst case), quotes, 20 digits per
/// number and separators. The binary protocol sends less (each string once,
/// with a length); a statement-format binary log or the general log writes the
/// literal form, which is why that is what is counted.
fn row_size(message: &Message) -> usize {
    let strings =
        message.group.as_str().len() + message.author.as_str().len() + message.text.as_str().len();
    2 * strings + 3 * 2 + 3 * 20 + 16
}

/// The most bytes one INSERT may take: half of the server's
/// `max_allowed_packet`, at most `STATEMENT_MAX_BYTES_CAP`. `row_size` already
/// counts the worst case for escaping; the other half is margin for what it
/// does not see (packet and event headers, a replica whose packet limit is
/// lower, the limit being lowered after it was read). The cap keeps one
/// statement's memory and lock time modest where the limit is 1 GiB.
pub fn statement_max_bytes(max_allowed_packet: u64) -> usize {
    usize::try_from(max_allowed_packet / 2).unwrap_or(usize::MAX).min(STATEMENT_MAX_BYTES_CAP)
}

fn options(url: &str) -> Result<MySqlConnectOptions, BackendError> {
    MySqlConnectOptions::from_str(url)
        .map_err(|e| error("bad database url", redact_in(&e.to_string(), url)))
}

/// Creates the database named in `url` if it is missing, and applies the
/// embedded migrations to it.
pub async fn migrate(url: &str) -> Result<(), BackendError> {
    let options = options(url)?;
    let database = options
        .get_database()
        .ok_or_else(|| error("bad database url", "it names no database"))?
        .to_string();
    // Connect to a database that always exists to create ours.
    let mut admin = options
        .clone()
        .database("information_schema")
        .connect()
        .await
        .map_err(|e| error("cannot connect", redact_in(&e.to_string(), url)))?;
    let quoted = database.replace('`', "``");
    sqlx::query(&format!(
        "CREATE DATABASE IF NOT EXISTS `{quoted}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))
    .execute(&mut admin)
    .await
    .map_err(|e| error("cannot create database", e))?;
    let _ = admin.close().await;
    // A one-connection pool rather than a bare connection: running the
    // migrator on `&mut MySqlConnection` makes a future that is not `Send`.
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| error("cannot connect", redact_in(&e.to_string(), url)))?;
    let applied = sqlx::migrate!("./migrations/mysql").run(&pool).await;
    pool.close().await;
    applied.map_err(|e| error("cannot apply migrations", e))?;
    Ok(())
}

/// How long a connection given back to its pool may take to answer a ping
/// before it is closed instead of kept.
const RELEASE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A pool of `max` connections whose every connection answers a ping within
/// `RELEASE_PING_TIMEOUT` when given back, or is closed. sqlx pings a
/// connection given back (one whose query `QUERY_TIMEOUT` cut off among
/// them) with no deadline of its own: on a connection whose peer went silent
/// (half-open: a dead NAT entry, a hung proxy) that ping waits for good and
/// the connection keeps its place in the pool, until every place is taken and
/// the history writer waits for a connection forever.
fn pool_options(max: u32) -> MySqlPoolOptions {
    MySqlPoolOptions::new().max_connections(max).acquire_timeout(ACQUIRE_TIMEOUT).after_release(
        |connection, _| {
            Box::pin(async move {
                use sqlx::Connection;
                let answered = tokio::time::timeout(RELEASE_PING_TIMEOUT, connection.ping()).await;
                Ok(matches!(answered, Ok(Ok(()))))
            })
        },
    )
}

/// One history row as bound: group, id millis, id sequence, author, send time, text.
pub(crate) type HistoryRow<'a> = (&'a str, u64, u64, &'a str, i64, &'a str);

/// One multi-row INSERT of `rows` that skips rows whose key exists: a no-op
/// update rather than INSERT IGNORE, which would also turn real errors (a value
/// too long) into warnings and lose the row.
pub(crate) fn insert_rows<'a>(rows: &'a [HistoryRow<'a>]) -> QueryBuilder<'a, MySql> {
    let mut insert: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO messages (group_id, id_millis, id_seq, author_id, send_time_ms, text) ",
    );
    insert.push_values(rows, |mut b, row| {
        b.push_bind(row.0)
            .push_bind(row.1)
            .push_bind(row.2)
            .push_bind(row.3)
            .push_bind(row.4)
            .push_bind(row.5);
    });
    insert.push(" ON DUPLICATE KEY UPDATE id_seq = id_seq");
    insert
}

pub struct MySqlHistory {
    /// For appends (the history writer's batches, the reconciler's copies).
    pool: MySqlPool,
    /// For reads: a pool of their own, so that many clients reading history
    /// never keep the history writer waiting for a connection.
    readers: MySqlPool,
    health: Health,
    /// See `statement_max_bytes`.
    statement_max_bytes: usize,
}

/// A text column. sqlx reports utf8mb4_bin columns as binary, so they are
/// read as bytes and checked to be UTF-8.
fn text_column(row: &MySqlRow, column: &str) -> Result<String, BackendError> {
    let bytes: Vec<u8> = row.try_get(column).map_err(|e| error("read", e))?;
    String::from_utf8(bytes).map_err(|e| error("read", format!("{column} is not UTF-8: {e}")))
}

fn message_from_row(group: &GroupId, row: &MySqlRow) -> Result<Message, BackendError> {
    let read = |e| error("read", e);
    let millis: u64 = row.try_get("id_millis").map_err(read)?;
    let seq: u64 = row.try_get("id_seq").map_err(read)?;
    let author = text_column(row, "author_id")?;
    let send_time: i64 = row.try_get("send_time_ms").map_err(read)?;
    let text = text_column(row, "text")?;
    Ok(Message {
        id: MessageId::new(millis, seq),
        author: UserId::from_trusted(&author),
        group: group.clone(),
        send_time: time_of(u64::try_from(send_time).unwrap_or(0)),
        text: MessageText::from_trusted(&text),
    })
}

impl MySqlHistory {
    /// Connects to the database in `url` (e.g. `mysql://root@127.0.0.1:3306/chat`),
    /// first applying the migrations if `migrate` is set.
    pub async fn connect(url: &str, migrate: bool) -> Result<MySqlHistory, BackendError> {
        if migrate {
            self::migrate(url).await?;
        }
        let pool = pool_options(WRITE_CONNECTIONS)
            .connect_with(options(url)?)
            .await
            .map_err(|e| error("cannot connect", redact_in(&e.to_string(), url)))?;
        let readers = pool_options(READ_CONNECTIONS).connect_lazy_with(options(url)?);
        let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
            .fetch_one(&pool)
            .await
            .map_err(|e| error("cannot read max_allowed_packet", e))?;
        let statement_max_bytes = statement_max_bytes(packet);
        tracing::debug!(max_allowed_packet = packet, statement_max_bytes, "mysql history");
        Ok(MySqlHistory {
            pool,
            readers,
            health: Health::new("mysql history"),
            statement_max_bytes,
        })
    }

    /// The most bytes one INSERT takes (see `statement_max_bytes`).
    pub fn statement_bytes(&self) -> usize {
        self.statement_max_bytes
    }

    /// Closes the pool (at shutdown, after the last write).
    pub async fn close(&self) {
        self.readers.close().await;
        self.pool.close().await;
    }

    /// Runs a query with the deadline and records the database's health.
    async fn timed<T>(
        &self,
        what: &str,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, BackendError> {
        let result = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classified(what, e)),
            Err(_) => Err(error(what, format!("no answer within {QUERY_TIMEOUT:?}"))),
        };
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(e) => self.health.failed(&e.detail),
        }
        result
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

impl MySqlHistory {
    /// Up to `limit` rows of `columns` of the group's messages in `page`, in
    /// the order the page reads them, from the read pool.
    async fn page_rows(
        &self,
        columns: &str,
        group: &GroupId,
        page: Page,
        limit: usize,
    ) -> Result<Vec<MySqlRow>, BackendError> {
        // Spelled out rather than as a row comparison, which MySQL does not
        // turn into a range scan of the primary key.
        let (range, order, bound) = match page {
            Page::Before(None) => ("", "DESC", None),
            Page::Before(Some(id)) => {
                ("AND (id_millis < ? OR (id_millis = ? AND id_seq < ?))", "DESC", Some(id))
            }
            Page::After(id) => {
                ("AND (id_millis > ? OR (id_millis = ? AND id_seq > ?))", "", Some(id))
            }
        };
        let sql = format!(
            "SELECT {columns} FROM messages WHERE group_id = ? {range} \
             ORDER BY id_millis {order}, id_seq {order} LIMIT ?"
        );
        let mut query = sqlx::query(&sql).bind(group.as_str());
        if let Some(id) = bound {
            query = query.bind(id.millis).bind(id.millis).bind(id.seq);
        }
        self.timed("read history", query.bind(limit as u64).fetch_all(&self.readers)).await
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
    /// their lengths first, then only the rows that fit, so a page of long
    /// messages never carries `limit` texts over the network.
    async fn page_within(
        &self,
        group: &GroupId,
        page: Page,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let rows = self.page_rows("LENGTH(text) AS bytes", group, page, limit).await?;
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
impl HistoryStore for MySqlHistory {
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError> {
        if messages.is_empty() {
            return Ok(());
        }
        let max_bytes = self.statement_max_bytes.saturating_sub(INSERT_OVERHEAD);
        let sizes: Vec<usize> = messages.iter().map(row_size).collect();
        if let Some(at) = sizes.iter().position(|&size| size > max_bytes) {
            // Refused here rather than by the server, which would also drop the
            // connection: no statement can carry this message.
            return Err(BackendError::refused(
                BACKEND,
                format!(
                    "append: message {} takes up to {} bytes in an INSERT, more than the {} \
                     allowed (half of max_allowed_packet)",
                    messages[at].id, sizes[at], max_bytes
                ),
            ));
        }
        let statements = split::by_size(sizes, ROWS_PER_INSERT, max_bytes);
        let write = async {
            let mut tx = self.pool.begin().await?;
            for range in statements {
                let rows: Vec<HistoryRow> = messages[range]
                    .iter()
                    .map(|m| {
                        (
                            m.group.as_str(),
                            m.id.millis,
                            m.id.seq,
                            m.author.as_str(),
                            millis_of(m.send_time) as i64,
                            m.text.as_str(),
                        )
                    })
                    .collect();
                insert_rows(&rows).build().execute(&mut *tx).await?;
            }
            tx.commit().await
        };
        self.timed("append", write).await
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
        let query = sqlx::query(
            "SELECT 1 FROM messages WHERE group_id = ? AND id_millis = ? AND id_seq = ?",
        )
        .bind(group.as_str())
        .bind(id.millis)
        .bind(id.seq)
        .fetch_optional(&self.readers);
        Ok(self.timed("read history", query).await?.is_some())
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.timed("check", sqlx::query("SELECT 1").execute(&self.pool)).await?;
        Ok(())
    }
}

#[async_trait]
impl ExistingMessages for MySqlHistory {
    async fn existing(
        &self,
        keys: &[(GroupId, MessageId)],
    ) -> Result<HashSet<(GroupId, MessageId)>, BackendError> {
        let mut found = HashSet::new();
        // Bounded in bytes like the INSERTs: a key is at most two ids and a group id.
        let sizes = keys.iter().map(|(group, _)| 2 * group.as_str().len() + 2 * 20 + 8);
        let max_bytes = self.statement_max_bytes.saturating_sub(INSERT_OVERHEAD);
        for range in split::by_size(sizes, ROWS_PER_INSERT, max_bytes) {
            let chunk = &keys[range];
            let mut select: QueryBuilder<MySql> = QueryBuilder::new(
                "SELECT group_id, id_millis, id_seq FROM messages \
                 WHERE (group_id, id_millis, id_seq) IN ",
            );
            select.push_tuples(chunk, |mut b, (group, id)| {
                b.push_bind(group.as_str()).push_bind(id.millis).push_bind(id.seq);
            });
            let rows = self.timed("look up messages", select.build().fetch_all(&self.pool)).await?;
            for row in rows {
                let read = |e| error("read", e);
                let group = text_column(&row, "group_id")?;
                let millis: u64 = row.try_get("id_millis").map_err(read)?;
                let seq: u64 = row.try_get("id_seq").map_err(read)?;
                found.insert((GroupId::from_trusted(&group), MessageId::new(millis, seq)));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::{refuses_on_merits, statement_max_bytes};

    #[test]
    fn data_constraint_and_size_errors_are_refusals() {
        // (number, SQLSTATE) as MariaDB reports them.
        let refusals = [
            (1406, "22001"), // data too long for column
            (1366, "22007"), // incorrect string value
            (1264, "22003"), // out of range value
            (1048, "23000"), // column cannot be null
            (1062, "23000"), // duplicate entry
            (4025, "23000"), // CHECK constraint failed
            (1153, "08S01"), // got a packet bigger than max_allowed_packet
            (1301, "HY000"), // result of a value larger than max_allowed_packet
        ];
        for (number, state) in refusals {
            assert!(refuses_on_merits(number, Some(state)), "{number} {state}");
        }
    }

    #[test]
    fn connection_lock_and_read_only_errors_pass() {
        let passing = [
            (1205, "HY000"), // lock wait timeout exceeded
            (1213, "40001"), // deadlock found
            (1290, "HY000"), // running with --read-only
            (1036, "HY000"), // table is read only
            (1099, "HY000"), // table was locked with a READ lock
            (1223, "HY000"), // cannot execute while holding a global read lock
            (1040, "08004"), // too many connections
            (1053, "08S01"), // server shutdown in progress
            (1927, "70100"), // connection was killed
            (2006, "HY000"), // server has gone away
            (2013, "HY000"), // lost connection during query
            (1146, "42S02"), // table does not exist (not migrated yet)
        ];
        for (number, state) in passing {
            assert!(!refuses_on_merits(number, Some(state)), "{number} {state}");
        }
        assert!(!refuses_on_merits(9999, None), "an unknown error passes");
    }

    #[test]
    fn statements_take_half_the_packet_limit_at_most_8_mib() {
        assert_eq!(statement_max_bytes(16 * 1024 * 1024), 8 * 1024 * 1024);
        assert_eq!(statement_max_bytes(4 * 1024 * 1024), 2 * 1024 * 1024);
        assert_eq!(statement_max_bytes(1024 * 1024 * 1024), 8 * 1024 * 1024);
    }
}
