//! This instance's half of fan-out: which local connections have joined which
//! group, and handing each message to them without waiting.
//!
//! A messaging backend calls `LocalFanout::deliver` for every message of every
//! group, in id order per group. Delivery never awaits and holds a lock only to
//! copy a group's subscriber list (an `Arc`); it calls each recipient with no
//! lock held (a joining connection's gate aside), so deliveries to different
//! groups run in parallel and a slow connection cannot hold up the others: each
//! recipient owns a bounded queue and closes itself when it cannot keep up.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::domain::{ConnectionId, GroupId, Message, MessageId};

/// How many encodings of one message a delivery layer may cache (one per wire
/// format it speaks).
pub const ENCODING_SLOTS: usize = 4;

/// One message on its way to this instance's recipients. Recipients share it, so
/// the message is encoded once per wire format, not once per recipient.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    encoded: [OnceLock<Bytes>; ENCODING_SLOTS],
}

impl Delivery {
    pub fn new(message: Message) -> Delivery {
        Delivery { message, encoded: Default::default() }
    }

    /// The message encoded for wire format `slot`, encoded by the first caller.
    /// Panics if `slot >= ENCODING_SLOTS`: slots are chosen by our own code.
    pub fn encoded(&self, slot: usize, encode: impl FnOnce(&Message) -> Bytes) -> Bytes {
        self.encoded[slot].get_or_init(|| encode(&self.message)).clone()
    }
}

/// A connection as fan-out sees it. Implemented by the delivery layer (sockets).
pub trait Recipient: Send + Sync + 'static {
    fn connection_id(&self) -> &ConnectionId;

    /// The user the connection belongs to (`UserId::as_str`), so that fan-out
    /// can count a user's connections in a group without keeping a count.
    fn user(&self) -> &str;

    /// Queues `OnMessage` without waiting. A recipient whose queue is full
    /// closes its connection with an error rather than letting memory grow.
    fn deliver(&self, delivery: &Delivery);

    /// Queues `OnHistory` without waiting.
    fn deliver_history(&self, messages: &[Message]);

    /// At most how many bytes `message` takes in a history page on this
    /// connection's wire format; the chat rules cap pages with it.
    fn encoded_size(&self, message: &Message) -> usize;
}

/// While a connection is joining, its messages wait here until its history has
/// been sent, so it sees every message once and history first.
enum Gate {
    Joining(Vec<Arc<Delivery>>),
    Open,
}

struct Subscription {
    recipient: Arc<dyn Recipient>,
    /// Set (under `gate`'s lock, after the waiting messages went out) once the
    /// gate is open for good: from then on delivery takes no lock at all.
    open: AtomicBool,
    gate: Mutex<Gate>,
}

impl Subscription {
    fn deliver(&self, delivery: &Arc<Delivery>) {
        if self.open.load(Ordering::Acquire) {
            return self.recipient.deliver(delivery);
        }
        // Still joining, or opening right now: `PendingJoin::open` flushes the
        // waiting messages under this lock, so this one waits behind them.
        let mut gate = self.gate.lock();
        match &mut *gate {
            Gate::Joining(waiting) => waiting.push(Arc::clone(delivery)),
            Gate::Open => self.recipient.deliver(delivery),
        }
    }
}

/// Copy-on-write list of a group's local subscribers: delivery clones the `Arc`
/// and lets go of the map's lock before touching any recipient.
type Subscribers = Arc<Vec<Arc<Subscription>>>;

#[derive(Default)]
pub struct LocalFanout {
    groups: RwLock<HashMap<GroupId, Subscribers>>,
}

/// `LocalFanout::subscribe_at_most` refused: the user has as many connections
/// in the group as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyForUser;

/// Returned by `LocalFanout::subscribe`; `open` sends the history and then the
/// messages that arrived meanwhile.
pub struct PendingJoin {
    subscription: Arc<Subscription>,
}

