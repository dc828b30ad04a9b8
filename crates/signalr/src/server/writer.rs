//! The one WebSocket writer: takes records from the connection's outbound queue
//! and writes them, those already queued together (one flush, one write system
//! call, per batch; each record stays its own WebSocket message).
//!
//! It runs in one of two modes ([`Mode`]):
//! - **plain**: while idle it parks its socket in [`Direct`], so that
//!   `Connection::send` writes a record to it from the sender's task (see
//!   [`DirectWrite`]); it takes the socket back when a record is queued.
//! - **resumable** (stateful reconnect): every record passes through the writer,
//!   which keeps the sequenced ones in the [`ResendBuffer`] until the client
//!   acknowledges them; while no socket is attached it keeps what the hub
//!   sends, and on a new socket sends the Sequence message and everything
//!   unacknowledged first. While a socket is attached and the buffer is full,
//!   it stops taking records (the outbound queue's bounds then apply).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Message;
use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::debug;

use super::connection::{CloseRequest, Connection, DirectWrite, Outbound, Outgoing, SendError};
use super::load::Load;
use super::registry::LiveGuard;
use super::stateful::WriterSide;
use super::ws_frames::{
    FINAL_WRITE_TIMEOUT, MAX_WRITE_BATCH_BYTES, WsSink, message_for, normal_close,
};
use crate::protocol::Protocol;
use crate::sequence::ResendBuffer;

/// How the writer reaches the client.
pub(crate) enum Mode {
    /// One socket for the connection's life, parked for direct writes while idle.
    Plain(Arc<Direct>),
    /// Stateful reconnect: the socket of the moment, and what to resend on the next.
    Resumable(WriterSide),
}

/// What the writer does next.
enum Next {
    /// Write this record, and what else is queued behind it.
    Write(Outgoing),
    /// Nothing to write yet: look again.
    Again,
    /// The connection is done: send the close frame (if a socket is held) and end.
    End,
}

/// How a batch went.
enum Sent {
    Done,
    /// A forced close came first: the batch was dropped.
    Abandoned,
    Failed(axum::Error),
}

/// Writes the connection's records until it ends, then a close frame.
pub(crate) async fn write(sink: WsSink, mut outbound: Outbound, mut mode: Mode, _live: LiveGuard) {
    let mut sink = Some(sink);
    let mut batch = Vec::new();
    loop {
        let next = match &mut mode {
            Mode::Plain(direct) => next_plain(&mut sink, &mut outbound, direct).await,
            // Boxed: the task's own future is sized for the plain writer,
            // which most connections have, rather than for both side by side.
            Mode::Resumable(side) => Box::pin(next_resumable(&mut sink, &mut outbound, side)).await,
        };
        let first = match next {
            Next::Write(first) => first,
            Next::Again => continue,
            Next::End => break,
        };
        let Some(current) = sink.as_mut() else { continue };
        let buffer = match &mut mode {
            Mode::Resumable(side) => Some(&mut side.buffer),
            Mode::Plain(_) => None,
        };
        gather(&mut batch, first, &mut outbound, buffer);
        let sent = send_batch(current, &mut batch, &outbound).await;
        if batch.capacity() > 0 && outbound.is_empty() {
            // An idle connection keeps no batch buffer.
            batch = Vec::new();
        }
        let Sent::Failed(error) = sent else { continue };
        let connection = outbound.connection();
        if matches!(mode, Mode::Resumable(_))
            && connection.is_resumable()
            && !connection.is_closed()
        {
            debug!(%error, "WebSocket write failed; waiting for a reconnect");
            sink = None;
            continue;
        }
        debug!(%error, "WebSocket write failed");
        connection
            .request_close(CloseRequest::peer_gone(format!("WebSocket write failed: {error}")));
        break;
    }
    if let Some(mut sink) = sink {
        let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, sink.send(normal_close())).await;
    }
}

