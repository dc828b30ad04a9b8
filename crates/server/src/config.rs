//! Configuration: an optional YAML file, environment variables and flags, in
//! rising order of precedence. Every setting has one name in three spellings:
//! `foo_bar:` in the file, `NEXT_CHAT_FOO_BAR` in the environment and
//! `--foo-bar` on the command line. A bad value stops the server at start with
//! a message naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use next_chat_core::{ChatConfig, HistoryWriterConfig, Limits, Rate};
use serde::Deserialize;

use crate::auth::{AuthConfig, JwksSource, JwtConfig, KeySource};

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

/// Every setting, optional: unset ones come from the file, then the defaults.
/// The same struct reads the flags (with their environment variables) and the
/// YAML file, so the three spellings cannot drift apart.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// YAML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "NEXT_CHAT_CONFIG", global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 0.0.0.0:5000]
    #[arg(long, env = "NEXT_CHAT_LISTEN", global = true, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// History database: sqlite://PATH (embedded) or mysql://USER:PASS@HOST:PORT/NAME
    /// [default: sqlite://next-chat.db]
    #[arg(long, env = "NEXT_CHAT_DATABASE", global = true, value_name = "URL")]
    pub database: Option<String>,

    /// Redis for messaging and membership across instances (redis://HOST:PORT);
    /// with redis_cluster, one or more seed nodes separated by commas; without
    /// it both stay in process
    #[arg(long, env = "NEXT_CHAT_REDIS", global = true, value_name = "URL")]
    pub redis: Option<String>,

    /// redis names seed nodes of a Redis Cluster [default: false]
    #[arg(long, env = "NEXT_CHAT_REDIS_CLUSTER", global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub redis_cluster: Option<bool>,

    /// Prefix of every Redis key, so deployments sharing a Redis stay apart [default: next-chat:]
    #[arg(long, env = "NEXT_CHAT_REDIS_KEY_PREFIX", global = true, value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,

    /// Number of Redis streams messages are sharded over; an instance reads only the shards of groups joined on it [default: 64]
    #[arg(long, env = "NEXT_CHAT_REDIS_STREAM_SHARDS", global = true, value_name = "N")]
    pub redis_stream_shards: Option<usize>,

    /// Most entries each Redis stream keeps [default: 100000]
    #[arg(long, env = "NEXT_CHAT_REDIS_STREAM_MAXLEN", global = true, value_name = "N")]
    pub redis_stream_maxlen: Option<usize>,

    /// How many of a Redis stream's newest entries GetMessagesAfter also reads, for messages other instances have not stored yet; 0 reads none, at most 10000 [default: 200]
    #[arg(long, env = "NEXT_CHAT_REDIS_RECENT_SCAN_ENTRIES", global = true, value_name = "N")]
    pub redis_recent_scan_entries: Option<usize>,

    /// Apply the database's migrations at start [default: true for sqlite://, false for mysql://]
    #[arg(long, env = "NEXT_CHAT_MIGRATE", global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub migrate: Option<bool>,

    /// Most distinct users in one group [default: 20]
    #[arg(long, env = "NEXT_CHAT_MAX_MEMBERS", global = true, value_name = "N")]
    pub max_members: Option<usize>,

    /// Messages sent as OnHistory on join [default: 100]
    #[arg(long, env = "NEXT_CHAT_HISTORY_ON_JOIN", global = true, value_name = "N")]
    pub history_on_join: Option<usize>,

    /// How long a send waits for history to store its message [default: 500]
    #[arg(long, env = "NEXT_CHAT_SAVE_TIMEOUT_MS", global = true, value_name = "MS")]
    pub save_timeout_ms: Option<u64>,

    /// At most one history write per this many ms under steady load; 0 writes
    /// each message at once [default: 5]
    #[arg(long, env = "NEXT_CHAT_HISTORY_BATCH_MS", global = true, value_name = "MS")]
    pub history_batch_ms: Option<u64>,

    /// JoinGroup creates a group that does not exist [default: true]
    #[arg(long, env = "NEXT_CHAT_AUTO_CREATE_GROUPS", global = true, value_name = "BOOL")]
    pub auto_create_groups: Option<bool>,

    /// SendMessage requires the connection to have joined the group [default: true]
    #[arg(long, env = "NEXT_CHAT_REQUIRE_JOIN_TO_SEND", global = true, value_name = "BOOL")]
    pub require_join_to_send: Option<bool>,

    /// Serve the web chat page at / [default: true]
    #[arg(long, env = "NEXT_CHAT_WEB_PAGE", global = true, value_name = "BOOL")]
    pub web_page: Option<bool>,

    /// Longest group id in characters [default: 64]
    #[arg(long, env = "NEXT_CHAT_MAX_GROUP_ID_CHARS", global = true, value_name = "N")]
    pub max_group_id_chars: Option<usize>,

    /// Longest message text in characters [default: 16384]
    #[arg(long, env = "NEXT_CHAT_MAX_TEXT_CHARS", global = true, value_name = "N")]
    pub max_text_chars: Option<usize>,

    /// Largest incoming hub message in bytes; a bigger one closes the connection [default: 131072]
    #[arg(long, env = "NEXT_CHAT_MAX_MESSAGE_SIZE", global = true, value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// Records queued for one connection before it counts as too slow and is closed [default: 4096]
    #[arg(long, env = "NEXT_CHAT_OUTBOUND_QUEUE", global = true, value_name = "N")]
    pub outbound_queue: Option<usize>,

    /// Seconds of silence after which the server sends a Ping [default: 15]
    #[arg(long, env = "NEXT_CHAT_KEEP_ALIVE_SECS", global = true, value_name = "SECS")]
    pub keep_alive_secs: Option<u64>,

    /// Seconds without a message from a client before it is disconnected [default: 30]
    #[arg(long, env = "NEXT_CHAT_CLIENT_TIMEOUT_SECS", global = true, value_name = "SECS")]
    pub client_timeout_secs: Option<u64>,

    /// Seconds to keep retrying unreachable backends at start before giving up [default: 30]
    #[arg(long, env = "NEXT_CHAT_STARTUP_TIMEOUT_SECS", global = true, value_name = "SECS")]
    pub startup_timeout_secs: Option<u64>,

    /// Seconds a graceful shutdown may take in all [default: 10]
    #[arg(long, env = "NEXT_CHAT_SHUTDOWN_TIMEOUT_SECS", global = true, value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Bytes queued for one connection before it counts as too slow and is closed [default: 4194304]
    #[arg(long, env = "NEXT_CHAT_OUTBOUND_QUEUE_BYTES", global = true, value_name = "BYTES")]
    pub outbound_queue_bytes: Option<usize>,

    /// Invocations queued on one connection while one runs, before it stops reading [default: 32]
    #[arg(long, env = "NEXT_CHAT_MAX_QUEUED_INVOCATIONS", global = true, value_name = "N")]
    pub max_queued_invocations: Option<usize>,

    /// Bytes of invocations queued on one connection before it stops reading [default: 1048576]
    #[arg(
        long,
        env = "NEXT_CHAT_MAX_QUEUED_INVOCATION_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub max_queued_invocation_bytes: Option<usize>,

    /// Invocations one connection may start per second on average [default: 2000]
    #[arg(long, env = "NEXT_CHAT_INVOCATIONS_PER_SECOND", global = true, value_name = "N")]
    pub invocations_per_second: Option<u32>,

    /// Invocations one connection may start at once after a quiet spell [default: 2000]
    #[arg(long, env = "NEXT_CHAT_INVOCATION_BURST", global = true, value_name = "N")]
    pub invocation_burst: Option<u32>,
    /// Seconds a client has to send a request head, from connecting or from the end
    /// of its previous response (so also the idle keep-alive time) [default: 10]
    #[arg(long, env = "NEXT_CHAT_HTTP_HEADER_TIMEOUT_SECS", global = true, value_name = "SECS")]
    pub http_header_timeout_secs: Option<u64>,

    /// Largest HTTP request head (request line and headers) in bytes; a bigger one gets 431 [default: 65536]
    #[arg(long, env = "NEXT_CHAT_HTTP_MAX_HEAD_BYTES", global = true, value_name = "BYTES")]
    pub http_max_head_bytes: Option<usize>,

    /// TCP connections open at once; beyond it a new one gets 503 and is closed
    /// [default: the open-file limit less 256]
    #[arg(long, env = "NEXT_CHAT_MAX_HTTP_CONNECTIONS", global = true, value_name = "N")]
    pub max_http_connections: Option<usize>,

    /// SignalR connections open at once; beyond it 503 [default: 200000]
    #[arg(long, env = "NEXT_CHAT_MAX_CONNECTIONS", global = true, value_name = "N")]
    pub max_connections: Option<usize>,

    /// SignalR connections one user may have open at once; beyond it 429 [default: 100]
    #[arg(long, env = "NEXT_CHAT_MAX_CONNECTIONS_PER_USER", global = true, value_name = "N")]
    pub max_connections_per_user: Option<usize>,

    /// SignalR connections from one client address at once; beyond it 429 [default: no cap]
    #[arg(long, env = "NEXT_CHAT_MAX_CONNECTIONS_PER_IP", global = true, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Negotiated connections not yet started by a transport request; beyond it 503 [default: 100000]
    #[arg(long, env = "NEXT_CHAT_MAX_PENDING_NEGOTIATIONS", global = true, value_name = "N")]
    pub max_pending_negotiations: Option<usize>,

    /// The same per user; beyond it 429 [default: 100]
    #[arg(
        long,
        env = "NEXT_CHAT_MAX_PENDING_NEGOTIATIONS_PER_USER",
        global = true,
        value_name = "N"
    )]
    pub max_pending_negotiations_per_user: Option<usize>,

    /// Most bytes of messages in one long-poll response (at least one message) [default: 1048576]
    #[arg(
        long,
        env = "NEXT_CHAT_LONG_POLL_MAX_RESPONSE_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub long_poll_max_response_bytes: Option<usize>,

    /// Offer SignalR stateful reconnect (WebSockets) to clients that ask for it [default: true]
    #[arg(long, env = "NEXT_CHAT_STATEFUL_RECONNECT", global = true, value_name = "BOOL")]
    pub stateful_reconnect: Option<bool>,
    /// Bytes of sent messages kept per connection until the client acknowledges them (stateful reconnect) [default: 100000]
    #[arg(
        long,
        env = "NEXT_CHAT_STATEFUL_RECONNECT_BUFFER_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub stateful_reconnect_buffer_bytes: Option<usize>,
    /// How long a connection whose socket dropped waits for the client to reconnect (stateful reconnect) [default: 45]
    #[arg(
        long,
        env = "NEXT_CHAT_STATEFUL_RECONNECT_WINDOW_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub stateful_reconnect_window_secs: Option<u64>,
    /// Most bytes of accepted messages waiting to be stored in history; beyond it
    /// SendMessage fails with "history is unavailable" [default: 268435456 (256 MiB)]
    #[arg(long, env = "NEXT_CHAT_HISTORY_UNSAVED_MAX_BYTES", global = true, value_name = "BYTES")]
    pub history_unsaved_max_bytes: Option<usize>,
    /// Most bytes the Redis streams may hold in all, split over the shards; the
    /// oldest entries are dropped to stay within it [default: 268435456 (256 MiB)]
    #[arg(long, env = "NEXT_CHAT_REDIS_STREAM_MAX_BYTES", global = true, value_name = "BYTES")]
    pub redis_stream_max_bytes: Option<u64>,
    /// Most bytes of messages in one OnHistory or GetHistory page; a page holds fewer messages rather than exceed it [default: 1048576]
    #[arg(long, env = "NEXT_CHAT_HISTORY_PAGE_MAX_BYTES", global = true, value_name = "BYTES")]
    pub history_page_max_bytes: Option<usize>,

    /// Most groups one connection may have joined at once [default: 100]
    #[arg(long, env = "NEXT_CHAT_MAX_GROUPS_PER_CONNECTION", global = true, value_name = "N")]
    pub max_groups_per_connection: Option<usize>,

    /// Most of one user's connections joined to one group, per instance [default: 10]
    #[arg(
        long,
        env = "NEXT_CHAT_MAX_CONNECTIONS_PER_USER_IN_GROUP",
        global = true,
        value_name = "N"
    )]
    pub max_connections_per_user_in_group: Option<usize>,

    /// SendMessage calls per second per user, per instance [default: 2000]
    #[arg(long, env = "NEXT_CHAT_USER_MESSAGES_PER_SECOND", global = true, value_name = "N")]
    pub user_messages_per_second: Option<u32>,

    /// SendMessage calls a user may make at once beyond the rate [default: twice the rate]
    #[arg(long, env = "NEXT_CHAT_USER_MESSAGES_BURST", global = true, value_name = "N")]
    pub user_messages_burst: Option<u32>,

    /// Groups one user may create per minute (also the burst), per instance [default: 60]
    #[arg(long, env = "NEXT_CHAT_GROUPS_CREATED_PER_MINUTE", global = true, value_name = "N")]
    pub groups_created_per_minute: Option<u32>,

    /// Most groups the server holds; creating another is refused [default: 100000]
    #[arg(long, env = "NEXT_CHAT_MAX_GROUPS", global = true, value_name = "N")]
    pub max_groups: Option<usize>,

    /// Bytes of history pages (OnHistory, GetHistory, GetMessagesAfter) one user may read per second, per instance [default: 1048576]
    #[arg(
        long,
        env = "NEXT_CHAT_HISTORY_READ_BYTES_PER_SECOND",
        global = true,
        value_name = "BYTES"
    )]
    pub history_read_bytes_per_second: Option<u32>,

    /// Bytes of history pages one user may read at once beyond the rate [default: 8388608]
    #[arg(long, env = "NEXT_CHAT_HISTORY_READ_BURST_BYTES", global = true, value_name = "BYTES")]
    pub history_read_burst_bytes: Option<u32>,

    /// History reads one user may have running at once, per instance [default: 2]
    #[arg(
        long,
        env = "NEXT_CHAT_HISTORY_READS_IN_FLIGHT_PER_USER",
        global = true,
        value_name = "N"
    )]
    pub history_reads_in_flight_per_user: Option<usize>,

    /// How a connection's user is known: `header` (the Authorization header or
    /// access_token is the user id; development only) or `jwt` (a signed JWT)
    /// [default: header]
    #[arg(long, env = "NEXT_CHAT_AUTH", global = true, value_name = "header|jwt")]
    pub auth: Option<String>,

    /// File holding the HS256 secret (at least 32 bytes); or set NEXT_CHAT_JWT_SECRET
    #[arg(long, env = "NEXT_CHAT_JWT_SECRET_FILE", global = true, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM file with the public key tokens are signed for (RS256, ES256, EdDSA, ...)
    #[arg(long, env = "NEXT_CHAT_JWT_PUBLIC_KEY", global = true, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// The identity provider's JWKS: a file, or an https:// URL fetched again
    /// periodically and when a token names an unknown kid
    #[arg(long, env = "NEXT_CHAT_JWKS", global = true, value_name = "FILE|URL")]
    pub jwks: Option<String>,

    /// The `iss` a token must carry [default: not checked]
    #[arg(long, env = "NEXT_CHAT_JWT_ISSUER", global = true, value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` a token must carry [default: not checked]
    #[arg(long, env = "NEXT_CHAT_JWT_AUDIENCE", global = true, value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Seconds of clock skew allowed on `exp` and `nbf` [default: 30]
    #[arg(long, env = "NEXT_CHAT_JWT_LEEWAY_SECS", global = true, value_name = "SECS")]
    pub jwt_leeway_secs: Option<u64>,

    /// The claim that holds the user id [default: sub]
    #[arg(long, env = "NEXT_CHAT_JWT_USER_CLAIM", global = true, value_name = "CLAIM")]
    pub jwt_user_claim: Option<String>,

    /// Seconds between fetches of a JWKS URL [default: 300]
    #[arg(long, env = "NEXT_CHAT_JWKS_REFRESH_SECS", global = true, value_name = "SECS")]
    pub jwks_refresh_secs: Option<u64>,

    /// Least seconds between two JWKS fetches, however many unknown kids arrive [default: 10]
    #[arg(long, env = "NEXT_CHAT_JWKS_MIN_REFETCH_SECS", global = true, value_name = "SECS")]
    pub jwks_min_refetch_secs: Option<u64>,

    /// PEM certificate chain: serve HTTPS and WSS (with --tls-key); re-read when it changes
    #[arg(long, env = "NEXT_CHAT_TLS_CERT", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert; re-read when it changes
    #[arg(long, env = "NEXT_CHAT_TLS_KEY", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The HS256 secret, from NEXT_CHAT_JWT_SECRET only: never a flag (`ps` shows
    /// flags) nor a file key.
    #[arg(skip)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,
}

