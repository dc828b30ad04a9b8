//! One client connection as the hub sees it, and the outbound side of it.
//!
//! [`Connection`] is the cheap handle the hub keeps: it knows who is connected over
//! what, and queues already-encoded records without ever waiting. [`Outbound`] is the
//! other end of that queue, owned by whichever transport writes to the client; it
//! also decides when to send a keep-alive Ping and how to finish after a close.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

use super::config::HubConfig;
use crate::negotiate::Transport;
use crate::protocol::{HubMessage, Protocol};
use crate::value::Value;

/// The close text when a client does not read what we send fast enough.
pub(crate) const QUEUE_FULL_ERROR: &str =
    "outbound queue full: the client is not reading fast enough";

/// Why [`Connection::send`] did not queue a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the connection is closed")]
    Closed,
    /// The queue was full; the connection has been closed with an error.
    #[error("{QUEUE_FULL_ERROR}")]
    QueueFull,
}

/// How a connection is to end, set once by whoever closes it first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CloseRequest {
    /// Sent to the client in the Close message, and logged.
    pub error: Option<String>,
    pub allow_reconnect: bool,
    /// Whether the client may still be listening for a Close message.
    pub send_close_message: bool,
    /// Whether records already queued are written before the Close message. Off when
    /// the client is gone or too slow; shutdown turns it off when its time is up.
    pub drain: bool,
    /// For the log: what ended the connection.
    pub reason: String,
}

impl CloseRequest {
    /// The client went away or asked to stop: nothing more to tell it.
    pub(crate) fn peer_gone(reason: impl Into<String>) -> Self {
        Self {
            error: None,
            allow_reconnect: false,
            send_close_message: false,
            drain: false,
            reason: reason.into(),
        }
    }

    /// We end the connection and tell the client why.
    pub(crate) fn with_error(error: impl Into<String>) -> Self {
        let error = error.into();
        Self {
            reason: error.clone(),
            error: Some(error),
            allow_reconnect: false,
            send_close_message: true,
            drain: true,
        }
    }
}

/// The state shared by every handle of one connection and by its transport.
#[derive(Debug)]
struct Shared {
    id: String,
    user: String,
    transport: Transport,
    /// 0 until the handshake picks a protocol, then 1 + [`Protocol::slot`].
    protocol: AtomicU8,
    outbound: mpsc::Sender<Outgoing>,
    /// Bytes of the records in `outbound`: added on push, taken off when the
    /// writer takes a record. Records are counted too (the channel's capacity), but
    /// one record can be megabytes (a history page), so the count alone bounds
    /// nothing.
    queued_bytes: AtomicUsize,
    /// The most `queued_bytes` may reach; see [`HubConfig::outbound_queue_bytes`].
    max_queued_bytes: usize,
    /// Set by the push that found the queue full, so the hub can count slow
    /// consumers once each, whichever record overflowed.
    overflowed: AtomicBool,
    /// Set once the handshake agreed on stateful reconnect: a lost socket parks
    /// the connection for a reconnect instead of ending it.
    resumable: AtomicBool,
    /// How stateful reconnect ended the connection, if it did (see [`ReconnectEnd`]).
    reconnect_end: AtomicU8,
    close: watch::Sender<Option<CloseRequest>>,
    /// The transport's socket, for writing records straight to it while its
    /// writer is idle (plain WebSockets); `None`: every record is queued.
    direct: Option<Arc<dyn DirectWrite>>,
}

/// A transport that lets a sender write a record to the socket itself while
/// the transport's writer is idle, instead of queueing it and waking the writer
/// task (a cross-thread wake-up and a task poll per record).
///
/// **Order:** an implementation writes directly only when nothing is queued and
/// its writer holds nothing unwritten, and decides that and queues (through
/// [`Connection::queue`]) under one lock, so a record written directly never
/// overtakes one queued before it. It never waits: a write the socket cannot
/// take at once is finished by the writer task.
pub(crate) trait DirectWrite: Send + Sync + std::fmt::Debug + 'static {
    /// Writes `outgoing` now, or queues it with `connection.queue`.
    fn write_or_queue(&self, connection: &Connection, outgoing: Outgoing) -> Result<(), SendError>;

    /// When a record last went straight to the socket, for keep-alive: a Ping
    /// follows the last write of either kind by a whole interval.
    fn last_write(&self) -> Option<Instant>;
}

