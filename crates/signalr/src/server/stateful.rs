//! Stateful reconnect (ASP.NET Core 8+; WebSockets only): a connection whose
//! socket drops is kept for `stateful_reconnect_window`, and a new WebSocket
//! carrying the same connection token takes it over. Nothing is lost or repeated:
//! both sides number the hub messages they send (every one but Ping, Close, Ack
//! and Sequence, starting at 1), keep what the peer has not acknowledged (`Ack`),
//! and after a reconnect say where they resume (`Sequence`) and send the rest
//! again; each side drops the duplicates it receives.
//!
//! The pieces, each used by one task of the connection:
//! - [`Handover`]: kept in the registry; gives a new socket's two halves to the
//!   session ([`ResumableInbound`]) and the writer ([`write`]).
//! - [`Reconnect`]: the session's side: the window while no socket is attached,
//!   the numbering and de-duplication of what the client sends, periodic Acks.
//! - [`ResendBuffer`]: the writer's side: the records the client has not
//!   acknowledged, bounded in bytes.
//!
//! Memory stays bounded: while a socket is attached and the buffer is full, the
//! writer stops taking records (ASP.NET Core makes the sender wait the same way),
//! so the outbound queue's bounds and its slow-consumer close apply; while no
//! socket is attached the writer keeps moving queued records into the buffer,
//! and one that does not fit closes the connection. A parked connection keeps
//! its place under the connection caps, so caps count it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::connection::{CloseRequest, Connection, Outbound, Outgoing, ReconnectEnd};
use super::registry::LiveGuard;
use super::session::Inbound;
use crate::protocol::{HubMessage, Protocol};

type WsSink = SplitSink<WebSocket, Message>;
type WsStream = SplitStream<WebSocket>;

/// How often (at most) the server acknowledges what it received, as ASP.NET
/// Core and the JS client do.
pub(crate) const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many bytes of records are written with one flush.
const MAX_WRITE_BATCH_BYTES: usize = 16 * 1024;

/// How long a write may take once the connection is being torn down.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the registry keeps for a connection that may be resumed.
#[derive(Debug)]
pub(crate) struct Handover {
    connection: Connection,
    sinks: mpsc::Sender<WsSink>,
    streams: mpsc::Sender<WsStream>,
}

