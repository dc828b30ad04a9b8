//! Stateful reconnect (ASP.NET Core 8+; WebSockets only): a connection whose
//! socket drops is kept for `stateful_reconnect_window`, and a new WebSocket
//! carrying the same connection token takes it over. Nothing is lost or repeated:
//! both sides number the hub messages they send (every one but Ping, Close, Ack
//! and Sequence, starting at 1), keep what the peer has not acknowledged (`Ack`),
//! and after a reconnect say where they resume (`Sequence`) and send the rest
//! again; each side drops the duplicates it receives.
//!
//! The numbering, Acks and resend buffer are the crate's [`crate::sequence`],
//! split between two tasks of the connection; the pieces here connect them:
//! - [`Handover`]: kept in the registry; gives a new socket's two halves to the
//!   session ([`ResumableInbound`]) and the writer ([`WriterSide`]).
//! - [`Reconnect`]: the session's side: the window while no socket is attached,
//!   the de-duplication of what the client sends, periodic Acks; it tells the
//!   writer the client's Acks and which socket was lost.
//! - [`WriterSide`]: the writer's side: new sockets, and the records the client
//!   has not acknowledged (a [`ResendBuffer`], bounded in bytes); the one
//!   WebSocket writer (`writer.rs`) uses it.
//!
//! Memory stays bounded: while a socket is attached and the buffer is full, the
//! writer stops taking records (ASP.NET Core makes the sender wait the same way),
//! so the outbound queue's bounds and its slow-consumer close apply; while no
//! socket is attached the writer keeps moving queued records into the buffer,
//! and one that does not fit closes the connection. A parked connection keeps
//! its place under the connection caps, so caps count it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::connection::{CloseRequest, Connection, ReconnectEnd};
use super::inbound::{Inbound, too_large};
use super::registry::Resumable;
use super::ws_frames::{WsSink, WsStream, is_too_large};
use crate::protocol::HubMessage;
use crate::sequence::{Admitted, Received, ResendBuffer};

/// What the registry keeps for a connection that may be resumed.
#[derive(Debug)]
pub(crate) struct Handover {
    connection: Connection,
    sinks: mpsc::Sender<WsSink>,
    streams: mpsc::Sender<WsStream>,
}

impl Resumable for Handover {
    /// Whether a new socket may take the connection over now: the handshake
    /// agreed on stateful reconnect and the connection is not closing.
    fn accepts(&self) -> bool {
        self.connection.is_resumable() && !self.connection.is_closed()
    }

    fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Gives a new socket to the connection; the old one, if still attached, is
    /// dropped. `false` (the socket is dropped) when the connection no longer
    /// accepts one, or another handover is still in flight.
    fn hand_over(&self, socket: WebSocket) -> bool {
        if !self.accepts() {
            return false;
        }
        let (Ok(sink_slot), Ok(stream_slot)) =
            (self.sinks.try_reserve(), self.streams.try_reserve())
        else {
            return false;
        };
        let (sink, stream) = socket.split();
        sink_slot.send(sink);
        stream_slot.send(stream);
        true
    }
}

/// The three ends of a resumable connection, made when its first WebSocket opens.
pub(crate) struct Parts {
    pub(crate) handover: Arc<Handover>,
    pub(crate) session: Reconnect,
    pub(crate) inbound: ResumableInbound,
    pub(crate) writer: WriterSide,
}

pub(crate) fn parts(
    connection: &Connection,
    socket: WebSocket,
    window: Duration,
    buffer_bytes: usize,
    read_limit: usize,
) -> (Parts, WsSink) {
    let (sinks, sinks_rx) = mpsc::channel(1);
    let (streams, streams_rx) = mpsc::channel(1);
    let (client, client_rx) = watch::channel(ClientState::default());
    let (sink, stream) = socket.split();
    let parts = Parts {
        handover: Arc::new(Handover { connection: connection.clone(), sinks, streams }),
        session: Reconnect::new(window, client),
        inbound: ResumableInbound { current: Some(stream), replacements: streams_rx, read_limit },
        writer: WriterSide {
            sinks: sinks_rx,
            client: client_rx,
            socket: 0,
            client_open: true,
            sinks_open: true,
            buffer: ResendBuffer::new(buffer_bytes),
        },
    };
    (parts, sink)
}

/// The session's inbound frames across sockets: the current socket's messages,
/// [`Inbound::Lost`] when it fails, [`Inbound::Resumed`] when a new one takes
/// over. A Close frame from the client ends the stream: the client left.
pub(crate) struct ResumableInbound {
    current: Option<WsStream>,
    replacements: mpsc::Receiver<WsStream>,
    read_limit: usize,
}