/// How stateful reconnect ended a connection, for the hub's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReconnectEnd {
    /// The socket dropped and no reconnect came within the window.
    Expired = 1,
    /// The records kept for a resend outgrew their byte bound.
    Overflowed = 2,
}

/// One record in the outbound queue.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) record: Bytes,
    /// Whether it counts toward stateful reconnect's sequence ids (every hub
    /// message but the handshake response, Ping, Close, Ack and Sequence), so is
    /// kept until the client acknowledges it.
    pub(crate) sequenced: bool,
}

/// A handle to one client connection. Cloning is cheap (an `Arc`).
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    /// A new connection and the receiving end of its outbound queue, bounded by
    /// `config`'s `outbound_queue_capacity` records and `outbound_queue_bytes` bytes.
    pub(crate) fn new(
        id: String,
        user: String,
        transport: Transport,
        config: &HubConfig,
        keep_alive: Option<Duration>,
    ) -> (Connection, Outbound) {
        Self::with_direct(id, user, transport, config, keep_alive, None)
    }

    /// As [`Connection::new`], for a transport whose socket senders may write to
    /// directly while its writer is idle (see [`DirectWrite`]).
    pub(crate) fn with_direct(
        id: String,
        user: String,
        transport: Transport,
        config: &HubConfig,
        keep_alive: Option<Duration>,
        direct: Option<Arc<dyn DirectWrite>>,
    ) -> (Connection, Outbound) {
        let (tx, rx) = mpsc::channel(config.outbound_queue_capacity.max(1));
        let (close, close_rx) = watch::channel(None);
        let connection = Connection {
            shared: Arc::new(Shared {
                id,
                user,
                transport,
                protocol: AtomicU8::new(0),
                outbound: tx,
                queued_bytes: AtomicUsize::new(0),
                max_queued_bytes: config.outbound_queue_bytes,
                overflowed: AtomicBool::new(false),
                resumable: AtomicBool::new(false),
                reconnect_end: AtomicU8::new(0),
                close,
                direct,
            }),
        };
        let outbound = Outbound {
            records: rx,
            close: close_rx,
            connection: connection.clone(),
            keep_alive,
            last_write: Instant::now(),
            ping_timer: None,
            finished: false,
        };
        (connection, outbound)
    }

    /// The connection id (16 random bytes, base64url), unique across servers.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The user the hub's `authenticate` returned.
    pub fn user(&self) -> &str {
        &self.shared.user
    }

    /// The hub protocol the handshake chose (JSON until the handshake completes; the
    /// hub never sees a connection before that).
    pub fn protocol(&self) -> Protocol {
        self.negotiated_protocol().unwrap_or(Protocol::Json)
    }

    pub fn transport(&self) -> Transport {
        self.shared.transport
    }

    pub(crate) fn negotiated_protocol(&self) -> Option<Protocol> {
        match self.shared.protocol.load(Ordering::Acquire) {
            1 => Some(Protocol::Json),
            2 => Some(Protocol::MessagePack),
            _ => None,
        }
    }

    pub(crate) fn set_protocol(&self, protocol: Protocol) {
        self.shared.protocol.store(protocol.slot() as u8 + 1, Ordering::Release);
    }

    /// Queues one whole record (already encoded for [`Connection::protocol`]) without
    /// waiting. A full queue closes the connection with an error and returns
    /// [`SendError::QueueFull`].
    pub fn send(&self, record: Bytes) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.push(record)
    }

    /// Queues even while the connection is closing (completions of the invocation in
    /// flight, and the handshake response).
    ///
    /// The queue is full when it holds `outbound_queue_capacity` records or when
    /// this record would take it past `outbound_queue_bytes`. A record bigger than
    /// the byte bound is still queued when the queue is empty: a client that keeps
    /// up gets every reply the hub makes, and one that does not is closed at the
    /// next record.
    pub(crate) fn push(&self, record: Bytes) -> Result<(), SendError> {
        self.enqueue(Outgoing { record, sequenced: true })
    }

    /// As [`Connection::push`], for a record outside stateful reconnect's
    /// sequence (the handshake response, an Ack): never kept for a resend.
    pub(crate) fn push_control(&self, record: Bytes) -> Result<(), SendError> {
        self.enqueue(Outgoing { record, sequenced: false })
    }

    fn enqueue(&self, outgoing: Outgoing) -> Result<(), SendError> {
        match &self.shared.direct {
            Some(direct) => direct.write_or_queue(self, outgoing),
            None => self.queue(outgoing),
        }
    }

    /// Puts a record on the outbound queue for the transport's writer.
    pub(crate) fn queue(&self, outgoing: Outgoing) -> Result<(), SendError> {
        let size = outgoing.record.len();
        let before = self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > self.shared.max_queued_bytes {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(self.overflow());
        }
        match self.shared.outbound.try_send(outgoing) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                match error {
                    mpsc::error::TrySendError::Full(_) => Err(self.overflow()),
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                }
            }
        }
    }

    /// Closes a slow consumer: what is queued is dropped, the Close message says why.
    fn overflow(&self) -> SendError {
        if self.request_close(CloseRequest {
            drain: false,
            ..CloseRequest::with_error(QUEUE_FULL_ERROR)
        }) {
            self.shared.overflowed.store(true, Ordering::Relaxed);
        }
        SendError::QueueFull
    }

    /// Whether the connection was closed because its outbound queue was full (in
    /// records or in bytes): the client did not read fast enough.
    pub fn closed_as_slow_consumer(&self) -> bool {
        self.shared.overflowed.load(Ordering::Relaxed)
    }

    /// Whether the connection uses stateful reconnect (negotiated, and the
    /// handshake asked for hub protocol version 2 over WebSockets).
    pub fn is_resumable(&self) -> bool {
        self.shared.resumable.load(Ordering::Acquire)
    }

    pub(crate) fn set_resumable(&self) {
        self.shared.resumable.store(true, Ordering::Release);
    }

    /// Records how stateful reconnect ends the connection and closes it without
    /// a Close message (there is no socket to send it on, or the client is
    /// too far behind to catch up). Returns whether this closed it.
    pub(crate) fn end_reconnect(&self, end: ReconnectEnd, reason: String) -> bool {
        let closed = self.request_close(CloseRequest {
            drain: false,
            send_close_message: false,
            ..CloseRequest::with_error(reason)
        });
        if closed {
            self.shared.reconnect_end.store(end as u8, Ordering::Relaxed);
        }
        closed
    }

    /// Whether the connection closed because its socket dropped and the client
    /// did not reconnect within `stateful_reconnect_window`.
    pub fn closed_as_reconnect_expired(&self) -> bool {
        self.shared.reconnect_end.load(Ordering::Relaxed) == ReconnectEnd::Expired as u8
    }

    /// Whether the connection closed because the messages kept for a reconnect
    /// outgrew `stateful_reconnect_buffer_bytes` while the client was away.
    pub fn closed_as_reconnect_overflow(&self) -> bool {
        self.shared.reconnect_end.load(Ordering::Relaxed) == ReconnectEnd::Overflowed as u8
    }

    /// Encodes a hub message for this connection's protocol and queues it.
    pub fn send_message(&self, message: &HubMessage) -> Result<(), SendError> {
        self.send(self.protocol().encode(message))
    }

    /// Calls `target` on the client (no invocation id: the client sends no completion).
    pub fn send_invocation(&self, target: &str, arguments: Vec<Value>) -> Result<(), SendError> {
        self.send_message(&HubMessage::Invocation {
            invocation_id: None,
            target: target.to_owned(),
            arguments,
            stream_ids: Vec::new(),
        })
    }

    /// Closes the connection: what is queued is written, then a Close message carrying
    /// `error`. Closing twice keeps the first reason.
    pub fn close(&self, error: Option<String>) {
        let request = match error {
            Some(error) => CloseRequest::with_error(error),
            None => CloseRequest {
                error: None,
                allow_reconnect: false,
                send_close_message: true,
                drain: true,
                reason: "closed by the server".into(),
            },
        };
        self.request_close(request);
    }

    /// Whether the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.shared.close.borrow().is_some()
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        let mut rx = self.shared.close.subscribe();
        // An error means every sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Sets the close request unless one is set already. Returns whether it was set.
    pub(crate) fn request_close(&self, request: CloseRequest) -> bool {
        self.shared.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(request);
                true
            } else {
                false
            }
        })
    }

    /// Stops draining: the transport writes the Close message (if any) and ends now.
    pub(crate) fn stop_draining(&self) {
        self.shared.close.send_if_modified(|current| match current {
            Some(request) if request.drain => {
                request.drain = false;
                true
            }
            _ => false,
        });
    }

    pub(crate) fn close_request(&self) -> Option<CloseRequest> {
        self.shared.close.borrow().clone()
    }

    pub(crate) fn subscribe_close(&self) -> watch::Receiver<Option<CloseRequest>> {
        self.shared.close.subscribe()
    }
}

