//! One connection's life, whatever the transport: handshake, then decoding hub
//! messages, starting invocations one at a time in order (an invocation that
//! returns [`Invoked::Finishing`] finishes while the next ones start; completions
//! go out in invocation order), enforcing the client timeout, and finally telling
//! the hub the connection is gone.
//!
//! The transport hands in a stream of [`Inbound`] frames (WebSocket messages or POST
//! bodies) and writes whatever the connection's outbound queue yields.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::connection::{CloseRequest, Connection};
use super::long_polling::PollState;
use super::rate::RateLimit;
use super::registry::LiveGuard;
use super::stateful::Reconnect;
use super::{Hub, HubConfig, Invoked, ServerState};
use crate::handshake::{HandshakeBuffer, HandshakeError, HandshakeRequest, HandshakeResponse};
use crate::protocol::{HubMessage, Outcome, Protocol, ProtocolError, quote_untrusted};
use crate::value::Value;

/// One frame from the transport.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A whole WebSocket message or POST body: zero or more records, possibly partial.
    Data(Bytes),
    /// The transport failed (the text says how); the connection ends with an error.
    Failed(String),
    /// Stateful reconnect: the socket dropped (the text says how); the connection
    /// waits for a new one.
    Lost(String),
    /// Stateful reconnect: a new socket took over.
    Resumed,
}

/// How the session decides that a client is gone.
pub(crate) enum Liveness {
    /// No hub message for this long closes the connection (WebSockets, SSE).
    ClientTimeout(Duration),
    /// Long polling: no poll outstanding for this long closes the connection.
    Polling(Arc<PollState>, Duration),
}

/// The Close message's error when the user's credential expires.
pub const CREDENTIAL_EXPIRED: &str = "the access token expired: reconnect with a fresh one";

/// The error text when an incoming frame or record is over the limit.
pub(crate) fn too_large(size: Option<usize>, limit: usize) -> String {
    match size {
        Some(size) => ProtocolError::MessageTooLarge { size, limit }.to_string(),
        None => format!("message exceeds the limit of {limit} bytes"),
    }
}

/// Runs the connection to its end. Returns once `disconnected` has run (if
/// `connected` had succeeded); the transport's writer may still be draining.
/// At `expires_at` (the user's credential expires) the connection is closed
/// with an error saying so and `allowReconnect: true`.
pub(crate) async fn run<H: Hub>(
    server: Arc<ServerState<H>>,
    connection: Connection,
    inbound: impl Stream<Item = Inbound> + Send,
    liveness: Liveness,
    live: LiveGuard,
    expires_at: Option<SystemTime>,
    reconnect: Option<Reconnect>,
) {
    let span = info_span!(
        "signalr_connection",
        connection_id = connection.id(),
        user = connection.user(),
        transport = connection.transport().name(),
    );
    // One pinned session future, awaited in one place or two by reference:
    // moving it into a match arm would give the task a copy of its state per
    // arm (it doubled an idle connection's memory).
    let mut session =
        pin!(run_inner(server, connection.clone(), inbound, liveness, reconnect).instrument(span));
    // Without an expiry the session is awaited alone: a `select!` would poll
    // a never-ready branch (and draw a random number) on every wake-up.
    let Some(expires_at) = expires_at else {
        session.await;
        drop(live);
        return;
    };
    let expiry =
        tokio::time::sleep(expires_at.duration_since(SystemTime::now()).unwrap_or_default());
    tokio::select! {
        () = session.as_mut() => {}
        () = expiry => {
            debug!(connection_id = connection.id(), "the credential expired: closing");
            connection.request_close(CloseRequest {
                allow_reconnect: true,
                ..CloseRequest::with_error(CREDENTIAL_EXPIRED)
            });
            session.await;
        }
    }
    drop(live);
}

