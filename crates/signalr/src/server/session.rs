//! One connection's life, whatever the transport: handshake, then decoding hub
//! messages, starting invocations one at a time in order (an invocation that
//! returns [`Invoked::Finishing`] finishes while the next ones start; completions
//! go out in invocation order), enforcing the client timeout, and finally telling
//! the hub the connection is gone.
//!
//! The transport hands in a stream of [`Inbound`] frames (WebSocket messages or POST
//! bodies) and writes whatever the connection's outbound queue yields.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::config::HubConfig;
use super::connection::{CloseRequest, Connection};
use super::hub::Hub;
use super::inbound::{Inbound, too_large};
use super::invocations::{Call, Completed, Invocations};
use super::long_polling::PollState;
use super::registry::LiveGuard;
use super::state::ServerState;
use super::stateful::Reconnect;
use crate::handshake::{HandshakeBuffer, HandshakeError, HandshakeRequest, HandshakeResponse};
use crate::protocol::{Decoder, HubMessage, Outcome, Protocol, quote_untrusted};

/// How the session decides that a client is gone.
pub(crate) enum Liveness {
    /// No hub message for this long closes the connection (WebSockets, SSE).
    ClientTimeout(Duration),
    /// Long polling: no poll outstanding for this long closes the connection.
    Polling(Arc<PollState>, Duration),
}

/// The Close message's error when the user's credential expires.
pub const CREDENTIAL_EXPIRED: &str = "the access token expired: reconnect with a fresh one";

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
    let hub = server.hub.as_ref();
    let Some(Opened { protocol, session, reconnect, leftover }) =
        open(&server, &connection, inbound.as_mut(), reconnect).await
    else {
        return;
    };
    let config = &server.config;
    let mut serving = Serving {
        hub,
        session: &session,
        config,
        connection: &connection,
        protocol,
        decoder: protocol.decoder(config.max_message_size),
        invocations: Invocations::default(),
        last_received: Instant::now(),
        reconnect,
    };
    serving.decoder.push(&leftover);
    drop(leftover);
    let ending = serving.serve(inbound.as_mut(), &liveness).await;
    connection.request_close(ending);
    serving.finish().await;
    drop(serving);
    if AssertUnwindSafe(hub.disconnected(session)).catch_unwind().await.is_err() {
        error!("hub panicked in disconnected");
    }
    let reason = connection.close_request().map(|r| r.reason).unwrap_or_default();
    info!(protocol = protocol.name(), reason = ?reason, "connection closed");
}

/// A connection the handshake opened and the hub accepted.
struct Opened<S> {
    protocol: Protocol,
    session: S,
    /// Stateful reconnect, if the handshake kept it.
    reconnect: Option<Reconnect>,
    /// What followed the handshake request in its frame.
    leftover: Bytes,
}

/// The handshake, its response, and the hub's `connected`. `None` when the
/// connection ends there (its close request is set).
async fn open<H: Hub>(
    server: &ServerState<H>,
    connection: &Connection,
    inbound: std::pin::Pin<&mut (impl Stream<Item = Inbound> + Send)>,
    reconnect: Option<Reconnect>,
) -> Option<Opened<H::Session>> {
    let (protocol, version, leftover) = match handshake(server, connection, inbound).await {
        Ok(done) => done,
        Err(request) => {
            warn!(reason = ?request.reason, "handshake failed");
            connection.request_close(request);
            return None;
        }
    };
    connection.set_protocol(protocol);
    // Stateful reconnect starts with hub protocol version 2; an older client
    // that negotiated it gets a plain connection, as from ASP.NET Core.
    let reconnect = reconnect.filter(|_| version >= 2);
    if reconnect.is_some() {
        connection.set_resumable();
    }
    connection.push_control(HandshakeResponse::ok().encode()).ok()?;
    let connected = AssertUnwindSafe(server.hub.connected(connection.clone())).catch_unwind();
    let session = match connected.await {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => {
            warn!(protocol = protocol.name(), ?error, "hub refused the connection");
            connection.request_close(CloseRequest::with_error(error));
            return None;
        }
        Err(_) => {
            error!("hub panicked in connected");
            connection.request_close(CloseRequest::with_error("internal server error"));
            return None;
        }
    };
    info!(
        protocol = protocol.name(),
        stateful_reconnect = reconnect.is_some(),
        "connection opened"
    );
    Some(Opened { protocol, session, reconnect, leftover })
}

/// An open connection's session between its handshake and its end.
struct Serving<'a, H: Hub> {
    hub: &'a H,
    session: &'a H::Session,
    config: &'a HubConfig,
    connection: &'a Connection,
    protocol: Protocol,
    decoder: Decoder,
    invocations: Invocations<'a>,
    /// When the client last sent a hub message (for the client timeout).
    last_received: Instant,
    reconnect: Option<Reconnect>,
}