impl Handover {
    /// Whether a new socket may take the connection over now: the handshake
    /// agreed on stateful reconnect and the connection is not closing.
    pub(crate) fn accepts(&self) -> bool {
        self.connection.is_resumable() && !self.connection.is_closed()
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Gives a new socket to the connection; the old one, if still attached, is
    /// dropped. `false` (the socket is dropped) when the connection no longer
    /// accepts one, or another handover is still in flight.
    pub(crate) fn hand_over(&self, socket: WebSocket) -> bool {
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

/// Whether a message counts toward the sequence ids (ASP.NET Core's
/// `HubInvocationMessage`s).
pub(crate) fn is_sequenced(message: &HubMessage) -> bool {
    matches!(
        message,
        HubMessage::Invocation { .. }
            | HubMessage::StreamItem { .. }
            | HubMessage::Completion { .. }
            | HubMessage::StreamInvocation { .. }
            | HubMessage::CancelInvocation { .. }
    )
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
                Some(Err(error)) if super::websocket::is_too_large(&error) => {
                    Inbound::Failed(super::session::too_large(None, this.read_limit))
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
    /// After a reconnect, everything up to the client's Sequence message is
    /// ignored (it belongs to a resend that the Sequence message starts).
    wait_for_sequence: bool,
    /// The id the next sequenced message from the client carries.
    next_id: i64,
    /// The highest id processed; lower ones are duplicates of a resend.
    latest: i64,
    /// The highest id acknowledged to the client.
    last_acked: i64,
    ack_due: Option<Instant>,
    /// Which socket is attached: 0 for the first, counting each takeover.
    socket: u64,
    /// Acks and lost sockets, for the writer.
    client: watch::Sender<ClientState>,
}

impl Reconnect {
    fn new(window: Duration, client: watch::Sender<ClientState>) -> Self {
        Self {
            window,
            parked_until: None,
            wait_for_sequence: false,
            next_id: 1,
            latest: 0,
            last_acked: 0,
            ack_due: None,
            socket: 0,
            client,
        }
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
        self.wait_for_sequence = true;
        // Acks sent just before the drop may be lost: acknowledge again.
        self.last_acked = 0;
        if self.latest > 0 {
            self.ack_due = Some(now + ACK_INTERVAL);
        }
    }

    /// Whether to act on a message from the client: `Ok(false)` for an Ack, a
    /// Sequence, a duplicate or anything before the Sequence that starts a
    /// resend. `Err` is why the connection must close.
    pub(crate) fn admit(&mut self, message: &HubMessage, now: Instant) -> Result<bool, String> {
        if self.wait_for_sequence {
            if !matches!(message, HubMessage::Sequence { .. }) {
                return Ok(false);
            }
            self.wait_for_sequence = false;
        }
        match message {
            HubMessage::Sequence { sequence_id } => {
                if *sequence_id < 1 || *sequence_id > self.next_id {
                    return Err(format!(
                        "Sequence ID {sequence_id} is not between 1 and {}, the next message the server expects",
                        self.next_id
                    ));
                }
                self.next_id = *sequence_id;
                Ok(false)
            }
            HubMessage::Ack { sequence_id } => {
                let acked = *sequence_id;
                self.client.send_if_modified(|state| {
                    let newer = acked > state.acked;
                    if newer {
                        state.acked = acked;
                    }
                    newer
                });
                Ok(false)
            }
            message if is_sequenced(message) => {
                let id = self.next_id;
                self.next_id += 1;
                if id <= self.latest {
                    return Ok(false);
                }
                self.latest = id;
                if self.ack_due.is_none() {
                    self.ack_due = Some(now + ACK_INTERVAL);
                }
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// The Ack to send now (if any); called on [`Event::AckDue`].
    pub(crate) fn take_ack(&mut self) -> Option<HubMessage> {
        self.ack_due = None;
        if self.is_parked() || self.latest <= self.last_acked {
            return None;
        }
        self.last_acked = self.latest;
        Some(HubMessage::Ack { sequence_id: self.latest })
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
        let (at, event) = match (self.parked_until, self.ack_due) {
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
    sinks: mpsc::Receiver<WsSink>,
    client: watch::Receiver<ClientState>,
    /// Which socket the writer holds, counted as [`Reconnect`] counts them.
    socket: u64,
    /// Whether the session still has its end of `client` (it drops it when the
    /// handshake declines stateful reconnect).
    client_open: bool,
    /// Whether a new socket may still come (the registry drops the handover
    /// once the session ended; the writer may still be draining).
    sinks_open: bool,
    buffer: ResendBuffer,
}

impl WriterSide {
    /// A new socket's sink arrived: it replaces the one held, if any.
    fn took_over(&mut self) {
        self.socket += 1;
    }

    /// Applies what the session said: drops acknowledged records, and returns
    /// whether the socket held was lost (its read side failed).
    fn client_changed(&mut self) -> bool {
        let state = *self.client.borrow_and_update();
        self.buffer.ack(state.acked);
        state.lost_socket == Some(self.socket)
    }
}

/// The records sent but not acknowledged, numbered from `first_id`.
#[derive(Debug)]
pub(crate) struct ResendBuffer {
    records: VecDeque<Bytes>,
    first_id: i64,
    bytes: usize,
    limit: usize,
}

impl ResendBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self { records: VecDeque::new(), first_id: 1, bytes: 0, limit }
    }

    /// Whether the writer should wait for an Ack before taking more records.
    pub(crate) fn is_full(&self) -> bool {
        self.bytes >= self.limit
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps a record sent (or to be sent) with the next id.
    pub(crate) fn keep(&mut self, record: Bytes) {
        self.bytes += record.len();
        self.records.push_back(record);
    }

    /// Keeps a record while no socket is attached: `false` (not kept) when it
    /// would take the buffer past its limit; an empty buffer takes any one record.
    pub(crate) fn keep_parked(&mut self, record: Bytes) -> bool {
        if !self.records.is_empty() && self.bytes + record.len() > self.limit {
            return false;
        }
        self.keep(record);
        true
    }

    /// The client has everything up to `sequence_id`.
    pub(crate) fn ack(&mut self, sequence_id: i64) {
        while self.first_id <= sequence_id {
            let Some(record) = self.records.pop_front() else { break };
            self.bytes -= record.len();
            self.first_id += 1;
        }
        if self.records.is_empty() && self.records.capacity() > 64 {
            self.records = VecDeque::new();
        }
    }

    /// What to send on a new socket: a Sequence message naming the first id, then
    /// every record kept, in order.
    pub(crate) fn resend(&self, protocol: Protocol) -> impl Iterator<Item = Bytes> + '_ {
        let sequence = protocol.encode(&HubMessage::Sequence { sequence_id: self.first_id });
        std::iter::once(sequence).chain(self.records.iter().cloned())
    }
}

/// The writer of a resumable WebSocket connection: as the plain writer while a
/// socket is attached (batches, one flush each), keeping sequenced records until
/// acknowledged; parked without one; on a new socket, sends the Sequence message
/// and everything unacknowledged first.
pub(crate) async fn write(
    sink: WsSink,
    mut outbound: Outbound,
    _live: LiveGuard,
    mut side: WriterSide,
) {
    let connection = outbound.connection().clone();
    let mut sink = Some(sink);
    let mut batch: Vec<Message> = Vec::new();
    loop {
        if outbound.is_finished() {
            break;
        }
        if sink.is_none() {
            // Parked: keep what the hub sends until a socket comes back or the
            // session ends the connection.
            tokio::select! {
                biased;
                next = side.sinks.recv(), if side.sinks_open => match next {
                    Some(next) => {
                        side.took_over();
                        side.client_changed();
                        sink = Some(next);
                        if !resend(&mut sink, &outbound, &side.buffer).await {
                            sink = None;
                        }
                    }
                    // No socket and none to come: nothing can be written.
                    None => break,
                },
                changed = side.client.changed(), if side.client_open => {
                    if changed.is_ok() {
                        side.client_changed();
                    } else {
                        side.client_open = false;
                    }
                }
                outgoing = outbound.next_outgoing() => match outgoing {
                    None => break,
                    Some(Outgoing { record, sequenced: true }) if connection.is_resumable() => {
                        if !side.buffer.keep_parked(record) {
                            let reason = format!(
                                "stateful reconnect buffer full: more than {} bytes for the client while its socket was down (stateful_reconnect_buffer_bytes)",
                                side.buffer.limit
                            );
                            warn!(%reason, "closing a disconnected connection");
                            connection.end_reconnect(ReconnectEnd::Overflowed, reason);
                        }
                    }
                    // Pings, Acks and the Close message have no socket to go to.
                    Some(_) => {}
                },
            }
            continue;
        };
        let may_take = !side.buffer.is_full() || connection.is_closed();
        let step = tokio::select! {
            biased;
            next = side.sinks.recv(), if side.sinks_open => Step::NewSocket(next),
            changed = side.client.changed(), if side.client_open => {
                Step::ClientChanged(changed.is_ok())
            }
            outgoing = outbound.next_outgoing(), if may_take => Step::Write(outgoing),
            // Waiting for an Ack: a close means draining anyway.
            () = connection.closed(), if !may_take => continue,
        };
        let first = match step {
            Step::NewSocket(Some(next)) => {
                debug!("a new socket replaced one still attached");
                side.took_over();
                side.client_changed();
                sink = Some(next);
                if !resend(&mut sink, &outbound, &side.buffer).await {
                    sink = None;
                }
                continue;
            }
            Step::NewSocket(None) => {
                side.sinks_open = false;
                continue;
            }
            Step::ClientChanged(false) => {
                side.client_open = false;
                continue;
            }
            Step::ClientChanged(true) => {
                if side.client_changed() {
                    debug!("the socket's read side failed; waiting for a reconnect");
                    sink = None;
                }
                continue;
            }
            Step::Write(None) => break,
            Step::Write(Some(first)) => first,
        };
        let Some(current) = sink.as_mut() else { continue };
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(outgoing) = next.take() {
            bytes += outgoing.record.len();
            if outgoing.sequenced && connection.is_resumable() {
                side.buffer.keep(outgoing.record.clone());
            }
            batch.extend(super::websocket::ws_message(&outbound, outgoing.record));
            if bytes < MAX_WRITE_BATCH_BYTES && !side.buffer.is_full() {
                next = outbound.try_next_outgoing();
            }
        }
        let send_batch = async {
            for message in batch.drain(..) {
                current.feed(message).await?;
            }
            current.flush().await
        };
        // As the plain writer: once the close is forced, the last batch (the
        // Close message) gets a short while; before, a forced close abandons it.
        let forced = connection.close_request().is_some_and(|request| !request.drain);
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
        batch.clear();
        if let Err(error) = sent {
            if connection.is_resumable() && !connection.is_closed() {
                debug!(%error, "WebSocket write failed; waiting for a reconnect");
                sink = None;
                continue;
            }
            connection
                .request_close(CloseRequest::peer_gone(format!("WebSocket write failed: {error}")));
            break;
        }
    }
    if let Some(mut sink) = sink {
        let close = Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: Utf8Bytes::from_static(""),
        }));
        let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, sink.send(close)).await;
    }
}

enum Step {
    NewSocket(Option<WsSink>),
    ClientChanged(bool),
    Write(Option<Outgoing>),
}

/// Sends the Sequence message and every unacknowledged record on a new socket.
/// `false` when the socket failed at once.
async fn resend(sink: &mut Option<WsSink>, outbound: &Outbound, buffer: &ResendBuffer) -> bool {
    let Some(sink) = sink.as_mut() else { return false };
    let Some(protocol) = outbound.connection().negotiated_protocol() else { return false };
    debug!(records = buffer.records.len(), bytes = buffer.bytes(), "resending after a reconnect");
    let send = async {
        for record in buffer.resend(protocol) {
            if let Some(message) = super::websocket::ws_message(outbound, record) {
                sink.feed(message).await?;
            }
        }
        sink.flush().await
    };
    match send.await {
        Ok(()) => true,
        Err(error) => {
            debug!(%error, "the new socket failed during the resend");
            false
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
    fn buffer_drops_what_is_acked_and_resends_the_rest_in_order() {
        let mut buffer = ResendBuffer::new(10);
        for record in ["a", "bb", "ccc"] {
            buffer.keep(Bytes::from(record));
        }
        assert_eq!(buffer.bytes(), 6);
        buffer.ack(1);
        assert_eq!(buffer.bytes(), 5);
        let resent: Vec<Bytes> = buffer.resend(Protocol::Json).collect();
        assert_eq!(
            resent,
            vec![
                Bytes::from_static(b"{\"type\":9,\"sequenceId\":2}\x1e"),
                Bytes::from("bb"),
                Bytes::from("ccc"),
            ]
        );
        // An Ack beyond what was sent empties it; the next id follows on.
        buffer.ack(99);
        assert_eq!(buffer.bytes(), 0);
        let resent: Vec<Bytes> = buffer.resend(Protocol::MessagePack).collect();
        assert_eq!(
            resent,
            vec![Protocol::MessagePack.encode(&HubMessage::Sequence { sequence_id: 4 })]
        );
    }

    #[test]
    fn buffer_is_bounded_in_bytes() {
        let mut buffer = ResendBuffer::new(10);
        assert!(
            buffer.keep_parked(Bytes::from(vec![b'x'; 30])),
            "an empty buffer takes one record"
        );
        assert!(buffer.is_full());
        assert!(!buffer.keep_parked(Bytes::from("y")));
        buffer.ack(1);
        assert!(buffer.keep_parked(Bytes::from(vec![b'x'; 6])));
        assert!(buffer.keep_parked(Bytes::from(vec![b'x'; 4])));
        assert!(buffer.is_full());
        assert!(!buffer.keep_parked(Bytes::from("z")));
        assert_eq!(buffer.bytes(), 10);
    }

    #[test]
    fn duplicates_after_a_resend_are_dropped() {
        let (mut state, _acks) = reconnect();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(state.admit(&invocation(), now), Ok(true));
        }
        assert_eq!(state.take_ack(), Some(HubMessage::Ack { sequence_id: 3 }));
        assert_eq!(state.take_ack(), None, "nothing new to acknowledge");
        state.lost("test", now);
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
    fn a_sequence_beyond_what_was_received_is_refused() {
        let (mut state, _acks) = reconnect();
        let now = Instant::now();
        assert_eq!(state.admit(&invocation(), now), Ok(true));
        assert!(state.admit(&HubMessage::Sequence { sequence_id: 3 }, now).is_err());
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
