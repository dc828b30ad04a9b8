//! History at scale. `load-history` fills the server's own tables directly
//! (SQLite in the embedded mode; MySQL, plus the group set in Redis, in the
//! scale-out mode) with many messages over many groups, far faster than sending
//! them; `probe-history` then measures through a running server what a client
//! waits for: `JoinGroup` with its `OnHistory`, `GetHistory` paging back, and
//! `ListGroupsPage`.
//!
//! The schema, the statements and the group set's key are the server's: the
//! loader writes through `next_chat_storage::bulk`, and a test loads a small
//! history and reads it back through a real server.
//!
//! Message `i` (0-based) goes to group `i % H` (H = `--history-groups`) with id
//! `<base + i>-0`, so ids interleave over the groups as live traffic's would,
//! and every group with history holds the same messages whatever `--groups` is.
//! They are written group by group, in primary-key order, so that every insert
//! lands at the end of the table's B-tree (storage drops SQLite's secondary
//! index, which that order would fill at random, for the load).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use next_chat_contract::{Callback, JoinResult, Method, keys};
use next_chat_signalr::{HubMessage, Outcome, Protocol, Value};
use next_chat_storage::RedisConfig;
use next_chat_storage::bulk::{self, Batching, HistoryRow};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::connection::{self, Plan, Settings};
use crate::report::Summary;

/// Rows per INSERT: SQLite binds at most 32766 values (6 per row).
const SQLITE_ROWS_PER_INSERT: usize = 500;
/// Rows per INSERT for MySQL: about 150 KB of SQL at 100 characters a message,
/// far below `max_allowed_packet`.
const MYSQL_ROWS_PER_INSERT: usize = 1000;
/// Rows per transaction.
const ROWS_PER_TRANSACTION: u64 = 100_000;
/// Distinct authors of loaded messages.
const AUTHORS: u64 = 997;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The server's --database: sqlite://PATH (embedded) or
    /// mysql://USER@HOST:PORT/NAME (scale-out; the database is created if missing).
    #[arg(long)]
    pub database: String,
    /// Scale-out: the server's --redis, where the group set lives.
    #[arg(long)]
    pub redis: Option<String>,
    /// Scale-out: the server's --redis-key-prefix.
    #[arg(long, default_value = "next-chat:")]
    pub redis_key_prefix: String,
    /// Groups to create.
    #[arg(long, default_value_t = 10_000)]
    pub groups: usize,
    /// Messages in all, spread evenly over the first --history-groups groups.
    #[arg(long, default_value_t = 10_000_000)]
    pub messages: u64,
    /// How many of the groups get the messages [default: all of them].
    #[arg(long)]
    pub history_groups: Option<usize>,
    /// Group ids are PREFIX + a zero-padded number.
    #[arg(long, default_value = "hist-")]
    pub group_prefix: String,
    /// Characters per message text.
    #[arg(short = 'l', long, default_value_t = 100)]
    pub length: usize,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The server's hub URL.
    #[arg(long, default_value = "http://127.0.0.1:5000/next-chat")]
    pub url: String,
    /// As given to load-history.
    #[arg(long, default_value = "hist-")]
    pub group_prefix: String,
    /// As given to load-history (the width of the group numbers, and the range
    /// of ListGroupsPage's random `after`).
    #[arg(long, default_value_t = 10_000)]
    pub groups: usize,
    /// Joins pick among the first N groups: give both databases compared the
    /// same history there.
    #[arg(long, default_value_t = 100)]
    pub probe_groups: usize,
    /// Measured rounds: one join, its GetHistory pages and one ListGroupsPage each.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Rounds before the measured ones, not counted.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// GetHistory pages read back after each join.
    #[arg(long, default_value_t = 5)]
    pub pages: usize,
    /// GetHistory's limit (1..500).
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
    /// ListGroupsPage's limit (1..1000).
    #[arg(long, default_value_t = 100)]
    pub list_limit: usize,
    /// The probe's user id.
    #[arg(long, default_value = "history-probe")]
    pub user: String,
    /// How long one call may take, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// What `load-history` did.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub database: &'static str,
    pub groups: usize,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_s: f64,
    /// SQLite: the file's size; MySQL: the table's data and index length.
    pub bytes: u64,
    pub bytes_per_message: f64,
}