/// Takes each setting from `$high` where set, else from `$low`.
macro_rules! overlay {
    ($high:expr, $low:expr, [$($field:ident),* $(,)?]) => {
        Settings {
            config: $high.config.clone(),
            jwt_secret: $high.jwt_secret.clone(),
            $($field: $high.$field.clone().or($low.$field.clone()),)* }
    };
}

impl Settings {
    /// These settings over `lower`'s.
    fn over(&self, lower: &Settings) -> Settings {
        overlay!(
            self,
            lower,
            [
                listen,
                database,
                redis,
                redis_cluster,
                redis_key_prefix,
                redis_stream_shards,
                redis_stream_maxlen,
                redis_recent_scan_entries,
                migrate,
                max_members,
                history_on_join,
                save_timeout_ms,
                history_batch_ms,
                auto_create_groups,
                require_join_to_send,
                web_page,
                max_group_id_chars,
                max_text_chars,
                max_message_size,
                outbound_queue,
                keep_alive_secs,
                client_timeout_secs,
                startup_timeout_secs,
                shutdown_timeout_secs,
                outbound_queue_bytes,
                max_queued_invocations,
                max_queued_invocation_bytes,
                invocations_per_second,
                invocation_burst,
                http_header_timeout_secs,
                http_max_head_bytes,
                max_http_connections,
                max_connections,
                max_connections_per_user,
                max_connections_per_ip,
                max_pending_negotiations,
                max_pending_negotiations_per_user,
                long_poll_max_response_bytes,
                stateful_reconnect,
                stateful_reconnect_buffer_bytes,
                stateful_reconnect_window_secs,
                history_unsaved_max_bytes,
                redis_stream_max_bytes,
                history_page_max_bytes,
                max_groups_per_connection,
                max_connections_per_user_in_group,
                user_messages_per_second,
                user_messages_burst,
                groups_created_per_minute,
                max_groups,
                history_read_bytes_per_second,
                history_read_burst_bytes,
                history_reads_in_flight_per_user,
                auth,
                jwt_secret_file,
                jwt_public_key,
                jwks,
                jwt_issuer,
                jwt_audience,
                jwt_leeway_secs,
                jwt_user_claim,
                jwks_refresh_secs,
                jwks_min_refetch_secs,
                tls_cert,
                tls_key,
            ]
        )
    }
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
            return Ok(Database::MySql(url));
        }
        Err(bad("database", format!("'{url}' must start with sqlite:// or mysql://")))
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
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        // A Redis Cluster's seed nodes.
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub cluster: bool,
    pub key_prefix: String,
    pub stream_shards: usize,
    pub stream_maxlen: usize,
    pub recent_scan_entries: usize,
}