async fn run_inner<H: Hub>(
    server: Arc<ServerState<H>>,
    connection: Connection,
    inbound: impl Stream<Item = Inbound> + Send,
    liveness: Liveness,
    reconnect: Option<Reconnect>,
) {
    let mut inbound = pin!(inbound);
    let config = &server.config;
    let (protocol, version, leftover) =
        match handshake(&server, &connection, inbound.as_mut()).await {
            Ok(done) => done,
            Err(request) => {
                warn!(reason = ?request.reason, "handshake failed");
                connection.request_close(request);
                return;
            }
        };
    connection.set_protocol(protocol);
    // Stateful reconnect starts with hub protocol version 2; an older client
    // that negotiated it gets a plain connection, as from ASP.NET Core.
    let mut reconnect = reconnect.filter(|_| version >= 2);
    if reconnect.is_some() {
        connection.set_resumable();
    }
    if connection.push_control(HandshakeResponse::ok().encode()).is_err() {
        return;
    }
    let hub = server.hub.as_ref();
    let session = match AssertUnwindSafe(hub.connected(connection.clone())).catch_unwind().await {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => {
            warn!(protocol = protocol.name(), ?error, "hub refused the connection");
            connection.request_close(CloseRequest::with_error(error));
            return;
        }
        Err(_) => {
            error!("hub panicked in connected");
            connection.request_close(CloseRequest::with_error("internal server error"));
            return;
        }
    };
    info!(
        protocol = protocol.name(),
        stateful_reconnect = reconnect.is_some(),
        "connection opened"
    );

    let mut decoder = protocol.decoder(config.max_message_size);
    decoder.push(&leftover);
    drop(leftover);
    let mut close_rx = connection.subscribe_close();
    let mut invocations = Invocations::default();
    let mut last_received = Instant::now();

    let ending: CloseRequest = 'session: loop {
        // A close requested before `close_rx` was subscribed (say, during
        // `connected`) shows here, not as a change.
        if let Some(request) = connection.close_request() {
            break 'session request;
        }
        // Decode what has arrived, as far as the invocation queue has room.
        while invocations.has_room(config) {
            let buffered = decoder.buffered();
            match decoder.next_message() {
                Ok(Some(message)) => {
                    last_received = Instant::now();
                    let size = buffered - decoder.buffered();
                    if let Some(reconnect) = reconnect.as_mut() {
                        match reconnect.admit(&message, last_received) {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(error) => {
                                warn!(%error, "stateful reconnect: protocol error");
                                break 'session CloseRequest::with_error(error);
                            }
                        }
                    }
                    if let Dispatch::End(request) =
                        dispatch(message, size, &connection, protocol, &mut invocations)
                    {
                        break 'session request;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    warn!(protocol = protocol.name(), error = ?error.to_string(), "protocol error");
                    break 'session CloseRequest::with_error(error.to_string());
                }
            }
        }
        // A rate-limited call completes at once, and the next may then start.
        while let Some(completed) = invocations.start_next(hub, &session, config) {
            complete(&connection, protocol, completed);
        }
        let deadline = match &liveness {
            // While no socket is attached, the reconnect window applies instead.
            _ if reconnect.as_ref().is_some_and(Reconnect::is_parked) => None,
            // While we are busy the client's pings may wait unread: not its fault.
            Liveness::ClientTimeout(_) if invocations.is_busy() => None,
            Liveness::ClientTimeout(timeout) => Some(last_received + *timeout),
            Liveness::Polling(polls, timeout) => polls.idle_since().map(|idle| idle + *timeout),
        };
        // Boxed, and only for a stateful connection: its timers would otherwise
        // take room in every connection's session state.
        let reconnect_event = async {
            match &reconnect {
                Some(reconnect) => Box::pin(reconnect.next_event()).await,
                None => std::future::pending().await,
            }
        };
        let poll_activity = async {
            match &liveness {
                Liveness::Polling(polls, _) => polls.activity().await,
                Liveness::ClientTimeout(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = close_rx.changed() => {
                break 'session connection
                    .close_request()
                    .unwrap_or_else(|| CloseRequest::peer_gone("closed"));
            }
            completed = invocations.progress() => {
                if let Some(completed) = completed {
                    complete(&connection, protocol, completed);
                }
            }
            frame = inbound.next(), if invocations.has_room(config) => {
                match frame {
                    Some(Inbound::Data(data)) => {
                        if data.len() > config.max_batch_size {
                            let error = too_large(Some(data.len()), config.max_batch_size);
                            warn!(%error, "incoming message too large");
                            break 'session CloseRequest::with_error(error);
                        }
                        decoder.push(&data);
                    }
                    Some(Inbound::Failed(error)) => {
                        warn!(error = ?error, "transport failed");
                        break 'session CloseRequest {
                            drain: false,
                            ..CloseRequest::with_error(error)
                        };
                    }
                    Some(Inbound::Lost(reason)) => match reconnect.as_mut() {
                        Some(reconnect) => reconnect.lost(&reason, Instant::now()),
                        None => break 'session CloseRequest::peer_gone(reason),
                    },
                    Some(Inbound::Resumed) => {
                        if let Some(reconnect) = reconnect.as_mut() {
                            // A partial record of the old socket means nothing now.
                            decoder = protocol.decoder(config.max_message_size);
                            last_received = Instant::now();
                            reconnect.resumed(last_received);
                            hub.resumed(&session);
                        }
                    }
                    None => break 'session CloseRequest::peer_gone("the client disconnected"),
                }
            }
            event = reconnect_event => {
                if let Some(request) = reconnect.as_mut().and_then(|r| r.on_event(event, &connection)) {
                    break 'session request;
                }
            }
            _ = sleep_until_opt(deadline) => {
                if let Some(request) = timed_out(&liveness, last_received) {
                    warn!(reason = %request.reason, "closing an unresponsive connection");
                    break 'session request;
                }
            }
            _ = poll_activity => {}
        }
    };
    connection.request_close(ending);
    // Calls already started still complete; queued ones never run.
    if let Some(completed) = invocations.finish_starting().await {
        complete(&connection, protocol, completed);
    }
    while let Some(completed) = invocations.next_finished().await {
        complete(&connection, protocol, completed);
    }
    if invocations.queued() > 0 {
        debug!(skipped = invocations.queued(), "invocations not run: the connection closed");
    }
    drop(invocations);
    if AssertUnwindSafe(hub.disconnected(session)).catch_unwind().await.is_err() {
        error!("hub panicked in disconnected");
    }
    let reason = connection.close_request().map(|r| r.reason).unwrap_or_default();
    info!(protocol = protocol.name(), reason = ?reason, "connection closed");
}

/// Reads the handshake request. `Err` is how to close the connection.
async fn handshake<H: Hub>(
    server: &ServerState<H>,
    connection: &Connection,
    mut inbound: std::pin::Pin<&mut (impl Stream<Item = Inbound> + Send)>,
) -> Result<(Protocol, i64, Bytes), CloseRequest> {
    let config = &server.config;
    let mut close_rx = connection.subscribe_close();
    let mut buffer = HandshakeBuffer::default();
    let deadline = Instant::now() + config.handshake_timeout;
    if let Some(request) = connection.close_request() {
        return Err(request);
    }
    let refuse = |error: HandshakeError| {
        let text = error.to_string();
        // The response must reach the client before the connection ends.
        let _ = connection.push_control(HandshakeResponse::error(text.clone()).encode());
        CloseRequest {
            error: Some(text.clone()),
            allow_reconnect: false,
            send_close_message: false,
            drain: true,
            reason: format!("handshake refused: {text}"),
        }
    };
    loop {
        let frame = tokio::select! {
            biased;
            _ = close_rx.changed() => {
                return Err(connection
                    .close_request()
                    .unwrap_or_else(|| CloseRequest::peer_gone("closed")));
            }
            frame = inbound.next() => frame,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(refuse(HandshakeError::TimedOut {
                    seconds: config.handshake_timeout.as_secs(),
                }));
            }
        };
        match frame {
            Some(Inbound::Data(data)) => buffer.push(&data),
            Some(Inbound::Resumed) => continue,
            Some(Inbound::Failed(error) | Inbound::Lost(error)) => {
                return Err(CloseRequest::peer_gone(format!(
                    "transport failed during the handshake: {}",
                    quote_untrusted(&error)
                )));
            }
            None => {
                return Err(CloseRequest::peer_gone(
                    "the client disconnected before the handshake",
                ));
            }
        }
        let Some(end) = buffer.record_end() else {
            if buffer.len() > config.max_message_size {
                return Err(refuse(HandshakeError::TooLarge { limit: config.max_message_size }));
            }
            continue;
        };
        if end > config.max_message_size {
            return Err(refuse(HandshakeError::TooLarge { limit: config.max_message_size }));
        }
        let request = HandshakeRequest::parse(&buffer.as_bytes()[..end]).map_err(refuse)?;
        let protocol = request.select_protocol().map_err(refuse)?;
        if !connection.transport().supports(protocol) {
            return Err(refuse(HandshakeError::TextOnlyTransport {
                protocol: protocol.name().to_owned(),
                transport: connection.transport().name().to_owned(),
            }));
        }
        return Ok((
            protocol,
            request.version,
            Bytes::copy_from_slice(&buffer.as_bytes()[end + 1..]),
        ));
    }
}