/// What `probe-history` measured, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Probed {
    pub samples: usize,
    /// `JoinGroup` sent to its completion (its `OnHistory` arrives first).
    pub join_ms: Summary,
    /// Messages in each join's `OnHistory` (the last round's).
    pub on_history_messages: usize,
    pub get_history_ms: Summary,
    pub list_groups_page_ms: Summary,
}

/// Group `g`'s id: the prefix and `g` padded to the width of the largest number,
/// so that code-point order is numeric order.
pub fn group_name(prefix: &str, g: usize, groups: usize) -> String {
    let width = groups.saturating_sub(1).max(1).to_string().len();
    format!("{prefix}{g:0width$}")
}

/// Message `k` of group `g`: a readable head, then filler to `length` characters.
fn message_text(g: usize, k: u64, length: usize) -> String {
    const FILLER: &str = "the quick brown fox jumps over the lazy dog ";
    let mut text = format!("message {k} of group {g}: ");
    while text.len() < length {
        let room = length - text.len();
        text.push_str(&FILLER[..room.min(FILLER.len())]);
    }
    text.truncate(length);
    text
}

/// One loaded message.
struct Row {
    group: usize,
    millis: i64,
    author: usize,
    text: String,
}

/// The message stream's plan: which group and id message `i` gets.
struct MessagePlan {
    history_groups: u64,
    base: i64,
    length: usize,
}

impl MessagePlan {
    /// Every message index below `messages`, group by group, in id order
    /// within each group: the table's primary-key order.
    fn key_order(&self, messages: u64) -> impl Iterator<Item = u64> + use<> {
        let groups = self.history_groups;
        let per_group = messages.div_ceil(groups);
        (0..groups).flat_map(move |g| {
            (0..per_group).map(move |k| k * groups + g).take_while(move |&i| i < messages)
        })
    }

    fn row(&self, i: u64) -> Row {
        let group = (i % self.history_groups) as usize;
        Row {
            group,
            millis: self.base + i as i64,
            author: (i % AUTHORS) as usize,
            text: message_text(group, i / self.history_groups, self.length),
        }
    }
}

pub async fn load(args: LoadArgs) -> Result<Loaded, String> {
    if args.groups == 0 {
        return Err("--groups must be at least 1".into());
    }
    let history_groups = args.history_groups.unwrap_or(args.groups);
    if history_groups == 0 || history_groups > args.groups {
        return Err("--history-groups must be between 1 and --groups".into());
    }
    if args.length == 0 || args.length > 16384 {
        return Err("--length must be between 1 and 16384 characters".into());
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    let messages = i64::try_from(args.messages).map_err(|_| "--messages is too large")?;
    // Every loaded id lies in the past, below anything the server hands out next.
    let plan = MessagePlan {
        history_groups: history_groups as u64,
        base: now_ms.as_millis() as i64 - messages - 60_000,
        length: args.length,
    };
    let names: Vec<String> =
        (0..args.groups).map(|g| group_name(&args.group_prefix, g, args.groups)).collect();
    let started = Instant::now();
    let (database, bytes) = if args.database.starts_with("sqlite:") {
        if args.redis.is_some() {
            return Err("--redis goes with a mysql:// --database (scale-out mode)".into());
        }
        ("sqlite", load_sqlite(&args, &plan, &names).await?)
    } else if args.database.starts_with("mysql:") {
        let Some(redis) = &args.redis else {
            return Err("a mysql:// --database needs --redis: the groups live there".into());
        };
        create_redis_groups(redis, &args.redis_key_prefix, &names).await?;
        ("mysql", load_mysql(&args, &plan, &names).await?)
    } else {
        return Err(format!("--database {}: use sqlite://PATH or mysql://…", args.database));
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(Loaded {
        database,
        groups: args.groups,
        messages: args.messages,
        seconds,
        messages_per_s: args.messages as f64 / seconds.max(1e-9),
        bytes,
        bytes_per_message: bytes as f64 / args.messages.max(1) as f64,
    })
}

fn progress(args: &LoadArgs, done: u64, started: Instant) {
    if !args.quiet && done.is_multiple_of(1_000_000) && done > 0 {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "load-history: {done} of {} messages in {seconds:.0} s ({:.0}/s)",
            args.messages,
            done as f64 / seconds.max(1e-9)
        );
    }
}

/// The plan's rows in the table's primary-key order, as storage loads them.
fn rows<'a>(
    args: &LoadArgs,
    plan: &'a MessagePlan,
    names: &'a [String],
    authors: &'a [String],
) -> impl Iterator<Item = HistoryRow<'a>> + use<'a> {
    plan.key_order(args.messages).map(move |i| {
        let row = plan.row(i);
        HistoryRow {
            group_id: &names[row.group],
            id_millis: row.millis as u64,
            id_seq: 0,
            author_id: &authors[row.author],
            send_time_ms: row.millis as u64,
            text: row.text.into(),
        }
    })
}

