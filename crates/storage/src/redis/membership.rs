//! Groups and members in Redis: the group list in sorted sets, each group's
//! members in a sorted set scored by expiry, kept alive by a heartbeat, and
//! the room check in a Lua script, so two instances racing for the last place
//! cannot both win. Every script touches one key, so each runs on one node of
//! a cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};
use next_chat_core::rate::Rate;
use next_chat_core::{BackendError, ConnectionId, GroupId, JoinOutcome, Membership, UserId};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tracing::warn;

use super::RedisConfig;
use super::connection::{self, Connection, run};
use crate::health::Health;

/// Separates user and instance in a member entry; neither may contain control
/// characters, so the split is unambiguous.
const MEMBER_SEPARATOR: char = '\u{1f}';

/// The first line of the membership scripts (Redis 7): they run even when
/// Redis is out of memory. Members cost a few bytes each and are bounded by
/// the member limit, and a heartbeat refused for a while would drop every
/// member of this instance; a full message bus must not also empty the groups.
/// What grows with use (messages, new groups) is still refused.
macro_rules! allow_oom {
    () => {
        "#!lua flags=allow-oom\n"
    };
}

/// The start of the member scripts after `allow_oom`
/// (`scripts/members_prelude.lua`): drops the expired entries of the members
/// set KEYS[1] and defines `live_users(user)`, which counts the distinct users
/// left and says whether `user` is one of them. Entries are `user<US>instance`.
macro_rules! members_script {
    ($file:literal) => {
        concat!(allow_oom!(), include_str!("scripts/members_prelude.lua"), include_str!($file))
    };
}

/// KEYS[1] members set; ARGV: user, instance, max members, ttl ms, and "1" when
/// this instance already counts the user as a member (then no room check: a
/// member always gets back in, even if its entry expired during an outage).
const JOIN_SCRIPT: &str = members_script!("scripts/join.lua");

/// KEYS[1] members set; returns how many distinct users have live entries.
const COUNT_SCRIPT: &str = members_script!("scripts/count.lua");

/// KEYS[1] members set; returns the distinct users whose entries live.
const MEMBERS_SCRIPT: &str = members_script!("scripts/members.lua");

/// KEYS[1] members set; ARGV: ttl ms, instance, then users. Pushes the expiry
/// of this instance's entries of those users.
const HEARTBEAT_SCRIPT: &str = concat!(allow_oom!(), include_str!("scripts/heartbeat.lua"));

/// KEYS[1] a sorted set of the group list; ARGV: groups. Lists the groups
/// again (if Redis lost its data, this puts back the groups in use), even
/// when Redis is out of memory, as the members' refresh does.
const RELIST_SCRIPT: &str = concat!(allow_oom!(), include_str!("scripts/relist.lua"));

/// KEYS[1] a user's shared rate bucket; ARGV: microseconds per token, burst.
/// Returns 0 when a token was taken, else the microseconds to wait.
const TAKE_TOKEN_SCRIPT: &str = include_str!("scripts/take_token.lua");

/// Commands a heartbeat (or a shutdown) has in flight at once.
const HEARTBEAT_CONCURRENCY: usize = 64;

/// Groups per script call that lists groups again on a heartbeat.
const HEARTBEAT_GROUPS_PER_CALL: usize = 200;

/// Joins and leaves of one (group, user) on this instance are serialized, so
/// a leave's ZREM cannot overtake a later join's ZADD. Striped to bound memory.
const MEMBER_LOCK_STRIPES: usize = 64;

type LocalMembers = HashMap<GroupId, HashMap<UserId, HashSet<ConnectionId>>>;

struct MembershipInner {
    config: RedisConfig,
    connection: Connection,
    health: Health,
    /// This instance's connections per group and user: what the heartbeat
    /// refreshes and what `shutdown` removes.
    local: Mutex<LocalMembers>,
    /// Groups known to exist (groups are never deleted), to save a round trip
    /// on every join.
    known_groups: Mutex<HashSet<GroupId>>,
    member_locks: Vec<tokio::sync::Mutex<()>>,
    join_script: Script,
    count_script: Script,
    members_script: Script,
    heartbeat_script: Script,
    relist_script: Script,
    take_token_script: Script,
}