/// Moves `first` and the records queued behind it into `batch`, up to
/// [`MAX_WRITE_BATCH_BYTES`]; with a resend buffer, keeps the sequenced ones
/// there and stops when it is full.
fn gather(
    batch: &mut Vec<Message>,
    first: Outgoing,
    outbound: &mut Outbound,
    mut buffer: Option<&mut ResendBuffer>,
) {
    let connection = outbound.connection();
    let protocol = connection.negotiated_protocol().unwrap_or(Protocol::Json);
    if buffer.is_some() && !connection.is_resumable() {
        // Declined by the handshake: nothing is kept for a resend.
        buffer = None;
    }
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(Outgoing { record, sequenced }) = next.take() {
        bytes += record.len();
        if let Some(buffer) = buffer.as_deref_mut()
            && sequenced
        {
            buffer.keep(record.clone());
        }
        // An empty record only asked the writer to finish a direct write.
        if !record.is_empty() {
            batch.extend(message_for(protocol, record));
        }
        if bytes < MAX_WRITE_BATCH_BYTES && !buffer.as_ref().is_some_and(|b| b.is_full()) {
            next = outbound.try_next_outgoing();
        }
    }
}

/// Writes the batch with one flush. Once the close is forced, the last batch
/// (the Close message) gets a short while; before, a forced close abandons it.
async fn send_batch(sink: &mut WsSink, batch: &mut Vec<Message>, outbound: &Outbound) -> Sent {
    let send = async {
        for message in batch.drain(..) {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    let forced = outbound.connection().close_request().is_some_and(|request| !request.drain);
    let sent = if forced {
        Some(tokio::time::timeout(FINAL_WRITE_TIMEOUT, send).await.unwrap_or(Ok(())))
    } else {
        tokio::select! {
            sent = send => Some(sent),
            _ = outbound.forced() => None,
        }
    };
    batch.clear();
    match sent {
        None => Sent::Abandoned,
        Some(Ok(())) => Sent::Done,
        Some(Err(error)) => Sent::Failed(error),
    }
}

/// The plain mode's next record: parks the socket while idle, and finishes
/// what a direct write left unflushed.
async fn next_plain(sink: &mut Option<WsSink>, outbound: &mut Outbound, direct: &Direct) -> Next {
    let Some(held) = sink.take() else { return Next::End };
    let (held, woken, unflushed) = idle(held, outbound, direct).await;
    let held = sink.insert(held);
    if unflushed && !finish_direct_write(held, outbound).await {
        return Next::End;
    }
    match woken {
        Woken::Record(outgoing) if outgoing.record.is_empty() => Next::Again,
        Woken::Record(outgoing) => Next::Write(outgoing),
        Woken::End => Next::End,
    }
}

/// Flushes what a direct write left in the socket. `false` when the socket
/// failed (the connection is then closing).
async fn finish_direct_write(sink: &mut WsSink, outbound: &Outbound) -> bool {
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
        outbound
            .connection()
            .request_close(CloseRequest::peer_gone(format!("WebSocket write failed: {error}")));
        return false;
    }
    true
}

/// The resumable mode's next record, after handling a new socket, the
/// client's Acks or a lost socket.
async fn next_resumable(
    sink: &mut Option<WsSink>,
    outbound: &mut Outbound,
    side: &mut WriterSide,
) -> Next {
    if outbound.is_finished() {
        return Next::End;
    }
    if sink.is_none() {
        return next_parked(sink, outbound, side).await;
    }
    let connection = outbound.connection().clone();
    let may_take = !side.buffer.is_full() || connection.is_closed();
    tokio::select! {
        biased;
        next = side.sinks.recv(), if side.sinks_open => match next {
            Some(next) => {
                debug!("a new socket replaced one still attached");
                take_over(sink, next, outbound, side).await;
                Next::Again
            }
            None => {
                side.sinks_open = false;
                Next::Again
            }
        },
        changed = side.client.changed(), if side.client_open => {
            if changed.is_err() {
                side.client_open = false;
            } else if side.client_changed() {
                debug!("the socket's read side failed; waiting for a reconnect");
                *sink = None;
            }
            Next::Again
        }
        outgoing = outbound.next_outgoing(), if may_take => outgoing.map_or(Next::End, Next::Write),
        // Waiting for an Ack: a close means draining anyway.
        () = connection.closed(), if !may_take => Next::Again,
    }
}

/// No socket attached: keeps what the hub sends until a socket comes back or
/// the session ends the connection.
async fn next_parked(
    sink: &mut Option<WsSink>,
    outbound: &mut Outbound,
    side: &mut WriterSide,
) -> Next {
    let connection = outbound.connection().clone();
    tokio::select! {
        biased;
        next = side.sinks.recv(), if side.sinks_open => match next {
            Some(next) => {
                take_over(sink, next, outbound, side).await;
                Next::Again
            }
            // No socket and none to come: nothing can be written.
            None => Next::End,
        },
        changed = side.client.changed(), if side.client_open => {
            if changed.is_ok() {
                side.client_changed();
            } else {
                side.client_open = false;
            }
            Next::Again
        }
        outgoing = outbound.next_outgoing() => match outgoing {
            None => Next::End,
            Some(Outgoing { record, sequenced: true }) if connection.is_resumable() => {
                side.keep_parked(&connection, record);
                Next::Again
            }
            // Pings, Acks and the Close message have no socket to go to.
            Some(_) => Next::Again,
        },
    }
}

/// A new socket took over: sends the Sequence message and every record not
/// acknowledged on it; if that fails at once, waits for another.
async fn take_over(
    sink: &mut Option<WsSink>,
    next: WsSink,
    outbound: &Outbound,
    side: &mut WriterSide,
) {
    side.took_over();
    let current = sink.insert(next);
    let Some(protocol) = outbound.connection().negotiated_protocol() else {
        *sink = None;
        return;
    };
    let buffer = &side.buffer;
    debug!(records = buffer.len(), bytes = buffer.bytes(), "resending after a reconnect");
    let send = async {
        for record in buffer.resend(protocol) {
            if let Some(message) = message_for(protocol, record) {
                current.feed(message).await?;
            }
        }
        current.flush().await
    };
    if let Err(error) = send.await {
        debug!(%error, "the new socket failed during the resend");
        *sink = None;
    }
}

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
        let mut guard = self.state.lock();
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
        self.state.lock().last_write
    }
}