fn authors() -> Vec<String> {
    (0..AUTHORS).map(|a| format!("user-{a}")).collect()
}

async fn load_sqlite(args: &LoadArgs, plan: &MessagePlan, names: &[String]) -> Result<u64, String> {
    let authors = authors();
    let started = Instant::now();
    let batching = Batching {
        rows_per_insert: SQLITE_ROWS_PER_INSERT,
        rows_per_transaction: ROWS_PER_TRANSACTION,
    };
    let rows = rows(args, plan, names, &authors);
    bulk::load_sqlite(&args.database, names, rows, batching, |done| progress(args, done, started))
        .await
        .map_err(|e| format!("{}: {e}", args.database))?;
    let path = args.database.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| format!("{path}: {e}"))
}

async fn load_mysql(args: &LoadArgs, plan: &MessagePlan, names: &[String]) -> Result<u64, String> {
    let authors = authors();
    let started = Instant::now();
    let batching = Batching {
        rows_per_insert: MYSQL_ROWS_PER_INSERT,
        rows_per_transaction: ROWS_PER_TRANSACTION,
    };
    let rows = rows(args, plan, names, &authors);
    bulk::load_mysql(&args.database, rows, batching, |done| progress(args, done, started))
        .await
        .map_err(|e| format!("{}: {e}", args.database))
}

/// The scale-out groups, in the group set where the server's Redis
/// membership keeps it.
async fn create_redis_groups(url: &str, prefix: &str, names: &[String]) -> Result<(), String> {
    let config =
        RedisConfig { url: url.to_string(), key_prefix: prefix.to_string(), ..Default::default() };
    bulk::create_redis_groups(&config, names).await.map_err(|e| format!("--redis {url}: {e}"))
}

/// One connection making calls one at a time.
pub(crate) struct Caller {
    socket: connection::Socket,
    decoder: next_chat_signalr::Decoder,
    next_id: u64,
    timeout: Duration,
}

impl Caller {
    /// Connects as `user` (JSON protocol, header identity) to the hub at `url`;
    /// every call then waits at most `timeout`.
    pub(crate) async fn connect(
        url: &str,
        user: &str,
        timeout: Duration,
    ) -> Result<Caller, String> {
        let plan = Plan {
            index: 0,
            ws_url: crate::run::ws_url(url)?,
            source: None,
            user: user.to_string(),
            group: String::new(),
            group_index: 0,
            members: 0,
            create: false,
            sender_rank: None,
        };
        let settings =
            Settings { protocol: Protocol::Json, length: 0, timeout, tls: None, jwt_secret: None };
        let (socket, leftover) =
            tokio::time::timeout(timeout, connection::connect(&plan, &settings)).await.map_err(
                |_| format!("{url}: no connection within {} s", timeout.as_secs_f64()),
            )??;
        let mut decoder = Protocol::Json.decoder(usize::MAX);
        decoder.push(&leftover);
        Ok(Caller { socket, decoder, next_id: 0, timeout })
    }

