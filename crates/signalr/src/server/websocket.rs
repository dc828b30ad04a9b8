//! The WebSockets transport: one task reads frames into the session, another writes
//! the outbound queue, one whole record per WebSocket message (text frames for JSON,
//! binary for MessagePack). No WebSocket-level pings are sent: keep-alive is the hub
//! Ping, because some clients (signalrcore) take ping frames for data.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::connection::{CloseRequest, Connection, DirectWrite, Outbound, Outgoing, SendError};
use super::load::Load;
use super::registry::{Admission, LiveGuard, Negotiated, NegotiatedState, lock};
use super::session::{self, Inbound, Liveness};
use super::stateful::{self, Handover};
use super::{Hub, ServerState};
use crate::negotiate::Transport;
use crate::protocol::Protocol;

/// At most this many bytes of queued records are written with one flush.
const MAX_WRITE_BATCH_BYTES: usize = 16 * 1024;

/// How long a write may take once the connection is being torn down.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

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
    if let Some(negotiated) = resumable {
        let (parts, sink) = stateful::parts(
            &connection,
            socket,
            config.stateful_reconnect_window,
            config.stateful_reconnect_buffer_bytes,
            read_limit,
        );
        *lock(&negotiated.state) =
            NegotiatedState::WebSockets { handover: Some(parts.handover.clone()) };
        tokio::spawn(stateful::write(sink, outbound, live.clone(), parts.writer));
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
    } else {
        let (sink, stream) = socket.split();
        let direct = direct.unwrap_or_else(|| Arc::new(Direct::new(server.load.clone())));
        tokio::spawn(write(sink, outbound, direct, live.clone()));
        let inbound = stream.filter_map(move |frame| {
            std::future::ready(match frame {
                Ok(Message::Text(text)) => Some(Inbound::Data(Message::Text(text).into_data())),
                Ok(Message::Binary(data)) => Some(Inbound::Data(data)),
                // Control frames are no sign of life at the hub level; after a close
                // frame the stream ends, which the session takes as the client leaving.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => None,
                Err(error) => Some(Inbound::Failed(read_error(&error, read_limit))),
            })
        });
        session::run(server.clone(), connection, inbound, liveness, live, expires_at, None).await;
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
    handover: Arc<Handover>,
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

/// Whether a read failed because a frame or message was over the size limit.
pub(crate) fn is_too_large(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("too long") || text.contains("limit exceeded")
}

/// The text for a read error: oversized frames name the limit.
fn read_error(error: &axum::Error, limit: usize) -> String {
    if is_too_large(error) {
        session::too_large(None, limit)
    } else {
        format!("WebSocket read failed: {error}")
    }
}

type WsSink = SplitSink<WebSocket, Message>;

/// The socket of a plain WebSocket connection while its writer is idle, parked
/// here so that senders write records to it directly (see [`DirectWrite`]):
/// at everyday load most records find the writer idle, and writing from the
/// sender's task saves waking the writer's (a cross-thread wake-up, a task poll
/// and its timers) for each one.
#[derive(Debug)]
pub(crate) struct Direct {
    state: Mutex<Parked>,
    /// Under heavy load records are queued even for an idle writer: it then
    /// writes several at once (see `load`).
    load: Arc<Load>,
}

impl Direct {
    pub(crate) fn new(load: Arc<Load>) -> Direct {
        Direct { state: Mutex::default(), load }
    }
}

#[derive(Debug, Default)]
struct Parked {
    /// The socket, while the writer is idle with nothing queued and nothing
    /// unwritten; the writer takes it back when it wakes.
    sink: Option<WsSink>,
    /// The writer must take the socket back before anything more is written
    /// directly: a direct write left bytes unflushed, or a record was queued.
    writer_needed: bool,
    /// A direct write left bytes for the writer to flush.
    unflushed: bool,
    /// When a record last went out directly (for keep-alive).
    last_write: Option<Instant>,
    /// The writer parked after the handshake chose a protocol: its keep-alive
    /// timer is armed. Until then records go through the writer, which arms
    /// it on the first one.
    after_handshake: bool,
}

impl DirectWrite for Direct {
    fn write_or_queue(&self, connection: &Connection, outgoing: Outgoing) -> Result<(), SendError> {
        let mut guard = lock(&self.state);
        let parked = &mut *guard;
        let protocol = connection.negotiated_protocol();
        let (Some(sink), false, true, Some(protocol), true) = (
            parked.sink.as_mut(),
            parked.writer_needed,
            parked.after_handshake,
            protocol,
            self.load.has_time(),
        ) else {
            if parked.sink.is_some() {
                // Queued while the socket is parked (the runtime is busy, or
                // the writer has not seen the handshake): later records must
                // not overtake it. The record wakes the writer.
                parked.writer_needed = true;
            }
            return connection.queue(outgoing);
        };
        let mut cx = Context::from_waker(Waker::noop());
        // The sink holds nothing unflushed while parked (else `writer_needed`),
        // so it is ready; if it is not, the writer sorts it out.
        if !matches!(Pin::new(&mut *sink).poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            parked.writer_needed = true;
            parked.unflushed = true;
            return connection.queue(outgoing);
        }
        let Some(message) = message_for(protocol, outgoing.record) else { return Ok(()) };
        let sent = match Pin::new(&mut *sink).start_send(message) {
            Ok(()) => Pin::new(&mut *sink).poll_flush(&mut cx),
            Err(error) => Poll::Ready(Err(error)),
        };
        match sent {
            Poll::Ready(Ok(())) => {
                parked.last_write = Some(Instant::now());
                Ok(())
            }
            // Taken but not all written (the socket's buffer is full, or the
            // read half holds the lock): the writer finishes it, and records
            // are queued behind it until then.
            Poll::Pending => {
                parked.last_write = Some(Instant::now());
                parked.writer_needed = true;
                parked.unflushed = true;
                // An empty record wakes the writer to flush (a Notify here
                // would cost every connection its room, idle ones too). The
                // queue is empty while the socket is parked, so it fits; if
                // the connection is closing, the writer is woken anyway.
                let _ = connection.queue(Outgoing { record: Bytes::new(), sequenced: false });
                Ok(())
            }
            Poll::Ready(Err(error)) => {
                drop(guard);
                debug!(%error, "WebSocket write failed");
                connection.request_close(CloseRequest::peer_gone(format!(
                    "WebSocket write failed: {error}"
                )));
                Err(SendError::Closed)
            }
        }
    }

    fn last_write(&self) -> Option<Instant> {
        lock(&self.state).last_write
    }
}

/// What woke an idle writer.
enum Woken {
    /// A record to write; an empty one only asks to finish a direct write.
    Record(Bytes),
    End,
}

/// Parks the socket while nothing is queued, waits for work and takes the
/// socket back. Returns it, what woke the writer, and whether a direct write
/// left something to flush.
async fn idle(sink: WsSink, outbound: &mut Outbound, direct: &Direct) -> (WsSink, Woken, bool) {
    if !direct.load.has_time() {
        // Busy: senders queue anyway, so the socket stays here.
        let woken = outbound.next().await.map_or(Woken::End, Woken::Record);
        return (sink, woken, false);
    }
    {
        // Under the lock senders queue under: nothing can be queued between
        // finding the queue empty and parking.
        let mut parked = lock(&direct.state);
        if let Some(record) = outbound.try_next() {
            return (sink, Woken::Record(record), false);
        }
        if outbound.is_finished() {
            return (sink, Woken::End, false);
        }
        parked.sink = Some(sink);
        parked.after_handshake = outbound.connection().negotiated_protocol().is_some();
    }
    let woken = outbound.next().await.map_or(Woken::End, Woken::Record);
    let mut parked = lock(&direct.state);
    let sink = parked.sink.take().expect("only the writer takes the parked socket");
    parked.writer_needed = false;
    let unflushed = std::mem::take(&mut parked.unflushed);
    (sink, woken, unflushed)
}

async fn write(mut sink: WsSink, mut outbound: Outbound, direct: Arc<Direct>, _live: LiveGuard) {
    // Records already queued go out together: one flush (one write system call)
    // per batch instead of one per record. Each record stays its own message.
    let mut batch = Vec::new();
    loop {
        let (taken, woken, unflushed) = idle(sink, &mut outbound, &direct).await;
        sink = taken;
        if unflushed {
            let forced = outbound.connection().close_request().is_some_and(|r| !r.drain);
            let flushed = if forced {
                tokio::time::timeout(FINAL_WRITE_TIMEOUT, sink.flush()).await.unwrap_or(Ok(()))
            } else {
                tokio::select! {
                    flushed = sink.flush() => flushed,
                    _ = outbound.forced() => Ok(()),
                }
            };
            if let Err(error) = flushed {
                debug!(%error, "WebSocket write failed");
                outbound.connection().request_close(CloseRequest::peer_gone(format!(
                    "WebSocket write failed: {error}"
                )));
                break;
            }
        }
        let record = match woken {
            Woken::Record(record) if record.is_empty() => continue,
            Woken::Record(record) => record,
            Woken::End => break,
        };
        let mut bytes = record.len();
        batch.extend(ws_message(&outbound, record));
        while bytes < MAX_WRITE_BATCH_BYTES
            && let Some(record) = outbound.try_next()
        {
            if !record.is_empty() {
                bytes += record.len();
                batch.extend(ws_message(&outbound, record));
            }
        }
        let send_batch = async {
            for message in batch.drain(..) {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        let forced = outbound.connection().close_request().is_some_and(|request| !request.drain);
        let sent = if forced {
            tokio::time::timeout(FINAL_WRITE_TIMEOUT, send_batch).await.unwrap_or(Ok(()))
        } else {
            tokio::select! {
                sent = send_batch => sent,
                _ = outbound.forced() => {
                    batch.clear();
                    continue;
                }
            }
        };
        if batch.capacity() > 0 && outbound.is_empty() {
            // An idle connection keeps no batch buffer.
            batch = Vec::new();
        }
        if let Err(error) = sent {
            debug!(%error, "WebSocket write failed");
            outbound
                .connection()
                .request_close(CloseRequest::peer_gone(format!("WebSocket write failed: {error}")));
            break;
        }
    }
    let close = Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: Utf8Bytes::from_static(""),
    }));
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, sink.send(close)).await;
}

/// A record as a WebSocket message: binary for MessagePack, text for JSON.
pub(crate) fn ws_message(outbound: &Outbound, record: bytes::Bytes) -> Option<Message> {
    message_for(outbound.connection().negotiated_protocol().unwrap_or(Protocol::Json), record)
}

fn message_for(protocol: Protocol, record: bytes::Bytes) -> Option<Message> {
    match protocol {
        Protocol::MessagePack => Some(Message::Binary(record)),
        Protocol::Json => match Utf8Bytes::try_from(record) {
            Ok(text) => Some(Message::Text(text)),
            Err(error) => {
                warn!(%error, "dropped a record that is not UTF-8 on a JSON connection");
                None
            }
        },
    }
}
