//! Which connections exist: negotiated ones waiting for (or bound to) a transport,
//! and live ones, counted so that shutdown can wait for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::connection::{CloseRequest, Connection};
use super::long_polling::PollState;
use crate::negotiate::Transport;

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere is no reason to stop serving.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            negotiated: Mutex::default(),
            live: Mutex::default(),
            live_count: watch::channel(0).0,
            shutting_down: AtomicBool::new(false),
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
}

#[derive(Debug)]
pub(crate) enum NegotiatedState {
    /// No transport request yet.
    Pending,
    WebSockets,
    /// SSE and long polling receive the client's messages through POSTs, which
    /// hand the bodies to the session through `inbound`.
    ServerSentEvents {
        inbound: mpsc::Sender<Bytes>,
        connection: Connection,
    },
    LongPolling {
        inbound: mpsc::Sender<Bytes>,
        connection: Connection,
        polls: Arc<PollState>,
    },
}

impl NegotiatedState {
    pub(crate) fn transport(&self) -> Option<Transport> {
        match self {
            NegotiatedState::Pending => None,
            NegotiatedState::WebSockets => Some(Transport::WebSockets),
            NegotiatedState::ServerSentEvents { .. } => Some(Transport::ServerSentEvents),
            NegotiatedState::LongPolling { .. } => Some(Transport::LongPolling),
        }
    }
}

/// Keeps a connection counted as live while any holder (session, writer) exists.
#[derive(Debug)]
pub(crate) struct LiveEntry {
    registry: Arc<Registry>,
    id: String,
}

pub(crate) type LiveGuard = Arc<LiveEntry>;

impl Drop for LiveEntry {
    fn drop(&mut self) {
        let mut live = lock(&self.registry.live);
        live.remove(&self.id);
        self.registry.live_count.send_replace(live.len());
    }
}

impl Registry {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn live_count(&self) -> usize {
        lock(&self.live).len()
    }

    pub(crate) fn register_live(self: &Arc<Self>, connection: &Connection) -> LiveGuard {
        let mut live = lock(&self.live);
        live.insert(connection.id().to_owned(), connection.clone());
        self.live_count.send_replace(live.len());
        if self.is_shutting_down() {
            // Raced with shutdown: it will not see this one, so close it here.
            connection.request_close(shutdown_close());
        }
        Arc::new(LiveEntry { registry: self.clone(), id: connection.id().to_owned() })
    }

    /// Records a negotiated connection and forgets it after `timeout` unless a
    /// transport request claimed it.
    pub(crate) fn add_negotiated(self: &Arc<Self>, negotiated: Negotiated, timeout: Duration) {
        let token = negotiated.token.clone();
        lock(&self.negotiated).insert(token.clone(), Arc::new(negotiated));
        let registry: Weak<Registry> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(registry) = registry.upgrade() {
                registry.remove_if_pending(&token);
            }
        });
    }

    pub(crate) fn negotiated(&self, token: &str) -> Option<Arc<Negotiated>> {
        lock(&self.negotiated).get(token).cloned()
    }

    pub(crate) fn remove_negotiated(&self, token: &str) {
        lock(&self.negotiated).remove(token);
    }

    fn remove_if_pending(&self, token: &str) {
        let mut negotiated = lock(&self.negotiated);
        let pending = negotiated
            .get(token)
            .is_some_and(|n| matches!(*lock(&n.state), NegotiatedState::Pending));
        if pending {
            negotiated.remove(token);
            info!("a negotiated connection was never claimed by a transport; forgotten");
        }
    }

    pub(crate) async fn shutdown(&self, drain: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        lock(&self.negotiated).retain(|_, n| !matches!(*lock(&n.state), NegotiatedState::Pending));
        let connections: Vec<Connection> = lock(&self.live).values().cloned().collect();
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
        for connection in lock(&self.live).values() {
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
