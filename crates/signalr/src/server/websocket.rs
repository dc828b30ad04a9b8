//! The WebSockets transport: one task reads frames into the session, another
//! (`writer`) writes the outbound queue, one whole record per WebSocket message
//! (text frames for JSON, binary for MessagePack). No WebSocket-level pings are
//! sent: keep-alive is the hub Ping, because some clients (signalrcore) take
//! ping frames for data.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::connection::{Connection, DirectWrite};
use super::hub::Hub;
use super::inbound::Inbound;
use super::registry::{Admission, Negotiated, NegotiatedState, Resumable};
use super::session::{self, Liveness};
use super::state::ServerState;
use super::stateful;
use super::writer::{self, Direct, Mode};
use super::ws_frames::{inbound_data, read_error};
use crate::negotiate::Transport;

/// A WebSocket connection about to start.
pub(crate) struct Started {
    pub(crate) connection_id: String,
    pub(crate) user: String,
    /// When the user's credential expires; the session closes then.
    pub(crate) expires_at: Option<SystemTime>,
    /// `None` for a client that skipped negotiation.
    pub(crate) negotiated: Option<Arc<Negotiated>>,
    /// Its place under the connection caps, given back when the connection ends
    /// or the upgrade never happens.
    pub(crate) admission: Admission,
}

/// Completes the upgrade and runs the connection.
pub(crate) fn upgrade<H: Hub>(
    server: Arc<ServerState<H>>,
    upgrade: WebSocketUpgrade,
    started: Started,
) -> Response {
    let config = &server.config;
    // Frames up to twice the limit are read so that the session can close an
    // oversized message with an error naming the limit; beyond that tungstenite
    // refuses them itself.
    let read_limit = config.max_batch_size.saturating_mul(2).max(1024);
    let failed_token = started.negotiated.as_ref().map(|n| n.token.clone());
    let failed_registry = server.registry.clone();
    upgrade
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        .max_write_buffer_size(config.ws_max_write_buffer_size)
        .max_message_size(read_limit)
        .max_frame_size(read_limit)
        .on_failed_upgrade(move |error| {
            warn!(%error, "WebSocket upgrade failed");
            if let Some(token) = failed_token {
                failed_registry.remove_negotiated(&token);
            }
        })
        .on_upgrade(move |socket| run(server, socket, started))
}

async fn run<H: Hub>(server: Arc<ServerState<H>>, socket: WebSocket, started: Started) {
    let Started { connection_id, user, expires_at, negotiated, admission } = started;
    let config = &server.config;
    let resumable = negotiated.as_ref().filter(|n| n.stateful && config.stateful_reconnect);
    // A stateful connection's writer numbers and keeps what it sends, so every
    // record passes through it; a plain one lets senders write directly.
    let direct = resumable.is_none().then(|| Arc::new(Direct::new(server.load.clone())));
    let (connection, outbound) = Connection::with_direct(
        connection_id,
        user,
        Transport::WebSockets,
        config,
        Some(config.keep_alive_interval),
        direct.clone().map(|direct| direct as Arc<dyn DirectWrite>),
    );
    let live = server.registry.register_live(&connection, admission);
    let read_limit = config.max_batch_size;
    let liveness = Liveness::ClientTimeout(config.client_timeout);
    match (resumable, direct) {
        (Some(negotiated), _) => {
            let (parts, sink) = stateful::parts(
                &connection,
                socket,
                config.stateful_reconnect_window,
                config.stateful_reconnect_buffer_bytes,
                read_limit,
            );
            *negotiated.state.lock() =
                NegotiatedState::WebSockets { handover: Some(parts.handover.clone()) };
            let mode = Mode::Resumable(parts.writer);
            tokio::spawn(writer::write(sink, outbound, mode, live.clone()));
            // Boxed: the task's own future is sized for the plain session, which
            // most connections are, rather than for both kinds side by side.
            Box::pin(session::run(
                server.clone(),
                connection,
                parts.inbound,
                liveness,
                live,
                expires_at,
                Some(parts.session),
            ))
            .await;
        }
        (None, direct) => {
            let (sink, stream) = socket.split();
            let direct = direct.unwrap_or_else(|| Arc::new(Direct::new(server.load.clone())));
            tokio::spawn(writer::write(sink, outbound, Mode::Plain(direct), live.clone()));
            // After a close frame the stream ends, which the session takes as
            // the client leaving.
            let inbound = stream.filter_map(move |frame| {
                std::future::ready(match frame {
                    Ok(message) => inbound_data(message),
                    Err(error) => Some(Inbound::Failed(read_error(&error, read_limit))),
                })
            });
            session::run(server.clone(), connection, inbound, liveness, live, expires_at, None)
                .await;
        }
    }
    if let Some(negotiated) = negotiated {
        server.registry.remove_negotiated(&negotiated.token);
    }
}

/// A new WebSocket for a connection that stateful reconnect keeps: it takes over
/// from the socket that dropped (or is about to). It takes no new place under the
/// connection caps: the connection kept its own.
pub(crate) fn resume<H: Hub>(
    server: Arc<ServerState<H>>,
    upgrade: WebSocketUpgrade,
    handover: Arc<dyn Resumable>,
) -> Response {
    let config = &server.config;
    let read_limit = config.max_batch_size.saturating_mul(2).max(1024);
    upgrade
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        .max_write_buffer_size(config.ws_max_write_buffer_size)
        .max_message_size(read_limit)
        .max_frame_size(read_limit)
        .on_failed_upgrade(|error| warn!(%error, "WebSocket upgrade for a reconnect failed"))
        .on_upgrade(move |socket| async move {
            let connection_id = handover.connection().id().to_owned();
            if handover.hand_over(socket) {
                debug!(%connection_id, "a new socket took over a resumable connection");
            } else {
                warn!(%connection_id, "a reconnect arrived as the connection closed; refused");
            }
        })
}