    /// Invokes `method` and waits for its completion; returns the `OnHistory`
    /// arrays that came first and the result.
    pub(crate) async fn call(
        &mut self,
        method: Method,
        args: Vec<Value>,
    ) -> Result<(Vec<Value>, Value), String> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let target = method.name();
        let record = crate::wire::invocation(Protocol::Json, id.clone(), method, args);
        let text = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(record)
            .map_err(|_| "non-UTF-8 JSON".to_string())?;
        futures_util::SinkExt::send(&mut self.socket, WsMessage::Text(text))
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let mut history = Vec::new();
        let answer = tokio::time::timeout(self.timeout, async {
            loop {
                while let Some(message) =
                    self.decoder.next_message().map_err(|e| format!("{target}: {e}"))?
                {
                    match message {
                        HubMessage::Invocation { target, mut arguments, .. }
                            if Callback::parse(&target) == Some(Callback::OnHistory)
                                && !arguments.is_empty() =>
                        {
                            history.push(arguments.swap_remove(0));
                        }
                        HubMessage::Completion { invocation_id, outcome }
                            if invocation_id == id =>
                        {
                            return match outcome {
                                Outcome::Void => Ok(Value::Null),
                                Outcome::Result(value) => Ok(value),
                                Outcome::Error(error) => {
                                    Err(format!("{target}: the server answered: {error}"))
                                }
                            };
                        }
                        HubMessage::Close { error, .. } => {
                            return Err(format!(
                                "the server closed: {}",
                                error.unwrap_or_default()
                            ));
                        }
                        _ => {}
                    }
                }
                match self.socket.next().await {
                    Some(Ok(WsMessage::Text(text))) => self.decoder.push(text.as_bytes()),
                    Some(Ok(WsMessage::Binary(data))) => self.decoder.push(&data),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("connection lost: {e}")),
                    None => return Err("the server closed the connection".into()),
                }
            }
        })
        .await
        .map_err(|_| format!("{target}: no answer within {} s", self.timeout.as_secs_f64()))??;
        Ok((history, answer))
    }
}

/// The id of the first (oldest) message of a `Message[]`.
fn oldest_id(messages: &Value) -> Option<String> {
    messages.as_array()?.first()?.get(keys::ID)?.as_str().map(str::to_owned)
}

