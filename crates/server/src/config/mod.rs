//! Configuration: an optional YAML file, environment variables and flags, in
//! rising order of precedence. Every setting has one name in three spellings:
//! `foo_bar:` in the file, `NEXT_CHAT_FOO_BAR` in the environment and
//! `--foo-bar` on the command line. A bad value stops the server at start with
//! a message naming the setting.
//!
//! `schema.rs` declares every setting once (type, default, bounds, help);
//! `declare.rs` turns the declarations into `Settings`, `Values` and
//! `SETTINGS`; the other modules build the parts of `Config` by concern and
//! hold the rules that span settings.

mod auth;
pub(crate) mod declare;
mod limits;
mod listen;
mod reference;
mod scale_out;
mod schema;
mod storage;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::{Parser, Subcommand};
use next_chat_core::{ChatConfig, HistoryWriterConfig};

use crate::auth::AuthConfig;

pub use auth::TlsFiles;
pub use declare::{Bounds, DefaultValue, SettingInfo};
pub use reference::settings_reference;
pub use scale_out::{DEFAULT_STREAM_SHARDS, RedisSettings};
pub use schema::{SETTINGS, Settings, Values};
pub use storage::{Database, redact_url};

#[derive(Debug, Parser)]
#[command(
    name = "next-chat-server",
    version,
    about = "Next Chat: a SignalR chat hub at /next-chat"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the history database's schema migrations and exit (the Helm hook runs this).
    Migrate,
    /// Print an HS256 token this server accepts (needs --auth jwt and its secret);
    /// for trying things out and tests, not a replacement for an identity provider.
    MintToken {
        /// The user id (the jwt_user_claim claim).
        #[arg(long)]
        user: String,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        valid_for_secs: u64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {message}")]
pub struct ConfigError {
    /// The setting as the file spells it; the flag is `--` plus it with `-`.
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { key, message: message.into() }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: Database,
    pub redis: Option<RedisSettings>,
    pub migrate: bool,
    pub chat: ChatConfig,
    /// Whether `/` serves the web chat page.
    pub web_page: bool,
    pub max_message_size: usize,
    pub outbound_queue: usize,
    pub keep_alive: Duration,
    pub client_timeout: Duration,
    pub startup_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub outbound_queue_bytes: usize,
    pub max_queued_invocations: usize,
    pub max_queued_invocation_bytes: usize,
    pub invocations_per_second: u32,
    pub invocation_burst: u32,
    pub http_header_timeout: Duration,
    pub http_max_head_bytes: usize,
    /// `None`: derived from the open-file limit when the server starts.
    pub max_http_connections: Option<usize>,
    pub max_unauthenticated_connections_per_ip: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    /// `None`: no cap (behind a proxy every client has the proxy's address).
    pub max_connections_per_ip: Option<usize>,
    pub max_pending_negotiations: usize,
    pub max_pending_negotiations_per_user: usize,
    pub long_poll_max_response_bytes: usize,
    pub stateful_reconnect: bool,
    pub stateful_reconnect_buffer_bytes: usize,
    pub stateful_reconnect_window: Duration,
    /// The history writer's bounds (`history_unsaved_max_bytes`, `save_timeout_ms`).
    pub history: HistoryWriterConfig,
    /// See `RedisConfig::stream_max_bytes`; used only with `redis`.
    pub redis_stream_max_bytes: u64,
    /// `auth` and the `jwt_*` settings.
    pub auth: AuthConfig,
    /// `allow_remote_header_auth`: with `auth: header`, clients off loopback
    /// are answered too (else 403).
    pub allow_remote_header_auth: bool,
    /// `tls_cert` and `tls_key`: serve HTTPS and WSS.
    pub tls: Option<TlsFiles>,
}

impl Config {
    /// Reads the file the settings name (if any), lays the settings over it and
    /// validates the result.
    pub fn load(settings: &Settings) -> Result<Config, ConfigError> {
        let mut merged = match &settings.config {
            Some(path) => settings.over(&read_file(path)?),
            None => settings.clone(),
        };
        if merged.jwt_secret.is_none() {
            merged.jwt_secret = std::env::var("NEXT_CHAT_JWT_SECRET").ok();
        }
        Config::from_settings(&merged)
    }

    /// Applies the defaults, checks each setting's bounds, then the rules
    /// that span settings.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let v = s.values()?;
        let database = storage::database(&v)?;
        let (keep_alive, client_timeout) = listen::keep_alive_and_timeout(&v)?;
        Ok(Config {
            listen: listen::address(&v)?,
            migrate: storage::migrate(&v, &database),
            database,
            redis: scale_out::redis(&v)?,
            redis_stream_max_bytes: scale_out::stream_max_bytes(&v)?,
            chat: limits::chat(&v),
            history: storage::history_writer(&v),
            auth: auth::auth_config(s, &v)?,
            tls: auth::tls_files(&v)?,
            web_page: v.web_page,
            max_message_size: v.max_message_size,
            outbound_queue: v.outbound_queue,
            keep_alive,
            client_timeout,
            startup_timeout: Duration::from_secs(v.startup_timeout_secs),
            shutdown_timeout: Duration::from_secs(v.shutdown_timeout_secs),
            outbound_queue_bytes: v.outbound_queue_bytes,
            max_queued_invocations: v.max_queued_invocations,
            max_queued_invocation_bytes: v.max_queued_invocation_bytes,
            invocations_per_second: v.invocations_per_second,
            invocation_burst: v.invocation_burst,
            http_header_timeout: Duration::from_secs(v.http_header_timeout_secs),
            http_max_head_bytes: v.http_max_head_bytes,
            max_http_connections: v.max_http_connections,
            max_unauthenticated_connections_per_ip: v.max_unauthenticated_connections_per_ip,
            allow_remote_header_auth: v.allow_remote_header_auth,
            max_connections: v.max_connections,
            max_connections_per_user: v.max_connections_per_user,
            max_connections_per_ip: v.max_connections_per_ip,
            max_pending_negotiations: v.max_pending_negotiations,
            max_pending_negotiations_per_user: v.max_pending_negotiations_per_user,
            long_poll_max_response_bytes: v.long_poll_max_response_bytes,
            stateful_reconnect: v.stateful_reconnect,
            stateful_reconnect_buffer_bytes: v.stateful_reconnect_buffer_bytes,
            stateful_reconnect_window: Duration::from_secs(v.stateful_reconnect_window_secs),
        })
    }
}

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Ok(Settings::default());
    }
    yaml_serde::from_str(&text).map_err(|e| bad("config", format!("{}: {e}", path.display())))
}
