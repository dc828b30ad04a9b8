//! Which connections exist: negotiated ones waiting for (or bound to) a transport,
//! and live ones, counted so that shutdown can wait for them and so that the
//! connection caps (in total, per user, per client address) and the cap on
//! negotiated-but-unclaimed connections hold.
//!
//! Every count is kept by a guard that gives its place back on drop
//! ([`Admission`], [`PendingSlot`]), so no path that forgets a connection (a failed
//! upgrade, a client that goes away, a timeout, shutdown) can leak a place.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ws::WebSocket;
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::connection::{CloseRequest, Connection};
use crate::negotiate::Transport;

/// How long shutdown waits for writers after it told them to stop draining.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Registry {
    /// Negotiated connections by the token transport requests carry as `?id=`.
    negotiated: Mutex<HashMap<String, Arc<Negotiated>>>,
    /// Every open connection by connection id, for shutdown.
    live: Mutex<HashMap<String, Connection>>,
    /// `live.len()`, watchable so shutdown can wait for zero without polling.
    live_count: watch::Sender<usize>,
    shutting_down: AtomicBool,
    limits: Limits,
    /// Connections admitted (a transport is starting or running), for the caps.
    admitted: Mutex<Counts<IpAddr>>,
    /// Negotiated connections no transport request has claimed yet.
    pending: Mutex<Counts<()>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// The caps the registry enforces; `None` is no cap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_user: Option<usize>,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) max_pending_negotiations: Option<usize>,
    pub(crate) max_pending_negotiations_per_user: Option<usize>,
}

/// Which cap a request reached; `http.rs` turns it into a status and a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitReached {
    Connections(usize),
    ConnectionsPerUser(usize),
    ConnectionsPerIp(usize),
    PendingNegotiations(usize),
    PendingNegotiationsPerUser(usize),
}

/// A total and its split by user and (for connections) by client address.
#[derive(Debug)]
struct Counts<K> {
    total: usize,
    by_user: HashMap<String, usize>,
    by_key: HashMap<K, usize>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Self { total: 0, by_user: HashMap::new(), by_key: HashMap::new() }
    }
}

impl<K: Eq + Hash> Counts<K> {
    fn user(&self, user: &str) -> usize {
        self.by_user.get(user).copied().unwrap_or(0)
    }

    fn key(&self, key: &K) -> usize {
        self.by_key.get(key).copied().unwrap_or(0)
    }

    fn add(&mut self, user: &str, key: Option<K>) {
        self.total += 1;
        *self.by_user.entry(user.to_owned()).or_default() += 1;
        if let Some(key) = key {
            *self.by_key.entry(key).or_default() += 1;
        }
    }

    /// Entries that reach zero are removed, so the maps hold only users and
    /// addresses with something open.
    fn remove(&mut self, user: &str, key: Option<&K>) {
        self.total = self.total.saturating_sub(1);
        decrement(&mut self.by_user, user);
        if let Some(key) = key {
            decrement(&mut self.by_key, key);
        }
    }
}

fn decrement<Q: Eq + Hash + ?Sized, K: Eq + Hash + std::borrow::Borrow<Q>>(
    map: &mut HashMap<K, usize>,
    key: &Q,
) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

fn over(limit: Option<usize>, count: usize) -> Option<usize> {
    limit.filter(|limit| count >= *limit)
}

/// One admitted connection's place under the connection caps, held from the
/// transport request until the connection is gone.
#[derive(Debug)]
pub(crate) struct Admission {
    registry: Weak<Registry>,
    user: String,
    ip: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.admitted.lock().remove(&self.user, self.ip.as_ref());
        }
    }
}

/// A negotiated connection's place under the pending-negotiation caps, held
/// while it waits for a transport request ([`NegotiatedState::Pending`]).
#[derive(Debug)]
pub(crate) struct PendingSlot {
    registry: Weak<Registry>,
    user: String,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.pending.lock().remove(&self.user, None);
        }
    }
}