/// The transport's end of the outbound queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    records: mpsc::Receiver<Outgoing>,
    close: watch::Receiver<Option<CloseRequest>>,
    connection: Connection,
    /// Ping after this long without a write; `None` for long polling, whose polls
    /// keep the connection alive by themselves.
    keep_alive: Option<Duration>,
    last_write: Instant,
    /// Armed once and re-armed only when it fires, not on every write: most
    /// records go out long before it is due, and a timer per record costs a
    /// timer-wheel insertion and removal on the hot path.
    ping_timer: Option<Pin<Box<Sleep>>>,
    finished: bool,
}

impl Outbound {
    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next record to write: queued records, keep-alive Pings, and after a close
    /// the drained queue then the Close message. `None` when the transport should end.
    /// Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        self.next_outgoing().await.map(|outgoing| outgoing.record)
    }

    /// As [`Outbound::next`], saying whether the record is sequenced (see
    /// [`Outgoing::sequenced`]); Pings and the Close message are not.
    pub(crate) async fn next_outgoing(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(step) = self.after_close() {
                return step;
            }
            if self.ping_timer.is_none()
                && let Some(due) = self.ping_deadline()
            {
                self.ping_timer = Some(Box::pin(tokio::time::sleep_until(due)));
            }
            let timer = &mut self.ping_timer;
            tokio::select! {
                biased;
                changed = self.close.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                        return None;
                    }
                }
                record = self.records.recv() => {
                    return match record {
                        Some(record) => Some(self.taken(record)),
                        None => {
                            self.finished = true;
                            None
                        }
                    };
                }
                () = fired(timer) => {
                    // The timer may have been armed before later writes: ping only
                    // if nothing went out for a whole interval, else wait the rest.
                    if let Some(direct) = &self.connection.shared.direct
                        && let Some(at) = direct.last_write()
                    {
                        self.last_write = self.last_write.max(at);
                    }
                    match self.ping_deadline() {
                        Some(due) if due <= Instant::now() => {
                            if let Some(protocol) = self.connection.negotiated_protocol() {
                                return Some(control(self.wrote(ping_record(protocol))));
                            }
                        }
                        Some(due) => {
                            if let Some(timer) = self.ping_timer.as_mut() {
                                timer.as_mut().reset(due);
                            }
                        }
                        None => self.ping_timer = None,
                    }
                }
            }
        }
    }

    /// Whether no record is waiting (one may arrive at any time).
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A record available now, without waiting; `None` when there is none (or the
    /// transport should end: see [`Outbound::is_finished`]).
    pub(crate) fn try_next(&mut self) -> Option<Bytes> {
        self.try_next_outgoing().map(|outgoing| outgoing.record)
    }

    /// As [`Outbound::try_next`], saying whether the record is sequenced.
    pub(crate) fn try_next_outgoing(&mut self) -> Option<Outgoing> {
        if let Some(step) = self.after_close() {
            return step;
        }
        self.records.try_recv().ok().map(|record| self.taken(record))
    }

    /// Resolves when the connection is closing and must not drain any more.
    pub(crate) async fn forced(&self) {
        let mut rx = self.close.clone();
        let _ = rx.wait_for(|request| request.as_ref().is_some_and(|r| !r.drain)).await;
    }

    /// What to do once a close is requested: `Some(Some(record))` to write,
    /// `Some(None)` to end, `None` when the connection is not closing.
    fn after_close(&mut self) -> Option<Option<Outgoing>> {
        if self.finished {
            return Some(None);
        }
        let request = self.close.borrow_and_update().clone()?;
        if request.drain
            && let Ok(record) = self.records.try_recv()
        {
            return Some(Some(self.taken(record)));
        }
        self.finished = true;
        // Before the handshake there is no protocol to write a Close message in.
        let Some(protocol) = self.connection.negotiated_protocol() else {
            return Some(None);
        };
        if !request.send_close_message {
            return Some(None);
        }
        Some(Some(control(protocol.encode(&HubMessage::Close {
            error: request.error,
            allow_reconnect: request.allow_reconnect,
        }))))
    }

    fn ping_deadline(&self) -> Option<Instant> {
        let interval = self.keep_alive?;
        self.connection.negotiated_protocol()?;
        Some(self.last_write + interval)
    }

    /// Every record taken from the queue passes here (Pings and the Close message
    /// too, which were never counted: they do not pass `taken`).
    fn wrote(&mut self, record: Bytes) -> Bytes {
        self.last_write = Instant::now();
        record
    }

    /// A record taken from the queue no longer counts against its byte bound.
    fn taken(&mut self, outgoing: Outgoing) -> Outgoing {
        let Outgoing { record, sequenced } = outgoing;
        self.connection.shared.queued_bytes.fetch_sub(record.len(), Ordering::Relaxed);
        Outgoing { record: self.wrote(record), sequenced }
    }
}

