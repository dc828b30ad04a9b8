//! The server side of SignalR: serves a [`Hub`] to stock SignalR clients.
//!
//! [`HubServer::router`] mounts negotiate and the three transports (WebSockets,
//! Server-Sent Events, Long Polling) on an axum router. Each connection runs one
//! transport-neutral [`session`] (handshake, decoding, invocations in order,
//! client timeout) and one writer that drains its bounded outbound queue and sends
//! keep-alive Pings. This module knows nothing of what the hub does.
//!
//! Architecture invariant: no lock is held across an `.await`; hub code is only
//! ever called from a connection's own session task.

mod config;
mod connection;
mod http;
mod hub;
mod inbound;
mod invocations;
mod load;
mod long_polling;
mod rate;
mod registry;
mod session;
mod sse;
mod state;
mod stateful;
mod websocket;
mod writer;
mod ws_frames;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use config::HubConfig;
pub use connection::{Connection, SendError};
pub use hub::{Hub, Identity, Invoked, Refused};
pub use session::CREDENTIAL_EXPIRED;

use registry::Registry;
use state::ServerState;

/// Serves one hub over HTTP. Cheap to keep; the router holds the shared state.
pub struct HubServer<H: Hub> {
    state: Arc<ServerState<H>>,
}

impl<H: Hub> HubServer<H> {
    pub fn new(hub: Arc<H>, config: HubConfig) -> Self {
        let limits = registry::Limits {
            max_connections: config.max_connections,
            max_connections_per_user: config.max_connections_per_user,
            max_connections_per_ip: config.max_connections_per_ip,
            max_pending_negotiations: config.max_pending_negotiations,
            max_pending_negotiations_per_user: config.max_pending_negotiations_per_user,
        };
        let registry = Arc::new(Registry::new(limits));
        let load = load::Load::start();
        Self { state: Arc::new(ServerState { hub, config, registry, load }) }
    }

    /// Routes `POST {path}/negotiate` and `GET`/`POST`/`DELETE {path}`.
    pub fn router(&self, path: &str) -> Router {
        let path = path.trim_end_matches('/');
        Router::new()
            .route(&format!("{path}/negotiate"), post(http::negotiate::<H>))
            .route(
                if path.is_empty() { "/" } else { path },
                get(http::connect::<H>).post(http::send::<H>).delete(http::delete::<H>),
            )
            .with_state(self.state.clone())
    }

    /// Open connections (handshaking ones included).
    pub fn connection_count(&self) -> usize {
        self.state.registry.live_count()
    }

    /// Negotiated connections no transport request has claimed yet.
    pub fn pending_negotiations(&self) -> usize {
        self.state.registry.pending_count()
    }

    /// Sends every connection a Close message with `allowReconnect: true`, lets the
    /// writers drain what is queued for at most `drain`, then ends them; every
    /// connected session gets its `disconnected`. New requests are refused with 503.
    pub async fn shutdown(&self, drain: Duration) {
        self.state.registry.shutdown(drain).await;
    }
}

impl<H: Hub> Clone for HubServer<H> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}
