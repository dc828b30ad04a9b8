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

mod connection;
mod http;
mod load;
mod long_polling;
mod rate;
mod registry;
mod session;
mod sse;
mod stateful;
mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{get, post};
use futures_util::future::BoxFuture;

pub use connection::{Connection, SendError};
pub use session::CREDENTIAL_EXPIRED;

use crate::negotiate::Transport;
use crate::value::Value;
use registry::Registry;

/// What a SignalR server serves: identity, connection lifetime and invocations.
pub trait Hub: Send + Sync + 'static {
    /// Per-connection state, created by [`Hub::connected`].
    type Session: Send + Sync + 'static;

    /// Maps a credential to a user. The token is the `Authorization` header value
    /// with a leading `Bearer ` removed, else the `access_token` query parameter (the
    /// header wins). `Err` answers 401 with the reason (and its challenge, if any).
    /// Called on negotiate and on every transport request.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Identity, Refused>> + Send;

    /// The refusal (401) of a request that carries no credential at all.
    fn unauthenticated(&self) -> Refused {
        Refused::from(
            "no identity: send an Authorization header or an access_token query parameter"
                .to_owned(),
        )
    }

    /// A connection completed its handshake. `Err` closes it with that error.
    fn connected(
        &self,
        connection: Connection,
    ) -> impl Future<Output = Result<Self::Session, String>> + Send;

    /// One invocation, `target` exactly as received. Invocations of one connection
    /// start one at a time, in order: the next starts when this future resolves.
    /// See [`Invoked`] for how it completes.
    fn invoke(
        &self,
        session: &Self::Session,
        target: &str,
        arguments: Vec<Value>,
    ) -> impl Future<Output = Invoked> + Send;

    /// Stateful reconnect: a new socket took the connection over after its socket
    /// dropped; nothing was lost. Called from the connection's session task.
    fn resumed(&self, _session: &Self::Session) {}

    /// The connection is gone; called exactly once for every successful `connected`.
    fn disconnected(&self, session: Self::Session) -> impl Future<Output = ()> + Send;
}

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// When the credential stops being valid. A connection started with it is
    /// closed then, with an error saying so and `allowReconnect: true`, so that a
    /// stock client reconnects with a fresh one.
    pub expires_at: Option<SystemTime>,
}

impl From<String> for Identity {
    /// A credential that does not expire.
    fn from(user: String) -> Self {
        Identity { user, expires_at: None }
    }
}

/// Why a credential was refused: answered 401 with `reason` as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    /// The `WWW-Authenticate` header value, e.g. `Bearer error="invalid_token"`.
    pub challenge: Option<String>,
}

impl From<String> for Refused {
    fn from(reason: String) -> Self {
        Refused { reason, challenge: None }
    }
}

/// What an invocation returns. A result is `Ok(None)` to complete without a
/// value, `Ok(Some(value))`, or `Err(text)` to complete with that error.
pub enum Invoked {
    /// Completes now with this result.
    Done(Result<Option<Value>, String>),
    /// The part that must happen in order is done (say, a message is accepted and
    /// delivered); what is left (say, waiting for it to be stored) runs while the
    /// connection's next invocations start. The completion is sent when the future
    /// resolves. Completions still go out in invocation order, so a client sees
    /// them as if the calls had run one after another.
    Finishing(BoxFuture<'static, Result<Option<Value>, String>>),
}

impl From<Result<Option<Value>, String>> for Invoked {
    fn from(result: Result<Option<Value>, String>) -> Self {
        Invoked::Done(result)
    }
}

/// Tuning of the SignalR server. `Default` gives the values of the wire contract.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Send a Ping after this long without sending anything.
    pub keep_alive_interval: Duration,
    /// Close a connection that sent no hub message for this long (not long polling,
    /// whose polls keep it alive, as in ASP.NET Core).
    pub client_timeout: Duration,
    /// The handshake request must arrive within this long of the transport opening.
    pub handshake_timeout: Duration,
    /// The largest incoming hub message (one record), in bytes. A bigger one
    /// closes the connection with an error naming this limit.
    pub max_message_size: usize,
    /// The largest incoming WebSocket message or POST body, in bytes. Stock
    /// clients batch every record queued while a send is in flight into one
    /// WebSocket message or POST, so this is several records' worth; like
    /// ASP.NET Core, the per-message limit applies to each record.
    pub max_batch_size: usize,
    /// Records queued for one client before it counts as too slow and is closed.
    pub outbound_queue_capacity: usize,
    /// tungstenite's read buffer, allocated per connection: small to keep idle
    /// connections cheap.
    pub ws_read_buffer_size: usize,
    /// Bytes buffered before a WebSocket write goes out; 0 writes each message at once.
    /// The writer flushes after each batch of queued records, so a buffer only lets
    /// a batch go out in one write instead of one per record; it adds no delay.
    pub ws_write_buffer_size: usize,
    /// The most a WebSocket write buffer may hold (outgoing messages have no size
    /// limit, so this must exceed the largest one).
    pub ws_max_write_buffer_size: usize,
    /// A negotiated connection that no transport request claims within this long is
    /// forgotten.
    pub negotiate_timeout: Duration,
    /// An idle long poll is answered (200, empty) after this long. ASP.NET: 90 s.
    pub long_poll_timeout: Duration,
    /// A long-polling connection with no poll outstanding for this long is closed.
    /// ASP.NET's DisconnectTimeout: 15 s.
    pub long_poll_disconnect_timeout: Duration,
    /// Invocations received while one runs, before the connection stops reading;
    /// also the most [`Invoked::Finishing`] invocations of one connection at once
    /// (beyond it the next invocation waits for the oldest to finish).
    pub max_queued_invocations: usize,
    /// The transports offered by negotiate and accepted, in order of preference.
    pub transports: Vec<Transport>,
    /// Bytes of records queued for one client before it counts as too slow and is
    /// closed, as with `outbound_queue_capacity`. One record bigger than this is
    /// still queued when the queue is empty (a reply the hub made goes out to a
    /// client that keeps up); the connection is closed at the next record.
    pub outbound_queue_bytes: usize,
    /// Bytes of invocations received while one runs (each counted by its record's
    /// size; a record's decoded size is bounded by `max_message_size`, see
    /// [`crate::protocol::BYTES_PER_VALUE`]) before the connection stops reading.
    /// The queue may pass it by one record.
    pub max_queued_invocation_bytes: usize,
    /// Invocations one connection may start per second on average (a token
    /// bucket); a call over the limit is not run and completes with an error
    /// saying when to retry. The connection stays open.
    pub invocations_per_second: u32,
    /// Invocations one connection may start at once after a quiet spell (the
    /// bucket's size).
    pub invocation_burst: u32,