fn control(record: Bytes) -> Outgoing {
    Outgoing { record, sequenced: false }
}

async fn fired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The Ping record, static so a keep-alive tick allocates nothing.
fn ping_record(protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::Json => Bytes::from_static(b"{\"type\":6}\x1e"),
        Protocol::MessagePack => Bytes::from_static(&[0x02, 0x91, 0x06]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(capacity: usize) -> (Connection, Outbound) {
        open_with(capacity, usize::MAX)
    }

    fn open_with(capacity: usize, bytes: usize) -> (Connection, Outbound) {
        let config = HubConfig {
            outbound_queue_capacity: capacity,
            outbound_queue_bytes: bytes,
            ..HubConfig::default()
        };
        let (connection, outbound) = Connection::new(
            "id".into(),
            "alice".into(),
            Transport::WebSockets,
            &config,
            Some(Duration::from_secs(15)),
        );
        connection.set_protocol(Protocol::Json);
        (connection, outbound)
    }

    #[test]
    fn ping_records_match_the_encoder() {
        for protocol in Protocol::ALL {
            assert_eq!(ping_record(protocol), protocol.encode(&HubMessage::Ping));
        }
    }

    #[tokio::test]
    async fn full_queue_closes_the_connection_with_an_error() {
        let (connection, mut outbound) = open(2);
        assert!(connection.send(Bytes::from_static(b"1")).is_ok());
        assert!(connection.send(Bytes::from_static(b"2")).is_ok());
        assert_eq!(connection.send(Bytes::from_static(b"3")), Err(SendError::QueueFull));
        assert!(connection.is_closed());
        assert_eq!(connection.send(Bytes::from_static(b"4")), Err(SendError::Closed));
        // No draining after an overflow: straight to the Close message.
        let close = outbound.next().await.expect("a Close message");
        assert_eq!(
            &close[..],
            format!("{{\"type\":7,\"error\":\"{QUEUE_FULL_ERROR}\"}}\u{1e}").as_bytes()
        );
        assert_eq!(outbound.next().await, None);
    }

    #[tokio::test]
    async fn queue_over_its_byte_bound_closes_the_connection() {
        let (connection, mut outbound) = open_with(1024, 10);
        connection.send(Bytes::from_static(b"123456")).expect("6 of 10 bytes");
        // Taken by the writer: those bytes no longer count.
        assert_eq!(outbound.next().await, Some(Bytes::from_static(b"123456")));
        connection.send(Bytes::from_static(b"abcdef")).expect("6 of 10 bytes");
        connection.send(Bytes::from_static(b"ghij")).expect("10 of 10 bytes");
        assert_eq!(connection.send(Bytes::from_static(b"k")), Err(SendError::QueueFull));
        assert!(connection.closed_as_slow_consumer());
        let close = outbound.next().await.expect("a Close message");
        assert!(String::from_utf8_lossy(&close).contains(QUEUE_FULL_ERROR));
    }

    #[tokio::test]
    async fn one_record_over_the_byte_bound_fits_an_empty_queue() {
        let (connection, mut outbound) = open_with(1024, 10);
        let big = Bytes::from(vec![b'x'; 100]);
        connection.send(big.clone()).expect("an empty queue takes any one record");
        assert_eq!(outbound.next().await, Some(big.clone()));
        connection.send(big.clone()).expect("empty again once the writer took it");
        assert_eq!(connection.send(Bytes::from_static(b"y")), Err(SendError::QueueFull));
    }

    #[tokio::test]
    async fn close_drains_the_queue_first() {
        let (connection, mut outbound) = open(8);
        connection.send(Bytes::from_static(b"a")).expect("queue has room");
        connection.close(None);
        assert_eq!(outbound.next().await, Some(Bytes::from_static(b"a")));
        assert_eq!(outbound.next().await, Some(Bytes::from_static(b"{\"type\":7}\x1e")));
        assert_eq!(outbound.next().await, None);
        assert!(outbound.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn pings_after_the_keep_alive_interval_of_silence() {
        let (_connection, mut outbound) = open(8);
        let started = Instant::now();
        let ping = outbound.next().await.expect("a ping");
        assert_eq!(&ping[..], b"{\"type\":6}\x1e");
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_postpones_the_ping_by_a_whole_interval() {
        let (connection, mut outbound) = open(8);
        let started = Instant::now();
        // Arm the timer, then write 10 s later: the ping is due at 25 s, not 15 s.
        let first = tokio::time::timeout(Duration::from_secs(10), outbound.next()).await;
        assert!(first.is_err(), "nothing to send in the first 10 s");
        connection.send(Bytes::from_static(b"r")).expect("queued");
        assert_eq!(outbound.next().await, Some(Bytes::from_static(b"r")));
        let ping = outbound.next().await.expect("a ping");
        assert_eq!(&ping[..], b"{\"type\":6}\x1e");
        assert_eq!(started.elapsed(), Duration::from_secs(25));
        let ping = outbound.next().await.expect("the next ping");
        assert_eq!(&ping[..], b"{\"type\":6}\x1e");
        assert_eq!(started.elapsed(), Duration::from_secs(40));
    }
}