/// A connection created by negotiate.
#[derive(Debug)]
pub(crate) struct Negotiated {
    pub(crate) connection_id: String,
    pub(crate) token: String,
    pub(crate) user: String,
    pub(crate) state: Mutex<NegotiatedState>,
    /// The client asked for stateful reconnect and the server allows it.
    pub(crate) stateful: bool,
    /// Set while a POST to this connection is being handled: one at a time.
    pub(crate) posting: AtomicBool,
}

#[derive(Debug)]
pub(crate) enum NegotiatedState {
    /// No transport request yet; the slot counts it as pending until then.
    Pending {
        _slot: PendingSlot,
    },
    /// `handover` is set for a connection that stateful reconnect may resume.
    WebSockets {
        handover: Option<Arc<dyn Resumable>>,
    },
    /// SSE and long polling receive the client's messages through POSTs, which
    /// hand the bodies to the session through `inbound`.
    ServerSentEvents {
        inbound: mpsc::Sender<Bytes>,
        connection: Connection,
    },
    LongPolling {
        inbound: mpsc::Sender<Bytes>,
        connection: Connection,
        polls: Arc<dyn LongPoll>,
    },
}

impl NegotiatedState {
    pub(crate) fn transport(&self) -> Option<Transport> {
        match self {
            NegotiatedState::Pending { .. } => None,
            NegotiatedState::WebSockets { .. } => Some(Transport::WebSockets),
            NegotiatedState::ServerSentEvents { .. } => Some(Transport::ServerSentEvents),
            NegotiatedState::LongPolling { .. } => Some(Transport::LongPolling),
        }
    }
}

/// A WebSocket connection that stateful reconnect keeps, as the registry holds
/// it so that a new socket with the same token can take it over.
pub(crate) trait Resumable: Send + Sync + std::fmt::Debug {
    /// Whether a new socket may take the connection over now.
    fn accepts(&self) -> bool;

    fn connection(&self) -> &Connection;

    /// Gives a new socket to the connection; `false` (the socket is dropped)
    /// when it no longer accepts one.
    fn hand_over(&self, socket: WebSocket) -> bool;
}

/// A long-polling connection's outbound side, as the registry holds it so
/// that each `GET` can take what is queued.
pub(crate) trait LongPoll: Send + Sync + std::fmt::Debug {
    /// Answers one poll (see `long_polling::poll`).
    fn poll(self: Arc<Self>, timeout: Duration, max_bytes: usize) -> BoxFuture<'static, Response>;
}

/// Keeps a connection counted as live while any holder (session, writer) exists.
#[derive(Debug)]
pub(crate) struct LiveEntry {
    registry: Arc<Registry>,
    id: String,
    /// Gives the connection's place under the caps back with the entry.
    _admission: Admission,
}

pub(crate) type LiveGuard = Arc<LiveEntry>;

impl Drop for LiveEntry {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock();
        live.remove(&self.id);
        self.registry.live_count.send_replace(live.len());
    }
}

impl Registry {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            negotiated: Mutex::default(),
            live: Mutex::default(),
            live_count: watch::channel(0).0,
            shutting_down: AtomicBool::new(false),
            limits,
            admitted: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    /// Whether `user` (from `ip`, when known) may start one more connection now;
    /// checked again, and the place taken, by [`Registry::admit`].
    pub(crate) fn check_room(&self, user: &str, ip: Option<IpAddr>) -> Result<(), LimitReached> {
        let admitted = self.admitted.lock();
        self.room(&admitted, user, ip)
    }

    fn room(
        &self,
        admitted: &Counts<IpAddr>,
        user: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), LimitReached> {
        let limits = &self.limits;
        if let Some(limit) = over(limits.max_connections_per_user, admitted.user(user)) {
            return Err(LimitReached::ConnectionsPerUser(limit));
        }
        if let Some(ip) = ip
            && let Some(limit) = over(limits.max_connections_per_ip, admitted.key(&ip))
        {
            return Err(LimitReached::ConnectionsPerIp(limit));
        }
        if let Some(limit) = over(limits.max_connections, admitted.total) {
            return Err(LimitReached::Connections(limit));
        }
        Ok(())
    }

