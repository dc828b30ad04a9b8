//! Every setting, declared once: its name (the YAML key; the flag is `--`
//! and it with `-` for `_`), type, default, bounds, environment variable, the
//! flag's value placeholder and its one-line help. See `declare.rs` for what
//! each declaration becomes. Adding a setting means adding its declaration
//! here and using its `Values` field where it belongs; docs/settings.md is
//! generated from this list (`UPDATE_SETTINGS_DOC=1 cargo test -p
//! next-chat-server settings_doc`).
//!
//! Cross-field rules, parsing (addresses, URLs) and derived defaults live in
//! the module of their concern: `listen.rs`, `limits.rs`, `auth.rs`,
//! `storage.rs`, `scale_out.rs`.

use next_chat_core::defaults as chat;

use super::declare::settings;
use super::scale_out::{DEFAULT_STREAM_SHARDS, RECENT_SCAN_ENTRIES_MAX};

settings! {
    // Listening and HTTP.

    /// Address to listen on
    listen: String, default ("0.0.0.0:5000"), env "NEXT_CHAT_LISTEN", value "ADDR:PORT";
    /// Serve the web chat page at /
    web_page: bool, default (true), env "NEXT_CHAT_WEB_PAGE", value "BOOL";
    /// Seconds a client has to send a request head, from connecting or from the end
    /// of its previous response (so also the idle keep-alive time)
    http_header_timeout_secs: u64, default (10), min 1,
        env "NEXT_CHAT_HTTP_HEADER_TIMEOUT_SECS", value "SECS";
    /// Largest HTTP request head (request line and headers) in bytes; a bigger one gets 431
    // hyper's smallest read buffer is 8192 bytes; a head must fit in it.
    http_max_head_bytes: usize, default (65536), min 8192,
        env "NEXT_CHAT_HTTP_MAX_HEAD_BYTES", value "BYTES";
    /// TCP connections open at once; beyond it a new one gets 503 and is closed
    max_http_connections: usize, default (unset "the open-file limit less 256"), min 1,
        env "NEXT_CHAT_MAX_HTTP_CONNECTIONS", value "N";
    /// TCP connections from one client address that have not yet made an
    /// authenticated request; beyond it a new one is closed at once
    max_unauthenticated_connections_per_ip: usize, default (64), min 1,
        env "NEXT_CHAT_MAX_UNAUTHENTICATED_CONNECTIONS_PER_IP", value "N";
    /// Seconds of silence after which the server sends a Ping
    keep_alive_secs: u64, default (15), min 1, env "NEXT_CHAT_KEEP_ALIVE_SECS", value "SECS";
    /// Seconds without a message from a client before it is disconnected (more than keep_alive_secs)
    client_timeout_secs: u64, default (30), min 1,
        env "NEXT_CHAT_CLIENT_TIMEOUT_SECS", value "SECS";
    /// Seconds to keep retrying unreachable backends at start before giving up
    startup_timeout_secs: u64, default (30), env "NEXT_CHAT_STARTUP_TIMEOUT_SECS", value "SECS";
    /// Seconds a graceful shutdown may take in all
    shutdown_timeout_secs: u64, default (10), min 1,
        env "NEXT_CHAT_SHUTDOWN_TIMEOUT_SECS", value "SECS";

    // Connections and what one connection may queue.

    /// SignalR connections open at once; beyond it 503
    max_connections: usize, default (200_000), min 1, env "NEXT_CHAT_MAX_CONNECTIONS", value "N";
    /// SignalR connections one user may have open at once; beyond it 429
    max_connections_per_user: usize, default (100), min 1,
        env "NEXT_CHAT_MAX_CONNECTIONS_PER_USER", value "N";
    /// SignalR connections from one client address at once; beyond it 429
    // Unset by default: behind a proxy every client has the proxy's address.
    max_connections_per_ip: usize, default (unset "no cap"), min 1,
        env "NEXT_CHAT_MAX_CONNECTIONS_PER_IP", value "N";
    /// Negotiated connections not yet started by a transport request; beyond it 503
    max_pending_negotiations: usize, default (100_000), min 1,
        env "NEXT_CHAT_MAX_PENDING_NEGOTIATIONS", value "N";
    /// The same per user; beyond it 429
    max_pending_negotiations_per_user: usize, default (100), min 1,
        env "NEXT_CHAT_MAX_PENDING_NEGOTIATIONS_PER_USER", value "N";
    /// Largest incoming hub message in bytes; a bigger one closes the connection
    max_message_size: usize, default (131_072), min 1,
        env "NEXT_CHAT_MAX_MESSAGE_SIZE", value "BYTES";
    /// Records queued for one connection before it counts as too slow and is closed
    outbound_queue: usize, default (4096), min 1, env "NEXT_CHAT_OUTBOUND_QUEUE", value "N";
    /// Bytes queued for one connection before it counts as too slow and is closed
    outbound_queue_bytes: usize, default (4_194_304), min 1,
        env "NEXT_CHAT_OUTBOUND_QUEUE_BYTES", value "BYTES";
    /// Invocations queued on one connection while one runs, before it stops reading
    max_queued_invocations: usize, default (32), min 1,
        env "NEXT_CHAT_MAX_QUEUED_INVOCATIONS", value "N";
    /// Bytes of invocations queued on one connection before it stops reading
    max_queued_invocation_bytes: usize, default (1_048_576), min 1,
        env "NEXT_CHAT_MAX_QUEUED_INVOCATION_BYTES", value "BYTES";
    /// Invocations one connection may start per second on average
    invocations_per_second: u32, default (2000), min 1,
        env "NEXT_CHAT_INVOCATIONS_PER_SECOND", value "N";
    /// Invocations one connection may start at once after a quiet spell
    invocation_burst: u32, default (2000), min 1, env "NEXT_CHAT_INVOCATION_BURST", value "N";
    /// Most bytes of messages in one long-poll response (at least one message)
    long_poll_max_response_bytes: usize, default (1_048_576), min 1,
        env "NEXT_CHAT_LONG_POLL_MAX_RESPONSE_BYTES", value "BYTES";
    /// Offer SignalR stateful reconnect (WebSockets) to clients that ask for it
    stateful_reconnect: bool, default (true), env "NEXT_CHAT_STATEFUL_RECONNECT", value "BOOL";
    /// Bytes of sent messages kept per connection until the client acknowledges them (stateful reconnect)
    stateful_reconnect_buffer_bytes: usize, default (100_000), min 1,
        env "NEXT_CHAT_STATEFUL_RECONNECT_BUFFER_BYTES", value "BYTES";
    /// How long a connection whose socket dropped waits for the client to reconnect (stateful reconnect)
    // Longer than the stock clients' 30 s server timeout: when the server sees
    // the drop first, the client may notice it only that much later.
    stateful_reconnect_window_secs: u64, default (45), min 1,
        env "NEXT_CHAT_STATEFUL_RECONNECT_WINDOW_SECS", value "SECS";

    // The chat rules.

    /// Most distinct users in one group
    max_members: usize, default (chat::MAX_MEMBERS), min 1, env "NEXT_CHAT_MAX_MEMBERS", value "N";
    /// Messages sent as OnHistory on join
    history_on_join: usize, default (chat::HISTORY_ON_JOIN), min 1,
        env "NEXT_CHAT_HISTORY_ON_JOIN", value "N";
    /// JoinGroup creates a group that does not exist
    auto_create_groups: bool, default (chat::AUTO_CREATE_GROUPS),
        env "NEXT_CHAT_AUTO_CREATE_GROUPS", value "BOOL";
    /// SendMessage requires the connection to have joined the group
    require_join_to_send: bool, default (chat::REQUIRE_JOIN_TO_SEND),
        env "NEXT_CHAT_REQUIRE_JOIN_TO_SEND", value "BOOL";
    /// Longest group id in characters
    max_group_id_chars: usize, default (chat::GROUP_ID_MAX_CHARS), min 1,
        env "NEXT_CHAT_MAX_GROUP_ID_CHARS", value "N";
    /// Longest message text in characters
    max_text_chars: usize, default (chat::TEXT_MAX_CHARS), min 1,
        env "NEXT_CHAT_MAX_TEXT_CHARS", value "N";
    /// Most bytes of messages in one OnHistory or GetHistory page; a page holds fewer messages rather than exceed it
    history_page_max_bytes: usize, default (chat::HISTORY_PAGE_MAX_BYTES), min 4096,
        env "NEXT_CHAT_HISTORY_PAGE_MAX_BYTES", value "BYTES";
    /// Most groups one connection may have joined at once
    max_groups_per_connection: usize, default (chat::MAX_GROUPS_PER_CONNECTION), min 1,
        env "NEXT_CHAT_MAX_GROUPS_PER_CONNECTION", value "N";
    /// Most of one user's connections joined to one group, per instance
    max_connections_per_user_in_group: usize,
        default (chat::MAX_CONNECTIONS_PER_USER_IN_GROUP), min 1,
        env "NEXT_CHAT_MAX_CONNECTIONS_PER_USER_IN_GROUP", value "N";
    /// SendMessage calls per second per user, per instance
    user_messages_per_second: u32, default (chat::USER_MESSAGES_PER_SECOND), min 1,
        env "NEXT_CHAT_USER_MESSAGES_PER_SECOND", value "N";
    /// SendMessage calls a user may make at once beyond the rate
    user_messages_burst: u32, default (unset "twice the rate"), min 1,
        env "NEXT_CHAT_USER_MESSAGES_BURST", value "N";
    /// Groups one user may create per minute (also the burst); shared by every instance in scale-out mode
    groups_created_per_minute: u32, default (chat::GROUPS_CREATED_PER_MINUTE), min 1,
        env "NEXT_CHAT_GROUPS_CREATED_PER_MINUTE", value "N";
    /// Most groups the server holds; creating another is refused
    max_groups: usize, default (chat::MAX_GROUPS), min 1, env "NEXT_CHAT_MAX_GROUPS", value "N";
    /// Most existing groups one user may have created; creating another is refused, so that one account cannot use up max_groups
    max_groups_owned_per_user: usize, default (chat::MAX_GROUPS_OWNED_PER_USER), min 1,
        env "NEXT_CHAT_MAX_GROUPS_OWNED_PER_USER", value "N";
    /// Bytes of history pages (OnHistory, GetHistory, GetMessagesAfter) one user may read per second, per instance
    history_read_bytes_per_second: u32, default (chat::HISTORY_READ_BYTES_PER_SECOND), min 1,
        env "NEXT_CHAT_HISTORY_READ_BYTES_PER_SECOND", value "BYTES";
    /// Bytes of history pages one user may read at once beyond the rate
    history_read_burst_bytes: u32, default (chat::HISTORY_READ_BURST_BYTES), min 1,
        env "NEXT_CHAT_HISTORY_READ_BURST_BYTES", value "BYTES";
    /// History reads one user may have running at once, per instance
    history_reads_in_flight_per_user: usize, default (chat::HISTORY_READS_IN_FLIGHT_PER_USER),
        min 1, env "NEXT_CHAT_HISTORY_READS_IN_FLIGHT_PER_USER", value "N";

    // History.

    /// History database: sqlite://PATH (embedded) or mysql://USER:PASS@HOST:PORT/NAME
    database: String, default ("sqlite://next-chat.db"), env "NEXT_CHAT_DATABASE", value "URL";
    /// Apply the database's migrations at start
    migrate: bool, default (unset "true for sqlite://, false for mysql://"),
        env "NEXT_CHAT_MIGRATE", value "BOOL";
    /// How long a send waits for history to store its message
    save_timeout_ms: u64, default (chat::SAVE_TIMEOUT_MS), min 1,
        env "NEXT_CHAT_SAVE_TIMEOUT_MS", value "MS";
    /// At most one history write per this many ms under steady load; 0 writes each message at once
    history_batch_ms: u64, default (chat::HISTORY_BATCH_MS), max 1000,
        env "NEXT_CHAT_HISTORY_BATCH_MS", value "MS";
    /// Most bytes of accepted messages waiting to be stored in history; beyond it
    /// SendMessage fails with "history is unavailable"
    // At least 1 MiB: room for a few of the longest messages.
    history_unsaved_max_bytes: usize, default (chat::HISTORY_UNSAVED_MAX_BYTES), min 1_048_576,
        env "NEXT_CHAT_HISTORY_UNSAVED_MAX_BYTES", value "BYTES";

    // Scaling out over Redis.

    /// Redis for messaging and membership across instances (redis://HOST:PORT);
    /// with redis_cluster, one or more seed nodes separated by commas; without
    /// it both stay in process
    redis: String, default (unset), env "NEXT_CHAT_REDIS", value "URL";
    /// redis names seed nodes of a Redis Cluster
    redis_cluster: bool, default (false), env "NEXT_CHAT_REDIS_CLUSTER", value "BOOL";
    /// Prefix of every Redis key, so deployments sharing a Redis stay apart
    redis_key_prefix: String, default ("next-chat:"), env "NEXT_CHAT_REDIS_KEY_PREFIX",
        value "PREFIX";
    /// Number of Redis streams messages are sharded over; an instance reads only the shards of groups joined on it
    redis_stream_shards: usize, default (DEFAULT_STREAM_SHARDS), min 1,
        env "NEXT_CHAT_REDIS_STREAM_SHARDS", value "N";
    /// Most entries each Redis stream keeps
    redis_stream_maxlen: usize, default (100_000), min 1,
        env "NEXT_CHAT_REDIS_STREAM_MAXLEN", value "N";
    /// Most bytes the Redis streams may hold in all, split over the shards (at
    /// least 1 MiB each); the oldest stored entries are dropped to stay within it,
    /// and with mysql:// history SendMessage fails while a shard is full of
    /// messages not yet stored
    redis_stream_max_bytes: u64, default (268_435_456),
        env "NEXT_CHAT_REDIS_STREAM_MAX_BYTES", value "BYTES";
    /// Entries per Redis read when GetMessagesAfter looks in a stream for messages other instances have not stored yet (with MySQL it reads forward from the stream's stored watermark; otherwise the stream's newest this many); 0 reads none
    redis_recent_scan_entries: usize, default (200), max RECENT_SCAN_ENTRIES_MAX,
        env "NEXT_CHAT_REDIS_RECENT_SCAN_ENTRIES", value "N";
    /// After each message, wait until this many Redis replicas hold it (WAIT, up
    /// to 1 s), so a completed send survives a Redis failover; fewer fail the
    /// send; 0 waits for none
    // At most 16: more than any deployment runs, and a typo (say 100) is caught at start.
    redis_wait_replicas: usize, default (0), max 16,
        env "NEXT_CHAT_REDIS_WAIT_REPLICAS", value "N";

    // Authentication and TLS.

    /// How a connection's user is known: `header` (the Authorization header or
    /// access_token is the user id; development only) or `jwt` (a signed JWT)
    auth: String, default ("header"), env "NEXT_CHAT_AUTH", value "header|jwt";
    /// With auth header, answer clients on other machines too, not only loopback
    /// ones: for a proxy that authenticates its users and sets the header
    allow_remote_header_auth: bool, default (false), env "NEXT_CHAT_ALLOW_REMOTE_HEADER_AUTH",
        value "BOOL";
    /// File holding the HS256 secret (at least 32 bytes); or set NEXT_CHAT_JWT_SECRET
    jwt_secret_file: std::path::PathBuf, default (unset), env "NEXT_CHAT_JWT_SECRET_FILE",
        value "FILE";
    /// PEM file with the public key tokens are signed for (RS256, ES256, EdDSA, ...)
    jwt_public_key: std::path::PathBuf, default (unset), env "NEXT_CHAT_JWT_PUBLIC_KEY",
        value "FILE";
    /// The identity provider's JWKS: a file, or an https:// URL fetched again
    /// periodically and when a token names an unknown kid
    jwks: String, default (unset), env "NEXT_CHAT_JWKS", value "FILE|URL";
    /// The `iss` a token must carry
    jwt_issuer: String, default (unset "not checked"), env "NEXT_CHAT_JWT_ISSUER",
        value "ISSUER";
    /// The `aud` a token must carry; required with jwt_public_key or jwks, where
    /// `any` accepts every audience
    jwt_audience: String, default (unset "not checked with an HS256 secret"),
        env "NEXT_CHAT_JWT_AUDIENCE", value "AUDIENCE|any";
    /// Seconds of clock skew allowed on `exp` and `nbf`
    jwt_leeway_secs: u64, default (30), max 3600, env "NEXT_CHAT_JWT_LEEWAY_SECS", value "SECS";
    /// The claim that holds the user id
    jwt_user_claim: String, default ("sub"), env "NEXT_CHAT_JWT_USER_CLAIM", value "CLAIM";
    /// Seconds between fetches of a JWKS URL
    jwks_refresh_secs: u64, default (300), min 1, env "NEXT_CHAT_JWKS_REFRESH_SECS",
        value "SECS";
    /// Least seconds between two JWKS fetches, however many unknown kids arrive
    jwks_min_refetch_secs: u64, default (10), min 1, env "NEXT_CHAT_JWKS_MIN_REFETCH_SECS",
        value "SECS";
    /// PEM certificate chain: serve HTTPS and WSS (with --tls-key); re-read when it changes
    tls_cert: std::path::PathBuf, default (unset), env "NEXT_CHAT_TLS_CERT", value "FILE";
    /// PEM private key of --tls-cert; re-read when it changes
    tls_key: std::path::PathBuf, default (unset), env "NEXT_CHAT_TLS_KEY", value "FILE";
}