pub struct RedisMembership {
    inner: Arc<MembershipInner>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

impl RedisMembership {
    /// Connects and starts the heartbeat that keeps this instance's members alive.
    pub async fn start(config: RedisConfig) -> Result<RedisMembership, BackendError> {
        config.validate()?;
        let connection = connection::commands(&config).await?;
        let inner = Arc::new(MembershipInner {
            connection,
            health: Health::new("redis membership"),
            local: Mutex::new(HashMap::new()),
            known_groups: Mutex::new(HashSet::new()),
            member_locks: (0..MEMBER_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            join_script: Script::new(JOIN_SCRIPT),
            count_script: Script::new(COUNT_SCRIPT),
            members_script: Script::new(MEMBERS_SCRIPT),
            heartbeat_script: Script::new(HEARTBEAT_SCRIPT),
            relist_script: Script::new(RELIST_SCRIPT),
            take_token_script: Script::new(TAKE_TOKEN_SCRIPT),
            config,
        });
        let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&inner)));
        Ok(RedisMembership { inner, heartbeat: Mutex::new(Some(heartbeat)) })
    }

    /// Refreshes the expiry of this instance's members now (the heartbeat does
    /// this every `heartbeat_interval`).
    pub async fn heartbeat(&self) -> Result<(), BackendError> {
        self.inner.heartbeat().await
    }

    fn stop_heartbeat(&self) {
        let heartbeat = self.heartbeat.lock().take();
        if let Some(heartbeat) = heartbeat {
            heartbeat.abort();
        }
    }
}