/// Streams the groups are spread over by default. An instance reads only the
/// shards of groups joined on it, so more shards read less where instances
/// serve different groups; each shard costs its reader one more key per
/// XREAD and needs 1 MiB of `redis_stream_max_bytes` (256 MiB / 64 = 4 MiB).
pub const DEFAULT_STREAM_SHARDS: usize = 64;

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
    /// `tls_cert` and `tls_key`: serve HTTPS and WSS.
    pub tls: Option<TlsFiles>,
}

/// The certificate chain and private key the server serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The least HS256 secret: 256 bits, as RFC 7518 requires of an HS256 key.
const MIN_SECRET_BYTES: usize = 32;

fn auth_config(s: &Settings) -> Result<AuthConfig, ConfigError> {
    let jwt = match s.auth.as_deref().unwrap_or("header") {
        "header" => false,
        "jwt" => true,
        other => return Err(bad("auth", format!("'{other}' is not header or jwt"))),
    };
    if !jwt {
        let jwt_only = [
            ("jwt_secret_file", s.jwt_secret_file.is_some()),
            ("jwt_public_key", s.jwt_public_key.is_some()),
            ("jwks", s.jwks.is_some()),
            ("jwt_issuer", s.jwt_issuer.is_some()),
            ("jwt_audience", s.jwt_audience.is_some()),
            ("jwt_user_claim", s.jwt_user_claim.is_some()),
        ];
        if let Some((key, _)) = jwt_only.iter().find(|(_, set)| *set) {
            return Err(bad(key, "is set but auth is header: add --auth jwt"));
        }
        return Ok(AuthConfig::Header);
    }
    let secret = match (&s.jwt_secret, &s.jwt_secret_file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "jwt_secret_file",
                "NEXT_CHAT_JWT_SECRET is set too: give the secret one way",
            ));
        }
        (Some(secret), None) => Some(("NEXT_CHAT_JWT_SECRET", secret.as_bytes().to_vec())),
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|e| {
                bad("jwt_secret_file", format!("cannot read {}: {e}", path.display()))
            })?;
            // A file written by `echo` ends in a newline that is not part of the secret.
            let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
            Some(("jwt_secret_file", bytes[..end].to_vec()))
        }
        (None, None) => None,
    };
    if let Some((key, secret)) = &secret
        && secret.len() < MIN_SECRET_BYTES
    {
        return Err(bad(
            key,
            format!("the secret must be at least {MIN_SECRET_BYTES} bytes (256 bits)"),
        ));
    }
    let mut sources = Vec::new();
    if let Some((_, secret)) = secret {
        sources.push(("the secret", KeySource::Secret(secret)));
    }
    if let Some(path) = &s.jwt_public_key {
        sources.push(("jwt_public_key", KeySource::PublicKey(path.clone())));
    }
    if let Some(jwks) = &s.jwks {
        if jwks.is_empty() {
            return Err(bad("jwks", "must be a file or an https:// URL"));
        }
        sources.push(("jwks", KeySource::Jwks(JwksSource::parse(jwks))));
    }
    let keys = match sources.len() {
        0 => {
            return Err(bad(
                "auth",
                "jwt needs keys: NEXT_CHAT_JWT_SECRET, jwt_secret_file, jwt_public_key or jwks",
            ));
        }
        1 => sources.remove(0).1,
        _ => {
            let names: Vec<_> = sources.iter().map(|(name, _)| *name).collect();
            return Err(bad("auth", format!("give one kind of key, not {}", names.join(" and "))));
        }
    };
    let user_claim = s.jwt_user_claim.clone().unwrap_or_else(|| "sub".to_owned());
    if user_claim.is_empty() {
        return Err(bad("jwt_user_claim", "must name a claim"));
    }
    Ok(AuthConfig::Jwt(JwtConfig {
        keys,
        issuer: s.jwt_issuer.clone().filter(|issuer| !issuer.is_empty()),
        audience: s.jwt_audience.clone().filter(|audience| !audience.is_empty()),
        leeway: Duration::from_secs(match s.jwt_leeway_secs {
            Some(secs) if secs > 3600 => {
                return Err(bad("jwt_leeway_secs", "must be at most 3600"));
            }
            secs => secs.unwrap_or(30),
        }),
        user_claim,
        jwks_refresh: seconds("jwks_refresh_secs", s.jwks_refresh_secs, 300)?,
        jwks_min_refetch: seconds("jwks_min_refetch_secs", s.jwks_min_refetch_secs, 10)?,
    }))
}