/// What woke an idle writer.
enum Woken {
    /// A record to write; an empty one only asks to finish a direct write.
    Record(Outgoing),
    End,
}

/// Parks the socket while nothing is queued, waits for work and takes the
/// socket back. Returns it, what woke the writer, and whether a direct write
/// left something to flush.
async fn idle(sink: WsSink, outbound: &mut Outbound, direct: &Direct) -> (WsSink, Woken, bool) {
    if !direct.load.has_time() {
        // Busy: senders queue anyway, so the socket stays here.
        let woken = outbound.next_outgoing().await.map_or(Woken::End, Woken::Record);
        return (sink, woken, false);
    }
    {
        // Under the lock senders queue under: nothing can be queued between
        // finding the queue empty and parking.
        let mut parked = direct.state.lock();
        if let Some(outgoing) = outbound.try_next_outgoing() {
            return (sink, Woken::Record(outgoing), false);
        }
        if outbound.is_finished() {
            return (sink, Woken::End, false);
        }
        parked.sink = Some(sink);
        parked.after_handshake = outbound.connection().negotiated_protocol().is_some();
    }
    let woken = outbound.next_outgoing().await.map_or(Woken::End, Woken::Record);
    let mut parked = direct.state.lock();
    let sink = parked.sink.take().expect("only the writer takes the parked socket");
    parked.writer_needed = false;
    let unflushed = std::mem::take(&mut parked.unflushed);
    (sink, woken, unflushed)
}