    /// Connections open at once (handshaking ones included); beyond it a new one
    /// is refused with 503. `None`: no cap.
    pub max_connections: Option<usize>,
    /// Connections one user may have open at once; beyond it 429.
    pub max_connections_per_user: Option<usize>,
    /// Connections from one client address at once; beyond it 429. Off by
    /// default: behind a proxy every client has the proxy's address.
    pub max_connections_per_ip: Option<usize>,
    /// Negotiated connections not yet claimed by a transport request, in total;
    /// beyond it negotiate answers 503.
    pub max_pending_negotiations: Option<usize>,
    /// The same, per user; beyond it negotiate answers 429.
    pub max_pending_negotiations_per_user: Option<usize>,
    /// The most bytes of records one long-poll response carries (at least one
    /// record, whatever its size); the rest waits for the next poll.
    pub long_poll_max_response_bytes: usize,

    /// Offer stateful reconnect (ASP.NET Core 8+, WebSockets only) to clients that
    /// ask for it in negotiate (`useStatefulReconnect=true`).
    pub stateful_reconnect: bool,
    /// Bytes of sent records kept per connection until the client acknowledges
    /// them (ASP.NET Core's default: 100,000). While the socket is up and it is
    /// full, the writer waits for an Ack (the outbound queue's bounds then
    /// apply); while the socket is down, a record that does not fit closes the
    /// connection.
    pub stateful_reconnect_buffer_bytes: usize,
    /// How long a connection whose socket dropped is kept (its hub session,
    /// groups and buffer) for the client to reconnect.
    pub stateful_reconnect_window: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message_size: 128 * 1024,
            max_batch_size: 1024 * 1024,
            outbound_queue_capacity: 1024,
            ws_read_buffer_size: 1024,
            ws_write_buffer_size: 32 * 1024,
            ws_max_write_buffer_size: usize::MAX,
            negotiate_timeout: Duration::from_secs(15),
            long_poll_timeout: Duration::from_secs(90),
            long_poll_disconnect_timeout: Duration::from_secs(15),
            max_queued_invocations: 32,
            transports: Transport::ALL.to_vec(),
            outbound_queue_bytes: 4 * 1024 * 1024,
            max_queued_invocation_bytes: 1024 * 1024,
            invocations_per_second: 2000,
            invocation_burst: 2000,

            max_connections: Some(200_000),
            max_connections_per_user: Some(100),
            max_connections_per_ip: None,
            max_pending_negotiations: Some(100_000),
            max_pending_negotiations_per_user: Some(100),
            long_poll_max_response_bytes: 1024 * 1024,

            stateful_reconnect: true,
            stateful_reconnect_buffer_bytes: 100_000,
            stateful_reconnect_window: Duration::from_secs(45),
        }
    }
}

/// Everything the request handlers and sessions share.
pub(crate) struct ServerState<H: Hub> {
    pub(crate) hub: Arc<H>,
    pub(crate) config: HubConfig,
    pub(crate) registry: Arc<Registry>,
    /// Whether the runtime has time for direct socket writes (see `load`).
    pub(crate) load: Arc<load::Load>,
}

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