/// An invocation waiting its turn.
struct Call {
    invocation_id: Option<String>,
    target: String,
    arguments: Vec<Value>,
    /// Bytes of its record, counted against the queue's byte bound.
    size: usize,
}

struct Completed {
    invocation_id: Option<String>,
    target: String,
    result: Result<Option<Value>, String>,
}

enum Dispatch {
    Continue,
    End(CloseRequest),
}

/// Acts on one decoded message of `size` bytes.
fn dispatch(
    message: HubMessage,
    size: usize,
    connection: &Connection,
    protocol: Protocol,
    invocations: &mut Invocations<'_>,
) -> Dispatch {
    match message {
        HubMessage::Invocation { invocation_id, target, arguments, stream_ids } => {
            if stream_ids.is_empty() {
                invocations.enqueue(Call { invocation_id, target, arguments, size: 0 }, size);
            } else if let Some(invocation_id) = invocation_id {
                let error = format!(
                    "'{}': streaming arguments are not supported",
                    quote_untrusted(&target)
                );
                complete(
                    connection,
                    protocol,
                    Completed { invocation_id: Some(invocation_id), target, result: Err(error) },
                );
            }
        }
        HubMessage::StreamInvocation { invocation_id, target, .. } => {
            let error =
                format!("'{}': streaming hub methods are not supported", quote_untrusted(&target));
            complete(
                connection,
                protocol,
                Completed { invocation_id: Some(invocation_id), target, result: Err(error) },
            );
        }
        HubMessage::Ping => {}
        HubMessage::Close { error, .. } => {
            let reason = match error {
                Some(error) => {
                    format!("the client closed the connection: {}", quote_untrusted(&error))
                }
                None => "the client closed the connection".to_owned(),
            };
            return Dispatch::End(CloseRequest::peer_gone(reason));
        }
        HubMessage::StreamItem { .. }
        | HubMessage::Completion { .. }
        | HubMessage::CancelInvocation { .. }
        | HubMessage::Ack { .. }
        | HubMessage::Sequence { .. } => {
            debug!(kind = message_kind(&message), "ignored a message this server has no use for");
        }
    }
    Dispatch::Continue
}