impl Stream for ResumableInbound {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = self.get_mut();
        let handover_gone = match this.replacements.poll_recv(cx) {
            Poll::Ready(Some(stream)) => {
                this.current = Some(stream);
                return Poll::Ready(Some(Inbound::Resumed));
            }
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        loop {
            let Some(current) = this.current.as_mut() else {
                return if handover_gone { Poll::Ready(None) } else { Poll::Pending };
            };
            let frame = match current.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            return Poll::Ready(Some(match frame {
                Some(Ok(Message::Text(text))) => Inbound::Data(Message::Text(text).into_data()),
                Some(Ok(Message::Binary(data))) => Inbound::Data(data),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) => {
                    this.current = None;
                    return Poll::Ready(None);
                }
                Some(Err(error)) if is_too_large(&error) => {
                    Inbound::Failed(too_large(None, this.read_limit))
                }
                Some(Err(error)) => {
                    this.current = None;
                    Inbound::Lost(format!("WebSocket read failed: {error}"))
                }
                None => {
                    this.current = None;
                    Inbound::Lost("the socket closed without a Close frame".to_owned())
                }
            }));
        }
    }
}

/// What the session tells the writer about the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClientState {
    /// The highest id the client acknowledged.
    acked: i64,
    /// The socket (0 for the first, counting up with each takeover) whose read
    /// side failed: the writer stops writing to it, if it still holds it.
    lost_socket: Option<u64>,
}

/// What the session does next for stateful reconnect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// No socket came back within the window: the connection ends.
    Expired,
    /// Time to acknowledge what the client sent.
    AckDue,
}

/// The session's side of stateful reconnect.
#[derive(Debug)]
pub(crate) struct Reconnect {
    window: Duration,
    /// Set while no socket is attached: when the connection ends if none comes.
    parked_until: Option<Instant>,
    /// What the client sent: de-duplication and when to Ack.
    received: Received,
    /// Which socket is attached: 0 for the first, counting each takeover.
    socket: u64,
    /// Acks and lost sockets, for the writer.
    client: watch::Sender<ClientState>,
}

impl Reconnect {
    fn new(window: Duration, client: watch::Sender<ClientState>) -> Self {
        Self { window, parked_until: None, received: Received::default(), socket: 0, client }
    }

    pub(crate) fn is_parked(&self) -> bool {
        self.parked_until.is_some()
    }

    /// The socket is gone (`reason` says how): wait for another for the window.
    pub(crate) fn lost(&mut self, reason: &str, now: Instant) {
        info!(
            %reason,
            window_secs = self.window.as_secs_f64(),
            "socket lost; keeping the connection for a stateful reconnect"
        );
        self.parked_until = Some(now + self.window);
        let socket = self.socket;
        self.client.send_modify(|state| state.lost_socket = Some(socket));
    }

    /// A new socket took over.
    pub(crate) fn resumed(&mut self, now: Instant) {
        info!("resumed by a stateful reconnect");
        self.parked_until = None;
        self.socket += 1;
        self.received.resumed(now);
    }

    /// Whether to act on a message from the client: `Ok(false)` for an Ack, a
    /// Sequence, a duplicate or anything before the Sequence that starts a
    /// resend. `Err` is why the connection must close.
    pub(crate) fn admit(&mut self, message: &HubMessage, now: Instant) -> Result<bool, String> {
        match self.received.admit(message, now) {
            Ok(Admitted::Process) => Ok(true),
            Ok(Admitted::Skip) => Ok(false),
            Ok(Admitted::Acked(acked)) => {
                self.client.send_if_modified(|state| {
                    let newer = acked > state.acked;
                    if newer {
                        state.acked = acked;
                    }
                    newer
                });
                Ok(false)
            }
            Err(bad) => Err(format!(
                "Sequence ID {} is not between 1 and {}, the next message the server expects",
                bad.sequence_id, bad.expected
            )),
        }
    }

    /// The Ack to send now (if any); called on [`Event::AckDue`].
    pub(crate) fn take_ack(&mut self) -> Option<HubMessage> {
        if self.is_parked() {
            return None;
        }
        self.received.take_ack()
    }

    /// Acts on an [`Event`]: sends the Ack that is due, or ends the connection
    /// (the returned request) when the window passed.
    pub(crate) fn on_event(
        &mut self,
        event: Event,
        connection: &Connection,
    ) -> Option<CloseRequest> {
        match event {
            Event::Expired => {
                let reason = format!(
                    "stateful reconnect: no reconnect within {} s of the socket dropping (stateful_reconnect_window_secs)",
                    self.window.as_secs_f64()
                );
                warn!(%reason, "closing a connection whose client did not come back");
                connection.end_reconnect(ReconnectEnd::Expired, reason);
                connection.close_request()
            }
            Event::AckDue => {
                if let (Some(ack), Some(protocol)) =
                    (self.take_ack(), connection.negotiated_protocol())
                {
                    // A full queue closes the connection; nothing more to do here.
                    let _ = connection.push_control(protocol.encode(&ack));
                }
                None
            }
        }
    }

    /// Resolves at the next [`Event`]. Cancel-safe.
    pub(crate) async fn next_event(&self) -> Event {
        let (at, event) = match (self.parked_until, self.received.ack_due()) {
            (Some(parked), _) => (parked, Event::Expired),
            (None, Some(ack)) => (ack, Event::AckDue),
            (None, None) => return std::future::pending().await,
        };
        tokio::time::sleep_until(at).await;
        event
    }
}