impl PendingJoin {
    /// Sends `history` as `OnHistory`, then every message that arrived since
    /// `subscribe` and is not in that history, and from then on delivers live.
    pub fn open(self, history: &[Message]) {
        let sub = &self.subscription;
        sub.recipient.deliver_history(history);
        let seen: HashSet<MessageId> = history.iter().map(|m| m.id).collect();
        // Flush under the gate's lock, so a message arriving now waits behind
        // the ones that arrived before it. Recipients never block, so this is
        // brief. `open` is set last, under the lock: a delivery that sees it
        // set comes after every flushed message (a group's deliveries are
        // sequential), and one that does not takes the lock and waits.
        let mut gate = sub.gate.lock();
        if let Gate::Joining(waiting) = std::mem::replace(&mut *gate, Gate::Open) {
            for delivery in waiting.iter().filter(|d| !seen.contains(&d.message.id)) {
                sub.recipient.deliver(delivery);
            }
        }
        sub.open.store(true, Ordering::Release);
    }
}

impl LocalFanout {
    pub fn new() -> LocalFanout {
        LocalFanout::default()
    }

    /// Starts delivering the group's messages to `recipient`, held back until
    /// `PendingJoin::open`. Subscribing a connection that is already subscribed
    /// to the group keeps the existing subscription and returns `None`.
    pub fn subscribe(&self, group: &GroupId, recipient: Arc<dyn Recipient>) -> Option<PendingJoin> {
        self.subscribe_at_most(group, recipient, usize::MAX).unwrap_or(None)
    }

    /// `subscribe`, unless `max_per_user` of the recipient's user's connections
    /// are subscribed to the group already: then `Err(TooManyForUser)`. The
    /// count and the subscription happen under one lock, so concurrent joins of
    /// one user's connections cannot overshoot.
    pub fn subscribe_at_most(
        &self,
        group: &GroupId,
        recipient: Arc<dyn Recipient>,
        max_per_user: usize,
    ) -> Result<Option<PendingJoin>, TooManyForUser> {
        let mut groups = self.groups.write();
        let current = groups.entry(group.clone()).or_default();
        if current.iter().any(|s| s.recipient.connection_id() == recipient.connection_id()) {
            return Ok(None);
        }
        let user = recipient.user();
        if current.iter().filter(|s| s.recipient.user() == user).count() >= max_per_user {
            if current.is_empty() {
                groups.remove(group);
            }
            return Err(TooManyForUser);
        }
        let subscription = Arc::new(Subscription {
            recipient,
            open: AtomicBool::new(false),
            gate: Mutex::new(Gate::Joining(Vec::new())),
        });
        let mut next = Vec::with_capacity(current.len() + 1);
        next.extend(current.iter().cloned());
        next.push(Arc::clone(&subscription));
        *current = Arc::new(next);
        Ok(Some(PendingJoin { subscription }))
    }

    /// Stops delivering the group's messages to the connection. True when
    /// that left the group without local subscribers.
    pub fn unsubscribe(&self, group: &GroupId, connection: &ConnectionId) -> bool {
        let mut groups = self.groups.write();
        let Some(current) = groups.get_mut(group) else { return false };
        let next: Vec<_> =
            current.iter().filter(|s| s.recipient.connection_id() != connection).cloned().collect();
        if next.is_empty() {
            groups.remove(group);
            true
        } else {
            *current = Arc::new(next);
            false
        }
    }

    /// Hands the message to every local connection joined to its group and
    /// returns how many that was. Never waits.
    pub fn deliver(&self, message: Message) -> usize {
        let subscribers = {
            let groups = self.groups.read();
            match groups.get(&message.group) {
                Some(subscribers) => Arc::clone(subscribers),
                None => return 0,
            }
        };
        let delivery = Arc::new(Delivery::new(message));
        for subscription in subscribers.iter() {
            subscription.deliver(&delivery);
        }
        subscribers.len()
    }

    /// Local connections joined to the group (for tests and metrics).
    pub fn local_subscribers(&self, group: &GroupId) -> usize {
        let groups = self.groups.read();
        groups.get(group).map_or(0, |s| s.len())
    }
}