/// A message's kind, for logs that must not quote what the client sent.
fn message_kind(message: &HubMessage) -> &'static str {
    match message {
        HubMessage::Invocation { .. } => "Invocation",
        HubMessage::StreamItem { .. } => "StreamItem",
        HubMessage::Completion { .. } => "Completion",
        HubMessage::StreamInvocation { .. } => "StreamInvocation",
        HubMessage::CancelInvocation { .. } => "CancelInvocation",
        HubMessage::Ping => "Ping",
        HubMessage::Close { .. } => "Close",
        HubMessage::Ack { .. } => "Ack",
        HubMessage::Sequence { .. } => "Sequence",
    }
}

/// One connection's invocations between decoding and completion: queued (decoded,
/// waiting their turn), starting (the one the hub is running now, in order), and
/// finishing (started, completing in the background; completions go out in
/// invocation order).
///
/// The queue is bounded in calls and in bytes (each call counted by its record's
/// size); while it is full the session stops reading, so a fast client waits
/// rather than making the server hold its backlog.
#[derive(Default)]
struct Invocations<'a> {
    queued: VecDeque<Call>,
    /// Record bytes of the calls in `queued`.
    queued_bytes: usize,
    starting: Option<BoxFuture<'a, Started>>,
    finishing: Finishing,
    rate: RateLimit,
}

