//! History in MySQL/MariaDB for the scale-out mode.
//!
//! The schema is embedded in the binary (`migrations/mysql`) and applied by
//! `migrate` (the server's `migrate` subcommand) or by `MySqlHistory::connect`
//! when asked. Appends are batched multi-row inserts that skip rows whose key
//! `(group_id, id_millis, id_seq)` exists, so a retried batch never writes twice;
//! reads are range scans of that primary key. `group_id` uses utf8mb4_bin, so
//! comparisons are case-sensitive and ordinal. Every query has a deadline, so a
//! database that went away fails requests quickly instead of hanging them.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use next_chat_core::{
    BackendError, GroupId, HistoryStore, Message, MessageId, MessageText, UserId,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Connection, MySql, QueryBuilder, Row};

use crate::clock::{millis_of, time_of};
use crate::health::Health;
use crate::reconcile::ExistingMessages;

const BACKEND: &str = "mysql";

/// Rows per INSERT: 6 parameters each stays far below MySQL's 65535.
const ROWS_PER_INSERT: usize = 500;

/// The longest one query (or waiting for a pooled connection) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

fn error(context: &str, error: impl std::fmt::Display) -> BackendError {
    BackendError::new(BACKEND, format!("{context}: {error}"))
}

fn options(url: &str) -> Result<MySqlConnectOptions, BackendError> {
    MySqlConnectOptions::from_str(url).map_err(|e| error("bad database url", e))
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
        .map_err(|e| error("cannot connect", e))?;
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
        .map_err(|e| error("cannot connect", e))?;
    let applied = sqlx::migrate!("./migrations/mysql").run(&pool).await;
    pool.close().await;
    applied.map_err(|e| error("cannot apply migrations", e))?;
    Ok(())
}

pub struct MySqlHistory {
    pool: MySqlPool,
    health: Health,
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
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options(url)?)
            .await
            .map_err(|e| error("cannot connect", e))?;
        Ok(MySqlHistory { pool, health: Health::new("mysql history") })
    }

    /// Closes the pool (at shutdown, after the last write).
    pub async fn close(&self) {
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
            Ok(Err(e)) => Err(error(what, e)),
            Err(_) => Err(error(what, format!("no answer within {QUERY_TIMEOUT:?}"))),
        };
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(e) => self.health.failed(&e.detail),
        }
        result
    }
}

#[async_trait]
impl HistoryStore for MySqlHistory {
    async fn append(&self, messages: &[Message]) -> Result<(), BackendError> {
        if messages.is_empty() {
            return Ok(());
        }
        let write = async {
            let mut tx = self.pool.begin().await?;
            for chunk in messages.chunks(ROWS_PER_INSERT) {
                let mut insert: QueryBuilder<MySql> = QueryBuilder::new(
                    "INSERT INTO messages \
                     (group_id, id_millis, id_seq, author_id, send_time_ms, text) ",
                );
                insert.push_values(chunk, |mut b, m| {
                    b.push_bind(m.group.as_str())
                        .push_bind(m.id.millis)
                        .push_bind(m.id.seq)
                        .push_bind(m.author.as_str())
                        .push_bind(millis_of(m.send_time) as i64)
                        .push_bind(m.text.as_str());
                });
                // A no-op update rather than INSERT IGNORE: IGNORE would also turn
                // real errors (a value too long) into warnings and lose the row.
                insert.push(" ON DUPLICATE KEY UPDATE id_seq = id_seq");
                insert.build().execute(&mut *tx).await?;
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
        const COLUMNS: &str =
            "SELECT id_millis, id_seq, author_id, send_time_ms, text FROM messages";
        let limit = limit as u64;
        let rows = match before {
            // Spelled out rather than as a row comparison, which MySQL does not
            // turn into a range scan of the primary key.
            Some(before) => {
                let sql = format!(
                    "{COLUMNS} WHERE group_id = ? AND (id_millis < ? OR (id_millis = ? AND id_seq < ?)) \
                     ORDER BY id_millis DESC, id_seq DESC LIMIT ?"
                );
                let query = sqlx::query(&sql)
                    .bind(group.as_str())
                    .bind(before.millis)
                    .bind(before.millis)
                    .bind(before.seq)
                    .bind(limit)
                    .fetch_all(&self.pool);
                self.timed("read history", query).await?
            }
            None => {
                let sql = format!(
                    "{COLUMNS} WHERE group_id = ? ORDER BY id_millis DESC, id_seq DESC LIMIT ?"
                );
                let query =
                    sqlx::query(&sql).bind(group.as_str()).bind(limit).fetch_all(&self.pool);
                self.timed("read history", query).await?
            }
        };
        let mut messages =
            rows.iter().map(|row| message_from_row(group, row)).collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    async fn contains(&self, group: &GroupId, id: MessageId) -> Result<bool, BackendError> {
        let query = sqlx::query(
            "SELECT 1 FROM messages WHERE group_id = ? AND id_millis = ? AND id_seq = ?",
        )
        .bind(group.as_str())
        .bind(id.millis)
        .bind(id.seq)
        .fetch_optional(&self.pool);
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
        for chunk in keys.chunks(ROWS_PER_INSERT) {
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
