//! The history database and the history writer's bounds.

use std::path::PathBuf;
use std::time::Duration;

use next_chat_core::HistoryWriterConfig;

use super::{ConfigError, Values, bad};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    MySql(String),
}

impl Database {
    fn parse(url: &str) -> Result<Database, ConfigError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad(
                    "database",
                    "sqlite:// needs a file path, e.g. sqlite://next-chat.db",
                ));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let rest = &url["mysql://".len()..];
            let has_name = rest.split_once('/').is_some_and(|(_, name)| !name.is_empty());
            if !has_name {
                return Err(bad(
                    "database",
                    "a mysql:// URL needs a database name: mysql://USER:PASS@HOST:3306/NAME",
                ));
            }
            next_chat_storage::check_mysql_url(&url).map_err(|error| {
                bad("database", format!("'{}' is not a valid URL: {error}", redact_url(&url)))
            })?;
            return Ok(Database::MySql(url));
        }
        Err(bad("database", format!("'{}' must start with sqlite:// or mysql://", redact_url(url))))
    }

    /// The URL with any password hidden, for logs.
    pub fn redacted(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite://{}", path.display()),
            Database::MySql(url) => redact_url(url),
        }
    }
}

/// Hides the password of `scheme://user:password@host`.
pub use next_chat_storage::redact_url;

pub(super) fn database(v: &Values) -> Result<Database, ConfigError> {
    let database = Database::parse(&v.database)?;
    if v.redis.is_none() && matches!(database, Database::MySql(_)) {
        // MySQL history with in-process fan-out is a valid single-instance setup.
        tracing::debug!("mysql history without redis: one instance");
    }
    Ok(database)
}

/// The embedded database is this process's own, so it migrates itself by
/// default; a shared MySQL is migrated once, by the `migrate` subcommand.
pub(super) fn migrate(v: &Values, database: &Database) -> bool {
    v.migrate.unwrap_or(matches!(database, Database::Sqlite(_)))
}

pub(super) fn history_writer(v: &Values) -> HistoryWriterConfig {
    HistoryWriterConfig {
        save_timeout: Duration::from_millis(v.save_timeout_ms),
        batch_interval: Duration::from_millis(v.history_batch_ms),
        unsaved_max_bytes: v.history_unsaved_max_bytes,
        ..HistoryWriterConfig::default()
    }
}