impl<'a> Invocations<'a> {
    /// Whether another decoded call may be queued (and so whether to read on).
    fn has_room(&self, config: &HubConfig) -> bool {
        self.queued.len() < config.max_queued_invocations
            && self.queued_bytes < config.max_queued_invocation_bytes
    }

    fn enqueue(&mut self, call: Call, size: usize) {
        self.queued_bytes += size;
        self.queued.push_back(Call { size, ..call });
    }

    fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Whether the hub has work of ours (a call starting or finishing).
    fn is_busy(&self) -> bool {
        self.starting.is_some() || !self.finishing.is_empty()
    }

    /// Starts the next queued call if none is starting and the finishing ones
    /// leave room. A call over the rate limit is not run: it completes at once
    /// with an error (returned when nothing is ahead of it, else queued behind).
    fn start_next<H: Hub>(
        &mut self,
        hub: &'a H,
        session: &'a H::Session,
        config: &HubConfig,
    ) -> Option<Completed> {
        if self.starting.is_some() || self.finishing.len() >= config.max_queued_invocations {
            return None;
        }
        let call = self.queued.pop_front()?;
        self.queued_bytes -= call.size;
        if self.queued.is_empty() {
            // Most connections are idle most of the time: an empty queue
            // holds no memory (one allocation per burst of calls, not per call
            // while a client keeps several queued).
            self.queued = VecDeque::new();
        }
        match self.rate.acquire(config) {
            Ok(()) => {
                self.starting = Some(start_call(hub, session, call));
                None
            }
            Err(retry_in) => {
                let error = format!(
                    "rate limited: more than {} invocations per second on this connection; retry in {} ms",
                    config.invocations_per_second,
                    retry_in.as_micros().div_ceil(1000).max(1)
                );
                let Call { invocation_id, target, .. } = call;
                let limited = Completed { invocation_id, target, result: Err(error) };
                self.finishing.started(Started::Done(limited))
            }
        }
    }

    /// Waits for the starting call to start or the oldest finishing one to finish;
    /// `Some` is a completion to send now. Cancel-safe.
    async fn progress(&mut self) -> Option<Completed> {
        let Self { starting, finishing, .. } = self;
        tokio::select! {
            biased;
            started = poll_call(starting) => {
                *starting = None;
                finishing.started(started)
            }
            Some(completed) = finishing.next(), if !finishing.is_empty() => Some(completed),
        }
    }

    /// Waits for the call being started (the connection is closing); `Some` is a
    /// completion to send now.
    async fn finish_starting(&mut self) -> Option<Completed> {
        let started = self.starting.take()?.await;
        self.finishing.started(started)
    }

    /// The next completion of the calls finishing, `None` when none is left.
    async fn next_finished(&mut self) -> Option<Completed> {
        self.finishing.next().await
    }
}