/// The writer's side: new sockets' sinks, the client's Acks, and the records
/// it has not acknowledged.
pub(crate) struct WriterSide {
    pub(crate) sinks: mpsc::Receiver<WsSink>,
    pub(crate) client: watch::Receiver<ClientState>,
    /// Which socket the writer holds, counted as [`Reconnect`] counts them.
    socket: u64,
    /// Whether the session still has its end of `client` (it drops it when the
    /// handshake declines stateful reconnect).
    pub(crate) client_open: bool,
    /// Whether a new socket may still come (the registry drops the handover
    /// once the session ended; the writer may still be draining).
    pub(crate) sinks_open: bool,
    pub(crate) buffer: ResendBuffer,
}

impl WriterSide {
    /// A new socket's sink arrived: it replaces the one held, if any.
    pub(crate) fn took_over(&mut self) {
        self.socket += 1;
        self.client_changed();
    }

    /// Applies what the session said: drops acknowledged records, and returns
    /// whether the socket held was lost (its read side failed).
    pub(crate) fn client_changed(&mut self) -> bool {
        let state = *self.client.borrow_and_update();
        self.buffer.ack(state.acked);
        state.lost_socket == Some(self.socket)
    }

    /// Keeps a record while no socket is attached; one that does not fit
    /// ends the connection.
    pub(crate) fn keep_parked(&mut self, connection: &Connection, record: bytes::Bytes) {
        if !self.buffer.keep_parked(record) {
            let reason = format!(
                "stateful reconnect buffer full: more than {} bytes for the client while its socket was down (stateful_reconnect_buffer_bytes)",
                self.buffer.limit()
            );
            warn!(%reason, "closing a disconnected connection");
            connection.end_reconnect(ReconnectEnd::Overflowed, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconnect() -> (Reconnect, watch::Receiver<ClientState>) {
        let (client, rx) = watch::channel(ClientState::default());
        (Reconnect::new(Duration::from_secs(30), client), rx)
    }

    fn invocation() -> HubMessage {
        HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Echo".into(),
            arguments: Vec::new(),
            stream_ids: Vec::new(),
        }
    }

    #[test]
    fn duplicates_after_a_resend_are_dropped_and_acks_wait_for_a_socket() {
        let (mut state, _acks) = reconnect();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(state.admit(&invocation(), now), Ok(true));
        }
        state.lost("test", now);
        assert_eq!(state.take_ack(), None, "no Ack while no socket is attached");
        state.resumed(now);
        // Before the client's Sequence message, everything is ignored.
        assert_eq!(state.admit(&invocation(), now), Ok(false));
        assert_eq!(state.admit(&HubMessage::Sequence { sequence_id: 2 }, now), Ok(false));
        // 2 and 3 again: duplicates; 4 is new.
        assert_eq!(state.admit(&invocation(), now), Ok(false));
        assert_eq!(state.admit(&invocation(), now), Ok(false));
        assert_eq!(state.admit(&HubMessage::Ping, now), Ok(true));
        assert_eq!(state.admit(&invocation(), now), Ok(true));
        assert_eq!(state.take_ack(), Some(HubMessage::Ack { sequence_id: 4 }));
    }

    #[test]
    fn a_sequence_beyond_what_was_received_is_refused_with_the_expected_id() {
        let (mut state, _acks) = reconnect();
        let now = Instant::now();
        assert_eq!(state.admit(&invocation(), now), Ok(true));
        assert_eq!(
            state.admit(&HubMessage::Sequence { sequence_id: 3 }, now),
            Err("Sequence ID 3 is not between 1 and 2, the next message the server expects"
                .to_owned())
        );
        assert!(state.admit(&HubMessage::Sequence { sequence_id: 0 }, now).is_err());
        assert_eq!(state.admit(&HubMessage::Sequence { sequence_id: 2 }, now), Ok(false));
    }

    #[test]
    fn client_acks_reach_the_writer() {
        let (mut state, acks) = reconnect();
        let now = Instant::now();
        assert_eq!(state.admit(&HubMessage::Ack { sequence_id: 5 }, now), Ok(false));
        assert_eq!(acks.borrow().acked, 5);
        // An older Ack does not move it back.
        assert_eq!(state.admit(&HubMessage::Ack { sequence_id: 2 }, now), Ok(false));
        assert_eq!(acks.borrow().acked, 5);
    }

    #[test]
    fn a_lost_socket_is_named_so_the_writer_drops_only_that_one() {
        let (mut state, client) = reconnect();
        let now = Instant::now();
        state.lost("test", now);
        assert_eq!(client.borrow().lost_socket, Some(0));
        state.resumed(now);
        state.lost("test", now);
        assert_eq!(client.borrow().lost_socket, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_expires_unless_a_socket_comes_back() {
        let (mut state, _acks) = reconnect();
        let start = Instant::now();
        state.lost("test", start);
        assert_eq!(state.next_event().await, Event::Expired);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        state.resumed(Instant::now());
        assert!(!state.is_parked());
        let waited = tokio::time::timeout(Duration::from_secs(3600), state.next_event()).await;
        assert!(waited.is_err(), "nothing to wait for once resumed with nothing to ack");
    }
}