impl Drop for RedisMembership {
    /// Stops heart-beating without removing the members, as a crash would;
    /// `shutdown` is the orderly way out.
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

fn member_entry(user: &UserId, instance: &str) -> String {
    format!("{}{MEMBER_SEPARATOR}{instance}", user.as_str())
}

/// Runs `commands` with at most `HEARTBEAT_CONCURRENCY` in flight; the first
/// error, if any, after all have run.
async fn all_of<F>(commands: Vec<F>) -> Result<(), BackendError>
where
    F: std::future::Future<Output = Result<(), BackendError>>,
{
    let mut first_error = None;
    let mut commands = commands.into_iter().peekable();
    while commands.peek().is_some() {
        let batch: Vec<F> = commands.by_ref().take(HEARTBEAT_CONCURRENCY).collect();
        for result in join_all(batch).await {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl MembershipInner {
    fn local(&self) -> parking_lot::MutexGuard<'_, LocalMembers> {
        self.local.lock()
    }

    fn member_lock(&self, group: &GroupId, user: &UserId) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((group, user));
        &self.member_locks[(hash % MEMBER_LOCK_STRIPES as u64) as usize]
    }

    fn is_known(&self, group: &GroupId) -> bool {
        self.known_groups.lock().contains(group)
    }

    fn remember(&self, group: &GroupId) {
        self.known_groups.lock().insert(group.clone());
    }

    /// Pushes the expiry of this instance's member entries and lists their
    /// groups again (if Redis lost its data, this puts back the groups in use).
    async fn heartbeat(&self) -> Result<(), BackendError> {
        let snapshot: Vec<(GroupId, Vec<String>)> = self
            .local()
            .iter()
            .map(|(group, users)| {
                (group.clone(), users.keys().map(|u| u.as_str().to_string()).collect())
            })
            .collect();
        let ttl_ms = self.config.member_ttl.as_millis() as u64;
        let mut lists: HashMap<String, Vec<&str>> = HashMap::new();
        for (group, _) in &snapshot {
            lists.entry(self.config.group_list_key(group)).or_default().push(group.as_str());
        }
        let mut relist = Vec::new();
        for (key, groups) in &lists {
            for chunk in groups.chunks(HEARTBEAT_GROUPS_PER_CALL) {
                let mut invocation = self.relist_script.prepare_invoke();
                invocation.key(key).arg(chunk);
                let mut connection = self.connection.clone();
                relist.push(async move {
                    run(&self.config, &self.health, "heartbeat", async {
                        invocation.invoke_async::<i64>(&mut connection).await
                    })
                    .await
                    .map(drop)
                });
            }
        }
        all_of(relist).await?;
        let refresh = snapshot
            .iter()
            .map(|(group, users)| {
                let mut invocation = self.heartbeat_script.prepare_invoke();
                invocation
                    .key(self.config.members_key(group))
                    .arg(ttl_ms)
                    .arg(&self.config.instance_id)
                    .arg(users);
                let mut connection = self.connection.clone();
                async move {
                    run(&self.config, &self.health, "heartbeat", async {
                        invocation.invoke_async::<i64>(&mut connection).await
                    })
                    .await
                    .map(drop)
                }
            })
            .collect();
        all_of(refresh).await
    }
}

async fn heartbeat_loop(inner: Arc<MembershipInner>) {
    let mut ticks = tokio::time::interval(inner.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // A failure is logged once by `Health`; the next tick tries again.
        let _ = inner.heartbeat().await;
    }
}

#[async_trait]
impl Membership for RedisMembership {
    /// Lists the group, then, if it was new, records its owner (two keys
    /// that may live on different nodes of a cluster, so not one script: a
    /// crash between leaves a group that counts for nobody).
    async fn create_group(
        &self,
        group: &GroupId,
        owner: Option<&UserId>,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        if inner.is_known(group) {
            return Ok(());
        }
        let mut connection = inner.connection.clone();
        let added = run(&inner.config, &inner.health, "create group", async {
            ::redis::cmd("ZADD")
                .arg(inner.config.group_list_key(group))
                .arg("NX")
                .arg(0)
                .arg(group.as_str())
                .query_async::<i64>(&mut connection)
                .await
        })
        .await?;
        if let (1, Some(owner)) = (added, owner) {
            run(&inner.config, &inner.health, "record group owner", async {
                ::redis::cmd("HSET")
                    .arg(inner.config.owners_key())
                    .arg(group.as_str())
                    .arg(owner.as_str())
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await?;
            run(&inner.config, &inner.health, "record group owner", async {
                ::redis::cmd("SADD")
                    .arg(inner.config.owned_key(owner))
                    .arg(group.as_str())
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        }
        inner.remember(group);
        Ok(())
    }

    async fn groups_owned(&self, owner: &UserId) -> Result<usize, BackendError> {
        let inner = &self.inner;
        let mut connection = inner.connection.clone();
        run(&inner.config, &inner.health, "count owned groups", async {
            ::redis::cmd("SCARD")
                .arg(inner.config.owned_key(owner))
                .query_async::<usize>(&mut connection)
                .await
        })
        .await
    }

    async fn group_owner(&self, group: &GroupId) -> Result<Option<UserId>, BackendError> {
        let inner = &self.inner;
        let mut connection = inner.connection.clone();
        let owner: Option<String> = run(&inner.config, &inner.health, "read group owner", async {
            ::redis::cmd("HGET")
                .arg(inner.config.owners_key())
                .arg(group.as_str())
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(owner.map(|owner| UserId::from_trusted(&owner)))
    }

    /// One script call (`scripts/take_token.lua`) on the user's bucket key.
    async fn take_shared_token(
        &self,
        bucket: &str,
        user: &UserId,
        rate: &Rate,
    ) -> Result<Option<Duration>, BackendError> {
        let inner = &self.inner;
        let interval = (rate.period / rate.per_period.max(1)).as_micros().max(1);
        let mut invocation = inner.take_token_script.prepare_invoke();
        invocation
            .key(inner.config.rate_key(bucket, user))
            .arg(interval as u64)
            .arg(rate.burst.max(1));
        let mut connection = inner.connection.clone();
        let wait_us: u64 = run(&inner.config, &inner.health, "take a rate token", async {
            invocation.invoke_async(&mut connection).await
        })
        .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
    }

    async fn group_exists(&self, group: &GroupId) -> Result<bool, BackendError> {
        let inner = &self.inner;
        if inner.is_known(group) {
            return Ok(true);
        }
        let mut connection = inner.connection.clone();
        let score: Option<f64> = run(&inner.config, &inner.health, "read group", async {
            ::redis::cmd("ZSCORE")
                .arg(inner.config.group_list_key(group))
                .arg(group.as_str())
                .query_async(&mut connection)
                .await
        })
        .await?;
        if score.is_some() {
            inner.remember(group);
        }
        Ok(score.is_some())
    }

    async fn group_count(&self) -> Result<usize, BackendError> {
        let inner = &self.inner;
        let counts = try_join_all(inner.config.group_list_keys().into_iter().map(|key| {
            let mut connection = inner.connection.clone();
            async move {
                run(&inner.config, &inner.health, "count groups", async {
                    ::redis::cmd("ZCARD").arg(key).query_async::<usize>(&mut connection).await
                })
                .await
            }
        }))
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// A page from each sorted set of the group list (one in a single Redis),
    /// merged: ZRANGEBYLEX orders by bytes, which for UTF-8 is code-point order.
    async fn list_groups(
        &self,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<GroupId>, BackendError> {
        let inner = &self.inner;
        let start = match after {
            Some(after) => format!("({}", after.as_str()),
            None => "-".to_string(),
        };
        let pages = try_join_all(inner.config.group_list_keys().into_iter().map(|key| {
            let mut connection = inner.connection.clone();
            let start = &start;
            async move {
                run(&inner.config, &inner.health, "list groups", async {
                    ::redis::cmd("ZRANGEBYLEX")
                        .arg(key)
                        .arg(start)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .query_async::<Vec<String>>(&mut connection)
                        .await
                })
                .await
            }
        }))
        .await?;
        let mut groups: Vec<String> = pages.into_iter().flatten().collect();
        groups.sort_unstable();
        groups.truncate(limit);
        Ok(groups.iter().map(|g| GroupId::from_trusted(g)).collect())
    }

    async fn join(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
        max_members: usize,
    ) -> Result<JoinOutcome, BackendError> {
        let inner = &self.inner;
        let _serial = inner.member_lock(group, user).lock().await;
        let already_member = inner.local().get(group).is_some_and(|users| users.contains_key(user));
        let mut redis = inner.connection.clone();
        let mut invocation = inner.join_script.prepare_invoke();
        invocation
            .key(inner.config.members_key(group))
            .arg(user.as_str())
            .arg(&inner.config.instance_id)
            .arg(max_members)
            .arg(inner.config.member_ttl.as_millis() as u64)
            .arg(if already_member { "1" } else { "0" });
        let admitted: i64 = run(&inner.config, &inner.health, "join", async {
            invocation.invoke_async(&mut redis).await
        })
        .await?;
        if admitted != 1 {
            return Ok(JoinOutcome::NoRoom);
        }
        inner
            .local()
            .entry(group.clone())
            .or_default()
            .entry(user.clone())
            .or_default()
            .insert(connection.clone());
        Ok(JoinOutcome::Joined)
    }

    async fn leave(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let _serial = inner.member_lock(group, user).lock().await;
        let last_connection = {
            let mut local = inner.local();
            let Some(users) = local.get_mut(group) else { return Ok(()) };
            let Some(connections) = users.get_mut(user) else { return Ok(()) };
            if !connections.remove(connection) || !connections.is_empty() {
                return Ok(());
            }
            users.remove(user);
            if users.is_empty() {
                local.remove(group);
            }
            true
        };
        if last_connection {
            // If this fails the entry is no longer refreshed and expires.
            let mut redis = inner.connection.clone();
            run(&inner.config, &inner.health, "leave", async {
                ::redis::cmd("ZREM")
                    .arg(inner.config.members_key(group))
                    .arg(member_entry(user, &inner.config.instance_id))
                    .query_async::<i64>(&mut redis)
                    .await
            })
            .await?;
        }
        Ok(())
    }

    async fn member_count(&self, group: &GroupId) -> Result<usize, BackendError> {
        let inner = &self.inner;
        let mut redis = inner.connection.clone();
        let mut invocation = inner.count_script.prepare_invoke();
        invocation.key(inner.config.members_key(group));
        let count: i64 = run(&inner.config, &inner.health, "count members", async {
            invocation.invoke_async(&mut redis).await
        })
        .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, BackendError> {
        let inner = &self.inner;
        let mut redis = inner.connection.clone();
        let mut invocation = inner.members_script.prepare_invoke();
        invocation.key(inner.config.members_key(group));
        let names: Vec<String> = run(&inner.config, &inner.health, "list members", async {
            invocation.invoke_async(&mut redis).await
        })
        .await?;
        let mut users: Vec<UserId> = names.iter().map(|name| UserId::from_trusted(name)).collect();
        users.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(users)
    }

    async fn check(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        let mut connection = inner.connection.clone();
        // A cluster answers for every master.
        run(&inner.config, &inner.health, "ping", async {
            ::redis::cmd("PING").query_async::<::redis::Value>(&mut connection).await
        })
        .await?;
        Ok(())
    }

    async fn shutdown(&self) {
        self.stop_heartbeat();
        let inner = &self.inner;
        let local = std::mem::take(&mut *inner.local());
        let removals = local
            .iter()
            .map(|(group, users)| {
                let entries: Vec<String> =
                    users.keys().map(|u| member_entry(u, &inner.config.instance_id)).collect();
                let mut connection = inner.connection.clone();
                async move {
                    run(&inner.config, &inner.health, "free places at shutdown", async {
                        ::redis::cmd("ZREM")
                            .arg(inner.config.members_key(group))
                            .arg(entries)
                            .query_async::<i64>(&mut connection)
                            .await
                    })
                    .await
                    .map(drop)
                }
            })
            .collect();
        if let Err(error) = all_of(removals).await {
            warn!(%error, "could not free this instance's places; they expire on their own");
        }
    }
}