    /// Takes a place for a connection of `user` from `ip` (`None` when the
    /// address is unknown: the per-address cap does not apply), or says which
    /// cap is reached.
    pub(crate) fn admit(
        self: &Arc<Self>,
        user: &str,
        ip: Option<IpAddr>,
    ) -> Result<Admission, LimitReached> {
        let mut admitted = self.admitted.lock();
        self.room(&admitted, user, ip)?;
        admitted.add(user, ip);
        Ok(Admission { registry: Arc::downgrade(self), user: user.to_owned(), ip })
    }

    /// Takes a place for a negotiated connection of `user` that no transport has
    /// claimed yet, or says which cap is reached.
    pub(crate) fn reserve_pending(
        self: &Arc<Self>,
        user: &str,
    ) -> Result<PendingSlot, LimitReached> {
        let limits = &self.limits;
        let mut pending = self.pending.lock();
        if let Some(limit) = over(limits.max_pending_negotiations_per_user, pending.user(user)) {
            return Err(LimitReached::PendingNegotiationsPerUser(limit));
        }
        if let Some(limit) = over(limits.max_pending_negotiations, pending.total) {
            return Err(LimitReached::PendingNegotiations(limit));
        }
        pending.add(user, None);
        Ok(PendingSlot { registry: Arc::downgrade(self), user: user.to_owned() })
    }

    /// Negotiated connections waiting for a transport request.
    pub(crate) fn pending_count(&self) -> usize {
        self.pending.lock().total
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live.lock().len()
    }

    pub(crate) fn register_live(
        self: &Arc<Self>,
        connection: &Connection,
        admission: Admission,
    ) -> LiveGuard {
        let mut live = self.live.lock();
        live.insert(connection.id().to_owned(), connection.clone());
        self.live_count.send_replace(live.len());
        if self.is_shutting_down() {
            // Raced with shutdown: it will not see this one, so close it here.
            connection.request_close(shutdown_close());
        }
        Arc::new(LiveEntry {
            registry: self.clone(),
            id: connection.id().to_owned(),
            _admission: admission,
        })
    }

    /// Records a negotiated connection and forgets it after `timeout` unless a
    /// transport request claimed it.
    pub(crate) fn add_negotiated(self: &Arc<Self>, negotiated: Negotiated, timeout: Duration) {
        let token = negotiated.token.clone();
        self.negotiated.lock().insert(token.clone(), Arc::new(negotiated));
        let registry: Weak<Registry> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(registry) = registry.upgrade() {
                registry.remove_if_pending(&token);
            }
        });
    }

    pub(crate) fn negotiated(&self, token: &str) -> Option<Arc<Negotiated>> {
        self.negotiated.lock().get(token).cloned()
    }

    pub(crate) fn remove_negotiated(&self, token: &str) {
        self.negotiated.lock().remove(token);
    }

    fn remove_if_pending(&self, token: &str) {
        let mut negotiated = self.negotiated.lock();
        let pending = negotiated
            .get(token)
            .is_some_and(|n| matches!(*n.state.lock(), NegotiatedState::Pending { .. }));
        if pending {
            negotiated.remove(token);
            info!("a negotiated connection was never claimed by a transport; forgotten");
        }
    }

    pub(crate) async fn shutdown(&self, drain: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        self.negotiated
            .lock()
            .retain(|_, n| !matches!(*n.state.lock(), NegotiatedState::Pending { .. }));
        let connections: Vec<Connection> = self.live.lock().values().cloned().collect();
        info!(
            connections = connections.len(),
            drain_ms = drain.as_millis() as u64,
            "shutting down: closing every connection with allowReconnect"
        );
        for connection in &connections {
            connection.request_close(shutdown_close());
        }
        let mut count = self.live_count.subscribe();
        if tokio::time::timeout(drain, count.wait_for(|n| *n == 0)).await.is_ok() {
            return;
        }
        for connection in self.live.lock().values() {
            connection.stop_draining();
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, count.wait_for(|n| *n == 0)).await.is_err() {
            warn!(
                remaining = self.live_count(),
                "shutdown: some connections did not finish in time"
            );
        }
    }
}

fn shutdown_close() -> CloseRequest {
    CloseRequest {
        error: None,
        allow_reconnect: true,
        send_close_message: true,
        drain: true,
        reason: "server shutting down".into(),
    }
}