pub async fn probe(args: ProbeArgs) -> Result<Probed, String> {
    if args.probe_groups == 0 || args.probe_groups > args.groups {
        return Err("--probe-groups must be between 1 and --groups".into());
    }
    if args.page_size == 0 || args.page_size > 500 {
        return Err("--page-size must be between 1 and 500".into());
    }
    if args.list_limit == 0 || args.list_limit > 1000 {
        return Err("--list-limit must be between 1 and 1000".into());
    }
    if args.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let mut caller = Caller::connect(&args.url, &args.user, timeout).await?;
    let histogram =
        || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string());
    let (mut join, mut page, mut list) = (histogram()?, histogram()?, histogram()?);
    let mut on_history_messages = 0;
    let micros = |since: Instant| since.elapsed().as_micros() as u64;
    for round in 0..args.warmup + args.samples {
        let measured = round >= args.warmup;
        let g = rand::rng().random_range(0..args.probe_groups);
        let group = group_name(&args.group_prefix, g, args.groups);
        let started = Instant::now();
        let (history, result) = caller.call(Method::JoinGroup, vec![group.as_str().into()]).await?;
        let took = micros(started);
        if result.as_i64() != Some(JoinResult::Ok.wire()) {
            return Err(format!("JoinGroup {group}: result {result:?}, not Ok"));
        }
        let first = history.first().ok_or_else(|| format!("JoinGroup {group}: no OnHistory"))?;
        on_history_messages = first.as_array().map_or(0, <[Value]>::len);
        if on_history_messages == 0 {
            return Err(format!(
                "JoinGroup {group}: an empty OnHistory; load-history gives history to its \
                 first --history-groups groups, and --probe-groups must not exceed that"
            ));
        }
        if measured {
            join.saturating_record(took);
        }
        let mut before = oldest_id(first);
        for _ in 0..args.pages {
            let Some(id) = before.take() else { break };
            let started = Instant::now();
            let (_, messages) = caller
                .call(
                    Method::GetHistory,
                    vec![group.as_str().into(), id.into(), Value::Int(args.page_size as i64)],
                )
                .await?;
            if measured {
                page.saturating_record(micros(started));
            }
            before = oldest_id(&messages);
        }
        caller.call(Method::LeaveGroup, vec![group.as_str().into()]).await?;
        // A page after a random group, or the first page one time in ten.
        let first_page = rand::rng().random_range(0..10) == 0;
        let after = if first_page {
            Value::Null
        } else {
            let g = rand::rng().random_range(0..args.groups);
            group_name(&args.group_prefix, g, args.groups).into()
        };
        let started = Instant::now();
        let (_, groups) = caller
            .call(Method::ListGroupsPage, vec![after, Value::Int(args.list_limit as i64)])
            .await?;
        if measured {
            list.saturating_record(micros(started));
        }
        let listed = groups.as_array().map_or(0, <[Value]>::len);
        if first_page && listed < args.list_limit.min(args.groups) {
            return Err(format!(
                "ListGroupsPage: {listed} groups on the first page; was the database loaded \
                 with --groups {}?",
                args.groups
            ));
        }
    }
    Ok(Probed {
        samples: args.samples,
        join_ms: Summary::from_micros(&join),
        on_history_messages,
        get_history_ms: Summary::from_micros(&page),
        list_groups_page_ms: Summary::from_micros(&list),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_sort_as_their_numbers() {
        assert_eq!(group_name("h-", 7, 10_000), "h-0007");
        assert_eq!(group_name("h-", 9_999, 10_000), "h-9999");
        assert_eq!(group_name("h-", 0, 1), "h-0");
        let names: Vec<String> = (0..1000).map(|g| group_name("g", g, 1000)).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn texts_have_the_length_asked_and_name_their_message() {
        for length in [1, 20, 100, 1000] {
            let text = message_text(12, 345, length);
            assert_eq!(text.len(), length);
        }
        assert!(message_text(12, 345, 100).starts_with("message 345 of group 12: the quick"));
    }

    #[test]
    fn key_order_is_every_message_once_group_by_group() {
        let plan = MessagePlan { history_groups: 3, base: 1000, length: 30 };
        let order: Vec<u64> = plan.key_order(8).collect();
        assert_eq!(order, [0, 3, 6, 1, 4, 7, 2, 5]);
        let keys: Vec<(usize, i64)> =
            order.iter().map(|&i| plan.row(i)).map(|r| (r.group, r.millis)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(plan.key_order(0).count(), 0);
    }

    #[test]
    fn rows_interleave_groups_with_increasing_ids() {
        let plan = MessagePlan { history_groups: 3, base: 1000, length: 30 };
        let rows: Vec<Row> = (0..7).map(|i| plan.row(i)).collect();
        let groups: Vec<usize> = rows.iter().map(|r| r.group).collect();
        assert_eq!(groups, [0, 1, 2, 0, 1, 2, 0]);
        assert!(rows.windows(2).all(|w| w[0].millis < w[1].millis));
        assert!(rows[6].text.starts_with("message 2 of group 0"));
    }
}
