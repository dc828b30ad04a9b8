//! Membership for the embedded mode: groups in SQLite, so they survive a
//! restart; members in memory, since a restart disconnects every member anyway.
//!
//! A group's members are counted per distinct user, each with the set of its
//! connection ids; a user stops being a member when its last connection leaves.
//! `join` decides and records under one short sync lock, so two joins racing for
//! the last place cannot both win.
use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use next_chat_core::{BackendError, ConnectionId, GroupId, JoinOutcome, Membership, UserId};
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::sqlite::SqliteStore;

type Members = HashMap<UserId, HashSet<ConnectionId>>;

pub struct EmbeddedMembership {
    store: SqliteStore,
    /// Groups known to exist. Groups are never deleted, so a hit here saves the
    /// write that `JoinGroup` would otherwise make on every join.
    known_groups: RwLock<HashSet<GroupId>>,
    members: Mutex<HashMap<GroupId, Members>>,
}

impl EmbeddedMembership {
    pub fn new(store: SqliteStore) -> EmbeddedMembership {
        EmbeddedMembership {
            store,
            known_groups: RwLock::new(HashSet::new()),
            members: Mutex::new(HashMap::new()),
        }
    }

    fn is_known(&self, group: &GroupId) -> bool {
        self.known_groups.read().contains(group)
    }

    fn remember(&self, group: &GroupId) {
        self.known_groups.write().insert(group.clone());
    }

    fn members(&self) -> MutexGuard<'_, HashMap<GroupId, Members>> {
        self.members.lock()
    }
}

#[async_trait]
impl Membership for EmbeddedMembership {
    async fn create_group(
        &self,
        group: &GroupId,
        owner: Option<&UserId>,
    ) -> Result<(), BackendError> {
        if self.is_known(group) {
            return Ok(());
        }
        self.store.create_group(group, owner).await?;
        self.remember(group);
        Ok(())
    }

    async fn groups_owned(&self, owner: &UserId) -> Result<usize, BackendError> {
        self.store.groups_owned(owner).await
    }

    async fn group_owner(&self, group: &GroupId) -> Result<Option<UserId>, BackendError> {
        self.store.group_owner(group).await
    }

    async fn group_exists(&self, group: &GroupId) -> Result<bool, BackendError> {
        if self.is_known(group) {
            return Ok(true);
        }
        let exists = self.store.group_exists(group).await?;
        if exists {
            self.remember(group);
        }
        Ok(exists)
    }

    async fn group_count(&self) -> Result<usize, BackendError> {
        self.store.group_count().await
    }

    async fn list_groups(
        &self,
        after: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<GroupId>, BackendError> {
        self.store.list_groups(after, limit).await
    }

    async fn join(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
        max_members: usize,
    ) -> Result<JoinOutcome, BackendError> {
        let mut groups = self.members();
        let members = groups.entry(group.clone()).or_default();
        if let Some(connections) = members.get_mut(user) {
            connections.insert(connection.clone());
            return Ok(JoinOutcome::Joined);
        }
        if members.len() >= max_members {
            if members.is_empty() {
                // Only when max_members is 0; keep the map free of empty groups.
                groups.remove(group);
            }
            return Ok(JoinOutcome::NoRoom);
        }
        members.insert(user.clone(), HashSet::from([connection.clone()]));
        Ok(JoinOutcome::Joined)
    }

    async fn leave(
        &self,
        group: &GroupId,
        user: &UserId,
        connection: &ConnectionId,
    ) -> Result<(), BackendError> {
        let mut groups = self.members();
        let Some(members) = groups.get_mut(group) else { return Ok(()) };
        if let Some(connections) = members.get_mut(user) {
            connections.remove(connection);
            if connections.is_empty() {
                members.remove(user);
            }
        }
        if members.is_empty() {
            groups.remove(group);
        }
        Ok(())
    }

    async fn member_count(&self, group: &GroupId) -> Result<usize, BackendError> {
        Ok(self.members().get(group).map_or(0, HashMap::len))
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, BackendError> {
        let mut users: Vec<UserId> = self
            .members()
            .get(group)
            .map(|members| members.keys().cloned().collect())
            .unwrap_or_default();
        users.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(users)
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.store.ping().await
    }
}