fn tls_files(s: &Settings) -> Result<Option<TlsFiles>, ConfigError> {
    match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert: cert.clone(), key: key.clone() })),
        (Some(_), None) => Err(bad("tls_key", "is needed with tls_cert")),
        (None, Some(_)) => Err(bad("tls_cert", "is needed with tls_key")),
        (None, None) => Ok(None),
    }
}

/// The most stream entries one `GetMessagesAfter` may read from Redis: each
/// may be as large as a message (64 KiB of text at most), so this bounds the
/// call's cost there.
const RECENT_SCAN_ENTRIES_MAX: usize = 10_000;

fn positive(key: &'static str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(bad(key, "must be at least 1")),
        Some(n) => Ok(n),
    }
}

fn positive_u32(key: &'static str, value: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(bad(key, "must be at least 1")),
        Some(n) => Ok(n),
    }
}

fn seconds(key: &'static str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(Duration::from_secs(default)),
        Some(0) => Err(bad(key, "must be at least 1 second")),
        Some(n) => Ok(Duration::from_secs(n)),
    }
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

    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let listen_text = s.listen.as_deref().unwrap_or("0.0.0.0:5000");
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            bad("listen", format!("'{listen_text}' is not ADDR:PORT, e.g. 0.0.0.0:5000"))
        })?;
        let database = Database::parse(s.database.as_deref().unwrap_or("sqlite://next-chat.db"))?;
        let redis = match &s.redis {
            Some(url) => {
                let cluster = s.redis_cluster.unwrap_or(false);
                let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
                for node in &nodes {
                    if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                        return Err(bad(
                            "redis",
                            format!("'{}' must start with redis:// or rediss://", redact_url(node)),
                        ));
                    }
                }
                if nodes.len() > 1 && !cluster {
                    return Err(bad(
                        "redis",
                        "names several servers: that is a Redis Cluster's seed list; set redis_cluster",
                    ));
                }
                let key_prefix = s.redis_key_prefix.clone().unwrap_or_else(|| "next-chat:".into());
                if cluster && (key_prefix.contains('{') || key_prefix.contains('}')) {
                    return Err(bad(
                        "redis_key_prefix",
                        "must not contain '{' or '}' with redis_cluster (they make hash tags)",
                    ));
                }
                Some(RedisSettings {
                    url: nodes.join(","),
                    cluster,
                    key_prefix,
                    stream_shards: positive(
                        "redis_stream_shards",
                        s.redis_stream_shards,
                        DEFAULT_STREAM_SHARDS,
                    )?,
                    stream_maxlen: positive("redis_stream_maxlen", s.redis_stream_maxlen, 100_000)?,
                    recent_scan_entries: match s.redis_recent_scan_entries {
                        None => 200,
                        Some(n) if n <= RECENT_SCAN_ENTRIES_MAX => n,
                        Some(_) => {
                            return Err(bad(
                                "redis_recent_scan_entries",
                                format!("must be at most {RECENT_SCAN_ENTRIES_MAX}"),
                            ));
                        }
                    },
                })
            }
            None => None,
        };
        if redis.is_none() && matches!(database, Database::MySql(_)) {
            // MySQL history with in-process fan-out is a valid single-instance setup.
            tracing::debug!("mysql history without redis: one instance");
        }
        let limits = Limits {
            group_id_max_chars: positive("max_group_id_chars", s.max_group_id_chars, 64)?,
            text_max_chars: positive("max_text_chars", s.max_text_chars, 16384)?,
            ..Limits::default()
        };
        let chat = ChatConfig {
            limits,
            max_members: positive("max_members", s.max_members, 20)?,
            history_on_join: positive("history_on_join", s.history_on_join, 100)?,
            require_join_to_send: s.require_join_to_send.unwrap_or(true),
            auto_create_groups: s.auto_create_groups.unwrap_or(true),
            history_page_max_bytes: match s.history_page_max_bytes {
                Some(n) if n < 4096 => {
                    return Err(bad("history_page_max_bytes", "must be at least 4096"));
                }
                n => n.unwrap_or(1024 * 1024),
            },
            max_groups_per_connection: positive(
                "max_groups_per_connection",
                s.max_groups_per_connection,
                100,
            )?,
            max_connections_per_user_in_group: positive(
                "max_connections_per_user_in_group",
                s.max_connections_per_user_in_group,
                10,
            )?,
            user_messages: {
                let rate =
                    positive_u32("user_messages_per_second", s.user_messages_per_second, 2000)?;
                let burst = positive_u32(
                    "user_messages_burst",
                    s.user_messages_burst,
                    rate.saturating_mul(2),
                )?;
                Rate::per_second(rate, burst)
            },
            groups_created: {
                let rate =
                    positive_u32("groups_created_per_minute", s.groups_created_per_minute, 60)?;
                Rate::per_minute(rate, rate)
            },
            max_groups: positive("max_groups", s.max_groups, 100_000)?,
            history_read_bytes: {
                let rate = positive_u32(
                    "history_read_bytes_per_second",
                    s.history_read_bytes_per_second,
                    1024 * 1024,
                )?;
                let burst = positive_u32(
                    "history_read_burst_bytes",
                    s.history_read_burst_bytes,
                    8 * 1024 * 1024,
                )?;
                Rate::per_second(rate, burst)
            },
            history_reads_in_flight_per_user: positive(
                "history_reads_in_flight_per_user",
                s.history_reads_in_flight_per_user,
                2,
            )?,
            ..ChatConfig::default()
        };
        let history = HistoryWriterConfig {
            save_timeout: Duration::from_millis(match s.save_timeout_ms {
                Some(0) => return Err(bad("save_timeout_ms", "must be at least 1")),
                Some(ms) => ms,
                None => 500,
            }),
            batch_interval: Duration::from_millis(match s.history_batch_ms {
                Some(ms) if ms > 1000 => {
                    return Err(bad("history_batch_ms", "must be at most 1000"));
                }
                Some(ms) => ms,
                None => 5,
            }),
            ..HistoryWriterConfig::default()
        };
        let keep_alive = seconds("keep_alive_secs", s.keep_alive_secs, 15)?;
        let client_timeout = seconds("client_timeout_secs", s.client_timeout_secs, 30)?;
        if client_timeout <= keep_alive {
            return Err(bad("client_timeout_secs", "must be longer than keep_alive_secs"));
        }
        let auth = auth_config(s)?;
        let tls = tls_files(s)?;
        Ok(Config {
            auth,
            tls,
            listen,
            migrate: s.migrate.unwrap_or(matches!(database, Database::Sqlite(_))),
            database,
            redis,
            chat,
            web_page: s.web_page.unwrap_or(true),
            max_message_size: positive("max_message_size", s.max_message_size, 128 * 1024)?,
            outbound_queue: positive("outbound_queue", s.outbound_queue, 4096)?,
            keep_alive,
            client_timeout,
            startup_timeout: match s.startup_timeout_secs {
                Some(secs) => Duration::from_secs(secs),
                None => Duration::from_secs(30),
            },
            shutdown_timeout: seconds("shutdown_timeout_secs", s.shutdown_timeout_secs, 10)?,
            outbound_queue_bytes: positive(
                "outbound_queue_bytes",
                s.outbound_queue_bytes,
                4 * 1024 * 1024,
            )?,
            max_queued_invocations: positive(
                "max_queued_invocations",
                s.max_queued_invocations,
                32,
            )?,
            max_queued_invocation_bytes: positive(
                "max_queued_invocation_bytes",
                s.max_queued_invocation_bytes,
                1024 * 1024,
            )?,
            invocations_per_second: positive(
                "invocations_per_second",
                s.invocations_per_second.map(|n| n as usize),
                2000,
            )? as u32,
            invocation_burst: positive(
                "invocation_burst",
                s.invocation_burst.map(|n| n as usize),
                2000,
            )? as u32,
            http_header_timeout: seconds(
                "http_header_timeout_secs",
                s.http_header_timeout_secs,
                10,
            )?,
            http_max_head_bytes: match s.http_max_head_bytes {
                // hyper's smallest read buffer; a head must fit in it.
                Some(n) if n < 8192 => {
                    return Err(bad("http_max_head_bytes", "must be at least 8192"));
                }
                Some(n) => n,
                None => 64 * 1024,
            },
            max_http_connections: match s.max_http_connections {
                Some(0) => return Err(bad("max_http_connections", "must be at least 1")),
                other => other,
            },
            max_connections: positive("max_connections", s.max_connections, 200_000)?,
            max_connections_per_user: positive(
                "max_connections_per_user",
                s.max_connections_per_user,
                100,
            )?,
            max_connections_per_ip: match s.max_connections_per_ip {
                Some(0) => {
                    return Err(bad(
                        "max_connections_per_ip",
                        "must be at least 1 (leave it unset for no cap)",
                    ));
                }
                other => other,
            },
            max_pending_negotiations: positive(
                "max_pending_negotiations",
                s.max_pending_negotiations,
                100_000,
            )?,
            max_pending_negotiations_per_user: positive(
                "max_pending_negotiations_per_user",
                s.max_pending_negotiations_per_user,
                100,
            )?,
            long_poll_max_response_bytes: positive(
                "long_poll_max_response_bytes",
                s.long_poll_max_response_bytes,
                1024 * 1024,
            )?,
            stateful_reconnect: s.stateful_reconnect.unwrap_or(true),
            stateful_reconnect_buffer_bytes: positive(
                "stateful_reconnect_buffer_bytes",
                s.stateful_reconnect_buffer_bytes,
                100_000,
            )?,
            // Longer than the stock clients' 30 s server timeout: when the server
            // sees the drop first, the client may notice it only that much later.
            stateful_reconnect_window: seconds(
                "stateful_reconnect_window_secs",
                s.stateful_reconnect_window_secs,
                45,
            )?,
            history: HistoryWriterConfig {
                unsaved_max_bytes: match s.history_unsaved_max_bytes {
                    None => 256 * 1024 * 1024,
                    Some(n) if n < 1024 * 1024 => {
                        return Err(bad(
                            "history_unsaved_max_bytes",
                            "must be at least 1048576 (1 MiB), room for a few of the longest messages",
                        ));
                    }
                    Some(n) => n,
                },
                ..history
            },
            redis_stream_max_bytes: {
                // The storage's least shard budget: a dozen of the largest messages.
                const MIN_PER_SHARD: u64 = 1024 * 1024;
                let bytes = s.redis_stream_max_bytes.unwrap_or(256 * 1024 * 1024);
                let shards = s.redis_stream_shards.unwrap_or(DEFAULT_STREAM_SHARDS).max(1) as u64;
                if bytes / shards < MIN_PER_SHARD {
                    return Err(bad(
                        "redis_stream_max_bytes",
                        format!(
                            "must be at least {} ({MIN_PER_SHARD} bytes for each of the \
                             {shards} stream shards)",
                            MIN_PER_SHARD * shards
                        ),
                    ));
                }
                bytes
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["next-chat-server"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).expect("flags parse");
        Config::load(&cli.settings)
    }

    #[test]
    fn defaults_are_the_contracts() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(config.database, Database::Sqlite("next-chat.db".into()));
        assert!(config.redis.is_none());
        assert_eq!(config.chat.max_members, 20);
        assert_eq!(config.chat.history_on_join, 100);
        assert_eq!(config.history.save_timeout, Duration::from_millis(500));
        assert_eq!(config.history.batch_interval, Duration::from_millis(5));
        assert_eq!(config.history.unsaved_max_bytes, 256 * 1024 * 1024);
        assert_eq!(config.max_message_size, 131072);
        assert!(config.migrate);
        assert_eq!(config.http_header_timeout, Duration::from_secs(10));
        assert_eq!(config.http_max_head_bytes, 65536);
        assert_eq!(config.max_http_connections, None);
        assert_eq!(config.max_connections, 200_000);
        assert_eq!(config.max_connections_per_user, 100);
        assert_eq!(config.max_connections_per_ip, None);
        assert_eq!(config.max_pending_negotiations, 100_000);
        assert_eq!(config.max_pending_negotiations_per_user, 100);
        assert_eq!(config.long_poll_max_response_bytes, 1024 * 1024);
        assert!(config.stateful_reconnect);
        assert_eq!(config.stateful_reconnect_buffer_bytes, 100_000);
        assert_eq!(config.stateful_reconnect_window, Duration::from_secs(45));
        assert_eq!(config.chat.history_page_max_bytes, 1024 * 1024);
        assert_eq!(config.chat.max_groups_per_connection, 100);
        assert_eq!(config.chat.max_connections_per_user_in_group, 10);
        assert_eq!(config.chat.user_messages, Rate::per_second(2000, 4000));
        assert_eq!(config.chat.groups_created, Rate::per_minute(60, 60));
        assert_eq!(config.chat.max_groups, 100_000);
    }

    #[test]
    fn chat_rule_limits_are_settings() {
        let config =
            parse(&["--user-messages-per-second", "10", "--groups-created-per-minute", "3"])
                .unwrap();
        assert_eq!(config.chat.user_messages, Rate::per_second(10, 20), "burst defaults to 2 s");
        assert_eq!(config.chat.groups_created, Rate::per_minute(3, 3));
        let err = parse(&["--history-page-max-bytes", "100"]).unwrap_err();
        assert_eq!(err.key, "history_page_max_bytes");
        assert_eq!(parse(&["--user-messages-burst", "0"]).unwrap_err().key, "user_messages_burst");
        assert_eq!(parse(&["--max-groups", "0"]).unwrap_err().key, "max_groups");
    }

    #[test]
    fn history_read_limits() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.chat.history_read_bytes, Rate::per_second(1 << 20, 8 << 20));
        assert_eq!(config.chat.history_reads_in_flight_per_user, 2);
        let config = parse(&[
            "--history-read-bytes-per-second",
            "5000",
            "--history-read-burst-bytes",
            "20000",
            "--history-reads-in-flight-per-user",
            "1",
        ])
        .unwrap();
        assert_eq!(config.chat.history_read_bytes, Rate::per_second(5000, 20000));
        assert_eq!(config.chat.history_reads_in_flight_per_user, 1);
        for key in [
            "history_read_bytes_per_second",
            "history_read_burst_bytes",
            "history_reads_in_flight_per_user",
        ] {
            let flag = format!("--{}", key.replace('_', "-"));
            assert_eq!(parse(&[flag.as_str(), "0"]).unwrap_err().key, key);
        }
    }

    #[test]
    fn stateful_reconnect_settings() {
        let config = parse(&[
            "--stateful-reconnect",
            "false",
            "--stateful-reconnect-buffer-bytes",
            "5000",
            "--stateful-reconnect-window-secs",
            "10",
        ])
        .unwrap();
        assert!(!config.stateful_reconnect);
        assert_eq!(config.stateful_reconnect_buffer_bytes, 5000);
        assert_eq!(config.stateful_reconnect_window, Duration::from_secs(10));
        let err = parse(&["--stateful-reconnect-buffer-bytes", "0"]).unwrap_err();
        assert_eq!(err.key, "stateful_reconnect_buffer_bytes");
        let err = parse(&["--stateful-reconnect-window-secs", "0"]).unwrap_err();
        assert_eq!(err.key, "stateful_reconnect_window_secs");
    }

    #[test]
    fn redis_stream_bytes_default_and_per_shard_minimum() {
        assert_eq!(parse(&[]).unwrap().redis_stream_max_bytes, 256 * 1024 * 1024);
        let config = parse(&["--redis-stream-max-bytes", "67108864"]).unwrap();
        assert_eq!(config.redis_stream_max_bytes, 64 * 1024 * 1024);
        // 64 shards by default: 63 MiB leaves less than 1 MiB each.
        let err = parse(&["--redis-stream-max-bytes", "66060288"]).unwrap_err();
        assert_eq!(err.key, "redis_stream_max_bytes");
        assert!(err.to_string().contains("at least 67108864"), "{err}");
        let two = ["--redis-stream-shards", "2", "--redis-stream-max-bytes", "3145728"];
        assert!(parse(&two).is_ok());
    }

    #[test]
    fn a_redis_cluster_is_named_by_seed_nodes() {
        let seeds = ["--redis", "redis://a:6379, redis://b:6379"];
        let err = parse(&seeds).unwrap_err();
        assert_eq!(err.key, "redis");
        assert!(err.to_string().contains("redis_cluster"), "{err}");
        let config = parse(&[&seeds[..], &["--redis-cluster"]].concat()).unwrap();
        let redis = config.redis.unwrap();
        assert!(redis.cluster);
        assert_eq!(redis.url, "redis://a:6379,redis://b:6379");
        assert_eq!(redis.stream_shards, DEFAULT_STREAM_SHARDS);
        let bad = parse(&["--redis", "redis://a:1,http://b:2", "--redis-cluster"]).unwrap_err();
        assert_eq!(bad.key, "redis");
        let braces =
            parse(&["--redis", "redis://a:1", "--redis-cluster", "--redis-key-prefix", "{x}"]);
        assert_eq!(braces.unwrap_err().key, "redis_key_prefix");
        assert!(!parse(&["--redis", "redis://a:1"]).unwrap().redis.unwrap().cluster);
        assert_eq!(redact_url("redis://u:secret@a:1,redis://b:2"), "redis://u:***@a:1,redis://b:2");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse(&["--listen", "nowhere"]).unwrap_err();
        assert_eq!(err.key, "listen");
        assert!(err.to_string().contains("'nowhere' is not ADDR:PORT"));
        assert_eq!(parse(&["--database", "postgres://x"]).unwrap_err().key, "database");
        assert_eq!(parse(&["--database", "mysql://root@h:3306"]).unwrap_err().key, "database");
        assert_eq!(parse(&["--max-members", "0"]).unwrap_err().key, "max_members");
        assert_eq!(parse(&["--redis", "http://x"]).unwrap_err().key, "redis");
        let scan = ["--redis", "redis://x", "--database", "mysql://root@h:3306/chat"];
        let too_many = parse(&[&scan[..], &["--redis-recent-scan-entries", "10001"]].concat());
        let err = too_many.unwrap_err();
        assert_eq!(err.key, "redis_recent_scan_entries");
        assert!(err.to_string().contains("at most 10000"), "{err}");
        let off = parse(&[&scan[..], &["--redis-recent-scan-entries", "0"]].concat()).unwrap();
        assert_eq!(off.redis.unwrap().recent_scan_entries, 0);
        assert_eq!(parse(&scan).unwrap().redis.unwrap().recent_scan_entries, 200);
        assert_eq!(
            parse(&["--http-max-head-bytes", "100"]).unwrap_err().key,
            "http_max_head_bytes"
        );
        assert_eq!(
            parse(&["--max-connections-per-ip", "0"]).unwrap_err().key,
            "max_connections_per_ip"
        );
        assert_eq!(
            parse(&["--http-header-timeout-secs", "0"]).unwrap_err().key,
            "http_header_timeout_secs"
        );
        let small = parse(&["--history-unsaved-max-bytes", "1000"]).unwrap_err();
        assert_eq!(small.key, "history_unsaved_max_bytes");
        assert!(small.to_string().contains("at least 1048576"), "{small}");
        let set = parse(&["--history-unsaved-max-bytes", "2097152"]).unwrap();
        assert_eq!(set.history.unsaved_max_bytes, 2 * 1024 * 1024);
        let slow = parse(&["--history-batch-ms", "1001"]).unwrap_err();
        assert_eq!(slow.key, "history_batch_ms");
        assert!(slow.to_string().contains("at most 1000"), "{slow}");
        let each = parse(&["--history-batch-ms", "0"]).unwrap();
        assert_eq!(each.history.batch_interval, Duration::ZERO);
    }

    #[test]
    fn file_is_overridden_by_flags_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "listen: 127.0.0.1:6000\nmax_members: 5\nredis: redis://r:6379\n")
            .unwrap();
        let f = file.to_str().unwrap();
        let config = parse(&["--config", f, "--max-members", "7"]).unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.chat.max_members, 7);
        assert_eq!(config.redis.unwrap().key_prefix, "next-chat:");

        std::fs::write(&file, "max_memebers: 5\n").unwrap();
        let err = parse(&["--config", f]).unwrap_err();
        assert_eq!(err.key, "config");
        assert!(err.to_string().contains("max_memebers"), "{err}");
    }

    #[test]
    fn auth_settings_name_the_key() {
        assert!(matches!(parse(&[]).unwrap().auth, AuthConfig::Header));
        assert_eq!(parse(&["--auth", "oauth"]).unwrap_err().key, "auth");
        let err = parse(&["--auth", "jwt"]).unwrap_err();
        assert_eq!(err.key, "auth");
        assert!(err.to_string().contains("jwt needs keys"), "{err}");
        let both = ["--auth", "jwt", "--jwt-public-key", "k.pem", "--jwks", "https://idp/jwks"];
        let err = parse(&both).unwrap_err();
        assert!(err.to_string().contains("not jwt_public_key and jwks"), "{err}");
        let jwks = parse(&["--auth", "jwt", "--jwks", "https://idp/jwks", "--jwt-issuer", "i"]);
        let AuthConfig::Jwt(jwt) = jwks.unwrap().auth else { panic!("jwt") };
        assert!(
            matches!(&jwt.keys, KeySource::Jwks(JwksSource::Url(u)) if u == "https://idp/jwks")
        );
        assert_eq!(jwt.issuer.as_deref(), Some("i"));
        assert_eq!(jwt.leeway, Duration::from_secs(30));
        assert_eq!(jwt.user_claim, "sub");
        assert_eq!(
            parse(&["--auth", "jwt", "--jwks", "j.json", "--jwt-leeway-secs", "7200"])
                .unwrap_err()
                .key,
            "jwt_leeway_secs"
        );
        assert_eq!(parse(&["--jwks", "j.json"]).unwrap_err().key, "jwks");
        assert_eq!(parse(&["--tls-cert", "c.pem"]).unwrap_err().key, "tls_key");
        assert_eq!(parse(&["--tls-key", "k.pem"]).unwrap_err().key, "tls_cert");
        let tls = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap().tls;
        assert_eq!(tls, Some(TlsFiles { cert: "c.pem".into(), key: "k.pem".into() }));
    }

    #[test]
    fn the_secret_comes_from_the_environment_or_a_file_never_a_flag() {
        assert!(Cli::try_parse_from(["s", "--jwt-secret", "x"]).is_err(), "no such flag");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let args = ["--auth", "jwt", "--jwt-secret-file", file.to_str().unwrap()];
        let AuthConfig::Jwt(jwt) = parse(&args).unwrap().auth else { panic!("jwt") };
        assert!(
            matches!(&jwt.keys, KeySource::Secret(s) if s == b"0123456789abcdef0123456789abcdef"),
            "the trailing newline is not part of the secret"
        );
        std::fs::write(&file, "short").unwrap();
        assert_eq!(parse(&args).unwrap_err().key, "jwt_secret_file");
        // The environment's secret (set here on the settings, as `load` does).
        let mut settings = Cli::try_parse_from(["s", "--auth", "jwt"]).unwrap().settings;
        settings.jwt_secret = Some("0123456789abcdef0123456789abcdef".into());
        assert!(Config::from_settings(&settings).is_ok());
        settings.jwt_secret = Some("short".into());
        assert_eq!(Config::from_settings(&settings).unwrap_err().key, "NEXT_CHAT_JWT_SECRET");
    }

    #[test]
    fn migrate_flag_and_subcommand() {
        let cli =
            Cli::try_parse_from(["s", "migrate", "--database", "mysql://u:p@h:3306/db"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate)));
        let config = Config::load(&cli.settings).unwrap();
        assert_eq!(config.database.redacted(), "mysql://u:***@h:3306/db");
        assert!(!config.migrate);
        assert!(parse(&["--database", "mysql://u@h/db", "--migrate"]).unwrap().migrate);
    }
}