impl<'a, H: Hub> Serving<'a, H> {
    /// Decodes, starts invocations and sends completions until the connection
    /// ends; returns how it is to end.
    async fn serve(
        &mut self,
        mut inbound: std::pin::Pin<&mut (impl Stream<Item = Inbound> + Send)>,
        liveness: &Liveness,
    ) -> CloseRequest {
        let mut close_rx = self.connection.subscribe_close();
        loop {
            // A close requested before `close_rx` was subscribed (say, during
            // `connected`) shows here, not as a change.
            if let Some(request) = self.connection.close_request() {
                return request;
            }
            if let Err(request) = self.decode() {
                return request;
            }
            // A rate-limited call completes at once, and the next may then start.
            while let Some(completed) =
                self.invocations.start_next(self.hub, self.session, self.config)
            {
                complete(self.connection, self.protocol, completed);
            }
            let deadline = self.deadline(liveness);
            // Boxed, and only for a stateful connection: its timers would otherwise
            // take room in every connection's session state.
            let reconnect = &self.reconnect;
            let reconnect_event = async {
                match reconnect {
                    Some(reconnect) => Box::pin(reconnect.next_event()).await,
                    None => std::future::pending().await,
                }
            };
            let poll_activity = async {
                match liveness {
                    Liveness::Polling(polls, _) => polls.activity().await,
                    Liveness::ClientTimeout(_) => std::future::pending().await,
                }
            };
            let has_room = self.invocations.has_room(self.config);
            let step = tokio::select! {
                biased;
                _ = close_rx.changed() => {
                    return self
                        .connection
                        .close_request()
                        .unwrap_or_else(|| CloseRequest::peer_gone("closed"));
                }
                completed = self.invocations.progress() => {
                    if let Some(completed) = completed {
                        complete(self.connection, self.protocol, completed);
                    }
                    Ok(())
                }
                frame = inbound.next(), if has_room => self.on_frame(frame),
                event = reconnect_event => {
                    match self.reconnect.as_mut().and_then(|r| r.on_event(event, self.connection)) {
                        Some(request) => Err(request),
                        None => Ok(()),
                    }
                }
                _ = sleep_until_opt(deadline) => match timed_out(liveness, self.last_received) {
                    Some(request) => {
                        warn!(reason = %request.reason, "closing an unresponsive connection");
                        Err(request)
                    }
                    None => Ok(()),
                },
                _ = poll_activity => Ok(()),
            };
            if let Err(request) = step {
                return request;
            }
        }
    }

    /// Decodes what has arrived, as far as the invocation queue has room, and
    /// queues the calls. `Err` is how the connection is to end.
    fn decode(&mut self) -> Result<(), CloseRequest> {
        while self.invocations.has_room(self.config) {
            let buffered = self.decoder.buffered();
            let message = match self.decoder.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
                    let protocol = self.protocol.name();
                    warn!(protocol, error = ?error.to_string(), "protocol error");
                    return Err(CloseRequest::with_error(error.to_string()));
                }
            };
            self.last_received = Instant::now();
            let size = buffered - self.decoder.buffered();
            if let Some(reconnect) = self.reconnect.as_mut() {
                match reconnect.admit(&message, self.last_received) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        warn!(%error, "stateful reconnect: protocol error");
                        return Err(CloseRequest::with_error(error));
                    }
                }
            }
            let dispatched =
                dispatch(message, size, self.connection, self.protocol, &mut self.invocations);
            if let Dispatch::End(request) = dispatched {
                return Err(request);
            }
        }
        Ok(())
    }

    /// When the client counts as gone unless it sends something, if it can.
    fn deadline(&self, liveness: &Liveness) -> Option<Instant> {
        match liveness {
            // While no socket is attached, the reconnect window applies instead.
            _ if self.reconnect.as_ref().is_some_and(Reconnect::is_parked) => None,
            // While we are busy the client's pings may wait unread: not its fault.
            Liveness::ClientTimeout(_) if self.invocations.is_busy() => None,
            Liveness::ClientTimeout(timeout) => Some(self.last_received + *timeout),
            Liveness::Polling(polls, timeout) => polls.idle_since().map(|idle| idle + *timeout),
        }
    }

    /// Acts on one frame from the transport. `Err` is how the connection is to end.
    fn on_frame(&mut self, frame: Option<Inbound>) -> Result<(), CloseRequest> {
        let config = self.config;
        match frame {
            Some(Inbound::Data(data)) => {
                if data.len() > config.max_batch_size {
                    let error = too_large(Some(data.len()), config.max_batch_size);
                    warn!(%error, "incoming message too large");
                    return Err(CloseRequest::with_error(error));
                }
                self.decoder.push(&data);
            }
            Some(Inbound::Failed(error)) => {
                warn!(error = ?error, "transport failed");
                return Err(CloseRequest { drain: false, ..CloseRequest::with_error(error) });
            }
            Some(Inbound::Lost(reason)) => match self.reconnect.as_mut() {
                Some(reconnect) => reconnect.lost(&reason, Instant::now()),
                None => return Err(CloseRequest::peer_gone(reason)),
            },
            Some(Inbound::Resumed) => {
                if let Some(reconnect) = self.reconnect.as_mut() {
                    // A partial record of the old socket means nothing now.
                    self.decoder = self.protocol.decoder(config.max_message_size);
                    self.last_received = Instant::now();
                    reconnect.resumed(self.last_received);
                    self.hub.resumed(self.session);
                }
            }
            None => return Err(CloseRequest::peer_gone("the client disconnected")),
        }
        Ok(())
    }

    /// The connection is closing: calls already started still complete;
    /// queued ones never run.
    async fn finish(&mut self) {
        let (connection, protocol) = (self.connection, self.protocol);
        if let Some(completed) = self.invocations.finish_starting().await {
            complete(connection, protocol, completed);
        }
        while let Some(completed) = self.invocations.next_finished().await {
            complete(connection, protocol, completed);
        }
        if self.invocations.queued() > 0 {
            debug!(
                skipped = self.invocations.queued(),
                "invocations not run: the connection closed"
            );
        }
    }
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
