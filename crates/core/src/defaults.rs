//! The default value of every chat rule and history writer bound that is also
//! a server setting. `ChatConfig::default`, `Limits::default` and
//! `HistoryWriterConfig::default` are made of these, and the server's settings
//! schema names them as its defaults, so each value is written once.

/// Longest group id, in characters.
pub const GROUP_ID_MAX_CHARS: usize = 64;
/// Longest message text, in characters.
pub const TEXT_MAX_CHARS: usize = 16384;
/// Most distinct users in one group.
pub const MAX_MEMBERS: usize = 20;
/// Messages `OnHistory` carries on join.
pub const HISTORY_ON_JOIN: usize = 100;
/// Whether `SendMessage` requires the connection to have joined the group.
pub const REQUIRE_JOIN_TO_SEND: bool = true;
/// Whether `JoinGroup` creates a group that does not exist.
pub const AUTO_CREATE_GROUPS: bool = true;
/// Most bytes of messages in one `OnHistory` or `GetHistory` page.
pub const HISTORY_PAGE_MAX_BYTES: usize = 1024 * 1024;
/// Most groups one connection may have joined at once.
pub const MAX_GROUPS_PER_CONNECTION: usize = 100;
/// Most of one user's connections joined to one group, per instance.
pub const MAX_CONNECTIONS_PER_USER_IN_GROUP: usize = 10;
/// `SendMessage`s per second per user: twice the seed's load test (one
/// connection, 1000 messages/s). The burst is two seconds of it, for a sender
/// that stalled.
pub const USER_MESSAGES_PER_SECOND: u32 = 2000;
/// Groups one user may create per minute (also the burst).
pub const GROUPS_CREATED_PER_MINUTE: u32 = 60;
/// Most groups the server holds.
pub const MAX_GROUPS: usize = 100_000;
/// Existing groups one user may have created, so that one account cannot use
/// up `MAX_GROUPS`.
pub const MAX_GROUPS_OWNED_PER_USER: usize = 100;
/// How long a send waits for history to store its message, in milliseconds.
pub const SAVE_TIMEOUT_MS: u64 = 500;
/// At most one history write per this many milliseconds under steady load.
pub const HISTORY_BATCH_MS: u64 = 5;
/// Most bytes of accepted messages waiting to be stored (256 MiB).
pub const HISTORY_UNSAVED_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Bytes of history pages one user may read per second, per instance (1 MiB).
pub const HISTORY_READ_BYTES_PER_SECOND: u32 = 1024 * 1024;
/// Bytes of history pages one user may read at once beyond the rate (8 MiB):
/// a join's page and five more full pages back pass at once; a reader in a
/// loop gets the rate.
pub const HISTORY_READ_BURST_BYTES: u32 = 8 * 1024 * 1024;
/// History reads one user may have running at once, per instance.
pub const HISTORY_READS_IN_FLIGHT_PER_USER: usize = 2;