/// Started invocations whose completions are not sent yet, in invocation order.
/// The queue is created on first use and boxed: most connections never need
/// it, and it would otherwise cost every idle connection two allocations and a
/// larger session future (S4 measures that cost per connection).
#[derive(Default)]
struct Finishing(Option<Box<FuturesOrdered<BoxFuture<'static, Completed>>>>);

impl Finishing {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A started call's completion to send now if nothing is ahead of it, else
    /// queues it behind the others.
    fn started(&mut self, started: Started) -> Option<Completed> {
        let rest = match started {
            Started::Done(completed) if self.is_empty() => return Some(completed),
            Started::Done(completed) => Box::pin(std::future::ready(completed)),
            Started::Finishing(rest) => rest,
        };
        self.0.get_or_insert_with(Box::default).push_back(rest);
        None
    }

    async fn next(&mut self) -> Option<Completed> {
        match &mut self.0 {
            Some(queue) => queue.next().await,
            None => None,
        }
    }
}

/// A started invocation: completed, or finishing in the background.
enum Started {
    Done(Completed),
    Finishing(BoxFuture<'static, Completed>),
}

fn start_call<'a, H: Hub>(
    hub: &'a H,
    session: &'a H::Session,
    call: Call,
) -> BoxFuture<'a, Started> {
    Box::pin(async move {
        let invoked = AssertUnwindSafe(hub.invoke(session, &call.target, call.arguments))
            .catch_unwind()
            .await;
        let Call { invocation_id, target, .. } = call;
        match invoked {
            Ok(Invoked::Done(result)) => Started::Done(Completed { invocation_id, target, result }),
            Ok(Invoked::Finishing(rest)) => Started::Finishing(Box::pin(async move {
                let result = match AssertUnwindSafe(rest).catch_unwind().await {
                    Ok(result) => result,
                    Err(_) => {
                        error!(target = ?quote_untrusted(&target), "hub panicked while finishing an invocation");
                        Err("internal server error".to_owned())
                    }
                };
                Completed { invocation_id, target, result }
            })),
            Err(_) => {
                error!(target = ?quote_untrusted(&target), "hub panicked in invoke");
                let result = Err("internal server error".to_owned());
                Started::Done(Completed { invocation_id, target, result })
            }
        }
    })
}

async fn poll_call(in_flight: &mut Option<BoxFuture<'_, Started>>) -> Started {
    match in_flight {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

fn complete(connection: &Connection, protocol: Protocol, completed: Completed) {
    let Some(invocation_id) = completed.invocation_id else {
        if let Err(error) = completed.result {
            debug!(target = ?quote_untrusted(&completed.target), ?error, "non-blocking invocation failed");
        }
        return;
    };
    let outcome = match completed.result {
        Ok(None) => Outcome::Void,
        Ok(Some(value)) => Outcome::Result(value),
        Err(error) => {
            debug!(target = ?quote_untrusted(&completed.target), ?error, "invocation failed");
            Outcome::Error(error)
        }
    };
    // A full queue closes the connection; nothing more to do here.
    let _ = connection.push(protocol.encode(&HubMessage::Completion { invocation_id, outcome }));
}

fn timed_out(liveness: &Liveness, last_received: Instant) -> Option<CloseRequest> {
    let now = Instant::now();
    match liveness {
        Liveness::ClientTimeout(timeout) if now >= last_received + *timeout => {
            Some(CloseRequest::with_error(format!(
                "client timeout: no message received from the client for {} s",
                timeout.as_secs_f64()
            )))
        }
        Liveness::Polling(polls, timeout)
            if polls.idle_since().is_some_and(|idle| now >= idle + *timeout) =>
        {
            // The client is gone: nothing to deliver.
            Some(CloseRequest {
                send_close_message: false,
                drain: false,
                ..CloseRequest::with_error(format!(
                    "long polling: no poll from the client for {} s",
                    timeout.as_secs_f64()
                ))
            })
        }
        _ => None,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
